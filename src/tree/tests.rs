use std::time::Duration;

use std::mem;
use std::sync::Arc;

use crate::Context;
use crate::sync::{Mutex, Ordering};

use super::batch::*;
use super::inner::*;
use super::kept::Kept;
use super::link::*;
use super::lone::*;
use super::once::*;
use super::recycle::*;
use super::shards::*;
use super::*;

/// A `with_cancel` scope under `Background`, held by nothing else.
pub(crate) fn plain_scope() -> Arc<Scope> {
    Scope::with_cancel(&Node::Background)
}

/// The layout note on [`Scope`]: the fields children read from their parent never share a
/// 64-byte line with the reference counts (the first 16 bytes of the `Arc` allocation) or
/// the lone count, at any 16-byte alignment of the allocation.
#[test]
fn what_children_read_never_shares_a_line_with_the_counts() {
    let scope = plain_scope();
    let base = Arc::as_ptr(&scope) as usize - 16;
    let at = |field: *const u8| field as usize - base;
    let lone = at((&scope.lone as *const AtomicU32).cast());
    assert_eq!(lone, 16, "the lone count right after the reference counts");
    let home = at((&scope.home as *const AtomicU32).cast());
    let read = [
        at((&scope.state as *const AtomicU8).cast()),
        at((&scope.parent as *const Node).cast()),
        at((&scope.deadline as *const Option<Instant>).cast()),
    ];
    for align in [0, 16, 32, 48] {
        let written_line = (align + home + 3) / 64; // the last byte written
        for start in read {
            assert!(
                (align + start) / 64 > written_line,
                "a field at offset {start} shares the counts' line at alignment {align}"
            );
        }
    }
}

/// A derived pair whose context is registered in its parent rather than lone, as it is
/// once anything registers in it (see `lone.rs`).
fn linked<T>(pair: (Context, T)) -> (Context, T) {
    pair.0.scope().unwrap().link_first();
    assert_eq!(
        pair.0.scope().unwrap().state.load(Ordering::Relaxed) & LONE,
        0
    );
    pair
}

/// The last handle of a chain's link whose child has gone lets the link go unfinished only
/// when nothing could tell (it is then reused), and cancels it when it still holds
/// something: a callback whose `AfterFunc` was dropped runs, a token handed out is
/// cancelled.
#[test]
fn a_links_last_handle_cancels_it_only_when_something_could_tell() {
    on_fresh_thread(|| {
        let (root, _cancel_root) = Context::background().with_cancel();
        let link = |root: &Context| {
            let (ctx, cancel) = root.with_cancel();
            drop(ctx.with_cancel()); // a child links it (`BUSY`) and goes
            assert_ne!(ctx.scope().unwrap().state.load(Ordering::Relaxed) & BUSY, 0);
            (ctx, cancel)
        };

        let (ctx, cancel) = link(&root);
        let old = address(&ctx);
        drop(ctx);
        drop(cancel); // nothing could tell: kept unfinished, reused next
        let (next, _cancel_next) = root.with_cancel();
        assert_eq!(address(&next), old);
        assert!(!next.is_done());

        let (ctx, cancel) = link(&root);
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = Arc::clone(&ran);
        drop(ctx.after_func(move || seen.store(true, Ordering::SeqCst)));
        drop(ctx);
        drop(cancel);
        assert!(ran.load(Ordering::SeqCst), "the callback ran");

        let (ctx, cancel) = link(&root);
        let token = ctx.token();
        drop(ctx);
        drop(cancel);
        assert!(token.is_cancelled(), "the token handed out is cancelled");
    });
}

/// The lone counts of `scope`: its own, and its shards' summed (either may have wrapped).
fn lone_counts(scope: &Scope) -> (u32, u32) {
    let in_shards = scope.shards.get().map(|shards| {
        let counts = shards.0.iter().map(|shard| shard.1.load(Ordering::Relaxed));
        counts.fold(0, u32::wrapping_add)
    });
    (scope.lone.load(Ordering::Relaxed), in_shards.unwrap_or(0))
}

