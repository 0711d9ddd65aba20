//! Sustained throughput through `Running::publish` (the CDR callback's path, spool on) into
//! librdkafka's mock cluster and into a tansu broker on 127.0.0.1, every delivery report
//! counted: records/s from the first `publish` to the last report, zero lost
//! (delivered == published, failed == 0, and the topic's high watermarks add up).
//!
//! Baseline in the same run: librdkafka alone, a `BaseProducer` and a poll thread sending the
//! same payload bytes with the same headers and the same producer settings to the same broker.
//! The ratio of the two is the figure; the machine's noise mostly cancels out.
//!
//! `cargo bench --bench throughput`. CDR_KAFKA_BENCH_RECORDS (default 1,000,000) records and
//! at least CDR_KAFKA_BENCH_SECS (default 10) seconds of publishing per run; publishing stops
//! at CDR_KAFKA_BENCH_MAX_SECS (default 120) whatever the count, and what it reached is
//! reported. CDR_KAFKA_BENCH_BROKERS=mock or tansu runs one broker only (tansu needs
//! CDR_KAFKA_TANSU). CDR_KAFKA_BENCH_QUICK=1: 2,000 records, no minimum time.
//!
//! Then, with tansu, the spool's drain: the same number of records appended while the
//! broker is down, the broker started, the time until the last is confirmed.
//!
//! The publisher keeps at most `BACKLOG` records ahead of the delivery reports, so a fast
//! publisher measures a steady state, not how fast a disk fills.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cdr_kafka::config::Settings;
use cdr_kafka::module::Running;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{
    BaseProducer, BaseRecord, DefaultProducerContext, DeliveryResult, Producer, ProducerContext,
};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use common::{thread_cpu, ThreadCpu};

/// Most records published and not yet reported on.
const BACKLOG: u64 = 200_000;
/// Records published before the clock starts: connection, metadata, producer id.
const WARMUP: u64 = 1_000;
/// How long the last records may take to be reported on after publishing stopped.
const DRAIN: Duration = Duration::from_secs(300);

struct Plan {
    records: u64,
    min: Duration,
    max: Duration,
}

/// What the runs need to know about the broker besides its address.
struct Broker<'a> {
    /// Its process, when it has its own (tansu), for its CPU time.
    pid: Option<&'a str>,
    /// Count the records on the topic by reading them back (see `on_topic`).
    read_back: bool,
}

/// One measured run.
struct Run {
    path: &'static str,
    published: u64,
    delivered: u64,
    failed: u64,
    on_topic: Option<u64>,
    elapsed: Duration,
    /// Records reported on in each whole second of the run.
    per_second: Vec<u64>,
    /// µs of CPU per record by thread group, this process (and the broker's process).
    cpu: Vec<(String, f64)>,
    broker_cpu: Option<f64>,
    capped: bool,
}

impl Run {
    fn rate(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64()
    }
}

/// Counts the delivered and failed records of `progress` once a second, on its own thread.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<u64>>>,
}

impl Sampler {
    fn start(progress: impl Fn() -> u64 + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut last = progress();
            let mut per_second = Vec::new();
            let mut tick = 1;
            while !stopped.load(Ordering::Relaxed) {
                let next = started + Duration::from_secs(tick);
                let now = Instant::now();
                if now < next {
                    std::thread::sleep((next - now).min(Duration::from_millis(50)));
                    continue;
                }
                let seen = progress();
                per_second.push(seen - last);
                last = seen;
                tick += 1;
            }
            per_second
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

/// The broker's own process, when it is one (tansu), for its CPU time.
fn broker_pid(port: u16) -> Option<String> {
    let needle = format!("tcp://127.0.0.1:{port}");
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| {
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                cmd.contains("broker") && cmd.contains(&needle)
            })
        })
}

fn total_run_ns(cpu: &BTreeMap<String, ThreadCpu>) -> u64 {
    cpu.values().map(|c| c.run_ns).sum()
}

