//! The durable spool: every CDR is appended here before anything else happens to it, and
//! leaves only when the broker acknowledged it (or it went to the dead-letter file).
//!
//! Layout of the spool folder (0700, files 0600, nothing opened through a symlink):
//! - `lock`: flock'ed by the one module instance using the folder;
//! - `NNNNNNNNNN.seg`: append-only segments of entries
//!   `magic u32 | body length u32 | crc32(body) u32 | body`;
//! - `NNNNNNNNNN.ack`: the indices (u32) of that segment's entries the broker acknowledged;
//! - `dead-letter.jsonl`: records the broker will never take, one JSON line each, with
//!   the reason.
//!
//! A segment is deleted once every entry in it is acknowledged. At open, every segment
//! is scanned: a torn last entry (a crash mid-write) is cut off, a damaged entry is
//! skipped up to the next valid one; both are reported, and everything else survives.
//!
//! Threads: `append` runs on Asterisk's CDR thread: one `write` into the page cache
//! under a mutex held for that write only (plus `fdatasync` with `spool_sync = always`).
//! Reading, acknowledging and syncing run on the module's own threads. std locks only:
//! no thread-local state on Asterisk's threads.

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const MAGIC: u32 = 0xCD4B_5350;
const HEADER_LEN: usize = 12;
/// A new segment starts past this size, so delivered records are deleted in bounded steps.
const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// Larger than any record Asterisk can produce; a length above it marks damage.
const MAX_BODY: u32 = 64 * 1024 * 1024;
const DEAD_LETTER_FILE: &str = "dead-letter.jsonl";

/// When appended records are forced to disk (`spool_sync`).
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

/// Where and how the spool keeps records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolSettings {
    pub dir: PathBuf,
    pub sync: SyncPolicy,
    pub sync_interval: Duration,
    /// 0: bounded only by the disk.
    pub max_bytes: u64,
}

/// One record as the spool keeps it: everything needed to produce it again.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SpoolRecord {
    pub record_id: String,
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub payload: Vec<u8>,
}

/// A record to append, borrowed from the callback that captured it: nothing is copied
/// but into the spool's write buffer.
#[derive(Debug, Clone, Copy)]
pub struct NewRecord<'a> {
    pub record_id: &'a str,
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    pub headers: &'a [(&'a str, &'a [u8])],
    pub payload: &'a [u8],
}

/// Where an entry lives: what the delivery report carries back (as a `usize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EntryRef {
    pub segment: u32,
    pub index: u32,
}

impl EntryRef {
    pub fn to_opaque(self) -> usize {
        ((self.segment as usize) << 32) | self.index as usize
    }

    pub fn from_opaque(opaque: usize) -> Self {
        Self {
            segment: (opaque >> 32) as u32,
            index: opaque as u32,
        }
    }
}

/// Why the spool could not be opened or take a record.
#[derive(Debug)]
pub enum SpoolError {
    /// Another module instance holds the folder's lock.
    Locked { dir: PathBuf, holder: String },
    /// The folder is a symlink or not a folder.
    NotAFolder { dir: PathBuf },
    /// An I/O error, with what was being done.
    Io { what: String, error: io::Error },
    /// `spool_max_bytes` is reached.
    Full { max_bytes: u64 },
}

impl std::fmt::Display for SpoolError {
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
            Self::Io { what, error } => write!(f, "{what}: {error}"),
            Self::Full { max_bytes } => write!(
                f,
                "the spool holds spool_max_bytes = {max_bytes} bytes of undelivered records"
            ),
        }
    }
}

impl std::error::Error for SpoolError {}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> SpoolError {
    let what = what.into();
    move |error| SpoolError::Io { what, error }
}

/// What recovery found in the segments of an earlier run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Undelivered records found, to be produced again.
    pub records: u64,
    /// Segments whose last entry was cut short by a crash (cut off).
    pub torn_tails: u64,
    /// Damaged entries skipped (checksum or framing wrong).
    pub damaged: u64,
}

/// Counters of the spool, for `cdr kafka show status`.
#[derive(Debug, Default)]
pub struct SpoolCounters {
    pub appended: AtomicU64,
    pub acked: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub refused: AtomicU64,
}

struct Segment {
    path: PathBuf,
    /// Bytes of whole, valid entries: readers stop here.
    committed: u64,
    /// No more appends (an older run's segment, or rotated).
    sealed: bool,
    /// Entries not yet acknowledged.
    pending: u32,
    acked: Vec<u64>,
    /// Capture time (Unix seconds) of the segment's first entry.
    first_capture: u64,
}

