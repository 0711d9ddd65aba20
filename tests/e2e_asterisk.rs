//! End to end with real parts: Asterisk 22 from Debian unstable (in the root `make
//! sandbox` builds) loads the module, calls are placed with `channel originate`, and the
//! records are read back from a tansu broker with the root's kcat.
//!
//! One Asterisk runs at a time (they share the root), so the tests take a lock.

mod support;

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use support::{cdr_kafka_conf, Asterisk, Message, Root, Tansu};

static ONE_ASTERISK: Mutex<()> = Mutex::new(());
const TZ_MINUS_THREE: &str = "America/Sao_Paulo";
const WAIT: Duration = Duration::from_secs(30);

fn lock() -> std::sync::MutexGuard<'static, ()> {
    ONE_ASTERISK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// `YYYY-MM-DDTHH:MM:SS.mmm-0300`
fn assert_local_time(value: &Value, field: &str) {
    let text = value[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is not a string: {value}"));
    let bytes = text.as_bytes();
    let shape_ok = text.len() == 28
        && text.ends_with("-0300")
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes[10] == b'T'
        && bytes[13] == b':'
        && bytes[16] == b':'
        && bytes[19] == b'.'
        && text[..23]
            .bytes()
            .enumerate()
            .all(|(i, b)| matches!(i, 4 | 7 | 10 | 13 | 16 | 19) || b.is_ascii_digit());
    assert!(
        shape_ok,
        "{field} = {text} is not YYYY-MM-DDTHH:MM:SS.mmm-0300"
    );
}

/// The contract's fields up to SystemName, in order (variables and the optional ones follow).
const CONTRACT_ORDER: &[&str] = cdr_kafka::record::CONTRACT_FIELDS.split_at(23).0;

/// Milliseconds since the epoch of a contract time, offset applied.
fn epoch_millis(text: &str) -> i64 {
    let (date, time) = text.split_at(10);
    let number = |s: &str| s.parse::<i64>().unwrap_or_else(|_| panic!("{s} in {text}"));
    let (year, month, day) = (
        number(&date[0..4]),
        number(&date[5..7]),
        number(&date[8..10]),
    );
    let (hour, minute) = (number(&time[1..3]), number(&time[4..6]));
    let (second, millis) = (number(&time[7..9]), number(&time[10..13]));
    let sign = if &time[13..14] == "-" { -1 } else { 1 };
    let offset = sign * (number(&time[14..16]) * 3600 + number(&time[16..18]) * 60);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 86_400 + hour * 3600 + minute * 60 + second - offset) * 1000) + millis
}

/// start <= answer <= end, and Asterisk's whole-second durations match them.
fn assert_times_agree_with_durations(record: &Value) {
    let start = epoch_millis(record["start"].as_str().unwrap());
    let end = epoch_millis(record["end"].as_str().unwrap());
    let duration = record["durationsec"].as_i64().unwrap();
    assert!(start <= end, "{record}");
    assert!(
        ((end - start) / 1000 - duration).abs() <= 1,
        "durationsec in {record}"
    );
    let billsec = record["billsec"].as_i64().unwrap();
    match record["answer"].as_str() {
        Some(answer) => {
            let answer = epoch_millis(answer);
            assert!(start <= answer && answer <= end, "{record}");
            assert!(
                ((end - answer) / 1000 - billsec).abs() <= 1,
                "billsec in {record}"
            );
        }
        None => assert_eq!(billsec, 0, "{record}"),
    }
    let now_millis = now_secs() as i64 * 1000;
    assert!(
        (now_millis - end).abs() < 600_000,
        "end is not now: {record}"
    );
}

