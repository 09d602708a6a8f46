//! Request-scoped values: lookup by type and by typed `Key`, shadowing, the separation of the
//! two namespaces, visibility through every kind of layer, and `Display` never showing
//! contents.

use std::time::Duration;

use taskctx::{Context, Key};
use tokio_util::sync::CancellationToken;

#[derive(Debug, PartialEq)]
struct TenantId(u32);

#[derive(Debug, PartialEq)]
struct UserId(u64);

/// A key whose value type (`String`) is far too general to look up by type.
struct RequestId;
impl Key for RequestId {
    type Value = String;
}

/// Another key with the same value type as `RequestId`.
struct UserName;
impl Key for UserName {
    type Value = String;
}

/// A key whose value type is `u32`, also used with `with_value` below.
struct Limit;
impl Key for Limit {
    type Value = u32;
}

/// A type used both as a value (by type) and as a key.
#[derive(Debug, PartialEq)]
struct Marker(u8);
impl Key for Marker {
    type Value = Marker;
}

#[test]
fn value_is_found_by_its_type() {
    let ctx = Context::background().with_value(TenantId(4));
    assert_eq!(ctx.value::<TenantId>(), Some(&TenantId(4)));
}

#[test]
fn value_of_a_type_never_stored_is_not_found() {
    let ctx = Context::background()
        .with_value(TenantId(4))
        .with_value(7u32);
    assert_eq!(ctx.value::<UserId>(), None);
    assert_eq!(ctx.value::<u64>(), None, "no conversion between types");
    assert_eq!(Context::background().value::<TenantId>(), None);
    assert_eq!(Context::todo().value::<u32>(), None);
}

#[test]
fn value_is_found_by_its_key() {
    let ctx = Context::background().with_key::<RequestId>("req-7".to_string());
    assert_eq!(ctx.get::<RequestId>().map(String::as_str), Some("req-7"));
    assert_eq!(ctx.get::<UserName>(), None);
}

#[test]
fn two_keys_with_the_same_value_type_do_not_collide() {
    let ctx = Context::background()
        .with_key::<RequestId>("req-7".to_string())
        .with_key::<UserName>("ana".to_string());
    assert_eq!(ctx.get::<RequestId>().map(String::as_str), Some("req-7"));
    assert_eq!(ctx.get::<UserName>().map(String::as_str), Some("ana"));
}

#[test]
fn innermost_value_of_a_type_wins() {
    let outer = Context::background().with_value(TenantId(1));
    let (middle, _cancel) = outer.with_cancel();
    let inner = middle.with_value(TenantId(2)).with_value(UserId(9));

    assert_eq!(inner.value::<TenantId>(), Some(&TenantId(2)));
    assert_eq!(middle.value::<TenantId>(), Some(&TenantId(1)));
    assert_eq!(outer.value::<TenantId>(), Some(&TenantId(1)));
}

#[test]
fn innermost_value_of_a_key_wins() {
    let outer = Context::background().with_key::<RequestId>("outer".into());
    let inner = outer.with_value(1u8).with_key::<RequestId>("inner".into());

    assert_eq!(inner.get::<RequestId>().map(String::as_str), Some("inner"));
    assert_eq!(outer.get::<RequestId>().map(String::as_str), Some("outer"));
}

#[test]
fn value_of_a_child_is_not_visible_in_its_parent_or_siblings() {
    let parent = Context::background().with_value(1u8);
    let left = parent.with_value(TenantId(1));
    let right = parent.with_key::<RequestId>("r".into());

    assert_eq!(parent.value::<TenantId>(), None);
    assert_eq!(parent.get::<RequestId>(), None);
    assert_eq!(right.value::<TenantId>(), None);
    assert_eq!(left.get::<RequestId>(), None);
}

#[test]
fn value_stored_by_type_is_not_found_by_a_key_with_that_value_type() {
    let ctx = Context::background().with_value(5u32);
    assert_eq!(ctx.value::<u32>(), Some(&5));
    assert_eq!(ctx.get::<Limit>(), None);

    let ctx = Context::background().with_key::<Limit>(9);
    assert_eq!(ctx.get::<Limit>(), Some(&9));
    assert_eq!(ctx.value::<u32>(), None);
    assert!(
        ctx.value::<Limit>().is_none(),
        "the key type is not a value type"
    );
}

