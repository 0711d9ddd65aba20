//! The destinations as one stack, for control flags other than `required`: each
//! feeder posts what its destination did with each record; a destination after a
//! `sufficient` or `alternative` one asks whether the walk reaches it; and a record
//! whose final status is failure is dead-lettered once, with every destination's
//! reason (see `routing::control` for the rules).
//!
//! Shared by the feeder threads (one lock, held for map look-ups only). Nothing here
//! is written to disk: a failed record is confirmed in its destination's ledger only
//! once the verdict is in, so after a restart it is tried again and fails again (a
//! give-up is decided by the record's age, which only grows), while a record a
//! destination confirmed counts as delivered (or not taken, by its rules).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use super::log::{StoredRecord, Watermarks};
use crate::routing::control::{final_success, reached, ControlFlag, Status};
use crate::routing::fields::Fields;
use crate::routing::{Decision, Route};

/// One destination of the stack.
pub struct Member {
    pub flag: ControlFlag,
    pub route: Route,
    confirmed: Mutex<Option<Arc<Watermarks>>>,
}

impl Member {
    pub fn new(flag: ControlFlag, route: Route) -> Self {
        Self {
            flag,
            route,
            confirmed: Mutex::new(None),
        }
    }
}

#[derive(Default)]
struct Posted {
    statuses: Vec<Option<Status>>,
    reasons: Vec<Option<String>>,
    /// The failure's dead letter has been handed to one destination to write.
    dead_letter_claimed: bool,
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
    board: Mutex<BTreeMap<u64, Posted>>,
}

impl Stack {
    pub fn new(members: Vec<Member>) -> Arc<Self> {
        Arc::new(Self {
            members,
            board: Mutex::new(BTreeMap::new()),
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

    /// Tells the stack where a destination's confirmations stand (at each start).
    pub fn attach(&self, index: usize, watermarks: Arc<Watermarks>) {
        if let Ok(mut slot) = self.members[index].confirmed.lock() {
            *slot = Some(watermarks);
        }
    }

    fn board(&self) -> MutexGuard<'_, BTreeMap<u64, Posted>> {
        self.board.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn confirmed(&self, index: usize, seq: u64) -> bool {
        let slot = self.members[index].confirmed.lock();
        slot.ok()
            .and_then(|w| {
                w.as_ref()
                    .map(|w| w.confirmed.load(Ordering::Acquire) > seq)
            })
            .unwrap_or(false)
    }

    /// The statuses of members `0..upto` for `record`, `None` when one is not known yet.
    fn statuses<'r>(
        &self,
        board: &BTreeMap<u64, Posted>,
        upto: usize,
        record: &StoredRecord<'r>,
        fields: &mut Option<Option<Fields<'r>>>,
    ) -> Option<Vec<Status>> {
        let flags: Vec<ControlFlag> = self.members.iter().map(|m| m.flag).collect();
        let posted = board.get(&record.seq);
        let mut statuses = Vec::with_capacity(upto);
        for index in 0..upto {
            let status = match posted.and_then(|p| p.statuses.get(index).copied().flatten()) {
                Some(status) => status,
                // Confirmed before the verdict: delivered if it was taken (a failure is
                // confirmed only after the verdict, which needs every status).
                None if self.confirmed(index, record.seq) => {
                    let route = &self.members[index].route;
                    let fields = fields
                        .get_or_insert_with(|| Fields::parse(record.payload))
                        .as_ref();
                    let taken = route.decide(record, fields) == Decision::Take;
                    if taken && reached(&flags[..index], &statuses) {
                        Status::Ok
                    } else {
                        Status::Passed
                    }
                }
                None => return None,
            };
            statuses.push(status);
        }
        Some(statuses)
    }

    /// Whether the walk reaches member `index` for `record`; `None` while a
    /// destination before it has not dealt with the record.
    pub fn reaches(&self, index: usize, record: &StoredRecord<'_>) -> Option<bool> {
        let flags: Vec<ControlFlag> = self.members.iter().map(|m| m.flag).collect();
        if !flags[..index].iter().any(|f| f.ends_walk_on_success()) {
            return Some(true);
        }
        let board = self.board();
        let mut fields = None;
        let statuses = self.statuses(&board, index, record, &mut fields)?;
        Some(reached(&flags[..index], &statuses))
    }

    /// Records what member `index` did with record `seq`.
    pub fn post(&self, index: usize, seq: u64, status: Status, reason: Option<String>) {
        let mut board = self.board();
        let posted = board.entry(seq).or_default();
        if posted.statuses.len() < self.members.len() {
            posted.statuses.resize(self.members.len(), None);
            posted.reasons.resize(self.members.len(), None);
        }
        posted.statuses[index] = Some(status);
        posted.reasons[index] = reason;
    }

    /// Whether every destination has dealt with record `seq` (posted, or confirmed):
    /// only then is the record worth reading for its verdict.
    pub fn is_settled_by_all(&self, seq: u64) -> bool {
        let board = self.board();
        let posted = board.get(&seq);
        (0..self.members.len()).all(|index| {
            posted.is_some_and(|p| p.statuses.get(index).copied().flatten().is_some())
                || self.confirmed(index, seq)
        })
    }

    /// The final status of `record`, once every destination has dealt with it.
    pub fn verdict(&self, record: &StoredRecord<'_>) -> Verdict {
        let flags: Vec<ControlFlag> = self.members.iter().map(|m| m.flag).collect();
        let mut board = self.board();
        let mut fields = None;
        let Some(statuses) = self.statuses(&board, self.members.len(), record, &mut fields) else {
            return Verdict::Pending;
        };
        if final_success(&flags, &statuses) {
            return Verdict::Success;
        }
        let Some(posted) = board.get_mut(&record.seq) else {
            return Verdict::FailureWritten;
        };
        if posted.dead_letter_claimed {
            return Verdict::FailureWritten;
        }
        posted.dead_letter_claimed = true;
        let reasons = self
            .members
            .iter()
            .zip(&posted.reasons)
            .filter_map(|(member, reason)| Some((member.route.name.clone(), reason.clone()?)))
            .collect();
        Verdict::FailureWrite(reasons)
    }

    /// A dead letter claimed by `FailureWrite` could not be written: another try later.
    pub fn unclaim(&self, seq: u64) {
        if let Some(posted) = self.board().get_mut(&seq) {
            posted.dead_letter_claimed = false;
        }
    }

    /// Forgets records every destination has confirmed.
    pub fn forget_confirmed(&self) {
        let lowest = (0..self.members.len())
            .map(|index| {
                self.members[index]
                    .confirmed
                    .lock()
                    .ok()
                    .and_then(|w| w.as_ref().map(|w| w.confirmed.load(Ordering::Acquire)))
                    .unwrap_or(0)
            })
            .min()
            .unwrap_or(0);
        let mut board = self.board();
        if board
            .first_key_value()
            .is_some_and(|(seq, _)| *seq < lowest)
        {
            *board = board.split_off(&lowest);
        }
    }

    /// Records with a status posted and no verdict yet (for the status output).
    pub fn open_records(&self) -> usize {
        self.board().len()
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
        stack.attach(0, kafka);
        assert_eq!(stack.reaches(1, &record(9)), Some(false));
        assert_eq!(stack.reaches(1, &record(10)), None);
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
}
