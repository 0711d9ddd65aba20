//! `module unload` and shutdown while a call is up, with real parts: Asterisk 22 from Debian
//! unstable (in the root `make sandbox` builds) and a tansu broker. Asterisk refuses to let a
//! CDR backend go while CDRs are active; the module refuses the unload with it and keeps
//! running, so the call's CDR still arrives when the call ends. Once no call is up, the
//! unload goes through and leaves nothing mapped. Stopping Asterisk during a call loses
//! nothing either: `core stop gracefully` waits for the calls and unloads the module;
//! `core stop now` and SIGTERM exit without unloading it, and its exit handler delivers
//! the CDRs Asterisk posted on the way out.
//!
//! One Asterisk runs at a time (they share the root), so the tests take a lock.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use support::{cdr_kafka_conf, one_asterisk, Asterisk, Message, Root, Tansu};

const WAIT: Duration = Duration::from_secs(30);
const HOLD_SECS: i64 = 8;

/// A call that stays up: answered, then HOLD_SECS of silence, then it ends by itself.
fn held_call_dialplan() -> String {
    format!("[cdrk-held]\nexten => held,1,Answer()\n same => n,Wait({HOLD_SECS})\n")
}

/// Starts Asterisk with the module (CDRs to `calls`, CEL to `cel`, `global` added to
/// [global]) and places a held call; returns once both halves of the call are up.
fn start_with_a_call_up<'r>(root: &'r Root, tansu: &Tansu, global: &str) -> Asterisk<'r> {
    tansu.create_topic("calls");
    tansu.create_topic("cel");
    let conf = cdr_kafka_conf(
        &tansu.brokers(),
        "calls",
        &format!("{global}[cel]\nenabled = yes\ntopic = cel\n"),
    );
    let asterisk = Asterisk::start(root, &conf, "UTC");
    asterisk.load_module();
    asterisk.add_dialplan(&held_call_dialplan());
    asterisk.rx("channel originate Local/held@cdrk-held application Wait 60");
    asterisk.wait_for_channels(2, WAIT);
    asterisk
}

/// The CDR of the held call's dialplan half (`;2`), once it is on the topic.
fn held_call_cdr(root: &Root, tansu: &Tansu) -> Option<Message> {
    root.consume(&tansu.brokers(), "calls", 2, WAIT)
        .into_iter()
        .find(|m| {
            let json = m.json();
            json["dcontext"] == "cdrk-held"
                && json["channel"].as_str().is_some_and(|c| c.ends_with(";2"))
        })
}

/// Whether the call's last CEL event (LINKEDID_END) reaches the `cel` topic within WAIT.
fn linkedid_end_arrives(root: &Root, tansu: &Tansu) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        let events = root.read_topic(&tansu.brokers(), "cel");
        if events
            .iter()
            .any(|m| m.json()["eventname"] == "LINKEDID_END")
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    false
}

#[test]
fn unload_during_a_call_is_refused_and_the_call_s_cdr_arrives_when_it_ends() {
    let _one = one_asterisk();
    let root = Root::from_env();
    let tansu = Tansu::start();
    let asterisk = start_with_a_call_up(&root, &tansu, "");

    let out = asterisk.rx("module unload cdr_kafka.so");
    assert!(
        out.contains("Unable to unload resource cdr_kafka.so"),
        "{out}"
    );
    let modules = asterisk.rx("module show like cdr_kafka");
    assert!(modules.contains("cdr_kafka.so"), "still loaded: {modules}");
    assert!(asterisk.module_mapped());
    let log = asterisk.log_saying("cdr_kafka: unload refused: calls are still up");
    assert!(
        log.contains("Unable to unregister CDR backend kafka;")
            && log.contains("CDRs are still active"),
        "Asterisk says why, with the number of active CDRs:\n{log}"
    );
    assert!(
        log.contains("cdr_kafka: unload refused: calls are still up"),
        "the module says what happens next:\n{log}"
    );
    // Not suspended (a suspended backend receives nothing), and CEL kept going.
    let cdr_status = asterisk.rx("cdr show status");
    let backend = cdr_status.lines().find(|line| line.contains("kafka"));
    assert!(
        backend.is_some_and(|line| !line.contains("suspended")),
        "{cdr_status}"
    );
    assert!(asterisk.rx("cel show status").contains("kafka"));

    // The call ends by itself: its CDR arrives from the module that refused to go.
    asterisk.wait_for_no_channels(Duration::from_secs(HOLD_SECS as u64) + WAIT);
    let cdr = held_call_cdr(&root, &tansu)
        .unwrap_or_else(|| panic!("no CDR of the held call:\n{}", asterisk.log()));
    let json = cdr.json();
    assert_eq!(json["disposition"], "ANSWERED", "{json}");
    assert!(json["billsec"].as_i64().unwrap() >= HOLD_SECS - 1, "{json}");
    assert!(
        linkedid_end_arrives(&root, &tansu),
        "the call's CEL events after the refused unload: {:?}",
        root.read_topic(&tansu.brokers(), "cel")
    );

    // No call up: the unload goes through and the image is gone.
    let out = asterisk.rx("module unload cdr_kafka.so");
    assert!(out.contains("Unloaded cdr_kafka.so"), "{out}");
    assert!(
        !asterisk.module_mapped(),
        "the .so is still mapped after unload"
    );
    assert!(!asterisk.log().contains("Failure in dlclose"));
}

