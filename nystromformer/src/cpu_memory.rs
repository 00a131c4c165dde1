//! Keeping freed CPU memory in the process, for binaries that run the CPU backends.
//!
//! Burn's CPU backends allocate a fresh buffer for most tensor operations. With glibc's default
//! malloc, buffers above the mmap threshold (dynamic, at most 32 MiB) are mapped for each
//! allocation and unmapped on free, and the heap top is trimmed back to the OS: every forward
//! pass then pays page faults and zeroing for all of its large intermediates. Measured on two
//! cores (`nystromformer-bench/examples/profile_forward.rs`, b=1, h=8, d=64, m=64): 225 ms →
//! 114 ms at n = 16 384 and 62 ms → 31 ms at n = 4 096 once freed memory is retained.
//!
//! This is a process-wide setting, so the library never applies it on its own: binaries call
//! [`retain_freed_memory`] at start-up (the workspace's binaries do). The cost is that the
//! process keeps its peak heap instead of returning it to the OS.

/// Tells glibc's malloc to serve large allocations from the heap and never trim it, so that
/// freed tensor buffers are reused instead of being unmapped and faulted in again. Returns
/// whether the setting took effect (glibc on Linux only; elsewhere it does nothing).
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only adjusts allocator parameters; it is called before the
        // allocations it affects and takes no pointers.
        let mmap = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30) };
        let trim = unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) };
        mmap == 1 && trim == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Returns the free memory [`retain_freed_memory`] has been keeping to the OS (glibc's
/// `malloc_trim`), e.g. before measuring the peak resident memory of one piece of work. Returns
/// whether anything was released; does nothing outside glibc on Linux.
pub fn release_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only returns free heap pages to the OS; it takes no pointers.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_the_settings() {
        assert!(super::retain_freed_memory());
    }

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn trimming_returns_retained_memory() {
        super::retain_freed_memory();
        drop(vec![1u8; 64 << 20]);
        assert!(
            super::release_freed_memory(),
            "a freed 64 MiB block is released"
        );
    }
}
