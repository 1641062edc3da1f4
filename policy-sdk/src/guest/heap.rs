//! The allocator of wasm guests built with [`export_units!`](crate::export_units): small
//! blocks by size class from free lists, everything else from the system allocator.
//!
//! A guest's allocations are dominated by its snapshot: tens of thousands of small strings
//! and vectors made when a full snapshot is decoded and freed when the next one replaces
//! it. The system allocator of `wasm32-unknown-unknown` (dlmalloc) keeps headers, bins and
//! coalescing for that; here a small allocation is popping a free block's address off its
//! size class's stack (or bumping a pointer into a 64 KiB chunk) and freeing it is pushing
//! the address back. Freed blocks are kept for their size class (the next snapshot has the
//! same shapes), never returned.
//!
//! The free blocks' addresses are kept in arrays, not threaded through the blocks
//! themselves: with a linked list, each allocation reads the block it hands out to find the
//! next one, so a snapshot decode of hundreds of thousands of allocations was a chain of
//! dependent loads from memory freed long ago (cold in the caches), each waiting for the
//! last. An array is read in order, and neither freeing nor allocating touches the block.
//!
//! Guests are single-threaded (`wasm32-unknown-unknown` without the atomics feature), which
//! is what makes the unsynchronized state below sound.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr;

/// Size classes of 8 bytes up to this size, then powers of two up to [`MAX_SMALL`].
const FINE_LIMIT: usize = 128;
/// Largest allocation served from the size classes.
const MAX_SMALL: usize = 4096;
/// 16 classes of 8..=128 bytes, then 256, 512, 1024, 2048, 4096.
const CLASSES: usize = FINE_LIMIT / 8 + 5;
/// Bytes taken from the system allocator at a time for small blocks.
const CHUNK: usize = 64 * 1024;
/// Alignment of every small block.
const ALIGN: usize = 8;

/// The size class of a small layout, `None` for layouts served by the system allocator.
fn class_of(layout: &Layout) -> Option<usize> {
    let size = layout.size();
    if layout.align() > ALIGN || size > MAX_SMALL {
        return None;
    }
    if size <= FINE_LIMIT {
        return Some(size.max(1).div_ceil(8) - 1);
    }
    // 129..=256 -> 16, ..=512 -> 17, ..., ..=4096 -> 20.
    let bits = usize::BITS - (size - 1).leading_zeros();
    Some(FINE_LIMIT / 8 + bits as usize - 8)
}

/// Bytes of a block of class `class`.
fn block_size(class: usize) -> usize {
    if class < FINE_LIMIT / 8 {
        (class + 1) * 8
    } else {
        256 << (class - FINE_LIMIT / 8)
    }
}

/// First capacity of a class's stack of free blocks (addresses).
const FIRST_STACK: usize = 1024;

/// The addresses of one size class's free blocks, in an array from the system allocator.
#[derive(Clone, Copy)]
struct FreeStack {
    blocks: *mut *mut u8,
    len: usize,
    capacity: usize,
}

impl FreeStack {
    const EMPTY: Self = Self {
        blocks: ptr::null_mut(),
        len: 0,
        capacity: 0,
    };

    /// The most recently freed block, if any.
    #[inline(always)]
    fn pop(&mut self) -> Option<*mut u8> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        // SAFETY: `len` entries are initialized addresses.
        Some(unsafe { self.blocks.add(self.len).read() })
    }

    /// Keeps `block` for reuse; `false` when there is no room and none could be made (the
    /// system allocator is out of memory: the block is then lost, not reused).
    #[inline(always)]
    fn push(&mut self, block: *mut u8) -> bool {
        if self.len == self.capacity && !self.grow() {
            return false;
        }
        // SAFETY: `len < capacity` after the check above.
        unsafe { self.blocks.add(self.len).write(block) };
        self.len += 1;
        true
    }

    /// Doubles the array (from [`FIRST_STACK`] entries). The system allocator serves it,
    /// so the heap never calls itself.
    #[cold]
    #[inline(never)]
    fn grow(&mut self) -> bool {
        let entry = core::mem::size_of::<*mut u8>();
        let capacity = (self.capacity * 2).max(FIRST_STACK);
        let Ok(layout) = Layout::from_size_align(capacity * entry, ALIGN) else {
            return false;
        };
        // SAFETY: a non-zero layout; the old array was allocated with the old capacity's
        // layout of the same alignment.
        let blocks = unsafe {
            if self.blocks.is_null() {
                std::alloc::System.alloc(layout)
            } else {
                std::alloc::System.realloc(
                    self.blocks.cast(),
                    Layout::from_size_align_unchecked(self.capacity * entry, ALIGN),
                    layout.size(),
                )
            }
        };
        if blocks.is_null() {
            return false;
        }
        self.blocks = blocks.cast();
        self.capacity = capacity;
        true
    }
}

struct Heap {
    /// Per class, the free blocks.
    free: [FreeStack; CLASSES],
    /// Unused part of the current chunk.
    bump: *mut u8,
    end: *mut u8,
}

/// The guest allocator (see the module documentation). [`export_units!`](crate::export_units)
/// installs it as the global allocator of wasm guests.
pub struct GuestHeap {
    heap: UnsafeCell<Heap>,
}

// SAFETY: wasm32-unknown-unknown guests have one thread; the heap is never shared across
// threads (the allocator is only installed for wasm32).
unsafe impl Sync for GuestHeap {}

impl core::fmt::Debug for GuestHeap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("GuestHeap")
    }
}

impl Default for GuestHeap {
    fn default() -> Self {
        Self::new()
    }
}

