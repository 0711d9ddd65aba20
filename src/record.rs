//! The message contract (`CONTRACT.md`): one CDR becomes one compact JSON object, its key
//! and its headers.
//!
//! Everything here works on borrowed bytes ([`Cdr`]) and knows nothing about Asterisk's
//! structs, so it is tested without Asterisk. Text is bytes from Asterisk's fixed C
//! arrays: valid UTF-8 passes unchanged, anything else is repaired with U+FFFD, and
//! serde_json does all escaping.

use std::borrow::Cow;
use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

use chrono::{DateTime, Datelike, Timelike};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

/// A point in time as Asterisk holds it (`struct timeval`), with the UTC offset of
/// Asterisk's local time zone at that moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CdrTime {
    pub sec: i64,
    pub usec: i64,
    /// Seconds east of UTC.
    pub gmtoff: i32,
}

impl CdrTime {
    /// Asterisk's `ast_tvzero`: the time was never set (e.g. a call never answered).
    pub fn is_zero(&self) -> bool {
        self.sec == 0 && self.usec == 0
    }
}

/// One CDR, borrowed from Asterisk for the length of the CDR callback.
#[derive(Debug, Clone, Default)]
pub struct Cdr<'a> {
    pub clid: &'a [u8],
    pub src: &'a [u8],
    pub dst: &'a [u8],
    pub dcontext: &'a [u8],
    pub channel: &'a [u8],
    pub dstchannel: &'a [u8],
    pub lastapp: &'a [u8],
    pub lastdata: &'a [u8],
    pub start: CdrTime,
    pub answer: CdrTime,
    pub end: CdrTime,
    pub duration: i64,
    pub billsec: i64,
    /// `ast_cdr_disp2str()`.
    pub disposition: &'a [u8],
    /// `ast_channel_amaflags2string()`.
    pub amaflags: &'a [u8],
    pub accountcode: &'a [u8],
    pub peeraccount: &'a [u8],
    pub uniqueid: &'a [u8],
    pub linkedid: &'a [u8],
    /// `None` on an Asterisk whose `struct ast_cdr` has no tenant fields.
    pub tenantid: Option<&'a [u8]>,
    pub peertenantid: Option<&'a [u8]>,
    pub userfield: &'a [u8],
    pub sequence: i32,
    /// CDR variables (`Set(CDR(name)=value)`), in the order Asterisk holds them.
    pub variables: Vec<(&'a [u8], &'a [u8])>,
}

/// The CDR field a message key is taken from (`key =` in cdr_kafka.conf).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyField {
    Linkedid,
    Uniqueid,
    Channel,
    Dstchannel,
    Accountcode,
    Src,
    Dst,
    Dcontext,
    Tenantid,
    Peertenantid,
}

impl KeyField {
    /// Every accepted name, in the order the contract lists them.
    pub const NAMES: [&'static str; 10] = [
        "linkedid",
        "uniqueid",
        "channel",
        "dstchannel",
        "accountcode",
        "src",
        "dst",
        "dcontext",
        "tenantid",
        "peertenantid",
    ];

    /// Parses a `key =` value; `None` when it names no key field.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "linkedid" => Self::Linkedid,
            "uniqueid" => Self::Uniqueid,
            "channel" => Self::Channel,
            "dstchannel" => Self::Dstchannel,
            "accountcode" => Self::Accountcode,
            "src" => Self::Src,
            "dst" => Self::Dst,
            "dcontext" => Self::Dcontext,
            "tenantid" => Self::Tenantid,
            "peertenantid" => Self::Peertenantid,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// Whether the field exists only on an Asterisk with multi-tenant CDRs.
    pub fn needs_tenant_fields(self) -> bool {
        matches!(self, Self::Tenantid | Self::Peertenantid)
    }

