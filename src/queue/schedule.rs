//! Retry scheduling: pure functions from (policy, job, error, now, randomness) to a decision.
//!
//! Nothing here reads a clock or a random source; callers pass both in, so every branch is unit-tested.

use std::collections::HashMap;
use std::time::Duration;

use super::job::{DeadReason, ErrorClass, JobError, Millis};

/// How one kind of job is retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Upper bound of the first retry's delay; each further attempt doubles it.
    pub base: Duration,
    /// No computed delay exceeds this (an upstream's `Retry-After` may).
    pub cap: Duration,
    /// Attempts (including the first) before the job is dead-lettered.
    pub max_attempts: u32,
    /// A job still failing this long after it was queued is dead-lettered.
    pub max_age: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(15 * 60),
            max_attempts: 25,
            max_age: Duration::from_secs(3 * 24 * 3600),
        }
    }
}

/// The default policy with per-kind overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryPolicies {
    pub default: RetryPolicy,
    pub per_kind: HashMap<String, RetryPolicy>,
}

impl RetryPolicies {
    pub fn for_kind(&self, kind: &str) -> &RetryPolicy {
        self.per_kind.get(kind).unwrap_or(&self.default)
    }
}

/// What happens to a job after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Try again at this time.
    RetryAt(Millis),
    /// Give up; an operator decides.
    Dead(DeadReason),
    /// Credentials or configuration are wrong: stop the lane instead of burning attempts.
    PauseLane,
}

/// Exponential backoff with full jitter: a uniform delay in `[0, min(cap, base · 2^(attempt-1))]`.
///
/// `unit` is a random number in `[0, 1)`. Full jitter spreads the retries of many jobs that failed together
/// (an upstream outage) instead of sending them back in synchronized waves.
pub fn backoff(policy: &RetryPolicy, attempt: u32, unit: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(63);
    let ceiling = policy
        .base
        .checked_mul(1u32.checked_shl(exp.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(Duration::MAX)
        .min(policy.cap);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

/// Decides the fate of a job whose attempt number `attempts` (1-based, already counted) just failed.
pub fn decide(
    policy: &RetryPolicy,
    attempts: u32,
    queued_at: Millis,
    now: Millis,
    error: &JobError,
    unit: f64,
) -> Decision {
    match error.class {
        ErrorClass::Permanent => Decision::Dead(DeadReason::PermanentError),
        ErrorClass::Auth => Decision::PauseLane,
        ErrorClass::Retryable => {
            if attempts >= policy.max_attempts {
                return Decision::Dead(DeadReason::AttemptsExhausted);
            }
            let mut delay = backoff(policy, attempts, unit);
            if let Some(after) = error.retry_after {
                delay = delay.max(after);
            }
            let at = now.saturating_add(millis(delay));
            if at.saturating_sub(queued_at) > millis(policy.max_age) {
                return Decision::Dead(DeadReason::MaxAgeExceeded);
            }
            Decision::RetryAt(at)
        }
    }
}

pub(crate) fn millis(d: Duration) -> Millis {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
            max_attempts: 5,
            max_age: Duration::from_secs(3600),
        }
    }

    #[test]
    fn backoff_doubles_until_the_cap() {
        let p = policy();
        assert_eq!(backoff(&p, 1, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(&p, 2, 1.0), Duration::from_millis(200));
        assert_eq!(backoff(&p, 4, 1.0), Duration::from_millis(800));
        assert_eq!(backoff(&p, 8, 1.0), Duration::from_secs(10));
        assert_eq!(backoff(&p, 1000, 1.0), Duration::from_secs(10));
    }

    #[test]
    fn full_jitter_scales_the_whole_delay() {
        let p = policy();
        assert_eq!(backoff(&p, 3, 0.0), Duration::ZERO);
        assert_eq!(backoff(&p, 3, 0.5), Duration::from_millis(200));
    }

    #[test]
    fn a_permanent_error_is_dead_at_once() {
        let e = JobError::permanent("400", "bad");
        assert_eq!(
            decide(&policy(), 1, 0, 0, &e, 0.5),
            Decision::Dead(DeadReason::PermanentError)
        );
    }

    #[test]
    fn an_auth_error_pauses_the_lane_instead_of_counting() {
        let e = JobError::auth("401", "token refused");
        assert_eq!(decide(&policy(), 4, 0, 0, &e, 0.5), Decision::PauseLane);
    }

    #[test]
    fn a_retryable_error_is_retried_after_the_backoff() {
        let e = JobError::retryable("503", "down");
        assert_eq!(
            decide(&policy(), 2, 0, 1_000, &e, 1.0),
            Decision::RetryAt(1_200)
        );
    }

    #[test]
    fn the_last_attempt_dead_letters() {
        let e = JobError::retryable("503", "down");
        assert_eq!(
            decide(&policy(), 5, 0, 0, &e, 1.0),
            Decision::Dead(DeadReason::AttemptsExhausted)
        );
    }

    #[test]
    fn retry_after_is_honoured_even_beyond_the_cap() {
        let e = JobError::retryable("429", "slow down").with_retry_after(Duration::from_secs(30));
        assert_eq!(
            decide(&policy(), 1, 0, 1_000, &e, 0.0),
            Decision::RetryAt(31_000)
        );
    }

    #[test]
    fn a_retry_that_would_land_past_max_age_dead_letters() {
        let e = JobError::retryable("503", "down");
        let queued = 0;
        let now = 3_599_950;
        assert_eq!(
            decide(&policy(), 2, queued, now, &e, 1.0),
            Decision::Dead(DeadReason::MaxAgeExceeded)
        );
    }

    #[test]
    fn per_kind_policies_override_the_default() {
        let mut ps = RetryPolicies::default();
        ps.per_kind.insert("portal.step".into(), policy());
        assert_eq!(ps.for_kind("portal.step").max_attempts, 5);
        assert_eq!(ps.for_kind("other").max_attempts, 25);
    }

    proptest! {
        #[test]
        fn backoff_never_exceeds_the_cap_or_goes_negative(attempt in 0u32..10_000, unit in 0.0f64..1.0) {
            let p = policy();
            let d = backoff(&p, attempt, unit);
            prop_assert!(d <= p.cap);
        }

        #[test]
        fn retries_are_never_scheduled_in_the_past(attempt in 1u32..5, now in 0u64..1_000_000, unit in 0.0f64..1.0) {
            let e = JobError::retryable("x", "y");
            if let Decision::RetryAt(at) = decide(&policy(), attempt, now, now, &e, unit) {
                prop_assert!(at >= now);
            }
        }
    }
}
