//! What the log delivers to: a destination takes records one at a time, reports later
//! what became of each, and can be rebuilt when it breaks. Kafka is one; the tests add
//! another; file, syslog and HTTP destinations come next, on the same interface.

use std::time::Duration;

use super::log::StoredRecord;

/// What a destination says when handed a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offer {
    /// Taken: its outcome comes later through `collect`.
    Taken,
    /// Not now (queue full, connection down): offer it again at the next pass.
    Full,
    /// Never: the record goes to the dead-letter file with this reason.
    Refused(String),
}

/// What became of a record a destination took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Confirmed: the log may forget it for this destination.
    Delivered,
    /// Not delivered, worth another try (from the log).
    Retry,
    /// Never deliverable (the reason): to the dead-letter file.
    Refused(String),
}

/// One place records go to.
pub trait Destination: Send {
    /// The name of the configuration section (`global` for the default Kafka one).
    fn name(&self) -> &str;

    /// Hands one record over; must not wait.
    fn offer(&mut self, record: &StoredRecord<'_>) -> Offer;

    /// Appends the outcomes known now (sequence number, outcome); must not wait.
    fn collect(&mut self, outcomes: &mut Vec<(u64, Outcome)>);

    /// `Some(reason)` when the destination can take nothing more until rebuilt; every
    /// record it held then counts as not delivered.
    fn broken(&mut self) -> Option<String>;

    /// Starts afresh after `broken`; records it held are offered again.
    fn rebuild(&mut self) -> Result<(), String>;

    /// Records taken and not yet reported on.
    fn in_flight(&self) -> u64;

    /// Waits up to `timeout` for records in flight to be confirmed (their outcomes then
    /// come through `collect`).
    fn flush(&mut self, timeout: Duration);

    /// One line for the status: what it is connected to and how it is doing.
    fn describe(&self) -> String;

    /// True when offer, collect, rebuild and flush only touch memory and threads of its
    /// own (librdkafka's): such destinations share one pass thread, one wake-up per
    /// window for all of them. One that writes or connects itself (a file, a socket)
    /// keeps a thread of its own, so a slow disk delays nobody else.
    fn never_waits(&self) -> bool {
        false
    }
}
