//! The harness the spool is tested with, proved on today's module: a flood of CDRs whose
//! count is exact, Asterisk killed with SIGKILL and started again on the same root, and a
//! broker killed and brought back on the same port with its records.
//!
//! One Asterisk runs at a time (they share the root), so the tests take a lock.

mod support;

use std::collections::HashSet;
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use support::{cdr_kafka_conf, one_asterisk, Asterisk, Root, Tansu};

const TZ: &str = "America/Sao_Paulo";
const WAIT: Duration = Duration::from_secs(30);
const LOAD_AT_BOOT: &str = "load => cdr_kafka.so\n";

/// The distinct `sequence`s of the records on a topic: unique per CDR within one Asterisk
/// run, so as many as there are records when none came twice.
fn distinct_sequences(root: &Root, brokers: &str, topic: &str) -> usize {
    let messages = root.read_topic(brokers, topic);
    let sequences: HashSet<i64> = messages
        .iter()
        .map(|message| message.json()["sequence"].as_i64().expect("sequence"))
        .collect();
    sequences.len()
}

#[test]
fn flood_of_2000_puts_exactly_2000_records_on_the_topic() {
    let _one = one_asterisk();
    let root = Root::from_env();
    let tansu = Tansu::start();
    tansu.create_topic("calls");
    let conf = cdr_kafka_conf(&tansu.brokers(), "calls", "");
    let asterisk = Asterisk::start_with_modules(&root, &conf, TZ, LOAD_AT_BOOT);

    asterisk.flood(2000);
    assert_eq!(asterisk.wait_for_counter("Received", 2000, WAIT), 2000);
    assert_eq!(asterisk.wait_for_counter("Delivered", 2000, WAIT), 2000);
    assert_eq!(
        distinct_sequences(&root, &tansu.brokers(), "calls"),
        2000,
        "every CDR received is on the topic, none twice"
    );
    let by_entity = root.count_by(&tansu.brokers(), "calls", "entity_id");
    assert_eq!(by_entity.get("00:11:22:33:44:55"), Some(&2000));
    assert_eq!(asterisk.counter("Received"), 2000, "and no CDR more");

    // Channels of 500 CDRs and a remainder of one (its own half's CDR disabled).
    asterisk.flood(501);
    assert_eq!(asterisk.wait_for_counter("Received", 2501, WAIT), 2501);
    assert_eq!(asterisk.wait_for_counter("Delivered", 2501, WAIT), 2501);
    assert_eq!(distinct_sequences(&root, &tansu.brokers(), "calls"), 2501);
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn killed_asterisk_restarts_on_the_root_as_it_was_with_the_module_loaded_at_boot() {
    let _one = one_asterisk();
    let root = Root::from_env();
    let tansu = Tansu::start();
    tansu.create_topic("calls");
    tansu.create_topic("after");
    let stale = root.spool().join("left-by-an-earlier-test");
    std::fs::create_dir_all(root.spool()).unwrap();
    std::fs::write(&stale, "x").unwrap();
    let conf = cdr_kafka_conf(&tansu.brokers(), "calls", "");
    let mut asterisk = Asterisk::start_with_modules(&root, &conf, TZ, LOAD_AT_BOOT);
    assert!(!stale.exists(), "a fresh start empties the spool");
    asterisk.flood(100);
    asterisk.wait_for_counter("Delivered", 100, WAIT);
    // A name the module's spool ignores (it reads *.log, *.ledger and the old *.seg).
    let marker = root.spool().join("harness-marker");
    std::fs::write(&marker, "x").unwrap();

    let first = asterisk.pid();
    asterisk.kill9();
    assert!(!alive(first), "Asterisk is gone");
    let run = root.run_dir();
    assert!(
        run.join("asterisk.ctl").exists() && run.join("asterisk.pid").exists(),
        "SIGKILL leaves the control socket and the pid file"
    );
    assert!(root.path.join("proc/self").exists(), "/proc stays mounted");

    // restart writes nothing: the file as the test left it is read at boot.
    asterisk.write_config(
        "cdr_kafka.conf",
        &cdr_kafka_conf(&tansu.brokers(), "after", ""),
    );
    asterisk.restart();
    assert_ne!(asterisk.pid(), first);
    assert!(
        asterisk.rx("cdr kafka show status").contains("after"),
        "loaded at boot with the changed file"
    );
    assert_eq!(asterisk.counter("Received"), 0, "a new Asterisk");
    assert!(marker.exists(), "restart keeps the spool");
    std::fs::remove_file(&marker).unwrap();
    asterisk.flood(100);
    asterisk.wait_for_counter("Delivered", 100, WAIT);

    let took = asterisk.stop_gracefully();
    assert!(
        took < Duration::from_secs(10),
        "core stop now took {took:?}"
    );
    assert!(
        !run.join("asterisk.ctl").exists(),
        "a graceful stop removes its socket"
    );
    asterisk.restart();
    assert!(asterisk.rx("cdr show status").contains("kafka"));
    assert_eq!(root.read_topic(&tansu.brokers(), "calls").len(), 100);
    assert_eq!(root.read_topic(&tansu.brokers(), "after").len(), 100);
    // pbx_config warns once per boot.
    assert_eq!(
        asterisk.log().matches("users.conf is deprecated").count(),
        3,
        "messages.log is appended to over the restarts"
    );
}

#[test]
fn durable_broker_killed_and_restarted_keeps_its_port_and_records() {
    let _one = one_asterisk();
    let root = Root::from_env();
    let mut tansu = Tansu::start_durable();
    tansu.create_topic("calls");
    let conf = cdr_kafka_conf(&tansu.brokers(), "calls", "");
    let asterisk = Asterisk::start_with_modules(&root, &conf, TZ, LOAD_AT_BOOT);
    asterisk.flood(200);
    asterisk.wait_for_counter("Delivered", 200, WAIT);

    tansu.kill();
    assert!(
        TcpStream::connect(("127.0.0.1", tansu.port)).is_err(),
        "a killed broker refuses connections"
    );
    tansu.restart();
    assert_eq!(
        root.read_topic(&tansu.brokers(), "calls").len(),
        200,
        "the records survived"
    );
    asterisk.flood(200);
    assert_eq!(asterisk.wait_for_counter("Delivered", 400, WAIT), 400);
    assert_eq!(asterisk.counter("Failed"), 0);
    assert_eq!(distinct_sequences(&root, &tansu.brokers(), "calls"), 400);
    let counts = root.count_by(&tansu.brokers(), "calls", "entity_id");
    assert_eq!(counts.values().sum::<usize>(), 400);
}

#[test]
fn broker_cut_off_refuses_connections_and_keeps_its_records_for_after() {
    let _one = one_asterisk();
    let root = Root::from_env();
    let mut tansu = Tansu::start_behind_relay();
    tansu.create_topic("calls");
    let conf = cdr_kafka_conf(&tansu.brokers(), "calls", "");
    let asterisk = Asterisk::start_with_modules(&root, &conf, TZ, LOAD_AT_BOOT);
    asterisk.flood(1000);
    asterisk.wait_for_counter("Delivered", 1000, WAIT);

    tansu.cut_off();
    assert!(
        TcpStream::connect(("127.0.0.1", tansu.port)).is_err(),
        "a cut-off broker refuses connections"
    );
    asterisk.flood(2000);
    asterisk.wait_for_counter("Received", 3000, WAIT);
    assert_eq!(asterisk.counter("Delivered"), 1000, "nothing gets through");
    tansu.reconnect();
    assert_eq!(asterisk.wait_for_counter("Delivered", 3000, WAIT), 3000);
    assert_eq!(
        distinct_sequences(&root, &tansu.brokers(), "calls"),
        3000,
        "every record once, those from before the outage too"
    );
    assert_eq!(root.read_topic(&tansu.brokers(), "calls").len(), 3000);
}
