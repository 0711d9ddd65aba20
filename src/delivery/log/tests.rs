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

#[test]
fn a_backlog_of_many_segments_keeps_one_file_open_and_one_per_reader() {
    let dir = TempDir::new("fds");
    {
        let log = Log::open_with(settings(&dir.0), Io::real())
            .unwrap()
            .with_segment_bytes(4096);
        log.register("global").unwrap();
        for n in 0..400 {
            append(&log, n).unwrap();
        }
        assert!(
            segment_files(&dir.0).len() >= 6,
            "a backlog of many segments"
        );
        assert_eq!(log.io().kept_files(), 1, "the current segment only");
    }
    // Recovery reads every segment and keeps none open.
    let io = Io::real();
    let log = Log::open_with(settings(&dir.0), io.clone())
        .unwrap()
        .with_segment_bytes(4096);
    let mut ledger = log.register("global").unwrap();
    assert!(segment_files(&dir.0).len() >= 7);
    assert_eq!(io.kept_files(), 1, "the new current segment only");
    // Two readers (two feeders) side by side through the backlog.
    let (mut first, mut second) = (ReadBatch::default(), ReadBatch::default());
    let (mut from_first, mut from_second) = (0, 0);
    let (mut got_first, mut got_second) = (Vec::new(), Vec::new());
    let mut most_open = 0;
    loop {
        log.read_batch(from_first, 300, &mut first).unwrap();
        log.read_batch(from_second, 1000, &mut second).unwrap();
        most_open = most_open.max(io.kept_files());
        let (a, b) = (first.end(), second.end());
        got_first.extend(
            first
                .records()
                .map(|(_, r)| r.unwrap().record_id.to_string()),
        );
        got_second.extend(
            second
                .records()
                .map(|(_, r)| r.unwrap().record_id.to_string()),
        );
        from_first = a.unwrap_or(from_first);
        from_second = b.unwrap_or(from_second);
        if a.is_none() && b.is_none() {
            break;
        }
    }
    assert_eq!(got_first, ids(0..400));
    assert_eq!(got_second, ids(0..400));
    assert_eq!(most_open, 3, "the writer's file and one per reader");
    assert_eq!(
        io.kept_files(),
        1,
        "readers that read everything hold nothing"
    );
    // A reader left in a sealed segment the destination then confirmed: it holds that
    // (deleted) segment open only until its next read.
    log.read_batch(0, 300, &mut first).unwrap();
    assert_eq!(io.kept_files(), 2);
    for seq in 0..400 {
        ledger.ack(seq);
    }
    ledger.write().unwrap();
    ledger.publish_unsynced();
    log.maintain();
    assert_eq!(segment_files(&dir.0).len(), 1, "delivered segments deleted");
    log.read_batch(first.end().unwrap(), 300, &mut first)
        .unwrap();
    assert!(first.is_empty());
    assert_eq!(io.kept_files(), 1);
}

#[test]
fn with_interval_sync_a_sealed_segment_is_closed_once_synced() {
    let dir = TempDir::new("fds-sync");
    let io = Io::with_faults(FaultPlan::default());
    let log = Log::open_with(
        LogSettings {
            sync: SyncPolicy::Interval,
            sync_interval: Duration::from_secs(3600),
            ..settings(&dir.0)
        },
        io.clone(),
    )
    .unwrap()
    .with_segment_bytes(4096);
    log.register("global").unwrap();
    for n in 0..400 {
        append(&log, n).unwrap();
    }
    let sealed = segment_files(&dir.0).len() - 1;
    assert!(sealed >= 6);
    assert_eq!(io.kept_files(), 1 + sealed, "held for the sync");
    let before = io.operations();
    log.sync_now();
    // One fdatasync per sealed segment and the current one, and the folder's.
    assert_eq!(io.operations() - before, sealed as u64 + 2);
    assert_eq!(io.kept_files(), 1);
}

