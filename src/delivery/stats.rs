//! Counters of what Asterisk handed the module, shown by `cdr kafka show status` (each
//! destination keeps its own: `feeder::DestinationStats`). Written by the CDR and CEL
//! callbacks; atomics and a std mutex only (no thread-local state, which would pin the
//! module in memory on Asterisk's long-lived threads).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

#[derive(Default)]
pub struct Stats {
    /// CDRs Asterisk handed to the backend.
    pub received: AtomicU64,
    /// CDRs appended to the spool.
    pub spooled: AtomicU64,
    /// CDRs the dialplan sent nowhere (`CDR(kafka_skip)`).
    pub skipped: AtomicU64,
    /// CDRs the spool refused (full, or the disk failed): lost, and counted here.
    pub failed: AtomicU64,
    /// CEL events Asterisk handed over (after the `events` filter).
    pub cel_received: AtomicU64,
    /// CEL events appended to the spool.
    pub cel_spooled: AtomicU64,
    /// CEL events the spool refused.
    pub cel_failed: AtomicU64,
    last_error: Mutex<Option<(String, SystemTime)>>,
}

impl Stats {
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Remembers why a record was refused.
    pub fn set_last_error(&self, error: String) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some((error, SystemTime::now()));
        }
    }

    pub fn last_error(&self) -> Option<(String, SystemTime)> {
        self.last_error.lock().ok().and_then(|last| last.clone())
    }
}
