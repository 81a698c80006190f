//! The one retry policy for KMS calls: retry throttling and outages with jittered
//! exponential backoff; everything else fails at once.

use std::time::Duration;

use crate::error::Result;
use crate::kms::KmsError;

/// How often, and how patiently, to retry a KMS call that failed with a retryable error
/// (throttling, outage).
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, including the first. Default: 5.
    pub attempts: u32,
    /// Wait before the first retry; doubles each time. Default: 50 ms.
    pub initial_backoff: Duration,
    /// Longest wait between attempts. Default: 2 s.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: 5,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// Runs `call` until it succeeds, fails with a non-retryable error, or the attempts
    /// run out. Backoff has random jitter so many callers do not retry in step.
    ///
    /// # Errors
    /// The last error.
    pub fn run<T>(&self, call: impl FnMut() -> Result<T, KmsError>) -> Result<T, KmsError> {
        self.run_observed(call, &mut |_| {})
    }

    /// As [`RetryPolicy::run`], calling `attempt_done` with the outcome of every attempt
    /// (each is a KMS call, and each gets an audit record).
    pub(crate) fn run_observed<T>(
        &self,
        mut call: impl FnMut() -> Result<T, KmsError>,
        attempt_done: &mut dyn FnMut(Option<&KmsError>),
    ) -> Result<T, KmsError> {
        let mut backoff = self.initial_backoff;
        let mut attempt = 1;
        loop {
            let outcome = call();
            attempt_done(outcome.as_ref().err());
            match outcome {
                Err(e) if e.is_retryable() && attempt < self.attempts.max(1) => {
                    let mut jitter = [0u8; 1];
                    let _ = crate::error::os_random(&mut jitter);
                    let wait = backoff.mul_f64(0.5 + f64::from(jitter[0]) / 510.0);
                    std::thread::sleep(wait);
                    backoff = (backoff * 2).min(self.max_backoff);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}
