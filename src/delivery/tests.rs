//! The engine with destinations of the tests' own (no Kafka): every destination gets
//! every record once and in order from its own cursor, the log keeps a record until
//! all of them confirmed it, and a stopped destination goes on where it stopped.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::destination::{Destination, Offer, Outcome};
use super::feeder::{FeederSettings, Rules};
use super::log::tests::{append, settings, TempDir};
use super::log::{Log, StoredRecord};
use super::{Delivery, Start};

/// What a memory destination did, shared with the test.
#[derive(Default)]
struct Seen {
    delivered: Vec<String>,
    /// Record ids refused for good.
    refuse: Vec<String>,
    /// Takes nothing while set.
    full: bool,
    /// Breaks (as a fatal producer error) once when this many records were taken.
    break_at: Option<usize>,
    /// Panics once when this many records were taken (a destination's bug).
    panic_at: Option<usize>,
    /// Takes records and never confirms them; its flush waits out its timeout, as with
    /// a broker that does not answer.
    silent: bool,
    /// Records taken and never confirmed (silent).
    unanswered: usize,
    /// Runs on the pass thread the destinations that never wait share.
    shared: bool,
    /// The thread that offered it its last record.
    thread: Option<std::thread::ThreadId>,
    /// Its feeder's passes (one collect each).
    passes: usize,
}

struct MemoryDestination {
    name: String,
    seen: Arc<Mutex<Seen>>,
    taken: VecDeque<(u64, String)>,
    broken: bool,
    count: usize,
}

impl MemoryDestination {
    fn boxed(name: &str, seen: &Arc<Mutex<Seen>>) -> Box<dyn Destination> {
        Box::new(Self {
            name: name.into(),
            seen: Arc::clone(seen),
            taken: VecDeque::new(),
            broken: false,
            count: 0,
        })
    }
}

impl Destination for MemoryDestination {
    fn name(&self) -> &str {
        &self.name
    }

    fn offer(&mut self, record: &StoredRecord<'_>) -> Offer {
        let mut seen = self.seen.lock().unwrap();
        if seen.full || self.broken {
            return Offer::Full;
        }
        if seen.refuse.iter().any(|id| id == record.record_id) {
            return Offer::Refused("refused by the test".into());
        }
        self.count += 1;
        if seen.panic_at == Some(self.count) {
            seen.panic_at = None;
            drop(seen);
            panic!("a destination's bug (the test's)");
        }
        if seen.break_at == Some(self.count) {
            seen.break_at = None;
            self.broken = true;
            return Offer::Full;
        }
        if seen.silent {
            seen.unanswered += 1;
        }
        seen.thread = Some(std::thread::current().id());
        self.taken
            .push_back((record.seq, record.record_id.to_string()));
        Offer::Taken
    }

    fn collect(&mut self, outcomes: &mut Vec<(u64, Outcome)>) {
        self.seen.lock().unwrap().passes += 1;
        if self.broken || self.seen.lock().unwrap().silent {
            return;
        }
        let mut seen = self.seen.lock().unwrap();
        for (seq, id) in self.taken.drain(..) {
            seen.delivered.push(id);
            outcomes.push((seq, Outcome::Delivered));
        }
    }

    fn broken(&mut self) -> Option<String> {
        self.broken.then(|| "broken by the test".to_string())
    }

    fn rebuild(&mut self) -> Result<(), String> {
        // What it held is gone with it: the feeder offers it again.
        self.taken.clear();
        self.broken = false;
        Ok(())
    }

    fn in_flight(&self) -> u64 {
        self.taken.len() as u64
    }

    fn flush(&mut self, timeout: Duration) {
        if self.seen.lock().unwrap().silent && !self.taken.is_empty() {
            std::thread::sleep(timeout);
        }
    }

    fn describe(&self) -> String {
        format!("memory {}", self.name)
    }

    fn never_waits(&self) -> bool {
        self.seen.lock().unwrap().shared
    }
}

fn memory(shared: bool) -> Arc<Mutex<Seen>> {
    Arc::new(Mutex::new(Seen {
        shared,
        ..Seen::default()
    }))
}

