//! The never-lost promise under faults, with real parts: Asterisk 22 in the Debian root of
//! `make sandbox`, floods of CDRs, a tansu broker that goes away and comes back, kill -9,
//! graceful stops, reloads under load. Every test counts what reached the topic by the
//! `record_id` header: how many arrived, and how many came twice.
//!
//! One Asterisk runs at a time (they share the root), so the tests take a lock.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::{cdr_kafka_conf, one_asterisk, Asterisk, Root, Tansu};

const TZ: &str = "UTC";
const WAIT: Duration = Duration::from_secs(60);
const LOAD_AT_BOOT: &str = "load => cdr_kafka.so\n";
const TOPIC: &str = "calls";

/// Waits until `count` distinct records are on the topic; returns the count per record_id.
fn wait_for_records(root: &Root, tansu: &Tansu, count: usize) -> HashMap<String, usize> {
    wait_for_records_on(root, tansu, TOPIC, count)
}

fn wait_for_records_on(
    root: &Root,
    tansu: &Tansu,
    topic: &str,
    count: usize,
) -> HashMap<String, usize> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let counts = root.count_by(&tansu.brokers(), topic, "record_id");
        if counts.len() >= count {
            return counts;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {count} records arrived",
            counts.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn duplicates(counts: &HashMap<String, usize>) -> usize {
    counts.values().map(|n| n - 1).sum()
}

/// A broker that will be cut off, its topic, and Asterisk with the module loaded at boot.
fn setup<'r>(root: &'r Root, extra: &str) -> (Tansu, Asterisk<'r>) {
    let tansu = Tansu::start_behind_relay();
    tansu.create_topic(TOPIC);
    let conf = cdr_kafka_conf(&tansu.brokers(), TOPIC, extra);
    let asterisk = Asterisk::start_with_modules(root, &conf, TZ, LOAD_AT_BOOT);
    (tansu, asterisk)
}

#[test]
fn ten_thousand_cdrs_during_an_outage_all_arrive_once_when_the_broker_is_back() {
    const COUNT: usize = 10_000;
    let _one = one_asterisk();
    let root = Root::from_env();
    let (mut tansu, asterisk) = setup(&root, "");
    tansu.cut_off();
    asterisk.flood(COUNT);
    assert_eq!(asterisk.wait_for_counter("Spooled", COUNT, WAIT), COUNT);
    assert_eq!(asterisk.counter("Delivered"), 0);
    tansu.reconnect();
    assert_eq!(asterisk.wait_for_counter("Delivered", COUNT, WAIT), COUNT);
    let counts = wait_for_records(&root, &tansu, COUNT);
    assert_eq!(counts.len(), COUNT);
    assert_eq!(duplicates(&counts), 0, "none twice");
    assert!(asterisk
        .rx("cdr kafka show status")
        .contains("Spool depth         : 0 records"));
}

#[test]
fn kill_9_with_five_thousand_undelivered_loses_nothing() {
    const COUNT: usize = 5_000;
    let _one = one_asterisk();
    let root = Root::from_env();
    let (mut tansu, mut asterisk) = setup(&root, "");
    tansu.cut_off();
    asterisk.flood(COUNT);
    assert_eq!(asterisk.wait_for_counter("Spooled", COUNT, WAIT), COUNT);
    asterisk.kill9();

    tansu.reconnect();
    asterisk.restart();
    assert_eq!(asterisk.wait_for_counter("Replayed", COUNT, WAIT), COUNT);
    let counts = wait_for_records(&root, &tansu, COUNT);
    assert_eq!(counts.len(), COUNT, "every record of before the kill");
    // Nothing was delivered before the kill, so nothing can come twice.
    eprintln!(
        "kill -9 with {COUNT} undelivered: {} duplicates",
        duplicates(&counts)
    );
    assert_eq!(duplicates(&counts), 0);
}