#[test]
fn counting_the_undelivered_visits_no_more_entries_with_a_big_backlog() {
    fn visits_with(backlog: u64) -> u64 {
        let dir = TempDir::new("cost");
        let log = Log::open(LogSettings {
            max_bytes: 1 << 40,
            ..settings(&dir.0)
        })
        .unwrap();
        let mut ledger = log.register("global").unwrap();
        let mut bytes = Vec::new();
        for n in 0..backlog {
            append(&log, n).unwrap();
            let mut entry = Vec::new();
            let (id, key, payload) = (
                format!("id-{n}"),
                format!("k{}", n % 3),
                format!("{{\"n\":{n}}}"),
            );
            format::encode_entry(
                &NewRecord {
                    kind: RecordKind::Cdr,
                    record_id: &id,
                    topic: "asterisk_cdr",
                    key: Some(key.as_bytes()),
                    headers: &[("entity_id", b"00:11:22:33:44:55")],
                    payload: payload.as_bytes(),
                },
                n,
                0,
                &mut entry,
            );
            bytes.push(entry.len() as u64);
        }
        let half = backlog / 2;
        for seq in 0..half {
            ledger.ack(seq);
        }
        ledger.write().unwrap();
        ledger.publish_unsynced();
        index::VISITED.with(|visited| visited.set(0));
        log.maintain();
        let depth = log.depth();
        let count = log.count_from(half);
        let visits = index::VISITED.with(|visited| visited.get());
        assert_eq!(depth, (backlog - half, bytes[half as usize..].iter().sum()));
        assert_eq!(count, backlog - half);
        visits
    }
    let small = visits_with(100);
    let big = visits_with(100_000);
    // Three binary searches: about 3 * log2(1000) = 30 more looks, never the backlog.
    assert!(
        big <= small + 40,
        "100 records: {small} entries looked at, 100,000: {big}"
    );
}

#[test]
fn a_confirmation_makes_room_under_spool_max_bytes_before_any_housekeeping() {
    let dir = TempDir::new("room");
    let log = Log::open(LogSettings {
        max_bytes: 4096,
        ..settings(&dir.0)
    })
    .unwrap();
    let mut ledger = log.register("global").unwrap();
    let mut n = 0;
    while append(&log, n).is_ok() {
        n += 1;
    }
    // Confirmed in memory (written down and housekeeping come later): room at once.
    for seq in 0..n {
        ledger.ack(seq);
    }
    assert!(append(&log, n).is_ok());
}

#[test]
fn records_delivered_before_a_restart_do_not_count_against_spool_max_bytes_after_it() {
    let dir = TempDir::new("max-restart");
    let limited = || LogSettings {
        max_bytes: 4096,
        ..settings(&dir.0)
    };
    {
        let log = Log::open(limited()).unwrap();
        let mut ledger = log.register("global").unwrap();
        for n in 0..100 {
            let seq = append(&log, n).unwrap();
            ledger.ack(seq);
            ledger.write().unwrap();
            ledger.publish_unsynced();
            log.maintain();
        }
    }
    let log = Log::open(limited()).unwrap();
    log.register("global").unwrap();
    // The kept segment holds far more than 4 KiB, all of it delivered.
    assert!(fs::metadata(&segment_files(&dir.0)[0]).unwrap().len() > 4096);
    assert_eq!(append(&log, 100).ok(), Some(100));
}

/// Milliseconds of simulated time, the destination's lag for each record, in order.
struct Lag(u64);

impl Lag {
    /// 100 to 300 ms, spread deterministically.
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        100 + (self.0 >> 33) % 201
    }
}

