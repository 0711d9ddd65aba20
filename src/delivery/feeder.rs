//! One feeder per destination: it reads the log from that destination's cursor in
//! batches, hands the records over, and writes the confirmations to the destination's
//! ledger once per pass. It wakes once per batching window (sooner only when the log
//! is filling up), never once per record.
//!
//! A feeder runs on its own thread (`run`), or beside others on the pass thread the
//! destinations that never wait share (`passes`). Either thread owns the destination
//! and its ledger. Stopped, the feeder drops the destination (librdkafka's threads end
//! then, on that thread) and hands the ledger back, so a reload can replace the
//! destination and keep the ledger.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::dead_letter::DeadLetters;
use super::destination::{Destination, Offer, Outcome};
use super::log::{now_ms, Ledger, Log, ReadBatch, StoredRecord, SyncPolicy};
use super::stack::{Stack, Verdict};
use crate::ast_log;
use crate::ratelimit::{suppressed_note, RateLimit};
use crate::routing::control::Status;
use crate::routing::fields::Fields;
use crate::routing::{Decision, RecordKinds, Route};

/// Most bytes read from the log in one go.
const BATCH_BYTES: usize = 1024 * 1024;
/// The pause between passes while the log holds much of `spool_max_bytes`.
const PRESSURE_WINDOW: Duration = Duration::from_millis(2);
/// How long a feeder with nothing to do sleeps, unless an append wakes it.
const IDLE_WINDOW: Duration = Duration::from_secs(1);
/// How long a broken destination waits before it is rebuilt again.
const REBUILD_PAUSE: Duration = Duration::from_secs(1);

/// When the next pass is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// At once (a few ms): the log is filling up, or the destination drains as fast as
    /// it is fed.
    Soon,
    /// After the batching window (`linger_ms`).
    Window,
    /// Nothing to do: when the next record is appended (or within a second).
    Idle,
}

/// Asks a feeder to stop, and says by when its last flush must end.
#[derive(Debug, Default)]
pub struct Stop {
    requested: AtomicBool,
    /// Milliseconds left for the flush from the moment of the request; 0: the
    /// destination's own `flush_timeout`.
    budget_ms: AtomicU64,
    /// When the stop was asked for: feeders stopping one after another on a shared
    /// thread all end by the same deadline.
    requested_at: Mutex<Option<Instant>>,
}

impl Stop {
    /// Stop, flushing for at most `budget` (never longer than `flush_timeout`).
    pub fn request(&self, budget: Option<Duration>) {
        let ms = budget.map_or(0, |b| (b.as_millis() as u64).max(1));
        self.budget_ms.store(ms, Ordering::Release);
        *self
            .requested_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Instant::now());
        self.requested.store(true, Ordering::Release);
    }

    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    fn flush_timeout(&self, own: Duration) -> Duration {
        let limit = match self.budget_ms.load(Ordering::Acquire) {
            0 => own,
            ms => own.min(Duration::from_millis(ms)),
        };
        let elapsed = self
            .requested_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .map_or(Duration::ZERO, |at| at.elapsed());
        limit.saturating_sub(elapsed)
    }
}

/// How a feeder paces itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeederSettings {
    /// Records appended wait at most this long before they are handed over together.
    pub batch_window: Duration,
    /// How long stopping waits for records in flight.
    pub flush_timeout: Duration,
}

