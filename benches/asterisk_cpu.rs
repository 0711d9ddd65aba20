//! The figure an operator cares about: Asterisk CPU time per CDR with cdr_kafka loaded
//! minus without it, on floods of CDRs in real Asterisk 22 (the Debian unstable root of the
//! end-to-end tests), the broker up (tansu on 127.0.0.1), spool on (spool_sync = interval,
//! the default).
//!
//! Counted: the CPU of Asterisk's live threads, utime + stime of /proc/PID/task/*/stat (and
//! the scheduler's exact run time from task/*/schedstat as a cross-check), per thread, read
//! before and after each flood: a thread's growth counts when it is alive at the end. The
//! short-lived channel threads of the flood end before the second reading, so the bare
//! call's own cost (which makes the whole-process figure swing from flood to flood) drops
//! out, while the CDR thread and the module's own threads (feeder, poll, librdkafka), all
//! long-lived, are counted whole. The whole-process figure (/proc/PID/stat, ended threads
//! included) is shown beside it.
//!
//! Rounds alternate with and without the module (`module unload` / `module load` between
//! them, the order flipped every round so drift cancels); each flood is followed by a wait
//! until Asterisk's threads are idle again (read from /proc, no CLI command in the window),
//! and only then, outside the window, the module's counters are checked: every CDR received
//! and delivered. The medians of the rounds and their difference are the figures.
//!
//! `flock /var/tmp/cdrk/root.lock cargo bench --bench asterisk_cpu` (one Asterisk per root);
//! needs CDR_KAFKA_ROOT, CDR_KAFKA_MODULE and CDR_KAFKA_TANSU like the end-to-end tests.
//! CDR_KAFKA_BENCH_CDRS (default 20,000) per flood, CDR_KAFKA_BENCH_ROUNDS (default 10) of each;
//! CDR_KAFKA_BENCH_QUICK=1: one round of 300.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::collections::HashMap;
use std::fs;
use std::time::{Duration, Instant};

use support::{cdr_kafka_conf, one_asterisk, Asterisk, Root, Tansu};

const TOPIC: &str = "asterisk_cpu";
/// For scale: what VSGroup's cdr_kafka + res_kafka add, measured the same way here.
const C_MODULE_US: &str = "90–140";
const TARGET_US: f64 = 15.0;
/// Idle means the live threads used less than this in each of `QUIET_SAMPLES` periods.
const QUIET_PERIOD: Duration = Duration::from_millis(200);
const QUIET_NS: u64 = 5_000_000;
const QUIET_SAMPLES: usize = 2;
/// Threads of the module (the feeder, the poll thread and librdkafka's).
const MODULE_THREADS: [&str; 2] = ["cdr_kafka-", "rdk:"];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Without,
    With,
}

/// CPU of one Asterisk at one moment.
struct Snapshot {
    /// Per live thread: (name, utime + stime in ns, schedstat run time in ns).
    threads: HashMap<u32, (String, u64, u64)>,
    /// utime + stime of the whole process, ended threads included, in ns.
    process_ns: u64,
}

fn snapshot(pid: u32) -> Snapshot {
    let mut threads = HashMap::new();
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.filter_map(Result::ok) {
            let Ok(tid) = task.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Some(cpu) = common::task_cpu(&task.path()) else {
                continue;
            };
            let name = fs::read_to_string(task.path().join("comm"))
                .map(|n| n.trim().to_string())
                .unwrap_or_default();
            threads.insert(tid, (name, cpu.ticks_ns, cpu.run_ns));
        }
    }
    // The process's own stat sums every thread, ended ones included.
    let process_ns = common::task_cpu(std::path::Path::new(&format!("/proc/{pid}")))
        .map_or(0, |cpu| cpu.ticks_ns);
    Snapshot {
        threads,
        process_ns,
    }
}

