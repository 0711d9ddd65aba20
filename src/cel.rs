//! The CEL message format: one channel event becomes one compact JSON object, its key
//! and its `event` header. Same text rules as CDRs (see `record.rs`): bytes from
//! Asterisk, repaired to UTF-8, escaped by serde_json.
//!
//! `extra` is Asterisk's JSON text embedded as an object (verbatim, so its key order
//! stays Asterisk's); `{}` when empty; when the text is not a JSON object, `extra` is
//! `{}` and the text goes under `extra_raw`.

use std::borrow::Cow;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::record::{repaired, CdrTime, Text, TimeText};

/// One CEL event, borrowed from Asterisk for the length of the CEL callback.
#[derive(Debug, Clone, Default)]
pub struct CelEvent<'a> {
    /// Asterisk's name of the event type, e.g. `CHAN_START`.
    pub eventname: &'a [u8],
    pub eventtime: CdrTime,
    pub userdeftype: &'a [u8],
    pub cid_name: &'a [u8],
    pub cid_num: &'a [u8],
    pub cid_ani: &'a [u8],
    pub cid_rdnis: &'a [u8],
    pub cid_dnid: &'a [u8],
    pub exten: &'a [u8],
    pub context: &'a [u8],
    pub channame: &'a [u8],
    pub appname: &'a [u8],
    pub appdata: &'a [u8],
    pub accountcode: &'a [u8],
    pub peeraccount: &'a [u8],
    pub uniqueid: &'a [u8],
    pub linkedid: &'a [u8],
    pub amaflags: &'a [u8],
    pub userfield: &'a [u8],
    pub peer: &'a [u8],
    /// `None` on an Asterisk whose CEL records have no tenant.
    pub tenantid: Option<&'a [u8]>,
    pub extra: &'a [u8],
}

/// The fields of a CEL record, in the order they are written.
pub const CEL_FIELDS: [&str; 25] = [
    "eventname",
    "eventtime",
    "userdeftype",
    "cid_name",
    "cid_num",
    "cid_ani",
    "cid_rdnis",
    "cid_dnid",
    "exten",
    "context",
    "channame",
    "appname",
    "appdata",
    "accountcode",
    "peeraccount",
    "uniqueid",
    "linkedid",
    "amaflags",
    "userfield",
    "peer",
    "tenantid",
    "extra",
    "extra_raw",
    "EntityID",
    "SystemName",
];

/// Asterisk's CEL event names (`ast_cel_get_type_name`), for `events =`.
pub const EVENT_NAMES: [&str; 21] = [
    "CHAN_START",
    "CHAN_END",
    "HANGUP",
    "ANSWER",
    "APP_START",
    "APP_END",
    "BRIDGE_ENTER",
    "BRIDGE_EXIT",
    "PARK_START",
    "PARK_END",
    "BLINDTRANSFER",
    "ATTENDEDTRANSFER",
    "USER_DEFINED",
    "LINKEDID_END",
    "PICKUP",
    "FORWARD",
    "LOCAL_OPTIMIZE",
    "LOCAL_OPTIMIZE_BEGIN",
    "STREAM_BEGIN",
    "STREAM_END",
    "DTMF",
];

/// The CEL field a message key is taken from (`[cel] key =`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CelKey {
    Linkedid,
    Uniqueid,
    Channame,
    Accountcode,
    Peeraccount,
    CidNum,
    Exten,
    Context,
    Tenantid,
}

impl CelKey {
    pub const NAMES: [&'static str; 9] = [
        "linkedid",
        "uniqueid",
        "channame",
        "accountcode",
        "peeraccount",
        "cid_num",
        "exten",
        "context",
        "tenantid",
    ];

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "linkedid" => Self::Linkedid,
            "uniqueid" => Self::Uniqueid,
            "channame" => Self::Channame,
            "accountcode" => Self::Accountcode,
            "peeraccount" => Self::Peeraccount,
            "cid_num" => Self::CidNum,
            "exten" => Self::Exten,
            "context" => Self::Context,
            "tenantid" => Self::Tenantid,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// The key bytes for this event, repaired to UTF-8 like the JSON value.
    pub fn key<'a>(self, event: &CelEvent<'a>) -> Cow<'a, [u8]> {
        let raw = match self {
            Self::Linkedid => event.linkedid,
            Self::Uniqueid => event.uniqueid,
            Self::Channame => event.channame,
            Self::Accountcode => event.accountcode,
            Self::Peeraccount => event.peeraccount,
            Self::CidNum => event.cid_num,
            Self::Exten => event.exten,
            Self::Context => event.context,
            Self::Tenantid => event.tenantid.unwrap_or_default(),
        };
        repaired(raw)
    }
}

