//! Model-based property tests: proptest generates random trees and random sequences of
//! operations (derive, merge, cancel with and without a cause, drop or disarm a handle, drop or
//! clone a context, let time pass, wait on `done()`, register and stop `after_func` callbacks),
//! runs them against the crate on a paused current-thread Tokio runtime, and after every
//! operation compares what EVERY live context reports (`is_done`, `err`, `cause` as text and as
//! a type, `deadline`, `remaining`, values by type and by key, the census of what is registered
//! below it), every pending `done()` future (woken and ready exactly when done) and every
//! `after_func` callback (run once, stopped or dropped exactly when it should be) with a small
//! reference model written below.
//!
//! The model is a plain `Vec` of nodes with parent indices. Its rules are the crate's documented
//! semantics, written the obvious way:
//!
//! - a scope is done when a handle cancels it (or is dropped), when its own deadline passes, or
//!   when a scope it is derived from is done; the first cancellation wins and carries its error
//!   and cause to every live descendant;
//! - a deadline is the earliest of the node's own and its ancestors'; a deadline that is not
//!   earlier than the inherited one arms no timer of its own (the ancestor's fires first and its
//!   cause wins); a deadline at or before now gives a context that is done at once;
//! - a child derived from a done parent is done with the parent's error and cause;
//! - a merge is done when either parent is, with that parent's error and cause (if both are
//!   done when it is created: this context's, as Go's `AfterFunc` recipe gives);
//! - `without_cancel` is never done, has no deadline and sees its parent's values;
//! - a scope stays alive while anything holds it (a clone of its context, its armed handle, a
//!   derived context, a `done_owned()` future); once nothing does it is released, which drops
//!   its pending callbacks unrun and takes it out of every census.
//!
//! Timers that fire on the same millisecond may fire in either order; where that matters (two
//! of them reach the same merge) the model accepts any order and follows the one observed.
//!
//! `PROPTEST_CASES` sets the number of cases (default 10,000). A failing case shrinks to a
//! minimal sequence of operations.

use std::borrow::Borrow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Poll, Wake, Waker};
use std::time::Duration;

use proptest::prelude::*;
use proptest::strategy::{NewTree, ValueTree};
use proptest::test_runner::{RngAlgorithm, TestRunner};
use taskctx::testing::{Census, census};
use taskctx::{AfterFunc, CancelCauseHandle, CancelHandle, Cause, Context, DoneOwned, Error, Key};
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------------

/// How a new context is derived from an existing one.
#[derive(Clone, Debug)]
enum Derive {
    Cancel,
    CancelCause,
    /// `with_timeout(ms)`.
    Timeout(i64),
    /// `with_timeout(Duration::MAX)`: no deadline of its own.
    TimeoutMax,
    /// `with_timeout_cause(ms, text)`.
    TimeoutCause(i64),
    /// `with_deadline(now + offset)`; the offset may be negative.
    Deadline(i64),
    /// `with_deadline_cause(now + offset, io::Error)`.
    DeadlineCause(i64),
    Value(Slot, u32),
    WithoutCancel,
}

/// What a cause handle cancels with (a plain handle ignores it).
#[derive(Clone, Copy, Debug)]
enum CauseChoice {
    /// `Error::Canceled` itself: the same as no cause.
    NoCause,
    /// A `&str`.
    Text,
    /// An `std::io::Error`, to check downcasts.
    Io,
    /// `Error::DeadlineExceeded` as the cause of a cancellation.
    DeadlineError,
    /// The cause of another context, passed on as is (or text if it has none yet).
    CauseOf(usize),
}

/// Every index is resolved modulo the length of the list it points into at the time the
/// operation runs; an operation on an empty list does nothing.
#[derive(Clone, Debug)]
enum Op {
    Derive(usize, Derive),
    Merge(usize, usize),
    Cancel(usize, CauseChoice),
    DropHandle(usize),
    Disarm(usize),
    DropCtx(usize),
    CloneCtx(usize),
    /// Let this many milliseconds of (paused) Tokio time pass.
    Advance(i64),
    /// Poll a new `done_owned()` future once and keep it.
    Wait(usize),
    DropWaiter(usize),
    AfterFunc(usize),
    StopAfterFunc(usize),
    /// Drop (false) or disarm (true) the case root's handle, if the test still holds it. Kept
    /// apart from the other handles so that it is not the one most operations pick.
    RootHandle(bool),
}

/// The four value slots: two by type, two by key (one key's value type is `u32` too, so that a
/// keyed value must not show up as a value of type `u32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    TypeU32,
    TypeTenant,
    KeyUser,
    KeyTrace,
}

const SLOTS: [Slot; 4] = [
    Slot::TypeU32,
    Slot::TypeTenant,
    Slot::KeyUser,
    Slot::KeyTrace,
];

#[derive(Debug, PartialEq)]
struct Tenant(u32);

struct UserKey;
impl Key for UserKey {
    type Value = u32;
}

struct TraceKey;
impl Key for TraceKey {
    type Value = Tenant;
}

fn index() -> impl Strategy<Value = usize> {
    0..48usize
}

/// Milliseconds, often on a 5 ms grid so that deadlines coincide.
fn millis(min: i64, max: i64) -> impl Strategy<Value = i64> {
    prop_oneof![min..=max, (min / 5..=max / 5).prop_map(|k| k * 5)]
}

