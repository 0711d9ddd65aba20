//! The log against its promises: records come back in order and survive reopening,
//! damage costs only what it touches, every I/O failure leaves a record either kept or
//! refused-and-counted, and space is given back once records are delivered.

use std::fs;
use std::path::{Path, PathBuf};

use super::io::{Fault, FaultPlan, Io, Op};
use super::*;

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "cdr_kafka-log-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub fn settings(dir: &Path) -> LogSettings {
    LogSettings {
        dir: dir.into(),
        sync: SyncPolicy::Never,
        sync_interval: Duration::from_secs(1),
        max_bytes: 0,
    }
}

pub fn append(log: &Log, n: u64) -> Result<u64, AppendError> {
    let id = format!("id-{n}");
    let key = format!("k{}", n % 3);
    let payload = format!("{{\"n\":{n}}}");
    log.append(&NewRecord {
        kind: RecordKind::Cdr,
        record_id: &id,
        topic: "asterisk_cdr",
        key: Some(key.as_bytes()),
        headers: &[("entity_id", b"00:11:22:33:44:55")],
        payload: payload.as_bytes(),
    })
}

/// Every record id a destination with `ledger` would still be handed, in order.
pub fn pending_ids(log: &Log, ledger: &Ledger) -> Vec<String> {
    let mut out = Vec::new();
    let mut batch = ReadBatch::default();
    let mut from = 0;
    loop {
        log.read_batch(from, 4096, &mut batch).unwrap();
        let Some(end) = batch.end() else { break };
        for (seq, record) in batch.records() {
            if !ledger.is_acked(seq) {
                out.push(record.expect("intact").record_id.to_string());
            }
        }
        from = end;
    }
    out
}

fn ids(range: std::ops::Range<u64>) -> Vec<String> {
    range.map(|n| format!("id-{n}")).collect()
}

#[test]
fn records_come_back_in_order_and_survive_reopening() {
    let dir = TempDir::new("order");
    {
        let log = Log::open(settings(&dir.0)).unwrap();
        let ledger = log.register("global").unwrap();
        for n in 0..100 {
            assert_eq!(append(&log, n).unwrap(), n);
        }
        assert_eq!(pending_ids(&log, &ledger), ids(0..100));
    }
    let log = Log::open(settings(&dir.0)).unwrap();
    let ledger = log.register("global").unwrap();
    assert_eq!(pending_ids(&log, &ledger), ids(0..100));
    assert_eq!(log.first_new_seq, 100);
    assert_eq!(append(&log, 100).unwrap(), 100);
}

#[test]
fn confirmed_records_are_not_handed_again_and_numbers_are_never_reused() {
    let dir = TempDir::new("ack");
    {
        let log = Log::open(settings(&dir.0)).unwrap();
        let mut ledger = log.register("global").unwrap();
        for n in 0..10 {
            append(&log, n).unwrap();
        }
        for seq in 0..10 {
            ledger.ack(seq);
        }
        ledger.write().unwrap();
        ledger.publish_unsynced();
        log.maintain();
        assert_eq!(log.depth().0, 0);
    }
    let log = Log::open(settings(&dir.0)).unwrap();
    let ledger = log.register("global").unwrap();
    assert!(pending_ids(&log, &ledger).is_empty());
    // The old records are all delivered: numbering goes on, never restarts at 0.
    assert_eq!(append(&log, 10).unwrap(), 10);
}
