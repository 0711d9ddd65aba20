//! Counters shown by `cdr kafka show status`. Written by the CDR callback, the poll thread
//! and librdkafka's threads; atomics and a std mutex only (no thread-local state, which
//! would pin the module in memory on Asterisk's long-lived threads).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

#[derive(Default)]
pub struct Stats {
    /// CDRs Asterisk handed to the backend.
    pub received: AtomicU64,
    /// Records the feeder handed to librdkafka (again after a replay).
    pub queued: AtomicU64,
    /// Records the broker acknowledged.
    pub delivered: AtomicU64,
    /// Records refused by the spool or the broker for good (dead-lettered).
    pub failed: AtomicU64,
    /// Records appended to the spool.
    pub spooled: AtomicU64,
    /// Records of an earlier run produced again.
    pub replayed: AtomicU64,
    /// Records produced again whose earlier delivery is unknown (consumers deduplicate
    /// by the `record_id` header).
    pub duplicates_possible: AtomicU64,
    /// CEL events Asterisk handed over (after the `events` filter).
    pub cel_received: AtomicU64,
    /// CEL events appended to the spool.
    pub cel_spooled: AtomicU64,
    /// CEL events the spool refused.
    pub cel_failed: AtomicU64,
    /// Producers recreated after a fatal error.
    pub producer_restarts: AtomicU64,
    last_error: Mutex<Option<(String, SystemTime)>>,
    last_broker_error: Mutex<Option<(String, SystemTime)>>,
}

impl Stats {
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Remembers why a record was refused or undeliverable.
    pub fn set_last_error(&self, error: String) {
        remember(&self.last_error, error);
    }

    pub fn last_error(&self) -> Option<(String, SystemTime)> {
        recall(&self.last_error)
    }

    /// Remembers the producer's last word about the brokers (e.g. all brokers down).
    /// Kept apart: during an outage librdkafka repeats it twice a second, and it must
    /// not hide why a record failed.
    pub fn set_last_broker_error(&self, error: String) {
        remember(&self.last_broker_error, error);
    }

    pub fn last_broker_error(&self) -> Option<(String, SystemTime)> {
        recall(&self.last_broker_error)
    }
}

fn remember(slot: &Mutex<Option<(String, SystemTime)>>, error: String) {
    if let Ok(mut last) = slot.lock() {
        *last = Some((error, SystemTime::now()));
    }
}

fn recall(slot: &Mutex<Option<(String, SystemTime)>>) -> Option<(String, SystemTime)> {
    slot.lock().ok().and_then(|last| last.clone())
}
