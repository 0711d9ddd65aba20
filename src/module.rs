//! The running module: settings, the durable log and the destinations fed from it,
//! swapped whole on reload so a record always sees one consistent configuration.
//!
//! Threads: `log_cdr` runs on Asterisk's CDR thread: it takes a read lock long enough
//! to clone an `Arc`, encodes the record and appends it to the log. `load`, `reload`
//! and `unload` run on short-lived threads the glue starts; they alone start and stop
//! destinations (and so librdkafka's threads), never a CDR callback.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::asterisk::host::{self, Identity};
use crate::cel::{self, CelEncodeOptions, CelEvent};
use crate::config::{self, ConfigError, HostCapabilities, Settings, CONFIG_FILE};
use crate::delivery::destination::Destination;
use crate::delivery::feeder::{DestinationStats, Rules};
use crate::delivery::kafka::SharedProducer;
use crate::delivery::log::{
    legacy, AppendError, Log, LogError, LogSettings, NewRecord, RecordKind, SyncPolicy,
};
use crate::delivery::stack::Stack;
use crate::delivery::stats::Stats;
use crate::delivery::{Delivery, DeliveryError};
use crate::destinations::{self, feeder_settings, BuildError};
use crate::ratelimit::{suppressed_note, RateLimit};
use crate::record::{self, Cdr, EncodeOptions};
use crate::routing::KAFKA_TO_HEADER;
use crate::{ast_log, asterisk};

pub use crate::destinations::GLOBAL_DESTINATION;

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

    fn next(&self) -> ShortText {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut text = ShortText::default();
        let _ = write!(text, "{}-{n}", self.prefix);
        text
    }
}

/// A short text built on the stack (a record id, a timestamp): no allocation on the
/// CDR thread. Longer text is cut, which the ids and numbers here never are.
pub struct ShortText {
    bytes: [u8; 64],
    len: usize,
}

impl Default for ShortText {
    fn default() -> Self {
        Self {
            bytes: [0; 64],
            len: 0,
        }
    }
}

impl ShortText {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

impl std::fmt::Write for ShortText {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        let end = self.len + text.len();
        let slot = self.bytes.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        slot.copy_from_slice(text.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// A snapshot of the module's counters (see `Running::counts`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub received: u64,
    pub spooled: u64,
    /// Refused by the spool (full, or the disk failed).
    pub refused: u64,
    /// Handed to a destination (again after a retry).
    pub queued: u64,
    pub delivered: u64,
    pub dead_lettered: u64,
    pub replayed: u64,
    pub in_flight: u64,
    pub rebuilds: u64,
    /// Records in the log some destination has not confirmed.
    pub waiting: u64,
}

/// A loaded configuration, its log, and the destinations serving them.
pub struct Running {
    pub settings: Settings,
    pub identity: Identity,
    encode: EncodeOptions,
    cel_encode: CelEncodeOptions,
    pub log: Arc<Log>,
    delivery: Arc<Mutex<Delivery>>,
    pub stats: Arc<Stats>,
    record_ids: Arc<RecordIds>,
    started: SystemTime,
}

static RUNNING: RwLock<Option<Arc<Running>>> = RwLock::new(None);

static SPOOL_REFUSED_LOG: RateLimit = RateLimit::new(10);
static SKIPPED_VARIABLE_LOG: RateLimit = RateLimit::new(60);

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

fn log_settings(settings: &Settings, identity: &Identity) -> LogSettings {
    let options = &settings.spool;
    LogSettings {
        dir: options
            .dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(&identity.spool_dir).join(SPOOL_SUBDIR)),
        sync: match options.sync {
            config::SyncPolicy::Always => SyncPolicy::Always,
            config::SyncPolicy::Interval => SyncPolicy::Interval,
            config::SyncPolicy::Never => SyncPolicy::Never,
        },
        sync_interval: options.sync_interval,
        max_bytes: options.max_bytes,
    }
}

/// Starts every destination `settings` enables (ledgers of the same names carry over).
fn start_destinations(
    delivery: &mut Delivery,
    settings: &Settings,
    identity: &Identity,
) -> Result<(), LoadError> {
    let (stack, shared, built) = build_destinations(settings, identity)?;
    delivery.stack = stack;
    delivery.shared_producer = Some(shared);
    for (destination, rules) in built {
        let unconfirmed = delivery
            .start_with_rules(destination, feeder_settings(settings), rules)
            .map_err(LoadError::Delivery)?;
        report_unconfirmed(unconfirmed, settings.flush_timeout);
    }
    Ok(())
}

/// Builds every destination `settings` enables, with their stack.
fn build_destinations(settings: &Settings, identity: &Identity) -> Result<Built, LoadError> {
    let stack: Option<Arc<Stack>> = destinations::stack(settings);
    let shared = destinations::shared_producer(settings)?;
    let mut built = Vec::new();
    for planned in destinations::planned(settings) {
        built.push(destinations::build(
            settings,
            identity,
            &planned.name,
            stack.as_ref(),
            &shared,
        )?);
    }
    Ok((stack, shared, built))
}

type Built = (
    Option<Arc<Stack>>,
    Arc<SharedProducer>,
    Vec<(Box<dyn Destination>, Rules)>,
);

/// Why the module could not load, or a reload was refused.
#[derive(Debug)]
pub enum LoadError {
    /// cdr_kafka.conf (or the kafka.conf it names) is invalid.
    Config(ConfigError),
    /// A destination could not be built (its options, its producer, its target).
    Build(BuildError),
    /// The spool folder cannot be used.
    Spool(LogError),
    /// A destination could not be started (its ledger, its thread).
    Delivery(DeliveryError),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config(error) => write!(f, "{error}"),
            Self::Build(error) => write!(f, "{error}"),
            Self::Spool(error) => write!(f, "spool: {error}"),
            Self::Delivery(error) => {
                write!(f, "{CONFIG_FILE}: a destination cannot start: {error}")
            }
        }
    }
}

