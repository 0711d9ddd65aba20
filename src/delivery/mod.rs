//! The delivery engine: a durable log every record is appended to, and one feeder
//! thread per destination that reads the log from that destination's own cursor and
//! confirms in that destination's own ledger. The log keeps a record until every
//! destination has confirmed it.
//!
//! Threads: Asterisk's CDR and CEL threads only append to the log. Each destination's
//! feeder thread (`cdr_kafka-NAME`, started and joined by the load/reload/unload
//! threads the glue starts) owns that destination. Nothing here imports the
//! configuration: the module hands over these types.

pub mod dead_letter;
pub mod destination;
#[cfg(test)]
mod engine_model;
pub mod feeder;
pub mod file;
pub mod http;
pub mod kafka;
pub mod log;
pub mod stack;
pub mod stats;
pub mod syslog;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use dead_letter::DeadLetters;
use destination::Destination;
use feeder::{DestinationStats, Feeder, FeederSettings, Rules, Stop};
use log::{Ledger, Log, LogError};

/// Why a destination could not be started.
#[derive(Debug)]
pub enum DeliveryError {
    /// Its ledger could not be opened.
    Ledger(LogError),
    /// Its feeder thread could not be started.
    Thread(std::io::Error),
}

impl std::fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ledger(error) => write!(f, "{error}"),
            Self::Thread(error) => write!(f, "cannot start the feeder thread: {error}"),
        }
    }
}

impl std::error::Error for DeliveryError {}

struct Running {
    name: String,
    stop: Arc<Stop>,
    thread: JoinHandle<(Ledger, u64)>,
    stats: Arc<DestinationStats>,
}

/// One destination's figures for the status.
pub struct DestinationStatus {
    pub name: String,
    pub stats: Arc<DestinationStats>,
    /// Records in the log it has not confirmed.
    pub waiting: u64,
}

/// The log and the feeders of its destinations.
pub struct Delivery {
    log: Arc<Log>,
    dead_letters: Arc<DeadLetters>,
    running: Vec<Running>,
    /// Ledgers of stopped destinations, kept for the next one of the same name.
    parked: Vec<Ledger>,
    /// Each destination's counters, kept across stops so a reload does not reset them.
    stats: Vec<(String, Arc<DestinationStats>)>,
    /// The control-flag stack the running destinations share, when flags couple them.
    pub stack: Option<Arc<stack::Stack>>,
    /// The `[global]` producer the Kafka destinations without brokers of their own share
    /// (kept for a destination enabled later; dropped on the thread that drops this).
    pub shared_producer: Option<Arc<kafka::SharedProducer>>,
    /// When this run started (Unix ms): `give_up_after_ms` counts from here for the
    /// records of an earlier run.
    started_ms: u64,
}

impl Delivery {
    pub fn new(log: Arc<Log>) -> Self {
        let dead_letters = Arc::new(DeadLetters::new(log.dir(), log.io().clone()));
        Self {
            log,
            dead_letters,
            running: Vec::new(),
            parked: Vec::new(),
            stats: Vec::new(),
            stack: None,
            shared_producer: None,
            started_ms: log::now_ms(),
        }
    }

    pub fn log(&self) -> &Arc<Log> {
        &self.log
    }

    pub fn dead_letter_path(&self) -> &std::path::Path {
        self.dead_letters.path()
    }

    /// Starts feeding `destination` from its ledger (a new ledger starts at the next
    /// record appended). A running destination of the same name is stopped first and
    /// its ledger carried over: nothing is lost or doubled by the swap.
    pub fn start(
        &mut self,
        destination: Box<dyn Destination>,
        settings: FeederSettings,
    ) -> Result<u64, DeliveryError> {
        let rules = Rules::everything(destination.name());
        self.start_with_rules(destination, settings, rules)
    }