/// Checks what every record must satisfy, whatever the call.
fn assert_contract_shape(message: &Message, started: u64) {
    let text = &message.payload;
    assert!(!text.contains('\n'), "record is not compact: {text}");
    let json = message.json();
    let object = json.as_object().expect("a JSON object");
    let mut last = 0;
    for field in CONTRACT_ORDER {
        let at = text
            .find(&format!("\"{field}\":"))
            .unwrap_or_else(|| panic!("{field} missing in {text}"));
        assert!(at >= last, "{field} out of contract order in {text}");
        last = at;
    }
    for field in [
        "clid",
        "src",
        "dst",
        "dcontext",
        "channel",
        "dstchannel",
        "lastapp",
        "lastdata",
        "disposition",
        "accountcode",
        "amaflags",
        "peeraccount",
        "linkedid",
        "tenantid",
        "peertenantid",
    ] {
        assert!(object[field].is_string(), "{field} not a string in {text}");
    }
    for field in ["durationsec", "billsec", "sequence"] {
        assert!(object[field].is_i64(), "{field} not an integer in {text}");
    }
    assert_local_time(&json, "start");
    assert_local_time(&json, "end");
    if !json["answer"].is_null() {
        assert_local_time(&json, "answer");
    }
    assert_times_agree_with_durations(&json);
    assert_eq!(json["EntityID"], "00:11:22:33:44:55");
    assert_eq!(json["SystemName"], "pbx-test");
    assert_eq!(
        message.key.as_deref(),
        json["linkedid"].as_str(),
        "key is the linkedid"
    );
    assert_eq!(message.header("entity_id"), Some("00:11:22:33:44:55"));
    assert_eq!(message.header("system_name"), Some("pbx-test"));
    let version = message
        .header("asterisk_version")
        .expect("asterisk_version header");
    assert!(version.starts_with("22."), "asterisk_version = {version}");
    let timestamp: u64 = message
        .header("timestamp")
        .and_then(|t| t.parse().ok())
        .expect("timestamp header in Unix seconds");
    assert!(
        timestamp >= started && timestamp <= now_secs(),
        "timestamp {timestamp}"
    );
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(message.header("hostname"), Some(hostname.trim()));
    let record_id = message.header("record_id").expect("record_id header");
    assert!(
        record_id.starts_with("001122334455-"),
        "record_id = {record_id}"
    );
    assert_eq!(message.headers.len(), 6, "headers: {:?}", message.headers);
}

/// The record of the caller's half of a call placed into `exten@cdrk`.
fn caller_record<'m>(messages: &'m [Message], exten: &str) -> &'m Message {
    let matching: Vec<&Message> = messages
        .iter()
        .filter(|m| {
            let json = m.json();
            json["dst"] == exten && json["lastapp"] == "Dial" && json["dcontext"] == "cdrk"
        })
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "one Dial record for {exten} in {messages:#?}"
    );
    matching[0]
}

fn start_with_module<'r>(root: &'r Root, conf: &str) -> Asterisk<'r> {
    let asterisk = Asterisk::start(root, conf, TZ_MINUS_THREE);
    asterisk.load_module();
    asterisk
}

