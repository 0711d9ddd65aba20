//! The figure an operator cares about: Asterisk CPU time per CDR with cdr_kafka loaded
//! minus without it, on real calls in real Asterisk 22 (the Debian unstable root of the
//! end-to-end tests), the broker up (tansu on 127.0.0.1), spool on (spool_sync = interval,
//! the default).
//!
//! The load: answered calls, each a Local channel originated into `call500@cdrk` (the
//! harness's dialplan: Answer, Wait 0.5 s, Hangup), its first half waiting in Wait() until
//! the second hangs up; each call posts its own 2 CDRs, one per half (no ForkCDR), which
//! the module's `Received` counter confirms before the rounds and after each of them. The
//! calls are placed through one AMI session (`support::Manager`). Measured before this
//! bench was written, on 2 shared cores: `asterisk -rx` runs a process per command and
//! placed 50 calls in 0.84 s (60 calls/s); one `asterisk -r` console fed through its stdin
//! had 1,000 calls of 500 ms placed and hung up in 1.3 s, one AMI session in 1.4 s; the
//! session is kept because it says whether each originate was accepted, which the
//! console does not. Two patterns, each its own table:
//! (a) as fast as Asterisk takes the originates, one after the other, and (b) paced at
//! 100 calls/s (200 CDRs/s), the rate a busy PBX sees; 2,000 calls per round in both.
//! Two more place the calls from the dialplan itself, as operators' load generators do:
//! (c) one call whose `While` loop runs `Originate(Local/flood@…,app,Hangup)` back to
//! back (Answer + Hangup calls, 2 CDRs each), and (d) the same loop waiting 10 ms between
//! calls. There the calls' setup runs on the loop call's thread, which lives the whole
//! round and is counted, so the per-thread tables of (a) and (c) show where they differ.
//! Each round prints the rate it had: calls/s placed (originates Asterisk accepted; it sets
//! each call up on a thread of its own, so in (a) this runs ahead of the calls) and CDRs/s
//! (the round's CDRs over the time from the first originate to the last hangup, one
//! call's length taken off: the rate the CDR backends saw).
//!
//! Counted: the CPU of Asterisk's live threads, utime + stime of /proc/PID/task/*/stat (and
//! the scheduler's exact run time from task/*/schedstat as a cross-check), per thread, read
//! before the first call of a round and again once Asterisk is idle after the last hangup:
//! a thread's growth counts when it is alive at the end. The calls' own channel threads
//! end before the second reading, so the bare call's cost (which makes the whole-process
//! figure swing from round to round) drops out, while the CDR thread, the AMI session's
//! thread and the module's own threads (feeder, poll, librdkafka), all long-lived, are
//! counted whole, idle time between paced calls included. The whole-process figure
//! (/proc/PID/stat, ended threads included) is shown beside it, and the module's threads
//! one by one, per 1,000 CDRs.
//!
//! Rounds alternate with and without the module (`module unload` / `module load` between
//! them, the order flipped every round so drift cancels); a round ends with a wait until
//! no channel is up (asked through the session, the same in both modes) and Asterisk's
//! threads are idle again (read from /proc), and only then, outside the window, the
//! module's counters are checked: every CDR received, exactly, and delivered. The figure
//! is the median over the rounds of (with − without) / CDRs, beside the median without
//! (the baseline) of the same run. Last, the idle cost: the module's threads and the whole
//! Asterisk over 10 s without calls, with and without the module.
//!
//! `flock /var/tmp/cdrk/root.lock cargo bench --bench asterisk_cpu` (one Asterisk per root);
//! needs CDR_KAFKA_ROOT, CDR_KAFKA_MODULE and CDR_KAFKA_TANSU like the end-to-end tests.
//! CDR_KAFKA_BENCH_CALLS (default 2,000) per round, CDR_KAFKA_BENCH_ROUNDS (default 5) of
//! each mode and pattern; CDR_KAFKA_BENCH_QUICK=1: one round of 200 calls, 2 s of idle;
//! CDR_KAFKA_BENCH_DESTINATIONS=3: two more destinations (a filtered Kafka topic on the
//! same producer, a file of envelopes). CDR_KAFKA_BENCH_PATTERNS=bd: only those patterns.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::time::{Duration, Instant};