/// Lone children are counted in their parent's own count until [`AWAY_LIMIT`] of them were
/// made on other threads than the parent's home; then the parent has shards, and children
/// made or released on those threads count in their shard. A child released elsewhere than
/// it was made leaves the count of the releasing thread, so counts may wrap, but their sum
/// is what the census and the event read, and it is exact.
#[test]
fn lone_children_made_elsewhere_give_their_parent_shards_only_when_many() {
    let (parent, cancel) = Context::background().with_cancel();
    let scope = parent.scope().unwrap().clone();
    let sum = || {
        let (own, shards) = lone_counts(&scope);
        own.wrapping_add(shards)
    };
    let on_another_thread = |f: Box<dyn FnOnce() + Send>| std::thread::spawn(f).join().unwrap();
    let made_away = |n: u32| {
        let parent = parent.clone();
        std::thread::spawn(move || (0..n).map(|_| parent.with_cancel()).collect::<Vec<_>>())
            .join()
            .unwrap()
    };

    let home = parent.with_cancel();
    let few = made_away(3);
    assert_eq!(lone_counts(&scope), (4, 0));
    assert!(
        scope.shards.get().is_none(),
        "a few children made elsewhere: no shards"
    );
    let many = made_away(AWAY_LIMIT - 3 + 2); // the limit's birth makes the shards
    assert!(scope.shards.get().is_some());
    assert_eq!(lone_counts(&scope), (1 + AWAY_LIMIT + 1, 1));
    assert_eq!(
        crate::testing::census(&parent).contexts,
        AWAY_LIMIT as usize + 3
    );

    drop((few, many)); // released here, at home: they leave the parent's own count
    assert_eq!(sum(), 1);
    on_another_thread(Box::new(move || drop(home))); // made at home, released away
    assert_eq!(sum(), 0);
    assert_eq!(crate::testing::census(&parent).contexts, 0);

    // Linked on another thread, and cancelled through the walk.
    let (ctx, _cancel_ctx) = parent.with_cancel();
    let linking = ctx.clone();
    on_another_thread(Box::new(move || linking.scope().unwrap().link_first()));
    assert_eq!(sum(), 0, "left the count as it linked");
    assert_eq!(crate::testing::census(&parent).contexts, 1);
    let lone = parent.with_cancel();
    assert_eq!(sum(), 1);
    cancel.cancel();
    assert!(ctx.is_done() && lone.0.is_done());
    assert_eq!(
        sum(),
        0,
        "a lone child finished by its query leaves the count"
    );
}

/// The address of the scope behind `ctx`, to see whether an allocation was reused.
fn address(ctx: &Context) -> usize {
    Arc::as_ptr(ctx.scope().unwrap()) as usize
}

/// Runs `f` on a thread of its own, whose spare scopes no other test touches.
fn on_fresh_thread(f: impl FnOnce() + Send + 'static) {
    std::thread::spawn(f).join().unwrap();
}

#[test]
fn a_released_scope_is_reused_clean_whatever_it_held() {
    on_fresh_thread(|| {
        // A cancellation with a custom cause, under a parent with a value.
        let parent = Context::background().with_value(1u8);
        let (ctx, cancel) = parent.with_cancel_cause();
        let old = address(&ctx);
        cancel.cancel("went away");
        assert_eq!(ctx.cause().unwrap().to_string(), "went away");
        drop((ctx, cancel));

        let (ctx, cancel) = Context::background().with_cancel();
        assert_eq!(address(&ctx), old, "the allocation is reused");
        assert_eq!((ctx.err(), ctx.cause().is_none()), (None, true));
        assert_eq!(ctx.value::<u8>(), None, "the old parent's values are gone");
        assert_eq!(ctx.deadline(), None);
        cancel.cancel();
        assert_eq!(
            ctx.cause().unwrap().to_string(),
            Error::Canceled.to_string()
        );
    });
}