impl Segment {
    fn is_acked(&self, index: u32) -> bool {
        self.acked
            .get(index as usize / 64)
            .is_some_and(|word| word & (1 << (index % 64)) != 0)
    }

    /// Marks `index` acknowledged; false when it already was.
    fn set_acked(&mut self, index: u32) -> bool {
        let word = index as usize / 64;
        if self.acked.len() <= word {
            self.acked.resize(word + 1, 0);
        }
        let bit = 1 << (index % 64);
        let was = self.acked[word] & bit != 0;
        self.acked[word] |= bit;
        !was
    }
}

struct Writer {
    segment: u32,
    file: File,
    bytes: u64,
    next_index: u32,
    buffer: Vec<u8>,
}

struct State {
    segments: BTreeMap<u32, Segment>,
    /// Handles to force to disk at the next interval sync.
    unsynced: Vec<File>,
    /// Bumped on each append: readers wait for it to change.
    generation: u64,
    /// A reader waits for an append: only then does an append wake it (a syscall).
    reader_waiting: bool,
}

impl State {
    /// Bytes of the segments that still hold undelivered records: what
    /// `spool_max_bytes` limits (a delivered segment is as good as gone).
    fn held_bytes(&self) -> u64 {
        self.segments
            .values()
            .filter(|s| s.pending > 0)
            .map(|s| s.committed)
            .sum()
    }
}

