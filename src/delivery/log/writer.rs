//! Appending (on Asterisk's CDR and CEL threads) and starting segments: one `pwrite`
//! of the framed record into the page cache under the writer's lock, nothing of a
//! refused record left behind, and the space of a delivered segment given back.
//!
//! The writer owns the current segment's file (shared with the index while the segment
//! is current); sealing a segment lets its descriptor go, or hands it to the interval
//! sync, which closes it once it is on disk.

use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use super::format::{self, NewRecord};
use super::index::Index;
use super::io::Handle;
use super::{lock, now_ms, segment_path, Log, SegmentInfo, SyncPolicy};

/// A delivered current segment past this size is replaced, giving its space back.
const ROTATE_DELIVERED_BYTES: u64 = 256 * 1024;
/// Zeros kept written ahead of the current segment's last record (topped up when half
/// is used), and how far from it they start.
const ROOM_AHEAD_BYTES: u64 = 512 * 1024;
const ROOM_GAP_BYTES: u64 = 16 * 1024;

/// Why one record was refused: it is then counted, never half kept.
#[derive(Debug)]
pub enum AppendError {
    /// `spool_max_bytes` of undelivered records are held.
    Full { max_bytes: u64 },
    /// The disk refused the write (ENOSPC, EIO...): nothing of the record is kept.
    Io {
        what: &'static str,
        error: std::io::Error,
    },
}

impl std::fmt::Display for AppendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Full { max_bytes } => write!(
                f,
                "the spool holds spool_max_bytes = {max_bytes} bytes of undelivered records"
            ),
            Self::Io { what, error } => write!(f, "{what}: {error}"),
        }
    }
}

impl std::error::Error for AppendError {}

pub(super) struct Active {
    pub(super) first_seq: u64,
    pub(super) file: Arc<Handle>,
    pub(super) bytes: u64,
    /// The file holds zeros written ahead of the records up to here.
    pub(super) room_to: u64,
}

pub(super) struct Writer {
    /// None after a failed rotation (disk full): the next append tries again.
    pub(super) segment: Option<Active>,
    pub(super) next_seq: u64,
    /// The end of the current segment holds bytes of a failed write that could not be
    /// cut off: the next append starts a new segment.
    pub(super) broken: bool,
    pub(super) buffer: Vec<u8>,
    /// A feeder is writing zeros into this segment (its first record) from this offset
    /// on: an append must not reach there.
    pub(super) making_room: Option<(u64, u64)>,
}

impl Writer {
    pub(super) fn new(next_seq: u64) -> Self {
        Self {
            segment: None,
            next_seq,
            broken: false,
            buffer: Vec::with_capacity(4096),
            making_room: None,
        }
    }
}

impl Log {
    /// Appends one record (CDR/CEL thread). `Ok(seq)`: the record is in the log and
    /// will be delivered; `Err`: nothing of it is kept, and it is counted as refused.
    pub fn append(&self, record: &NewRecord<'_>) -> Result<u64, AppendError> {
        self.append_with(record, |out| out.extend_from_slice(record.payload))
            .0
    }

    /// `append`, with the payload encoded by `write_payload` straight into the log's
    /// buffer (no copy of it on the CDR thread); also returns what `write_payload` did.
    pub fn append_with<R>(
        &self,
        record: &NewRecord<'_>,
        write_payload: impl FnOnce(&mut Vec<u8>) -> R,
    ) -> (Result<u64, AppendError>, R) {
        let captured_ms = now_ms();
        let mut writer = lock(&self.writer);
        let writer = &mut *writer;
        writer.buffer.clear();
        let written = format::encode_entry_with(
            record,
            writer.next_seq,
            captured_ms,
            &mut writer.buffer,
            write_payload,
        );
        (self.append_encoded(writer), written)
    }

