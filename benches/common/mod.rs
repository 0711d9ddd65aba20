//! What the figure benches share: the machine line every table opens with, counts from
//! the environment (CDR_KAFKA_BENCH_QUICK=1 makes them tiny, for CI), the typical CDR of
//! `callback.rs`, settings built as cdr_kafka.conf would give them, scratch folders, and
//! what /proc says about this process's memory and each thread's CPU.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cdr_kafka::asterisk::host::Identity;
use cdr_kafka::config::{self, Entry, HostCapabilities, Settings};
use cdr_kafka::record::{self, Cdr, CdrTime, EncodeOptions};

/// CDR_KAFKA_BENCH_QUICK=1: every bench runs a tiny count in a few seconds.
pub fn quick() -> bool {
    std::env::var("CDR_KAFKA_BENCH_QUICK").is_ok_and(|v| v == "1")
}

/// Printed under a quick run's table: it proves the bench runs, not what it measures.
pub fn quick_note() {
    if quick() {
        println!();
        println!(
            "CDR_KAFKA_BENCH_QUICK=1: too few records for these figures to mean anything; \
             this run only shows that the bench works."
        );
    }
}

/// A whole number from the environment, else `default` (`quick` with CDR_KAFKA_BENCH_QUICK=1).
pub fn env_number(name: &str, default: u64, quick_default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|n| n.replace('_', "").parse().ok())
        .unwrap_or(if quick() { quick_default } else { default })
}

/// "2 × AMD EPYC, 2026-11-23 18:20 UTC, commit 637db46 (src modified)": where and when.
pub fn machine() -> String {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split(':').nth(1))
        .map_or("unknown CPU", str::trim)
        .to_string();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let date = chrono::DateTime::from_timestamp(now, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default();
    let manifest = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(manifest)
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "?".into());
    let dirty = git(&["status", "--porcelain", "--", "src", "build.rs", "include"])
        .is_some_and(|s| !s.is_empty());
    let overrides = std::env::var("CDR_KAFKA_BENCH_SETTINGS")
        .map(|s| format!("; CDR_KAFKA_BENCH_SETTINGS: {s}"))
        .unwrap_or_default();
    format!(
        "nproc {nproc}, {model}, {date}, commit {commit}{}{overrides}",
        if dirty { " with src modified" } else { "" }
    )
}

/// The typical CDR of `callback.rs`: all fields filled, 5 variables.
pub fn typical_cdr() -> Cdr<'static> {
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

pub fn identity() -> Identity {
    Identity {
        entity_id: "00:11:22:33:44:55".into(),
        system_name: "pbx-01".into(),
        asterisk_version: "22.10.1".into(),
        hostname: "pbx-host".into(),
        tenant_fields: true,
        spool_dir: String::new(),
    }
}

/// Settings as a cdr_kafka.conf `[global]` of `brokers`, `topic`, `spool_dir` and
/// `extra` would give them: every other option at its default, unless
/// CDR_KAFKA_BENCH_SETTINGS (`name=value,name=value`, cdr_kafka.conf's names) says otherwise,
/// to measure another setting the same way.
pub fn settings(brokers: &str, topic: &str, spool_dir: &Path, extra: &[(&str, &str)]) -> Settings {
    settings_with_sections(brokers, topic, spool_dir, extra, &[])
}

/// `settings`, with destination sections: `(section, option, value)` entries.
pub fn settings_with_sections(
    brokers: &str,
    topic: &str,
    spool_dir: &Path,
    extra: &[(&str, &str)],
    sections: &[(&str, &str, &str)],
) -> Settings {
    let spool_dir = spool_dir.display().to_string();
    let from_env = std::env::var("CDR_KAFKA_BENCH_SETTINGS").unwrap_or_default();
    let from_env: Vec<(&str, &str)> = from_env
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(name, value)| (name.trim(), value.trim()))
        .collect();
    let entries: Vec<Entry> = [
        ("brokers", brokers),
        ("topic", topic),
        ("spool_dir", spool_dir.as_str()),
    ]
    .iter()
    .chain(extra)
    .chain(&from_env)
    .enumerate()
    .map(|(line, (name, value))| Entry {
        section: "global".into(),
        name: (*name).into(),
        value: (*value).to_string(),
        line: line as i32 + 2,
    })
    .chain(
        sections
            .iter()
            .enumerate()
            .map(|(line, (section, name, value))| Entry {
                section: (*section).into(),
                name: (*name).into(),
                value: (*value).to_string(),
                line: line as i32 + 100,
            }),
    )
    .collect();
    config::parse(
        &entries,
        HostCapabilities {
            tenant_fields: true,
        },
        &mut || unreachable!("no connection ="),
    )
    .expect("valid settings")
}

/// The JSON the module would produce for `cdr` with `settings`.
pub fn payload(cdr: &Cdr<'_>, settings: &Settings) -> Vec<u8> {
    let identity = identity();
    let options = EncodeOptions {
        loguniqueid: settings.loguniqueid,
        loguserfield: settings.loguserfield,
        usegmtime: settings.usegmtime,
        entity_id: identity.entity_id,
        system_name: identity.system_name,
    };
    let mut out = Vec::new();
    record::encode(cdr, &options, &mut out);
    out
}