/// Turns a record as logged into the bytes a destination writes (its `format`).
pub trait Shaper: Send {
    fn shape(&self, record: &StoredRecord<'_>, out: &mut Vec<u8>) -> Result<(), String>;
}

/// Which records a destination takes and how they look to it.
pub struct Rules {
    pub route: Route,
    /// `None`: the payload as logged (the contract).
    pub shaper: Option<Box<dyn Shaper>>,
    /// A record not confirmed this long after it was captured has failed here.
    pub give_up_after: Option<Duration>,
    /// The stack and this destination's place in it, when control flags couple the
    /// destinations.
    pub stack: Option<(Arc<Stack>, usize)>,
    /// This destination's own batching window, when it has one.
    pub batch_window: Option<Duration>,
    /// When this run started (Unix ms): a record of an earlier run counts its
    /// `give_up_after` from here, so downtime alone never gives a record up.
    pub tried_since_ms: u64,
}

impl Rules {
    /// Every record, as logged.
    pub fn everything(name: &str) -> Self {
        Self {
            route: Route::plain(
                name,
                RecordKinds {
                    cdr: true,
                    cel: true,
                    control: true,
                },
            ),
            shaper: None,
            give_up_after: None,
            stack: None,
            batch_window: None,
            tried_since_ms: 0,
        }
    }
}

/// What a destination does with a record it reads.
enum Admit {
    Offer,
    /// Left out by its rules (counted as filtered, or skipped for `kafka_to` and
    /// control flags).
    Leave(Decision),
    /// A destination before it in the stack has not dealt with the record yet.
    Wait,
    /// Not confirmed within `give_up_after_ms`.
    GiveUp,
    /// Cannot be shaped into this destination's format: never deliverable.
    Refuse(String),
}

/// Counters of one destination; the status reads them. None can wrap.
#[derive(Debug, Default)]
pub struct DestinationStats {
    /// Records its rules took (each once).
    pub matched: AtomicU64,
    /// Records its filters, missed-call rule or record kinds left out.
    pub filtered: AtomicU64,
    /// Records `CDR(kafka_to)` or the control flags sent elsewhere.
    pub skipped: AtomicU64,
    /// Records given up after `give_up_after_ms`.
    pub gave_up: AtomicU64,
    /// Capture-to-confirmation latency of delivered records.
    pub latency: crate::metrics::LatencyHistogram,

    /// Records handed over (again after a retry).
    pub offered: AtomicU64,
    pub delivered: AtomicU64,
    /// Records dead-lettered.
    pub failed: AtomicU64,
    /// Records offered again after a failure or a rebuild.
    pub retried: AtomicU64,
    /// Records of an earlier run handed over.
    pub replayed: AtomicU64,
    /// Records the log could not read back intact (skipped).
    pub damaged: AtomicU64,
    pub rebuilds: AtomicU64,
    /// Passes that panicked (and were survived).
    pub panics: AtomicU64,
    pub in_flight: AtomicU64,
    /// Every record below it is confirmed.
    pub watermark: AtomicU64,
    /// The feeder runs.
    pub running: AtomicBool,
    /// The destination's own line, refreshed each pass.
    pub describe: Mutex<String>,
    pub last_error: Mutex<Option<(String, std::time::SystemTime)>>,
}

impl DestinationStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn set_last_error(&self, error: String) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some((error, std::time::SystemTime::now()));
        }
    }
}

pub struct Feeder {
    log: Arc<Log>,
    ledger: Ledger,
    destination: Box<dyn Destination>,
    dead_letters: Arc<DeadLetters>,
    stats: Arc<DestinationStats>,
    settings: FeederSettings,
    /// The next sequence number to read.
    cursor: u64,
    retries: VecDeque<u64>,
    /// Refused records whose dead letter could not be written yet.
    refusals: VecDeque<(u64, String)>,
    outcomes: Vec<(u64, Outcome)>,
    batch: ReadBatch,
    last_sync: Instant,
    next_rebuild: Option<Instant>,
    read_error_log: RateLimit,
    dead_letter_log: RateLimit,
    rules: Rules,
    /// When the destination was last rebuilt.
    last_rebuild: Option<Instant>,
    broke_log: RateLimit,
    rebuild_failed_log: RateLimit,
    /// Failures waiting for the stack's verdict (coupled stacks only).
    held: VecDeque<u64>,
    /// The cursor stopped at a record the stack has no answer for yet.
    waiting_on_stack: bool,
    /// Records offered again from `retries` (not counted as matched twice).
    retrying: bool,
    /// When each record in flight was captured (for the latency histogram).
    captured: std::collections::HashMap<u64, u64>,
    topic_buffer: String,
    payload_buffer: Vec<u8>,
    key_buffer: Vec<u8>,
    own_key: OwnKey,
}

/// Which key the record being offered carries.
#[derive(Clone, Copy)]
enum OwnKey {
    /// The one it was logged with.
    Logged,
    None,
    /// This destination's, in `key_buffer`.
    Buffer,
}