/// What the live threads at `after` used since `before`.
struct Used {
    ticks_ns: u64,
    run_ns: u64,
    module_run_ns: u64,
    process_ns: u64,
    /// Run time of each of Asterisk's own threads alive at both readings.
    asterisk_threads: HashMap<u32, u64>,
}

fn used(before: &Snapshot, after: &Snapshot) -> Used {
    let mut u = Used {
        ticks_ns: 0,
        run_ns: 0,
        module_run_ns: 0,
        process_ns: after.process_ns.saturating_sub(before.process_ns),
        asterisk_threads: HashMap::new(),
    };
    for (tid, (name, ticks, run)) in &after.threads {
        let (was_ticks, was_run) = before.threads.get(tid).map_or((0, 0), |(_, t, r)| (*t, *r));
        u.ticks_ns += ticks.saturating_sub(was_ticks);
        let run = run.saturating_sub(was_run);
        u.run_ns += run;
        if MODULE_THREADS.iter().any(|prefix| name.starts_with(prefix)) {
            u.module_run_ns += run;
        } else if before.threads.contains_key(tid) {
            u.asterisk_threads.insert(*tid, run);
        }
    }
    u
}

fn live_run_ns(pid: u32) -> u64 {
    snapshot(pid).threads.values().map(|(_, _, run)| run).sum()
}

/// Waits until Asterisk's live threads are idle: less than `QUIET_NS` in each of
/// `QUIET_SAMPLES` periods in a row. Reads /proc only.
fn wait_until_idle(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = live_run_ns(pid);
    let mut quiet = 0;
    while quiet < QUIET_SAMPLES && Instant::now() < deadline {
        std::thread::sleep(QUIET_PERIOD);
        let now = live_run_ns(pid);
        quiet = if now.saturating_sub(last) < QUIET_NS {
            quiet + 1
        } else {
            0
        };
        last = now;
    }
}

