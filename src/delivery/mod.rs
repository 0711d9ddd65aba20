//! The Kafka side: one librdkafka producer, created at load and cached, fed without ever
//! waiting, and polled for delivery reports on a thread of its own.
//!
//! Threads: `send` runs on Asterisk's CDR thread and only enqueues into librdkafka's
//! memory (it never blocks). Delivery reports and producer errors are handled by the
//! poll thread this module starts; `shutdown` stops and joins it, flushes with a bounded
//! wait and only then drops the producer (rust-rdkafka purges its queue on drop).
//! librdkafka's own threads end inside that drop (rd_kafka_destroy), so nothing of
//! ours runs once `shutdown` returned.

pub mod spool;
pub mod stats;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

use crate::ast_log;
use crate::config::{ConfigError, KafkaSettings, REDACTED};
use crate::ratelimit::{suppressed_note, RateLimit};
use stats::Stats;

/// How often the poll thread looks for a stop request between delivery reports.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Why a record was not taken at hand-off.
#[derive(Debug)]
pub enum SendError {
    /// librdkafka's queue holds `queue.buffering.max.messages` records already.
    QueueFull,
    /// Anything else librdkafka refused the record for.
    Refused(KafkaError),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::QueueFull => write!(
                f,
                "librdkafka's queue is full (queue_buffering_max_messages): the broker is not keeping up or is unreachable"
            ),
            Self::Refused(error) => write!(f, "librdkafka refused the record: {error}"),
        }
    }
}

/// What the producer's callbacks do: count, remember the last error, log rate-limited.
pub struct DeliveryContext {
    stats: Arc<Stats>,
    /// Records taken by librdkafka and not yet reported on. librdkafka's own
    /// `rd_kafka_outq_len` also counts pending events, so it overstates this.
    in_flight: AtomicU64,
    failure_log: RateLimit,
    error_log: RateLimit,
    librdkafka_log: RateLimit,
}

impl ClientContext for DeliveryContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                if let Some(held) = self.librdkafka_log.check() {
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
        self.stats
            .set_last_broker_error(format!("{error}: {reason}"));
        if let Some(held) = self.error_log.check() {
            ast_log!(
                Warning,
                "Kafka producer error: {error}: {reason}{}",
                suppressed_note(held)
            );
        }
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        match result {
            Ok(_) => Stats::add(&self.stats.delivered),
            Err((error, _)) => {
                Stats::add(&self.stats.failed);
                self.stats
                    .set_last_error(format!("delivery failed: {error}"));
                if let Some(held) = self.failure_log.check() {
                    ast_log!(
                        Error,
                        "a CDR could not be delivered to Kafka: {error}{}",
                        suppressed_note(held)
                    );
                }
            }
        }
    }
}

/// The cached producer and its poll thread.
pub struct Publisher {
    producer: Arc<BaseProducer<DeliveryContext>>,
    stop: Arc<AtomicBool>,
    poller: Option<JoinHandle<()>>,
}

impl Publisher {
    /// Creates the producer from librdkafka properties and starts polling it.
    pub fn start(kafka: &KafkaSettings, stats: Arc<Stats>) -> Result<Self, ConfigError> {
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
            stats,
            in_flight: AtomicU64::new(0),
            failure_log: RateLimit::new(10),
            error_log: RateLimit::new(10),
            librdkafka_log: RateLimit::new(10),
        };
        let producer: BaseProducer<DeliveryContext> =
            config
                .create_with_context(context)
                .map_err(|error| ConfigError::Producer {
                    message: redact(kafka, &producer_error_text(&error)),
                })?;
        let producer = Arc::new(producer);
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let producer = Arc::clone(&producer);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("cdr_kafka-poll".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        producer.poll(POLL_INTERVAL);
                    }
                })
                .map_err(|error| ConfigError::Producer {
                    message: format!("cannot start the delivery report thread: {error}"),
                })?
        };
        Ok(Self {
            producer,
            stop,
            poller: Some(poller),
        })
    }

    /// Hands one record to librdkafka. Never waits: a full queue is an error at once.
    pub fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> Result<(), SendError> {
        let mut record = BaseRecord::to(topic).payload(payload).headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        let in_flight = &self.producer.context().in_flight;
        // Counted before the send: its delivery report may come before send returns.
        in_flight.fetch_add(1, Ordering::AcqRel);
        self.producer.send(record).map_err(|(error, _)| {
            in_flight.fetch_sub(1, Ordering::AcqRel);
            match error {
                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => SendError::QueueFull,
                error => SendError::Refused(error),
            }
        })
    }

    /// Records handed over and not yet delivered or failed.
    pub fn in_flight(&self) -> u64 {
        self.producer.context().in_flight.load(Ordering::Acquire)
    }

    /// Waits up to `timeout` for records in flight, then stops everything this producer
    /// started. Returns how many records were still undelivered (and are dropped).
    pub fn shutdown(mut self, timeout: Duration) -> u64 {
        self.stop_polling();
        let deadline = Instant::now() + timeout;
        // flush() serves delivery reports itself now that the poll thread is gone.
        let _ = self.producer.flush(timeout);
        while self.in_flight() > 0 && Instant::now() < deadline {
            self.producer.poll(POLL_INTERVAL);
        }
        self.in_flight()
    }

    fn stop_polling(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(poller) = self.poller.take() {
            let _ = poller.join();
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.stop_polling();
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
    fn unknown_librdkafka_property_is_named_and_secrets_are_hidden() {
        let mut kafka = KafkaSettings::default();
        kafka
            .properties
            .insert("bootstrap.servers".into(), "127.0.0.1:9".into());
        kafka
            .properties
            .insert("no.such.property".into(), "1".into());
        let error = Publisher::start(&kafka, Arc::default())
            .err()
            .expect("librdkafka refuses an unknown property");
        let text = error.to_string();
        assert!(text.contains("no.such.property"), "{text}");

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
