//! The durable log: every record is appended here on the thread that captured it, and
//! stays until every destination has confirmed it. docs/spool-format.md is the format.
//!
//! Parts: `format` (the bytes), `recovery` (opening a folder), `ledger` (one
//! destination's confirmations), `folder` (where the log lives, its lock), `io` (every
//! file operation, with faults injectable for the tests).
//!
//! Threads: `append` runs on Asterisk's CDR (and CEL) threads: one `pwrite` into the
//! page cache under the writer's lock (plus `fdatasync` with `spool_sync = always`), and
//! no wake-up of any other thread unless the log is filling up. Everything else runs
//! on the destinations' feeder threads: reading in batches, `maintain` (deleting what
//! every destination confirmed, syncing, giving the space of a delivered segment back).
//! std locks only: no thread-local state on Asterisk's threads.

pub mod folder;
pub mod format;
pub mod io;
pub mod ledger;
mod recovery;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use format::{NewRecord, RecordKind, StoredRecord};
use io::Io;
pub use ledger::Ledger;
use ledger::Watermarks;

/// A segment is closed past this size, so delivered records are deleted in steps.
pub const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// A delivered current segment past this size is replaced, giving its space back.
const ROTATE_DELIVERED_BYTES: u64 = 256 * 1024;

/// When appended records and confirmations are forced to disk (`spool_sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// `fdatasync` after every record, on the CDR thread: survives power loss.
    Always,
    /// `fdatasync` every `spool_sync_interval_ms` on the module's thread.
    Interval,
    /// The kernel writes back when it likes.
    Never,
}

impl SyncPolicy {
    pub fn name(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::Interval => "interval",
            Self::Never => "never",
        }
    }
}

/// Where and how the log keeps records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// `spool_dir`: the log lives here, or in its `cdr_kafka` subfolder when this folder
    /// is shared or someone else's.
    pub dir: PathBuf,
    pub sync: SyncPolicy,
    pub sync_interval: Duration,
    /// Most bytes of undelivered records; 0: bounded by the disk.
    pub max_bytes: u64,
}

/// Why the log cannot be opened.
#[derive(Debug)]
pub enum LogError {
    /// Another module instance holds the folder's lock.
    Locked { dir: PathBuf, holder: String },
    /// The folder is a symlink or not a folder.
    NotAFolder { dir: PathBuf },
    /// The `cdr_kafka` subfolder of a shared `spool_dir` exists and is not the module's own.
    NotPrivate { dir: PathBuf },
    /// A segment written by another version of the format.
    Version {
        path: PathBuf,
        version: u8,
        ours: u8,
    },
    /// An I/O error, with what was being done.
    Io { what: String, error: std::io::Error },
}

impl std::fmt::Display for LogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Locked { dir, holder } => write!(
                f,
                "spool folder {} is in use by another cdr_kafka ({holder}); give each Asterisk its own spool_dir",
                dir.display()
            ),
            Self::NotAFolder { dir } => write!(
                f,
                "spool folder {} is a symlink or not a folder",
                dir.display()
            ),
            Self::NotPrivate { dir } => write!(
                f,
                "spool folder {} is not private to this user (owner or mode); cdr_kafka changes no folder's permissions: fix it or set spool_dir",
                dir.display()
            ),
            Self::Version { path, version, ours } => write!(
                f,
                "{} was written by spool format version {version}, this cdr_kafka reads version {ours}: deliver it with the version that wrote it, or move it away",
                path.display()
            ),
            Self::Io { what, error } => write!(f, "{what}: {error}"),
        }
    }
}

impl std::error::Error for LogError {}

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

/// What opening the folder found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Segments whose last entry was cut short by a crash (cut off).
    pub torn_tails: u64,
    /// Runs of damaged bytes skipped (each costs the entries it touches).
    pub damaged: u64,
    /// Segments whose header was damaged (their entries were still read).
    pub damaged_headers: u64,
}

