//! The file destination against its promises: the bytes in the file are the payloads,
//! each record lands in exactly one file whatever rotates, clock rotation follows
//! GnuGk's rules in local time (moved by a fake clock), files get their folder's owner,
//! and a failed write leaves no torn line and loses nothing.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone, Weekday};

use super::*;
use crate::delivery::log::io::{Fault, FaultPlan, Op};
use crate::delivery::log::tests::TempDir;

/// A clock the test moves, two hours east of UTC.
struct FakeClock(Mutex<DateTime<FixedOffset>>);

fn zone() -> FixedOffset {
    FixedOffset::east_opt(2 * 3600).unwrap()
}

fn at(text: &str) -> DateTime<FixedOffset> {
    let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").unwrap();
    zone().from_local_datetime(&naive).single().unwrap()
}

impl FakeClock {
    fn new(text: &str) -> Arc<Self> {
        Arc::new(Self(Mutex::new(at(text))))
    }

    fn set(&self, text: &str) {
        *self.0.lock().unwrap() = at(text);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> DateTime<FixedOffset> {
        *self.0.lock().unwrap()
    }
}

fn settings(path: &Path, rotation: Rotation, clock: &Arc<FakeClock>) -> FileSettings {
    FileSettings {
        name: "cdrfile".into(),
        path: path.to_path_buf(),
        rotation,
        sync: FileSync::Never,
        clock: Arc::clone(clock) as Arc<dyn Clock>,
    }
}

fn record(seq: u64, payload: &[u8]) -> StoredRecord<'_> {
    StoredRecord::test_cdr(seq, payload)
}

fn payload(seq: u64) -> String {
    format!("{{\"n\":{seq}}}")
}

/// Offers records `seqs` (payload `{"n":SEQ}`) and collects: every outcome.
fn write(destination: &mut FileDestination, seqs: std::ops::Range<u64>) -> Vec<(u64, Outcome)> {
    for seq in seqs {
        let payload = payload(seq);
        assert_eq!(
            destination.offer(&record(seq, payload.as_bytes())),
            Offer::Taken
        );
    }
    let mut outcomes = Vec::new();
    destination.collect(&mut outcomes);
    outcomes
}

fn delivered(seqs: std::ops::Range<u64>) -> Vec<(u64, Outcome)> {
    seqs.map(|seq| (seq, Outcome::Delivered)).collect()
}

fn lines(seqs: std::ops::Range<u64>) -> String {
    seqs.map(|seq| payload(seq) + "\n").collect()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap()
}

/// The files in `dir`, sorted by name, with their contents.
fn files(dir: &Path) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            (name, read(&entry.path()))
        })
        .collect();
    files.sort();
    files
}

fn temp(tag: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new(&format!("file-{tag}"));
    fs::create_dir_all(&dir.0).unwrap();
    let path = dir.0.join("cdr.jsonl");
    (dir, path)
}

#[test]
fn payloads_are_written_byte_for_byte_one_a_line() {
    let (_dir, path) = temp("bytes");
    let clock = FakeClock::new("2024-05-01 10:00:00");
    let mut destination = FileDestination::new(settings(&path, Rotation::Never, &clock)).unwrap();
    let payloads: [&[u8]; 3] = [
        b"{\"a\":1}",
        "{\n  \"caller\": \"Zoë \\\"x\\\"\"\n}".as_bytes(),
        b"{\"raw\":\"\xff\t\"}",
    ];
    for (seq, payload) in payloads.iter().enumerate() {
        assert_eq!(
            destination.offer(&record(seq as u64 + 7, payload)),
            Offer::Taken
        );
    }
    // Offering only batches: nothing reaches the file before collect.
    assert_eq!(fs::read(&path).unwrap(), b"");
    assert_eq!(destination.in_flight(), 3);
    let mut outcomes = Vec::new();
    destination.collect(&mut outcomes);
    assert_eq!(outcomes, delivered(7..10));
    assert_eq!(destination.in_flight(), 0);
    let expected: Vec<u8> = payloads
        .iter()
        .flat_map(|p| p.iter().chain(b"\n"))
        .copied()
        .collect();
    assert_eq!(fs::read(&path).unwrap(), expected);
    assert_eq!(
        destination.describe(),
        format!(
            "file {} (no rotation), 5 lines in the current file",
            path.display()
        )
    );
}

