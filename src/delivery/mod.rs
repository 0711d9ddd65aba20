//! The delivery engine: a durable log every record is appended to, and one feeder per
//! destination that reads the log from that destination's own cursor and confirms in
//! that destination's own ledger. The log keeps a record until every destination has
//! confirmed it.
//!
//! Threads: Asterisk's CDR and CEL threads only append to the log. The Kafka
//! destinations' feeders share one pass thread (`cdr_kafka-kafka`); a destination that
//! writes or connects itself (file, syslog, HTTP) has a feeder thread of its own
//! (`cdr_kafka-NAME`). The load/reload/unload threads the glue starts start and join
//! them. Nothing here imports the
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
mod passes;
pub mod stack;
pub mod stats;
pub mod syslog;
#[cfg(test)]
mod tests;

use std::sync::{mpsc, Arc};
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
    runner: Runner,
    stats: Arc<DestinationStats>,
}

/// Where a feeder runs, and how its ledger comes back when it stops.
enum Runner {
    Own(JoinHandle<Option<(Ledger, u64)>>),
    Shared(mpsc::Receiver<(Ledger, u64)>),
}

/// A feeder's place made before the feeder exists: starting a thread can fail, so
/// `install` starts them before it stops anything.
enum Waiting {
    Own {
        feeder: mpsc::SyncSender<Feeder>,
        thread: JoinHandle<Option<(Ledger, u64)>>,
    },
    /// On the pass thread, which `prepare` made sure runs.
    Shared,
}

impl Waiting {
    fn spawn(name: &str, stop: Arc<Stop>) -> std::io::Result<Self> {
        let (feeder, handed) = mpsc::sync_channel::<Feeder>(1);
        // Linux keeps 15 bytes of a thread's name.
        let thread_name: String = format!("cdr_kafka-{name}").chars().take(15).collect();
        let thread = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || handed.recv().ok().map(|feeder| feeder.run(&stop)))?;
        Ok(Self::Own { feeder, thread })
    }

    /// Ends a thread that was never handed its feeder.
    fn abandon(self) {
        if let Self::Own { feeder, thread } = self {
            drop(feeder);
            let _ = thread.join();
        }
    }
}

/// A destination to start, with its rules and pacing.
pub struct Start {
    pub destination: Box<dyn Destination>,
    pub rules: Rules,
    pub settings: FeederSettings,
}

