//! The plugins' allocator. A plugin lives for milliseconds, so memory comes from one
//! static arena by moving a pointer and is not given back (but for the newest block,
//! which a growing buffer extends in place); past the arena, the system allocator.
//! musl's allocator maps and unmaps memory dozens of times in one call (49 mmap and 42
//! munmap in a bridge ADD), and every unmap in a process with threads interrupts the
//! other CPUs to flush their TLBs. Only for short-lived binaries: each plugin's `main.rs`
//! makes it the global allocator; the agent and the dhcp daemon keep the system's.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The arena's size; its pages are resident only once used, and a plugin that needs more
/// goes on with the system allocator.
const SIZE: usize = 4 << 20;

/// Blocks larger than this come from the system allocator: a large zeroed one is fresh
/// mapped pages there, never touched unless used, and a large one grows in place.
const LARGE: usize = 64 << 10;

/// The global allocator of a plugin binary, as a `static` (it holds the arena, in the
/// zero-filled data that costs nothing until touched).
#[repr(C, align(4096))]
pub struct Arena {
    space: UnsafeCell<[u8; SIZE]>,
    /// Offset of the first free byte in the arena.
    next: AtomicUsize,
}

// SAFETY: blocks are handed out by atomic bumps of `next`; no two overlap.
unsafe impl Sync for Arena {}

impl Arena {
    // No Default: 4 MB is only ever a static, never a value on a stack.
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Arena {
        Arena {
            space: UnsafeCell::new([0; SIZE]),
            next: AtomicUsize::new(0),
        }
    }

    fn base(&self) -> usize {
        self.space.get() as usize
    }

    fn owns(&self, ptr: *mut u8) -> bool {
        let p = ptr as usize;
        p >= self.base() && p < self.base() + SIZE
    }

    /// A block from the arena, or None when it has no room left.
    fn bump(&self, layout: Layout) -> Option<*mut u8> {
        let base = self.base();
        let mut cur = self.next.load(Ordering::Relaxed);
        loop {
            let start = (base + cur).checked_next_multiple_of(layout.align())? - base;
            let end = start.checked_add(layout.size())?;
            if end > SIZE {
                return None;
            }
            match self
                .next
                .compare_exchange_weak(cur, end, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some((base + start) as *mut u8),
                Err(now) => cur = now,
            }
        }
    }

    /// Moves the end of `ptr`'s block from `old` to `new` bytes, when it is the newest.
    fn resize_newest(&self, ptr: *mut u8, old: usize, new: usize) -> bool {
        let start = ptr as usize - self.base();
        let Some(end) = start.checked_add(new).filter(|e| *e <= SIZE) else {
            return false;
        };
        self.next
            .compare_exchange(start + old, end, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

// SAFETY: every block is either a fresh, aligned, non-overlapping range of the arena or the
// system allocator's; each is returned to the one it came from.
unsafe impl GlobalAlloc for Arena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > LARGE {
            // SAFETY: the caller's layout, passed on.
            return unsafe { System.alloc(layout) };
        }
        match self.bump(layout) {
            Some(p) => p,
            // SAFETY: the caller's layout, passed on.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > LARGE {
            // SAFETY: the caller's layout, passed on.
            return unsafe { System.alloc_zeroed(layout) };
        }
        // SAFETY: the caller's layout; the block is cleared whole (an arena block may be
        // a freed newest one reused).
        unsafe {
            let p = self.alloc(layout);
            if !p.is_null() {
                p.write_bytes(0, layout.size());
            }
            p
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if self.owns(ptr) {
            self.resize_newest(ptr, layout.size(), 0);
        } else {
            // SAFETY: a block of the system allocator's, with its layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !self.owns(ptr) && new_size > LARGE {
            // SAFETY: a block of the system allocator's, with its layout; it stays there.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        if self.owns(ptr) && self.resize_newest(ptr, layout.size(), new_size) {
            return ptr;
        }
        // SAFETY: the new layout keeps the block's alignment; the old block is live and
        // `new_size` is what the caller asked for.
        unsafe {
            let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_aligned_apart_and_the_newest_grows_in_place() {
        static A: Arena = Arena::new();
        let a = &A;
        let l = |size, align| Layout::from_size_align(size, align).unwrap();
        // SAFETY: blocks of this test's own arena, freed with their layouts.
        unsafe {
            let x = a.alloc(l(3, 1));
            let y = a.alloc(l(16, 64));
            assert_eq!(y as usize % 64, 0);
            assert!(y as usize >= x as usize + 3);
            let y2 = a.realloc(y, l(16, 64), 4096);
            assert_eq!(y, y2, "the newest block grows where it is");
            let x2 = a.realloc(x, l(3, 1), 100);
            assert_ne!(x, x2, "an older block moves");
            a.dealloc(x2, l(100, 1));
            let z = a.alloc(l(8, 8));
            assert_eq!(z, x2, "the newest block freed is handed out again");
        }
    }

    #[test]
    fn past_the_arena_the_system_allocator_serves() {
        static A: Arena = Arena::new();
        let a = &A;
        let big = Layout::from_size_align(SIZE + 1, 8).unwrap();
        // SAFETY: one block, written and freed with its layout.
        unsafe {
            let p = a.alloc(big);
            assert!(!p.is_null() && !a.owns(p));
            p.write_bytes(1, SIZE + 1);
            a.dealloc(p, big);
        }
    }
}