#[test]
fn full_batch_says_full_until_collected() {
    let (_dir, path) = temp("full");
    let clock = FakeClock::new("2024-05-01 10:00:00");
    let mut destination = FileDestination::new(settings(&path, Rotation::Never, &clock)).unwrap();
    for seq in 0..MAX_BATCH_RECORDS as u64 {
        assert_eq!(destination.offer(&record(seq, b"x")), Offer::Taken);
    }
    assert_eq!(destination.offer(&record(99_999, b"x")), Offer::Full);
    let mut outcomes = Vec::new();
    destination.collect(&mut outcomes);
    assert_eq!(outcomes.len(), MAX_BATCH_RECORDS);
    assert_eq!(destination.offer(&record(99_999, b"x")), Offer::Taken);
    // One record larger than the bound is still taken into an empty batch.
    let big = vec![b'y'; MAX_BATCH_BYTES + 1];
    destination.collect(&mut outcomes);
    assert_eq!(destination.offer(&record(100_000, &big)), Offer::Taken);
    assert_eq!(destination.offer(&record(100_001, b"z")), Offer::Full);
}

#[test]
fn line_rotation_splits_a_batch_at_the_limit_without_loss_or_doubles() {
    let (dir, path) = temp("lines");
    let clock = FakeClock::new("2024-05-01 10:00:00");
    let mut destination =
        FileDestination::new(settings(&path, Rotation::Lines(3), &clock)).unwrap();
    assert_eq!(write(&mut destination, 0..8), delivered(0..8));
    // Both rotations happen at the same second: the second name gets `.1`.
    assert_eq!(
        files(&dir.0),
        vec![
            ("cdr.jsonl".to_string(), lines(6..8)),
            ("cdr.jsonl.20240501-100000".to_string(), lines(0..3)),
            ("cdr.jsonl.20240501-100000.1".to_string(), lines(3..6)),
        ]
    );
}

#[test]
fn size_rotation_never_splits_a_record() {
    let (dir, path) = temp("size");
    let clock = FakeClock::new("2024-05-01 10:00:00");
    // Each line is 9 bytes ({"n":N} and \n): two fit in 20 bytes, three do not.
    let mut destination =
        FileDestination::new(settings(&path, Rotation::Size(20), &clock)).unwrap();
    assert_eq!(write(&mut destination, 0..3), delivered(0..3));
    clock.set("2024-05-01 10:00:01");
    assert_eq!(write(&mut destination, 3..5), delivered(3..5));
    // A record longer than the limit gets a file of its own.
    clock.set("2024-05-01 10:00:02");
    let long = "x".repeat(30);
    assert_eq!(destination.offer(&record(5, long.as_bytes())), Offer::Taken);
    let mut outcomes = Vec::new();
    destination.collect(&mut outcomes);
    assert_eq!(outcomes, delivered(5..6));
    assert_eq!(
        files(&dir.0),
        vec![
            ("cdr.jsonl".to_string(), format!("{long}\n")),
            ("cdr.jsonl.20240501-100000".to_string(), lines(0..2)),
            ("cdr.jsonl.20240501-100001".to_string(), lines(2..4)),
            ("cdr.jsonl.20240501-100002".to_string(), lines(4..5)),
        ]
    );
}

