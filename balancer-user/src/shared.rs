//! The `SLOTS` and `STICKY` maps seen as memory.
//!
//! Both are `BPF_F_MMAPABLE` arrays: the kernel lets a process holding the map's fd map its
//! values into its address space, and the programs read and write the very same pages. A store
//! here is visible to the next run of the program with no system call, and an atomic add here
//! and the programs' atomic adds never lose one another's increments.

use std::{
    os::fd::BorrowedFd,
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
};

use anyhow::{Context as _, Result};
use balancer_common::{Slot, SlotState, MAX_SLOTS};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

/// A shared mapping of a whole array map of `T`.
pub struct Mapped<T> {
    ptr: NonNull<T>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; every access below goes through atomics.
unsafe impl<T> Send for Mapped<T> {}
unsafe impl<T> Sync for Mapped<T> {}

impl<T> Mapped<T> {
    /// Maps `MAX_SLOTS` values of `T` from the array map behind `fd`.
    pub fn new(fd: BorrowedFd<'_>) -> Result<Self> {
        Self::with_len(fd, MAX_SLOTS as usize)
    }

    /// Maps `len` values of `T` (the map's max_entries) from the array map behind `fd`.
    pub fn with_len(fd: BorrowedFd<'_>, len: usize) -> Result<Self> {
        let bytes = std::num::NonZeroUsize::new(len * std::mem::size_of::<T>()).expect("non-empty");
        // SAFETY: a fresh shared mapping of a map fd; the kernel checks size and flags.
        let ptr = unsafe {
            mmap(
                None,
                bytes,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
                0,
            )
        }
        .context("cannot map the load map into memory (was it created with BPF_F_MMAPABLE?)")?;
        Ok(Mapped {
            ptr: ptr.cast(),
            len,
        })
    }

    fn at(&self, slot: u32) -> *mut T {
        assert!((slot as usize) < self.len, "slot {slot} out of range");
        // SAFETY: in bounds of the mapping.
        unsafe { self.ptr.as_ptr().add(slot as usize) }
    }
}

impl<T> Drop for Mapped<T> {
    fn drop(&mut self) {
        // SAFETY: unmapping what `new` mapped; no reference into it outlives `self`.
        unsafe {
            let _ = munmap(self.ptr.cast(), self.len * std::mem::size_of::<T>());
        }
    }
}

fn u64_at<'a>(p: *mut u64) -> &'a AtomicU64 {
    // SAFETY: `p` points into a live, 8-byte aligned shared mapping.
    unsafe { AtomicU64::from_ptr(p) }
}

fn u32_at<'a>(p: *mut u32) -> &'a AtomicU32 {
    // SAFETY: as above, 4-byte aligned.
    unsafe { AtomicU32::from_ptr(p) }
}

impl Mapped<Slot> {
    pub fn state(&self, slot: u32) -> SlotState {
        let p = self.at(slot);
        SlotState::from_u32(u32_at(unsafe { &raw mut (*p).state }).load(Ordering::Acquire))
    }

    pub fn set_state(&self, slot: u32, state: SlotState) {
        let p = self.at(slot);
        u32_at(unsafe { &raw mut (*p).state }).store(state as u32, Ordering::Release);
    }

    pub fn set_weight(&self, slot: u32, weight: u32) {
        let p = self.at(slot);
        u32_at(unsafe { &raw mut (*p).weight }).store(weight, Ordering::Release);
    }

    /// Connections the program has sent to `slot` (plus upward corrections).
    pub fn assigned(&self, slot: u32) -> u64 {
        let p = self.at(slot);
        u64_at(unsafe { &raw mut (*p).assigned }).load(Ordering::Acquire)
    }

    /// Connections of `slot` that closed (plus downward corrections).
    pub fn closed(&self, slot: u32) -> u64 {
        let p = self.at(slot);
        u64_at(unsafe { &raw mut (*p).closed }).load(Ordering::Acquire)
    }

    /// Adds to `slot`'s `assigned` counter; only the accounting module corrects counts.
    pub(crate) fn add_assigned(&self, slot: u32, n: u64) {
        let p = self.at(slot);
        u64_at(unsafe { &raw mut (*p).assigned }).fetch_add(n, Ordering::AcqRel);
    }

    /// Adds to `slot`'s `closed` counter; only the accounting module corrects counts.
    pub(crate) fn add_closed(&self, slot: u32, n: u64) {
        let p = self.at(slot);
        u64_at(unsafe { &raw mut (*p).closed }).fetch_add(n, Ordering::AcqRel);
    }
}

impl Mapped<u64> {
    /// Overwrites the whole array, one atomic store per entry: a reader sees each entry either
    /// old or new, never torn.
    pub fn store_all(&self, values: impl IntoIterator<Item = u64>) {
        for (i, v) in values.into_iter().enumerate().take(self.len) {
            // SAFETY: in bounds, 8-byte aligned.
            unsafe { AtomicU64::from_ptr(self.ptr.as_ptr().add(i)) }.store(v, Ordering::Relaxed);
        }
    }
}
