//! The destination sections of cdr_kafka.conf: `[name]` with a `type`, evaluated in
//! file order after `[global]`, and the routing options `[global]` shares with them.
//! Validation only: the module builds the destinations from these settings.

use std::time::Duration;

use super::targets::{parse_target, Target};
use super::{
    bad_value, parse_bool, parse_number, ConfigError, Entry, KafkaSettings, OptionDoc, CONFIG_FILE,
};
use crate::cel::CEL_FIELDS;
use crate::record::{KeyField, CONTRACT_FIELDS};
use crate::routing::control::ControlFlag;
use crate::routing::filter::Filter;
use crate::routing::template::Template;
use crate::routing::{Missed, RecordKinds};

/// The fields of the module's own start/stop records.
pub const CONTROL_FIELDS: [&str; 10] = [
    "type",
    "module_version",
    "asterisk_version",
    "entity_id",
    "system_name",
    "hostname",
    "time",
    "config_digest",
    "counters",
    "spool_depth",
];

/// Names a destination section cannot take: the sections the module owns, and names
/// that would not make a ledger file name.
const RESERVED_SECTIONS: [&str; 3] = ["global", "cel", "general"];

/// `type =` of a destination section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestinationType {
    Kafka,
    File,
    Syslog,
    Http,
}

impl DestinationType {
    fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "kafka" => Some(Self::Kafka),
            "file" => Some(Self::File),
            "syslog" => Some(Self::Syslog),
            "http" => Some(Self::Http),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Kafka => "kafka",
            Self::File => "file",
            Self::Syslog => "syslog",
            Self::Http => "http",
        }
    }

    /// Options of this type besides the common ones.
    fn own_options(self) -> &'static [&'static str] {
        match self {
            Self::Kafka => &["topic", "topic_fallback", "key"],
            Self::File => &["path", "rotate", "rotate_time", "rotate_day", "pretty"],
            Self::Syslog => &["socket", "facility", "level", "tag"],
            Self::Http => &[
                "url",
                "method",
                "header",
                "timeout_ms",
                "batch_max",
                "ca_file",
                "client_cert",
                "client_key",
            ],
        }
    }
}

/// `format =`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    #[default]
    Contract,
    Envelope,
    Kv,
}

/// How a destination writes records.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Output {
    pub format: OutputFormat,
    /// `fields =` as written (validated).
    pub fields: Option<String>,
    pub snake_case: bool,
    pub pretty: bool,
}

/// The options every destination has, `[global]` included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    pub records: RecordKinds,
    pub missed: Missed,
    /// `filter =` lines as written (validated).
    pub filters: Vec<String>,
    /// The topic template when it names fields (Kafka only).
    pub topic_template: Option<String>,
    pub topic_fallback: Option<String>,
    pub control: ControlFlag,
    /// `give_up_after_ms`; `None`: never (the record waits in the log).
    pub give_up_after: Option<Duration>,
    pub output: Output,
    pub enabled: bool,
    /// `linger_ms` of a destination section: its own batching window; `None`:
    /// [global]'s.
    pub linger: Option<Duration>,
}

impl Routing {
    pub fn new(records: RecordKinds) -> Self {
        Self {
            records,
            missed: Missed::Include,
            filters: Vec::new(),
            topic_template: None,
            topic_fallback: None,
            control: ControlFlag::Required,
            give_up_after: None,
            output: Output::default(),
            enabled: true,
            linger: None,
        }
    }
}

/// One `[name] type = ...` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationSettings {
    pub name: String,
    pub kind: DestinationType,
    pub routing: Routing,
    /// Kafka: the topic (fixed) when it is not a template; `None`: the record's own.
    pub topic: Option<String>,
    /// Kafka: `key` when set: the field of the message key (`None`: no key); unset,
    /// the records keep the key they were spooled with ([global]'s or [cel]'s).
    pub key: Option<Option<KeyField>>,
    /// Kafka: its own producer (`brokers` or `connection` in the section); `None`:
    /// the `[global]` producer.
    pub kafka: Option<KafkaSettings>,
    /// The type's own options as written (file, syslog, http), for the lines of
    /// errors and for telling a changed section at reload.
    pub options: Vec<Entry>,
    /// Those options parsed: what the destination delivers to.
    pub target: Target,
}

