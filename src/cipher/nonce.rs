//! Nonces: random bytes from the operating system's CSPRNG for every seal, 96 bits for
//! the GCM suites and 256 bits for AEGIS-256.
//!
//! Invariant: no two seals receive the same bytes from this module, including across
//! `fork()` (see `ffi::fork`).
//! Not here: counting seals per key (`AeadKey`).
//!
//! One `getrandom` system call costs a few hundred nanoseconds on a virtual machine, as
//! much as sealing 1 KiB, so each thread draws OS randomness 4 KiB at a time and hands
//! out a nonce's worth at a time. Bytes are consumed, never reused; the buffer is
//! discarded when the process has forked since it was filled.

use std::cell::RefCell;

use crate::error::{Result, os_random};
use crate::ffi::fork_generation;

/// Nonce length of the GCM suites in bytes (96 bits, the GCM standard size).
pub const NONCE_LEN: usize = 12;
/// The longest nonce of any suite (AEGIS-256: 256 bits).
pub const MAX_NONCE_LEN: usize = 32;

const POOL_LEN: usize = 4096;

/// A nonce of one of the suites' lengths.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Nonce {
    bytes: [u8; MAX_NONCE_LEN],
    len: u8,
}

impl Nonce {
    /// The nonce's bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// A nonce read back from a format.
    ///
    /// # Errors
    /// [`crate::Error::InvalidArgument`] for a length no suite uses.
    pub fn from_slice(bytes: &[u8]) -> Result<Nonce> {
        if bytes.len() != NONCE_LEN && bytes.len() != MAX_NONCE_LEN {
            return Err(crate::Error::InvalidArgument(format!(
                "a nonce of {} bytes",
                bytes.len()
            )));
        }
        let mut n = Nonce {
            bytes: [0; MAX_NONCE_LEN],
            len: bytes.len() as u8,
        };
        n.bytes[..bytes.len()].copy_from_slice(bytes);
        Ok(n)
    }
}

impl std::fmt::Debug for Nonce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Nonce({})", crate::hex::encode(self.as_slice()))
    }
}

struct Pool {
    bytes: Box<[u8; POOL_LEN]>,
    pos: usize,
    generation: u64,
}

thread_local! {
    static POOL: RefCell<Option<Pool>> = const { RefCell::new(None) };
}

/// A fresh random nonce of `len` bytes ([`NONCE_LEN`] or [`MAX_NONCE_LEN`]).
pub(crate) fn fresh(len: usize) -> Result<Nonce> {
    debug_assert!(len == NONCE_LEN || len == MAX_NONCE_LEN);
    let mut bytes = [0u8; MAX_NONCE_LEN];
    let out = &mut bytes[..len];
    let done = |bytes| Nonce {
        bytes,
        len: len as u8,
    };
    let Some(generation) = fork_generation() else {
        os_random(out)?;
        return Ok(done(bytes));
    };
    POOL.with_borrow_mut(|slot| {
        let pool = match slot.take() {
            Some(p) if p.generation == generation && p.pos + len <= POOL_LEN => slot.insert(p),
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
        out.copy_from_slice(&pool.bytes[pool.pos..pool.pos + len]);
        pool.bytes[pool.pos..pool.pos + len].fill(0);
        pool.pos += len;
        Ok::<(), crate::Error>(())
    })?;
    Ok(done(bytes))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    #[test]
    fn nonces_do_not_repeat_across_pool_refills() {
        let mut seen = HashSet::new();
        for i in 0..5_000 {
            let len = if i % 3 == 0 {
                super::MAX_NONCE_LEN
            } else {
                super::NONCE_LEN
            };
            let n = super::fresh(len).unwrap();
            assert_eq!(n.as_slice().len(), len);
            assert!(seen.insert(n));
        }
    }

    #[test]
    fn threads_get_distinct_nonces() {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    (0..1000)
                        .map(|_| super::fresh(super::NONCE_LEN).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seen = HashSet::new();
        for h in handles {
            for n in h.join().unwrap() {
                assert!(seen.insert(n));
            }
        }
    }
}