    /// The key bytes for this CDR, repaired to UTF-8 like the JSON value.
    pub fn key<'a>(self, cdr: &Cdr<'a>) -> Cow<'a, [u8]> {
        let raw = match self {
            Self::Linkedid => cdr.linkedid,
            Self::Uniqueid => cdr.uniqueid,
            Self::Channel => cdr.channel,
            Self::Dstchannel => cdr.dstchannel,
            Self::Accountcode => cdr.accountcode,
            Self::Src => cdr.src,
            Self::Dst => cdr.dst,
            Self::Dcontext => cdr.dcontext,
            Self::Tenantid => cdr.tenantid.unwrap_or_default(),
            Self::Peertenantid => cdr.peertenantid.unwrap_or_default(),
        };
        repaired(raw)
    }
}

/// `Set(CDR(kafka_skip)=yes)`: this CDR goes nowhere.
pub const KAFKA_SKIP_VARIABLE: &str = "kafka_skip";
/// `Set(CDR(kafka_to)=archive,missed)`: this CDR goes only to these destinations.
pub const KAFKA_TO_VARIABLE: &str = "kafka_to";

/// The dialplan's routing variables: read by the module, never part of the record.
fn is_routing_variable(name: &str) -> bool {
    name == KAFKA_SKIP_VARIABLE || name == KAFKA_TO_VARIABLE
}

/// What the dialplan asked of one CDR through its routing variables.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DialplanRouting<'a> {
    /// `CDR(kafka_skip)` is a true word (yes, true, on, 1...).
    pub skip: bool,
    /// `CDR(kafka_to)`, when set and not empty.
    pub to: Option<&'a [u8]>,
}

impl<'a> Cdr<'a> {
    /// Reads `CDR(kafka_skip)` and `CDR(kafka_to)` (the last value of each).
    pub fn dialplan_routing(&self) -> DialplanRouting<'a> {
        let mut routing = DialplanRouting::default();
        for (name, value) in &self.variables {
            if *name == KAFKA_SKIP_VARIABLE.as_bytes() {
                let word = String::from_utf8_lossy(value).trim().to_ascii_lowercase();
                routing.skip = matches!(word.as_str(), "yes" | "true" | "y" | "t" | "1" | "on");
            } else if *name == KAFKA_TO_VARIABLE.as_bytes() {
                routing.to = (!value.iter().all(u8::is_ascii_whitespace)).then_some(*value);
            }
        }
        routing
    }
}

/// Names a CDR variable can never take in the JSON object: the contract's own fields.
pub const CONTRACT_FIELDS: [&str; 25] = [
    "clid",
    "src",
    "dst",
    "dcontext",
    "channel",
    "dstchannel",
    "lastapp",
    "lastdata",
    "start",
    "answer",
    "end",
    "durationsec",
    "billsec",
    "disposition",
    "accountcode",
    "amaflags",
    "peeraccount",
    "linkedid",
    "sequence",
    "tenantid",
    "peertenantid",
    "EntityID",
    "SystemName",
    "uniqueid",
    "userfield",
];

/// Whether a variable name is one of [`CONTRACT_FIELDS`] (a match: no list scan per
/// variable on the CDR thread).
fn is_contract_field(name: &str) -> bool {
    matches!(
        name,
        "clid"
            | "src"
            | "dst"
            | "dcontext"
            | "channel"
            | "dstchannel"
            | "lastapp"
            | "lastdata"
            | "start"
            | "answer"
            | "end"
            | "durationsec"
            | "billsec"
            | "disposition"
            | "accountcode"
            | "amaflags"
            | "peeraccount"
            | "linkedid"
            | "sequence"
            | "tenantid"
            | "peertenantid"
            | "EntityID"
            | "SystemName"
            | "uniqueid"
            | "userfield"
    )
}

/// FNV-1a: variable names are short and chosen by the dialplan's author, so a fast hash
/// serves the duplicate check better than the default SipHash.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut hash = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for byte in bytes {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = hash;
    }
}

