//! Memory while records wait: the broker unreachable (brokers = 127.0.0.1:9), 1,000,000
//! CDRs published through `Running::publish` with default settings; the growth of VmRSS
//! (/proc/self/status) from the moment the module started to the moment the feeder stopped
//! moving records, the peak (VmHWM), the bytes malloc holds for the program (mallinfo2),
//! and the spool's bytes on disk.
//!
//! To say where the memory goes, the same run is repeated in other shapes, each in a fresh
//! process of this binary (so no case inherits another's heap):
//! - `queue_buffering_max_messages = 1000`: the module with librdkafka holding 20 times
//!   fewer records than the default; the difference is librdkafka's copies;
//! - the spool alone (`Spool::append` of the same records, no producer);
//! - librdkafka alone: a `BaseProducer` with the module's settings, the same payload and
//!   headers sent until its queue (the module's default size) is full.
//!
//! `cargo bench --bench memory`. CDR_KAFKA_BENCH_RECORDS (default 1,000,000);
//! CDR_KAFKA_BENCH_QUICK=1: 2,000 records.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use cdr_kafka::delivery::log::{Log, LogSettings, NewRecord, RecordKind, SyncPolicy};
use cdr_kafka::module::Running;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord};

const TARGET_MB: f64 = 64.0;
const UNREACHABLE: &str = "127.0.0.1:9";
const CASE_ENV: &str = "CDR_KAFKA_BENCH_MEMORY_CASE";

/// What one case measured, as the child prints it and the parent reads it.
#[derive(Debug, Default, Clone)]
struct Figures {
    records: u64,
    rss_before_kb: u64,
    rss_after_kb: u64,
    hwm_kb: u64,
    heap_before: u64,
    heap_after: u64,
    in_librdkafka: u64,
    spool_bytes: u64,
    seconds: f64,
    open_files: u64,
}

impl Figures {
    fn line(&self) -> String {
        format!(
            "FIGURES {} {} {} {} {} {} {} {} {} {}",
            self.records,
            self.rss_before_kb,
            self.rss_after_kb,
            self.hwm_kb,
            self.heap_before,
            self.heap_after,
            self.in_librdkafka,
            self.spool_bytes,
            self.seconds,
            self.open_files
        )
    }

    fn parse(line: &str) -> Option<Self> {
        let mut words = line.strip_prefix("FIGURES ")?.split_whitespace();
        let mut next = || words.next().and_then(|w| w.parse::<f64>().ok());
        Some(Self {
            records: next()? as u64,
            rss_before_kb: next()? as u64,
            rss_after_kb: next()? as u64,
            hwm_kb: next()? as u64,
            heap_before: next()? as u64,
            heap_after: next()? as u64,
            in_librdkafka: next()? as u64,
            spool_bytes: next()? as u64,
            seconds: next()?,
            open_files: next()? as u64,
        })
    }

    fn growth_mb(&self) -> f64 {
        (self.rss_after_kb as f64 - self.rss_before_kb as f64) / 1024.0
    }
}

/// Bytes malloc has handed out and not taken back (glibc's mallinfo2).
fn heap_in_use() -> u64 {
    // SAFETY: mallinfo2 only reads the allocator's counters.
    let info = unsafe { libc::mallinfo2() };
    (info.uordblks + info.hblkhd) as u64
}

/// How long the producer's threads are given to settle before and after.
fn pause() -> Duration {
    Duration::from_millis(if common::quick() { 100 } else { 500 })
}

/// Waits until `value` has not changed for `quiet`; returns it.
fn settled(quiet: Duration, value: impl Fn() -> u64) -> u64 {
    let mut last = value();
    let mut since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    while since.elapsed() < quiet && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let now = value();
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
    last
}

/// Files this process has open.
fn open_files() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |entries| entries.count() as u64)
}

