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

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

#[test]
fn flipped_length_bit_on_disk_costs_that_entry_only() {
    let dir = TempDir::new("bit");
    {
        let log = Log::open(settings(&dir.0)).unwrap();
        log.register("global").unwrap();
        for n in 0..50 {
            append(&log, n).unwrap();
        }
    }
    let path = segment_files(&dir.0).pop().unwrap();
    let mut data = fs::read(&path).unwrap();
    let scan = format::scan_entries(&data[format::SEGMENT_HEADER_LEN..]);
    let second = format::SEGMENT_HEADER_LEN + scan.entries[1].offset;
    data[second + 5] ^= 0x01;
    fs::write(&path, &data).unwrap();
    let log = Log::open(settings(&dir.0)).unwrap();
    let ledger = log.register("global").unwrap();
    assert_eq!(log.recovery.damaged, 1);
    assert_eq!(log.recovery.torn_tails, 0);
    let mut expected = ids(0..50);
    expected.remove(1);
    assert_eq!(pending_ids(&log, &ledger), expected);
}

#[test]
fn torn_tail_is_cut_off_and_everything_before_survives() {
    let dir = TempDir::new("torn");
    {
        let log = Log::open(settings(&dir.0)).unwrap();
        log.register("global").unwrap();
        for n in 0..5 {
            append(&log, n).unwrap();
        }
    }
    let path = segment_files(&dir.0).pop().unwrap();
    let length = fs::metadata(&path).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(length - 7)
        .unwrap();
    let log = Log::open(settings(&dir.0)).unwrap();
    let ledger = log.register("global").unwrap();
    assert_eq!(log.recovery.torn_tails, 1);
    assert_eq!(pending_ids(&log, &ledger), ids(0..4));
    // The cut record's number is free again: it was never appended.
    assert_eq!(append(&log, 4).unwrap(), 4);
}

#[test]
fn leftover_ledger_of_an_old_run_never_confirms_new_records() {
    // The old engine's loss: a stale acknowledgement adopted by a new segment.
    let dir = TempDir::new("stale");
    {
        let log = Log::open(settings(&dir.0)).unwrap();
        let mut ledger = log.register("global").unwrap();
        for n in 0..3 {
            append(&log, n).unwrap();
            ledger.ack(n);
        }
        ledger.write().unwrap();
        ledger.publish_unsynced();
        log.maintain();
    }
    for segment in segment_files(&dir.0) {
        fs::remove_file(segment).unwrap();
    }
    let log = Log::open(settings(&dir.0)).unwrap();
    let ledger = log.register("global").unwrap();
    assert_eq!(
        append(&log, 3).unwrap(),
        3,
        "numbering goes on from the ledger"
    );
    assert_eq!(pending_ids(&log, &ledger), ids(3..4));
}

#[test]
fn full_spool_counts_undelivered_bytes_only() {
    let dir = TempDir::new("max");
    let log = Log::open(LogSettings {
        max_bytes: 4096,
        ..settings(&dir.0)
    })
    .unwrap();
    let mut ledger = log.register("global").unwrap();
    // Delivered as they come: thousands of records through a 4 KiB limit.
    for n in 0..2000 {
        let seq = append(&log, n).expect("room: everything before was delivered");
        ledger.ack(seq);
        if n % 10 == 9 {
            ledger.write().unwrap();
            ledger.publish_unsynced();
            log.maintain();
        }
    }
    assert_eq!(log.counters.refused.load(Ordering::Relaxed), 0);
    // Undelivered, they fill it: refused and counted, exactly.
    let mut refused = 0;
    for n in 0..100 {
        if append(&log, n).is_err() {
            refused += 1;
        }
    }
    assert!(refused > 50, "{refused}");
    assert_eq!(log.counters.refused.load(Ordering::Relaxed), refused);
}

#[test]
fn delivered_current_segment_gives_its_space_back() {
    let dir = TempDir::new("giveback");
    let log = Log::open(settings(&dir.0)).unwrap();
    let mut ledger = log.register("global").unwrap();
    let big = vec![b'x'; 4000];
    for n in 0..200 {
        log.append(&NewRecord {
            kind: RecordKind::Cdr,
            record_id: &format!("id-{n}"),
            topic: "t",
            key: None,
            headers: &[],
            payload: &big,
        })
        .unwrap();
    }
    let bytes = |dir: &Path| -> u64 {
        segment_files(dir)
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .sum()
    };
    assert!(bytes(&dir.0) > 800_000);
    for seq in 0..200 {
        ledger.ack(seq);
    }
    ledger.write().unwrap();
    ledger.publish_unsynced();
    log.maintain();
    assert!(bytes(&dir.0) < 1000, "{}", bytes(&dir.0));
    assert_eq!(append(&log, 200).unwrap(), 200);
}

