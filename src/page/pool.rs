//! The buffer pool: plain page frames shared by every open tablespace, under one byte
//! budget, with LRU replacement.
//!
//! Invariant: a frame holds the plain page exactly as the engine last wrote it; a pinned
//! frame (one with a live guard) is never evicted; a dirty frame is handed to its
//! tablespace to be sealed and journaled before it leaves the pool; every frame is wiped
//! when it is dropped. A hit costs a lock, an LRU update and an atomic pin, never
//! cryptography.
//! Not here: sealing and I/O (the tablespace does both, through [`Owner`]).
//!
//! Locking: the pool mutex is held for lookups and evictions (including the write-back of
//! a dirty victim, which appends to that tablespace's journal). It never waits for a frame
//! lock: victims are unpinned, and lookups pin under the mutex and lock the frame after
//! releasing it. The journal mutex is a leaf. So a thread holding a page guard may always
//! ask for another page.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use lru::LruCache;
use parking_lot::{ArcRwLockReadGuard, ArcRwLockWriteGuard, Mutex, RawRwLock, RwLock};
use zeroize::Zeroize;

use crate::error::{Error, Result};

/// What the pool needs from a tablespace: writing back a dirty page it evicts.
pub(crate) trait Owner: Send + Sync {
    /// Seals `frame` (a physical-size buffer holding the plain page) for physical page
    /// `page` and appends it to the journal.
    fn write_back(&self, page: u64, frame: &[u8]) -> Result<()>;
}

/// A page-sized buffer that is wiped when dropped.
pub(crate) struct PageBuf(Box<[u8]>);

impl Drop for PageBuf {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

const LOADING: u8 = 0;
const READY: u8 = 1;
const FAILED: u8 = 2;

pub(crate) struct Frame {
    pins: AtomicUsize,
    dirty: AtomicBool,
    state: AtomicU8,
    size: usize,
    data: Arc<RwLock<PageBuf>>,
}

impl Frame {
    fn size(&self) -> usize {
        self.size
    }

    pub(crate) fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
    }

    pub(crate) fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    /// Reads the frame (the caller holds a pin).
    pub(crate) fn read(&self) -> parking_lot::RwLockReadGuard<'_, PageBuf> {
        self.data.read()
    }
}

impl Deref for PageBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

/// A pin on a frame, released on drop.
pub(crate) struct Pin(Arc<Frame>);

impl Pin {
    pub(crate) fn frame(&self) -> &Frame {
        &self.0
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.0.pins.fetch_sub(1, Ordering::AcqRel);
    }
}

fn pin(frame: &Arc<Frame>) -> Pin {
    frame.pins.fetch_add(1, Ordering::AcqRel);
    Pin(frame.clone())
}

/// A page read from a tablespace: the engine's plain bytes, pinned in the pool for as
/// long as the guard lives. Other readers may hold the same page at the same time.
///
/// The guard borrows its tablespace, so the tablespace cannot be closed or dropped while
/// it lives.
pub struct PageRef<'a> {
    guard: ArcRwLockReadGuard<RawRwLock, PageBuf>,
    _pin: Pin,
    len: usize,
    _tablespace: PhantomData<&'a ()>,
}

impl Deref for PageRef<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.guard.0[..self.len]
    }
}

impl fmt::Debug for PageRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PageRef")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// A page opened for writing: exclusive, pinned, and marked dirty. The change reaches
/// disk (sealed) on eviction, `sync`, `checkpoint` or `close`; it is durable after the
/// next `sync`.
///
/// Release it before calling `sync` on the same thread: `sync` waits for pages being
/// written. Like [`PageRef`], it borrows its tablespace.
pub struct PageMut<'a> {
    guard: ArcRwLockWriteGuard<RawRwLock, PageBuf>,
    _pin: Pin,
    len: usize,
    _tablespace: PhantomData<&'a ()>,
}

impl Deref for PageMut<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.guard.0[..self.len]
    }
}

impl DerefMut for PageMut<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.guard.0[..self.len]
    }
}

impl fmt::Debug for PageMut<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PageMut")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

type Key = (u64, u64);

struct State {
    lru: LruCache<Key, Arc<Frame>>,
    used: usize,
    owners: HashMap<u64, Weak<dyn Owner>>,
}

