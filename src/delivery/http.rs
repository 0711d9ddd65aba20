//! The HTTP destination: records go out in batches, one request per batch, the body
//! the records as JSON lines (`application/x-ndjson`), in log order. A 2xx confirms the
//! whole batch. A 400, 413 or 422 refuses some record of it: the batch is halved and
//! each half sent again until the records the server refuses are alone, and only those
//! are refused (dead-lettered). Another 4xx (but 408 and 429) refuses the whole batch:
//! no record can be delivered there. Anything else (no connection, a timeout, 5xx, 408,
//! 429, a redirect) hands the rest of the batch back to the feeder to be offered again,
//! and the worker waits (100 ms doubling to 30 s) before its next request.
//!
//! Order: the queue is kept in sequence order, a record handed back going back to its
//! place, and after a failure the worker sends nothing until the feeder has had a pass
//! to offer the records back (the feeder offers retries before anything newer): so the
//! failed batch goes out again before anything newer.
//!
//! Threads: one worker (`cdr_kafka-http`) per destination does the I/O. It is started
//! by `new` and `rebuild`, and stopped and joined when the destination is dropped or
//! rebuilt, on the feeder thread: it never outlives the destination. Stopping fires the
//! worker's [`abort::Abort`]: a request under way ends at once (its records stay
//! unconfirmed, for the next start), so a stop takes the feeder's flush budget, not
//! `timeout_ms`. The feeder's `offer` only queues (a mutex the worker never holds across
//! I/O) and `collect` only drains the worker's channel.
//!
//! https goes through [`tls`]: verification always on, against `ca_file` or the system's
//! CAs; a failed handshake is a failed request (retried), its reason in the status.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ureq::http::{HeaderName, HeaderValue, Uri};
use ureq::unversioned::transport::Connector;
use ureq::Agent;

use abort::{Abort, AbortableResolver, AbortableTcp};
use redact::redact;
pub use redact::{header_shown, redact_url};
use tls::{Tls, TlsConnector};
pub use tls::{TlsError, TlsFiles};

use super::destination::{Destination, Offer, Outcome};
use super::log::StoredRecord;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(5000);
pub const DEFAULT_BATCH_MAX: usize = 500;
/// The first pause after a failed request; it doubles up to `BACKOFF_MAX`.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Batches the queue holds at most (one being sent, one gathering).
const QUEUED_BATCHES: usize = 2;
/// Most of a response body read (then the connection is dropped, not reused).
const RESPONSE_MAX: u64 = 64 * 1024;
/// Most of a refusal's body quoted in its reason, in characters.
const SNIPPET_CHARS: usize = 200;

/// The request method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Method {
    #[default]
    Post,
    Put,
    Patch,
}

impl Method {
    /// Reads `post`, `put` or `patch` (any case).
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "post" => Ok(Self::Post),
            "put" => Ok(Self::Put),
            "patch" => Ok(Self::Patch),
            _ => Err(format!(
                "'{text}' is not an HTTP method for records (use post, put or patch)"
            )),
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
        })
    }
}

/// One `[name] type = http` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    pub name: String,
    pub url: String,
    pub method: Method,
    /// Sent with every request; a `Content-Type` here replaces ours.
    pub headers: Vec<(String, String)>,
    /// For the whole request: connect, send, response.
    pub timeout: Duration,
    /// Records in one request at most.
    pub batch_max: usize,
    /// https: the CAs trusted and the client certificate.
    pub tls: TlsFiles,
}

impl HttpSettings {
    /// POST, no extra headers, 5 s, 500 records a request.
    pub fn new(name: &str, url: &str) -> Self {
        Self {
            name: name.to_string(),
            url: url.to_string(),
            method: Method::Post,
            headers: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            batch_max: DEFAULT_BATCH_MAX,
            tls: TlsFiles::default(),
        }
    }
}

