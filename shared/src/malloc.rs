//! glibc malloc tuning: how many arenas keep freed memory, and handing freed memory back to
//! the system after a model load. Both are no-ops on other C libraries.
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