/// Batches wait a minute before they go: only a delivery at exit can bring the stopped
/// call's CDRs to the broker before the next start.
const HELD_BACK: &str = "linger_ms = 60000\n";

/// The held call's CDRs on the topic, and what Asterisk said.
fn held_call_cdrs(root: &Root, tansu: &Tansu) -> Vec<Message> {
    root.consume(&tansu.brokers(), "calls", 2, WAIT)
        .into_iter()
        .filter(|m| m.json()["dcontext"] == "cdrk-held")
        .collect()
}

/// `core stop now` hangs up every call and posts their CDRs, then exits without unloading
/// modules: the module's exit handler delivers them, and nothing is refused or lost.
#[test]
fn stop_now_during_a_call_hangs_it_up_and_publishes_its_cdrs() {
    let _one = one_asterisk();
    let root = Root::from_env();
    let tansu = Tansu::start();
    let mut asterisk = start_with_a_call_up(&root, &tansu, HELD_BACK);

    asterisk.stop_gracefully();
    let cdrs = held_call_cdrs(&root, &tansu);
    let log = asterisk.log();
    assert_eq!(cdrs.len(), 2, "both halves of the call: {cdrs:?}\n{log}");
    assert!(!log.contains("cdr_kafka: unload refused"), "{log}");
    assert!(!log.contains("not captured by cdr_kafka"), "{log}");
}

/// SIGTERM (`systemctl stop`) is Asterisk's fast shutdown: calls stay up and no module is
/// unloaded. Asterisk posts the CDRs of the calls still up as they stand, and the module's
/// exit handler delivers them before the process ends.
#[test]
fn sigterm_during_a_call_publishes_its_cdrs_before_the_process_ends() {
    let _one = one_asterisk();
    let root = Root::from_env();
    let tansu = Tansu::start();
    let mut asterisk = start_with_a_call_up(&root, &tansu, HELD_BACK);

    let took = asterisk.terminate();
    let cdrs = held_call_cdrs(&root, &tansu);
    let log = asterisk.log();
    assert_eq!(cdrs.len(), 2, "both halves of the call: {cdrs:?}\n{log}");
    for cdr in &cdrs {
        assert_eq!(cdr.json()["disposition"], "ANSWERED", "{cdr:?}");
    }
    eprintln!("SIGTERM with a call up: exited after {took:?}");
}

/// Waits until the Asterisk process has ended.
fn wait_for_exit(asterisk: &mut Asterisk<'_>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while asterisk.running() {
        assert!(Instant::now() < deadline, "Asterisk still runs");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `core stop gracefully` waits for the calls to end, then unloads every module: the call's
/// CDR reached the module by then, so the unload finds no active CDR and loses nothing.
#[test]
fn graceful_stop_during_a_call_waits_for_it_and_unloads_with_nothing_lost() {
    let _one = one_asterisk();
    let root = Root::from_env();
    let tansu = Tansu::start();
    let mut asterisk = start_with_a_call_up(&root, &tansu, "");
    // The command returns only when Asterisk exits.
    let mut stop = root
        .command("/usr/sbin/asterisk")
        .args(["-r", "-x", "core stop gracefully"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run core stop gracefully");
    wait_for_exit(&mut asterisk, Duration::from_secs(HOLD_SECS as u64) + WAIT);
    let _ = stop.wait();
    let log = asterisk.log();
    let cdr = held_call_cdr(&root, &tansu).unwrap_or_else(|| panic!("no CDR of the call:\n{log}"));
    assert!(
        cdr.json()["billsec"].as_i64().unwrap() >= HOLD_SECS - 1,
        "{cdr:?}"
    );
    for unwanted in [
        "Unable to unregister CDR backend",
        "not captured by cdr_kafka",
        "Some modules could not be unloaded",
    ] {
        assert!(!log.contains(unwanted), "{unwanted}:\n{log}");
    }
}