/// A test run twice: its destinations on feeder threads of their own, then on the
/// shared pass thread.
macro_rules! both_ways {
    ($name:ident) => {
        mod $name {
            #[test]
            fn on_own_threads() {
                super::$name(false)
            }

            #[test]
            fn on_the_pass_thread() {
                super::$name(true)
            }
        }
    };
}

const FAST: FeederSettings = FeederSettings {
    batch_window: Duration::from_millis(5),
    flush_timeout: Duration::from_millis(100),
};

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn ids(range: std::ops::Range<u64>) -> Vec<String> {
    range.map(|n| format!("id-{n}")).collect()
}

fn delivered(seen: &Arc<Mutex<Seen>>) -> Vec<String> {
    seen.lock().unwrap().delivered.clone()
}

/// A log with one memory destination named `global`, set up by `prepare`.
fn one_destination(
    tag: &str,
    prepare: impl FnOnce(&mut Seen),
) -> (TempDir, Arc<Log>, Delivery, Arc<Mutex<Seen>>) {
    let dir = TempDir::new(tag);
    let log = Arc::new(Log::open(settings(&dir.0)).unwrap());
    let mut delivery = Delivery::new(Arc::clone(&log));
    let seen = Arc::<Mutex<Seen>>::default();
    prepare(&mut seen.lock().unwrap());
    delivery
        .start(MemoryDestination::boxed("global", &seen), FAST)
        .unwrap();
    (dir, log, delivery, seen)
}

/// Appends records `range`, then waits until each arrived at least once.
fn append_and_wait_for_all(log: &Log, seen: &Arc<Mutex<Seen>>, range: std::ops::Range<u64>) {
    for n in range.clone() {
        append(log, n).unwrap();
    }
    wait_for("everything arrived", || {
        let got = delivered(seen);
        ids(range.clone()).iter().all(|id| got.contains(id))
    });
}

both_ways!(two_destinations_each_get_every_record_once_in_order);
fn two_destinations_each_get_every_record_once_in_order(shared: bool) {
    let dir = TempDir::new("two");
    let log = Arc::new(Log::open(settings(&dir.0)).unwrap());
    let mut delivery = Delivery::new(Arc::clone(&log));
    let (a, b) = (memory(shared), memory(shared));
    delivery
        .start(MemoryDestination::boxed("a", &a), FAST)
        .unwrap();
    delivery
        .start(MemoryDestination::boxed("b", &b), FAST)
        .unwrap();
    for n in 0..2000 {
        append(&log, n).unwrap();
    }
    wait_for("both have everything", || {
        delivered(&a).len() == 2000 && delivered(&b).len() == 2000
    });
    assert_eq!(delivered(&a), ids(0..2000));
    assert_eq!(delivered(&b), ids(0..2000));
    let thread = |seen: &Arc<Mutex<Seen>>| seen.lock().unwrap().thread;
    assert_eq!(
        thread(&a) == thread(&b),
        shared,
        "destinations that never wait share one thread, the others have their own"
    );
    wait_for("the log is empty", || log.depth().0 == 0);
    delivery.shutdown();
}

both_ways!(log_keeps_records_until_the_slowest_destination_confirms);
fn log_keeps_records_until_the_slowest_destination_confirms(shared: bool) {
    let dir = TempDir::new("slow");
    let log = Arc::new(Log::open(settings(&dir.0)).unwrap());
    let mut delivery = Delivery::new(Arc::clone(&log));
    let (fast, slow) = (memory(shared), memory(shared));
    slow.lock().unwrap().full = true;
    delivery
        .start(MemoryDestination::boxed("fast", &fast), FAST)
        .unwrap();
    delivery
        .start(MemoryDestination::boxed("slow", &slow), FAST)
        .unwrap();
    for n in 0..300 {
        append(&log, n).unwrap();
    }
    wait_for("the fast one has everything", || {
        delivered(&fast).len() == 300
    });
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(log.depth().0, 300, "the slow one has confirmed nothing");
    slow.lock().unwrap().full = false;
    wait_for("the slow one has everything", || {
        delivered(&slow).len() == 300
    });
    assert_eq!(delivered(&slow), ids(0..300));
    wait_for("the log is empty", || log.depth().0 == 0);
    delivery.shutdown();
}

