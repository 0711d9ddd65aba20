//! The pass thread the destinations that never wait share (Kafka's, see
//! `Destination::never_waits`): one wake-up per window hands what was appended to all
//! of them, instead of one thread and one wake-up per destination. Each feeder keeps
//! its own cursor, ledger and window; a feeder behind reads its own backlog.
//!
//! Stops are taken all at once: each feeder's last flush ends by the deadline its
//! `Stop` was given, so feeders stopping one after another on this thread take one
//! flush between them, as feeders on their own threads do side by side.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use super::feeder::{Feeder, Next, Stop};
use super::log::{Ledger, Log};

/// Linux keeps 15 bytes of a thread's name.
const THREAD_NAME: &str = "cdr_kafka-kafka";

/// A feeder handed to the pass thread, with how it is stopped and where its ledger goes.
pub struct Member {
    pub feeder: Feeder,
    pub stop: Arc<Stop>,
    pub done: mpsc::SyncSender<(Ledger, u64)>,
}

struct Slot {
    member: Member,
    next: Next,
    due: Instant,
}

/// The running pass thread; `end` joins it.
pub struct Passes {
    log: Arc<Log>,
    handed: Sender<Member>,
    thread: JoinHandle<()>,
}

impl Passes {
    pub fn spawn(log: Arc<Log>) -> std::io::Result<Self> {
        let (handed, members) = mpsc::channel();
        let thread_log = Arc::clone(&log);
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || run(&thread_log, &members))?;
        Ok(Self {
            log,
            handed,
            thread,
        })
    }

    /// Hands a feeder over; it passes from the next wake-up on. If the thread ended
    /// (it cannot while a `Passes` holds it), the feeder is dropped with its records
    /// still in the log, and its stop reports no ledger.
    pub fn hand(&self, member: Member) {
        let _ = self.handed.send(member);
        self.log.wake_feeders();
    }

    /// Ends the thread once every feeder on it has stopped.
    pub fn end(self) {
        drop(self.handed);
        self.log.wake_feeders();
        let _ = self.thread.join();
    }
}

fn run(log: &Log, members: &Receiver<Member>) {
    let mut slots: Vec<Slot> = Vec::new();
    let mut hurried = log.hurried();
    loop {
        let seen = log.wake_generation();
        let hurry = log.hurried();
        let hurried_now = std::mem::replace(&mut hurried, hurry) != hurry;
        if !take_new(members, &mut slots) {
            return;
        }
        finish_stopped(&mut slots);
        for slot in &mut slots {
            if slot
                .member
                .feeder
                .passes_now(slot.next, slot.due, hurried_now)
            {
                slot.next = slot.member.feeder.guarded_pass();
                slot.due = Instant::now() + slot.member.feeder.pause(slot.next);
            }
        }
        let Some(due) = slots.iter().map(|slot| slot.due).min() else {
            continue;
        };
        let timeout = due.saturating_duration_since(Instant::now());
        if slots.iter().all(|slot| slot.next == Next::Idle) {
            let from = slots
                .iter()
                .map(|slot| slot.member.feeder.cursor())
                .min()
                .unwrap_or(0);
            log.wait_for_append_since(seen, from, timeout);
        } else {
            log.wait_since(seen, timeout);
        }
    }
}

/// Takes the feeders handed over since the last look; with none running, waits for
/// one. False once the sender is gone and no feeder is left: the thread ends.
fn take_new(members: &Receiver<Member>, slots: &mut Vec<Slot>) -> bool {
    loop {
        let received = if slots.is_empty() {
            members.recv().map_err(|_| TryRecvError::Disconnected)
        } else {
            members.try_recv()
        };
        match received {
            Ok(member) => {
                member.feeder.started();
                slots.push(Slot {
                    member,
                    next: Next::Soon,
                    due: Instant::now(),
                });
            }
            Err(TryRecvError::Empty) => return true,
            Err(TryRecvError::Disconnected) => return !slots.is_empty(),
        }
    }
}

/// Stops every feeder whose stop was asked for, one after another, each within its
/// stop's deadline, and hands each ledger back.
fn finish_stopped(slots: &mut Vec<Slot>) {
    if !slots.iter().any(|slot| slot.member.stop.requested()) {
        return;
    }
    let (stopping, running): (Vec<Slot>, Vec<Slot>) = std::mem::take(slots)
        .into_iter()
        .partition(|slot| slot.member.stop.requested());
    *slots = running;
    for slot in stopping {
        let Member { feeder, stop, done } = slot.member;
        // A panic in one flush (logged by the hook) must not end the others: that
        // feeder's ledger is read again at its next start.
        if let Ok(result) = catch_unwind(AssertUnwindSafe(|| feeder.finish(&stop))) {
            let _ = done.send(result);
        }
    }
}