#[tokio::test(start_paused = true)]
async fn a_reused_deadline_scope_keeps_nothing_of_its_deadline() {
    let (ctx, cancel) = Context::background().with_timeout(Duration::from_secs(1));
    let old = address(&ctx);
    drop((ctx, cancel));
    let (ctx, _cancel) = Context::background().with_cancel();
    assert_eq!(address(&ctx), old, "the allocation is reused");
    assert_eq!(ctx.deadline(), None);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !ctx.is_done(),
        "the old deadline does not fire on the new context"
    );
}

/// The out-of-line fields stay with a kept scope, emptied: the next life's deadline
/// reports its own cause, or the plain error, never the old one.
#[tokio::test(start_paused = true)]
async fn a_reused_scope_keeps_its_extra_fields_but_not_their_contents() {
    let (ctx, cancel) = Context::background()
        .with_deadline_cause(Instant::now() + Duration::from_secs(1), "old deadline");
    let old = address(&ctx);
    drop((ctx, cancel));
    let (ctx, _cancel) = Context::background().with_timeout(Duration::from_secs(1));
    assert_eq!(address(&ctx), old, "the allocation is reused");
    assert!(
        matches!(ctx.scope().unwrap().lock().outside, Outside::Extra(_)),
        "and its extra fields"
    );
    assert_eq!(ctx.done().await, Error::DeadlineExceeded);
    assert_eq!(
        ctx.cause().unwrap().to_string(),
        Error::DeadlineExceeded.to_string()
    );
    drop((ctx, _cancel));
    let (ctx, _cancel) = Context::background()
        .with_deadline_cause(Instant::now() + Duration::from_secs(1), "new deadline");
    assert_eq!(address(&ctx), old);
    assert_eq!(ctx.done().await, Error::DeadlineExceeded);
    assert_eq!(ctx.cause().unwrap().to_string(), "new deadline");
}

/// Reuse in a chain: a reused scope is linked into its new parent and follows it.
#[test]
fn a_reused_scope_follows_its_new_parent() {
    on_fresh_thread(|| {
        let (root, cancel_root) = Context::background().with_cancel();
        let (child, cancel_child) = root.with_cancel();
        let (grandchild, cancel_grandchild) = child.with_cancel();
        let old = [address(&child), address(&grandchild)];
        drop((grandchild, cancel_grandchild, child, cancel_child));
        assert!(crate::testing::census(&root).is_clean());

        let (a, _cancel_a) = root.with_cancel();
        let (b, _cancel_b) = a.with_cancel();
        let mut new = [address(&a), address(&b)];
        new.sort_unstable();
        let mut old = old;
        old.sort_unstable();
        assert_eq!(new, old, "both allocations are reused");
        assert_eq!(crate::testing::census(&root).contexts, 2);
        cancel_root.cancel();
        assert_eq!(
            (a.err(), b.err()),
            (Some(Error::Canceled), Some(Error::Canceled))
        );
    });
}

/// A reused scope does not carry the room a previous life needed: not 100 children's
/// registrations, not its shards.
#[test]
fn a_reused_scope_keeps_no_room_beyond_a_few_registrations() {
    on_fresh_thread(|| {
        let (parent, cancel) = Context::background().with_cancel();
        let old = address(&parent);
        // Children released while a clone of each is alive are freed, not kept: the
        // thread's spare scopes stay empty for the parent.
        let release = |children: Vec<(Context, crate::CancelHandle)>| {
            let clones: Vec<Context> = children.iter().map(|(c, _)| c.clone()).collect();
            drop(children);
            drop(clones);
        };
        let children: Vec<_> = (0..100).map(|_| linked(parent.with_cancel())).collect();
        assert!(parent.scope().unwrap().lock().regs.capacity() >= 100);
        release(children);
        parent.scope().unwrap().use_shards();
        release((0..10).map(|_| linked(parent.with_cancel())).collect());
        drop((parent, cancel));
        let (ctx, _cancel) = Context::background().with_cancel();
        assert_eq!(address(&ctx), old, "the allocation is reused");
        let scope = ctx.scope().unwrap();
        assert!(scope.lock().regs.capacity() <= 16);
        assert!(scope.shards.get().is_none());
    });
}

