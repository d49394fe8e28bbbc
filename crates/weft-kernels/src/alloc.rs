//! Allocator tuning for training ([`keep_freed_memory`]).

/// Asks glibc's allocator to keep the memory it frees (up to 1 GiB) for the next allocation.
///
/// A CPU training step allocates and frees the same large activation and gradient buffers
/// (megabytes each) every step. By default glibc serves blocks that large with fresh `mmap`s, or
/// hands the top of the heap back to the kernel when they are freed, so every step pays page
/// faults and the kernel's zeroing of each page again: about a tenth of the tiny-bench step.
/// Keeping them (as PyTorch's CPU caching allocator does) costs the peak memory of one step,
/// held until exit. Does nothing on other platforms or C libraries.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // 32 MiB is glibc's largest mmap threshold on 64-bit; larger blocks are still mmapped.
        const MMAP_THRESHOLD: i32 = 32 << 20;
        const TRIM_THRESHOLD: i32 = 1 << 30;
        #[allow(unsafe_code)]
        // SAFETY: mallopt only changes allocator tuning parameters, under glibc's own lock;
        // it does not touch any allocation.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    }
}
