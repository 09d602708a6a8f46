//! What a scope's lock guards: its registrations, its source (a deadline's timer or a token
//! watch) and the fields few scopes use ([`Extra`]: a custom cause, a deadline's cause, the
//! mirror token).
//!
//! Keeps invariant 1's storage: a custom cause lives here, written under the lock before
//! `CUSTOM_CAUSE` is published. The lock itself is made on first use (`once.rs`).

use std::mem;

use tokio_util::sync::CancellationToken;

use crate::error::Cause;
use crate::slab::Slab;
use crate::source::Source;

use super::Reg;
use super::walk::Walk;

/// The fields guarded by a scope's lock, in an allocation of their own (see [`OnceInner`]).
/// 80 bytes with the lock, a 96-byte glibc chunk (see the scope's size test).
#[derive(Default)]
pub(super) struct Inner {
    pub(super) regs: Slab<Reg>,
    /// What some scopes hold besides registrations.
    pub(super) outside: Outside,
    #[cfg(loom)]
    pub(super) mark: super::once::lock_check::Mark,
}

/// What a scope holds besides its registrations. A plain deadline's timer (or a token watch)
/// sits here inline, so that a `with_timeout` context is two allocations, the scope and its
/// lock, rather than three; anything more goes to an [`Extra`], which then holds the source
/// too. The `Extra`, once made, is kept across reuse (see `recycle.rs`).
///
/// 16 bytes: a wheel entry leaves a byte for the tags of `Source` and of this (see
/// `WheelEntry` in `wheel.rs`).
#[derive(Default)]
pub(super) enum Outside {
    #[default]
    Nothing,
    Source(Source),
    Extra(Box<Extra>),
}

/// What a plain `with_cancel` or `with_timeout` scope never holds: out of line, so that it
/// costs such a scope nothing beyond the 16 bytes of [`Outside`].
#[derive(Default)]
pub(super) struct Extra {
    /// The cause, when it is not the error itself (`CUSTOM_CAUSE`).
    pub(super) cause: Option<Cause>,
    /// What the scope's deadline or watched token reports when it fires, if not the error
    /// itself.
    fire_cause: Option<Cause>,
    /// What can cancel this scope from outside the tree (its deadline timer or a token
    /// watch), once the scope has an `Extra`; [`Outside::Source`] before.
    source: Option<Source>,
    /// The token behind `Context::token`, made on first use and cancelled with the scope.
    pub(super) mirror: Option<CancellationToken>,
}

impl Extra {
    /// An `Extra` for a scope born with a custom cause or given a fire cause, if any.
    #[cold]
    #[inline(never)]
    pub(super) fn with_causes(
        cause: Option<Cause>,
        fire_cause: Option<Cause>,
    ) -> Option<Box<Extra>> {
        (cause.is_some() || fire_cause.is_some()).then(|| {
            Box::new(Extra {
                cause,
                fire_cause,
                ..Extra::default()
            })
        })
    }

    #[cold]
    #[inline(never)]
    pub(super) fn with_fire_cause(cause: Cause) -> Option<Box<Extra>> {
        Extra::with_causes(None, Some(cause))
    }

    /// Hands a finishing scope's mirror token to the walk, and returns its timer or token
    /// watch, to be dropped once the lock is released.
    #[cold]
    #[inline(never)]
    pub(super) fn take_outside(&mut self, walk: &mut Walk) -> Option<Source> {
        walk.released.mirrors.extend(self.mirror.take());
        self.source.take()
    }
}

impl Inner {
    /// The [`Extra`], made now if it was not, with the source moved into it.
    pub(super) fn extra(&mut self) -> &mut Extra {
        if !matches!(self.outside, Outside::Extra(_)) {
            self.make_extra();
        }
        match &mut self.outside {
            Outside::Extra(extra) => extra,
            _ => unreachable!("made just above"),
        }
    }

    #[cold]
    #[inline(never)]
    pub(super) fn make_extra(&mut self) {
        let source = match mem::take(&mut self.outside) {
            Outside::Source(source) => Some(source),
            _ => None,
        };
        self.outside = Outside::Extra(Box::new(Extra {
            source,
            ..Extra::default()
        }));
    }

    #[inline]
    pub(super) fn extra_ref(&self) -> Option<&Extra> {
        match &self.outside {
            Outside::Extra(extra) => Some(extra),
            _ => None,
        }
    }

    #[inline]
    pub(super) fn cause(&self) -> Option<&Cause> {
        self.extra_ref()?.cause.as_ref()
    }

    /// What the scope reports when its deadline or watched token fires, if not the error.
    #[inline]
    pub(super) fn fire_cause(&self) -> Option<&Cause> {
        self.extra_ref()?.fire_cause.as_ref()
    }

    #[inline]
    pub(super) fn mirror(&self) -> Option<&CancellationToken> {
        self.extra_ref()?.mirror.as_ref()
    }

    #[inline]
    pub(super) fn source(&self) -> Option<&Source> {
        match &self.outside {
            Outside::Nothing => None,
            Outside::Source(source) => Some(source),
            Outside::Extra(extra) => extra.source.as_ref(),
        }
    }

    /// Installs `source`, handing back the one it replaces.
    pub(super) fn replace_source(&mut self, source: Source) -> Option<Source> {
        match &mut self.outside {
            Outside::Extra(extra) => extra.source.replace(source),
            outside => match mem::replace(outside, Outside::Source(source)) {
                Outside::Source(old) => Some(old),
                _ => None,
            },
        }
    }

    /// Takes the source out, leaving an `Extra` in place.
    #[inline]
    pub(super) fn take_source(&mut self) -> Option<Source> {
        match &mut self.outside {
            Outside::Nothing => None,
            Outside::Source(_) => match mem::take(&mut self.outside) {
                Outside::Source(source) => Some(source),
                _ => unreachable!("matched just above"),
            },
            Outside::Extra(extra) => extra.source.take(),
        }
    }

    /// Whether a finish has more to release than registrations: a source or a mirror token.
    #[inline]
    pub(super) fn holds_outside(&self) -> bool {
        match &self.outside {
            Outside::Nothing => false,
            Outside::Source(_) => true,
            Outside::Extra(extra) => extra.source.is_some() || extra.mirror.is_some(),
        }
    }

    /// Hands a finishing scope's mirror token to the walk, and returns its source, to be
    /// dropped once the lock is released.
    #[inline(never)]
    pub(super) fn take_outside(&mut self, walk: &mut Walk) -> Option<Source> {
        match &mut self.outside {
            Outside::Extra(extra) => extra.take_outside(walk),
            outside => match mem::take(outside) {
                Outside::Source(source) => Some(source),
                _ => None,
            },
        }
    }

    /// Empties what a reused scope carried, keeping an `Extra`'s allocation.
    pub(super) fn clear_outside(&mut self) {
        match &mut self.outside {
            Outside::Nothing => {}
            Outside::Source(_) => self.outside = Outside::Nothing,
            Outside::Extra(extra) => **extra = Extra::default(), // the allocation stays too
        }
    }
}