/// A finish empties the registrations in place: a few entries' room stays for the scope's
/// next life, a crowd's is let go at once.
#[test]
fn a_finish_keeps_a_few_registrations_room_and_lets_a_crowds_go() {
    for (children, kept) in [(3, true), (100, false)] {
        let (parent, cancel) = Context::background().with_cancel();
        let live: Vec<_> = (0..children)
            .map(|_| linked(parent.with_cancel()))
            .collect();
        cancel.cancel();
        let regs = &parent.scope().unwrap().lock().regs;
        assert_eq!(regs.len(), 0);
        if kept {
            assert!(regs.capacity() >= children - 1, "entry 0 is inline");
        } else {
            assert_eq!(regs.capacity(), 0, "{children} children's room is let go");
        }
        assert!(live.iter().all(|(child, _)| child.is_done()));
    }
}

/// A live parent whose crowd of registered children has gone gives their room back: to
/// a little, whether a few of them stay or none does.
#[test]
#[cfg_attr(
    miri,
    ignore = "a scale test, too slow under Miri; smaller tests reach the same code"
)]
fn a_live_parent_gives_back_the_room_of_children_gone() {
    on_fresh_thread(|| {
        let (parent, _cancel) = Context::background().with_cancel();
        let room = || parent.scope().unwrap().lock().regs.capacity();
        let mut children: Vec<_> = (0..100_000).map(|_| linked(parent.with_cancel())).collect();
        assert!(room() >= 100_000 - 1, "entry 0 is inline");
        let stay: Vec<_> = children.drain(..20).collect();
        drop(children);
        assert!(room() <= 64, "{} entries of room for 20 children", room());
        drop(stay);
        assert!(room() <= 64, "{} entries of room for none", room());
        assert!(!parent.is_done());
    });
}

/// A scope whose handle and context went first is released by its last child's link to
/// it, and reused: as `CancelTree/Root=ClosedCanceler` drops its root.
#[test]
fn a_parent_released_by_its_last_child_is_reused_clean() {
    on_fresh_thread(|| {
        let (parent, cancel_parent) = Context::background().with_value(1u8).with_cancel();
        let (child, cancel_child) = parent.with_cancel();
        let old = address(&parent);
        cancel_parent.cancel();
        // The child's link is now the parent scope's only reference.
        drop((parent, cancel_parent));
        drop((child, cancel_child));
        assert_eq!(spare::len(), 2, "the child and the parent are kept");

        let (a, cancel_a) = Context::background().with_cancel();
        let (b, _cancel_b) = Context::background().with_cancel();
        assert!(
            [address(&a), address(&b)].contains(&old),
            "the parent's allocation is reused"
        );
        for ctx in [&a, &b] {
            assert_eq!((ctx.err(), ctx.value::<u8>()), (None, None));
        }
        cancel_a.cancel();
        assert_eq!((a.err(), b.err()), (Some(Error::Canceled), None));
    });
}

/// A live merge released through a chain leaves both its parents before it is reused, and
/// a live scope's pending callback is dropped unrun, as when it is freed.
#[test]
fn a_live_scope_released_through_a_chain_is_reused_clean() {
    on_fresh_thread(|| {
        let (a, cancel_a) = Context::background().with_cancel();
        let (b, _cancel_b) = Context::background().with_cancel();
        let merged = a.merge(&b);
        let old = address(&merged);
        let ran = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&ran);
        drop(merged.after_func(move || {
            seen.fetch_add(1, Ordering::Relaxed);
        }));
        let value = merged.with_value(2u8);
        drop(merged); // the value layer holds the merge's only reference
        drop(value);
        assert_eq!(spare::len(), 1, "the merge is kept");
        assert_eq!(Arc::strong_count(&ran), 1, "the callback was dropped");
        assert!(crate::testing::census(&a).is_clean());
        assert!(crate::testing::census(&b).is_clean());

        let (ctx, cancel) = Context::background().with_cancel();
        assert_eq!(address(&ctx), old, "the merge's allocation is reused");
        cancel_a.cancel();
        assert!(!ctx.is_done(), "the old parent does not reach the new life");
        cancel.cancel();
        assert_eq!(
            ran.load(Ordering::Relaxed),
            0,
            "the old callback never runs"
        );
    });
}