/// Counters of the log, for `cdr kafka show status`.
#[derive(Debug, Default)]
pub struct LogCounters {
    pub appended: AtomicU64,
    pub refused: AtomicU64,
    /// `fdatasync` failures: the record is kept (and delivered) but its durability
    /// against power loss is not known.
    pub sync_errors: AtomicU64,
    /// Records read back damaged (skipped, never delivered).
    pub damaged_reads: AtomicU64,
    pub segments_deleted: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    seq: u64,
    offset: u32,
    len: u32,
}

pub(crate) struct SegmentInfo {
    path: PathBuf,
    file: Arc<File>,
    /// Bytes of whole entries (and the header): readers stop here.
    committed: u64,
    entries: Vec<Entry>,
    sealed: bool,
}

impl SegmentInfo {
    fn last_seq(&self) -> Option<u64> {
        self.entries.last().map(|e| e.seq)
    }

    /// Bytes of the entries at or above `seq`.
    fn bytes_from(&self, seq: u64) -> u64 {
        let first = self.entries.partition_point(|e| e.seq < seq);
        self.entries[first..].iter().map(|e| u64::from(e.len)).sum()
    }
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.log"))
}

struct Active {
    first_seq: u64,
    file: Arc<File>,
    bytes: u64,
}

struct Writer {
    /// None after a failed rotation (disk full): the next append tries again.
    segment: Option<Active>,
    next_seq: u64,
    /// The end of the current segment holds bytes of a failed write that could not be
    /// cut off: the next append starts a new segment.
    broken: bool,
    buffer: Vec<u8>,
}

struct State {
    segments: BTreeMap<u64, SegmentInfo>,
    next_seq: u64,
    /// Bytes of records not yet confirmed by every destination.
    undelivered: u64,
    destinations: Vec<(String, Arc<Watermarks>)>,
    /// Closed segments not yet synced (interval policy).
    unsynced: Vec<Arc<File>>,
    /// Files were created or removed since the folder was last synced.
    dir_dirty: bool,
}

impl State {
    /// Below it, every destination confirmed every record (durably).
    fn delivered_below(&self) -> Option<u64> {
        self.destinations
            .iter()
            .map(|(_, marks)| marks.durable.load(Ordering::Acquire))
            .min()
    }

    /// Below it, every destination confirmed every record (perhaps not yet on disk).
    fn confirmed_below(&self) -> Option<u64> {
        self.destinations
            .iter()
            .map(|(_, marks)| marks.confirmed.load(Ordering::Acquire))
            .min()
    }

    fn undelivered_bytes(&self, below: u64) -> u64 {
        self.segments.values().map(|s| s.bytes_from(below)).sum()
    }
}

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