/// Records on `topic`: the sum of the high watermarks of its partitions, or with
/// `by_reading` the records read back from the beginning (tansu 0.6 answers ListOffsets
/// with a batch count, while the mock cluster keeps only the last 100,000 records).
fn on_topic(brokers: &str, topic: &str, by_reading: bool) -> Option<u64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "cdr_kafka-bench")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "10")
        .create()
        .ok()?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(topic), timeout).ok()?;
    let partitions = metadata.topics().first()?.partitions().len() as i32;
    if !by_reading {
        let mut total = 0;
        for partition in 0..partitions {
            let (_, high) = consumer.fetch_watermarks(topic, partition, timeout).ok()?;
            total += u64::try_from(high).ok()?;
        }
        return Some(total);
    }
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .ok()?;
    }
    consumer.assign(&assignment).ok()?;
    let (mut records, mut at_end) = (0, std::collections::HashSet::new());
    let deadline = Instant::now() + DRAIN;
    while at_end.len() < partitions as usize && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => records += 1,
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                at_end.insert(partition);
            }
            Some(Err(error)) => {
                eprintln!("  reading {topic} back: {error}");
                return None;
            }
            None => {}
        }
    }
    (at_end.len() == partitions as usize).then_some(records)
}

/// The measured part shared by both paths: `publish_one` until the plan is met,
/// never more than `BACKLOG` ahead of `reported`, then wait for the last reports.
fn drive(
    plan: &Plan,
    mut publish_one: impl FnMut(u64),
    reported: impl Fn() -> u64 + Send + Sync + Clone + 'static,
) -> (u64, Duration, Vec<u64>, bool) {
    let base = reported();
    let progress = reported.clone();
    let sampler = Sampler::start(move || progress() - base);
    let started = Instant::now();
    let mut published = 0;
    let capped = loop {
        let elapsed = started.elapsed();
        if published >= plan.records && elapsed >= plan.min {
            break false;
        }
        if elapsed >= plan.max {
            break true;
        }
        if published.saturating_sub(reported() - base) >= BACKLOG {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        publish_one(published);
        published += 1;
    };
    let drained = common::wait_until(DRAIN, Duration::from_millis(1), || {
        reported() - base >= published
    });
    let elapsed = started.elapsed();
    if !drained {
        eprintln!("  not every record was reported on within {DRAIN:?}");
    }
    (published, elapsed, sampler.finish(), capped)
}

/// Our path: `Running::publish` of the typical CDR, spool on, default settings.
fn run_module(brokers: &str, topic: &str, plan: &Plan, broker: &Broker) -> Run {
    let dir = common::Scratch::new("throughput");
    let settings = common::settings(brokers, topic, &dir.0, &[]);
    let running =
        Arc::new(Running::start(settings, common::identity()).expect("the module starts"));
    let cdr = common::typical_cdr();
    for _ in 0..WARMUP {
        running.publish(&cdr).expect("spooled");
    }
    let stats = Arc::clone(&running);
    assert!(
        common::wait_until(Duration::from_secs(60), Duration::from_millis(10), || {
            stats.counts().delivered >= WARMUP
        }),
        "the warm-up records were not delivered to {brokers}"
    );
    let cpu_before = thread_cpu("self");
    let broker_before = broker.pid.map(thread_cpu);
    let reported = {
        let stats = Arc::clone(&running);
        move || stats.counts().delivered + stats.counts().dead_lettered
    };
    let (published, elapsed, per_second, capped) =
        drive(plan, |_| running.publish(&cdr).expect("spooled"), reported);
    let cpu = common::cpu_per_record(&cpu_before, &thread_cpu("self"), published);
    let broker_cpu = broker.pid.zip(broker_before).map(|(pid, before)| {
        (total_run_ns(&thread_cpu(pid)) - total_run_ns(&before)) as f64 / 1000.0 / published as f64
    });
    let delivered = running.counts().delivered - WARMUP;
    let failed = running.counts().dead_lettered;
    let depth = running.log.depth().0;
    if depth != 0 {
        eprintln!("  {depth} record(s) still in the spool");
    }
    let unconfirmed = running.shutdown();
    if unconfirmed != 0 {
        eprintln!("  {unconfirmed} record(s) unconfirmed at shutdown");
    }
    Run {
        path: "cdr_kafka (`Running::publish`, spool on)",
        published,
        delivered,
        failed,
        on_topic: on_topic(brokers, topic, broker.read_back).map(|n| n - WARMUP),
        elapsed,
        per_second,
        cpu,
        broker_cpu,
        capped,
    }
}

#[derive(Default)]
struct Counts {
    delivered: AtomicU64,
    failed: AtomicU64,
}

struct Counting(Arc<Counts>);

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let counter = match result {
            Ok(_) => &self.0.delivered,
            Err(_) => &self.0.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The baseline: librdkafka alone, with the producer settings the module would use.
fn run_librdkafka(settings: &Settings, topic: &str, plan: &Plan, broker: &Broker) -> (Run, String) {
    let mut config = ClientConfig::new();
    for (property, value) in &settings.kafka.properties {
        config.set(property, value);
    }
    let counts = Arc::new(Counts::default());
    let producer: Arc<BaseProducer<Counting>> = Arc::new(
        config
            .create_with_context(Counting(Arc::clone(&counts)))
            .expect("producer"),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (producer, stop) = (Arc::clone(&producer), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("bench-poll".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    producer.poll(Duration::from_millis(100));
                }
            })
            .expect("poll thread")
    };
    let payload = common::payload(&common::typical_cdr(), settings);
    let send = |n: u64| {
        let record_id = format!("001122334455-bench-{n}");
        let mut headers = OwnedHeaders::new_with_capacity(6);
        for (name, value) in common::headers(&record_id) {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        let mut record: BaseRecord<(), Vec<u8>> =
            BaseRecord::to(topic).payload(&payload).headers(headers);
        loop {
            match producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((error, _)) => panic!("librdkafka refused a record: {error}"),
            }
        }
    };
    for n in 0..WARMUP {
        send(n);
    }
    assert!(
        common::wait_until(Duration::from_secs(60), Duration::from_millis(10), || {
            counts.delivered.load(Ordering::Relaxed) >= WARMUP
        }),
        "the warm-up records were not delivered"
    );
    let cpu_before = thread_cpu("self");
    let broker_before = broker.pid.map(thread_cpu);
    let reported = {
        let counts = Arc::clone(&counts);
        move || counts.delivered.load(Ordering::Relaxed) + counts.failed.load(Ordering::Relaxed)
    };
    let (published, elapsed, per_second, capped) = drive(plan, |n| send(WARMUP + n), reported);
    let cpu = common::cpu_per_record(&cpu_before, &thread_cpu("self"), published);
    let broker_cpu = broker.pid.zip(broker_before).map(|(pid, before)| {
        (total_run_ns(&thread_cpu(pid)) - total_run_ns(&before)) as f64 / 1000.0 / published as f64
    });
    stop.store(true, Ordering::Relaxed);
    let _ = poller.join();
    let _ = producer.flush(Duration::from_secs(10));
    let brokers = settings
        .kafka
        .get("bootstrap.servers")
        .unwrap_or_default()
        .to_string();
    let run = Run {
        path: "librdkafka alone (`BaseProducer` + poll thread)",
        published,
        delivered: counts.delivered.load(Ordering::Relaxed) - WARMUP,
        failed: counts.failed.load(Ordering::Relaxed),
        on_topic: on_topic(&brokers, topic, broker.read_back).map(|n| n - WARMUP),
        elapsed,
        per_second,
        cpu,
        broker_cpu,
        capped,
    };
    (run, String::from_utf8_lossy(&payload).len().to_string())
}

fn row(broker: &str, run: &Run) -> String {
    let lost = run.published.saturating_sub(run.delivered + run.failed);
    let mut full: Vec<u64> = run.per_second.clone();
    full.sort_unstable();
    let per_second = if full.is_empty() {
        "-".to_string()
    } else {
        format!(
            "{} / {} / {}",
            common::thousands(full[0]),
            common::thousands(common::percentile(&full, 0.5)),
            common::thousands(full[full.len() - 1])
        )
    };
    let on_topic = run
        .on_topic
        .map_or_else(|| "?".to_string(), common::thousands);
    format!(
        "| {broker} | {} | {}{} | {} | {} | {lost} | {on_topic} | {:.1} | **{}** | {per_second} | {} | {} |",
        run.path,
        common::thousands(run.published),
        if run.capped { " (time cap)" } else { "" },
        common::thousands(run.delivered),
        run.failed,
        run.elapsed.as_secs_f64(),
        common::thousands(run.rate() as u64),
        common::format_cpu(&run.cpu),
        run.broker_cpu
            .map_or_else(|| "in process".to_string(), |us| format!("{us:.1}")),
    )
}

fn measure(name: &str, brokers: &str, plan: &Plan, make_topic: &dyn Fn(&str), broker: &Broker) {
    let base_topic = format!("bench-librdkafka-{}", std::process::id());
    let our_topic = format!("bench-cdr_kafka-{}", std::process::id());
    make_topic(&base_topic);
    make_topic(&our_topic);
    let scratch = common::Scratch::new("unused");
    let settings = common::settings(brokers, &base_topic, &scratch.0, &[]);
    let (baseline, payload_len) = run_librdkafka(&settings, &base_topic, plan, broker);
    println!("{}", row(name, &baseline));
    let ours = run_module(brokers, &our_topic, plan, broker);
    println!("{}", row(name, &ours));
    println!(
        "| {name} | **cdr_kafka / librdkafka alone** | | | | | | | **{:.2}** | | payload {payload_len} bytes + 6 headers | |",
        ours.rate() / baseline.rate()
    );
}

/// The spool's drain: `records` appended while the broker is down (nothing listens on
/// its port), then tansu started on that port; how long until every record is confirmed.
fn drain_after_outage(records: u64) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port");
    let brokers = format!("127.0.0.1:{port}");
    let topic = format!("bench-drain-{}", std::process::id());
    let dir = common::Scratch::new("drain");
    let settings = common::settings(&brokers, &topic, &dir.0, &[]);
    let running = Running::start(settings, common::identity()).expect("the module starts");
    let cdr = common::typical_cdr();
    let started = Instant::now();
    for _ in 0..records {
        running.publish(&cdr).expect("spooled");
    }
    let appended = started.elapsed();
    let spool_bytes = dir.bytes();
    let tansu = support::Tansu::start_on(port);
    tansu.create_topic(&topic);
    let back = Instant::now();
    let mut first = None;
    let drained = common::wait_until(Duration::from_secs(600), Duration::from_millis(20), || {
        let delivered = running.counts().delivered;
        if delivered > 0 && first.is_none() {
            first = Some(back.elapsed());
        }
        delivered >= records
    });
    let total = back.elapsed();
    let first = first.unwrap_or(total);
    let rate = records as f64 / (total - first).as_secs_f64().max(1e-9);
    println!(
        "Drain after an outage: {} records ({:.0} MB of spool) appended in {:.1} s with the broker down; \
         broker back: first confirmation after {:.1} s (librdkafka's reconnect backoff), all {} after {:.1} s: \
         **{} records/s** drained{}",
        common::thousands(records),
        spool_bytes as f64 / 1e6,
        appended.as_secs_f64(),
        first.as_secs_f64(),
        if drained { "confirmed" } else { "NOT confirmed" },
        total.as_secs_f64(),
        common::thousands(rate as u64),
        if drained { "" } else { " (gave up after 600 s)" },
    );
    running.shutdown();
    tansu.stop();
}