fn derive_strategy() -> impl Strategy<Value = Derive> {
    let slot = prop_oneof![
        Just(Slot::TypeU32),
        Just(Slot::TypeTenant),
        Just(Slot::KeyUser),
        Just(Slot::KeyTrace),
    ];
    prop_oneof![
        3 => Just(Derive::Cancel),
        3 => Just(Derive::CancelCause),
        3 => millis(0, 50).prop_map(Derive::Timeout),
        1 => Just(Derive::TimeoutMax),
        2 => millis(0, 50).prop_map(Derive::TimeoutCause),
        2 => millis(-5, 50).prop_map(Derive::Deadline),
        2 => millis(-5, 50).prop_map(Derive::DeadlineCause),
        3 => (slot, 0..100u32).prop_map(|(slot, v)| Derive::Value(slot, v)),
        1 => Just(Derive::WithoutCancel),
    ]
}

fn cause_strategy() -> impl Strategy<Value = CauseChoice> {
    prop_oneof![
        Just(CauseChoice::NoCause),
        Just(CauseChoice::Text),
        Just(CauseChoice::Io),
        Just(CauseChoice::DeadlineError),
        index().prop_map(CauseChoice::CauseOf),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        20 => (index(), derive_strategy()).prop_map(|(p, d)| Op::Derive(p, d)),
        6 => (index(), index()).prop_map(|(a, b)| Op::Merge(a, b)),
        4 => (index(), cause_strategy()).prop_map(|(h, c)| Op::Cancel(h, c)),
        4 => index().prop_map(Op::DropHandle),
        2 => index().prop_map(Op::Disarm),
        3 => index().prop_map(Op::DropCtx),
        2 => index().prop_map(Op::CloneCtx),
        8 => millis(0, 40).prop_map(Op::Advance),
        3 => index().prop_map(Op::Wait),
        2 => index().prop_map(Op::DropWaiter),
        3 => index().prop_map(Op::AfterFunc),
        2 => index().prop_map(Op::StopAfterFunc),
        1 => prop_oneof![Just(false), Just(true)].prop_map(Op::RootHandle),
    ]
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000)
}

proptest! {
    // XorShift: ChaCha, the default generator, takes most of the time in a debug build.
    #![proptest_config(ProptestConfig {
        rng_algorithm: RngAlgorithm::XorShift,
        ..ProptestConfig::with_cases(cases())
    })]

    #[test]
    fn every_context_matches_the_reference_model(ops in Ops { op: op_strategy(), max: 40 }) {
        run_case(&ops);
    }
}

/// Sequences of 1 to `max` operations that shrink to a minimal one.
///
/// proptest's own `vec` deletes elements in one pass, then shrinks the survivors, and stops for
/// good at the first element that cannot be shrunk back to a failing value. Since operations
/// name contexts by index, an earlier operation often becomes removable only after a later
/// one's indices have shrunk. This tree instead alternates deleting and shrinking until a whole
/// round changes nothing, and when an operation's shrinking dead-ends it puts back the
/// operation's last failing value and goes on with the next. A failing sequence thus ends up
/// with no operation that can be removed and no operation that can be simplified on its own.
#[derive(Debug)]
struct Ops<S> {
    op: S,
    max: usize,
}

