//! A model-based test of the whole engine: one to four memory destinations coupled by
//! control flags, each with its own filter and `give_up_after`, driven pass by pass
//! through random appends, outages, refusals, slow confirmations, CLI disable/enable,
//! reloads, clean stops within a budget and crashes at any file operation. At the end
//! every destination is brought up and passed until quiet; then what each destination
//! received and what was dead-lettered are checked against a reference of GnuGk's
//! accounting rules (its manual, section 8.1) written here, not the engine's own.
//!
//! Threads: none but the test's. Feeders are driven by `Feeder::pass`; `Feeder::run` is
//! called only after its `Stop` was requested, so it makes its last pass, flushes and
//! returns the ledger. A crash drops everything unflushed; the next "process" reopens
//! the folder and starts new feeders from the ledgers on disk.
//!
//! `PROPTEST_CASES=2000 cargo test --release --lib engine_model` runs more cases.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::dead_letter::DeadLetters;
use super::destination::{Destination, Offer, Outcome};
use super::feeder::{DestinationStats, Feeder, FeederSettings, Next, Rules, Stop};
use super::log::io::{FaultPlan, Io};
use super::log::tests::{settings, TempDir};
use super::log::SyncPolicy;
use super::log::{now_ms, Ledger, Log, LogSettings, NewRecord, RecordKind, StoredRecord};
use super::stack::{Member, Stack};
use crate::routing::control::ControlFlag;
use crate::routing::filter::Filter;
use crate::routing::{Missed, RecordKinds, Route};

/// Restarts (crashes and clean stops) are followed at once by passes. Off: a restart
/// first waits out the longest `give_up_after`. The give-up is counted from each run's
/// start now (a record is never given up untried after downtime: `check_give_up` holds
/// with this on), but a give-up one destination decided and had not confirmed before a
/// stop is decided anew after it: the record may then be delivered there, where the walk
/// of the earlier run had failed it over (the defect of
/// `ONE_DEAD_LETTER_ACROSS_RELOADS_AND_STOPS`), which the walk check catches.
const PASS_RIGHT_AFTER_A_RESTART: bool = true;

/// The end first settles the running destinations while the CLI-disabled ones stay
/// disabled (a destination still reads the log in order: a record the walk waits for there
/// holds back the records after it at that destination), and checks that the walk went on
/// past a disabled destination whose
/// `give_up_after` has passed (counted as failed) or whose rules leave the record out
/// (passed over); it waits for one without `give_up_after`. Off because of the defect "a
/// disabled `alternative` blocks the walk" (a disabled `sufficient` too: the destinations
/// after it wait for it).
const SETTLE_WITH_A_DESTINATION_DISABLED: bool = true;

/// A record is dead-lettered once across reloads and clean stops. Off because of a defect
/// this test found: a failure one destination confirmed (after writing the dead letter)
/// and another had not yet (it was stopped first, or disabled) is failed again by the
/// second after a reload or a restart, the first then counted as delivered by the new
/// stack, and dead-lettered a second time. What triggers it is the feeders' own timing,
/// which no step of the generator can avoid, so this flag relaxes the check instead: a
/// second dead letter across a reload or a clean stop is let through (each must still be
/// its epoch's verdict). The same defect lets a destination whose give-up was decided but
/// not confirmed before a clean stop try the record again after it (the limit counts from
/// the start of each run) and deliver it: the dead letter then names it beside the
/// destinations that did fail, which is let through too.
const ONE_DEAD_LETTER_ACROSS_RELOADS_AND_STOPS: bool = true;

/// A destination that refuses through its outcomes may break (and be rebuilt). Off
/// because of a defect this test found: a rebuild offers again a record whose failure
/// awaits its verdict; when the verdict comes and the record is confirmed meanwhile, the
/// second refusal (an outcome for a record already confirmed) is failed anew on a fresh
/// board entry and the record is dead-lettered a second time by the same stack.
const REBUILD_WHILE_A_LATE_REFUSAL_IS_IN_FLIGHT: bool = true;

/// Destination names; a reload that adds one takes the first free name (a name removed
/// earlier comes back as a new destination: its ledger was deleted).
const NAMES: [&str; 6] = ["d0", "d1", "d2", "d3", "d4", "d5"];
/// Most destinations at once (four, and one a reload adds).
const MOST: usize = 5;
const SETTINGS: FeederSettings = FeederSettings {
    batch_window: Duration::from_millis(1),
    flush_timeout: Duration::from_millis(10),
};
/// The log header naming (a bit per name, in decimal) the destinations that refuse the
/// record for good.
const REFUSE_HEADER: &str = "refused_by";
/// The longest `give_up_after` drawn (the generator's times are a few ms).
const LONGEST_GIVE_UP_MS: u64 = 5;
/// Rounds of passes (each running feeder once) within which everything must settle.
const ROUNDS: usize = 80;

macro_rules! ensure {
    ($cond:expr, $($message:tt)+) => {
        if !$cond {
            return Err(format!($($message)+));
        }
    };
}

// ---------------------------------------------------------------------------------
// What the generator draws.

/// One destination's configuration section.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Dest {
    name: usize,
    flag: ControlFlag,
    give_up_ms: Option<u64>,
    /// Takes CEL records too (CDRs always).
    cel: bool,
    missed: Missed,
    /// `dcontext = internal` (true) or `dcontext != internal` (false).
    internal: Option<bool>,
    /// Refuses through a later outcome instead of at the offer.
    refuses_late: bool,
}

/// One record as appended.
#[derive(Debug, Clone, Copy)]
struct Spec {
    cel: bool,
    missed: bool,
    internal: bool,
    /// A bit per name: the destinations that refuse it for good.
    refused_by: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Health {
    #[default]
    Up,
    /// Full at every offer; what it holds comes back as `Retry`.
    Down,
    /// Takes records and answers nothing; its flush waits out its timeout.
    Hung,
}

#[derive(Debug, Clone)]
enum Change {
    Add { at: usize, dest: Dest },
    Remove(usize),
    Alter(usize, Dest),
}

/// Destinations are named by position in the running configuration (modulo its length).
#[derive(Debug, Clone)]
enum Step {
    Append(Spec),
    Pass(usize),
    PassAll,
    Health(usize, Health),
    /// Outcomes of records taken from now on come this many passes later.
    Delay(usize, u8),
    /// Breaks at its next pass (rebuilt then); `arrived`: what it held had arrived.
    Break {
        dest: usize,
        arrived: bool,
    },
    Sleep(u8),
    Disable(usize),
    Enable(usize),
    Reload(Change),
    /// A clean stop of every destination within `budget_ms`, stopped from `first` on,
    /// and a start.
    Stop {
        budget_ms: Option<u8>,
        first: usize,
    },
    /// A crash now, then a restart whose process dies `after` file operations later,
    /// if any; `arrived`: records in flight at the crash had arrived.
    Crash {
        after: Option<u16>,
        arrived: bool,
    },
}

fn flag() -> impl Strategy<Value = ControlFlag> {
    prop_oneof![
        Just(ControlFlag::Required),
        Just(ControlFlag::Optional),
        Just(ControlFlag::Sufficient),
        Just(ControlFlag::Alternative),
    ]
}

fn dest() -> impl Strategy<Value = Dest> {
    (
        flag(),
        proptest::option::weighted(0.4, 1..=LONGEST_GIVE_UP_MS),
        proptest::bool::weighted(0.3),
        prop_oneof![3 => Just(Missed::Include), 1 => Just(Missed::Exclude), 1 => Just(Missed::Only)],
        proptest::option::weighted(0.25, any::<bool>()),
        any::<bool>(),
    )
        .prop_map(
            |(flag, give_up_ms, cel, missed, internal, refuses_late)| Dest {
                name: 0,
                flag,
                give_up_ms,
                cel,
                missed,
                internal,
                refuses_late,
            },
        )
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        proptest::bool::weighted(0.2),
        proptest::bool::weighted(0.3),
        proptest::bool::weighted(0.3),
        prop_oneof![4 => Just(0u8), 2 => (0..NAMES.len()).prop_map(|bit| 1u8 << bit), 1 => any::<u8>()],
    )
        .prop_map(|(cel, missed, internal, refused_by)| Spec {
            cel,
            missed,
            internal,
            refused_by,
        })
}

