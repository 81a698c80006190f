//! Nonces: 96 bits from the operating system's CSPRNG for every seal.
//!
//! Invariant: no two seals receive the same bytes from this module, including across
//! `fork()` (see `ffi::fork`).
//! Not here: counting seals per key (`AeadKey`).
//!
//! One `getrandom` system call costs a few hundred nanoseconds on a virtual machine, as
//! much as sealing 1 KiB, so each thread draws OS randomness 4 KiB at a time and hands
//! out 12 bytes per nonce. Bytes are consumed, never reused; the buffer is discarded when
//! the process has forked since it was filled.

use std::cell::RefCell;

use crate::error::{Result, os_random};
use crate::ffi::fork_generation;

/// Nonce length in bytes (96 bits, the GCM standard size).
pub const NONCE_LEN: usize = 12;

const POOL_LEN: usize = 4096 - 4096 % NONCE_LEN;

struct Pool {
    bytes: Box<[u8; POOL_LEN]>,
    pos: usize,
    generation: u64,
}

thread_local! {
    static POOL: RefCell<Option<Pool>> = const { RefCell::new(None) };
}

/// A fresh random nonce.
pub(crate) fn fresh() -> Result<[u8; NONCE_LEN]> {
    let mut nonce = [0u8; NONCE_LEN];
    let Some(generation) = fork_generation() else {
        os_random(&mut nonce)?;
        return Ok(nonce);
    };
    POOL.with_borrow_mut(|slot| {
        let pool = match slot.take() {
            Some(p) if p.generation == generation && p.pos + NONCE_LEN <= POOL_LEN => slot.insert(p),
            _ => {
                let mut bytes = Box::new([0u8; POOL_LEN]);
                os_random(&mut bytes[..])?;
                slot.insert(Pool {
                    bytes,
                    pos: 0,
                    generation,
                })
            }
        };
        nonce.copy_from_slice(&pool.bytes[pool.pos..pool.pos + NONCE_LEN]);
        pool.bytes[pool.pos..pool.pos + NONCE_LEN].fill(0);
        pool.pos += NONCE_LEN;
        Ok(nonce)
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    #[test]
    fn nonces_do_not_repeat_across_pool_refills() {
        let mut seen = HashSet::new();
        for _ in 0..5_000 {
            assert!(seen.insert(super::fresh().unwrap()));
        }
    }

    #[test]
    fn threads_get_distinct_nonces() {
        let handles: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..1000).map(|_| super::fresh().unwrap()).collect::<Vec<_>>()))
            .collect();
        let mut seen = HashSet::new();
        for h in handles {
            for n in h.join().unwrap() {
                assert!(seen.insert(n));
            }
        }
    }
}
