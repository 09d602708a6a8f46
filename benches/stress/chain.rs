//! Part 3: long chains of derived contexts, cancelled or released, on a small stack.

use std::time::{Duration, Instant as StdInstant};

use taskctx::testing::census;
use taskctx::{CancelHandle, Context, Error};

use crate::{Checks, multi_thread_runtime};

pub fn chain(checks: &Checks, length: usize) {
    println!("chain: {length} derived contexts, on a thread with a 2 MiB stack");
    let rt = multi_thread_runtime(1);
    let handle = rt.handle().clone();
    let results: Vec<(String, bool, Duration)> = std::thread::Builder::new()
        .name("chain".into())
        .stack_size(2 << 20)
        .spawn(move || {
            let _runtime = handle.enter();
            let mut results = Vec::new();
            for variant in [
                "cancelled from the root",
                "released without a cancellation",
                "handles dropped leaf first",
            ] {
                let started = StdInstant::now();
                let (root, cancel_root) = Context::background().with_cancel_cause();
                let mut handles = Vec::with_capacity(length);
                let mut leaf = root.clone();
                let mut last_value = None;
                for i in 0..length {
                    leaf = match i % 4 {
                        0 => {
                            let (ctx, cancel) = leaf.with_cancel();
                            handles.push(cancel);
                            ctx
                        }
                        1 => {
                            last_value = Some(i);
                            leaf.with_value(i)
                        }
                        2 => {
                            let (ctx, cancel) = leaf.with_timeout(Duration::from_secs(3600));
                            handles.push(cancel);
                            ctx
                        }
                        _ => leaf.merge(&root),
                    };
                }
                let scopes = (0..length).filter(|i| i % 4 != 1).count(); // all but values
                let registered = census(&root).contexts;
                let ok = registered == scopes
                    && !leaf.is_done()
                    && leaf.value::<usize>() == last_value.as_ref();
                let ok = ok
                    && match variant {
                        "cancelled from the root" => {
                            cancel_root.cancel("root cancelled");
                            let ok = leaf.err() == Some(Error::Canceled)
                                && leaf
                                    .cause()
                                    .is_some_and(|c| c.to_string() == "root cancelled");
                            drop(handles);
                            drop(leaf);
                            ok
                        }
                        "released without a cancellation" => {
                            handles.into_iter().for_each(CancelHandle::disarm);
                            cancel_root.disarm();
                            drop(leaf);
                            true
                        }
                        _ => {
                            while let Some(handle) = handles.pop() {
                                drop(handle);
                            }
                            let ok = leaf.err() == Some(Error::Canceled);
                            drop(leaf);
                            cancel_root.disarm();
                            ok
                        }
                    };
                let ok = ok && census(&root).is_clean();
                drop(root);
                results.push((variant.to_string(), ok, started.elapsed()));
            }
            results
        })
        .expect("a thread")
        .join()
        .unwrap_or_else(|_| vec![("a chain".to_string(), false, Duration::ZERO)]);
    for (variant, ok, elapsed) in results {
        println!(
            "  {variant}: {} in {:.2} s",
            if ok { "ok" } else { "FAILED" },
            elapsed.as_secs_f64()
        );
        checks.check(ok, || format!("chain: {variant}"));
    }
    drop(rt);
}