/// A live scope that handed out a token is reused without it: the old token still follows
/// the old ancestors, and the new life makes a token of its own.
#[test]
fn a_live_scope_with_a_token_is_reused_without_it() {
    on_fresh_thread(|| {
        let (root, cancel_root) = Context::background().with_cancel();
        let (ctx, cancel) = root.with_cancel();
        cancel.disarm();
        let token = ctx.token();
        let value = ctx.with_value(5u8);
        drop(ctx);
        drop(value);
        assert_eq!(spare::len(), 1, "kept");
        let (fresh, _cancel_fresh) = Context::background().with_cancel();
        let fresh_token = fresh.token();
        cancel_root.cancel();
        assert!(token.is_cancelled(), "the old token follows the old root");
        assert!(!fresh_token.is_cancelled() && !fresh.is_done());
    });
}

/// A released scope's callbacks are dropped while it is reset; a callback whose drop
/// derives and releases contexts of its own (filling the thread's spare list) is fine.
#[test]
fn a_callback_dropped_by_a_reset_may_derive_and_release_contexts() {
    struct Reenter;
    impl Drop for Reenter {
        fn drop(&mut self) {
            let values: Vec<Context> = (0..spare::CAP + 36)
                .map(|_| {
                    let (ctx, cancel) = Context::background().with_cancel();
                    cancel.disarm();
                    ctx.with_value(1u32) // the value layer holds the scope alone
                })
                .collect();
            drop(values); // more scopes offered for reuse than it keeps: the spare list fills
        }
    }
    on_fresh_thread(|| {
        for _ in 0..6 {
            let (ctx, cancel) = Context::background().with_cancel();
            cancel.disarm();
            let reenter = Reenter;
            drop(ctx.after_func(move || drop(reenter)));
            let value = ctx.with_value(1u8);
            drop(ctx);
            drop(value);
        }
        assert_eq!(spare::len(), spare::CAP, "kept up to the cap");
    });
}

/// A live scope with a deadline is not kept when its last context goes (the timer holds a
/// `Weak` to it), so its timer cannot reach whatever the thread derives next.
#[tokio::test(start_paused = true)]
async fn a_live_deadline_scope_released_through_a_chain_is_not_reused() {
    let (ctx, cancel) = Context::background().with_timeout(Duration::from_secs(1));
    cancel.disarm();
    let value = ctx.with_value(3u8);
    drop(ctx);
    let kept = spare::len();
    drop(value);
    assert_eq!(spare::len(), kept, "not kept");
    let (ctx, _cancel) = Context::background().with_cancel();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !ctx.is_done(),
        "the old deadline does not fire on a new context"
    );
}

/// A scope a cancellation may still reach is not reused: the walk holds its registration.
#[test]
fn a_scope_held_elsewhere_is_not_reused() {
    on_fresh_thread(|| {
        let (ctx, cancel) = Context::background().with_cancel();
        let old = address(&ctx);
        let clone = ctx.clone();
        drop((ctx, cancel));
        let (other, _cancel_other) = Context::background().with_cancel();
        assert_ne!(address(&other), old, "a clone still holds the old scope");
        assert_eq!(clone.err(), Some(Error::Canceled));
    });
}

#[test]
fn a_scope_is_kept_only_while_nothing_else_can_reach_it() {
    let scope = plain_scope();
    let weak = Arc::downgrade(&scope);
    let scope = Kept::new(scope).err().expect("a `Weak` reaches it");
    let other = scope.clone();
    let scope = Kept::new(scope).err().expect("another `Arc` holds it");
    drop((weak, other));
    let mut kept = Kept::new(scope).expect("nothing else reaches it");
    kept.get().deadline = Some(Instant::now());
    let scope = kept.into_arc();
    assert!(scope.deadline().is_some(), "written through the `Kept`");
    assert_eq!((Arc::strong_count(&scope), Arc::weak_count(&scope)), (1, 0));
}

