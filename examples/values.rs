//! Request-scoped values with typed keys.
//!
//! Go's `ctx.Value(key any) any`: keys are compared as `any`, so two packages that both use a
//! string key collide, and every lookup needs a type assertion. Here a value is keyed by a type:
//! either a marker type implementing `taskctx::Key` (for general types like `String`), or the
//! value's own type (for types that say what they hold, like `Tenant`). Lookups are typed,
//! the innermost binding wins, they see through cancellation layers, and a context's `Display`
//! names the types it carries but never their contents.

use std::time::Duration;

use taskctx::{Context, Key};

#[allow(dead_code)] // unused when tour.rs includes this file as a module
#[tokio::main]
async fn main() {
    run().await;
}

/// The request id the load balancer sent. A `String`...
struct RequestIdKey;
impl Key for RequestIdKey {
    type Value = String;
}

/// ...and the user the request acts for, another `String`: keyed by type alone, they collide.
struct UserKey;
impl Key for UserKey {
    type Value = String;
}

/// The caller's credential: a value that must never end up in a log.
struct AuthTokenKey;
impl Key for AuthTokenKey {
    type Value = String;
}

/// A value that is keyed by its own type.
#[derive(Debug, PartialEq)]
struct Tenant(u32);

/// A key that nobody sets.
struct LocaleKey;
impl Key for LocaleKey {
    type Value = String;
}

pub async fn run() {
    let ctx = Context::background()
        .with_key::<RequestIdKey>("req-7f3a".to_string())
        .with_key::<UserKey>("ana".to_string())
        .with_key::<AuthTokenKey>("hunter2".to_string())
        .with_value(Tenant(4));

    let request_id = ctx.get::<RequestIdKey>();
    let user = ctx.get::<UserKey>();
    println!("Two String values under two keys: request id {request_id:?}, user {user:?}.");
    println!(
        "  Keyed values are invisible by type: ctx.value::<String>() = {:?}.",
        ctx.value::<String>()
    );
    println!(
        "  A value keyed by its own type: ctx.value::<Tenant>() = {:?}.",
        ctx.value::<Tenant>()
    );

    // Shadowing: a sub-operation on behalf of another tenant.
    let (sub, _cancel_sub) = ctx.with_cancel();
    let sub = sub.with_value(Tenant(9));
    println!(
        "Shadowing: the inner context sees {:?}, the outer one still {:?}.",
        sub.value::<Tenant>(),
        ctx.value::<Tenant>()
    );

    // Lookups walk through cancellation and deadline layers.
    let (a, _cancel_a) = ctx.with_cancel();
    let (b, _cancel_b) = a.with_timeout(Duration::from_secs(1));
    let (deep, _cancel_deep) = b.with_cancel();
    println!(
        "Through three cancel/deadline layers: user {:?}, tenant {:?}.",
        deep.get::<UserKey>(),
        deep.value::<Tenant>()
    );

    println!(
        "A value nobody set is None: locale {:?}, u64 {:?}.",
        deep.get::<LocaleKey>(),
        deep.value::<u64>()
    );

    let shown = deep.to_string();
    println!("The context prints as:");
    println!("  {shown}");
    println!(
        "  It names the key types but never the values: contains \"hunter2\"? {}.",
        shown.contains("hunter2")
    );

    assert_eq!(request_id.map(String::as_str), Some("req-7f3a"));
    assert_eq!(user.map(String::as_str), Some("ana"));
    assert_eq!(ctx.value::<String>(), None);
    assert_eq!(sub.value::<Tenant>(), Some(&Tenant(9)));
    assert_eq!(ctx.value::<Tenant>(), Some(&Tenant(4)));
    assert_eq!(deep.get::<UserKey>().map(String::as_str), Some("ana"));
    assert_eq!(deep.get::<LocaleKey>(), None);
    assert!(!shown.contains("hunter2") && !shown.contains("ana"));
}