#[test]
fn by_type_and_by_key_namespaces_stay_separate_when_both_are_bound() {
    let ctx = Context::background()
        .with_value(5u32)
        .with_key::<Limit>(9)
        .with_value(6u32);

    assert_eq!(ctx.value::<u32>(), Some(&6));
    assert_eq!(ctx.get::<Limit>(), Some(&9));
}

#[test]
fn key_type_also_used_as_a_value_type_keeps_both_slots_apart() {
    let by_type = Context::background().with_value(Marker(1));
    assert_eq!(by_type.value::<Marker>(), Some(&Marker(1)));
    assert_eq!(by_type.get::<Marker>(), None);

    let both = by_type.with_key::<Marker>(Marker(2));
    assert_eq!(both.get::<Marker>(), Some(&Marker(2)));
    assert_eq!(
        both.value::<Marker>(),
        Some(&Marker(1)),
        "the keyed binding does not shadow the typed one"
    );

    let shadowed = both.with_value(Marker(3));
    assert_eq!(shadowed.value::<Marker>(), Some(&Marker(3)));
    assert_eq!(shadowed.get::<Marker>(), Some(&Marker(2)));
}

#[tokio::test(start_paused = true)]
async fn values_are_visible_through_cancel_and_deadline_layers() {
    let base = Context::background()
        .with_value(TenantId(3))
        .with_key::<RequestId>("req".into());
    let (cancel_layer, _c1) = base.with_cancel();
    let (cause_layer, _c2) = cancel_layer.with_cancel_cause();
    let (deadline_layer, _c3) = cause_layer.with_timeout(Duration::from_secs(5));
    let (deadline_cause_layer, _c4) =
        deadline_layer.with_timeout_cause(Duration::from_secs(1), "slow");

    for ctx in [
        &cancel_layer,
        &cause_layer,
        &deadline_layer,
        &deadline_cause_layer,
    ] {
        assert_eq!(ctx.value::<TenantId>(), Some(&TenantId(3)), "{ctx}");
        assert_eq!(ctx.get::<RequestId>().map(String::as_str), Some("req"));
    }
}

#[test]
fn values_are_visible_through_without_cancel() {
    let (ctx, cancel) = Context::background()
        .with_value(TenantId(8))
        .with_key::<UserName>("bo".into())
        .with_cancel();
    let detached = ctx.without_cancel();
    cancel.cancel();

    assert_eq!(detached.value::<TenantId>(), Some(&TenantId(8)));
    assert_eq!(detached.get::<UserName>().map(String::as_str), Some("bo"));
    let (below, _cancel_below) = detached.with_cancel();
    assert_eq!(below.value::<TenantId>(), Some(&TenantId(8)));
}

#[test]
fn values_are_visible_through_a_token_layer() {
    let ctx = Context::background()
        .with_value(TenantId(2))
        .with_token(CancellationToken::new());
    assert_eq!(ctx.value::<TenantId>(), Some(&TenantId(2)));
}

#[test]
fn merge_sees_the_values_of_self_only() {
    let (left, _cancel_left) = Context::background()
        .with_value(TenantId(1))
        .with_key::<RequestId>("left".into())
        .with_cancel();
    let (right, _cancel_right) = Context::background()
        .with_value(UserId(2))
        .with_key::<UserName>("right".into())
        .with_value(TenantId(99))
        .with_cancel();

    let merged = left.merge(&right);
    assert_eq!(merged.value::<TenantId>(), Some(&TenantId(1)));
    assert_eq!(merged.get::<RequestId>().map(String::as_str), Some("left"));
    assert_eq!(
        merged.value::<UserId>(),
        None,
        "other's values are not seen"
    );
    assert_eq!(merged.get::<UserName>(), None);

    let reversed = right.merge(&left);
    assert_eq!(reversed.value::<TenantId>(), Some(&TenantId(99)));
    assert_eq!(reversed.value::<UserId>(), Some(&UserId(2)));
    assert_eq!(reversed.get::<RequestId>(), None);
}

#[test]
fn values_stay_visible_after_the_context_is_done() {
    let (ctx, cancel) = Context::background().with_value(TenantId(5)).with_cancel();
    let child = ctx.with_key::<RequestId>("r".into());
    cancel.cancel();

    assert!(child.is_done());
    assert_eq!(child.value::<TenantId>(), Some(&TenantId(5)));
    assert_eq!(child.get::<RequestId>().map(String::as_str), Some("r"));
}