#[test]
fn graceful_stop_with_broker_down_then_start_with_broker_up_delivers_all_once() {
    const COUNT: usize = 3_000;
    let _one = one_asterisk();
    let root = Root::from_env();
    let (mut tansu, mut asterisk) = setup(&root, "flush_timeout_ms = 1000\n");
    tansu.cut_off();
    asterisk.flood(COUNT);
    assert_eq!(asterisk.wait_for_counter("Spooled", COUNT, WAIT), COUNT);
    let took = asterisk.stop_gracefully();
    assert!(
        took < Duration::from_secs(10),
        "core stop now took {took:?}"
    );

    tansu.reconnect();
    asterisk.restart();
    let counts = wait_for_records(&root, &tansu, COUNT);
    assert_eq!(counts.len(), COUNT);
    assert_eq!(duplicates(&counts), 0, "none twice");
}

/// SIGTERM (`systemctl stop`) unloads no module: the module's exit handler stops its
/// destinations side by side, so with the broker down the process ends after one
/// flush_timeout_ms, not one per destination; the next start delivers everything once.
#[test]
fn sigterm_with_the_broker_down_and_three_destinations_ends_after_one_flush_and_loses_nothing() {
    const COUNT: usize = 2_000;
    const FLUSH_MS: u64 = 4_000;
    const COPY: &str = "copy";
    let _one = one_asterisk();
    let root = Root::from_env();
    let archive = "/var/log/asterisk/cdrk-faults.jsonl";
    let _ = std::fs::remove_file(root.path.join(archive.trim_start_matches('/')));
    let extra = format!(
        "flush_timeout_ms = {FLUSH_MS}\n\n[{COPY}]\ntype = kafka\ntopic = {COPY}\n\n\
         [archive]\ntype = file\npath = {archive}\n"
    );
    let (mut tansu, mut asterisk) = setup(&root, &extra);
    tansu.create_topic(COPY);
    tansu.cut_off();
    asterisk.flood(COUNT);
    assert_eq!(asterisk.wait_for_counter("Spooled", COUNT, WAIT), COUNT);
    let took = asterisk.terminate();
    eprintln!("SIGTERM with the broker down, two Kafka destinations: ended after {took:?}");
    // Two Kafka flushes one after the other would take 2 × FLUSH_MS, and one about
    // FLUSH_MS + 1 s (Asterisk's own way out, librdkafka's teardown).
    assert!(
        took < Duration::from_millis(FLUSH_MS * 2 - 1_000),
        "SIGTERM took {took:?}"
    );

    tansu.reconnect();
    asterisk.restart();
    for topic in [TOPIC, COPY] {
        let counts = wait_for_records_on(&root, &tansu, topic, COUNT);
        assert_eq!(counts.len(), COUNT, "{topic}");
        assert_eq!(duplicates(&counts), 0, "none twice on {topic}");
    }
}

#[test]
fn reload_every_100_ms_while_5000_cdrs_flow_loses_nothing() {
    const COUNT: usize = 5_000;
    const BATCH: usize = 100;
    let _one = one_asterisk();
    let root = Root::from_env();
    let (tansu, asterisk) = setup(&root, "");
    // Two configurations that differ in a producer setting: each reload swaps producers.
    let confs = [
        cdr_kafka_conf(&tansu.brokers(), TOPIC, "linger_ms = 5\n"),
        cdr_kafka_conf(&tansu.brokers(), TOPIC, "linger_ms = 6\n"),
    ];
    let done = std::sync::atomic::AtomicBool::new(false);
    let reloads = std::thread::scope(|scope| {
        let reloader = scope.spawn(|| {
            let mut reloads = 0;
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                asterisk.write_config("cdr_kafka.conf", &confs[reloads % 2]);
                asterisk.rx("module reload cdr_kafka.so");
                reloads += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            reloads
        });
        for _ in 0..COUNT / BATCH {
            asterisk.flood(BATCH);
            // Spread over seconds, so the reloads land while records flow.
            std::thread::sleep(Duration::from_millis(100));
        }
        asterisk.wait_for_counter("Spooled", COUNT, WAIT);
        done.store(true, std::sync::atomic::Ordering::Release);
        reloader.join().expect("reloader")
    });
    // A reload that swaps producers takes a few hundred ms (librdkafka teardown).
    assert!(reloads >= 10, "only {reloads} reloads");
    let counts = wait_for_records(&root, &tansu, COUNT);
    assert_eq!(
        counts.len(),
        COUNT,
        "every CDR arrived across {reloads} reloads"
    );
    eprintln!(
        "{reloads} reloads during {COUNT} CDRs: {} duplicates",
        duplicates(&counts)
    );
    assert!(!asterisk.log().contains("reload refused"));
}

