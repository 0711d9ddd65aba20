//! The Kafka destination. Its producer is either its own (a destination with brokers of
//! its own: `new`) or the `[global]` one (`on_shared`): one librdkafka producer, one
//! set of broker connections and threads, for many destinations and topics
//! (`shared.rs`). Each destination is driven by its own feeder, which also polls:
//! delivery reports are served with non-blocking polls at each pass and sorted to the
//! destination that sent each record, whichever feeder polled. Nothing here waits
//! outside `flush`, so the Kafka feeders share one pass thread (`never_waits`).
//!
//! Ownership and threads: each destination holds an `Arc` of its producer, and the
//! producer (with librdkafka's threads) ends when the last holder lets go. Destinations
//! are dropped at the end of their feeder thread, and an old producer is let go in
//! `rebuild`, on a feeder thread too; so whoever else holds an `Arc<SharedProducer>`
//! (the module while it starts its destinations) must let go of it before the
//! destinations stop, never on an Asterisk thread.

mod shared;
#[cfg(test)]
mod tests;
mod words;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};

use super::destination::{Destination, Offer, Outcome};
use super::log::StoredRecord;
use shared::{pack, Generation, Seat};
pub use shared::{SharedProducer, MAX_DESTINATIONS, MAX_SEQ};

/// The internal routing header: says which destinations a record is for, and never
/// reaches Kafka.
pub const ROUTING_HEADER: &str = "kafka_to";
/// How long one poll of a shared producer's flush waits at most.
const FLUSH_POLL: Duration = Duration::from_millis(50);
pub const REDACTED: &str = "********";

/// The producer's librdkafka properties, and the values to keep out of messages.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProducerSettings {
    pub properties: Vec<(String, String)>,
    pub secrets: Vec<String>,
}

impl ProducerSettings {
    #[cfg(test)]
    fn redact(&self, text: &str) -> String {
        words::Words::new(self).redact(text)
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
    /// First: let go of the seat before the producer may end.
    seat: Option<Seat>,
    name: String,
    producer: Arc<SharedProducer>,
    /// The `[global]` producer (`on_shared`), not one of its own.
    shared: bool,
    /// The producer this destination sends through (the current one, unless broken).
    generation: Arc<Generation>,
    in_flight: u64,
    fatal: Option<String>,
    /// Its seat still carries records an earlier run of this destination sent: nothing
    /// is sent until their reports are in, so none of them is handed over twice.
    inherited: bool,
}

impl KafkaDestination {
    /// A destination with a producer of its own: bad settings are refused now, with
    /// librdkafka's words.
    pub fn new(name: &str, settings: ProducerSettings) -> Result<Self, ProducerError> {
        let producer = SharedProducer::new(settings)?;
        let mut destination = Self::on_shared(name, &producer);
        destination.shared = false;
        Ok(destination)
    }

    /// A destination on the `[global]` producer. With `MAX_DESTINATIONS` already on it,
    /// it reports itself broken (and tries again at each rebuild).
    pub fn on_shared(name: &str, producer: &Arc<SharedProducer>) -> Self {
        let seat = producer.attach(name);
        let generation = producer.current();
        let in_flight = seat.as_ref().map_or(0, |seat| {
            seat.outstanding() + seat.waiting(generation.number)
        });
        Self {
            seat,
            name: name.to_string(),
            producer: Arc::clone(producer),
            shared: true,
            generation,
            in_flight,
            fatal: None,
            inherited: in_flight > 0,
        }
    }

    /// Waits for this destination's own reports only: other destinations' records may
    /// keep coming, and `rd_kafka_flush` would wait for them too.
    fn flush_own(&self, seat: &Seat, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while seat.waiting(self.generation.number) < self.in_flight {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.generation.producer.poll(left.min(FLUSH_POLL));
        }
    }
}

fn headers(record: &StoredRecord<'_>) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
    for (name, value) in &record.headers {
        if *name != ROUTING_HEADER {
            headers = headers.insert(Header {
                key: name,
                value: Some(*value),
            });
        }
    }
    headers
}

impl Destination for KafkaDestination {
    fn name(&self) -> &str {
        &self.name
    }