/// A row of the summary: its label and the field of a flood it shows.
type Figure = (&'static str, fn(&Flood) -> f64);

/// One flood measured.
struct Flood {
    mode: Mode,
    ticks_us: f64,
    run_us: f64,
    module_us: f64,
    process_us: f64,
    seconds: f64,
    /// µs/CDR of each of Asterisk's long-lived threads.
    threads_us: HashMap<u32, f64>,
}

fn set_mode(asterisk: &Asterisk<'_>, mode: Mode) {
    let (command, done) = match mode {
        Mode::With => ("module load cdr_kafka.so", "Loaded"),
        Mode::Without => ("module unload cdr_kafka.so", "Unloaded"),
    };
    let out = asterisk.rx(command);
    assert!(
        out.contains(done),
        "`{command}` said: {out}\n{}",
        asterisk.log()
    );
}

/// `cdrs` CDRs measured; with the module, `counted` is what its counters should reach (they
/// start at 0 at each load).
fn flood(asterisk: &Asterisk<'_>, mode: Mode, cdrs: usize, counted: usize) -> Flood {
    let pid = asterisk.pid();
    wait_until_idle(pid);
    let before = snapshot(pid);
    let started = Instant::now();
    asterisk.flood(cdrs);
    let seconds = started.elapsed().as_secs_f64();
    wait_until_idle(pid);
    let after = snapshot(pid);
    if mode == Mode::With {
        // Outside the window: every CDR reached the module and the broker.
        let wait = Duration::from_secs(60);
        let received = asterisk.wait_for_counter("Received", counted, wait);
        let delivered = asterisk.wait_for_counter("Delivered", counted, wait);
        assert_eq!(
            received, counted,
            "CDRs received by the module since its load"
        );
        assert_eq!(delivered, counted, "CDRs delivered since the load");
    }
    let u = used(&before, &after);
    let per = |ns: u64| ns as f64 / 1000.0 / cdrs as f64;
    Flood {
        mode,
        ticks_us: per(u.ticks_ns),
        run_us: per(u.run_ns),
        module_us: per(u.module_run_ns),
        process_us: per(u.process_ns),
        seconds,
        threads_us: u
            .asterisk_threads
            .iter()
            .map(|(tid, ns)| (*tid, per(*ns)))
            .collect(),
    }
}

/// CPU of Asterisk's live threads over `period` of idling, ms per second: in all, and by
/// thread name ("asterisk" for Asterisk's own) when more than 0.05.
fn idle_ms_per_s(pid: u32, period: Duration) -> (f64, String) {
    let before = snapshot(pid);
    std::thread::sleep(period);
    let after = snapshot(pid);
    let mut by_name: std::collections::BTreeMap<String, f64> = Default::default();
    for (tid, (name, _, run)) in &after.threads {
        let was = before.threads.get(tid).map_or(0, |(_, _, r)| *r);
        let ms = run.saturating_sub(was) as f64 / 1e6 / period.as_secs_f64();
        let name = name.trim_end_matches(|c: char| c.is_ascii_digit());
        *by_name.entry(name.to_string()).or_default() += ms;
    }
    let total = by_name.values().sum();
    let parts: Vec<String> = by_name
        .iter()
        .filter(|(_, ms)| **ms >= 0.05)
        .map(|(name, ms)| format!("{name} {ms:.2}"))
        .collect();
    (total, parts.join(", "))
}

fn main() {
    let cdrs = common::env_number("CDR_KAFKA_BENCH_CDRS", 20_000, 300) as usize;
    let rounds = common::env_number("CDR_KAFKA_BENCH_ROUNDS", 10, 1) as usize;
    let root = Root::from_env();
    let tansu = Tansu::start();
    tansu.create_topic(TOPIC);
    let _one = one_asterisk();
    let conf = cdr_kafka_conf(&tansu.brokers(), TOPIC, "");
    let asterisk = Asterisk::start(&root, &conf, "UTC");
    let pid = asterisk.pid();
    let version = asterisk.rx("core show version");
    println!(
        "Asterisk CPU per CDR, cdr_kafka loaded minus not loaded: {rounds} round(s) of each, \
         {} CDRs per flood (unanswered Local-channel calls, `Asterisk::flood`), broker up \
         (tansu on 127.0.0.1), spool_sync = interval; {} ({})",
        common::thousands(cdrs as u64),
        version.lines().next().unwrap_or("Asterisk").trim(),
        common::machine()
    );
    println!();
    println!(
        "| round | module | CDRs | flood s | **live threads µs/CDR** (utime+stime) | live threads µs/CDR (schedstat) | of which the module's own threads | whole process µs/CDR (ended threads too) |"
    );
    println!("|---|---|---|---|---|---|---|---|");

    // Warm-up, not counted: Asterisk's first flood allocates what the later ones reuse.
    let warmup = (cdrs / 10).max(100);
    asterisk.flood(warmup);
    set_mode(&asterisk, Mode::With);
    asterisk.flood(warmup);
    asterisk.wait_for_counter("Delivered", warmup, Duration::from_secs(60));
    set_mode(&asterisk, Mode::Without);

    let mut floods = Vec::new();
    let mut loaded = false;
    let mut since_load = 0;
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [Mode::Without, Mode::With]
        } else {
            [Mode::With, Mode::Without]
        };
        for mode in order {
            let want = mode == Mode::With;
            if want != loaded {
                set_mode(&asterisk, mode);
                loaded = want;
                since_load = 0;
            }
            if loaded {
                since_load += cdrs;
            }
            let f = flood(&asterisk, mode, cdrs, since_load);
            println!(
                "| {} | {} | {} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} |",
                round + 1,
                if f.mode == Mode::With { "loaded" } else { "-" },
                common::thousands(cdrs as u64),
                f.seconds,
                f.ticks_us,
                f.run_us,
                f.module_us,
                f.process_us
            );
            floods.push(f);
        }
    }

    // Idle cost: the module loaded, then not, each over the same period.
    let idle_period = Duration::from_millis(if common::quick() { 500 } else { 5000 });
    if !loaded {
        set_mode(&asterisk, Mode::With);
    }
    wait_until_idle(pid);
    let (idle_with, idle_with_threads) = idle_ms_per_s(pid, idle_period);
    set_mode(&asterisk, Mode::Without);
    wait_until_idle(pid);
    let (idle_without, _) = idle_ms_per_s(pid, idle_period);

    let medians = |mode: Mode, field: fn(&Flood) -> f64| {
        let mut values: Vec<f64> = floods
            .iter()
            .filter(|f| f.mode == mode)
            .map(field)
            .collect();
        common::median(&mut values)
    };
    println!();
    println!("| median of {rounds} round(s) | without | with | **added by cdr_kafka** |");
    println!("|---|---|---|---|");
    let figures: [Figure; 4] = [
        ("live threads, utime+stime, µs/CDR", |f| f.ticks_us),
        ("live threads, schedstat, µs/CDR", |f| f.run_us),
        ("the module's own threads, µs/CDR", |f| f.module_us),
        ("whole process, µs/CDR", |f| f.process_us),
    ];
    let mut added = f64::NAN;
    for (i, (label, field)) in figures.iter().enumerate() {
        let (without, with) = (medians(Mode::Without, *field), medians(Mode::With, *field));
        if i == 0 {
            added = with - without;
        }
        println!(
            "| {label} | {without:.1} | {with:.1} | **{:.1}** |",
            with - without
        );
    }
    // Each round's two floods ran back to back: their difference drifts less.
    let mut paired: Vec<f64> = floods
        .chunks(2)
        .map(|pair| {
            let (with, without) = if pair[0].mode == Mode::With {
                (&pair[0], &pair[1])
            } else {
                (&pair[1], &pair[0])
            };
            with.ticks_us - without.ticks_us
        })
        .collect();
    let paired_median = common::median(&mut paired);
    println!(
        "| per-round difference, live threads, utime+stime, µs/CDR (min / median / max) | | | {:.1} / **{paired_median:.1}** / {:.1} |",
        paired.first().copied().unwrap_or(f64::NAN),
        paired.last().copied().unwrap_or(f64::NAN)
    );
    // Asterisk's threads live through module loads: the one whose CPU grows most with
    // the module is the thread that runs the CDR backends, our callback among them.
    let mut tids: Vec<u32> = floods
        .iter()
        .flat_map(|f| f.threads_us.keys().copied())
        .collect();
    tids.sort_unstable();
    tids.dedup();
    let thread_median = |tid: u32, mode: Mode| {
        let mut values: Vec<f64> = floods
            .iter()
            .filter(|f| f.mode == mode)
            .map(|f| f.threads_us.get(&tid).copied().unwrap_or(0.0))
            .collect();
        common::median(&mut values)
    };
    let grown = tids
        .iter()
        .map(|&tid| {
            let (without, with) = (
                thread_median(tid, Mode::Without),
                thread_median(tid, Mode::With),
            );
            (tid, without, with)
        })
        .max_by(|a, b| (a.2 - a.1).total_cmp(&(b.2 - b.1)));
    if let Some((tid, without, with)) = grown {
        println!(
            "| the Asterisk thread that grows most (TID {tid}: the CDR thread, our callback's), µs/CDR | {without:.1} | {with:.1} | {:.1} |",
            with - without
        );
    }
    println!(
        "| idle, live threads, ms CPU per s | {idle_without:.2} | {idle_with:.2} | {:.2} |",
        idle_with - idle_without
    );
    println!();
    println!("Idle with the module, ms CPU per s by thread: {idle_with_threads}.");
    println!(
        "Target ≤ {TARGET_US} µs/CDR with the spool on: {} ({added:.1} µs/CDR). For scale, \
         the C module (VSGroup cdr_kafka + res_kafka) adds about {C_MODULE_US} µs/CDR.",
        if added <= TARGET_US { "met" } else { "missed" }
    );
    common::quick_note();
    drop(asterisk);
    tansu.stop();
}
