//! Destinations, routing and formats end to end: Asterisk 22 (the root `make sandbox`
//! builds) with the module, a tansu broker, and the file, syslog and HTTP destinations
//! read back by the tests (files in the root, a datagram socket and an HTTP server of
//! the test's own on 127.0.0.1).
//!
//! One Asterisk runs at a time (they share the root), so the tests take a lock.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::{self, sleep};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{schema, Asterisk, Message, Root, Tansu};

const TZ: &str = "America/Sao_Paulo";
const WAIT: Duration = Duration::from_secs(40);

fn lock() -> std::sync::MutexGuard<'static, ()> {
    support::one_asterisk()
}

/// Calls of the tests' own: each `exten` runs on the Local channel's second half, the
/// first half runs Wait(1); `tag` names the CDR a test looks for.
const ROUTING_DIALPLAN: &str = r#"
[cdrk-routing]
exten => acme,1,Set(CHANNEL(accountcode)=acme)
 same => n,Set(CDR(tag)=acme-answered)
 same => n,Answer()
 same => n,Hangup()
exten => acmebusy,1,Set(CHANNEL(accountcode)=acme)
 same => n,Set(CDR(tag)=acme-missed)
 same => n,Busy(1)
exten => nobody,1,Set(CDR(tag)=nobody-missed)
 same => n,Busy(1)
exten => internal,1,Set(CDR(tag)=internal-answered)
 same => n,Answer()
 same => n,Hangup()
exten => skip,1,Set(CDR(tag)=skipped)
 same => n,Set(CDR(kafka_skip)=yes)
 same => n,Answer()
 same => n,Hangup()
exten => archiveonly,1,Set(CDR(tag)=archive-only)
 same => n,Set(CDR(kafka_to)=archive)
 same => n,Answer()
 same => n,Hangup()
exten => plain,1,Set(CDR(tag)=plain)
 same => n,Answer()
 same => n,Hangup()
"#;

fn call(asterisk: &Asterisk<'_>, exten: &str) {
    asterisk.rx(&format!(
        "channel originate Local/{exten}@cdrk-routing application Wait 1"
    ));
}

fn start<'r>(root: &'r Root, conf: &str) -> Asterisk<'r> {
    let asterisk = Asterisk::start(root, conf, TZ);
    asterisk.add_dialplan(ROUTING_DIALPLAN);
    asterisk.load_module();
    asterisk
}

/// One line of `cdr kafka show destinations`.
#[derive(Debug, Clone, Default)]
struct Row {
    kind: String,
    state: String,
    matched: u64,
    delivered: u64,
    failed: u64,
    filtered: u64,
    skipped: u64,
    waiting: u64,
}

fn destinations(asterisk: &Asterisk<'_>) -> HashMap<String, Row> {
    let text = asterisk.rx("cdr kafka show destinations");
    let mut rows = HashMap::new();
    for line in text.lines().skip(1) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.len() < 9 || words[3].parse::<u64>().is_err() {
            continue;
        }
        let n = |i: usize| words[i].parse::<u64>().unwrap_or(0);
        rows.insert(
            words[0].to_string(),
            Row {
                kind: words[1].to_string(),
                state: words[2].to_string(),
                matched: n(3),
                delivered: n(4),
                failed: n(5),
                filtered: n(6),
                skipped: n(7),
                waiting: n(8),
            },
        );
    }
    rows
}

/// Waits until Asterisk has posted every CDR of the calls made (the count stays put for
/// a second), then until every running destination has nothing waiting or in flight.
fn wait_until_settled(asterisk: &Asterisk<'_>) -> HashMap<String, Row> {
    let deadline = Instant::now() + WAIT;
    let mut received = asterisk.counter("Received");
    loop {
        sleep(Duration::from_secs(1));
        let now = asterisk.counter("Received");
        if now == received {
            break;
        }
        received = now;
        assert!(Instant::now() < deadline, "CDRs kept coming");
    }
    loop {
        let rows = destinations(asterisk);
        let settled = !rows.is_empty()
            && rows.values().all(|row| {
                row.state != "running"
                    || (row.waiting == 0 && row.matched == row.delivered + row.failed)
            });
        if settled {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "destinations did not settle:\n{}\n{}",
            asterisk.rx("cdr kafka show destinations"),
            asterisk.rx("cdr kafka show status")
        );
        sleep(Duration::from_millis(200));
    }
}

/// The keys of a JSON object line, in the order written.
fn ordered_keys(line: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut depth = 0;
    let mut chars = line.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            '"' => {
                let start = at + 1;
                let mut end = start;
                while let Some((i, c)) = chars.next() {
                    if c == '\\' {
                        chars.next();
                    } else if c == '"' {
                        end = i;
                        break;
                    }
                }
                let is_key = line[end + 1..].trim_start().starts_with(':');
                if depth == 1 && is_key {
                    keys.push(line[start..end].to_string());
                }
            }
            _ => {}
        }
    }
    keys
}

fn record_id(message: &Message) -> String {
    message
        .header("record_id")
        .expect("record_id header")
        .to_string()
}

fn tag(record: &Value) -> Option<&str> {
    record.get("tag").and_then(Value::as_str)
}

/// A folder inside the root (what the module, chrooted, sees as `/name`), emptied.
fn root_dir(root: &Root, inside: &str) -> PathBuf {
    let dir = root.path.join(inside.trim_start_matches('/'));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create a folder in the root");
    dir
}