/// The log of one module instance.
pub struct Log {
    dir: PathBuf,
    settings: LogSettings,
    io: Io,
    _lock: File,
    writer: Mutex<Writer>,
    state: Mutex<State>,
    /// Feeders wait here between passes; an append wakes them only under pressure.
    wake: (Mutex<u64>, Condvar),
    pressure_signalled: AtomicBool,
    /// An append failed for lack of space: confirmations are synced at once, so that
    /// delivered segments can be given back without waiting for the sync interval.
    short_of_space: AtomicBool,
    /// Feeders asleep for want of anything to do: the next append wakes them.
    idle_feeders: AtomicUsize,
    /// Records were appended since the last interval sync.
    unsynced_appends: AtomicBool,
    last_sync: Mutex<Instant>,
    pub counters: LogCounters,
    pub recovery: Recovery,
    /// Sequence numbers below this came from an earlier run (a replay when produced).
    pub first_new_seq: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not stop CDRs from being spooled.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Log {
    /// Opens (or creates) the log folder, takes its lock and recovers what an earlier
    /// run left.
    pub fn open(settings: LogSettings) -> Result<Self, LogError> {
        Self::open_with(settings, Io::real())
    }

    /// `open`, with every file operation going through `io` (faults in tests).
    pub fn open_with(settings: LogSettings, io: Io) -> Result<Self, LogError> {
        let dir = folder::prepare(&settings.dir)?;
        let lock_file = folder::take_lock(&dir)?;
        let recovered = recovery::recover(&io, &dir)?;
        let mut state = State {
            segments: recovered.segments,
            next_seq: recovered.next_seq,
            undelivered: 0,
            destinations: Vec::new(),
            unsynced: Vec::new(),
            dir_dirty: true,
        };
        state.undelivered = state.undelivered_bytes(0);
        let log = Self {
            dir,
            settings,
            io,
            _lock: lock_file,
            writer: Mutex::new(Writer {
                segment: None,
                next_seq: recovered.next_seq,
                broken: false,
                buffer: Vec::with_capacity(4096),
            }),
            state: Mutex::new(state),
            wake: (Mutex::new(0), Condvar::new()),
            pressure_signalled: AtomicBool::new(false),
            short_of_space: AtomicBool::new(false),
            idle_feeders: AtomicUsize::new(0),
            unsynced_appends: AtomicBool::new(false),
            last_sync: Mutex::new(Instant::now()),
            counters: LogCounters::default(),
            recovery: recovered.report,
            first_new_seq: recovered.next_seq,
        };
        let started = log.start_segment(&mut lock(&log.writer));
        match started.and_then(|()| log.io.sync_dir(&log.dir)) {
            Ok(()) => {}
            // A full disk is given back as recovered records are delivered: load, and
            // let appends start the segment once there is room.
            Err(error) if error.raw_os_error() == Some(libc::ENOSPC) => {}
            Err(error) => {
                return Err(LogError::Io {
                    what: format!("starting a segment in {}", log.dir.display()),
                    error,
                })
            }
        }
        Ok(log)
    }

    pub fn settings(&self) -> &LogSettings {
        &self.settings
    }

    /// The folder the log lives in (`spool_dir` or its `cdr_kafka` subfolder).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn io(&self) -> &Io {
        &self.io
    }

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
        if max > 0 && lock(&self.state).undelivered + length > max {
            return Err(AppendError::Full { max_bytes: max });
        }
        let needs_segment = match &writer.segment {
            None => true,
            Some(active) => {
                writer.broken
                    || (active.bytes + length > SEGMENT_BYTES
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
            state.undelivered += length;
            if let Some(segment) = state.segments.get_mut(&active.first_seq) {
                segment.committed = active.bytes;
                segment.entries.push(Entry {
                    seq,
                    offset: offset as u32,
                    len: length as u32,
                });
            }
            self.settings.max_bytes > 0 && state.undelivered * 8 > self.settings.max_bytes
        };
        self.counters.appended.fetch_add(1, Ordering::Relaxed);
        if self.short_of_space.load(Ordering::Relaxed) {
            self.short_of_space.store(false, Ordering::Release);
        }
        if !self.unsynced_appends.load(Ordering::Relaxed) {
            self.unsynced_appends.store(true, Ordering::Release);
        }
        // Pairs with the fence in `wait_for_append`: either the feeder sees this record
        // before it sleeps, or this sees the sleeping feeder and wakes it.
        fence(Ordering::SeqCst);
        if self.idle_feeders.load(Ordering::Relaxed) > 0 {
            self.wake_feeders();
        }
        if pressure && !self.pressure_signalled.swap(true, Ordering::AcqRel) {
            self.wake_feeders();
        }
        Ok(seq)
    }

    /// Closes the current segment (if any) and starts one whose first record is the
    /// next to be appended.
    fn start_segment(&self, writer: &mut Writer) -> std::io::Result<()> {
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
        let file = Arc::new(file);
        let old = writer.segment.replace(Active {
            first_seq,
            file: Arc::clone(&file),
            bytes: header.len() as u64,
        });
        writer.broken = false;
        let mut state = lock(&self.state);
        if let Some(old) = old {
            if let Some(segment) = state.segments.get_mut(&old.first_seq) {
                segment.sealed = true;
            }
            if self.settings.sync == SyncPolicy::Interval {
                state.unsynced.push(old.file);
            }
        }
        state.segments.insert(
            first_seq,
            SegmentInfo {
                path,
                file,
                committed: header.len() as u64,
                entries: Vec::with_capacity(1024),
                sealed: false,
            },
        );
        state.dir_dirty = true;
        Ok(())
    }

    /// Registers a destination: its ledger, whose published watermark keeps what it has
    /// not confirmed in the log. A new destination starts at the oldest record the log
    /// holds, so a crash before its ledger reached the disk skips nothing.
    pub fn register(&self, name: &str) -> Result<Ledger, LogError> {
        let first = {
            let state = lock(&self.state);
            let first = state
                .segments
                .values()
                .find_map(|s| s.entries.first().map(|e| e.seq))
                .unwrap_or(state.next_seq);
            first
        };
        let (mut ledger, _damaged) = Ledger::open(
            self.io.clone(),
            &self.dir,
            name,
            first,
            self.settings.sync == SyncPolicy::Always,
        )
        .map_err(|error| LogError::Io {
            what: format!("opening the ledger of destination '{name}'"),
            error,
        })?;
        // Records below the first one kept were confirmed by everyone and deleted.
        ledger.raise_to(first);
        let mut state = lock(&self.state);
        state.destinations.retain(|(other, _)| other != name);
        state
            .destinations
            .push((name.to_string(), ledger.watermarks()));
        Ok(ledger)
    }

    /// Stops keeping records for a destination that no longer exists.
    pub fn unregister(&self, name: &str) {
        lock(&self.state)
            .destinations
            .retain(|(other, _)| other != name);
    }

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

    /// The sequence number the next record will get.
    pub fn next_seq(&self) -> u64 {
        lock(&self.state).next_seq
    }

    /// An append failed on the disk since the last segment was started: feeders sync
    /// their confirmations at once.
    pub fn short_of_space(&self) -> bool {
        self.short_of_space.load(Ordering::Acquire)
    }

    /// Whether destinations should not wait their whole batching window: the log holds
    /// an eighth of `spool_max_bytes` undelivered.
    pub fn under_pressure(&self) -> bool {
        self.pressure_signalled.load(Ordering::Acquire)
    }

    /// A feeder's pause between passes: until `timeout`, or until woken (pressure, stop).
    pub fn wait(&self, timeout: Duration) {
        let (mutex, condvar) = &self.wake;
        let guard = lock(mutex);
        let seen = *guard;
        let _ = condvar.wait_timeout_while(guard, timeout, |generation| *generation == seen);
    }

    /// An idle feeder's sleep: until a record at or after `from` is appended (the append
    /// wakes it), `timeout`, or a stop. Busy feeders never get woken by appends.
    pub fn wait_for_append(&self, from: u64, timeout: Duration) {
        let (mutex, condvar) = &self.wake;
        let guard = lock(mutex);
        let seen = *guard;
        self.idle_feeders.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.next_seq() <= from {
            let _ = condvar.wait_timeout_while(guard, timeout, |generation| *generation == seen);
        }
        self.idle_feeders.fetch_sub(1, Ordering::SeqCst);
    }

    pub fn wake_feeders(&self) {
        let (mutex, condvar) = &self.wake;
        *lock(mutex) += 1;
        condvar.notify_all();
    }

    /// The feeders' housekeeping: deletes segments every destination confirmed, gives
    /// back the space of a delivered current segment, syncs under the policy. Errors
    /// leave things as they were, to be tried at the next pass.
    pub fn maintain(&self) {
        let doomed = {
            let mut state = lock(&self.state);
            let Some(below) = state.delivered_below() else {
                return;
            };
            let doomed: Vec<u64> = state
                .segments
                .iter()
                .filter(|(_, s)| s.sealed && s.last_seq().is_none_or(|last| last < below))
                .map(|(&id, _)| id)
                .collect();
            let paths: Vec<PathBuf> = doomed
                .iter()
                .filter_map(|id| state.segments.remove(id))
                .map(|s| s.path)
                .collect();
            let confirmed = state.confirmed_below().unwrap_or(below);
            state.undelivered = state.undelivered_bytes(confirmed);
            if self.settings.max_bytes == 0 || state.undelivered * 8 <= self.settings.max_bytes {
                self.pressure_signalled.store(false, Ordering::Release);
            }
            paths
        };
        for path in &doomed {
            if self.io.remove(path).is_ok() {
                self.counters
                    .segments_deleted
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        if !doomed.is_empty() {
            lock(&self.state).dir_dirty = true;
        }
        self.give_back_delivered_segment();
        if self.settings.sync == SyncPolicy::Interval {
            let due = {
                let mut last = lock(&self.last_sync);
                let due = last.elapsed() >= self.settings.sync_interval;
                if due {
                    *last = Instant::now();
                }
                due
            };
            if due {
                self.sync_now();
            }
        } else if self.settings.sync == SyncPolicy::Always {
            self.sync_dir_if_dirty();
        }
    }

    /// A current segment every record of which is delivered is replaced by a new one
    /// (and deleted) once it is worth it, or at once when appends are failing: a disk
    /// that filled up during an outage is given back when the records are delivered.
    fn give_back_delivered_segment(&self) {
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

    fn sync_dir_if_dirty(&self) {
        let dirty = std::mem::take(&mut lock(&self.state).dir_dirty);
        if dirty && self.io.sync_dir(&self.dir).is_err() {
            lock(&self.state).dir_dirty = true;
        }
    }

    /// Forces everything appended so far, and the folder, to disk.
    pub fn sync_now(&self) {
        // An idle log costs no fdatasync.
        let appended = self.unsynced_appends.swap(false, Ordering::AcqRel);
        let current = lock(&self.writer)
            .segment
            .as_ref()
            .filter(|_| appended)
            .map(|a| Arc::clone(&a.file));
        let unsynced = std::mem::take(&mut lock(&self.state).unsynced);
        for file in unsynced.iter().chain(current.as_ref()) {
            if self.io.sync(file).is_err() {
                self.counters.sync_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sync_dir_if_dirty();
    }

    /// Records not yet confirmed by every destination, and their bytes.
    pub fn depth(&self) -> (u64, u64) {
        let state = lock(&self.state);
        let below = state.confirmed_below().unwrap_or(0);
        let records = state
            .segments
            .values()
            .map(|s| (s.entries.len() - s.entries.partition_point(|e| e.seq < below)) as u64)
            .sum();
        (records, state.undelivered_bytes(below))
    }

    /// Records at or above `seq` (what a destination whose watermark is `seq` may still
    /// have to deliver).
    pub fn count_from(&self, seq: u64) -> u64 {
        let state = lock(&self.state);
        state
            .segments
            .values()
            .map(|s| (s.entries.len() - s.entries.partition_point(|e| e.seq < seq)) as u64)
            .sum()
    }

    /// Age in seconds of the oldest record some destination has not confirmed.
    pub fn oldest_undelivered_age(&self) -> Option<u64> {
        let below = lock(&self.state).confirmed_below()?;
        let mut batch = ReadBatch::default();
        self.read_batch(below, 0, &mut batch).ok()?;
        let captured = batch.records().next()?.1?.captured_ms;
        Some(now_ms().saturating_sub(captured) / 1000)
    }
}

#[cfg(test)]
mod model;
#[cfg(test)]
pub(crate) mod tests;
