//! One background-job type for the key watch, automatic rotation and re-encryption: a
//! thread with shared progress, cancellation that wakes it from any wait, and a result.
//!
//! Invariant: dropping a job cancels it and joins its thread, so no job outlives its
//! handle; an engine that closes cancels and waits for the jobs running on it first.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::{RetiredKey, RotatedKey};
use crate::error::{Error, Result};

/// Where a job is.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct JobProgress {
    /// Bytes of work when the job started (re-encryption: bytes of files or pages under
    /// old versions).
    pub total_bytes: u64,
    /// Of those, bytes done so far.
    pub done_bytes: u64,
    /// The table (or envelope) being worked on.
    pub table: Option<String>,
    /// Why the job is waiting, if it is.
    pub waiting: Option<String>,
    /// Versions retired so far.
    pub retired: Vec<RetiredKey>,
    /// Versions made current so far (automatic rotation).
    pub rotated: Vec<RotatedKey>,
    /// Rounds run (periodic jobs).
    pub rounds: u64,
    /// Whether the job has ended (successfully or not).
    pub finished: bool,
}

/// The side of a job its thread sees: cancellation and progress.
#[derive(Debug, Default)]
pub(crate) struct JobControl {
    cancelled: AtomicBool,
    wake: Mutex<()>,
    woken: Condvar,
    progress: Mutex<JobProgress>,
}

impl JobControl {
    /// [`Error::Cancelled`] once the job was cancelled.
    pub(crate) fn check(&self) -> Result<()> {
        if self.cancelled.load(Ordering::SeqCst) {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Sleeps for `d`, or until the job is cancelled ([`Error::Cancelled`]).
    pub(crate) fn sleep(&self, d: Duration) -> Result<()> {
        let end = Instant::now() + d;
        let mut guard = self.wake.lock();
        loop {
            self.check()?;
            let now = Instant::now();
            if now >= end {
                return Ok(());
            }
            self.woken.wait_for(&mut guard, end - now);
        }
    }

    /// Changes the progress.
    pub(crate) fn update(&self, change: impl FnOnce(&mut JobProgress)) {
        change(&mut self.progress.lock());
    }

    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        let _guard = self.wake.lock();
        self.woken.notify_all();
    }

    /// Whether the job has ended.
    pub(crate) fn finished(&self) -> bool {
        self.progress.lock().finished
    }
}

/// A job running in the background; cancelled (and joined) when dropped.
pub struct Job<T> {
    control: Arc<JobControl>,
    last: Arc<Mutex<Option<Result<T, String>>>>,
    thread: Option<JoinHandle<Result<T>>>,
}

impl<T> std::fmt::Debug for Job<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("progress", &*self.control.progress.lock())
            .finish_non_exhaustive()
    }
}

impl<T: Send + Clone + 'static> Job<T> {
    /// Runs `work` once in a thread named `name`.
    pub(crate) fn spawn(name: &str, work: impl FnOnce(&JobControl) -> Result<T> + Send + 'static) -> Job<T> {
        Job::start(name, Arc::default(), work)
    }

    /// As [`Job::spawn`], with a control the engine also keeps (to cancel the job when
    /// it closes).
    pub(crate) fn start(
        name: &str,
        control: Arc<JobControl>,
        work: impl FnOnce(&JobControl) -> Result<T> + Send + 'static,
    ) -> Job<T> {
        let last = Arc::new(Mutex::new(None));
        let thread = {
            let (control, last) = (control.clone(), last.clone());
            std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(move || {
                    let result = work(&control);
                    *last.lock() = Some(result.as_ref().map(Clone::clone).map_err(ToString::to_string));
                    control.update(|p| p.finished = true);
                    result
                })
                .ok()
        };
        if thread.is_none() {
            control.update(|p| p.finished = true);
        }
        Job {
            control,
            last,
            thread,
        }
    }

    /// Runs `round` every `interval` until cancelled; [`Job::last`] holds the latest
    /// round's outcome. A failing round does not stop the job.
    pub(crate) fn periodic(
        name: &str,
        interval: Duration,
        mut round: impl FnMut(&JobControl) -> Option<Result<T>> + Send + 'static,
    ) -> Job<T> {
        let last = Arc::new(Mutex::new(None));
        let control: Arc<JobControl> = Arc::default();
        let thread = {
            let (control, last) = (control.clone(), last.clone());
            std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(move || {
                    loop {
                        control.sleep(interval)?;
                        // `None`: what the job works on is gone.
                        let Some(outcome) = round(&control) else {
                            return Err(Error::Cancelled);
                        };
                        control.update(|p| p.rounds += 1);
                        *last.lock() = Some(outcome.map_err(|e| e.to_string()));
                    }
                })
                .ok()
        };
        Job {
            control,
            last,
            thread,
        }
    }
}

impl<T> Job<T> {
    /// Where the job is.
    pub fn progress(&self) -> JobProgress {
        self.control.progress.lock().clone()
    }

    /// The outcome of the latest round (periodic jobs) or of the job, once there is one.
    pub fn last(&self) -> Option<Result<T, String>>
    where
        T: Clone,
    {
        self.last.lock().clone()
    }

    /// The latest error, if the latest outcome is one.
    pub fn last_error(&self) -> Option<String> {
        match &*self.last.lock() {
            Some(Err(e)) => Some(e.clone()),
            _ => None,
        }
    }

    /// Every version made current so far (automatic rotation).
    pub fn rotated(&self) -> Vec<RotatedKey> {
        self.control.progress.lock().rotated.clone()
    }

    /// Whether the job has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Waits for the job to end.
    ///
    /// # Errors
    /// The job's error; [`Error::Cancelled`] if it was cancelled.
    pub fn wait(mut self) -> Result<T> {
        self.join()
    }

    /// Stops the job at its next step and waits for it. A cancelled re-encryption
    /// resumes where it stopped next time.
    ///
    /// # Errors
    /// As [`Job::wait`].
    pub fn cancel(mut self) -> Result<T> {
        self.control.cancel();
        self.join()
    }

    fn join(&mut self) -> Result<T> {
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(Error::InvalidArgument("a background job panicked".into())),
            None => Err(Error::Cancelled),
        }
    }
}

impl<T> Drop for Job<T> {
    fn drop(&mut self) {
        self.control.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
