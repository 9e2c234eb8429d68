//! How a server process holds its heap (glibc's malloc): fewer arenas, and freed memory
//! handed back to the system every few seconds. Under the side-by-side workloads a
//! member's malloc held 67 MiB from the system for 28 MiB in use, in 16 arenas, and its
//! resident memory grew with every round; jemalloc and mimalloc as the global allocator
//! held more (docs/PERFORMANCE.md, "Memory").

use std::time::Duration;

/// Arenas glibc may create (its default is eight per core). Two keep the contention of
/// the two tokio workers and the node's threads low and the memory they strand small.
const ARENAS_MAX: libc::c_int = 2;

/// How often freed memory at the top of and inside the arenas goes back to the system.
const TRIM_INTERVAL: Duration = Duration::from_secs(5);

/// Limits the arenas and starts the thread that trims them. Called once, first thing,
/// before other threads allocate.
pub fn hold_less() {
    // SAFETY: mallopt only sets a malloc parameter; called before any other thread runs.
    let set = unsafe { libc::mallopt(libc::M_ARENA_MAX, ARENAS_MAX) };
    if set != 1 {
        tracing::warn!("malloc refused M_ARENA_MAX {ARENAS_MAX}");
    }
    std::thread::Builder::new()
        .name("ostrakon-heap-trim".into())
        .spawn(|| loop {
            std::thread::sleep(TRIM_INTERVAL);
            // SAFETY: malloc_trim takes the arenas' locks itself; 0 keeps no padding.
            unsafe { libc::malloc_trim(0) };
        })
        .expect("starting the heap trim thread");
}
