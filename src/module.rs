//! The running module: settings + cached producer, swapped whole on reload so a record
//! always sees one consistent configuration.
//!
//! Threads: `log_cdr` runs on Asterisk's CDR thread and only takes a read lock long
//! enough to clone an `Arc`. `load`, `reload` and `unload` run on short-lived threads
//! the glue starts; they alone create and retire producers. A retired configuration is
//! dropped only once no CDR callback holds it, so a producer is never torn down on the
//! CDR thread.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::message::{Header, OwnedHeaders};

use crate::asterisk::host::Identity;
use crate::config::{self, ConfigError, HostCapabilities, Settings, CONFIG_FILE};
use crate::delivery::stats::Stats;
use crate::delivery::{Publisher, SendError};
use crate::ratelimit::{suppressed_note, RateLimit};
use crate::record::{self, Cdr, EncodeOptions};
use crate::{ast_log, asterisk};

/// A loaded configuration and the producer serving it.
pub struct Running {
    pub settings: Settings,
    pub identity: Identity,
    encode: EncodeOptions,
    publisher: Arc<Publisher>,
    pub stats: Arc<Stats>,
    started: SystemTime,
}

static RUNNING: RwLock<Option<Arc<Running>>> = RwLock::new(None);

static QUEUE_FULL_LOG: RateLimit = RateLimit::new(10);
static SKIPPED_VARIABLE_LOG: RateLimit = RateLimit::new(60);

/// Typical record size: one allocation per record in the common case.
const RECORD_CAPACITY: usize = 1024;

fn current() -> Option<Arc<Running>> {
    RUNNING.read().ok().and_then(|running| running.clone())
}

fn replace(new: Option<Arc<Running>>) -> Option<Arc<Running>> {
    match RUNNING.write() {
        Ok(mut running) => std::mem::replace(&mut *running, new),
        Err(poisoned) => std::mem::replace(&mut *poisoned.into_inner(), new),
    }
}

fn read_settings(identity: &Identity) -> Result<Settings, ConfigError> {
    let entries = asterisk::config::read(CONFIG_FILE)?;
    let host = HostCapabilities {
        tenant_fields: identity.tenant_fields,
    };
    config::parse(&entries, host, &mut || {
        asterisk::config::read(config::KAFKA_CONFIG_FILE)
    })
}

impl Running {
    fn new(
        settings: Settings,
        identity: Identity,
        publisher: Arc<Publisher>,
        stats: Arc<Stats>,
    ) -> Self {
        let encode = EncodeOptions {
            loguniqueid: settings.loguniqueid,
            loguserfield: settings.loguserfield,
            usegmtime: settings.usegmtime,
            entity_id: identity.entity_id.clone(),
            system_name: identity.system_name.clone(),
        };
        Self {
            settings,
            identity,
            encode,
            publisher,
            stats,
            started: SystemTime::now(),
        }
    }

    /// Starts a producer for `settings`: what load does once the files are read.
    pub fn start(settings: Settings, identity: Identity) -> Result<Self, ConfigError> {
        let stats = Arc::new(Stats::default());
        let publisher = Arc::new(Publisher::start(&settings.kafka, Arc::clone(&stats))?);
        Ok(Self::new(settings, identity, publisher, stats))
    }

    /// Records handed over and not yet delivered or failed.
    pub fn in_flight(&self) -> u64 {
        self.publisher.in_flight()
    }

    /// Flushes (up to `flush_timeout_ms`) and stops the producer; returns how many
    /// records were still undelivered.
    pub fn shutdown(self) -> u64 {
        let flush_timeout = self.settings.flush_timeout;
        match Arc::try_unwrap(self.publisher) {
            Ok(publisher) => publisher.shutdown(flush_timeout),
            Err(_) => 0,
        }
    }

    /// Encodes one CDR and hands it to the producer.
    pub fn publish(&self, cdr: &Cdr<'_>) -> Result<(), SendError> {
        Stats::add(&self.stats.received);
        let mut payload = Vec::with_capacity(RECORD_CAPACITY);
        let report = record::encode(cdr, &self.encode, &mut payload);
        if !report.skipped_variables.is_empty() {
            if let Some(held) = SKIPPED_VARIABLE_LOG.check() {
                ast_log!(
                    Warning,
                    "CDR variable(s) {} skipped: the name is a field of the record or came twice{}",
                    report.skipped_variables.join(", "),
                    suppressed_note(held)
                );
            }
        }
        let key = self.settings.key.map(|field| field.key(cdr));
        let result = self.publisher.send(
            &self.settings.topic,
            key.as_deref(),
            &payload,
            self.headers(),
        );
        match &result {
            Ok(()) => Stats::add(&self.stats.queued),
            Err(error) => {
                Stats::add(&self.stats.failed);
                self.stats.set_last_error(error.to_string());
                if let Some(held) = QUEUE_FULL_LOG.check() {
                    ast_log!(
                        Error,
                        "a CDR was not handed to Kafka: {error}{}",
                        suppressed_note(held)
                    );
                }
            }
        }
        result
    }

