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

use support::{cdr_kafka_conf, Asterisk, Manager, Root, Tansu, CDRS_PER_CALL};

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
    // The module's start and stop records frame the CDRs.
    assert_eq!(
        offsets.len(),
        received + 2,
        "one entry per CDR, and the two control records"
    );
    let mut data = fs::read(&segment).unwrap();
    // The last CDR torn (the stop record after it gone too), the second CDR's bit flipped.
    data.truncate(offsets[received + 1] - 10);
    data[offsets[2] + 40] ^= 0x04;
    fs::write(&segment, &data).unwrap();

    let tansu = Tansu::start();
    tansu.create_topic("calls");
    asterisk.write_config(
        "cdr_kafka.conf",
        &cdr_kafka_conf(&tansu.brokers(), "calls", ""),
    );
    asterisk.load_module();
    asterisk.log_saying("1 torn tail(s) cut off, 1 damaged run(s) of bytes skipped");
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
    asterisk
        .log_saying("spool: spool folder /etc/asterisk/asterisk.conf is a symlink or not a folder");

    let conf = cdr_kafka_conf(NO_BROKER, "calls", "spool_dir = /proc/cdr_kafka\n");
    asterisk.write_config("cdr_kafka.conf", &conf);
    asterisk.rx("module load cdr_kafka.so");
    asterisk.log_saying("spool: creating spool folder /proc/cdr_kafka");
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
    asterisk
        .log_saying("a CDR is lost: the spool refused it: the spool holds spool_max_bytes = 3000");
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
    asterisk.log_saying("is in use by another cdr_kafka");
}

/// How often each `record_id` occurs on a topic.
fn record_ids(root: &Root, brokers: &str, topic: &str) -> std::collections::HashMap<String, usize> {
    root.count_by(brokers, topic, "record_id")
}

#[test]
fn one_mib_spool_limit_refuses_nothing_under_a_flood_of_calls_with_the_broker_up() {
    let root = Root::from_env();
    let _one = lock(&root);
    let tansu = Tansu::start();
    tansu.create_topic("calls");
    let conf = cdr_kafka_conf(&tansu.brokers(), "calls", "spool_max_bytes = 1048576\n");
    let asterisk = Asterisk::start(&root, &conf, TZ);
    asterisk.load_module();
    // 3,001 answered calls as fast as Asterisk takes them (over 3,000 CDRs a second
    // here), each posting its own 2 CDRs: 6,002 records, several MB through a 1 MiB limit.
    let mut manager = Manager::open(&asterisk);
    for _ in 0..3001 {
        manager.call(200);
    }
    let expected = 3001 * CDRS_PER_CALL;
    assert_eq!(
        asterisk.wait_for_counter("Received", expected, WAIT),
        expected
    );
    assert_eq!(
        asterisk.wait_for_counter("Delivered", expected, WAIT),
        expected
    );
    assert_eq!(
        asterisk.counter("Spool refused"),
        0,
        "only undelivered bytes count against spool_max_bytes"
    );
    let ids = record_ids(&root, &tansu.brokers(), "calls");
    assert_eq!(ids.len(), expected);
    assert!(ids.values().all(|&n| n == 1), "none twice");
}

/// Bytes of the spool's segment files.
fn segment_bytes(root: &Root) -> u64 {
    fs::read_dir(root.path.join(SPOOL))
        .expect("spool folder")
        .filter_map(Result::ok)
        .filter(|entry| entry.path().extension().is_some_and(|e| e == "log"))
        .filter_map(|entry| entry.metadata().ok())
        .map(|meta| meta.len())
        .sum()
}

