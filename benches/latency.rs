//! Latency from `Running::publish` returning (the record is in the spool) to its delivery
//! report, at a steady 1,000 records/s with default settings (linger_ms = 100, acks = all,
//! idempotent, spool_sync = interval), into librdkafka's mock cluster and into tansu on
//! 127.0.0.1; p50 / p99 / max. Baseline in the same run: librdkafka alone (a `BaseProducer`
//! with the same settings, payload and headers), from `send` returning to the report.
//!
//! How the module's delivery time is taken without touching src/: the topic has one
//! partition, so librdkafka reports the records in the order they were produced, and the
//! module's `delivered` counter passes n exactly when record n is acknowledged. A watcher
//! thread reads the counter in a loop (yielding the CPU between reads, so it does not starve
//! the producer's threads on a small machine) and gives record n the time it first sees the
//! counter at n or more. The error is at most one loop period late; the table shows the
//! loop's median and largest period, the resolution of the figure. The baseline needs no
//! watcher: its delivery callback timestamps each record by its opaque index.
//!
//! The bench draws the histogram into docs/latency.svg (CDR_KAFKA_BENCH_SVG for another
//! path; with CDR_KAFKA_BENCH_QUICK=1 it goes to the target folder, not docs/).
//! `cargo bench --bench latency`. CDR_KAFKA_BENCH_RATE (default 1000) records/s for
//! CDR_KAFKA_BENCH_SECS (default 10) seconds; CDR_KAFKA_BENCH_BROKERS=mock or tansu for one
//! broker only; CDR_KAFKA_BENCH_QUICK=1: 300 records.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cdr_kafka::config::Settings;
use cdr_kafka::module::Running;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{
    BaseProducer, BaseRecord, DefaultProducerContext, DeliveryResult, Producer, ProducerContext,
};
use rdkafka::ClientContext;

/// Billing needs seconds, not milliseconds: batching may trade latency up to this bound.
const TARGET_P99_MS: f64 = 250.0;
/// Records delivered before the clock starts: connection, metadata, producer id.
const WARMUP: u64 = 100;

struct Pace {
    records: usize,
    interval: Duration,
}

impl Pace {
    /// Calls `publish(i)` at `i * interval` from now; returns when each call returned.
    fn run(&self, mut publish: impl FnMut(usize)) -> (Vec<Instant>, Vec<Duration>) {
        let mut returned = Vec::with_capacity(self.records);
        let mut cost = Vec::with_capacity(self.records);
        let started = Instant::now();
        for i in 0..self.records {
            let due = started + self.interval * i as u32;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let before = Instant::now();
            publish(i);
            let after = Instant::now();
            returned.push(after);
            cost.push(after - before);
        }
        (returned, cost)
    }
}

/// One path's figures.
struct Measured {
    broker: String,
    path: &'static str,
    /// Sorted, in µs.
    latencies: Vec<f64>,
    /// Sorted, ns: what `publish` (or `send`) itself took.
    call: Vec<u64>,
    /// The watcher's loop period: median, p99.9 and largest, µs (None for the baseline).
    resolution: Option<(f64, f64, f64)>,
    lost: u64,
}

impl Measured {
    fn p(&self, p: f64) -> f64 {
        common::percentile(&self.latencies, p)
    }
}

/// Watches a counter that passes n when record n is delivered; returns when each record
/// was first seen delivered, and the loop periods.
fn watch(
    counter: impl Fn() -> u64 + Send + 'static,
    base: u64,
    records: usize,
    timeout: Duration,
) -> std::thread::JoinHandle<(Vec<Option<Instant>>, Vec<f64>)> {
    std::thread::Builder::new()
        .name("bench-watch".into())
        .spawn(move || {
            let mut seen = vec![None; records];
            let mut periods = Vec::new();
            let mut last_count = 0usize;
            let started = Instant::now();
            let mut last_read = started;
            while last_count < records && started.elapsed() < timeout {
                let count = counter().saturating_sub(base).min(records as u64) as usize;
                let now = Instant::now();
                periods.push((now - last_read).as_secs_f64() * 1e6);
                last_read = now;
                if count > last_count {
                    for slot in &mut seen[last_count..count] {
                        *slot = Some(now);
                    }
                    last_count = count;
                }
                std::thread::yield_now();
            }
            (seen, periods)
        })
        .expect("watcher thread")
}

