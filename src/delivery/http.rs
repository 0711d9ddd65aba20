//! The HTTP destination: records go out in batches, one request per batch, the body
//! the records as JSON lines (`application/x-ndjson`). A 2xx confirms the whole batch;
//! anything else sends every record of it back to the feeder to be offered again, and
//! the worker waits (100 ms doubling to 30 s) before its next request.
//!
//! Threads: one worker (`cdr_kafka-http`) per destination does the I/O. It is started
//! by `new` and `rebuild`, and stopped and joined when the destination is dropped or
//! rebuilt, on the feeder thread: it never outlives the destination. The feeder's
//! `offer` only queues (a mutex the worker never holds across I/O) and `collect` only
//! drains the worker's channel.

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ureq::http::{HeaderName, HeaderValue, Uri};
use ureq::tls::{RootCerts, TlsConfig, TlsProvider};
use ureq::Agent;

use super::destination::{Destination, Offer, Outcome};
use super::kafka::REDACTED;
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
    /// The worker thread could not be started.
    Thread(std::io::Error),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Url(url, why) => write!(f, "url '{url}': {why}"),
            Self::Header(header, why) => write!(f, "header '{header}': {why}"),
            Self::Zero(option) => write!(f, "{option} must be at least 1"),
            Self::Thread(error) => write!(f, "cannot start the HTTP worker thread: {error}"),
        }
    }
}

impl std::error::Error for HttpError {}

/// The `user:password` of `url`, if it has one.
fn userinfo(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    authority.rfind('@').map(|at| &authority[..at])
}

/// `text` with the url's `user:password` replaced.
fn redact(text: &str, url: &str) -> String {
    match userinfo(url) {
        Some(secret) if !secret.is_empty() => text.replace(secret, REDACTED),
        _ => text.to_string(),
    }
}

/// `url` with any `user:password` replaced.
pub fn redact_url(url: &str) -> String {
    redact(url, url)
}

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
        HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| HttpError::Header(name.clone(), "not a valid header name".into()))?;
        HeaderValue::from_str(value).map_err(|_| {
            HttpError::Header(
                name.clone(),
                "the value holds a character HTTP forbids".into(),
            )
        })?;
    }
    Ok(())
}

/// What the worker says about one request.
struct Report {
    seqs: Vec<u64>,
    delivered: bool,
    /// `200 OK`-like, or what went wrong.
    status: String,
    /// The pause before the next request (zero after a success).
    backoff: Duration,
}