fn main() {
    let plan = Plan {
        records: common::env_number("CDR_KAFKA_BENCH_RECORDS", 1_000_000, 2_000),
        min: Duration::from_secs(common::env_number("CDR_KAFKA_BENCH_SECS", 10, 0)),
        max: Duration::from_secs(common::env_number("CDR_KAFKA_BENCH_MAX_SECS", 120, 30)),
    };
    let which = std::env::var("CDR_KAFKA_BENCH_BROKERS").unwrap_or_else(|_| "mock,tansu".into());
    println!(
        "Sustained throughput, typical CDR, default settings (spool_sync = interval, linger_ms = 100, \
         acks = all, idempotent), {} records and at least {} s per run, at most {} records ahead \
         of the delivery reports ({})",
        common::thousands(plan.records),
        plan.min.as_secs(),
        common::thousands(BACKLOG),
        common::machine()
    );
    println!();
    println!(
        "| broker | path | published | delivered | failed | lost | on the topic | seconds | records/s | per-second min / median / max | CPU µs/record, this process, by thread | broker CPU µs/record |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    if which.contains("mock") {
        let cluster: MockCluster<'static, DefaultProducerContext> =
            MockCluster::new(1).expect("mock cluster");
        let brokers = cluster.bootstrap_servers();
        let make_topic = |topic: &str| {
            cluster.create_topic(topic, 1, 1).expect("create the topic");
        };
        measure(
            "librdkafka mock cluster (1 partition)",
            &brokers,
            &plan,
            &make_topic,
            &Broker {
                pid: None,
                read_back: false,
            },
        );
    }
    if which.contains("tansu") {
        let tansu = support::Tansu::start();
        let pid = broker_pid(tansu.port);
        let make_topic = |topic: &str| tansu.create_topic(topic);
        measure(
            "tansu 0.6, memory storage (3 partitions)",
            &tansu.brokers(),
            &plan,
            &make_topic,
            &Broker {
                pid: pid.as_deref(),
                read_back: true,
            },
        );
        tansu.stop();
        println!();
        drain_after_outage(plan.records);
    }
    common::quick_note();
}
