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
use crate::delivery::log::{Log, RecordKind};
use crate::delivery::Delivery;

/// How the test server answers one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Status(u16),
    /// Reads the request and never answers.
    Silent,
}

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
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}/cdr", listener.local_addr().unwrap());
        let seen = Arc::<Mutex<Vec<Seen>>>::default();
        let stop = Arc::new(AtomicBool::new(false));
        let script: VecDeque<Answer> = script.iter().copied().collect();
        let (thread_seen, thread_stop) = (Arc::clone(&seen), Arc::clone(&stop));
        let thread =
            std::thread::spawn(move || serve(&listener, script, &thread_seen, &thread_stop));
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

    /// The bodies the server answered with a 2xx, concatenated.
    fn accepted(&self) -> String {
        self.seen()
            .iter()
            .filter(|seen| matches!(seen.answer, Answer::Status(200..=299)))
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
        let (script, seen, stop) = (Arc::clone(&script), Arc::clone(seen), Arc::clone(stop));
        connections.push(std::thread::spawn(move || {
            serve_connection(stream, &script, &seen, &stop)
        }));
    }
    for connection in connections {
        let _ = connection.join();
    }
}

fn serve_connection(
    stream: TcpStream,
    script: &Mutex<VecDeque<Answer>>,
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
            request.answer = script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Answer::Status(200));
            seen.push(request.clone());
            request.answer
        };
        match answer {
            Answer::Status(code) => {
                let response = format!("HTTP/1.1 {code} Scripted\r\nContent-Length: 2\r\n\r\nok");
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
    StoredRecord {
        seq,
        captured_ms: 0,
        kind: RecordKind::Cdr,
        record_id: "id",
        topic: "asterisk_cdr",
        key: None,
        headers: Vec::new(),
        payload: payload.as_bytes(),
    }
}

fn payloads(n: u64) -> Vec<String> {
    (0..n).map(|n| format!("{{\"n\":{n}}}")).collect()
}

/// What a feeder would do: offers every record, offers a Retry again, until each is
/// Delivered. Returns every outcome seen, in order.
fn feed(http: &mut HttpDestination, payloads: &[String]) -> Vec<(u64, Outcome)> {
    let mut waiting: VecDeque<u64> = (0..payloads.len() as u64).collect();
    let mut delivered = Vec::new();
    let mut all = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while delivered.len() < payloads.len() {
        assert!(Instant::now() < deadline, "not all delivered: {all:?}");
        while let Some(seq) = waiting.pop_front() {
            if http.offer(&record(seq, &payloads[seq as usize])) != Offer::Taken {
                waiting.push_front(seq);
                break;
            }
        }
        let mut outcomes = Vec::new();
        http.collect(&mut outcomes);
        for (seq, outcome) in &outcomes {
            match outcome {
                Outcome::Delivered => delivered.push(*seq),
                Outcome::Retry => waiting.push_back(*seq),
                Outcome::Refused(reason) => panic!("refused: {reason}"),
            }
        }
        all.extend(outcomes);
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
fn spooled_records_reach_a_failing_then_healthy_server_once_through_the_feeder() {
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
    assert_eq!(counted(&server.accepted()), counted(&lines(&payloads(60))));
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
    assert_eq!(error.to_string(), "header 'X Bad': not a valid header name");
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