fn health() -> impl Strategy<Value = Health> {
    prop_oneof![3 => Just(Health::Up), 2 => Just(Health::Down), 1 => Just(Health::Hung)]
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (0..MOST, dest()).prop_map(|(at, dest)| Change::Add { at, dest }),
        (0..MOST).prop_map(Change::Remove),
        (0..MOST, dest()).prop_map(|(at, dest)| Change::Alter(at, dest)),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => spec().prop_map(Step::Append),
        6 => Just(Step::PassAll),
        4 => (0..MOST).prop_map(Step::Pass),
        3 => (0..MOST, health()).prop_map(|(d, h)| Step::Health(d, h)),
        2 => (0..MOST, 0u8..4).prop_map(|(d, k)| Step::Delay(d, k)),
        1 => (0..MOST, any::<bool>()).prop_map(|(dest, arrived)| Step::Break { dest, arrived }),
        2 => (1u8..=4).prop_map(Step::Sleep),
        2 => (0..MOST).prop_map(Step::Disable),
        2 => (0..MOST).prop_map(Step::Enable),
        1 => change().prop_map(Step::Reload),
        1 => (proptest::option::of(1u8..=5), 0..MOST)
            .prop_map(|(budget_ms, first)| Step::Stop { budget_ms, first }),
        2 => (proptest::option::weighted(0.5, 0u16..50), any::<bool>())
            .prop_map(|(after, arrived)| Step::Crash { after, arrived }),
    ]
}

fn configuration() -> impl Strategy<Value = Vec<Dest>> {
    proptest::collection::vec(dest(), 1..=4).prop_map(|mut dests| {
        for (name, dest) in dests.iter_mut().enumerate() {
            dest.name = name;
        }
        dests
    })
}

// ---------------------------------------------------------------------------------
// The memory destinations and what they saw.

#[derive(Debug, Clone, Copy)]
struct Arrival {
    n: u64,
    /// Its outcome `Delivered` reached the feeder (else a crash or a break hid it).
    reported: bool,
    epoch: usize,
    crashes: usize,
    rebuilds: usize,
    life: usize,
}

/// One destination's far end, shared by the instances the feeders own in turn.
#[derive(Default)]
struct World {
    health: Health,
    delay: u8,
    /// The current process's file operations: once they fail, the process is dead and
    /// its destinations take and report nothing more.
    io: Io,
    epoch: usize,
    crashes: usize,
    rebuilds: usize,
    /// Reloads that added a destination of this name: one added after the section was
    /// removed is a new destination (its ledger was deleted), which takes what the log
    /// still holds for the others, also what the removed one had.
    life: usize,
    arrivals: Vec<Arrival>,
    /// (epoch, record) refused for good.
    refusals: BTreeSet<(usize, u64)>,
    /// The flush timeouts it was handed.
    flushes: Vec<Duration>,
    /// Break at the next pass; `true`: what it held had arrived.
    break_next: Option<bool>,
    /// Dropped now, what it holds had arrived (a crash hid the reports).
    dropped_arrive: bool,
}

impl World {
    fn arrive(&mut self, n: u64, reported: bool) {
        self.arrivals.push(Arrival {
            n,
            reported,
            epoch: self.epoch,
            crashes: self.crashes,
            rebuilds: self.rebuilds,
            life: self.life,
        });
    }

    fn delivered_in(&self, epoch: usize, n: u64) -> bool {
        self.arrivals
            .iter()
            .any(|a| a.n == n && a.reported && a.epoch == epoch)
    }
}

fn lock(world: &Mutex<World>) -> MutexGuard<'_, World> {
    world.lock().unwrap_or_else(|p| p.into_inner())
}

struct Taken {
    seq: u64,
    n: u64,
    refuse: bool,
    wait: u8,
}

struct Memory {
    name: &'static str,
    bit: u8,
    refuses_late: bool,
    world: Arc<Mutex<World>>,
    taken: Vec<Taken>,
    broken: bool,
    rebuilt: bool,
}

fn number(record: &StoredRecord<'_>) -> u64 {
    record
        .record_id
        .strip_prefix("id-")
        .and_then(|n| n.parse().ok())
        .expect("a record of the test")
}

fn refused_by(record: &StoredRecord<'_>) -> u8 {
    record
        .headers
        .iter()
        .find(|(name, _)| *name == REFUSE_HEADER)
        .and_then(|(_, value)| std::str::from_utf8(value).ok()?.parse().ok())
        .expect("the test's header")
}

impl Destination for Memory {
    fn name(&self) -> &str {
        self.name
    }

    fn offer(&mut self, record: &StoredRecord<'_>) -> Offer {
        let mut world = lock(&self.world);
        if self.broken || world.io.has_crashed() || world.health == Health::Down {
            return Offer::Full;
        }
        let n = number(record);
        let refuse = refused_by(record) & self.bit != 0;
        if refuse && !self.refuses_late {
            let epoch = world.epoch;
            world.refusals.insert((epoch, n));
            return Offer::Refused("refused by the test".into());
        }
        self.taken.push(Taken {
            seq: record.seq,
            n,
            refuse,
            wait: world.delay,
        });
        Offer::Taken
    }

    fn collect(&mut self, outcomes: &mut Vec<(u64, Outcome)>) {
        let mut world = lock(&self.world);
        if self.broken || world.io.has_crashed() || world.health == Health::Hung {
            return;
        }
        let down = world.health == Health::Down;
        let epoch = world.epoch;
        let mut kept = Vec::new();
        for mut taken in self.taken.drain(..) {
            if down {
                outcomes.push((taken.seq, Outcome::Retry));
            } else if taken.wait > 0 {
                taken.wait -= 1;
                kept.push(taken);
            } else if taken.refuse {
                world.refusals.insert((epoch, taken.n));
                outcomes.push((taken.seq, Outcome::Refused("refused late".into())));
            } else {
                world.arrive(taken.n, true);
                outcomes.push((taken.seq, Outcome::Delivered));
            }
        }
        self.taken = kept;
    }

