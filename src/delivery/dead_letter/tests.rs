//! The dead-letter file under injected faults and restarts: what the file holds after
//! each, line by line.

use std::path::Path;

use super::*;
use crate::delivery::log::io::{Fault, FaultPlan, Op};
use crate::delivery::log::tests::TempDir;
use crate::delivery::log::RecordKind;

/// Writes a dead letter of record `seq`/`id` for `destination`; it must succeed.
fn write(letters: &DeadLetters, destination: &str, seq: u64, id: &str, reason: &str) {
    letters
        .write(destination, &record(seq, id), reason)
        .expect("dead letter written");
}

fn record<'a>(seq: u64, record_id: &'a str) -> StoredRecord<'a> {
    StoredRecord {
        seq,
        captured_ms: 0,
        kind: RecordKind::Cdr,
        record_id,
        topic: "asterisk_cdr",
        key: Some(b"k1"),
        headers: vec![("entity_id", b"00:11".as_slice())],
        payload: b"{\"n\":1}",
    }
}

fn folder(tag: &str) -> TempDir {
    let dir = TempDir::new(tag);
    std::fs::create_dir_all(&dir.0).unwrap();
    dir
}

/// Every line of the file, each parsed (a line that is not one JSON object fails the test).
fn lines(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join(DEAD_LETTER_FILE)).unwrap_or_default();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "the file ends with a whole line: {text:?}"
    );
    text.lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .unwrap_or_else(|error| panic!("not one JSON object ({error}): {line:?}"))
        })
        .collect()
}

