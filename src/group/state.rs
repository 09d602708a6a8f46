//! What a group's lock guards: who its members are, which of them still run, the stops
//! recorded so far and the group's phase.
//!
//! Owns the bookkeeping of invariants 1, 3, 4 and 7 of `mod.rs`: a member is entered before
//! its Tokio task exists and leaves once, with its stop; a handle that arrives after an abort
//! began is handed back to be aborted; the stops are kept in the order they came, until the
//! report takes them; a summary reaches a member only while it runs. Nothing here locks,
//! cancels, aborts or drops user data: [`State::stop`] hands back a stop it refuses, so that
//! the caller drops it (a panic's payload, say) after the lock is released.
//!
//! Members are never removed from `members`, only marked stopped, so that an index names one
//! member for the group's life: no serial number to check, no free list, and a stop is one
//! store. The group keeps a [`TaskReport`] for every task it ever ran until the report is
//! taken, so this adds a little to memory that grows with the tasks anyway.

use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

use super::report::{Report, TaskReport};

/// Names a member: its index in `State::members`, never given twice in a group, so that an
/// id kept after its member stopped (a `Wait` polled by another task, say) names no one else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct MemberId(usize);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Phase {
    #[default]
    Open,
    /// A shutdown began or the owner is gone: spawning is refused.
    Closing,
    /// The report was taken; stops recorded after it (only a task spared by invariant 6) are
    /// dropped.
    Reported,
}

/// A member's entry in `State::members`.
enum Enrolled {
    /// Not stopped; with the handle of its Tokio task once `spawn` has it: a join handle, kept
    /// only to abort the task (which `JoinHandle::abort_handle` would make a second reference
    /// to the task for).
    Running(Option<JoinHandle<()>>),
    Stopped,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) phase: Phase,
    /// Every member so far, at the index of its [`MemberId`].
    members: Vec<Enrolled>,
    /// How many of `members` are `Running`.
    running: usize,
    /// Set once an abort began: `Some(spared)`, where `spared` is the member that asked for it,
    /// if any. A handle that arrives later is aborted at once (invariant 3).
    aborting: Option<Option<MemberId>>,
    /// The stopped tasks, in the order they stopped.
    stopped: Vec<TaskReport>,
    /// Index in `stopped` of the first task that failed or panicked.
    first_failure: Option<usize>,
    /// When the first shutdown began, and the earliest deadline of all of them (`None`: a
    /// grace too long to have one).
    pub(super) shutdown: Option<(Instant, Option<Instant>)>,
    /// Summaries of inner groups' reports for members still running (invariant 7), with the
    /// member each is for, in the order they came. Empty but for groups built inside members.
    summaries: Vec<(MemberId, Report)>,
}

impl State {
    /// Members that have not stopped.
    pub(super) fn running(&self) -> usize {
        self.running
    }

    /// Stops recorded and not yet taken by a report.
    pub(super) fn stopped(&self) -> usize {
        self.stopped.len()
    }

    /// Members other than `me` that have not stopped.
    pub(super) fn others(&self, me: Option<MemberId>) -> usize {
        let mine = me.is_some_and(|me| self.is_running(me));
        self.running - usize::from(mine)
    }

    fn is_running(&self, id: MemberId) -> bool {
        matches!(self.members.get(id.0), Some(Enrolled::Running(_)))
    }

    /// Enters a new member, without its task handle yet (invariant 1).
    pub(super) fn enroll(&mut self) -> MemberId {
        self.members.push(Enrolled::Running(None));
        self.running += 1;
        MemberId(self.members.len() - 1)
    }

    /// Keeps `id`'s handle; or hands it back if an abort that does not spare `id` began
    /// (invariant 3), to be aborted once the lock is released. Dropped if `id` has stopped.
    pub(super) fn arrived(&mut self, id: MemberId, task: JoinHandle<()>) -> Option<JoinHandle<()>> {
        let aborting = self.aborting.is_some_and(|spared| spared != Some(id));
        match &mut self.members[id.0] {
            Enrolled::Running(_) if aborting => Some(task),
            Enrolled::Running(handle) => {
                *handle = Some(task);
                None
            }
            Enrolled::Stopped => None,
        }
    }

    /// Marks that an abort of every member but `spared` began, and returns the handles to
    /// abort; those that arrive later are aborted as they do (see [`State::arrived`]).
    pub(super) fn begin_abort(&mut self, spared: Option<MemberId>) -> Vec<AbortHandle> {
        self.aborting = Some(spared);
        self.members
            .iter()
            .enumerate()
            .filter(|&(index, _)| spared != Some(MemberId(index)))
            .filter_map(|(_, entry)| match entry {
                Enrolled::Running(handle) => handle.as_ref().map(JoinHandle::abort_handle),
                Enrolled::Stopped => None,
            })
            .collect()
    }

    /// Makes room for the stop of every member still running, all at once: the stops that a
    /// shutdown or a wait is about to see come in a burst, and each growth of `stopped` would
    /// copy every stop before it. Tasks spawned meanwhile still find room as they stop.
    pub(super) fn expect_stops(&mut self) {
        self.stopped.reserve_exact(self.running);
    }

    /// Records `id`'s stop (once: `Record` calls it once per member), with the summaries handed
    /// to it, and returns whether it is the group's first failure. A stop that comes after the
    /// report is handed back, for the caller to drop once the lock is released.
    pub(super) fn stop(
        &mut self,
        id: MemberId,
        mut task: TaskReport,
        failed: bool,
    ) -> (bool, Option<TaskReport>) {
        if let Some(entry @ Enrolled::Running(_)) = self.members.get_mut(id.0) {
            *entry = Enrolled::Stopped;
            self.running -= 1;
        }
        if !self.summaries.is_empty() {
            let (mine, others) = std::mem::take(&mut self.summaries)
                .into_iter()
                .partition(|(member, _)| *member == id);
            self.summaries = others;
            task.adopt(mine.into_iter().map(|(_, summary)| summary).collect());
        }
        if self.phase == Phase::Reported {
            return (false, Some(task));
        }
        let first = failed && self.first_failure.is_none();
        if first {
            self.first_failure = Some(self.stopped.len());
        }
        self.stopped.push(task);
        (first, None)
    }

    /// Hands `summary` to member `id` if it still runs (invariant 7); otherwise hands it back,
    /// for the caller to drop once the lock is released.
    pub(super) fn hand_summary(&mut self, id: MemberId, summary: Report) -> Option<Report> {
        if !self.is_running(id) {
            return Some(summary);
        }
        self.summaries.push((id, summary));
        None
    }

    /// Takes the report's tasks and the index of the first failure among them (invariant 4):
    /// the phase is `Reported` from now on.
    pub(super) fn take_stopped(&mut self) -> (Vec<TaskReport>, Option<usize>) {
        self.phase = Phase::Reported;
        (std::mem::take(&mut self.stopped), self.first_failure)
    }
}