    fn broken(&mut self) -> Option<String> {
        let mut world = lock(&self.world);
        // Once per instance: a second break within a second waits out the rebuild pause.
        let may = REBUILD_WHILE_A_LATE_REFUSAL_IS_IN_FLIGHT || !self.refuses_late;
        if may && !self.broken && !self.rebuilt && !world.io.has_crashed() {
            if let Some(arrived) = world.break_next.take() {
                self.broken = true;
                if arrived {
                    for taken in self.taken.iter().filter(|t| !t.refuse) {
                        world.arrive(taken.n, false);
                    }
                }
            }
        }
        self.broken.then(|| "broken by the test".to_string())
    }

    fn rebuild(&mut self) -> Result<(), String> {
        lock(&self.world).rebuilds += 1;
        self.taken.clear();
        self.broken = false;
        self.rebuilt = true;
        Ok(())
    }

    fn in_flight(&self) -> u64 {
        self.taken.len() as u64
    }

    fn flush(&mut self, timeout: Duration) {
        let mut world = lock(&self.world);
        world.flushes.push(timeout);
        if world.io.has_crashed() {
            return;
        }
        match world.health {
            Health::Up => self.taken.iter_mut().for_each(|t| t.wait = 0),
            Health::Hung if !self.taken.is_empty() => {
                drop(world);
                std::thread::sleep(timeout.min(SETTINGS.flush_timeout));
            }
            _ => {}
        }
    }

