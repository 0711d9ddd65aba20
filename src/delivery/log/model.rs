//! Model-based tests: random sequences of append / deliver / confirm / crash / reopen /
//! damage against an in-memory model of what must hold. And arbitrary bytes through the
//! recovery scans: no panic, no allocation driven by a damaged length.
//!
//! `PROPTEST_CASES=10000 cargo test --release --lib model` runs more cases.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::format::{self, SEGMENT_HEADER_LEN};
use super::io::{FaultPlan, Io};
use super::ledger;
use super::tests::{append, settings, TempDir};
use super::{Ledger, Log, LogSettings, ReadBatch};

const DESTINATIONS: [&str; 2] = ["kafka", "archive"];

#[derive(Debug, Clone)]
enum Step {
    Append(u8),
    Deliver {
        destination: usize,
        count: u8,
    },
    Confirm {
        destination: usize,
    },
    Maintain,
    /// A restart; the new process dies after this many file operations, if any.
    Crash(Option<u16>),
    Damage {
        file: u8,
        position: u16,
        bits: u8,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (1u8..20).prop_map(Step::Append),
        4 => (0usize..2, 1u8..30).prop_map(|(destination, count)| Step::Deliver { destination, count }),
        3 => (0usize..2).prop_map(|destination| Step::Confirm { destination }),
        2 => Just(Step::Maintain),
        2 => proptest::option::of(0u16..40).prop_map(Step::Crash),
        1 => (any::<u8>(), any::<u16>(), 1u8..=255).prop_map(|(file, position, bits)| Step::Damage { file, position, bits }),
    ]
}

/// What must hold, per record id: appended (Ok), and per destination confirmed
/// durably (written and published) or only in memory.
#[derive(Default)]
struct Model {
    kept: Vec<String>,
    durable: [BTreeSet<String>; 2],
    in_memory: [BTreeSet<String>; 2],
    /// Confirmations whose write failed part-way (a crash after the rename of a
    /// compacted ledger, say): on disk or not, both are right. They were delivered.
    uncertain: [BTreeSet<String>; 2],
    /// Records a damaged byte touched: they may be gone.
    may_be_lost: BTreeSet<String>,
    delivered: [BTreeSet<String>; 2],
    next: u64,
}

struct Open {
    log: Log,
    ledgers: Vec<Ledger>,
}

/// Opens the folder as a restarted module would; with `crash_in`, this "process" dies
/// that many file operations later, wherever it is then (every later operation fails).
fn open(dir: &Path, crash_in: Option<u16>) -> Open {
    let io = Io::with_faults(FaultPlan::default());
    let log = Log::open_with(
        LogSettings {
            max_bytes: 0,
            ..settings(dir)
        },
        io.clone(),
    )
    .expect("the log opens after any crash or damage");
    let ledgers = DESTINATIONS
        .iter()
        .map(|name| log.register(name).expect("ledger"))
        .collect();
    if let Some(more) = crash_in {
        io.crash_after(u64::from(more));
    }
    Open { log, ledgers }
}

/// Record ids a destination would be handed now, in order, with their numbers (none
/// once the process has crashed: its reads fail).
fn pending(log: &Log, ledger: &Ledger) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut batch = ReadBatch::default();
    let mut from = 0;
    loop {
        if log.read_batch(from, 64 * 1024, &mut batch).is_err() {
            return out;
        }
        let Some(end) = batch.end() else { break };
        for (seq, record) in batch.records() {
            if let Some(record) = record {
                if !ledger.is_acked(seq) {
                    out.push((seq, record.record_id.to_string()));
                }
            }
        }
        from = end;
    }
    out
}