impl Feeder {
    pub fn new(
        log: Arc<Log>,
        ledger: Ledger,
        destination: Box<dyn Destination>,
        dead_letters: Arc<DeadLetters>,
        stats: Arc<DestinationStats>,
        mut settings: FeederSettings,
        rules: Rules,
    ) -> Self {
        if let Some(window) = rules.batch_window {
            settings.batch_window = window;
        }
        let cursor = ledger.state().watermark;
        let mut held = VecDeque::new();
        let mut refusals = VecDeque::new();
        if let Some((stack, index)) = &rules.stack {
            stack.attach(
                *index,
                ledger.watermarks(),
                ledger.state().above.clone(),
                rules.tried_since_ms,
            );
        }
        // What failed here before a stop stays failed: the verdict is not decided anew,
        // and the record is not tried again here. Alone now, it is dead-lettered.
        for seq in ledger.state().failed.iter() {
            match &rules.stack {
                Some((stack, index)) => {
                    stack.post(
                        *index,
                        seq,
                        Status::Failed,
                        Some(FAILED_EARLIER.to_string()),
                    );
                    if !ledger.is_acked(seq) {
                        held.push_back(seq);
                    }
                }
                None if !ledger.is_acked(seq) => {
                    refusals.push_back((seq, FAILED_EARLIER.to_string()));
                }
                None => {}
            }
        }
        stats.watermark.store(cursor, Ordering::Relaxed);
        Self {
            log,
            ledger,
            destination,
            dead_letters,
            stats,
            settings,
            cursor,
            retries: VecDeque::new(),
            refusals,
            outcomes: Vec::new(),
            batch: ReadBatch::default(),
            last_sync: Instant::now(),
            next_rebuild: None,
            read_error_log: RateLimit::new(10),
            dead_letter_log: RateLimit::new(10),
            rules,
            last_rebuild: None,
            broke_log: RateLimit::new(10),
            rebuild_failed_log: RateLimit::new(10),
            held,
            waiting_on_stack: false,
            retrying: false,
            captured: std::collections::HashMap::new(),
            topic_buffer: String::new(),
            payload_buffer: Vec::new(),
            key_buffer: Vec::new(),
            own_key: OwnKey::Logged,
        }
    }

    /// Passes until `stop`, then offers what is left and flushes (bounded), drops the
    /// destination and hands back its ledger with the number of records still unconfirmed
    /// (they stay in the log).
    pub fn run(mut self, stop: &Stop) -> (Ledger, u64) {
        self.started();
        let (mut next, mut due, mut hurried) = (Next::Soon, Instant::now(), self.log.hurried());
        while !stop.requested() {
            let seen = self.log.wake_generation();
            let hurry = self.log.hurried();
            if self.passes_now(next, due, hurry != hurried) {
                hurried = hurry;
                next = self.guarded_pass();
                due = Instant::now() + self.pause(next);
            }
            let timeout = due.saturating_duration_since(Instant::now());
            match next {
                Next::Idle => self.log.wait_for_append_since(seen, self.cursor, timeout),
                _ => self.log.wait_since(seen, timeout),
            }
        }
        self.finish(stop)
    }

    /// Whether a feeder whose last pass asked for `next`, due at `due`, passes now: at
    /// its time, idle once a record came past its cursor, or `hurried` (a stop, pressure).
    /// Another feeder's wake-up by an append does not shorten its window.
    pub fn passes_now(&self, next: Next, due: Instant, hurried: bool) -> bool {
        hurried
            || due <= Instant::now()
            || (next == Next::Idle && self.log.next_seq() > self.cursor)
    }

    /// Marks the feeder running (the status shows it).
    pub fn started(&self) {
        self.stats.running.store(true, Ordering::Release);
    }

    /// A pass that survives a panic (a destination's bug): the panic hook logged it,
    /// and the records wait in the log for the next pass.
    pub fn guarded_pass(&mut self) -> Next {
        catch_unwind(AssertUnwindSafe(|| self.pass())).unwrap_or_else(|_| {
            DestinationStats::add(&self.stats.panics, 1);
            Next::Window
        })
    }

    /// How long to sleep before the pass `next` asks for.
    pub fn pause(&self, next: Next) -> Duration {
        match next {
            Next::Soon => PRESSURE_WINDOW,
            Next::Window => self.settings.batch_window,
            Next::Idle => IDLE_WINDOW,
        }
    }

    /// The next sequence number this feeder reads.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The end of a stop: what came during the last window goes too (an unload or an
    /// exit follows), a flush bounded by `stop`, the ledger written; then the
    /// destination is dropped, on this thread. Returns the ledger and the records
    /// left unconfirmed (they stay in the log).
    pub fn finish(mut self, stop: &Stop) -> (Ledger, u64) {
        self.guarded_pass();
        self.destination
            .flush(stop.flush_timeout(self.settings.flush_timeout));
        self.settle();
        // What the flush confirmed is written down: not offered again after a restart.
        let _ = self.ledger.write();
        let _ = self.ledger.sync();
        self.log.maintain();
        let unconfirmed = self.destination.in_flight();
        // The producer (and librdkafka's threads) end here, on this thread.
        drop(self.destination);
        self.stats.running.store(false, Ordering::Release);
        (self.ledger, unconfirmed)
    }