#[test]
fn line_count_survives_a_restart() {
    let (dir, path) = temp("restart-lines");
    let clock = FakeClock::new("2024-05-01 10:00:00");
    let mut destination =
        FileDestination::new(settings(&path, Rotation::Lines(3), &clock)).unwrap();
    write(&mut destination, 0..2);
    drop(destination);
    let mut destination =
        FileDestination::new(settings(&path, Rotation::Lines(3), &clock)).unwrap();
    assert!(destination
        .describe()
        .ends_with("2 lines in the current file"));
    write(&mut destination, 2..4);
    assert_eq!(
        files(&dir.0),
        vec![
            ("cdr.jsonl".to_string(), lines(3..4)),
            ("cdr.jsonl.20240501-100000".to_string(), lines(0..3)),
        ]
    );
}

/// Writes one record at each time; returns the files afterwards.
fn write_at_times(rotation: Rotation, times: &[&str]) -> Vec<(String, String)> {
    let (dir, path) = temp("clock");
    let clock = FakeClock::new(times[0]);
    let mut destination = FileDestination::new(settings(&path, rotation, &clock)).unwrap();
    for (seq, time) in times.iter().enumerate() {
        clock.set(time);
        let seq = seq as u64;
        assert_eq!(
            write(&mut destination, seq..seq + 1),
            delivered(seq..seq + 1)
        );
    }
    files(&dir.0)
}

fn daily(hour: u32, minute: u32) -> Rotation {
    Rotation::Daily {
        at: chrono::NaiveTime::from_hms_opt(hour, minute, 0).unwrap(),
    }
}

#[test]
fn daily_rotation_happens_at_the_first_write_after_the_time() {
    let files = write_at_times(
        daily(0, 0),
        &[
            "2024-05-01 10:00:00",
            "2024-05-01 23:59:59",
            "2024-05-02 00:00:00",
            "2024-05-02 23:00:00",
            "2024-05-04 09:30:00",
        ],
    );
    assert_eq!(
        files,
        vec![
            ("cdr.jsonl".to_string(), lines(4..5)),
            ("cdr.jsonl.20240502-000000".to_string(), lines(0..2)),
            ("cdr.jsonl.20240504-093000".to_string(), lines(2..4)),
        ]
    );
}

#[test]
fn hourly_rotation_happens_at_the_minute_past_each_hour() {
    let rotation = Rotation::parse("hourly", Some("45"), None).unwrap();
    let files = write_at_times(
        rotation,
        &[
            "2024-05-01 10:00:00",
            "2024-05-01 10:44:59",
            "2024-05-01 10:45:00",
            "2024-05-01 11:44:00",
            "2024-05-01 11:46:00",
        ],
    );
    assert_eq!(
        files,
        vec![
            ("cdr.jsonl".to_string(), lines(4..5)),
            ("cdr.jsonl.20240501-104500".to_string(), lines(0..2)),
            ("cdr.jsonl.20240501-114600".to_string(), lines(2..4)),
        ]
    );
}

#[test]
fn weekly_rotation_happens_on_the_day_at_the_time() {
    // GnuGk's example: every Sunday at 00:59. 2024-05-01 is a Wednesday.
    let rotation = Rotation::parse("weekly", Some("00:59"), Some("Sun")).unwrap();
    assert_eq!(
        rotation,
        Rotation::Weekly {
            day: Weekday::Sun,
            at: chrono::NaiveTime::from_hms_opt(0, 59, 0).unwrap()
        }
    );
    let files = write_at_times(
        rotation,
        &[
            "2024-05-01 10:00:00",
            "2024-05-05 00:58:00",
            "2024-05-05 00:59:00",
            "2024-05-11 23:00:00",
            "2024-05-12 01:00:00",
        ],
    );
    assert_eq!(
        files,
        vec![
            ("cdr.jsonl".to_string(), lines(4..5)),
            ("cdr.jsonl.20240505-005900".to_string(), lines(0..2)),
            ("cdr.jsonl.20240512-010000".to_string(), lines(2..4)),
        ]
    );
}