#[derive(Default)]
struct Queue {
    records: VecDeque<(u64, Vec<u8>)>,
    stop: bool,
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
    fn new(settings: &HttpSettings) -> Self {
        let tls = TlsConfig::builder()
            .provider(TlsProvider::NativeTls)
            // The system's trust store, as the admin's other tools use it.
            .root_certs(RootCerts::PlatformVerifier)
            .build();
        let agent: Agent = Agent::config_builder()
            .timeout_global(Some(settings.timeout))
            .http_status_as_error(false)
            // A redirect of a POST would be followed as a GET: a failure, not a delivery.
            .max_redirects(0)
            .max_redirects_will_error(false)
            .proxy(None)
            .tls_config(tls)
            .build()
            .into();
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

    /// Sends one body; `Ok(status line)` for a 2xx, else `Err(what happened)`.
    fn send(&self, body: &[u8]) -> Result<String, String> {
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
        let mut response = request
            .send(body)
            .map_err(|error| redact(&error.to_string(), &self.url))?;
        let status = response.status();
        let line = format!(
            "{} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )
        .trim_end()
        .to_string();
        // Read so the connection can be kept; the 2xx already confirmed the batch.
        let _ = response
            .body_mut()
            .with_config()
            .limit(RESPONSE_MAX)
            .read_to_vec();
        if status.is_success() {
            Ok(line)
        } else {
            Err(line)
        }
    }
}

/// The worker's loop: a batch from the queue, one request, its report, a pause after a
/// failure. Ends when told to stop or when the destination's channel is gone.
fn work(shared: &Shared, request: &Request, reports: &Sender<Report>) {
    let mut backoff = Duration::ZERO;
    let mut body = Vec::new();
    let mut seqs = Vec::new();
    loop {
        {
            let mut queue = shared.lock();
            while queue.records.is_empty() && !queue.stop {
                queue = shared
                    .wake
                    .wait(queue)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            if queue.stop {
                return;
            }
            body.clear();
            let take = queue.records.len().min(request.batch_max);
            for (seq, payload) in queue.records.drain(..take) {
                seqs.push(seq);
                body.extend_from_slice(&payload);
                body.push(b'\n');
            }
        }
        let (delivered, status) = match request.send(&body) {
            Ok(status) => (true, status),
            Err(status) => (false, status),
        };
        backoff = if delivered {
            Duration::ZERO
        } else {
            (backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX)
        };
        let report = Report {
            seqs: std::mem::take(&mut seqs),
            delivered,
            status,
            backoff,
        };
        if reports.send(report).is_err() {
            return;
        }
        if !backoff.is_zero() && pause(shared, backoff) {
            return;
        }
    }
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
    reports: Receiver<Report>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    fn start(settings: &HttpSettings) -> Result<Self, std::io::Error> {
        let shared = Arc::new(Shared::default());
        let (sender, reports) = mpsc::channel();
        let request = Request::new(settings);
        let worker_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("cdr_kafka-http".into())
            .spawn(move || work(&worker_shared, &request, &sender))?;
        Ok(Self {
            shared,
            reports,
            thread: Some(thread),
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            // A request under way ends within the timeout; a panic was already logged.
            let _ = thread.join();
        }
    }
}

pub struct HttpDestination {
    settings: HttpSettings,
    worker: Worker,
    in_flight: u64,
    /// Outcomes `flush` received, for the next `collect`.
    early: Vec<(u64, Outcome)>,
    last_status: Option<String>,
    backoff: Duration,
    broken: Option<String>,
}

impl HttpDestination {
    /// Checks url, headers and limits, and starts the worker.
    pub fn new(settings: HttpSettings) -> Result<Self, HttpError> {
        check_url(&settings.url)?;
        check_headers(&settings.headers)?;
        if settings.batch_max == 0 {
            return Err(HttpError::Zero("batch_max"));
        }
        if settings.timeout.is_zero() {
            return Err(HttpError::Zero("timeout_ms"));
        }
        let worker = Worker::start(&settings).map_err(HttpError::Thread)?;
        Ok(Self {
            settings,
            worker,
            in_flight: 0,
            early: Vec::new(),
            last_status: None,
            backoff: Duration::ZERO,
            broken: None,
        })
    }

    fn take(&mut self, report: Report, outcomes: &mut Vec<(u64, Outcome)>) {
        let outcome = if report.delivered {
            Outcome::Delivered
        } else {
            Outcome::Retry
        };
        self.in_flight = self.in_flight.saturating_sub(report.seqs.len() as u64);
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
            if queue.records.len() >= self.settings.batch_max * QUEUED_BATCHES {
                return Offer::Full;
            }
            queue
                .records
                .push_back((record.seq, record.payload.to_vec()));
        }
        self.worker.shared.wake.notify_one();
        self.in_flight += 1;
        Offer::Taken
    }

    fn collect(&mut self, outcomes: &mut Vec<(u64, Outcome)>) {
        outcomes.append(&mut self.early);
        loop {
            match self.worker.reports.try_recv() {
                Ok(report) => self.take(report, outcomes),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.broken = Some("the HTTP worker thread ended".into());
                    return;
                }
            }
        }
    }

    fn broken(&mut self) -> Option<String> {
        self.broken.clone()
    }

    fn rebuild(&mut self) -> Result<(), String> {
        let worker = Worker::start(&self.settings)
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
        while self.in_flight > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.worker.reports.recv_timeout(left) {
                Ok(report) => self.take(report, &mut early),
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

#[cfg(test)]
mod tests;
