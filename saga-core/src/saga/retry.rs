use std::time::Duration;

use uuid::Uuid;

/// How often and how patiently a failing action is tried again: exponential backoff with
/// jitter, up to a number of attempts.
///
/// The jitter is derived from the message or instance id and the attempt rather than drawn at
/// random, so a re-run after a crash schedules the same retry, and tests see the same delays.
///
/// ```
/// use saga_core::saga::RetryPolicy;
/// use std::time::Duration;
/// let p = RetryPolicy::exponential(3, Duration::from_millis(100)).without_jitter();
/// let id = uuid::Uuid::nil();
/// assert_eq!(p.delay_before_retry(1, id), Some(Duration::from_millis(100)));
/// assert_eq!(p.delay_before_retry(2, id), Some(Duration::from_millis(200)));
/// assert_eq!(p.delay_before_retry(3, id), None); // three attempts made: give up
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial: Duration,
    max_delay: Duration,
    multiplier: f64,
    jitter: bool,
}

impl Default for RetryPolicy {
    /// Five attempts, starting at 100 ms, doubling, at most 30 s apart, with jitter.
    fn default() -> Self {
        Self::exponential(5, Duration::from_millis(100))
    }
}

impl RetryPolicy {
    /// `max_attempts` attempts in all (the first included), the first retry after about
    /// `initial`, each later one twice as late, capped at 30 s. With jitter (the default) each
    /// delay is drawn between half of it and all of it ("equal jitter"), so the first retry
    /// comes between `initial / 2` and `initial`; [`RetryPolicy::without_jitter`] makes it
    /// exactly `initial`.
    pub fn exponential(max_attempts: u32, initial: Duration) -> Self {
        RetryPolicy {
            max_attempts: max_attempts.max(1),
            initial,
            max_delay: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: true,
        }
    }

    /// One attempt, no retry.
    pub fn never() -> Self {
        Self::exponential(1, Duration::ZERO)
    }

    /// Retries without a limit on attempts (for steps after the pivot, which must finish).
    pub fn forever(initial: Duration) -> Self {
        Self::exponential(u32::MAX, initial)
    }

    /// Caps the delay between two attempts.
    pub fn max_delay(mut self, max: Duration) -> Self {
        self.max_delay = max;
        self
    }

    /// Sets the growth factor between two delays (2.0 by default).
    pub fn multiplier(mut self, m: f64) -> Self {
        self.multiplier = if m.is_finite() && m >= 1.0 { m } else { 1.0 };
        self
    }

    /// Uses the exact exponential delays.
    pub fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    /// Attempts allowed in all.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The delay before the next attempt when `attempts_made` attempts have failed, or `None`
    /// when the policy is exhausted. `seed` spreads the jitter of different messages.
    pub fn delay_before_retry(&self, attempts_made: u32, seed: Uuid) -> Option<Duration> {
        if attempts_made >= self.max_attempts {
            return None;
        }
        let exp = attempts_made.saturating_sub(1).min(64) as i32;
        let base = self.initial.as_secs_f64() * self.multiplier.powi(exp);
        let capped = base.min(self.max_delay.as_secs_f64());
        let delay = if self.jitter {
            // "Equal jitter": half fixed, half spread, so retries never bunch at zero.
            let spread = (seed.as_u128() as u64 ^ u64::from(attempts_made).wrapping_mul(0x9E37_79B9_7F4A_7C15))
                .wrapping_mul(0xBF58_476D_1CE4_E5B9)
                >> 11;
            let fraction = spread as f64 / (1u64 << 53) as f64;
            capped * (0.5 + 0.5 * fraction)
        } else {
            capped
        };
        Some(Duration::try_from_secs_f64(delay).unwrap_or(self.max_delay))
    }
}
