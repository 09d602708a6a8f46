//! Tools shared by the test binaries, and by the benches and the stress harness, which include
//! these files by path (`#[path = "../tests/common/mod.rs"] mod common;`) rather than through a
//! crate of their own: each binary then compiles them as its own module, so that clippy and the
//! compiler's lints check them wherever they are used, and nothing is published with the crate.

// Each binary uses its own part of the tools.
#![allow(dead_code)]

pub mod alloc;
pub mod rng;