both_ways!(stopped_destination_goes_on_where_it_stopped);
fn stopped_destination_goes_on_where_it_stopped(shared: bool) {
    let dir = TempDir::new("stop");
    let log = Arc::new(Log::open(settings(&dir.0)).unwrap());
    let mut delivery = Delivery::new(Arc::clone(&log));
    let (keep, paused) = (memory(shared), memory(shared));
    delivery
        .start(MemoryDestination::boxed("keep", &keep), FAST)
        .unwrap();
    delivery
        .start(MemoryDestination::boxed("paused", &paused), FAST)
        .unwrap();
    for n in 0..100 {
        append(&log, n).unwrap();
    }
    wait_for("the paused one has the first 100", || {
        delivered(&paused).len() == 100
    });
    assert_eq!(delivery.stop("paused"), Some(0));
    for n in 100..250 {
        append(&log, n).unwrap();
    }
    wait_for("the other one has everything", || {
        delivered(&keep).len() == 250
    });
    delivery
        .start(MemoryDestination::boxed("paused", &paused), FAST)
        .unwrap();
    wait_for("the paused one caught up", || {
        delivered(&paused).len() == 250
    });
    assert_eq!(
        delivered(&paused),
        ids(0..250),
        "nothing lost, nothing doubled"
    );
    delivery.shutdown();
}

#[test]
fn refused_record_is_dead_lettered_and_the_rest_flows() {
    let (_dir, log, mut delivery, seen) =
        one_destination("refuse", |seen| seen.refuse.push("id-3".into()));
    for n in 0..10 {
        append(&log, n).unwrap();
    }
    wait_for("the rest arrived", || delivered(&seen).len() == 9);
    wait_for("the log is empty", || log.depth().0 == 0);
    let text = std::fs::read_to_string(delivery.dead_letter_path()).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(line["record_id"], "id-3");
    assert_eq!(line["reason"], "refused by the test");
    assert_eq!(line["destination"], "global");
    assert_eq!(line["payload"], "{\"n\":3}");
    delivery.shutdown();
}

both_ways!(broken_destination_is_rebuilt_and_loses_nothing);
fn broken_destination_is_rebuilt_and_loses_nothing(shared: bool) {
    let (_dir, log, mut delivery, seen) = one_destination("broken", |seen| {
        seen.break_at = Some(40);
        seen.shared = shared;
    });
    append_and_wait_for_all(&log, &seen, 0..100);
    let statuses = delivery.statuses();
    assert!(super::feeder::DestinationStats::get(&statuses[0].stats.rebuilds) >= 1);
    assert!(
        super::feeder::DestinationStats::get(&statuses[0].stats.failed) == 0,
        "a broken destination never dead-letters"
    );
    delivery.shutdown();
}

#[test]
fn records_wait_across_a_restart_and_arrive_once() {
    let dir = TempDir::new("restart");
    let seen = Arc::<Mutex<Seen>>::default();
    {
        let log = Arc::new(Log::open(settings(&dir.0)).unwrap());
        let mut delivery = Delivery::new(Arc::clone(&log));
        seen.lock().unwrap().full = true;
        delivery
            .start(MemoryDestination::boxed("global", &seen), FAST)
            .unwrap();
        for n in 0..500 {
            append(&log, n).unwrap();
        }
        delivery.shutdown();
    }
    seen.lock().unwrap().full = false;
    let log = Arc::new(Log::open(settings(&dir.0)).unwrap());
    let mut delivery = Delivery::new(Arc::clone(&log));
    delivery
        .start(MemoryDestination::boxed("global", &seen), FAST)
        .unwrap();
    wait_for("everything arrived", || delivered(&seen).len() == 500);
    assert_eq!(delivered(&seen), ids(0..500));
    delivery.shutdown();
}

both_ways!(a_panicking_destination_does_not_stop_delivery);
fn a_panicking_destination_does_not_stop_delivery(shared: bool) {
    let (_dir, log, mut delivery, seen) = one_destination("panic", |seen| {
        seen.panic_at = Some(30);
        seen.shared = shared;
    });
    append_and_wait_for_all(&log, &seen, 0..100);
    let statuses = delivery.statuses();
    assert_eq!(
        super::feeder::DestinationStats::get(&statuses[0].stats.panics),
        1
    );
    assert!(statuses[0]
        .stats
        .running
        .load(std::sync::atomic::Ordering::Acquire));
    delivery.shutdown();
}