/// The contract's six headers as the module sets them (`record_id` varies per record).
pub fn headers(record_id: &str) -> Vec<(&'static str, String)> {
    let identity = identity();
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    vec![
        ("entity_id", identity.entity_id),
        ("system_name", identity.system_name),
        ("asterisk_version", identity.asterisk_version),
        ("timestamp", timestamp.to_string()),
        ("hostname", identity.hostname),
        ("record_id", record_id.to_string()),
    ]
}

/// A folder in the system's temp dir (CDR_KAFKA_BENCH_DIR to measure another disk),
/// removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let base = std::env::var_os("CDR_KAFKA_BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let path = base.join(format!(
            "cdr_kafka-bench-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        Self(path)
    }

    /// Bytes of the files in the folder (not recursive): what the spool holds on disk.
    pub fn bytes(&self) -> u64 {
        fs::read_dir(&self.0)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|entry| entry.metadata().ok())
                    .filter(|meta| meta.is_file())
                    .map(|meta| meta.len())
                    .sum()
            })
            .unwrap_or(0)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A field of /proc/self/status in kB (VmRSS, VmHWM, RssAnon, ...).
pub fn status_kb(field: &str) -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with(field) && line[field.len()..].starts_with(':'))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kb| kb.parse().ok())
        .unwrap_or(0)
}

/// CPU time of each live thread of process `pid` ("self" for this one), summed by thread
/// name: utime + stime from `task/*/stat` in clock ticks turned into ns, and the
/// scheduler's exact run time from `task/*/schedstat`, in ns.
pub fn thread_cpu(pid: &str) -> BTreeMap<String, ThreadCpu> {
    let mut by_name: BTreeMap<String, ThreadCpu> = BTreeMap::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_name;
    };
    let process = match pid {
        "self" => std::process::id().to_string(),
        pid => pid.to_string(),
    };
    for task in tasks.filter_map(Result::ok) {
        let Some(cpu) = task_cpu(&task.path()) else {
            continue;
        };
        // The main thread is named after the program: call it what it is.
        let name = if task.file_name().to_string_lossy() == process {
            "main".to_string()
        } else {
            fs::read_to_string(task.path().join("comm"))
                .map(|n| n.trim().to_string())
                .unwrap_or_default()
        };
        let entry = by_name.entry(thread_group(&name)).or_default();
        entry.ticks_ns += cpu.ticks_ns;
        entry.run_ns += cpu.run_ns;
        entry.threads += 1;
    }
    by_name
}

/// CPU time of one task folder (/proc/PID/task/TID).
pub fn task_cpu(task: &Path) -> Option<ThreadCpu> {
    let stat = fs::read_to_string(task.join("stat")).ok()?;
    // The name in parentheses may hold spaces: count fields after the last ')'.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of proc(5), utime and stime: 11 and 12 after the state field.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let run_ns = fs::read_to_string(task.join("schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0);
    Some(ThreadCpu {
        ticks_ns: ticks * 1_000_000_000 / clock_ticks(),
        run_ns,
        threads: 1,
    })
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// Threads of one kind share a line: rdk:broker1 and rdk:broker2 are both `rdk:broker*`.
fn thread_group(name: &str) -> String {
    let trimmed = name.trim_end_matches(|c: char| c.is_ascii_digit());
    if trimmed.len() < name.len() {
        format!("{trimmed}*")
    } else {
        name.to_string()
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct ThreadCpu {
    /// utime + stime (clock ticks, 10 ms each), in ns.
    pub ticks_ns: u64,
    /// Time on a CPU as the scheduler counts it (exact), in ns.
    pub run_ns: u64,
    pub threads: u32,
}

/// `after - before` per thread group, largest first, as "name 12.3 µs" parts per record.
pub fn cpu_per_record(
    before: &BTreeMap<String, ThreadCpu>,
    after: &BTreeMap<String, ThreadCpu>,
    records: u64,
) -> Vec<(String, f64)> {
    let mut rows: Vec<(String, f64)> = after
        .iter()
        .map(|(name, cpu)| {
            let was = before.get(name).map_or(0, |c| c.run_ns);
            let ns = cpu.run_ns.saturating_sub(was);
            (name.clone(), ns as f64 / 1000.0 / records.max(1) as f64)
        })
        .filter(|(_, us)| *us >= 0.05)
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    rows
}

/// "feed 2.1, poll 1.3, ..." in µs per record.
pub fn format_cpu(rows: &[(String, f64)]) -> String {
    let total: f64 = rows.iter().map(|(_, us)| us).sum();
    let parts: Vec<String> = rows
        .iter()
        .map(|(name, us)| format!("{name} {us:.1}"))
        .collect();
    format!("{total:.1} = {}", parts.join(" + "))
}

/// The value at fraction `p` of sorted values (nearest rank).
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> T {
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        return f64::NAN;
    }
    let mid = values.len() / 2;
    if values.len() % 2 == 0 {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// Polls `condition` every `every` until it holds or `timeout` passed; whether it held.
pub fn wait_until(timeout: Duration, every: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// "1,234,567"
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
