//! Producer options: cdr_kafka.conf's names turned into librdkafka properties, with the
//! module's defaults.

use std::time::Duration;

use super::{
    bad_value, is_option_name, parse_bool, parse_number, ConfigError, DestinationType, Entry,
    KafkaSettings, Settings, CONFIG_FILE, DEFAULT_CLIENT_ID, KAFKA_CONFIG_FILE, OPTIONS,
    PASSTHROUGH_PREFIX, RES_KAFKA_DEFAULT_BROKERS,
};

/// A producer's librdkafka properties from a section's producer options (and the
/// kafka.conf connection it names), with the module's defaults.
pub(super) fn build_producer(
    section: &str,
    producer_entries: &[&Entry],
    read_kafka_conf: &mut dyn FnMut() -> Result<Vec<Entry>, ConfigError>,
) -> Result<KafkaSettings, ConfigError> {
    let mut kafka = KafkaSettings::default();
    let connection = producer_entries
        .iter()
        .rev()
        .find(|e| e.name == "connection")
        .map(|e| e.value.trim())
        .filter(|name| !name.is_empty());
    if let Some(name) = connection {
        let kafka_entries = read_kafka_conf()?;
        let connection_section: Vec<&Entry> =
            kafka_entries.iter().filter(|e| e.section == name).collect();
        let is_connection = connection_section
            .iter()
            .any(|e| e.name == "type" && e.value.trim() == "connection");
        if !is_connection {
            return Err(ConfigError::UnknownConnection {
                name: name.to_string(),
            });
        }
        // res_kafka's default when a connection names no brokers.
        kafka
            .properties
            .insert("bootstrap.servers".into(), RES_KAFKA_DEFAULT_BROKERS.into());
        for entry in connection_section.into_iter().filter(|e| e.name != "type") {
            apply_producer_option(&mut kafka, KAFKA_CONFIG_FILE, entry)?;
        }
    }
    // Options in cdr_kafka.conf override those of the connection.
    for entry in producer_entries.iter().filter(|e| e.name != "connection") {
        apply_producer_option(&mut kafka, CONFIG_FILE, entry)?;
    }
    let properties = &mut kafka.properties;
    if properties
        .get("bootstrap.servers")
        .is_none_or(|brokers| brokers.trim().is_empty())
    {
        return Err(ConfigError::NoBrokers {
            file: CONFIG_FILE,
            section: section.to_string(),
        });
    }
    let sasl = properties
        .get("security.protocol")
        .is_some_and(|protocol| protocol.starts_with("sasl"));
    if sasl && !properties.contains_key("sasl.mechanisms") {
        return Err(ConfigError::MissingOption {
            name: "sasl_mechanisms",
            why: "security_protocol is sasl_*: set sasl_mechanisms (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER)",
        });
    }
    for (property, default) in [
        ("client.id", DEFAULT_CLIENT_ID),
        ("acks", "all"),
        // The feeder hands records over in batches already (linger_ms): librdkafka needs
        // only to gather one hand-over into one request.
        ("linger.ms", "5"),
        ("enable.idempotence", "true"),
        // The spool keeps every record until delivered: librdkafka need not give up.
        ("message.timeout.ms", "0"),
        // Records wait safely in the spool: librdkafka's copies (about 1.5 KB each) need
        // not take 150 MB, as its default of 100,000 would.
        ("queue.buffering.max.messages", "20000"),
    ] {
        properties
            .entry(property.to_string())
            .or_insert_with(|| default.to_string());
    }
    Ok(kafka)
}

