//! `SLOTS`, `STICKY` and `COUNTERS` seen as memory.
//!
//! All three are `BPF_F_MMAPABLE` arrays: the kernel lets a process holding the map's fd map
//! its values into its address space, and the programs read and write the very same pages. A
//! store here is visible to the next run of the program with no system call, and an atomic add
//! here and the programs' atomic adds never lose one another's increments.

use std::{
    os::fd::AsFd,
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicU64},
};

use aya::maps::Map;
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

use super::{Error, Result};

/// A shared mapping of a whole array map of `T`.
pub struct Mapped<T> {
    ptr: NonNull<T>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; every access goes through atomics.
unsafe impl<T> Send for Mapped<T> {}
unsafe impl<T> Sync for Mapped<T> {}

impl<T> Mapped<T> {
    /// Maps the `len` values of `T` (its max_entries) of the array map `name`, taken from a
    /// loaded object. The mapping keeps the map alive: its fd is closed on return.
    ///
    /// # Errors
    ///
    /// [`Error::NotArray`] for another kind of map, [`Error::Mmap`] when the kernel refuses
    /// the mapping (an array created without `BPF_F_MMAPABLE`).
    pub(super) fn new(map: Map, name: &'static str, len: usize) -> Result<Self> {
        let Map::Array(map) = map else {
            return Err(Error::NotArray(name));
        };
        let bytes = std::num::NonZeroUsize::new(len * std::mem::size_of::<T>()).expect("non-empty");
        // SAFETY: a fresh shared mapping of a map fd; the kernel checks size and flags.
        let ptr = unsafe {
            mmap(
                None,
                bytes,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                map.fd().as_fd(),
                0,
            )
        }
        .map_err(Error::Mmap)?;
        Ok(Mapped {
            ptr: ptr.cast(),
            len,
        })
    }

    /// How many values of `T` are mapped.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The value at `index`, for the atomics of [`u64_at`] and [`u32_at`]; panics out of range.
    pub(super) fn at(&self, index: u32) -> *mut T {
        assert!((index as usize) < self.len, "slot {index} out of range");
        // SAFETY: in bounds of the mapping.
        unsafe { self.ptr.as_ptr().add(index as usize) }
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
