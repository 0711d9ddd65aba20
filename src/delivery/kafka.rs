//! The Kafka destination: one librdkafka producer, fed by its feeder thread and polled
//! by it too (no thread of ours besides the feeder). Delivery reports are served with
//! non-blocking polls at each pass, so a batch of reports costs one wake-up.
//!
//! librdkafka's own threads end when the producer is dropped, which happens on the
//! feeder thread at shutdown or rebuild, never on an Asterisk thread.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

use super::destination::{Destination, Offer, Outcome};
use super::log::{now_ms, StoredRecord};
use crate::ast_log;
use crate::ratelimit::{suppressed_note, RateLimit};

/// Polls served in one pass at most (each serves one event: a batch of reports).
const MAX_POLLS_PER_PASS: usize = 10_000;
pub const REDACTED: &str = "********";

/// The producer's librdkafka properties, and the values to keep out of messages.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProducerSettings {
    pub properties: Vec<(String, String)>,
    pub secrets: Vec<String>,
}

impl ProducerSettings {
    fn redact(&self, text: &str) -> String {
        let mut text = text.to_string();
        for secret in self.secrets.iter().filter(|s| !s.is_empty()) {
            text = text.replace(secret.as_str(), REDACTED);
        }
        text
    }

    fn debug(&self) -> bool {
        self.properties
            .iter()
            .any(|(name, value)| name == "debug" && !value.is_empty())
    }
}

/// What can go wrong with a record, as librdkafka reports it.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// The broker will never take it: dead-letter file.
    Permanent,
    /// Worth another try (including records purged by a producer's teardown and
    /// fatal errors: those records wait for the next producer).
    Retriable,
}

pub fn classify(code: Option<RDKafkaErrorCode>) -> Failure {
    use RDKafkaErrorCode as Code;
    match code {
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
        _ => Failure::Retriable,
    }
}

/// Shared by the producer's callbacks (run inside `poll`, on the feeder thread) and
/// the destination.
struct Reports {
    /// The producer these reports belong to: reports of a torn-down one are dropped.
    generation: u64,
    outcomes: Mutex<Vec<(u64, Outcome)>>,
    /// Events served: polling goes on while this moves.
    events: AtomicU64,
    /// An error came: ask librdkafka whether it was fatal.
    check_fatal: AtomicBool,
    /// The producer's last word about the brokers, and when (Unix ms).
    last_broker_error: Mutex<Option<(String, u64)>>,
    /// When the broker last confirmed a record (Unix ms).
    last_delivered_ms: AtomicU64,
    librdkafka_log: RateLimit,
    error_log: RateLimit,
}

pub struct KafkaContext {
    reports: Arc<Reports>,
}

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.reports.events.fetch_add(1, Ordering::Relaxed);
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                if let Some(held) = self.reports.librdkafka_log.check() {
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
        let reports = &self.reports;
        reports.events.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = reports.last_broker_error.lock() {
            *last = Some((format!("{error}: {reason}"), now_ms()));
        }
        reports.check_fatal.store(true, Ordering::Release);
        if let Some(held) = reports.error_log.check() {
            ast_log!(
                Warning,
                "Kafka producer error: {error}: {reason}{}",
                suppressed_note(held)
            );
        }
    }
}

impl ProducerContext for KafkaContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let reports = &self.reports;
        reports.events.fetch_add(1, Ordering::Relaxed);
        let outcome = match result {
            Ok(_) => {
                reports.last_delivered_ms.store(now_ms(), Ordering::Relaxed);
                Outcome::Delivered
            }
            Err((error, _)) => match classify(error.rdkafka_error_code()) {
                Failure::Permanent => Outcome::Refused(error.to_string()),
                Failure::Retriable => Outcome::Retry,
            },
        };
        if let Ok(mut outcomes) = reports.outcomes.lock() {
            outcomes.push((opaque as u64, outcome));
        }
    }
}

type KafkaProducer = BaseProducer<KafkaContext>;

/// Why a producer could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerError(pub String);

impl std::fmt::Display for ProducerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProducerError {}

pub struct KafkaDestination {
    name: String,
    settings: ProducerSettings,
    producer: KafkaProducer,
    reports: Arc<Reports>,
    in_flight: u64,
    fatal: Option<String>,
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
    generation: u64,
) -> Result<(KafkaProducer, Arc<Reports>), ProducerError> {
    let mut config = ClientConfig::new();
    for (property, value) in &settings.properties {
        config.set(property, value);
    }
    config.set_log_level(if settings.debug() {
        RDKafkaLogLevel::Debug
    } else {
        RDKafkaLogLevel::Info
    });
    let reports = Arc::new(Reports {
        generation,
        outcomes: Mutex::new(Vec::new()),
        events: AtomicU64::new(0),
        check_fatal: AtomicBool::new(false),
        last_broker_error: Mutex::new(None),
        last_delivered_ms: AtomicU64::new(0),
        librdkafka_log: RateLimit::new(10),
        error_log: RateLimit::new(10),
    });
    let context = KafkaContext {
        reports: Arc::clone(&reports),
    };
    let producer = config
        .create_with_context(context)
        .map_err(|error| ProducerError(settings.redact(&producer_error_text(&error))))?;
    Ok((producer, reports))
}