/// Every line of every file in `dir` (rotated ones included), by file name.
fn file_lines(dir: &Path) -> BTreeMap<String, Vec<String>> {
    let mut files = BTreeMap::new();
    for entry in fs::read_dir(dir).expect("read the destination's folder") {
        let entry = entry.expect("entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        let text = fs::read_to_string(entry.path()).expect("read a destination file");
        files.insert(name, text.lines().map(str::to_string).collect());
    }
    files
}

#[test]
fn routing_by_accountcode_and_missed_calls_to_templated_topics_with_filters() {
    let _one = lock();
    let root = Root::from_env();
    let tansu = Tansu::start();
    for topic in [
        "all",
        "cdr.missed.acme",
        "cdr.missed.unknown",
        "external",
        "bydisp.ANSWERED",
        "bydisp.BUSY",
        "bydisp.NO_ANSWER",
        "bydisp.other",
    ] {
        tansu.create_topic(topic);
    }
    let conf = format!(
        "[global]\nbrokers = {}\ntopic = all\n\n\
         [missed]\ntype = kafka\ntopic = cdr.missed.${{accountcode}}\ntopic_fallback = cdr.missed.unknown\nmissed = only\n\n\
         [external]\ntype = kafka\ntopic = external\nkey = accountcode\nmissed = exclude\nfilter = CDR(tag) !~ ^internal\nfilter = lastapp in Hangup,Wait,Busy,Answer\n\n\
         [bydisp]\ntype = kafka\ntopic = bydisp.${{disposition}}\ntopic_fallback = bydisp.other\n",
        tansu.brokers()
    );
    let asterisk = start(&root, &conf);
    for exten in ["acme", "acmebusy", "nobody", "internal"] {
        call(&asterisk, exten);
    }
    asterisk.wait_for_no_channels(WAIT);
    let rows = wait_until_settled(&asterisk);

    let all = root.read_topic(&tansu.brokers(), "all");
    let records: Vec<Value> = all.iter().map(Message::json).collect();
    let ids: HashSet<String> = all.iter().map(record_id).collect();
    assert_eq!(ids.len(), all.len(), "no record twice on 'all'");
    assert!(
        records.len() >= 8,
        "every CDR on [global]'s topic: {}",
        records.len()
    );
    let tagged = |name: &str| records.iter().filter(|r| tag(r) == Some(name)).count();
    for name in [
        "acme-answered",
        "acme-missed",
        "nobody-missed",
        "internal-answered",
    ] {
        // Setting the account code may split the call's CDR in two: both keep the tag.
        assert!(tagged(name) >= 1, "a CDR tagged {name} on 'all'");
    }

    // Missed calls (never answered) to cdr.missed.<accountcode>, or the fallback.
    let acme = root.read_topic(&tansu.brokers(), "cdr.missed.acme");
    let unknown = root.read_topic(&tansu.brokers(), "cdr.missed.unknown");
    for message in acme.iter().chain(&unknown) {
        assert!(
            message.json()["answer"].is_null(),
            "only missed calls: {}",
            message.payload
        );
    }
    assert!(acme.iter().all(|m| m.json()["accountcode"] == "acme"));
    assert!(unknown.iter().all(|m| m.json()["accountcode"] == ""));
    assert!(acme.iter().any(|m| tag(&m.json()) == Some("acme-missed")));
    assert!(unknown
        .iter()
        .any(|m| tag(&m.json()) == Some("nobody-missed")));
    let missed_ids: HashSet<String> = acme.iter().chain(&unknown).map(record_id).collect();
    let expected_missed: HashSet<String> = all
        .iter()
        .filter(|m| m.json()["answer"].is_null())
        .map(record_id)
        .collect();
    assert_eq!(
        missed_ids, expected_missed,
        "every missed call, once, nothing else"
    );
    assert_eq!(rows["missed"].matched as usize, missed_ids.len());
    // The module_start record is filtered too: [missed] takes CDRs only.
    assert_eq!(
        rows["missed"].filtered as usize,
        records.len() - missed_ids.len() + 1,
        "{rows:#?}"
    );

    // Filters: all must hold.
    let external_messages = root.read_topic(&tansu.brokers(), "external");
    for message in &external_messages {
        let accountcode = message.json()["accountcode"]
            .as_str()
            .unwrap_or("")
            .to_string();
        // An empty account code is an empty key, as [global]'s key does.
        assert_eq!(
            message.key,
            Some(accountcode),
            "[external] keys by accountcode"
        );
    }
    let external: Vec<Value> = external_messages.iter().map(Message::json).collect();
    let expected: Vec<&Value> = records
        .iter()
        .filter(|r| !r["answer"].is_null())
        .filter(|r| !tag(r).is_some_and(|t| t.starts_with("internal")))
        .filter(|r| {
            ["Hangup", "Wait", "Busy", "Answer"].contains(&r["lastapp"].as_str().unwrap_or(""))
        })
        .collect();
    assert_eq!(external.len(), expected.len(), "external: {external:?}");
    assert!(external.iter().all(|r| tag(r) != Some("internal-answered")));
    assert!(external.iter().any(|r| tag(r) == Some("acme-answered")));
    assert_eq!(rows["external"].kind, "kafka");

    // Routed by disposition: "NO ANSWER" becomes NO_ANSWER in the topic's name.
    let mut by_disposition = 0;
    for disposition in ["ANSWERED", "BUSY", "NO ANSWER"] {
        let topic = format!("bydisp.{}", disposition.replace(' ', "_"));
        let messages = root.read_topic(&tansu.brokers(), &topic);
        assert!(
            messages
                .iter()
                .all(|m| m.json()["disposition"] == disposition),
            "{topic}"
        );
        by_disposition += messages.len();
    }
    let expected_dispositions = records
        .iter()
        .filter(|r| {
            ["ANSWERED", "BUSY", "NO ANSWER"].contains(&r["disposition"].as_str().unwrap_or(""))
        })
        .count();
    assert_eq!(by_disposition, expected_dispositions);
    let other = root.read_topic(&tansu.brokers(), "bydisp.other").len();
    assert_eq!(
        by_disposition + other,
        records.len(),
        "every CDR on one bydisp topic"
    );
}

#[test]
fn dialplan_skip_and_kafka_to_steer_single_cdrs_and_never_appear_in_them() {
    let _one = lock();
    let root = Root::from_env();
    let tansu = Tansu::start();
    tansu.create_topic("all");
    let dir = root_dir(&root, "var/log/asterisk/cdrk-e2e-to");
    let conf = format!(
        "[global]\nbrokers = {}\ntopic = all\n\n\
         [archive]\ntype = file\npath = /var/log/asterisk/cdrk-e2e-to/cdr.jsonl\nrotate = S1k\n\n\
         [short]\ntype = file\npath = /var/log/asterisk/cdrk-e2e-short/cdr.jsonl\nfields = start,src,dst,billsec:duration,tag\n",
        tansu.brokers()
    );
    let short_dir = root_dir(&root, "var/log/asterisk/cdrk-e2e-short");
    let asterisk = start(&root, &conf);
    for exten in ["skip", "archiveonly", "plain"] {
        call(&asterisk, exten);
    }
    asterisk.wait_for_no_channels(WAIT);
    let rows = wait_until_settled(&asterisk);

    let kafka: Vec<Value> = root
        .read_topic(&tansu.brokers(), "all")
        .iter()
        .map(Message::json)
        .collect();
    let files = file_lines(&dir);
    let file: Vec<Value> = files
        .values()
        .flatten()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    let count =
        |records: &[Value], name: &str| records.iter().filter(|r| tag(r) == Some(name)).count();
    assert_eq!(
        count(&kafka, "skipped") + count(&file, "skipped"),
        0,
        "kafka_skip: nowhere"
    );
    assert_eq!(
        count(&kafka, "archive-only"),
        0,
        "kafka_to = archive: not on Kafka"
    );
    assert_eq!(
        count(&file, "archive-only"),
        1,
        "kafka_to = archive: in the file"
    );
    assert_eq!((count(&kafka, "plain"), count(&file, "plain")), (1, 1));
    for record in kafka.iter().chain(&file) {
        assert!(record.get("kafka_to").is_none() && record.get("kafka_skip").is_none());
    }
    assert_eq!(
        rows["global"].skipped, 1,
        "the kafka_to CDR counted as skipped by global"
    );
    let status = asterisk.rx("cdr kafka show destinations");
    assert!(status.contains("sent nowhere (kafka_skip): 1"), "{status}");

    // rotate = S1k: no file past 1,024 bytes, and every record in one of them.
    assert!(files.len() >= 2, "rotated by size: {:?}", files.keys());
    for (name, lines) in &files {
        let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
        assert!(bytes <= 1024 || lines.len() == 1, "{name}: {bytes} bytes");
    }
    // fields = ...: chosen, ordered and renamed.
    let short = file_lines(&short_dir);
    let short: Vec<&String> = short.values().flatten().collect();
    assert_eq!(
        short.len(),
        kafka.len(),
        "[short] takes every CDR [global] takes"
    );
    for line in &short {
        let keys: Vec<String> = serde_json::from_str::<serde_json::Map<String, Value>>(line)
            .map(|_| ())
            .map_or_else(|e| panic!("{e}: {line}"), |_| ordered_keys(line));
        let expected = ["start", "src", "dst", "duration"];
        assert_eq!(&keys[..4], expected, "{line}");
        assert!(
            keys.len() == 4 || (keys.len() == 5 && keys[4] == "tag"),
            "{line}"
        );
    }
    assert!(short.iter().any(|line| line.contains("\"tag\":\"plain\"")));
}

#[test]
fn file_destination_rotates_by_lines_in_envelopes_that_match_the_schema() {
    let _one = lock();
    let root = Root::from_env();
    let tansu = Tansu::start();
    tansu.create_topic("all");
    let dir = root_dir(&root, "var/log/asterisk/cdrk-e2e-file");
    let conf = format!(
        "[global]\nbrokers = {}\ntopic = all\nloguniqueid = yes\n\n\
         [archive]\ntype = file\npath = /var/log/asterisk/cdrk-e2e-file/cdr.jsonl\nrotate = L3\nformat = envelope\nnormalize = snake_case\n",
        tansu.brokers()
    );
    let asterisk = start(&root, &conf);
    for exten in ["acme", "acmebusy", "nobody", "plain"] {
        call(&asterisk, exten);
    }
    asterisk.wait_for_no_channels(WAIT);
    wait_until_settled(&asterisk);

    let kafka = root.read_topic(&tansu.brokers(), "all");
    let files = file_lines(&dir);
    assert!(
        files.len() >= 3,
        "rotated every 3 lines: {:?}",
        files.keys()
    );
    for (name, lines) in &files {
        assert!(lines.len() <= 3, "{name} has {} lines", lines.len());
        if name != "cdr.jsonl" {
            assert!(
                name.starts_with("cdr.jsonl.") && name.len() >= "cdr.jsonl.YYYYMMDD-HHMMSS".len(),
                "{name}"
            );
        }
    }
    let mut file_ids = Vec::new();
    for line in files.values().flatten() {
        let envelope: Value = serde_json::from_str(line).expect("one JSON envelope a line");
        schema::validate("envelope.json", &envelope).unwrap_or_else(|e| panic!("{e}\n{line}"));
        schema::validate("cdr.snake_case.json", &envelope["record"])
            .unwrap_or_else(|e| panic!("{e}\n{line}"));
        assert_eq!(envelope["type"], "cdr");
        assert!(
            envelope["record"].get("entity_id").is_some(),
            "snake_case keys"
        );
        file_ids.push(
            envelope["record_id"]
                .as_str()
                .expect("record_id")
                .to_string(),
        );
    }
    let mut kafka_ids: Vec<String> = kafka.iter().map(record_id).collect();
    file_ids.sort();
    kafka_ids.sort();
    assert_eq!(
        file_ids, kafka_ids,
        "the same records in the files as on Kafka, once each"
    );
    // Kafka's records are the contract, byte for byte what the schema says.
    for message in &kafka {
        schema::validate("cdr.json", &message.json())
            .unwrap_or_else(|e| panic!("{e}\n{}", message.payload));
    }
}

#[test]
fn kafka_down_then_the_file_takes_exactly_what_kafka_gave_up() {
    let _one = lock();
    let root = Root::from_env();
    let mut tansu = Tansu::start();
    tansu.create_topic("all");
    let dir = root_dir(&root, "var/log/asterisk/cdrk-e2e-failover");
    let conf = format!(
        "[global]\nbrokers = {}\ntopic = all\ncontrol = alternative\ngive_up_after_ms = 3000\n\n\
         [archive]\ntype = file\npath = /var/log/asterisk/cdrk-e2e-failover/cdr.jsonl\ncontrol = sufficient\n",
        tansu.brokers()
    );
    let asterisk = start(&root, &conf);
    call(&asterisk, "acme");
    call(&asterisk, "plain");
    asterisk.wait_for_no_channels(WAIT);
    wait_until_settled(&asterisk);
    let on_kafka: Vec<String> = root
        .read_topic(&tansu.brokers(), "all")
        .iter()
        .map(record_id)
        .collect();
    assert!(on_kafka.len() >= 4, "Kafka up: it takes the records");
    assert!(
        file_lines(&dir).values().flatten().next().is_none(),
        "Kafka took them: the file has none"
    );

    tansu.kill();
    call(&asterisk, "acmebusy");
    call(&asterisk, "nobody");
    asterisk.wait_for_no_channels(WAIT);
    let rows = wait_until_settled(&asterisk);
    let in_file: Vec<Value> = file_lines(&dir)
        .values()
        .flatten()
        .map(|line| serde_json::from_str(line).expect("JSON"))
        .collect();
    let tags: HashSet<&str> = in_file.iter().filter_map(tag).collect();
    assert!(
        tags.contains("acme-missed") && tags.contains("nobody-missed"),
        "{tags:?}"
    );
    assert!(
        !tags.contains("acme-answered") && !tags.contains("plain"),
        "{tags:?}"
    );
    assert_eq!(
        rows["global"].failed as usize,
        in_file.len(),
        "each record Kafka gave up is in the file"
    );
    assert_eq!(rows["archive"].delivered as usize, in_file.len());
    assert_eq!(
        rows["archive"].skipped as usize,
        on_kafka.len(),
        "what Kafka took never went to the file"
    );
    let dead_letters = root.spool().join("dead-letter.jsonl");
    assert!(
        !dead_letters.exists() || fs::read_to_string(&dead_letters).unwrap().is_empty(),
        "no final failure"
    );
}

#[test]
fn syslog_gets_acc_lines_and_the_module_start_and_stop_records() {
    let _one = lock();
    let root = Root::from_env();
    let tansu = Tansu::start();
    tansu.create_topic("all");
    let socket_dir = root_dir(&root, "tmp/cdrk-e2e-syslog");
    let socket = UnixDatagram::bind(socket_dir.join("log")).expect("bind a syslog socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let conf = format!(
        "[global]\nbrokers = {}\ntopic = all\n\n\
         [acc]\ntype = syslog\nsocket = /tmp/cdrk-e2e-syslog/log\nrecords = cdr, control\nformat = kv\nfacility = local3\nlevel = notice\ntag = pbx\n",
        tansu.brokers()
    );
    let asterisk = start(&root, &conf);
    call(&asterisk, "acme");
    call(&asterisk, "nobody");
    asterisk.wait_for_no_channels(WAIT);
    wait_until_settled(&asterisk);
    let out = asterisk.rx("module unload cdr_kafka.so");
    assert!(out.contains("Unloaded"), "{out}");

    let mut lines = Vec::new();
    let mut buffer = vec![0u8; 65536];
    while let Ok(n) = socket.recv(&mut buffer) {
        lines.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
    }
    // local3 (19) * 8 + notice (5)
    assert!(lines.iter().all(|l| l.starts_with("<157>")), "{lines:#?}");
    let bodies: Vec<&str> = lines
        .iter()
        .map(|l| l.split_once(": ").map_or("", |(_, body)| body))
        .collect();
    assert!(
        bodies
            .first()
            .is_some_and(|b| b.starts_with("type=module_start;")),
        "{bodies:#?}"
    );
    assert!(
        bodies
            .last()
            .is_some_and(|b| b.starts_with("type=module_stop;")),
        "{bodies:#?}"
    );
    let answered = bodies
        .iter()
        .find(|b| b.contains("tag=acme-answered"))
        .expect("the answered call");
    assert!(
        answered.starts_with("ACC: call answered: clid="),
        "{answered}"
    );
    assert!(answered.contains(";accountcode=acme;"), "{answered}");
    let missed = bodies
        .iter()
        .find(|b| b.contains("tag=nobody-missed"))
        .expect("the missed call");
    assert!(missed.starts_with("ACC: call missed: "), "{missed}");
    assert!(missed.contains(";answer=;"), "{missed}");
    let stop = bodies.last().unwrap();
    assert!(
        stop.contains("config_digest=crc32:") && stop.contains("spool_depth="),
        "{stop}"
    );
}

/// What the test's HTTP server saw: the bodies it accepted, and how many requests came.
type Seen = (Arc<Mutex<Vec<String>>>, Arc<Mutex<usize>>);

/// An HTTP server on 127.0.0.1 that leaves the first request unanswered, answers 500 to
/// the second and 200 after; returns its port and what it saw.
fn flaky_http_server() -> (u16, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let requests = Arc::new(Mutex::new(0usize));
    let (accepted_in, requests_in) = (Arc::clone(&accepted), Arc::clone(&requests));
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0u8; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let number = {
                let mut n = requests_in.lock().unwrap();
                *n += 1;
                *n
            };
            let answer = if number == 1 {
                // No answer within the destination's timeout_ms.
                sleep(Duration::from_millis(2500));
                continue;
            } else if number == 2 {
                "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            } else {
                accepted_in
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&body).into_owned());
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            };
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    (port, (accepted, requests))
}

