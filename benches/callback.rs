//! What the CDR callback costs on Asterisk's CDR thread: encode + record id + headers +
//! one spool append, per `spool_sync` policy, for a typical CDR (all fields filled, 5
//! variables) and a heavy one (80-byte fields, 100 variables). Baselines in the same run:
//! the same fields as a plain struct through `serde_json::to_vec` into a new Vec, and our
//! `record::encode` alone. Prints median and p99 in nanoseconds. With the default
//! `spool_sync`, also the callback's CPU time when it runs once every 5 ms, as on a PBX
//! (cold caches: growing the spool's file costs most there), beside the CPU time of an
//! empty call measured the same way.
//!
//! `cargo bench --bench callback` (or `make bench`). The spool lives in a folder of the
//! system's temp dir (pass another with CDR_KAFKA_BENCH_DIR to measure that disk); the
//! broker address is unreachable, so the records stay in the spool and only the
//! callback's own work is measured. Instructions per record, repeatable on a noisy
//! machine: `valgrind --tool=callgrind` on this binary with CDR_KAFKA_BENCH_COUNT=2000.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cdr_kafka::module::Running;
use cdr_kafka::record::{self, Cdr, EncodeOptions};

mod common;

fn running(dir: &Path, sync: &str) -> Running {
    let settings = common::settings(
        "127.0.0.1:9",
        "asterisk_cdr",
        dir,
        &[("key", "linkedid"), ("spool_sync", sync)],
    );
    Running::start(settings, common::identity()).expect("module starts")
}

/// Long fields (Asterisk's 80-byte maximum) and 100 variables.
fn heavy_cdr(texts: &HeavyTexts) -> Cdr<'_> {
    let long = texts.long.as_bytes();
    Cdr {
        clid: long,
        src: long,
        dst: long,
        dcontext: long,
        channel: long,
        dstchannel: long,
        lastapp: long,
        lastdata: long,
        variables: texts
            .variables
            .iter()
            .map(|(name, value)| (name.as_bytes(), value.as_bytes()))
            .collect(),
        ..common::typical_cdr()
    }
}

struct HeavyTexts {
    long: String,
    variables: Vec<(String, String)>,
}

impl HeavyTexts {
    fn new() -> Self {
        Self {
            long: "x".repeat(79),
            variables: (0..100)
                .map(|i| {
                    (
                        format!("variable_{i:03}"),
                        format!("value number {i} of a heavy CDR"),
                    )
                })
                .collect(),
        }
    }
}

/// The same fields as owned strings: what a plain `serde_json::to_vec` would encode.
fn as_plain_map(cdr: &Cdr<'_>) -> BTreeMap<String, String> {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let mut map = BTreeMap::new();
    for (name, value) in [
        ("clid", cdr.clid),
        ("src", cdr.src),
        ("dst", cdr.dst),
        ("dcontext", cdr.dcontext),
        ("channel", cdr.channel),
        ("dstchannel", cdr.dstchannel),
        ("lastapp", cdr.lastapp),
        ("lastdata", cdr.lastdata),
        ("disposition", cdr.disposition),
        ("accountcode", cdr.accountcode),
        ("amaflags", cdr.amaflags),
        ("peeraccount", cdr.peeraccount),
        ("linkedid", cdr.linkedid),
        ("uniqueid", cdr.uniqueid),
    ] {
        map.insert(name.to_string(), text(value));
    }
    for (name, value) in &cdr.variables {
        map.insert(text(name), text(value));
    }
    map
}

fn percentile(sorted: &[Duration], p: f64) -> u128 {
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index].as_nanos()
}

/// Times `samples` calls of `call` (after a tenth as warm-up): (median, p99) in ns.
fn measure(samples: usize, mut call: impl FnMut()) -> (u128, u128) {
    for _ in 0..samples / 10 {
        call();
    }
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        call();
        times.push(started.elapsed());
    }
    times.sort_unstable();
    (percentile(&times, 0.5), percentile(&times, 0.99))
}

/// This thread's CPU time (what Asterisk's CDR thread is charged).
fn thread_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given, nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// CPU time of `samples` calls of `call`, each after `pause` asleep, as the CDR thread of
/// a PBX runs them (a call every few ms, into cold caches): (median, p99) in ns.
fn measure_paced(samples: usize, pause: Duration, mut call: impl FnMut()) -> (u128, u128) {
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        std::thread::sleep(pause);
        let started = thread_cpu();
        call();
        times.push(thread_cpu().saturating_sub(started));
    }
    times.sort_unstable();
    (percentile(&times, 0.5), percentile(&times, 0.99))
}

fn main() {
    let count = common::env_number("CDR_KAFKA_BENCH_COUNT", 20_000, 2_000) as usize;
    let base = std::env::var_os("CDR_KAFKA_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let heavy_texts = HeavyTexts::new();
    let cdrs = [
        ("typical", common::typical_cdr()),
        ("heavy", heavy_cdr(&heavy_texts)),
    ];
    let identity = common::identity();
    let options = EncodeOptions {
        entity_id: identity.entity_id.clone(),
        system_name: identity.system_name.clone(),
        ..EncodeOptions::default()
    };
    println!(
        "CDR callback cost, {count} CDRs a row (always: a tenth), spool in {} ({})",
        base.display(),
        common::machine()
    );
    println!("| CDR | path | median ns | p99 ns |");
    println!("|---|---|---|---|");
    for (kind, cdr) in &cdrs {
        let plain = as_plain_map(cdr);
        let (median, p99) = measure(count, || {
            std::hint::black_box(serde_json::to_vec(&plain).expect("JSON"));
        });
        println!("| {kind} | baseline: serde_json::to_vec of the fields into a new Vec | {median} | {p99} |");
        let (median, p99) = measure(count, || {
            let mut out = Vec::with_capacity(1024);
            record::encode(cdr, &options, &mut out);
            std::hint::black_box(out);
        });
        println!("| {kind} | record::encode alone (the contract's JSON) | {median} | {p99} |");
        for sync in ["never", "interval", "always"] {
            let dir = base.join(format!(
                "cdr_kafka-bench-{kind}-{sync}-{}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            let module = running(&dir, sync);
            // Always-sync waits for the disk: fewer samples keep the run short.
            let samples = if sync == "always" { count / 10 } else { count };
            let (median, p99) = measure(samples, || module.publish(cdr).expect("spooled"));
            println!("| {kind} | the callback, spool_sync = {sync} | {median} | {p99} |");
            if sync == "interval" {
                let pause = Duration::from_millis(5);
                let paced = (count / 20).max(200);
                let (median, p99) = measure_paced(paced, pause, || {});
                println!("| {kind} | baseline: nothing, CPU time after {pause:?} asleep | {median} | {p99} |");
                let (median, p99) =
                    measure_paced(paced, pause, || module.publish(cdr).expect("spooled"));
                println!("| {kind} | the callback, one every {pause:?} (CPU time: a paced PBX's CDR thread) | {median} | {p99} |");
            }
            module.shutdown();
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