#[test]
fn monthly_rotation_on_day_31_happens_on_the_last_day_of_a_30_day_month() {
    let rotation = Rotation::parse("monthly", Some("23:00"), Some("31")).unwrap();
    let files = write_at_times(
        rotation,
        &[
            "2024-04-10 10:00:00",
            "2024-04-30 22:59:00",
            "2024-04-30 23:00:00",
            "2024-05-30 23:30:00",
            "2024-05-31 23:00:00",
        ],
    );
    assert_eq!(
        files,
        vec![
            ("cdr.jsonl".to_string(), lines(4..5)),
            ("cdr.jsonl.20240430-230000".to_string(), lines(0..2)),
            ("cdr.jsonl.20240531-230000".to_string(), lines(2..4)),
        ]
    );
    // February of a leap year, and of another year.
    let rotation = Rotation::parse("monthly", None, Some("31")).unwrap();
    let feb = |y| {
        NaiveDateTime::parse_from_str(&format!("{y}-02-10 00:00:00"), "%Y-%m-%d %H:%M:%S").unwrap()
    };
    assert_eq!(
        rotation.next_after(feb(2024)).unwrap().to_string(),
        "2024-02-29 00:00:00"
    );
    assert_eq!(
        rotation.next_after(feb(2023)).unwrap().to_string(),
        "2023-02-28 00:00:00"
    );
}

/// Makes `path` hold `text`, last written at `time` (fake clock's zone).
fn old_file(path: &Path, text: &str, time: &str) {
    fs::write(path, text).unwrap();
    let file = fs::File::options().write(true).open(path).unwrap();
    file.set_modified(std::time::SystemTime::from(at(time)))
        .unwrap();
}

#[test]
fn restart_with_a_file_from_before_the_rotation_time_rotates_it_at_once() {
    let (dir, path) = temp("old");
    old_file(&path, &lines(0..2), "2024-04-30 23:59:00");
    let clock = FakeClock::new("2024-05-01 08:00:00");
    let mut destination = FileDestination::new(settings(&path, daily(0, 0), &clock)).unwrap();
    assert_eq!(
        files(&dir.0),
        vec![
            ("cdr.jsonl".to_string(), String::new()),
            ("cdr.jsonl.20240501-080000".to_string(), lines(0..2)),
        ]
    );
    write(&mut destination, 2..3);
    assert_eq!(read(&path), lines(2..3));
}

#[test]
fn restart_with_a_file_from_this_period_appends_to_it() {
    let (dir, path) = temp("recent");
    old_file(&path, &lines(0..2), "2024-05-01 00:00:01");
    let clock = FakeClock::new("2024-05-01 08:00:00");
    let mut destination = FileDestination::new(settings(&path, daily(0, 0), &clock)).unwrap();
    write(&mut destination, 2..3);
    assert_eq!(files(&dir.0), vec![("cdr.jsonl".to_string(), lines(0..3))]);
}

#[test]
fn rotated_name_taken_gets_a_number_and_nothing_is_overwritten() {
    let (dir, path) = temp("taken");
    fs::write(with_suffix(&path, ".20240502-000000"), "keep\n").unwrap();
    fs::write(with_suffix(&path, ".20240502-000000.1"), "keep too\n").unwrap();
    let files = {
        let clock = FakeClock::new("2024-05-01 10:00:00");
        let mut destination = FileDestination::new(settings(&path, daily(0, 0), &clock)).unwrap();
        write(&mut destination, 0..1);
        clock.set("2024-05-02 00:00:00");
        write(&mut destination, 1..2);
        files(&dir.0)
    };
    assert_eq!(
        files,
        vec![
            ("cdr.jsonl".to_string(), lines(1..2)),
            (
                "cdr.jsonl.20240502-000000".to_string(),
                "keep\n".to_string()
            ),
            (
                "cdr.jsonl.20240502-000000.1".to_string(),
                "keep too\n".to_string()
            ),
            ("cdr.jsonl.20240502-000000.2".to_string(), lines(0..1)),
        ]
    );
}

