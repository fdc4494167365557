//! When to try again, and telling someone each time: the one budget every
//! retry loop of vmimg's transports spends (downloads here, the registry
//! client's requests in `vmimg-oci`).
//!
//! After a failure the caller judged transient, [`Retries::wait`] takes the
//! next delay of [`FetchOptions::backoff`] (at least what the server asked
//! for with Retry-After, at most `max_delay`), tells the caller's
//! [`Progress`] that it is retrying, why, and after how long, then sleeps:
//! no retry is silent. The budget ends after `attempts` failures in a row
//! without progress ([`Retries::progressed`] starts it again), and sooner
//! for a host name that does not resolve: two such failures in a row end
//! it. No network or no DNS does not come back within the backoff's
//! seconds, and one more try covers a resolver that stumbled.

use crate::download::{FetchOptions, Progress};
use std::time::Duration;

/// What a retry loop needs to know of a failure besides that it may pass.
pub trait Retryable: std::error::Error + 'static {
    /// The host whose name did not resolve, if that is why it failed.
    fn unresolved_host(&self) -> Option<&str>;

    /// How long the server asked the client to wait (Retry-After).
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

/// The retry budget of one operation, and who hears of its retries.
pub struct Retries<'a> {
    options: &'a FetchOptions,
    delays: backon::ExponentialBackoff,
    /// Failed attempts since the start, or since the last progress.
    failed: usize,
    /// Whether the last failure was a name that did not resolve.
    unresolved: bool,
    progress: &'a dyn Progress,
}

impl<'a> Retries<'a> {
    pub fn new(options: &'a FetchOptions, progress: &'a dyn Progress) -> Retries<'a> {
        Retries { options, delays: options.backoff(), failed: 0, unresolved: false, progress }
    }

    /// The attempt that just failed had made progress: the budget starts
    /// again (this failure will be the first of it).
    pub fn progressed(&mut self) {
        self.delays = self.options.backoff();
        self.failed = 0;
    }

    /// Failed attempts counted so far (since the last progress).
    pub fn attempts(&self) -> usize {
        self.failed
    }

    /// After a transient failure: tells the progress and waits the next
    /// delay, then returns true; or returns false at once when the budget
    /// is spent (the caller gives up with `error`).
    pub async fn wait<E: Retryable>(&mut self, error: &E) -> bool {
        match self.next_delay(error) {
            Some(delay) => {
                self.progress.retrying(error, delay);
                tokio::time::sleep(delay).await;
                true
            }
            None => false,
        }
    }

    fn next_delay<E: Retryable>(&mut self, error: &E) -> Option<Duration> {
        self.failed += 1;
        let unresolved = error.unresolved_host().is_some();
        if std::mem::replace(&mut self.unresolved, unresolved) && unresolved {
            return None;
        }
        // backon's jitter may add up to the delay itself: the cap holds after it.
        let delay = self.delays.next()?;
        Some(delay.max(error.retry_after().unwrap_or_default()).min(self.options.max_delay))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::download::NoProgress;

    #[derive(Debug, thiserror::Error)]
    #[error("test failure")]
    struct Failure {
        unresolved: bool,
        retry_after: Option<Duration>,
    }

    impl Retryable for Failure {
        fn unresolved_host(&self) -> Option<&str> {
            self.unresolved.then_some("example.invalid")
        }

        fn retry_after(&self) -> Option<Duration> {
            self.retry_after
        }
    }

    const REFUSED: Failure = Failure { unresolved: false, retry_after: None };
    const UNRESOLVED: Failure = Failure { unresolved: true, retry_after: None };

    fn options(attempts: usize) -> FetchOptions {
        FetchOptions { attempts, min_delay: Duration::from_millis(1), ..FetchOptions::default() }
    }

    #[test]
    fn attempts_failures_in_a_row_spend_the_budget_and_progress_restores_it() {
        let options = options(3);
        let mut retries = Retries::new(&options, &NoProgress);
        assert!(retries.next_delay(&REFUSED).is_some() && retries.next_delay(&REFUSED).is_some());
        retries.progressed();
        assert!(retries.next_delay(&REFUSED).is_some() && retries.next_delay(&REFUSED).is_some());
        assert!(retries.next_delay(&REFUSED).is_none(), "the third failure in a row ends it");
        assert_eq!(retries.attempts(), 3);
    }

    #[test]
    fn a_name_that_does_not_resolve_is_tried_once_more_only() {
        let options = options(8);
        let mut retries = Retries::new(&options, &NoProgress);
        assert!(retries.next_delay(&UNRESOLVED).is_some(), "one retry for a resolver that stumbled");
        assert!(retries.next_delay(&UNRESOLVED).is_none(), "two in a row end it");
        assert_eq!(retries.attempts(), 2);

        let mut retries = Retries::new(&options, &NoProgress);
        for failure in [&UNRESOLVED, &REFUSED, &UNRESOLVED, &REFUSED] {
            assert!(retries.next_delay(failure).is_some(), "not in a row: the budget of attempts holds");
        }
    }

    #[test]
    fn jitter_never_takes_a_delay_past_the_maximum() {
        let options =
            FetchOptions { min_delay: Duration::from_secs(1), max_delay: Duration::from_secs(2), ..options(64) };
        let mut retries = Retries::new(&options, &NoProgress);
        let delays: Vec<_> = std::iter::from_fn(|| retries.next_delay(&REFUSED)).collect();
        assert_eq!(delays.len(), 63);
        assert!(delays.iter().all(|&d| d <= Duration::from_secs(2)), "{delays:?}");
    }

    #[test]
    fn retry_after_lengthens_the_delay_up_to_the_maximum() {
        let options = FetchOptions { max_delay: Duration::from_secs(5), ..options(8) };
        let mut retries = Retries::new(&options, &NoProgress);
        let asked = |secs| Failure { unresolved: false, retry_after: Some(Duration::from_secs(secs)) };
        assert_eq!(retries.next_delay(&asked(2)), Some(Duration::from_secs(2)));
        assert_eq!(retries.next_delay(&asked(60)), Some(Duration::from_secs(5)));
    }
}
