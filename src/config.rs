//! cdr_kafka.conf as typed, validated settings.
//!
//! Asterisk's own config engine reads the files (see `asterisk::config`); this module
//! only sees `(section, name, value, line)` entries, so every rule here is tested
//! without Asterisk. [`OPTIONS`] is the one list of options: the sample file, the XML
//! documentation and the README table are checked against it by a test.

use std::time::Duration;

use crate::cel::{CelKey, EVENT_NAMES};
use crate::record::KeyField;
use crate::routing::RecordKinds;

mod destinations;
mod error;
mod options;
mod producer;
mod settings;
mod targets;

pub use destinations::{
    known_field, DestinationSettings, DestinationType, Output, OutputFormat, Routing,
    COMMON_OPTIONS, CONTROL_FIELDS, DESTINATION_OPTIONS,
};
pub use error::ConfigError;
pub use options::*;
use producer::{build_producer, is_producer_option, limit_message_timeouts};
pub use settings::*;
pub use targets::Target;

pub const CONFIG_FILE: &str = "cdr_kafka.conf";
/// res_kafka's file, read for `connection = NAME`.
pub const KAFKA_CONFIG_FILE: &str = "kafka.conf";
pub(crate) const GLOBAL: &str = "global";
const CEL: &str = "cel";
/// Options passed to librdkafka unchanged: `rdkafka.<property> = value`.
pub(crate) const PASSTHROUGH_PREFIX: &str = "rdkafka.";
/// What the status output and error messages show instead of a secret.
pub const REDACTED: &str = "********";

/// Asterisk's `ast_true`/`ast_false` words.
fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "yes" | "true" | "y" | "t" | "1" | "on" => Some(true),
        "no" | "false" | "n" | "f" | "0" | "off" => Some(false),
        _ => None,
    }
}

/// What the host Asterisk offers that validation depends on.
#[derive(Debug, Clone, Copy)]
pub struct HostCapabilities {
    /// `struct ast_cdr` has tenantid/peertenantid, and CEL records a tenant id: the
    /// multi-tenant change brought both.
    pub tenant_fields: bool,
}

