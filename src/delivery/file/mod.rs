//! The file destination: records appended to a local file, one a line (the payload as
//! the caller formatted it, then `\n`), rotated by GnuGk's [FileAcct] rules.
//!
//! Threads: the destination is owned by its feeder thread. `offer` only copies the
//! payload into an in-memory batch; `collect` (or `flush`) writes the batch with one
//! `write` per file and syncs it as the spool's policy says, then reports the records
//! delivered. A failed write is cut back off the file, so no torn line stays, and the
//! destination is broken until `rebuild` reopens the file.
//!
//! Parts: `rotation` (when a new file starts), `open` (folders, modes, owners, counting
//! an existing file), `clock` (local time, injectable for the tests).

pub mod clock;
mod open;
pub mod rotation;
#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{Datelike, NaiveDateTime, Timelike};

pub use clock::{Clock, SystemClock};
pub use rotation::{Rotation, RotationError};

use super::destination::{Destination, Offer, Outcome};
use super::log::io::Io;
use super::log::StoredRecord;
use open::Opened;

/// A batch is written once it holds this many bytes...
const MAX_BATCH_BYTES: usize = 4 << 20;
/// ...or this many records; until then `offer` says `Full`.
const MAX_BATCH_RECORDS: usize = 10_000;
/// Rotated names tried for one moment (`FILE.STAMP`, `FILE.STAMP.1`, ...).
const MAX_ROTATED_SUFFIX: u32 = 1000;

/// When written records are forced to disk: the spool's policy, applied to the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileSync {
    /// `fdatasync` after every write, before the records are reported delivered.
    Always,
    /// `fdatasync` at most this often, at the first pass after it has passed.
    Interval(Duration),
    /// The kernel writes back when it likes.
    Never,
}

/// What a file destination is built from.
#[derive(Clone)]
pub struct FileSettings {
    /// The configuration section's name.
    pub name: String,
    /// The file records are appended to (absolute).
    pub path: PathBuf,
    pub rotation: Rotation,
    pub sync: FileSync,
    pub clock: Arc<dyn Clock>,
}

/// Why the file cannot be opened (at start, at a rebuild, at a rotation).
#[derive(Debug)]
pub enum FileError {
    /// The path is not absolute or names no file.
    BadPath {
        path: PathBuf,
        problem: &'static str,
    },
    /// A folder on the way is missing and cannot be created, or is not a folder.
    Folder { path: PathBuf, error: io::Error },
    /// The file cannot be opened or created for appending.
    Open { path: PathBuf, error: io::Error },
    /// The existing file cannot be read (to count its lines) or its last line ended.
    Read { path: PathBuf, error: io::Error },
    /// The existing file was due for rotation and could not be rotated.
    Rotate { path: PathBuf, error: String },
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadPath { path, problem } => {
                write!(f, "file path '{}': {problem}", path.display())
            }
            Self::Folder { path, error } => {
                write!(
                    f,
                    "cannot create or use the folder {}: {error}",
                    path.display()
                )
            }
            Self::Open { path, error } => {
                write!(f, "cannot open {} for appending: {error}", path.display())
            }
            Self::Read { path, error } => write!(
                f,
                "cannot read {} to count its lines or end its last line: {error}",
                path.display()
            ),
            Self::Rotate { path, error } => write!(f, "cannot rotate {}: {error}", path.display()),
        }
    }
}

impl std::error::Error for FileError {}

/// The file being appended to.
struct Current {
    file: File,
    /// (device, inode): the file at the path may be moved or deleted behind our back.
    id: (u64, u64),
    lines: u64,
    bytes: u64,
    /// The clock rotation moment this file runs until.
    next_rotation: Option<NaiveDateTime>,
}

/// Records offered and not yet written: their lines back to back.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    /// (sequence number, end offset in `bytes`, lines).
    records: Vec<(u64, usize, u64)>,
}

impl Batch {
    fn clear(&mut self) {
        self.bytes.clear();
        self.records.clear();
    }

    fn start(&self, index: usize) -> usize {
        index.checked_sub(1).map_or(0, |i| self.records[i].1)
    }
}

pub struct FileDestination {
    settings: FileSettings,
    io: Io,
    dir: PathBuf,
    current: Option<Current>,
    batch: Batch,
    /// Outcomes of records written by `flush`, for the next `collect`.
    ready: Vec<(u64, Outcome)>,
    broken: Option<String>,
    last_error: Option<String>,
    /// A failed write that could not be cut back off: (file, length) to cut at reopening.
    cut_back: Option<((u64, u64), u64)>,
    unsynced: bool,
    folder_unsynced: bool,
    last_sync: Instant,
}