impl<S: Strategy> Strategy for Ops<S>
where
    S::Value: Clone,
{
    type Tree = OpsTree<S::Tree>;
    type Value = Vec<S::Value>;

    fn new_tree(&self, runner: &mut TestRunner) -> NewTree<Self> {
        let len = (1..=self.max).new_tree(runner)?.current();
        let ops = (0..len)
            .map(|_| self.op.new_tree(runner))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(OpsTree {
            included: vec![true; ops.len()],
            frozen: vec![None; ops.len()],
            ops,
            phase: Phase::Delete(0),
            last: None,
            before: None,
            progress: false,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    Delete(usize),
    Shrink(usize),
    Done,
}

struct OpsTree<T: ValueTree> {
    ops: Vec<T>,
    included: Vec<bool>,
    /// Operations whose shrinking dead-ended, held at their last failing value.
    frozen: Vec<Option<T::Value>>,
    phase: Phase,
    /// The last simplification, until the runner keeps it (simplifies again) or undoes it.
    last: Option<Phase>,
    /// The value of the operation being shrunk before the last simplification (a failing one).
    before: Option<T::Value>,
    /// Whether this round of deleting and shrinking changed anything that was kept.
    progress: bool,
}

impl<T: ValueTree> ValueTree for OpsTree<T>
where
    T::Value: Clone,
{
    type Value = Vec<T::Value>;

    fn current(&self) -> Self::Value {
        (0..self.ops.len())
            .filter(|&i| self.included[i])
            .map(|i| {
                self.frozen[i]
                    .clone()
                    .unwrap_or_else(|| self.ops[i].current())
            })
            .collect()
    }

    fn simplify(&mut self) -> bool {
        if self.last.take().is_some() {
            self.progress = true; // the runner kept the previous simplification
        }
        loop {
            match self.phase {
                Phase::Delete(i) if i >= self.ops.len() => self.phase = Phase::Shrink(0),
                Phase::Delete(i) => {
                    self.phase = Phase::Delete(i + 1);
                    let left = self.included.iter().filter(|k| **k).count();
                    if self.included[i] && left > 1 {
                        self.included[i] = false;
                        self.last = Some(Phase::Delete(i));
                        return true;
                    }
                }
                Phase::Shrink(i) if i >= self.ops.len() => {
                    if !std::mem::take(&mut self.progress) {
                        self.phase = Phase::Done;
                        return false;
                    }
                    self.phase = Phase::Delete(0);
                }
                Phase::Shrink(i) => {
                    if self.included[i] && self.frozen[i].is_none() {
                        let before = self.ops[i].current();
                        if self.ops[i].simplify() {
                            self.before = Some(before);
                            self.last = Some(Phase::Shrink(i));
                            return true;
                        }
                    }
                    self.phase = Phase::Shrink(i + 1);
                }
                Phase::Done => return false,
            }
        }
    }

    fn complicate(&mut self) -> bool {
        match self.last.take() {
            Some(Phase::Delete(i)) => {
                self.included[i] = true;
                true
            }
            Some(Phase::Shrink(i)) => {
                if self.ops[i].complicate() {
                    self.last = Some(Phase::Shrink(i));
                } else {
                    // Dead end: back to its last failing value, and on to the next operation.
                    self.frozen[i] = self.before.take();
                    self.phase = Phase::Shrink(i + 1);
                }
                true
            }
            _ => false,
        }
    }
}

// Fixed sequences for the corners random ones reach rarely. In each, contexts 0 and 1 are the
// background and the case's root, and every derived context is appended.

/// Two deadlines with different causes fire on the same millisecond and both reach one merge:
/// either order is allowed, and the merge and its child must agree with the one that happened.
#[test]
fn two_deadlines_due_on_the_same_millisecond_reach_one_merge() {
    run_case(&[
        Op::Derive(1, Derive::TimeoutCause(10)),
        Op::Derive(1, Derive::DeadlineCause(10)),
        Op::Merge(2, 3),
        Op::Derive(4, Derive::Timeout(30)),
        Op::Wait(5),
        Op::AfterFunc(4),
        Op::Advance(25),
    ]);
}

/// A deadline equal to an inherited one arms no timer; the ancestor's fires and its cause wins.
#[test]
fn a_deadline_equal_to_the_inherited_one_reports_the_ancestors_cause() {
    run_case(&[
        Op::Derive(1, Derive::TimeoutCause(10)),
        Op::Derive(2, Derive::DeadlineCause(10)),
        Op::Derive(3, Derive::DeadlineCause(5)),
        Op::Advance(4),
        Op::Advance(1),
        Op::Advance(5),
    ]);
}

/// Merging two done contexts, children of done parents, a zero timeout and a past deadline.
#[test]
fn contexts_born_done_take_their_reason_from_the_right_place() {
    run_case(&[
        Op::Derive(1, Derive::CancelCause),
        Op::Derive(1, Derive::CancelCause),
        Op::Cancel(1, CauseChoice::Io),
        Op::Cancel(0, CauseChoice::Text),
        Op::Merge(2, 3),
        Op::Merge(3, 2),
        Op::Derive(2, Derive::Timeout(0)),
        Op::Derive(1, Derive::Timeout(0)),
        Op::Derive(1, Derive::Deadline(-5)),
        Op::Derive(0, Derive::WithoutCancel),
        Op::Derive(10, Derive::Timeout(0)),
    ]);
}

// ---------------------------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------------------------

/// A cause as the model sees it: the plain error, or a custom error by its type and text.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum MCause {
    Plain(Error),
    Text(String),
    Io(String),
}

impl MCause {
    /// Takes the cause by value or by reference, whichever `Context::cause` hands out.
    fn observe(cause: impl Borrow<Cause>) -> MCause {
        let cause = cause.borrow();
        if let Some(err) = cause.downcast_ref::<Error>() {
            MCause::Plain(*err)
        } else if cause.is::<std::io::Error>() {
            MCause::Io(cause.to_string())
        } else {
            MCause::Text(cause.to_string())
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum NodeKind {
    /// `Context::background()`: never done.
    Background,
    /// A cancellable scope: `with_cancel*`, `with_deadline*`, `with_timeout*`, `merge`.
    Scope,
    Value(Slot, u32),
    WithoutCancel,
}

#[derive(Clone, Debug)]
struct MNode {
    kind: NodeKind,
    /// The context it was derived from (for a merge: the one `merge` was called on).
    parent: Option<usize>,
    /// A merge's other parent.
    other: Option<usize>,
    /// The scope that decides when this context is done: itself for a scope, its parent's for
    /// a value context, none for background and `without_cancel`.
    gov: Option<usize>,
    /// For a scope: the scopes it is registered in (its parents' governing scopes).
    scope_parents: Vec<usize>,
    /// Effective deadline, in ms of virtual time since the case started.
    deadline: Option<i64>,
    /// When its own timer fires, if it armed one.
    timer: Option<i64>,
    /// The cause its own deadline reports.
    deadline_cause: MCause,
    /// For a scope: `(error, cause)` once done.
    done: Option<(Error, MCause)>,
    /// Nothing holds it any more; never checked again.
    released: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum AfState {
    /// Registered on the scope, waiting.
    Pending(usize),
    Ran,
    Stopped,
    /// Its scope was released before it was done: dropped unrun.
    Released,
    /// Registered on a context that can never be done: dropped at once; the first `stop()`
    /// still reports true (as Go's).
    Never {
        stopped: bool,
    },
}

#[derive(Clone, Debug)]
struct Model {
    nodes: Vec<MNode>,
    afs: Vec<AfState>,
    now: i64,
}

impl Model {
    fn new() -> Self {
        let background = MNode {
            kind: NodeKind::Background,
            parent: None,
            other: None,
            gov: None,
            scope_parents: Vec::new(),
            deadline: None,
            timer: None,
            deadline_cause: MCause::Plain(Error::DeadlineExceeded),
            done: None,
            released: false,
        };
        let mut model = Model {
            nodes: vec![background],
            afs: Vec::new(),
            now: 0,
        };
        // Node 1: the case's root, `background().with_cancel()`.
        model.new_scope(0, None, None);
        model
    }

    fn state(&self, node: usize) -> Option<&(Error, MCause)> {
        self.nodes[node]
            .gov
            .and_then(|g| self.nodes[g].done.as_ref())
    }

    fn push(&mut self, node: MNode) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// A new scope below `parent` (and `other`, for a merge), with an optional own deadline.
    fn new_scope(
        &mut self,
        parent: usize,
        other: Option<usize>,
        own: Option<(i64, MCause)>,
    ) -> usize {
        let inherited = earliest(
            self.nodes[parent].deadline,
            other.and_then(|o| self.nodes[o].deadline),
        );
        let own_at = own.as_ref().map(|(at, _)| *at);
        let armed = own_at.filter(|at| inherited.is_none_or(|i| *at < i));
        let scope_parents: Vec<usize> = [Some(parent), other]
            .into_iter()
            .flatten()
            .filter_map(|p| self.nodes[p].gov)
            .collect();
        // Born done: from the first parent that is done (parent, then other)...
        let mut done = scope_parents
            .iter()
            .find_map(|&p| self.nodes[p].done.clone());
        let deadline_cause = own
            .map(|(_, cause)| cause)
            .unwrap_or(MCause::Plain(Error::DeadlineExceeded));
        let mut timer = None;
        if done.is_none() {
            if let Some(at) = armed {
                if at <= self.now {
                    // ...or at once, from a deadline that has passed.
                    done = Some((Error::DeadlineExceeded, deadline_cause.clone()));
                } else {
                    timer = Some(at);
                }
            }
        }
        let index = self.nodes.len();
        self.push(MNode {
            kind: NodeKind::Scope,
            parent: Some(parent),
            other,
            gov: Some(index),
            scope_parents,
            deadline: earliest(inherited, own_at),
            timer,
            deadline_cause,
            done,
            released: false,
        })
    }

    fn new_value(&mut self, parent: usize, slot: Slot, value: u32) -> usize {
        let p = &self.nodes[parent];
        let node = MNode {
            kind: NodeKind::Value(slot, value),
            parent: Some(parent),
            other: None,
            gov: p.gov,
            scope_parents: Vec::new(),
            deadline: p.deadline,
            timer: None,
            deadline_cause: MCause::Plain(Error::DeadlineExceeded),
            done: None,
            released: false,
        };
        self.push(node)
    }

    fn new_without_cancel(&mut self, parent: usize) -> usize {
        self.push(MNode {
            kind: NodeKind::WithoutCancel,
            parent: Some(parent),
            other: None,
            gov: None,
            scope_parents: Vec::new(),
            deadline: None,
            timer: None,
            deadline_cause: MCause::Plain(Error::DeadlineExceeded),
            done: None,
            released: false,
        })
    }

    /// Cancels `scope` and every live scope below it with the same error and cause; runs the
    /// callbacks of every scope it finishes. A scope already done keeps its reason.
    fn cancel(&mut self, scope: usize, err: Error, cause: MCause) {
        let mut stack = vec![scope];
        while let Some(s) = stack.pop() {
            let node = &mut self.nodes[s];
            if node.done.is_some() || node.released {
                continue;
            }
            node.done = Some((err, cause.clone()));
            for af in &mut self.afs {
                if *af == AfState::Pending(s) {
                    *af = AfState::Ran;
                }
            }
            for (c, child) in self.nodes.iter().enumerate() {
                if child.kind == NodeKind::Scope && child.scope_parents.contains(&s) {
                    stack.push(c);
                }
            }
        }
    }

    /// Fires the timer of `scope`.
    fn fire(&mut self, scope: usize) {
        let cause = self.nodes[scope].deadline_cause.clone();
        self.cancel(scope, Error::DeadlineExceeded, cause);
    }

    /// Marks every node that nothing holds any more as released, given what the test holds.
    /// `held`: nodes whose context or handle the test holds; `waiting`: nodes of pending
    /// `done_owned()` futures, which hold only the governing scope.
    fn release_unreachable(&mut self, (held, waiting): (Vec<usize>, Vec<usize>)) {
        let mut alive = vec![false; self.nodes.len()];
        let mut stack = held;
        stack.extend(waiting.iter().filter_map(|&w| self.nodes[w].gov));
        stack.push(1); // the case's root: the test keeps a clone for the census
        while let Some(n) = stack.pop() {
            if std::mem::replace(&mut alive[n], true) {
                continue;
            }
            let node = &self.nodes[n];
            stack.extend(node.parent);
            stack.extend(node.other);
            stack.extend(node.gov); // a value context holds its scope too
        }
        for (n, node) in self.nodes.iter_mut().enumerate() {
            if !alive[n] && !node.released {
                node.released = true;
                for af in &mut self.afs {
                    if *af == AfState::Pending(n) {
                        *af = AfState::Released;
                    }
                }
            }
        }
    }

    fn live_scope(&self, n: usize) -> bool {
        let node = &self.nodes[n];
        node.kind == NodeKind::Scope && node.done.is_none() && !node.released
    }

    /// Live timers that fire at or before `until`, earliest first.
    fn next_timer(&self, until: i64) -> Option<i64> {
        (0..self.nodes.len())
            .filter(|&n| self.live_scope(n))
            .filter_map(|n| self.nodes[n].timer)
            .filter(|&at| at <= until)
            .min()
    }

    /// What `census(ctx)` reports for a context of `node`.
    fn census(&self, node: usize, waiters: &[usize]) -> (usize, usize, usize, usize) {
        let Some(g) = self.nodes[node].gov else {
            return (0, 0, 0, 0);
        };
        if !self.live_scope(g) {
            return (0, 0, 0, 0);
        }
        // Every live, held scope below `g` is registered (directly or not) in `g`. Parents come
        // before their children in `nodes`, so one pass in order finds them all.
        let mut below = vec![false; self.nodes.len()];
        below[g] = true;
        for n in g + 1..self.nodes.len() {
            below[n] = self.live_scope(n) && self.nodes[n].scope_parents.iter().any(|&p| below[p]);
        }
        let contexts = below.iter().filter(|&&b| b).count() - 1;
        let timers = (0..self.nodes.len())
            .filter(|&n| below[n] && n != g && self.nodes[n].timer.is_some())
            .count();
        let waiting = waiters
            .iter()
            .filter(|&&w| self.nodes[w].gov.is_some_and(|s| below[s]))
            .count();
        let callbacks = self
            .afs
            .iter()
            .filter(|af| matches!(af, AfState::Pending(s) if below[*s]))
            .count();
        (contexts, timers, waiting, callbacks)
    }
}

/// A cause of our own, from `Context::cause`'s answer by value or by reference.
fn owned(cause: impl Borrow<Cause>) -> Cause {
    cause.borrow().clone()
}

fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

// ---------------------------------------------------------------------------------------------
// The real thing
// ---------------------------------------------------------------------------------------------

enum Handle {
    Plain(CancelHandle),
    Cause(CancelCauseHandle),
}

/// A waker that records that it was woken.
#[derive(Default)]
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

struct Waiter {
    /// The node of the context it was made from.
    node: usize,
    future: Pin<Box<DoneOwned>>,
    flag: Arc<Flag>,
}

/// Records whether an `after_func` callback ran and whether it was dropped.
#[derive(Default)]
struct Probe {
    ran: AtomicUsize,
    dropped: AtomicBool,
}

struct OnDrop(Arc<Probe>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0.dropped.store(true, Ordering::SeqCst);
    }
}

struct Registration {
    handle: AfterFunc,
    probe: Arc<Probe>,
}

struct World {
    t0: Instant,
    /// A clone of the case's root, for its census; the model counts it as always held.
    root: Context,
    ctxs: Vec<(usize, Context)>,
    root_handle: Option<CancelHandle>,
    handles: Vec<(usize, Handle)>,
    waiters: Vec<Waiter>,
    afs: Vec<Registration>,
    /// For unique cause texts.
    counter: usize,
}

impl World {
    fn instant(&self, ms: i64) -> Instant {
        if ms >= 0 {
            self.t0 + Duration::from_millis(ms as u64)
        } else {
            self.t0 - Duration::from_millis(ms.unsigned_abs())
        }
    }

    /// What the test holds: nodes of contexts and handles; nodes of pending waiters.
    fn held(&self) -> (Vec<usize>, Vec<usize>) {
        let mut held: Vec<usize> = self.ctxs.iter().map(|(n, _)| *n).collect();
        held.extend(self.handles.iter().map(|(n, _)| *n));
        held.extend(self.root_handle.as_ref().map(|_| 1));
        (held, self.waiters.iter().map(|w| w.node).collect())
    }

    fn text(&mut self, what: &str) -> String {
        self.counter += 1;
        format!("{what} #{}", self.counter)
    }
}

/// What one context reports.
#[derive(Debug, PartialEq)]
struct Reading {
    node: usize,
    is_done: bool,
    err: Option<Error>,
    cause: Option<MCause>,
    deadline: Option<Instant>,
    remaining: Option<Duration>,
    values: [Option<u32>; 4],
    census: (usize, usize, usize, usize),
}

/// Everything the test can see, in one comparable value.
#[derive(Debug, PartialEq)]
struct Observation {
    contexts: Vec<Reading>,
    root_census: (usize, usize, usize, usize),
    /// Per pending waiter: whether it was woken and what a poll gave.
    waiters: Vec<(bool, Option<Error>)>,
    /// Per callback: how many times it ran, whether it was dropped.
    callbacks: Vec<(usize, bool)>,
}

fn census_tuple(c: Census) -> (usize, usize, usize, usize) {
    assert_eq!(
        (c.tasks, c.token_watches),
        (0, 0),
        "nothing here spawns or watches"
    );
    (c.contexts, c.timers, c.waiters, c.callbacks)
}

fn lookup(ctx: &Context, slot: Slot) -> Option<u32> {
    match slot {
        Slot::TypeU32 => ctx.value::<u32>().copied(),
        Slot::TypeTenant => ctx.value::<Tenant>().map(|t| t.0),
        Slot::KeyUser => ctx.get::<UserKey>().copied(),
        Slot::KeyTrace => ctx.get::<TraceKey>().map(|t| t.0),
    }
}

/// Reads everything; polls every pending waiter once, first, as an executor runs a woken task
/// (a woken one that is not ready was woken spuriously, which is allowed and not recorded: a
/// lone context's future waiting in its parent is woken to register in the context once it
/// links, and registered again by this poll before the censuses below count it).
fn observe(world: &mut World) -> Observation {
    let waiters = world
        .waiters
        .iter_mut()
        .map(|w| {
            let woken = w.flag.0.swap(false, Ordering::SeqCst);
            let waker = Waker::from(w.flag.clone());
            match w
                .future
                .as_mut()
                .poll(&mut std::task::Context::from_waker(&waker))
            {
                Poll::Ready(err) => (woken, Some(err)),
                Poll::Pending => (false, None),
            }
        })
        .collect();
    let contexts = world
        .ctxs
        .iter()
        .map(|(node, ctx)| Reading {
            node: *node,
            is_done: ctx.is_done(),
            err: ctx.err(),
            cause: ctx.cause().map(MCause::observe),
            deadline: ctx.deadline(),
            remaining: ctx.remaining(),
            values: SLOTS.map(|slot| lookup(ctx, slot)),
            census: census_tuple(census(ctx)),
        })
        .collect();
    let callbacks = world
        .afs
        .iter()
        .map(|r| {
            (
                r.probe.ran.load(Ordering::SeqCst),
                r.probe.dropped.load(Ordering::SeqCst),
            )
        })
        .collect();
    Observation {
        contexts,
        root_census: census_tuple(census(&world.root)),
        waiters,
        callbacks,
    }
}

/// What the model says the test should see.
fn expect(model: &Model, world: &World) -> Observation {
    let pending: Vec<usize> = world.waiters.iter().map(|w| w.node).collect();
    let contexts = world
        .ctxs
        .iter()
        .map(|(node, _)| {
            let n = &model.nodes[*node];
            let state = model.state(*node);
            let deadline = n.deadline.map(|ms| world.instant(ms));
            Reading {
                node: *node,
                is_done: state.is_some(),
                err: state.map(|(err, _)| *err),
                cause: state.map(|(_, cause)| cause.clone()),
                deadline,
                remaining: n
                    .deadline
                    .map(|ms| Duration::from_millis((ms - model.now).max(0) as u64)),
                values: SLOTS.map(|slot| model_lookup(model, *node, slot)),
                census: model.census(*node, &pending),
            }
        })
        .collect();
    let waiters = pending
        .iter()
        .map(|&node| match model.state(node) {
            Some((err, _)) => (true, Some(*err)),
            None => (false, None),
        })
        .collect();
    let callbacks = model
        .afs
        .iter()
        .map(|af| match af {
            AfState::Pending(_) => (0, false),
            AfState::Ran => (1, true),
            AfState::Stopped | AfState::Released | AfState::Never { .. } => (0, true),
        })
        .collect();
    Observation {
        contexts,
        root_census: model.census(1, &pending),
        waiters,
        callbacks,
    }
}

fn model_lookup(model: &Model, mut node: usize, slot: Slot) -> Option<u32> {
    loop {
        let n = &model.nodes[node];
        if let NodeKind::Value(s, v) = n.kind {
            if s == slot {
                return Some(v);
            }
        }
        node = n.parent?;
    }
}

/// Compares what the test sees with every model that is still possible; keeps the first that
/// agrees. Then forgets the waiters that completed.
fn check(world: &mut World, candidates: Vec<Model>, step: &dyn fmt::Display) -> Model {
    let seen = observe(world);
    let mut first_mismatch = None;
    let mut chosen = None;
    for model in candidates {
        let expected = expect(&model, world);
        if expected == seen {
            chosen = Some(model);
            break;
        }
        first_mismatch.get_or_insert(expected);
    }
    let Some(model) = chosen else {
        let expected = first_mismatch.expect("at least one candidate");
        panic!(
            "{}",
            Mismatch {
                step,
                seen: &seen,
                expected: &expected
            }
        );
    };
    // Completed waiters are done with; keep the rest.
    let mut index = 0;
    world.waiters.retain(|_| {
        let keep = seen.waiters[index].1.is_none();
        index += 1;
        keep
    });
    model
}

struct Mismatch<'a> {
    step: &'a dyn fmt::Display,
    seen: &'a Observation,
    expected: &'a Observation,
}

impl fmt::Display for Mismatch<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "the crate disagrees with the model after {}", self.step)?;
        for (i, (s, e)) in self
            .seen
            .contexts
            .iter()
            .zip(&self.expected.contexts)
            .enumerate()
        {
            if s != e {
                writeln!(
                    f,
                    "  context #{i} (node {}):\n    seen     {s:?}\n    expected {e:?}",
                    s.node
                )?;
            }
        }
        if self.seen.root_census != self.expected.root_census {
            writeln!(
                f,
                "  root census (contexts, timers, waiters, callbacks): seen {:?}, expected {:?}",
                self.seen.root_census, self.expected.root_census
            )?;
        }
        if self.seen.waiters != self.expected.waiters {
            writeln!(
                f,
                "  waiters (woken, ready): seen {:?}, expected {:?}",
                self.seen.waiters, self.expected.waiters
            )?;
        }
        if self.seen.callbacks != self.expected.callbacks {
            writeln!(
                f,
                "  callbacks (ran, dropped): seen {:?}, expected {:?}",
                self.seen.callbacks, self.expected.callbacks
            )?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Running a case
// ---------------------------------------------------------------------------------------------

fn run_case(ops: &[Op]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let t0 = Instant::now();
        let (root, cancel_root) = Context::background().with_cancel();
        let mut world = World {
            t0,
            root: root.clone(),
            ctxs: vec![(0, Context::background()), (1, root)],
            root_handle: Some(cancel_root),
            handles: Vec::new(),
            waiters: Vec::new(),
            afs: Vec::new(),
            counter: 0,
        };
        let mut model = Model::new();
        model = check(&mut world, vec![model], &"the start");
        for (step, op) in ops.iter().enumerate() {
            model = apply(&mut world, model, op, step).await;
        }
        // Epilogue: let go of everything; then nothing may be left registered, and every
        // callback must have run or been dropped.
        world.waiters.clear();
        world.ctxs.clear();
        model.release_unreachable(world.held());
        model = check(&mut world, vec![model], &"dropping every context");
        while let Some((node, handle)) = world.handles.pop() {
            drop(handle);
            model.cancel(node, Error::Canceled, MCause::Plain(Error::Canceled));
            model.release_unreachable(world.held());
            model = check(&mut world, vec![model], &"the epilogue");
        }
        if let Some(handle) = world.root_handle.take() {
            drop(handle);
            model.cancel(1, Error::Canceled, MCause::Plain(Error::Canceled));
            model.release_unreachable(world.held());
            check(&mut world, vec![model], &"the epilogue");
        }
        let left = census(&world.root);
        assert!(left.is_clean(), "left behind: {left}");
        // The root's own callbacks go with the root (if its handle was disarmed, they never ran).
        drop(world.root);
        for (i, r) in world.afs.iter().enumerate() {
            assert!(
                r.probe.dropped.load(Ordering::SeqCst),
                "callback #{i} still held"
            );
        }
    });
}

struct Step<'a>(usize, &'a Op);

impl fmt::Display for Step<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step {}: {:?}", self.0, self.1)
    }
}

