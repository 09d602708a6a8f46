//! Background work that must outlive the request that started it.
//!
//! Go 1.21's `context.WithoutCancel`: a handler wants to write an audit record after it has
//! answered. Started on the request's context, the write is cancelled the moment the handler
//! returns; started on `context.Background()`, it loses the request's values (its id, for the
//! log line). `ctx.without_cancel()` keeps the values and drops the cancellation; a timeout of
//! its own (`.with_timeout(...)`) keeps the detached work bounded.

use std::time::Duration;

use taskctx::{Context, Error, TaskHandle};
use tokio::time::{Instant, sleep};

#[allow(dead_code)] // unused when tour.rs includes this file as a module
#[tokio::main]
async fn main() {
    run().await;
}

/// The id of the request being served, looked up by its type.
#[derive(Clone, Copy, Debug)]
struct RequestId(u64);

/// A background job that needs `work` to finish and reports which request it served.
async fn job(ctx: Context, name: &'static str, work: Duration) -> String {
    sleep(work).await;
    let id = ctx.value::<RequestId>().map_or(0, |id| id.0);
    format!("{name} done for request {id}")
}

/// Starts a job detached from the request's cancellation, with its own `budget`.
fn spawn_detached(
    request: &Context,
    budget: Duration,
    name: &'static str,
    work: Duration,
) -> TaskHandle<String> {
    let (ctx, cancel) = request.without_cancel().with_timeout(budget);
    ctx.spawn(move |ctx| async move {
        let _cancel = cancel; // the job's budget lives as long as the job
        job(ctx, name, work).await
    })
}

struct Jobs {
    audit: TaskHandle<String>,
    cache: TaskHandle<String>,
    attached: TaskHandle<String>,
}

/// The request handler: answers after 10 ms, leaving three jobs behind.
async fn handle(request: &Context) -> Jobs {
    let jobs = Jobs {
        audit: spawn_detached(request, ms(100), "audit write", ms(30)),
        cache: spawn_detached(request, ms(40), "cache warm-up", ms(500)),
        // The mistake WithoutCancel exists for: background work on the request's own context.
        attached: request.spawn(|ctx| job(ctx, "metrics flush", ms(30))),
    };
    sleep(ms(10)).await;
    jobs
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn since(start: Instant) -> String {
    format!("{:.1} ms", start.elapsed().as_secs_f64() * 1e3)
}

pub async fn run() {
    let start = Instant::now();
    let jobs = {
        let (request, _cancel) = Context::background()
            .with_value(RequestId(42))
            .with_cancel();
        handle(&request).await
        // The handler has returned: `_cancel` drops and the request context is cancelled.
    };
    println!(
        "Request 42 answered and its context was cancelled at {}.",
        since(start)
    );

    let attached = jobs.attached.await;
    println!(
        "  metrics flush, spawned on the request's own context (needs 30 ms): {attached:?} at {}",
        since(start)
    );
    let audit = jobs.audit.await;
    println!(
        "  audit write, without_cancel + 100 ms budget (needs 30 ms): {audit:?} at {}",
        since(start)
    );
    let cache = jobs.cache.await;
    println!(
        "  cache warm-up, without_cancel + 40 ms budget (needs 500 ms): {cache:?} at {}",
        since(start)
    );
    println!("The audit write outlived the request and still saw its RequestId;");
    println!("the cache warm-up was still bounded by its own timeout.");

    assert_eq!(attached, Err(Error::Canceled));
    assert_eq!(audit.as_deref(), Ok("audit write done for request 42"));
    assert_eq!(cache, Err(Error::DeadlineExceeded));
}
