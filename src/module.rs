//! The running module: settings, the durable spool and the producer feeding from it,
//! swapped whole on reload so a record always sees one consistent configuration.
//!
//! Threads: `log_cdr` runs on Asterisk's CDR thread: it takes a read lock long enough
//! to clone an `Arc`, encodes the record and appends it to the spool. `load`, `reload`
//! and `unload` run on short-lived threads the glue starts; they alone create and
//! retire producers. A retired configuration is dropped only once no CDR callback
//! holds it, so a producer is never torn down on the CDR thread.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::asterisk::host::{self, Identity};
use crate::cel::{self, CelEncodeOptions, CelEvent};
use crate::config::{self, ConfigError, HostCapabilities, Settings, CONFIG_FILE};
use crate::delivery::spool::{NewRecord, Spool, SpoolError, SpoolSettings};
use crate::delivery::stats::Stats;
use crate::delivery::Publisher;
use crate::ratelimit::{suppressed_note, RateLimit};
use crate::record::{self, Cdr, EncodeOptions};
use crate::{ast_log, asterisk};

/// Gives every record an id that is unique and stays the same on replay.
pub struct RecordIds {
    prefix: String,
    next: AtomicU64,
}

impl RecordIds {
    fn new(identity: &Identity) -> Self {
        let loaded_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        Self {
            prefix: format!("{}-{loaded_ms:x}", identity.entity_id.replace(':', "")),
            next: AtomicU64::new(1),
        }
    }

    fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.prefix)
    }
}

/// A loaded configuration, its spool, and the producer serving them.
pub struct Running {
    pub settings: Settings,
    pub identity: Identity,
    encode: EncodeOptions,
    cel_encode: CelEncodeOptions,
    publisher: Arc<Publisher>,
    pub spool: Arc<Spool>,
    pub stats: Arc<Stats>,
    record_ids: Arc<RecordIds>,
    started: SystemTime,
}

static RUNNING: RwLock<Option<Arc<Running>>> = RwLock::new(None);

static SPOOL_REFUSED_LOG: RateLimit = RateLimit::new(10);
static SKIPPED_VARIABLE_LOG: RateLimit = RateLimit::new(60);

/// Typical record size: one allocation per record in the common case.
const RECORD_CAPACITY: usize = 1024;
/// The spool's folder inside Asterisk's spool folder (astspooldir).
const SPOOL_SUBDIR: &str = "cdr_kafka";

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

fn spool_settings(settings: &Settings, identity: &Identity) -> SpoolSettings {
    let options = &settings.spool;
    SpoolSettings {
        dir: options
            .dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(&identity.spool_dir).join(SPOOL_SUBDIR)),
        sync: options.sync,
        sync_interval: options.sync_interval,
        max_bytes: options.max_bytes,
    }
}

fn spool_error(error: SpoolError) -> ConfigError {
    ConfigError::Spool {
        message: error.to_string(),
    }
}

impl Running {
    /// Opens the spool (recovering what an earlier run left) and starts the producer
    /// feeding from it: what load does once the files are read.
    pub fn start(settings: Settings, identity: Identity) -> Result<Self, ConfigError> {
        let spool = Spool::open(spool_settings(&settings, &identity)).map_err(spool_error)?;
        let recovery = &spool.recovery;
        if recovery.records > 0 || recovery.torn_tails > 0 || recovery.damaged > 0 {
            ast_log!(
                Notice,
                "spool {}: {} undelivered record(s) from an earlier run will be delivered now; \
                 {} torn tail(s) cut off, {} damaged entr(ies) skipped",
                spool.settings().dir.display(),
                recovery.records,
                recovery.torn_tails,
                recovery.damaged
            );
        }
        let stats = Arc::new(Stats::default());
        // Recovered records may have reached the broker before a crash.
        stats
            .duplicates_possible
            .fetch_add(recovery.records, Ordering::Relaxed);
        let spool = Arc::new(spool);
        let publisher = Publisher::start(&settings.kafka, Arc::clone(&spool), Arc::clone(&stats))?;
        publisher.set_flush_timeout(settings.flush_timeout);
        publisher.run()?;
        let record_ids = Arc::new(RecordIds::new(&identity));
        Ok(Self::new(
            settings,
            identity,
            Arc::new(publisher),
            spool,
            stats,
            record_ids,
        ))
    }

