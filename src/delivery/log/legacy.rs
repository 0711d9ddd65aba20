//! Spools written by cdr_kafka before this log (format 1: `NNNNNNNNNN.seg` segments with
//! `.ack` files beside them). At open, their undelivered records are appended to the log,
//! in order, with their record ids: an upgrade loses nothing. Once the log has them on
//! disk, an old segment whose records are all in is removed; when the log refused one
//! (the disk, `spool_max_bytes`), the entries it took are marked moved in place and the
//! rest waits for the next load. A crash between an append and that mark or removal
//! appends those records again at the next open (the same record ids: consumers
//! deduplicate); nothing else is ever moved twice.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::format::{BodyReader, NewRecord, RecordKind};
use super::Log;

const MAGIC: u32 = 0xCD4B_5350;
/// Written over `MAGIC` once an entry is in the log: four bytes in place need no room
/// on a disk that just refused an append, and the entry stays whole (its length and
/// checksum), so that a later migration steps over it.
const MOVED: u32 = 0xCD4B_534D;
const HEADER_LEN: usize = 12;

/// One record of a format 1 segment.
struct OldRecord<'a> {
    /// Where its entry starts in the segment.
    offset: usize,
    /// Already in the log (its magic is `MOVED`).
    moved: bool,
    index: u32,
    record_id: &'a str,
    topic: &'a str,
    key: Option<&'a [u8]>,
    headers: Vec<(&'a str, &'a [u8])>,
    payload: &'a [u8],
}

fn decode(offset: usize, moved: bool, body: &[u8]) -> Option<OldRecord<'_>> {
    let mut reader = BodyReader(body);
    let index = reader.u32()?;
    reader.take(8)?; // capture time: the timestamp header keeps it
    let record_id = reader.text()?;
    let topic = reader.text()?;
    let key = match reader.take(1)?[0] {
        0 => None,
        _ => Some(reader.bytes()?),
    };
    let count = reader.u32()? as usize;
    let mut headers = Vec::with_capacity(count.min(body.len() / 8));
    for _ in 0..count {
        headers.push((reader.text()?, reader.bytes()?));
    }
    let payload = reader.bytes()?;
    Some(OldRecord {
        offset,
        moved,
        index,
        record_id,
        topic,
        key,
        headers,
        payload,
    })
}

/// Every valid entry of a format 1 segment, skipping damage byte by byte as it did.
fn entries(data: &[u8]) -> Vec<OldRecord<'_>> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset + HEADER_LEN <= data.len() {
        let word = |at: usize| u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"));
        let (magic, length, crc) = (word(offset), word(offset + 4), word(offset + 8));
        let end = offset + HEADER_LEN + length as usize;
        let body = (matches!(magic, MAGIC | MOVED) && end <= data.len())
            .then(|| &data[offset + HEADER_LEN..end])
            .filter(|body| crc32fast::hash(body) == crc)
            .and_then(|body| decode(offset, magic == MOVED, body));
        match body {
            Some(record) => {
                out.push(record);
                offset = end;
            }
            None => offset += 1,
        }
    }
    out
}

