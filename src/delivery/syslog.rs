//! The syslog destination: each record's payload becomes one line of the local syslog,
//! written by us straight to the daemon's socket (`/dev/log`), not through
//! `openlog`/`syslog(3)`, which Asterisk's own logger owns.
//!
//! Threads: none of its own. The feeder thread owns the socket and writes with
//! non-blocking calls only; a datagram the kernel accepted is reported Delivered at the
//! next `collect`. On a stream socket a record cut short by a full socket buffer is kept
//! and finished at the next call, and reported only once its last byte is written.

use std::io::{self, ErrorKind};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::destination::{Destination, Offer, Outcome};
use super::log::StoredRecord;

/// Where syslog daemons listen on Linux.
pub const DEFAULT_SOCKET: &str = "/dev/log";
/// The tag Asterisk's own syslog lines carry.
pub const DEFAULT_TAG: &str = "asterisk";
/// The sequence number of a stream's cut-short record when there is none.
const NOTHING_CUT: u64 = u64::MAX;
/// RFC 3164 allows 32 characters of tag.
const TAG_MAX: usize = 32;
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// A syslog facility (RFC 3164 codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Facility {
    Kern,
    User,
    Mail,
    Daemon,
    Auth,
    Syslog,
    Lpr,
    News,
    Uucp,
    Cron,
    Authpriv,
    Ftp,
    /// `local0` to `local7`: the number.
    Local(u8),
}

const FACILITIES: [(&str, Facility); 12] = [
    ("kern", Facility::Kern),
    ("user", Facility::User),
    ("mail", Facility::Mail),
    ("daemon", Facility::Daemon),
    ("auth", Facility::Auth),
    ("syslog", Facility::Syslog),
    ("lpr", Facility::Lpr),
    ("news", Facility::News),
    ("uucp", Facility::Uucp),
    ("cron", Facility::Cron),
    ("authpriv", Facility::Authpriv),
    ("ftp", Facility::Ftp),
];

impl Facility {
    /// Reads a facility's name as syslog.conf writes it (`local0`, `daemon`, ...).
    pub fn parse(text: &str) -> Result<Self, String> {
        let lower = text.trim().to_ascii_lowercase();
        if let Some((_, facility)) = FACILITIES.iter().find(|(name, _)| *name == lower) {
            return Ok(*facility);
        }
        match lower.strip_prefix("local").map(str::parse::<u8>) {
            Some(Ok(n)) if n <= 7 => Ok(Self::Local(n)),
            _ => Err(format!(
                "'{text}' is not a syslog facility (use kern, user, mail, daemon, auth, syslog, \
                 lpr, news, uucp, cron, authpriv, ftp or local0 to local7)"
            )),
        }
    }

    pub fn code(self) -> u8 {
        match self {
            Self::Local(n) => 16 + n.min(7),
            other => FACILITIES
                .iter()
                .position(|(_, facility)| *facility == other)
                // The table lists codes 0 to 11 in order (9 is cron, 10 authpriv, 11 ftp).
                .map_or(1, |index| index as u8),
        }
    }
}

impl std::fmt::Display for Facility {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local(n) => write!(f, "local{n}"),
            other => {
                let name = FACILITIES
                    .iter()
                    .find(|(_, facility)| facility == other)
                    .map_or("user", |(name, _)| name);
                f.write_str(name)
            }
        }
    }
}

/// A syslog severity (RFC 3164 codes 0 to 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Emerg,
    Alert,
    Crit,
    Err,
    Warning,
    Notice,
    Info,
    Debug,
}

const LEVELS: [(&str, Level); 8] = [
    ("emerg", Level::Emerg),
    ("alert", Level::Alert),
    ("crit", Level::Crit),
    ("err", Level::Err),
    ("warning", Level::Warning),
    ("notice", Level::Notice),
    ("info", Level::Info),
    ("debug", Level::Debug),
];