/// The module, broker unreachable, `records` published; `extra` settings on top of
/// defaults; `three`: a second Kafka topic on the same producer and a file destination
/// beside `[global]` (the file delivers, so the stack tracks what Kafka owes).
fn case_module(records: u64, extra: &[(&str, &str)], three: bool) -> Figures {
    let dir = common::Scratch::new("memory");
    let archive = dir.0.join("archive.jsonl").display().to_string();
    let sections: &[(&str, &str, &str)] = if three {
        &[
            ("copy", "type", "kafka"),
            ("copy", "topic", "copy"),
            ("archive", "type", "file"),
            ("archive", "path", &archive),
        ]
    } else {
        &[]
    };
    let settings =
        common::settings_with_sections(UNREACHABLE, "asterisk_cdr", &dir.0, extra, sections);
    let running = Running::start(settings, common::identity()).expect("the module starts");
    std::thread::sleep(pause());
    let (rss_before_kb, heap_before) = (common::status_kb("VmRSS"), heap_in_use());
    let cdr = common::typical_cdr();
    let started = Instant::now();
    for _ in 0..records {
        running.publish(&cdr).expect("spooled");
    }
    let seconds = started.elapsed().as_secs_f64();
    // The feeder moves records into librdkafka until its queue is full, then waits.
    let in_librdkafka = settled(Duration::from_secs(1), || running.counts().queued);
    let figures = Figures {
        records,
        rss_before_kb,
        rss_after_kb: common::status_kb("VmRSS"),
        hwm_kb: common::status_kb("VmHWM"),
        heap_before,
        heap_after: heap_in_use(),
        in_librdkafka,
        spool_bytes: dir.bytes(),
        seconds,
        open_files: open_files(),
    };
    assert_eq!(running.log.depth().0, records, "every record waits");
    running.shutdown();
    figures
}

/// The spool alone: the records the module would append, no producer.
fn case_spool(records: u64) -> Figures {
    let dir = common::Scratch::new("memory-spool");
    let log = Log::open(LogSettings {
        dir: dir.0.clone(),
        sync: SyncPolicy::Interval,
        sync_interval: Duration::from_secs(1),
        max_bytes: 0,
    })
    .expect("log");
    let scratch = common::Scratch::new("unused");
    let settings = common::settings(UNREACHABLE, "asterisk_cdr", &scratch.0, &[]);
    let payload = common::payload(&common::typical_cdr(), &settings);
    let (rss_before_kb, heap_before) = (common::status_kb("VmRSS"), heap_in_use());
    let started = Instant::now();
    for n in 0..records {
        let record_id = format!("001122334455-19ab-{n}");
        let headers = common::headers(&record_id);
        let headers: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|(name, value)| (*name, value.as_bytes()))
            .collect();
        log.append(&NewRecord {
            kind: RecordKind::Cdr,
            record_id: &record_id,
            topic: &settings.topic,
            key: None,
            headers: &headers,
            payload: &payload,
        })
        .expect("appended");
    }
    Figures {
        records,
        rss_before_kb,
        rss_after_kb: common::status_kb("VmRSS"),
        hwm_kb: common::status_kb("VmHWM"),
        heap_before,
        heap_after: heap_in_use(),
        in_librdkafka: 0,
        spool_bytes: dir.bytes(),
        seconds: started.elapsed().as_secs_f64(),
        open_files: open_files(),
    }
}