#[test]
fn http_destination_retries_a_timeout_and_a_500_and_delivers_each_record_once() {
    let _one = lock();
    let root = Root::from_env();
    let tansu = Tansu::start();
    tansu.create_topic("all");
    let (port, (accepted, requests)) = flaky_http_server();
    let conf = format!(
        "[global]\nbrokers = {}\ntopic = all\n\n\
         [billing]\ntype = http\nurl = http://127.0.0.1:{port}/cdr\nheader = X-Pbx: e2e\ntimeout_ms = 1000\nformat = envelope\n",
        tansu.brokers()
    );
    let asterisk = start(&root, &conf);
    call(&asterisk, "acme");
    call(&asterisk, "plain");
    asterisk.wait_for_no_channels(WAIT);
    let rows = wait_until_settled(&asterisk);
    assert!(
        *requests.lock().unwrap() >= 3,
        "the timeout and the 500 were tried again"
    );
    let kafka_ids: HashSet<String> = root
        .read_topic(&tansu.brokers(), "all")
        .iter()
        .map(record_id)
        .collect();
    let mut http_ids = Vec::new();
    for body in accepted.lock().unwrap().iter() {
        for line in body.lines() {
            let envelope: Value = serde_json::from_str(line).expect("JSON lines");
            schema::validate("envelope.json", &envelope).unwrap_or_else(|e| panic!("{e}\n{line}"));
            http_ids.push(envelope["record_id"].as_str().unwrap().to_string());
        }
    }
    let unique: HashSet<String> = http_ids.iter().cloned().collect();
    assert_eq!(unique.len(), http_ids.len(), "no record accepted twice");
    assert_eq!(unique, kafka_ids, "every record once");
    assert_eq!(rows["billing"].delivered as usize, http_ids.len());
}

