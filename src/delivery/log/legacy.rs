//! Spools written by cdr_kafka before this log (format 1: `NNNNNNNNNN.seg` segments with
//! `.ack` files beside them). At open, their undelivered records are appended to the log,
//! in order, with their record ids, and the old files removed once the log has them on
//! disk: an upgrade loses nothing. A crash half-way appends them again at the next open
//! (the same record ids: consumers deduplicate).

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use super::format::{BodyReader, NewRecord, RecordKind};
use super::Log;

const MAGIC: u32 = 0xCD4B_5350;
const HEADER_LEN: usize = 12;

/// One record of a format 1 segment.
struct OldRecord<'a> {
    index: u32,
    record_id: &'a str,
    topic: &'a str,
    key: Option<&'a [u8]>,
    headers: Vec<(&'a str, &'a [u8])>,
    payload: &'a [u8],
}

fn decode(body: &[u8]) -> Option<OldRecord<'_>> {
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
        let body = (magic == MAGIC && end <= data.len())
            .then(|| &data[offset + HEADER_LEN..end])
            .filter(|body| crc32fast::hash(body) == crc)
            .and_then(decode);
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

fn old_segments(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .map(|listing| {
            listing
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|path| {
                    path.extension().is_some_and(|e| e == "seg")
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
    /// Records the log refused (the disk): they stay in the old files for the next load.
    pub left: u64,
}

/// Moves the undelivered records of format 1 segments into `log`.
pub fn migrate(log: &Log) -> Migrated {
    let mut migrated = Migrated::default();
    for path in old_segments(log.dir()) {
        let ack_path = path.with_extension("ack");
        let Ok(data) = fs::read(&path) else { continue };
        let acked: HashSet<u32> = fs::read(&ack_path)
            .unwrap_or_default()
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        let mut complete = true;
        for record in entries(&data).iter().filter(|r| !acked.contains(&r.index)) {
            let appended = log.append(&NewRecord {
                kind: RecordKind::Cdr,
                record_id: record.record_id,
                topic: record.topic,
                key: record.key,
                headers: &record.headers,
                payload: record.payload,
            });
            match appended {
                Ok(_) => migrated.records += 1,
                Err(_) => {
                    migrated.left += 1;
                    complete = false;
                }
            }
        }
        if complete {
            log.sync_now();
            let _ = fs::remove_file(&path);
            let _ = fs::remove_file(&ack_path);
        }
    }
    migrated
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
