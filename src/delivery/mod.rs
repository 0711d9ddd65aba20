//! The Kafka side: every record goes into the durable spool first; a feeder thread
//! hands spooled records to one librdkafka producer, in spool order; the broker's
//! acknowledgement (a delivery report) is what removes a record from the spool.
//!
//! Threads:
//! - Asterisk's CDR thread only appends to the spool (see `spool.rs`) and returns.
//! - The feeder thread (`cdr_kafka-feed`) owns the producer: it sends spooled records,
//!   waits while librdkafka's queue is full (the records wait on disk, in order),
//!   recreates the producer after a fatal error, and at shutdown flushes with a bounded
//!   wait and drops the producer. librdkafka's own threads end inside that drop.
//! - The poll thread (`cdr_kafka-poll`), started and joined by the feeder, serves
//!   delivery reports: acknowledge, dead-letter, or leave for another try.

pub mod spool;
pub mod stats;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

use crate::ast_log;
use crate::config::{ConfigError, KafkaSettings, REDACTED};
use crate::ratelimit::{suppressed_note, RateLimit};
use spool::{EntryRef, Spool, SpoolRecord};
use stats::Stats;

/// How often the poll thread looks for a stop request between delivery reports. Each
/// poll ends in up to 1 ms of busy waiting (rust-rdkafka rounds the last millisecond to
/// a zero timeout): 500 ms keeps an idle module under 0.2% of a core.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How long the feeder sleeps while librdkafka's queue is full.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(5);
/// How long the feeder waits for a new record before checking on other work.
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// What happens to a record whose delivery failed.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// The broker will never take it: dead-letter file.
    Permanent,
    /// The producer was torn down with it queued: it stays in the spool.
    Purged,
    /// Worth another try.
    Retriable,
}

fn classify(error: &KafkaError) -> Failure {
    use RDKafkaErrorCode as Code;
    match error.rdkafka_error_code() {
        Some(
            Code::MessageSizeTooLarge
            | Code::InvalidMessageSize
            | Code::InvalidMessage
            | Code::MessageBatchTooLarge
            | Code::InvalidRecord
            | Code::UnknownTopicOrPartition
            | Code::UnknownTopic
            | Code::UnknownPartition
            | Code::InvalidTopic
            | Code::TopicAuthorizationFailed
            | Code::ClusterAuthorizationFailed,
        ) => Failure::Permanent,
        Some(Code::PurgeQueue | Code::PurgeInflight | Code::Fatal | Code::BrokerDestroy) => {
            Failure::Purged
        }
        _ => Failure::Retriable,
    }
}

/// State shared by the feeder, the poll thread and the producer's callbacks.
struct Shared {
    spool: Arc<Spool>,
    stats: Arc<Stats>,
    stop: AtomicBool,
    /// Set by the producer's error callback: the feeder then asks librdkafka whether the
    /// error was fatal, and if so recreates the producer.
    check_fatal: AtomicBool,
    /// Records handed to librdkafka and not yet reported on.
    in_flight: AtomicU64,
    /// Records whose delivery failed in a way worth another try, oldest first.
    retries: Mutex<VecDeque<EntryRef>>,
    /// How long the feeder's shutdown waits for records in flight.
    flush_timeout_ms: AtomicU64,
    failure_log: RateLimit,
    error_log: RateLimit,
    librdkafka_log: RateLimit,
}

/// The producer's callbacks: acknowledge, dead-letter or retry; count; log rate-limited.
pub struct DeliveryContext {
    shared: Arc<Shared>,
}

impl ClientContext for DeliveryContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                if let Some(held) = self.shared.librdkafka_log.check() {
                    ast_log!(
                        Warning,
                        "librdkafka {facility}: {message}{}",
                        suppressed_note(held)
                    );
                }
            }
            _ => ast_log!(Debug, "librdkafka {facility}: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let shared = &self.shared;
        shared
            .stats
            .set_last_broker_error(format!("{error}: {reason}"));
        // librdkafka's error event does not say whether it was fatal: the feeder asks.
        shared.check_fatal.store(true, Ordering::Release);
        if let Some(held) = shared.error_log.check() {
            ast_log!(
                Warning,
                "Kafka producer error: {error}: {reason}{}",
                suppressed_note(held)
            );
        }
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let shared = &self.shared;
        shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        let entry = EntryRef::from_opaque(opaque);
        let error = match result {
            Ok(_) => {
                shared.spool.ack(entry);
                Stats::add(&shared.stats.delivered);
                return;
            }
            Err((error, _)) => error,
        };
        match classify(error) {
            Failure::Purged => {}
            Failure::Retriable => {
                lock(&shared.retries).push_back(entry);
            }
            Failure::Permanent => dead_letter(shared, &entry, error),
        }
    }
}

