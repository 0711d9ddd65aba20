//! The destinations as one stack, for control flags other than `required`: each
//! feeder posts what its destination did with each record; a destination after a
//! `sufficient` or `alternative` one asks whether the walk reaches it; and a record
//! whose final status is failure is dead-lettered once, with every destination's
//! reason (see `routing::control` for the rules).
//!
//! Memory: the board is dense, two bytes per record and destination (a status, a
//! claim bit and the number of an interned reason), kept in chunks from the lowest
//! watermark of the stack up; what every destination confirmed is dropped, whole
//! chunks at a time. No map entry per record, whatever the backlog.
//!
//! A disabled destination posts nothing. For the walk it counts as not
//! confirmed: once a record is older than its `give_up_after_ms` (counted from the
//! capture, or from the start of this run for records of an earlier one) it has failed
//! there, so destinations after it get the record; without `give_up_after_ms` they
//! wait for it.
//!
//! Shared by the feeder threads (one lock, held for look-ups only). Nothing here
//! is written to disk: a failed record is confirmed in its destination's ledger only
//! once the verdict is in, so after a restart it is tried again and fails again,
//! while a record a destination confirmed counts as delivered (or not taken, by its
//! rules).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::log::ranges::SeqRanges;
use super::log::{now_ms, Ledger, StoredRecord, Watermarks};
use crate::routing::control::{final_success, reached, ControlFlag, Status};
use crate::routing::fields::Fields;
use crate::routing::{Decision, Route};

/// Records per chunk of the board: what is freed at once.
const CHUNK_RECORDS: usize = 4096;
const STATUS_SHIFT: u16 = 14;
/// Set in a record's first cell: its dead letter was handed to one destination.
const CLAIMED: u16 = 1 << 13;
const REASON_MASK: u16 = CLAIMED - 1;
/// The reason number standing for a reason the board had no room to keep.
const REASON_OVERFLOW: u16 = REASON_MASK;

fn encode(status: Status) -> u16 {
    let code = match status {
        Status::Ok => 1,
        Status::Passed => 2,
        Status::Failed => 3,
    };
    code << STATUS_SHIFT
}

fn decode(cell: u16) -> Option<Status> {
    match cell >> STATUS_SHIFT {
        1 => Some(Status::Ok),
        2 => Some(Status::Passed),
        3 => Some(Status::Failed),
        _ => None,
    }
}

/// One destination of the stack.
pub struct Member {
    pub flag: ControlFlag,
    pub route: Route,
    /// Its `give_up_after_ms`: how long the walk waits for it while it is stopped.
    pub give_up_after: Option<Duration>,
    confirmed: Mutex<Option<Arc<Watermarks>>>,
    /// Not disabled (from the CLI).
    running: AtomicBool,
    /// Records it confirmed above its watermark when it was disabled.
    confirmed_above: Mutex<BTreeSet<u64>>,
    /// Records the walk failed for it while it was disabled (its give-up passed), not
    /// yet in its ledger: `keep_failures_of_disabled` puts them there.
    failed_while_disabled: Mutex<SeqRanges>,
}

impl Member {
    pub fn new(flag: ControlFlag, route: Route) -> Self {
        Self {
            flag,
            route,
            give_up_after: None,
            confirmed: Mutex::new(None),
            running: AtomicBool::new(true),
            confirmed_above: Mutex::new(BTreeSet::new()),
            failed_while_disabled: Mutex::new(SeqRanges::default()),
        }
    }

    pub fn with_give_up_after(mut self, limit: Option<Duration>) -> Self {
        self.give_up_after = limit;
        self
    }
}

/// What each destination did with each record, from the stack's lowest watermark up.
struct Board {
    /// The sequence number of the first record of the first chunk.
    base: u64,
    /// Every destination confirmed every record below it: those are gone for good.
    forgotten_below: u64,
    width: usize,
    chunks: VecDeque<Box<[u16]>>,
    /// Reason `n` is `reasons[n - 1]`; 0 is none.
    reasons: Vec<String>,
    reason_numbers: HashMap<String, u16>,
}