/// The spool of one module instance.
pub struct Spool {
    settings: SpoolSettings,
    _lock: File,
    writer: Mutex<Writer>,
    state: Mutex<State>,
    /// Open `.ack` files by segment: written outside `state`'s lock, which the CDR
    /// thread takes on every append.
    ack_files: Mutex<BTreeMap<u32, File>>,
    appended: Condvar,
    last_sync: Mutex<Instant>,
    first_new_segment: u32,
    dead_letter: Mutex<Option<File>>,
    pub counters: SpoolCounters,
    pub recovery: Recovery,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not stop CDRs from being spooled.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn open_private(path: &Path, options: &mut OpenOptions) -> io::Result<File> {
    options
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

fn segment_path(dir: &Path, segment: u32, extension: &str) -> PathBuf {
    dir.join(format!("{segment:010}.{extension}"))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Spool {
    /// Opens (or creates) the spool folder, takes its lock and recovers what an earlier
    /// run left undelivered.
    pub fn open(settings: SpoolSettings) -> Result<Self, SpoolError> {
        let dir = settings.dir.clone();
        prepare_folder(&dir)?;
        let lock_file = take_lock(&dir)?;
        let (segments, recovery) = recover(&dir)?;
        let first_new_segment = segments.keys().next_back().map_or(1, |last| last + 1);
        let writer = open_segment(&dir, first_new_segment)?;
        let mut state = State {
            segments,
            unsynced: Vec::new(),
            generation: 0,
            reader_waiting: false,
        };
        state.segments.insert(
            first_new_segment,
            new_segment_state(&dir, first_new_segment),
        );
        Ok(Self {
            settings,
            _lock: lock_file,
            writer: Mutex::new(writer),
            state: Mutex::new(state),
            ack_files: Mutex::new(BTreeMap::new()),
            appended: Condvar::new(),
            last_sync: Mutex::new(Instant::now()),
            first_new_segment,
            dead_letter: Mutex::new(None),
            counters: SpoolCounters::default(),
            recovery,
        })
    }

    pub fn settings(&self) -> &SpoolSettings {
        &self.settings
    }

    /// Appends one record (CDR thread): a single write, then the record is durable
    /// against a crash of Asterisk (and against power loss with `spool_sync = always`).
    pub fn append(&self, record: &SpoolRecord) -> Result<EntryRef, SpoolError> {
        let headers: Vec<(&str, &[u8])> = record
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_slice()))
            .collect();
        self.append_new(&NewRecord {
            record_id: &record.record_id,
            topic: &record.topic,
            key: record.key.as_deref(),
            headers: &headers,
            payload: &record.payload,
        })
    }

    /// Appends one borrowed record: what the CDR and CEL callbacks use.
    pub fn append_new(&self, record: &NewRecord<'_>) -> Result<EntryRef, SpoolError> {
        let captured = now_secs();
        let mut writer = lock(&self.writer);
        let writer = &mut *writer;
        let index = writer.next_index;
        writer.buffer.clear();
        encode_entry(record, index, captured, &mut writer.buffer);
        let length = writer.buffer.len() as u64;
        if self.settings.max_bytes > 0
            && lock(&self.state).held_bytes() + length > self.settings.max_bytes
        {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            return Err(SpoolError::Full {
                max_bytes: self.settings.max_bytes,
            });
        }
        if let Err(error) = writer.file.write_all(&writer.buffer) {
            // Cut off whatever part of the entry reached the file.
            let _ = writer.file.set_len(writer.bytes);
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            return Err(SpoolError::Io {
                what: "writing to the spool".into(),
                error,
            });
        }
        if self.settings.sync == SyncPolicy::Always {
            writer
                .file
                .sync_data()
                .map_err(io_error("syncing the spool"))?;
        }
        writer.bytes += length;
        writer.next_index += 1;
        let entry = EntryRef {
            segment: writer.segment,
            index,
        };
        let rotate = writer.bytes >= SEGMENT_BYTES;
        let wake_reader = {
            let mut state = lock(&self.state);
            state.generation += 1;
            if let Some(segment) = state.segments.get_mut(&writer.segment) {
                segment.committed = writer.bytes;
                segment.pending += 1;
                if index == 0 {
                    segment.first_capture = captured;
                }
            }
            std::mem::take(&mut state.reader_waiting)
        };
        if rotate {
            self.rotate(writer)?;
        }
        self.counters.appended.fetch_add(1, Ordering::Relaxed);
        if wake_reader {
            self.appended.notify_all();
        }
        Ok(entry)
    }

    fn rotate(&self, writer: &mut Writer) -> Result<(), SpoolError> {
        let dir = &self.settings.dir;
        let next = writer.segment + 1;
        let new_writer = open_segment(dir, next)?;
        let old = std::mem::replace(writer, new_writer);
        let done = {
            let mut state = lock(&self.state);
            if let Some(segment) = state.segments.get_mut(&old.segment) {
                segment.sealed = true;
            }
            state.segments.insert(next, new_segment_state(dir, next));
            if self.settings.sync == SyncPolicy::Interval {
                state.unsynced.push(old.file);
            }
            let done = removable(&state.segments);
            for segment in &done {
                state.segments.remove(segment);
            }
            done
        };
        for segment in done {
            self.delete_segment(segment);
        }
        Ok(())
    }

    /// Waits up to `timeout` for an append after generation `seen`; returns the current one.
    pub fn wait_for_append(&self, seen: u64, timeout: Duration) -> u64 {
        let mut state = lock(&self.state);
        if state.generation != seen {
            return state.generation;
        }
        state.reader_waiting = true;
        let (mut state, _) = self
            .appended
            .wait_timeout_while(state, timeout, |s| s.generation == seen)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.reader_waiting = false;
        state.generation
    }

    pub fn generation(&self) -> u64 {
        lock(&self.state).generation
    }

    /// A reading position at the oldest undelivered record.
    pub fn cursor(&self) -> Cursor {
        let first = lock(&self.state)
            .segments
            .keys()
            .next()
            .copied()
            .unwrap_or(1);
        Cursor {
            segment: first,
            offset: 0,
            file: None,
        }
    }

    /// The next unacknowledged record at or after `cursor`, or `None` when the reader has
    /// caught up with the writer.
    pub fn next(&self, cursor: &mut Cursor) -> Result<Option<(EntryRef, SpoolRecord)>, SpoolError> {
        loop {
            let (committed, sealed, path) = {
                let state = lock(&self.state);
                match state.segments.range(cursor.segment..).next() {
                    None => return Ok(None),
                    Some((&id, segment)) => {
                        if id != cursor.segment {
                            cursor.move_to(id);
                        }
                        (segment.committed, segment.sealed, segment.path.clone())
                    }
                }
            };
            if cursor.offset >= committed {
                if sealed {
                    cursor.move_to(cursor.segment + 1);
                    continue;
                }
                return Ok(None);
            }
            if cursor.file.is_none() {
                let file = open_private(&path, OpenOptions::new().read(true))
                    .map_err(io_error(format!("reading {}", path.display())))?;
                cursor.file = Some(file);
            }
            let file = cursor.file.as_ref().expect("opened above");
            let entry = read_entry(file, cursor.offset, committed)
                .map_err(io_error(format!("reading {}", path.display())))?;
            let Some((length, index, record)) = entry else {
                // Damage (reported at open): go on at the next valid entry, if any.
                match next_valid_entry(file, cursor.offset + 1, committed) {
                    Some(offset) => cursor.offset = offset,
                    None => cursor.move_to(cursor.segment + 1),
                }
                continue;
            };
            cursor.offset += length;
            let entry = EntryRef {
                segment: cursor.segment,
                index,
            };
            let acked = lock(&self.state)
                .segments
                .get(&cursor.segment)
                .is_none_or(|segment| segment.is_acked(index));
            if !acked {
                return Ok(Some((entry, record)));
            }
        }
    }

    /// Reads one record back (for the dead-letter file).
    pub fn read(&self, entry: EntryRef) -> Option<SpoolRecord> {
        let mut cursor = Cursor {
            segment: entry.segment,
            offset: 0,
            file: None,
        };
        while let Ok(Some((found, record))) = self.next(&mut cursor) {
            if found.segment != entry.segment {
                return None;
            }
            if found == entry {
                return Some(record);
            }
        }
        None
    }

    /// Whether the entry came from an earlier run (it is then a replay).
    pub fn is_recovered(&self, entry: EntryRef) -> bool {
        entry.segment < self.first_new_segment
    }

    /// The broker acknowledged `entry`: record it, and delete the segment once all is.
    pub fn ack(&self, entry: EntryRef) {
        let finished = {
            let mut state = lock(&self.state);
            let Some(segment) = state.segments.get_mut(&entry.segment) else {
                return;
            };
            if !segment.set_acked(entry.index) {
                return;
            }
            segment.pending = segment.pending.saturating_sub(1);
            let finished = segment.sealed && segment.pending == 0;
            if finished {
                state.segments.remove(&entry.segment);
            }
            finished
        };
        self.counters.acked.fetch_add(1, Ordering::Relaxed);
        if finished {
            self.delete_segment(entry.segment);
            return;
        }
        let mut ack_files = lock(&self.ack_files);
        let file = match ack_files.entry(entry.segment) {
            std::collections::btree_map::Entry::Occupied(open) => open.into_mut(),
            std::collections::btree_map::Entry::Vacant(slot) => {
                let path = segment_path(&self.settings.dir, entry.segment, "ack");
                match open_private(&path, OpenOptions::new().create(true).append(true)) {
                    Ok(file) => slot.insert(file),
                    // Unrecorded, the record is produced again after a restart (record_id).
                    Err(_) => return,
                }
            }
        };
        // Lost only with the process: the record is then produced again (record_id).
        let _ = file.write_all(&entry.index.to_le_bytes());
    }

    /// Deletes a segment every record of which is acknowledged (already out of `state`).
    fn delete_segment(&self, segment: u32) {
        lock(&self.ack_files).remove(&segment);
        let path = segment_path(&self.settings.dir, segment, "seg");
        let _ = fs::remove_file(&path);
        let _ = fs::remove_file(path.with_extension("ack"));
    }

    /// Moves a record the broker will never take to the dead-letter file, with the reason.
    pub fn dead_letter(&self, entry: EntryRef, reason: &str) -> Result<(), SpoolError> {
        let record = self.read(entry).unwrap_or_default();
        let line = serde_json::json!({
            "reason": reason,
            "record_id": record.record_id,
            "topic": record.topic,
            "key": record.key.as_deref().map(String::from_utf8_lossy),
            "payload": String::from_utf8_lossy(&record.payload),
            "segment": entry.segment,
            "index": entry.index,
        });
        let mut text = line.to_string();
        text.push('\n');
        {
            let mut file = lock(&self.dead_letter);
            if file.is_none() {
                let path = self.settings.dir.join(DEAD_LETTER_FILE);
                *file = Some(
                    open_private(&path, OpenOptions::new().create(true).append(true))
                        .map_err(io_error(format!("opening {}", path.display())))?,
                );
            }
            let file = file.as_mut().expect("opened above");
            file.write_all(text.as_bytes())
                .and_then(|()| file.sync_data())
                .map_err(io_error("writing the dead-letter file"))?;
        }
        self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
        self.ack(entry);
        Ok(())
    }

    pub fn dead_letter_path(&self) -> PathBuf {
        self.settings.dir.join(DEAD_LETTER_FILE)
    }

    /// With `spool_sync = interval`, forces appended records to disk when the interval
    /// has passed. Runs on the module's thread, never under the writer's lock.
    pub fn sync_if_due(&self) {
        if self.settings.sync != SyncPolicy::Interval {
            return;
        }
        {
            let mut last = lock(&self.last_sync);
            if last.elapsed() < self.settings.sync_interval {
                return;
            }
            *last = Instant::now();
        }
        self.sync_now();
    }

    /// Forces everything appended so far to disk.
    pub fn sync_now(&self) {
        let current = lock(&self.writer).file.try_clone();
        let unsynced = std::mem::take(&mut lock(&self.state).unsynced);
        for file in unsynced.iter().chain(current.as_ref().ok()) {
            let _ = file.sync_data();
        }
    }

    /// Records appended and not yet acknowledged, and the bytes of the segments that
    /// hold them.
    pub fn depth(&self) -> (u64, u64) {
        let state = lock(&self.state);
        let records = state.segments.values().map(|s| u64::from(s.pending)).sum();
        (records, state.held_bytes())
    }

    /// Age in seconds of the oldest segment holding undelivered records (an upper bound
    /// on the age of the oldest undelivered record).
    pub fn oldest_undelivered_age(&self) -> Option<u64> {
        let state = lock(&self.state);
        state
            .segments
            .values()
            .find(|s| s.pending > 0)
            .map(|s| now_secs().saturating_sub(s.first_capture))
    }
}

/// A reader's position in the spool.
pub struct Cursor {
    segment: u32,
    offset: u64,
    file: Option<File>,
}

impl Cursor {
    fn move_to(&mut self, segment: u32) {
        self.segment = segment;
        self.offset = 0;
        self.file = None;
    }
}

fn new_segment_state(dir: &Path, segment: u32) -> Segment {
    Segment {
        path: segment_path(dir, segment, "seg"),
        committed: 0,
        sealed: false,
        pending: 0,
        acked: Vec::new(),
        first_capture: now_secs(),
    }
}

fn removable(segments: &BTreeMap<u32, Segment>) -> Vec<u32> {
    segments
        .iter()
        .filter(|(_, s)| s.sealed && s.pending == 0)
        .map(|(&id, _)| id)
        .collect()
}

fn prepare_folder(dir: &Path) -> Result<(), SpoolError> {
    match fs::symlink_metadata(dir) {
        Ok(meta) if meta.file_type().is_symlink() || !meta.is_dir() => {
            return Err(SpoolError::NotAFolder { dir: dir.into() })
        }
        Ok(meta) => {
            if meta.mode() & 0o077 != 0 {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                    .map_err(io_error(format!("making {} private", dir.display())))?;
            }
        }
        Err(_) => DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_error(format!("creating spool folder {}", dir.display())))?,
    }
    Ok(())
}