/// What the encoding of one event depends on besides the event.
#[derive(Debug, Clone, Default)]
pub struct CelEncodeOptions {
    pub usegmtime: bool,
    pub entity_id: String,
    pub system_name: String,
}

/// Appends the JSON object of `event` to `out`.
pub fn encode(event: &CelEvent<'_>, options: &CelEncodeOptions, out: &mut Vec<u8>) {
    let mut serializer = serde_json::Serializer::new(&mut *out);
    if let Err(error) = (Event { event, options }).serialize(&mut serializer) {
        // A Vec writer and string values leave serde_json nothing to fail on.
        panic!("serde_json failed on an in-memory CEL event: {error}");
    }
}

struct Event<'r, 'a> {
    event: &'r CelEvent<'a>,
    options: &'r CelEncodeOptions,
}

/// Asterisk's extra text as an object when it is one.
fn extra_object(text: &str) -> Option<&RawValue> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return None;
    }
    let raw: &RawValue = serde_json::from_str(trimmed).ok()?;
    raw.get().starts_with('{').then_some(raw)
}

impl Serialize for Event<'_, '_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let event = self.event;
        let options = self.options;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("eventname", &Text(event.eventname))?;
        map.serialize_entry(
            "eventtime",
            TimeText::new(event.eventtime, options.usegmtime).as_str(),
        )?;
        map.serialize_entry("userdeftype", &Text(event.userdeftype))?;
        map.serialize_entry("cid_name", &Text(event.cid_name))?;
        map.serialize_entry("cid_num", &Text(event.cid_num))?;
        map.serialize_entry("cid_ani", &Text(event.cid_ani))?;
        map.serialize_entry("cid_rdnis", &Text(event.cid_rdnis))?;
        map.serialize_entry("cid_dnid", &Text(event.cid_dnid))?;
        map.serialize_entry("exten", &Text(event.exten))?;
        map.serialize_entry("context", &Text(event.context))?;
        map.serialize_entry("channame", &Text(event.channame))?;
        map.serialize_entry("appname", &Text(event.appname))?;
        map.serialize_entry("appdata", &Text(event.appdata))?;
        map.serialize_entry("accountcode", &Text(event.accountcode))?;
        map.serialize_entry("peeraccount", &Text(event.peeraccount))?;
        map.serialize_entry("uniqueid", &Text(event.uniqueid))?;
        map.serialize_entry("linkedid", &Text(event.linkedid))?;
        map.serialize_entry("amaflags", &Text(event.amaflags))?;
        map.serialize_entry("userfield", &Text(event.userfield))?;
        map.serialize_entry("peer", &Text(event.peer))?;
        if let Some(tenantid) = event.tenantid {
            map.serialize_entry("tenantid", &Text(tenantid))?;
        }
        let extra = String::from_utf8_lossy(event.extra);
        match extra_object(&extra) {
            Some(object) => map.serialize_entry("extra", object)?,
            None => {
                map.serialize_entry("extra", &serde_json::Map::new())?;
                if !extra.trim().is_empty() {
                    map.serialize_entry("extra_raw", extra.as_ref())?;
                }
            }
        }
        map.serialize_entry("EntityID", &options.entity_id)?;
        if !options.system_name.is_empty() {
            map.serialize_entry("SystemName", &options.system_name)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn options() -> CelEncodeOptions {
        CelEncodeOptions {
            usegmtime: false,
            entity_id: "00:11:22:33:44:55".into(),
            system_name: "pbx-01".into(),
        }
    }

    fn hangup() -> CelEvent<'static> {
        CelEvent {
            eventname: b"HANGUP",
            eventtime: CdrTime {
                sec: 1_768_483_800,
                usec: 5_000,
                gmtoff: -3 * 3600,
            },
            cid_name: b"Alice",
            cid_num: b"100",
            exten: b"200",
            context: b"default",
            channame: b"PJSIP/100-00000001",
            appname: b"Dial",
            appdata: b"PJSIP/200,30",
            uniqueid: b"1768483800.1",
            linkedid: b"1768483800.1",
            amaflags: b"DOCUMENTATION",
            tenantid: Some(b""),
            extra:
                br#"{"hangupcause":16,"hangupsource":"PJSIP/200-00000002","dialstatus":"ANSWER"}"#,
            ..CelEvent::default()
        }
    }

    fn encode_to_string(event: &CelEvent<'_>, options: &CelEncodeOptions) -> String {
        let mut out = Vec::new();
        encode(event, options, &mut out);
        String::from_utf8(out).expect("UTF-8")
    }

    #[test]
    fn fields_come_in_order_with_extra_as_an_object() {
        let text = encode_to_string(&hangup(), &options());
        let expected = r#"{"eventname":"HANGUP","eventtime":"2026-01-15T10:30:00.005-0300","userdeftype":"","cid_name":"Alice","cid_num":"100","cid_ani":"","cid_rdnis":"","cid_dnid":"","exten":"200","context":"default","channame":"PJSIP/100-00000001","appname":"Dial","appdata":"PJSIP/200,30","accountcode":"","peeraccount":"","uniqueid":"1768483800.1","linkedid":"1768483800.1","amaflags":"DOCUMENTATION","userfield":"","peer":"","tenantid":"","extra":{"hangupcause":16,"hangupsource":"PJSIP/200-00000002","dialstatus":"ANSWER"},"EntityID":"00:11:22:33:44:55","SystemName":"pbx-01"}"#;
        assert_eq!(text, expected);
    }

    #[test]
    fn empty_extra_is_an_empty_object() {
        let event = CelEvent {
            extra: b"",
            ..hangup()
        };
        let json: Value = serde_json::from_str(&encode_to_string(&event, &options())).unwrap();
        assert_eq!(json["extra"], serde_json::json!({}));
        assert!(json.get("extra_raw").is_none());
    }

    #[test]
    fn extra_that_is_not_a_json_object_goes_under_extra_raw() {
        for raw in [&b"not json {"[..], b"[1,2]", b"\"text\""] {
            let event = CelEvent {
                extra: raw,
                ..hangup()
            };
            let json: Value = serde_json::from_str(&encode_to_string(&event, &options())).unwrap();
            assert_eq!(json["extra"], serde_json::json!({}));
            assert_eq!(json["extra_raw"], String::from_utf8_lossy(raw).as_ref());
        }
    }

    #[test]
    fn invalid_utf8_in_fields_and_extra_is_repaired() {
        let event = CelEvent {
            cid_name: b"Jos\xe9",
            extra: b"{\"name\":\"Jos\xe9\"}",
            ..hangup()
        };
        let json: Value = serde_json::from_str(&encode_to_string(&event, &options())).unwrap();
        assert_eq!(json["cid_name"], "Jos\u{fffd}");
        assert_eq!(json["extra"]["name"], "Jos\u{fffd}");
    }

    #[test]
    fn usegmtime_and_missing_tenant_and_system_name() {
        let event = CelEvent {
            tenantid: None,
            ..hangup()
        };
        let options = CelEncodeOptions {
            usegmtime: true,
            system_name: String::new(),
            ..options()
        };
        let text = encode_to_string(&event, &options);
        let json: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["eventtime"], "2026-01-15T13:30:00.005+0000");
        assert!(json.get("tenantid").is_none());
        assert!(json.get("SystemName").is_none());
    }

    #[test]
    fn key_comes_from_the_named_field() {
        let event = hangup();
        assert_eq!(&*CelKey::Linkedid.key(&event), b"1768483800.1");
        assert_eq!(&*CelKey::Channame.key(&event), b"PJSIP/100-00000001");
        for name in CelKey::NAMES {
            assert_eq!(CelKey::from_name(name).unwrap().name(), name);
        }
        assert_eq!(CelKey::from_name("caller"), None);
    }
}