impl Board {
    fn new(width: usize) -> Self {
        Self {
            base: 0,
            forgotten_below: 0,
            width,
            chunks: VecDeque::new(),
            reasons: Vec::new(),
            reason_numbers: HashMap::new(),
        }
    }

    fn place(&self, seq: u64, index: usize) -> Option<(usize, usize)> {
        let offset = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        Some((
            offset / CHUNK_RECORDS,
            (offset % CHUNK_RECORDS) * self.width + index,
        ))
    }

    fn cell(&self, seq: u64, index: usize) -> u16 {
        self.place(seq, index)
            .and_then(|(chunk, at)| self.chunks.get(chunk).map(|c| c[at]))
            .unwrap_or(0)
    }

    /// `None` for a record every destination confirmed (forgotten).
    fn cell_mut(&mut self, seq: u64, index: usize) -> Option<&mut u16> {
        if seq < self.forgotten_below {
            return None;
        }
        let chunk_base = seq - seq % CHUNK_RECORDS as u64;
        if self.chunks.is_empty() {
            self.base = chunk_base;
        }
        // A destination behind the others posts below the first chunk.
        while chunk_base < self.base {
            let cells = vec![0; CHUNK_RECORDS * self.width].into_boxed_slice();
            self.chunks.push_front(cells);
            self.base -= CHUNK_RECORDS as u64;
        }
        let (chunk, at) = self.place(seq, index)?;
        while self.chunks.len() <= chunk {
            let cells = vec![0; CHUNK_RECORDS * self.width].into_boxed_slice();
            self.chunks.push_back(cells);
        }
        Some(&mut self.chunks[chunk][at])
    }

    fn reason_number(&mut self, reason: String) -> u16 {
        if let Some(&number) = self.reason_numbers.get(&reason) {
            return number;
        }
        if self.reasons.len() + 1 >= usize::from(REASON_OVERFLOW) {
            return REASON_OVERFLOW;
        }
        self.reasons.push(reason.clone());
        let number = self.reasons.len() as u16;
        self.reason_numbers.insert(reason, number);
        number
    }

    fn reason(&self, cell: u16) -> Option<String> {
        match cell & REASON_MASK {
            0 => None,
            REASON_OVERFLOW => Some("(reason not kept: too many different ones at once)".into()),
            n => self.reasons.get(usize::from(n) - 1).cloned(),
        }
    }

    /// Drops the chunks wholly below `lowest`.
    fn forget_below(&mut self, lowest: u64) {
        self.forgotten_below = self.forgotten_below.max(lowest);
        while !self.chunks.is_empty() && self.base + CHUNK_RECORDS as u64 <= lowest {
            self.chunks.pop_front();
            self.base += CHUNK_RECORDS as u64;
        }
        if self.chunks.is_empty() {
            self.reasons.clear();
            self.reason_numbers.clear();
        }
    }

    /// Records above what everyone confirmed with a status posted.
    fn open_records(&self) -> usize {
        let mut open = 0;
        for (number, chunk) in self.chunks.iter().enumerate() {
            let first = self.base + (number * CHUNK_RECORDS) as u64;
            for (at, cells) in chunk.chunks(self.width).enumerate() {
                if first + at as u64 >= self.forgotten_below && cells.iter().any(|c| *c != 0) {
                    open += 1;
                }
            }
        }
        open
    }

    fn bytes(&self) -> usize {
        self.chunks.len() * CHUNK_RECORDS * self.width * std::mem::size_of::<u16>()
            + self.reasons.iter().map(|r| r.capacity() * 2).sum::<usize>()
    }
}

/// What became of a record every destination has dealt with.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not every destination has dealt with it yet.
    Pending,
    /// Final status success: the failed destinations confirm it.
    Success,
    /// Final status failure, and this caller writes the dead letter with these
    /// `(destination, reason)` pairs.
    FailureWrite(Vec<(String, String)>),
    /// Final status failure, and another destination writes the dead letter.
    FailureWritten,
}

