//! The in-memory index of one segment: for each entry its sequence number, its offset
//! and the bytes of the entries before it in the segment (16 bytes an entry). With the
//! segment's place in the log (records and bytes of the segments before it), "how many
//! records and bytes from this number on" is a binary search, never a sum over the
//! backlog: appends and the feeders' housekeeping share the log's lock, and an outage's
//! backlog must not make either slower.
//!
//! Owned by the log's shared state, read and changed under its lock only.

#[derive(Debug, Clone, Copy)]
struct Entry {
    seq: u64,
    offset: u32,
    /// Bytes of the entries before this one in the segment (damage skipped at recovery
    /// lies between entries and is not counted).
    before: u32,
}

/// One entry as the readers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Located {
    pub seq: u64,
    pub offset: u32,
    pub len: u32,
}

#[derive(Debug, Default)]
pub(crate) struct Index {
    entries: Vec<Entry>,
    /// Bytes of all the entries.
    bytes: u64,
}

#[cfg(test)]
thread_local! {
    /// Entries looked at by this thread (the tests' measure of the index's cost).
    pub(crate) static VISITED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn visit() {
    #[cfg(test)]
    VISITED.with(|visited| visited.set(visited.get() + 1));
}

impl Index {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self {
            entries: Vec::with_capacity(capacity),
            bytes: 0,
        }
    }

    /// Adds the entry after the last one (sequence numbers rise within a segment).
    pub(crate) fn push(&mut self, seq: u64, offset: u32, len: u32) {
        self.entries.push(Entry {
            seq,
            offset,
            before: self.bytes as u32,
        });
        self.bytes += u64::from(len);
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes of all the entries.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(crate) fn first_seq(&self) -> Option<u64> {
        self.entries.first().map(|e| e.seq)
    }

    pub(crate) fn last_seq(&self) -> Option<u64> {
        self.entries.last().map(|e| e.seq)
    }

    /// The position of the first entry at or above `seq` (`len()` when none is).
    pub(crate) fn position(&self, seq: u64) -> usize {
        self.entries.partition_point(|e| {
            visit();
            e.seq < seq
        })
    }

    /// Bytes of the entries before position `at`.
    pub(crate) fn bytes_before(&self, at: usize) -> u64 {
        match self.entries.get(at) {
            Some(entry) => {
                visit();
                u64::from(entry.before)
            }
            None => self.bytes,
        }
    }

    /// The entry at position `at`.
    pub(crate) fn get(&self, at: usize) -> Option<Located> {
        let entry = self.entries.get(at)?;
        visit();
        let end = self.bytes_before(at + 1);
        Some(Located {
            seq: entry.seq,
            offset: entry.offset,
            len: (end - u64::from(entry.before)) as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_entry_takes_sixteen_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 16);
    }

    #[test]
    fn lengths_and_bytes_come_back_across_a_gap_left_by_damage() {
        let mut index = Index::default();
        index.push(10, 32, 100);
        // 50 damaged bytes skipped at recovery, one number lost with them.
        index.push(12, 182, 70);
        index.push(13, 252, 30);
        assert_eq!(index.get(0).map(|e| e.len), Some(100));
        assert_eq!(
            index.get(1),
            Some(Located {
                seq: 12,
                offset: 182,
                len: 70
            })
        );
        assert_eq!(index.get(2).map(|e| e.len), Some(30));
        assert_eq!(index.position(11), 1);
        assert_eq!(index.bytes() - index.bytes_before(index.position(11)), 100);
        assert_eq!(index.bytes() - index.bytes_before(index.position(14)), 0);
    }
}
