//! The dead-letter file: records a destination will never take, one JSON line each,
//! with the reason and every field needed to publish them by hand.
//!
//! Shared by every feeder (`Arc`); one mutex serialises the writes and owns the open
//! file with what is known of it. A line counts only once it is synced; the feeder
//! confirms the record in its ledger after that.
//!
//! Damage. A write or sync that fails leaves the file cut back to its length before
//! that write (at once, or before the next write when the cut fails too): never a
//! partial line for the next one to be glued to, and never a line whose sync failed
//! (after a failed fsync the kernel may have dropped the pages: the retry writes the
//! line again, after the cut). At the first write after a start, a partial last line
//! (a crash mid-write: that record was not confirmed, so it comes again) is cut off,
//! and the file is synced before its lines are trusted.
//!
//! Across restarts. A crash between a dead letter and its ledger's ack makes the next
//! start refuse the record again: the first write reads back the last `TAIL_BYTES`
//! and skips a record already there for the same destination (same `seq` and
//! `record_id`). Only a letter whose ack was lost can come again: the feeder writes its
//! ledger after every pass and before it stops, so after a crash only the last pass's
//! letters can, after a power loss those since the last ledger sync
//! (`spool_sync_interval_ms`). Each line is synced on its own, so such a window holds a
//! few thousand lines at most, well within the tail read back.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::log::io::Io;
use super::log::StoredRecord;

pub const DEAD_LETTER_FILE: &str = "dead-letter.jsonl";

/// How much of the file's end is read back at the first write (over 10,000 lines).
const TAIL_BYTES: u64 = 16 << 20;

/// A line already in the file: its record and the destinations it names.
struct Written {
    record_id: String,
    destinations: Vec<String>,
}

#[derive(Default)]
struct State {
    /// Opened (and repaired) at the first write.
    file: Option<File>,
    /// The file's length up to its last synced line.
    len: u64,
    /// A failed write or sync may have left bytes past `len`.
    damaged: bool,
    /// The last line could not be cut off: the next line starts with a newline.
    unterminated: bool,
    /// The letters found in the tail at open and written since, by `seq`, while the log
    /// keeps their records (`forget_below`).
    written: HashMap<u64, Vec<Written>>,
}

pub struct DeadLetters {
    path: PathBuf,
    io: Io,
    state: Mutex<State>,
}

impl DeadLetters {
    pub fn new(dir: &Path, io: Io) -> Self {
        Self {
            path: dir.join(DEAD_LETTER_FILE),
            io,
            state: Mutex::new(State::default()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one record with the reason, synced: only then may the log forget it. A
    /// record already in the file for this destination is not written again.
    pub fn write(
        &self,
        destination: &str,
        record: &StoredRecord<'_>,
        reason: &str,
    ) -> std::io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.file.is_none() {
            self.open(&mut state)?;
        }
        if state.already_written(destination, record) {
            return Ok(());
        }
        let mut text = String::new();
        if state.unterminated {
            text.push('\n');
        }
        text.push_str(&line(destination, record, reason).to_string());
        text.push('\n');
        let State {
            file, len, damaged, ..
        } = &mut *state;
        let file = file.as_ref().expect("opened above");
        if *damaged {
            self.io.set_len(file, *len)?;
            *damaged = false;
        }
        let written = self
            .io
            .append(file, text.as_bytes())
            .and_then(|()| self.io.sync(file));
        match written {
            Ok(()) => {
                *len += text.len() as u64;
                state.unterminated = false;
                // A reload that adds a destination reopens no verdict: one letter a record.
                state.written.entry(record.seq).or_default().push(Written {
                    record_id: record.record_id.to_string(),
                    destinations: destination.split(',').map(String::from).collect(),
                });
            }
            // Cut back now if it can be (a reader then sees whole lines only).
            Err(_) => *damaged = self.io.set_len(file, *len).is_err(),
        }
        written
    }

    /// Forgets the letters of records below `seq`: the log no longer keeps them.
    pub fn forget_below(&self, seq: u64) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !state.written.is_empty() {
            state.written.retain(|&letter_seq, _| letter_seq >= seq);
        }
    }

    /// Opens the file, cuts a partial last line off, syncs, and reads back the letters
    /// of its tail.
    fn open(&self, state: &mut State) -> std::io::Result<()> {
        let file = self.io.open_append(&self.path)?;
        let len = file.metadata()?.len();
        let start = len.saturating_sub(TAIL_BYTES);
        let mut tail = vec![0; (len - start) as usize];
        if !tail.is_empty() {
            let reader = self.io.open_read(&self.path)?;
            self.io.read_at(&reader, &mut tail, start)?;
        }
        let whole = match tail.iter().rposition(|&b| b == b'\n') {
            Some(at) => start + at as u64 + 1,
            None if start == 0 => 0,
            // One line longer than the tail: left alone, the next starts on a new line.
            None => len,
        };
        if whole < len {
            self.io.set_len(&file, whole)?;
        }
        self.io.sync(&file)?;
        let lines = &tail[..(whole - start) as usize];
        // The first line of a tail that starts mid-file may be cut: not read.
        let skip = if start > 0 {
            lines
                .iter()
                .position(|&b| b == b'\n')
                .map_or(lines.len(), |at| at + 1)
        } else {
            0
        };
        let mut written: HashMap<u64, Vec<Written>> = HashMap::new();
        for line in lines[skip..].split(|&b| b == b'\n') {
            if let Some((seq, letter)) = parse(line) {
                written.entry(seq).or_default().push(letter);
            }
        }
        *state = State {
            file: Some(file),
            len: whole,
            damaged: false,
            unterminated: whole == len && tail.last().is_some_and(|&b| b != b'\n'),
            written,
        };
        Ok(())
    }
}

impl State {
    /// Whether a letter for `record` naming one of `destination`'s destinations (a
    /// stack's letter names several, comma-separated) was found at open.
    fn already_written(&self, destination: &str, record: &StoredRecord<'_>) -> bool {
        self.written.get(&record.seq).is_some_and(|letters| {
            letters.iter().any(|letter| {
                letter.record_id == record.record_id
                    && destination
                        .split(',')
                        .any(|name| letter.destinations.iter().any(|d| d == name))
            })
        })
    }
}

fn line(destination: &str, record: &StoredRecord<'_>, reason: &str) -> serde_json::Value {
    serde_json::json!({
        "reason": reason,
        "destination": destination,
        "record_id": record.record_id,
        "topic": record.topic,
        "key": record.key.map(String::from_utf8_lossy),
        "headers": record.headers.iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value).into_owned();
                (name.to_string(), serde_json::Value::String(value))
            })
            .collect::<serde_json::Map<String, serde_json::Value>>(),
        "payload": String::from_utf8_lossy(record.payload),
        "seq": record.seq,
    })
}

/// The `seq`, `record_id` and destinations of one line; `None` for a line that is not
/// a dead letter (an admin's edit).
fn parse(line: &[u8]) -> Option<(u64, Written)> {
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    let text = |name: &str| value.get(name).and_then(serde_json::Value::as_str);
    let letter = Written {
        record_id: text("record_id")?.to_string(),
        destinations: text("destination")?.split(',').map(String::from).collect(),
    };
    Some((value.get("seq")?.as_u64()?, letter))
}

#[cfg(test)]
mod tests;