use support::{cdr_kafka_conf, one_asterisk, Asterisk, Manager, Root, Tansu, CDRS_PER_CALL};

const TOPIC: &str = "asterisk_cpu";
const COPY_TOPIC: &str = "asterisk_cpu_copy";
/// The destinations besides [global] of CDR_KAFKA_BENCH_DESTINATIONS=3.
const THREE_DESTINATIONS: &str = "
[copy]
type = kafka
topic = asterisk_cpu_copy
filter = dcontext != internal

[archive]
type = file
path = /var/log/asterisk/cdrk-bench/cdr.jsonl
rotate = S100m
format = envelope
";
/// What the module may add per CDR, and per second when idle (the module's own threads).
const TARGET_US: f64 = 10.0;
const TARGET_IDLE_MS: f64 = 1.0;
/// How long each call lasts once answered (the `call<ms>@cdrk` extension).
const CALL_MS: u64 = 500;
/// Pattern (b): a busy PBX's rate.
const PACED_CALLS_PER_S: u64 = 100;
/// Idle means the live threads used less than this in each of `QUIET_SAMPLES` periods.
const QUIET_PERIOD: Duration = Duration::from_millis(200);
const QUIET_NS: u64 = 5_000_000;
const QUIET_SAMPLES: usize = 2;
/// Threads of the module (the feeders and librdkafka's).
const MODULE_THREADS: [&str; 2] = ["cdr_kafka-", "rdk:"];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Without,
    With,
}

/// How the calls of a round are placed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Pattern {
    /// Each originate as soon as Asterisk accepted the previous one.
    AsFastAsOriginate,
    /// One call every 1/N s.
    Paced(u64),
    /// Calls the dialplan places itself, one after the other (`Originate` of Answer +
    /// Hangup calls in a `While` loop), with this pause between them (0: none).
    Dialplan(u64),
}

/// The dialplan's own call generator: the `loop` call runs `CALLS` Answer+Hangup calls,
/// `PAUSE` seconds apart; each posts 2 CDRs, the loop call itself 2 more.
const LOOP_DIALPLAN: &str = "
[cdrk-bench-loop]
exten => loop,1,Set(I=0)
 same => n,While($[${I} < ${CALLS}])
 same => n,Originate(Local/flood@cdrk-bench-loop,app,Hangup)
 same => n,ExecIf($[${PAUSE} > 0]?Wait(${PAUSE}))
 same => n,Set(I=$[${I} + 1])
 same => n,EndWhile()
 same => n,Hangup()
exten => flood,1,Answer()
 same => n,Hangup()
";
/// The CDRs of the loop call itself.
const LOOP_CALL_CDRS: usize = 2;

impl Pattern {
    fn describe(self) -> String {
        match self {
            Pattern::AsFastAsOriginate => {
                "(a) as fast as Asterisk takes the originates, one after the other".into()
            }
            Pattern::Paced(per_s) => format!(
                "(b) paced at {per_s} calls/s ({} CDRs/s)",
                per_s * CDRS_PER_CALL as u64
            ),
            Pattern::Dialplan(0) => "(c) placed by the dialplan itself, back to back \
                 (Originate of Answer+Hangup calls in a While loop)"
                .into(),
            Pattern::Dialplan(per_s) => format!(
                "(d) placed by the dialplan itself at about {per_s} calls/s (the loop waits \
                 1/{per_s} s between calls)"
            ),
        }
    }

    /// The CDRs a round of `calls` calls posts.
    fn cdrs(self, calls: usize) -> usize {
        calls * CDRS_PER_CALL
            + match self {
                Pattern::Dialplan(_) => LOOP_CALL_CDRS,
                _ => 0,
            }
    }

