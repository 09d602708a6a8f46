use std::sync::Arc;

use crate::error::{Cause, Error};
use crate::source::{self, Source};
use tokio::time::Instant;

use super::{Kind, Scope};

impl Scope {
    /// Arms this scope's own deadline.
    pub(super) fn arm(self: &Arc<Self>, at: Instant, now: Option<Instant>) {
        if at <= now.unwrap_or_else(Instant::now) {
            return self.deadline_fired();
        }
        match source::arm_timer(self, at) {
            Some(timer) => self.set_source(timer),
            None => self.deadline_fired(),
        }
    }

    /// Installs what can cancel this scope from outside. A done scope drops it at once.
    pub(crate) fn set_source(self: &Arc<Self>, source: Source) {
        self.link_first();
        let replaced = {
            let mut inner = self.lock();
            match self.claim() {
                Some(_) => Some(source),
                None => inner.replace_source(source),
            }
        };
        drop(replaced);
    }

    /// Called when the deadline timer says it has fired.
    pub(crate) fn deadline_fired(self: &Arc<Self>) {
        let Kind::Deadline { at } = &self.kind else {
            return;
        };
        if self.is_done() {
            return;
        }
        if Instant::now() < *at {
            // Tokio fires every timer early when its runtime shuts down. The deadline has not
            // passed: keep it on the crate's own timer thread instead.
            self.set_source(source::fallback_timer(self, *at));
            return;
        }
        let cause = self.lock().deadline_cause().cloned();
        let cause = cause.unwrap_or(Cause::from(Error::DeadlineExceeded));
        self.cancel(Error::DeadlineExceeded, cause);
    }
}