/// Format 1 files of one kind (`seg`, `ack`), in order.
fn old_files(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .map(|listing| {
            listing
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|path| {
                    path.extension().is_some_and(|e| e == extension)
                        && path
                            .file_stem()
                            .and_then(|s| s.to_str())
                            .is_some_and(|s| s.len() == 10 && s.bytes().all(|b| b.is_ascii_digit()))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// What the migration did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    /// Undelivered records of format 1 segments now in the log.
    pub records: u64,
    /// Records not moved: the log refused one (the disk, `spool_max_bytes`) and the
    /// ones after it wait behind it, in the old files, for the next load.
    pub left: u64,
}

/// Moves the undelivered records of format 1 segments into `log`, in order, up to the
/// first one the log refuses.
pub fn migrate(log: &Log) -> Migrated {
    let io = log.io();
    let mut migrated = Migrated::default();
    let mut refused = false;
    // An `.ack` file whose segment is gone: a crash came between their removals.
    for ack_path in old_files(log.dir(), "ack") {
        if !ack_path.with_extension("seg").exists() {
            let _ = io.remove(&ack_path);
        }
    }
    for path in old_files(log.dir(), "seg") {
        let Ok(data) = io.read_all(&path) else {
            continue;
        };
        let ack_path = path.with_extension("ack");
        let acked: HashSet<u32> = io
            .read_all(&ack_path)
            .unwrap_or_default()
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        let pending: Vec<OldRecord<'_>> = entries(&data)
            .into_iter()
            .filter(|r| !r.moved && !acked.contains(&r.index))
            .collect();
        let moved = if refused {
            0
        } else {
            append_in_order(log, &pending)
        };
        migrated.records += moved as u64;
        migrated.left += (pending.len() - moved) as u64;
        refused |= moved < pending.len();
        if moved == pending.len() {
            // Left as it is on failure: moved again at the next load.
            let _ = remove_old_segment(log, &path, &ack_path);
        } else if moved > 0 {
            let _ = mark_moved(log, &path, &pending[..moved]);
        }
    }
    migrated
}

/// Appends `records` to the log until it refuses one: how many it took.
fn append_in_order(log: &Log, records: &[OldRecord<'_>]) -> usize {
    records
        .iter()
        .take_while(|record| {
            log.append(&NewRecord {
                kind: RecordKind::Cdr,
                record_id: record.record_id,
                topic: record.topic,
                key: record.key,
                headers: &record.headers,
                payload: record.payload,
            })
            .is_ok()
        })
        .count()
}

fn log_synced(log: &Log) -> io::Result<()> {
    if log.sync_now() {
        Ok(())
    } else {
        Err(io::Error::other("the log could not be synced"))
    }
}

/// Removes an old segment whose records are all in the log, once the log is on disk:
/// the segment first, since an `.ack` file without its segment is harmless and a
/// segment without its `.ack` file would move delivered records again.
fn remove_old_segment(log: &Log, path: &Path, ack_path: &Path) -> io::Result<()> {
    log_synced(log)?;
    let io = log.io();
    io.remove(path)?;
    io.remove(ack_path)?;
    io.sync_dir(log.dir())
}

/// Marks `moved` entries of an old segment as in the log, once the log is on disk.
fn mark_moved(log: &Log, path: &Path, moved: &[OldRecord<'_>]) -> io::Result<()> {
    log_synced(log)?;
    let io = log.io();
    let file = io.open_write(path)?;
    for record in moved {
        io.write_at(&file, &MOVED.to_le_bytes(), record.offset as u64)?;
    }
    io.sync(&file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::log::format::encode_entry;
    use crate::delivery::log::io::{FaultPlan, Io};
    use crate::delivery::log::tests::{pending_ids, settings, TempDir};

    fn old_entry(index: u32, id: &str, out: &mut Vec<u8>) {
        let mut body = Vec::new();
        body.extend_from_slice(&index.to_le_bytes());
        body.extend_from_slice(&7u64.to_le_bytes());
        for text in [id.as_bytes(), b"asterisk_cdr"] {
            body.extend_from_slice(&(text.len() as u32).to_le_bytes());
            body.extend_from_slice(text);
        }
        body.push(0);
        body.extend_from_slice(&1u32.to_le_bytes());
        for text in [&b"record_id"[..], id.as_bytes()] {
            body.extend_from_slice(&(text.len() as u32).to_le_bytes());
            body.extend_from_slice(text);
        }
        body.extend_from_slice(&2u32.to_le_bytes());
        body.extend_from_slice(b"{}");
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&body);
    }

    #[test]
    fn undelivered_records_of_an_old_spool_are_delivered_after_the_upgrade() {
        let dir = TempDir::new("legacy");
        fs::create_dir_all(&dir.0).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o700)).unwrap();
        let mut data = Vec::new();
        for index in 0..5 {
            old_entry(index, &format!("old-{index}"), &mut data);
        }
        fs::write(dir.0.join("0000000001.seg"), &data).unwrap();
        // Records 0 and 3 were confirmed by the broker before the upgrade.
        let acks: Vec<u8> = [0u32, 3].iter().flat_map(|i| i.to_le_bytes()).collect();
        fs::write(dir.0.join("0000000001.ack"), acks).unwrap();

        let log = Log::open(settings(&dir.0)).unwrap();
        assert_eq!(
            migrate(&log),
            Migrated {
                records: 3,
                left: 0
            }
        );
        let ledger = log.register("global").unwrap();
        assert_eq!(pending_ids(&log, &ledger), vec!["old-1", "old-2", "old-4"]);
        assert!(!dir.0.join("0000000001.seg").exists());
        assert!(!dir.0.join("0000000001.ack").exists());
    }

    /// A folder holding an old spool of `segments` segments of `per_segment` records
    /// (`old-<segment>-<index>`), with the records of `acked` indices confirmed.
    fn old_spool(tag: &str, segments: u32, per_segment: u32, acked: &[u32]) -> TempDir {
        let dir = TempDir::new(tag);
        fs::create_dir_all(&dir.0).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o700)).unwrap();
        for segment in 1..=segments {
            let mut data = Vec::new();
            for index in 0..per_segment {
                old_entry(index, &format!("old-{segment}-{index}"), &mut data);
            }
            fs::write(dir.0.join(format!("{segment:010}.seg")), &data).unwrap();
            let acks: Vec<u8> = acked.iter().flat_map(|i| i.to_le_bytes()).collect();
            fs::write(dir.0.join(format!("{segment:010}.ack")), acks).unwrap();
        }
        dir
    }

    /// The ids an old spool's undelivered records have, in order.
    fn undelivered(segments: u32, per_segment: u32, acked: &[u32]) -> Vec<String> {
        (1..=segments)
            .flat_map(|segment| {
                (0..per_segment)
                    .filter(|index| !acked.contains(index))
                    .map(move |index| format!("old-{segment}-{index}"))
            })
            .collect()
    }

    /// Bytes one migrated record takes in the log (every test id has the same length).
    fn log_entry_len() -> u64 {
        let id = "old-1-0";
        let mut entry = Vec::new();
        encode_entry(
            &NewRecord {
                kind: RecordKind::Cdr,
                record_id: id,
                topic: "asterisk_cdr",
                key: None,
                headers: &[("record_id", id.as_bytes())],
                payload: b"{}",
            },
            0,
            0,
            &mut entry,
        );
        entry.len() as u64
    }

    fn any_old_file(dir: &Path) -> Vec<PathBuf> {
        [old_files(dir, "seg"), old_files(dir, "ack")].concat()
    }

    #[test]
    fn a_migration_the_disk_cut_short_moves_only_the_rest_at_the_next_load() {
        let dir = old_spool("legacy-cut", 2, 4, &[1]);
        let io = Io::with_faults(FaultPlan::default());
        let log = Log::open_with(settings(&dir.0), io.clone()).unwrap();
        // Room for two records and a half: the third is refused part way through the
        // first old segment.
        io.set_room(log_entry_len() * 5 / 2);
        assert_eq!(
            migrate(&log),
            Migrated {
                records: 2,
                left: 4
            }
        );
        drop(log);

        // The next load, on a disk with room again.
        let log = Log::open(settings(&dir.0)).unwrap();
        assert_eq!(
            migrate(&log),
            Migrated {
                records: 4,
                left: 0
            }
        );
        let ledger = log.register("global").unwrap();
        assert_eq!(pending_ids(&log, &ledger), undelivered(2, 4, &[1]));
        assert_eq!(any_old_file(&dir.0), Vec::<PathBuf>::new());
    }

    #[test]
    fn a_crash_at_any_step_of_a_migration_moves_twice_only_what_that_step_moved() {
        let acked = [1];
        let expected = undelivered(3, 3, &acked);
        for step in 0.. {
            let dir = old_spool("legacy-crash", 3, 3, &acked);
            let io = Io::with_faults(FaultPlan::default());
            let log = Log::open_with(settings(&dir.0), io.clone()).unwrap();
            // Room for both records of the first old segment and one of the second.
            io.set_room(log_entry_len() * 7 / 2);
            io.crash_after(step);
            migrate(&log);
            let crashed = io.has_crashed();
            drop(log);

            let log = Log::open(settings(&dir.0)).unwrap();
            migrate(&log);
            let ledger = log.register("global").unwrap();
            let ids = pending_ids(&log, &ledger);
            let mut twice: Vec<&String> = Vec::new();
            for id in &expected {
                match ids.iter().filter(|other| *other == id).count() {
                    1 => {}
                    2 => twice.push(id),
                    n => panic!("crash at step {step}: {id} is in the log {n} times: {ids:?}"),
                }
            }
            assert_eq!(
                ids.len(),
                expected.len() + twice.len(),
                "step {step}: {ids:?}"
            );
            // Records of one old segment at most: the one whose step the crash cut.
            let segments: HashSet<&str> = twice.iter().map(|id| &id[..5]).collect();
            assert!(segments.len() <= 1, "crash at step {step}: {twice:?}");
            assert_eq!(any_old_file(&dir.0), Vec::<PathBuf>::new(), "step {step}");
            assert_eq!(
                migrate(&log),
                Migrated::default(),
                "step {step}: a third load"
            );
            if !crashed {
                assert_eq!(twice, Vec::<&String>::new());
                assert!(step > 10, "the migration took {step} steps only");
                break;
            }
        }
    }
}
