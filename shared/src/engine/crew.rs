//! The engine's threads, built once per thread count and shared by every model loaded with
//! that count: a rayon pool for tract's threaded matrix products, and one hand per thread
//! beyond the caller's for the shares of split batches ([`Crew::run`]).
//!
//! A thread that has gone to sleep took 40-50 µs to wake on a 2-vCPU VM, about half of what
//! a share of the small CNN's batch of 32 takes, and rayon's pool wakes a second thread for
//! each job handed to it from outside, which then takes CPU time from the two that work: the
//! split gained nothing. So the shares go to hands of our own, and the hands spin for a short
//! window after a split and when a batch of a size that runs split is about to run
//! ([`Crew::keep_awake`]): a share then starts about a microsecond after it is handed over.
//! A spinning hand keeps to a CPU apart from the caller's ([`Placement`]) and gives it up
//! now and then ([`Spin`]). The window closes at once when tract's pool is wanted
//! ([`Crew::executor`]); while it lasts it holds a CPU that would idle (Lambda bills an
//! invocation's duration, not its CPU time).

use std::collections::{BTreeMap, VecDeque};
use std::hint;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rayon::ThreadPool;
use tract_linalg::multithread::Executor;

use super::cpus::{allowed_cpus, current_cpu, Placement, Ran, Speeds};

/// How long the hands stay awake after a split, or once a batch that will be split is
/// announced: longer than the gap between back-to-back batches (a request or mini-batch
/// decoded in between), short enough to leave the CPU soon to anything else.
pub(super) const KEEP_AWAKE: Duration = Duration::from_millis(2);

/// How long the calling thread spins for a hand's share before it sleeps until the share is
/// done: a share usually ends within microseconds of the caller's own.
const SPIN_FOR_SHARE: Duration = Duration::from_micros(500);

/// One share of work for a hand.
type Job = Box<dyn FnOnce() + Send + 'static>;

/// The engine's threads for a thread count.
#[derive(Debug)]
pub(super) struct Crew {
    pool: Arc<ThreadPool>,
    hands: Vec<Arc<Hand>>,
    placement: Arc<Placement>,
    speeds: Speeds,
}

/// One thread that runs shares of split batches, in the order they are handed to it.
struct Hand {
    /// The hand's place among the crew's hands.
    index: usize,
    placement: Arc<Placement>,
    slot: Mutex<Slot>,
    ready: Condvar,
    /// Whether the slot holds work (read while spinning, without the lock).
    has_work: AtomicBool,
    /// Nanoseconds since `epoch` until which the hand spins rather than sleeps.
    until: AtomicU64,
    epoch: Instant,
}

#[derive(Default)]
struct Slot {
    jobs: VecDeque<Job>,
    /// The hand waits on `ready`.
    asleep: bool,
}

impl std::fmt::Debug for Hand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hand").finish_non_exhaustive()
    }
}

/// A thread that spins, waiting for another. At each turn it waits a moment on the CPU, and
/// now and then it gives the CPU up ([`Spin::turn`]).
#[derive(Default)]
struct Spin {
    turns: u32,
}

/// Waits on the CPU (`spin_loop`) in one turn of a spinning thread.
const PAUSES_PER_TURN: u32 = 32;

/// Turns of a thread spinning alone on its CPU between two in which it gives the CPU up
/// (about 50 µs): a thread waiting for that CPU gets it soon. Giving it up at every turn, the
/// hand and the caller alike, slowed the small CNN's split batch of 8: 41-50 µs from the
/// split's start to the caller's return in the median of three rounds of 300, 144-357 µs in
/// the slowest tenth, against 35-46 and 57-73 µs.
const TURNS_PER_YIELD: u32 = 64;

impl Spin {
    /// One turn. A thread that spins `beside` the one it waits for (on its CPU, or where
    /// that is not known) gives the CPU up at every turn: two threads that spin for each
    /// other can end up on one CPU (the scheduler would not wake a hand on the CPU of a VM
    /// that the host took back), and a thread that only spins would then hold the other off
    /// for its whole time slice (a share started 540 µs late, after the caller gave up
    /// waiting).
    ///
    /// The turn ends early once `done`, which is asked between the waits: 32 of them take
    /// about a microsecond on this VM's CPUs, and looking only after the last kept a share
    /// waiting that long, half of it on average, at its start and at its end.
    fn turn(&mut self, beside: bool, done: impl Fn() -> bool) {
        for _ in 0..PAUSES_PER_TURN {
            if done() {
                return;
            }
            hint::spin_loop();
        }
        self.turns = self.turns.wrapping_add(1);
        if beside || self.turns.is_multiple_of(TURNS_PER_YIELD) {
            std::thread::yield_now();
        }
    }
}