/// Runs appends with one fault injected at operation `n`; returns which appends
/// returned Ok, the refusal count, and the folder to reopen.
fn appends_with_fault(dir: &Path, sync: SyncPolicy, n: u64, fault: Fault) -> (Vec<bool>, u64) {
    let io = Io::with_faults(FaultPlan::default().at(n, None, fault));
    let Ok(log) = Log::open_with(
        LogSettings {
            sync,
            ..settings(dir)
        },
        io,
    ) else {
        return (Vec::new(), 0);
    };
    // The module appends only once its destinations are registered (load order).
    if log.register("global").is_err() {
        return (Vec::new(), 0);
    }
    let results: Vec<bool> = (0..6).map(|k| append(&log, k).is_ok()).collect();
    let refused = log.counters.refused.load(Ordering::Relaxed);
    (results, refused)
}

#[test]
fn every_io_failure_leaves_each_record_kept_or_refused_and_counted() {
    let faults = [
        Fault::Errno(libc::ENOSPC),
        Fault::Errno(libc::EIO),
        Fault::Errno(libc::EMFILE),
        Fault::Short(10),
        Fault::Crash,
    ];
    for sync in [SyncPolicy::Always, SyncPolicy::Never] {
        for fault in faults {
            for n in 0..40 {
                let dir = TempDir::new("fault");
                let (results, refused) = appends_with_fault(&dir.0, sync, n, fault);
                let kept: Vec<String> = results
                    .iter()
                    .enumerate()
                    .filter(|(_, ok)| **ok)
                    .map(|(k, _)| format!("id-{k}"))
                    .collect();
                if fault != Fault::Crash {
                    assert_eq!(
                        refused,
                        results.iter().filter(|ok| !**ok).count() as u64,
                        "{sync:?} {fault:?} at {n}"
                    );
                }
                let log = Log::open(settings(&dir.0)).unwrap();
                let ledger = log.register("global").unwrap();
                assert_eq!(
                    pending_ids(&log, &ledger),
                    kept,
                    "{sync:?} {fault:?} at operation {n}: what was kept is exactly what was accepted"
                );
            }
        }
    }
}

#[test]
fn appends_resume_by_themselves_once_the_disk_has_room_again() {
    let dir = TempDir::new("resume");
    let mut plan = FaultPlan::default();
    for n in 0..200 {
        plan = plan.at(n, Some(Op::Write), Fault::Errno(libc::ENOSPC));
    }
    let io = Io::with_faults(plan);
    let log = Log::open_with(settings(&dir.0), io.clone()).unwrap();
    let ledger = log.register("global").unwrap();
    let mut accepted = Vec::new();
    for n in 0..300 {
        if append(&log, n).is_ok() {
            accepted.push(format!("id-{n}"));
        }
    }
    assert!(!accepted.is_empty() && accepted.len() < 300);
    assert_eq!(append(&log, 999).map(|_| ()).ok(), Some(()));
    accepted.push("id-999".into());
    assert_eq!(pending_ids(&log, &ledger), accepted);
}

/// A whole life of the log (appends, deliveries, confirmations, deletion, a segment
/// given back) with the process cut off at operation `crash_at`; returns the records
/// accepted and those confirmed durably before the cut.
fn life_cut_off_at(dir: &Path, io: &Io) -> (Vec<String>, Vec<String>) {
    let mut accepted = Vec::new();
    let mut confirmed = Vec::new();
    let Ok(log) = Log::open_with(settings(dir), io.clone()) else {
        return (accepted, confirmed);
    };
    let Ok(mut ledger) = log.register("global") else {
        return (accepted, confirmed);
    };
    let big = vec![b'x'; 3000];
    for round in 0..3u64 {
        let mut this_round = Vec::new();
        for k in 0..40 {
            let id = format!("id-{}", round * 40 + k);
            let appended = log.append(&NewRecord {
                kind: RecordKind::Cdr,
                record_id: &id,
                topic: "t",
                key: None,
                headers: &[],
                payload: &big,
            });
            if let Ok(seq) = appended {
                accepted.push(id.clone());
                this_round.push((seq, id));
            }
        }
        for (seq, _) in &this_round {
            ledger.ack(*seq);
        }
        if ledger.write().is_ok() {
            ledger.publish_unsynced();
            confirmed.extend(this_round.into_iter().map(|(_, id)| id));
        }
        log.maintain();
    }
    (accepted, confirmed)
}