fn stamp(t: NaiveDateTime) -> String {
    format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

impl FileDestination {
    /// Opens (creating when missing) the file and its folders; an existing file is
    /// measured and, if a clock rotation passed since it was last written, rotated.
    pub fn new(settings: FileSettings) -> Result<Self, FileError> {
        Self::with_io(settings, Io::real())
    }

    /// As `new`, with the writes, cuts, syncs and renames going through `io`.
    pub(crate) fn with_io(settings: FileSettings, io: Io) -> Result<Self, FileError> {
        let dir = Self::check(&settings.path)?;
        let mut destination = Self {
            settings,
            io,
            dir,
            current: None,
            batch: Batch::default(),
            ready: Vec::new(),
            broken: None,
            last_error: None,
            cut_back: None,
            unsynced: false,
            folder_unsynced: false,
            last_sync: Instant::now(),
        };
        destination.open_current()?;
        Ok(destination)
    }

    /// What `new` refuses before it touches the disk; the file's folder otherwise.
    pub fn check(path: &Path) -> Result<PathBuf, FileError> {
        let bad = |problem| FileError::BadPath {
            path: path.to_path_buf(),
            problem,
        };
        if !path.is_absolute() {
            return Err(bad("not an absolute path"));
        }
        match (path.parent(), path.file_name()) {
            (Some(dir), Some(_)) => Ok(dir.to_path_buf()),
            _ => Err(bad("names a folder, not a file")),
        }
    }

    fn path(&self) -> &Path {
        &self.settings.path
    }

    fn now(&self) -> NaiveDateTime {
        self.settings.clock.now().naive_local()
    }

    /// Opens the file at the path, after cutting off what a failed write left, and
    /// rotates it at once if it is from before the last rotation moment.
    fn open_current(&mut self) -> Result<(), FileError> {
        let known = self.current.take().map(|c| (c.id, c.bytes, c.lines));
        self.cut_back_failed_write()?;
        let folder = open::ensure_folder(&self.dir)?;
        let opened = open::open_append(self.path(), &folder, known)?;
        let now = self.now();
        let since = opened
            .modified
            .map_or(now, |m| self.settings.clock.local(m));
        self.install(opened, since);
        if self.rotation_due(now) {
            self.rotate(now).map_err(|error| FileError::Rotate {
                path: self.settings.path.clone(),
                error,
            })?;
        }
        Ok(())
    }

    fn install(&mut self, opened: Opened, since: NaiveDateTime) {
        self.folder_unsynced |= opened.created;
        self.current = Some(Current {
            file: opened.file,
            id: opened.id,
            lines: opened.lines,
            bytes: opened.bytes,
            next_rotation: self.settings.rotation.next_after(since),
        });
        if self.settings.sync == FileSync::Always && self.folder_unsynced {
            // A new file's name must be durable before its records count as delivered.
            if let Err(error) = self.sync_folder() {
                self.last_error = Some(error);
            }
        }
    }

    fn cut_back_failed_write(&mut self) -> Result<(), FileError> {
        let Some((id, len)) = self.cut_back else {
            return Ok(());
        };
        let path = self.path();
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if (meta.dev(), meta.ino()) == id && meta.len() > len {
                let cut = self
                    .io
                    .open_write(path)
                    .and_then(|file| self.io.set_len(&file, len));
                cut.map_err(|error| FileError::Open {
                    path: path.to_path_buf(),
                    error,
                })?;
            }
        }
        self.cut_back = None;
        Ok(())
    }

    fn rotation_due(&self, now: NaiveDateTime) -> bool {
        self.current
            .as_ref()
            .and_then(|c| c.next_rotation)
            .is_some_and(|at| at <= now)
    }

    /// Renames the current file to `FILE.YYYYMMDD-HHMMSS` (never over an existing
    /// file) and starts a new one. An empty file is kept, only its period renewed.
    fn rotate(&mut self, now: NaiveDateTime) -> Result<(), String> {
        let path = self.settings.path.clone();
        let Some(current) = self.current.as_mut() else {
            return Err(format!("{} is not open", path.display()));
        };
        if current.bytes == 0 {
            current.next_rotation = self.settings.rotation.next_after(now);
            return Ok(());
        }
        if self.settings.sync != FileSync::Never {
            self.io.sync(&current.file).map_err(|error| {
                format!("cannot sync {} before rotating it: {error}", path.display())
            })?;
        }
        let target = self.rotated_name(now)?;
        self.io.rename(&path, &target).map_err(|error| {
            format!(
                "cannot rename {} to {}: {error}",
                path.display(),
                target.display()
            )
        })?;
        self.current = None;
        self.unsynced = false;
        self.folder_unsynced = true;
        let fresh = open::ensure_folder(&self.dir)
            .and_then(|folder| open::open_append(&path, &folder, None))
            .map_err(|error| error.to_string())?;
        self.install(fresh, now);
        if self.settings.sync != FileSync::Never && self.folder_unsynced {
            self.sync_folder()?;
        }
        Ok(())
    }

    fn rotated_name(&self, now: NaiveDateTime) -> Result<PathBuf, String> {
        let base = with_suffix(self.path(), &format!(".{}", stamp(now)));
        let free = |candidate: &PathBuf| matches!(std::fs::symlink_metadata(candidate), Err(e) if e.kind() == io::ErrorKind::NotFound);
        if free(&base) {
            return Ok(base);
        }
        (1..=MAX_ROTATED_SUFFIX)
            .map(|n| with_suffix(&base, &format!(".{n}")))
            .find(free)
            .ok_or_else(|| format!("{}.1 to .{MAX_ROTATED_SUFFIX} all exist", base.display()))
    }

    fn sync_folder(&mut self) -> Result<(), String> {
        self.io
            .sync_dir(&self.dir)
            .map_err(|error| format!("cannot sync the folder {}: {error}", self.dir.display()))?;
        self.folder_unsynced = false;
        Ok(())
    }

    /// Reopens the path if the file there is not the one open (moved or deleted).
    fn check_current(&mut self) -> Result<(), String> {
        let same = match (&self.current, std::fs::symlink_metadata(self.path())) {
            (Some(current), Ok(meta)) => (meta.dev(), meta.ino()) == current.id,
            _ => false,
        };
        if !same {
            if let (Some(current), true) = (&self.current, self.unsynced) {
                // Its records were reported delivered: give them their sync, if it can be had.
                let _ = self.io.sync(&current.file);
            }
            self.open_current().map_err(|error| error.to_string())?;
        }
        Ok(())
    }

    /// How many records from `start` fit in the current file (at least one if it is
    /// empty: a record is never split).
    fn fitting(&self, start: usize) -> usize {
        let Some(current) = &self.current else {
            return start;
        };
        let (mut lines, mut bytes) = (current.lines, current.bytes);
        let mut end = start;
        for (index, &(_, record_end, record_lines)) in
            self.batch.records.iter().enumerate().skip(start)
        {
            let record_bytes = (record_end - self.batch.start(index)) as u64;
            let over = match self.settings.rotation {
                Rotation::Lines(most) => lines + record_lines > most,
                Rotation::Size(most) => bytes + record_bytes > most,
                _ => false,
            };
            if over && (lines > 0 || bytes > 0) {
                break;
            }
            lines += record_lines;
            bytes += record_bytes;
            end = index + 1;
        }
        end
    }

    /// Writes records `start..end` with one write (and a sync with `Always`); on
    /// failure cuts the file back to its length before.
    fn write_chunk(&mut self, start: usize, end: usize) -> Result<(), String> {
        let path = self.settings.path.display().to_string();
        let Some(current) = self.current.as_mut() else {
            return Err(format!("{path} is not open"));
        };
        let before = current
            .file
            .metadata()
            .map_err(|error| format!("cannot stat {path}: {error}"))?
            .len();
        let bytes = &self.batch.bytes[self.batch.start(start)..self.batch.start(end)];
        let mut written = self.io.append(&current.file, bytes);
        if written.is_ok() && self.settings.sync == FileSync::Always {
            written = self.io.sync(&current.file);
        }
        if let Err(error) = written {
            let mut reason = format!("cannot write to {path}: {error}");
            if let Err(cut) = self.io.set_len(&current.file, before) {
                self.cut_back = Some((current.id, before));
                reason.push_str(&format!(
                    " (and cutting it back to {before} bytes failed: {cut})"
                ));
            }
            return Err(reason);
        }
        current.bytes = before + bytes.len() as u64;
        current.lines += self.batch.records[start..end]
            .iter()
            .map(|&(_, _, lines)| lines)
            .sum::<u64>();
        self.unsynced |= self.settings.sync != FileSync::Always;
        Ok(())
    }

    /// Writes the batch, rotating where due; reports each record (Retry from the first
    /// one not written on).
    fn write_batch(&mut self, outcomes: &mut Vec<(u64, Outcome)>) {
        if self.batch.records.is_empty() || self.broken.is_some() {
            return;
        }
        let mut done = 0;
        let result = self.write_records(outcomes, &mut done);
        if let Err(reason) = result {
            outcomes.extend(
                self.batch.records[done..]
                    .iter()
                    .map(|&(seq, ..)| (seq, Outcome::Retry)),
            );
            self.last_error = Some(reason.clone());
            self.broken = Some(reason);
        }
        self.batch.clear();
    }

    fn write_records(
        &mut self,
        outcomes: &mut Vec<(u64, Outcome)>,
        done: &mut usize,
    ) -> Result<(), String> {
        let now = self.now();
        self.check_current()?;
        if self.rotation_due(now) {
            self.rotate(now)?;
        }
        while *done < self.batch.records.len() {
            let end = self.fitting(*done);
            if end == *done {
                self.rotate(now)?;
                continue;
            }
            self.write_chunk(*done, end)?;
            outcomes.extend(
                self.batch.records[*done..end]
                    .iter()
                    .map(|&(seq, ..)| (seq, Outcome::Delivered)),
            );
            *done = end;
        }
        Ok(())
    }

    /// With `Interval`: syncs what was written once the interval has passed (`force`:
    /// now).
    fn sync_if_due(&mut self, force: bool) {
        let FileSync::Interval(interval) = self.settings.sync else {
            return;
        };
        if !(self.unsynced || self.folder_unsynced)
            || !(force || self.last_sync.elapsed() >= interval)
        {
            return;
        }
        self.last_sync = Instant::now();
        let mut result = Ok(());
        if let (Some(current), true) = (&self.current, self.unsynced) {
            result = self
                .io
                .sync(&current.file)
                .map_err(|error| format!("cannot sync {}: {error}", self.settings.path.display()));
        }
        self.unsynced = false;
        if result.is_ok() && self.folder_unsynced {
            result = self.sync_folder();
        }
        if let Err(reason) = result {
            // The kernel may have dropped what it could not write: start on a fresh open.
            self.last_error = Some(reason.clone());
            self.broken = Some(reason);
        }
    }
}

