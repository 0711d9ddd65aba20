//! The running module: settings, the durable log and the destinations fed from it,
//! swapped whole on reload so a record always sees one consistent configuration.
//!
//! Threads: `log_cdr` runs on Asterisk's CDR thread: it takes a read lock long enough
//! to clone an `Arc`, encodes the record and appends it to the log. `load`, `reload`
//! and `unload` run on short-lived threads the glue starts; they alone start and stop
//! destinations (and so librdkafka's threads), never a CDR callback.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime};

use crate::asterisk::host::{self, Identity};
use crate::cel::CelEncodeOptions;
use crate::config::{self, ConfigError, HostCapabilities, Settings, CONFIG_FILE};
use crate::delivery::feeder::DestinationStats;
use crate::delivery::log::{legacy, Log, LogError, LogSettings, SyncPolicy};
use crate::delivery::stats::Stats;
use crate::delivery::{Delivery, DeliveryError};
use crate::destinations::{self, BuildError};
use crate::record::EncodeOptions;
use crate::{ast_log, asterisk, plan};

pub use crate::destinations::GLOBAL_DESTINATION;

mod control;
mod publish;
mod views;

pub use publish::{log_cdr, log_cel, RecordIds, ShortText};
pub use views::{destination_names, destinations_text, prometheus_text, status_text};

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
                write!(f, "a destination cannot start: {error}")
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
        let plan = plan::for_load(&settings, &identity, &delivery)?;
        for (name, error) in &plan.unbuilt {
            ast_log!(
                Error,
                "destination '{name}' cannot be made now: {error}; its records wait in the spool, it is tried again every second, and 'module reload cdr_kafka.so' applies a fixed file"
            );
        }
        delivery.install(plan.change).map_err(LoadError::Delivery)?;
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
    // Built before anything stops, installed whole or not at all: a reload that cannot
    // complete leaves everything running as it was.
    let summary = {
        let mut delivery = lock(&old.delivery);
        let plan = plan::for_reload(Some(&old.settings), &settings, &identity, &delivery)?;
        let summary = plan.summary();
        let unconfirmed = delivery.install(plan.change).map_err(LoadError::Delivery)?;
        report_unconfirmed(unconfirmed, settings.flush_timeout);
        summary
    };
    let running = Running::new(
        settings,
        identity,
        Arc::clone(&old.log),
        Arc::clone(&old.delivery),
        Arc::clone(&old.stats),
        Arc::clone(&old.record_ids),
    );
    drop(old);
    ast_log!(Notice, "reload: destinations {summary}");
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

/// Why `cdr kafka destination enable|disable` changed nothing.
#[derive(Debug)]
pub enum ToggleError {
    NotRunning,
    NotConfigured(String),
    /// The destination cannot be built (enable).
    Build(BuildError),
    /// Its feeder could not be started or stopped; what ran runs on.
    Install(DeliveryError),
}

impl std::fmt::Display for ToggleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotRunning => write!(f, "cdr_kafka is not running"),
            Self::NotConfigured(name) => write!(
                f,
                "no destination '{name}' is configured (see 'cdr kafka show destinations')"
            ),
            Self::Build(error) => write!(f, "{error}"),
            Self::Install(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for ToggleError {}

/// `cdr kafka destination enable|disable NAME`: stops or starts one destination's
/// feeder without a reload. A disabled destination keeps its place in the log, so what
/// arrives meanwhile is delivered when it is enabled again. Runs on a short-lived
/// thread the glue starts (it starts and joins feeder threads).
pub fn set_destination_enabled(name: &str, enabled: bool) -> Result<String, ToggleError> {
    let running = current().ok_or(ToggleError::NotRunning)?;
    set_destination_enabled_in(&running, name, enabled)
}

fn set_destination_enabled_in(
    running: &Running,
    name: &str,
    enabled: bool,
) -> Result<String, ToggleError> {
    let known = destinations::planned(&running.settings)
        .iter()
        .any(|p| p.name == name);
    if !known {
        return Err(ToggleError::NotConfigured(name.to_string()));
    }
    let mut delivery = lock(&running.delivery);
    match (enabled, delivery.is_running(name)) {
        (true, true) => Ok(format!("destination '{name}' is already enabled")),
        (false, false) => Ok(format!("destination '{name}' is already disabled")),
        (false, true) => {
            let plan = plan::for_disable(&delivery, name);
            let unconfirmed = delivery
                .install(plan.change)
                .map_err(ToggleError::Install)?;
            let waiting = delivery.waiting_for(name);
            ast_log!(Notice, "destination '{name}' disabled from the CLI");
            Ok(format!(
                "destination '{name}' disabled: {waiting} record(s) wait for it in the spool ({unconfirmed} were in flight)"
            ))
        }
        (true, false) => {
            let plan = plan::for_enable(&running.settings, &running.identity, &delivery, name)
                .map_err(ToggleError::Build)?;
            delivery
                .install(plan.change)
                .map_err(ToggleError::Install)?;
            ast_log!(Notice, "destination '{name}' enabled from the CLI");
            Ok(format!(
                "destination '{name}' enabled: it goes on from where it stopped"
            ))
        }
    }
}