#[test]
fn disabled_destination_catches_up_when_enabled_with_nothing_lost_or_doubled() {
    let _one = lock();
    let root = Root::from_env();
    let tansu = Tansu::start();
    tansu.create_topic("all");
    let dir = root_dir(&root, "var/log/asterisk/cdrk-e2e-toggle");
    let conf = format!(
        "[global]\nbrokers = {}\ntopic = all\n\n[archive]\ntype = file\npath = /var/log/asterisk/cdrk-e2e-toggle/cdr.jsonl\n",
        tansu.brokers()
    );
    let asterisk = start(&root, &conf);
    asterisk.flood(300);
    let out = asterisk.rx("cdr kafka destination disable archive");
    assert!(out.contains("destination 'archive' disabled"), "{out}");
    asterisk.flood(300);
    let rows = destinations(&asterisk);
    assert_eq!(rows["archive"].state, "disabled");
    let lines_while_disabled = file_lines(&dir).values().flatten().count();
    let out = asterisk.rx("cdr kafka destination enable archive");
    assert!(out.contains("enabled"), "{out}");
    asterisk.flood(300);
    wait_until_settled(&asterisk);
    let out = asterisk.rx("cdr kafka destination disable nosuch");
    assert!(out.contains("no destination 'nosuch'"), "{out}");
    // A reload runs what the file enables, also what the CLI disabled.
    asterisk.rx("cdr kafka destination disable archive");
    asterisk.rx("module reload cdr_kafka.so");
    assert_eq!(destinations(&asterisk)["archive"].state, "running");

    let kafka: Vec<String> = root
        .read_topic(&tansu.brokers(), "all")
        .iter()
        .map(record_id)
        .collect();
    let file = identities_in_files(&dir);
    let unique: HashSet<&String> = file.iter().collect();
    assert_eq!(unique.len(), file.len(), "nothing doubled in the file");
    assert_eq!(
        file.len(),
        kafka.len(),
        "the file has every record Kafka has"
    );
    assert_eq!(file.len(), 900);
    assert!(lines_while_disabled < 900);
}

