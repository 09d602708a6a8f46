//! First benchmarks of the hot paths, beside a bare tokio-util `CancellationToken` doing the
//! same work. Run with `cargo bench --bench context`. The full port of Go's
//! `benchmark_test.go` builds on these.

use std::time::Duration;

use divan::{Bencher, black_box};
use taskctx::Context;
use tokio_util::sync::CancellationToken;

fn main() {
    divan::main();
}

/// `is_done()` on a live context: Go's `ContextCancelDone`.
#[divan::bench(threads = [1, 2])]
fn is_done_live(bencher: Bencher) {
    let (ctx, _cancel) = Context::background().with_cancel();
    bencher.bench(|| black_box(&ctx).is_done());
}

#[divan::bench(threads = [1, 2])]
fn token_is_cancelled_live(bencher: Bencher) {
    let token = CancellationToken::new();
    bencher.bench(|| black_box(&token).is_cancelled());
}

/// `err()` on a cancelled context: Go's `ErrCanceled`.
#[divan::bench]
fn err_canceled(bencher: Bencher) {
    let (ctx, cancel) = Context::background().with_cancel();
    cancel.cancel();
    bencher.bench(|| black_box(&ctx).err());
}

/// Derive a cancellable child, cancel it, drop it.
#[divan::bench]
fn with_cancel_cancel_drop(bencher: Bencher) {
    let (root, _cancel) = Context::background().with_cancel();
    bencher.bench(|| {
        let (ctx, cancel) = black_box(&root).with_cancel();
        cancel.cancel();
        drop(ctx);
    });
}

#[divan::bench]
fn child_token_cancel_drop(bencher: Bencher) {
    let root = CancellationToken::new();
    bencher.bench(|| {
        let token = black_box(&root).child_token();
        token.cancel();
        drop(token);
    });
}

/// Derive a one-hour timeout context and cancel it, inside a runtime.
#[divan::bench]
fn with_timeout_cancel(bencher: Bencher) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let root = Context::background();
    bencher.bench(|| {
        let (ctx, cancel) = black_box(&root).with_timeout(Duration::from_secs(3600));
        drop(cancel);
        ctx
    });
}

/// A missing value looked up through `depth` value layers: Go's `DeepValueSameGoRoutine`.
#[divan::bench(args = [10, 100])]
fn deep_value_missing(bencher: Bencher, depth: usize) {
    let mut ctx = Context::background();
    for i in 0..depth {
        ctx = ctx.with_value(i);
    }
    bencher.bench(|| black_box(&ctx).value::<u8>());
}