impl Level {
    /// Reads a level's name as syslog.conf writes it (`err` or `error`, `warning` or `warn`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let lower = text.trim().to_ascii_lowercase();
        let lower = match lower.as_str() {
            "error" => "err",
            "warn" => "warning",
            other => other,
        };
        LEVELS
            .iter()
            .find(|(name, _)| *name == lower)
            .map(|(_, level)| *level)
            .ok_or_else(|| {
                format!(
                    "'{text}' is not a syslog level (use emerg, alert, crit, err, warning, \
                     notice, info or debug)"
                )
            })
    }

    pub fn code(self) -> u8 {
        self as u8
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(LEVELS[self.code() as usize].0)
    }
}

/// One `[name] type = syslog` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogSettings {
    pub name: String,
    pub socket: PathBuf,
    pub facility: Facility,
    pub level: Level,
    pub tag: String,
}

impl SyslogSettings {
    /// The defaults: `/dev/log`, `local0.info`, tag `asterisk`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            socket: PathBuf::from(DEFAULT_SOCKET),
            facility: Facility::Local(0),
            level: Level::Info,
            tag: DEFAULT_TAG.to_string(),
        }
    }
}

/// Why a syslog destination could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogError {
    /// The tag would break the line's format (the reason).
    Tag(String),
    /// No socket path was given.
    NoSocket,
}

impl std::fmt::Display for SyslogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tag(reason) => write!(f, "syslog tag: {reason}"),
            Self::NoSocket => f.write_str("syslog socket: no path given (the default is /dev/log)"),
        }
    }
}

impl std::error::Error for SyslogError {}

fn check_tag(tag: &str) -> Result<(), SyslogError> {
    if tag.is_empty() {
        return Err(SyslogError::Tag("it is empty".into()));
    }
    if tag.chars().count() > TAG_MAX {
        return Err(SyslogError::Tag(format!(
            "'{tag}' is longer than {TAG_MAX} characters"
        )));
    }
    if let Some(bad) = tag
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, ':' | '[' | ']'))
    {
        return Err(SyslogError::Tag(format!(
            "'{tag}' holds {bad:?}, which syslog daemons read as the end of the tag"
        )));
    }
    Ok(())
}

/// `Mmm dd hh:mm:ss` (RFC 3164: the day padded with a space) from broken-down time.
fn format_timestamp(month: usize, day: u32, hour: u32, minute: u32, second: u32) -> String {
    let month = MONTHS.get(month).copied().unwrap_or("Jan");
    format!("{month} {day:>2} {hour:02}:{minute:02}:{second:02}")
}

/// The local time of `unix_seconds` as syslog daemons expect it.
fn local_timestamp(unix_seconds: i64) -> String {
    let time = unix_seconds as libc::time_t;
    // SAFETY: `tm` is plain old data; localtime_r only writes into the `tm` we own and
    // reads the `time_t` we own; it is the thread-safe variant.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&time, &mut tm).is_null() {
            return format_timestamp(0, 1, 0, 0, 0);
        }
        tm
    };
    format_timestamp(
        tm.tm_mon as usize,
        tm.tm_mday as u32,
        tm.tm_hour as u32,
        tm.tm_min as u32,
        tm.tm_sec as u32,
    )
}

/// The socket, as the daemon offers it.
enum Connection {
    Datagram(UnixDatagram),
    /// Each message ends with a NUL, as glibc's syslog(3) sends it on a stream socket.
    Stream {
        stream: UnixStream,
        /// The unwritten rest of one record, and its sequence number.
        rest: Vec<u8>,
        seq: u64,
    },
}