#[test]
fn files_are_0640_and_owned_like_their_folder_created_folders_0750() {
    let (dir, _) = temp("owner");
    let root = effective_uid() == 0;
    // As root the folder is given to another user, whose files these must become.
    let (uid, gid) = if root {
        std::os::unix::fs::chown(&dir.0, Some(12345), Some(12346)).unwrap();
        (12345, 12346)
    } else {
        let meta = fs::metadata(&dir.0).unwrap();
        (meta.uid(), meta.gid())
    };
    let path = dir.0.join("asterisk").join("cdr").join("cdr.jsonl");
    let clock = FakeClock::new("2024-05-01 10:00:00");
    let mut destination =
        FileDestination::new(settings(&path, Rotation::Lines(1), &clock)).unwrap();
    write(&mut destination, 0..2);
    for folder in [dir.0.join("asterisk"), dir.0.join("asterisk").join("cdr")] {
        let meta = fs::metadata(&folder).unwrap();
        assert_eq!(
            meta.permissions().mode() & 0o7777,
            0o750,
            "{}",
            folder.display()
        );
        assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{}", folder.display());
    }
    // The file made at the start and the one made by the rotation.
    for file in [path.clone(), with_suffix(&path, ".20240501-100000")] {
        let meta = fs::metadata(&file).unwrap();
        assert_eq!(
            meta.permissions().mode() & 0o7777,
            0o640,
            "{}",
            file.display()
        );
        assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{}", file.display());
    }
}

/// The owner of a file just made: the effective user.
fn effective_uid() -> u32 {
    let (_dir, path) = temp("euid");
    fs::write(&path, "").unwrap();
    fs::metadata(&path).unwrap().uid()
}

#[test]
fn missing_folder_that_cannot_be_made_is_named() {
    let (dir, _) = temp("nofolder");
    let blocker = dir.0.join("plain-file");
    fs::write(&blocker, "").unwrap();
    let path = blocker.join("sub").join("cdr.jsonl");
    let clock = FakeClock::new("2024-05-01 10:00:00");
    let error = FileDestination::new(settings(&path, Rotation::Never, &clock))
        .err()
        .expect("a file in the way");
    let text = error.to_string();
    assert!(text.contains(&blocker.display().to_string()), "{text}");
    assert!(text.contains("Not a directory"), "{text}");
}

#[test]
fn short_write_is_cut_off_retried_and_written_once_after_rebuild() {
    let (dir, path) = temp("short");
    let clock = FakeClock::new("2024-05-01 10:00:00");
    // Operation 0 is the first batch's write; the second batch's write puts 5 bytes down.
    let io = Io::with_faults(FaultPlan::default().at(1, Some(Op::Write), Fault::Short(5)));
    let mut destination =
        FileDestination::with_io(settings(&path, Rotation::Never, &clock), io).unwrap();
    assert_eq!(write(&mut destination, 0..2), delivered(0..2));
    let outcomes = write(&mut destination, 2..5);
    assert_eq!(
        outcomes,
        (2..5).map(|seq| (seq, Outcome::Retry)).collect::<Vec<_>>()
    );
    assert_eq!(read(&path), lines(0..2), "no torn line");
    let reason = destination.broken().expect("broken after a failed write");
    assert!(reason.contains(&path.display().to_string()), "{reason}");
    assert!(reason.contains("No space left on device"), "{reason}");
    assert!(destination.describe().contains(&reason));
    assert_eq!(destination.offer(&record(2, b"x")), Offer::Full);
    destination.rebuild().unwrap();
    assert_eq!(destination.broken(), None);
    assert_eq!(write(&mut destination, 2..5), delivered(2..5));
    assert_eq!(files(&dir.0), vec![("cdr.jsonl".to_string(), lines(0..5))]);
    assert!(destination
        .describe()
        .contains(", 5 lines in the current file — last error: cannot write"));
}