impl std::error::Error for LoadError {}

impl From<BuildError> for LoadError {
    fn from(error: BuildError) -> Self {
        Self::Build(error)
    }
}

impl From<ConfigError> for LoadError {
    fn from(error: ConfigError) -> Self {
        Self::Config(error)
    }
}

fn lock(delivery: &Mutex<Delivery>) -> MutexGuard<'_, Delivery> {
    delivery
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Running {
    /// Opens the log (recovering what an earlier run left) and starts the destinations
    /// feeding from it: what load does once the files are read.
    pub fn start(settings: Settings, identity: Identity) -> Result<Self, LoadError> {
        let log = Log::open(log_settings(&settings, &identity)).map_err(LoadError::Spool)?;
        let recovery = &log.recovery;
        if recovery.torn_tails > 0 || recovery.damaged > 0 || recovery.damaged_headers > 0 {
            ast_log!(
                Warning,
                "spool {}: {} torn tail(s) cut off, {} damaged run(s) of bytes skipped, {} damaged segment header(s)",
                log.dir().display(),
                recovery.torn_tails,
                recovery.damaged,
                recovery.damaged_headers
            );
        }
        let migrated = legacy::migrate(&log);
        if migrated.records > 0 {
            ast_log!(
                Notice,
                "spool {}: {} undelivered record(s) of the previous spool format moved into the log",
                log.dir().display(),
                migrated.records
            );
        }
        if migrated.left > 0 {
            ast_log!(
                Warning,
                "spool {}: {} record(s) of the previous spool format could not be moved yet (the log refused one: a full disk or spool_max_bytes); they stay in their files and are moved at the next load",
                log.dir().display(),
                migrated.left
            );
        }
        let log = Arc::new(log);
        let mut delivery = Delivery::new(Arc::clone(&log));
        start_destinations(&mut delivery, &settings, &identity)?;
        let waiting = delivery
            .statuses()
            .iter()
            .map(|status| status.waiting)
            .max()
            .unwrap_or(0);
        if waiting > 0 {
            ast_log!(
                Notice,
                "spool {}: {waiting} undelivered record(s) from an earlier run will be delivered now",
                log.dir().display()
            );
        }
        let record_ids = Arc::new(RecordIds::new(&identity));
        Ok(Self::new(
            settings,
            identity,
            log,
            Arc::new(Mutex::new(delivery)),
            Arc::new(Stats::default()),
            record_ids,
        ))
    }

    fn new(
        settings: Settings,
        identity: Identity,
        log: Arc<Log>,
        delivery: Arc<Mutex<Delivery>>,
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
            log,
            delivery,
            stats,
            record_ids,
            started: SystemTime::now(),
        }
    }

    /// The module's figures now: what Asterisk handed over, and what the destinations
    /// did with it (summed over them).
    pub fn counts(&self) -> Counts {
        let statuses = lock(&self.delivery).statuses();
        let total = |pick: fn(&DestinationStats) -> &AtomicU64| -> u64 {
            statuses
                .iter()
                .map(|status| DestinationStats::get(pick(&status.stats)))
                .sum()
        };
        Counts {
            received: Stats::get(&self.stats.received),
            spooled: Stats::get(&self.stats.spooled),
            refused: Stats::get(&self.stats.failed),
            queued: total(|s| &s.offered),
            delivered: total(|s| &s.delivered),
            dead_lettered: total(|s| &s.failed),
            replayed: total(|s| &s.replayed),
            in_flight: total(|s| &s.in_flight),
            rebuilds: total(|s| &s.rebuilds),
            waiting: statuses.iter().map(|status| status.waiting).sum(),
        }
    }

    /// Each destination's own status line (its target and real state).
    pub fn destination_states(&self) -> Vec<String> {
        lock(&self.delivery)
            .statuses()
            .iter()
            .map(|status| {
                status
                    .stats
                    .describe
                    .lock()
                    .map(|line| line.clone())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Records handed to a destination and not yet confirmed or failed.
    pub fn in_flight(&self) -> u64 {
        lock(&self.delivery)
            .statuses()
            .iter()
            .map(|status| DestinationStats::get(&status.stats.in_flight))
            .sum()
    }

    /// Stops every destination after waiting up to `flush_timeout_ms` for records in
    /// flight; returns how many were still unconfirmed (they stay in the log).
    pub fn shutdown(&self) -> u64 {
        self.shutdown_within(None)
    }

    /// As `shutdown`, the wait cut to `budget` when that is shorter.
    pub fn shutdown_within(&self, budget: Option<Duration>) -> u64 {
        lock(&self.delivery).shutdown_within(budget)
    }

    /// Encodes one CDR and appends it to the spool; the feeder takes it from there.
    pub fn publish(&self, cdr: &Cdr<'_>) -> Result<(), AppendError> {
        Stats::add(&self.stats.received);
        let routing = cdr.dialplan_routing();
        if routing.skip {
            Stats::add(&self.stats.skipped);
            return Ok(());
        }
        let record_id = self.record_ids.next();
        let key = self.settings.key.map(|field| field.key(cdr));
        let timestamp = unix_seconds_text();
        let mut headers = Headers::default();
        self.headers(record_id.as_str(), timestamp.as_str(), &mut headers);
        if let Some(to) = routing.to {
            headers.push(KAFKA_TO_HEADER, to);
        }
        let record = NewRecord {
            kind: RecordKind::Cdr,
            record_id: record_id.as_str(),
            topic: &self.settings.topic,
            key: key.as_deref(),
            headers: headers.as_slice(),
            payload: &[],
        };
        // Encoded straight into the spool's buffer.
        let (appended, report) = self
            .log
            .append_with(&record, |out| record::encode(cdr, &self.encode, out));
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
        self.count_append(appended, &self.stats.spooled, &self.stats.failed, "CDR")
    }

    /// Counts an append; a refusal is also remembered and logged (rate-limited).
    fn count_append(
        &self,
        appended: Result<u64, AppendError>,
        spooled: &AtomicU64,
        failed: &AtomicU64,
        what: &str,
    ) -> Result<(), AppendError> {
        match appended {
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
    pub fn publish_cel(&self, event: &CelEvent<'_>) -> Result<(), AppendError> {
        let settings = &self.settings.cel;
        let name = String::from_utf8_lossy(event.eventname);
        if !settings.enabled || !settings.wants(&name) {
            return Ok(());
        }
        Stats::add(&self.stats.cel_received);
        let record_id = self.record_ids.next();
        let key = settings.key.map(|field| field.key(event));
        let timestamp = unix_seconds_text();
        let mut headers = Headers::default();
        self.headers(record_id.as_str(), timestamp.as_str(), &mut headers);
        headers.push("event", name.as_bytes());
        let record = NewRecord {
            kind: RecordKind::Cel,
            record_id: record_id.as_str(),
            topic: &settings.topic,
            key: key.as_deref(),
            headers: headers.as_slice(),
            payload: &[],
        };
        let (appended, ()) = self
            .log
            .append_with(&record, |out| cel::encode(event, &self.cel_encode, out));
        self.count_append(
            appended,
            &self.stats.cel_spooled,
            &self.stats.cel_failed,
            "CEL event",
        )
    }

    /// Appends the module's own start or stop record (for destinations with
    /// `records = control`); returns its sequence number.
    pub fn publish_control(&self, what: &str) -> Result<u64, AppendError> {
        let record_id = self.record_ids.next();
        let counts = self.counts();
        let identity = &self.identity;
        let (depth, _) = self.log.depth();
        let mut record = serde_json::Map::new();
        let mut put = |name: &str, value: serde_json::Value| {
            record.insert(name.to_string(), value);
        };
        put("type", what.into());
        put("module_version", env!("CARGO_PKG_VERSION").into());
        put("asterisk_version", identity.asterisk_version.clone().into());
        put("entity_id", identity.entity_id.clone().into());
        if !identity.system_name.is_empty() {
            put("system_name", identity.system_name.clone().into());
        }
        put("hostname", identity.hostname.clone().into());
        put(
            "time",
            crate::shaping::contract_time(crate::delivery::log::now_ms(), self.settings.usegmtime)
                .into(),
        );
        put(
            "config_digest",
            format!("crc32:{:08x}", self.settings.digest).into(),
        );
        put(
            "counters",
            serde_json::json!({
                "received": counts.received,
                "spooled": counts.spooled,
                "refused": counts.refused,
                "delivered": counts.delivered,
                "dead_lettered": counts.dead_lettered,
                "skipped": Stats::get(&self.stats.skipped),
            }),
        );
        put("spool_depth", depth.into());
        // serde_json's map keeps keys sorted; the control record's order is the
        // documented one, so it is written field by field.
        let order = config::CONTROL_FIELDS;
        let mut payload = Vec::with_capacity(512);
        payload.push(b'{');
        for name in order {
            if let Some(value) = record.get(name) {
                if payload.len() > 1 {
                    payload.push(b',');
                }
                let _ = serde_json::to_writer(&mut payload, name);
                payload.push(b':');
                let _ = serde_json::to_writer(&mut payload, value);
            }
        }
        payload.push(b'}');
        let timestamp = unix_seconds_text();
        let mut headers = Headers::default();
        self.headers(record_id.as_str(), timestamp.as_str(), &mut headers);
        self.log.append(&NewRecord {
            kind: RecordKind::Control,
            record_id: record_id.as_str(),
            topic: &self.settings.topic,
            key: None,
            headers: headers.as_slice(),
            payload: &payload,
        })
    }

    /// Waits until `deadline` for every running destination that takes control records
    /// to confirm record `seq` (the stop record at unload).
    fn wait_for_control_record(&self, seq: u64, deadline: Instant) {
        let takers: Vec<String> = destinations::planned(&self.settings)
            .into_iter()
            .filter(|p| p.routing.records.control)
            .map(|p| p.name)
            .collect();
        if takers.is_empty() {
            return;
        }
        self.log.wake_feeders();
        while Instant::now() < deadline {
            let statuses = lock(&self.delivery).statuses();
            let done = statuses
                .iter()
                .filter(|s| takers.contains(&s.name))
                .all(|s| DestinationStats::get(&s.stats.watermark) > seq);
            if done {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
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

/// The headers of one message, on the stack (at most 7: the CDR's six and CEL's
/// `event` or the CDR's `kafka_to`).
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
fn unix_seconds_text() -> ShortText {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut text = ShortText::default();
    let _ = write!(text, "{seconds}");
    text
}

/// Reads the configuration, opens the log and starts the destinations. The error is
/// the admin's message.
pub fn load() -> Result<(), LoadError> {
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
        running.log.dir().display()
    );
    let cel_enabled = running.settings.cel.enabled;
    if let Err(error) = running.publish_control("module_start") {
        ast_log!(
            Warning,
            "the module_start record is lost: the spool refused it: {error}"
        );
    }
    if let Some(old) = replace(Some(Arc::new(running))) {
        retire(old, None);
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
pub fn reload() -> Result<(), LoadError> {
    let Some(old) = current() else {
        return load();
    };
    let identity = Identity::from_host();
    let mut settings = read_settings(&identity)?;
    if settings.spool != old.settings.spool {
        ast_log!(
            Warning,
            "spool_dir, spool_sync, spool_sync_interval_ms and spool_max_bytes take effect at the next module load; the spool in {} goes on",
            old.log.dir().display()
        );
        settings.spool = old.settings.spool.clone();
    }
    // Same destinations and pacing: keep them, so nothing in flight is disturbed.
    let same_destinations = settings.kafka == old.settings.kafka
        && settings.routing == old.settings.routing
        && settings.destinations == old.settings.destinations
        && feeder_settings(&settings) == feeder_settings(&old.settings);
    let replacement = if same_destinations {
        None
    } else {
        // Built before anything stops: a destination that cannot be made refuses the
        // reload and the running ones go on.
        Some(build_destinations(&settings, &identity)?)
    };
    let old_names: Vec<String> = destinations::planned(&old.settings)
        .into_iter()
        .map(|p| p.name)
        .collect();
    let running = Running::new(
        settings,
        identity,
        Arc::clone(&old.log),
        Arc::clone(&old.delivery),
        Arc::clone(&old.stats),
        Arc::clone(&old.record_ids),
    );
    drop(old);
    if let Some((stack, shared, built)) = replacement {
        // The old destinations stop (bounded flush) before the new ones read the log,
        // and each ledger passes to the destination of the same name: no record twice,
        // none lost. A destination no longer configured lets the log forget it.
        let mut delivery = lock(&running.delivery);
        let unconfirmed = delivery.shutdown();
        report_unconfirmed(unconfirmed, running.settings.flush_timeout);
        for name in &old_names {
            if !built.iter().any(|(d, _)| d.name() == name) {
                delivery.forget(name);
            }
        }
        delivery.stack = stack;
        delivery.shared_producer = Some(shared);
        for (destination, rules) in built {
            delivery
                .start_with_rules(destination, feeder_settings(&running.settings), rules)
                .map_err(LoadError::Delivery)?;
        }
    } else {
        // What the file enables runs after a reload, also what the CLI disabled.
        for planned in destinations::planned(&running.settings) {
            if !lock(&running.delivery).is_running(&planned.name) {
                let message =
                    set_destination_enabled_in(&running, &planned.name, true).map_err(|error| {
                        LoadError::Build(BuildError::Open {
                            name: planned.name.clone(),
                            error,
                        })
                    })?;
                ast_log!(Notice, "reload: {message}");
            }
        }
    }
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
    // The old configuration shares the log and destinations: nothing to stop.
    replace(Some(Arc::new(running)));
    set_cel_backend(cel_enabled);
    Ok(())
}

/// Stops the destinations after the glue unregistered the backend; the log keeps what
/// was not confirmed.
pub fn unload() {
    // One flush_timeout_ms for the module_stop record and the last flush together.
    let mut deadline = None;
    if let Some(running) = current() {
        let by = Instant::now() + running.settings.flush_timeout;
        deadline = Some(by);
        match running.publish_control("module_stop") {
            Ok(seq) => running.wait_for_control_record(seq, by),
            Err(error) => {
                ast_log!(
                    Warning,
                    "the module_stop record is lost: the spool refused it: {error}"
                )
            }
        }
    }
    if let Some(old) = replace(None) {
        retire(old, deadline);
    }
}

fn report_unconfirmed(unconfirmed: u64, flush_timeout: Duration) {
    if unconfirmed > 0 {
        ast_log!(
            Warning,
            "{unconfirmed} record(s) were not confirmed by the broker within flush_timeout_ms = {}; \
             they stay in the spool and are delivered by the next producer",
            flush_timeout.as_millis()
        );
    }
}

/// Drops a configuration no longer current, on this (non-CDR) thread: waits until no
/// CDR callback holds it, then stops its destinations.
fn retire(old: Arc<Running>, deadline: Option<Instant>) {
    let flush_timeout = old.settings.flush_timeout;
    let budget = deadline.map(|by| by.saturating_duration_since(Instant::now()));
    let unconfirmed = wait_until_unshared(old).shutdown_within(budget);
    report_unconfirmed(unconfirmed, flush_timeout);
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
pub fn log_cdr(cdr: &Cdr<'_>) -> Result<(), AppendError> {
    match current() {
        Some(running) => running.publish(cdr),
        // The glue registers the backend only after a successful load.
        None => Ok(()),
    }
}

/// Publishes one CEL event with the current configuration.
pub fn log_cel(event: &CelEvent<'_>) -> Result<(), AppendError> {
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
    let log = &running.log;
    let statuses = lock(&running.delivery).statuses();
    let counters = &log.counters;
    let (depth_records, depth_bytes) = log.depth();
    let mut lines: Vec<(String, String)> = vec![
        (
            "Brokers".into(),
            kafka.shown("bootstrap.servers").unwrap_or_default().into(),
        ),
        (
            "Connection".into(),
            settings.connection.clone().unwrap_or_else(|| "-".into()),
        ),
        ("Topic".into(), settings.topic.clone()),
        (
            "Key".into(),
            settings
                .key
                .map_or_else(|| "(none)".to_string(), |k| k.name().to_string()),
        ),
        ("Running since".into(), format_system_time(running.started)),
        ("Received".into(), Stats::get(&stats.received).to_string()),
        ("Spooled".into(), Stats::get(&stats.spooled).to_string()),
        ("Refused".into(), Stats::get(&stats.failed).to_string()),
    ];
    let total = |pick: fn(&DestinationStats) -> &AtomicU64| -> u64 {
        statuses
            .iter()
            .map(|status| DestinationStats::get(pick(&status.stats)))
            .sum()
    };
    lines.extend([
        ("Queued".into(), total(|s| &s.offered).to_string()),
        ("Delivered".into(), total(|s| &s.delivered).to_string()),
        ("Failed".into(), total(|s| &s.failed).to_string()),
        ("In flight".into(), total(|s| &s.in_flight).to_string()),
        ("Replayed".into(), total(|s| &s.replayed).to_string()),
        ("Retried".into(), total(|s| &s.retried).to_string()),
        (
            "Spool depth".into(),
            format!("{depth_records} records, {depth_bytes} bytes"),
        ),
        (
            "Oldest undelivered".into(),
            log.oldest_undelivered_age()
                .map_or_else(|| "(none)".to_string(), |age| format!("{age} s old")),
        ),
        (
            "Dead-lettered".into(),
            format!(
                "{} (in {})",
                total(|s| &s.failed),
                lock(&running.delivery).dead_letter_path().display()
            ),
        ),
        (
            "Spool refused".into(),
            Stats::get(&counters.refused).to_string(),
        ),
        (
            "Spool sync errors".into(),
            Stats::get(&counters.sync_errors).to_string(),
        ),
        ("Rebuilds".into(), total(|s| &s.rebuilds).to_string()),
        ("CEL".into(), cel_status(&settings.cel)),
        (
            "CEL received".into(),
            Stats::get(&stats.cel_received).to_string(),
        ),
        (
            "CEL spooled".into(),
            Stats::get(&stats.cel_spooled).to_string(),
        ),
        (
            "CEL failed".into(),
            Stats::get(&stats.cel_failed).to_string(),
        ),
        (
            "Spool".into(),
            format!(
                "{} (spool_sync = {})",
                log.dir().display(),
                log.settings().sync.name()
            ),
        ),
    ]);
    for status in &statuses {
        let destination = &status.stats;
        let thread = if destination.running.load(Ordering::Acquire) {
            "feeder running"
        } else {
            "feeder stopped"
        };
        let line = destination
            .describe
            .lock()
            .map(|line| line.clone())
            .unwrap_or_default();
        lines.push((
            format!("Destination {}", status.name),
            format!(
                "{line}; {thread}; delivered {}, failed {}, in flight {}, waiting {}{}",
                DestinationStats::get(&destination.delivered),
                DestinationStats::get(&destination.failed),
                DestinationStats::get(&destination.in_flight),
                status.waiting,
                match DestinationStats::get(&destination.panics) {
                    0 => String::new(),
                    panics => format!(", {panics} pass(es) panicked (see the log)"),
                }
            ),
        ));
        if let Some((error, when)) = destination.last_error.lock().ok().and_then(|l| l.clone()) {
            lines.push((
                format!("Last error {}", status.name),
                format!("{error} (at {})", format_system_time(when)),
            ));
        }
    }
    let text = match stats.last_error() {
        Some((error, when)) => format!("{error} (at {})", format_system_time(when)),
        None => "(none)".into(),
    };
    lines.push(("Last error".into(), text));
    for property in [
        "security.protocol",
        "sasl.mechanisms",
        "sasl.username",
        "sasl.password",
    ] {
        if let Some(value) = kafka.shown(property) {
            lines.push((property.into(), value.to_string()));
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

/// The names of the destinations the configuration enables (CLI completion).
pub fn destination_names() -> Vec<String> {
    current()
        .map(|running| {
            destinations::planned(&running.settings)
                .into_iter()
                .map(|p| p.name)
                .collect()
        })
        .unwrap_or_default()
}

/// The text of `cdr kafka show destinations`: one line per destination.
pub fn destinations_text() -> String {
    let Some(running) = current() else {
        return "cdr_kafka is not running\n".to_string();
    };
    let delivery = lock(&running.delivery);
    let statuses = delivery.statuses();
    let mut text = format!(
        "{:<16} {:<7} {:<9} {:>9} {:>9} {:>7} {:>9} {:>8} {:>8}  {}\n",
        "Destination",
        "Type",
        "State",
        "Matched",
        "Delivered",
        "Failed",
        "Filtered",
        "Skipped",
        "Waiting",
        "Target"
    );
    for planned in destinations::planned(&running.settings) {
        let status = statuses.iter().find(|s| s.name == planned.name);
        let stats = delivery.stats_of(&planned.name);
        let get = |pick: fn(&DestinationStats) -> &AtomicU64| {
            stats.as_ref().map_or(0, |s| DestinationStats::get(pick(s)))
        };
        let (state, waiting) = match status {
            Some(status) => ("running", status.waiting),
            None => ("disabled", delivery.waiting_for(&planned.name)),
        };
        let target = stats
            .as_ref()
            .and_then(|s| s.describe.lock().ok().map(|line| line.clone()))
            .unwrap_or_default();
        let _ = writeln!(
            text,
            "{:<16} {:<7} {:<9} {:>9} {:>9} {:>7} {:>9} {:>8} {:>8}  {}",
            planned.name,
            planned.kind.name(),
            state,
            get(|s| &s.matched),
            get(|s| &s.delivered),
            get(|s| &s.failed),
            get(|s| &s.filtered),
            get(|s| &s.skipped),
            waiting,
            target
        );
    }
    let skipped = Stats::get(&running.stats.skipped);
    let _ = writeln!(
        text,
        "CDRs the dialplan sent nowhere (kafka_skip): {skipped}"
    );
    text
}

/// `cdr kafka destination enable|disable NAME`: stops or starts one destination's
/// feeder without a reload. A disabled destination keeps its place in the log, so what
/// arrives meanwhile is delivered when it is enabled again. Runs on a short-lived
/// thread the glue starts (it starts and joins feeder threads).
pub fn set_destination_enabled(name: &str, enabled: bool) -> Result<String, String> {
    let running = current().ok_or("cdr_kafka is not running")?;
    set_destination_enabled_in(&running, name, enabled)
}

fn set_destination_enabled_in(
    running: &Running,
    name: &str,
    enabled: bool,
) -> Result<String, String> {
    let known = destinations::planned(&running.settings)
        .iter()
        .any(|p| p.name == name);
    if !known {
        return Err(format!(
            "no destination '{name}' is configured (see 'cdr kafka show destinations')"
        ));
    }
    let mut delivery = lock(&running.delivery);
    match (enabled, delivery.is_running(name)) {
        (true, true) => Ok(format!("destination '{name}' is already enabled")),
        (false, false) => Ok(format!("destination '{name}' is already disabled")),
        (false, true) => {
            let unconfirmed = delivery.disable(name).unwrap_or(0);
            let waiting = delivery.waiting_for(name);
            ast_log!(Notice, "destination '{name}' disabled from the CLI");
            Ok(format!(
                "destination '{name}' disabled: {waiting} record(s) wait for it in the spool ({unconfirmed} were in flight)"
            ))
        }
        (true, false) => {
            let stack = delivery.stack.clone();
            let shared = match &delivery.shared_producer {
                Some(shared) => Arc::clone(shared),
                None => destinations::shared_producer(&running.settings)
                    .map_err(|error| error.to_string())?,
            };
            let (destination, rules) = destinations::build(
                &running.settings,
                &running.identity,
                name,
                stack.as_ref(),
                &shared,
            )
            .map_err(|error| error.to_string())?;
            delivery
                .start_with_rules(destination, feeder_settings(&running.settings), rules)
                .map_err(|error| error.to_string())?;
            ast_log!(Notice, "destination '{name}' enabled from the CLI");
            Ok(format!(
                "destination '{name}' enabled: it goes on from where it stopped"
            ))
        }
    }
}

/// The module's figures for res_prometheus; empty when the module is not running. Runs
/// on res_prometheus's HTTP thread: it never waits for the delivery lock (a stop holds
/// it through a flush); that scrape then lacks the destination series.
pub fn prometheus_text() -> String {
    let Some(running) = current() else {
        return String::new();
    };
    let delivery = match running.delivery.try_lock() {
        Ok(delivery) => Some(delivery),
        Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    };
    let mut destinations = Vec::new();
    if let Some(delivery) = &delivery {
        let statuses = delivery.statuses();
        for planned in destinations::planned(&running.settings) {
            let Some(stats) = delivery.stats_of(&planned.name) else {
                continue;
            };
            let status = statuses.iter().find(|s| s.name == planned.name);
            let get = |counter: &AtomicU64| DestinationStats::get(counter);
            destinations.push(crate::metrics::DestinationMetrics {
                name: planned.name.clone(),
                kind: planned.kind.name().to_string(),
                matched: get(&stats.matched),
                delivered: get(&stats.delivered),
                failed: get(&stats.failed),
                filtered: get(&stats.filtered),
                skipped: get(&stats.skipped),
                retried: get(&stats.retried),
                waiting: status.map_or_else(|| delivery.waiting_for(&planned.name), |s| s.waiting),
                in_flight: get(&stats.in_flight),
                enabled: status.is_some(),
                up: status.is_some() && stats.running.load(Ordering::Acquire),
                latency: Some(stats.latency.snapshot()),
            });
        }
    }
    drop(delivery);
    let stats = &running.stats;
    let (depth_records, depth_bytes) = running.log.depth();
    let metrics = crate::metrics::ModuleMetrics {
        received: Stats::get(&stats.received) + Stats::get(&stats.cel_received),
        spooled: Stats::get(&stats.spooled) + Stats::get(&stats.cel_spooled),
        refused: Stats::get(&stats.failed) + Stats::get(&stats.cel_failed),
        skipped: Stats::get(&stats.skipped),
        spool_depth_records: depth_records,
        spool_depth_bytes: depth_bytes,
        oldest_age_seconds: running.log.oldest_undelivered_age().unwrap_or(0) as f64,
        destinations,
    };
    let mut text = String::new();
    crate::metrics::render(&metrics, &mut text);
    text
}