    /// One pass: outcomes in, a rebuild if needed, records out, confirmations down.
    /// Says when the next pass is due.
    pub fn pass(&mut self) -> Next {
        self.waiting_on_stack = false;
        let settled = self.settle();
        self.settle_held();
        if let Some(reason) = self.destination.broken() {
            self.rebuild(&reason);
        }
        let (offered, stopped_full) = if self.next_rebuild.is_none() {
            self.offer_all()
        } else {
            (0, false)
        };
        self.stats
            .in_flight
            .store(self.destination.in_flight(), Ordering::Relaxed);
        self.stats
            .watermark
            .store(self.ledger.state().watermark, Ordering::Relaxed);
        if let Ok(mut line) = self.stats.describe.lock() {
            *line = self.destination.describe();
        }
        let unwritten = self.ledger.has_unwritten();
        self.write_ledger();
        self.log.maintain();
        // Failures and letters are remembered while the log keeps their records.
        let first = self.log.first_kept();
        self.ledger.forget_failed_below(first);
        self.dead_letters.forget_below(first);
        let in_flight = self.destination.in_flight();
        if let Some((stack, _)) = &self.rules.stack {
            stack.forget_confirmed();
        }
        let stopped_full = stopped_full && !self.waiting_on_stack;
        if self.log.under_pressure() || (stopped_full && settled > 0) {
            // Filling up, or the destination takes records as fast as it confirms them.
            Next::Soon
        } else if offered == 0
            && settled == 0
            && in_flight == 0
            && !unwritten
            && self.retries.is_empty()
            && self.refusals.is_empty()
            && self.held.is_empty()
            && !self.waiting_on_stack
            && self.next_rebuild.is_none()
        {
            Next::Idle
        } else {
            Next::Window
        }
    }

    fn rebuild(&mut self, reason: &str) {
        if self.next_rebuild.is_none() {
            if let Some(held) = self.broke_log.check() {
                ast_log!(
                    Error,
                    "destination '{}' broke, rebuilding it (its records wait in the spool): {reason}{}",
                    self.destination.name(),
                    suppressed_note(held)
                );
            }
            self.stats.set_last_error(reason.to_string());
            DestinationStats::add(&self.stats.rebuilds, 1);
            // Broken again right after a rebuild (a full disk): wait the pause first.
            if let Some(last) = self.last_rebuild {
                if last.elapsed() < REBUILD_PAUSE {
                    self.next_rebuild = Some(last + REBUILD_PAUSE);
                }
            }
        }
        if self.next_rebuild.is_some_and(|at| Instant::now() < at) {
            return;
        }
        match self.destination.rebuild() {
            Ok(()) => {
                self.next_rebuild = None;
                self.last_rebuild = Some(Instant::now());
                // Whatever it held may or may not have arrived: offered again.
                self.retries.clear();
                self.captured.clear();
                let from = self.ledger.state().watermark;
                let offered_again = self.log.count_from(from);
                DestinationStats::add(&self.stats.retried, offered_again);
                self.cursor = from;
            }
            Err(error) => {
                // Tried once a second while it fails: one line per ten seconds at most.
                if let Some(held) = self.rebuild_failed_log.check() {
                    ast_log!(
                        Error,
                        "cannot rebuild destination '{}' (its records wait in the spool): {error}{}",
                        self.destination.name(),
                        suppressed_note(held)
                    );
                }
                self.stats.set_last_error(error);
                self.next_rebuild = Some(Instant::now() + REBUILD_PAUSE);
            }
        }
    }