fn all_confirmed(delivery: &Delivery) -> bool {
    delivery.statuses().iter().all(|status| status.waiting == 0)
}

/// Starts `[kafka] control = alternative, give_up_after_ms = 200` and `[file] control =
/// sufficient` on `log`, with the memory destinations' records in `kafka` and `file`.
fn failover_pair(log: &Arc<Log>, kafka: &Arc<Mutex<Seen>>, file: &Arc<Mutex<Seen>>) -> Delivery {
    use super::feeder::Rules;
    use super::stack::{Member, Stack};
    use crate::routing::control::ControlFlag;
    use crate::routing::{RecordKinds, Route};

    let mut delivery = Delivery::new(Arc::clone(log));
    let everything = RecordKinds {
        cdr: true,
        cel: true,
        control: true,
    };
    let stack = Stack::new(vec![
        Member::new(ControlFlag::Alternative, Route::plain("kafka", everything)),
        Member::new(ControlFlag::Sufficient, Route::plain("file", everything)),
    ]);
    let mut kafka_rules = Rules::everything("kafka");
    kafka_rules.give_up_after = Some(Duration::from_millis(200));
    kafka_rules.stack = Some((Arc::clone(&stack), 0));
    let mut file_rules = Rules::everything("file");
    file_rules.stack = Some((Arc::clone(&stack), 1));
    delivery
        .start_with_rules(MemoryDestination::boxed("kafka", kafka), FAST, kafka_rules)
        .unwrap();
    delivery
        .start_with_rules(MemoryDestination::boxed("file", file), FAST, file_rules)
        .unwrap();
    delivery
}

fn append_range(log: &Log, range: std::ops::Range<u64>) {
    range.for_each(|n| {
        append(log, n).unwrap();
    });
}

/// `[kafka] control = alternative, give_up_after_ms` + `[file] control = sufficient`:
/// the file gets exactly the records the first could not take in time.
#[test]
fn failover_destination_gets_exactly_what_the_first_gave_up() {
    let dir = TempDir::new("failover");
    let log = Arc::new(Log::open(settings(&dir.0)).unwrap());
    // As Kafka's: on the pass thread, beside a file on its own.
    let kafka = memory(true);
    let file = Arc::<Mutex<Seen>>::default();
    kafka.lock().unwrap().full = true;
    let delivery = failover_pair(&log, &kafka, &file);

    append_range(&log, 0..5);
    wait_for("the file has the 5 records kafka gave up", || {
        delivered(&file).len() == 5
    });
    assert!(delivered(&kafka).is_empty());
    kafka.lock().unwrap().full = false;
    append_range(&log, 5..10);
    wait_for("kafka has the next 5", || delivered(&kafka).len() == 5);
    wait_for("everything confirmed", || all_confirmed(&delivery));
    assert_eq!(
        delivered(&file),
        ids(0..5),
        "the file got only what kafka gave up"
    );
    assert_eq!(delivered(&kafka), ids(5..10));
    assert!(
        !delivery.dead_letter_path().exists(),
        "nothing failed for good"
    );
}

/// After a restart, what either destination of a failover pair dealt with is not handed
/// to either again: the failures were confirmed once the verdict was in.
#[test]
fn failover_pair_after_a_restart_delivers_nothing_twice() {
    let dir = TempDir::new("failover-restart");
    // As Kafka's: on the pass thread, beside a file on its own.
    let kafka = memory(true);
    let file = Arc::<Mutex<Seen>>::default();
    {
        let log = Arc::new(Log::open(settings(&dir.0)).unwrap());
        kafka.lock().unwrap().full = true;
        let mut delivery = failover_pair(&log, &kafka, &file);
        append_range(&log, 0..5);
        wait_for("the file has what kafka gave up", || {
            delivered(&file).len() == 5
        });
        wait_for("everything confirmed", || all_confirmed(&delivery));
        delivery.shutdown();
    }
    kafka.lock().unwrap().full = false;
    let log = Arc::new(Log::open(settings(&dir.0)).unwrap());
    let delivery = failover_pair(&log, &kafka, &file);
    append_range(&log, 5..10);
    wait_for("kafka has the new records", || delivered(&kafka).len() == 5);
    wait_for("everything confirmed", || all_confirmed(&delivery));
    assert_eq!(
        delivered(&kafka),
        ids(5..10),
        "kafka never got the records it gave up"
    );
    assert_eq!(
        delivered(&file),
        ids(0..5),
        "the file got nothing twice, nothing new"
    );
}