impl KafkaDestination {
    /// Creates the producer: bad settings are refused now, with librdkafka's words.
    pub fn new(name: &str, settings: ProducerSettings) -> Result<Self, ProducerError> {
        let (producer, reports) = open(&settings, 0)?;
        Ok(Self {
            name: name.to_string(),
            settings,
            producer,
            reports,
            in_flight: 0,
            fatal: None,
        })
    }

    /// Serves the events librdkafka has queued, without waiting.
    fn serve(&self) {
        for _ in 0..MAX_POLLS_PER_PASS {
            let before = self.reports.events.load(Ordering::Relaxed);
            self.producer.poll(Duration::ZERO);
            if self.reports.events.load(Ordering::Relaxed) == before {
                break;
            }
        }
    }

    fn bootstrap(&self) -> &str {
        self.settings
            .properties
            .iter()
            .find(|(name, _)| name == "bootstrap.servers")
            .map_or("", |(_, value)| value.as_str())
    }
}

impl Destination for KafkaDestination {
    fn name(&self) -> &str {
        &self.name
    }

    fn offer(&mut self, record: &StoredRecord<'_>) -> Offer {
        if self.fatal.is_some() {
            return Offer::Full;
        }
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (name, value) in &record.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(*value),
            });
        }
        let mut message = BaseRecord::with_opaque_to(record.topic, record.seq as usize)
            .payload(record.payload)
            .headers(headers);
        if let Some(key) = record.key {
            message = message.key(key);
        }
        match self.producer.send(message) {
            Ok(()) => {
                self.in_flight += 1;
                Offer::Taken
            }
            Err((error, _)) => {
                let code = error.rdkafka_error_code();
                if code == Some(RDKafkaErrorCode::QueueFull) {
                    return Offer::Full;
                }
                if let Some((_, reason)) = self.producer.client().fatal_error() {
                    self.fatal = Some(reason);
                    return Offer::Full;
                }
                match classify(code) {
                    Failure::Permanent => Offer::Refused(error.to_string()),
                    Failure::Retriable => Offer::Full,
                }
            }
        }
    }

    fn collect(&mut self, outcomes: &mut Vec<(u64, Outcome)>) {
        self.serve();
        let Ok(mut reported) = self.reports.outcomes.lock() else {
            return;
        };
        self.in_flight = self.in_flight.saturating_sub(reported.len() as u64);
        outcomes.append(&mut reported);
    }

    fn broken(&mut self) -> Option<String> {
        if self.reports.check_fatal.swap(false, Ordering::AcqRel) {
            if let Some((_, reason)) = self.producer.client().fatal_error() {
                self.fatal = Some(reason);
            }
        }
        self.fatal
            .as_ref()
            .map(|reason| format!("fatal Kafka producer error: {reason}"))
    }

    fn rebuild(&mut self) -> Result<(), String> {
        let generation = self.reports.generation + 1;
        let (producer, reports) = open(&self.settings, generation).map_err(|e| e.0)?;
        // The old producer goes first (its reports, purged, are dropped with it).
        self.producer = producer;
        self.reports = reports;
        self.in_flight = 0;
        self.fatal = None;
        Ok(())
    }

    fn in_flight(&self) -> u64 {
        self.in_flight
    }

    fn flush(&mut self, timeout: Duration) {
        if self.in_flight > 0 && self.fatal.is_none() {
            let _ = self.producer.flush(timeout);
        }
    }

    fn describe(&self) -> String {
        let state = if let Some(reason) = &self.fatal {
            format!("broken ({reason})")
        } else {
            // Retrying only while records wait and no confirmation came since the error.
            let delivered = self.reports.last_delivered_ms.load(Ordering::Relaxed);
            let last = self
                .reports
                .last_broker_error
                .lock()
                .ok()
                .and_then(|last| last.clone());
            match last {
                Some((error, at)) if self.in_flight > 0 && at >= delivered => {
                    format!("retrying ({error})")
                }
                _ => "producing".to_string(),
            }
        };
        format!("kafka {} — {state}", self.bootstrap())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_and_retriable_failures_are_told_apart() {
        use RDKafkaErrorCode as Code;
        assert_eq!(
            classify(Some(Code::MessageSizeTooLarge)),
            Failure::Permanent
        );
        assert_eq!(
            classify(Some(Code::TopicAuthorizationFailed)),
            Failure::Permanent
        );
        // A fatal error or a teardown never dead-letters: the records wait.
        assert_eq!(classify(Some(Code::Fatal)), Failure::Retriable);
        assert_eq!(classify(Some(Code::PurgeQueue)), Failure::Retriable);
        assert_eq!(classify(Some(Code::MessageTimedOut)), Failure::Retriable);
    }

    #[test]
    fn unknown_librdkafka_property_is_named() {
        let settings = ProducerSettings {
            properties: vec![
                ("bootstrap.servers".into(), "127.0.0.1:9".into()),
                ("no.such.property".into(), "1".into()),
            ],
            secrets: Vec::new(),
        };
        let error = KafkaDestination::new("global", settings)
            .err()
            .expect("librdkafka refuses an unknown property");
        assert!(error.to_string().contains("no.such.property"), "{error}");
    }

    #[test]
    fn secrets_are_redacted_from_producer_errors() {
        let settings = ProducerSettings {
            properties: Vec::new(),
            secrets: vec!["hunter2".into()],
        };
        assert_eq!(settings.redact("bad hunter2 here"), "bad ******** here");
    }
}