    /// Takes in the destination's outcomes; returns how many.
    fn settle(&mut self) -> usize {
        self.destination.collect(&mut self.outcomes);
        let outcomes = std::mem::take(&mut self.outcomes);
        let now = now_ms();
        for (seq, outcome) in outcomes.iter().cloned() {
            let captured = self.captured.remove(&seq);
            match outcome {
                // A second copy's report (offered again after a rebuild) of a record
                // whose fate is settled: nothing more to do.
                Outcome::Retry | Outcome::Refused(_)
                    if self.ledger.is_acked(seq) || self.ledger.is_failed(seq) => {}
                Outcome::Delivered => {
                    if self.ledger.ack(seq) {
                        DestinationStats::add(&self.stats.delivered, 1);
                        if let Some(captured) = captured {
                            let waited = Duration::from_millis(now.saturating_sub(captured));
                            self.stats.latency.observe(waited);
                        }
                        self.post(seq, Status::Ok, None);
                    }
                }
                // At or past the cursor: read again from the log anyway (a report of
                // a record a stopped run of this destination handed over).
                Outcome::Retry if seq >= self.cursor => {}
                Outcome::Retry => match (captured, self.rules.give_up_after) {
                    (Some(at), Some(limit))
                        if now.saturating_sub(at.max(self.rules.tried_since_ms))
                            >= limit.as_millis() as u64 =>
                    {
                        self.fail(seq, give_up_reason(limit));
                    }
                    _ => self.retries.push_back(seq),
                },
                Outcome::Refused(reason) => self.fail(seq, reason),
            }
        }
        let settled = outcomes.len();
        self.outcomes = outcomes;
        self.outcomes.clear();
        self.dead_letter_refusals();
        settled
    }

    fn dead_letter_refusals(&mut self) {
        while let Some((seq, reason)) = self.refusals.pop_front() {
            if self.ledger.is_acked(seq) {
                continue;
            }
            match self.log.read_one(seq, &mut self.batch) {
                Ok(false) => {
                    self.ledger.ack(seq);
                }
                Ok(true) => {
                    let written = match self.batch.records().next() {
                        Some((_, Some(record))) => self
                            .dead_letters
                            .write(self.destination.name(), &record, &reason)
                            .map(|()| record_refused(&self.stats, &reason, &record)),
                        _ => {
                            DestinationStats::add(&self.stats.damaged, 1);
                            Ok(())
                        }
                    };
                    match written {
                        Ok(()) => {
                            self.ledger.ack(seq);
                        }
                        Err(error) => {
                            self.refusals.push_front((seq, reason));
                            self.dead_letter_failed(&error);
                            return;
                        }
                    }
                }
                Err(error) => {
                    self.refusals.push_front((seq, reason));
                    self.read_failed(&error);
                    return;
                }
            }
        }
    }

    /// Tells the stack what this destination did with a record (coupled stacks only).
    fn post(&self, seq: u64, status: Status, reason: Option<String>) {
        if let Some((stack, index)) = &self.rules.stack {
            stack.post(*index, seq, status, reason);
        }
    }

    /// This destination failed a record: with a coupled stack it waits for the
    /// verdict; alone, it is dead-lettered now.
    fn fail(&mut self, seq: u64, reason: String) {
        if self.rules.stack.is_some() {
            DestinationStats::add(&self.stats.failed, 1);
            self.stats
                .set_last_error(format!("record failed: {reason}"));
            self.post(seq, Status::Failed, Some(reason));
            self.ledger.mark_failed(seq);
            self.held.push_back(seq);
        } else {
            self.refusals.push_back((seq, reason));
        }
    }

    /// Confirms held failures whose verdict is in, writing the dead letter of a
    /// record whose final status is failure (once, by one destination). Goes in log
    /// order and stops at the first record without a verdict: a pass never walks a
    /// backlog of failures another destination has yet to deal with.
    fn settle_held(&mut self) {
        let Some((stack, _)) = self.rules.stack.clone() else {
            return;
        };
        while let Some(&seq) = self.held.front() {
            if !stack.is_settled_by_all(seq) {
                return;
            }
            match self.log.read_one(seq, &mut self.batch) {
                Ok(false) => {
                    self.held.pop_front();
                    continue;
                }
                Ok(true) => {}
                Err(error) => {
                    self.read_failed(&error);
                    return;
                }
            }
            let Some((_, Some(record))) = self.batch.records().next() else {
                self.held.pop_front();
                self.ledger.ack(seq);
                continue;
            };
            match stack.verdict(&record) {
                Verdict::Pending => return,
                Verdict::Success | Verdict::FailureWritten => {}
                Verdict::FailureWrite(reasons) => {
                    let reason = reasons
                        .iter()
                        .map(|(name, reason)| format!("{name}: {reason}"))
                        .collect::<Vec<_>>()
                        .join("; ");
                    let failed_at = reasons
                        .iter()
                        .map(|(name, _)| name.as_str())
                        .collect::<Vec<_>>()
                        .join(",");
                    if let Err(error) = self.dead_letters.write(&failed_at, &record, &reason) {
                        stack.unclaim(seq);
                        self.dead_letter_failed(&error);
                        return;
                    }
                }
            }
            self.held.pop_front();
            self.ledger.ack(seq);
        }
    }