#[test]
fn a_destination_confirming_within_300_ms_at_1_mb_a_second_never_fills_a_1_mib_spool() {
    // The module's defaults around it: spool_sync = interval every 1000 ms, linger_ms =
    // 100, a pass every 2 ms once an eighth is held. 1,550 records of 650 bytes a
    // second; each confirmed 100 to 300 ms after it was handed over, out of order.
    const MAX: u64 = 1024 * 1024;
    let dir = TempDir::new("lagging");
    let log = Log::open(LogSettings {
        max_bytes: MAX,
        sync: SyncPolicy::Interval,
        ..settings(&dir.0)
    })
    .unwrap();
    let mut ledger = log.register("global").unwrap();
    let payload = vec![b'x'; 650];
    let mut lag = Lag(1);
    let mut in_flight: Vec<(u64, u64)> = Vec::new();
    let (mut appended, mut refused, mut offered_to) = (0u64, 0u64, 0u64);
    let (mut next_pass, mut last_sync, mut most_held) = (0u64, 0u64, 0u64);
    let mut was_pressed = false;
    for now in 0..10_000u64 {
        while appended * 1000 < now * 1550 {
            let id = format!("id-{appended}");
            appended += 1;
            let record = NewRecord {
                kind: RecordKind::Cdr,
                record_id: &id,
                topic: "t",
                key: None,
                headers: &[],
                payload: &payload,
            };
            refused += u64::from(log.append(&record).is_err());
        }
        // An append that finds an eighth held wakes the feeder.
        let pressed = log.under_pressure();
        if pressed && !was_pressed {
            next_pass = now;
        }
        was_pressed = pressed;
        if now < next_pass {
            continue;
        }
        // One feeder pass: confirmations in, new records out, ledger, housekeeping.
        let (due, waiting): (Vec<_>, Vec<_>) =
            in_flight.into_iter().partition(|&(_, at)| at <= now);
        in_flight = waiting;
        for (seq, _) in due {
            ledger.ack(seq);
        }
        for seq in offered_to..log.next_seq() {
            in_flight.push((seq, now + lag.next()));
        }
        offered_to = log.next_seq();
        ledger.write().unwrap();
        if now - last_sync >= 1000 {
            ledger.sync().unwrap();
            last_sync = now;
        }
        log.maintain();
        most_held = most_held.max(log.depth().1);
        next_pass = now + if log.under_pressure() { 2 } else { 100 };
    }
    assert!(appended > 15_000, "10 s at 1,550 a second: {appended}");
    assert_eq!(refused, 0, "at most {most_held} bytes were undelivered");
    assert!(most_held < MAX / 2, "{most_held}");
}