    fn describe(&self) -> String {
        format!("memory {}", self.name)
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        let mut world = lock(&self.world);
        if world.dropped_arrive {
            for taken in self.taken.iter().filter(|t| !t.refuse) {
                world.arrive(taken.n, false);
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// The engine as the module runs it, one "process" at a time.

fn route(dest: &Dest) -> Route {
    let kinds = RecordKinds {
        cdr: true,
        cel: dest.cel,
        control: false,
    };
    let mut route = Route::plain(NAMES[dest.name], kinds);
    route.missed = dest.missed;
    if let Some(internal) = dest.internal {
        let text = if internal {
            "dcontext = internal"
        } else {
            "dcontext != internal"
        };
        route.filters = vec![Filter::parse(text, &|_: &str| true).expect("a filter")];
    }
    route
}

struct Running {
    feeder: Feeder,
    stats: Arc<DestinationStats>,
}

enum Slot {
    Running(Box<Running>),
    /// Disabled from the CLI (or being stopped): its ledger waits.
    Parked(Box<Ledger>),
    Gone,
}

struct Process {
    io: Io,
    log: Arc<Log>,
    dead_letters: Arc<DeadLetters>,
    stack: Option<Arc<Stack>>,
    /// By position in the configuration.
    slots: Vec<Slot>,
    /// Just before the log was opened.
    started_ms: u64,
}

struct Rec {
    n: u64,
    spec: Spec,
    /// `None`: the append failed (the process had died).
    seq: Option<u64>,
    /// Just before the append (its capture time is not earlier).
    appended_ms: u64,
    epoch: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Running,
    Crash,
    Stop,
    Reload,
}

/// From a start (load, restart, reload) to the next: one stack, one configuration.
struct Epoch {
    config: Vec<Dest>,
    /// (name, record) confirmed in the ledgers when the epoch began.
    confirmed: BTreeSet<(usize, u64)>,
    /// (name, record) a ledger kept failed when the epoch began (refused or given up
    /// before): the walk counts it failed there.
    failed: BTreeSet<(usize, u64)>,
    end: End,
    /// After a reload: (name, record) confirmed when it ended.
    confirmed_at_end: BTreeSet<(usize, u64)>,
    /// Dead letters written in this epoch: record and the destinations named.
    dead: Vec<(u64, BTreeSet<usize>)>,
}

struct Case {
    _dir: TempDir,
    settings: LogSettings,
    worlds: Vec<Arc<Mutex<World>>>,
    config: Vec<Dest>,
    records: Vec<Rec>,
    epochs: Vec<Epoch>,
    process: Option<Process>,
    crashes: usize,
    dead_letter_lines: usize,
    /// What the crash planned in the current process does with records in flight.
    crash_arrives: bool,
}

impl Case {
    fn new(config: Vec<Dest>, interval_sync: bool) -> Result<Self, String> {
        let dir = TempDir::new("engine-model");
        let mut settings = settings(&dir.0);
        if interval_sync {
            settings.sync = SyncPolicy::Interval;
            settings.sync_interval = Duration::from_millis(2);
        }
        let mut case = Self {
            _dir: dir,
            settings,
            worlds: (0..NAMES.len()).map(|_| Arc::default()).collect(),
            config,
            records: Vec::new(),
            epochs: Vec::new(),
            process: None,
            crashes: 0,
            dead_letter_lines: 0,
            crash_arrives: false,
        };
        case.open(None)?;
        Ok(case)
    }

    fn process(&mut self) -> &mut Process {
        self.process.as_mut().expect("a process runs")
    }

    fn world(&self, pos: usize) -> &Arc<Mutex<World>> {
        &self.worlds[self.config[pos].name]
    }

    /// Starts a process: opens the folder, registers every configured destination
    /// (one disabled from the CLI runs again) and starts their feeders.
    fn open(&mut self, crash_after: Option<u16>) -> Result<(), String> {
        let started_ms = now_ms();
        let io = Io::with_faults(FaultPlan::default());
        let log = Log::open_with(self.settings.clone(), io.clone())
            .map_err(|e| format!("the log does not open after a restart: {e}"))?;
        let log = Arc::new(log);
        let mut ledgers = Vec::new();
        for dest in &self.config {
            let ledger = log
                .register(NAMES[dest.name])
                .map_err(|e| format!("ledger: {e}"))?;
            ledgers.push(ledger);
        }
        for world in &self.worlds {
            let mut world = lock(world);
            world.io = io.clone();
            world.crashes = self.crashes;
        }
        self.process = Some(Process {
            dead_letters: Arc::new(DeadLetters::new(log.dir(), io.clone())),
            io: io.clone(),
            log,
            stack: None,
            slots: Vec::new(),
            started_ms,
        });
        self.begin_epoch(ledgers);
        if let Some(more) = crash_after {
            io.crash_after(u64::from(more));
        }
        Ok(())
    }

    /// A new stack over the configuration, a feeder per ledger.
    fn begin_epoch(&mut self, ledgers: Vec<Ledger>) {
        let epoch = self.epochs.len();
        let mut confirmed = BTreeSet::new();
        let mut failed = BTreeSet::new();
        for (dest, ledger) in self.config.iter().zip(&ledgers) {
            for record in &self.records {
                if record.seq.is_some_and(|seq| ledger.is_acked(seq)) {
                    confirmed.insert((dest.name, record.n));
                }
                if record.seq.is_some_and(|seq| ledger.is_failed(seq)) {
                    failed.insert((dest.name, record.n));
                }
            }
        }
        self.epochs.push(Epoch {
            config: self.config.clone(),
            confirmed,
            failed,
            end: End::Running,
            confirmed_at_end: BTreeSet::new(),
            dead: Vec::new(),
        });
        for world in &self.worlds {
            lock(world).epoch = epoch;
        }
        let members = self
            .config
            .iter()
            .map(|d| {
                Member::new(d.flag, route(d))
                    .with_give_up_after(d.give_up_ms.map(Duration::from_millis))
            })
            .collect();
        let stack = Stack::new(members);
        self.process().stack = stack.is_coupled().then_some(stack);
        let slots: Vec<Slot> = ledgers
            .into_iter()
            .enumerate()
            .map(|(pos, ledger)| self.start(pos, ledger))
            .collect();
        self.process().slots = slots;
    }

    fn start(&self, pos: usize, ledger: Ledger) -> Slot {
        let process = self.process.as_ref().expect("a process runs");
        let dest = &self.config[pos];
        let mut rules = Rules::everything(NAMES[dest.name]);
        rules.route = route(dest);
        rules.give_up_after = dest.give_up_ms.map(Duration::from_millis);
        rules.stack = process.stack.as_ref().map(|s| (Arc::clone(s), pos));
        rules.tried_since_ms = process.started_ms;
        let stats = Arc::new(DestinationStats::default());
        let destination = Box::new(Memory {
            name: NAMES[dest.name],
            bit: 1 << dest.name,
            refuses_late: dest.refuses_late,
            world: Arc::clone(self.world(pos)),
            taken: Vec::new(),
            broken: false,
            rebuilt: false,
        });
        let feeder = Feeder::new(
            Arc::clone(&process.log),
            ledger,
            destination,
            Arc::clone(&process.dead_letters),
            Arc::clone(&stats),
            SETTINGS,
            rules,
        );
        Slot::Running(Box::new(Running { feeder, stats }))
    }

    /// Ends the current epoch: the dead letters it wrote are read.
    fn end_epoch(&mut self, end: End) -> Result<(), String> {
        let path = self.dead_letter_path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut dead = Vec::new();
        for line in text.lines().skip(self.dead_letter_lines) {
            let value: serde_json::Value =
                serde_json::from_str(line).map_err(|e| format!("dead letter {line:?}: {e}"))?;
            let n = value["record_id"]
                .as_str()
                .and_then(|id| id.strip_prefix("id-")?.parse().ok())
                .ok_or(format!("dead letter without a record id: {line}"))?;
            let mut named = BTreeSet::new();
            for name in value["destination"].as_str().unwrap_or_default().split(',') {
                let index = NAMES.iter().position(|known| *known == name);
                named.insert(index.ok_or(format!("dead letter names '{name}': {line}"))?);
            }
            dead.push((n, named));
            self.dead_letter_lines += 1;
        }
        let epoch = self.epochs.last_mut().expect("an epoch");
        epoch.end = end;
        epoch.dead = dead;
        Ok(())
    }

    fn dead_letter_path(&self) -> PathBuf {
        let process = self.process.as_ref().expect("a process runs");
        process.dead_letters.path().to_path_buf()
    }

    /// After anything that touches the files: a process whose operations fail died
    /// there, and is restarted.
    fn survive(&mut self) -> Result<bool, String> {
        if self.process().io.has_crashed() {
            let arrived = self.crash_arrives;
            self.crash(arrived, None)?;
            return Ok(false);
        }
        Ok(true)
    }

    fn crash(&mut self, arrived: bool, after: Option<u16>) -> Result<(), String> {
        self.end_epoch(End::Crash)?;
        for world in &self.worlds {
            lock(world).dropped_arrive = arrived;
        }
        self.process = None;
        for world in &self.worlds {
            lock(world).dropped_arrive = false;
        }
        self.crashes += 1;
        self.crash_arrives = arrived;
        self.open(after)?;
        self.wait_after_restart();
        Ok(())
    }

    fn wait_after_restart(&self) {
        // The longest the generator draws: a reload may bring it in later.
        if !PASS_RIGHT_AFTER_A_RESTART {
            std::thread::sleep(Duration::from_millis(LONGEST_GIVE_UP_MS + 1));
        }
    }

    // -----------------------------------------------------------------------------
    // Steps.

    fn step(&mut self, step: Step) -> Result<(), String> {
        let len = self.config.len();
        match step {
            Step::Append(spec) => self.append(spec)?,
            Step::Pass(d) => {
                self.pass(d % len)?;
            }
            Step::PassAll => {
                self.round()?;
            }
            Step::Health(d, health) => lock(self.world(d % len)).health = health,
            Step::Delay(d, k) => lock(self.world(d % len)).delay = k,
            Step::Break { dest, arrived } => {
                if REBUILD_WHILE_A_LATE_REFUSAL_IS_IN_FLIGHT
                    || !self.config[dest % len].refuses_late
                {
                    lock(self.world(dest % len)).break_next = Some(arrived);
                }
            }
            Step::Sleep(ms) => std::thread::sleep(Duration::from_millis(u64::from(ms))),
            Step::Disable(d) => self.disable(d % len)?,
            Step::Enable(d) => {
                let pos = d % len;
                self.keep_failures_of_disabled();
                if !self.survive()? {
                    return Ok(());
                }
                let slot = std::mem::replace(&mut self.process().slots[pos], Slot::Gone);
                let slot = match slot {
                    Slot::Parked(ledger) => self.start(pos, *ledger),
                    other => other,
                };
                self.process().slots[pos] = slot;
            }
            Step::Reload(change) => self.reload(change)?,
            Step::Stop { budget_ms, first } => {
                let budget = budget_ms.map(|ms| Duration::from_millis(u64::from(ms)));
                if self.stop_all(budget, first)? {
                    self.process().log.sync_now();
                    if self.survive()? {
                        self.end_epoch(End::Stop)?;
                        self.process = None;
                        self.open(None)?;
                        self.wait_after_restart();
                    }
                }
            }
            Step::Crash { after, arrived } => self.crash(arrived, after)?,
        }
        Ok(())
    }

    fn append(&mut self, spec: Spec) -> Result<(), String> {
        let n = self.records.len() as u64;
        let id = format!("id-{n}");
        let payload = serde_json::json!({
            "n": n,
            "answer": if spec.missed { None } else { Some("2026-01-15T10:30:05.000-0300") },
            "dcontext": if spec.internal { "internal" } else { "default" },
        })
        .to_string();
        let refused = spec.refused_by.to_string();
        let appended_ms = now_ms();
        let process = self.process();
        let appended = process.log.append(&NewRecord {
            kind: if spec.cel {
                RecordKind::Cel
            } else {
                RecordKind::Cdr
            },
            record_id: &id,
            topic: "asterisk_cdr",
            key: None,
            headers: &[(REFUSE_HEADER, refused.as_bytes())],
            payload: payload.as_bytes(),
        });
        ensure!(
            appended.is_ok() || process.io.has_crashed(),
            "append refused by a live process: {:?}",
            appended.err()
        );
        self.records.push(Rec {
            n,
            spec,
            seq: appended.ok(),
            appended_ms,
            epoch: self.epochs.len() - 1,
        });
        self.survive()?;
        Ok(())
    }

    /// One pass of the destination at `pos`, if it runs: `Some(idle)`.
    fn pass(&mut self, pos: usize) -> Result<Option<bool>, String> {
        let Some(Slot::Running(running)) = self.process().slots.get_mut(pos) else {
            return Ok(None);
        };
        let before = DestinationStats::get(&running.stats.gave_up);
        let next = running.feeder.pass();
        let gave_up = DestinationStats::get(&running.stats.gave_up) > before;
        if gave_up {
            self.check_give_up(pos, now_ms())?;
        }
        Ok(self.survive()?.then_some(next == Next::Idle))
    }

    /// Each running destination passes once; true when all were idle.
    fn round(&mut self) -> Result<bool, String> {
        let mut idle = true;
        for pos in 0..self.config.len() {
            match self.pass(pos)? {
                Some(quiet) => idle &= quiet,
                None => {
                    let gone = !matches!(self.process().slots[pos], Slot::Parked(_));
                    idle &= !gone;
                }
            }
        }
        Ok(idle)
    }

    /// A feeder gave up a record in a pass that ended at `end_ms`: some record it takes
    /// must have waited `give_up_after` since its capture and since this process began.
    fn check_give_up(&self, pos: usize, end_ms: u64) -> Result<(), String> {
        let dest = &self.config[pos];
        let name = NAMES[dest.name];
        let Some(limit) = dest.give_up_ms else {
            return Err(format!("{name} gave up a record without give_up_after"));
        };
        let started = self.process.as_ref().expect("a process runs").started_ms;
        let due = self.records.iter().any(|r| {
            r.seq.is_some() && takes(dest, r.spec) && end_ms >= r.appended_ms.max(started) + limit
        });
        ensure!(
            due,
            "{name} gave up a record that had not waited give_up_after = {limit} ms in this process"
        );
        Ok(())
    }

    /// Stops one feeder as `cdr kafka destination disable` does.
    fn disable(&mut self, pos: usize) -> Result<(), String> {
        self.stop_one(pos, None)?;
        let above = match &self.process().slots[pos] {
            Slot::Parked(ledger) => ledger.state().above.clone(),
            _ => Default::default(),
        };
        if let Some(stack) = &self.process().stack {
            stack.detach(pos, above);
        }
        self.survive()?;
        Ok(())
    }

    /// `Feeder::run` after `Stop::request(budget)`: its last pass and flush, and the
    /// ledger parked.
    fn stop_one(&mut self, pos: usize, budget: Option<Duration>) -> Result<(), String> {
        let slot = std::mem::replace(&mut self.process().slots[pos], Slot::Gone);
        let Running { feeder, stats } = match slot {
            Slot::Running(running) => *running,
            other => {
                self.process().slots[pos] = other;
                return Ok(());
            }
        };
        lock(self.world(pos)).flushes.clear();
        let before = DestinationStats::get(&stats.gave_up);
        let stop = Stop::default();
        stop.request(budget);
        let started = Instant::now();
        let (ledger, _) = feeder.run(&stop);
        let took = started.elapsed();
        self.process().slots[pos] = Slot::Parked(Box::new(ledger));
        if DestinationStats::get(&stats.gave_up) > before {
            self.check_give_up(pos, now_ms())?;
        }
        if let Some(budget) = budget {
            let name = NAMES[self.config[pos].name];
            let flushes = lock(self.world(pos)).flushes.clone();
            ensure!(
                flushes.iter().all(|timeout| *timeout <= budget),
                "{name} was given flushes of {flushes:?} in a stop within {budget:?}"
            );
            ensure!(
                took <= budget + Duration::from_secs(2),
                "{name} took {took:?} to stop within {budget:?}"
            );
        }
        Ok(())
    }

    /// Stops every running feeder from `first` on; false when the process died meanwhile
    /// (it was restarted).
    fn stop_all(&mut self, budget: Option<Duration>, first: usize) -> Result<bool, String> {
        let len = self.config.len();
        for k in 0..len {
            self.stop_one((first + k) % len, budget)?;
            if !self.survive()? {
                return Ok(false);
            }
        }
        self.keep_failures_of_disabled();
        self.survive()
    }

    /// What `Delivery` does before a stack is dropped or a destination enabled: the
    /// failures the walk decided for disabled destinations go into their ledgers.
    fn keep_failures_of_disabled(&mut self) {
        let process = self.process.as_mut().expect("a process runs");
        if let Some(stack) = &process.stack {
            for slot in &mut process.slots {
                if let Slot::Parked(ledger) = slot {
                    stack.keep_failures_of_disabled(ledger);
                }
            }
        }
    }

    /// A reload that changes one destination: every feeder stops (bounded flush), a
    /// removed destination is forgotten, the others start on the new stack with their
    /// ledgers (a new one at the oldest record the log holds), as `module::reload` does.
    fn reload(&mut self, change: Change) -> Result<(), String> {
        let len = self.config.len();
        let mut config = self.config.clone();
        match change {
            Change::Add { at, mut dest } if len < MOST => {
                let used: BTreeSet<usize> = config.iter().map(|d| d.name).collect();
                dest.name = (0..NAMES.len())
                    .find(|n| !used.contains(n))
                    .expect("a free name");
                lock(&self.worlds[dest.name]).life += 1;
                config.insert(at % (len + 1), dest);
            }
            Change::Remove(at) if len > 1 => {
                config.remove(at % len);
            }
            Change::Alter(at, mut dest) => {
                dest.name = config[at % len].name;
                config[at % len] = dest;
            }
            _ => return Ok(()),
        }
        if config == self.config || !self.stop_all(None, 0)? {
            return Ok(());
        }
        self.process().log.sync_now();
        if !self.survive()? {
            return Ok(());
        }
        let slots = std::mem::take(&mut self.process().slots);
        let mut kept = BTreeMap::new();
        let mut confirmed = BTreeSet::new();
        for (dest, slot) in self.config.iter().zip(slots) {
            if let Slot::Parked(ledger) = slot {
                for record in &self.records {
                    if record.seq.is_some_and(|seq| ledger.is_acked(seq)) {
                        confirmed.insert((dest.name, record.n));
                    }
                }
                kept.insert(dest.name, *ledger);
            }
        }
        let old = std::mem::replace(&mut self.config, config);
        let log = Arc::clone(&self.process().log);
        let mut ledgers = Vec::new();
        for name in self.config.iter().map(|d| d.name).collect::<Vec<_>>() {
            let ledger = match kept.remove(&name) {
                Some(ledger) => ledger,
                None => match log.register(NAMES[name]) {
                    Ok(ledger) => ledger,
                    Err(error) => {
                        ensure!(self.process().io.has_crashed(), "register: {error}");
                        drop((kept, log));
                        let arrived = self.crash_arrives;
                        return self.crash(arrived, None);
                    }
                },
            };
            ledgers.push(ledger);
        }
        for dest in old.iter().filter(|d| kept.contains_key(&d.name)) {
            log.forget(NAMES[dest.name]);
        }
        drop((kept, log));
        self.end_epoch(End::Reload)?;
        self.epochs.last_mut().expect("an epoch").confirmed_at_end = confirmed;
        self.begin_epoch(ledgers);
        Ok(())
    }

    // -----------------------------------------------------------------------------
    // The end.

    /// Every destination up and enabled, passes until quiet, then a clean stop and a
    /// restart that finds everything confirmed and the log empty.
    fn finish(&mut self) -> Result<(), String> {
        if SETTLE_WITH_A_DESTINATION_DISABLED {
            self.settle_with_disabled()?;
        }
        for world in &self.worlds {
            let mut world = lock(world);
            world.health = Health::Up;
        }
        loop {
            for pos in 0..self.config.len() {
                self.step(Step::Enable(pos))?;
            }
            let mut quiet = false;
            for _ in 0..ROUNDS {
                if self.round()? {
                    quiet = true;
                    break;
                }
            }
            ensure!(
                quiet,
                "not quiet after {ROUNDS} rounds with every destination up"
            );
            self.check_bounds()?;
            if self.stop_all(None, 0)? {
                break;
            }
        }
        self.process().log.sync_now();
        self.end_epoch(End::Stop)?;
        self.process = None;
        let log = Log::open(self.settings.clone()).map_err(|e| format!("last open: {e}"))?;
        for dest in &self.config {
            let ledger = log.register(NAMES[dest.name]).map_err(|e| e.to_string())?;
            for record in &self.records {
                if let Some(seq) = record.seq {
                    ensure!(
                        ledger.is_acked(seq),
                        "id-{} not confirmed by {} at the end",
                        record.n,
                        NAMES[dest.name]
                    );
                }
            }
        }
        log.maintain();
        ensure!(
            log.count_from(0) == 0,
            "the log still holds {} records",
            log.count_from(0)
        );
        let segments = segment_files(log.dir());
        ensure!(segments <= 1, "{segments} segment files left");
        Ok(())
    }

    fn check_bounds(&mut self) -> Result<(), String> {
        let process = self.process();
        ensure!(
            process.log.depth() == (0, 0),
            "log depth {:?} once quiet",
            process.log.depth()
        );
        if let Some(stack) = &process.stack {
            ensure!(
                stack.open_records() == 0,
                "{} records on the board once quiet",
                stack.open_records()
            );
        }
        for slot in &process.slots {
            if let Slot::Running(running) = slot {
                let in_flight = DestinationStats::get(&running.stats.in_flight);
                ensure!(in_flight == 0, "{in_flight} in flight once quiet");
            }
        }
        Ok(())
    }

    /// The disabled destinations stay disabled while the others settle: the walk goes on
    /// past one whose `give_up_after` has passed (it counts as failed), and waits for one
    /// without.
    fn settle_with_disabled(&mut self) -> Result<(), String> {
        let disabled: Vec<bool> = (0..self.config.len())
            .map(|pos| matches!(self.process().slots[pos], Slot::Parked(_)))
            .collect();
        if !disabled.contains(&true) {
            return Ok(());
        }
        for world in &self.worlds {
            lock(world).health = Health::Up;
        }
        let longest = self
            .config
            .iter()
            .filter_map(|d| d.give_up_ms)
            .max()
            .unwrap_or(0);
        std::thread::sleep(Duration::from_millis(longest + 1));
        let epoch = self.epochs.len() - 1;
        for _ in 0..ROUNDS {
            if self.round()? {
                break;
            }
        }
        if self.epochs.len() - 1 != epoch {
            return Ok(()); // a planned crash restarted everything
        }
        // A destination's cursor stops at a record the walk waits for there (a disabled
        // destination before it, without give_up_after_ms): the records after it wait too.
        let mut behind_a_wait = vec![false; self.config.len()];
        for record in self.records.iter().filter(|r| r.seq.is_some()) {
            let mut ended = false;
            for (pos, (dest, disabled)) in self.config.iter().zip(&disabled).enumerate() {
                let name = NAMES[dest.name];
                let did = self.did(epoch, dest, record.n);
                let taken = takes(dest, record.spec) && !ended;
                let status = if let Some(status) = did.known_at_start(taken, ended) {
                    status
                } else if !taken {
                    Status::Passed
                } else if did.delivered {
                    Status::Ok
                } else if did.refused {
                    Status::Failed
                } else if *disabled || behind_a_wait[pos] {
                    // The walk waits for it, and so do the later destinations taking it (a
                    // destination held back by an earlier record has not read this one,
                    // so it has not given it up either).
                    for (later, other) in self.config.iter().enumerate().skip(pos + 1) {
                        behind_a_wait[later] |= takes(other, record.spec);
                    }
                    break;
                } else if dest.give_up_ms.is_some() {
                    Status::Failed
                } else {
                    return Err(format!(
                        "id-{} never reached {name} while a destination before it is disabled\n{}",
                        record.n,
                        self.history(record)
                    ));
                };
                ended |= status == Status::Ok && ends_walk(dest.flag);
            }
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------
    // The checks.

    fn did(&self, epoch: usize, dest: &Dest, n: u64) -> Did {
        let world = lock(&self.worlds[dest.name]);
        Did {
            confirmed: self.epochs[epoch].confirmed.contains(&(dest.name, n)),
            delivered: world.delivered_in(epoch, n),
            refused: world.refusals.contains(&(epoch, n)),
            refused_before: self.epochs[epoch].failed.contains(&(dest.name, n)),
        }
    }

    /// What `record` came to in `epoch`, from what each destination did then.
    fn walk_in(&self, epoch: usize, record: &Rec) -> Result<Walk, String> {
        walk(&self.epochs[epoch].config, record, |dest| {
            self.did(epoch, dest, record.n)
        })
    }

    /// The first epoch by whose end every destination taking `record` (or holding a
    /// failure of it) had confirmed it, else the last: its verdict was made there.
    fn final_epoch(&self, record: &Rec) -> usize {
        let last = self.epochs.len() - 1;
        (record.epoch..last)
            .find(|&e| {
                // Decided there: every destination of that epoch taking the record (or
                // holding a failure of it) had confirmed it by its end. One that does
                // not take it passes it whatever it confirmed (a disabled one may never
                // confirm it).
                let (epoch, next) = (&self.epochs[e], &self.epochs[e + 1]);
                let key = |d: &Dest| (d.name, record.n);
                epoch.config.iter().all(|d| {
                    !(takes(d, record.spec) || epoch.failed.contains(&key(d)))
                        || next.confirmed.contains(&key(d))
                        || epoch.confirmed_at_end.contains(&key(d))
                })
            })
            .unwrap_or(last)
    }

    /// A reload after `epoch` removed the only destinations that had not confirmed it.
    fn settled_by_removal(&self, epoch: usize, record: &Rec) -> bool {
        let this = &self.epochs[epoch];
        this.end == End::Reload
            && self.epochs.get(epoch + 1).is_some_and(|next| {
                let kept = |name: usize| next.config.iter().any(|d| d.name == name);
                this.config
                    .iter()
                    .any(|d| !kept(d.name) && !this.confirmed_at_end.contains(&(d.name, record.n)))
                    && next
                        .config
                        .iter()
                        .all(|d| next.confirmed.contains(&(d.name, record.n)))
            })
    }

    fn dead_letters(&self, epoch: usize, n: u64) -> Vec<&BTreeSet<usize>> {
        self.epochs[epoch]
            .dead
            .iter()
            .filter(|(m, _)| *m == n)
            .map(|(_, named)| named)
            .collect()
    }

    fn check_records(&self) -> Result<(), String> {
        for (name, world) in NAMES.iter().zip(&self.worlds) {
            check_no_doubles(&lock(world)).map_err(|error| format!("{name}: {error}"))?;
        }
        for record in &self.records {
            let id = format!("id-{}", record.n);
            let letters: usize = (0..self.epochs.len())
                .map(|e| self.dead_letters(e, record.n).len())
                .sum();
            if record.seq.is_none() {
                let arrived = self
                    .worlds
                    .iter()
                    .any(|w| lock(w).arrivals.iter().any(|a| a.n == record.n));
                ensure!(
                    !arrived && letters == 0,
                    "{id} was never appended, yet it went somewhere"
                );
                continue;
            }
            let history = || self.history(record);
            self.check_verdicts(record)
                .map_err(|e| format!("{id}: {e}\n{}", history()))?;
            self.check_truth(record)
                .map_err(|e| format!("{id}: {e}\n{}", history()))?;
            self.check_kept_failures(record)
                .map_err(|e| format!("{id}: {e}\n{}", history()))?;
        }
        Ok(())
    }

    /// What happened to `record`, epoch by epoch (for a failure's message).
    fn history(&self, record: &Rec) -> String {
        let mut text = format!("appended in epoch {} as {:?}", record.epoch, record.spec);
        for (e, epoch) in self.epochs.iter().enumerate().skip(record.epoch) {
            let names = |pick: &dyn Fn(&Dest) -> bool| -> Vec<&str> {
                epoch
                    .config
                    .iter()
                    .filter(|d| pick(d))
                    .map(|d| NAMES[d.name])
                    .collect()
            };
            let did = |d: &Dest| self.did(e, d, record.n);
            text += &format!(
                "\nepoch {e} ({:?}): config {:?}; confirmed at start {:?}; delivered {:?}; refused {:?}; dead letters {:?}",
                epoch.end,
                epoch.config.iter().map(|d| (NAMES[d.name], d.flag, d.give_up_ms)).collect::<Vec<_>>(),
                names(&|d| did(d).confirmed),
                names(&|d| did(d).delivered),
                names(&|d| did(d).refused),
                self.dead_letters(e, record.n),
            );
        }
        text
    }

    /// A failure a ledger kept at an epoch's start happened: the destination refused the
    /// record in an earlier epoch, or could give it up then (a limit, or disabled).
    fn check_kept_failures(&self, record: &Rec) -> Result<(), String> {
        for (e, epoch) in self.epochs.iter().enumerate() {
            for &(name, n) in &epoch.failed {
                if n != record.n {
                    continue;
                }
                let world = lock(&self.worlds[name]);
                let justified = (record.epoch..e).any(|earlier| {
                    world.refusals.contains(&(earlier, n))
                        || self.epochs[earlier]
                            .config
                            .iter()
                            .any(|d| d.name == name && d.give_up_ms.is_some())
                });
                ensure!(
                    justified,
                    "{} kept a failure at the start of epoch {e} it never had",
                    NAMES[name]
                );
            }
        }
        Ok(())
    }

    /// The verdict of the epoch that decided it, and the dead letters of every epoch.
    fn check_verdicts(&self, record: &Rec) -> Result<(), String> {
        let last = self.final_epoch(record);
        let mut lettered = Vec::new();
        for e in record.epoch..=last {
            let letters = self.dead_letters(e, record.n);
            ensure!(
                letters.len() <= 1,
                "dead-lettered {} times in epoch {e}",
                letters.len()
            );
            let walked = self.walk_in(e, record);
            if e == last {
                let walk = if letters.is_empty() && self.settled_by_removal(last, record) {
                    // The destination that had not dealt with it was removed: the others
                    // decided it.
                    let config = &self.epochs[last + 1].config;
                    walk(config, record, |dest| self.did(last, dest, record.n))?
                } else {
                    walked?
                };
                // The dead-letter file keeps one letter per record (a letter naming a
                // destination already named for it is not written again): an earlier
                // epoch's letter for it stands for this one.
                let earlier = lettered.iter().any(|&e| {
                    self.dead_letters(e, record.n)
                        .iter()
                        .any(|named| !walk.failed.is_disjoint(named))
                });
                match (walk.success, letters.first()) {
                    (true, None) => {}
                    (false, None) if earlier => {}
                    (false, Some(named)) => ensure!(
                        **named == walk.failed,
                        "dead letter names {named:?}, the walk failed at {:?}",
                        walk.failed
                    ),
                    (success, letter) => {
                        return Err(format!(
                            "final status success = {success} ({:?}), dead letter {letter:?}",
                            walk.statuses
                        ))
                    }
                }
                let someone_has_it = self
                    .worlds
                    .iter()
                    .any(|w| lock(w).arrivals.iter().any(|a| a.n == record.n));
                // Counted delivered (by a confirmation) yet nowhere: lost, unless an
                // earlier epoch dead-lettered it, or a reload changed the rules under it
                // (a destination that passed it over then is not handed it again).
                let reloaded = (record.epoch..last).any(|e| self.epochs[e].end == End::Reload);
                ensure!(
                    reloaded
                        || !walk.success
                        || !walk.statuses.contains(&Status::Ok)
                        || someone_has_it
                        || !lettered.is_empty(),
                    "succeeded ({:?}), no destination has it and it was never dead-lettered",
                    walk.statuses
                );
            } else if let Some(named) = letters.first() {
                let walk = walked?;
                ensure!(
                    !walk.success && **named == walk.failed,
                    "epoch {e} dead letter names {named:?}, its walk: {:?}",
                    walk.statuses
                );
            }
            if !letters.is_empty() {
                lettered.push(e);
            }
        }
        for pair in lettered.windows(2) {
            let crashed = (pair[0]..pair[1]).any(|e| {
                self.epochs[e].end == End::Crash || !ONE_DEAD_LETTER_ACROSS_RELOADS_AND_STOPS
            });
            ensure!(
                crashed,
                "dead-lettered in epochs {} and {} with no crash between ({:?})",
                pair[0],
                pair[1],
                self.epochs[pair[0]..pair[1]]
                    .iter()
                    .map(|e| e.end)
                    .collect::<Vec<_>>()
            );
        }
        Ok(())
    }

    /// Across clean stops alone (one configuration, nothing lost), what every destination
    /// did over all of them makes one walk: one dead letter iff it failed.
    fn check_truth(&self, record: &Rec) -> Result<(), String> {
        let last = self.final_epoch(record);
        let crossed = (record.epoch..last).any(|e| self.epochs[e].end != End::Stop);
        if crossed || self.settled_by_removal(last, record) {
            return Ok(());
        }
        let span = record.epoch..=last;
        let walk = walk(&self.epochs[last].config, record, |dest| {
            let world = lock(&self.worlds[dest.name]);
            Did {
                confirmed: false,
                delivered: span.clone().any(|e| world.delivered_in(e, record.n)),
                refused: span
                    .clone()
                    .any(|e| world.refusals.contains(&(e, record.n))),
                refused_before: false,
            }
        })?;
        let letters: Vec<&BTreeSet<usize>> = span
            .clone()
            .flat_map(|e| self.dead_letters(e, record.n))
            .collect();
        let expected = usize::from(!walk.success);
        let again = letters.len() > expected && !ONE_DEAD_LETTER_ACROSS_RELOADS_AND_STOPS;
        ensure!(
            (letters.len() == expected || again)
                && letters.first().is_none_or(|named| {
                    **named == walk.failed
                        || (!ONE_DEAD_LETTER_ACROSS_RELOADS_AND_STOPS
                            && walk.failed.is_subset(named))
                }),
            "across clean stops: dead letters {letters:?}, what the destinations did: {:?}",
            walk.statuses
        );
        Ok(())
    }
}

fn check_no_doubles(world: &World) -> Result<(), String> {
    let mut last: BTreeMap<u64, &Arrival> = BTreeMap::new();
    for arrival in &world.arrivals {
        if let Some(before) = last.insert(arrival.n, arrival) {
            ensure!(
                before.crashes != arrival.crashes
                    || before.rebuilds != arrival.rebuilds
                    || before.life != arrival.life,
                "id-{} arrived twice with no crash or rebuild between ({before:?}, {arrival:?})",
                arrival.n
            );
        }
    }
    Ok(())
}

fn segment_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|listing| {
            listing
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                .count()
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------
// The reference: GnuGk's rules, from its manual's words.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Failed,
    /// Not taken: its rules leave the record out, or the walk ended before it.
    Passed,
}

/// What one destination did with one record (in an epoch, or over several).
struct Did {
    /// Confirmed in its ledger when the epoch began: counted delivered if the walk
    /// reaches it and its rules take the record, else passed over (what the stack
    /// documents).
    confirmed: bool,
    delivered: bool,
    refused: bool,
    /// Failed there in an earlier epoch (refused or given up), as its ledger kept it when
    /// this epoch began: the walk counts it failed without the record offered again.
    refused_before: bool,
}

impl Did {
    /// What the ledgers said when the epoch began: a failure kept there stands, confirmed
    /// or not, also when a reload changed the rules (unless the walk now ends before it);
    /// a confirmation is a delivery where the walk reaches it and its rules take it.
    fn known_at_start(&self, taken: bool, ended: bool) -> Option<Status> {
        if self.refused_before && !ended && !self.delivered {
            Some(Status::Failed)
        } else if self.confirmed {
            Some(if taken { Status::Ok } else { Status::Passed })
        } else {
            None
        }
    }
}

struct Walk {
    statuses: Vec<Status>,
    success: bool,
    failed: BTreeSet<usize>,
}

/// Its rules take the record: kinds, the missed-call rule (CDRs), the filter.
fn takes(dest: &Dest, spec: Spec) -> bool {
    if spec.cel && !dest.cel {
        return false;
    }
    let left_out = !spec.cel
        && match dest.missed {
            Missed::Include => false,
            Missed::Exclude => spec.missed,
            Missed::Only => !spec.missed,
        };
    !left_out
        && dest
            .internal
            .is_none_or(|internal| internal == spec.internal)
}

/// "sufficient: if an event is logged successfully, no remaining modules are
/// processed"; "alternative: if the module logs an event successfully, no remaining
/// modules are processed".
fn ends_walk(flag: ControlFlag) -> bool {
    matches!(flag, ControlFlag::Sufficient | ControlFlag::Alternative)
}

/// Walks the destinations in order. A destination reached whose rules take the record
/// and that neither delivered nor refused it must have given it up, which needs
/// `give_up_after`.
fn walk(config: &[Dest], record: &Rec, what: impl Fn(&Dest) -> Did) -> Result<Walk, String> {
    let mut ended = false;
    let mut statuses = Vec::new();
    for dest in config {
        let name = NAMES[dest.name];
        let did = what(dest);
        let taken = takes(dest, record.spec) && !ended;
        let status = if let Some(status) = did.known_at_start(taken, ended) {
            status
        } else if !taken {
            ensure!(
                !did.delivered && !did.refused,
                "{name} dealt with it (delivered {}, refused {}) though {}",
                did.delivered,
                did.refused,
                if ended {
                    "the walk ended before it"
                } else {
                    "its rules leave it out"
                }
            );
            Status::Passed
        } else if did.delivered {
            Status::Ok
        } else if did.refused {
            Status::Failed
        } else {
            ensure!(
                dest.give_up_ms.is_some(),
                "never reached {name} (its rules take it, the walk reaches it, no give_up_after)"
            );
            Status::Failed
        };
        ended |= status == Status::Ok && ends_walk(dest.flag);
        statuses.push(status);
    }
    let flags: Vec<ControlFlag> = config.iter().map(|d| d.flag).collect();
    let failed = config
        .iter()
        .zip(&statuses)
        .filter(|(_, s)| **s == Status::Failed)
        .map(|(d, _)| d.name)
        .collect();
    Ok(Walk {
        success: final_status(&flags, &statuses),
        statuses,
        failed,
    })
}

/// The final status after the walk (true: success):
/// - "required: if the module fails to log an event, the final status is set to failure";
/// - "optional: the final status is not affected by success or failure (except when the
///   module is last on the list)";
/// - "sufficient: ... otherwise the final status is set to failure";
/// - "alternative: ... otherwise the final status is not modified".
///
/// "Last on the list" is the last module that logged the event (one that did not take
/// it, or was not reached, answers `next` and is skipped): the final status is also that
/// module's result, for optional and alternative alike.
fn final_status(flags: &[ControlFlag], statuses: &[Status]) -> bool {
    let mut failure = false;
    let mut last = None;
    for (flag, status) in flags.iter().zip(statuses) {
        if *status == Status::Passed {
            continue;
        }
        if *status == Status::Failed
            && matches!(flag, ControlFlag::Required | ControlFlag::Sufficient)
        {
            failure = true;
        }
        last = Some(*status);
    }
    !failure && last != Some(Status::Failed)
}

fn run(config: Vec<Dest>, interval_sync: bool, steps: Vec<Step>) -> Result<(), String> {
    let mut case = Case::new(config, interval_sync)?;
    for step in steps {
        case.step(step)?;
    }
    case.finish()?;
    case.check_records()
}

#[test]
fn reference_follows_gnugk_sample_configurations() {
    use ControlFlag::{Alternative, Optional, Required, Sufficient};
    use Status::{Failed, Ok, Passed};
    // Sample #1: RADIUS optional fails, the file (required) logs: success.
    assert!(final_status(&[Optional, Required], &[Failed, Ok]));
    // Sample #2: RADIUS alternative fails, the file (sufficient) logs: success; both fail:
    // failure.
    assert!(final_status(&[Alternative, Sufficient], &[Failed, Ok]));
    assert!(!final_status(&[Alternative, Sufficient], &[Failed, Failed]));
    // An optional module last on the list decides.
    assert!(!final_status(&[Required, Optional], &[Ok, Failed]));
    // A required failure stands even when a sufficient one logs after it.
    assert!(!final_status(&[Required, Sufficient], &[Failed, Ok]));
    assert!(final_status(&[Required], &[Passed]));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(100)
    ))]

    #[test]
    fn engine_keeps_gnugk_verdicts_through_outages_reloads_and_crashes(
        config in configuration(),
        interval_sync in any::<bool>(),
        steps in proptest::collection::vec(step(), 1..40),
    ) {
        run(config, interval_sync, steps).map_err(TestCaseError::fail)?;
    }
}
