//! The durable log: every record is appended here on the thread that captured it, and
//! stays until every destination has confirmed it. docs/spool-format.md is the format.
//!
//! Parts: `format` (the bytes), `recovery` (opening a folder), `writer` (appending,
//! starting segments), `reader` (batches for the feeders), `index` (where each entry
//! is, and how much lies after it), `ledger` (one destination's confirmations),
//! `compaction` (a ledger's rewrite, also on a full disk), `folder` (where the log
//! lives, its lock), `io` (every file operation, with faults injectable for the tests).
//! This file holds the shared state and the housekeeping.
//!
//! Files: the log keeps one segment open, the current one (the writer's); a sealed
//! segment is opened by a reader when it reads it and kept by that reader only while it
//! reads there, so a backlog of any size costs one descriptor plus one per reader (and,
//! with `spool_sync = interval`, the segments sealed since the last sync, until it).
//!
//! Threads: `append` runs on Asterisk's CDR (and CEL) threads: one `pwrite` into the
//! page cache under the writer's lock (plus `fdatasync` with `spool_sync = always`), and
//! no wake-up of any other thread unless the log is filling up or a feeder sleeps idle. Everything else runs
//! on the destinations' feeder threads: reading in batches, `maintain` (deleting what
//! every destination confirmed, syncing, giving the space of a delivered segment back).
//! std locks only: no thread-local state on Asterisk's threads.

mod compaction;
pub mod folder;
pub mod format;
mod index;
pub mod io;
pub mod ledger;
pub mod legacy;
pub mod ranges;
mod reader;
mod recovery;
mod writer;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use crate::spooled::{NewRecord, RecordKind, StoredRecord};
use index::Index;
use io::{Handle, Io};
pub use ledger::Ledger;
pub use ledger::Watermarks;
pub use reader::ReadBatch;
pub use writer::AppendError;
use writer::Writer;

/// A segment is closed past this size (by default), so delivered records are deleted
/// in steps.
pub const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

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

pub(crate) struct SegmentInfo {
    path: PathBuf,
    /// The current segment's file, shared with the writer; `None` once sealed (readers
    /// open a sealed segment themselves).
    file: Option<Arc<Handle>>,
    /// Its whole entries: readers read nothing else.
    index: Index,
    sealed: bool,
    /// Records and entry bytes of the log before this segment's first entry.
    records_before: u64,
    bytes_before: u64,
}

impl SegmentInfo {
    fn last_seq(&self) -> Option<u64> {
        self.index.last_seq()
    }
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.log"))
}

struct State {
    segments: BTreeMap<u64, SegmentInfo>,
    next_seq: u64,
    /// Records and entry bytes put in the log since it was opened (recovered ones
    /// included): where the next entry's segment starts counting.
    records: u64,
    bytes: u64,
    destinations: Vec<(String, Arc<Watermarks>)>,
    /// Closed segments not yet synced (interval policy): kept open until the sync.
    unsynced: Vec<Arc<Handle>>,
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

    /// Records and entry bytes of the log before its first entry at or above `seq`.
    fn before(&self, seq: u64) -> (u64, u64) {
        if let Some((_, segment)) = self.segments.range(..=seq).next_back() {
            let at = segment.index.position(seq);
            if at < segment.index.len() {
                return (
                    segment.records_before + at as u64,
                    segment.bytes_before + segment.index.bytes_before(at),
                );
            }
        }
        match self.segments.range(seq.saturating_add(1)..).next() {
            Some((_, segment)) => (segment.records_before, segment.bytes_before),
            None => (self.records, self.bytes),
        }
    }

    /// Records (and their bytes) at or above `seq`.
    fn from(&self, seq: u64) -> (u64, u64) {
        let (records, bytes) = self.before(seq);
        (self.records - records, self.bytes - bytes)
    }