/// res_prometheus and what it needs loaded (its PJSIP metrics link against res_pjsip).
const PROMETHEUS_MODULES: &str = "load => res_sorcery_config.so
load => res_sorcery_memory.so
load => res_sorcery_astdb.so
load => res_pjproject.so
load => res_pjsip.so
load => res_prometheus.so
";

/// Asterisk's HTTP server on a free port of 127.0.0.1 with res_prometheus at `/metrics`,
/// configured in the root for the next boot; switched off again on drop, so that later
/// tests boot without it.
struct MetricsEndpoint {
    etc: PathBuf,
    port: u16,
}

impl MetricsEndpoint {
    fn configure(root: &Root) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let etc = root.path.join("etc/asterisk");
        fs::write(
            etc.join("http.conf"),
            format!("[general]\nenabled = yes\nbindaddr = 127.0.0.1\nbindport = {port}\n"),
        )
        .expect("http.conf");
        fs::write(
            etc.join("prometheus.conf"),
            "[general]\nenabled = yes\nuri = metrics\n",
        )
        .expect("prometheus.conf");
        Self { etc, port }
    }
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        let _ = fs::write(self.etc.join("http.conf"), "[general]\nenabled = no\n");
    }
}

/// GET `path` from Asterisk's HTTP server on 127.0.0.1:`port`; the body.
fn http_get(port: u16, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))
        .expect("connect to Asterisk's HTTP server");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("send");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line[series.len()..].trim().parse().ok())
}