fn pick(index: usize, len: usize) -> Option<usize> {
    (len > 0).then(|| index % len)
}

async fn apply(world: &mut World, mut model: Model, op: &Op, step: usize) -> Model {
    let label = Step(step, op);
    match op {
        Op::Derive(p, how) => {
            let Some(p) = pick(*p, world.ctxs.len()) else {
                return model;
            };
            let (pn, parent) = world.ctxs[p].clone();
            derive(world, &mut model, pn, &parent, how);
        }
        Op::Merge(a, b) => {
            let (Some(a), Some(b)) = (pick(*a, world.ctxs.len()), pick(*b, world.ctxs.len()))
            else {
                return model;
            };
            let (an, actx) = world.ctxs[a].clone();
            let (bn, bctx) = world.ctxs[b].clone();
            let merged = actx.merge(&bctx);
            let node = model.new_scope(an, Some(bn), None);
            world.ctxs.push((node, merged));
        }
        Op::Cancel(h, choice) => {
            let Some(h) = pick(*h, world.handles.len()) else {
                return model;
            };
            let (real, cause) = cause_for(world, *choice);
            let (node, handle) = &world.handles[h];
            let cause = match handle {
                Handle::Plain(handle) => {
                    handle.cancel();
                    MCause::Plain(Error::Canceled)
                }
                Handle::Cause(handle) => {
                    handle.cancel(real);
                    cause
                }
            };
            model.cancel(*node, Error::Canceled, cause);
        }
        Op::DropHandle(h) => {
            let Some(h) = pick(*h, world.handles.len()) else {
                return model;
            };
            let (node, handle) = world.handles.remove(h);
            drop(handle);
            model.cancel(node, Error::Canceled, MCause::Plain(Error::Canceled));
        }
        Op::Disarm(h) => {
            let Some(h) = pick(*h, world.handles.len()) else {
                return model;
            };
            match world.handles.remove(h).1 {
                Handle::Plain(handle) => handle.disarm(),
                Handle::Cause(handle) => handle.disarm(),
            }
        }
        Op::DropCtx(c) => {
            let Some(c) = pick(*c, world.ctxs.len()) else {
                return model;
            };
            drop(world.ctxs.remove(c));
        }
        Op::CloneCtx(c) => {
            let Some(c) = pick(*c, world.ctxs.len()) else {
                return model;
            };
            let clone = world.ctxs[c].clone();
            world.ctxs.push(clone);
        }
        Op::Advance(ms) => {
            let target = model.now + ms;
            // Stop at every timer on the way, so that each is checked as it fires.
            while let Some(at) = model.next_timer(target) {
                assert!(
                    at > model.now,
                    "a timer at {at} ms was left behind at {}",
                    model.now
                );
                tokio::time::advance(Duration::from_millis((at - model.now) as u64)).await;
                model.now = at;
                let firing: Vec<usize> = (0..model.nodes.len())
                    .filter(|&n| model.live_scope(n) && model.nodes[n].timer == Some(at))
                    .collect();
                let candidates = fire_in_any_order(&model, &firing);
                let label = format!("{label}, timers at {at} ms firing {firing:?}");
                model = check(world, candidates, &label);
            }
            tokio::time::advance(Duration::from_millis((target - model.now) as u64)).await;
            model.now = target;
        }
        Op::Wait(c) => {
            let Some(c) = pick(*c, world.ctxs.len()) else {
                return model;
            };
            let (node, ctx) = &world.ctxs[c];
            let flag = Arc::new(Flag::default());
            let mut future = Box::pin(ctx.done_owned());
            let waker = Waker::from(flag.clone());
            let polled = future
                .as_mut()
                .poll(&mut std::task::Context::from_waker(&waker));
            let expected = model.state(*node).map(|(err, _)| *err);
            match polled {
                Poll::Ready(err) => assert_eq!(Some(err), expected, "{label}: done() was ready"),
                Poll::Pending => {
                    assert_eq!(expected, None, "{label}: done() was pending");
                    world.waiters.push(Waiter {
                        node: *node,
                        future,
                        flag,
                    });
                }
            }
        }
        Op::DropWaiter(w) => {
            let Some(w) = pick(*w, world.waiters.len()) else {
                return model;
            };
            drop(world.waiters.remove(w));
        }
        Op::AfterFunc(c) => {
            let Some(c) = pick(*c, world.ctxs.len()) else {
                return model;
            };
            let (node, ctx) = &world.ctxs[c];
            let probe = Arc::new(Probe::default());
            let guard = OnDrop(probe.clone());
            let handle = ctx.after_func(move || {
                guard.0.ran.fetch_add(1, Ordering::SeqCst);
            });
            let state = match model.nodes[*node].gov {
                None => AfState::Never { stopped: false },
                Some(g) if model.nodes[g].done.is_some() => AfState::Ran,
                Some(g) => AfState::Pending(g),
            };
            model.afs.push(state);
            world.afs.push(Registration { handle, probe });
        }
        Op::RootHandle(disarm) => {
            let Some(handle) = world.root_handle.take() else {
                return model;
            };
            if *disarm {
                handle.disarm();
            } else {
                drop(handle);
                model.cancel(1, Error::Canceled, MCause::Plain(Error::Canceled));
            }
        }
        Op::StopAfterFunc(a) => {
            let Some(a) = pick(*a, world.afs.len()) else {
                return model;
            };
            let stopped = world.afs[a].handle.stop();
            let (expected, next) = match model.afs[a] {
                AfState::Pending(_) => (true, AfState::Stopped),
                AfState::Never { stopped: false } => (true, AfState::Never { stopped: true }),
                other => (false, other),
            };
            assert_eq!(stopped, expected, "{label}: stop() on {:?}", model.afs[a]);
            model.afs[a] = next;
        }
    }
    model.release_unreachable(world.held());
    check(world, vec![model], &label)
}