    /// Decides what this destination does with `record`, rendering its topic and
    /// payload into the buffers when it is to be offered.
    fn admit(&mut self, record: &StoredRecord<'_>) -> Admit {
        let rules = &self.rules;
        let mut fields: Option<Option<Fields>> = None;
        if rules.route.needs_fields() {
            fields = Some(Fields::parse(record.payload));
        }
        let decision = rules
            .route
            .decide(record, fields.as_ref().and_then(Option::as_ref));
        if decision != Decision::Take {
            return Admit::Leave(decision);
        }
        if let Some((stack, index)) = &rules.stack {
            match stack.reaches(*index, record) {
                None => return Admit::Wait,
                Some(false) => return Admit::Leave(Decision::NotNamed),
                Some(true) => {}
            }
        }
        if let Some(limit) = rules.give_up_after {
            let tried_since = record.captured_ms.max(rules.tried_since_ms);
            if now_ms().saturating_sub(tried_since) >= limit.as_millis() as u64 {
                return Admit::GiveUp;
            }
        }
        let fields = fields.as_ref().and_then(Option::as_ref);
        rules.route.topic(record, fields, &mut self.topic_buffer);
        self.own_key = match rules.route.key(fields, &mut self.key_buffer) {
            None => OwnKey::Logged,
            Some(None) => OwnKey::None,
            Some(Some(_)) => OwnKey::Buffer,
        };
        self.payload_buffer.clear();
        if let Some(shaper) = &rules.shaper {
            if let Err(reason) = shaper.shape(record, &mut self.payload_buffer) {
                // Only a record that is not a JSON object fails here: never deliverable.
                return Admit::Refuse(reason);
            }
        }
        Admit::Offer
    }

    fn dead_letter_failed(&self, error: &dyn std::fmt::Display) {
        if let Some(held) = self.dead_letter_log.check() {
            ast_log!(
                Error,
                "cannot write {} (the record stays in the spool): {error}{}",
                self.dead_letters.path().display(),
                suppressed_note(held)
            );
        }
    }

    fn read_failed(&mut self, error: &std::io::Error) {
        self.stats
            .set_last_error(format!("cannot read the spool: {error}"));
        if let Some(held) = self.read_error_log.check() {
            ast_log!(
                Error,
                "cannot read the spool (records wait there): {error}{}",
                suppressed_note(held)
            );
        }
    }

    /// Hands over retries first, then what was appended since the last pass, until the
    /// destination is full or everything is out. Returns how many records it offered
    /// and whether it stopped on a full destination.
    fn offer_all(&mut self) -> (u64, bool) {
        let before = DestinationStats::get(&self.stats.offered);
        let full = !self.offer_everything();
        (DestinationStats::get(&self.stats.offered) - before, full)
    }

    /// False when the destination was full (true also when the log could not be read:
    /// the next pass tries again).
    fn offer_everything(&mut self) -> bool {
        while let Some(seq) = self.retries.pop_front() {
            if self.ledger.is_acked(seq) {
                continue;
            }
            match self.log.read_one(seq, &mut self.batch) {
                Ok(false) => continue,
                Ok(true) => {}
                Err(error) => {
                    self.retries.push_front(seq);
                    self.read_failed(&error);
                    return true;
                }
            }
            DestinationStats::add(&self.stats.retried, 1);
            self.retrying = true;
            let taken = self.offer_batch();
            self.retrying = false;
            if !taken {
                self.retries.push_front(seq);
                return false;
            }
        }
        loop {
            match self
                .log
                .read_batch(self.cursor, BATCH_BYTES, &mut self.batch)
            {
                Ok(()) if self.batch.is_empty() => return true,
                Ok(()) => {}
                Err(error) => {
                    self.read_failed(&error);
                    return true;
                }
            }
            if !self.offer_batch() {
                return false;
            }
        }
    }

