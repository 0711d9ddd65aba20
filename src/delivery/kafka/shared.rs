//! One librdkafka producer for several Kafka destinations: one set of broker
//! connections and threads, many topics. Each destination has a seat (its index on the
//! producer); the delivery opaque of a record carries that index and the record's
//! sequence number, so a delivery report reaches the destination that sent the record
//! whichever feeder thread happens to poll. librdkafka's `produce` and `poll` are
//! thread-safe; our own state here is atomics and short locks, never held across I/O.
//!
//! A fatal error ends a generation: the first destination to rebuild replaces the
//! producer, the others adopt the new one, and reports of an old generation are
//! dropped (its records are offered again from the log). An old producer ends when the
//! last destination holding it lets go, on that destination's feeder thread.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

use super::super::destination::Outcome;
use super::super::log::now_ms;
use super::words::Words;
use super::{classify, Failure, ProducerError, ProducerSettings};
use crate::ast_log;
use crate::ratelimit::{suppressed_note, RateLimit};

/// Bits of a delivery opaque that carry the record's sequence number; the seat's index
/// sits above them.
const SEQ_BITS: u32 = 48;
/// The highest sequence number a delivery report can carry (2^48 - 1: 890 years of
/// 10,000 records a second).
pub const MAX_SEQ: u64 = (1 << SEQ_BITS) - 1;
/// How many destinations one producer serves at once.
pub const MAX_DESTINATIONS: usize = 1 << (u64::BITS - SEQ_BITS);
/// Polls served in one pass at most (each serves one event: a batch of reports).
const MAX_POLLS_PER_PASS: usize = 10_000;

// The opaque is pointer-sized: index and sequence number need all 64 bits.
const _: () = assert!(usize::BITS == 64, "cdr_kafka needs a 64-bit target");

/// The opaque of a record, or `None` when it cannot carry them.
pub(super) fn pack(index: usize, seq: u64) -> Option<usize> {
    (index < MAX_DESTINATIONS && seq <= MAX_SEQ)
        .then_some(((index as u64) << SEQ_BITS | seq) as usize)
}