    fn append_encoded(&self, writer: &mut Writer) -> Result<u64, AppendError> {
        let result = self.append_buffered(writer);
        if let Err(error) = &result {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            if matches!(error, AppendError::Io { .. }) {
                self.short_of_space.store(true, Ordering::Release);
            }
        }
        result
    }

    fn append_buffered(&self, writer: &mut Writer) -> Result<u64, AppendError> {
        let length = writer.buffer.len() as u64;
        let max = self.settings.max_bytes;
        // Counted now, against what destinations have confirmed up to this moment.
        if max > 0 && lock(&self.state).undelivered() + length > max {
            return Err(AppendError::Full { max_bytes: max });
        }
        let needs_segment = match &writer.segment {
            None => true,
            Some(active) => {
                let reaches_zeros_being_written =
                    writer.making_room.is_some_and(|(segment, from)| {
                        segment == active.first_seq && active.bytes + length > from
                    });
                writer.broken
                    || reaches_zeros_being_written
                    || (active.bytes + length > self.segment_bytes
                        && active.bytes > format::SEGMENT_HEADER_LEN as u64)
            }
        };
        if needs_segment {
            self.start_segment(writer)
                .map_err(|error| AppendError::Io {
                    what: "starting a spool segment",
                    error,
                })?;
        }
        let active = writer.segment.as_mut().expect("started above");
        if let Err(error) = self.io.write_at(&active.file, &writer.buffer, active.bytes) {
            // Nothing of a refused record may stay: cut off what reached the file.
            if self.io.set_len(&active.file, active.bytes).is_err() {
                writer.broken = true;
            }
            return Err(AppendError::Io {
                what: "writing to the spool",
                error,
            });
        }
        if self.settings.sync == SyncPolicy::Always && self.io.sync(&active.file).is_err() {
            // The record is whole in the file and will be delivered; only its survival
            // of a power loss is unknown.
            self.counters.sync_errors.fetch_add(1, Ordering::Relaxed);
        }
        let seq = writer.next_seq;
        let offset = active.bytes;
        active.bytes += length;
        writer.next_seq += 1;
        let pressure = {
            let mut state = lock(&self.state);
            state.next_seq = writer.next_seq;
            if let Some(segment) = state.segments.get_mut(&active.first_seq) {
                segment.index.push(seq, offset as u32, length as u32);
                state.records += 1;
                state.bytes += length;
            }
            max > 0 && state.undelivered() * 8 > max
        };
        self.counters.appended.fetch_add(1, Ordering::Relaxed);
        if self.short_of_space.load(Ordering::Relaxed) {
            self.short_of_space.store(false, Ordering::Release);
        }
        if !self.unsynced_appends.load(Ordering::Relaxed) {
            self.unsynced_appends.store(true, Ordering::Release);
        }
        // Pairs with the fence in `wait_for_append_since`: either the feeder sees this record
        // before it sleeps, or this sees the sleeping feeder and wakes it.
        fence(Ordering::SeqCst);
        if self.idle_feeders.load(Ordering::Relaxed) > 0 {
            self.wake_idle_feeders();
        }
        if pressure && !self.pressure_signalled.swap(true, Ordering::AcqRel) {
            self.wake_feeders();
        }
        Ok(seq)
    }

