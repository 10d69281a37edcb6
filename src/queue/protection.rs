//! Lane protection, as pure state machines driven by the lane worker with tokio's clock:
//!
//! - [`Breaker`]: after `failures` retryable failures in a row, the lane stops leasing for a cooldown
//!   (backing off) instead of every job hammering a failing upstream; then one probe job runs
//!   (half-open): a success closes the breaker, a failure opens it again for twice as long, up to a cap.
//! - [`TokenBucket`]: at most `rate` job starts per second on average, with bursts of `burst`.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive retryable failures that open the breaker (0 disables it).
    pub failures: u32,
    pub cooldown: Duration,
    pub max_cooldown: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failures: 5,
            cooldown: Duration::from_secs(5),
            max_cooldown: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    /// No leasing until the instant.
    Open {
        until: Instant,
    },
    /// One probe at a time.
    HalfOpen,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    settings: BreakerSettings,
    state: BreakerState,
    consecutive: u32,
    cooldown: Duration,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        let cooldown = settings.cooldown;
        Self {
            settings,
            state: BreakerState::Closed,
            consecutive: 0,
            cooldown,
        }
    }

    /// The state at `now` (an open breaker whose cooldown has passed is half-open).
    pub fn state(&mut self, now: Instant) -> BreakerState {
        if let BreakerState::Open { until } = self.state
            && now >= until
        {
            self.state = BreakerState::HalfOpen;
        }
        self.state
    }

    /// How many jobs may run at once now, given the lane's configured concurrency.
    pub fn allowed(&mut self, now: Instant, concurrency: usize) -> usize {
        match self.state(now) {
            BreakerState::Closed => concurrency,
            BreakerState::HalfOpen => 1,
            BreakerState::Open { .. } => 0,
        }
    }

    pub fn success(&mut self) {
        self.consecutive = 0;
        self.cooldown = self.settings.cooldown;
        self.state = BreakerState::Closed;
    }

    /// A retryable failure; answers true when this failure opened the breaker.
    pub fn failure(&mut self, now: Instant) -> bool {
        if self.settings.failures == 0 {
            return false;
        }
        self.consecutive = self.consecutive.saturating_add(1);
        let open = match self.state {
            BreakerState::HalfOpen => true,
            BreakerState::Closed => self.consecutive >= self.settings.failures,
            BreakerState::Open { .. } => false,
        };
        if open {
            // A failed probe means the upstream is still down: wait twice as long before the next.
            if self.state == BreakerState::HalfOpen {
                self.cooldown = (self.cooldown * 2).min(self.settings.max_cooldown);
            }
            self.state = BreakerState::Open {
                until: now + self.cooldown,
            };
        }
        open
    }
}

/// A token bucket: `rate` tokens a second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        let burst = burst.max(1.0);
        Self {
            rate: rate.max(0.001),
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    /// Whole tokens available now.
    pub fn available(&mut self, now: Instant) -> usize {
        self.refill(now);
        self.tokens.floor() as usize
    }

    pub fn take(&mut self, n: usize, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens - n as f64).max(0.0);
    }

    /// How long until one token is available.
    pub fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            failures: 3,
            cooldown: Duration::from_secs(10),
            max_cooldown: Duration::from_secs(25),
        }
    }

    #[test]
    fn the_breaker_opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings());
        assert!(!b.failure(t0));
        assert!(!b.failure(t0));
        b.success();
        assert!(!b.failure(t0) && !b.failure(t0));
        assert!(b.failure(t0), "third in a row");
        assert_eq!(b.allowed(t0, 8), 0);
        assert_eq!(b.allowed(t0 + Duration::from_secs(9), 8), 0);
    }

    #[test]
    fn after_the_cooldown_one_probe_runs_and_decides() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings());
        for _ in 0..3 {
            b.failure(t0);
        }
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.allowed(t1, 8), 1, "half-open: one probe");
        assert!(b.failure(t1), "a failed probe reopens");
        assert_eq!(
            b.allowed(t1 + Duration::from_secs(19), 8),
            0,
            "for twice as long"
        );
        let t2 = t1 + Duration::from_secs(20);
        assert_eq!(b.allowed(t2, 8), 1);
        assert!(b.failure(t2));
        assert_eq!(
            b.allowed(t2 + Duration::from_secs(25), 8),
            1,
            "capped at max_cooldown"
        );
        b.success();
        assert_eq!(
            b.allowed(t2 + Duration::from_secs(25), 8),
            8,
            "closed again"
        );
    }

    #[test]
    fn a_zero_threshold_disables_the_breaker() {
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerSettings {
            failures: 0,
            ..settings()
        });
        for _ in 0..100 {
            assert!(!b.failure(t0));
        }
        assert_eq!(b.allowed(t0, 4), 4);
    }

    #[test]
    fn the_bucket_allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut tb = TokenBucket::new(2.0, 4.0, t0);
        assert_eq!(tb.available(t0), 4);
        tb.take(4, t0);
        assert_eq!(tb.available(t0), 0);
        assert_eq!(tb.wait(t0), Duration::from_millis(500));
        assert_eq!(tb.available(t0 + Duration::from_millis(500)), 1);
        assert_eq!(
            tb.available(t0 + Duration::from_secs(60)),
            4,
            "never more than the burst"
        );
    }
}
