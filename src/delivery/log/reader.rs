//! Reading for the feeders: what was appended since a position, in one `pread`, and one
//! entry by its number (a retry, a dead letter) through the in-memory index.

use std::sync::Arc;

use super::format::{self, StoredRecord};
use super::{lock, Log};

/// A batch of records read in one go; `records` decodes them in order.
#[derive(Default)]
pub struct ReadBatch {
    bytes: Vec<u8>,
    spans: Vec<(u64, usize, usize)>,
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

impl Log {
    /// Reads, in one go, the records from `from` on (at most about `max_bytes`, and
    /// within one segment).
    pub fn read_batch(
        &self,
        from: u64,
        max_bytes: usize,
        batch: &mut ReadBatch,
    ) -> std::io::Result<()> {
        batch.bytes.clear();
        batch.spans.clear();
        let (file, start, entries) = {
            let state = lock(&self.state);
            let mut found = None;
            for segment in state.segments.values() {
                if segment.last_seq().is_none_or(|last| last < from) {
                    continue;
                }
                let first = segment.entries.partition_point(|e| e.seq < from);
                let mut taken = Vec::new();
                let mut bytes = 0usize;
                for entry in &segment.entries[first..] {
                    if !taken.is_empty() && bytes + entry.len as usize > max_bytes {
                        break;
                    }
                    bytes += entry.len as usize;
                    taken.push(*entry);
                }
                found = Some((Arc::clone(&segment.file), taken[0].offset, taken));
                break;
            }
            match found {
                Some(found) => found,
                None => return Ok(()),
            }
        };
        let last = entries.last().expect("at least one");
        let end = last.offset as usize + last.len as usize;
        batch.bytes.resize(end - start as usize, 0);
        self.io.read_at(&file, &mut batch.bytes, u64::from(start))?;
        batch.spans = entries
            .iter()
            .map(|e| (e.seq, (e.offset - start) as usize, e.len as usize))
            .collect();
        Ok(())
    }

    /// Reads one record back (a retry, a dead letter): `Ok(false)` when it is no longer
    /// in the log.
    pub fn read_one(&self, seq: u64, batch: &mut ReadBatch) -> std::io::Result<bool> {
        self.read_batch(seq, 0, batch)?;
        if batch.spans.first().map(|s| s.0) != Some(seq) {
            batch.spans.clear();
            return Ok(false);
        }
        batch.spans.truncate(1);
        Ok(true)
    }
}
