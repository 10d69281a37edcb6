//! Time for the queue. Stored times are wall-clock milliseconds; elapsed time comes from tokio's clock,
//! so a test that pauses and advances tokio time moves the queue's clock too.

use std::fmt::Debug;
use std::time::{SystemTime, UNIX_EPOCH};

use super::job::Millis;
use super::schedule::millis;

pub trait Clock: Send + Sync + Debug {
    fn now(&self) -> Millis;
}

/// Wall time read once, then advanced by `tokio::time::Instant`.
#[derive(Debug)]
pub struct TokioClock {
    anchor_wall: Millis,
    anchor: tokio::time::Instant,
}

impl TokioClock {
    pub fn new() -> Self {
        Self {
            anchor_wall: wall_now(),
            anchor: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Millis {
        self.anchor_wall
            .saturating_add(millis(tokio::time::Instant::now() - self.anchor))
    }
}

/// The system's wall clock, for the few places outside scheduling that stamp a time.
pub fn wall_now() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
}

/// A clock that moves only when told to, for tests.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: std::sync::atomic::AtomicU64,
}

impl ManualClock {
    pub fn new(start: Millis) -> Self {
        Self {
            now: std::sync::atomic::AtomicU64::new(start),
        }
    }

    pub fn advance(&self, by: std::time::Duration) {
        self.now
            .fetch_add(millis(by), std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        self.now.load(std::sync::atomic::Ordering::SeqCst)
    }
}
