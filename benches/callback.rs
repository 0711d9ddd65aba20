//! What the CDR callback costs on Asterisk's CDR thread with the spool on, per
//! `spool_sync` policy: encode + record id + headers + one spool append, for a typical
//! CDR (all fields filled, 5 variables). Prints median and p99 in nanoseconds.
//!
//! `cargo bench --bench callback` (or `make bench`). The spool lives in a folder of the
//! system's temp dir (pass another with CDR_KAFKA_BENCH_DIR to measure that disk); the
//! broker address is unreachable, so the records stay in the spool and only the
//! callback's own work is measured.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cdr_kafka::module::Running;

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

fn percentile(sorted: &[Duration], p: f64) -> u128 {
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index].as_nanos()
}

fn main() {
    let count: usize = std::env::var("CDR_KAFKA_BENCH_COUNT")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let base = std::env::var_os("CDR_KAFKA_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let cdr = common::typical_cdr();
    println!(
        "CDR callback cost with the spool on ({count} typical CDRs each, spool in {})",
        base.display()
    );
    println!("| spool_sync | median ns | p99 ns |");
    println!("|---|---|---|");
    for sync in ["never", "interval", "always"] {
        let dir = base.join(format!("cdr_kafka-bench-{sync}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let module = running(&dir, sync);
        // Always-sync waits for the disk: fewer samples keep the run short.
        let samples = if sync == "always" { count / 10 } else { count };
        for _ in 0..samples / 10 {
            module.publish(&cdr).expect("spooled");
        }
        let mut times = Vec::with_capacity(samples);
        for _ in 0..samples {
            let started = Instant::now();
            module.publish(&cdr).expect("spooled");
            times.push(started.elapsed());
        }
        times.sort_unstable();
        println!(
            "| {sync} | {} | {} |",
            percentile(&times, 0.5),
            percentile(&times, 0.99)
        );
        module.shutdown();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