/// The seat's index and the sequence number an opaque carries.
pub(super) fn unpack(opaque: usize) -> (usize, u64) {
    let opaque = opaque as u64;
    ((opaque >> SEQ_BITS) as usize, opaque & MAX_SEQ)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere leaves plain data behind, still consistent enough to go on.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A report waiting for its destination: (generation, sequence number, outcome).
type Report = (u64, u64, Outcome);

/// One destination's place on the producer.
#[derive(Default)]
pub(super) struct Slot {
    /// A destination uses it.
    attached: AtomicBool,
    /// Records sent through this slot and not reported yet, whatever the generation.
    /// A slot goes to a new destination only at 0: no late report of the old one can
    /// reach the new one.
    outstanding: AtomicU64,
    reports: Mutex<Vec<Report>>,
    /// A stopped destination's records were still in flight: the slot waits for that
    /// destination (by name), its reports kept, so that they are not lost and its
    /// records not sent again while the broker may still confirm them.
    parked_for: Mutex<Option<String>>,
}

impl Slot {
    pub(super) fn reported(&self) {
        let _ = self
            .outstanding
            .fetch_update(Ordering::Release, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

/// A destination's hold on a slot; letting go frees it for a later destination, or
/// parks it for the same one while records sent through it await their reports.
pub(super) struct Seat {
    pub(super) index: usize,
    slot: Arc<Slot>,
    name: String,
}

impl Seat {
    /// Call before handing a record to librdkafka (its report may come at once).
    pub(super) fn sending(&self) {
        self.slot.outstanding.fetch_add(1, Ordering::Relaxed);
    }

    /// librdkafka did not take the record: no report will come.
    pub(super) fn not_sent(&self) {
        self.slot.reported();
    }

    /// Moves this seat's reports of `generation` to `outcomes`, drops the others;
    /// returns how many were moved.
    pub(super) fn take(&self, generation: u64, outcomes: &mut Vec<(u64, Outcome)>) -> u64 {
        let mut reports = lock(&self.slot.reports);
        let before = outcomes.len();
        outcomes.extend(
            reports
                .drain(..)
                .filter(|(of, _, _)| *of == generation)
                .map(|(_, seq, outcome)| (seq, outcome)),
        );
        (outcomes.len() - before) as u64
    }

    /// How many reports of `generation` wait.
    pub(super) fn waiting(&self, generation: u64) -> u64 {
        let reports = lock(&self.slot.reports);
        reports
            .iter()
            .filter(|(of, _, _)| *of == generation)
            .count() as u64
    }

    pub(super) fn clear(&self) {
        lock(&self.slot.reports).clear();
    }

    /// Records sent through this seat and not reported yet.
    pub(super) fn outstanding(&self) -> u64 {
        self.slot.outstanding.load(Ordering::Acquire)
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        if self.outstanding() > 0 {
            *lock(&self.slot.parked_for) = Some(std::mem::take(&mut self.name));
            return;
        }
        self.slot.attached.store(false, Ordering::Release);
        self.clear();
    }
}

/// What the producers' callbacks share with the destinations, across generations.
#[derive(Default)]
struct Routes {
    slots: RwLock<Vec<Arc<Slot>>>,
    /// The current generation: reports of older ones are dropped.
    generation: AtomicU64,
}

impl Routes {
    fn slot(&self, index: usize) -> Option<Arc<Slot>> {
        let slots = self.slots.read().unwrap_or_else(PoisonError::into_inner);
        slots.get(index).cloned()
    }
}

/// How one generation's producer is doing; its callbacks write here.
struct Health {
    /// Events served: polling goes on while this moves.
    events: AtomicU64,
    /// An error came: ask librdkafka whether it was fatal.
    check_fatal: AtomicBool,
    /// librdkafka's fatal error, once seen by any destination.
    fatal: Mutex<Option<String>>,
    /// The producer's last word about the brokers, and when (Unix ms).
    last_broker_error: Mutex<Option<(String, u64)>>,
    /// When the broker last confirmed a record (Unix ms).
    last_delivered_ms: AtomicU64,
    librdkafka_log: RateLimit,
    error_log: RateLimit,
}

pub struct KafkaContext {
    generation: u64,
    words: Arc<Words>,
    health: Arc<Health>,
    routes: Arc<Routes>,
}

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.health.events.fetch_add(1, Ordering::Relaxed);
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                if let Some(held) = self.health.librdkafka_log.check() {
                    ast_log!(
                        Warning,
                        "librdkafka {facility}: {}{}",
                        self.words.redact(message),
                        suppressed_note(held)
                    );
                }
            }
            _ => ast_log!(
                Debug,
                "librdkafka {facility}: {}",
                self.words.redact(message)
            ),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let health = &self.health;
        health.events.fetch_add(1, Ordering::Relaxed);
        health.check_fatal.store(true, Ordering::Release);
        let code = error.rdkafka_error_code();
        let mut last = lock(&health.last_broker_error);
        // "All brokers down" follows the error that downed them: that one says why.
        let delivered = health.last_delivered_ms.load(Ordering::Relaxed);
        if code == Some(RDKafkaErrorCode::AllBrokersDown)
            && last.as_ref().is_some_and(|(_, at)| *at >= delivered)
        {
            return;
        }
        let words = self.words.broker_error(code, reason);
        *last = Some((words.clone(), now_ms()));
        drop(last);
        if let Some(held) = health.error_log.check() {
            ast_log!(
                Warning,
                "Kafka producer error: {words}{}",
                suppressed_note(held)
            );
        }
    }
}

impl ProducerContext for KafkaContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        self.health.events.fetch_add(1, Ordering::Relaxed);
        if result.is_ok() {
            self.health
                .last_delivered_ms
                .store(now_ms(), Ordering::Relaxed);
        }
        let (index, seq) = unpack(opaque);
        let Some(slot) = self.routes.slot(index) else {
            return;
        };
        let current = self.routes.generation.load(Ordering::Acquire) == self.generation;
        if current && slot.attached.load(Ordering::Acquire) {
            let outcome = match result {
                Ok(_) => Outcome::Delivered,
                Err((error, _)) => match classify(error.rdkafka_error_code()) {
                    Failure::Permanent => Outcome::Refused(error.to_string()),
                    Failure::Retriable => Outcome::Retry,
                },
            };
            lock(&slot.reports).push((self.generation, seq, outcome));
        }
        // Last: once at 0, the slot may go to another destination.
        slot.reported();
    }
}

/// One producer of the line of producers a `SharedProducer` holds over time.
pub(super) struct Generation {
    pub(super) number: u64,
    pub(super) producer: BaseProducer<KafkaContext>,
    health: Arc<Health>,
}

impl Generation {
    /// Serves the events librdkafka has queued (whoever's they are), without waiting.
    pub(super) fn serve(&self) {
        for _ in 0..MAX_POLLS_PER_PASS {
            let before = self.health.events.load(Ordering::Relaxed);
            self.producer.poll(Duration::ZERO);
            if self.health.events.load(Ordering::Relaxed) == before {
                break;
            }
        }
    }

    /// librdkafka's fatal error, if this producer had one.
    pub(super) fn fatal(&self) -> Option<String> {
        if self.health.check_fatal.swap(false, Ordering::AcqRel) {
            self.check_fatal();
        }
        lock(&self.health.fatal).clone()
    }

    /// Asks librdkafka now (after a refused send); true when fatal.
    pub(super) fn check_fatal(&self) -> bool {
        match self.producer.client().fatal_error() {
            Some((_, reason)) => {
                *lock(&self.health.fatal) = Some(reason);
                true
            }
            None => false,
        }
    }

    /// The last broker error, when no record was confirmed since.
    pub(super) fn unresolved_error(&self) -> Option<String> {
        let delivered = self.health.last_delivered_ms.load(Ordering::Relaxed);
        let last = lock(&self.health.last_broker_error).clone();
        last.and_then(|(error, at)| (at >= delivered).then_some(error))
    }
}