    /// As `start`, with the destination's routing, format and control-flag rules.
    pub fn start_with_rules(
        &mut self,
        destination: Box<dyn Destination>,
        settings: FeederSettings,
        mut rules: Rules,
    ) -> Result<u64, DeliveryError> {
        rules.tried_since_ms = self.started_ms;
        let name = destination.name().to_string();
        let unconfirmed = self.stop(&name).unwrap_or(0);
        let ledger = match self.parked.iter().position(|l| l.name() == name) {
            Some(index) => self.parked.swap_remove(index),
            None => self.log.register(&name).map_err(DeliveryError::Ledger)?,
        };
        let stats = match self.stats.iter().find(|(n, _)| *n == name) {
            Some((_, stats)) => Arc::clone(stats),
            None => {
                let stats = Arc::new(DestinationStats::default());
                self.stats.push((name.clone(), Arc::clone(&stats)));
                stats
            }
        };
        let feeder = Feeder::new(
            Arc::clone(&self.log),
            ledger,
            destination,
            Arc::clone(&self.dead_letters),
            Arc::clone(&stats),
            settings,
            rules,
        );
        let stop = Arc::new(Stop::default());
        let thread_stop = Arc::clone(&stop);
        // Linux keeps 15 bytes of a thread's name.
        let thread_name: String = format!("cdr_kafka-{name}").chars().take(15).collect();
        let thread = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || feeder.run(&thread_stop))
            .map_err(DeliveryError::Thread)?;
        self.running.push(Running {
            name,
            stop,
            thread,
            stats,
        });
        Ok(unconfirmed)
    }

    /// Stops a destination's feeder after its bounded flush; returns how many records
    /// it left unconfirmed (they stay in the log).
    pub fn stop(&mut self, name: &str) -> Option<u64> {
        let index = self.running.iter().position(|r| r.name == name)?;
        let running = self.running.swap_remove(index);
        running.stop.request(None);
        self.log.wake_feeders();
        Some(self.join(running))
    }

    /// Waits for a stopping feeder; parks its ledger and returns what it left unconfirmed.
    fn join(&mut self, running: Running) -> u64 {
        match running.thread.join() {
            Ok((ledger, unconfirmed)) => {
                self.parked.push(ledger);
                unconfirmed
            }
            // The panic was logged by the hook; the ledger is reread at the next start.
            Err(_) => 0,
        }
    }

    /// Stops a destination until it is started again (the CLI's disable): the log keeps
    /// its records, and destinations after it in the stack stop waiting for it once
    /// its `give_up_after_ms` has passed.
    pub fn disable(&mut self, name: &str) -> Option<u64> {
        let unconfirmed = self.stop(name)?;
        if let Some(stack) = &self.stack {
            if let Some(index) = stack.index_of(name) {
                let above = self
                    .parked
                    .iter()
                    .find(|ledger| ledger.name() == name)
                    .map(|ledger| ledger.state().above.clone())
                    .unwrap_or_default();
                stack.detach(index, above);
            }
        }
        Some(unconfirmed)
    }

    /// Stops a destination for good: the log no longer keeps records for it.
    pub fn forget(&mut self, name: &str) {
        self.stop(name);
        self.parked.retain(|ledger| ledger.name() != name);
        self.stats.retain(|(other, _)| other != name);
        self.log.unregister(name);
    }

    /// A destination's counters (running or stopped).
    pub fn stats_of(&self, name: &str) -> Option<Arc<DestinationStats>> {
        self.stats
            .iter()
            .find(|(other, _)| other == name)
            .map(|(_, stats)| Arc::clone(stats))
    }

    /// Records in the log a destination has not confirmed (running or stopped).
    pub fn waiting_for(&self, name: &str) -> u64 {
        let watermark = match self.parked.iter().find(|l| l.name() == name) {
            Some(ledger) => ledger.state().watermark,
            None => match self.stats_of(name) {
                Some(stats) => DestinationStats::get(&stats.watermark),
                None => return 0,
            },
        };
        self.log.count_from(watermark)
    }

    /// Whether a destination's feeder runs.
    pub fn is_running(&self, name: &str) -> bool {
        self.running.iter().any(|r| r.name == name)
    }

    /// Stops every feeder; returns the records left unconfirmed.
    pub fn shutdown(&mut self) -> u64 {
        self.shutdown_within(None)
    }

    /// Stops every feeder at once, so they flush side by side: the whole stop takes one
    /// flush (at most `budget`, when given), not one per destination.
    pub fn shutdown_within(&mut self, budget: Option<Duration>) -> u64 {
        for running in &self.running {
            running.stop.request(budget);
        }
        self.log.wake_feeders();
        let mut unconfirmed = 0;
        for running in std::mem::take(&mut self.running) {
            unconfirmed += self.join(running);
        }
        self.log.sync_now();
        unconfirmed
    }

    pub fn statuses(&self) -> Vec<DestinationStatus> {
        self.running
            .iter()
            .map(|running| DestinationStatus {
                name: running.name.clone(),
                stats: Arc::clone(&running.stats),
                waiting: self
                    .log
                    .count_from(DestinationStats::get(&running.stats.watermark)),
            })
            .collect()
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        self.shutdown();
    }
}
