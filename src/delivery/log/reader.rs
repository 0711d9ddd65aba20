//! Reading for the feeders: what was appended since a position, in one `pread`, and one
//! entry by its number (a retry, a dead letter) through the in-memory index.
//!
//! The current segment is read through the writer's file. A sealed one is opened by the
//! reader and kept in its [`ReadBatch`] while it reads there: the next read of another
//! segment (or of nothing) lets it go, so a reader holds at most one descriptor, and a
//! segment `maintain` deleted is not held open (its space is given back) past that read.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use super::format::{self, StoredRecord};
use super::index::Located;
use super::io::Handle;
use super::{lock, Log};

/// A batch of records read in one go; `records` decodes them in order.
#[derive(Default)]
pub struct ReadBatch {
    bytes: Vec<u8>,
    spans: Vec<(u64, usize, usize)>,
    /// The sealed segment this reader read last (its first number), kept open.
    sealed: Option<(u64, Handle)>,
}

impl ReadBatch {
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Each entry's sequence number and record; `None` when its bytes no longer check.
    pub fn records(&self) -> impl Iterator<Item = (u64, Option<StoredRecord<'_>>)> + '_ {
        self.spans.iter().map(|&(seq, start, len)| {
            let record = format::decode_entry(&self.bytes[start..start + len])
                .map(|(_, record)| record)
                .filter(|record| record.seq == seq);
            (seq, record)
        })
    }

    /// The sequence number after the last entry read.
    pub fn end(&self) -> Option<u64> {
        self.spans.last().map(|&(seq, _, _)| seq + 1)
    }
}

/// Where the next batch lies: which segment, through which file, which entries.
struct Found {
    id: u64,
    /// A sealed segment's file name; the current segment's file.
    file: Result<Arc<Handle>, PathBuf>,
    entries: Vec<Located>,
}

impl Log {
    /// Reads, in one go, the records from `from` on (at most about `max_bytes`, and
    /// within one segment).
    pub fn read_batch(&self, from: u64, max_bytes: usize, batch: &mut ReadBatch) -> io::Result<()> {
        batch.bytes.clear();
        batch.spans.clear();
        loop {
            let Some(found) = self.find(from, max_bytes) else {
                batch.sealed = None;
                return Ok(());
            };
            let file: &Handle = match &found.file {
                Ok(file) => {
                    batch.sealed = None;
                    file
                }
                Err(path) => {
                    if batch.sealed.as_ref().is_none_or(|(id, _)| *id != found.id) {
                        batch.sealed = None;
                        match self.io.open_read(path) {
                            Ok(file) => batch.sealed = Some((found.id, self.io.keep(file))),
                            // Deleted since it was found (every destination confirmed
                            // it): look again.
                            Err(error)
                                if error.kind() == io::ErrorKind::NotFound
                                    && !lock(&self.state).segments.contains_key(&found.id) =>
                            {
                                continue
                            }
                            Err(error) => return Err(error),
                        }
                    }
                    &batch.sealed.as_ref().expect("opened above").1
                }
            };
            let first = found.entries[0].offset;
            let last = found.entries.last().expect("at least one");
            let end = last.offset as usize + last.len as usize;
            batch.bytes.resize(end - first as usize, 0);
            self.io.read_at(file, &mut batch.bytes, u64::from(first))?;
            batch.spans = found
                .entries
                .iter()
                .map(|e| (e.seq, (e.offset - first) as usize, e.len as usize))
                .collect();
            return Ok(());
        }
    }

    /// The segment holding the first record at or above `from`, and its entries from
    /// there (about `max_bytes` of them, at least one).
    fn find(&self, from: u64, max_bytes: usize) -> Option<Found> {
        let state = lock(&self.state);
        let start = state
            .segments
            .range(..=from)
            .next_back()
            .map_or(0, |(&id, _)| id);
        let (&id, segment) = state
            .segments
            .range(start..)
            .find(|(_, s)| s.last_seq().is_some_and(|last| last >= from))?;
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        let mut at = segment.index.position(from);
        while let Some(entry) = segment.index.get(at) {
            if !entries.is_empty() && bytes + entry.len as usize > max_bytes {
                break;
            }
            bytes += entry.len as usize;
            entries.push(entry);
            at += 1;
        }
        Some(Found {
            id,
            file: segment.file.clone().ok_or_else(|| segment.path.clone()),
            entries,
        })
    }

    /// Reads one record back (a retry, a dead letter): `Ok(false)` when it is no longer
    /// in the log.
    pub fn read_one(&self, seq: u64, batch: &mut ReadBatch) -> io::Result<bool> {
        self.read_batch(seq, 0, batch)?;
        if batch.spans.first().map(|s| s.0) != Some(seq) {
            batch.spans.clear();
            return Ok(false);
        }
        batch.spans.truncate(1);
        Ok(true)
    }
}