/// A librdkafka producer that several Kafka destinations share; see the file's head.
pub struct SharedProducer {
    settings: ProducerSettings,
    routes: Arc<Routes>,
    current: Mutex<Arc<Generation>>,
}

impl SharedProducer {
    /// Creates the producer: bad settings are refused now, with librdkafka's words.
    pub fn new(settings: ProducerSettings) -> Result<Arc<Self>, ProducerError> {
        let routes = Arc::new(Routes::default());
        let first = open(&settings, &routes, 0)?;
        Ok(Arc::new(Self {
            settings,
            routes,
            current: Mutex::new(Arc::new(first)),
        }))
    }

    /// `bootstrap.servers`, as configured.
    pub fn bootstrap(&self) -> &str {
        self.settings
            .properties
            .iter()
            .find(|(name, _)| name == "bootstrap.servers")
            .map_or("", |(_, value)| value.as_str())
    }

    /// How many destinations use it now.
    pub fn destinations(&self) -> usize {
        let slots = self
            .routes
            .slots
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        slots
            .iter()
            .filter(|slot| slot.attached.load(Ordering::Acquire))
            .count()
    }

    #[cfg(test)]
    pub(super) fn slot(&self, index: usize) -> Option<Arc<Slot>> {
        self.routes.slot(index)
    }

    pub(super) fn current(&self) -> Arc<Generation> {
        Arc::clone(&lock(&self.current))
    }

    /// True when `generation` was replaced.
    pub(super) fn is_stale(&self, generation: u64) -> bool {
        self.routes.generation.load(Ordering::Acquire) != generation
    }

    /// The seat parked for destination `name`, else a free one; `None` when
    /// `MAX_DESTINATIONS` are taken.
    pub(super) fn attach(&self, name: &str) -> Option<Seat> {
        let mut slots = self
            .routes
            .slots
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let parked = slots
            .iter()
            .position(|slot| lock(&slot.parked_for).as_deref() == Some(name));
        if let Some(index) = parked {
            let slot = Arc::clone(&slots[index]);
            *lock(&slot.parked_for) = None;
            return Some(Seat {
                index,
                slot,
                name: name.to_string(),
            });
        }
        let free = slots.iter().position(|slot| {
            !slot.attached.load(Ordering::Acquire) && slot.outstanding.load(Ordering::Acquire) == 0
        });
        let index = match free {
            Some(index) => index,
            None if slots.len() < MAX_DESTINATIONS => {
                slots.push(Arc::default());
                slots.len() - 1
            }
            None => return None,
        };
        let slot = Arc::clone(&slots[index]);
        lock(&slot.reports).clear();
        slot.attached.store(true, Ordering::Release);
        Some(Seat {
            index,
            slot,
            name: name.to_string(),
        })
    }

    /// The producer to use after generation `seen` broke: a new one when `seen` is the
    /// current one and fatal, else the current one (another destination replaced it).
    pub(super) fn renew(&self, seen: u64) -> Result<Arc<Generation>, ProducerError> {
        let mut current = lock(&self.current);
        if current.number != seen || current.fatal().is_none() {
            return Ok(Arc::clone(&current));
        }
        let next = Arc::new(open(&self.settings, &self.routes, seen + 1)?);
        self.routes.generation.store(next.number, Ordering::Release);
        // The caller still holds the old one: it is not dropped under this lock.
        *current = Arc::clone(&next);
        Ok(next)
    }
}

fn producer_error_text(error: &KafkaError) -> String {
    match error {
        KafkaError::ClientConfig(_, description, property, _) => {
            format!("property '{property}': {description}")
        }
        other => other.to_string(),
    }
}

fn open(
    settings: &ProducerSettings,
    routes: &Arc<Routes>,
    number: u64,
) -> Result<Generation, ProducerError> {
    let mut config = ClientConfig::new();
    for (property, value) in &settings.properties {
        config.set(property, value);
    }
    config.set_log_level(if settings.debug() {
        RDKafkaLogLevel::Debug
    } else {
        RDKafkaLogLevel::Info
    });
    let health = Arc::new(Health {
        events: AtomicU64::new(0),
        check_fatal: AtomicBool::new(false),
        fatal: Mutex::new(None),
        last_broker_error: Mutex::new(None),
        last_delivered_ms: AtomicU64::new(0),
        librdkafka_log: RateLimit::new(10),
        error_log: RateLimit::new(10),
    });
    let words = Arc::new(Words::new(settings));
    let context = KafkaContext {
        generation: number,
        words: Arc::clone(&words),
        health: Arc::clone(&health),
        routes: Arc::clone(routes),
    };
    let producer = config
        .create_with_context(context)
        .map_err(|error| ProducerError(words.creation_error(&producer_error_text(&error))))?;
    Ok(Generation {
        number,
        producer,
        health,
    })
}
