//! The durable spool inside real Asterisk 22 (the Debian root of `make sandbox`) with a
//! real broker (tansu): damaged spool files, an unusable spool folder, a full spool.
//!
//! One Asterisk runs at a time (they share the root), so the tests take a lock, and each
//! starts from an empty spool.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use support::{cdr_kafka_conf, Asterisk, Root, Tansu};

static ONE_ASTERISK: Mutex<()> = Mutex::new(());
const WAIT: Duration = Duration::from_secs(30);
const TZ: &str = "UTC";
/// Where the module keeps its spool by default, inside the root.
const SPOOL: &str = "var/spool/asterisk/cdr_kafka";
/// An address nothing listens on: the broker is down.
const NO_BROKER: &str = "127.0.0.1:9";

fn lock(root: &Root) -> std::sync::MutexGuard<'static, ()> {
    let guard = ONE_ASTERISK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let _ = fs::remove_dir_all(root.path.join(SPOOL));
    guard
}

/// Places `calls` calls with the broker down, then unloads: the records stay spooled.
fn spool_calls_with_broker_down(asterisk: &Asterisk<'_>, calls: usize) -> usize {
    asterisk.load_module();
    for _ in 0..calls {
        asterisk.originate("flood");
        asterisk.wait_for_no_channels(WAIT);
    }
    let received = asterisk.counter("Received");
    assert_eq!(asterisk.counter("Delivered"), 0);
    let out = asterisk.rx("module unload cdr_kafka.so");
    assert!(out.contains("Unloaded cdr_kafka.so"), "{out}");
    received
}

/// The segment file holding the spooled records.
fn fullest_segment(root: &Root) -> PathBuf {
    let mut segments: Vec<PathBuf> = fs::read_dir(root.path.join(SPOOL))
        .expect("spool folder")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "log"))
        .collect();
    segments.sort_by_key(|path| fs::metadata(path).map_or(0, |m| m.len()));
    segments.pop().expect("a segment")
}

/// Byte offsets of the entries of a segment (each starts with the entry magic of
/// docs/spool-format.md).
fn entry_offsets(segment: &Path) -> Vec<usize> {
    let data = fs::read(segment).expect("segment");
    let magic = 0xCD4B_4C45u32.to_le_bytes();
    data.windows(4)
        .enumerate()
        .filter(|(_, window)| *window == magic)
        .map(|(offset, _)| offset)
        .collect()
}

#[test]
fn torn_tail_and_flipped_bit_are_reported_and_the_rest_is_delivered() {
    let root = Root::from_env();
    let _one = lock(&root);
    let asterisk = Asterisk::start(&root, &cdr_kafka_conf(NO_BROKER, "calls", ""), TZ);
    let received = spool_calls_with_broker_down(&asterisk, 3);
    assert!(received >= 4, "enough records to damage two: {received}");

    // A crash mid-write leaves the last entry short; a disk error flips a bit.
    let segment = fullest_segment(&root);
    let offsets = entry_offsets(&segment);
    assert_eq!(offsets.len(), received, "one entry per CDR");
    let mut data = fs::read(&segment).unwrap();
    data.truncate(data.len() - 10);
    data[offsets[1] + 40] ^= 0x04;
    fs::write(&segment, &data).unwrap();

    let tansu = Tansu::start();
    tansu.create_topic("calls");
    asterisk.write_config(
        "cdr_kafka.conf",
        &cdr_kafka_conf(&tansu.brokers(), "calls", ""),
    );
    asterisk.load_module();
    let log = asterisk.log();
    assert!(
        log.contains("1 torn tail(s) cut off, 1 damaged run(s) of bytes skipped"),
        "{log}"
    );
    let expected = received - 2;
    let messages = root.consume(&tansu.brokers(), "calls", expected, WAIT);
    assert_eq!(
        messages.len(),
        expected,
        "everything but the two damaged entries"
    );
    let deadline = std::time::Instant::now() + WAIT;
    while asterisk.counter("Delivered") < expected {
        assert!(
            std::time::Instant::now() < deadline,
            "delivery reports never came"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(asterisk.counter("Replayed"), expected);
    assert!(asterisk
        .rx("cdr kafka show status")
        .contains("Spool depth         : 0 records"));
}

#[test]
fn unusable_spool_folder_declines_the_load_with_the_reason() {
    let root = Root::from_env();
    let _one = lock(&root);
    let conf = cdr_kafka_conf(
        NO_BROKER,
        "calls",
        "spool_dir = /etc/asterisk/asterisk.conf\n",
    );
    let asterisk = Asterisk::start(&root, &conf, TZ);
    assert!(!asterisk
        .rx("module load cdr_kafka.so")
        .contains("Loaded cdr_kafka.so"));
    let log = asterisk.log();
    assert!(
        log.contains(
            "spool: spool folder /etc/asterisk/asterisk.conf is a symlink or not a folder"
        ),
        "{log}"
    );

    let conf = cdr_kafka_conf(NO_BROKER, "calls", "spool_dir = /proc/cdr_kafka\n");
    asterisk.write_config("cdr_kafka.conf", &conf);
    asterisk.rx("module load cdr_kafka.so");
    assert!(
        asterisk
            .log()
            .contains("spool: creating spool folder /proc/cdr_kafka"),
        "{}",
        asterisk.log()
    );
    assert!(!asterisk.rx("cdr show status").contains("kafka"));
    assert!(asterisk.rx("core show version").contains("Asterisk 22"));
}

#[test]
fn full_spool_refuses_new_records_loudly_and_keeps_asterisk_fast() {
    let root = Root::from_env();
    let _one = lock(&root);
    let conf = cdr_kafka_conf(NO_BROKER, "calls", "spool_max_bytes = 3000\n");
    let asterisk = Asterisk::start(&root, &conf, TZ);
    asterisk.load_module();
    for _ in 0..4 {
        asterisk.originate("flood");
        asterisk.wait_for_no_channels(WAIT);
    }
    let refused = asterisk.counter("Spool refused");
    assert!(refused > 0, "{}", asterisk.rx("cdr kafka show status"));
    assert_eq!(asterisk.counter("Refused"), refused);
    assert!(asterisk
        .log()
        .contains("a CDR is lost: the spool refused it: the spool holds spool_max_bytes = 3000"));
    assert!(asterisk
        .rx("cdr kafka show status")
        .contains("Spool refused"));
}

#[test]
fn second_asterisk_on_the_same_spool_folder_is_refused() {
    let root = Root::from_env();
    let _one = lock(&root);
    let asterisk = Asterisk::start(&root, &cdr_kafka_conf(NO_BROKER, "calls", ""), TZ);
    asterisk.load_module();
    // Another process holding the folder's lock, as a second Asterisk would.
    let lock_path = root.path.join(SPOOL).join("lock");
    let out = asterisk.rx("module unload cdr_kafka.so");
    assert!(out.contains("Unloaded"), "{out}");
    let mut holder = std::process::Command::new("flock")
        .arg(&lock_path)
        .args(["sleep", "30"])
        .spawn()
        .expect("flock");
    let held = || {
        !std::process::Command::new("flock")
            .arg("-n")
            .arg(&lock_path)
            .arg("true")
            .status()
            .expect("flock -n")
            .success()
    };
    let deadline = std::time::Instant::now() + WAIT;
    while !held() {
        assert!(
            std::time::Instant::now() < deadline,
            "flock never took the lock"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    asterisk.rx("module load cdr_kafka.so");
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(
        asterisk.log().contains("is in use by another cdr_kafka"),
        "{}",
        asterisk.log()
    );
}