fn latencies_us(published: &[Instant], delivered: &[Option<Instant>]) -> (Vec<f64>, u64) {
    let mut lost = 0;
    let mut out: Vec<f64> = published
        .iter()
        .zip(delivered)
        .filter_map(|(p, d)| match d {
            Some(d) => Some(d.saturating_duration_since(*p).as_secs_f64() * 1e6),
            None => {
                lost += 1;
                None
            }
        })
        .collect();
    out.sort_by(f64::total_cmp);
    (out, lost)
}

fn sorted_ns(durations: &[Duration]) -> Vec<u64> {
    let mut ns: Vec<u64> = durations.iter().map(|d| d.as_nanos() as u64).collect();
    ns.sort_unstable();
    ns
}

/// Our path: `Running::publish` at the pace, the `delivered` counter watched.
fn run_module(broker: &str, brokers: &str, topic: &str, pace: &Pace) -> Measured {
    let dir = common::Scratch::new("latency");
    let settings = common::settings(brokers, topic, &dir.0, &[]);
    let running =
        Arc::new(Running::start(settings, common::identity()).expect("the module starts"));
    let cdr = common::typical_cdr();
    for _ in 0..WARMUP {
        running.publish(&cdr).expect("spooled");
    }
    assert!(
        common::wait_until(Duration::from_secs(60), Duration::from_millis(10), || {
            running.counts().delivered >= WARMUP
        }),
        "the warm-up records were not delivered to {brokers}"
    );
    std::thread::sleep(Duration::from_millis(200));
    let base = running.counts().delivered;
    let stats = Arc::clone(&running);
    let timeout = pace.interval * pace.records as u32 + Duration::from_secs(60);
    let watcher = watch(
        move || stats.counts().delivered,
        base,
        pace.records,
        timeout,
    );
    let (published, cost) = pace.run(|_| running.publish(&cdr).expect("spooled"));
    let (delivered, mut periods) = watcher.join().expect("watcher");
    let failed = running.counts().dead_lettered;
    running.shutdown();
    let (latencies, lost) = latencies_us(&published, &delivered);
    if failed > 0 {
        eprintln!("  {failed} record(s) failed");
    }
    // `median` sorts the periods.
    let median = common::median(&mut periods);
    let resolution = (
        median,
        common::percentile(&periods, 0.999),
        periods.last().copied().unwrap_or(0.0),
    );
    Measured {
        broker: broker.to_string(),
        path: "cdr_kafka (`Running::publish` → report)",
        latencies,
        call: sorted_ns(&cost),
        resolution: Some(resolution),
        lost,
    }
}

struct Stamping(Arc<Mutex<Vec<Option<Instant>>>>);

impl ClientContext for Stamping {}

impl ProducerContext for Stamping {
    type DeliveryOpaque = Box<usize>;

    fn delivery(&self, result: &DeliveryResult<'_>, index: Box<usize>) {
        let now = Instant::now();
        if result.is_ok() {
            if let Some(slot) = self
                .0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(*index)
            {
                *slot = Some(now);
            }
        }
    }
}

/// The baseline: librdkafka alone, the delivery callback timestamping each record.
fn run_librdkafka(broker: &str, settings: &Settings, topic: &str, pace: &Pace) -> Measured {
    let mut config = ClientConfig::new();
    for (property, value) in &settings.kafka.properties {
        config.set(property, value);
    }
    let total = WARMUP as usize + pace.records;
    let stamps = Arc::new(Mutex::new(vec![None; total]));
    let producer: Arc<BaseProducer<Stamping>> = Arc::new(
        config
            .create_with_context(Stamping(Arc::clone(&stamps)))
            .expect("producer"),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (producer, stop) = (Arc::clone(&producer), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                producer.poll(Duration::from_millis(100));
            }
        })
    };
    let payload = common::payload(&common::typical_cdr(), settings);
    let send = |index: usize| {
        let record_id = format!("001122334455-bench-{index}");
        let mut headers = OwnedHeaders::new_with_capacity(6);
        for (name, value) in common::headers(&record_id) {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        let record: BaseRecord<(), Vec<u8>, Box<usize>> =
            BaseRecord::with_opaque_to(topic, Box::new(index))
                .payload(&payload)
                .headers(headers);
        producer
            .send(record)
            .unwrap_or_else(|(error, _)| panic!("librdkafka refused a record: {error}"));
    };
    for index in 0..WARMUP as usize {
        send(index);
    }
    let _ = producer.flush(Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(200));
    let (published, cost) = pace.run(|i| send(WARMUP as usize + i));
    let _ = producer.flush(pace.interval * pace.records as u32 + Duration::from_secs(60));
    stop.store(true, Ordering::Relaxed);
    let _ = poller.join();
    let delivered = stamps.lock().unwrap_or_else(|p| p.into_inner())[WARMUP as usize..].to_vec();
    let (latencies, lost) = latencies_us(&published, &delivered);
    Measured {
        broker: broker.to_string(),
        path: "librdkafka alone (`send` → report)",
        latencies,
        call: sorted_ns(&cost),
        resolution: None,
        lost,
    }
}