fn connect(path: &Path) -> Result<Connection, String> {
    let unreachable = |error: io::Error| {
        format!(
            "cannot reach the syslog daemon at {} (is it running?): {error}",
            path.display()
        )
    };
    let socket = UnixDatagram::unbound().map_err(unreachable)?;
    let connection = match socket.connect(path) {
        Ok(()) => {
            socket.set_nonblocking(true).map_err(unreachable)?;
            Connection::Datagram(socket)
        }
        Err(error) if error.raw_os_error() == Some(libc::EPROTOTYPE) => {
            let stream = UnixStream::connect(path).map_err(unreachable)?;
            stream.set_nonblocking(true).map_err(unreachable)?;
            Connection::Stream {
                stream,
                rest: Vec::new(),
                seq: NOTHING_CUT,
            }
        }
        Err(error) => return Err(unreachable(error)),
    };
    Ok(connection)
}

/// `send(2)` without SIGPIPE: a daemon gone from a stream socket must not signal
/// Asterisk's process.
fn send_no_signal(stream: &UnixStream, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe `bytes`, borrowed for the call; the fd is
    // open for as long as `stream` is borrowed.
    let sent = unsafe {
        libc::send(
            stream.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

/// What a failed send means for the record.
enum SendFailure {
    /// Try again later, nothing wrong (the socket buffer is full).
    Full,
    /// The daemon is gone or the socket unusable: reconnect.
    Broken(String),
    /// Never fits (the reason).
    Refused(String),
}

fn classify(error: &io::Error, path: &Path, len: usize) -> SendFailure {
    if error.kind() == ErrorKind::WouldBlock || error.kind() == ErrorKind::Interrupted {
        return SendFailure::Full;
    }
    match error.raw_os_error() {
        Some(libc::ENOBUFS) => SendFailure::Full,
        Some(libc::EMSGSIZE) => SendFailure::Refused(format!(
            "a syslog message of {len} bytes is more than the socket {} takes in one datagram",
            path.display()
        )),
        _ => SendFailure::Broken(format!(
            "cannot write to the syslog daemon at {}: {error}",
            path.display()
        )),
    }
}

pub struct SyslogDestination {
    settings: SyslogSettings,
    connection: Option<Connection>,
    broken: Option<String>,
    /// Written, not yet reported.
    delivered: Vec<u64>,
    /// `<PRI>`, the record's line and, on a stream, its NUL (reused).
    line: Vec<u8>,
    pid: u32,
}

impl SyslogDestination {
    /// Checks the settings and connects; a daemon not running yet is no error (the
    /// destination starts broken and the feeder reconnects it).
    pub fn new(settings: SyslogSettings) -> Result<Self, SyslogError> {
        Self::check(&settings)?;
        let (connection, broken) = match connect(&settings.socket) {
            Ok(connection) => (Some(connection), None),
            Err(reason) => (None, Some(reason)),
        };
        Ok(Self {
            settings,
            connection,
            broken,
            delivered: Vec::new(),
            line: Vec::new(),
            pid: std::process::id(),
        })
    }

    /// What `new` refuses before it connects.
    pub fn check(settings: &SyslogSettings) -> Result<(), SyslogError> {
        check_tag(&settings.tag)?;
        if settings.socket.as_os_str().is_empty() {
            return Err(SyslogError::NoSocket);
        }
        Ok(())
    }

    fn format(&mut self, record: &StoredRecord<'_>, terminator: bool) {
        let pri =
            u16::from(self.settings.facility.code()) * 8 + u16::from(self.settings.level.code());
        let seconds = (record.captured_ms / 1000) as i64;
        self.line.clear();
        self.line.extend_from_slice(
            format!(
                "<{pri}>{} {}[{}]: ",
                local_timestamp(seconds),
                self.settings.tag,
                self.pid
            )
            .as_bytes(),
        );
        self.line.extend_from_slice(record.payload);
        if terminator {
            self.line.push(0);
        }
    }

    /// Writes what is left of a record cut short on a stream socket. True when nothing
    /// is left.
    fn finish_rest(&mut self) -> bool {
        let Some(Connection::Stream { stream, rest, seq }) = &mut self.connection else {
            return true;
        };
        while !rest.is_empty() {
            match send_no_signal(stream, rest) {
                Ok(n) => {
                    rest.drain(..n);
                }
                Err(error) => match classify(&error, &self.settings.socket, rest.len()) {
                    SendFailure::Full => return false,
                    SendFailure::Broken(reason) | SendFailure::Refused(reason) => {
                        self.broken = Some(reason);
                        return false;
                    }
                },
            }
        }
        if *seq != NOTHING_CUT {
            self.delivered.push(*seq);
            *seq = NOTHING_CUT;
        }
        true
    }

    fn send(&mut self, record: &StoredRecord<'_>) -> Offer {
        let failure = match &mut self.connection {
            None => return Offer::Full,
            Some(Connection::Datagram(socket)) => match socket.send(&self.line) {
                Ok(_) => {
                    self.delivered.push(record.seq);
                    return Offer::Taken;
                }
                Err(error) => classify(&error, &self.settings.socket, self.line.len()),
            },
            Some(Connection::Stream { stream, rest, seq }) => {
                match send_no_signal(stream, &self.line) {
                    Ok(n) if n == self.line.len() => {
                        self.delivered.push(record.seq);
                        return Offer::Taken;
                    }
                    Ok(n) => {
                        rest.extend_from_slice(&self.line[n..]);
                        *seq = record.seq;
                        return Offer::Taken;
                    }
                    Err(error) => classify(&error, &self.settings.socket, self.line.len()),
                }
            }
        };
        match failure {
            SendFailure::Full => Offer::Full,
            SendFailure::Refused(reason) => Offer::Refused(reason),
            SendFailure::Broken(reason) => {
                self.broken = Some(reason);
                Offer::Full
            }
        }
    }

    fn is_stream(&self) -> bool {
        matches!(self.connection, Some(Connection::Stream { .. }))
    }

    fn rest_len(&self) -> usize {
        match &self.connection {
            Some(Connection::Stream { rest, .. }) => rest.len(),
            _ => 0,
        }
    }
}

impl Destination for SyslogDestination {
    fn name(&self) -> &str {
        &self.settings.name
    }

    fn offer(&mut self, record: &StoredRecord<'_>) -> Offer {
        if self.broken.is_some() || !self.finish_rest() {
            return Offer::Full;
        }
        let stream = self.is_stream();
        if stream && record.payload.contains(&0) {
            return Offer::Refused(
                "the record holds a NUL byte, which a stream syslog socket reads as the end \
                 of the message"
                    .into(),
            );
        }
        self.format(record, stream);
        self.send(record)
    }

    fn collect(&mut self, outcomes: &mut Vec<(u64, Outcome)>) {
        if self.broken.is_none() {
            self.finish_rest();
        }
        outcomes.extend(
            self.delivered
                .drain(..)
                .map(|seq| (seq, Outcome::Delivered)),
        );
    }

    fn broken(&mut self) -> Option<String> {
        self.broken.clone()
    }

    fn rebuild(&mut self) -> Result<(), String> {
        // A record cut short goes with the old socket: the feeder offers it again.
        self.connection = None;
        self.connection = Some(connect(&self.settings.socket)?);
        self.broken = None;
        Ok(())
    }

    fn in_flight(&self) -> u64 {
        let cut_short = u64::from(self.rest_len() > 0);
        self.delivered.len() as u64 + cut_short
    }

    fn flush(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.broken.is_none() && !self.finish_rest() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn describe(&self) -> String {
        let state = match (&self.broken, &self.connection) {
            (Some(reason), _) => format!("broken ({reason})"),
            (None, Some(Connection::Stream { .. })) => "writing (stream socket)".to_string(),
            (None, _) => "writing".to_string(),
        };
        format!(
            "syslog {} {}.{} — {state}",
            self.settings.socket.display(),
            self.settings.facility,
            self.settings.level
        )
    }
}

#[cfg(test)]
mod tests;
