//! Traits of `Context` and its companions (`Clone`, `Send + Sync + 'static`, `Default`,
//! `std::error::Error`), the Go-style `Display` names of contexts and errors, and the conversion
//! of `Error` into `io::Error`.

use std::io;
use std::time::Duration;

use taskctx::{
    AfterFunc, CancelCauseHandle, CancelHandle, CancelledOwned, Cause, Context, DoneOwned, Error,
    Key,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------
// Traits
// ---------------------------------------------------------------------------------------------

fn assert_context_traits<T: Clone + Send + Sync + 'static + Default>() {}
fn assert_send_sync<T: Send + Sync + 'static>() {}
fn assert_std_error<T: std::error::Error + Send + Sync + 'static>() {}

#[test]
fn context_is_clone_send_sync_static_and_default() {
    assert_context_traits::<Context>();
    assert_eq!(Context::default().to_string(), "context.Background");
    assert!(!Context::default().is_done());
}

#[test]
fn handles_and_futures_can_cross_threads() {
    assert_send_sync::<CancelHandle>();
    assert_send_sync::<CancelCauseHandle>();
    assert_send_sync::<AfterFunc>();
    assert_send_sync::<DoneOwned>();
    assert_send_sync::<CancelledOwned>();
    assert_send_sync::<Cause>();

    let (ctx, cancel) = Context::background().with_cancel();
    std::thread::spawn(move || cancel.cancel()).join().unwrap();
    assert!(ctx.is_done());
}

#[test]
fn done_futures_are_two_words() {
    // Their `FusedFuture` state is a value of the registration slot, not a field of its own.
    let words = 2 * std::mem::size_of::<usize>();
    assert_eq!(std::mem::size_of::<taskctx::Done<'_>>(), words);
    assert_eq!(std::mem::size_of::<DoneOwned>(), words);
}

#[test]
fn error_and_cause_implement_std_error() {
    assert_std_error::<Error>();
    assert_std_error::<Cause>();
    let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(Error::Canceled);
    assert_eq!(boxed.to_string(), "context canceled");
}

// ---------------------------------------------------------------------------------------------
// Display
// ---------------------------------------------------------------------------------------------

struct TraceKey;
impl Key for TraceKey {
    type Value = u128;
}

#[test]
fn display_of_roots_and_cancel_layers_is_gos() {
    assert_eq!(Context::background().to_string(), "context.Background");
    assert_eq!(Context::todo().to_string(), "context.TODO");

    let (ctx, _cancel) = Context::background().with_cancel();
    assert_eq!(ctx.to_string(), "context.Background.WithCancel");
    let (ctx, _cancel) = Context::todo().with_cancel_cause();
    assert_eq!(ctx.to_string(), "context.TODO.WithCancel");
    assert_eq!(
        ctx.without_cancel().to_string(),
        "context.TODO.WithCancel.WithoutCancel"
    );
}

#[test]
fn display_of_value_layers_names_the_type_or_key() {
    let ctx = Context::background().with_value(7u32);
    assert_eq!(ctx.to_string(), "context.Background.WithValue(type u32)");

    let ctx = Context::background().with_key::<TraceKey>(1);
    assert_eq!(
        ctx.to_string(),
        format!(
            "context.Background.WithValue(key {})",
            std::any::type_name::<TraceKey>()
        )
    );
}

#[test]
fn display_of_merge_and_token_layers() {
    let (left, _c1) = Context::background().with_cancel();
    let (right, _c2) = Context::todo().with_cancel();
    assert_eq!(
        left.merge(&right).to_string(),
        "context.Background.WithCancel.Merge(context.TODO.WithCancel)"
    );

    let token = CancellationToken::new();
    assert_eq!(
        Context::from_token(token.clone()).to_string(),
        "context.Background.WithToken"
    );
    assert_eq!(
        Context::todo()
            .with_value(1u8)
            .with_token(token)
            .to_string(),
        "context.TODO.WithValue(type u8).WithToken"
    );
}

#[test]
fn display_names_at_most_256_layers_and_counts_the_rest_of_the_chain() {
    let mut parent = Context::background();
    for _ in 0..254 {
        parent = parent.with_value(0u8);
    }
    let ctx = parent.with_value(0u8);
    let full = format!("context.Background{}", ".WithValue(type u8)".repeat(255));
    assert_eq!(ctx.to_string(), full, "256 layers: named in full");

    let (longer, _cancel) = ctx.with_cancel();
    assert_eq!(longer.to_string(), format!("{full}…(1 more)"));

    let merged = parent.merge(&Context::todo());
    assert_eq!(
        merged.to_string(),
        format!(
            "{}.Merge(…(1 more))",
            &full[..full.len() - ".WithValue(type u8)".len()]
        ),
        "the other parent's root would be the 257th layer"
    );
}

#[tokio::test(start_paused = true)]
async fn display_of_deadline_layers() {
    let (ctx, _cancel) = Context::background().with_timeout(Duration::from_secs(5));
    let shown = ctx.to_string();
    assert!(
        shown.starts_with("context.Background.WithDeadline(["),
        "{shown}"
    );
    assert!(shown.ends_with("])"), "{shown}");

    let (ctx, _cancel) =
        Context::background().with_deadline_cause(Instant::now() + Duration::from_secs(1), "c");
    assert!(
        ctx.to_string()
            .starts_with("context.Background.WithDeadline([")
    );
}

// ---------------------------------------------------------------------------------------------
// Error conversions
// ---------------------------------------------------------------------------------------------

#[test]
fn error_display_is_gos() {
    assert_eq!(Error::Canceled.to_string(), "context canceled");
    assert_eq!(
        Error::DeadlineExceeded.to_string(),
        "context deadline exceeded"
    );
}

#[test]
fn error_converts_to_io_error_with_matching_kind_and_source() {
    let canceled: io::Error = Error::Canceled.into();
    assert_eq!(canceled.kind(), io::ErrorKind::Interrupted);
    assert_eq!(canceled.to_string(), "context canceled");
    assert_eq!(
        canceled.get_ref().and_then(|e| e.downcast_ref::<Error>()),
        Some(&Error::Canceled)
    );

    let timed_out: io::Error = Error::DeadlineExceeded.into();
    assert_eq!(timed_out.kind(), io::ErrorKind::TimedOut);
    assert_eq!(timed_out.to_string(), "context deadline exceeded");
    assert_eq!(
        timed_out.get_ref().and_then(|e| e.downcast_ref::<Error>()),
        Some(&Error::DeadlineExceeded)
    );
}

#[test]
fn error_propagates_through_io_result_with_question_mark() {
    fn read(ctx: &Context) -> io::Result<u8> {
        if let Some(err) = ctx.err() {
            return Err(err.into());
        }
        Ok(1)
    }
    let (ctx, cancel) = Context::background().with_cancel();
    assert_eq!(read(&ctx).unwrap(), 1);
    cancel.cancel();
    assert_eq!(read(&ctx).unwrap_err().kind(), io::ErrorKind::Interrupted);
}