#[test]
fn on_a_full_disk_confirmations_still_become_durable_and_the_disk_is_given_back() {
    let dir = TempDir::new("full-ledger");
    let io = Io::with_faults(FaultPlan::default());
    let log = Log::open_with(
        LogSettings {
            sync: SyncPolicy::Interval,
            ..settings(&dir.0)
        },
        io.clone(),
    )
    .unwrap()
    .with_segment_bytes(4096);
    let mut ledger = log.register("global").unwrap();
    let mut n = 0;
    // Outage after outage, each filling the disk.
    for round in 0..3 {
        io.set_room(30_000);
        while append(&log, n).is_ok() {
            n += 1;
        }
        n += 1;
        // Not a byte left (what one record could not use, something else took).
        io.fill_disk();
        let held = segment_files(&dir.0).len();
        assert!(held >= 6);
        // The destination is back and confirms everything.
        for seq in 0..log.next_seq() {
            ledger.ack(seq);
        }
        ledger
            .write()
            .unwrap_or_else(|error| panic!("round {round}: confirmations not written: {error}"));
        ledger.sync().unwrap();
        assert_eq!(
            ledger.watermarks().durable.load(Ordering::Acquire),
            log.next_seq()
        );
        log.maintain();
        assert_eq!(
            segment_files(&dir.0).len(),
            1,
            "round {round}: delivered segments deleted"
        );
        assert!(
            append(&log, n).is_ok(),
            "round {round}: records are spooled again"
        );
        n += 1;
    }
    drop((ledger, log));
    let log = Log::open(settings(&dir.0)).unwrap();
    let ledger = log.register("global").unwrap();
    assert_eq!(pending_ids(&log, &ledger), vec![format!("id-{}", n - 1)]);
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

/// A log in `dir` holding records 0..5, with room made ahead of them by a pass.
fn five_records_and_room(dir: &Path) -> Log {
    let log = Log::open(settings(dir)).unwrap();
    log.register("global").unwrap();
    for n in 0..5 {
        append(&log, n).unwrap();
    }
    log.maintain();
    log
}

#[test]
fn appends_overwrite_the_zeros_made_ahead_and_a_reopen_finds_no_torn_tail() {
    let dir = TempDir::new("room");
    {
        let log = five_records_and_room(&dir.0);
        let path = segment_files(&dir.0).pop().unwrap();
        let made = file_len(&path);
        assert!(made > 256 * 1024, "room made ahead: {made} bytes");
        for n in 5..200 {
            append(&log, n).unwrap();
        }
        assert_eq!(file_len(&path), made, "the appends did not grow the file");
        // Dropped without a stop: the zeros stay after the last record, as after a crash.
    }
    let log = Log::open(settings(&dir.0)).unwrap();
    let ledger = log.register("global").unwrap();
    assert_eq!(log.recovery.torn_tails, 0);
    assert_eq!(log.recovery.damaged, 0);
    assert_eq!(pending_ids(&log, &ledger), ids(0..200));
    assert_eq!(append(&log, 200).unwrap(), 200);
}

#[test]
fn a_torn_record_in_the_zeros_made_ahead_is_cut_off() {
    let dir = TempDir::new("room-torn");
    drop(five_records_and_room(&dir.0));
    // A sixth record half written where the zeros begin.
    let path = segment_files(&dir.0).pop().unwrap();
    let mut data = fs::read(&path).unwrap();
    let scan = format::scan_entries(&data[format::SEGMENT_HEADER_LEN..]);
    let last = scan.entries.last().unwrap();
    let (start, end) = (
        format::SEGMENT_HEADER_LEN + last.offset,
        format::SEGMENT_HEADER_LEN + scan.valid_end,
    );
    let half: Vec<u8> = data[start..end][..(end - start) / 2].to_vec();
    data[end..end + half.len()].copy_from_slice(&half);
    fs::write(&path, &data).unwrap();
    let log = Log::open(settings(&dir.0)).unwrap();
    let ledger = log.register("global").unwrap();
    assert_eq!(log.recovery.torn_tails, 1);
    assert_eq!(log.recovery.damaged, 0);
    assert_eq!(pending_ids(&log, &ledger), ids(0..5));
    assert_eq!(
        file_len(&path),
        end as u64,
        "cut back to the last whole record"
    );
}

#[test]
fn an_append_that_would_reach_zeros_being_written_starts_a_new_segment() {
    let dir = TempDir::new("room-race");
    {
        let log = Log::open(settings(&dir.0)).unwrap();
        log.register("global").unwrap();
        append(&log, 0).unwrap();
        {
            // A feeder is writing zeros from 10 bytes past the last record.
            let mut writer = lock(&log.writer);
            let active = writer.segment.as_ref().unwrap();
            let claim = (active.first_seq, active.bytes + 10);
            writer.making_room = Some(claim);
        }
        append(&log, 1).unwrap();
        assert_eq!(segment_files(&dir.0).len(), 2);
        lock(&log.writer).making_room = None;
        append(&log, 2).unwrap();
        assert_eq!(segment_files(&dir.0).len(), 2);
    }
    let log = Log::open(settings(&dir.0)).unwrap();
    let ledger = log.register("global").unwrap();
    assert_eq!(pending_ids(&log, &ledger), ids(0..3));
}

#[test]
fn appends_racing_the_zeros_ahead_keep_every_record_in_order() {
    let dir = TempDir::new("room-flood");
    {
        let log = std::sync::Arc::new(Log::open(settings(&dir.0)).unwrap());
        log.register("global").unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let feeder = {
            let (log, stop) = (log.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    log.maintain();
                }
            })
        };
        for n in 0..100_000 {
            append(&log, n).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        feeder.join().unwrap();
    }
    let log = Log::open(settings(&dir.0)).unwrap();
    let ledger = log.register("global").unwrap();
    assert_eq!((log.recovery.torn_tails, log.recovery.damaged), (0, 0));
    assert_eq!(pending_ids(&log, &ledger), ids(0..100_000));
}
