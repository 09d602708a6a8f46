//! Go's classic goroutine leak, and why it cannot happen here.
//!
//! In Go, a generator goroutine sends 1, 2, 3, ... on an unbuffered channel. The consumer
//! takes five numbers and returns; nobody receives again, so the generator blocks on its next
//! send forever. The fix in Go is to pass a `ctx` and have the generator `select` on
//! `ctx.Done()`, and to remember `defer cancel()` in the consumer.
//!
//! Here the generator is started with `Context::spawn` on a context owned by the consumer.
//! When the consumer returns, its `CancelHandle` drops, the context is cancelled, and the
//! generator stops. `taskctx::testing::census` counts the live tasks to prove it.

use std::time::Duration;

use taskctx::testing::census;
use taskctx::{Context, TaskHandle};
use tokio::sync::mpsc;
use tokio::time::Instant;

#[allow(dead_code)] // unused when tour.rs includes this file as a module
#[tokio::main]
async fn main() {
    run().await;
}

/// Sends 1, 2, 3, ... until the context is done (Go: `select { case ch <- n: case <-ctx.Done():
/// return }`). Returns how many numbers it sent.
async fn generate(ctx: Context, numbers: mpsc::Sender<u64>) -> u64 {
    let mut sent = 0;
    loop {
        tokio::select! {
            biased;
            _ = ctx.done() => return sent,
            result = numbers.send(sent + 1) => {
                if result.is_err() {
                    return sent; // the receiver is gone
                }
                sent += 1;
            }
        }
    }
}

/// The consumer: takes the first `count` numbers and returns. Its context, and with it the
/// generator, ends with the function; there is no `defer cancel()` to forget.
async fn take(root: &Context, count: usize) -> (Vec<u64>, usize, TaskHandle<u64>) {
    let (tx, mut rx) = mpsc::channel(1); // Go's unbuffered channel, as near as tokio gets
    let (ctx, _cancel) = root.with_cancel();
    let generator = ctx.spawn(|ctx| generate(ctx, tx));
    let mut taken = Vec::with_capacity(count);
    while taken.len() < count {
        match rx.recv().await {
            Some(n) => taken.push(n),
            None => break,
        }
    }
    let live = census(root).tasks;
    (taken, live, generator)
    // `_cancel` drops here (before the receiver does): the context is cancelled.
}

pub async fn run() {
    let (root, _cancel_root) = Context::background().with_cancel();
    let before = census(&root).tasks;

    let (taken, during, generator) = take(&root, 5).await;
    let returned = Instant::now();
    println!("The consumer took {taken:?} and returned; its CancelHandle went out of scope");
    println!("and cancelled its context, so there was no cancel() call to forget.");

    // Awaiting the handle resolves only once the generator task has really stopped.
    let stopped = generator.await;
    let waited = returned.elapsed();
    let after = census(&root).tasks;

    println!("live generator tasks: before {before}, during {during}, after {after}");
    // Which of the two it is depends on whether the generator was running at that instant.
    let how = match stopped {
        Ok(sent) => {
            format!("it saw the context done in its select and returned ({sent} numbers sent)")
        }
        Err(err) => format!("Context::spawn dropped it at its next .await ({err:?})"),
    };
    println!(
        "Awaiting the generator's handle took {:.0} µs: {how}.",
        waited.as_secs_f64() * 1e6
    );
    println!("In Go, the same generator without a context would block on its next send forever.");

    assert_eq!(taken, [1, 2, 3, 4, 5]);
    assert_eq!((before, during, after), (0, 1, 0));
    assert!(waited < Duration::from_secs(1));
}