#[test]
fn failed_cut_back_is_done_at_the_rebuild() {
    let (_dir, path) = temp("cut");
    let clock = FakeClock::new("2024-05-01 10:00:00");
    let plan = FaultPlan::default()
        .at(1, Some(Op::Write), Fault::Short(12))
        .at(2, Some(Op::SetLen), Fault::Errno(libc::EIO));
    let io = Io::with_faults(plan);
    let mut destination =
        FileDestination::with_io(settings(&path, Rotation::Never, &clock), io).unwrap();
    write(&mut destination, 0..1);
    write(&mut destination, 1..3);
    assert_eq!(read(&path), lines(0..1) + &lines(1..3)[..12]);
    let reason = destination.broken().unwrap();
    assert!(reason.contains("cutting it back"), "{reason}");
    destination.rebuild().unwrap();
    assert_eq!(write(&mut destination, 1..3), delivered(1..3));
    assert_eq!(read(&path), lines(0..3));
    assert!(destination
        .describe()
        .contains(", 3 lines in the current file — last error: cannot write"));
}

#[test]
fn failed_sync_with_always_reports_retry_and_leaves_the_file_as_before() {
    let (_dir, path) = temp("sync");
    let clock = FakeClock::new("2024-05-01 10:00:00");
    // Operations: the folder's sync after creating the file, the write, its sync.
    let io = Io::with_faults(FaultPlan::default().at(2, Some(Op::Sync), Fault::Errno(libc::EIO)));
    let mut always = settings(&path, Rotation::Never, &clock);
    always.sync = FileSync::Always;
    let mut destination = FileDestination::with_io(always, io).unwrap();
    let outcomes = write(&mut destination, 0..2);
    assert_eq!(outcomes, vec![(0, Outcome::Retry), (1, Outcome::Retry)]);
    assert_eq!(read(&path), "");
    assert!(destination.broken().unwrap().contains("Input/output error"));
    destination.rebuild().unwrap();
    assert_eq!(write(&mut destination, 0..2), delivered(0..2));
    assert_eq!(read(&path), lines(0..2));
}

#[test]
fn file_moved_away_is_followed_by_a_new_one_at_the_path() {
    let (dir, path) = temp("moved");
    let clock = FakeClock::new("2024-05-01 10:00:00");
    let mut destination = FileDestination::new(settings(&path, Rotation::Never, &clock)).unwrap();
    write(&mut destination, 0..1);
    fs::rename(&path, dir.0.join("by-logrotate")).unwrap();
    write(&mut destination, 1..2);
    assert_eq!(
        files(&dir.0),
        vec![
            ("by-logrotate".to_string(), lines(0..1)),
            ("cdr.jsonl".to_string(), lines(1..2)),
        ]
    );
}

#[test]
fn torn_last_line_of_an_existing_file_is_ended_first() {
    let (_dir, path) = temp("torn");
    fs::write(&path, "{\"n\":0}\n{\"n\":").unwrap();
    let clock = FakeClock::new("2024-05-01 10:00:00");
    let mut destination =
        FileDestination::new(settings(&path, Rotation::Lines(3), &clock)).unwrap();
    assert!(destination
        .describe()
        .ends_with("2 lines in the current file"));
    write(&mut destination, 1..2);
    assert_eq!(read(&path), "{\"n\":0}\n{\"n\":\n{\"n\":1}\n");
}

#[test]
fn flush_writes_the_batch_and_collect_reports_it() {
    let (_dir, path) = temp("flush");
    let clock = FakeClock::new("2024-05-01 10:00:00");
    let mut interval = settings(&path, Rotation::Never, &clock);
    interval.sync = FileSync::Interval(Duration::from_secs(3600));
    let mut destination = FileDestination::new(interval).unwrap();
    destination.offer(&record(0, b"{}"));
    destination.flush(Duration::from_secs(1));
    assert_eq!(read(&path), "{}\n");
    assert_eq!(destination.in_flight(), 1);
    let mut outcomes = Vec::new();
    destination.collect(&mut outcomes);
    assert_eq!(outcomes, delivered(0..1));
    assert_eq!(destination.in_flight(), 0);
}