fn row(m: &Measured) -> String {
    let ms = |us: f64| format!("{:.2}", us / 1000.0);
    let resolution = m.resolution.map_or_else(
        || "exact".to_string(),
        |(median, p999, max)| format!("{median:.1} / {p999:.0} / {max:.0}"),
    );
    format!(
        "| {} | {} | {} | {} | {} | **{}** | {} | {} | {} | {} / {} | {resolution} |",
        m.broker,
        m.path,
        m.latencies.len(),
        m.lost,
        ms(m.p(0.5)),
        ms(m.p(0.99)),
        ms(m.p(0.999)),
        ms(m.latencies.last().copied().unwrap_or(f64::NAN)),
        ms(m.latencies.iter().sum::<f64>() / m.latencies.len().max(1) as f64),
        common::percentile(&m.call, 0.5),
        common::percentile(&m.call, 0.99),
    )
}

/// Creates a topic of one partition on tansu (the harness makes three).
fn tansu_topic(port: u16, topic: &str) {
    let tansu = std::env::var_os("CDR_KAFKA_TANSU").expect("CDR_KAFKA_TANSU");
    let status = Command::new(tansu)
        .args(["topic", "create", topic, "--partitions", "1", "--broker"])
        .arg(format!("tcp://127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .status()
        .expect("run tansu topic create");
    assert!(status.success(), "tansu topic create {topic} failed");
}

fn measure(broker: &str, brokers: &str, make_topic: &dyn Fn(&str), pace: &Pace) -> Vec<Measured> {
    let pid = std::process::id();
    let (base_topic, our_topic) = (format!("lat-librdkafka-{pid}"), format!("lat-cdrk-{pid}"));
    make_topic(&base_topic);
    make_topic(&our_topic);
    let scratch = common::Scratch::new("unused");
    let settings = common::settings(brokers, &base_topic, &scratch.0, &[]);
    let baseline = run_librdkafka(broker, &settings, &base_topic, pace);
    println!("{}", row(&baseline));
    let ours = run_module(broker, brokers, &our_topic, pace);
    println!("{}", row(&ours));
    vec![baseline, ours]
}

fn main() {
    let rate = common::env_number("CDR_KAFKA_BENCH_RATE", 1000, 1000).max(1);
    let secs = common::env_number("CDR_KAFKA_BENCH_SECS", 10, 0);
    let records = if common::quick() && std::env::var("CDR_KAFKA_BENCH_SECS").is_err() {
        300
    } else {
        (rate * secs) as usize
    };
    let pace = Pace {
        records,
        interval: Duration::from_nanos(1_000_000_000 / rate),
    };
    let which = std::env::var("CDR_KAFKA_BENCH_BROKERS").unwrap_or_else(|_| "mock,tansu".into());
    println!(
        "Latency from hand-off to delivery report, {rate} records/s, {records} records per path, \
         typical CDR, default settings, one partition ({})",
        common::machine()
    );
    println!();
    println!(
        "| broker | path | records | lost | p50 ms | p99 ms | p99.9 ms | max ms | mean ms | call ns p50 / p99 | resolution: watcher period µs, median / p99.9 / max |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut all = Vec::new();
    if which.contains("mock") {
        let cluster: MockCluster<'static, DefaultProducerContext> =
            MockCluster::new(1).expect("mock cluster");
        let brokers = cluster.bootstrap_servers();
        let make_topic = |topic: &str| {
            cluster.create_topic(topic, 1, 1).expect("create the topic");
        };
        all.extend(measure(
            "librdkafka mock cluster",
            &brokers,
            &make_topic,
            &pace,
        ));
    }
    if which.contains("tansu") {
        let tansu = support::Tansu::start();
        let make_topic = |topic: &str| tansu_topic(tansu.port, topic);
        all.extend(measure(
            "tansu 0.6 (memory)",
            &tansu.brokers(),
            &make_topic,
            &pace,
        ));
        tansu.stop();
    }
    let ours: Vec<&Measured> = all.iter().filter(|m| m.resolution.is_some()).collect();
    let worst = ours.iter().map(|m| m.p(0.99)).fold(0.0, f64::max) / 1000.0;
    println!();
    println!(
        "Target p99 ≤ {TARGET_P99_MS} ms: {} (worst p99 of cdr_kafka {worst:.2} ms).",
        if worst <= TARGET_P99_MS {
            "met"
        } else {
            "missed"
        }
    );
    common::quick_note();
    let path = svg_path();
    let title = format!("cdr_kafka: hand-off to delivery report at {rate} records/s");
    if let Some(folder) = path.parent() {
        let _ = std::fs::create_dir_all(folder);
    }
    match std::fs::write(&path, histogram_svg(&title, &common::machine(), &all)) {
        Ok(()) => println!("Histogram: {}", path.display()),
        Err(error) => eprintln!("cannot write {}: {error}", path.display()),
    }
}

fn svg_path() -> PathBuf {
    if let Some(path) = std::env::var_os("CDR_KAFKA_BENCH_SVG") {
        return PathBuf::from(path);
    }
    if common::quick() {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("latency.svg")
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/latency.svg")
    }
}

/// A step that makes 4 to 10 ticks over `span`: 1, 2 or 5 times a power of ten.
fn nice_step(span: f64) -> f64 {
    let raw = span / 6.0;
    let power = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|step| span / step <= 10.0)
        .unwrap_or(10.0 * power)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One panel per broker: cdr_kafka's histogram as bars, librdkafka alone as an outline,
/// p50 and p99 marked. Latency on x (ms, bins shared by all panels), share of records on y.
fn histogram_svg(title: &str, machine: &str, measured: &[Measured]) -> String {
    const WIDTH: f64 = 760.0;
    const PANEL: f64 = 250.0;
    const LEFT: f64 = 64.0;
    const RIGHT: f64 = 24.0;
    const TOP: f64 = 80.0;
    const BINS: usize = 60;
    let brokers: Vec<&str> = {
        let mut b: Vec<&str> = measured.iter().map(|m| m.broker.as_str()).collect();
        b.dedup();
        b
    };
    // Range: past the largest p99.9, so the tail shows and one outlier does not flatten it.
    let upper_us = measured
        .iter()
        .filter(|m| !m.latencies.is_empty())
        .map(|m| m.p(0.999))
        .fold(1000.0, f64::max)
        * 1.15;
    let step_ms = nice_step(upper_us / 1000.0);
    let range_ms = (upper_us / 1000.0 / step_ms).ceil() * step_ms;
    let bin_ms = range_ms / BINS as f64;
    let plot_w = WIDTH - LEFT - RIGHT;
    let height = TOP + PANEL * brokers.len() as f64;
    let shares = |m: &Measured| -> Vec<f64> {
        let mut counts = vec![0usize; BINS + 1];
        for &us in &m.latencies {
            let bin = ((us / 1000.0) / bin_ms) as usize;
            counts[bin.min(BINS)] += 1;
        }
        let n = m.latencies.len().max(1) as f64;
        counts.into_iter().map(|c| c as f64 / n * 100.0).collect()
    };
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{}</text>
<text x="{}" y="40" text-anchor="middle" fill="#555">{}</text>
<rect x="{LEFT}" y="50" width="12" height="10" fill="#3b78c2"/><text x="{}" y="59">cdr_kafka: publish() returns → report</text>
<line x1="{}" x2="{}" y1="55" y2="55" stroke="#222" stroke-width="1.2"/><text x="{}" y="59">librdkafka alone: send() returns → report</text>
<rect x="{}" y="50" width="12" height="10" fill="#d9822b"/><text x="{}" y="59">beyond the axis</text>
"##,
        WIDTH / 2.0,
        escape(title),
        WIDTH / 2.0,
        escape(machine),
        LEFT + 18.0,
        LEFT + 250.0,
        LEFT + 262.0,
        LEFT + 268.0,
        LEFT + 520.0,
        LEFT + 538.0,
    );
    for (panel, broker) in brokers.iter().enumerate() {
        let top = TOP + panel as f64 * PANEL + 18.0;
        let plot_h = PANEL - 70.0;
        let bottom = top + plot_h;
        let ours = measured
            .iter()
            .find(|m| m.broker == *broker && m.resolution.is_some());
        let baseline = measured
            .iter()
            .find(|m| m.broker == *broker && m.resolution.is_none());
        let our_shares = ours.map(shares).unwrap_or_default();
        let base_shares = baseline.map(shares).unwrap_or_default();
        let peak = our_shares
            .iter()
            .chain(&base_shares)
            .fold(1.0f64, |a, &b| a.max(b));
        let y_step = nice_step(peak);
        let y_max = (peak / y_step).ceil() * y_step;
        let x = |ms: f64| LEFT + ms / range_ms * plot_w * BINS as f64 / (BINS as f64 + 1.0);
        let y = |share: f64| bottom - share / y_max * plot_h;
        let _ = writeln!(
            svg,
            r##"<text x="{LEFT}" y="{}" font-weight="bold">{}</text>"##,
            top - 6.0,
            escape(broker)
        );
        // Grid and y axis.
        let mut tick = 0.0;
        while tick <= y_max + 1e-9 {
            let _ = writeln!(
                svg,
                r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#e4e4e4"/><text x="{}" y="{:.1}" text-anchor="end">{tick}%</text>"##,
                WIDTH - RIGHT,
                LEFT - 6.0,
                y(tick) + 4.0,
                y = y(tick)
            );
            tick += y_step;
        }
        // Bars: cdr_kafka.
        let bar_w = x(bin_ms) - x(0.0);
        for (bin, share) in our_shares.iter().enumerate() {
            if *share <= 0.0 {
                continue;
            }
            let fill = if bin == BINS { "#d9822b" } else { "#3b78c2" };
            let _ = writeln!(
                svg,
                r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{fill}"/>"##,
                x(bin as f64 * bin_ms) + 0.5,
                y(*share),
                (bar_w - 1.0).max(0.5),
                bottom - y(*share)
            );
        }
        // Outline: librdkafka alone.
        if !base_shares.is_empty() {
            let mut points = format!("{:.1},{:.1}", x(0.0), bottom);
            for (bin, share) in base_shares.iter().enumerate() {
                let (x0, x1) = (x(bin as f64 * bin_ms), x((bin + 1) as f64 * bin_ms));
                let _ = write!(points, " {x0:.1},{:.1} {x1:.1},{:.1}", y(*share), y(*share));
            }
            let _ = write!(points, " {:.1},{bottom:.1}", x((BINS + 1) as f64 * bin_ms));
            let _ = writeln!(
                svg,
                r##"<polyline points="{points}" fill="none" stroke="#222" stroke-width="1.2"/>"##
            );
        }
        // Axes and x ticks.
        let x_end = x((BINS + 1) as f64 * bin_ms);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" x2="{LEFT}" y1="{top:.1}" y2="{bottom:.1}" stroke="black"/><line x1="{LEFT}" x2="{x_end:.1}" y1="{bottom:.1}" y2="{bottom:.1}" stroke="black"/>"##
        );
        let mut tick = 0.0;
        while tick <= range_ms + 1e-9 {
            let label = if tick > range_ms - step_ms / 2.0 {
                String::new()
            } else if step_ms < 1.0 {
                format!("{tick:.1}")
            } else {
                format!("{tick:.0}")
            };
            let _ = writeln!(
                svg,
                r##"<line x1="{x:.1}" x2="{x:.1}" y1="{bottom:.1}" y2="{:.1}" stroke="black"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
                bottom + 4.0,
                bottom + 17.0,
                x = x(tick)
            );
            tick += step_ms;
        }
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#d9822b">≥{range_ms}</text>"##,
            x(range_ms + bin_ms / 2.0),
            bottom + 17.0
        );
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">latency, ms (bins of {:.2} ms)</text><text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">share of records</text>"##,
            LEFT + plot_w / 2.0,
            bottom + 32.0,
            bin_ms,
            top + plot_h / 2.0
        );
        // p50 / p99 markers and the legend.
        if let Some(m) = ours {
            for (name, p, dash) in [("p50", 0.5, "4 3"), ("p99", 0.99, "8 3")] {
                let ms = m.p(p) / 1000.0;
                let at = x(ms.min(range_ms + bin_ms / 2.0));
                let _ = writeln!(
                    svg,
                    r##"<line x1="{at:.1}" x2="{at:.1}" y1="{top:.1}" y2="{bottom:.1}" stroke="#c0392b" stroke-dasharray="{dash}"/><text x="{:.1}" y="{:.1}" fill="#c0392b">{name} {ms:.2} ms</text>"##,
                    at + 4.0,
                    if p < 0.9 { top + 12.0 } else { top + 28.0 }
                );
            }
            let _ = writeln!(
                svg,
                r##"<text x="{}" y="{:.1}" text-anchor="end" fill="#555">cdr_kafka: n = {}, max {:.1} ms</text>"##,
                WIDTH - RIGHT,
                top - 6.0,
                m.latencies.len(),
                m.latencies.last().copied().unwrap_or(0.0) / 1000.0
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}