fn take_lock(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join("lock");
    let mut file = open_private(
        &path,
        OpenOptions::new().create(true).read(true).write(true),
    )
    .map_err(io_error(format!("opening {}", path.display())))?;
    // SAFETY: flock on a descriptor we own; no memory is shared with the kernel call.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if !locked {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        return Err(SpoolError::Locked {
            dir: dir.into(),
            holder: format!("pid {}", holder.trim()),
        });
    }
    let _ = file.set_len(0);
    let _ = file.write_all(std::process::id().to_string().as_bytes());
    Ok(file)
}

fn open_segment(dir: &Path, segment: u32) -> Result<Writer, SpoolError> {
    let path = segment_path(dir, segment, "seg");
    let file = open_private(&path, OpenOptions::new().create_new(true).append(true))
        .map_err(io_error(format!("creating {}", path.display())))?;
    Ok(Writer {
        segment,
        file,
        bytes: 0,
        next_index: 0,
        buffer: Vec::with_capacity(2048),
    })
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Appends one framed entry to `out`.
fn encode_entry(record: &NewRecord<'_>, index: u32, captured: u64, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&captured.to_le_bytes());
    put_bytes(out, record.record_id.as_bytes());
    put_bytes(out, record.topic.as_bytes());
    match record.key {
        Some(key) => {
            out.push(1);
            put_bytes(out, key);
        }
        None => out.push(0),
    }
    out.extend_from_slice(&(record.headers.len() as u32).to_le_bytes());
    for (name, value) in record.headers {
        put_bytes(out, name.as_bytes());
        put_bytes(out, value);
    }
    put_bytes(out, record.payload);
    let body_len = (out.len() - start - HEADER_LEN) as u32;
    let crc = crc32fast::hash(&out[start + HEADER_LEN..]);
    out[start..start + 4].copy_from_slice(&MAGIC.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&body_len.to_le_bytes());
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

struct BodyReader<'a>(&'a [u8]);

impl BodyReader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.u32()? as usize;
        self.take(n).map(<[u8]>::to_vec)
    }

    fn text(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?).ok()
    }
}