fn check(open: &Open, model: &Model) -> Result<(), TestCaseError> {
    for (d, ledger) in open.ledgers.iter().enumerate() {
        let got = pending(&open.log, ledger);
        let ids: Vec<&String> = got.iter().map(|(_, id)| id).collect();
        let kept: BTreeMap<&String, usize> = model
            .kept
            .iter()
            .enumerate()
            .map(|(i, id)| (id, i))
            .collect();
        // Nothing that was never appended; in the order appended.
        let mut last = None;
        for id in &ids {
            let position = kept.get(id);
            prop_assert!(position.is_some(), "{id} was never appended");
            prop_assert!(last < position, "{id} out of order");
            last = position;
        }
        // Everything appended and not durably confirmed, but what damage touched.
        for id in &model.kept {
            let confirmed = model.durable[d].contains(id)
                || model.in_memory[d].contains(id)
                || model.uncertain[d].contains(id);
            if !confirmed && !model.may_be_lost.contains(id) {
                prop_assert!(ids.contains(&id), "{id} lost for {}", DESTINATIONS[d]);
            }
        }
    }
    Ok(())
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|listing| {
            listing
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Flips bits of one byte of a segment; returns the record id whose entry holds it.
fn damage(dir: &Path, file: u8, position: u16, bits: u8) -> Option<Option<String>> {
    let files = segment_files(dir);
    let path = files.get(file as usize % files.len().max(1))?;
    let mut data = fs::read(path).ok()?;
    if data.is_empty() {
        return None;
    }
    let at = position as usize % data.len();
    let body = data.get(SEGMENT_HEADER_LEN..).unwrap_or_default();
    let touched = format::scan_entries(body)
        .entries
        .iter()
        .find(|e| {
            (SEGMENT_HEADER_LEN + e.offset..SEGMENT_HEADER_LEN + e.offset + e.len).contains(&at)
        })
        .and_then(|e| {
            let start = SEGMENT_HEADER_LEN + e.offset;
            format::decode_entry(&data[start..start + e.len])
                .map(|(_, record)| record.record_id.to_string())
        });
    data[at] ^= bits;
    fs::write(path, &data).ok()?;
    Some(touched)
}

fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let dir = TempDir::new("model");
    let mut model = Model::default();
    let mut current = Some(open(&dir.0, None));
    let mut refused_here = 0u64;
    for step in steps {
        let state = current.as_mut().expect("open");
        match step {
            Step::Append(n) => {
                for _ in 0..n {
                    let k = model.next;
                    model.next += 1;
                    match append(&state.log, k) {
                        Ok(_) => model.kept.push(format!("id-{k}")),
                        Err(_) => refused_here += 1,
                    }
                }
            }
            Step::Deliver { destination, count } => {
                let ledger = &state.ledgers[destination];
                let next: Vec<(u64, String)> = pending(&state.log, ledger)
                    .into_iter()
                    .take(count as usize)
                    .collect();
                for (seq, id) in next {
                    state.ledgers[destination].ack(seq);
                    model.in_memory[destination].insert(id.clone());
                    model.delivered[destination].insert(id);
                }
            }
            Step::Confirm { destination } => {
                let ledger = &mut state.ledgers[destination];
                let confirmed = std::mem::take(&mut model.in_memory[destination]);
                if ledger.write().is_ok() {
                    ledger.publish_unsynced();
                    model.durable[destination].extend(confirmed);
                } else {
                    model.uncertain[destination].extend(confirmed);
                }
            }
            Step::Maintain => state.log.maintain(),
            Step::Crash(crash_in) => {
                prop_assert_eq!(
                    state
                        .log
                        .counters
                        .refused
                        .load(std::sync::atomic::Ordering::Relaxed),
                    refused_here
                );
                drop(current.take());
                model.in_memory = Default::default();
                refused_here = 0;
                current = Some(open(&dir.0, None));
                check(current.as_ref().expect("open"), &model)?;
                drop(current.take());
                current = Some(open(&dir.0, crash_in));
            }
            Step::Damage {
                file,
                position,
                bits,
            } => {
                drop(current.take());
                if let Some(touched) = damage(&dir.0, file, position, bits) {
                    model.may_be_lost.extend(touched);
                }
                model.in_memory = Default::default();
                refused_here = 0;
                current = Some(open(&dir.0, None));
                check(current.as_ref().expect("open"), &model)?;
            }
        }
    }
    // The end: a last restart, then everything is delivered.
    drop(current.take());
    model.in_memory = Default::default();
    let mut current = Some(open(&dir.0, None));
    let state = current.as_mut().expect("open");
    check(state, &model)?;
    // Everything appended is delivered at least once to each destination in the end.
    for (d, name) in DESTINATIONS.iter().enumerate() {
        for (seq, id) in pending(&state.log, &state.ledgers[d]) {
            state.ledgers[d].ack(seq);
            model.delivered[d].insert(id);
        }
        for id in &model.kept {
            prop_assert!(
                model.delivered[d].contains(id) || model.may_be_lost.contains(id),
                "{id} never delivered to {name}"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(64)
    ))]

    #[test]
    fn log_keeps_its_promises_through_crashes_and_damage(steps in proptest::collection::vec(step(), 1..60)) {
        run(steps)?;
    }

    #[test]
    fn entry_scan_of_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let scan = format::scan_entries(&bytes);
        prop_assert!(scan.valid_end <= bytes.len());
    }

    #[test]
    fn ledger_scan_of_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = ledger::scan(&bytes);
    }

    #[test]
    fn arbitrary_segment_file_opens_or_is_refused_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048), valid_header in any::<bool>()) {
        let dir = TempDir::new("fuzz");
        fs::create_dir_all(&dir.0).unwrap();
        let mut data = Vec::new();
        if valid_header {
            data.extend_from_slice(&format::encode_segment_header(5, 0));
        }
        data.extend_from_slice(&bytes);
        fs::write(dir.0.join(format!("{:020}.log", 5)), &data).unwrap();
        if let Ok(log) = Log::open(settings(&dir.0)) {
            let ledger = log.register("global").unwrap();
            let _ = pending(&log, &ledger);
        }
    }
}