    /// Offers the records of `self.batch`; false when the destination is full (the
    /// cursor then points at the first record not taken).
    fn offer_batch(&mut self) -> bool {
        let batch = std::mem::take(&mut self.batch);
        let mut all_taken = true;
        for (seq, record) in batch.records() {
            // Numbers missing before `seq` are not in the log (damage found at open).
            while self.cursor < seq {
                self.ledger.ack(self.cursor);
                self.cursor += 1;
            }
            if self.ledger.is_acked(seq) || self.ledger.is_failed(seq) {
                self.cursor = self.cursor.max(seq + 1);
                continue;
            }
            let Some(record) = record else {
                DestinationStats::add(&self.stats.damaged, 1);
                self.ledger.ack(seq);
                self.cursor = self.cursor.max(seq + 1);
                continue;
            };
            match self.admit(&record) {
                Admit::Offer => {}
                Admit::Wait => {
                    self.waiting_on_stack = true;
                    all_taken = false;
                    break;
                }
                Admit::Leave(decision) => {
                    let counter = match decision {
                        Decision::NotNamed => &self.stats.skipped,
                        _ => &self.stats.filtered,
                    };
                    if self.ledger.ack(seq) && !self.retrying {
                        DestinationStats::add(counter, 1);
                    }
                    self.post(seq, Status::Passed, None);
                    self.cursor = self.cursor.max(seq + 1);
                    continue;
                }
                Admit::GiveUp => {
                    let limit = self.rules.give_up_after.unwrap_or_default();
                    DestinationStats::add(&self.stats.gave_up, 1);
                    if !self.retrying {
                        DestinationStats::add(&self.stats.matched, 1);
                    }
                    self.fail(seq, give_up_reason(limit));
                    self.cursor = self.cursor.max(seq + 1);
                    continue;
                }
                Admit::Refuse(reason) => {
                    if !self.retrying {
                        DestinationStats::add(&self.stats.matched, 1);
                    }
                    self.fail(seq, reason);
                    self.cursor = self.cursor.max(seq + 1);
                    continue;
                }
            }
            let shaped = StoredRecord {
                topic: if self.rules.route.topic.is_some() {
                    &self.topic_buffer
                } else {
                    record.topic
                },
                payload: if self.rules.shaper.is_some() {
                    &self.payload_buffer
                } else {
                    record.payload
                },
                key: match self.own_key {
                    OwnKey::Logged => record.key,
                    OwnKey::None => None,
                    OwnKey::Buffer => Some(&self.key_buffer),
                },
                ..record.clone()
            };
            match self.destination.offer(&shaped) {
                Offer::Taken => {
                    DestinationStats::add(&self.stats.offered, 1);
                    if !self.retrying {
                        DestinationStats::add(&self.stats.matched, 1);
                    }
                    self.captured.insert(seq, record.captured_ms);
                    if seq < self.log.first_new_seq {
                        DestinationStats::add(&self.stats.replayed, 1);
                    }
                }
                Offer::Full => {
                    all_taken = false;
                    break;
                }
                Offer::Refused(reason) => self.fail(seq, reason),
            }
            self.cursor = self.cursor.max(seq + 1);
        }
        self.batch = batch;
        if !self.refusals.is_empty() {
            self.dead_letter_refusals();
        }
        all_taken
    }

    /// Writes this pass's confirmations, synced as `spool_sync` says.
    fn write_ledger(&mut self) {
        if let Err(error) = self.ledger.write() {
            self.stats
                .set_last_error(format!("cannot write the ledger: {error}"));
            return;
        }
        let settings = self.log.settings();
        match settings.sync {
            SyncPolicy::Always => {}
            SyncPolicy::Never => self.ledger.publish_unsynced(),
            SyncPolicy::Interval => {
                let due = self.last_sync.elapsed() >= settings.sync_interval;
                if due || self.log.short_of_space() {
                    self.last_sync = Instant::now();
                    if let Err(error) = self.ledger.sync() {
                        self.stats
                            .set_last_error(format!("cannot sync the ledger: {error}"));
                    }
                }
            }
        }
    }
}

/// The reason a failure kept in the ledger from an earlier run gives (the words were
/// not kept).
const FAILED_EARLIER: &str = "failed before the module was stopped";

fn give_up_reason(limit: Duration) -> String {
    format!(
        "not confirmed within give_up_after_ms = {}",
        limit.as_millis()
    )
}

fn record_refused(stats: &DestinationStats, reason: &str, record: &StoredRecord<'_>) {
    DestinationStats::add(&stats.failed, 1);
    stats.set_last_error(format!(
        "record {} dead-lettered: {reason}",
        record.record_id
    ));
}