/// A record the broker will never take: to the dead-letter file, counted and logged.
fn dead_letter(shared: &Shared, entry: &EntryRef, error: &KafkaError) {
    Stats::add(&shared.stats.failed);
    let reason = error.to_string();
    shared
        .stats
        .set_last_error(format!("dead-lettered: {reason}"));
    if let Err(spool_error) = shared.spool.dead_letter(*entry, &reason) {
        ast_log!(Error, "cannot write the dead-letter file: {spool_error}");
    }
    if let Some(held) = shared.failure_log.check() {
        ast_log!(
            Error,
            "the broker refused a record for good ({reason}); it is in {}{}",
            shared.spool.dead_letter_path().display(),
            suppressed_note(held)
        );
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

type KafkaProducer = BaseProducer<DeliveryContext>;

/// The producer and its poll thread.
struct Connection {
    producer: Arc<KafkaProducer>,
    stop_polling: Arc<AtomicBool>,
    poller: Option<JoinHandle<()>>,
}

impl Connection {
    fn open(kafka: &KafkaSettings, shared: &Arc<Shared>) -> Result<Self, ConfigError> {
        let mut config = ClientConfig::new();
        for (property, value) in &kafka.properties {
            config.set(property, value);
        }
        let debug = kafka.get("debug").is_some_and(|d| !d.is_empty());
        config.set_log_level(if debug {
            RDKafkaLogLevel::Debug
        } else {
            RDKafkaLogLevel::Info
        });
        let context = DeliveryContext {
            shared: Arc::clone(shared),
        };
        let producer: KafkaProducer =
            config
                .create_with_context(context)
                .map_err(|error| ConfigError::Producer {
                    message: redact(kafka, &producer_error_text(&error)),
                })?;
        Ok(Self {
            producer: Arc::new(producer),
            stop_polling: Arc::new(AtomicBool::new(false)),
            poller: None,
        })
    }

    fn start_polling(&mut self) -> std::io::Result<()> {
        let producer = Arc::clone(&self.producer);
        let stop = Arc::clone(&self.stop_polling);
        self.poller = Some(
            std::thread::Builder::new()
                .name("cdr_kafka-poll".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        producer.poll(POLL_INTERVAL);
                    }
                })?,
        );
        Ok(())
    }

    /// Waits up to `timeout` for records in flight, then stops polling. Whatever is left
    /// is purged when the connection is dropped; it stays in the spool.
    fn drain(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let _ = self.producer.flush(timeout);
        self.stop_polling.store(true, Ordering::Release);
        if let Some(poller) = self.poller.take() {
            let _ = poller.join();
        }
        // Reports that came in after the flush still count.
        while Instant::now() < deadline && self.producer.in_flight_count() > 0 {
            self.producer.poll(POLL_INTERVAL);
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.stop_polling.store(true, Ordering::Release);
        if let Some(poller) = self.poller.take() {
            let _ = poller.join();
        }
    }
}

/// The spool's feeder and the producer it feeds. Created (and the producer settings
/// checked) by [`Publisher::start`]; feeding begins with [`Publisher::run`].
pub struct Publisher {
    shared: Arc<Shared>,
    kafka: KafkaSettings,
    connection: Mutex<Option<Connection>>,
    feeder: Mutex<Option<JoinHandle<u64>>>,
}

impl Publisher {
    /// Creates the producer (so bad settings are refused now) without feeding it yet.
    pub fn start(
        kafka: &KafkaSettings,
        spool: Arc<Spool>,
        stats: Arc<Stats>,
    ) -> Result<Self, ConfigError> {
        let shared = Arc::new(Shared {
            spool,
            stats,
            stop: AtomicBool::new(false),
            check_fatal: AtomicBool::new(false),
            in_flight: AtomicU64::new(0),
            retries: Mutex::new(VecDeque::new()),
            flush_timeout_ms: AtomicU64::new(5000),
            failure_log: RateLimit::new(10),
            error_log: RateLimit::new(10),
            librdkafka_log: RateLimit::new(10),
        });
        let connection = Connection::open(kafka, &shared)?;
        Ok(Self {
            shared,
            kafka: kafka.clone(),
            connection: Mutex::new(Some(connection)),
            feeder: Mutex::new(None),
        })
    }

    /// Starts the poll and feeder threads: spooled records flow to Kafka from now on.
    pub fn run(&self) -> Result<(), ConfigError> {
        let thread_error = |error: std::io::Error| ConfigError::Producer {
            message: format!("cannot start the module's threads: {error}"),
        };
        let Some(mut connection) = lock(&self.connection).take() else {
            return Ok(()); // running already
        };
        connection.start_polling().map_err(thread_error)?;
        let shared = Arc::clone(&self.shared);
        let kafka = self.kafka.clone();
        let feeder = std::thread::Builder::new()
            .name("cdr_kafka-feed".into())
            .spawn(move || feed(&shared, &kafka, connection))
            .map_err(thread_error)?;
        *lock(&self.feeder) = Some(feeder);
        Ok(())
    }

    /// How long `shutdown` waits for records in flight.
    pub fn set_flush_timeout(&self, timeout: Duration) {
        self.shared
            .flush_timeout_ms
            .store(timeout.as_millis() as u64, Ordering::Relaxed);
    }

    /// Records handed to librdkafka and not yet delivered or failed.
    pub fn in_flight(&self) -> u64 {
        self.shared.in_flight.load(Ordering::Acquire)
    }

    /// Stops feeding, waits up to the flush timeout for records in flight, and stops
    /// every thread. Returns how many records were still unconfirmed: they stay in the
    /// spool and are produced again by the next producer.
    pub fn shutdown(&self, timeout: Duration) -> u64 {
        self.set_flush_timeout(timeout);
        self.shared.stop.store(true, Ordering::Release);
        let feeder = lock(&self.feeder).take();
        match feeder {
            Some(feeder) => feeder.join().unwrap_or(0),
            // Never ran: nothing was sent.
            None => {
                lock(&self.connection).take();
                0
            }
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.shutdown(Duration::ZERO);
    }
}

/// The feeder thread: spool → producer, in spool order, until told to stop.
fn feed(shared: &Arc<Shared>, kafka: &KafkaSettings, first: Connection) -> u64 {
    let spool = &shared.spool;
    let mut connection = first;
    let mut cursor = spool.cursor();
    let read_error_log = RateLimit::new(10);
    while !shared.stop.load(Ordering::Acquire) {
        if shared.check_fatal.swap(false, Ordering::AcqRel) {
            let Some((_, reason)) = connection.producer.client().fatal_error() else {
                continue;
            };
            ast_log!(
                Error,
                "fatal Kafka producer error, recreating the producer (records stay spooled): {reason}"
            );
            let Some(fresh) = recreate(shared, kafka, connection) else {
                return 0;
            };
            connection = fresh;
            cursor = spool.cursor();
            continue;
        }
        spool.sync_if_due();
        let retry = lock(&shared.retries).pop_front();
        if let Some(entry) = retry {
            if let Some(record) = spool.read(entry) {
                send(shared, &connection.producer, entry, &record);
            }
            continue;
        }
        let generation = spool.generation();
        match spool.next(&mut cursor) {
            Ok(Some((entry, record))) => send(shared, &connection.producer, entry, &record),
            Ok(None) => {
                spool.wait_for_append(generation, IDLE_WAIT);
            }
            Err(error) => {
                if let Some(held) = read_error_log.check() {
                    ast_log!(
                        Error,
                        "cannot read the spool: {error}{}",
                        suppressed_note(held)
                    );
                }
                std::thread::sleep(IDLE_WAIT);
            }
        }
    }
    let timeout = Duration::from_millis(shared.flush_timeout_ms.load(Ordering::Relaxed));
    spool.sync_now();
    connection.drain(timeout);
    // Read before the drop: the purge's reports bring the count to zero.
    let unconfirmed = shared.in_flight.load(Ordering::Acquire);
    drop(connection);
    unconfirmed
}

/// Replaces a producer that hit a fatal error; `None` when told to stop meanwhile.
fn recreate(shared: &Arc<Shared>, kafka: &KafkaSettings, old: Connection) -> Option<Connection> {
    // Whatever was in flight may have reached the broker: it is produced again.
    let in_flight = shared.in_flight.swap(0, Ordering::AcqRel);
    shared
        .stats
        .duplicates_possible
        .fetch_add(in_flight, Ordering::Relaxed);
    lock(&shared.retries).clear();
    drop(old);
    Stats::add(&shared.stats.producer_restarts);
    while !shared.stop.load(Ordering::Acquire) {
        match Connection::open(kafka, shared) {
            Ok(mut connection) => {
                if connection.start_polling().is_ok() {
                    return Some(connection);
                }
            }
            Err(error) => ast_log!(Error, "cannot recreate the Kafka producer: {error}"),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    None
}

/// Hands one spooled record to librdkafka, waiting while its queue is full.
fn send(shared: &Shared, producer: &KafkaProducer, entry: EntryRef, record: &SpoolRecord) {
    let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
    for (name, value) in &record.headers {
        headers = headers.insert(Header {
            key: name,
            value: Some(value),
        });
    }
    let mut message = BaseRecord::with_opaque_to(&record.topic, entry.to_opaque())
        .payload(&record.payload)
        .headers(headers);
    if let Some(key) = &record.key {
        message = message.key(key);
    }
    loop {
        shared.in_flight.fetch_add(1, Ordering::AcqRel);
        let error = match producer.send(message) {
            Ok(()) => {
                Stats::add(&shared.stats.queued);
                if shared.spool.is_recovered(entry) {
                    Stats::add(&shared.stats.replayed);
                }
                return;
            }
            Err((error, returned)) => {
                shared.in_flight.fetch_sub(1, Ordering::AcqRel);
                message = returned;
                error
            }
        };
        match error {
            KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => {
                // The record waits in the spool; the CDR thread is not involved. Give up
                // on it only to stop, or for a producer that will never send again: the
                // feeder then rereads the spool from its oldest unacknowledged record.
                if shared.stop.load(Ordering::Acquire) {
                    return;
                }
                if producer.client().fatal_error().is_some() {
                    shared.check_fatal.store(true, Ordering::Release);
                    return;
                }
                std::thread::sleep(QUEUE_FULL_PAUSE);
            }
            error => {
                dead_letter(shared, &entry, &error);
                return;
            }
        }
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

/// Replaces every secret value of the settings that appears in `text`.
fn redact(kafka: &KafkaSettings, text: &str) -> String {
    let mut text = text.to_string();
    for (property, value) in &kafka.properties {
        if KafkaSettings::is_secret(property) && !value.is_empty() {
            text = text.replace(value.as_str(), REDACTED);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_purged_and_retriable_failures_are_told_apart() {
        let production = |code| KafkaError::MessageProduction(code);
        assert_eq!(
            classify(&production(RDKafkaErrorCode::MessageSizeTooLarge)),
            Failure::Permanent
        );
        assert_eq!(
            classify(&production(RDKafkaErrorCode::TopicAuthorizationFailed)),
            Failure::Permanent
        );
        assert_eq!(
            classify(&production(RDKafkaErrorCode::PurgeQueue)),
            Failure::Purged
        );
        assert_eq!(
            classify(&production(RDKafkaErrorCode::MessageTimedOut)),
            Failure::Retriable
        );
    }

    #[test]
    fn unknown_librdkafka_property_is_named() {
        let dir = std::env::temp_dir().join(format!("cdr_kafka-prop-{}", std::process::id()));
        let spool = Spool::open(spool::SpoolSettings {
            dir: dir.clone(),
            sync: spool::SyncPolicy::Never,
            sync_interval: Duration::from_secs(1),
            max_bytes: 0,
        })
        .unwrap();
        let kafka = KafkaSettings {
            properties: [
                ("bootstrap.servers".to_string(), "127.0.0.1:9".to_string()),
                ("no.such.property".to_string(), "1".to_string()),
            ]
            .into(),
        };
        let error = Publisher::start(&kafka, Arc::new(spool), Arc::default())
            .err()
            .expect("librdkafka refuses an unknown property");
        assert!(error.to_string().contains("no.such.property"), "{error}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn secrets_are_redacted_from_producer_errors() {
        assert_eq!(
            redact(
                &KafkaSettings {
                    properties: [("sasl.password".to_string(), "hunter2".to_string())].into()
                },
                "bad hunter2 here"
            ),
            "bad ******** here"
        );
    }
}