/// Why an HTTP destination could not be made.
#[derive(Debug)]
pub enum HttpError {
    /// The url cannot be used (the url, redacted, and why).
    Url(String, String),
    /// A header name or value cannot be sent (the header and why).
    Header(String, String),
    /// `batch_max` or `timeout_ms` is zero (the option).
    Zero(&'static str),
    /// A TLS file cannot be used (the option and why).
    Tls(TlsError),
    /// The worker thread could not be started.
    Thread(std::io::Error),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Url(url, why) => write!(f, "url '{url}': {why}"),
            Self::Header(header, why) => write!(f, "header '{header}': {why}"),
            Self::Zero(option) => write!(f, "{option} must be at least 1"),
            Self::Tls(error) => write!(f, "{error}"),
            Self::Thread(error) => write!(f, "cannot start the HTTP worker thread: {error}"),
        }
    }
}

impl std::error::Error for HttpError {}

/// Checks scheme, host and port, as an admin wrote them.
fn check_url(url: &str) -> Result<(), HttpError> {
    let bad = |why: &str| HttpError::Url(redact_url(url), why.to_string());
    if !url.contains("://") {
        return Err(bad("no scheme (write http://host:port/path)"));
    }
    let uri: Uri = url
        .parse()
        .map_err(|error| bad(&format!("not a URL ({error})")))?;
    match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
        Some("http" | "https") => {}
        Some(other) => return Err(bad(&format!("scheme '{other}' (use http or https)"))),
        None => return Err(bad("no scheme (write http://host:port/path)")),
    }
    let authority = uri
        .authority()
        .ok_or_else(|| bad("no host (write http://host:port/path)"))?;
    if authority.host().is_empty() {
        return Err(bad("no host (write http://host:port/path)"));
    }
    // `Uri` takes a port of any digits; 0 and past 65535 cannot be connected to.
    let host_port = authority.as_str().rsplit('@').next().unwrap_or_default();
    let port_text = match host_port.rfind(']') {
        Some(bracket) => host_port[bracket + 1..].strip_prefix(':'),
        None => host_port.split_once(':').map(|(_, port)| port),
    };
    if let Some(port) = port_text {
        match port.parse::<u16>() {
            Ok(port) if port > 0 => {}
            _ => return Err(bad(&format!("port '{port}' (use 1 to 65535)"))),
        }
    }
    Ok(())
}

fn check_headers(headers: &[(String, String)]) -> Result<(), HttpError> {
    for (name, value) in headers {
        HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            // What follows the valid part may be a value written without its colon.
            HttpError::Header(
                format!("{}...", header_shown(name)),
                "not a valid header name".into(),
            )
        })?;
        HeaderValue::from_str(value).map_err(|_| {
            HttpError::Header(
                name.clone(),
                "the value holds a character HTTP forbids".into(),
            )
        })?;
    }
    Ok(())
}

/// What the worker says about one request (or the part of a batch it gives back).
struct Report {
    seqs: Vec<u64>,
    outcome: Outcome,
    /// `200 OK`-like, or what went wrong.
    status: String,
    /// The pause before the next request (zero after a success).
    backoff: Duration,
}

/// After a failure, the worker waits for its records to come back before sending on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Hold {
    #[default]
    Open,
    /// The failure is reported, the feeder has not collected it yet.
    Reported,
    /// Collected: the feeder offers the records back in its next pass; the collect
    /// after that opens the hold.
    Collected,
}

#[derive(Default)]
struct Queue {
    /// In sequence order: a record handed back goes back to its place.
    records: VecDeque<(u64, Vec<u8>)>,
    /// The highest sequence number queued so far: an offer at or below it is a record
    /// handed back (taken even past the cap: it had a place).
    newest: Option<u64>,
    hold: Hold,
    stop: bool,
}

impl Queue {
    fn insert(&mut self, seq: u64, payload: Vec<u8>) {
        if self.records.back().is_none_or(|(last, _)| *last < seq) {
            self.records.push_back((seq, payload));
        } else {
            let at = self.records.partition_point(|(queued, _)| *queued < seq);
            self.records.insert(at, (seq, payload));
        }
        self.newest = self.newest.max(Some(seq));
    }
}

/// The queue the feeder fills and the worker drains.
#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A worker that panicked holding it left the queue consistent (pushes and drains only).
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn open_hold(&self) {
        self.lock().hold = Hold::Open;
        self.wake.notify_all();
    }
}

/// What an answer means for the records of its request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    /// 2xx, with its status line.
    Delivered(String),
    /// Worth another try (what went wrong).
    Retry(String),
    /// 400, 413 or 422: the server refuses some record of the request (the reason).
    Content(String),
    /// Another 4xx: it refuses any record (the reason).
    Refused(String),
}

