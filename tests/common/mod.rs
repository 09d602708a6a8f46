//! Tools shared by the test binaries, and by the benches and the stress harness, which include
//! these files by path (`#[path = "../tests/common/mod.rs"] mod common;`) rather than through a
//! crate of their own: each binary then compiles them as its own module, so that clippy and the
//! compiler's lints check them wherever they are used, and nothing is published with the crate.

// Each binary uses its own part of the tools.
#![allow(dead_code)]

pub mod alloc;
pub mod rng;

/// Enables every span and event on this thread, writing nothing, until the guard is dropped:
/// spans made meanwhile have ids, which a test can compare.
pub fn trace_everything() -> tracing::subscriber::DefaultGuard {
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(std::io::sink)
        .finish();
    tracing::subscriber::set_default(subscriber)
}
