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

use cdr_kafka::asterisk::host::Identity;
use cdr_kafka::config::{self, Entry, HostCapabilities};
use cdr_kafka::module::Running;
use cdr_kafka::record::{Cdr, CdrTime};

fn typical_cdr() -> Cdr<'static> {
    let at = |sec| CdrTime {
        sec,
        usec: 250_000,
        gmtoff: -3 * 3600,
    };
    Cdr {
        clid: b"\"Alice Example\" <+5511999990000>",
        src: b"+5511999990000",
        dst: b"+5521988887777",
        dcontext: b"from-internal",
        channel: b"PJSIP/trunk-provider-0000a1b2",
        dstchannel: b"PJSIP/200-0000a1b3",
        lastapp: b"Dial",
        lastdata: b"PJSIP/200,30,tT",
        start: at(1_768_483_800),
        answer: at(1_768_483_805),
        end: at(1_768_483_935),
        duration: 135,
        billsec: 130,
        disposition: b"ANSWERED",
        amaflags: b"DOCUMENTATION",
        accountcode: b"acct-1001",
        peeraccount: b"acct-2002",
        uniqueid: b"1768483800.1234",
        linkedid: b"1768483800.1234",
        tenantid: Some(b"tenant-a"),
        peertenantid: Some(b"tenant-a"),
        userfield: b"campaign=42",
        sequence: 1234,
        variables: vec![
            (b"customer_id", b"C-000123"),
            (b"route", b"primary"),
            (b"rate_plan", b"gold"),
            (b"queue", b"support"),
            (b"agent", b"agent-17"),
        ],
    }
}

// ConfigError is large, and only ever built once at load: its size does not matter here.
#[allow(clippy::result_large_err)]
fn running(dir: &Path, sync: &str) -> Running {
    let entries: Vec<Entry> = [
        ("brokers", "127.0.0.1:9"),
        ("key", "linkedid"),
        ("spool_sync", sync),
        ("spool_dir", &dir.display().to_string()),
    ]
    .iter()
    .enumerate()
    .map(|(line, (name, value))| Entry {
        section: "global".into(),
        name: (*name).into(),
        value: (*value).to_string(),
        line: line as i32 + 2,
    })
    .collect();
    let settings = config::parse(
        &entries,
        HostCapabilities {
            tenant_fields: true,
        },
        &mut || unreachable!("no connection ="),
    )
    .expect("valid settings");
    let identity = Identity {
        entity_id: "00:11:22:33:44:55".into(),
        system_name: "pbx-01".into(),
        asterisk_version: "22.10.1".into(),
        hostname: "pbx-host".into(),
        tenant_fields: true,
        spool_dir: String::new(),
    };
    Running::start(settings, identity).expect("module starts")
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
    let cdr = typical_cdr();
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