/// Both destinations of a failover pair fail a record: it is dead-lettered once, with
/// both reasons.
#[test]
fn record_both_destinations_fail_is_dead_lettered_once_with_both_reasons() {
    use super::feeder::Rules;
    use super::stack::{Member, Stack};
    use crate::routing::control::ControlFlag;
    use crate::routing::{RecordKinds, Route};

    let dir = TempDir::new("both-fail");
    let log = Arc::new(Log::open(settings(&dir.0)).unwrap());
    let mut delivery = Delivery::new(Arc::clone(&log));
    let cdr = RecordKinds::CDR;
    let stack = Stack::new(vec![
        Member::new(ControlFlag::Alternative, Route::plain("kafka", cdr)),
        Member::new(ControlFlag::Sufficient, Route::plain("file", cdr)),
    ]);
    // As Kafka's: on the pass thread, beside a file on its own.
    let kafka = memory(true);
    let file = Arc::<Mutex<Seen>>::default();
    kafka.lock().unwrap().refuse = vec!["id-1".into()];
    file.lock().unwrap().refuse = vec!["id-1".into()];
    for (name, seen, index) in [("kafka", &kafka, 0), ("file", &file, 1)] {
        let mut rules = Rules::everything(name);
        rules.route = Route::plain(name, cdr);
        rules.stack = Some((Arc::clone(&stack), index));
        delivery
            .start_with_rules(MemoryDestination::boxed(name, seen), FAST, rules)
            .unwrap();
    }
    (0..3).for_each(|n| {
        append(&log, n).unwrap();
    });
    wait_for("everything settled", || all_confirmed(&delivery));
    assert_eq!(delivered(&kafka), ["id-0", "id-2"]);
    assert!(delivered(&file).is_empty(), "kafka took the others");
    let letters = std::fs::read_to_string(delivery.dead_letter_path()).unwrap();
    assert_eq!(letters.lines().count(), 1, "{letters}");
    assert!(letters.contains("id-1"), "{letters}");
    assert!(
        letters.contains("kafka: refused by the test; file: refused by the test"),
        "{letters}"
    );
}

/// Three destinations whose broker never answers, each holding `count` records.
fn three_silent(
    tag: &str,
    flush_timeout: Duration,
    count: u64,
    shared: bool,
) -> (TempDir, Delivery) {
    let dir = TempDir::new(tag);
    let log = Arc::new(Log::open(settings(&dir.0)).unwrap());
    let mut delivery = Delivery::new(Arc::clone(&log));
    let feeder = FeederSettings {
        flush_timeout,
        ..FAST
    };
    let seen: Vec<Arc<Mutex<Seen>>> = (0..3)
        .map(|_| {
            Arc::new(Mutex::new(Seen {
                silent: true,
                shared,
                ..Seen::default()
            }))
        })
        .collect();
    for (name, seen) in ["a", "b", "c"].iter().zip(&seen) {
        delivery
            .start(MemoryDestination::boxed(name, seen), feeder)
            .unwrap();
    }
    for n in 0..count {
        append(&log, n).unwrap();
    }
    wait_for("every destination took every record", || {
        seen.iter()
            .all(|s| s.lock().unwrap().unanswered == count as usize)
    });
    (dir, delivery)
}

both_ways!(destinations_flush_side_by_side_so_a_stop_takes_one_flush_timeout_not_one_each);
fn destinations_flush_side_by_side_so_a_stop_takes_one_flush_timeout_not_one_each(shared: bool) {
    let (_dir, mut delivery) = three_silent("side-by-side", Duration::from_secs(1), 10, shared);
    let started = Instant::now();
    let unconfirmed = delivery.shutdown();
    let took = started.elapsed();
    assert_eq!(unconfirmed, 30, "what no broker confirmed stays in the log");
    // One after the other they would take 3 s.
    assert!(took < Duration::from_millis(2500), "the stop took {took:?}");
}