#[test]
fn rotation_options_are_read_like_gnugk() {
    let parse = |rotate, time, day| Rotation::parse(rotate, time, day);
    assert_eq!(parse("", None, None), Ok(Rotation::Never));
    assert_eq!(parse("S10k", None, None), Ok(Rotation::Size(10 * 1024)));
    assert_eq!(parse("s2G", None, None), Ok(Rotation::Size(2 << 30)));
    assert_eq!(parse("L10000", None, None), Ok(Rotation::Lines(10_000)));
    assert_eq!(parse("L2m", None, None), Ok(Rotation::Lines(2_000_000)));
    assert_eq!(parse("Daily", Some("23:00"), None), Ok(daily(23, 0)));
    assert_eq!(parse("daily", None, None), Ok(daily(0, 0)));
    assert_eq!(
        parse("weekly", None, Some("saturday")).map(|r| r.to_string()),
        Ok("rotate weekly on Saturday at 00:00".to_string())
    );
    assert_eq!(
        parse("weekly", None, None).map(|r| r.to_string()),
        Ok("rotate weekly on Sunday at 00:00".to_string())
    );
    assert_eq!(
        parse("monthly", None, None).map(|r| r.to_string()),
        Ok("rotate monthly on day 1 at 00:00".to_string())
    );
}

#[test]
fn bad_rotation_options_say_what_is_wrong_and_what_is_accepted() {
    let error = |rotate, time, day| Rotation::parse(rotate, time, day).unwrap_err().to_string();
    assert_eq!(
        error("fortnightly", None, None),
        "rotate = 'fortnightly': not never, hourly, daily, weekly, monthly, L<lines>[k|m] or S<size>[k|m|g]"
    );
    assert!(error("S10x", None, None).starts_with("rotate = 'S10x': not never"));
    assert!(error("L0", None, None).starts_with("rotate = 'L0': not never"));
    assert_eq!(
        error("daily", Some("24:00"), None),
        "rotate_time = '24:00': not a time of day HH:MM (00:00 to 23:59)"
    );
    assert_eq!(
        error("hourly", Some("60"), None),
        "rotate_time = '60': not a minute past the hour for hourly rotation (0 to 59; 45 rotates at 00:45, 01:45, ...)"
    );
    assert_eq!(
        error("weekly", None, Some("Funday")),
        "rotate_day = 'Funday': not a day of the week for weekly rotation (Sunday to Saturday, or Sun to Sat)"
    );
    assert_eq!(
        error("monthly", None, Some("32")),
        "rotate_day = '32': not a day of the month for monthly rotation (1 to 31; a shorter month rotates on its last day)"
    );
    assert_eq!(
        error("daily", None, Some("Sun")),
        "rotate_day = 'Sun': applies only to weekly and monthly rotation, and rotate = 'daily'"
    );
    assert_eq!(
        error("L100", Some("10:00"), None),
        "rotate_time = '10:00': applies only to hourly, daily, weekly and monthly rotation, and rotate = 'L100'"
    );
}

#[test]
fn relative_path_is_refused() {
    let clock = FakeClock::new("2024-05-01 10:00:00");
    let error = FileDestination::new(settings(Path::new("cdr.jsonl"), Rotation::Never, &clock))
        .err()
        .unwrap();
    assert_eq!(
        error.to_string(),
        "file path 'cdr.jsonl': not an absolute path"
    );
}