#[tokio::test(start_paused = true)]
async fn missing_value_through_100_mixed_layers_is_none() {
    let mut ctx = Context::background().with_value(TenantId(1));
    let mut handles = Vec::new();
    for layer in 0..100 {
        ctx = match layer % 5 {
            0 => ctx.with_value(layer as u16),
            1 => {
                let (next, handle) = ctx.with_cancel();
                handles.push(handle);
                next
            }
            2 => ctx.without_cancel(),
            3 => {
                let (next, handle) = ctx.with_timeout(Duration::from_secs(60));
                handles.push(handle);
                next
            }
            _ => ctx.merge(&Context::background().with_value(UserId(1))),
        };
    }

    assert_eq!(ctx.value::<UserId>(), None);
    assert_eq!(ctx.value::<u64>(), None);
    assert_eq!(ctx.get::<RequestId>(), None);
    assert_eq!(ctx.value::<TenantId>(), Some(&TenantId(1)), "bottom value");
    assert_eq!(ctx.value::<u16>(), Some(&95), "innermost of many");
}

#[test]
fn display_shows_value_types_and_keys_never_contents() {
    let (ctx, _cancel) = Context::background()
        .with_value(String::from("hunter2"))
        .with_key::<RequestId>("secret-request-id".into())
        .with_cancel();
    let ctx = ctx.with_value(TenantId(424242)).without_cancel();
    let shown = ctx.to_string();

    assert_eq!(
        shown,
        format!(
            "context.Background.WithValue(type {}).WithValue(key {}).WithCancel\
             .WithValue(type {}).WithoutCancel",
            std::any::type_name::<String>(),
            std::any::type_name::<RequestId>(),
            std::any::type_name::<TenantId>(),
        )
    );
    for secret in ["hunter2", "secret-request-id", "424242"] {
        assert!(!shown.contains(secret), "{shown} leaks {secret}");
        assert!(!format!("{ctx:?}").contains(secret), "Debug leaks {secret}");
    }
}

/// A lookup that misses stops at the first value layer whose key mask lacks the key's bit, so
/// the mask must cover every layer above, across every kind of context in between.
#[test]
fn every_value_is_found_and_a_missing_one_is_not_through_every_kind_of_layer() {
    let (cancellable, _cancel) = Context::background().with_value(TenantId(7)).with_cancel();
    let detached = cancellable
        .without_cancel()
        .with_key::<RequestId>("req-1".into());
    let (timed, _cancel_timed) = detached.with_timeout(Duration::from_secs(60));
    let merged = timed.merge(&Context::background().with_value(Marker(9)));
    let leaf = merged
        .with_token(CancellationToken::new())
        .with_value(UserId(3));
    assert_eq!(leaf.value::<TenantId>(), Some(&TenantId(7)));
    assert_eq!(leaf.get::<RequestId>().map(String::as_str), Some("req-1"));
    assert_eq!(leaf.value::<UserId>(), Some(&UserId(3)));
    assert_eq!(
        leaf.value::<Marker>(),
        None,
        "a merge sees the values of self only"
    );
    assert_eq!(leaf.get::<UserName>(), None);
    assert_eq!(leaf.value::<u32>(), None);
}

/// Seventy distinct key types in one chain: more than the mask's 64 bits, so some share a bit
/// and a miss on a shared bit walks on. Every value is still found, the innermost of each, and
/// keys never stored are not.
#[test]
fn more_keys_than_mask_bits_are_all_found() {
    struct Slot<const N: usize>(usize);
    macro_rules! chain {
        ($ctx:expr; $($n:literal)*) => {{
            let ctx = $ctx;
            $( let ctx = ctx.with_value(Slot::<$n>($n)); )*
            $( assert_eq!(ctx.value::<Slot<$n>>().map(|slot| slot.0), Some($n)); )*
            ctx
        }};
    }
    let ctx = chain!(Context::background();
        0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32
        33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62
        63 64 65 66 67 68 69);
    let shadowed = ctx.with_value(Slot::<5>(500));
    assert_eq!(shadowed.value::<Slot<5>>().map(|slot| slot.0), Some(500));
    assert_eq!(shadowed.value::<Slot<70>>().map(|slot| slot.0), None);
    assert_eq!(shadowed.value::<TenantId>(), None);
}