    fn new(
        settings: Settings,
        identity: Identity,
        publisher: Arc<Publisher>,
        spool: Arc<Spool>,
        stats: Arc<Stats>,
        record_ids: Arc<RecordIds>,
    ) -> Self {
        let encode = EncodeOptions {
            loguniqueid: settings.loguniqueid,
            loguserfield: settings.loguserfield,
            usegmtime: settings.usegmtime,
            entity_id: identity.entity_id.clone(),
            system_name: identity.system_name.clone(),
        };
        let cel_encode = CelEncodeOptions {
            usegmtime: settings.cel.usegmtime,
            entity_id: identity.entity_id.clone(),
            system_name: identity.system_name.clone(),
        };
        Self {
            settings,
            identity,
            encode,
            cel_encode,
            publisher,
            spool,
            stats,
            record_ids,
            started: SystemTime::now(),
        }
    }

    /// Records handed to librdkafka and not yet delivered or failed.
    pub fn in_flight(&self) -> u64 {
        self.publisher.in_flight()
    }

    /// Stops the producer after waiting up to `flush_timeout_ms` for records in flight;
    /// returns how many were still unconfirmed (they stay in the spool).
    pub fn shutdown(self) -> u64 {
        let flush_timeout = self.settings.flush_timeout;
        match Arc::try_unwrap(self.publisher) {
            Ok(publisher) => publisher.shutdown(flush_timeout),
            // Still serving the configuration that replaced this one.
            Err(_) => 0,
        }
    }

    /// Encodes one CDR and appends it to the spool; the feeder takes it from there.
    pub fn publish(&self, cdr: &Cdr<'_>) -> Result<(), SpoolError> {
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
        let record_id = self.record_ids.next();
        let key = self.settings.key.map(|field| field.key(cdr));
        let timestamp = unix_seconds_text();
        let mut headers = Headers::default();
        self.headers(&record_id, &timestamp, &mut headers);
        let record = NewRecord {
            record_id: &record_id,
            topic: &self.settings.topic,
            key: key.as_deref(),
            headers: headers.as_slice(),
            payload: &payload,
        };
        self.append(&record, &self.stats.spooled, &self.stats.failed, "CDR")
    }

    /// Appends to the spool; a refusal is counted, remembered and logged (rate-limited).
    fn append(
        &self,
        record: &NewRecord<'_>,
        spooled: &AtomicU64,
        failed: &AtomicU64,
        what: &str,
    ) -> Result<(), SpoolError> {
        match self.spool.append_new(record) {
            Ok(_) => {
                Stats::add(spooled);
                Ok(())
            }
            Err(error) => {
                Stats::add(failed);
                self.stats
                    .set_last_error(format!("{what} lost: the spool refused it: {error}"));
                if let Some(held) = SPOOL_REFUSED_LOG.check() {
                    ast_log!(
                        Error,
                        "a {what} is lost: the spool refused it: {error}{}",
                        suppressed_note(held)
                    );
                }
                Err(error)
            }
        }
    }

    /// Encodes one CEL event and appends it to the spool, unless `[cel] events`
    /// leaves it out.
    pub fn publish_cel(&self, event: &CelEvent<'_>) -> Result<(), SpoolError> {
        let settings = &self.settings.cel;
        let name = String::from_utf8_lossy(event.eventname);
        if !settings.enabled || !settings.wants(&name) {
            return Ok(());
        }
        Stats::add(&self.stats.cel_received);
        let mut payload = Vec::with_capacity(RECORD_CAPACITY);
        cel::encode(event, &self.cel_encode, &mut payload);
        let record_id = self.record_ids.next();
        let key = settings.key.map(|field| field.key(event));
        let timestamp = unix_seconds_text();
        let mut headers = Headers::default();
        self.headers(&record_id, &timestamp, &mut headers);
        headers.push("event", name.as_bytes());
        let record = NewRecord {
            record_id: &record_id,
            topic: &settings.topic,
            key: key.as_deref(),
            headers: headers.as_slice(),
            payload: &payload,
        };
        self.append(
            &record,
            &self.stats.cel_spooled,
            &self.stats.cel_failed,
            "CEL event",
        )
    }