/// What `Scope::fresh` returns is counted as `Arc::new` counts: one strong reference, no
/// `Weak`. A panic while it is built drops what was built, once, and nothing that was not.
#[test]
fn a_fresh_allocation_has_one_reference_and_a_panic_drops_only_what_was_built() {
    thread_local! {
        static DROPS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }
    struct Counted;
    impl Drop for Counted {
        fn drop(&mut self) {
            DROPS.with(|drops| drops.set(drops.get() + 1));
        }
    }
    let drops = || DROPS.with(std::cell::Cell::get);
    let built = std::panic::catch_unwind(|| {
        Scope::fresh(|| {
            let first = Counted;
            if drops() == 0 {
                panic!("the second cannot be built");
            }
            [first, Counted]
        })
    });
    assert!(built.is_err());
    assert_eq!(
        drops(),
        1,
        "the one built is dropped once, and nothing unwritten is"
    );
    let pair = Scope::fresh(|| [Counted, Counted]);
    assert_eq!((Arc::strong_count(&pair), Arc::weak_count(&pair)), (1, 0));
    drop(pair);
    assert_eq!(drops(), 3);

    // And a scope, as `Scope::alloc` builds one: it holds its parent.
    let (parent, _cancel) = Context::background().with_cancel();
    let parent_count = || Arc::strong_count(parent.scope().unwrap());
    let before = parent_count();
    let scope = Scope::fresh(|| Scope {
        parent: Node::Scope(parent.scope().unwrap().clone()),
        kind: Kind::Cancel,
        deadline: None,
        state: AtomicU8::new(LIVE),
        link: AtomicUsize::new(0),
        lone: AtomicU32::new(0),
        shards: OnceShards::new(),
        tasks: AtomicU32::new(0),
        home: AtomicU32::new(0),
        inner: OnceInner::holding(None),
        _apart: [0; 4],
    });
    assert_eq!((Arc::strong_count(&scope), Arc::weak_count(&scope)), (1, 0));
    assert_eq!(parent_count(), before + 1, "the scope holds its parent");
    assert!(!scope.is_done());
    drop(scope);
    assert_eq!(parent_count(), before);
}

/// The scope's `Arc` allocation stays at 120 bytes, a 128-byte glibc chunk as the bare
/// token's node, and its lock's at 80, a 96-byte chunk. The 100,000-task fan-out
/// (`ScaleCancelFanout` in `benches/go_suite.rs`) is sensitive to these in ways the
/// instruction counts do not show: the scopes, the tasks (which Tokio aligns to 128 bytes, so
/// glibc splits and reuses the chunks around them) and the registrations share the heap, so
/// the sizes move where the tasks land, and Tokio's queues and task list then walk the tasks
/// through more or fewer cache lines. Re-measure that row, side by side with the token's,
/// before changing them.
#[test]
fn a_scope_allocation_stays_at_120_bytes() {
    assert_eq!(mem::size_of::<Scope>() + 16, 120);
    assert_eq!(mem::size_of::<Mutex<Inner>>(), 80);
    assert_eq!(
        mem::size_of::<Outside>(),
        16,
        "a source inline, the tags in the wheel entry's spare byte"
    );
}

#[test]
fn a_link_names_its_slab_and_index() {
    for link in [
        Link::Inner(0),
        Link::Inner(7),
        Link::Shard(0, 0),
        Link::Shard(SHARDS - 1, 9),
    ] {
        assert_ne!(link.encode(), 0, "0 means not linked");
        assert_eq!(Link::decode(link.encode()), link);
    }
}