/// What the encoding of one record depends on besides the CDR.
#[derive(Debug, Clone, Default)]
pub struct EncodeOptions {
    pub loguniqueid: bool,
    pub loguserfield: bool,
    pub usegmtime: bool,
    /// `ast_eid_default` as `00:11:22:33:44:55`.
    pub entity_id: String,
    /// `systemname` of asterisk.conf; empty when unset.
    pub system_name: String,
}

/// What encoding noticed about a record that an administrator may want to know.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EncodeReport {
    /// CDR variables left out because their name is a contract field or came twice.
    pub skipped_variables: Vec<String>,
}

/// Appends the JSON object of `cdr` to `out`.
pub fn encode(cdr: &Cdr<'_>, options: &EncodeOptions, out: &mut Vec<u8>) -> EncodeReport {
    let mut report = EncodeReport::default();
    let record = Record {
        cdr,
        options,
        report: std::cell::RefCell::new(&mut report),
    };
    let mut serializer = serde_json::Serializer::new(&mut *out);
    // Writing into a Vec cannot fail, and every value is a string or an integer.
    if let Err(error) = record.serialize(&mut serializer) {
        unreachable_encode_error(error);
    }
    report
}

#[cold]
fn unreachable_encode_error(error: serde_json::Error) {
    // A Vec writer and string/integer values leave serde_json nothing to fail on.
    panic!("serde_json failed on an in-memory record: {error}");
}

struct Record<'r, 'a> {
    cdr: &'r Cdr<'a>,
    options: &'r EncodeOptions,
    report: std::cell::RefCell<&'r mut EncodeReport>,
}

/// Bytes from Asterisk, serialized as a JSON string with invalid UTF-8 replaced.
pub(crate) struct Text<'a>(pub(crate) &'a [u8]);

/// Bytes from Asterisk as UTF-8 bytes (a message key), invalid sequences replaced.
pub(crate) fn repaired(raw: &[u8]) -> Cow<'_, [u8]> {
    match String::from_utf8_lossy(raw) {
        Cow::Borrowed(text) => Cow::Borrowed(text.as_bytes()),
        Cow::Owned(text) => Cow::Owned(text.into_bytes()),
    }
}

impl Serialize for Text<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&String::from_utf8_lossy(self.0))
    }
}

/// A time in the contract's format: `2026-01-15T10:30:00.000-0300`.
struct Time {
    time: CdrTime,
    usegmtime: bool,
}

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text = TimeText::new(self.time, self.usegmtime);
        serializer.serialize_str(text.as_str())
    }
}

/// A time in the contract's format, built on the stack: this runs three times per CDR on
/// Asterisk's CDR thread, where chrono's general formatter cost 15,000 instructions.
pub struct TimeText([u8; 28]);