/// What the worker needs to send.
struct Request {
    agent: Agent,
    url: String,
    method: Method,
    headers: Vec<(String, String)>,
    content_type: bool,
    batch_max: usize,
}

impl Request {
    fn new(settings: &HttpSettings, tls: Option<Tls>, abort: &Arc<Abort>) -> Self {
        let config = Agent::config_builder()
            .timeout_global(Some(settings.timeout))
            .http_status_as_error(false)
            // A redirect of a POST would be followed as a GET: a failure, not a delivery.
            .max_redirects(0)
            .max_redirects_will_error(false)
            .proxy(None)
            .build();
        let connector = AbortableTcp(Arc::clone(abort)).chain(TlsConnector(tls));
        let agent = Agent::with_parts(config, connector, AbortableResolver(Arc::clone(abort)));
        Self {
            agent,
            url: settings.url.clone(),
            method: settings.method,
            headers: settings.headers.clone(),
            content_type: settings
                .headers
                .iter()
                .any(|(name, _)| name.eq_ignore_ascii_case("content-type")),
            batch_max: settings.batch_max,
        }
    }

    /// Sends one body; what the answer means for its records.
    fn send(&self, body: &[u8]) -> Reply {
        let mut request = match self.method {
            Method::Post => self.agent.post(&self.url),
            Method::Put => self.agent.put(&self.url),
            Method::Patch => self.agent.patch(&self.url),
        };
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        if !self.content_type {
            request = request.header("Content-Type", "application/x-ndjson");
        }
        let mut response = match request.send(body) {
            Ok(response) => response,
            Err(ureq::Error::Other(reason)) => {
                return Reply::Retry(redact(&reason.to_string(), &self.url))
            }
            Err(error) => return Reply::Retry(redact(&error.to_string(), &self.url)),
        };
        let status = response.status();
        let line = format!(
            "{} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )
        .trim_end()
        .to_string();
        if status.is_success() {
            // Read so the connection can be kept; the 2xx already confirmed the batch.
            let _ = response
                .body_mut()
                .with_config()
                .limit(RESPONSE_MAX)
                .read_to_vec();
            return Reply::Delivered(line);
        }
        let mut start = Vec::new();
        let _ = response
            .body_mut()
            .with_config()
            .limit(RESPONSE_MAX)
            .reader()
            .take(4 * SNIPPET_CHARS as u64)
            .read_to_end(&mut start);
        let reason = || {
            let quoted = redact(&snippet(&start), &self.url);
            match quoted.is_empty() {
                true => format!("HTTP {line}"),
                false => format!("HTTP {line}: {quoted}"),
            }
        };
        match status.as_u16() {
            400 | 413 | 422 => Reply::Content(reason()),
            408 | 429 => Reply::Retry(line),
            400..=499 => Reply::Refused(reason()),
            _ => Reply::Retry(line),
        }
    }
}

/// The start of a response body as one line of text, for a refusal's reason.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let words: Vec<&str> = text.split_whitespace().collect();
    let line: String = words
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    match line.char_indices().nth(SNIPPET_CHARS) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => line,
    }
}