/// Children of a sharded parent, derived from several threads (so several shards), are
/// counted, leave their shard when dropped, and are reached by the parent's cancellation.
#[test]
fn sharded_children_are_counted_unlinked_and_cancelled() {
    let (parent, cancel) = Context::background().with_cancel();
    parent.scope().unwrap().use_shards();
    let children: Vec<Vec<(Context, crate::CancelHandle)>> = std::thread::scope(|s| {
        let spawned: Vec<_> = (0..4)
            .map(|_| s.spawn(|| (0..10).map(|_| parent.with_cancel()).collect::<Vec<_>>()))
            .collect();
        spawned.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert_eq!(crate::testing::census(&parent).contexts, 40);
    let mut children: Vec<_> = children.into_iter().flatten().collect();
    children.truncate(25); // 15 dropped: they leave their shards
    assert_eq!(crate::testing::census(&parent).contexts, 25);
    let (late, _cancel_late) = parent.with_cancel(); // this thread's shard
    assert_eq!(crate::testing::census(&parent).contexts, 26);
    cancel.cancel();
    assert!(
        children
            .iter()
            .all(|(child, _)| child.err() == Some(Error::Canceled))
    );
    assert_eq!(late.err(), Some(Error::Canceled));
    assert!(crate::testing::census(&parent).is_clean());
    let (after, _cancel_after) = parent.with_cancel();
    assert_eq!(
        after.err(),
        Some(Error::Canceled),
        "born done under a done sharded parent"
    );
}

#[test]
fn walk_stack_is_last_in_first_out_across_the_spill() {
    let mut stack = Batch::default();
    stack.extend(0..6);
    assert_eq!(stack.pop(), Some(5));
    assert_eq!(stack.pop(), Some(4));
    assert_eq!(stack.pop(), Some(3));
    stack.push(10);
    stack.push(11);
    let rest: Vec<_> = std::iter::from_fn(|| stack.pop()).collect();
    assert_eq!(rest, [11, 10, 2, 1, 0]);
    assert_eq!(stack.pop(), None);
}

kept_room!(u16, KEPT_TEST_ROOM);

/// A batch that spilled gives its room back to the thread, and the next batch of its kind
/// that spills there takes it rather than allocating; room past `KEPT_ROOM` is freed.
#[test]
fn the_room_a_batch_spilled_into_is_kept_for_the_next_walk() {
    on_fresh_thread(|| {
        let mut first: Batch<u16> = Batch::default();
        first.extend(0..40);
        let (room, capacity) = first.spilled_room();
        first.drain(drop);
        first.give_back_room();
        assert!(first.owns_nothing());

        let mut next: Batch<u16> = Batch::default();
        next.extend(0..5);
        assert_eq!(next.spilled_room(), (room, capacity));
        assert_eq!(next.len(), 5);

        let mut large: Batch<u16> = Batch::default();
        large.extend(0..(KEPT_ROOM as u16 + 100));
        large.drain(drop);
        large.give_back_room();
        assert_eq!(u16::take_room().capacity(), 0, "too large to keep");
    });
}

/// A live deadline scope let go of by its last handle gives its timer back and is kept
/// unfinished, for the next scope of its thread; unless its timer still reaches it (a timer
/// that is firing holds its `Weak`): then it is cancelled, and not kept.
#[tokio::test(start_paused = true)]
async fn a_live_deadline_let_go_is_disarmed_and_kept_unless_its_timer_reaches_it() {
    let (parent, _cancel) = Context::background().with_cancel();
    let parent = Node::Scope(parent.scope().unwrap().clone());
    let deadline = || {
        Scope::with_deadline(
            &parent,
            Instant::now() + Duration::from_secs(60),
            None,
            None,
        )
    };

    let scope = deadline();
    assert_eq!(
        Arc::weak_count(&scope),
        2,
        "its registration in the parent, and its timer"
    );
    let allocation = Arc::as_ptr(&scope);
    Scope::let_go(scope);
    let next = Scope::with_cancel(&parent);
    assert_eq!(
        Arc::as_ptr(&next),
        allocation,
        "kept, and taken by the next scope"
    );
    assert!(!next.is_done());
    drop(next);

    let scope = deadline();
    let firing = Expiry::of(&scope);
    let allocation = Arc::as_ptr(&scope);
    Scope::let_go(scope);
    let next = Scope::with_cancel(&parent);
    assert_ne!(
        Arc::as_ptr(&next),
        allocation,
        "not kept while its timer reaches it"
    );
    firing.fire_deadline(); // the scope is gone: nothing to do
    drop(next);
    let Node::Scope(parent) = &parent else {
        unreachable!()
    };
    assert_eq!(parent.census().contexts, 0, "both left their parent");
}
