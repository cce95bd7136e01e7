//! `SLOTS`, `STICKY` and `COUNTERS` seen as memory.
//!
//! Both are `BPF_F_MMAPABLE` arrays: the kernel lets a process holding the map's fd map its
//! values into its address space, and the programs read and write the very same pages. A store
//! here is visible to the next run of the program with no system call, and an atomic add here
//! and the programs' atomic adds never lose one another's increments.

use std::{
    os::fd::BorrowedFd,
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicU64},
};

use anyhow::{Context as _, Result};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

/// A shared mapping of a whole array map of `T`.
pub struct Mapped<T> {
    pub(super) ptr: NonNull<T>,
    pub(super) len: usize,
}

// SAFETY: the mapping is plain shared memory; every access below goes through atomics.
unsafe impl<T> Send for Mapped<T> {}
unsafe impl<T> Sync for Mapped<T> {}

impl<T> Mapped<T> {
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

    pub(super) fn at(&self, slot: u32) -> *mut T {
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

pub(super) fn u64_at<'a>(p: *mut u64) -> &'a AtomicU64 {
    // SAFETY: `p` points into a live, 8-byte aligned shared mapping.
    unsafe { AtomicU64::from_ptr(p) }
}

pub(super) fn u32_at<'a>(p: *mut u32) -> &'a AtomicU32 {
    // SAFETY: as above, 4-byte aligned.
    unsafe { AtomicU32::from_ptr(p) }
}