impl DestinationSettings {
    /// The last value given for a type option.
    pub fn option(&self, name: &str) -> Option<&Entry> {
        self.options.iter().rev().find(|entry| entry.name == name)
    }
}

/// Whether `name` is a field of some record kind `kinds` names.
pub fn known_field(kinds: RecordKinds, name: &str) -> bool {
    (kinds.cdr && CONTRACT_FIELDS.contains(&name))
        || (kinds.cel && CEL_FIELDS.contains(&name))
        || (kinds.control && CONTROL_FIELDS.contains(&name))
}

pub const COMMON_OPTIONS: [&str; 12] = [
    "type",
    "records",
    "missed",
    "filter",
    "control",
    "give_up_after_ms",
    "format",
    "fields",
    "normalize",
    "enabled",
    "linger_ms",
    "topic_fallback",
];

const fn doc(
    name: &'static str,
    default: &'static str,
    types: &'static str,
    summary: &'static str,
) -> OptionDoc {
    OptionDoc {
        name,
        default,
        librdkafka: None,
        types,
        summary,
    }
}

/// Every option of a destination section, in documentation order: the common ones,
/// then each type's own. `types` says which types take it.
pub const DESTINATION_OPTIONS: &[OptionDoc] = &[
    doc("type", "", "all", "kafka, file, syslog or http. Required: a section with a type is a destination."),
    doc("records", "cdr", "all", "Which records it takes: comma list of cdr, cel (with `[cel] enabled = yes`) and control (the module's start/stop records)."),
    doc("missed", "include", "all", "include, only or exclude missed calls (CDRs never answered: `answer` is null)."),
    doc("filter", "", "all", "`NAME OP VALUE`, OP one of = != ~ (regular expression) !~ in (comma list); NAME a record field or `CDR(variable)`. Repeatable: every filter must hold. An absent value compares as empty text."),
    doc("control", "required", "all", "required, optional, sufficient or alternative: how this destination's result weighs in a record's final status, as GnuGk's accounting stack defines them (destinations in file order, [global] first)."),
    doc("give_up_after_ms", "0", "all", "A record not confirmed within this many milliseconds counts as failed for the control flags. 0: never; the record waits in the spool."),
    doc("format", "contract", "all", "contract (the record as documented, byte for byte), envelope (the record inside metadata: type, version, entity_id, system_name, record_id, emitted_at) or kv (`key=value;` line; to syslog with acc's `ACC: call answered:` / `ACC: call missed:` before a CDR)."),
    doc("fields", "", "all", "Comma list of fields to write, in this order, each optionally renamed (`billsec:duration`). Empty: every field."),
    doc("normalize", "none", "all", "none, or snake_case: field names in snake_case (EntityID becomes entity_id)."),
    doc("enabled", "yes", "all", "no: the section is checked but the destination does not run, and the spool keeps nothing for it."),
    doc("linger_ms", "", "all", "This destination's batching window in milliseconds. Empty: [global]'s linger_ms. A longer window costs the PBX less CPU (fewer, larger hand-overs) and delays the records up to that much more: for a file or an HTTP archive, 500 or 1000 is a good choice."),
    doc("topic_fallback", "", "kafka", "With a template `topic`: the topic of a record whose named value is empty or absent. Empty: the topic the record was spooled with."),
    doc("topic", "", "kafka", "Kafka topic, or a template such as `cdr.missed.${accountcode}` (characters a topic cannot hold become `_`). Empty: the topic the record was spooled with ([global]'s or [cel]'s topic)."),
    doc("key", "", "kafka", "CDR field whose value is this destination's message key (the names [global]'s `key` takes; uniqueid needs loguniqueid = yes); empty: no key. Unset: the key the record was spooled with ([global]'s `key` for CDRs, [cel]'s for CEL events)."),
    OptionDoc {
        name: "brokers",
        default: "",
        librdkafka: Some("bootstrap.servers"),
        types: "kafka",
        summary: "Brokers of another cluster: the section gets its own producer. Empty: the [global] producer.",
    },
    doc("connection", "", "kafka", "A kafka.conf connection for the section's own producer, as [global]'s `connection`."),
    doc("<producer option>", "", "kafka", "With its own `brokers` or `connection`: any producer option of [global] (client_id, security_protocol, sasl_*, ssl_*, compression_codec, acks, enable_idempotence, message_timeout_ms, queue_buffering_max_messages, debug, `rdkafka.<property>`), with [global]'s defaults; none is taken from [global]."),
    doc("path", "", "file", "Absolute path of the file, one record a line (0640, owned like its folder). Required."),
    doc("rotate", "never", "file", "never, hourly, daily, weekly, monthly, `L<lines>` (a count, k or m after it: thousands, millions) or `S<size>` (bytes, k, m or g after it); the closed file is renamed `FILE.YYYYMMDD-HHMMSS`."),
    doc("rotate_time", "00:00", "file", "Local time of a daily, weekly or monthly rotation (HH:MM); for hourly, the minute (0 to 59)."),
    doc("rotate_day", "", "file", "Day of a weekly rotation (Sunday to Saturday; default Sunday) or of a monthly one (1 to 31; default 1; a shorter month rotates on its last day)."),
    doc("pretty", "no", "file", "yes: indented JSON, a record over several lines (not with kv)."),
    doc("socket", "/dev/log", "syslog", "The local syslog socket written to (the module never calls openlog)."),
    doc("facility", "local0", "syslog", "kern, user, mail, daemon, auth, syslog, lpr, news, uucp, cron, authpriv, ftp or local0 to local7."),
    doc("level", "info", "syslog", "emerg, alert, crit, err, warning, notice, info or debug."),
    doc("tag", "asterisk", "syslog", "The tag (program name) of each line, up to 32 characters."),
    doc("url", "", "http", "http:// or https:// URL the records are sent to, as JSON lines, a batch a request. Required."),
    doc("method", "post", "http", "post, put or patch."),
    doc("header", "", "http", "`Name: value` sent with every request (a Content-Type here replaces application/x-ndjson). Repeatable."),
    doc("timeout_ms", "5000", "http", "For a whole request, in milliseconds; a request that fails or times out, or a status other than 2xx, is tried again from the spool with backoff."),
    doc("batch_max", "500", "http", "Most records in one request."),
    doc("ca_file", "", "http", "https: absolute path of a PEM file of the CAs that sign the server's certificate, trusted instead of the system's (a private CA). Empty: the system's CAs. The certificate and host name are always verified; a failure is retried, its reason in the status. Read at load and reload."),
    doc("client_cert", "", "http", "https: absolute path of a PEM client certificate (then its intermediate CAs) for a server that requires one (mutual TLS); with client_key. Empty: none."),
    doc("client_key", "", "http", "https: absolute path of client_cert's PEM private key, unencrypted (PKCS#8, RSA or EC), readable by Asterisk only. Empty: none."),
];