#[test]
fn prometheus_scrape_through_asterisks_http_server_shows_each_destinations_counters() {
    let _one = lock();
    let root = Root::from_env();
    let tansu = Tansu::start();
    tansu.create_topic("all");
    tansu.create_topic("missed");
    let metrics = MetricsEndpoint::configure(&root);
    let port = metrics.port;
    let conf = format!(
        "[global]\nbrokers = {}\ntopic = all\n\n[missed]\ntype = kafka\ntopic = missed\nmissed = only\n\n\
         [ctl]\ntype = file\npath = /var/log/asterisk/cdrk-e2e-ctl/ctl.jsonl\nrecords = control\n",
        tansu.brokers()
    );
    let ctl_dir = root_dir(&root, "var/log/asterisk/cdrk-e2e-ctl");
    let asterisk = Asterisk::start_with_modules(&root, &conf, TZ, PROMETHEUS_MODULES);
    asterisk.add_dialplan(ROUTING_DIALPLAN);
    asterisk.load_module();
    call(&asterisk, "acme");
    call(&asterisk, "nobody");
    asterisk.wait_for_no_channels(WAIT);
    let rows = wait_until_settled(&asterisk);
    let text = http_get(port, "/metrics");

    let series = |name: &str, destination: &str, kind: &str| {
        format!("asterisk_cdr_kafka_destination_{name}{{destination=\"{destination}\",type=\"{kind}\"}}")
    };
    for (destination, row) in [("global", &rows["global"]), ("missed", &rows["missed"])] {
        let delivered = metric(
            &text,
            &series("records_delivered_total", destination, "kafka"),
        );
        assert_eq!(
            delivered,
            Some(row.delivered as f64),
            "{destination}:\n{text}"
        );
        let filtered = metric(
            &text,
            &series("records_filtered_total", destination, "kafka"),
        );
        assert_eq!(
            filtered,
            Some(row.filtered as f64),
            "{destination}:\n{text}"
        );
        let count = metric(
            &text,
            &series("delivery_latency_seconds_count", destination, "kafka"),
        );
        assert_eq!(
            count,
            Some(row.delivered as f64),
            "one latency per delivery:\n{text}"
        );
    }
    assert!(rows["missed"].filtered > 0 && rows["missed"].delivered > 0);
    let received = metric(&text, "asterisk_cdr_kafka_records_received_total");
    assert_eq!(
        received,
        Some(asterisk.counter("Received") as f64),
        "{text}"
    );
    assert!(
        metric(&text, "asterisk_cdr_kafka_spool_depth_records").is_some(),
        "{text}"
    );
    assert!(
        text.contains("# TYPE asterisk_cdr_kafka_destination_delivery_latency_seconds histogram")
    );

    // The module's own start and stop records, as real Asterisk made them, match the schema.
    let received = asterisk.counter("Received");
    let out = asterisk.rx("module unload cdr_kafka.so");
    assert!(out.contains("Unloaded"), "{out}");
    let lines: Vec<String> = file_lines(&ctl_dir).into_values().flatten().collect();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    for (line, kind) in lines.iter().zip(["module_start", "module_stop"]) {
        let record: Value = serde_json::from_str(line).expect("JSON");
        schema::validate("control.json", &record).unwrap_or_else(|e| panic!("{e}\n{line}"));
        assert_eq!(record["type"], kind);
    }
    let stop: Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(stop["counters"]["received"], received);
    assert_eq!(stop["module_version"], env!("CARGO_PKG_VERSION"));
}