/// `(destination, seq, record_id)` of each line, in file order.
fn keys(dir: &Path) -> Vec<(String, u64, String)> {
    lines(dir)
        .iter()
        .map(|line| {
            (
                line["destination"].as_str().unwrap().to_string(),
                line["seq"].as_u64().unwrap(),
                line["record_id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn key(destination: &str, seq: u64, record_id: &str) -> (String, u64, String) {
    (destination.to_string(), seq, record_id.to_string())
}

/// How many file operations `run` takes on a fresh folder (where to place a fault).
fn operations(run: impl FnOnce(&DeadLetters)) -> u64 {
    let dir = folder("dead-count");
    let io = Io::with_faults(FaultPlan::default());
    run(&DeadLetters::new(&dir.0, io.clone()));
    io.operations()
}

#[test]
fn failed_fsync_after_a_whole_line_is_retried_without_a_second_copy() {
    let one = record(7, "id-7");
    let first_write = operations(|letters| letters.write("global", &one, "too large").unwrap());
    let dir = folder("dead-fsync");
    // The last operation of a first write is its sync.
    let plan = FaultPlan::default().at(first_write - 1, Some(Op::Sync), Fault::Errno(libc::EIO));
    let letters = DeadLetters::new(&dir.0, Io::with_faults(plan));
    assert!(letters.write("global", &one, "too large").is_err());
    letters.write("global", &one, "too large").unwrap();
    assert_eq!(keys(&dir.0), [key("global", 7, "id-7")]);
}

#[test]
fn short_write_is_cut_back_and_the_retry_starts_a_clean_line() {
    let one = record(7, "id-7");
    let first_write = operations(|letters| letters.write("global", &one, "too large").unwrap());
    let dir = folder("dead-short");
    // The write is the operation before the sync.
    let plan = FaultPlan::default().at(first_write - 2, Some(Op::Write), Fault::Short(10));
    let letters = DeadLetters::new(&dir.0, Io::with_faults(plan));
    assert!(letters.write("global", &one, "too large").is_err());
    letters.write("global", &one, "too large").unwrap();
    write(&letters, "global", 8, "id-8", "too large");
    assert_eq!(
        keys(&dir.0),
        [key("global", 7, "id-7"), key("global", 8, "id-8")]
    );
}

#[test]
fn dead_letter_written_before_a_stop_is_not_written_again_at_the_next_start() {
    let dir = folder("dead-restart");
    let letters = DeadLetters::new(&dir.0, Io::real());
    write(&letters, "global", 3, "id-3", "too large");
    write(&letters, "global", 4, "id-4", "too large");
    drop(letters);
    // The ledger had not recorded either: the next start refuses both again.
    let letters = DeadLetters::new(&dir.0, Io::real());
    write(&letters, "global", 3, "id-3", "too large");
    write(&letters, "global", 4, "id-4", "too large");
    write(&letters, "global", 5, "id-5", "too large");
    assert_eq!(
        keys(&dir.0),
        [
            key("global", 3, "id-3"),
            key("global", 4, "id-4"),
            key("global", 5, "id-5")
        ]
    );
}

#[test]
fn another_destination_or_another_record_under_the_same_seq_gets_its_own_line() {
    let dir = folder("dead-others");
    let letters = DeadLetters::new(&dir.0, Io::real());
    write(&letters, "global", 3, "id-3", "too large");
    drop(letters);
    let letters = DeadLetters::new(&dir.0, Io::real());
    // Independent destinations each dead-letter what they refused.
    write(&letters, "archive", 3, "id-3", "bad path");
    // A spool started afresh numbers from 0 again: a new record, not the old one.
    write(&letters, "global", 3, "id-new", "too large");
    // A stack's letter names every destination that failed it; one of them is already there.
    write(&letters, "global,crm", 3, "id-3", "global: x; crm: y");
    assert_eq!(
        keys(&dir.0),
        [
            key("global", 3, "id-3"),
            key("archive", 3, "id-3"),
            key("global", 3, "id-new")
        ]
    );
}

#[test]
fn partial_line_left_by_a_crash_is_cut_off_at_the_next_start() {
    let dir = folder("dead-torn");
    let letters = DeadLetters::new(&dir.0, Io::real());
    write(&letters, "global", 1, "id-1", "too large");
    drop(letters);
    let path = dir.0.join(DEAD_LETTER_FILE);
    let mut text = std::fs::read(&path).unwrap();
    text.extend_from_slice(b"{\"reason\":\"too lar");
    std::fs::write(&path, &text).unwrap();
    let letters = DeadLetters::new(&dir.0, Io::real());
    write(&letters, "global", 2, "id-2", "too large");
    assert_eq!(
        keys(&dir.0),
        [key("global", 1, "id-1"), key("global", 2, "id-2")]
    );
}

/// The feeder's part: a write that failed is tried again until it succeeds.
fn write_until_written(letters: &DeadLetters, seq: u64, record_id: &str) {
    for _ in 0..3 {
        if letters
            .write("global", &record(seq, record_id), "too large")
            .is_ok()
        {
            return;
        }
    }
    panic!("record {seq} never written");
}

#[test]
fn error_or_short_write_at_any_step_leaves_each_record_once() {
    let steps = operations(|letters| {
        write_until_written(letters, 1, "id-1");
        write_until_written(letters, 2, "id-2");
    });
    for step in 0..steps {
        for fault in [Fault::Errno(libc::EIO), Fault::Short(9)] {
            let dir = folder("dead-step");
            let io = Io::with_faults(FaultPlan::default().at(step, None, fault));
            let letters = DeadLetters::new(&dir.0, io);
            write_until_written(&letters, 1, "id-1");
            write_until_written(&letters, 2, "id-2");
            assert_eq!(
                keys(&dir.0),
                [key("global", 1, "id-1"), key("global", 2, "id-2")],
                "{fault:?} at operation {step}"
            );
        }
    }
}

#[test]
fn crash_at_any_step_then_restart_leaves_each_record_once() {
    let steps = operations(|letters| {
        write_until_written(letters, 1, "id-1");
        write_until_written(letters, 2, "id-2");
    });
    for step in 0..=steps {
        let dir = folder("dead-crash");
        let io = Io::with_faults(FaultPlan::default().at(step, None, Fault::Crash));
        let letters = DeadLetters::new(&dir.0, io);
        let _ = letters.write("global", &record(1, "id-1"), "too large");
        let _ = letters.write("global", &record(2, "id-2"), "too large");
        drop(letters);
        // No ack reached the ledger: the next start dead-letters both again.
        let letters = DeadLetters::new(&dir.0, Io::real());
        write_until_written(&letters, 1, "id-1");
        write_until_written(&letters, 2, "id-2");
        assert_eq!(
            keys(&dir.0),
            [key("global", 1, "id-1"), key("global", 2, "id-2")],
            "crash at operation {step}"
        );
    }
}