/// The cause a cause handle cancels with, and what the model expects to see of it.
fn cause_for(
    world: &mut World,
    choice: CauseChoice,
) -> (Box<dyn std::error::Error + Send + Sync>, MCause) {
    match choice {
        CauseChoice::NoCause => (Box::new(Error::Canceled), MCause::Plain(Error::Canceled)),
        CauseChoice::DeadlineError => (
            Box::new(Error::DeadlineExceeded),
            MCause::Plain(Error::DeadlineExceeded),
        ),
        CauseChoice::Io => {
            let text = world.text("io");
            (
                Box::new(std::io::Error::other(text.clone())),
                MCause::Io(text),
            )
        }
        CauseChoice::CauseOf(c) => {
            let of = pick(c, world.ctxs.len()).and_then(|c| world.ctxs[c].1.cause().map(owned));
            match of {
                // Passed on as is: the model expects exactly what that context reports.
                Some(of) => {
                    let expected = MCause::observe(&of);
                    (Box::new(of), expected)
                }
                None => cause_for(world, CauseChoice::Text),
            }
        }
        CauseChoice::Text => {
            let text = world.text("text");
            (text.clone().into(), MCause::Text(text))
        }
    }
}

fn derive(world: &mut World, model: &mut Model, pn: usize, parent: &Context, how: &Derive) {
    let now = model.now;
    match how {
        Derive::Cancel | Derive::TimeoutMax => {
            let (ctx, handle) = match how {
                Derive::Cancel => parent.with_cancel(),
                _ => parent.with_timeout(Duration::MAX),
            };
            let node = model.new_scope(pn, None, None);
            world.ctxs.push((node, ctx));
            world.handles.push((node, Handle::Plain(handle)));
        }
        Derive::CancelCause => {
            let (ctx, handle) = parent.with_cancel_cause();
            let node = model.new_scope(pn, None, None);
            world.ctxs.push((node, ctx));
            world.handles.push((node, Handle::Cause(handle)));
        }
        Derive::Timeout(ms) | Derive::Deadline(ms) => {
            let (ctx, handle) = match how {
                Derive::Timeout(_) => parent.with_timeout(Duration::from_millis(*ms as u64)),
                _ => parent.with_deadline(world.instant(now + ms)),
            };
            let node = model.new_scope(
                pn,
                None,
                Some((now + ms, MCause::Plain(Error::DeadlineExceeded))),
            );
            world.ctxs.push((node, ctx));
            world.handles.push((node, Handle::Plain(handle)));
        }
        Derive::TimeoutCause(ms) => {
            let text = world.text("timeout");
            let (ctx, handle) =
                parent.with_timeout_cause(Duration::from_millis(*ms as u64), text.clone());
            let node = model.new_scope(pn, None, Some((now + ms, MCause::Text(text))));
            world.ctxs.push((node, ctx));
            world.handles.push((node, Handle::Plain(handle)));
        }
        Derive::DeadlineCause(ms) => {
            let text = world.text("deadline");
            let at = world.instant(now + ms);
            let (ctx, handle) = parent.with_deadline_cause(at, std::io::Error::other(text.clone()));
            let node = model.new_scope(pn, None, Some((now + ms, MCause::Io(text))));
            world.ctxs.push((node, ctx));
            world.handles.push((node, Handle::Plain(handle)));
        }
        Derive::Value(slot, v) => {
            let ctx = match slot {
                Slot::TypeU32 => parent.with_value(*v),
                Slot::TypeTenant => parent.with_value(Tenant(*v)),
                Slot::KeyUser => parent.with_key::<UserKey>(*v),
                Slot::KeyTrace => parent.with_key::<TraceKey>(Tenant(*v)),
            };
            let node = model.new_value(pn, *slot, *v);
            world.ctxs.push((node, ctx));
        }
        Derive::WithoutCancel => {
            let ctx = parent.without_cancel();
            let node = model.new_without_cancel(pn);
            world.ctxs.push((node, ctx));
        }
    }
}

