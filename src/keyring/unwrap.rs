//! Unwrapping every data key of a store at open: bounded parallelism, retry with backoff
//! on throttling and outages, and one error that names every table and key that failed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::cipher::Suite;
use crate::error::{Error, Result};
use crate::kms::{DataKeySpec, EncryptionContext, Kms, KmsError};
use crate::secret::{DataKey, WrappedKey};

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
    pub fn run<T>(&self, mut call: impl FnMut() -> Result<T, KmsError>) -> Result<T, KmsError> {
        let mut backoff = self.initial_backoff;
        let mut attempt = 1;
        loop {
            match call() {
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

/// A table and key that could not be unwrapped.
#[derive(Debug)]
pub struct KeyFailure {
    /// The table (or `(store)` for the store-level key).
    pub table: String,
    /// The data key version.
    pub version: u32,
    /// The master key.
    pub key: String,
    /// What the KMS said.
    pub error: KmsError,
}

impl std::fmt::Display for KeyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "table {:?} (data key v{}, master key {}): {}",
            self.table, self.version, self.key, self.error
        )
    }
}

/// One EDK to unwrap.
pub(crate) struct UnwrapRequest {
    pub table: String,
    pub version: u32,
    pub cmk: String,
    pub suite: Suite,
    pub edk: WrappedKey,
    pub context: EncryptionContext,
}

/// Unwraps every request with at most `parallelism` calls in flight. All or nothing.
pub(crate) fn unwrap_all(
    kms: &dyn Kms,
    requests: &[UnwrapRequest],
    parallelism: usize,
    retry: &RetryPolicy,
) -> Result<Vec<DataKey>> {
    let results: Vec<Mutex<Option<Result<DataKey, KmsError>>>> =
        requests.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let workers = parallelism.clamp(1, requests.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(req) = requests.get(i) else { break };
                    let outcome = retry
                        .run(|| kms.decrypt_data_key(&req.edk, DataKeySpec::from(req.suite), &req.context));
                    *results[i].lock() = Some(outcome);
                }
            });
        }
    });
    let mut keys = Vec::with_capacity(requests.len());
    let mut failures = Vec::new();
    for (req, slot) in requests.iter().zip(results) {
        match slot.into_inner() {
            Some(Ok(key)) => keys.push(key),
            Some(Err(error)) => failures.push(KeyFailure {
                table: req.table.clone(),
                version: req.version,
                key: req.cmk.clone(),
                error,
            }),
            None => unreachable!("every request is processed"),
        }
    }
    if failures.is_empty() {
        Ok(keys)
    } else {
        Err(Error::KeysUnavailable { failures })
    }
}