    /// Closes the current segment (if any) and starts one whose first record is the
    /// next to be appended.
    pub(super) fn start_segment(&self, writer: &mut Writer) -> std::io::Result<()> {
        let first_seq = writer.next_seq;
        let path = segment_path(&self.dir, first_seq);
        // A file of that name holds no record (none has that number yet): an earlier
        // attempt that failed half-way, or a segment a failed write left broken.
        self.io.remove(&path)?;
        let file = self.io.create_new(&path)?;
        let header = format::encode_segment_header(first_seq, now_ms());
        let written = self.io.write_at(&file, &header, 0).and_then(|()| {
            if self.settings.sync == SyncPolicy::Always {
                self.io.sync(&file)?;
                self.io.sync_dir(&self.dir)?;
            }
            Ok(())
        });
        if let Err(error) = written {
            let _ = self.io.remove(&path);
            return Err(error);
        }
        let file = Arc::new(self.io.keep(file));
        let old = writer.segment.replace(Active {
            first_seq,
            file: Arc::clone(&file),
            bytes: header.len() as u64,
            room_to: header.len() as u64,
        });
        writer.broken = false;
        let mut state = lock(&self.state);
        if let Some(old) = old {
            if let Some(segment) = state.segments.get_mut(&old.first_seq) {
                segment.sealed = true;
                segment.file = None;
            }
            // Synced before its descriptor goes (else it goes now).
            if self.settings.sync == SyncPolicy::Interval {
                state.unsynced.push(old.file);
            }
        }
        let (records_before, bytes_before) = (state.records, state.bytes);
        state.segments.insert(
            first_seq,
            SegmentInfo {
                path,
                file: Some(file),
                index: Index::with_capacity(1024),
                sealed: false,
                records_before,
                bytes_before,
            },
        );
        state.dir_dirty = true;
        Ok(())
    }

    /// A current segment every record of which is delivered is replaced by a new one
    /// (and deleted) once it is worth it, or at once when appends are failing: a disk
    /// that filled up during an outage is given back when the records are delivered.
    pub(super) fn give_back_delivered_segment(&self) {
        let mut writer = lock(&self.writer);
        let (below, current) = {
            let state = lock(&self.state);
            (
                state.delivered_below(),
                writer.segment.as_ref().map(|a| a.first_seq),
            )
        };
        let Some(below) = below else { return };
        if below < writer.next_seq {
            return;
        }
        let worth_it = match &writer.segment {
            None => true,
            Some(active) => {
                writer.broken || self.short_of_space() || active.bytes >= ROTATE_DELIVERED_BYTES
            }
        };
        if !worth_it {
            return;
        }
        if let Some(first_seq) = current {
            // Delete first: on a full disk the new segment needs this one's space.
            let removed = lock(&self.state).segments.remove(&first_seq);
            if let Some(segment) = removed {
                if self.io.remove(&segment.path).is_ok() {
                    self.counters
                        .segments_deleted
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            writer.segment = None;
            lock(&self.state).dir_dirty = true;
        }
        // On failure the next append tries again.
        if self.start_segment(&mut writer).is_ok() {
            self.short_of_space.store(false, Ordering::Release);
        }
    }

    /// Writes zeros ahead of the current segment's records (a feeder's pass, never the
    /// CDR thread): an append then overwrites cached pages of the file instead of
    /// growing it, which costs a CDR thread that ran cold ~15 µs a record on ext4
    /// (docs/performance.md). Nothing is done while appends fail for lack of space.
    pub(super) fn make_room_ahead(&self) {
        if self.short_of_space() {
            return;
        }
        let (file, segment, from, to) = {
            let mut writer = lock(&self.writer);
            if writer.making_room.is_some() || writer.broken {
                return;
            }
            let Some(active) = &writer.segment else {
                return;
            };
            if active.room_to >= active.bytes + ROOM_AHEAD_BYTES / 2 {
                return;
            }
            // Apart from the records, so that appends go on while the zeros are written.
            let from = active.room_to.max(active.bytes + ROOM_GAP_BYTES);
            let to = (from + ROOM_AHEAD_BYTES).min(self.segment_bytes);
            if from >= to {
                return;
            }
            let claim = (Arc::clone(&active.file), active.first_seq, from, to);
            writer.making_room = Some((active.first_seq, from));
            claim
        };
        let written = self.io.write_zeros(&file, from, to - from);
        let mut writer = lock(&self.writer);
        writer.making_room = None;
        if let Some(active) = writer.segment.as_mut() {
            if active.first_seq == segment && written.is_ok() {
                active.room_to = to;
            }
        }
    }
}
