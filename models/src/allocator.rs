//! Process-wide allocator settings that the engine's buffers want.
//!
//! Tensor buffers of tens of megabytes (attention scores, activations) are allocated and
//! freed on every forward pass. glibc serves such sizes with fresh `mmap`s and returns
//! them on free, so every pass takes a page fault per 4 KiB on first touch (about 15% of
//! a Whisper transcription's time, 9% of a CLIP batch). Keeping freed blocks in the heap
//! removes that. Binaries (and benchmarks, to measure what users run) call
//! [`keep_freed_buffers`] first thing in `main`; the loaders call [`release_free_memory`]
//! once the weights are in place, so the checkpoint's transient copies (read, converted,
//! packed) are not kept in the heap for the life of the process.

/// Raises glibc's mmap and trim thresholds so large freed blocks stay in the heap, and
/// keeps one heap for all threads. A no-op on other C libraries. Call it before any
/// thread starts.
pub fn keep_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; the caller runs it before threads.
    unsafe {
        const LARGE: libc::c_int = 1 << 30;
        libc::mallopt(libc::M_MMAP_THRESHOLD, LARGE);
        libc::mallopt(libc::M_TRIM_THRESHOLD, LARGE);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
        // One arena for every thread. The engine runs its forward passes on rayon's
        // workers (`model::on_pool`) while loading and the callers' threads allocate
        // too; with an arena per thread, each keeps its own freed buffers (Whisper's peak
        // RSS rose by a third), and buffers above a secondary arena's 64 MiB heap are
        // mapped and unmapped on every pass whatever the thresholds say.
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Returns the heap's free memory to the kernel (glibc's `malloc_trim`). A no-op on other C
/// libraries.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}