/// The worker's loop: a batch from the queue, its requests, their reports, a pause and
/// a hold after a failure. Ends when told to stop or when the destination's channel is
/// gone.
fn work(shared: &Shared, request: &Request, reports: &Sender<Report>) {
    let mut backoff = Duration::ZERO;
    loop {
        let Some(batch) = next_batch(shared, request.batch_max) else {
            return;
        };
        let (seqs, status) = match send_batch(shared, request, reports, batch) {
            Ok(()) => {
                backoff = Duration::ZERO;
                continue;
            }
            Err(None) => return,
            Err(Some(failed)) => failed,
        };
        backoff = (backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
        // Set before the report is sent: the collect that takes it sees the hold.
        shared.lock().hold = Hold::Reported;
        let report = Report {
            seqs,
            outcome: Outcome::Retry,
            status,
            backoff,
        };
        if reports.send(report).is_err() || pause(shared, backoff) {
            return;
        }
    }
}

/// The first `batch_max` records of the queue, once there are some and the hold is
/// open; `None` when told to stop.
fn next_batch(shared: &Shared, batch_max: usize) -> Option<Vec<(u64, Vec<u8>)>> {
    let mut queue = shared.lock();
    while !queue.stop && (queue.records.is_empty() || queue.hold != Hold::Open) {
        queue = shared
            .wake
            .wait(queue)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
    }
    if queue.stop {
        return None;
    }
    let take = queue.records.len().min(batch_max);
    Some(queue.records.drain(..take).collect())
}

/// Sends `batch`, halving a part whose content the server refuses until the records it
/// refuses are alone, and reports each part's outcome. `Err(Some((records, status)))`:
/// a request failed and these records (that part and the ones after it) go back;
/// `Err(None)`: told to stop (what was not reported stays in flight).
fn send_batch(
    shared: &Shared,
    request: &Request,
    reports: &Sender<Report>,
    batch: Vec<(u64, Vec<u8>)>,
) -> Result<(), Option<(Vec<u64>, String)>> {
    // Parts still to send, the next one last.
    let mut parts = vec![batch];
    let mut body = Vec::new();
    while let Some(mut part) = parts.pop() {
        body.clear();
        for (_, payload) in &part {
            body.extend_from_slice(payload);
            body.push(b'\n');
        }
        let (outcome, status) = match request.send(&body) {
            Reply::Delivered(line) => (Outcome::Delivered, line),
            Reply::Content(_) if part.len() > 1 => {
                let second = part.split_off(part.len() / 2);
                parts.push(second);
                parts.push(part);
                continue;
            }
            Reply::Content(reason) | Reply::Refused(reason) => {
                (Outcome::Refused(reason.clone()), reason)
            }
            Reply::Retry(status) => {
                let back = std::iter::once(part)
                    .chain(parts.into_iter().rev())
                    .flatten()
                    .map(|(seq, _)| seq)
                    .collect();
                return Err(Some((back, status)));
            }
        };
        let report = Report {
            seqs: part.iter().map(|(seq, _)| *seq).collect(),
            outcome,
            status,
            backoff: Duration::ZERO,
        };
        if reports.send(report).is_err() || shared.lock().stop {
            return Err(None);
        }
    }
    Ok(())
}

/// Waits `length` unless told to stop; true when told to.
fn pause(shared: &Shared, length: Duration) -> bool {
    let deadline = Instant::now() + length;
    let mut queue = shared.lock();
    while !queue.stop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        queue = shared
            .wake
            .wait_timeout(queue, left)
            .map(|(queue, _)| queue)
            .unwrap_or_else(|poisoned| poisoned.into_inner().0);
    }
    true
}