    fn headers(&self) -> OwnedHeaders {
        let identity = &self.identity;
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .to_string();
        let mut headers = OwnedHeaders::new_with_capacity(5).insert(Header {
            key: "entity_id",
            value: Some(&identity.entity_id),
        });
        if !identity.system_name.is_empty() {
            headers = headers.insert(Header {
                key: "system_name",
                value: Some(&identity.system_name),
            });
        }
        headers
            .insert(Header {
                key: "asterisk_version",
                value: Some(&identity.asterisk_version),
            })
            .insert(Header {
                key: "timestamp",
                value: Some(&timestamp),
            })
            .insert(Header {
                key: "hostname",
                value: Some(&identity.hostname),
            })
    }
}

/// Reads the configuration and starts the producer. The error is the admin's message.
pub fn load() -> Result<(), ConfigError> {
    let identity = Identity::from_host();
    let settings = read_settings(&identity)?;
    let running = Running::start(settings, identity)?;
    ast_log!(
        Notice,
        "publishing CDRs to Kafka topic '{}' at {}",
        running.settings.topic,
        running
            .settings
            .kafka
            .get("bootstrap.servers")
            .unwrap_or_default()
    );
    if let Some(old) = replace(Some(Arc::new(running))) {
        retire(old);
    }
    Ok(())
}

/// Applies a changed configuration; the running one stays when the new one is invalid.
pub fn reload() -> Result<(), ConfigError> {
    let Some(old) = current() else {
        return load();
    };
    let identity = Identity::from_host();
    let settings = read_settings(&identity)?;
    // Same producer settings: keep the producer, so nothing in flight is disturbed.
    let publisher = if settings.kafka == old.settings.kafka {
        Arc::clone(&old.publisher)
    } else {
        Arc::new(Publisher::start(&settings.kafka, Arc::clone(&old.stats))?)
    };
    let stats = Arc::clone(&old.stats);
    drop(old);
    ast_log!(
        Notice,
        "reloaded: publishing CDRs to Kafka topic '{}' at {}",
        settings.topic,
        settings.kafka.get("bootstrap.servers").unwrap_or_default()
    );
    let running = Running::new(settings, identity, publisher, stats);
    if let Some(old) = replace(Some(Arc::new(running))) {
        retire(old);
    }
    Ok(())
}

/// Stops the producer after the glue unregistered the backend.
pub fn unload() {
    if let Some(old) = replace(None) {
        retire(old);
    }
}

/// Drops a configuration no longer current, on this (non-CDR) thread: waits until no
/// CDR callback holds it, then flushes its producer unless the new one shares it.
fn retire(old: Arc<Running>) {
    let flush_timeout = old.settings.flush_timeout;
    // A producer still shared with the new configuration is left running by shutdown.
    let undelivered = wait_until_unshared(old).shutdown();
    if undelivered > 0 {
        ast_log!(
            Error,
            "{undelivered} CDR(s) were still undelivered after flush_timeout_ms = {} and are lost",
            flush_timeout.as_millis()
        );
    }
}

/// A CDR callback holds its `Arc` for microseconds: wait for it to let go.
fn wait_until_unshared(mut running: Arc<Running>) -> Running {
    loop {
        match Arc::try_unwrap(running) {
            Ok(running) => return running,
            Err(shared) => {
                running = shared;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// Publishes one CDR with the current configuration.
pub fn log_cdr(cdr: &Cdr<'_>) -> Result<(), SendError> {
    match current() {
        Some(running) => running.publish(cdr),
        // The glue registers the backend only after a successful load.
        None => Ok(()),
    }
}

/// The text of `cdr kafka show status`.
pub fn status_text() -> String {
    let Some(running) = current() else {
        return "cdr_kafka is not running\n".to_string();
    };
    let settings = &running.settings;
    let kafka = &settings.kafka;
    let stats = &running.stats;
    let mut lines: Vec<(&str, String)> = vec![
        (
            "Brokers",
            kafka.shown("bootstrap.servers").unwrap_or_default().into(),
        ),
        (
            "Connection",
            settings.connection.clone().unwrap_or_else(|| "-".into()),
        ),
        ("Topic", settings.topic.clone()),
        (
            "Key",
            settings
                .key
                .map_or_else(|| "(none)".to_string(), |k| k.name().to_string()),
        ),
        ("Producer", "running".into()),
        ("Running since", format_system_time(running.started)),
        ("Received", Stats::get(&stats.received).to_string()),
        ("Queued", Stats::get(&stats.queued).to_string()),
        ("Delivered", Stats::get(&stats.delivered).to_string()),
        ("Failed", Stats::get(&stats.failed).to_string()),
        ("In flight", running.publisher.in_flight().to_string()),
    ];
    for (label, last) in [
        ("Last error", stats.last_error()),
        ("Last broker error", stats.last_broker_error()),
    ] {
        let text = match last {
            Some((error, when)) => format!("{error} (at {})", format_system_time(when)),
            None => "(none)".into(),
        };
        lines.push((label, text));
    }
    for property in [
        "security.protocol",
        "sasl.mechanisms",
        "sasl.username",
        "sasl.password",
    ] {
        if let Some(value) = kafka.shown(property) {
            lines.push((property, value.to_string()));
        }
    }
    let mut text = String::new();
    for (label, value) in lines {
        text.push_str(&format!("{label:<18}: {value}\n"));
    }
    text
}

fn format_system_time(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    record::format_time(
        record::CdrTime {
            sec: secs,
            usec: 0,
            gmtoff: 0,
        },
        true,
    )
}
