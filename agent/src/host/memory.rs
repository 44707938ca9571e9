//! Giving memory back after a burst.
//!
//! Programming thousands of peers (or reading thousands of leases) allocates megabytes for a
//! moment. glibc's malloc keeps freed memory inside its per-thread arenas, so a node agent
//! would carry the peak of its first pass for the rest of its life. `malloc_trim` returns the
//! free pages of every arena to the kernel.

/// Return free heap pages to the kernel (glibc only; elsewhere a no-op).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_free_memory() {
    // SAFETY: malloc_trim takes a plain integer, has no preconditions and only releases
    // memory that no allocation is using.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() {}
