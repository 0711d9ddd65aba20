//! The dead-letter file: records a destination will never take, one JSON line each,
//! with the reason and every field needed to publish them by hand.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::log::io::Io;
use super::log::StoredRecord;

pub const DEAD_LETTER_FILE: &str = "dead-letter.jsonl";

pub struct DeadLetters {
    path: PathBuf,
    io: Io,
    file: Mutex<Option<File>>,
}

impl DeadLetters {
    pub fn new(dir: &Path, io: Io) -> Self {
        Self {
            path: dir.join(DEAD_LETTER_FILE),
            io,
            file: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one record with the reason, synced: only then may the log forget it.
    pub fn write(
        &self,
        destination: &str,
        record: &StoredRecord<'_>,
        reason: &str,
    ) -> std::io::Result<()> {
        let line = serde_json::json!({
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
        });
        let mut text = line.to_string();
        text.push('\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if file.is_none() {
            *file = Some(self.io.open_append(&self.path)?);
        }
        let handle = file.as_ref().expect("opened above");
        let written = self
            .io
            .append(handle, text.as_bytes())
            .and_then(|()| self.io.sync(handle));
        if written.is_err() {
            // Reopened next time; a partial line is the only trace, never a lost record.
            *file = None;
        }
        written
    }
}