/// Builds [`Settings`] from cdr_kafka.conf's entries; `read_kafka_conf` is called
/// only when `connection` is set.
pub fn parse(
    entries: &[Entry],
    host: HostCapabilities,
    read_kafka_conf: &mut dyn FnMut() -> Result<Vec<Entry>, ConfigError>,
) -> Result<Settings, ConfigError> {
    let mut settings = Settings {
        topic: DEFAULT_TOPIC.to_string(),
        key: None,
        loguniqueid: false,
        loguserfield: false,
        usegmtime: false,
        flush_timeout: Duration::from_millis(DEFAULT_FLUSH_TIMEOUT_MS),
        linger: Duration::from_millis(DEFAULT_LINGER_MS),
        connection: None,
        kafka: KafkaSettings::default(),
        spool: SpoolOptions {
            dir: None,
            sync: SyncPolicy::Interval,
            sync_interval: Duration::from_millis(1000),
            max_bytes: 0,
        },
        cel: CelSettings {
            enabled: false,
            topic: DEFAULT_CEL_TOPIC.to_string(),
            key: Some(CelKey::Linkedid),
            events: Vec::new(),
            usegmtime: false,
        },
        routing: Routing::new(RecordKinds {
            cdr: true,
            cel: true,
            control: false,
        }),
        destinations: Vec::new(),
        digest: digest(entries),
    };
    let mut producer_entries: Vec<&Entry> = Vec::new();
    let mut global_entries: Vec<&Entry> = Vec::new();
    let mut topic_entry = None;
    let mut sections: Vec<(&str, Vec<&Entry>)> = Vec::new();
    for entry in entries {
        if entry.section == CEL {
            parse_cel_option(&mut settings.cel, entry, host)?;
            continue;
        }
        if entry.section != GLOBAL {
            match sections.iter_mut().find(|(name, _)| *name == entry.section) {
                Some((_, list)) => list.push(entry),
                None => sections.push((&entry.section, vec![entry])),
            }
            continue;
        }
        global_entries.push(entry);
        if destinations::apply_routing_option(&mut settings.routing, entry)? {
            continue;
        }
        let bad = |expected: &str| bad_value(CONFIG_FILE, entry, expected);
        let flag = || parse_bool(&entry.value).ok_or_else(|| bad("not yes or no"));
        match entry.name.as_str() {
            "topic" => topic_entry = Some(entry),
            "key" => settings.key = parse_key(entry, host)?,
            "loguniqueid" => settings.loguniqueid = flag()?,
            "loguserfield" => settings.loguserfield = flag()?,
            "usegmtime" => settings.usegmtime = flag()?,
            "spool_dir" => {
                let dir = entry.value.trim();
                if !dir.is_empty() && !dir.starts_with('/') {
                    return Err(bad("not an absolute path"));
                }
                settings.spool.dir = (!dir.is_empty()).then(|| dir.into());
            }
            "spool_sync" => {
                settings.spool.sync = match entry.value.trim().to_ascii_lowercase().as_str() {
                    "always" => SyncPolicy::Always,
                    "interval" => SyncPolicy::Interval,
                    "never" => SyncPolicy::Never,
                    _ => return Err(bad("not always, interval or never")),
                }
            }
            "spool_sync_interval_ms" => {
                let ms = parse_number(entry, CONFIG_FILE, 1, 3_600_000)?;
                settings.spool.sync_interval = Duration::from_millis(ms);
            }
            "spool_max_bytes" => {
                settings.spool.max_bytes = parse_number(entry, CONFIG_FILE, 0, u64::MAX)?;
            }
            "flush_timeout_ms" => {
                let ms = parse_number(entry, CONFIG_FILE, 0, 3_600_000)?;
                settings.flush_timeout = Duration::from_millis(ms);
            }
            "linger_ms" => {
                // 0 would make a feeder pass without pause while records are in flight.
                let ms = parse_number(entry, CONFIG_FILE, 1, 900_000)?;
                settings.linger = Duration::from_millis(ms);
            }
            "connection" => producer_entries.push(entry),
            "type" => {
                return Err(ConfigError::UnknownOption {
                    file: CONFIG_FILE,
                    section: entry.section.clone(),
                    name: entry.name.clone(),
                    line: entry.line,
                })
            }
            _ => producer_entries.push(entry),
        }
    }
    match destinations::check_routing(&mut settings.routing, &global_entries, topic_entry)? {
        Some(topic) => settings.topic = topic,
        None if settings.routing.topic_template.is_some() => {
            settings.topic = settings
                .routing
                .topic_fallback
                .clone()
                .unwrap_or_else(|| DEFAULT_TOPIC.to_string());
        }
        None => {}
    }
    settings.connection = producer_entries
        .iter()
        .rev()
        .find(|e| e.name == "connection")
        .map(|e| e.value.trim().to_string())
        .filter(|name| !name.is_empty());
    settings.kafka = build_producer(GLOBAL, &producer_entries, read_kafka_conf)?;
    for (name, section_entries) in &sections {
        let destination =
            destinations::parse_section(name, section_entries, host, &mut |section, entries| {
                build_producer(section, entries, read_kafka_conf)
            })?;
        settings.destinations.push(destination);
    }
    refuse_shared_files(&settings.destinations)?;
    refuse_keys_not_in_the_record(&settings, entries)?;
    limit_message_timeouts(&mut settings);
    Ok(settings)
}

/// CRC-32 over every `section name = value` line, secrets' values left out.
fn digest(entries: &[Entry]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    for entry in entries {
        let secret = OPTIONS
            .iter()
            .find(|o| o.name == entry.name)
            .and_then(|o| o.librdkafka)
            .or_else(|| entry.name.strip_prefix(PASSTHROUGH_PREFIX))
            .is_some_and(KafkaSettings::is_secret);
        hasher.update(entry.section.as_bytes());
        hasher.update(b"\0");
        hasher.update(entry.name.as_bytes());
        hasher.update(b"\0");
        hasher.update(if secret { b"" } else { entry.value.as_bytes() });
        hasher.update(b"\n");
    }
    hasher.finalize()
}

/// A destination's key is read from the record: `uniqueid` is there only with
/// `loguniqueid = yes`.
fn refuse_keys_not_in_the_record(
    settings: &Settings,
    entries: &[Entry],
) -> Result<(), ConfigError> {
    for destination in &settings.destinations {
        if destination.key == Some(Some(KeyField::Uniqueid)) && !settings.loguniqueid {
            let entry = entries
                .iter()
                .find(|e| e.section == destination.name && e.name == "key");
            if let Some(entry) = entry {
                return Err(bad_value(
                    CONFIG_FILE,
                    entry,
                    "the records hold uniqueid only with [global] loguniqueid = yes",
                ));
            }
        }
    }
    Ok(())
}