/// Locks `mutex`; what it guards stays consistent even if a thread panicked holding it (a
/// queue of jobs, a result not yet taken).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Hand {
    fn new(index: usize, placement: Arc<Placement>) -> Self {
        Self {
            index,
            placement,
            slot: Mutex::new(Slot::default()),
            ready: Condvar::new(),
            has_work: AtomicBool::new(false),
            until: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn awake(&self) -> bool {
        self.now() < self.until.load(Ordering::Acquire)
    }

    /// The hand's life: the next job, spinning while the window is open and asleep after.
    fn work(&self) {
        let mut avoiding = None;
        loop {
            let job = self.next(&mut avoiding);
            job();
        }
    }

    /// The next job. `avoiding` is the CPU of the calling thread the hand last moved away
    /// from.
    fn next(&self, avoiding: &mut Option<usize>) -> Job {
        loop {
            let mut spin = Spin::default();
            while !self.has_work.load(Ordering::Acquire) && self.awake() {
                self.placement.keep_apart(self.index, avoiding);
                spin.turn(self.placement.beside_caller(), || self.has_work.load(Ordering::Acquire));
            }
            let mut slot = lock(&self.slot);
            loop {
                if let Some(job) = slot.jobs.pop_front() {
                    self.placement.keep_apart(self.index, avoiding);
                    self.has_work.store(!slot.jobs.is_empty(), Ordering::Release);
                    return job;
                }
                // Read under the lock: `keep_awake` moves the window before it looks
                // whether the hand sleeps.
                if self.awake() {
                    break;
                }
                slot.asleep = true;
                slot = self.ready.wait(slot).unwrap_or_else(PoisonError::into_inner);
                slot.asleep = false;
            }
        }
    }

    fn give(&self, job: Job) {
        let mut slot = lock(&self.slot);
        slot.jobs.push_back(job);
        self.has_work.store(true, Ordering::Release);
        if slot.asleep {
            self.ready.notify_one();
        }
    }

    /// Keeps the hand spinning until `window` from now, waking it if it sleeps. A window with
    /// half of `window` or more still to go is left as it is: the hand reads it at every turn
    /// of its spin, and a write takes the line from its cache (the caller keeps the hands
    /// awake twice a split: when the batch is announced and after its share). A window still
    /// open was opened by a call that woke the hand, or found it awake after it had moved the
    /// window (the hand looks at the window under the lock before it sleeps): the hand then
    /// does not sleep, and its lock is left alone.
    fn open(&self, window: Duration) {
        let now = self.now();
        let window = u64::try_from(window.as_nanos()).unwrap_or(0);
        if self.until.load(Ordering::Acquire) >= now.saturating_add(window / 2) {
            return;
        }
        let until = now.saturating_add(window);
        let before = self.until.fetch_max(until, Ordering::AcqRel);
        if before <= now && lock(&self.slot).asleep {
            self.ready.notify_one();
        }
    }

    /// Lets the hand sleep as soon as it has no work.
    fn close(&self) {
        self.until.store(0, Ordering::Release);
    }

    /// Whether the hand sleeps now, or was woken and has not run since.
    fn asleep(&self) -> bool {
        lock(&self.slot).asleep
    }
}

/// Where a hand leaves the result of its share.
struct Landing<T> {
    result: Mutex<LandingState<T>>,
    done: AtomicBool,
    /// The CPU the share started on (`usize::MAX` until it started, or when not known).
    cpu: AtomicUsize,
    landed: Condvar,
}

struct LandingState<T> {
    result: Option<std::thread::Result<T>>,
    waiting: bool,
}

impl<T> Landing<T> {
    fn new() -> Self {
        let state = LandingState { result: None, waiting: false };
        Self {
            result: Mutex::new(state),
            done: AtomicBool::new(false),
            cpu: AtomicUsize::new(usize::MAX),
            landed: Condvar::new(),
        }
    }

    fn put(&self, result: std::thread::Result<T>) {
        let mut state = lock(&self.result);
        state.result = Some(result);
        self.done.store(true, Ordering::Release);
        if state.waiting {
            self.landed.notify_one();
        }
    }

    /// The result, once it landed: spun for a while, then slept for. While the share runs on
    /// another CPU than the caller's, the caller gives its CPU up only now and then ([`Spin`]):
    /// yielding at every turn, it saw a share that had landed up to tens of microseconds late
    /// (the small CNN's split batch of 8: the last share's end to the caller's return 2 µs in
    /// the median, 20-34 µs in a tenth of the splits; without, 0 and 1 µs).
    fn take(&self) -> std::thread::Result<T> {
        let (started, mut spin) = (Instant::now(), Spin::default());
        while !self.done.load(Ordering::Acquire) && started.elapsed() < SPIN_FOR_SHARE {
            spin.turn(!self.apart(), || self.done.load(Ordering::Acquire));
        }
        let mut state = lock(&self.result);
        loop {
            if let Some(result) = state.result.take() {
                return result;
            }
            state.waiting = true;
            state = self.landed.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Notes the CPU the share starts on (called by the thread that runs it).
    fn started(&self) {
        self.cpu.store(current_cpu().unwrap_or(usize::MAX), Ordering::Release);
    }

    /// Whether the share started, on another CPU than the calling thread's.
    fn apart(&self) -> bool {
        let cpu = self.cpu.load(Ordering::Acquire);
        cpu != usize::MAX && current_cpu() != Some(cpu)
    }
}

impl Crew {
    /// The pool as tract's executor, the hands' window closed (they would take CPUs from it).
    pub(super) fn executor(&self) -> Executor {
        for hand in &self.hands {
            hand.close();
        }
        Executor::MultiThread(self.pool.clone())
    }

    /// Runs `first` on the calling thread and each of `others` on a hand of its own (the
    /// `i`th on hand `i % hands`), and gives their results back in order. A share that
    /// panicked panics here, once every share is done.
    pub(super) fn run<T, F>(&self, first: impl FnOnce() -> T, others: Vec<F>) -> Vec<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        self.placement.note_caller();
        let landings: Vec<Arc<Landing<T>>> = others
            .into_iter()
            .zip(self.hands.iter().cycle())
            .map(|(share, hand)| {
                let landing = Arc::new(Landing::new());
                let there = Arc::clone(&landing);
                hand.give(Box::new(move || {
                    there.started();
                    there.put(panic::catch_unwind(AssertUnwindSafe(share)));
                }));
                landing
            })
            .collect();
        let first = panic::catch_unwind(AssertUnwindSafe(first));
        let results: Vec<_> =
            std::iter::once(first).chain(landings.iter().map(|landing| landing.take())).collect();
        results
            .into_iter()
            .map(|result| result.unwrap_or_else(|payload| panic::resume_unwind(payload)))
            .collect()
    }

    /// The rows of a split's shares (`sizes`: the calling thread's, then each hand's) cut
    /// again in proportion to how fast the CPU each runs on has lately run its shares.
    pub(super) fn weigh(&self, sizes: &[usize]) -> Vec<usize> {
        self.speeds.weigh(sizes, &self.placement.share_cpus(sizes.len()))
    }

    /// Learns from what each share of a split took, in the order of [`Crew::weigh`].
    pub(super) fn learn(&self, ran: &[Ran]) {
        self.speeds.learn(ran);
    }

    /// Whether every hand spins, its window open: a share handed over now starts at once.
    /// (A hand woken a moment ago may still be on its way.)
    pub(super) fn awake(&self) -> bool {
        self.hands.iter().all(|hand| hand.awake() && !hand.asleep())
    }

    /// Keeps the hands spinning for `window` from now, so that a split's shares start
    /// without waiting for a sleeping thread.
    pub(super) fn keep_awake(&self, window: Duration) {
        self.placement.note_caller();
        for hand in &self.hands {
            hand.open(window);
        }
    }
}

/// The crew of `threads` threads, built once per size for the life of the process; `None`
/// for one thread, or when its threads cannot be started (the work then stays on the
/// calling thread).
pub(super) fn crew(threads: usize) -> Option<Arc<Crew>> {
    static CREWS: Mutex<BTreeMap<usize, Option<Arc<Crew>>>> = Mutex::new(BTreeMap::new());
    if threads <= 1 {
        return None;
    }
    let mut crews = lock(&CREWS);
    let crew = crews.entry(threads).or_insert_with(|| match build(threads) {
        Ok(crew) => Some(Arc::new(crew)),
        Err(error) => {
            tracing::warn!(threads, %error, "no engine threads: running on one thread");
            None
        }
    });
    crew.clone()
}

fn build(threads: usize) -> Result<Crew, Box<dyn std::error::Error>> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|index| format!("maas-engine-{index}"))
        .build()?;
    let placement = Arc::new(Placement::new());
    let hands = (1..threads)
        .map(|index| {
            let hand = Arc::new(Hand::new(index - 1, Arc::clone(&placement)));
            let working = Arc::clone(&hand);
            std::thread::Builder::new()
                .name(format!("maas-share-{index}"))
                .spawn(move || working.work())
                .map(|_| hand)
        })
        .collect::<Result<_, _>>()?;
    Ok(Crew { pool: Arc::new(pool), hands, placement, speeds: Speeds::new(allowed_cpus()) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cpus::{allowed_cpus, cpu_beside, current_cpu};

    fn thread_name() -> String {
        std::thread::current().name().unwrap_or_default().to_string()
    }

    /// Waits up to a second for `done`.
    fn eventually(done: impl Fn() -> bool) -> bool {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(1) {
            if done() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        done()
    }

    #[test]
    fn a_turn_of_spinning_ends_as_soon_as_the_wait_is_over() {
        let mut spin = Spin::default();
        let asked = std::cell::Cell::new(0);
        spin.turn(false, || {
            asked.set(asked.get() + 1);
            asked.get() == 3
        });
        assert_eq!((asked.get(), spin.turns), (3, 0), "ended at the third look, not counted");
        spin.turn(false, || false);
        assert_eq!(spin.turns, 1, "a whole turn is counted");
    }

    #[test]
    fn shares_run_on_the_hands_and_come_back_in_order() {
        let crew = build(3).expect("a crew of three");
        let others: Vec<_> = (1..5).map(|i| move || (i, thread_name())).collect();
        let results = crew.run(|| (0, thread_name()), others);
        let order: Vec<_> = results.iter().map(|(i, _)| *i).collect();
        assert_eq!(order, [0, 1, 2, 3, 4]);
        assert_eq!(results[0].1, thread_name());
        let hands: std::collections::BTreeSet<_> =
            results[1..].iter().map(|(_, name)| name.as_str()).collect();
        assert_eq!(hands.into_iter().collect::<Vec<_>>(), ["maas-share-1", "maas-share-2"]);
    }

    #[test]
    fn a_share_that_panics_panics_in_the_caller_once_the_others_are_done() {
        let crew = build(3).expect("a crew of three");
        let finished = Arc::new(AtomicBool::new(false));
        let late = Arc::clone(&finished);
        let others: Vec<Box<dyn FnOnce() + Send>> = vec![
            Box::new(|| panic!("a share fails")),
            Box::new(move || {
                std::thread::sleep(Duration::from_millis(30));
                late.store(true, Ordering::SeqCst);
            }),
        ];
        let ran = panic::catch_unwind(AssertUnwindSafe(|| crew.run(|| (), others)));
        assert!(ran.is_err(), "the share's panic reaches the caller");
        assert!(finished.load(Ordering::SeqCst), "the caller waited for every share");
        // The hands live on.
        assert_eq!(crew.run(|| 1, vec![|| 2, || 3]), [1, 2, 3]);
    }

    #[test]
    fn hands_spin_while_kept_awake_and_sleep_once_tracts_pool_is_wanted() {
        let crew = build(2).expect("a crew of two");
        let hand = &crew.hands[0];
        assert!(eventually(|| hand.asleep()), "a new hand sleeps");
        assert!(!crew.awake(), "nor awake");
        crew.keep_awake(Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!hand.asleep(), "a hand kept awake spins");
        assert!(crew.awake(), "and takes a share at once");
        let _ = crew.executor();
        assert!(!crew.awake(), "not once tract's pool is wanted");
        assert!(eventually(|| hand.asleep()), "the window closes for tract's pool");
        crew.keep_awake(Duration::from_millis(20));
        assert!(eventually(|| !hand.asleep()));
        assert!(eventually(|| hand.asleep()), "the window closes on its own");
    }

    #[test]
    fn a_hand_runs_on_another_cpu_than_the_caller() {
        let cpus = allowed_cpus();
        if cpus.len() < 2 {
            return; // one CPU: nowhere apart
        }
        let crew = build(2).expect("a crew of two");
        for _ in 0..20 {
            let cpus_seen = crew.run(current_cpu, vec![current_cpu]);
            let caller = crew.placement.caller().expect("the caller's CPU");
            assert_eq!(cpus_seen[1], cpu_beside(&cpus, caller, 0), "{cpus_seen:?}");
        }
    }
}