pub struct Stack {
    members: Vec<Member>,
    flags: Vec<ControlFlag>,
    board: Mutex<Board>,
    /// Records captured before this (Unix ms) count their `give_up_after_ms` from it:
    /// a restart gives them the whole limit again.
    tried_since_ms: AtomicU64,
}

impl Stack {
    pub fn new(members: Vec<Member>) -> Arc<Self> {
        let flags = members.iter().map(|m| m.flag).collect();
        let width = members.len().max(1);
        Arc::new(Self {
            members,
            flags,
            board: Mutex::new(Board::new(width)),
            tried_since_ms: AtomicU64::new(0),
        })
    }

    /// Whether the destinations share one verdict per record: with more than one (a
    /// record failed anywhere is dead-lettered once, with every destination's reason),
    /// or with a flag other than `required`.
    pub fn is_coupled(&self) -> bool {
        self.members.len() > 1 || self.members.iter().any(|m| m.flag != ControlFlag::Required)
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.members.iter().position(|m| m.route.name == name)
    }

    pub fn flag(&self, index: usize) -> ControlFlag {
        self.members[index].flag
    }

    /// A destination's feeder starts: where its confirmations stand (the watermarks, and
    /// the records its ledger confirmed above them, which the feeder skips without
    /// posting), and since when records are tried in this run.
    pub fn attach(
        &self,
        index: usize,
        watermarks: Arc<Watermarks>,
        confirmed_above: BTreeSet<u64>,
        tried_since_ms: u64,
    ) {
        let member = &self.members[index];
        *member
            .confirmed_above
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = confirmed_above;
        if let Ok(mut slot) = member.confirmed.lock() {
            *slot = Some(watermarks);
        }
        self.tried_since_ms
            .fetch_max(tried_since_ms, Ordering::AcqRel);
        self.members[index].running.store(true, Ordering::Release);
    }

    /// A destination was disabled, having confirmed `confirmed_above` above its
    /// watermark: the walk stops waiting for it (see the file's head).
    pub fn detach(&self, index: usize, confirmed_above: BTreeSet<u64>) {
        let member = &self.members[index];
        *member
            .confirmed_above
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = confirmed_above;
        member.running.store(false, Ordering::Release);
    }

    /// How long `record` has been tried in this run, in ms.
    pub fn tried_for_ms(&self, record: &StoredRecord<'_>) -> u64 {
        let since = self.tried_since_ms.load(Ordering::Acquire);
        now_ms().saturating_sub(record.captured_ms.max(since))
    }

    fn board(&self) -> MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn watermark(&self, index: usize) -> Option<u64> {
        let slot = self.members[index].confirmed.lock().ok()?;
        slot.as_ref().map(|w| w.confirmed.load(Ordering::Acquire))
    }

    fn confirmed(&self, index: usize, seq: u64) -> bool {
        let member = &self.members[index];
        self.watermark(index)
            .is_some_and(|confirmed| confirmed > seq)
            || member
                .confirmed_above
                .lock()
                .is_ok_and(|above| above.contains(&seq))
    }

    /// A disabled destination's failure: `record` waited its whole `give_up_after_ms`.
    fn gave_up_while_stopped(&self, index: usize, record: &StoredRecord<'_>) -> Option<String> {
        let member = &self.members[index];
        let limit = member.give_up_after?;
        (self.tried_for_ms(record) >= limit.as_millis() as u64).then(|| {
            format!(
                "disabled, not confirmed within give_up_after_ms = {}",
                limit.as_millis()
            )
        })
    }

