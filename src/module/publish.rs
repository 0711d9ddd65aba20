//! The CDR-thread path: a record encoded straight into the spool, never waiting on a
//! destination. Runs on Asterisk's CDR and CEL threads.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::{current, Running};
use crate::ast_log;
use crate::asterisk::host::Identity;
use crate::cel::{self, CelEvent};
use crate::delivery::log::{AppendError, NewRecord, RecordKind};
use crate::delivery::stats::Stats;
use crate::ratelimit::{suppressed_note, RateLimit};
use crate::record::{self, Cdr};
use crate::routing::KAFKA_TO_HEADER;

/// Gives every record an id that is unique and stays the same on replay.
pub struct RecordIds {
    prefix: String,
    next: AtomicU64,
}

impl RecordIds {
    pub(super) fn new(identity: &Identity) -> Self {
        let loaded_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        Self {
            prefix: format!("{}-{loaded_ms:x}", identity.entity_id.replace(':', "")),
            next: AtomicU64::new(1),
        }
    }

    pub(super) fn next(&self) -> ShortText {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut text = ShortText::default();
        let _ = write!(text, "{}-{n}", self.prefix);
        text
    }
}

/// A short text built on the stack (a record id, a timestamp): no allocation on the
/// CDR thread. Longer text is cut, which the ids and numbers here never are.
pub struct ShortText {
    bytes: [u8; 64],
    len: usize,
}

impl Default for ShortText {
    fn default() -> Self {
        Self {
            bytes: [0; 64],
            len: 0,
        }
    }
}

impl ShortText {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

impl std::fmt::Write for ShortText {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        let end = self.len + text.len();
        let slot = self.bytes.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        slot.copy_from_slice(text.as_bytes());
        self.len = end;
        Ok(())
    }
}

static SPOOL_REFUSED_LOG: RateLimit = RateLimit::new(10);
static SKIPPED_VARIABLE_LOG: RateLimit = RateLimit::new(60);

impl Running {
    /// Encodes one CDR and appends it to the spool; the feeder takes it from there.
    pub fn publish(&self, cdr: &Cdr<'_>) -> Result<(), AppendError> {
        Stats::add(&self.stats.received);
        let routing = cdr.dialplan_routing();
        if routing.skip {
            Stats::add(&self.stats.skipped);
            return Ok(());
        }
        let record_id = self.record_ids.next();
        let key = self.settings.key.map(|field| field.key(cdr));
        let timestamp = unix_seconds_text();
        let mut headers = Headers::default();
        self.headers(record_id.as_str(), timestamp.as_str(), &mut headers);
        if let Some(to) = routing.to {
            headers.push(KAFKA_TO_HEADER, to);
        }
        let record = NewRecord {
            kind: RecordKind::Cdr,
            record_id: record_id.as_str(),
            topic: &self.settings.topic,
            key: key.as_deref(),
            headers: headers.as_slice(),
            payload: &[],
        };
        // Encoded straight into the spool's buffer.
        let (appended, report) = self
            .log
            .append_with(&record, |out| record::encode(cdr, &self.encode, out));
        if !report.skipped_variables.is_empty() {
            if let Some(held) = SKIPPED_VARIABLE_LOG.check() {
                ast_log!(
                    Warning,
                    "CDR variable(s) {} skipped: the name is a field of the record or came twice{}",
                    report.skipped_variables.join(", "),
                    suppressed_note(held)
                );
            }
        }
        self.count_append(appended, &self.stats.spooled, &self.stats.failed, "CDR")
    }

    /// Counts an append; a refusal is also remembered and logged (rate-limited).
    fn count_append(
        &self,
        appended: Result<u64, AppendError>,
        spooled: &AtomicU64,
        failed: &AtomicU64,
        what: &str,
    ) -> Result<(), AppendError> {
        match appended {
            Ok(_) => {
                Stats::add(spooled);
                Ok(())
            }
            Err(error) => {
                Stats::add(failed);
                self.stats
                    .set_last_error(format!("{what} lost: the spool refused it: {error}"));
                if let Some(held) = SPOOL_REFUSED_LOG.check() {
                    ast_log!(
                        Error,
                        "a {what} is lost: the spool refused it: {error}{}",
                        suppressed_note(held)
                    );
                }
                Err(error)
            }
        }
    }

    /// Encodes one CEL event and appends it to the spool, unless `[cel] events`
    /// leaves it out.
    pub fn publish_cel(&self, event: &CelEvent<'_>) -> Result<(), AppendError> {
        let settings = &self.settings.cel;
        let name = String::from_utf8_lossy(event.eventname);
        if !settings.enabled || !settings.wants(&name) {
            return Ok(());
        }
        Stats::add(&self.stats.cel_received);
        let record_id = self.record_ids.next();
        let key = settings.key.map(|field| field.key(event));
        let timestamp = unix_seconds_text();
        let mut headers = Headers::default();
        self.headers(record_id.as_str(), timestamp.as_str(), &mut headers);
        headers.push("event", name.as_bytes());
        let record = NewRecord {
            kind: RecordKind::Cel,
            record_id: record_id.as_str(),
            topic: &settings.topic,
            key: key.as_deref(),
            headers: headers.as_slice(),
            payload: &[],
        };
        let (appended, ()) = self
            .log
            .append_with(&record, |out| cel::encode(event, &self.cel_encode, out));
        self.count_append(
            appended,
            &self.stats.cel_spooled,
            &self.stats.cel_failed,
            "CEL event",
        )
    }

    /// The contract's headers, plus `record_id`.
    pub(super) fn headers<'h>(
        &'h self,
        record_id: &'h str,
        timestamp: &'h str,
        out: &mut Headers<'h>,
    ) {
        let identity = &self.identity;
        out.push("entity_id", identity.entity_id.as_bytes());
        if !identity.system_name.is_empty() {
            out.push("system_name", identity.system_name.as_bytes());
        }
        out.push("asterisk_version", identity.asterisk_version.as_bytes());
        out.push("timestamp", timestamp.as_bytes());
        out.push("hostname", identity.hostname.as_bytes());
        out.push("record_id", record_id.as_bytes());
    }
}

/// The headers of one message, on the stack (at most 7: the CDR's six and CEL's
/// `event` or the CDR's `kafka_to`).
#[derive(Default)]
pub(super) struct Headers<'a> {
    entries: [(&'a str, &'a [u8]); 7],
    len: usize,
}

impl<'a> Headers<'a> {
    pub(super) fn push(&mut self, name: &'a str, value: &'a [u8]) {
        if let Some(slot) = self.entries.get_mut(self.len) {
            *slot = (name, value);
            self.len += 1;
        }
    }

    pub(super) fn as_slice(&self) -> &[(&'a str, &'a [u8])] {
        &self.entries[..self.len]
    }
}

/// Unix seconds now, as the `timestamp` header's text.
pub(super) fn unix_seconds_text() -> ShortText {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut text = ShortText::default();
    let _ = write!(text, "{seconds}");
    text
}

/// Publishes one CDR with the current configuration.
pub fn log_cdr(cdr: &Cdr<'_>) -> Result<(), AppendError> {
    match current() {
        Some(running) => running.publish(cdr),
        // The glue registers the backend only after a successful load.
        None => Ok(()),
    }
}

/// Publishes one CEL event with the current configuration.
pub fn log_cel(event: &CelEvent<'_>) -> Result<(), AppendError> {
    match current() {
        Some(running) => running.publish_cel(event),
        None => Ok(()),
    }
}