/// Two file destinations on one path would interleave and rotate each other's lines.
fn refuse_shared_files(destinations: &[DestinationSettings]) -> Result<(), ConfigError> {
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for destination in destinations {
        let Some(path) = destination.option("path") else {
            continue;
        };
        let value = path.value.trim();
        if let Some((other, _)) = seen.iter().find(|(_, p)| *p == value) {
            return Err(bad_value(
                CONFIG_FILE,
                path,
                &format!("[{other}] writes to this file already: give each file destination its own path"),
            ));
        }
        seen.push((&destination.name, value));
    }
    Ok(())
}

fn bad_value(file: &'static str, entry: &Entry, expected: &str) -> ConfigError {
    let option = OPTIONS.iter().find(|o| o.name == entry.name);
    let secret = option
        .and_then(|o| o.librdkafka)
        .or_else(|| entry.name.strip_prefix(PASSTHROUGH_PREFIX))
        .is_some_and(KafkaSettings::is_secret);
    ConfigError::BadValue {
        file,
        section: entry.section.clone(),
        name: entry.name.clone(),
        value: if secret {
            REDACTED.into()
        } else {
            entry.value.clone()
        },
        line: entry.line,
        expected: expected.into(),
    }
}

fn parse_number(entry: &Entry, file: &'static str, min: u64, max: u64) -> Result<u64, ConfigError> {
    entry
        .value
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| {
            bad_value(
                file,
                entry,
                &format!("not a whole number from {min} to {max}"),
            )
        })
}

fn parse_cel_option(
    cel: &mut CelSettings,
    entry: &Entry,
    host: HostCapabilities,
) -> Result<(), ConfigError> {
    let bad = |expected: &str| bad_value(CONFIG_FILE, entry, expected);
    let flag = || parse_bool(&entry.value).ok_or_else(|| bad("not yes or no"));
    let value = entry.value.trim();
    match entry.name.as_str() {
        "enabled" => cel.enabled = flag()?,
        "usegmtime" => cel.usegmtime = flag()?,
        "topic" => {
            if !valid_topic(value) {
                return Err(bad(
                    "not a Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -)",
                ));
            }
            cel.topic = value.to_string();
        }
        "key" if value.is_empty() => cel.key = None,
        "key" => {
            let key = CelKey::from_name(value).ok_or_else(|| {
                bad(&format!(
                    "not a CEL field (use {}, or leave empty for no key)",
                    CelKey::NAMES.join(", ")
                ))
            })?;
            if key == CelKey::Tenantid && !host.tenant_fields {
                return Err(bad(
                    "this Asterisk's CEL records have no tenant (it came with 18.25, 20.10, 21.5 and 22.0)",
                ));
            }
            cel.key = Some(key);
        }
        "events" => {
            let mut events = Vec::new();
            for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                let upper = name.to_ascii_uppercase();
                if upper == "ALL" {
                    events.clear();
                    break;
                }
                if !EVENT_NAMES.contains(&upper.as_str()) {
                    return Err(bad(&format!(
                        "'{name}' is not a CEL event (use {}, or ALL)",
                        EVENT_NAMES.join(", ")
                    )));
                }
                events.push(upper);
            }
            cel.events = events;
        }
        _ => {
            return Err(ConfigError::UnknownOption {
                file: CONFIG_FILE,
                section: entry.section.clone(),
                name: entry.name.clone(),
                line: entry.line,
            })
        }
    }
    Ok(())
}

fn parse_key(entry: &Entry, host: HostCapabilities) -> Result<Option<KeyField>, ConfigError> {
    let name = entry.value.trim();
    if name.is_empty() {
        return Ok(None);
    }
    let key = KeyField::from_name(name).ok_or_else(|| {
        bad_value(
            CONFIG_FILE,
            entry,
            &format!(
                "not a CDR field (use {}, or leave empty for no key)",
                KeyField::NAMES.join(", ")
            ),
        )
    })?;
    if key.needs_tenant_fields() && !host.tenant_fields {
        return Err(bad_value(
            CONFIG_FILE,
            entry,
            "this Asterisk's CDRs have no tenant fields (they came with 18.25, 20.10, 21.5 and 22.0)",
        ));
    }
    Ok(Some(key))
}