both_ways!(a_stop_within_a_budget_cuts_every_flush_to_what_is_left);
fn a_stop_within_a_budget_cuts_every_flush_to_what_is_left(shared: bool) {
    let (_dir, mut delivery) = three_silent("budget", Duration::from_secs(5), 10, shared);
    let started = Instant::now();
    let unconfirmed = delivery.shutdown_within(Some(Duration::from_millis(300)));
    let took = started.elapsed();
    assert_eq!(unconfirmed, 30);
    // Each destination's own flush_timeout is 5 s.
    assert!(took < Duration::from_secs(3), "the stop took {took:?}");
}

#[test]
fn an_install_that_cannot_complete_leaves_everything_running_as_it_was() {
    let dir = TempDir::new("install-refused");
    let log = Arc::new(Log::open(settings(&dir.0)).unwrap());
    let mut delivery = Delivery::new(Arc::clone(&log));
    let (first, replacement, added) = (Arc::default(), Arc::default(), Arc::default());
    delivery
        .start(MemoryDestination::boxed("a", &first), FAST)
        .unwrap();
    append_and_wait_for_all(&log, &first, 0..10);
    // The new destination's ledger cannot be made: a folder holds its name.
    std::fs::create_dir(dir.0.join("b.ledger")).unwrap();
    let mut change = delivery.change();
    for (name, seen) in [("a", &replacement), ("b", &added)] {
        change.start.push(Start {
            destination: MemoryDestination::boxed(name, seen),
            rules: Rules::everything(name),
            settings: FAST,
        });
    }
    let error = delivery.install(change).unwrap_err();
    assert!(error.to_string().contains("'b'"), "{error}");
    assert_eq!(delivery.running_names(), ["a"]);
    // `a` was never stopped: the running feeder, not its replacement, takes what follows.
    append_and_wait_for_all(&log, &first, 10..20);
    assert!(delivered(&replacement).is_empty() && delivered(&added).is_empty());
    assert_eq!(delivered(&first), ids(0..20));
    delivery.shutdown();
}

both_ways!(a_feeder_waiting_out_its_window_is_not_woken_by_each_append);
/// A feeder passes once per window however many records come meanwhile: one whose records
/// are in flight, and an idle one (its rules leave every record out) woken by an append.
fn a_feeder_waiting_out_its_window_is_not_woken_by_each_append(shared: bool) {
    use crate::routing::{RecordKinds, Route};
    let dir = TempDir::new("window");
    let log = Arc::new(Log::open(settings(&dir.0)).unwrap());
    let mut delivery = Delivery::new(Arc::clone(&log));
    let (busy, idle) = (memory(shared), memory(shared));
    busy.lock().unwrap().silent = true;
    let window = FeederSettings {
        batch_window: Duration::from_millis(400),
        flush_timeout: Duration::from_millis(100),
    };
    delivery
        .start(MemoryDestination::boxed("busy", &busy), window)
        .unwrap();
    // Takes no CDR: it is idle between appends.
    let mut rules = Rules::everything("idle");
    let cel_only = RecordKinds {
        cdr: false,
        cel: true,
        control: false,
    };
    rules.route = Route::plain("idle", cel_only);
    delivery
        .start_with_rules(MemoryDestination::boxed("idle", &idle), window, rules)
        .unwrap();
    append(&log, 0).unwrap();
    wait_for("the first record is in flight", || {
        busy.lock().unwrap().unanswered == 1
    });
    let before = busy.lock().unwrap().passes;
    let began = Instant::now();
    for n in 1..=60 {
        append(&log, n).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let windows = began.elapsed().as_millis() as usize / 400 + 2;
    let passes = busy.lock().unwrap().passes - before;
    assert!(
        passes <= windows,
        "{passes} passes in {} windows of 60 appends",
        windows - 2
    );
    let idle_passes = idle.lock().unwrap().passes;
    assert!(
        idle_passes > 0 && idle_passes <= windows + 2,
        "the idle one: {idle_passes} passes in {} windows of 60 appends",
        windows - 2
    );
    delivery.shutdown();
}
