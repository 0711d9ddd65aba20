//! The syslog destination against sockets the tests bind themselves: the exact lines a
//! daemon reads, a daemon that is not there yet, and records that cannot fit.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::delivery::feeder::FeederSettings;
use crate::delivery::log::tests::{append, settings, TempDir};
use crate::delivery::log::{Log, RecordKind};
use crate::delivery::Delivery;

fn record(seq: u64, payload: &[u8]) -> StoredRecord<'_> {
    StoredRecord {
        seq,
        captured_ms: 1_700_000_000_000,
        kind: RecordKind::Cdr,
        record_id: "id",
        topic: "asterisk_cdr",
        key: None,
        headers: Vec::new(),
        payload,
    }
}

/// A directory for one test's socket, removed with it.
fn socket_dir(tag: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new(tag);
    std::fs::create_dir_all(&dir.0).unwrap();
    let path = dir.0.join("log.sock");
    (dir, path)
}

fn destination(path: &std::path::Path, facility: Facility, level: Level) -> SyslogDestination {
    let mut settings = SyslogSettings::new("syslog");
    settings.socket = path.to_path_buf();
    settings.facility = facility;
    settings.level = level;
    SyslogDestination::new(settings).unwrap()
}

fn receive(socket: &UnixDatagram) -> String {
    let mut buffer = vec![0u8; 65536];
    let n = socket.recv(&mut buffer).unwrap();
    String::from_utf8(buffer[..n].to_vec()).unwrap()
}

/// Splits `<PRI>Mmm dd hh:mm:ss rest` and checks the timestamp's shape.
fn split_line(line: &str) -> (&str, &str) {
    let (pri, rest) = line.split_once('>').expect("a <PRI>");
    let (stamp, rest) = rest.split_at(15);
    assert!(MONTHS.contains(&&stamp[..3]), "month in {line:?}");
    let bytes = stamp.as_bytes();
    assert_eq!(
        (bytes[3], bytes[6], bytes[9], bytes[12]),
        (b' ', b' ', b':', b':'),
        "timestamp in {line:?}"
    );
    (pri.trim_start_matches('<'), rest)
}

#[test]
fn lines_carry_priority_timestamp_tag_pid_and_the_message_as_given() {
    let (_dir, path) = socket_dir("syslog-lines");
    let daemon = UnixDatagram::bind(&path).unwrap();
    let mut syslog = destination(&path, Facility::Local(0), Level::Info);
    let payloads = [
        "ACC: call answered: {\"n\":1}",
        "ACC: call missed: {\"n\":2}",
        "{\"n\":3}",
    ];
    for (seq, payload) in payloads.iter().enumerate() {
        assert_eq!(
            syslog.offer(&record(seq as u64, payload.as_bytes())),
            Offer::Taken
        );
    }
    assert_eq!(syslog.in_flight(), 3);
    let mut outcomes = Vec::new();
    syslog.collect(&mut outcomes);
    assert_eq!(
        outcomes,
        vec![
            (0, Outcome::Delivered),
            (1, Outcome::Delivered),
            (2, Outcome::Delivered)
        ]
    );
    assert_eq!(syslog.in_flight(), 0);
    let expected_rest = |payload: &str| format!(" asterisk[{}]: {payload}", std::process::id());
    for payload in payloads {
        let line = receive(&daemon);
        let (pri, rest) = split_line(&line);
        assert_eq!(pri, "134", "local0 (16) * 8 + info (6)");
        assert_eq!(rest, expected_rest(payload));
    }
}

#[test]
fn priority_is_facility_times_eight_plus_level() {
    let (_dir, path) = socket_dir("syslog-pri");
    let daemon = UnixDatagram::bind(&path).unwrap();
    for (facility, level, pri) in [
        (Facility::Local(7), Level::Debug, "191"),
        (Facility::Auth, Level::Warning, "36"),
        (Facility::Kern, Level::Emerg, "0"),
        (Facility::Ftp, Level::Notice, "93"),
    ] {
        let mut syslog = destination(&path, facility, level);
        assert_eq!(syslog.offer(&record(0, b"x")), Offer::Taken);
        assert_eq!(split_line(&receive(&daemon)).0, pri, "{facility}.{level}");
    }
}

#[test]
fn timestamp_pads_the_day_with_a_space_as_rfc3164_says() {
    assert_eq!(format_timestamp(0, 5, 9, 3, 7), "Jan  5 09:03:07");
    assert_eq!(format_timestamp(11, 31, 23, 59, 58), "Dec 31 23:59:58");
}