    /// How long each call lasts once answered.
    fn call_ms(self) -> u64 {
        match self {
            Pattern::Dialplan(_) => 0,
            _ => CALL_MS,
        }
    }
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

fn is_module_thread(name: &str) -> bool {
    MODULE_THREADS.iter().any(|prefix| name.starts_with(prefix))
}

/// Threads of one kind share a line: rdk:broker1 and rdk:broker2 are both `rdk:broker*`.
fn thread_kind(name: &str) -> String {
    let trimmed = name.trim_end_matches(|c: char| c.is_ascii_digit());
    if trimmed.len() < name.len() {
        format!("{trimmed}*")
    } else {
        name.to_string()
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
    /// Run time of the module's threads, by kind.
    module_threads: BTreeMap<String, u64>,
}

fn used(before: &Snapshot, after: &Snapshot) -> Used {
    let mut u = Used {
        ticks_ns: 0,
        run_ns: 0,
        module_run_ns: 0,
        process_ns: after.process_ns.saturating_sub(before.process_ns),
        asterisk_threads: HashMap::new(),
        module_threads: BTreeMap::new(),
    };
    for (tid, (name, ticks, run)) in &after.threads {
        let (was_ticks, was_run) = before.threads.get(tid).map_or((0, 0), |(_, t, r)| (*t, *r));
        u.ticks_ns += ticks.saturating_sub(was_ticks);
        let run = run.saturating_sub(was_run);
        u.run_ns += run;
        if is_module_thread(name) {
            u.module_run_ns += run;
            *u.module_threads.entry(thread_kind(name)).or_default() += run;
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

/// Places `calls` calls in `pattern`; returns the seconds it took to place them (the
/// dialplan's loop: to start it).
fn place_calls(manager: &mut Manager, pattern: Pattern, calls: usize) -> f64 {
    let started = Instant::now();
    if let Pattern::Dialplan(per_s) = pattern {
        let pause = if per_s == 0 {
            "0".to_string()
        } else {
            format!("{:.4}", 1.0 / per_s as f64)
        };
        let response = manager.action(
            "Originate",
            &[
                ("Channel", "Local/loop@cdrk-bench-loop"),
                ("Application", "Wait"),
                ("Data", "3600"),
                ("Async", "true"),
                ("Variable", &format!("__CALLS={calls}")),
                ("Variable", &format!("__PAUSE={pause}")),
            ],
        );
        assert!(
            response.iter().any(|line| line == "Response: Success"),
            "originate refused: {response:?}"
        );
        return started.elapsed().as_secs_f64();
    }
    for i in 0..calls {
        if let Pattern::Paced(per_s) = pattern {
            let due = started + Duration::from_secs_f64(i as f64 / per_s as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        manager.call(CALL_MS);
    }
    started.elapsed().as_secs_f64()
}

/// Asterisk's count of calls it has processed (`core show channels count`).
fn calls_processed(manager: &mut Manager) -> u64 {
    manager
        .command("core show channels count")
        .lines()
        .find(|line| line.contains("calls processed"))
        .and_then(|line| line.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// One round measured: one mode, one pattern.
struct Round {
    mode: Mode,
    pattern: Pattern,
    ticks_us: f64,
    run_us: f64,
    module_us: f64,
    process_us: f64,
    /// Seconds to place the calls, and from the first call to no channel up.
    placing_s: f64,
    to_last_hangup_s: f64,
    /// µs/CDR of each of Asterisk's long-lived threads.
    threads_us: HashMap<u32, f64>,
    /// µs/CDR of the module's threads, by kind.
    module_threads_us: BTreeMap<String, f64>,
}

impl Round {
    fn calls_per_s(&self, calls: usize) -> f64 {
        match self.pattern {
            // The loop places them over the whole round.
            Pattern::Dialplan(_) => calls as f64 / self.to_last_hangup_s,
            _ => calls as f64 / self.placing_s,
        }
    }

    /// CDRs over the time the calls were being set up and torn down (the last call's own
    /// length taken off).
    fn cdrs_per_s(&self, calls: usize) -> f64 {
        let busy = self.to_last_hangup_s - self.pattern.call_ms() as f64 / 1000.0;
        self.pattern.cdrs(calls) as f64 / busy.max(0.001)
    }
}

/// What a round runs on.
struct Bench<'a, 'r> {
    asterisk: &'a Asterisk<'r>,
    manager: Manager,
    calls: usize,
    loaded: bool,
    /// CDRs the module should have counted since it was last loaded.
    since_load: usize,
    /// Destinations each CDR is delivered to.
    destinations: usize,
}

impl Bench<'_, '_> {
    fn switch(&mut self, mode: Mode) {
        let want = mode == Mode::With;
        if want != self.loaded {
            set_mode(self.asterisk, mode);
            self.loaded = want;
            self.since_load = 0;
        }
    }

    /// `calls` calls in `pattern`, measured from before the first to idle after the last.
    fn round(&mut self, mode: Mode, pattern: Pattern) -> Round {
        self.switch(mode);
        let pid = self.asterisk.pid();
        let cdrs = pattern.cdrs(self.calls);
        wait_until_idle(pid);
        let before = snapshot(pid);
        let started = Instant::now();
        let processed = calls_processed(&mut self.manager);
        let placing_s = place_calls(&mut self.manager, pattern, self.calls);
        let bound = Duration::from_secs(60 + self.calls as u64 / 100);
        if let Pattern::Dialplan(_) = pattern {
            // The loop call and each call it placed are counted once they have run.
            let want = processed + self.calls as u64 + 1;
            let deadline = Instant::now() + bound;
            while calls_processed(&mut self.manager) < want && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        self.manager.wait_for_no_channels(bound);
        let to_last_hangup_s = started.elapsed().as_secs_f64();
        wait_until_idle(pid);
        let after = snapshot(pid);
        if self.loaded {
            self.since_load += cdrs;
            self.check_counters();
        }
        let u = used(&before, &after);
        let per = |ns: u64| ns as f64 / 1000.0 / cdrs as f64;
        Round {
            mode,
            pattern,
            ticks_us: per(u.ticks_ns),
            run_us: per(u.run_ns),
            module_us: per(u.module_run_ns),
            process_us: per(u.process_ns),
            placing_s,
            to_last_hangup_s,
            threads_us: u
                .asterisk_threads
                .iter()
                .map(|(t, ns)| (*t, per(*ns)))
                .collect(),
            module_threads_us: u
                .module_threads
                .iter()
                .map(|(k, ns)| (k.clone(), per(*ns)))
                .collect(),
        }
    }

    /// Outside the window: the module received exactly the CDRs the calls posted, and
    /// the broker has them all.
    fn check_counters(&self) {
        let wait = Duration::from_secs(60);
        let want = self.since_load;
        let received = self.asterisk.wait_for_counter("Received", want, wait);
        let deliveries = want * self.destinations;
        let delivered = self
            .asterisk
            .wait_for_counter("Delivered", deliveries, wait);
        assert_eq!(
            received, want,
            "CDRs received since the load: {CDRS_PER_CALL} per call"
        );
        assert_eq!(
            delivered, deliveries,
            "CDRs delivered since the load, to each destination"
        );
    }

    /// Before any round: warms both modes up (not counted) and checks, with the module,
    /// that one call posts `CDRS_PER_CALL` CDRs. Returns what the counter said per call.
    fn warm_up_and_count(&mut self) -> f64 {
        let warmup = (self.calls / 10).max(100);
        for mode in [Mode::Without, Mode::With] {
            self.switch(mode);
            place_calls(&mut self.manager, Pattern::AsFastAsOriginate, warmup);
            self.manager.wait_for_no_channels(Duration::from_secs(60));
            if self.loaded {
                self.since_load += warmup * CDRS_PER_CALL;
            }
        }
        wait_until_idle(self.asterisk.pid());
        let was = self.asterisk.counter("Received");
        let probe = 10;
        place_calls(&mut self.manager, Pattern::AsFastAsOriginate, probe);
        self.manager.wait_for_no_channels(Duration::from_secs(60));
        self.since_load += probe * CDRS_PER_CALL;
        wait_until_idle(self.asterisk.pid());
        self.check_counters();
        (self.asterisk.counter("Received") - was) as f64 / probe as f64
    }
}

fn median_of(rounds: &[Round], mode: Mode, field: impl Fn(&Round) -> f64) -> f64 {
    let mut values: Vec<f64> = rounds
        .iter()
        .filter(|r| r.mode == mode)
        .map(field)
        .collect();
    common::median(&mut values)
}

/// (with, without) of each round: they ran back to back.
fn pairs(rounds: &[Round]) -> Vec<(&Round, &Round)> {
    rounds
        .chunks(2)
        .map(|pair| {
            if pair[0].mode == Mode::With {
                (&pair[0], &pair[1])
            } else {
                (&pair[1], &pair[0])
            }
        })
        .collect()
}

/// The median over the rounds of (with − without).
fn median_added(rounds: &[Round], field: impl Fn(&Round) -> f64) -> f64 {
    let mut added: Vec<f64> = pairs(rounds)
        .iter()
        .map(|(with, without)| field(with) - field(without))
        .collect();
    common::median(&mut added)
}

/// Runs the rounds of one pattern, printing each; returns them.
fn run_pattern(bench: &mut Bench<'_, '_>, pattern: Pattern, rounds: usize) -> Vec<Round> {
    let calls = bench.calls;
    println!(
        "### {}: {} calls of {} ms per round, {} CDRs",
        pattern.describe(),
        common::thousands(calls as u64),
        pattern.call_ms(),
        common::thousands(pattern.cdrs(calls) as u64)
    );
    println!();
    println!(
        "| round | module | calls/s placed | CDRs/s | s to the last hangup | **live threads µs/CDR** (utime+stime) | live threads µs/CDR (schedstat) | of which the module's own threads | whole process µs/CDR (ended threads too) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut done = Vec::new();
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [Mode::Without, Mode::With]
        } else {
            [Mode::With, Mode::Without]
        };
        for mode in order {
            let r = bench.round(mode, pattern);
            println!(
                "| {} | {} | {:.0} | {:.0} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} |",
                round + 1,
                if r.mode == Mode::With { "loaded" } else { "-" },
                r.calls_per_s(calls),
                r.cdrs_per_s(calls),
                r.to_last_hangup_s,
                r.ticks_us,
                r.run_us,
                r.module_us,
                r.process_us
            );
            done.push(r);
        }
    }
    println!();
    done
}

/// A row of the summary: its label and the field of a round it shows.
type Figure = (&'static str, fn(&Round) -> f64);

/// The medians of one pattern's rounds, the module's threads, and the target.
fn summarize(pattern: Pattern, rounds: &[Round], calls: usize) {
    let n = rounds.len() / 2;
    let rate = median_of(rounds, Mode::Without, |r| r.calls_per_s(calls));
    let cdr_rate = median_of(rounds, Mode::Without, |r| r.cdrs_per_s(calls));
    println!(
        "| {}, median of {n} round(s): {rate:.0} calls/s placed, {cdr_rate:.0} CDRs/s | without (baseline) | with | **added by cdr_kafka** (median of the rounds' with − without) |",
        pattern.describe()
    );
    println!("|---|---|---|---|");
    let figures: [Figure; 4] = [
        ("live threads, utime+stime, µs/CDR", |r| r.ticks_us),
        ("live threads, schedstat, µs/CDR", |r| r.run_us),
        ("the module's own threads, µs/CDR", |r| r.module_us),
        ("whole process, µs/CDR", |r| r.process_us),
    ];
    for (label, field) in figures {
        println!(
            "| {label} | {:.1} | {:.1} | **{:.1}** |",
            median_of(rounds, Mode::Without, field),
            median_of(rounds, Mode::With, field),
            median_added(rounds, field)
        );
    }
    print_grown_thread(rounds);
    let added = median_added(rounds, |r| r.ticks_us);
    let spread: Vec<f64> = pairs(rounds)
        .iter()
        .map(|(with, without)| with.ticks_us - without.ticks_us)
        .collect();
    let (low, high) = spread
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(*v), hi.max(*v))
        });
    println!();
    print_module_threads(rounds);
    println!(
        "Target ≤ {TARGET_US} µs/CDR added: {} ({added:.1} µs/CDR, the rounds from {low:.1} to {high:.1}; \
         baseline {:.1} µs/CDR).",
        if added <= TARGET_US { "met" } else { "missed" },
        median_of(rounds, Mode::Without, |r| r.ticks_us)
    );
    println!();
}

/// Asterisk's threads live through module loads: the one whose CPU grows most with the
/// module is the thread that runs the CDR backends, our callback among them.
fn print_grown_thread(rounds: &[Round]) {
    let mut tids: Vec<u32> = rounds
        .iter()
        .flat_map(|r| r.threads_us.keys().copied())
        .collect();
    tids.sort_unstable();
    tids.dedup();
    let of = |tid: u32| move |r: &Round| r.threads_us.get(&tid).copied().unwrap_or(0.0);
    let grown = tids
        .iter()
        .map(|&tid| (tid, median_added(rounds, of(tid))))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    if let Some((tid, added)) = grown {
        println!(
            "| the Asterisk thread that grows most (TID {tid}: the CDR thread, our callback's), µs/CDR | {:.1} | {:.1} | {added:.1} |",
            median_of(rounds, Mode::Without, of(tid)),
            median_of(rounds, Mode::With, of(tid)),
        );
    }
}

/// Where the module's time goes: each kind of its threads in the rounds with it.
fn print_module_threads(rounds: &[Round]) {
    let mut kinds: Vec<String> = rounds
        .iter()
        .flat_map(|r| r.module_threads_us.keys().cloned())
        .collect();
    kinds.sort_unstable();
    kinds.dedup();
    let mut rows: Vec<(String, f64)> = kinds
        .into_iter()
        .map(|kind| {
            let value = median_of(rounds, Mode::With, |r| {
                r.module_threads_us.get(&kind).copied().unwrap_or(0.0)
            });
            (kind, value)
        })
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!("| the module's threads, with it loaded (median of the rounds) | ms CPU per 1,000 CDRs (schedstat) |");
    println!("|---|---|");
    for (kind, us_per_cdr) in rows {
        // µs per CDR is ms per 1,000 CDRs.
        println!("| {kind} | {us_per_cdr:.2} |");
    }
    println!();
}

/// CPU of Asterisk's live threads over `period` without calls, ms per second: in all, the
/// module's threads, and by thread kind when more than 0.01.
fn idle_ms_per_s(pid: u32, period: Duration) -> (f64, f64, String) {
    wait_until_idle(pid);
    let before = snapshot(pid);
    std::thread::sleep(period);
    let after = snapshot(pid);
    let (mut total, mut module) = (0.0, 0.0);
    let mut by_kind: BTreeMap<String, f64> = BTreeMap::new();
    for (tid, (name, _, run)) in &after.threads {
        let was = before.threads.get(tid).map_or(0, |(_, _, r)| *r);
        let ms = run.saturating_sub(was) as f64 / 1e6 / period.as_secs_f64();
        total += ms;
        if is_module_thread(name) {
            module += ms;
        }
        *by_kind.entry(thread_kind(name)).or_default() += ms;
    }
    let parts: Vec<String> = by_kind
        .iter()
        .filter(|(_, ms)| **ms >= 0.01)
        .map(|(kind, ms)| format!("{kind} {ms:.2}"))
        .collect();
    let parts = if parts.is_empty() {
        "none above 0.01".to_string()
    } else {
        parts.join(", ")
    };
    (total, module, parts)
}

/// The idle cost: no calls, the module loaded and then not, each over `period`.
fn idle(bench: &mut Bench<'_, '_>, period: Duration) {
    let pid = bench.asterisk.pid();
    bench.switch(Mode::With);
    let (with, module, with_by_kind) = idle_ms_per_s(pid, period);
    bench.switch(Mode::Without);
    let (without, _, without_by_kind) = idle_ms_per_s(pid, period);
    println!(
        "### Idle: no calls, {:.0} s with the module loaded, then {:.0} s without",
        period.as_secs_f64(),
        period.as_secs_f64()
    );
    println!();
    println!(
        "| idle, ms CPU per s (schedstat) | without (baseline) | with | **added by cdr_kafka** |"
    );
    println!("|---|---|---|---|");
    println!(
        "| whole Asterisk, live threads | {without:.2} | {with:.2} | **{:.2}** |",
        with - without
    );
    println!("| the module's threads (cdr_kafka-*, rdk:*) | - | {module:.2} | **{module:.2}** |");
    println!();
    println!("By thread, with the module: {with_by_kind}.");
    println!("By thread, without: {without_by_kind}.");
    println!(
        "Target ≤ {TARGET_IDLE_MS} ms CPU/s idle (the module's threads): {} ({module:.2} ms/s).",
        if module <= TARGET_IDLE_MS {
            "met"
        } else {
            "missed"
        }
    );
}

fn main() {
    let calls = common::env_number("CDR_KAFKA_BENCH_CALLS", 2_000, 200) as usize;
    let rounds = common::env_number("CDR_KAFKA_BENCH_ROUNDS", 5, 1) as usize;
    let idle_period = Duration::from_secs(if common::quick() { 2 } else { 10 });
    let root = Root::from_env();
    let tansu = Tansu::start();
    tansu.create_topic(TOPIC);
    let _one = one_asterisk();
    // CDR_KAFKA_BENCH_CONF adds lines to cdr_kafka.conf (e.g. "linger_ms = 200"), to
    // compare settings on the same load.
    let mut destinations = 1;
    let mut extra = std::env::var("CDR_KAFKA_BENCH_CONF")
        .map(|lines| lines.replace("\\n", "\n") + "\n")
        .unwrap_or_default();
    // CDR_KAFKA_BENCH_DESTINATIONS=3: every CDR also to a second Kafka topic (on the
    // [global] producer, through a filter) and to a file in envelopes.
    if std::env::var("CDR_KAFKA_BENCH_DESTINATIONS").is_ok_and(|n| n.trim() == "3") {
        tansu.create_topic(COPY_TOPIC);
        let _ = fs::remove_dir_all(root.path.join("var/log/asterisk/cdrk-bench"));
        // CDR_KAFKA_BENCH_DESTINATION_LINGER_MS: the two added destinations' own window.
        let linger = std::env::var("CDR_KAFKA_BENCH_DESTINATION_LINGER_MS")
            .map(|ms| format!("linger_ms = {}\n", ms.trim()))
            .unwrap_or_default();
        extra.push_str(&THREE_DESTINATIONS.replace("type = ", &format!("{linger}type = ")));
        destinations = 3;
    }
    let conf = cdr_kafka_conf(&tansu.brokers(), TOPIC, &extra);
    // The dialplan's call generator needs Originate() and ExecIf().
    let more_modules = "load => app_originate.so\nload => app_exec.so\n";
    let asterisk = Asterisk::start_with_modules(&root, &conf, "UTC", more_modules);
    asterisk.add_dialplan(LOOP_DIALPLAN);
    let version = asterisk.rx("core show version");
    let mut bench = Bench {
        asterisk: &asterisk,
        manager: Manager::open(&asterisk),
        calls,
        loaded: false,
        since_load: 0,
        destinations,
    };
    println!(
        "## Asterisk CPU per CDR on real calls, cdr_kafka loaded minus not loaded: {rounds} round(s) \
         of each per pattern, answered calls of {CALL_MS} ms (Local channels originated over AMI \
         into call{CALL_MS}@cdrk), broker up (tansu on 127.0.0.1), default settings{}; {} ({})",
        if extra.trim().is_empty() {
            String::new()
        } else {
            format!(" but {}", extra.trim().replace("\n\n", "; ").replace('\n', ", "))
        },
        version.lines().next().unwrap_or("Asterisk").trim(),
        common::machine()
    );
    println!();
    let per_call = bench.warm_up_and_count();
    println!(
        "CDRs per call, by the module's Received counter over 10 calls: {per_call} \
         (expected {CDRS_PER_CALL}; checked again after every round with the module)."
    );
    println!();
    // CDR_KAFKA_BENCH_PATTERNS: the letters of the patterns to run (default abcd).
    let chosen = std::env::var("CDR_KAFKA_BENCH_PATTERNS").unwrap_or_else(|_| "abcd".into());
    for (letter, pattern) in [
        ('a', Pattern::AsFastAsOriginate),
        ('b', Pattern::Paced(PACED_CALLS_PER_S)),
        ('c', Pattern::Dialplan(0)),
        ('d', Pattern::Dialplan(PACED_CALLS_PER_S)),
    ] {
        if !chosen.contains(letter) {
            continue;
        }
        let done = run_pattern(&mut bench, pattern, rounds);
        summarize(pattern, &done, calls);
    }
    idle(&mut bench, idle_period);
    common::quick_note();
    drop(bench);
    drop(asterisk);
    tansu.stop();
}