fn is_option_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn valid_topic(topic: &str) -> bool {
    (1..=249).contains(&topic.len())
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: HostCapabilities = HostCapabilities {
        tenant_fields: true,
    };

    fn entries(section: &str, lines: &[(&str, &str)]) -> Vec<Entry> {
        lines
            .iter()
            .enumerate()
            .map(|(i, (name, value))| Entry {
                section: section.into(),
                name: (*name).into(),
                value: (*value).into(),
                line: i as i32 + 2,
            })
            .collect()
    }

    fn no_kafka_conf() -> Result<Vec<Entry>, ConfigError> {
        panic!("kafka.conf must not be read without connection")
    }

    fn parse_global(lines: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        parse(&entries("global", lines), TENANT, &mut no_kafka_conf)
    }

    fn error_text(lines: &[(&str, &str)]) -> String {
        parse_global(lines).unwrap_err().to_string()
    }

    #[test]
    fn defaults_follow_the_documentation() {
        let settings = parse_global(&[("brokers", "127.0.0.1:9092")]).unwrap();
        assert_eq!(settings.topic, "asterisk_cdr");
        assert_eq!(settings.key, None);
        assert!(!settings.loguniqueid && !settings.loguserfield && !settings.usegmtime);
        assert_eq!(settings.flush_timeout, Duration::from_millis(5000));
        let kafka = &settings.kafka;
        assert_eq!(kafka.get("bootstrap.servers"), Some("127.0.0.1:9092"));
        assert_eq!(kafka.get("acks"), Some("all"));
        assert_eq!(kafka.get("enable.idempotence"), Some("true"));
        assert_eq!(kafka.get("client.id"), Some(DEFAULT_CLIENT_ID));
        assert_eq!(kafka.get("message.timeout.ms"), Some("0"));
        assert_eq!(settings.spool.dir, None);
        assert_eq!(settings.spool.sync, SyncPolicy::Interval);
        assert_eq!(settings.spool.max_bytes, 0);
        for option in OPTIONS {
            if option.name == "topic" {
                assert_eq!(option.default, settings.topic);
            }
        }
    }

    #[test]
    fn every_producer_option_maps_to_its_librdkafka_property() {
        let settings = parse_global(&[
            ("brokers", "k1:9092,k2:9092"),
            ("client_id", "pbx"),
            ("security_protocol", "SASL_SSL"),
            ("sasl_mechanisms", "scram-sha-512"),
            ("sasl_username", "user"),
            ("sasl_password", "s3cret"),
            ("ssl_ca_location", "/etc/ssl/ca.pem"),
            ("ssl_certificate_location", "/etc/ssl/c.pem"),
            ("ssl_key_location", "/etc/ssl/k.pem"),
            ("compression_codec", "zstd"),
            ("linger_ms", "10"),
            ("acks", "-1"),
            ("enable_idempotence", "no"),
            ("message_timeout_ms", "60000"),
            ("queue_buffering_max_messages", "5000"),
            ("debug", "broker,msg"),
            ("rdkafka.socket.keepalive.enable", "true"),
        ])
        .unwrap();
        assert_eq!(settings.linger, Duration::from_millis(10));
        let kafka = &settings.kafka;
        let expect = [
            ("bootstrap.servers", "k1:9092,k2:9092"),
            ("client.id", "pbx"),
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "user"),
            ("sasl.password", "s3cret"),
            ("ssl.ca.location", "/etc/ssl/ca.pem"),
            ("ssl.certificate.location", "/etc/ssl/c.pem"),
            ("ssl.key.location", "/etc/ssl/k.pem"),
            ("compression.codec", "zstd"),
            ("acks", "all"),
            ("linger.ms", "5"),
            ("enable.idempotence", "false"),
            ("message.timeout.ms", "60000"),
            ("queue.buffering.max.messages", "5000"),
            ("debug", "broker,msg"),
            ("socket.keepalive.enable", "true"),
        ];
        for (property, value) in expect {
            assert_eq!(kafka.get(property), Some(value), "{property}");
        }
        assert_eq!(kafka.properties.len(), expect.len());
        assert_eq!(kafka.shown("sasl.password"), Some(REDACTED));
    }

    #[test]
    fn key_caller_is_refused_with_the_list_of_fields() {
        assert_eq!(
            error_text(&[("brokers", "k:9092"), ("key", "caller")]),
            "cdr_kafka.conf [global] key = 'caller' (line 3): not a CDR field (use linkedid, uniqueid, \
             channel, dstchannel, accountcode, src, dst, dcontext, tenantid, peertenantid, or leave \
             empty for no key)"
        );
    }

    #[test]
    fn acks_maybe_is_refused() {
        assert_eq!(
            error_text(&[("brokers", "k:9092"), ("acks", "maybe")]),
            "cdr_kafka.conf [global] acks = 'maybe' (line 3): not all, -1, 0 or 1"
        );
    }

    #[test]
    fn each_bad_value_names_option_and_value() {
        let cases: &[(&str, &str, &str)] = &[
            ("loguniqueid", "perhaps", "not yes or no"),
            ("usegmtime", "2", "not yes or no"),
            ("enable_idempotence", "sometimes", "not yes or no"),
            ("linger_ms", "0", "not a whole number from 1 to 900000"),
            ("message_timeout_ms", "soon", "not a whole number"),
            ("queue_buffering_max_messages", "0", "from 1 to"),
            ("flush_timeout_ms", "forever", "not a whole number"),
            ("security_protocol", "tls", "not one of plaintext, ssl"),
            ("sasl_mechanisms", "GSSAPI", "not one of PLAIN"),
            ("compression_codec", "brotli", "not one of none, gzip"),
            ("topic", "cdr topic", "not a Kafka topic name"),
            ("brokers", "", "empty"),
            ("spool_sync", "sometimes", "not always, interval or never"),
            ("spool_dir", "relative/path", "not an absolute path"),
            ("spool_max_bytes", "lots", "not a whole number"),
            ("spool_sync_interval_ms", "0", "from 1 to"),
        ];
        for (name, value, expected) in cases {
            let text = error_text(&[("brokers", "k:9092"), (name, value)]);
            let prefix = format!("cdr_kafka.conf [global] {name} = '{value}' (line 3): ");
            assert!(text.starts_with(&prefix), "{text}");
            assert!(text.contains(expected), "{text}");
        }
    }

    #[test]
    fn unknown_option_and_section_are_refused() {
        assert_eq!(
            error_text(&[("brokers", "k:9092"), ("brokr", "k:9092")]),
            "cdr_kafka.conf [global] brokr (line 3): unknown option (see 'config show help cdr_kafka')"
        );
        let mut lines = entries("global", &[("brokers", "k:9092")]);
        lines.extend(entries("misc", &[("topic", "x")]));
        let error = parse(&lines, TENANT, &mut no_kafka_conf).unwrap_err();
        assert!(
            matches!(error, ConfigError::UnknownSection { ref section, .. } if section == "misc")
        );
    }

    #[test]
    fn no_brokers_and_no_connection_is_refused() {
        assert_eq!(
            error_text(&[("topic", "cdr")]),
            "cdr_kafka.conf [global]: neither 'brokers' nor 'connection' is set, so there is no Kafka to publish to"
        );
    }

    #[test]
    fn tenant_key_on_asterisk_without_tenant_fields_is_refused() {
        let old = HostCapabilities {
            tenant_fields: false,
        };
        let error = parse(
            &entries("global", &[("brokers", "k:9092"), ("key", "tenantid")]),
            old,
            &mut no_kafka_conf,
        )
        .unwrap_err();
        assert!(error.to_string().contains("no tenant fields"), "{error}");
    }

    #[test]
    fn secrets_never_appear_in_errors() {
        let text = error_text(&[("brokers", "k:9092"), ("rdkafka.", "x")]);
        assert!(text.contains("names no librdkafka property"));
        let settings = parse_global(&[
            ("brokers", "k:9092"),
            ("rdkafka.ssl.key.password", "hunter2"),
        ])
        .unwrap();
        assert_eq!(settings.kafka.shown("ssl.key.password"), Some(REDACTED));
    }

    #[test]
    fn connection_reads_kafka_conf_and_local_options_override() {
        let mut kafka_conf = entries(
            "my-kafka",
            &[
                ("type", "connection"),
                ("brokers", "far:9092"),
                ("client_id", "from-kafka-conf"),
                ("sasl_username", "u"),
            ],
        );
        kafka_conf.extend(entries(
            "other",
            &[("type", "connection"), ("brokers", "x:1")],
        ));
        let mut read = || Ok(kafka_conf.clone());
        let settings = parse(
            &entries(
                "global",
                &[("connection", "my-kafka"), ("client_id", "local")],
            ),
            TENANT,
            &mut read,
        )
        .unwrap();
        assert_eq!(settings.connection.as_deref(), Some("my-kafka"));
        assert_eq!(settings.kafka.get("bootstrap.servers"), Some("far:9092"));
        assert_eq!(settings.kafka.get("client.id"), Some("local"));
        assert_eq!(settings.kafka.get("sasl.username"), Some("u"));
    }

    #[test]
    fn res_kafka_options_of_kafka_conf_pass_to_librdkafka() {
        let mut read = || {
            Ok(entries(
                "k",
                &[
                    ("type", "connection"),
                    ("message_max_bytes", "2000000"),
                    ("retries", "5"),
                ],
            ))
        };
        let settings = parse(
            &entries("global", &[("connection", "k")]),
            TENANT,
            &mut read,
        )
        .unwrap();
        assert_eq!(settings.kafka.get("message.max.bytes"), Some("2000000"));
        assert_eq!(settings.kafka.get("retries"), Some("5"));
        assert_eq!(
            settings.kafka.get("bootstrap.servers"),
            Some("localhost:9092")
        );
        // In cdr_kafka.conf the same name is a typo until proven otherwise.
        let text = error_text(&[("brokers", "k:9092"), ("retries", "5")]);
        assert!(text.contains("retries (line 3): unknown option"), "{text}");
    }

    #[test]
    fn cel_section_is_read_and_checked() {
        let mut lines = entries("global", &[("brokers", "k:9092")]);
        lines.extend(entries(
            "cel",
            &[
                ("enabled", "yes"),
                ("topic", "cel_events"),
                ("key", "channame"),
                ("events", "chan_start, HANGUP,LINKEDID_END"),
                ("usegmtime", "yes"),
            ],
        ));
        let cel = parse(&lines, TENANT, &mut no_kafka_conf).unwrap().cel;
        assert!(cel.enabled && cel.usegmtime);
        assert_eq!(cel.topic, "cel_events");
        assert_eq!(cel.key, Some(CelKey::Channame));
        assert_eq!(cel.events, vec!["CHAN_START", "HANGUP", "LINKEDID_END"]);
        assert!(cel.wants("HANGUP") && !cel.wants("ANSWER"));

        let defaults = parse_global(&[("brokers", "k:9092")]).unwrap().cel;
        assert!(!defaults.enabled);
        assert_eq!(defaults.topic, "asterisk_cel");
        assert_eq!(defaults.key, Some(CelKey::Linkedid));
        assert!(defaults.wants("DTMF"));

        for (name, value, expected) in [
            (
                "events",
                "CHAN_START,HANGOUT",
                "'HANGOUT' is not a CEL event",
            ),
            ("key", "caller", "not a CEL field"),
            ("enabled", "maybe", "not yes or no"),
        ] {
            let mut lines = entries("global", &[("brokers", "k:9092")]);
            lines.extend(entries("cel", &[(name, value)]));
            let text = parse(&lines, TENANT, &mut no_kafka_conf)
                .unwrap_err()
                .to_string();
            assert!(
                text.starts_with(&format!("cdr_kafka.conf [cel] {name} = '{value}'")),
                "{text}"
            );
            assert!(text.contains(expected), "{text}");
        }
    }

    #[test]
    fn sasl_without_mechanism_is_refused() {
        let text = error_text(&[("brokers", "k:9092"), ("security_protocol", "sasl_ssl")]);
        assert!(text.contains("sasl_mechanisms is not set"), "{text}");
    }

    #[test]
    fn unknown_connection_is_refused() {
        let mut read = || Ok(entries("my-kafka", &[("brokers", "far:9092")]));
        let error = parse(
            &entries("global", &[("connection", "my-kafka")]),
            TENANT,
            &mut read,
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "cdr_kafka.conf [global] connection = 'my-kafka': kafka.conf has no section [my-kafka] with type = connection"
        );
    }

    #[test]
    fn bad_value_in_kafka_conf_names_kafka_conf() {
        let mut read = || {
            Ok(entries(
                "k",
                &[
                    ("type", "connection"),
                    ("brokers", "b:1"),
                    ("acks", "maybe"),
                ],
            ))
        };
        let error = parse(
            &entries("global", &[("connection", "k")]),
            TENANT,
            &mut read,
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("kafka.conf [k] acks = 'maybe'"),
            "{error}"
        );
    }
}