#[test]
fn record_too_big_for_a_datagram_is_refused_with_its_size_and_the_next_goes_through() {
    let (_dir, path) = socket_dir("syslog-big");
    let daemon = UnixDatagram::bind(&path).unwrap();
    let mut syslog = destination(&path, Facility::Local(0), Level::Info);
    let big = vec![b'x'; 8 * 1024 * 1024];
    let Offer::Refused(reason) = syslog.offer(&record(0, &big)) else {
        panic!("an 8 MiB datagram is refused");
    };
    let line_len = big.len() + split_prefix_len(&syslog);
    assert!(reason.contains(&format!("{line_len} bytes")), "{reason}");
    assert_eq!(syslog.broken(), None);
    assert_eq!(syslog.offer(&record(1, b"small")), Offer::Taken);
    assert!(receive(&daemon).ends_with(": small"));
    let mut outcomes = Vec::new();
    syslog.collect(&mut outcomes);
    assert_eq!(outcomes, vec![(1, Outcome::Delivered)]);
}

/// The bytes before the payload: `<134>` + timestamp + ` asterisk[PID]: `.
fn split_prefix_len(syslog: &SyslogDestination) -> usize {
    format!(
        "<134>Mmm dd hh:mm:ss {}[{}]: ",
        syslog.settings.tag, syslog.pid
    )
    .len()
}

#[test]
fn full_socket_says_full_and_every_record_taken_arrives_once() {
    let (_dir, path) = socket_dir("syslog-full");
    let daemon = UnixDatagram::bind(&path).unwrap();
    let mut syslog = destination(&path, Facility::Local(0), Level::Info);
    let payloads: Vec<String> = (0..100_000).map(|n| format!("{{\"n\":{n}}}")).collect();
    let taken = payloads
        .iter()
        .enumerate()
        .take_while(|(seq, payload)| {
            syslog.offer(&record(*seq as u64, payload.as_bytes())) == Offer::Taken
        })
        .count();
    assert!(taken < payloads.len(), "the daemon's queue filled up");
    assert_eq!(syslog.broken(), None, "a full socket is not a broken one");
    let mut outcomes = Vec::new();
    syslog.collect(&mut outcomes);
    assert_eq!(outcomes.len(), taken);
    assert!(outcomes
        .iter()
        .enumerate()
        .all(|(n, outcome)| *outcome == (n as u64, Outcome::Delivered)));
    daemon.set_nonblocking(true).unwrap();
    let mut received = 0;
    let mut buffer = vec![0u8; 65536];
    while let Ok(n) = daemon.recv(&mut buffer) {
        let line = std::str::from_utf8(&buffer[..n]).unwrap();
        assert!(
            line.ends_with(&format!(": {}", payloads[received])),
            "{line}"
        );
        received += 1;
    }
    assert_eq!(received, taken);
    // Room again: the record that was refused for now goes through.
    let next = taken as u64;
    assert_eq!(
        syslog.offer(&record(next, payloads[taken].as_bytes())),
        Offer::Taken
    );
}

#[test]
fn no_daemon_is_broken_and_names_the_socket() {
    let (_dir, path) = socket_dir("syslog-none");
    let mut syslog = destination(&path, Facility::Local(0), Level::Info);
    let reason = syslog.broken().expect("nothing listens");
    assert!(reason.contains(&path.display().to_string()), "{reason}");
    assert_eq!(syslog.offer(&record(0, b"x")), Offer::Full);
    assert!(syslog.rebuild().is_err());
    assert!(
        syslog.describe().contains("broken"),
        "{}",
        syslog.describe()
    );
    let daemon = UnixDatagram::bind(&path).unwrap();
    syslog.rebuild().unwrap();
    assert_eq!(syslog.broken(), None);
    assert_eq!(syslog.offer(&record(0, b"x")), Offer::Taken);
    assert!(receive(&daemon).ends_with(": x"));
}

#[test]
fn daemon_restarted_breaks_the_destination_and_rebuild_reconnects() {
    let (_dir, path) = socket_dir("syslog-restart");
    let daemon = UnixDatagram::bind(&path).unwrap();
    let mut syslog = destination(&path, Facility::Local(0), Level::Info);
    assert_eq!(syslog.offer(&record(0, b"first")), Offer::Taken);
    drop(daemon);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(syslog.offer(&record(1, b"lost?")), Offer::Full);
    assert!(syslog.broken().is_some());
    let mut outcomes = Vec::new();
    syslog.collect(&mut outcomes);
    assert_eq!(
        outcomes,
        vec![(0, Outcome::Delivered)],
        "only what was sent"
    );
    let daemon = UnixDatagram::bind(&path).unwrap();
    syslog.rebuild().unwrap();
    assert_eq!(syslog.offer(&record(1, b"second")), Offer::Taken);
    assert!(receive(&daemon).ends_with(": second"));
}