/// What `install` changes: destinations to start (or restart, when one of the name
/// runs), to disable, to forget; and the stack and shared producer after it.
pub struct Change {
    pub start: Vec<Start>,
    pub disable: Vec<String>,
    pub forget: Vec<String>,
    pub stack: Option<Arc<stack::Stack>>,
    pub shared_producer: Option<Arc<kafka::SharedProducer>>,
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
    /// The pass thread of the destinations that never wait, while any may run.
    passes: Option<passes::Passes>,
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
            passes: None,
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
        rules: Rules,
    ) -> Result<u64, DeliveryError> {
        let mut change = self.change();
        change.start.push(Start {
            destination,
            rules,
            settings,
        });
        self.install(change)
    }

    /// A change that keeps everything as it runs: the plan adds to it.
    pub fn change(&self) -> Change {
        Change {
            start: Vec::new(),
            disable: Vec::new(),
            forget: Vec::new(),
            stack: self.stack.clone(),
            shared_producer: self.shared_producer.clone(),
        }
    }

    /// The one way what runs changes (load, reload, the CLI): whole or not at all.
    /// Everything that can fail (a new ledger, a thread) is done before anything
    /// running stops; then the destinations replaced, disabled or forgotten stop side
    /// by side (one bounded flush) and each new feeder takes its ledger over. Returns
    /// the records the stopped ones left unconfirmed (they stay in the log).
    pub fn install(&mut self, change: Change) -> Result<u64, DeliveryError> {
        let mut registered = Vec::new();
        let mut threads = Vec::new();
        if let Err(error) = self.prepare(&change, &mut registered, &mut threads) {
            for ledger in &registered {
                self.log.unregister(ledger.name());
            }
            // Each waiting thread sees its sender dropped and ends.
            for (_, _, _, waiting) in threads {
                waiting.abandon();
            }
            return Err(error);
        }
        let replaced = change
            .start
            .iter()
            .map(|s| s.destination.name().to_string());
        let stopping: Vec<String> = replaced
            .chain(change.disable.iter().cloned())
            .chain(change.forget.iter().cloned())
            .collect();
        let unconfirmed = self.stop_together(&stopping, None);
        self.keep_failures_of_disabled();
        for name in &change.forget {
            self.parked.retain(|ledger| ledger.name() != name);
            self.stats.retain(|(other, _)| other != name);
            self.log.forget(name);
        }
        self.stack = change.stack;
        self.shared_producer = change.shared_producer;
        for name in &change.disable {
            self.detach(name);
        }
        let mut new_ledgers = registered;
        for (start, (name, stop, stats, handle)) in change.start.into_iter().zip(threads) {
            let Start {
                destination,
                mut rules,
                settings,
            } = start;
            if !self.stats.iter().any(|(other, _)| *other == name) {
                self.stats.push((name.clone(), Arc::clone(&stats)));
            }
            rules.tried_since_ms = self.started_ms;
            let ledger = match self.parked.iter().position(|l| l.name() == name) {
                Some(index) => self.parked.swap_remove(index),
                None => {
                    let index = new_ledgers
                        .iter()
                        .position(|l: &Ledger| l.name() == name)
                        .expect("prepare registered a ledger for every new destination");
                    new_ledgers.swap_remove(index)
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
            let runner = match handle {
                Waiting::Own {
                    feeder: hand,
                    thread,
                } => {
                    // The thread waits in `recv` until it gets its feeder or the sender drops.
                    let _ = hand.send(feeder);
                    Runner::Own(thread)
                }
                Waiting::Shared => {
                    let (done, ledger) = mpsc::sync_channel(1);
                    let passes = self
                        .passes
                        .as_ref()
                        .expect("prepare started the pass thread");
                    passes.hand(passes::Member {
                        feeder,
                        stop: Arc::clone(&stop),
                        done,
                    });
                    Runner::Shared(ledger)
                }
            };
            self.running.push(Running {
                name,
                stop,
                runner,
                stats,
            });
        }
        Ok(unconfirmed)
    }

    /// What `install` does before anything running stops: the ledgers of destinations
    /// the log does not know yet, and a waiting thread for each feeder.
    fn prepare(
        &mut self,
        change: &Change,
        registered: &mut Vec<Ledger>,
        threads: &mut Vec<(String, Arc<Stop>, Arc<DestinationStats>, Waiting)>,
    ) -> Result<(), DeliveryError> {
        for start in &change.start {
            let name = start.destination.name();
            let known = self.is_running(name) || self.parked.iter().any(|l| l.name() == name);
            if !known && !registered.iter().any(|l| l.name() == name) {
                registered.push(self.log.register(name).map_err(DeliveryError::Ledger)?);
            }
        }
        for start in &change.start {
            let name = start.destination.name().to_string();
            // Counters carry over a restart; a new destination's are added by `install`.
            let stats = self
                .stats_of(&name)
                .unwrap_or_else(|| Arc::new(DestinationStats::default()));
            let stop = Arc::new(Stop::default());
            let waiting = if start.destination.never_waits() {
                if self.passes.is_none() {
                    self.passes = Some(
                        passes::Passes::spawn(Arc::clone(&self.log))
                            .map_err(DeliveryError::Thread)?,
                    );
                }
                Waiting::Shared
            } else {
                Waiting::spawn(&name, Arc::clone(&stop)).map_err(DeliveryError::Thread)?
            };
            threads.push((name, stop, stats, waiting));
        }
        Ok(())
    }

    /// Stops the named feeders that run, all at once so they flush side by side.
    fn stop_together(&mut self, names: &[String], budget: Option<Duration>) -> u64 {
        let (stopping, running): (Vec<Running>, Vec<Running>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|running| names.contains(&running.name));
        self.running = running;
        for running in &stopping {
            running.stop.request(budget);
        }
        if !stopping.is_empty() {
            self.log.wake_feeders();
        }
        stopping.into_iter().map(|running| self.join(running)).sum()
    }

    /// Stops a destination's feeder after its bounded flush; returns how many records
    /// it left unconfirmed (they stay in the log).
    pub fn stop(&mut self, name: &str) -> Option<u64> {
        self.is_running(name)
            .then(|| self.stop_together(&[name.to_string()], None))
    }

    /// Waits for a stopping feeder; parks its ledger and returns what it left unconfirmed.
    fn join(&mut self, running: Running) -> u64 {
        let stopped = match running.runner {
            Runner::Own(thread) => thread.join().ok().flatten(),
            Runner::Shared(ledger) => ledger.recv().ok(),
        };
        match stopped {
            Some((ledger, unconfirmed)) => {
                self.parked.push(ledger);
                unconfirmed
            }
            // Never handed a feeder, or a panic the hook logged: nothing to park (the
            // ledger is read again at the next start).
            None => 0,
        }
    }

    /// Stops a destination until it is started again (the CLI's disable): the log keeps
    /// its records, and destinations after it in the stack stop waiting for it once
    /// its `give_up_after_ms` has passed.
    pub fn disable(&mut self, name: &str) -> Option<u64> {
        if !self.is_running(name) {
            return None;
        }
        let mut change = self.change();
        change.disable.push(name.to_string());
        self.install(change).ok()
    }

    /// The failures the walk decided for disabled destinations go into their ledgers
    /// before the stack that knows them is replaced or the module stops.
    fn keep_failures_of_disabled(&mut self) {
        if let Some(stack) = &self.stack {
            for ledger in &mut self.parked {
                stack.keep_failures_of_disabled(ledger);
            }
        }
    }

    /// A stopped destination's place in the stack: it confirms nothing more, and what it
    /// confirmed out of order still counts.
    fn detach(&self, name: &str) {
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
    }

    /// Stops a destination for good: the log no longer keeps records for it.
    pub fn forget(&mut self, name: &str) {
        let mut change = self.change();
        change.forget.push(name.to_string());
        // Forgetting needs no ledger or thread: it cannot fail.
        let _ = self.install(change);
    }

    /// The names of the destinations whose feeders run.
    pub fn running_names(&self) -> Vec<String> {
        self.running.iter().map(|r| r.name.clone()).collect()
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
        let names = self.running_names();
        let unconfirmed = self.stop_together(&names, budget);
        if let Some(passes) = self.passes.take() {
            passes.end();
        }
        self.keep_failures_of_disabled();
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