    /// Bytes of records some destination has not confirmed (in memory: a confirmation
    /// counts at once, not when it is written down or at the next housekeeping).
    fn undelivered(&self) -> u64 {
        self.from(self.confirmed_below().unwrap_or(0)).1
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
    /// Wake-ups that have every feeder pass at once (`wake_feeders`).
    hurried: AtomicU64,
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
    /// Past this size a segment is sealed and the next one started.
    segment_bytes: u64,
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
        let state = State {
            segments: recovered.segments,
            next_seq: recovered.next_seq,
            records: recovered.records,
            bytes: recovered.bytes,
            destinations: Vec::new(),
            unsynced: Vec::new(),
            dir_dirty: true,
        };
        let log = Self {
            dir,
            settings,
            io,
            _lock: lock_file,
            writer: Mutex::new(Writer::new(recovered.next_seq)),
            state: Mutex::new(state),
            wake: (Mutex::new(0), Condvar::new()),
            hurried: AtomicU64::new(0),
            pressure_signalled: AtomicBool::new(false),
            short_of_space: AtomicBool::new(false),
            idle_feeders: AtomicUsize::new(0),
            unsynced_appends: AtomicBool::new(false),
            last_sync: Mutex::new(Instant::now()),
            counters: LogCounters::default(),
            segment_bytes: SEGMENT_BYTES,
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

    /// Seals segments past `bytes` instead of [`SEGMENT_BYTES`] (tests: a backlog of
    /// many segments from few records).
    pub fn with_segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes;
        self
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

    /// Registers a destination: its ledger, whose published watermark keeps what it has
    /// not confirmed in the log. A new destination starts at the oldest record some
    /// registered destination has not confirmed (the oldest the log holds when none is
    /// registered): what every other destination settled is not reopened for it. Its
    /// ledger's first snapshot is synced at once, so a crash after this skips nothing.
    pub fn register(&self, name: &str) -> Result<Ledger, LogError> {
        let first = self.first_kept();
        let unsettled = {
            let state = lock(&self.state);
            state
                .destinations
                .iter()
                .filter(|(other, _)| other != name)
                .map(|(_, watermarks)| watermarks.confirmed.load(Ordering::Acquire))
                .min()
        };
        let start = unsettled.map_or(first, |oldest| oldest.max(first));
        let (mut ledger, _damaged) = Ledger::open(
            self.io.clone(),
            &self.dir,
            name,
            start,
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
    /// The first record the log still keeps (the next one's number when it is empty).
    pub fn first_kept(&self) -> u64 {
        let state = lock(&self.state);
        state
            .segments
            .values()
            .find_map(|s| s.index.first_seq())
            .unwrap_or(state.next_seq)
    }

    /// Stops keeping records for a destination removed from the configuration, and
    /// deletes its ledger (and spare): a destination of that name added later starts as a
    /// new one, not from what this one confirmed long ago.
    pub fn forget(&self, name: &str) {
        self.unregister(name);
        let path = ledger::ledger_path(&self.dir, name);
        for suffix in ["", ".new", ".prev"] {
            let mut file = path.clone().into_os_string();
            file.push(suffix);
            let _ = self.io.remove(Path::new(&file));
        }
        lock(&self.state).dir_dirty = true;
    }

    pub fn unregister(&self, name: &str) {
        lock(&self.state)
            .destinations
            .retain(|(other, _)| other != name);
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

    /// How many wake-ups there have been: a thread that reads it before it looks at
    /// its work and waits `since` it misses none that came in between.
    pub fn wake_generation(&self) -> u64 {
        *lock(&self.wake.0)
    }

    /// A feeder's pause between passes: until `timeout`, or until woken (an append, a
    /// stop, pressure); returns at once if a wake-up came after `seen` was read.
    pub fn wait_since(&self, seen: u64, timeout: Duration) {
        let (mutex, condvar) = &self.wake;
        let guard = lock(mutex);
        let _ = condvar.wait_timeout_while(guard, timeout, |generation| *generation == seen);
    }

    /// An idle feeder's sleep: until a record at or after `from` is appended (the append
    /// wakes it), `timeout`, or a stop; returns at once if a wake-up came after `seen`
    /// was read. Only an idle feeder makes an append wake the feeders.
    pub fn wait_for_append_since(&self, seen: u64, from: u64, timeout: Duration) {
        let (mutex, condvar) = &self.wake;
        let guard = lock(mutex);
        self.idle_feeders.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.next_seq() <= from {
            let _ = condvar.wait_timeout_while(guard, timeout, |generation| *generation == seen);
        }
        self.idle_feeders.fetch_sub(1, Ordering::SeqCst);
    }

    /// Wakes every feeder and has each pass at once: a stop, pressure, the stop record.
    pub fn wake_feeders(&self) {
        self.hurried.fetch_add(1, Ordering::SeqCst);
        self.wake_idle_feeders();
    }

    /// Wakes the feeders for an append: only an idle one passes before its time.
    fn wake_idle_feeders(&self) {
        let (mutex, condvar) = &self.wake;
        *lock(mutex) += 1;
        condvar.notify_all();
    }

    /// How many times `wake_feeders` hurried the feeders: a feeder that saw it change
    /// since its last pass passes now.
    pub fn hurried(&self) -> u64 {
        self.hurried.load(Ordering::SeqCst)
    }

    /// The feeders' housekeeping: deletes segments every destination confirmed, gives
    /// back the space of a delivered current segment, syncs under the policy. Errors
    /// leave things as they were, to be tried at the next pass.
    pub fn maintain(&self) {
        self.make_room_ahead();
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
            if self.settings.max_bytes == 0 || state.undelivered() * 8 <= self.settings.max_bytes {
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

    /// False when the folder needed a sync and it failed.
    fn sync_dir_if_dirty(&self) -> bool {
        let dirty = std::mem::take(&mut lock(&self.state).dir_dirty);
        if dirty && self.io.sync_dir(&self.dir).is_err() {
            lock(&self.state).dir_dirty = true;
            return false;
        }
        true
    }

    /// Forces everything appended so far, and the folder, to disk: false when a sync
    /// failed (what was appended may not survive a power loss).
    pub fn sync_now(&self) -> bool {
        // An idle log costs no fdatasync.
        let appended = self.unsynced_appends.swap(false, Ordering::AcqRel);
        let current = lock(&self.writer)
            .segment
            .as_ref()
            .filter(|_| appended)
            .map(|active| Arc::clone(&active.file));
        let unsynced = std::mem::take(&mut lock(&self.state).unsynced);
        let mut synced = true;
        for file in unsynced.iter().chain(current.as_ref()) {
            if self.io.sync(file).is_err() {
                self.counters.sync_errors.fetch_add(1, Ordering::Relaxed);
                synced = false;
            }
        }
        self.sync_dir_if_dirty() && synced
    }

    /// Records not yet confirmed by every destination, and their bytes.
    pub fn depth(&self) -> (u64, u64) {
        let state = lock(&self.state);
        state.from(state.confirmed_below().unwrap_or(0))
    }

    /// Records at or above `seq` (what a destination whose watermark is `seq` may still
    /// have to deliver).
    pub fn count_from(&self, seq: u64) -> u64 {
        lock(&self.state).from(seq).0
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
