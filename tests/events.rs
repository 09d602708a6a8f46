//! The `tracing` events the crate promises: a debug event for every cancellation, with its
//! error, cause and number of descendants, and an error event for a panicking `after_func`.
//!
//! These tests have a binary of their own, with one global subscriber installed before any of
//! them runs crate code. `tracing` caches per call site whether anyone listens; with scoped
//! subscribers (`with_default`) set and dropped on parallel test threads, a call site first
//! reached on one thread while another thread's subscriber was being registered could be
//! cached as "nobody listens" and lose that subscriber's events (about 1 run in 20 here). The
//! global recorder keeps what each thread emits apart, so the tests still run in parallel.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use taskctx::{Context, Error};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber, span};

/// One event as seen by [`Recorder`].
#[derive(Debug, Clone)]
struct Recorded {
    target: String,
    level: Level,
    fields: BTreeMap<String, String>,
}

std::thread_local! {
    /// What the code under test emitted on this thread, while a capture was on.
    static CAPTURED: RefCell<Option<Vec<Recorded>>> = const { RefCell::new(None) };
}

/// The global subscriber of this test binary: records the events of threads that capture.
#[derive(Clone, Copy)]
struct Recorder;

static NEXT_SPAN: AtomicU64 = AtomicU64::new(1);

impl Recorder {
    /// Installs the recorder as the global subscriber; every test calls this first.
    fn install() -> Recorder {
        static INSTALLED: OnceLock<()> = OnceLock::new();
        INSTALLED.get_or_init(|| {
            tracing::subscriber::set_global_default(Recorder).expect("no other subscriber");
        });
        Recorder
    }

    /// Runs `f` and returns the `taskctx` events it emitted on this thread.
    fn capture(self, f: impl FnOnce()) -> Vec<Recorded> {
        CAPTURED.with(|c| *c.borrow_mut() = Some(Vec::new()));
        f();
        let events = CAPTURED.with(|c| c.borrow_mut().take()).unwrap_or_default();
        events
            .into_iter()
            .filter(|e| e.target == "taskctx")
            .collect()
    }
}

struct FieldMap<'a>(&'a mut BTreeMap<String, String>);

impl Visit for FieldMap<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(NEXT_SPAN.fetch_add(1, Ordering::Relaxed))
    }
    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = BTreeMap::new();
        event.record(&mut FieldMap(&mut fields));
        let recorded = Recorded {
            target: event.metadata().target().to_string(),
            level: *event.metadata().level(),
            fields,
        };
        CAPTURED.with(|c| {
            if let Some(events) = c.borrow_mut().as_mut() {
                events.push(recorded);
            }
        });
    }
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}
}

#[test]
fn cancellation_emits_a_debug_event_with_error_and_cause() {
    let recorder = Recorder::install();
    let events = recorder.capture(|| {
        let (ctx, cancel) = Context::background().with_cancel_cause();
        let (child, _c1) = ctx.with_cancel();
        let (_grandchild, _c2) = child.with_cancel();
        let (_other_child, _c3) = ctx.with_value(1u8).with_cancel();
        cancel.cancel("db went away");
        cancel.cancel("again"); // already done: no second event
        assert!(ctx.is_done());
    });
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event.level, Level::DEBUG);
    assert_eq!(
        event.fields.get("error").map(String::as_str),
        Some("context canceled")
    );
    assert_eq!(
        event.fields.get("cause").map(String::as_str),
        Some("db went away")
    );
    assert_eq!(
        event.fields.get("descendants").map(String::as_str),
        Some("3")
    );
}

/// A handle dropped after every clone of its context skips the cancellation nobody could see
/// only when no one listens: a subscriber still gets the event.
#[test]
fn dropping_the_last_handle_of_an_otherwise_released_context_still_emits_the_event() {
    let recorder = Recorder::install();
    let events = recorder.capture(|| {
        let (ctx, cancel) = Context::background().with_cancel();
        drop(ctx);
        drop(cancel);
    });
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        events[0].fields.get("error").map(String::as_str),
        Some("context canceled")
    );
}

#[test]
fn deadline_expiry_emits_a_debug_event_with_deadline_error_and_cause() {
    let recorder = Recorder::install();
    let events = recorder.capture(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let (ctx, _cancel) =
                Context::background().with_timeout_cause(Duration::from_secs(1), "too slow");
            assert_eq!(ctx.done().await, Error::DeadlineExceeded);
        });
    });
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].level, Level::DEBUG);
    assert_eq!(
        events[0].fields.get("error").map(String::as_str),
        Some("context deadline exceeded")
    );
    assert_eq!(
        events[0].fields.get("cause").map(String::as_str),
        Some("too slow")
    );
}

#[test]
fn panicking_after_func_lets_other_callbacks_run_and_reports_an_error_event() {
    let recorder = Recorder::install();
    let ran = Arc::new(AtomicUsize::new(0));
    let (ctx, cancel) = Context::background().with_cancel();
    let (child, _cancel_child) = ctx.with_cancel();
    let r1 = ran.clone();
    let _a = ctx.after_func(move || {
        r1.fetch_add(1, Ordering::SeqCst);
    });
    let _b = ctx.after_func(|| panic!("callback exploded"));
    let r2 = ran.clone();
    let _c = ctx.after_func(move || {
        r2.fetch_add(1, Ordering::SeqCst);
    });
    let events = recorder.capture(|| cancel.cancel());

    assert_eq!(ran.load(Ordering::SeqCst), 2, "the other callbacks ran");
    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert_eq!(child.err(), Some(Error::Canceled));
    let errors: Vec<_> = events
        .into_iter()
        .filter(|e| e.level == Level::ERROR)
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0].fields.get("panic").map(String::as_str),
        Some("callback exploded")
    );
}

#[test]
fn a_group_report_emits_a_summary_and_warns_of_aborted_and_slow_tasks() {
    let recorder = Recorder::install();
    let events = recorder.capture(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let group = taskctx::TaskGroup::builder(&Context::background())
                .name("workers")
                .build();
            group
                .spawn("stubborn", |_ctx| async {
                    std::future::pending::<()>().await;
                    Ok::<(), Error>(())
                })
                .unwrap();
            group
                .spawn("laggard", |ctx| async move {
                    ctx.done().await;
                    tokio::time::sleep(Duration::from_millis(600)).await;
                    Ok::<(), Error>(())
                })
                .unwrap();
            group
                .spawn("prompt", |ctx| async move {
                    ctx.done().await;
                    Ok::<(), Error>(())
                })
                .unwrap();
            group.shutdown("deploy", Duration::from_secs(1)).await;
        });
    });
    let events: Vec<_> = events
        .into_iter()
        .filter(|e| e.level != Level::DEBUG)
        .collect();
    let field = |i: usize, name: &str| events[i].fields.get(name).map(String::as_str);
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[0].level, Level::INFO);
    assert_eq!(field(0, "group"), Some("workers"));
    assert_eq!(field(0, "tasks"), Some("3"));
    assert_eq!(field(0, "aborted"), Some("1"));
    assert_eq!(field(0, "cause"), Some("deploy"));
    assert_eq!(events[1].level, Level::WARN);
    assert_eq!(field(1, "task"), Some("stubborn"));
    assert_eq!(events[2].level, Level::WARN);
    assert_eq!(field(2, "task"), Some("laggard"));
    assert_eq!(field(2, "time_to_stop"), Some("600ms"));
}