    /// The statuses of members `0..upto` for `record` (with the reason of each failure
    /// that was not posted), `None` when one is not known yet.
    fn statuses<'r>(
        &self,
        board: &Board,
        upto: usize,
        record: &StoredRecord<'r>,
    ) -> Option<(Vec<Status>, Vec<Option<String>>)> {
        let mut fields: Option<Option<Fields<'r>>> = None;
        let mut statuses = Vec::with_capacity(upto);
        let mut unposted_reasons = Vec::with_capacity(upto);
        for index in 0..upto {
            let mut reason = None;
            let status = match decode(board.cell(record.seq, index)) {
                // A failure kept from an earlier configuration, where the walk now ends
                // before this destination: not reached, so not counted.
                Some(Status::Failed) if !reached(&self.flags[..index], &statuses) => Status::Passed,
                Some(status) => status,
                // Confirmed before the verdict: delivered if it was taken (a failure is
                // confirmed only after the verdict, which needs every status).
                None if self.confirmed(index, record.seq) => {
                    let route = &self.members[index].route;
                    let fields = fields
                        .get_or_insert_with(|| Fields::parse(record.payload))
                        .as_ref();
                    let taken = route.decide(record, fields) == Decision::Take;
                    if taken && reached(&self.flags[..index], &statuses) {
                        Status::Ok
                    } else {
                        Status::Passed
                    }
                }
                // Not dealt with yet: what its rules and the walk say is known now (it
                // will post the same); a record it takes waits for it, unless it is
                // disabled and the record's give-up time is up.
                None => {
                    let route = &self.members[index].route;
                    let fields = fields
                        .get_or_insert_with(|| Fields::parse(record.payload))
                        .as_ref();
                    let taken = route.decide(record, fields) == Decision::Take;
                    if !taken || !reached(&self.flags[..index], &statuses) {
                        Status::Passed
                    } else if self.members[index].running.load(Ordering::Acquire) {
                        return None;
                    } else {
                        reason = Some(self.gave_up_while_stopped(index, record)?);
                        Status::Failed
                    }
                }
            };
            statuses.push(status);
            unposted_reasons.push(reason);
        }
        Some((statuses, unposted_reasons))
    }

    /// Whether the walk reaches member `index` for `record`; `None` while a
    /// destination before it has not dealt with the record.
    pub fn reaches(&self, index: usize, record: &StoredRecord<'_>) -> Option<bool> {
        if !self.flags[..index].iter().any(|f| f.ends_walk_on_success()) {
            return Some(true);
        }
        let board = self.board();
        let (statuses, unposted) = self.statuses(&board, index, record)?;
        self.remember_failures_of_disabled(record.seq, &unposted);
        Some(reached(&self.flags[..index], &statuses))
    }

    /// A failure the walk decided for a disabled destination is that destination's from
    /// now on: kept in its ledger, the record is not tried there again after a restart.
    fn remember_failures_of_disabled(&self, seq: u64, unposted: &[Option<String>]) {
        for (index, reason) in unposted.iter().enumerate() {
            if reason.is_some() {
                self.members[index]
                    .failed_while_disabled
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(seq);
            }
        }
    }

    /// Records what member `index` did with record `seq`.
    pub fn post(&self, index: usize, seq: u64, status: Status, reason: Option<String>) {
        let mut board = self.board();
        let number = reason.map_or(0, |reason| board.reason_number(reason));
        if let Some(cell) = board.cell_mut(seq, index) {
            *cell = (*cell & CLAIMED) | encode(status) | number;
        }
    }

    /// Whether every destination has dealt with record `seq` (posted, or confirmed),
    /// or may have failed it while stopped: only then is the record worth reading for
    /// its verdict.
    pub fn is_settled_by_all(&self, seq: u64) -> bool {
        let board = self.board();
        (0..self.members.len()).all(|index| {
            decode(board.cell(seq, index)).is_some()
                || self.confirmed(index, seq)
                || !self.members[index].running.load(Ordering::Acquire)
        })
    }

    /// The final status of `record`, once every destination has dealt with it.
    pub fn verdict(&self, record: &StoredRecord<'_>) -> Verdict {
        let mut board = self.board();
        let Some((statuses, unposted)) = self.statuses(&board, self.members.len(), record) else {
            return Verdict::Pending;
        };
        self.remember_failures_of_disabled(record.seq, &unposted);
        if final_success(&self.flags, &statuses) {
            return Verdict::Success;
        }
        let reasons = (0..self.members.len())
            .filter(|&index| statuses[index] == Status::Failed)
            .filter_map(|index| {
                let reason = unposted[index]
                    .clone()
                    .or_else(|| board.reason(board.cell(record.seq, index)))?;
                Some((self.members[index].route.name.clone(), reason))
            })
            .collect();
        match board.cell_mut(record.seq, 0) {
            // Every destination confirmed it: the dead letter is written.
            None => Verdict::FailureWritten,
            Some(cell) if *cell & CLAIMED != 0 => Verdict::FailureWritten,
            Some(cell) => {
                *cell |= CLAIMED;
                Verdict::FailureWrite(reasons)
            }
        }
    }

    /// Writes into a stopped destination's ledger the failures the walk decided for it
    /// while it was disabled (before a stop, a reload or its enable).
    pub fn keep_failures_of_disabled(&self, ledger: &mut Ledger) {
        let Some(index) = self.index_of(ledger.name()) else {
            return;
        };
        let failed = std::mem::take(
            &mut *self.members[index]
                .failed_while_disabled
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        if failed.is_empty() {
            return;
        }
        for seq in failed.iter() {
            if !ledger.is_acked(seq) {
                ledger.mark_failed(seq);
            }
        }
        // A write that fails keeps them for the next one; a crash before it loses them,
        // and the records are offered there again.
        let _ = ledger.write();
    }

    /// A dead letter claimed by `FailureWrite` could not be written: another try later.
    pub fn unclaim(&self, seq: u64) {
        if let Some(cell) = self.board().cell_mut(seq, 0) {
            *cell &= !CLAIMED;
        }
    }

    /// Forgets records every destination has confirmed.
    pub fn forget_confirmed(&self) {
        let lowest = (0..self.members.len())
            .map(|index| self.watermark(index).unwrap_or(0))
            .min()
            .unwrap_or(0);
        self.board().forget_below(lowest);
    }

    /// Records with a status posted that not every destination has confirmed yet.
    pub fn open_records(&self) -> usize {
        self.board().open_records()
    }

    /// Bytes the board holds (the bound: two per record and destination).
    pub fn board_bytes(&self) -> usize {
        self.board().bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::log::RecordKind;
    use crate::routing::RecordKinds;
    use std::sync::atomic::AtomicU64;

    fn record(seq: u64) -> StoredRecord<'static> {
        StoredRecord {
            seq,
            captured_ms: 0,
            kind: RecordKind::Cdr,
            record_id: "r",
            topic: "t",
            key: None,
            headers: Vec::new(),
            payload: br#"{"answer":null}"#,
        }
    }

    fn failover() -> Arc<Stack> {
        Stack::new(vec![
            Member::new(
                ControlFlag::Alternative,
                Route::plain("global", RecordKinds::CDR),
            ),
            Member::new(
                ControlFlag::Sufficient,
                Route::plain("archive", RecordKinds::CDR),
            ),
        ])
    }

    #[test]
    fn the_file_waits_for_kafka_and_takes_only_what_kafka_failed() {
        let stack = failover();
        assert!(stack.is_coupled());
        assert_eq!(
            stack.reaches(1, &record(1)),
            None,
            "kafka has not dealt with it"
        );
        stack.post(0, 1, Status::Ok, None);
        assert_eq!(stack.reaches(1, &record(1)), Some(false));
        stack.post(
            0,
            2,
            Status::Failed,
            Some("not confirmed within 30000 ms".into()),
        );
        assert_eq!(stack.reaches(1, &record(2)), Some(true));
        assert_eq!(stack.verdict(&record(2)), Verdict::Pending);
        assert!(!stack.is_settled_by_all(2));
        stack.post(1, 2, Status::Ok, None);
        assert!(stack.is_settled_by_all(2));
        assert_eq!(stack.verdict(&record(2)), Verdict::Success);
    }

    #[test]
    fn a_failure_of_both_is_dead_lettered_once_with_both_reasons() {
        let stack = failover();
        stack.post(0, 7, Status::Failed, Some("kafka down".into()));
        stack.post(1, 7, Status::Failed, Some("disk full".into()));
        assert_eq!(
            stack.verdict(&record(7)),
            Verdict::FailureWrite(vec![
                ("global".into(), "kafka down".into()),
                ("archive".into(), "disk full".into())
            ])
        );
        assert_eq!(stack.verdict(&record(7)), Verdict::FailureWritten);
        stack.unclaim(7);
        assert!(matches!(
            stack.verdict(&record(7)),
            Verdict::FailureWrite(_)
        ));
    }

    #[test]
    fn after_a_restart_a_confirmed_record_counts_as_delivered() {
        let stack = failover();
        let kafka = Arc::new(Watermarks {
            confirmed: AtomicU64::new(10),
            durable: AtomicU64::new(10),
        });
        stack.attach(0, kafka, BTreeSet::new(), 0);
        assert_eq!(stack.reaches(1, &record(9)), Some(false));
        assert_eq!(stack.reaches(1, &record(10)), None);
    }

    #[test]
    fn after_a_restart_a_record_confirmed_above_the_watermark_counts_as_delivered() {
        // Kafka confirmed 12 and 13 while 10 waited for its verdict: its feeder starts at
        // 10 and skips 12 and 13 without posting, so the walk learns of them at attach.
        let stack = failover();
        let kafka = Arc::new(Watermarks {
            confirmed: AtomicU64::new(10),
            durable: AtomicU64::new(10),
        });
        stack.attach(0, kafka, BTreeSet::from([12, 13]), 0);
        assert_eq!(stack.reaches(1, &record(12)), Some(false));
        assert_eq!(stack.reaches(1, &record(13)), Some(false));
        assert_eq!(stack.reaches(1, &record(11)), None);
    }

    #[test]
    fn a_record_kafka_does_not_take_goes_to_the_file_even_after_a_restart() {
        let mut answered_only = Route::plain("global", RecordKinds::CDR);
        answered_only.missed = crate::routing::Missed::Exclude;
        let stack = Stack::new(vec![
            Member::new(ControlFlag::Alternative, answered_only),
            Member::new(
                ControlFlag::Sufficient,
                Route::plain("archive", RecordKinds::CDR),
            ),
        ]);
        stack.attach(
            0,
            Arc::new(Watermarks {
                confirmed: AtomicU64::new(10),
                durable: AtomicU64::new(10),
            }),
            BTreeSet::new(),
            0,
        );
        assert_eq!(
            stack.reaches(1, &record(3)),
            Some(true),
            "a missed call kafka left out"
        );
    }

    #[test]
    fn required_destinations_never_wait_for_each_other_and_share_one_verdict() {
        let stack = Stack::new(vec![
            Member::new(ControlFlag::Required, Route::plain("a", RecordKinds::CDR)),
            Member::new(ControlFlag::Required, Route::plain("b", RecordKinds::CDR)),
        ]);
        assert!(stack.is_coupled());
        assert_eq!(
            stack.reaches(1, &record(1)),
            Some(true),
            "b does not wait for a"
        );
        stack.post(1, 1, Status::Failed, Some("refused".into()));
        assert_eq!(
            stack.verdict(&record(1)),
            Verdict::Pending,
            "a has not dealt with it"
        );
        stack.post(0, 1, Status::Ok, None);
        assert_eq!(
            stack.verdict(&record(1)),
            Verdict::FailureWrite(vec![("b".into(), "refused".into())])
        );
        let alone = Stack::new(vec![Member::new(
            ControlFlag::Required,
            Route::plain("global", RecordKinds::CDR),
        )]);
        assert!(
            !alone.is_coupled(),
            "one required destination dead-letters by itself"
        );
    }

    fn watermarks(at: u64) -> Arc<Watermarks> {
        Arc::new(Watermarks {
            confirmed: AtomicU64::new(at),
            durable: AtomicU64::new(at),
        })
    }

    #[test]
    fn the_board_holds_two_bytes_per_record_and_destination_whatever_the_backlog() {
        let stack = Stack::new(vec![
            Member::new(
                ControlFlag::Required,
                Route::plain("global", RecordKinds::CDR),
            ),
            Member::new(
                ControlFlag::Required,
                Route::plain("copy", RecordKinds::CDR),
            ),
            Member::new(
                ControlFlag::Required,
                Route::plain("archive", RecordKinds::CDR),
            ),
        ]);
        let kafka = watermarks(0);
        let copy = watermarks(0);
        let archive = watermarks(0);
        stack.attach(0, Arc::clone(&kafka), BTreeSet::new(), 0);
        stack.attach(1, Arc::clone(&copy), BTreeSet::new(), 0);
        stack.attach(2, Arc::clone(&archive), BTreeSet::new(), 0);
        // Kafka is down: the two others deliver a million records, with a reason each.
        let records = 1_000_000u64;
        for seq in 0..records {
            stack.post(1, seq, Status::Ok, None);
            stack.post(2, seq, Status::Failed, Some("disk full".into()));
        }
        copy.confirmed.store(records, Ordering::Release);
        stack.forget_confirmed();
        let per_record = stack.board_bytes() as f64 / records as f64;
        assert!(per_record <= 6.1, "{per_record} bytes per record");
        // Kafka back: everything confirmed, the board keeps at most its last chunk.
        kafka.confirmed.store(records, Ordering::Release);
        archive.confirmed.store(records, Ordering::Release);
        stack.forget_confirmed();
        assert!(stack.board_bytes() <= CHUNK_RECORDS * 3 * 2 + 64);
    }

    #[test]
    fn a_destination_behind_the_others_posts_below_the_first_chunk() {
        let stack = failover();
        stack.post(1, 3 * CHUNK_RECORDS as u64, Status::Ok, None);
        stack.post(0, 5, Status::Failed, Some("not confirmed".into()));
        stack.post(1, 5, Status::Failed, Some("disk full".into()));
        assert_eq!(
            stack.verdict(&record(5)),
            Verdict::FailureWrite(vec![
                ("global".into(), "not confirmed".into()),
                ("archive".into(), "disk full".into())
            ])
        );
    }

    #[test]
    fn a_disabled_alternative_hands_the_file_its_records_once_given_up() {
        let stack = Stack::new(vec![
            Member::new(
                ControlFlag::Alternative,
                Route::plain("global", RecordKinds::CDR),
            )
            .with_give_up_after(Some(Duration::from_millis(3000))),
            Member::new(
                ControlFlag::Sufficient,
                Route::plain("archive", RecordKinds::CDR),
            ),
        ]);
        stack.attach(0, watermarks(0), BTreeSet::new(), 0);
        stack.attach(1, watermarks(0), BTreeSet::new(), 0);
        let mut old = record(1);
        old.captured_ms = now_ms() - 3_500;
        let mut young = record(2);
        young.captured_ms = now_ms();
        assert_eq!(stack.reaches(1, &old), None, "running: the file waits");
        stack.detach(0, BTreeSet::new());
        assert_eq!(
            stack.reaches(1, &old),
            Some(true),
            "given up: the file takes it"
        );
        assert_eq!(stack.reaches(1, &young), None, "not yet given up");
        stack.post(1, 1, Status::Failed, Some("disk full".into()));
        assert!(stack.is_settled_by_all(1));
        assert_eq!(
            stack.verdict(&old),
            Verdict::FailureWrite(vec![
                (
                    "global".into(),
                    "disabled, not confirmed within give_up_after_ms = 3000".into()
                ),
                ("archive".into(), "disk full".into())
            ])
        );
        // A run that started after the capture gives the record the whole limit again.
        stack.attach(0, watermarks(0), BTreeSet::new(), now_ms());
        stack.detach(0, BTreeSet::new());
        assert_eq!(stack.reaches(1, &record_at(3, old.captured_ms)), None);
    }

    #[test]
    fn a_disabled_destination_without_give_up_after_holds_the_walk() {
        let stack = failover();
        stack.detach(0, BTreeSet::new());
        let mut old = record(1);
        old.captured_ms = 1;
        assert_eq!(stack.reaches(1, &old), None);
    }

    fn record_at(seq: u64, captured_ms: u64) -> StoredRecord<'static> {
        StoredRecord {
            captured_ms,
            ..record(seq)
        }
    }
}