/// Counters of a buffer pool since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Lookups served from the pool.
    pub hits: u64,
    /// Lookups that loaded the page.
    pub misses: u64,
    /// Frames evicted to make room.
    pub evictions: u64,
    /// Evicted frames that were dirty and were written back.
    pub dirty_evictions: u64,
    /// Bytes of frames in the pool now.
    pub used_bytes: usize,
    /// The budget.
    pub budget_bytes: usize,
}

pub(crate) struct PoolInner {
    budget: usize,
    state: Mutex<State>,
    next_owner: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    dirty_evictions: AtomicU64,
}

/// Plain page frames shared by every tablespace opened with it, within a byte budget.
/// Cheap to clone (a handle).
#[derive(Clone)]
pub struct BufferPool {
    pub(crate) inner: Arc<PoolInner>,
}

impl fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferPool")
            .field("budget_bytes", &self.inner.budget)
            .finish_non_exhaustive()
    }
}

/// What [`PoolInner::fetch`] should hand back.
pub(crate) enum Access {
    Read,
    Write,
}

pub(crate) enum Guard<'a> {
    Read(PageRef<'a>),
    Write(PageMut<'a>),
}

impl BufferPool {
    /// A pool that holds at most `budget_bytes` of page frames (each frame is one
    /// physical page). Size it to the working set; every miss costs a read and a
    /// decryption.
    pub fn new(budget_bytes: usize) -> BufferPool {
        BufferPool {
            inner: Arc::new(PoolInner {
                budget: budget_bytes,
                state: Mutex::new(State {
                    lru: LruCache::unbounded(),
                    used: 0,
                    owners: HashMap::new(),
                }),
                next_owner: AtomicU64::new(1),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                evictions: AtomicU64::new(0),
                dirty_evictions: AtomicU64::new(0),
            }),
        }
    }

    /// Counters and occupancy.
    pub fn stats(&self) -> PoolStats {
        let used = self.inner.state.lock().used;
        PoolStats {
            hits: self.inner.hits.load(Ordering::Relaxed),
            misses: self.inner.misses.load(Ordering::Relaxed),
            evictions: self.inner.evictions.load(Ordering::Relaxed),
            dirty_evictions: self.inner.dirty_evictions.load(Ordering::Relaxed),
            used_bytes: used,
            budget_bytes: self.inner.budget,
        }
    }
}

impl PoolInner {
    pub(crate) fn register(&self, owner: Weak<dyn Owner>) -> u64 {
        let id = self.next_owner.fetch_add(1, Ordering::Relaxed);
        self.state.lock().owners.insert(id, owner);
        id
    }

    /// Drops every frame of `owner` (wiping them) and forgets it.
    pub(crate) fn unregister(&self, owner: u64) {
        self.state.lock().owners.remove(&owner);
        self.drop_frames(owner);
    }

    /// Drops every frame of `owner`, dirty or not (wiping them).
    pub(crate) fn drop_frames(&self, owner: u64) {
        let dropped: Vec<Arc<Frame>> = {
            let mut st = self.state.lock();
            let keys: Vec<Key> = st
                .lru
                .iter()
                .filter(|(k, _)| k.0 == owner)
                .map(|(k, _)| *k)
                .collect();
            let mut dropped = Vec::with_capacity(keys.len());
            for k in keys {
                if let Some(f) = st.lru.pop(&k) {
                    st.used -= f.size();
                    dropped.push(f);
                }
            }
            dropped
        };
        drop(dropped);
    }

    /// The dirty frames of `owner`, pinned, in page order.
    pub(crate) fn dirty_frames(&self, owner: u64) -> Vec<(u64, Pin)> {
        let st = self.state.lock();
        let mut out: Vec<(u64, Pin)> = st
            .lru
            .iter()
            .filter(|(k, f)| k.0 == owner && f.dirty.load(Ordering::Acquire))
            .map(|(k, f)| (k.1, pin(f)))
            .collect();
        drop(st);
        out.sort_unstable_by_key(|(page, _)| *page);
        out
    }

    /// Returns page `page` of `owner`, loading it with `load` (which fills a zeroed
    /// physical-size buffer) on a miss. `len` is the logical size the guard exposes.
    pub(crate) fn fetch<'a>(
        &self,
        owner: u64,
        page: u64,
        size: usize,
        len: usize,
        access: Access,
        load: &dyn Fn(&mut [u8]) -> Result<()>,
    ) -> Result<Guard<'a>> {
        let key = (owner, page);
        loop {
            let mut keep_alive: Vec<Arc<dyn Owner>> = Vec::new();
            let mut st = self.state.lock();
            if let Some(frame) = st.lru.get(&key) {
                let pinned = pin(frame);
                drop(st);
                self.hits.fetch_add(1, Ordering::Relaxed);
                let frame = pinned.0.clone();
                match access {
                    Access::Read => {
                        let guard = frame.data.read_arc();
                        if frame.state.load(Ordering::Acquire) == FAILED {
                            continue;
                        }
                        return Ok(Guard::Read(PageRef {
                            guard,
                            _pin: pinned,
                            len,
                            _tablespace: PhantomData,
                        }));
                    }
                    Access::Write => {
                        let guard = frame.data.write_arc();
                        if frame.state.load(Ordering::Acquire) == FAILED {
                            continue;
                        }
                        frame.mark_dirty();
                        return Ok(Guard::Write(PageMut {
                            guard,
                            _pin: pinned,
                            len,
                            _tablespace: PhantomData,
                        }));
                    }
                }
            }
            let made = self.make_room(&mut st, size, &mut keep_alive);
            if let Err(e) = made {
                drop(st);
                drop(keep_alive);
                return Err(e);
            }
            self.misses.fetch_add(1, Ordering::Relaxed);
            let frame = Arc::new(Frame {
                pins: AtomicUsize::new(0),
                dirty: AtomicBool::new(false),
                state: AtomicU8::new(LOADING),
                size,
                data: Arc::new(RwLock::new(PageBuf(vec![0u8; size].into_boxed_slice()))),
            });
            let pinned = pin(&frame);
            let mut guard = frame.data.write_arc();
            st.lru.put(key, frame.clone());
            st.used += size;
            drop(st);
            drop(keep_alive);
            match load(&mut guard.0) {
                Ok(()) => {
                    frame.state.store(READY, Ordering::Release);
                    return Ok(match access {
                        Access::Read => Guard::Read(PageRef {
                            guard: ArcRwLockWriteGuard::downgrade(guard),
                            _pin: pinned,
                            len,
                            _tablespace: PhantomData,
                        }),
                        Access::Write => {
                            frame.mark_dirty();
                            Guard::Write(PageMut {
                                guard,
                                _pin: pinned,
                                len,
                                _tablespace: PhantomData,
                            })
                        }
                    });
                }
                Err(e) => {
                    frame.state.store(FAILED, Ordering::Release);
                    guard.0.zeroize();
                    {
                        let mut st = self.state.lock();
                        if st.lru.peek(&key).is_some_and(|f| Arc::ptr_eq(f, &frame)) {
                            st.lru.pop(&key);
                            st.used -= size;
                        }
                    }
                    drop(guard);
                    return Err(e);
                }
            }
        }
    }

    /// Evicts unpinned frames, least recently used first, until `need` more bytes fit.
    /// Dirty victims are written back by their tablespace first; owners upgraded for that
    /// are pushed to `keep_alive` so that none is dropped while the pool is locked.
    fn make_room(&self, st: &mut State, need: usize, keep_alive: &mut Vec<Arc<dyn Owner>>) -> Result<()> {
        while st.used + need > self.budget {
            let victim = st
                .lru
                .iter()
                .rev()
                .find(|(_, f)| f.pins.load(Ordering::Acquire) == 0)
                .map(|(k, _)| *k);
            let Some(key) = victim else {
                return Err(Error::BufferPoolFull {
                    budget: self.budget,
                    needed: st.used + need,
                });
            };
            let Some(frame) = st.lru.pop(&key) else { break };
            if frame.dirty.load(Ordering::Acquire) {
                let owner = st.owners.get(&key.0).and_then(Weak::upgrade);
                if let Some(owner) = owner {
                    let written = match frame.data.try_read() {
                        Some(buf) => owner.write_back(key.1, &buf.0),
                        None => Err(Error::InvalidArgument("an unpinned frame was locked".into())),
                    };
                    keep_alive.push(owner);
                    if let Err(e) = written {
                        st.lru.put(key, frame);
                        return Err(e);
                    }
                    frame.dirty.store(false, Ordering::Release);
                    self.dirty_evictions.fetch_add(1, Ordering::Relaxed);
                }
            }
            st.used -= frame.size();
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}
