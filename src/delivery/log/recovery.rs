//! Opening a log folder: every segment is scanned, entries are indexed, a torn tail
//! (the write a crash cut short) is cut off the newest segment, damage elsewhere is
//! skipped entry by entry, and the next sequence number is found so that none is ever
//! used twice. Each segment is read whole once and closed: none is kept open (readers
//! open sealed segments when they read them).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;

use super::format::{self, HeaderProblem, SEGMENT_HEADER_LEN};
use super::index::Index;
use super::io::Io;
use super::ledger;
use super::{segment_path, LogError, Recovery, SegmentInfo};

pub struct Recovered {
    pub segments: BTreeMap<u64, SegmentInfo>,
    pub next_seq: u64,
    /// Records and entry bytes of the segments found.
    pub records: u64,
    pub bytes: u64,
    pub report: Recovery,
}

fn io_error(what: String) -> impl FnOnce(io::Error) -> LogError {
    move |error| LogError::Io { what, error }
}

/// The numbers in the names of the folder's files with `extension`, in order.
fn numbered(dir: &Path, extension: &str) -> Result<Vec<u64>, LogError> {
    let listing = fs::read_dir(dir).map_err(io_error(format!("listing {}", dir.display())))?;
    let mut ids: Vec<u64> = listing
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let stem = name.strip_suffix(extension)?;
            (stem.len() == 20).then(|| stem.parse().ok())?
        })
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// The highest watermark any ledger in the folder holds: sequence numbers below it
/// were used, even when every segment holding them is gone.
fn ledgers_high_mark(io: &Io, dir: &Path) -> u64 {
    let Ok(listing) = fs::read_dir(dir) else {
        return 0;
    };
    listing
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".ledger"))
        .filter_map(|entry| io.read_all(&entry.path()).ok())
        .map(|data| {
            let state = ledger::scan(&data).state;
            state
                .above
                .last()
                .map_or(state.watermark, |&last| state.watermark.max(last + 1))
        })
        .max()
        .unwrap_or(0)
}

pub fn recover(io: &Io, dir: &Path) -> Result<Recovered, LogError> {
    let mut report = Recovery::default();
    let mut segments = BTreeMap::new();
    let ids = numbered(dir, ".log")?;
    let mut next_seq = ledgers_high_mark(io, dir);
    let (mut records, mut bytes) = (0, 0);
    for (position, &id) in ids.iter().enumerate() {
        let newest = position + 1 == ids.len();
        let path = segment_path(dir, id);
        let data = io
            .read_all(&path)
            .map_err(io_error(format!("reading {}", path.display())))?;
        match format::decode_segment_header(&data) {
            Ok(_) => {}
            Err(HeaderProblem::Version(version)) => {
                return Err(LogError::Version {
                    path,
                    version,
                    ours: format::VERSION,
                })
            }
            Err(HeaderProblem::Short) => {
                // Created by a crash's last moments, before its header was down: empty.
                io.remove(&path)
                    .map_err(io_error(format!("removing {}", path.display())))?;
                continue;
            }
            Err(HeaderProblem::NotASegment) => report.damaged_headers += 1,
        }
        next_seq = next_seq.max(id);
        let body = data.get(SEGMENT_HEADER_LEN..).unwrap_or_default();
        let scan = format::scan_entries(body);
        report.damaged += scan.damaged_runs;
        if scan.tail_bytes > 0 {
            if newest {
                report.torn_tails += 1;
                let committed = (SEGMENT_HEADER_LEN + scan.valid_end) as u64;
                let file = io
                    .open_write(&path)
                    .map_err(io_error(format!("repairing {}", path.display())))?;
                io.set_len(&file, committed)
                    .and_then(|()| io.sync(&file))
                    .map_err(io_error(format!("repairing {}", path.display())))?;
            } else {
                report.damaged += 1;
            }
        }
        if scan.entries.is_empty() {
            io.remove(&path)
                .map_err(io_error(format!("removing {}", path.display())))?;
            continue;
        }
        if let Some(last) = scan.entries.last() {
            next_seq = next_seq.max(last.seq + 1);
        }
        let mut index = Index::with_capacity(scan.entries.len());
        for located in &scan.entries {
            let offset = (SEGMENT_HEADER_LEN + located.offset) as u32;
            index.push(located.seq, offset, located.len as u32);
        }
        let (records_before, bytes_before) = (records, bytes);
        records += index.len() as u64;
        bytes += index.bytes();
        segments.insert(
            id,
            SegmentInfo {
                path,
                file: None,
                index,
                sealed: true,
                records_before,
                bytes_before,
            },
        );
    }
    Ok(Recovered {
        segments,
        next_seq,
        records,
        bytes,
        report,
    })
}