/// Decodes a body whose checksum matched: (index, capture time, record).
fn decode_body(body: &[u8]) -> Option<(u32, u64, SpoolRecord)> {
    let mut reader = BodyReader(body);
    let index = reader.u32()?;
    let captured = reader.u64()?;
    let record_id = reader.text()?;
    let topic = reader.text()?;
    let key = match reader.take(1)?[0] {
        0 => None,
        _ => Some(reader.bytes()?),
    };
    let header_count = reader.u32()?;
    let mut headers = Vec::new();
    for _ in 0..header_count {
        headers.push((reader.text()?, reader.bytes()?));
    }
    let payload = reader.bytes()?;
    Some((
        index,
        captured,
        SpoolRecord {
            record_id,
            topic,
            key,
            headers,
            payload,
        },
    ))
}

/// Reads the entry at `offset`: `Ok(None)` when it is damaged.
fn read_entry(file: &File, offset: u64, limit: u64) -> io::Result<Option<(u64, u32, SpoolRecord)>> {
    let mut header = [0u8; HEADER_LEN];
    file.read_exact_at(&mut header, offset)?;
    let (magic, length, crc) = parse_header(&header);
    if magic != MAGIC || length > MAX_BODY || offset + HEADER_LEN as u64 + u64::from(length) > limit
    {
        return Ok(None);
    }
    let mut body = vec![0; length as usize];
    file.read_exact_at(&mut body, offset + HEADER_LEN as u64)?;
    if crc32fast::hash(&body) != crc {
        return Ok(None);
    }
    Ok(decode_body(&body)
        .map(|(index, _, record)| (HEADER_LEN as u64 + u64::from(length), index, record)))
}

