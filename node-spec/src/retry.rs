//! Retries with exponential backoff, the one loop both binaries retry
//! through (the builder's downloads, the agent's K3s download). What is
//! transient, how to wait and how to log are the caller's.

use std::time::Duration;

/// How many tries, and the pause after the first failed one; each later
/// pause is twice the one before, up to `max_pause`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub attempts: u32,
    pub first_pause: Duration,
    pub max_pause: Duration,
}

impl Backoff {
    /// `attempts` tries, pauses doubling from `first_pause` without a cap.
    pub const fn new(attempts: u32, first_pause: Duration) -> Self {
        Self {
            attempts,
            first_pause,
            max_pause: Duration::MAX,
        }
    }

    /// Pauses never longer than `max_pause`.
    pub const fn capped(self, max_pause: Duration) -> Self {
        Self { max_pause, ..self }
    }
}

/// The error that ended the retries and the number of tries made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GaveUp<E> {
    pub error: E,
    pub attempts: u32,
}

/// Call `attempt(n)` (n from 1) until it succeeds, fails with an error that
/// is not `transient`, or `policy.attempts` tries have failed. Before each
/// retry `pause(n, delay, &error)` is called: it waits (and logs) and
/// returns `false` to stop retrying, e.g. on Ctrl-C.
pub fn retry<T, E>(
    policy: Backoff,
    mut attempt: impl FnMut(u32) -> Result<T, E>,
    transient: impl Fn(&E) -> bool,
    mut pause: impl FnMut(u32, Duration, &E) -> bool,
) -> Result<T, GaveUp<E>> {
    let attempts = policy.attempts.max(1);
    let mut delay = policy.first_pause;
    let mut n = 1;
    loop {
        match attempt(n) {
            Ok(v) => return Ok(v),
            Err(error) if n < attempts && transient(&error) && pause(n, delay, &error) => {
                delay = delay.saturating_mul(2).min(policy.max_pause);
                n += 1;
            }
            Err(error) => return Err(GaveUp { error, attempts: n }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Backoff = Backoff::new(4, Duration::from_secs(1));

    #[test]
    fn pauses_double_and_the_last_error_is_returned() {
        let mut pauses = Vec::new();
        let r: Result<(), _> = retry(
            POLICY,
            Err,
            |_| true,
            |_, d, _| {
                pauses.push(d.as_secs());
                true
            },
        );
        assert_eq!(
            r,
            Err(GaveUp {
                error: 4,
                attempts: 4
            })
        );
        assert_eq!(pauses, [1, 2, 4]);
        pauses.clear();
        let _: Result<(), _> = retry(
            Backoff::new(5, Duration::from_secs(2)).capped(Duration::from_secs(5)),
            Err,
            |_: &u32| true,
            |_, d, _| {
                pauses.push(d.as_secs());
                true
            },
        );
        assert_eq!(pauses, [2, 4, 5, 5]);
    }

    #[test]
    fn success_fatal_errors_and_a_refused_pause_stop_at_once() {
        assert_eq!(
            retry(
                POLICY,
                |n| if n < 3 { Err(n) } else { Ok(n) },
                |_| true,
                |_, _, _| true
            ),
            Ok(3)
        );
        let r: Result<(), _> = retry(POLICY, Err, |&e| e != 2, |_, _, _| true);
        assert_eq!(r.unwrap_err().attempts, 2, "2 is not transient");
        let r: Result<(), _> = retry(POLICY, Err, |_| true, |_, _, _| false);
        assert_eq!(
            r.unwrap_err().attempts,
            1,
            "cancelled before the first retry"
        );
    }
}
