//! glibc malloc tuning: how many arenas keep freed memory, how much of it they keep, and
//! handing freed memory back to the system after a model load. All are no-ops on other C
//! libraries.
//!
//! glibc gives threads separate arenas (up to 8 per core) and keeps what a thread freed in
//! its arena for reuse. A model load frees several times the model's file at its end
//! (decoded protobuf, graph, intermediate copies) in the arena of the blocking thread that
//! loaded it; with many threads and many loads, that freed memory stays resident in many
//! arenas and the process's RSS climbs with every load. Fewer arenas reuse it, and a trim
//! after each load returns it.

/// Caps glibc's malloc arenas at `arenas` (`mallopt(M_ARENA_MAX)`); 0 keeps glibc's default.
/// Threads that allocate at once share an arena's lock: a cost measured in the load test
/// (`scripts/benchmarks.md`, "Load test").
pub fn limit_arenas(arenas: usize) {
    if arenas == 0 {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let value = libc::c_int::try_from(arenas).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only changes a malloc setting; it may be called at any time.
        let set = unsafe { libc::mallopt(libc::M_ARENA_MAX, value) } == 1;
        tracing::info!(arenas, set, "malloc arenas");
    }
}

/// The largest a block may be to come from an arena rather than from a mapping of its own
/// (glibc's own ceiling on 64-bit systems).
const LARGEST_FROM_ARENA: usize = 32 << 20;

/// Lets malloc keep up to `bytes` of freed memory at the top of an arena for reuse, and serve
/// blocks of up to `bytes` (at most 32 MiB) from its arenas, rather than mapping each large
/// block anew (`mallopt(M_TRIM_THRESHOLD)` and `M_MMAP_THRESHOLD`); 0 keeps glibc's default.
///
/// glibc starts from 128 KiB for both and raises them as it frees mapped blocks, so how a
/// run's large tensors are served depends on what the process freed before: in most
/// processes, PaddleOCR's batch of 32 (tensors of up to 5 MiB) took 32-52 ms against 22-32
/// ms with both set, with 3 000-7 000 page faults a run against about 150, each page of a
/// tensor mapped and zeroed anew (`scripts/benchmarks.md`, "Freed memory kept for the next run"). Setting
/// one threshold alone fixes the other at its start: worse still (40-50 ms). Freed memory
/// up to `bytes` then stays resident between requests; the peak does not change, and
/// [`trim`] still hands it back after each model load.
pub fn keep_freed(bytes: usize) {
    if bytes == 0 {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let value = |b: usize| libc::c_int::try_from(b).unwrap_or(libc::c_int::MAX);
        let (mapped, trim) = (value(bytes.min(LARGEST_FROM_ARENA)), value(bytes));
        // SAFETY: mallopt only changes a malloc setting; it may be called at any time.
        let set = unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, mapped) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, trim) == 1
        };
        tracing::info!(bytes, set, "malloc keeps freed memory");
    }
}

/// Returns the free memory of every arena to the system (`malloc_trim`), as after a model
/// load, so that a load's transient copies do not stay resident. Takes a few milliseconds
/// for tens of MiB free, next to a load's hundreds.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages; it may be called at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