impl Destination for FileDestination {
    fn name(&self) -> &str {
        &self.settings.name
    }

    fn offer(&mut self, record: &StoredRecord<'_>) -> Offer {
        let batch = &mut self.batch;
        let len = record.payload.len() + 1;
        if self.broken.is_some()
            || (!batch.records.is_empty()
                && (batch.records.len() >= MAX_BATCH_RECORDS
                    || batch.bytes.len() + len > MAX_BATCH_BYTES))
        {
            return Offer::Full;
        }
        batch.bytes.extend_from_slice(record.payload);
        batch.bytes.push(b'\n');
        let lines = 1 + record.payload.iter().filter(|&&b| b == b'\n').count() as u64;
        batch.records.push((record.seq, batch.bytes.len(), lines));
        Offer::Taken
    }

    fn collect(&mut self, outcomes: &mut Vec<(u64, Outcome)>) {
        outcomes.append(&mut self.ready);
        self.write_batch(outcomes);
        self.sync_if_due(false);
    }

    fn broken(&mut self) -> Option<String> {
        self.broken.clone()
    }

    fn rebuild(&mut self) -> Result<(), String> {
        self.batch.clear();
        self.open_current().map_err(|error| error.to_string())?;
        self.broken = None;
        Ok(())
    }

    fn in_flight(&self) -> u64 {
        (self.batch.records.len() + self.ready.len()) as u64
    }

    fn flush(&mut self, _timeout: Duration) {
        let mut ready = std::mem::take(&mut self.ready);
        self.write_batch(&mut ready);
        self.ready = ready;
        self.sync_if_due(true);
    }

    fn describe(&self) -> String {
        let mut line = format!(
            "file {} ({})",
            self.path().display(),
            self.settings.rotation
        );
        match &self.current {
            Some(current) => {
                line.push_str(&format!(", {} lines in the current file", current.lines))
            }
            None => line.push_str(", no file open"),
        }
        if let Some(reason) = &self.broken {
            line.push_str(&format!(" — broken ({reason})"));
        } else if let Some(error) = &self.last_error {
            line.push_str(&format!(" — last error: {error}"));
        }
        line
    }
}