    /// The contract's headers, plus `record_id`.
    fn headers<'h>(&'h self, record_id: &'h str, timestamp: &'h str, out: &mut Headers<'h>) {
        let identity = &self.identity;
        out.push("entity_id", identity.entity_id.as_bytes());
        if !identity.system_name.is_empty() {
            out.push("system_name", identity.system_name.as_bytes());
        }
        out.push("asterisk_version", identity.asterisk_version.as_bytes());
        out.push("timestamp", timestamp.as_bytes());
        out.push("hostname", identity.hostname.as_bytes());
        out.push("record_id", record_id.as_bytes());
    }
}

/// The headers of one message, on the stack (at most 7: the CDR's six and CEL's `event`).
#[derive(Default)]
struct Headers<'a> {
    entries: [(&'a str, &'a [u8]); 7],
    len: usize,
}

impl<'a> Headers<'a> {
    fn push(&mut self, name: &'a str, value: &'a [u8]) {
        if let Some(slot) = self.entries.get_mut(self.len) {
            *slot = (name, value);
            self.len += 1;
        }
    }

    fn as_slice(&self) -> &[(&'a str, &'a [u8])] {
        &self.entries[..self.len]
    }
}

/// Unix seconds now, as the `timestamp` header's text.
fn unix_seconds_text() -> String {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .to_string()
}

/// Reads the configuration, opens the spool and starts the producer. The error is the
/// admin's message.
pub fn load() -> Result<(), ConfigError> {
    let identity = Identity::from_host();
    let settings = read_settings(&identity)?;
    let running = Running::start(settings, identity)?;
    ast_log!(
        Notice,
        "publishing CDRs to Kafka topic '{}' at {} (spool {})",
        running.settings.topic,
        running
            .settings
            .kafka
            .get("bootstrap.servers")
            .unwrap_or_default(),
        running.spool.settings().dir.display()
    );
    let cel_enabled = running.settings.cel.enabled;
    if let Some(old) = replace(Some(Arc::new(running))) {
        retire(old);
    }
    set_cel_backend(cel_enabled);
    Ok(())
}

/// Registers or unregisters the CEL backend as `[cel] enabled` says.
fn set_cel_backend(enabled: bool) {
    match host::set_cel_backend(enabled) {
        Ok(()) if enabled => ast_log!(Notice, "publishing CEL events too"),
        Ok(()) => {}
        Err(error) => ast_log!(Error, "{error}; CDRs are published, CEL events are not"),
    }
}

/// Applies a changed configuration; the running one stays when the new one is invalid.
pub fn reload() -> Result<(), ConfigError> {
    let Some(old) = current() else {
        return load();
    };
    let identity = Identity::from_host();
    let mut settings = read_settings(&identity)?;
    if settings.spool != old.settings.spool {
        ast_log!(
            Warning,
            "spool_dir, spool_sync, spool_sync_interval_ms and spool_max_bytes take effect at the next module load; the spool in {} goes on",
            old.spool.settings().dir.display()
        );
        settings.spool = old.settings.spool.clone();
    }
    // Same producer settings: keep the producer, so nothing in flight is disturbed.
    let same_producer = settings.kafka == old.settings.kafka;
    let publisher = if same_producer {
        Arc::clone(&old.publisher)
    } else {
        Arc::new(Publisher::start(
            &settings.kafka,
            Arc::clone(&old.spool),
            Arc::clone(&old.stats),
        )?)
    };
    publisher.set_flush_timeout(settings.flush_timeout);
    let running = Running::new(
        settings,
        identity,
        Arc::clone(&publisher),
        Arc::clone(&old.spool),
        Arc::clone(&old.stats),
        Arc::clone(&old.record_ids),
    );
    drop(old);
    ast_log!(
        Notice,
        "reloaded: publishing CDRs to Kafka topic '{}' at {}",
        running.settings.topic,
        running
            .settings
            .kafka
            .get("bootstrap.servers")
            .unwrap_or_default()
    );
    let cel_enabled = running.settings.cel.enabled;
    if let Some(old) = replace(Some(Arc::new(running))) {
        // The old producer stops before the new one reads the spool: no record twice.
        retire(old);
    }
    set_cel_backend(cel_enabled);
    publisher.run()
}