struct Worker {
    shared: Arc<Shared>,
    abort: Arc<Abort>,
    reports: Receiver<Report>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    fn start(settings: &HttpSettings, tls: Option<Tls>) -> Result<Self, std::io::Error> {
        let shared = Arc::new(Shared::default());
        let abort = Arc::new(Abort::default());
        let (sender, reports) = mpsc::channel();
        let request = Request::new(settings, tls, &abort);
        let worker_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("cdr_kafka-http".into())
            .spawn(move || work(&worker_shared, &request, &sender))?;
        Ok(Self {
            shared,
            abort,
            reports,
            thread: Some(thread),
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        // A request under way ends now: its records were not confirmed, they stay in the log.
        self.abort.fire();
        if let Some(thread) = self.thread.take() {
            // A panic was already logged.
            let _ = thread.join();
        }
    }
}

pub struct HttpDestination {
    settings: HttpSettings,
    /// Built once from the files; each worker gets a copy (shared OpenSSL context).
    tls: Option<Tls>,
    worker: Worker,
    in_flight: u64,
    /// Outcomes `flush` received, for the next `collect`.
    early: Vec<(u64, Outcome)>,
    last_status: Option<String>,
    backoff: Duration,
    broken: Option<String>,
}

impl HttpDestination {
    /// Checks url, headers, limits and TLS files, and starts the worker.
    pub fn new(settings: HttpSettings) -> Result<Self, HttpError> {
        Self::check(&settings)?;
        let tls = tls::connector(&settings.url, &settings.tls).map_err(HttpError::Tls)?;
        let worker = Worker::start(&settings, tls.clone()).map_err(HttpError::Thread)?;
        Ok(Self {
            settings,
            tls,
            worker,
            in_flight: 0,
            early: Vec::new(),
            last_status: None,
            backoff: Duration::ZERO,
            broken: None,
        })
    }

    /// What `new` refuses before it reads a file or starts a thread.
    pub fn check(settings: &HttpSettings) -> Result<(), HttpError> {
        check_url(&settings.url)?;
        check_headers(&settings.headers)?;
        if settings.batch_max == 0 {
            return Err(HttpError::Zero("batch_max"));
        }
        if settings.timeout.is_zero() {
            return Err(HttpError::Zero("timeout_ms"));
        }
        Ok(())
    }

    fn take(&mut self, report: Report, outcomes: &mut Vec<(u64, Outcome)>) {
        self.in_flight = self.in_flight.saturating_sub(report.seqs.len() as u64);
        let outcome = report.outcome;
        outcomes.extend(report.seqs.into_iter().map(|seq| (seq, outcome.clone())));
        self.last_status = Some(report.status);
        self.backoff = report.backoff;
    }
}

impl Destination for HttpDestination {
    fn name(&self) -> &str {
        &self.settings.name
    }

    fn offer(&mut self, record: &StoredRecord<'_>) -> Offer {
        if self.broken.is_some() {
            return Offer::Full;
        }
        {
            let mut queue = self.worker.shared.lock();
            let handed_back = queue.newest.is_some_and(|newest| record.seq <= newest);
            if !handed_back && queue.records.len() >= self.settings.batch_max * QUEUED_BATCHES {
                return Offer::Full;
            }
            queue.insert(record.seq, record.payload.to_vec());
        }
        self.worker.shared.wake.notify_one();
        self.in_flight += 1;
        Offer::Taken
    }

    fn collect(&mut self, outcomes: &mut Vec<(u64, Outcome)>) {
        outcomes.append(&mut self.early);
        let mut failed = false;
        loop {
            match self.worker.reports.try_recv() {
                Ok(report) => {
                    failed |= report.outcome == Outcome::Retry;
                    self.take(report, outcomes);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.broken = Some("the HTTP worker thread ended".into());
                    break;
                }
            }
        }
        let shared = &self.worker.shared;
        let mut queue = shared.lock();
        queue.hold = match (queue.hold, failed) {
            (Hold::Reported, true) => Hold::Collected,
            // The feeder has had its pass to offer the records back.
            (Hold::Collected, false) => Hold::Open,
            (hold, _) => hold,
        };
        if queue.hold == Hold::Open {
            shared.wake.notify_all();
        }
    }

    fn broken(&mut self) -> Option<String> {
        self.broken.clone()
    }

    fn rebuild(&mut self) -> Result<(), String> {
        let worker = Worker::start(&self.settings, self.tls.clone())
            .map_err(|error| format!("cannot start the HTTP worker thread: {error}"))?;
        // The old worker is stopped and joined here; what it held is offered again.
        self.worker = worker;
        self.in_flight = 0;
        self.early.clear();
        self.broken = None;
        Ok(())
    }

    fn in_flight(&self) -> u64 {
        self.in_flight
    }

    fn flush(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut early = std::mem::take(&mut self.early);
        // The feeder offers nothing back during a flush: no hold.
        self.worker.shared.open_hold();
        while self.in_flight > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.worker.reports.recv_timeout(left) {
                Ok(report) => {
                    self.take(report, &mut early);
                    self.worker.shared.open_hold();
                }
                Err(_) => break,
            }
        }
        self.early = early;
    }

    fn describe(&self) -> String {
        let url = redact_url(&self.settings.url);
        let state = match (&self.broken, &self.last_status) {
            (Some(reason), _) => format!("broken ({reason})"),
            (None, None) => "no request yet".to_string(),
            (None, Some(status)) if self.backoff.is_zero() => format!("last {status}"),
            (None, Some(status)) => format!(
                "last {status}, retrying after {} ms",
                self.backoff.as_millis()
            ),
        };
        format!("http {} {url} — {state}", self.settings.method)
    }
}

mod abort;
mod redact;
#[cfg(test)]
mod tests;
mod tls;
