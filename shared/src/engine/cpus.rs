//! The CPUs the engine's threads run on: which ones the process may use, which one a thread
//! is on, where each hand of a split keeps to ([`Placement`]), and how fast each has lately
//! run its shares ([`Speeds`]).

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

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

    /// Notes the calling thread's CPU (written only when it moved: spinning hands read it).
    pub(super) fn note_caller(&self) {
        let cpu = current_cpu();
        if let Some(cpu) = cpu.filter(|&cpu| cpu != self.caller.load(Ordering::Relaxed)) {
            self.caller.store(cpu, Ordering::Relaxed);
        }
    }

    /// Whether this thread runs on the calling thread's CPU (as last noted), or either is not
    /// known.
    pub(super) fn beside_caller(&self) -> bool {
        let caller = self.caller.load(Ordering::Relaxed);
        caller == usize::MAX || current_cpu().is_none_or(|cpu| cpu == caller)
    }

    /// The calling thread's CPU at its last split or request.
    #[cfg(test)]
    pub(super) fn caller(&self) -> Option<usize> {
        Some(self.caller.load(Ordering::Relaxed)).filter(|&cpu| cpu != usize::MAX)
    }

    /// The CPUs the shares of a split of `shares` shares run on: the calling thread's now,
    /// then each hand's beside it (`None` where it is not known).
    pub(super) fn share_cpus(&self, shares: usize) -> Vec<Option<usize>> {
        let caller = current_cpu();
        let hands = (0..shares.saturating_sub(1))
            .map(|index| caller.and_then(|caller| cpu_beside(&self.cpus, caller, index)));
        std::iter::once(caller).chain(hands).collect()
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

/// How fast each CPU has lately run the shares of split batches, beside the other shares of
/// the same splits. The vCPUs of a VM are not equally fast: on the 2-vCPU VM here, one ran the
/// small CNN's batch of 4 in 31 µs while the other took 50 µs, for a quarter of a second to
/// several seconds at a time, either of them. Shares of equal rows then wait for the slower
/// one; shares cut in proportion to each CPU's speed end together.
#[derive(Debug)]
pub(super) struct Speeds {
    /// The CPUs the process may run on, in order.
    cpus: Vec<usize>,
    /// Per CPU of `cpus`: the time per row of its shares over that of the splits' shares
    /// together, in `SCALE`ths, smoothed over recent splits.
    slowness: Vec<AtomicU32>,
}

/// One in fixed point.
const SCALE: u32 = 1024;

/// A split moves a CPU's slowness this part of the way to what it measured: a change of speed
/// is followed within a few splits, and one share that ran slowly (a thread that had slept)
/// does not decide.
const FOLLOW: u32 = 4;

/// A CPU is taken to be at most this many times slower or faster than the others (a share
/// never shrinks to nothing on a CPU that had one bad run).
const LIMIT: u32 = 4;

/// What one share of a split took: the CPU it ran on, its rows and its time.
pub(super) type Ran = (Option<usize>, usize, Duration);

impl Speeds {
    pub(super) fn new(cpus: Vec<usize>) -> Self {
        let slowness = cpus.iter().map(|_| AtomicU32::new(SCALE)).collect();
        Self { cpus, slowness }
    }

    /// The slowness of `cpu` (`SCALE` when not known).
    fn slowness(&self, cpu: Option<usize>) -> u32 {
        let at = cpu.and_then(|cpu| self.cpus.iter().position(|&c| c == cpu));
        at.map_or(SCALE, |at| self.slowness[at].load(Ordering::Relaxed))
    }

    /// The rows of `sizes` (a split's shares) cut again in proportion to the speed of the CPU
    /// each share runs on (`cpus`, in the same order), each share keeping one row at least.
    pub(super) fn weigh(&self, sizes: &[usize], cpus: &[Option<usize>]) -> Vec<usize> {
        let rows = sizes.iter().sum();
        let weights: Vec<f64> =
            cpus.iter().take(sizes.len()).map(|&cpu| 1.0 / f64::from(self.slowness(cpu))).collect();
        if weights.len() < sizes.len() {
            return sizes.to_vec();
        }
        apportion(rows, &weights)
    }

    /// Learns from the shares of one split. Shares whose CPU is not known, or two on one CPU,
    /// say nothing of the CPUs' speeds.
    pub(super) fn learn(&self, ran: &[Ran]) {
        // Each share's CPU among those known, when it ran rows (nothing is allocated: this
        // runs after every split, while the caller waits for its outputs).
        let place = |&(cpu, rows, _): &Ran| {
            cpu.filter(|_| rows > 0).and_then(|cpu| self.cpus.iter().position(|&c| c == cpu))
        };
        let places = || ran.iter().map(place);
        let twice = places().enumerate().any(|(i, at)| places().take(i).any(|other| other == at));
        if ran.len() < 2 || places().any(|at| at.is_none()) || twice {
            return;
        }
        let per_row = |&(_, rows, took): &Ran| took.as_secs_f64() / rows as f64;
        let mean = ran.iter().map(per_row).sum::<f64>() / ran.len() as f64;
        if mean <= 0.0 {
            return;
        }
        let (low, high) = (f64::from(SCALE / LIMIT), f64::from(SCALE * LIMIT));
        for (at, share) in places().flatten().zip(ran) {
            let measured = (per_row(share) / mean * f64::from(SCALE)).clamp(low, high) as u32;
            let slowness = &self.slowness[at];
            let old = slowness.load(Ordering::Relaxed);
            let new = (old * (FOLLOW - 1) + measured) / FOLLOW;
            slowness.store(new.clamp(SCALE / LIMIT, SCALE * LIMIT), Ordering::Relaxed);
        }
    }
}

/// `rows` cut in proportion to `weights` (rows left by rounding down going to the largest
/// remainders), each part one row at least (`rows` at least the number of parts: a row given
/// to a part that had none comes from the largest).
fn apportion(rows: usize, weights: &[f64]) -> Vec<usize> {
    let total: f64 = weights.iter().sum();
    let exact: Vec<f64> = weights.iter().map(|w| w / total * rows as f64).collect();
    let mut sizes: Vec<usize> = exact.iter().map(|e| (e.floor() as usize).max(1)).collect();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    let remainder = |part: usize| exact[part] - exact[part].floor();
    order.sort_by(|&a, &b| remainder(b).total_cmp(&remainder(a)));
    for &part in order.iter().cycle().take(rows.saturating_sub(sizes.iter().sum())) {
        sizes[part] += 1;
    }
    while sizes.iter().sum::<usize>() > rows {
        let Some(largest) = (0..sizes.len()).max_by_key(|&part| sizes[part]) else { break };
        if sizes[largest] <= 1 {
            break;
        }
        sizes[largest] -= 1;
    }
    sizes
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

    #[test]
    fn rows_are_cut_in_proportion_one_row_each_at_least() {
        assert_eq!(apportion(8, &[1.0, 1.0]), [4, 4]);
        assert_eq!(apportion(9, &[1.0, 1.0]).iter().sum::<usize>(), 9);
        assert_eq!(apportion(8, &[1.0, 3.0]), [2, 6]);
        assert_eq!(apportion(32, &[2.0, 1.0, 1.0]), [16, 8, 8]);
        assert_eq!(apportion(2, &[1.0, 100.0]), [1, 1]);
        assert_eq!(apportion(5, &[1.0, 1000.0]), [1, 4]);
    }

    fn ran(cpu: usize, rows: usize, micros: u64) -> Ran {
        (Some(cpu), rows, Duration::from_micros(micros))
    }

    #[test]
    fn a_cpu_that_runs_its_rows_slower_gets_fewer() {
        let speeds = Speeds::new(vec![0, 1]);
        let cpus = [Some(0), Some(1)];
        assert_eq!(speeds.weigh(&[4, 4], &cpus), [4, 4], "nothing known: as cut");
        // CPU 1 takes 1.6 times as long per row, split after split.
        for _ in 0..30 {
            speeds.learn(&[ran(0, 4, 31), ran(1, 4, 50)]);
        }
        assert_eq!(speeds.weigh(&[4, 4], &cpus), [5, 3]);
        assert_eq!(speeds.weigh(&[16, 16], &cpus), [20, 12]);
        // The caller moved to CPU 1 and the hand to 0: the shares follow the CPUs.
        assert_eq!(speeds.weigh(&[16, 16], &[Some(1), Some(0)]), [12, 20]);
        // Once CPU 1 is as fast again, within a few splits the shares are even again.
        for _ in 0..30 {
            speeds.learn(&[ran(0, 20, 155), ran(1, 12, 93)]);
        }
        assert_eq!(speeds.weigh(&[16, 16], &cpus), [16, 16]);
    }

    #[test]
    fn one_slow_share_moves_the_cut_a_part_of_the_way_and_odd_splits_teach_nothing() {
        let speeds = Speeds::new(vec![0, 1]);
        let cpus = [Some(0), Some(1)];
        speeds.learn(&[ran(0, 16, 100), ran(1, 16, 400)]);
        let once = speeds.weigh(&[16, 16], &cpus);
        assert!(once[0] > 16 && once[0] < 20, "{once:?}");
        let before = speeds.weigh(&[16, 16], &cpus);
        speeds.learn(&[ran(0, 16, 100), ran(0, 16, 900)]); // two shares on one CPU
        speeds.learn(&[(None, 16, Duration::from_micros(900)), ran(1, 16, 100)]);
        speeds.learn(&[ran(7, 16, 900), ran(1, 16, 100)]); // a CPU outside the list
        assert_eq!(speeds.weigh(&[16, 16], &cpus), before);
        // However slow a CPU seems, its share keeps rows in proportion to the limit.
        for _ in 0..100 {
            speeds.learn(&[ran(0, 16, 1), ran(1, 16, 10_000)]);
        }
        let limited = speeds.weigh(&[16, 16], &cpus);
        assert!(limited[1] >= 1 && limited[1] <= 4, "{limited:?}");
    }
}
