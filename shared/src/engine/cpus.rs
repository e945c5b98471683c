//! The CPUs the engine's threads run on: which ones the process may use, which one a thread
//! is on, and where each hand of a split keeps to ([`Placement`]).

use std::sync::atomic::{AtomicUsize, Ordering};

/// Which CPU each thread of a split runs on. Two threads that spin never sleep, so the
/// scheduler never places them again: a hand that once woke on the calling thread's CPU
/// stayed there, and its share ran after the caller's (three splits in four on a 2-vCPU
/// Firecracker VM: an idle vCPU is halted, and the scheduler would not wake a hand there).
/// So the calling thread says where it runs, and each hand keeps to a CPU of its own beside
/// it: the `i`th hand the `i + 1`th allowed CPU after the caller's.
#[derive(Debug)]
pub(super) struct Placement {
    /// The CPUs the process may run on, in order.
    cpus: Vec<usize>,
    /// The calling thread's CPU at its last split or request (`usize::MAX`: not known).
    caller: AtomicUsize,
}

impl Placement {
    pub(super) fn new() -> Self {
        Self { cpus: allowed_cpus(), caller: AtomicUsize::new(usize::MAX) }
    }

    /// Notes the calling thread's CPU.
    pub(super) fn note_caller(&self) {
        if let Some(cpu) = current_cpu() {
            self.caller.store(cpu, Ordering::Relaxed);
        }
    }

    /// The calling thread's CPU at its last split or request.
    #[cfg(test)]
    pub(super) fn caller(&self) -> Option<usize> {
        Some(self.caller.load(Ordering::Relaxed)).filter(|&cpu| cpu != usize::MAX)
    }

    /// Moves hand `index` to its CPU beside the caller's, when the caller moved since the
    /// hand last did (`avoiding`).
    pub(super) fn keep_apart(&self, index: usize, avoiding: &mut Option<usize>) {
        let caller = self.caller.load(Ordering::Relaxed);
        if *avoiding == Some(caller) || caller == usize::MAX {
            return;
        }
        *avoiding = Some(caller);
        if let Some(cpu) = cpu_beside(&self.cpus, caller, index) {
            if let Err(error) = pin_to(cpu) {
                tracing::debug!(cpu, %error, "an engine thread cannot keep to a CPU");
            }
        }
    }
}

/// The CPU of `cpus` for hand `index` when the caller runs on `caller`: the `index + 1`th
/// after the caller's, round the list (`None` with fewer than two CPUs: nowhere apart).
pub(super) fn cpu_beside(cpus: &[usize], caller: usize, index: usize) -> Option<usize> {
    if cpus.len() < 2 {
        return None;
    }
    let at = cpus.iter().position(|&cpu| cpu == caller).unwrap_or(0);
    Some(cpus[(at + 1 + index) % cpus.len()])
}

/// The CPUs this process may run on (empty when they cannot be read).
pub(super) fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is an empty set, and sched_getaffinity writes at most
    // `size_of::<cpu_set_t>()` bytes into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    if unsafe { libc::sched_getaffinity(0, size, &mut set) } != 0 {
        return Vec::new();
    }
    // SAFETY: CPU_ISSET reads the set within its size (CPU_SETSIZE bits).
    (0..libc::CPU_SETSIZE as usize).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).collect()
}

/// The CPU the calling thread runs on now.
pub(super) fn current_cpu() -> Option<usize> {
    // SAFETY: sched_getcpu takes no arguments and only reads the thread's state.
    usize::try_from(unsafe { libc::sched_getcpu() }).ok()
}

/// Keeps the calling thread to `cpu` alone.
fn pin_to(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes one bit of it (`cpu` comes
    // from `allowed_cpus`, below CPU_SETSIZE); sched_setaffinity reads the set's size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    match unsafe { libc::sched_setaffinity(0, size, &set) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_hand_takes_the_cpus_after_the_callers_in_turn() {
        assert_eq!(cpu_beside(&[0, 1], 0, 0), Some(1));
        assert_eq!(cpu_beside(&[0, 1], 1, 0), Some(0));
        assert_eq!(cpu_beside(&[2, 4, 6, 8], 6, 0), Some(8));
        assert_eq!(cpu_beside(&[2, 4, 6, 8], 6, 1), Some(2));
        assert_eq!(cpu_beside(&[2, 4, 6, 8], 6, 2), Some(4));
        // A caller on a CPU outside the list counts as on the first.
        assert_eq!(cpu_beside(&[2, 4], 7, 0), Some(4));
        assert_eq!(cpu_beside(&[3], 3, 0), None);
    }
}