impl TimeText {
    pub fn new(time: CdrTime, usegmtime: bool) -> Self {
        let offset = if usegmtime { 0 } else { time.gmtoff };
        let local = DateTime::from_timestamp(time.sec.saturating_add(i64::from(offset)), 0)
            .unwrap_or_default()
            .naive_utc();
        let millis = (time.usec.clamp(0, 999_999) / 1000) as u32;
        let mut text = *b"0000-00-00T00:00:00.000+0000";
        let mut put = |at: usize, width: usize, mut value: u32| {
            for index in (at..at + width).rev() {
                text[index] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        put(0, 4, local.year().clamp(0, 9999) as u32);
        put(5, 2, local.month());
        put(8, 2, local.day());
        put(11, 2, local.hour());
        put(14, 2, local.minute());
        put(17, 2, local.second());
        put(20, 3, millis);
        let minutes = offset.unsigned_abs() / 60;
        put(24, 2, (minutes / 60).min(99));
        put(26, 2, minutes % 60);
        text[23] = if offset >= 0 { b'+' } else { b'-' };
        Self(text)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// Formats like Asterisk's `ast_json_timeval`: local time, milliseconds, numeric offset.
pub fn format_time(time: CdrTime, usegmtime: bool) -> String {
    TimeText::new(time, usegmtime).as_str().to_string()
}

impl Serialize for Record<'_, '_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let cdr = self.cdr;
        let options = self.options;
        let time = |time: CdrTime| Time {
            time,
            usegmtime: options.usegmtime,
        };
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("clid", &Text(cdr.clid))?;
        map.serialize_entry("src", &Text(cdr.src))?;
        map.serialize_entry("dst", &Text(cdr.dst))?;
        map.serialize_entry("dcontext", &Text(cdr.dcontext))?;
        map.serialize_entry("channel", &Text(cdr.channel))?;
        map.serialize_entry("dstchannel", &Text(cdr.dstchannel))?;
        map.serialize_entry("lastapp", &Text(cdr.lastapp))?;
        map.serialize_entry("lastdata", &Text(cdr.lastdata))?;
        map.serialize_entry("start", &time(cdr.start))?;
        if cdr.answer.is_zero() {
            map.serialize_entry("answer", &None::<()>)?;
        } else {
            map.serialize_entry("answer", &time(cdr.answer))?;
        }
        map.serialize_entry("end", &time(cdr.end))?;
        map.serialize_entry("durationsec", &cdr.duration)?;
        map.serialize_entry("billsec", &cdr.billsec)?;
        map.serialize_entry("disposition", &Text(cdr.disposition))?;
        map.serialize_entry("accountcode", &Text(cdr.accountcode))?;
        map.serialize_entry("amaflags", &Text(cdr.amaflags))?;
        map.serialize_entry("peeraccount", &Text(cdr.peeraccount))?;
        map.serialize_entry("linkedid", &Text(cdr.linkedid))?;
        map.serialize_entry("sequence", &cdr.sequence)?;
        if let Some(tenantid) = cdr.tenantid {
            map.serialize_entry("tenantid", &Text(tenantid))?;
        }
        if let Some(peertenantid) = cdr.peertenantid {
            map.serialize_entry("peertenantid", &Text(peertenantid))?;
        }
        map.serialize_entry("EntityID", &options.entity_id)?;
        if !options.system_name.is_empty() {
            map.serialize_entry("SystemName", &options.system_name)?;
        }
        self.serialize_variables(&mut map)?;
        if options.loguniqueid {
            map.serialize_entry("uniqueid", &Text(cdr.uniqueid))?;
        }
        if options.loguserfield {
            map.serialize_entry("userfield", &Text(cdr.userfield))?;
        }
        map.end()
    }
}

impl Record<'_, '_> {
    fn serialize_variables<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        let variables = &self.cdr.variables;
        // Duplicates are rare and lists short: a set only pays off for long lists.
        let mut seen_set: HashSet<Cow<'_, str>, BuildHasherDefault<Fnv>> =
            HashSet::with_capacity_and_hasher(variables.len(), BuildHasherDefault::default());
        let use_set = variables.len() > 16;
        for (index, (name, value)) in variables.iter().enumerate() {
            let name = String::from_utf8_lossy(name);
            let duplicate = if use_set {
                !seen_set.insert(name.clone())
            } else {
                variables[..index]
                    .iter()
                    .any(|(earlier, _)| String::from_utf8_lossy(earlier) == name)
            };
            if is_routing_variable(&name) {
                continue;
            }
            if duplicate || is_contract_field(&name) {
                self.report
                    .borrow_mut()
                    .skipped_variables
                    .push(name.into_owned());
                continue;
            }
            map.serialize_entry(name.as_ref(), &Text(value))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn routing_variables_steer_the_cdr_and_never_appear_in_it() {
        let cdr = Cdr {
            variables: vec![
                (b"kafka_to", b"archive,missed"),
                (b"direction", b"in"),
                (b"kafka_skip", b"Yes"),
            ],
            ..Cdr::default()
        };
        let routing = cdr.dialplan_routing();
        assert!(routing.skip);
        assert_eq!(routing.to, Some(&b"archive,missed"[..]));
        let mut out = Vec::new();
        let report = encode(&cdr, &options(), &mut out);
        let json: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(json["direction"], "in");
        assert!(json.get("kafka_to").is_none() && json.get("kafka_skip").is_none());
        assert!(report.skipped_variables.is_empty());
        let plain = Cdr {
            variables: vec![(b"kafka_skip", b"no"), (b"kafka_to", b" ")],
            ..Cdr::default()
        };
        assert_eq!(plain.dialplan_routing(), DialplanRouting::default());
    }

    const MINUS_THREE_HOURS: i32 = -3 * 3600;

    fn options() -> EncodeOptions {
        EncodeOptions {
            entity_id: "00:11:22:33:44:55".into(),
            system_name: "pbx-01".into(),
            ..EncodeOptions::default()
        }
    }

    fn at(sec: i64, usec: i64) -> CdrTime {
        CdrTime {
            sec,
            usec,
            gmtoff: MINUS_THREE_HOURS,
        }
    }

    /// The contract's example call: 2026-01-15 10:30:00 -0300 is 13:30:00 UTC.
    fn example_cdr() -> Cdr<'static> {
        let start = 1_768_483_800;
        Cdr {
            clid: b"\"Alice\" <100>",
            src: b"100",
            dst: b"200",
            dcontext: b"default",
            channel: b"PJSIP/100-00000001",
            dstchannel: b"PJSIP/200-00000002",
            lastapp: b"Dial",
            lastdata: b"PJSIP/200,30",
            start: at(start, 0),
            answer: at(start + 5, 0),
            end: at(start + 135, 0),
            duration: 135,
            billsec: 130,
            disposition: b"ANSWERED",
            amaflags: b"DOCUMENTATION",
            linkedid: b"1705312200.1",
            uniqueid: b"1705312200.1",
            tenantid: Some(b""),
            peertenantid: Some(b""),
            variables: vec![(b"myvar", b"hello")],
            ..Cdr::default()
        }
    }

    fn encode_to_string(cdr: &Cdr<'_>, options: &EncodeOptions) -> String {
        let mut out = Vec::new();
        encode(cdr, options, &mut out);
        String::from_utf8(out).expect("always UTF-8")
    }

    #[test]
    fn contract_example_is_reproduced_byte_for_byte() {
        let options = EncodeOptions {
            loguniqueid: true,
            ..options()
        };
        let expected = r#"{"clid":"\"Alice\" <100>","src":"100","dst":"200","dcontext":"default","channel":"PJSIP/100-00000001","dstchannel":"PJSIP/200-00000002","lastapp":"Dial","lastdata":"PJSIP/200,30","start":"2026-01-15T10:30:00.000-0300","answer":"2026-01-15T10:30:05.000-0300","end":"2026-01-15T10:32:15.000-0300","durationsec":135,"billsec":130,"disposition":"ANSWERED","accountcode":"","amaflags":"DOCUMENTATION","peeraccount":"","linkedid":"1705312200.1","sequence":0,"tenantid":"","peertenantid":"","EntityID":"00:11:22:33:44:55","SystemName":"pbx-01","myvar":"hello","uniqueid":"1705312200.1"}"#;
        assert_eq!(encode_to_string(&example_cdr(), &options), expected);
    }

    #[test]
    fn times_have_milliseconds_and_numeric_offset() {
        let cdr = Cdr {
            start: at(1_768_483_800, 123_999),
            ..example_cdr()
        };
        let json: Value = serde_json::from_str(&encode_to_string(&cdr, &options())).unwrap();
        assert_eq!(json["start"], "2026-01-15T10:30:00.123-0300");
    }

    #[test]
    fn usegmtime_writes_utc_with_plus_zero_offset() {
        let options = EncodeOptions {
            usegmtime: true,
            ..options()
        };
        let json: Value =
            serde_json::from_str(&encode_to_string(&example_cdr(), &options)).unwrap();
        assert_eq!(json["start"], "2026-01-15T13:30:00.000+0000");
        assert_eq!(json["end"], "2026-01-15T13:32:15.000+0000");
    }

    #[test]
    fn positive_offset_and_half_hour_zones_are_written_as_hhmm() {
        let time = CdrTime {
            sec: 1_768_483_800,
            usec: 0,
            gmtoff: 5 * 3600 + 1800,
        };
        assert_eq!(format_time(time, false), "2026-01-15T19:00:00.000+0530");
    }

    #[test]
    fn times_before_1970_negative_offsets_and_odd_zones_format_like_chrono() {
        use chrono::FixedOffset;
        for (sec, usec, gmtoff) in [
            (0, 0, 0),
            (-1, 999_999, 3600),
            (1_768_483_800, 999_000, -(3 * 3600 + 30 * 60)),
            (4_102_444_799, 1_000, 14 * 3600),
            (951_782_400, 500_000, -12 * 3600),
        ] {
            let time = CdrTime { sec, usec, gmtoff };
            let offset = FixedOffset::east_opt(gmtoff).unwrap();
            let expected = DateTime::from_timestamp(sec, (usec * 1000) as u32)
                .unwrap()
                .with_timezone(&offset)
                .format("%Y-%m-%dT%H:%M:%S%.3f%z")
                .to_string();
            assert_eq!(format_time(time, false), expected, "{time:?}");
        }
    }

    #[test]
    fn unanswered_call_has_null_answer() {
        let cdr = Cdr {
            answer: CdrTime::default(),
            billsec: 0,
            disposition: b"NO ANSWER",
            ..example_cdr()
        };
        let text = encode_to_string(&cdr, &options());
        assert!(text.contains(r#""answer":null,"#), "{text}");
    }

    #[test]
    fn latin1_bytes_become_replacement_characters_and_other_fields_survive() {
        let cdr = Cdr {
            clid: b"\"Jos\xe9 M\xfcller\" <100>",
            ..example_cdr()
        };
        let json: Value = serde_json::from_str(&encode_to_string(&cdr, &options())).unwrap();
        assert_eq!(json["clid"], "\"Jos\u{fffd} M\u{fffd}ller\" <100>");
        assert_eq!(json["src"], "100");
        assert_eq!(json["billsec"], 130);
    }

    #[test]
    fn multibyte_character_cut_by_the_80_byte_field_is_repaired() {
        // 79 bytes of 'a' then the first byte of "é" (0xC3 0xA9): what a fixed 80-byte
        // array holds when Asterisk's ast_copy_string cut the name.
        let mut clid = vec![b'a'; 78];
        clid.push(0xc3);
        let cdr = Cdr {
            clid: &clid,
            ..example_cdr()
        };
        let json: Value = serde_json::from_str(&encode_to_string(&cdr, &options())).unwrap();
        let expected = format!("{}\u{fffd}", "a".repeat(78));
        assert_eq!(json["clid"], expected.as_str());
    }

    #[test]
    fn quotes_backslashes_controls_and_line_separators_are_escaped() {
        let nasty = "\"x\" \\ \u{1}\n\t\u{2028} \",\"billsec\":0,\"";
        let cdr = Cdr {
            clid: nasty.as_bytes(),
            ..example_cdr()
        };
        let text = encode_to_string(&cdr, &options());
        assert!(!text.contains('\n'));
        assert!(text.contains(r#"\u0001"#));
        let json: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["clid"], nasty);
        assert_eq!(json["billsec"], 130);
        let object = json.as_object().unwrap();
        assert_eq!(object.keys().filter(|k| *k == "billsec").count(), 1);
    }

    #[test]
    fn variable_named_like_a_field_never_replaces_it() {
        let cdr = Cdr {
            variables: vec![
                (b"EntityID", b"spoofed"),
                (b"billsec", b"9999"),
                (b"myvar", b"hello"),
                (b"myvar", b"again"),
            ],
            ..example_cdr()
        };
        let mut out = Vec::new();
        let report = encode(&cdr, &options(), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("\"EntityID\"").count(), 1);
        assert_eq!(text.matches("\"myvar\"").count(), 1);
        let json: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["EntityID"], "00:11:22:33:44:55");
        assert_eq!(json["billsec"], 130);
        assert_eq!(json["myvar"], "hello");
        assert_eq!(
            report.skipped_variables,
            vec!["EntityID", "billsec", "myvar"]
        );
    }

    #[test]
    fn contract_field_check_matches_the_list() {
        for field in CONTRACT_FIELDS {
            assert!(is_contract_field(field), "{field}");
        }
        assert!(!is_contract_field("myvar"));
        assert!(!is_contract_field("entityid"));
    }

    #[test]
    fn five_hundred_variables_all_arrive_in_order() {
        let names: Vec<String> = (0..500).map(|i| format!("var{i:03}")).collect();
        let values: Vec<String> = (0..500).map(|i| format!("value {i}")).collect();
        let cdr = Cdr {
            variables: names
                .iter()
                .zip(&values)
                .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
                .collect(),
            ..example_cdr()
        };
        let text = encode_to_string(&cdr, &options());
        let json: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
        let keys: Vec<&String> = json.keys().filter(|k| k.starts_with("var")).collect();
        assert_eq!(keys.len(), 500);
        assert_eq!(json["var499"], "value 499");
        assert!(text.find("\"var000\"").unwrap() < text.find("\"var499\"").unwrap());
    }

    #[test]
    fn fields_come_in_contract_order_with_optional_ones_last() {
        let options = EncodeOptions {
            loguniqueid: true,
            loguserfield: true,
            ..options()
        };
        let text = encode_to_string(&example_cdr(), &options);
        let json: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
        let keys: Vec<&str> = json.keys().map(String::as_str).collect();
        // serde_json's Map keeps insertion order only with preserve_order; check positions instead.
        let position = |key: &str| text.find(&format!("\"{key}\":")).unwrap();
        // The contract's fields up to SystemName, then variables, then the optional two.
        let (fixed, optional) = CONTRACT_FIELDS.split_at(23);
        let order: Vec<&str> = fixed
            .iter()
            .copied()
            .chain(["myvar"])
            .chain(optional.iter().copied())
            .collect();
        assert_eq!(keys.len(), order.len());
        for pair in order.windows(2) {
            assert!(position(pair[0]) < position(pair[1]), "{pair:?} in {text}");
        }
    }

    #[test]
    fn system_name_key_is_absent_when_unset() {
        let options = EncodeOptions {
            system_name: String::new(),
            ..options()
        };
        let text = encode_to_string(&example_cdr(), &options);
        assert!(!text.contains("SystemName"));
        assert!(text.contains(r#""EntityID":"00:11:22:33:44:55""#));
    }

    #[test]
    fn asterisk_without_tenant_fields_has_no_tenant_keys() {
        let cdr = Cdr {
            tenantid: None,
            peertenantid: None,
            ..example_cdr()
        };
        let text = encode_to_string(&cdr, &options());
        assert!(!text.contains("tenantid"));
    }

    #[test]
    fn key_is_taken_from_the_named_field() {
        let cdr = example_cdr();
        assert_eq!(&*KeyField::Linkedid.key(&cdr), b"1705312200.1");
        assert_eq!(&*KeyField::Channel.key(&cdr), b"PJSIP/100-00000001");
        assert_eq!(&*KeyField::Dcontext.key(&cdr), b"default");
        for name in KeyField::NAMES {
            assert_eq!(KeyField::from_name(name).unwrap().name(), name);
        }
        assert_eq!(KeyField::from_name("caller"), None);
        let latin1 = Cdr {
            src: b"J\xe9",
            ..example_cdr()
        };
        assert_eq!(&*KeyField::Src.key(&latin1), "J\u{fffd}".as_bytes());
    }
}