/// Applies a routing option of `[global]` or a destination; false when `entry` is not
/// one. Filters and templates are checked once the section's `records` is known.
pub fn apply_routing_option(routing: &mut Routing, entry: &Entry) -> Result<bool, ConfigError> {
    let bad = |expected: &str| bad_value(CONFIG_FILE, entry, expected);
    let value = entry.value.trim();
    match entry.name.as_str() {
        "records" => routing.records = RecordKinds::parse(value).map_err(|e| bad(&e))?,
        "missed" => {
            routing.missed =
                Missed::parse(value).ok_or_else(|| bad("not include, only or exclude"))?
        }
        "filter" => routing.filters.push(value.to_string()),
        "control" => {
            routing.control = ControlFlag::parse(value)
                .ok_or_else(|| bad(&format!("not one of {}", ControlFlag::NAMES.join(", "))))?
        }
        "give_up_after_ms" => {
            let ms = parse_number(entry, CONFIG_FILE, 0, 2_147_483_647)?;
            routing.give_up_after = (ms > 0).then(|| Duration::from_millis(ms));
        }
        "format" => {
            routing.output.format = match value.to_ascii_lowercase().as_str() {
                "contract" => OutputFormat::Contract,
                "envelope" => OutputFormat::Envelope,
                "kv" => OutputFormat::Kv,
                _ => return Err(bad("not contract, envelope or kv")),
            }
        }
        "fields" => routing.output.fields = (!value.is_empty()).then(|| value.to_string()),
        "normalize" => {
            routing.output.snake_case = match value.to_ascii_lowercase().as_str() {
                "snake_case" => true,
                "none" | "" => false,
                _ => return Err(bad("not snake_case or none")),
            }
        }
        "enabled" => routing.enabled = parse_bool(value).ok_or_else(|| bad("not yes or no"))?,
        "topic_fallback" => {
            if !super::valid_topic(value) {
                return Err(bad(
                    "not a Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -)",
                ));
            }
            routing.topic_fallback = Some(value.to_string());
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// Checks what depends on more than one option: filters and templates against the
/// record kinds, `fields` syntax, and that `pretty` is only for files.
pub fn check_routing(
    routing: &mut Routing,
    section_entries: &[&Entry],
    topic: Option<&Entry>,
) -> Result<Option<String>, ConfigError> {
    let kinds = routing.records;
    let known = move |name: &str| known_field(kinds, name);
    let filter_entries = section_entries.iter().filter(|e| e.name == "filter");
    for entry in filter_entries {
        Filter::parse(&entry.value, &known).map_err(|e| bad_value(CONFIG_FILE, entry, &e))?;
    }
    if let Some(entry) = section_entries.iter().rev().find(|e| e.name == "fields") {
        check_fields(&entry.value).map_err(|e| bad_value(CONFIG_FILE, entry, &e))?;
    }
    let Some(topic) = topic else {
        return Ok(None);
    };
    let value = topic.value.trim();
    let template = Template::parse(value, &known).map_err(|e| bad_value(CONFIG_FILE, topic, &e))?;
    if template.is_fixed() {
        if !super::valid_topic(value) {
            return Err(bad_value(
                CONFIG_FILE,
                topic,
                "not a Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -)",
            ));
        }
        Ok(Some(value.to_string()))
    } else {
        routing.topic_template = Some(value.to_string());
        Ok(None)
    }
}

/// `fields = start,src,billsec:duration`: names, each optionally renamed.
fn check_fields(spec: &str) -> Result<(), String> {
    let mut outputs: Vec<&str> = Vec::new();
    for item in spec.split(',').map(str::trim) {
        let (from, to) = item.split_once(':').unwrap_or((item, item));
        let (from, to) = (from.trim(), to.trim());
        if from.is_empty() || to.is_empty() {
            return Err(format!(
                "'{item}' names no field (write name or name:new_name)"
            ));
        }
        if outputs.contains(&to) {
            return Err(format!("'{to}' is written twice"));
        }
        outputs.push(to);
    }
    Ok(())
}

/// Builds a section's own producer settings from its producer options.
pub type ProducerBuilder<'a> =
    dyn FnMut(&str, &[&Entry]) -> Result<KafkaSettings, ConfigError> + 'a;

/// Parses one destination section.
pub fn parse_section(
    name: &str,
    entries: &[&Entry],
    host: super::HostCapabilities,
    build_producer: &mut ProducerBuilder<'_>,
) -> Result<DestinationSettings, ConfigError> {
    let first_line = entries.first().map_or(0, |e| e.line);
    let type_entry = entries.iter().find(|e| e.name == "type");
    let Some(type_entry) = type_entry else {
        return Err(ConfigError::UnknownSection {
            file: CONFIG_FILE,
            section: name.to_string(),
            line: first_line,
        });
    };
    let kind = DestinationType::parse(&type_entry.value)
        .ok_or_else(|| bad_value(CONFIG_FILE, type_entry, "not kafka, file, syslog or http"))?;
    let valid_name = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid_name || RESERVED_SECTIONS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(bad_value(
            CONFIG_FILE,
            type_entry,
            &format!(
                "a destination's section name must be 1 to 64 of a-z A-Z 0-9 _ - and not {}",
                RESERVED_SECTIONS.join(", ")
            ),
        ));
    }
    let mut routing = Routing::new(RecordKinds::CDR);
    let mut options = Vec::new();
    let mut producer_entries: Vec<&Entry> = Vec::new();
    let mut topic_entry = None;
    let mut key = None;
    for entry in entries {
        if entry.name == "type" || apply_routing_option(&mut routing, entry)? {
            continue;
        }
        if entry.name == "linger_ms" {
            let ms = parse_number(entry, CONFIG_FILE, 1, 900_000)?;
            routing.linger = Some(Duration::from_millis(ms));
            continue;
        }
        let own = kind.own_options().contains(&entry.name.as_str());
        match (kind, entry.name.as_str()) {
            (DestinationType::Kafka, "topic") => topic_entry = Some(*entry),
            (DestinationType::Kafka, "key") => key = Some(super::parse_key(entry, host)?),
            (DestinationType::Kafka, _) if super::is_producer_option(&entry.name) => {
                producer_entries.push(entry)
            }
            (DestinationType::File, "pretty") => {
                routing.output.pretty = parse_bool(&entry.value)
                    .ok_or_else(|| bad_value(CONFIG_FILE, entry, "not yes or no"))?
            }
            (_, "pretty") => {
                return Err(bad_value(
                    CONFIG_FILE,
                    entry,
                    "pretty is for file destinations only",
                ))
            }
            _ if own => options.push((*entry).clone()),
            _ => {
                return Err(ConfigError::UnknownOption {
                    file: CONFIG_FILE,
                    section: name.to_string(),
                    name: entry.name.clone(),
                    line: entry.line,
                })
            }
        }
    }
    if routing.output.pretty && routing.output.format == OutputFormat::Kv {
        let entry = entries.iter().rev().find(|e| e.name == "pretty").copied();
        if let Some(entry) = entry {
            return Err(bad_value(
                CONFIG_FILE,
                entry,
                "pretty applies to JSON formats, not kv",
            ));
        }
    }
    if kind != DestinationType::Kafka {
        if let Some(entry) = entries.iter().find(|e| e.name == "topic_fallback") {
            return Err(bad_value(
                CONFIG_FILE,
                entry,
                "topic_fallback is for kafka destinations only",
            ));
        }
    }
    let topic = check_routing(&mut routing, entries, topic_entry)?;
    let own_producer = producer_entries
        .iter()
        .any(|e| e.name == "brokers" || e.name == "connection");
    let kafka = if own_producer {
        Some(build_producer(name, &producer_entries)?)
    } else if let Some(entry) = producer_entries.first() {
        return Err(bad_value(
            CONFIG_FILE,
            entry,
            "this destination uses the [global] producer: set producer options in [global], or give the section its own brokers",
        ));
    } else {
        None
    };
    let required: &[&str] = match kind {
        DestinationType::File => &["path"],
        DestinationType::Http => &["url"],
        _ => &[],
    };
    for option in required {
        if !options.iter().any(|e: &Entry| e.name == *option) {
            return Err(ConfigError::MissingDestinationOption {
                section: name.to_string(),
                name: option,
                line: type_entry.line,
            });
        }
    }
    let target = parse_target(name, kind, &options)?;
    Ok(DestinationSettings {
        name: name.to_string(),
        kind,
        routing,
        topic,
        key,
        kafka,
        options,
        target,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{parse, ConfigError, Entry, HostCapabilities, Settings};
    use super::*;

    fn conf(text: &str) -> Result<Settings, ConfigError> {
        let mut section = String::new();
        let mut entries = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.split(';').next().unwrap_or("").trim();
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_string();
            } else if let Some((name, value)) = line.split_once('=') {
                entries.push(Entry {
                    section: section.clone(),
                    name: name.trim().to_string(),
                    value: value.trim().to_string(),
                    line: index as i32 + 1,
                });
            }
        }
        let host = HostCapabilities {
            tenant_fields: true,
        };
        parse(&entries, host, &mut || Ok(Vec::new()))
    }

    fn error(text: &str) -> String {
        conf(text).expect_err("refused").to_string()
    }

    const ISSUE_EXAMPLE: &str = "
[global]
brokers = 127.0.0.1:9092
topic = asterisk_cdr

[missed]
type = kafka
records = cdr
topic = cdr.missed.${accountcode}
topic_fallback = cdr.missed.unknown
missed = only
filter = dcontext != internal
control = optional

[archive]
type = file
path = /var/log/asterisk/cdr_kafka/cdr.jsonl
rotate = daily
format = envelope
";

    #[test]
    fn the_documented_example_parses_in_file_order() {
        let settings = conf(ISSUE_EXAMPLE).expect("valid");
        let names: Vec<&str> = settings
            .destinations
            .iter()
            .map(|d| d.name.as_str())
            .collect();
        assert_eq!(names, ["missed", "archive"]);
        let missed = &settings.destinations[0];
        assert_eq!(missed.kind, DestinationType::Kafka);
        assert_eq!(
            missed.kafka, None,
            "no brokers of its own: the [global] producer"
        );
        assert_eq!(
            missed.routing.topic_template.as_deref(),
            Some("cdr.missed.${accountcode}")
        );
        assert_eq!(missed.routing.missed, Missed::Only);
        assert_eq!(missed.routing.filters, ["dcontext != internal"]);
        assert_eq!(missed.routing.control, ControlFlag::Optional);
        let archive = &settings.destinations[1];
        assert_eq!(archive.kind, DestinationType::File);
        assert_eq!(archive.routing.output.format, OutputFormat::Envelope);
        assert_eq!(
            archive.option("rotate").map(|e| e.value.as_str()),
            Some("daily")
        );
        assert!(settings.routing.records.cdr && settings.routing.records.cel);
        assert_eq!(settings.routing.control, ControlFlag::Required);
    }

    #[test]
    fn mistakes_in_a_destination_name_file_section_line_and_reason() {
        let cases = [
            (
                "[x]\ntype = kafka\ntopik = a",
                "cdr_kafka.conf [x] topik (line 5): unknown option",
            ),
            (
                "[x]\ntype = ftp",
                "[x] type = 'ftp' (line 4): not kafka, file, syslog or http",
            ),
            ("[x]\nrecords = cdr", "[x] (line 4): unknown section"),
            (
                "[x]\ntype = kafka\ntopic = cdr.${acount}",
                "(line 5): 'acount' is not a field",
            ),
            (
                "[x]\ntype = kafka\nfilter = dst ~ ([",
                "(line 5): bad regular expression",
            ),
            (
                "[x]\ntype = file",
                "[x] (line 4): this type of destination needs 'path'",
            ),
            ("[x]\ntype = http", "needs 'url'"),
            (
                "[x]\ntype = kafka\npretty = yes",
                "pretty is for file destinations only",
            ),
            ("[x]\ntype = kafka\nacks = 1", "uses the [global] producer"),
            (
                "[x]\ntype = kafka\ncontrol = requisite",
                "not one of required, optional",
            ),
            (
                "[x]\ntype = kafka\nmissed = never",
                "not include, only or exclude",
            ),
            (
                "[x]\ntype = kafka\nformat = xml",
                "not contract, envelope or kv",
            ),
            (
                "[x]\ntype = file\npath = /x\nfields = a,b:a",
                "'a' is written twice",
            ),
            (
                "[x]\ntype = syslog\nurl = http://x",
                "[x] url (line 5): unknown option",
            ),
            ("[cel]\ntype = kafka", "unknown option"),
            ("[a b]\ntype = kafka", "section name must be"),
            (
                "[a]\ntype = file\npath = /x\n[b]\ntype = file\npath = /x",
                "[b] path = '/x' (line 8): [a] writes to this file already",
            ),
        ];
        for (section, expected) in cases {
            let text = format!("[global]\nbrokers = k:9092\n{section}\n");
            let message = error(&text);
            assert!(message.contains(expected), "{section:?}: {message}");
        }
    }

    #[test]
    fn a_destination_with_brokers_has_its_own_producer() {
        let settings =
            conf("[global]\nbrokers = k:9092\n[dr]\ntype = kafka\nbrokers = dr:9092\nacks = 1\n")
                .expect("valid");
        let own = settings.destinations[0]
            .kafka
            .as_ref()
            .expect("own producer");
        assert_eq!(own.get("bootstrap.servers"), Some("dr:9092"));
        assert_eq!(own.get("acks"), Some("1"));
        assert_eq!(own.get("enable.idempotence"), Some("true"));
        assert_eq!(settings.kafka.get("acks"), Some("all"));
    }

    #[test]
    fn giving_up_bounds_the_producers_message_timeout() {
        let settings = conf(
            "[global]\nbrokers = k:9092\ncontrol = alternative\ngive_up_after_ms = 30000\n[archive]\ntype = file\npath = /x\ncontrol = sufficient\n",
        )
        .expect("valid");
        assert_eq!(
            settings.routing.give_up_after,
            Some(Duration::from_secs(30))
        );
        assert_eq!(settings.kafka.get("message.timeout.ms"), Some("30000"));
        let never = conf("[global]\nbrokers = k:9092\n").expect("valid");
        assert_eq!(never.kafka.get("message.timeout.ms"), Some("0"));
    }

    #[test]
    fn a_destination_may_have_its_own_batching_window() {
        let settings = conf(
            "[global]\nbrokers = k:9092\nlinger_ms = 100\n[archive]\ntype = file\npath = /x\nlinger_ms = 1000\n",
        )
        .expect("valid");
        assert_eq!(settings.linger, Duration::from_millis(100));
        assert_eq!(settings.routing.linger, None);
        assert_eq!(
            settings.destinations[0].routing.linger,
            Some(Duration::from_secs(1))
        );
        assert!(conf(
            "[global]\nbrokers = k:9092\n[a]\ntype = file\npath = /x\nlinger_ms = soon\n"
        )
        .unwrap_err()
        .to_string()
        .contains("[a] linger_ms = 'soon' (line 6): not a whole number"));
    }

    #[test]
    fn global_topic_may_be_a_template_with_a_fallback() {
        let settings = conf(
            "[global]\nbrokers = k:9092\ntopic = cdr.${accountcode}\ntopic_fallback = cdr.none\n",
        )
        .expect("valid");
        assert_eq!(
            settings.routing.topic_template.as_deref(),
            Some("cdr.${accountcode}")
        );
        assert_eq!(settings.topic, "cdr.none");
        assert!(settings.destinations.is_empty());
    }

    #[test]
    fn documented_destination_options_are_the_options_each_type_takes() {
        let documented = |types: &[&str]| -> Vec<&str> {
            DESTINATION_OPTIONS
                .iter()
                .filter(|o| types.contains(&o.types))
                .map(|o| o.name)
                .collect()
        };
        let mut common = documented(&["all"]);
        common.sort_unstable();
        let mut parsed = COMMON_OPTIONS.to_vec();
        parsed.retain(|name| *name != "topic_fallback");
        parsed.sort_unstable();
        assert_eq!(common, parsed, "options every type takes");
        for kind in [
            DestinationType::Kafka,
            DestinationType::File,
            DestinationType::Syslog,
            DestinationType::Http,
        ] {
            let mut own = documented(&[kind.name()]);
            own.retain(|name| !["brokers", "connection", "<producer option>"].contains(name));
            own.sort_unstable();
            let mut taken = kind.own_options().to_vec();
            taken.sort_unstable();
            assert_eq!(own, taken, "options of type {}", kind.name());
        }
    }

    #[test]
    fn type_options_are_parsed_as_the_file_is_read_whether_enabled_or_not() {
        let global = "[global]\nbrokers = 127.0.0.1:1\ntopic = cdr\n";
        let url = "url = http://127.0.0.1:1/cdr\n";
        for enabled in ["yes", "no"] {
            for (section, named) in [
                (
                    format!("[crm]\ntype = http\n{url}method = PUTT\n"),
                    "[crm] method = 'PUTT' (line 7)",
                ),
                (
                    format!("[crm]\ntype = http\n{url}timeout_ms = 0\n"),
                    "[crm] timeout_ms = '0' (line 7)",
                ),
                (
                    "[crm]\ntype = http\nurl = ftp://127.0.0.1/cdr\n".to_string(),
                    "[crm]: ",
                ),
                (
                    "[logs]\ntype = syslog\nfacility = kernel9\n".to_string(),
                    "[logs] facility = 'kernel9' (line 6)",
                ),
                (
                    "[archive]\ntype = file\npath = relative.json\n".to_string(),
                    "[archive] path = 'relative.json' (line 6)",
                ),
                (
                    "[archive]\ntype = file\npath = /var/log/a.json\nrotate = sometimes\n"
                        .to_string(),
                    "[archive] rotate = 'sometimes' (line 7)",
                ),
            ] {
                let text = format!("{global}{section}enabled = {enabled}\n");
                let refused = error(&text);
                assert!(refused.contains(named), "{refused}\n{text}");
            }
        }
    }

    #[test]
    fn a_sections_own_options_become_its_target() {
        let settings = conf(
            "[global]\nbrokers = 127.0.0.1:1\ntopic = cdr\n\
             [crm]\ntype = http\nurl = https://crm.example/cdr\nmethod = PUT\n\
             timeout_ms = 2500\nheader = X-Tenant: 7\nca_file = /etc/ssl/crm.pem\n\
             [logs]\ntype = syslog\nfacility = local3\nlevel = notice\ntag = pbx\n\
             [archive]\ntype = file\npath = /var/log/cdr.json\nrotate = L1000\n\
             [copy]\ntype = kafka\ntopic = copy\n",
        )
        .unwrap();
        let target = |name: &str| {
            let section = settings.destinations.iter().find(|d| d.name == name);
            section.unwrap().target.clone()
        };
        let Target::Http(http) = target("crm") else {
            panic!("crm is not http")
        };
        assert_eq!(http.url, "https://crm.example/cdr");
        assert_eq!(http.method, crate::delivery::http::Method::Put);
        assert_eq!(http.timeout, Duration::from_millis(2500));
        assert_eq!(http.headers, [("X-Tenant".to_string(), "7".to_string())]);
        assert!(target("crm").reads_tls_files());
        let Target::Syslog(syslog) = target("logs") else {
            panic!("logs is not syslog")
        };
        assert_eq!(
            (syslog.facility, syslog.level, syslog.tag.as_str()),
            (
                crate::delivery::syslog::Facility::Local(3),
                crate::delivery::syslog::Level::Notice,
                "pbx"
            )
        );
        assert_eq!(
            target("archive"),
            Target::File {
                path: "/var/log/cdr.json".into(),
                rotation: crate::delivery::file::Rotation::Lines(1000),
            }
        );
        assert_eq!(target("copy"), Target::Kafka);
        assert!(!target("logs").reads_tls_files());
    }
}