/// Every distinct outcome of firing `timers` (all due on the same millisecond) in some order.
/// Timers whose subtrees share no live node commute, so the distinct outcomes stay few.
fn fire_in_any_order(model: &Model, timers: &[usize]) -> Vec<Model> {
    let mut level: Vec<(Vec<usize>, Model)> = vec![(timers.to_vec(), model.clone())];
    for _ in 0..timers.len() {
        let mut next: Vec<(Vec<usize>, Model)> = Vec::new();
        for (left, m) in &level {
            for (i, &t) in left.iter().enumerate() {
                let mut fired = m.clone();
                fired.fire(t);
                let mut rest = left.clone();
                rest.remove(i);
                let duplicate = next
                    .iter()
                    .any(|(r, other)| *r == rest && same_outcome(other, &fired));
                if !duplicate {
                    next.push((rest, fired));
                }
            }
        }
        level = next;
    }
    let mut outcomes: Vec<Model> = Vec::new();
    for (_, m) in level {
        if !outcomes.iter().any(|o| same_outcome(o, &m)) {
            outcomes.push(m);
        }
    }
    outcomes
}

fn same_outcome(a: &Model, b: &Model) -> bool {
    a.afs == b.afs && a.nodes.iter().zip(&b.nodes).all(|(x, y)| x.done == y.done)
}