/// A small tmpfs mounted over the spool folder; unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(path: PathBuf, size: &str) -> Self {
        fs::create_dir_all(&path).unwrap();
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&path)
            .status()
            .expect("mount");
        assert!(status.success(), "mount a tmpfs on {}", path.display());
        Self(path)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_disk_during_an_outage_refuses_counts_and_recovers_by_itself() {
    let root = Root::from_env();
    let _one = lock(&root);
    let disk = SmallDisk::mount(root.path.join(SPOOL), "3m");
    let asterisk = Asterisk::start(&root, &cdr_kafka_conf(NO_BROKER, "calls", ""), TZ);
    asterisk.load_module();
    asterisk.flood(8002);
    assert_eq!(asterisk.wait_for_counter("Received", 8002, WAIT), 8002);
    let spooled = asterisk.counter("Spooled");
    let refused = asterisk.counter("Refused");
    assert!(refused > 0, "the disk filled up");
    assert_eq!(
        spooled + refused,
        8002,
        "each record kept or refused, never both"
    );
    assert!(asterisk.rx("core show version").contains("Asterisk 22"));

    // The broker is back: everything kept is delivered, once.
    let tansu = Tansu::start();
    tansu.create_topic("calls");
    asterisk.write_config(
        "cdr_kafka.conf",
        &cdr_kafka_conf(&tansu.brokers(), "calls", ""),
    );
    asterisk.rx("module reload cdr_kafka.so");
    assert_eq!(
        asterisk.wait_for_counter("Delivered", spooled, WAIT),
        spooled
    );

    // The space of delivered records is given back (the segments are deleted once the
    // confirmations are on disk): new records flow again.
    let deadline = std::time::Instant::now() + WAIT;
    // The current segment keeps up to 528 KiB of zeros written ahead of its records.
    while segment_bytes(&root) > 640 * 1024 {
        assert!(
            std::time::Instant::now() < deadline,
            "the space was never given back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    asterisk.flood(602);
    assert_eq!(asterisk.wait_for_counter("Received", 8604, WAIT), 8604);
    assert_eq!(
        asterisk.wait_for_counter("Delivered", spooled + 602, WAIT),
        spooled + 602
    );
    assert_eq!(asterisk.counter("Refused"), refused, "nothing more refused");
    let ids = record_ids(&root, &tansu.brokers(), "calls");
    assert_eq!(ids.len(), spooled + 602);
    assert!(ids.values().all(|&n| n == 1), "none twice");
    drop(asterisk);
    drop(disk);
}

/// One entry of the spool format before the log (format 1): what an upgrade finds.
fn format_1_entry(index: u32, record_id: &str, payload: &str, out: &mut Vec<u8>) {
    let mut body = Vec::new();
    body.extend_from_slice(&index.to_le_bytes());
    body.extend_from_slice(&1_764_500_000u64.to_le_bytes());
    let put = |body: &mut Vec<u8>, bytes: &[u8]| {
        body.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        body.extend_from_slice(bytes);
    };
    put(&mut body, record_id.as_bytes());
    put(&mut body, b"calls");
    body.push(0);
    body.extend_from_slice(&1u32.to_le_bytes());
    put(&mut body, b"record_id");
    put(&mut body, record_id.as_bytes());
    put(&mut body, payload.as_bytes());
    out.extend_from_slice(&0xCD4B_5350u32.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
}

#[test]
fn upgrade_delivers_what_the_previous_spool_format_kept() {
    use std::os::unix::fs::PermissionsExt;
    let root = Root::from_env();
    let _one = lock(&root);
    let tansu = Tansu::start();
    tansu.create_topic("calls");
    // Started without the module (start empties the spool), then the old files laid down.
    let asterisk = Asterisk::start(&root, &cdr_kafka_conf(&tansu.brokers(), "calls", ""), TZ);
    let spool = root.path.join(SPOOL);
    fs::create_dir_all(&spool).unwrap();
    fs::set_permissions(&spool, fs::Permissions::from_mode(0o700)).unwrap();
    let mut segment = Vec::new();
    for index in 0..4 {
        format_1_entry(
            index,
            &format!("old-{index}"),
            "{\"old\":true}",
            &mut segment,
        );
    }
    fs::write(spool.join("0000000001.seg"), &segment).unwrap();
    // The broker had confirmed record 2 before the upgrade.
    fs::write(spool.join("0000000001.ack"), 2u32.to_le_bytes()).unwrap();

    asterisk.load_module();
    asterisk.log_saying("3 undelivered record(s) of the previous spool format moved into the log");
    assert_eq!(asterisk.wait_for_counter("Delivered", 3, WAIT), 3);
    let ids = record_ids(&root, &tansu.brokers(), "calls");
    let mut found: Vec<&String> = ids.keys().collect();
    found.sort();
    assert_eq!(found, ["old-0", "old-1", "old-3"]);
    assert!(
        !spool.join("0000000001.seg").exists(),
        "the old files are gone"
    );
}