#[test]
fn interval_sync_happens_once_the_interval_has_passed_and_its_failure_breaks() {
    let (_dir, path) = temp("interval");
    let clock = FakeClock::new("2024-05-01 10:00:00");
    // Operations: the write (the new file's folder waits for the interval), the sync.
    let io = Io::with_faults(FaultPlan::default().at(1, Some(Op::Sync), Fault::Errno(libc::EIO)));
    let mut interval = settings(&path, Rotation::Never, &clock);
    interval.sync = FileSync::Interval(Duration::ZERO);
    let mut destination = FileDestination::with_io(interval, io).unwrap();
    // Written before the sync: delivered, as with the spool's interval policy.
    assert_eq!(write(&mut destination, 0..1), delivered(0..1));
    let reason = destination.broken().expect("the failed sync breaks it");
    assert!(
        reason.starts_with(&format!("cannot sync {}", path.display())),
        "{reason}"
    );
    destination.rebuild().unwrap();
    assert_eq!(write(&mut destination, 1..2), delivered(1..2));
    assert_eq!(read(&path), lines(0..2));
}

#[test]
fn system_clock_local_time_is_utc_moved_by_its_offset() {
    let now = std::time::SystemTime::now();
    let zoned = SystemClock.local(now);
    let utc = DateTime::<chrono::Utc>::from(now).naive_utc();
    let offset = SystemClock.now().offset().local_minus_utc();
    // The offset now and at `now` are the same unless a DST change falls in between.
    let moved = (zoned - utc).num_seconds() - i64::from(offset);
    assert!(
        moved == 0 || moved.abs() == 3600,
        "{zoned} vs {utc} at offset {offset}"
    );
}

mod engine {
    //! The destination fed by the real log and feeder thread.

    use std::time::Instant;

    use super::*;
    use crate::delivery::feeder::FeederSettings;
    use crate::delivery::log::tests::{append, settings as log_settings};
    use crate::delivery::log::Log;
    use crate::delivery::Delivery;

    const FAST: FeederSettings = FeederSettings {
        batch_window: Duration::from_millis(5),
        flush_timeout: Duration::from_millis(100),
    };

    /// Every line of the rotated files (in the order they were made), then the current one's.
    fn all_lines(dir: &Path) -> String {
        let files = files(dir);
        let (current, rotated): (Vec<_>, Vec<_>) =
            files.into_iter().partition(|(name, _)| name == "cdr.jsonl");
        rotated
            .iter()
            .chain(&current)
            .map(|(_, text)| text.as_str())
            .collect()
    }

    /// Delivers 250 records through the engine; returns how often the destination was rebuilt.
    fn run(tag: &str, io: Io) -> u64 {
        let spool = TempDir::new(&format!("file-engine-{tag}"));
        let (dir, path) = temp(tag);
        let log = Arc::new(Log::open(log_settings(&spool.0)).unwrap());
        let mut delivery = Delivery::new(Arc::clone(&log));
        let clock = FakeClock::new("2024-05-01 10:00:00");
        let destination =
            FileDestination::with_io(settings(&path, Rotation::Lines(100), &clock), io).unwrap();
        delivery.start(Box::new(destination), FAST).unwrap();
        for n in 0..250 {
            append(&log, n).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while all_lines(&dir.0).len() < lines(0..250).len() {
            assert!(
                Instant::now() < deadline,
                "timed out: {}",
                all_lines(&dir.0)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let rebuilds = delivery.statuses()[0]
            .stats
            .rebuilds
            .load(std::sync::atomic::Ordering::Relaxed);
        delivery.shutdown();
        assert_eq!(all_lines(&dir.0), lines(0..250));
        rebuilds
    }

    #[test]
    fn every_record_lands_once_across_rotated_files() {
        assert_eq!(run("plain", Io::real()), 0);
    }

    #[test]
    fn short_writes_cost_nothing_and_double_nothing() {
        let plan = FaultPlan::default()
            .at(0, Some(Op::Write), Fault::Short(3))
            .at(4, Some(Op::Write), Fault::Short(20))
            .at(9, Some(Op::Write), Fault::Errno(libc::EIO));
        // The first operation is always the first write; where the others fall depends
        // on how the feeder batched the records.
        assert!(run("faults", Io::with_faults(plan)) >= 1);
    }
}