/// A destination that gives up on records after `give_up_after_ms` needs its producer
/// to report a record it could not deliver by then (librdkafka's `message.timeout.ms`),
/// or a record in flight would never be given up.
pub(super) fn limit_message_timeouts(settings: &mut Settings) {
    fn limit(kafka: &mut KafkaSettings, give_up: Duration) {
        let ms = give_up.as_millis().min(2_147_483_647);
        let current: u128 = kafka
            .get("message.timeout.ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if current == 0 || current > ms {
            kafka
                .properties
                .insert("message.timeout.ms".into(), ms.to_string());
        }
    }
    let mut shared = settings.routing.give_up_after;
    for destination in &mut settings.destinations {
        let Some(give_up) = destination.routing.give_up_after else {
            continue;
        };
        if destination.kind != DestinationType::Kafka {
            continue;
        }
        match &mut destination.kafka {
            Some(own) => limit(own, give_up),
            None => shared = Some(shared.map_or(give_up, |s| s.min(give_up))),
        }
    }
    if let Some(give_up) = shared {
        limit(&mut settings.kafka, give_up);
    }
}

/// Whether `name` is a producer option of cdr_kafka.conf (for a Kafka destination).
pub(super) fn is_producer_option(name: &str) -> bool {
    name == "connection"
        || name.starts_with(PASSTHROUGH_PREFIX)
        || OPTIONS
            .iter()
            .any(|o| o.name == name && o.librdkafka.is_some())
}

/// Sets one producer option (named as in cdr_kafka.conf) as its librdkafka property.
pub(super) fn apply_producer_option(
    kafka: &mut KafkaSettings,
    file: &'static str,
    entry: &Entry,
) -> Result<(), ConfigError> {
    let value = entry.value.trim();
    let bad = |expected: &str| bad_value(file, entry, expected);
    let one_of = |choices: &[&str]| -> Result<String, ConfigError> {
        let lower = value.to_ascii_lowercase();
        choices
            .iter()
            .find(|choice| choice.to_ascii_lowercase() == lower)
            .map(|choice| choice.to_string())
            .ok_or_else(|| bad(&format!("not one of {}", choices.join(", "))))
    };
    if let Some(property) = entry.name.strip_prefix(PASSTHROUGH_PREFIX) {
        if property.is_empty() {
            return Err(bad("names no librdkafka property after 'rdkafka.'"));
        }
        kafka
            .properties
            .insert(property.to_string(), value.to_string());
        return Ok(());
    }
    let known = OPTIONS
        .iter()
        .find(|o| o.name == entry.name)
        .and_then(|o| o.librdkafka);
    let Some(property) = known else {
        // res_kafka's kafka.conf names more librdkafka properties the same way
        // (message_max_bytes, retries, ...): map them, librdkafka validates them.
        if file == KAFKA_CONFIG_FILE && is_option_name(&entry.name) {
            kafka
                .properties
                .insert(entry.name.replace('_', "."), value.to_string());
            return Ok(());
        }
        return Err(ConfigError::UnknownOption {
            file,
            section: entry.section.clone(),
            name: entry.name.clone(),
            line: entry.line,
        });
    };
    let value = match entry.name.as_str() {
        "security_protocol" => one_of(&["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"])?,
        "sasl_mechanisms" => one_of(&["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"])?,
        "compression_codec" => one_of(&["none", "gzip", "snappy", "lz4", "zstd"])?,
        "acks" => match value.to_ascii_lowercase().as_str() {
            "all" | "-1" => "all".to_string(),
            "0" | "1" => value.to_string(),
            _ => return Err(bad("not all, -1, 0 or 1")),
        },
        "enable_idempotence" => parse_bool(value)
            .ok_or_else(|| bad("not yes or no"))?
            .to_string(),
        "linger_ms" => parse_number(entry, file, 0, 900_000)?.to_string(),
        "message_timeout_ms" => parse_number(entry, file, 0, 2_147_483_647)?.to_string(),
        "queue_buffering_max_messages" => parse_number(entry, file, 1, 2_147_483_647)?.to_string(),
        "brokers" if value.is_empty() => return Err(bad("empty: give host:port[,host:port...]")),
        _ => value.to_string(),
    };
    kafka.properties.insert(property.to_string(), value);
    Ok(())
}