#[test]
fn a_crash_at_any_step_loses_nothing_accepted_and_invents_nothing() {
    let mut steps = 0;
    for crash_at in 0..2000 {
        let dir = TempDir::new("crash");
        let io = Io::with_faults(FaultPlan::default().at(crash_at, None, Fault::Crash));
        let (accepted, confirmed) = life_cut_off_at(&dir.0, &io);
        let log = Log::open(settings(&dir.0)).unwrap();
        let ledger = log.register("global").unwrap();
        let pending = pending_ids(&log, &ledger);
        for id in &pending {
            assert!(
                accepted.contains(id),
                "crash at {crash_at}: {id} never accepted"
            );
        }
        for id in accepted.iter().filter(|id| !confirmed.contains(id)) {
            assert!(pending.contains(id), "crash at {crash_at}: {id} lost");
        }
        steps = crash_at;
        if !io.has_crashed() {
            break;
        }
    }
    assert!(
        steps > 100,
        "the whole life was cut at every step ({steps})"
    );
}

#[test]
fn shared_spool_dir_is_never_chmodded_the_log_goes_into_its_own_subfolder() {
    use std::os::unix::fs::PermissionsExt;
    let shared = TempDir::new("shared");
    fs::create_dir_all(&shared.0).unwrap();
    fs::set_permissions(&shared.0, fs::Permissions::from_mode(0o1777)).unwrap();
    let log = Log::open(settings(&shared.0)).unwrap();
    assert_eq!(log.dir(), shared.0.join(folder::OWN_SUBFOLDER));
    let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(
        mode(&shared.0),
        0o1777,
        "the shared folder is left as it was"
    );
    assert_eq!(mode(log.dir()), 0o700);
    drop(log);
    // A subfolder someone opened up is refused with the reason, not repaired.
    fs::set_permissions(
        shared.0.join(folder::OWN_SUBFOLDER),
        fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    let error = Log::open(settings(&shared.0)).err().expect("refused");
    assert!(error.to_string().contains("not private"), "{error}");
}

#[test]
fn missing_spool_dir_is_created_private_and_used_as_is() {
    use std::os::unix::fs::PermissionsExt;
    let parent = TempDir::new("missing");
    let dir = parent.0.join("spool");
    let log = Log::open(settings(&dir)).unwrap();
    assert_eq!(log.dir(), dir);
    assert_eq!(
        fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
}

#[test]
fn a_write_that_cannot_be_cut_off_closes_the_segment_and_nothing_of_it_survives() {
    // Find the operation numbers of the third append's write and the cut that follows.
    let probe = TempDir::new("probe");
    let io = Io::with_faults(FaultPlan::default());
    let log = Log::open_with(settings(&probe.0), io.clone()).unwrap();
    log.register("global").unwrap();
    append(&log, 0).unwrap();
    append(&log, 1).unwrap();
    let third_write = io.operations();
    drop(log);

    let dir = TempDir::new("uncut");
    let plan = FaultPlan::default()
        .at(third_write, Some(Op::Write), Fault::Short(20))
        .at(third_write + 1, Some(Op::SetLen), Fault::Errno(libc::EIO));
    let log = Log::open_with(settings(&dir.0), Io::with_faults(plan)).unwrap();
    let ledger = log.register("global").unwrap();
    assert!(append(&log, 0).is_ok());
    assert!(append(&log, 1).is_ok());
    assert!(append(&log, 2).is_err(), "the short write is refused");
    assert!(
        append(&log, 3).is_ok(),
        "the next record goes to a new segment"
    );
    assert_eq!(segment_files(&dir.0).len(), 2);
    assert_eq!(pending_ids(&log, &ledger), vec!["id-0", "id-1", "id-3"]);
    drop((ledger, log));
    let log = Log::open(settings(&dir.0)).unwrap();
    let ledger = log.register("global").unwrap();
    assert_eq!(pending_ids(&log, &ledger), vec!["id-0", "id-1", "id-3"]);
    assert_eq!(
        log.recovery.damaged, 1,
        "the partial entry, counted and skipped"
    );
}
