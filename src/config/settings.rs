//! What cdr_kafka.conf says, typed: what the rest of the module reads.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{DestinationSettings, Routing, REDACTED};
use crate::cel::CelKey;
use crate::record::KeyField;

/// Settings of the producer, as librdkafka property names and values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaSettings {
    pub properties: BTreeMap<String, String>,
}

impl KafkaSettings {
    /// Whether a property holds a secret that is never logged or shown.
    pub fn is_secret(property: &str) -> bool {
        property.contains("password")
            || property.contains("secret")
            || property.ends_with(".pem")
            || property == "sasl.oauthbearer.config"
    }

    pub fn get(&self, property: &str) -> Option<&str> {
        self.properties.get(property).map(String::as_str)
    }

    /// The value as it may be shown to an administrator.
    pub fn shown(&self, property: &str) -> Option<&str> {
        self.get(property).map(|value| {
            if Self::is_secret(property) {
                REDACTED
            } else {
                value
            }
        })
    }
}

/// Everything cdr_kafka.conf says, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub topic: String,
    pub key: Option<KeyField>,
    pub loguniqueid: bool,
    pub loguserfield: bool,
    pub usegmtime: bool,
    pub flush_timeout: Duration,
    /// `linger_ms`: the feeders' batching window.
    pub linger: Duration,
    pub connection: Option<String>,
    pub kafka: KafkaSettings,
    pub spool: SpoolOptions,
    pub cel: CelSettings,
    /// `[global]`'s routing options (its Kafka destination is named `global`).
    pub routing: Routing,
    /// The other destinations, in file order.
    pub destinations: Vec<DestinationSettings>,
    /// CRC-32 of the file's options as read (secrets left out): says in the module's
    /// start/stop records which configuration ran.
    pub digest: u32,
}

/// The `[cel]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CelSettings {
    pub enabled: bool,
    pub topic: String,
    pub key: Option<CelKey>,
    /// Event names to publish; empty: all that Asterisk sends.
    pub events: Vec<String>,
    pub usegmtime: bool,
}

impl CelSettings {
    /// Whether events named `name` are published.
    pub fn wants(&self, name: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|event| event == name)
    }
}

/// `spool_sync`: when spooled records and confirmations are forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    Always,
    Interval,
    Never,
}

/// The spool's options; `dir` None: inside Asterisk's spool folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolOptions {
    pub dir: Option<std::path::PathBuf>,
    pub sync: SyncPolicy,
    pub sync_interval: Duration,
    pub max_bytes: u64,
}