/// The offset of the first valid entry at or after `from`, below `limit`.
fn next_valid_entry(file: &File, from: u64, limit: u64) -> Option<u64> {
    let mut rest = vec![0; limit.checked_sub(from)? as usize];
    file.read_exact_at(&mut rest, from).ok()?;
    let scan = scan_segment(&rest);
    let first = scan.first_entry_offset?;
    Some(from + first)
}

fn parse_header(header: &[u8; HEADER_LEN]) -> (u32, u32, u32) {
    let word = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().expect("4 bytes"));
    (word(0), word(4), word(8))
}

/// What one segment file holds: valid entries (offset, index, capture time), the end of
/// the last valid entry, and the damage found.
struct Scan {
    entries: Vec<(u32, u64)>,
    first_entry_offset: Option<u64>,
    valid_end: u64,
    torn_tail: bool,
    damaged: u64,
}

fn scan_segment(data: &[u8]) -> Scan {
    let mut scan = Scan {
        entries: Vec::new(),
        first_entry_offset: None,
        valid_end: 0,
        torn_tail: false,
        damaged: 0,
    };
    let mut offset = 0usize;
    let mut in_damage = false;
    while offset < data.len() {
        let rest = &data[offset..];
        if rest.len() < HEADER_LEN {
            scan.torn_tail = !in_damage;
            break;
        }
        let (magic, length, crc) = parse_header(rest[..HEADER_LEN].try_into().expect("header"));
        let end = HEADER_LEN + length as usize;
        let valid = magic == MAGIC && length <= MAX_BODY;
        if valid && rest.len() < end {
            // A whole header with its body cut short: the write a crash interrupted.
            scan.torn_tail = !in_damage;
            break;
        }
        let body = valid.then(|| &rest[HEADER_LEN..end]);
        match body
            .filter(|body| crc32fast::hash(body) == crc)
            .and_then(decode_body)
        {
            Some((index, captured, _)) => {
                scan.first_entry_offset.get_or_insert(offset as u64);
                scan.entries.push((index, captured));
                offset += end;
                scan.valid_end = offset as u64;
                in_damage = false;
            }
            None => {
                if !in_damage {
                    scan.damaged += 1;
                    in_damage = true;
                }
                offset += 1;
            }
        }
    }
    scan
}

fn read_acks(path: &Path) -> Vec<u32> {
    let Ok(mut file) = open_private(path, OpenOptions::new().read(true)) else {
        return Vec::new();
    };
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect()
}