#[test]
fn twenty_kill_9_cycles_under_load_lose_nothing() {
    const CYCLES: usize = 20;
    const PER_CYCLE: usize = 300;
    let _one = one_asterisk();
    let root = Root::from_env();
    let (tansu, mut asterisk) = setup(&root, "");
    for cycle in 0..CYCLES {
        asterisk.flood(PER_CYCLE);
        // Killed while the feeder is still sending what the flood spooled.
        asterisk.wait_for_counter("Spooled", PER_CYCLE, WAIT);
        asterisk.kill9();
        asterisk.restart();
        assert!(
            asterisk.running(),
            "Asterisk came back after kill -9 #{}",
            cycle + 1
        );
    }
    let total = CYCLES * PER_CYCLE;
    let counts = wait_for_records(&root, &tansu, total);
    assert_eq!(counts.len(), total, "nothing lost over {CYCLES} kills");
    eprintln!(
        "{CYCLES} kill -9 cycles of {PER_CYCLE} CDRs: {} duplicates",
        duplicates(&counts)
    );
    assert!(!asterisk.log().contains("Segmentation"));
}

/// The spool's segment files (`*.log`) Asterisk has open.
fn open_segments(asterisk: &Asterisk<'_>) -> usize {
    let fds = std::fs::read_dir(format!("/proc/{}/fd", asterisk.pid())).expect("Asterisk's fds");
    fds.filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter(|target| {
            target.extension().is_some_and(|e| e == "log")
                && target.to_string_lossy().contains("cdr_kafka")
        })
        .count()
}

#[test]
fn an_outage_of_five_segments_with_two_destinations_keeps_few_files_open_and_delivers_all() {
    const COUNT: usize = 85_000;
    let _one = one_asterisk();
    let root = Root::from_env();
    let archive = root.path.join("var/log/asterisk/cdrk-e2e-outage");
    let _ = std::fs::remove_dir_all(&archive);
    std::fs::create_dir_all(&archive).expect("the archive's folder");
    let (mut tansu, asterisk) = setup(
        &root,
        "\n[archive]\ntype = file\npath = /var/log/asterisk/cdrk-e2e-outage/cdr.jsonl\n",
    );
    tansu.cut_off();
    asterisk.flood(COUNT);
    assert_eq!(asterisk.wait_for_counter("Spooled", COUNT, WAIT), COUNT);
    let status = asterisk.rx("cdr kafka show status");
    // ~1 KB a record: over five 16 MiB segments wait for Kafka. A sealed segment stays
    // open until the next interval sync (spool_sync_interval_ms).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut open = open_segments(&asterisk);
    while open > 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        open = open_segments(&asterisk);
    }
    assert!(
        open <= 3,
        "{open} segment files open (at most the writer's and one per destination)\n{status}"
    );
    tansu.reconnect();
    assert_eq!(
        asterisk.wait_for_counter("Delivered", COUNT, Duration::from_secs(180)),
        COUNT
    );
    let counts = wait_for_records(&root, &tansu, COUNT);
    assert_eq!(counts.len(), COUNT);
    assert_eq!(duplicates(&counts), 0, "none twice");
    assert!(open_segments(&asterisk) <= 3);
}
