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
    /// Records librdkafka accepted into its queue.
    pub queued: AtomicU64,
    /// Records the broker acknowledged.
    pub delivered: AtomicU64,
    /// Records refused at hand-off or reported undeliverable.
    pub failed: AtomicU64,
    last_error: Mutex<Option<(String, SystemTime)>>,
}

impl Stats {
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn set_last_error(&self, error: String) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some((error, SystemTime::now()));
        }
    }

    pub fn last_error(&self) -> Option<(String, SystemTime)> {
        self.last_error.lock().ok().and_then(|last| last.clone())
    }
}
