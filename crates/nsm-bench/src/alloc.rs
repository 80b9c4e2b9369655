//! A counting global allocator: a thin wrapper around the system allocator (or mimalloc, feature
//! `mimalloc`) that, while enabled, keeps the net
//! number of heap bytes allocated (allocations minus frees).
//!
//! The bench binary installs it with `#[global_allocator]`. Counting is off by default, so the
//! latency benchmark pays only one relaxed atomic load per allocation; the memory benchmark enables it
//! and reads *deltas* of [`net_bytes`] between two points. A delta is exact even though blocks freed in
//! the interval may have been allocated before counting began: net bytes over an interval are bytes
//! allocated in it minus bytes freed in it, which is the change of live heap bytes.

#![allow(unsafe_code)] // a GlobalAlloc implementation is unsafe by definition; it only forwards to the inner allocator.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

#[cfg(feature = "mimalloc")]
use mimalloc::MiMalloc as Inner;
/// The allocator underneath: the system's (glibc malloc), or mimalloc with the `mimalloc` feature.
#[cfg(not(feature = "mimalloc"))]
use std::alloc::System as Inner;

static ENABLED: AtomicBool = AtomicBool::new(false);
static NET_BYTES: AtomicI64 = AtomicI64::new(0);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static ALLOCATED_BYTES: AtomicU64 = AtomicU64::new(0);

/// The system allocator (or mimalloc, see `Inner`) plus byte counting (see the module docs).
#[derive(Debug, Default, Clone, Copy)]
pub struct CountingAlloc;

#[inline]
fn add(bytes: usize) {
    if ENABLED.load(Ordering::Relaxed) {
        NET_BYTES.fetch_add(bytes as i64, Ordering::Relaxed);
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

#[inline]
fn sub(bytes: usize) {
    if ENABLED.load(Ordering::Relaxed) {
        NET_BYTES.fetch_sub(bytes as i64, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `Inner` with the caller's arguments unchanged; the counters are
// plain atomics and never allocate.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size());
        // SAFETY: forwarded contract.
        unsafe { Inner.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        add(layout.size());
        // SAFETY: forwarded contract.
        unsafe { Inner.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        sub(layout.size());
        // SAFETY: forwarded contract.
        unsafe { Inner.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        sub(layout.size());
        add(new_size);
        // SAFETY: forwarded contract.
        unsafe { Inner.realloc(ptr, layout, new_size) }
    }
}

/// Starts counting. Returns true if the counting allocator is installed in this process (an
/// allocation made right after enabling was seen).
pub fn enable() -> bool {
    ENABLED.store(true, Ordering::SeqCst);
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    let probe = std::hint::black_box(Box::new([0u8; 64]));
    drop(probe);
    ALLOCATIONS.load(Ordering::SeqCst) > before
}

/// Stops counting (the counters keep their values).
pub fn disable() {
    ENABLED.store(false, Ordering::SeqCst);
}

/// Bytes allocated (not net of frees) while counting was enabled.
pub fn allocated_bytes() -> u64 {
    ALLOCATED_BYTES.load(Ordering::SeqCst)
}

/// Net heap bytes allocated while counting was enabled (compare two readings).
pub fn net_bytes() -> i64 {
    NET_BYTES.load(Ordering::SeqCst)
}

/// Number of allocations made while counting was enabled.
pub fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::SeqCst)
}

/// glibc malloc's own view of the heap: bytes in allocated chunks (headers and rounding included,
/// mmapped chunks too) and bytes in free chunks it keeps. Compared with RSS and [`net_bytes`], this
/// tells allocator overhead (in use minus requested) from fragmentation (free but held). `None` where
/// the C library is not glibc.
pub fn malloc_view() -> Option<(u64, u64)> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes no arguments and returns a plain struct by value; glibc >= 2.33
        // (Debian 12 has 2.36) provides it.
        let m = unsafe { libc::mallinfo2() };
        Some(((m.uordblks + m.hblkhd) as u64, m.fordblks as u64))
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// Returns free heap pages to the system (`malloc_trim(0)`: also free pages inside the heap, not just
/// its top). Used only to measure how much of a process's RSS is memory malloc keeps free.
pub fn malloc_trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and releases malloc's own free chunks; it takes a padding size.
    unsafe {
        libc::malloc_trim(0);
    }
}
