//! The synchronization primitives the crate's own code is built on: std's, or loom's when the
//! crate is model checked (`RUSTFLAGS="--cfg loom" cargo test --lib --release loom`).

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{
    AtomicBool, AtomicPtr, AtomicU8, AtomicU32, AtomicUsize, Ordering,
};
#[cfg(loom)]
pub(crate) use loom::sync::{Condvar, Mutex, MutexGuard};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{
    AtomicBool, AtomicPtr, AtomicU8, AtomicU32, AtomicUsize, Ordering,
};
#[cfg(not(loom))]
pub(crate) use std::sync::{Condvar, Mutex, MutexGuard};

/// Where threads sleep while another thread's cancellation finishes walking a subtree
/// (`Scope::wait_settled` in `tree/walk.rs`). One for the process: such sleeps are rare and short.
pub(crate) struct ParkingLot {
    pub(crate) mutex: Mutex<()>,
    pub(crate) condvar: Condvar,
}

#[cfg(not(loom))]
pub(crate) fn parking_lot() -> &'static ParkingLot {
    static LOT: ParkingLot = ParkingLot {
        mutex: Mutex::new(()),
        condvar: Condvar::new(),
    };
    &LOT
}

#[cfg(loom)]
pub(crate) fn parking_lot() -> &'static ParkingLot {
    loom::lazy_static! {
        static ref LOT: ParkingLot = ParkingLot {
            mutex: Mutex::new(()),
            condvar: Condvar::new(),
        };
    }
    &LOT
}