/// librdkafka alone, the module's settings, sent until its queue is full.
fn case_librdkafka(records: u64) -> Figures {
    let scratch = common::Scratch::new("unused");
    let settings = common::settings(UNREACHABLE, "asterisk_cdr", &scratch.0, &[]);
    let mut config = ClientConfig::new();
    for (property, value) in &settings.kafka.properties {
        config.set(property, value);
    }
    let producer: BaseProducer = config.create().expect("producer");
    std::thread::sleep(pause());
    let (rss_before_kb, heap_before) = (common::status_kb("VmRSS"), heap_in_use());
    let payload = common::payload(&common::typical_cdr(), &settings);
    let started = Instant::now();
    let mut queued = 0;
    while queued < records {
        let record_id = format!("001122334455-19ab-{queued}");
        let mut headers = OwnedHeaders::new_with_capacity(6);
        for (name, value) in common::headers(&record_id) {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        let record: BaseRecord<(), Vec<u8>> = BaseRecord::to(&settings.topic)
            .payload(&payload)
            .headers(headers);
        match producer.send(record) {
            Ok(()) => queued += 1,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => break,
            Err((error, _)) => panic!("librdkafka refused a record: {error}"),
        }
    }
    producer.poll(Duration::from_millis(100));
    let figures = Figures {
        records: queued,
        rss_before_kb,
        rss_after_kb: common::status_kb("VmRSS"),
        hwm_kb: common::status_kb("VmHWM"),
        heap_before,
        heap_after: heap_in_use(),
        in_librdkafka: queued,
        spool_bytes: 0,
        seconds: started.elapsed().as_secs_f64(),
        open_files: open_files(),
    };
    // Dropping the producer purges its queue.
    drop(producer);
    figures
}

fn run_case(case: &str, records: u64) -> Figures {
    match case {
        // flush_timeout_ms = 0: shutdown does not wait for a broker that never comes.
        "module" => case_module(records, &[("flush_timeout_ms", "0")], false),
        "module-queue-1000" => case_module(
            records,
            &[
                ("flush_timeout_ms", "0"),
                ("queue_buffering_max_messages", "1000"),
            ],
            false,
        ),
        "module-3-queue-1000" => case_module(
            records,
            &[
                ("flush_timeout_ms", "0"),
                ("queue_buffering_max_messages", "1000"),
            ],
            true,
        ),
        "spool" => case_spool(records),
        "librdkafka" => case_librdkafka(records),
        other => panic!("no memory case {other}"),
    }
}

/// Runs `case` in a fresh process of this binary.
fn in_child(case: &str) -> Option<Figures> {
    let exe = std::env::current_exe().expect("this binary");
    let output = Command::new(exe)
        .env(CASE_ENV, case)
        .output()
        .expect("run a memory case");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let figures = stdout.lines().find_map(Figures::parse);
    if figures.is_none() {
        eprintln!(
            "case {case} failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    figures
}

fn mb(bytes: f64) -> String {
    format!("{:.1}", bytes / 1024.0 / 1024.0)
}

fn main() {
    let records = common::env_number("CDR_KAFKA_BENCH_RECORDS", 1_000_000, 2_000);
    if let Ok(case) = std::env::var(CASE_ENV) {
        println!("{}", run_case(&case, records).line());
        return;
    }
    println!(
        "Memory with {} records waiting, broker unreachable ({UNREACHABLE}), typical CDR, \
         default settings unless said; each case in a fresh process ({})",
        common::thousands(records),
        common::machine()
    );
    println!();
    println!(
        "| case | records | VmRSS before MB | VmRSS after MB | **growth MB** | VmHWM MB | malloc'd growth MB | held by librdkafka | spool on disk MB | publish s | open files |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let cases = [
        ("module", "cdr_kafka, default settings"),
        (
            "module-queue-1000",
            "cdr_kafka, queue_buffering_max_messages = 1000",
        ),
        (
            "module-3-queue-1000",
            "cdr_kafka, three destinations ([global], a second topic, a file that delivers), queue_buffering_max_messages = 1000",
        ),
        ("spool", "the spool alone (`Log::append`, no producer)"),
        ("librdkafka", "librdkafka alone, queue filled (no spool)"),
    ];
    let mut results = Vec::new();
    for (case, label) in cases {
        let Some(f) = in_child(case) else {
            continue;
        };
        println!(
            "| {label} | {} | {:.1} | {:.1} | **{:.1}** | {:.1} | {} | {} | {} | {:.1} | {} |",
            common::thousands(f.records),
            f.rss_before_kb as f64 / 1024.0,
            f.rss_after_kb as f64 / 1024.0,
            f.growth_mb(),
            f.hwm_kb as f64 / 1024.0,
            mb(f.heap_after as f64 - f.heap_before as f64),
            common::thousands(f.in_librdkafka),
            mb(f.spool_bytes as f64),
            f.seconds,
            f.open_files
        );
        results.push((case, f));
    }
    let find = |name: &str| results.iter().find(|(c, _)| *c == name).map(|(_, f)| f);
    println!();
    for case in ["module-queue-1000", "module-3-queue-1000"] {
        if let Some(f) = find(case) {
            // librdkafka holds at most 1000 copies per producer here: the rest is ours.
            let heap = f.heap_after.saturating_sub(f.heap_before) as f64;
            println!(
                "{case}: {:.1} bytes malloc'd per undelivered record, {} files open.",
                heap / f.records.max(1) as f64,
                f.open_files
            );
        }
    }
    if let Some(module) = find("module") {
        println!(
            "Target ≤ {TARGET_MB} MB growth: {} ({:.1} MB).",
            if module.growth_mb() <= TARGET_MB {
                "met"
            } else {
                "missed"
            },
            module.growth_mb()
        );
        if let Some(small) = find("module-queue-1000") {
            let held = module
                .in_librdkafka
                .saturating_sub(small.in_librdkafka)
                .max(1);
            let share = (module.rss_after_kb as f64 - module.rss_before_kb as f64)
                - (small.rss_after_kb as f64 - small.rss_before_kb as f64);
            println!(
                "librdkafka's copies: {:.1} MB for {} more records held, {:.0} bytes each \
                 (default queue minus a queue of 1000).",
                share / 1024.0,
                common::thousands(held),
                share * 1024.0 / held as f64
            );
        }
        if let Some(alone) = find("librdkafka") {
            println!(
                "librdkafka alone: {:.0} bytes of RSS per queued record ({:.0} malloc'd); \
                 the record's spool entry is {:.0} bytes.",
                (alone.rss_after_kb as f64 - alone.rss_before_kb as f64) * 1024.0
                    / alone.records.max(1) as f64,
                (alone.heap_after as f64 - alone.heap_before as f64) / alone.records.max(1) as f64,
                module.spool_bytes as f64 / module.records.max(1) as f64
            );
        }
    }
    common::quick_note();
}