/// Stops the producer after the glue unregistered the backend; the spool keeps what
/// was not confirmed.
pub fn unload() {
    if let Some(old) = replace(None) {
        retire(old);
    }
}

/// Drops a configuration no longer current, on this (non-CDR) thread: waits until no
/// CDR callback holds it, then stops its producer unless the new one shares it.
fn retire(old: Arc<Running>) {
    let flush_timeout = old.settings.flush_timeout;
    let unconfirmed = wait_until_unshared(old).shutdown();
    if unconfirmed > 0 {
        ast_log!(
            Warning,
            "{unconfirmed} CDR(s) were not confirmed by the broker within flush_timeout_ms = {}; \
             they stay in the spool and are delivered by the next producer",
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
pub fn log_cdr(cdr: &Cdr<'_>) -> Result<(), SpoolError> {
    match current() {
        Some(running) => running.publish(cdr),
        // The glue registers the backend only after a successful load.
        None => Ok(()),
    }
}

/// Publishes one CEL event with the current configuration.
pub fn log_cel(event: &CelEvent<'_>) -> Result<(), SpoolError> {
    match current() {
        Some(running) => running.publish_cel(event),
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
        ("Spooled", Stats::get(&stats.spooled).to_string()),
        ("Spool depth", {
            let (records, bytes) = running.spool.depth();
            format!("{records} records, {bytes} bytes")
        }),
        (
            "Oldest undelivered",
            running.spool.oldest_undelivered_age().map_or_else(
                || "(none)".to_string(),
                |age| format!("at most {age} s old"),
            ),
        ),
        ("Replayed", Stats::get(&stats.replayed).to_string()),
        (
            "Duplicates possible",
            Stats::get(&stats.duplicates_possible).to_string(),
        ),
        (
            "Dead-lettered",
            running
                .spool
                .counters
                .dead_lettered
                .load(Ordering::Relaxed)
                .to_string(),
        ),
        (
            "Spool refused",
            running
                .spool
                .counters
                .refused
                .load(Ordering::Relaxed)
                .to_string(),
        ),
        (
            "Producer restarts",
            Stats::get(&stats.producer_restarts).to_string(),
        ),
        ("CEL", cel_status(&settings.cel)),
        ("CEL received", Stats::get(&stats.cel_received).to_string()),
        ("CEL spooled", Stats::get(&stats.cel_spooled).to_string()),
        ("CEL failed", Stats::get(&stats.cel_failed).to_string()),
        (
            "Spool",
            format!(
                "{} (spool_sync = {})",
                running.spool.settings().dir.display(),
                running.spool.settings().sync.name()
            ),
        ),
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
        text.push_str(&format!("{label:<20}: {value}\n"));
    }
    text
}

fn cel_status(cel: &config::CelSettings) -> String {
    if !cel.enabled {
        return "disabled".to_string();
    }
    let events = if cel.events.is_empty() {
        "all".to_string()
    } else {
        cel.events.join(",")
    };
    format!(
        "enabled, topic '{}', key {}, events {events}",
        cel.topic,
        cel.key.map_or("(none)", |key| key.name())
    )
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