/// Loaded at boot beside res_prometheus, with a destination of each type: the module
/// registers its metrics once Asterisk has booted, and `module unload` still leaves
/// nothing of it mapped (no thread of its started from Asterisk's main thread).
#[test]
fn loaded_at_boot_with_prometheus_and_every_destination_type_unloads_cleanly() {
    let _one = lock();
    let root = Root::from_env();
    let tansu = Tansu::start();
    tansu.create_topic("all");
    tansu.create_topic("copy");
    let metrics = MetricsEndpoint::configure(&root);
    let port = metrics.port;
    root_dir(&root, "var/log/asterisk/cdrk-e2e-boot");
    let socket_dir = root_dir(&root, "tmp/cdrk-e2e-boot");
    let _syslog = UnixDatagram::bind(socket_dir.join("log")).expect("bind a syslog socket");
    let (http_port, _seen) = flaky_http_server();
    let conf = format!(
        "[global]\nbrokers = {}\ntopic = all\n\n\
         [copy]\ntype = kafka\ntopic = copy\n\n\
         [archive]\ntype = file\npath = /var/log/asterisk/cdrk-e2e-boot/cdr.jsonl\n\n\
         [acc]\ntype = syslog\nsocket = /tmp/cdrk-e2e-boot/log\nformat = kv\n\n\
         [billing]\ntype = http\nurl = http://127.0.0.1:{http_port}/cdr\ntimeout_ms = 500\n",
        tansu.brokers()
    );
    let modules = format!("{PROMETHEUS_MODULES}load => cdr_kafka.so\n");
    let asterisk = Asterisk::start_with_modules(&root, &conf, TZ, &modules);
    asterisk.add_dialplan(ROUTING_DIALPLAN);
    call(&asterisk, "plain");
    asterisk.wait_for_no_channels(WAIT);
    wait_until_settled(&asterisk);
    let deadline = Instant::now() + WAIT;
    while !http_get(port, "/metrics").contains("asterisk_cdr_kafka_records_received_total") {
        assert!(
            Instant::now() < deadline,
            "metrics never registered after boot"
        );
        sleep(Duration::from_millis(200));
    }
    let out = asterisk.rx("module unload cdr_kafka.so");
    assert!(out.contains("Unloaded cdr_kafka.so"), "{out}");
    assert!(
        !asterisk.module_mapped(),
        "the .so is still mapped after unload"
    );
    assert!(
        !http_get(port, "/metrics").contains("asterisk_cdr_kafka_"),
        "metrics left behind"
    );
}

/// A CDR's identity: `linkedid/sequence`.
fn identity(record: &Value) -> String {
    record["linkedid"].as_str().unwrap_or("").to_string() + "/" + &record["sequence"].to_string()
}

/// The identity of each record on `topic`.
fn identities(root: &Root, brokers: &str, topic: &str) -> Vec<String> {
    root.read_topic(brokers, topic)
        .iter()
        .map(|message| identity(&message.json()))
        .collect()
}

/// The identity of each record of the files in `dir`.
fn identities_in_files(dir: &Path) -> Vec<String> {
    file_lines(dir)
        .values()
        .flatten()
        .map(|line| identity(&serde_json::from_str(line).expect("JSON")))
        .collect()
}

#[test]
fn disable_and_enable_across_a_broker_outage_doubles_no_record_on_a_shared_producer() {
    let _one = lock();
    let root = Root::from_env();
    let mut tansu = Tansu::start_behind_relay();
    tansu.create_topic("all");
    tansu.create_topic("copy");
    let conf = format!(
        "[global]\nbrokers = {}\ntopic = all\nflush_timeout_ms = 1000\n\n\
         [copy]\ntype = kafka\ntopic = copy\n",
        tansu.brokers()
    );
    let asterisk = start(&root, &conf);
    asterisk.flood(100);
    wait_until_settled(&asterisk);
    tansu.cut_off();
    asterisk.flood(250);
    // The copies sit in the shared producer's queue when the destination stops.
    let out = asterisk.rx("cdr kafka destination disable copy");
    assert!(out.contains("destination 'copy' disabled"), "{out}");
    tansu.reconnect();
    asterisk.flood(150);
    let out = asterisk.rx("cdr kafka destination enable copy");
    assert!(out.contains("enabled"), "{out}");
    wait_until_settled(&asterisk);

    let all = identities(&root, &tansu.brokers(), "all");
    let copy = identities(&root, &tansu.brokers(), "copy");
    let unique: HashSet<&String> = copy.iter().collect();
    assert_eq!(
        copy.len() - unique.len(),
        0,
        "records twice on the copy topic"
    );
    assert_eq!(unique.len(), 500, "every record on the copy topic");
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), 500);
}

#[test]
fn a_disabled_alternative_lets_the_sufficient_file_take_the_records_after_give_up() {
    let _one = lock();
    let root = Root::from_env();
    let tansu = Tansu::start();
    tansu.create_topic("all");
    let dir = root_dir(&root, "var/log/asterisk/cdrk-e2e-disabled-alt");
    let conf = format!(
        "[global]\nbrokers = {}\ntopic = all\ncontrol = alternative\ngive_up_after_ms = 3000\n\n\
         [archive]\ntype = file\npath = /var/log/asterisk/cdrk-e2e-disabled-alt/cdr.jsonl\ncontrol = sufficient\n",
        tansu.brokers()
    );
    let asterisk = start(&root, &conf);
    asterisk.flood(50);
    wait_until_settled(&asterisk);
    assert_eq!(
        file_lines(&dir).values().flatten().count(),
        0,
        "Kafka took them"
    );
    let out = asterisk.rx("cdr kafka destination disable global");
    assert!(out.contains("destination 'global' disabled"), "{out}");
    asterisk.flood(200);
    let rows = wait_until_settled(&asterisk);
    let in_file: HashSet<String> = identities_in_files(&dir).into_iter().collect();
    assert_eq!(
        in_file.len(),
        200,
        "the file took what the disabled Kafka could not"
    );
    assert_eq!(rows["archive"].delivered, 200);
    // Enabled again, Kafka does not deliver what the walk already gave up for it.
    asterisk.rx("cdr kafka destination enable global");
    asterisk.flood(20);
    wait_until_settled(&asterisk);
    let on_kafka = identities(&root, &tansu.brokers(), "all");
    assert_eq!(
        on_kafka.len(),
        70,
        "Kafka has the records before and after, once each"
    );
    assert!(on_kafka.iter().all(|id| !in_file.contains(id)));
    let dead_letters = root.spool().join("dead-letter.jsonl");
    assert!(
        !dead_letters.exists() || fs::read_to_string(&dead_letters).unwrap().is_empty(),
        "no final failure"
    );
}