    fn offer(&mut self, record: &StoredRecord<'_>) -> Offer {
        let Some(seat) = &self.seat else {
            return Offer::Full;
        };
        if self.fatal.is_some() || self.producer.is_stale(self.generation.number) {
            return Offer::Full;
        }
        if self.inherited {
            if seat.outstanding() > 0 {
                return Offer::Full;
            }
            self.inherited = false;
        }
        let Some(opaque) = pack(seat.index, record.seq) else {
            return Offer::Refused(format!(
                "record number {} is beyond {MAX_SEQ}, the highest a Kafka delivery report can carry",
                record.seq
            ));
        };
        let mut message = BaseRecord::with_opaque_to(record.topic, opaque)
            .payload(record.payload)
            .headers(headers(record));
        if let Some(key) = record.key {
            message = message.key(key);
        }
        seat.sending();
        match self.generation.producer.send(message) {
            Ok(()) => {
                self.in_flight += 1;
                Offer::Taken
            }
            Err((error, _)) => {
                seat.not_sent();
                let code = error.rdkafka_error_code();
                if code == Some(RDKafkaErrorCode::QueueFull) {
                    return Offer::Full;
                }
                if self.generation.check_fatal() {
                    self.fatal = self.generation.fatal();
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
        self.generation.serve();
        if let Some(seat) = &self.seat {
            let taken = seat.take(self.generation.number, outcomes);
            self.in_flight = self.in_flight.saturating_sub(taken);
        }
    }

    fn broken(&mut self) -> Option<String> {
        if self.seat.is_none() {
            return Some(format!(
                "more than {MAX_DESTINATIONS} destinations on one Kafka producer"
            ));
        }
        if self.fatal.is_none() {
            self.fatal = self.generation.fatal();
        }
        if let Some(reason) = &self.fatal {
            return Some(format!("fatal Kafka producer error: {reason}"));
        }
        self.producer
            .is_stale(self.generation.number)
            .then(|| "the shared Kafka producer was recreated".to_string())
    }

    fn rebuild(&mut self) -> Result<(), String> {
        if self.seat.is_none() {
            self.seat = self.producer.attach(&self.name);
        }
        let Some(seat) = &self.seat else {
            return Err(format!(
                "more than {MAX_DESTINATIONS} destinations on one Kafka producer"
            ));
        };
        let generation = self
            .producer
            .renew(self.generation.number)
            .map_err(|e| e.0)?;
        seat.clear();
        // The old producer ends here if this was its last holder: on the feeder thread.
        self.generation = generation;
        self.in_flight = 0;
        self.fatal = None;
        Ok(())
    }

    fn in_flight(&self) -> u64 {
        self.in_flight
    }

    fn flush(&mut self, timeout: Duration) {
        let Some(seat) = &self.seat else {
            return;
        };
        if self.in_flight == 0 || self.fatal.is_some() {
            return;
        }
        if self.producer.destinations() > 1 {
            self.flush_own(seat, timeout);
        } else {
            let _ = self.generation.producer.flush(timeout);
        }
    }

    fn never_waits(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        let state = if let Some(reason) = &self.fatal {
            format!("broken ({reason})")
        } else if self.seat.is_none() {
            format!("broken (more than {MAX_DESTINATIONS} destinations on one producer)")
        } else {
            // Retrying only while records wait and no confirmation came since the error.
            match self.generation.unresolved_error() {
                Some(error) if self.in_flight > 0 => format!("retrying ({error})"),
                _ => "producing".to_string(),
            }
        };
        let whose = if self.shared {
            " (the [global] producer)"
        } else {
            ""
        };
        format!("kafka {}{whose} — {state}", self.producer.bootstrap())
    }
}
