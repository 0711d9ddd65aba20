//! The HTTP destination against a server each test starts on 127.0.0.1 with scripted
//! answers: what it receives, and what the destination reports for each answer.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::*;
use crate::delivery::feeder::FeederSettings;
use crate::delivery::log::tests::{append, settings, TempDir};
use crate::delivery::log::Log;
use crate::delivery::Delivery;

/// How the test server answers one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Status(u16),
    /// A status with this body.
    Body(u16, &'static str),
    /// Reads the request and never answers.
    Silent,
}

/// Answers by what a request holds once the script is done: `None` for a 200.
type Rule = Arc<dyn Fn(&str) -> Option<Answer> + Send + Sync>;

/// One request as the server read it, with the answer it got.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    /// Names in lower case.
    headers: HashMap<String, String>,
    body: String,
    answer: Answer,
}

struct TestServer {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Answers as `script` says, then 200 to everything.
    fn start(script: &[Answer]) -> Self {
        Self::start_with(script, Arc::new(|_| None))
    }

    /// Answers as `script` says, then as `rule` says about each body, else 200.
    fn start_with(script: &[Answer], rule: Rule) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}/cdr", listener.local_addr().unwrap());
        let seen = Arc::<Mutex<Vec<Seen>>>::default();
        let stop = Arc::new(AtomicBool::new(false));
        let script: VecDeque<Answer> = script.iter().copied().collect();
        let (thread_seen, thread_stop) = (Arc::clone(&seen), Arc::clone(&stop));
        let thread =
            std::thread::spawn(move || serve(&listener, script, &rule, &thread_seen, &thread_stop));
        Self {
            url,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The bodies the server answered with a 2xx, concatenated in the order they came.
    fn accepted(&self) -> String {
        self.seen()
            .iter()
            .filter(|seen| {
                matches!(
                    seen.answer,
                    Answer::Status(200..=299) | Answer::Body(200..=299, _)
                )
            })
            .map(|seen| seen.body.as_str())
            .collect()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Accepts connections until the test ends, each served on a thread of its own (a
/// kept-alive connection must not hold up the next one).
fn serve(
    listener: &TcpListener,
    script: VecDeque<Answer>,
    rule: &Rule,
    seen: &Arc<Mutex<Vec<Seen>>>,
    stop: &Arc<AtomicBool>,
) {
    let script = Arc::new(Mutex::new(script));
    let mut connections = Vec::new();
    while !stop.load(Ordering::Acquire) {
        let Ok((stream, _)) = listener.accept() else {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        };
        let (script, rule) = (Arc::clone(&script), Arc::clone(rule));
        let (seen, stop) = (Arc::clone(seen), Arc::clone(stop));
        connections.push(std::thread::spawn(move || {
            serve_connection(stream, &script, &rule, &seen, &stop)
        }));
    }
    for connection in connections {
        let _ = connection.join();
    }
}

fn serve_connection(
    stream: TcpStream,
    script: &Mutex<VecDeque<Answer>>,
    rule: &Rule,
    seen: &Mutex<Vec<Seen>>,
    stop: &AtomicBool,
) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut reader = BufReader::new(stream);
    // Requests on one kept-alive connection, until the client closes it.
    while let Some(mut request) = read_request(&mut reader, stop) {
        // Taken and recorded together: the order of `seen` is the order of the script.
        let answer = {
            let mut seen = seen.lock().unwrap();
            let scripted = script.lock().unwrap().pop_front();
            request.answer = scripted
                .or_else(|| rule(&request.body))
                .unwrap_or(Answer::Status(200));
            seen.push(request.clone());
            request.answer
        };
        let reply = |code: u16, body: &str| {
            format!(
                "HTTP/1.1 {code} Scripted\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        match answer {
            Answer::Status(code) | Answer::Body(code, _) => {
                let body = match answer {
                    Answer::Body(_, body) => body,
                    _ => "ok",
                };
                let response = reply(code, body);
                if reader.get_mut().write_all(response.as_bytes()).is_err() {
                    return;
                }
            }
            Answer::Silent => {
                // Holds the connection until the client gives up on it.
                let mut rest = Vec::new();
                while !stop.load(Ordering::Acquire) {
                    if reader.read_to_end(&mut rest).is_ok() {
                        return;
                    }
                }
                return;
            }
        }
    }
}

/// One request (Content-Length bodies only: the destination sends those); `None` when
/// the client closed the connection or the test ends.
fn read_request(reader: &mut BufReader<TcpStream>, stop: &AtomicBool) -> Option<Seen> {
    let mut head = String::new();
    loop {
        if stop.load(Ordering::Acquire) {
            return None;
        }
        match reader.read_line(&mut head) {
            Ok(0) => return None,
            Ok(_) if head.ends_with("\r\n\r\n") => break,
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return None,
        }
    }
    let mut lines = head.lines();
    let mut request_line = lines.next()?.split(' ');
    let (method, path) = (
        request_line.next()?.to_string(),
        request_line.next()?.to_string(),
    );
    let headers: HashMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let length: usize = headers.get("content-length")?.parse().ok()?;
    let mut body = vec![0u8; length];
    let mut read = 0;
    while read < length {
        match reader.read(&mut body[read..]) {
            Ok(0) => return None,
            Ok(n) => read += n,
            Err(_) if !stop.load(Ordering::Acquire) => {}
            Err(_) => return None,
        }
    }
    Some(Seen {
        method,
        path,
        headers,
        body: String::from_utf8(body).ok()?,
        answer: Answer::Status(0),
    })
}

fn record(seq: u64, payload: &str) -> StoredRecord<'_> {
    StoredRecord::test_cdr(seq, payload.as_bytes())
}

fn payloads(n: u64) -> Vec<String> {
    (0..n).map(|n| format!("{{\"n\":{n}}}")).collect()
}

/// What a feeder would do: offers the records handed back (Retry) first, then the
/// next ones, until the destination is full; over and over until each record is
/// Delivered or Refused. Returns every outcome seen, in order.
fn feed(http: &mut HttpDestination, payloads: &[String]) -> Vec<(u64, Outcome)> {
    let mut retries: VecDeque<u64> = VecDeque::new();
    let mut next = 0;
    let mut done = 0;
    let mut all = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while done < payloads.len() {
        assert!(Instant::now() < deadline, "not all delivered: {all:?}");
        let mut outcomes = Vec::new();
        http.collect(&mut outcomes);
        for (seq, outcome) in &outcomes {
            match outcome {
                Outcome::Delivered | Outcome::Refused(_) => done += 1,
                Outcome::Retry => retries.push_back(*seq),
            }
        }
        all.extend(outcomes);
        let mut full = false;
        while let Some(seq) = retries.pop_front() {
            if http.offer(&record(seq, &payloads[seq as usize])) != Offer::Taken {
                retries.push_front(seq);
                full = true;
                break;
            }
        }
        while !full && next < payloads.len() {
            if http.offer(&record(next as u64, &payloads[next])) != Offer::Taken {
                break;
            }
            next += 1;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    all
}

fn lines(payloads: &[String]) -> String {
    payloads
        .iter()
        .map(|payload| format!("{payload}\n"))
        .collect()
}

/// Each line of `body`, counted.
fn counted(body: &str) -> HashMap<&str, usize> {
    let mut counts = HashMap::new();
    for line in body.lines() {
        *counts.entry(line).or_default() += 1;
    }
    counts
}

#[test]
fn ok_answer_delivers_every_record_once_as_json_lines_with_method_and_headers() {
    let server = TestServer::start(&[]);
    let mut settings = HttpSettings::new("crm", &server.url);
    settings.method = Method::Put;
    settings.headers = vec![
        ("X-Api-Key".into(), "k1".into()),
        ("Authorization".into(), "Bearer t0k".into()),
    ];
    let mut http = HttpDestination::new(settings).unwrap();
    let payloads = payloads(5);
    let outcomes = feed(&mut http, &payloads);
    assert!(outcomes.iter().all(|(_, o)| *o == Outcome::Delivered));
    assert_eq!(outcomes.len(), 5, "each record reported once");
    assert_eq!(http.in_flight(), 0);
    assert_eq!(server.accepted(), lines(&payloads));
    for seen in server.seen() {
        assert_eq!((seen.method.as_str(), seen.path.as_str()), ("PUT", "/cdr"));
        assert_eq!(seen.headers["x-api-key"], "k1");
        assert_eq!(seen.headers["authorization"], "Bearer t0k");
        assert_eq!(seen.headers["content-type"], "application/x-ndjson");
    }
    assert!(http.describe().contains("last 200"), "{}", http.describe());
}

#[test]
fn batch_max_caps_the_records_of_one_request() {
    let server = TestServer::start(&[]);
    let mut settings = HttpSettings::new("crm", &server.url);
    settings.batch_max = 2;
    let mut http = HttpDestination::new(settings).unwrap();
    let payloads = payloads(9);
    feed(&mut http, &payloads);
    assert_eq!(server.accepted(), lines(&payloads));
    assert!(server
        .seen()
        .iter()
        .all(|seen| seen.body.lines().count() <= 2));
    assert!(server.seen().iter().all(|seen| seen.method == "POST"));
}

#[test]
fn server_error_then_ok_retries_and_delivers_each_record_once() {
    let server = TestServer::start(&[Answer::Status(500), Answer::Status(503)]);
    let mut http = HttpDestination::new(HttpSettings::new("crm", &server.url)).unwrap();
    let payloads = payloads(6);
    let outcomes = feed(&mut http, &payloads);
    let seen = server.seen();
    assert_eq!(seen[0].answer, Answer::Status(500));
    let retried = outcomes
        .iter()
        .filter(|(_, o)| *o == Outcome::Retry)
        .count();
    let refused_lines = seen[0].body.lines().count() + seen[1].body.lines().count();
    assert_eq!(
        retried, refused_lines,
        "every record of a failed batch comes back"
    );
    let accepted = server.accepted();
    assert_eq!(counted(&accepted), counted(&lines(&payloads)));
    assert_eq!(accepted.lines().count(), 6);
}

#[test]
fn silent_server_times_out_and_the_batch_comes_back_for_retry() {
    let server = TestServer::start(&[Answer::Silent]);
    let mut settings = HttpSettings::new("crm", &server.url);
    settings.timeout = Duration::from_millis(200);
    let mut http = HttpDestination::new(settings).unwrap();
    let payloads = payloads(3);
    let outcomes = feed(&mut http, &payloads);
    let silent = &server.seen()[0];
    assert_eq!(silent.answer, Answer::Silent);
    let retried: Vec<u64> = outcomes
        .iter()
        .filter(|(_, o)| *o == Outcome::Retry)
        .map(|(seq, _)| *seq)
        .collect();
    assert_eq!(retried.len(), silent.body.lines().count());
    assert_eq!(counted(&server.accepted()), counted(&lines(&payloads)));
}

#[test]
fn connection_refused_gives_retry_and_backs_off_doubling() {
    // A port just freed: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/cdr");
    let mut http = HttpDestination::new(HttpSettings::new("crm", &url)).unwrap();
    for expected in ["retrying after 100 ms", "retrying after 200 ms"] {
        assert_eq!(http.offer(&record(0, "{}")), Offer::Taken);
        let mut outcomes = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while outcomes.is_empty() {
            assert!(Instant::now() < deadline, "an outcome comes");
            http.collect(&mut outcomes);
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(outcomes, vec![(0, Outcome::Retry)]);
        assert!(http.describe().contains(expected), "{}", http.describe());
        assert_eq!(
            http.broken(),
            None,
            "a refused connection is retried, not broken"
        );
    }
}

#[test]
fn spooled_records_reach_a_failing_then_healthy_server_once_and_in_order_through_the_feeder() {
    let server = TestServer::start(&[Answer::Status(500), Answer::Status(502)]);
    let dir = TempDir::new("http-feeder");
    let log = Arc::new(Log::open(settings(&dir.0)).unwrap());
    let mut delivery = Delivery::new(Arc::clone(&log));
    let mut http_settings = HttpSettings::new("crm", &server.url);
    http_settings.batch_max = 7;
    let http = HttpDestination::new(http_settings).unwrap();
    let fast = FeederSettings {
        batch_window: Duration::from_millis(5),
        flush_timeout: Duration::from_millis(500),
    };
    delivery.start(Box::new(http), fast).unwrap();
    for n in 0..60 {
        append(&log, n).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while log.depth().0 != 0 {
        assert!(Instant::now() < deadline, "every record confirmed");
        std::thread::sleep(Duration::from_millis(5));
    }
    delivery.shutdown();
    assert_eq!(
        server.accepted(),
        lines(&payloads(60)),
        "once each, in log order"
    );
}

#[test]
fn bad_urls_are_refused_with_the_problem_named() {
    for (url, problem) in [
        ("ftp://host/x", "scheme 'ftp'"),
        ("host:8080/x", "scheme"),
        ("http:///x", "not a URL"),
        ("http://host:99999/x", "port '99999'"),
        ("http://host:0/x", "port '0'"),
        ("not a url at all", "no scheme"),
        ("http://exa mple/x", "not a URL"),
    ] {
        let error = HttpDestination::new(HttpSettings::new("crm", url))
            .err()
            .unwrap_or_else(|| panic!("{url} is refused"));
        assert!(matches!(error, HttpError::Url(..)), "{url}: {error}");
        assert!(error.to_string().contains(problem), "{url}: {error}");
    }
    assert!(HttpDestination::new(HttpSettings::new("crm", "http://[::1]:8080/x")).is_ok());
    assert!(HttpDestination::new(HttpSettings::new("crm", "https://example.org/x")).is_ok());
}

#[test]
fn bad_header_and_zero_limits_are_refused() {
    let mut settings = HttpSettings::new("crm", "http://127.0.0.1:1/x");
    settings.headers = vec![("X Bad".into(), "v".into())];
    let error = HttpDestination::new(settings).err().unwrap();
    assert_eq!(error.to_string(), "header 'X...': not a valid header name");
    let mut settings = HttpSettings::new("crm", "http://127.0.0.1:1/x");
    settings.batch_max = 0;
    let error = HttpDestination::new(settings).err().unwrap();
    assert_eq!(error.to_string(), "batch_max must be at least 1");
}

#[test]
fn password_in_the_url_never_shows() {
    let url = "http://alice:s3cret@127.0.0.1:1/cdr";
    let http = HttpDestination::new(HttpSettings::new("crm", url)).unwrap();
    let line = http.describe();
    assert!(
        !line.contains("s3cret") && !line.contains("alice"),
        "{line}"
    );
    assert_eq!(
        line,
        "http POST http://********@127.0.0.1:1/cdr — no request yet"
    );
    let error = HttpDestination::new(HttpSettings::new("crm", "http://alice:s3cret@h:0/"))
        .err()
        .unwrap();
    assert!(!error.to_string().contains("s3cret"), "{error}");
}

#[test]
fn method_names_are_read_in_any_case() {
    assert_eq!(Method::parse("post"), Ok(Method::Post));
    assert_eq!(Method::parse("PUT"), Ok(Method::Put));
    assert_eq!(Method::parse("Patch"), Ok(Method::Patch));
    let error = Method::parse("get").unwrap_err();
    assert!(error.contains("use post, put or patch"), "{error}");
}

#[test]
fn failed_batch_is_resent_before_anything_newer() {
    let server = TestServer::start(&[Answer::Status(500)]);
    let mut settings = HttpSettings::new("crm", &server.url);
    settings.batch_max = 2;
    let mut http = HttpDestination::new(settings).unwrap();
    let payloads = payloads(8);
    feed(&mut http, &payloads);
    assert_eq!(server.seen()[0].answer, Answer::Status(500));
    assert_eq!(
        server.accepted(),
        lines(&payloads),
        "once each, in log order"
    );
}

/// A server that fails the first request (every record then waits in the queue, so the
/// next batch holds them all), then answers `status` with `body` to any request holding
/// `marker`.
fn refusing(marker: &'static str, status: u16, body: &'static str) -> TestServer {
    TestServer::start_with(
        &[Answer::Status(503)],
        Arc::new(move |request: &str| {
            request
                .contains(marker)
                .then_some(Answer::Body(status, body))
        }),
    )
}

fn refusals(outcomes: &[(u64, Outcome)]) -> Vec<(u64, String)> {
    outcomes
        .iter()
        .filter_map(|(seq, outcome)| match outcome {
            Outcome::Refused(reason) => Some((*seq, reason.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn content_refusal_is_narrowed_down_to_the_one_record_the_server_rejects() {
    for status in [400, 413, 422] {
        let server = refusing("{\"n\":5}", status, "field n: 5 is not allowed");
        let mut settings = HttpSettings::new("crm", &server.url);
        settings.batch_max = 8;
        let mut http = HttpDestination::new(settings).unwrap();
        let payloads = payloads(8);
        let outcomes = feed(&mut http, &payloads);
        let refused = refusals(&outcomes);
        assert_eq!(refused.len(), 1, "{status}: {refused:?}");
        assert_eq!(refused[0].0, 5, "{status}");
        let reason = &refused[0].1;
        assert!(
            reason.starts_with(&format!("HTTP {status} "))
                && reason.ends_with(": field n: 5 is not allowed"),
            "{reason}"
        );
        let rest: Vec<String> = payloads
            .iter()
            .filter(|p| !p.contains(":5}"))
            .cloned()
            .collect();
        assert_eq!(
            server.accepted(),
            lines(&rest),
            "{status}: the others once each, in order"
        );
        assert!(
            server
                .seen()
                .iter()
                .any(|seen| seen.body.lines().count() == 8 && seen.answer != Answer::Status(503)),
            "{status}: the whole batch was sent before it was halved"
        );
    }
}

#[test]
fn other_client_error_refuses_the_whole_batch_in_one_request() {
    for status in [401, 403, 404] {
        let server = refusing("{", status, "no such endpoint");
        let mut http = HttpDestination::new(HttpSettings::new("crm", &server.url)).unwrap();
        let outcomes = feed(&mut http, &payloads(5));
        let refused = refusals(&outcomes);
        assert_eq!(refused.len(), 5, "{status}: {outcomes:?}");
        assert!(refused
            .iter()
            .all(|(_, reason)| reason.starts_with(&format!("HTTP {status} "))
                && reason.ends_with(": no such endpoint")));
        let seen = server.seen();
        assert_eq!(
            seen.len(),
            2,
            "{status}: the failed request, then one refusal"
        );
        assert_eq!(seen[1].body.lines().count(), 5);
        assert_eq!(server.accepted(), "");
    }
}

#[test]
fn request_timeout_and_too_many_requests_are_retried_not_refused() {
    let server = TestServer::start(&[Answer::Status(408), Answer::Status(429)]);
    let mut http = HttpDestination::new(HttpSettings::new("crm", &server.url)).unwrap();
    let payloads = payloads(4);
    let outcomes = feed(&mut http, &payloads);
    assert_eq!(refusals(&outcomes), []);
    assert!(outcomes.iter().any(|(_, o)| *o == Outcome::Retry));
    assert_eq!(server.accepted(), lines(&payloads));
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A request under way for far longer than a stop may take.
const LONG_TIMEOUT: Duration = Duration::from_secs(60);
/// What a stop may take here: the flush budget, plenty of room for a slow machine, and
/// far less than `LONG_TIMEOUT`.
const STOP_BOUND: Duration = Duration::from_secs(10);

#[test]
fn stop_during_a_silent_request_ends_within_the_flush_budget() {
    let server = TestServer::start(&[Answer::Silent]);
    let mut settings = HttpSettings::new("crm", &server.url);
    settings.timeout = LONG_TIMEOUT;
    let mut http = HttpDestination::new(settings).unwrap();
    for seq in 0..3 {
        assert_eq!(http.offer(&record(seq, "{}")), Offer::Taken);
    }
    wait_for("the request arrived", || !server.seen().is_empty());
    let started = Instant::now();
    http.flush(Duration::from_millis(200));
    let mut outcomes = Vec::new();
    http.collect(&mut outcomes);
    assert_eq!(outcomes, [], "nothing confirmed");
    assert_eq!(http.in_flight(), 3);
    drop(http);
    let took = started.elapsed();
    assert!(took < STOP_BOUND, "the stop took {took:?}");
}

#[test]
fn shutdown_with_a_silent_server_keeps_the_records_for_the_next_start() {
    let silent = TestServer::start(&[Answer::Silent]);
    let dir = TempDir::new("http-stop");
    let log = Arc::new(Log::open(settings(&dir.0)).unwrap());
    let mut delivery = Delivery::new(Arc::clone(&log));
    let mut http_settings = HttpSettings::new("crm", &silent.url);
    http_settings.timeout = LONG_TIMEOUT;
    let fast = FeederSettings {
        batch_window: Duration::from_millis(5),
        flush_timeout: Duration::from_millis(200),
    };
    let http = HttpDestination::new(http_settings).unwrap();
    delivery.start(Box::new(http), fast).unwrap();
    for n in 0..5 {
        append(&log, n).unwrap();
    }
    wait_for("the request arrived", || !silent.seen().is_empty());
    let started = Instant::now();
    let unconfirmed = delivery.shutdown();
    let took = started.elapsed();
    assert!(took < STOP_BOUND, "the shutdown took {took:?}");
    assert_eq!(unconfirmed, 5);
    assert_eq!(log.depth().0, 5, "every record stays in the spool");
    let healthy = TestServer::start(&[]);
    let http = HttpDestination::new(HttpSettings::new("crm", &healthy.url)).unwrap();
    delivery.start(Box::new(http), fast).unwrap();
    wait_for("every record confirmed", || log.depth().0 == 0);
    delivery.shutdown();
    assert_eq!(healthy.accepted(), lines(&payloads(5)));
}

#[test]
fn url_secrets_are_redacted_and_the_endpoint_stays_recognisable() {
    for (url, shown) in [
        (
            "https://alice:s3cret@billing.example.com:8443/api/v1/cdr?token=abc123&x=1",
            "https://********@billing.example.com:8443/api/v1/cdr?token=********&x=********",
        ),
        (
            "https://hooks.example.com/services/T0AB12CD3/B0EF45GH6/abcdefgh12345678ijkl",
            "https://hooks.example.com/services/T0AB12CD3/B0EF45GH6/********",
        ),
        (
            "http://10.0.0.5/cdr/123e4567-e89b-12d3-a456-426614174000/records#key",
            "http://10.0.0.5/cdr/********/records#********",
        ),
        ("http://[::1]:8080/x?apikey", "http://[::1]:8080/x?********"),
        (
            "http://host/transactionrecords/2024",
            "http://host/transactionrecords/2024",
        ),
    ] {
        assert_eq!(redact_url(url), shown, "{url}");
    }
}

#[test]
fn url_secrets_never_show_in_the_status_or_errors() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/hook/0123456789abcdefXYZ?token=t0psecret");
    let mut http = HttpDestination::new(HttpSettings::new("crm", &url)).unwrap();
    assert_eq!(http.offer(&record(0, "{}")), Offer::Taken);
    let mut outcomes = Vec::new();
    wait_for("an outcome", || {
        http.collect(&mut outcomes);
        !outcomes.is_empty()
    });
    let line = http.describe();
    assert_eq!(
        line,
        format!(
            "http POST http://127.0.0.1:{port}/hook/********?token=******** — {}",
            line.split(" — ").nth(1).unwrap()
        )
    );
    assert!(
        !line.contains("t0psecret") && !line.contains("0123456789abcdef"),
        "{line}"
    );
    let error = HttpDestination::new(HttpSettings::new("crm", "http://h:0/x?token=t0psecret"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("port '0'") && !error.contains("t0psecret"),
        "{error}"
    );
}

#[test]
fn refusal_reason_never_quotes_a_secret_of_the_url() {
    let server = refusing("{", 401, "token t0psecret is not valid");
    let url = format!("{}?token=t0psecret", server.url);
    let mut http = HttpDestination::new(HttpSettings::new("crm", &url)).unwrap();
    let outcomes = feed(&mut http, &payloads(1));
    let refused = refusals(&outcomes);
    assert_eq!(refused.len(), 1, "{outcomes:?}");
    assert_eq!(
        refused[0].1,
        "HTTP 401 Unauthorized: token ******** is not valid"
    );
}

#[test]
fn header_error_names_the_header_never_its_value() {
    assert_eq!(header_shown("X-Api-Key=k1secret"), "X-Api-Key");
    assert_eq!(header_shown(" Authorization Bearer t0k"), "Authorization");
    let error = crm_build_error(&[
        ("type", "http"),
        ("url", "http://127.0.0.1:1/cdr"),
        ("header", "Authorization Bearer s3cr3t-t0ken"),
    ]);
    assert_eq!(
        error,
        "cdr_kafka.conf [crm] header = 'Authorization (value not shown)' (line 4): not Name: value"
    );
}

#[test]
fn stop_during_a_connect_that_hangs_ends_within_the_flush_budget() {
    use std::os::fd::AsRawFd;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    // SAFETY: listen(2) on a socket this test owns; a backlog of 0 holds one connection.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
    let addr = listener.local_addr().unwrap();
    let _first = TcpStream::connect(addr).unwrap();
    // Its queue full, the listener drops every further SYN: a connect hangs.
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err(),
        "a connect to a full listener hangs"
    );
    let mut settings = HttpSettings::new("crm", &format!("http://{addr}/cdr"));
    settings.timeout = LONG_TIMEOUT;
    let mut http = HttpDestination::new(settings).unwrap();
    assert_eq!(http.offer(&record(0, "{}")), Offer::Taken);
    // Time for the worker to be connecting (the stop is as short otherwise).
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    http.flush(Duration::from_millis(100));
    assert_eq!(http.in_flight(), 1);
    drop(http);
    let took = started.elapsed();
    assert!(took < STOP_BOUND, "the stop took {took:?}");
}

#[test]
fn host_name_is_looked_up_and_each_address_tried() {
    let server = TestServer::start(&[]);
    // localhost may come first as ::1, where nothing listens: 127.0.0.1 is tried next.
    let url = server.url.replace("127.0.0.1", "localhost");
    let mut http = HttpDestination::new(HttpSettings::new("crm", &url)).unwrap();
    let payloads = payloads(3);
    feed(&mut http, &payloads);
    assert_eq!(server.accepted(), lines(&payloads));
}

mod tls;

/// What reading the file and building destination `[crm]` with these options says, as
/// the module would at load; empty when it is built.
fn crm_build_error(options: &[(&str, &str)]) -> String {
    let lines = std::iter::once(("global", "brokers", "127.0.0.1:9092"))
        .chain(options.iter().map(|(name, value)| ("crm", *name, *value)));
    let entries: Vec<crate::config::Entry> = lines
        .enumerate()
        .map(|(line, (section, name, value))| crate::config::Entry {
            section: section.to_string(),
            name: name.to_string(),
            value: value.to_string(),
            line: line as i32 + 1,
        })
        .collect();
    let host = crate::config::HostCapabilities {
        tenant_fields: true,
    };
    let settings = match crate::config::parse(&entries, host, &mut || Ok(Vec::new())) {
        Ok(settings) => settings,
        Err(error) => return error.to_string(),
    };
    let identity = crate::asterisk::host::Identity {
        entity_id: "00:11".into(),
        system_name: String::new(),
        asterisk_version: "22".into(),
        hostname: "pbx".into(),
        tenant_fields: true,
        spool_dir: String::new(),
    };
    let shared = crate::destinations::shared_producer(&settings).unwrap();
    match crate::destinations::build(&settings, &identity, "crm", None, &shared) {
        Ok(_) => String::new(),
        Err(error) => error.to_string(),
    }
}