/// `[global]` on a broker behind a relay, and a file destination writing to `file`.
fn global_and_archive(brokers: &str, file: &str, more: &str) -> String {
    format!(
        "[global]\nbrokers = {brokers}\ntopic = all\nflush_timeout_ms = 3000\n\n\
         [archive]\ntype = file\npath = /var/log/asterisk/cdrk-e2e-reload/{file}\n{more}"
    )
}

fn write_conf(root: &Root, conf: &str) {
    fs::write(root.path.join("etc/asterisk/cdr_kafka.conf"), conf).expect("write cdr_kafka.conf");
}

#[test]
fn a_reload_that_changes_the_file_leaves_kafka_and_what_it_has_in_flight_alone() {
    let _one = lock();
    let root = Root::from_env();
    let mut tansu = Tansu::start_behind_relay();
    tansu.create_topic("all");
    let dir = root_dir(&root, "var/log/asterisk/cdrk-e2e-reload");
    let asterisk = start(&root, &global_and_archive(&tansu.brokers(), "a.jsonl", ""));
    asterisk.flood(100);
    wait_until_settled(&asterisk);
    tansu.cut_off();
    asterisk.flood(200);
    write_conf(&root, &global_and_archive(&tansu.brokers(), "b.jsonl", ""));
    let began = Instant::now();
    asterisk.rx("module reload cdr_kafka.so");
    support::wait_for("the reload", WAIT, || {
        asterisk
            .log()
            .contains("reload: destinations")
            .then_some(())
    });
    let took = began.elapsed();
    let log = asterisk.log();
    assert!(
        log.contains("reload: destinations started archive; kept global"),
        "{log}"
    );
    // Kafka was not stopped: no flush waited for the broker that is away.
    assert!(!log.contains("were not confirmed"), "{log}");
    assert!(took < Duration::from_secs(3), "the reload took {took:?}");
    asterisk.flood(100);
    tansu.reconnect();
    wait_until_settled(&asterisk);
    let on_kafka = identities(&root, &tansu.brokers(), "all");
    let unique: HashSet<&String> = on_kafka.iter().collect();
    assert_eq!(on_kafka.len(), 400, "every record on Kafka");
    assert_eq!(unique.len(), 400, "none twice");
    let files = file_lines(&dir);
    let in_files = identities_in_files(&dir);
    assert_eq!(
        in_files.len(),
        400,
        "every record in the files: {:?}",
        files.keys()
    );
    assert_eq!(in_files.iter().collect::<HashSet<_>>().len(), 400);
    let b = files.iter().find(|(name, _)| name.starts_with("b.jsonl"));
    assert_eq!(
        b.map_or(0, |(_, lines)| lines.len()),
        100,
        "after the reload, b.jsonl"
    );
}

#[test]
fn a_reload_that_cannot_start_a_destination_leaves_every_destination_running_as_it_was() {
    let _one = lock();
    let root = Root::from_env();
    let tansu = Tansu::start();
    tansu.create_topic("all");
    let dir = root_dir(&root, "var/log/asterisk/cdrk-e2e-reload");
    let asterisk = start(&root, &global_and_archive(&tansu.brokers(), "a.jsonl", ""));
    asterisk.flood(50);
    wait_until_settled(&asterisk);
    // The new destination's ledger cannot be made: a folder holds its name.
    fs::create_dir_all(root.spool().join("extra.ledger")).expect("block the ledger");
    let extra = "\n[extra]\ntype = file\npath = /var/log/asterisk/cdrk-e2e-reload/extra.jsonl\n";
    write_conf(
        &root,
        &global_and_archive(&tansu.brokers(), "b.jsonl", extra),
    );
    asterisk.rx("module reload cdr_kafka.so");
    support::wait_for("the refusal", WAIT, || {
        asterisk.log().contains("reload refused").then_some(())
    });
    let log = asterisk.log();
    assert!(
        log.contains("'extra'"),
        "the refusal names the destination: {log}"
    );
    assert!(!log.contains("reload: destinations"), "{log}");
    asterisk.flood(50);
    let rows = wait_until_settled(&asterisk);
    assert!(!rows.contains_key("extra"), "{rows:?}");
    assert_eq!(rows["global"].delivered, 100);
    // The new configuration's files were opened to check them, and never written.
    let files = file_lines(&dir);
    let written: Vec<(&str, usize)> = files
        .iter()
        .filter(|(_, lines)| !lines.is_empty())
        .map(|(name, lines)| (name.as_str(), lines.len()))
        .collect();
    assert_eq!(
        written,
        [("a.jsonl", 100)],
        "the archive still writes a.jsonl"
    );
    assert_eq!(identities(&root, &tansu.brokers(), "all").len(), 100);
}