impl GuestHeap {
    /// An empty heap.
    pub const fn new() -> Self {
        Self {
            heap: UnsafeCell::new(Heap {
                free: [FreeStack::EMPTY; CLASSES],
                bump: ptr::null_mut(),
                end: ptr::null_mut(),
            }),
        }
    }

    /// A block of class `class`.
    ///
    /// # Safety
    /// Not reentrant; single-threaded use only.
    unsafe fn alloc_small(&self, class: usize) -> *mut u8 {
        // SAFETY: single-threaded, and no other reference to the heap is live.
        let heap = unsafe { &mut *self.heap.get() };
        if let Some(block) = heap.free[class].pop() {
            return block;
        }
        let size = block_size(class);
        if (heap.end as usize) - (heap.bump as usize) < size {
            // SAFETY: a valid, non-zero layout.
            let chunk = unsafe {
                std::alloc::System.alloc(Layout::from_size_align_unchecked(CHUNK, ALIGN))
            };
            if chunk.is_null() {
                return chunk;
            }
            heap.bump = chunk;
            // SAFETY: within the chunk just allocated.
            heap.end = unsafe { chunk.add(CHUNK) };
        }
        let block = heap.bump;
        // SAFETY: `size` bytes remain in the chunk.
        heap.bump = unsafe { block.add(size) };
        block
    }

    /// Returns a block of class `class`.
    ///
    /// # Safety
    /// `block` came from `alloc_small(class)` and is not used any more.
    unsafe fn free_small(&self, block: *mut u8, class: usize) {
        // SAFETY: single-threaded, and no other reference to the heap is live.
        let heap = unsafe { &mut *self.heap.get() };
        // Out of memory for the stack: the block is lost (not reused) rather than kept in
        // a way that would touch it.
        heap.free[class].push(block);
    }
}

// SAFETY: small blocks are distinct, 8-aligned and at least as large as asked; the rest is
// the system allocator's.
unsafe impl GlobalAlloc for GuestHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match class_of(&layout) {
            // SAFETY: single-threaded guest.
            Some(class) => unsafe { self.alloc_small(class) },
            // SAFETY: forwarded as is.
            None => unsafe { std::alloc::System.alloc(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match class_of(&layout) {
            // SAFETY: allocated with the same layout, hence the same class.
            Some(class) => unsafe { self.free_small(ptr, class) },
            // SAFETY: forwarded as is.
            None => unsafe { std::alloc::System.dealloc(ptr, layout) },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees a valid layout for the new size.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class_of(&layout), class_of(&new_layout)) {
            (Some(old), Some(new)) if old == new => ptr,
            // SAFETY: forwarded as is.
            (None, None) => unsafe { std::alloc::System.realloc(ptr, layout, new_size) },
            _ => {
                // SAFETY: a fresh block of the new layout, then the old one freed.
                unsafe {
                    let fresh = self.alloc(new_layout);
                    if !fresh.is_null() {
                        ptr::copy_nonoverlapping(ptr, fresh, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                    fresh
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_every_small_size() {
        for size in 1..=MAX_SMALL {
            let layout = Layout::from_size_align(size, 1).unwrap();
            let class = class_of(&layout).unwrap();
            assert!(class < CLASSES, "{size}");
            assert!(block_size(class) >= size, "{size}");
            if class > 0 {
                assert!(
                    block_size(class - 1) < size,
                    "{size} could use a smaller class"
                );
            }
        }
        assert_eq!(
            class_of(&Layout::from_size_align(MAX_SMALL + 1, 1).unwrap()),
            None
        );
        assert_eq!(class_of(&Layout::from_size_align(8, 16).unwrap()), None);
    }

    #[test]
    fn every_freed_block_is_reused_once_the_free_stack_has_grown() {
        let heap = GuestHeap::new();
        let layout = Layout::from_size_align(40, 8).unwrap();
        let count = FIRST_STACK * 3 + 7;
        unsafe {
            let blocks: Vec<*mut u8> = (0..count).map(|_| heap.alloc(layout)).collect();
            for (i, &b) in blocks.iter().enumerate() {
                b.write_bytes(i as u8, 40);
            }
            let distinct: std::collections::HashSet<_> = blocks.iter().collect();
            assert_eq!(distinct.len(), count, "blocks are distinct");
            for &b in &blocks {
                heap.dealloc(b, layout);
            }
            // Handed out again last freed first, every one of them, before new memory.
            let again: Vec<*mut u8> = (0..count).map(|_| heap.alloc(layout)).collect();
            let expected: Vec<*mut u8> = blocks.iter().rev().copied().collect();
            assert_eq!(again, expected);
            let fresh = heap.alloc(layout);
            assert!(
                !distinct.contains(&fresh),
                "a new block once the stack is empty"
            );
        }
    }

    #[test]
    fn blocks_are_reused_and_distinct() {
        let heap = GuestHeap::new();
        let layout = Layout::from_size_align(24, 8).unwrap();
        unsafe {
            let a = heap.alloc(layout);
            let b = heap.alloc(layout);
            assert_ne!(a, b);
            assert_eq!(a as usize % 8, 0);
            a.write_bytes(0xaa, 24);
            b.write_bytes(0xbb, 24);
            assert_eq!(*a.add(23), 0xaa);
            heap.dealloc(a, layout);
            let c = heap.alloc(layout);
            assert_eq!(a, c);
            let grown = heap.realloc(c, layout, 1000);
            assert_eq!(*grown.add(23), 0xaa);
            heap.dealloc(grown, Layout::from_size_align(1000, 8).unwrap());
            heap.dealloc(b, layout);
            let big = Layout::from_size_align(10_000, 8).unwrap();
            let d = heap.alloc(big);
            assert!(!d.is_null());
            heap.dealloc(d, big);
        }
    }
}