#[test]
fn daemon_appearing_late_gets_each_spooled_record_once_through_the_feeder() {
    let (_sockets, path) = socket_dir("syslog-late");
    let dir = TempDir::new("syslog-late-log");
    let log = Arc::new(Log::open(settings(&dir.0)).unwrap());
    let mut delivery = Delivery::new(Arc::clone(&log));
    let syslog = destination(&path, Facility::Local(0), Level::Info);
    let fast = FeederSettings {
        batch_window: Duration::from_millis(5),
        flush_timeout: Duration::from_millis(100),
    };
    delivery.start(Box::new(syslog), fast).unwrap();
    for n in 0..200 {
        append(&log, n).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while delivery.statuses()[0]
        .stats
        .rebuilds
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        assert!(Instant::now() < deadline, "the feeder saw it broken");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The daemon reads as it goes: its queue holds only a few datagrams.
    let daemon = UnixDatagram::bind(&path).unwrap();
    daemon.set_nonblocking(true).unwrap();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut buffer = vec![0u8; 65536];
    let mut read_all = |seen: &mut HashMap<String, usize>| {
        while let Ok(n) = daemon.recv(&mut buffer) {
            let line = String::from_utf8(buffer[..n].to_vec()).unwrap();
            let message = line.rsplit_once("]: ").unwrap().1.to_string();
            *seen.entry(message).or_default() += 1;
        }
    };
    while log.depth().0 != 0 {
        assert!(Instant::now() < deadline, "every record confirmed");
        read_all(&mut seen);
        std::thread::sleep(Duration::from_millis(5));
    }
    delivery.shutdown();
    read_all(&mut seen);
    let expected: HashMap<String, usize> =
        (0..200).map(|n| (format!("{{\"n\":{n}}}"), 1)).collect();
    assert_eq!(seen, expected);
}

#[test]
fn stream_socket_gets_nul_terminated_lines() {
    let (_dir, path) = socket_dir("syslog-stream");
    let daemon = UnixListener::bind(&path).unwrap();
    let mut syslog = destination(&path, Facility::Daemon, Level::Err);
    assert!(
        syslog.describe().contains("stream"),
        "{}",
        syslog.describe()
    );
    let (mut accepted, _) = daemon.accept().unwrap();
    assert_eq!(syslog.offer(&record(7, b"one")), Offer::Taken);
    assert_eq!(syslog.offer(&record(8, b"two")), Offer::Taken);
    assert_eq!(
        syslog.offer(&record(9, b"nul\0inside")),
        Offer::Refused(
            "the record holds a NUL byte, which a stream syslog socket reads as the end of \
             the message"
                .into()
        )
    );
    let mut outcomes = Vec::new();
    syslog.collect(&mut outcomes);
    assert_eq!(
        outcomes,
        vec![(7, Outcome::Delivered), (8, Outcome::Delivered)]
    );
    drop(syslog);
    let mut received = String::new();
    accepted.read_to_string(&mut received).unwrap();
    let lines: Vec<&str> = received.split_terminator('\0').collect();
    assert_eq!(lines.len(), 2, "{received:?}");
    let pid = std::process::id();
    assert_eq!(
        split_line(lines[0]),
        ("27", &*format!(" asterisk[{pid}]: one"))
    );
    assert_eq!(
        split_line(lines[1]),
        ("27", &*format!(" asterisk[{pid}]: two"))
    );
}

#[test]
fn facility_and_level_names_are_read_as_syslog_conf_writes_them() {
    assert_eq!(Facility::parse("local0"), Ok(Facility::Local(0)));
    assert_eq!(Facility::parse("LOCAL7"), Ok(Facility::Local(7)));
    assert_eq!(Facility::parse("authpriv").map(Facility::code), Ok(10));
    assert_eq!(Facility::parse("cron").map(Facility::code), Ok(9));
    assert_eq!(Facility::Local(3).to_string(), "local3");
    let error = Facility::parse("local8").unwrap_err();
    assert!(error.contains("local0 to local7"), "{error}");
    assert_eq!(Level::parse("error"), Ok(Level::Err));
    assert_eq!(Level::parse("warn"), Ok(Level::Warning));
    assert_eq!(Level::parse("debug").map(Level::code), Ok(7));
    assert_eq!(Level::Notice.to_string(), "notice");
    let error = Level::parse("verbose").unwrap_err();
    assert!(error.contains("'verbose' is not a syslog level"), "{error}");
}

#[test]
fn tag_that_would_break_the_line_is_refused() {
    for tag in ["", "two words", "a:b", "x[1]", &"t".repeat(33)] {
        let mut settings = SyslogSettings::new("syslog");
        settings.tag = tag.to_string();
        assert!(
            matches!(SyslogDestination::new(settings), Err(SyslogError::Tag(_))),
            "{tag:?}"
        );
    }
}

#[test]
fn describe_names_socket_facility_and_level() {
    let (_dir, path) = socket_dir("syslog-describe");
    let _daemon = UnixDatagram::bind(&path).unwrap();
    let syslog = destination(&path, Facility::Local(0), Level::Info);
    assert_eq!(
        syslog.describe(),
        format!("syslog {} local0.info — writing", path.display())
    );
}