/// Scans the segments an earlier run left: cuts torn tails, counts damage, and keeps
/// every segment with undelivered records.
fn recover(dir: &Path) -> Result<(BTreeMap<u32, Segment>, Recovery), SpoolError> {
    let mut recovery = Recovery::default();
    let mut segments = BTreeMap::new();
    let listing = fs::read_dir(dir).map_err(io_error(format!("listing {}", dir.display())))?;
    let mut ids: Vec<u32> = listing
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            name.strip_suffix(".seg")?.parse().ok()
        })
        .collect();
    ids.sort_unstable();
    for id in ids {
        let path = segment_path(dir, id, "seg");
        let data = {
            let mut file = open_private(&path, OpenOptions::new().read(true))
                .map_err(io_error(format!("reading {}", path.display())))?;
            let mut data = Vec::new();
            file.read_to_end(&mut data)
                .map_err(io_error(format!("reading {}", path.display())))?;
            data
        };
        let scan = scan_segment(&data);
        if scan.torn_tail {
            recovery.torn_tails += 1;
            let file = open_private(&path, OpenOptions::new().write(true))
                .map_err(io_error(format!("repairing {}", path.display())))?;
            file.set_len(scan.valid_end)
                .map_err(io_error(format!("repairing {}", path.display())))?;
        }
        recovery.damaged += scan.damaged;
        let mut segment = Segment {
            path: path.clone(),
            committed: if scan.torn_tail {
                scan.valid_end
            } else {
                data.len() as u64
            },
            sealed: true,
            pending: 0,
            acked: Vec::new(),
            first_capture: scan.entries.first().map_or(0, |&(_, captured)| captured),
        };
        for index in read_acks(&path.with_extension("ack")) {
            segment.set_acked(index);
        }
        segment.pending = scan
            .entries
            .iter()
            .filter(|&&(index, _)| !segment.is_acked(index))
            .count() as u32;
        if segment.pending == 0 {
            let _ = fs::remove_file(&path);
            let _ = fs::remove_file(path.with_extension("ack"));
            continue;
        }
        recovery.records += u64::from(segment.pending);
        segments.insert(id, segment);
    }
    Ok((segments, recovery))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "cdr_kafka-spool-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = fs::remove_dir_all(&path);
            Self(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn settings(dir: &Path) -> SpoolSettings {
        SpoolSettings {
            dir: dir.into(),
            sync: SyncPolicy::Never,
            sync_interval: Duration::from_secs(1),
            max_bytes: 0,
        }
    }

    fn record(n: usize) -> SpoolRecord {
        SpoolRecord {
            record_id: format!("id-{n}"),
            topic: "asterisk_cdr".into(),
            key: (n % 2 == 0).then(|| format!("linked-{n}").into_bytes()),
            headers: vec![("entity_id".into(), b"00:11:22:33:44:55".to_vec())],
            payload: format!("{{\"n\":{n}}}").into_bytes(),
        }
    }

    fn drain(spool: &Spool) -> Vec<(EntryRef, SpoolRecord)> {
        let mut cursor = spool.cursor();
        let mut out = Vec::new();
        while let Some(next) = spool.next(&mut cursor).unwrap() {
            out.push(next);
        }
        out
    }

    #[test]
    fn records_come_back_in_order_and_survive_reopening() {
        let dir = TempDir::new("order");
        {
            let spool = Spool::open(settings(&dir.0)).unwrap();
            for n in 0..100 {
                spool.append(&record(n)).unwrap();
            }
            let read: Vec<SpoolRecord> = drain(&spool).into_iter().map(|(_, r)| r).collect();
            assert_eq!(read, (0..100).map(record).collect::<Vec<_>>());
        }
        let spool = Spool::open(settings(&dir.0)).unwrap();
        assert_eq!(spool.recovery.records, 100);
        let read = drain(&spool);
        assert_eq!(read.len(), 100);
        assert!(spool.is_recovered(read[0].0));
        assert_eq!(read[42].1, record(42));
    }

    #[test]
    fn acknowledged_records_are_not_replayed_and_segments_are_deleted() {
        let dir = TempDir::new("ack");
        {
            let spool = Spool::open(settings(&dir.0)).unwrap();
            let entries: Vec<EntryRef> =
                (0..10).map(|n| spool.append(&record(n)).unwrap()).collect();
            for entry in &entries[..7] {
                spool.ack(*entry);
            }
            assert_eq!(spool.depth().0, 3);
        }
        let spool = Spool::open(settings(&dir.0)).unwrap();
        let ids: Vec<String> = drain(&spool)
            .into_iter()
            .map(|(_, r)| r.record_id)
            .collect();
        assert_eq!(ids, vec!["id-7", "id-8", "id-9"]);
        for (entry, _) in drain(&spool) {
            spool.ack(entry);
        }
        assert_eq!(spool.depth().0, 0);
        drop(spool);
        let spool = Spool::open(settings(&dir.0)).unwrap();
        assert_eq!(spool.recovery.records, 0);
        let segments = fs::read_dir(&dir.0)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".seg")
            })
            .count();
        assert_eq!(segments, 1, "only the new, empty segment is left");
    }

    fn only_segment(dir: &Path) -> PathBuf {
        let mut segments: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .filter(|p| fs::metadata(p).unwrap().len() > 0)
            .collect();
        assert_eq!(segments.len(), 1);
        segments.pop().unwrap()
    }

    #[test]
    fn torn_tail_is_cut_off_and_everything_before_survives() {
        let dir = TempDir::new("torn");
        {
            let spool = Spool::open(settings(&dir.0)).unwrap();
            for n in 0..5 {
                spool.append(&record(n)).unwrap();
            }
        }
        let path = only_segment(&dir.0);
        let length = fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(length - 7)
            .unwrap();
        let spool = Spool::open(settings(&dir.0)).unwrap();
        assert_eq!(spool.recovery.torn_tails, 1);
        assert_eq!(spool.recovery.records, 4);
        let ids: Vec<String> = drain(&spool)
            .into_iter()
            .map(|(_, r)| r.record_id)
            .collect();
        assert_eq!(ids, vec!["id-0", "id-1", "id-2", "id-3"]);
    }

    #[test]
    fn flipped_bit_skips_that_entry_only() {
        let dir = TempDir::new("bit");
        {
            let spool = Spool::open(settings(&dir.0)).unwrap();
            for n in 0..5 {
                spool.append(&record(n)).unwrap();
            }
        }
        let path = only_segment(&dir.0);
        let mut data = fs::read(&path).unwrap();
        let second = data
            .windows(4)
            .enumerate()
            .filter(|(_, w)| *w == MAGIC.to_le_bytes())
            .nth(2)
            .unwrap()
            .0;
        data[second + HEADER_LEN + 20] ^= 0x10;
        fs::write(&path, &data).unwrap();
        let spool = Spool::open(settings(&dir.0)).unwrap();
        assert_eq!(spool.recovery.damaged, 1);
        assert_eq!(spool.recovery.torn_tails, 0);
        let ids: Vec<String> = drain(&spool)
            .into_iter()
            .map(|(_, r)| r.record_id)
            .collect();
        assert_eq!(ids, vec!["id-0", "id-1", "id-3", "id-4"]);
    }

    #[test]
    fn second_instance_on_the_same_folder_is_refused() {
        let dir = TempDir::new("lock");
        let _first = Spool::open(settings(&dir.0)).unwrap();
        let error = Spool::open(settings(&dir.0)).err().expect("locked");
        let text = error.to_string();
        assert!(text.contains("in use by another cdr_kafka"), "{text}");
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
    }

    #[test]
    fn folder_and_files_are_private_and_symlinks_refused() {
        let dir = TempDir::new("perm");
        let spool = Spool::open(settings(&dir.0)).unwrap();
        spool.append(&record(1)).unwrap();
        assert_eq!(fs::metadata(&dir.0).unwrap().mode() & 0o777, 0o700);
        assert_eq!(
            fs::metadata(only_segment(&dir.0)).unwrap().mode() & 0o777,
            0o600
        );
        drop(spool);
        let link = TempDir::new("link");
        std::os::unix::fs::symlink(&dir.0, &link.0).unwrap();
        let error = Spool::open(settings(&link.0))
            .err()
            .expect("symlink refused");
        assert!(error.to_string().contains("symlink"), "{error}");
        let _ = fs::remove_file(&link.0);
    }

    #[test]
    fn full_spool_refuses_and_counts() {
        let dir = TempDir::new("full");
        let spool = Spool::open(SpoolSettings {
            max_bytes: 500,
            ..settings(&dir.0)
        })
        .unwrap();
        let results: Vec<bool> = (0..20).map(|n| spool.append(&record(n)).is_ok()).collect();
        assert!(results[0]);
        assert!(!results[19]);
        assert!(spool.counters.refused.load(Ordering::Relaxed) > 0);
        assert!(spool.depth().1 <= 500);
        // Delivered records make room again.
        let mut cursor = spool.cursor();
        while let Some((entry, _)) = spool.next(&mut cursor).unwrap() {
            spool.ack(entry);
        }
        assert!(spool.append(&record(99)).is_ok());
    }

    #[test]
    fn dead_letter_keeps_the_record_and_its_reason() {
        let dir = TempDir::new("dead");
        let spool = Spool::open(settings(&dir.0)).unwrap();
        let entry = spool.append(&record(3)).unwrap();
        spool
            .dead_letter(entry, "Broker: Message size too large")
            .unwrap();
        assert_eq!(spool.depth().0, 0);
        let text = fs::read_to_string(spool.dead_letter_path()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["reason"], "Broker: Message size too large");
        assert_eq!(line["record_id"], "id-3");
        assert_eq!(line["payload"], "{\"n\":3}");
    }

    #[test]
    fn opaque_round_trips() {
        let entry = EntryRef {
            segment: 123_456,
            index: 4_000_000_000,
        };
        assert_eq!(EntryRef::from_opaque(entry.to_opaque()), entry);
    }
}