#[test]
fn answered_busy_and_unanswered_calls_arrive_as_the_contract_says() {
    let _one = lock();
    let root = Root::from_env();
    let tansu = Tansu::start();
    tansu.create_topic("calls");
    let started = now_secs();
    let conf = cdr_kafka_conf(
        &tansu.brokers(),
        "calls",
        "key = linkedid\nloguniqueid = yes\nloguserfield = yes\n",
    );
    let asterisk = start_with_module(&root, &conf);
    for exten in ["answered", "busy", "noanswer"] {
        asterisk.originate(exten);
        asterisk.wait_for_no_channels(WAIT);
    }
    let received = asterisk.wait_until_all_delivered(WAIT);
    assert!(received >= 3, "at least one CDR per call");
    let messages = root.consume(&tansu.brokers(), "calls", received, WAIT);
    assert_eq!(
        messages.len(),
        received,
        "every CDR Asterisk handed over is on the topic"
    );
    for message in &messages {
        assert_contract_shape(message, started);
    }
    let ids: std::collections::HashSet<&str> = messages
        .iter()
        .filter_map(|m| m.header("record_id"))
        .collect();
    assert_eq!(
        ids.len(),
        messages.len(),
        "every record has its own record_id"
    );

    let answered = caller_record(&messages, "answered").json();
    assert_eq!(answered["disposition"], "ANSWERED");
    assert_eq!(answered["src"], "100");
    // Asterisk's ast_callerid_merge escapes the quotes inside the name; JSON escapes again.
    assert_eq!(answered["clid"], r#""Alice \"Al\" O'Hara" <100>"#);
    assert_eq!(answered["accountcode"], "acct-1");
    assert_eq!(answered["amaflags"], "DOCUMENTATION");
    assert_eq!(answered["lastdata"], "Local/callee@cdrk-callee,5");
    assert!(answered["channel"]
        .as_str()
        .unwrap()
        .starts_with("Local/answered@cdrk-"));
    assert!(answered["dstchannel"]
        .as_str()
        .unwrap()
        .starts_with("Local/callee@cdrk-callee-"));
    assert!(answered["answer"].is_string());
    assert_eq!(answered["myvar"], "hello", "CDR variables are published");
    assert_eq!(
        answered["EntityID"], "00:11:22:33:44:55",
        "a variable cannot spoof a field"
    );
    let text = caller_record(&messages, "answered").payload.clone();
    assert_eq!(text.matches("\"EntityID\"").count(), 1);
    assert!(answered["uniqueid"].is_string() && answered["userfield"] == "");
    let billsec = answered["billsec"].as_i64().unwrap();
    let duration = answered["durationsec"].as_i64().unwrap();
    assert!(
        (0..=duration).contains(&billsec),
        "billsec {billsec} duration {duration}"
    );
    // The spoofing variable is logged.
    asterisk.log_saying("EntityID skipped");

    let busy = caller_record(&messages, "busy").json();
    assert_eq!(busy["disposition"], "BUSY");
    assert_eq!(
        busy["clid"], "\"Jos\u{fffd}\" <101>",
        "a Latin-1 caller name is repaired, not dropped"
    );
    assert_eq!(busy["src"], "101");
    assert!(
        busy["answer"].is_null(),
        "busy call was never answered: {busy}"
    );
    assert_eq!(busy["billsec"], 0);

    let noanswer = caller_record(&messages, "noanswer").json();
    assert_eq!(noanswer["disposition"], "NO ANSWER");
    assert_eq!(noanswer["src"], "102");
    assert!(noanswer["answer"].is_null());
    assert_eq!(noanswer["billsec"], 0);
    assert_eq!(noanswer["lastdata"], "Local/noanswer@cdrk-callee,1");
}

#[test]
fn broken_config_declines_cleanly_and_asterisk_keeps_running() {
    let _one = lock();
    let root = Root::from_env();
    let conf = cdr_kafka_conf("127.0.0.1:9", "calls", "key = caller\n");
    let asterisk = Asterisk::start(&root, &conf, TZ_MINUS_THREE);
    let out = asterisk.rx("module load cdr_kafka.so");
    assert!(!out.contains("Loaded cdr_kafka.so"), "{out}");
    asterisk.log_saying("cdr_kafka.conf [global] key = 'caller' (line 4): not a CDR field");
    assert!(!asterisk.rx("cdr show status").contains("kafka"));
    assert!(asterisk.rx("core show version").contains("Asterisk 22"));

    // A section the file disables is checked all the same.
    let disabled =
        "[crm]\ntype = http\nurl = http://127.0.0.1:9/cdr\nmethod = PUTT\nenabled = no\n";
    asterisk.write_config(
        "cdr_kafka.conf",
        &cdr_kafka_conf("127.0.0.1:9", "calls", disabled),
    );
    let out = asterisk.rx("module load cdr_kafka.so");
    assert!(!out.contains("Loaded cdr_kafka.so"), "{out}");
    asterisk.log_saying("cdr_kafka.conf [crm] method = 'PUTT' (line 7)");

    asterisk.write_config("cdr_kafka.conf", "[global]\ntopic = x\n");
    asterisk.rx("module load cdr_kafka.so");
    asterisk.log_saying("neither 'brokers' nor 'connection' is set");

    let _ = std::fs::remove_file(root.path.join("etc/asterisk/cdr_kafka.conf"));
    asterisk.rx("module load cdr_kafka.so");
    asterisk.log_saying("cdr_kafka.conf is missing");
    assert!(!asterisk.rx("cdr show status").contains("kafka"));
}

#[test]
fn reload_switches_topic_with_nothing_lost() {
    let _one = lock();
    let root = Root::from_env();
    let tansu = Tansu::start();
    tansu.create_topic("before");
    tansu.create_topic("after");
    let asterisk = start_with_module(&root, &cdr_kafka_conf(&tansu.brokers(), "before", ""));
    asterisk.originate("flood");
    asterisk.wait_for_no_channels(WAIT);

    // An invalid config is refused and the running one stays.
    asterisk.write_config(
        "cdr_kafka.conf",
        &cdr_kafka_conf(&tansu.brokers(), "after", "acks = maybe\n"),
    );
    asterisk.rx("module reload cdr_kafka.so");
    asterisk.log_saying("reload refused, the running configuration stays");
    assert!(asterisk.rx("cdr kafka show status").contains("before"));

    asterisk.write_config(
        "cdr_kafka.conf",
        &cdr_kafka_conf(&tansu.brokers(), "after", ""),
    );
    asterisk.rx("module reload cdr_kafka.so");
    assert!(asterisk.rx("cdr kafka show status").contains("after"));
    asterisk.originate("flood");
    asterisk.wait_for_no_channels(WAIT);

    let received = asterisk.wait_until_all_delivered(WAIT);
    assert_eq!(asterisk.counter("Failed"), 0);
    let before = root.read_topic(&tansu.brokers(), "before");
    let after = root.read_topic(&tansu.brokers(), "after");
    assert_eq!(
        before.len() + after.len(),
        received,
        "every CDR on one of the topics"
    );
    assert!(!before.is_empty() && !after.is_empty());
}

#[test]
fn unload_then_load_works_and_leaves_nothing_mapped() {
    let _one = lock();
    let root = Root::from_env();
    let tansu = Tansu::start();
    tansu.create_topic("calls");
    let asterisk = start_with_module(&root, &cdr_kafka_conf(&tansu.brokers(), "calls", ""));
    asterisk.originate("flood");
    asterisk.wait_for_no_channels(WAIT);
    let out = asterisk.rx("module unload cdr_kafka.so");
    assert!(out.contains("Unloaded cdr_kafka.so"), "{out}");
    assert!(
        !asterisk.module_mapped(),
        "the .so is still mapped after unload"
    );
    assert!(!asterisk.log().contains("Failure in dlclose"));
    let out = asterisk.rx("module load cdr_kafka.so");
    assert!(out.contains("Loaded cdr_kafka.so"), "{out}");
    asterisk.originate("flood");
    asterisk.wait_for_no_channels(WAIT);
    let messages = root.consume(&tansu.brokers(), "calls", 2, WAIT);
    assert!(
        messages.len() >= 2,
        "records before and after the reload: {messages:?}"
    );
}

#[test]
fn unload_with_broker_unreachable_is_bounded_and_the_next_load_delivers_every_record() {
    let _one = lock();
    let root = Root::from_env();
    let conf = cdr_kafka_conf("127.0.0.1:9", "calls", "flush_timeout_ms = 2000\n");
    let asterisk = start_with_module(&root, &conf);
    for _ in 0..3 {
        asterisk.originate("flood");
        asterisk.wait_for_no_channels(WAIT);
    }
    let received = asterisk.counter("Received");
    assert!(received >= 3);
    let started = std::time::Instant::now();
    let out = asterisk.rx("module unload cdr_kafka.so");
    let took = started.elapsed();
    assert!(out.contains("Unloaded cdr_kafka.so"), "{out}");
    assert!(took < Duration::from_secs(10), "unload took {took:?}");
    asterisk.log_saying("not confirmed by the broker within flush_timeout_ms = 2000");
    assert!(!asterisk.module_mapped());

    // The broker is back: the next load delivers what the spool kept, each record once.
    let tansu = Tansu::start();
    tansu.create_topic("calls");
    asterisk.write_config(
        "cdr_kafka.conf",
        &cdr_kafka_conf(&tansu.brokers(), "calls", ""),
    );
    assert!(asterisk
        .rx("module load cdr_kafka.so")
        .contains("Loaded cdr_kafka.so"));
    let messages = root.consume(&tansu.brokers(), "calls", received, WAIT);
    assert_eq!(messages.len(), received, "every CDR of before the unload");
    let ids: std::collections::HashSet<&str> = messages
        .iter()
        .filter_map(|m| m.header("record_id"))
        .collect();
    assert_eq!(ids.len(), received, "none twice");
    assert_eq!(asterisk.counter("Replayed"), received);
}

#[test]
fn module_loaded_at_boot_unloads_without_staying_mapped() {
    let _one = lock();
    let root = Root::from_env();
    let tansu = Tansu::start();
    tansu.create_topic("calls");
    let conf = cdr_kafka_conf(&tansu.brokers(), "calls", "");
    let asterisk =
        Asterisk::start_with_modules(&root, &conf, TZ_MINUS_THREE, "load => cdr_kafka.so\n");
    assert!(
        asterisk.rx("cdr show status").contains("kafka"),
        "registered at boot"
    );
    assert!(
        asterisk.module_mapped(),
        "the map check sees a loaded module"
    );
    asterisk.originate("flood");
    asterisk.wait_for_no_channels(WAIT);
    assert!(!root.consume(&tansu.brokers(), "calls", 1, WAIT).is_empty());
    let out = asterisk.rx("module unload cdr_kafka.so");
    assert!(out.contains("Unloaded cdr_kafka.so"), "{out}");
    // Threads started from Asterisk's main thread would pin the image (ASTERISK-FACTS).
    assert!(
        !asterisk.module_mapped(),
        "the .so is still mapped after unload"
    );
    assert!(asterisk
        .rx("module load cdr_kafka.so")
        .contains("Loaded cdr_kafka.so"));
}

#[test]
fn make_install_and_samples_put_everything_where_asterisk_reads_it() {
    let _one = lock();
    let root = Root::from_env();
    let module = std::env::var("CDR_KAFKA_MODULE").expect("CDR_KAFKA_MODULE");
    let etc = root.path.join("etc/asterisk");
    std::fs::write(etc.join("asterisk.conf"), support::ASTERISK_CONF).unwrap();
    std::fs::write(etc.join("cdr_kafka.conf"), "; the operator's own file\n").unwrap();
    let make = |targets: &[&str]| {
        let status = std::process::Command::new("make")
            .arg("-C")
            .arg(env!("CARGO_MANIFEST_DIR"))
            .args(targets)
            .arg(format!("DESTDIR={}", root.path.display()))
            .arg(format!("MODULE={module}"))
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run make");
        assert!(status.success(), "make {targets:?} failed");
    };
    make(&["install", "samples"]);
    let modules = root
        .path
        .join("usr/lib/x86_64-linux-gnu/asterisk/modules/cdr_kafka.so");
    assert_eq!(
        std::fs::read(&modules).unwrap(),
        std::fs::read(&module).unwrap(),
        "the module is in astmoddir of asterisk.conf"
    );
    let docs = root
        .path
        .join("usr/share/asterisk/documentation/thirdparty/cdr_kafka_config-en_US.xml");
    assert!(docs.is_file(), "the XML docs are in astdatadir");
    let old = std::fs::read_to_string(etc.join("cdr_kafka.conf.old")).unwrap();
    assert_eq!(
        old, "; the operator's own file\n",
        "make samples keeps the old file"
    );
    let sample = std::fs::read_to_string(etc.join("cdr_kafka.conf")).unwrap();
    assert!(sample.contains("[global]") && sample.contains("brokers ="));

    // Asterisk reads third-party docs at startup: `config show help` explains every option.
    let tansu = Tansu::start();
    let asterisk = start_with_module(&root, &cdr_kafka_conf(&tansu.brokers(), "calls", ""));
    let help = asterisk.rx("config show help cdr_kafka global");
    for option in cdr_kafka::config::OPTIONS {
        assert!(
            help.contains(option.name),
            "{} missing from:\n{help}",
            option.name
        );
    }
    let brokers = asterisk.rx("config show help cdr_kafka global brokers");
    assert!(brokers.contains("bootstrap.servers"), "{brokers}");
    drop(asterisk);
    let _ = std::fs::remove_file(docs);
}
