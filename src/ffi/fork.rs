//! Fork detection for the nonce pool.
//!
//! Invariant: after `fork()`, the child sees a different generation number than the
//! parent did before the fork, so no buffered random bytes are used by both processes.
//! Security notes: a nonce reused under one GCM key reveals plaintext XORs and lets an
//! attacker forge messages; this is why buffered randomness must never survive a fork.

use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static GENERATION: AtomicU64 = AtomicU64::new(0);
static REGISTERED: AtomicBool = AtomicBool::new(false);
static REGISTER: Once = Once::new();

#[cfg(unix)]
extern "C" fn on_fork_child() {
    // Async-signal-safe: a single atomic increment.
    GENERATION.fetch_add(1, Ordering::SeqCst);
}

/// The current fork generation, or `None` if fork detection is unavailable (the caller
/// must then not buffer random bytes).
pub(crate) fn generation() -> Option<u64> {
    REGISTER.call_once(|| {
        #[cfg(unix)]
        {
            // SAFETY: `pthread_atfork` only stores the three function pointers; the one
            // we pass is a plain `extern "C" fn` with no captured state that performs a
            // single atomic increment, which is async-signal-safe as the child handler
            // must be. Registration happens once, guarded by `Once`.
            let rc = unsafe { libc::pthread_atfork(None, None, Some(on_fork_child)) };
            REGISTERED.store(rc == 0, Ordering::SeqCst);
        }
        #[cfg(not(unix))]
        {
            // No fork on these platforms: buffered bytes can never be shared.
            REGISTERED.store(true, Ordering::SeqCst);
        }
    });
    REGISTERED
        .load(Ordering::Acquire)
        .then(|| GENERATION.load(Ordering::Acquire))
}
