//! Inference time of one model with one thread and with several (`MAAS_ENGINE_THREADS`),
//! for a few batch sizes, the two engines taking turns of ten runs after a pause each (or
//! back to back: `MAAS_BENCH_BACK_TO_BACK=1`, [`pace`]). Driven by
//! `scripts/bench_threads.sh`. With several threads, each batch runs the way measured fastest
//! for its size (threaded matrix products, one thread, or split across the threads; see
//! `engine::split`); the model is loaded as validation says (loader, planning; or
//! `MAAS_BENCH_PLANS`).
//! `MAAS_ENGINE_MIN_SHARE_MICROS` sets the minimum share and `MAAS_MALLOC_ARENAS` the malloc
//! arenas as in `predict`.
//!
//! `threads MODEL.onnx THREADS RUNS BATCH...`   prints one Markdown row per batch size
//!
//! `MAAS_BENCH_HALVES=1` (two threads) also measures the most a split of each batch in two
//! could gain on this machine ([`halves_ms`]): two threads, each with a model of its own,
//! run half the rows each, with no hand-off, cut or join between them. It prints the whole
//! batch on one thread, half of it alone, the two halves side by side, the engine on two
//! threads, and the speed-ups of the last two.

use std::time::Instant;

use maas::engine::{validate, Model, Settings};
use maas::manifest::Planning;
use maas::tensor::{DataType, Tensor, TensorData};

/// Inputs of the model's declared shapes, the first dimension at `batch` and the other
/// dynamic ones from `row` (the shape of one row of the first input) or else at `batch`,
/// filled with a fixed pattern (timing does not depend on the values): 0-6, over 7 for
/// floats.
fn inputs(model: &Model, batch: usize, row: Option<&[usize]>) -> Vec<Tensor> {
    model
        .signature()
        .inputs
        .iter()
        .map(|spec| {
            let dim = |(axis, &d): (usize, &i64)| match (d, row) {
                (d, _) if d >= 0 => d as usize,
                (_, Some(row)) if axis > 0 => row.get(axis - 1).copied().unwrap_or(batch),
                _ => batch,
            };
            let shape: Vec<usize> = spec.shape.iter().enumerate().map(dim).collect();
            let count = shape.iter().product::<usize>();
            let data = match spec.datatype {
                DataType::I32 => TensorData::I32((0..count).map(|i| (i % 7) as i32).collect()),
                DataType::I64 => TensorData::I64((0..count).map(|i| (i % 7) as i64).collect()),
                _ => TensorData::F32((0..count).map(|i| (i % 7) as f32 / 7.0).collect()),
            };
            Tensor { name: spec.name.clone(), shape, data }
        })
        .collect()
}

/// Milliseconds of one inference, the model told the batch is coming as `predict` tells it
/// once a request is decoded (here right before the run: a thread that wakes for it does so
/// on the clock).
fn run_ms(model: &Model, batch: usize, row: Option<&[usize]>) -> f64 {
    let batch_inputs = inputs(model, batch, row);
    let started = Instant::now();
    model.expect_run(&batch_inputs);
    model.run(batch_inputs).expect("inference runs");
    started.elapsed().as_secs_f64() * 1000.0
}

/// How the runs of the models compared take turns.
#[derive(Clone, Copy)]
struct Pace {
    /// Runs of one model in a row before the next takes its turn.
    turn: usize,
    /// A pause before each turn.
    pause: std::time::Duration,
}

/// Turns of ten runs, each after a pause longer than the engine keeps its threads awake
/// after a split (`engine/crew.rs`): one model's spinning threads must not share the CPUs
/// with the other model's runs, and each turn starts as a request after a quiet moment does.
const PAUSED: Pace = Pace { turn: 10, pause: std::time::Duration::from_millis(5) };

/// `MAAS_BENCH_BACK_TO_BACK=1`: four turns of a quarter of the runs each, back to back (as
/// the mini-batches of a batch job run). After a pause of 5 ms every ten runs, even one
/// thread ran the small CNN's batch of 4 in 21-30 µs, against 20.2-20.5 back to back.
fn pace(runs: usize) -> Pace {
    match std::env::var("MAAS_BENCH_BACK_TO_BACK").as_deref() {
        Ok("1") => Pace { turn: runs.div_ceil(4).max(1), pause: std::time::Duration::ZERO },
        _ => PAUSED,
    }
}

/// Median milliseconds of `runs` inferences on each model, the models taking turns as
/// `pace` says so that a machine whose speed drifts slows them alike.
fn medians_ms(
    models: [&Model; 2],
    batch: usize,
    runs: usize,
    row: Option<&[usize]>,
    pace: Pace,
) -> [f64; 2] {
    let mut samples = [Vec::with_capacity(runs), Vec::with_capacity(runs)];
    for turn in (0..runs).step_by(pace.turn) {
        for (model, samples) in models.iter().zip(&mut samples) {
            std::thread::sleep(pace.pause);
            for _ in turn..runs.min(turn + pace.turn) {
                samples.push(run_ms(model, batch, row));
            }
        }
    }
    samples.map(median)
}

/// Medians of `runs` of: two halves of a batch side by side, from their start to the later
/// one's end, one on the calling thread and one on a thread spinning for it, each with a
/// model of its own (`halves`) and its inputs built beforehand: a split with nothing lost to
/// handing over, cutting or joining; then, taking turns with them as [`medians_ms`] does, the
/// whole batch on one thread (`one`), the first half alone (on `halves[0]`) and the batch on
/// `engine`. Milliseconds.
fn halves_ms(
    halves: [&Model; 2],
    [one, engine]: [&Model; 2],
    batch: usize,
    runs: usize,
    row: Option<&[usize]>,
    pace: Pace,
) -> [f64; 4] {
    use std::sync::atomic::{AtomicU64, Ordering};
    let wait = |counter: &AtomicU64, run: u64| {
        while counter.load(Ordering::Acquire) < run {
            std::hint::spin_loop();
        }
    };
    let (first, second) = (batch - batch / 2, batch / 2);
    let mut samples = [(); 4].map(|_| Vec::with_capacity(runs));
    // Each half's thread on a CPU of its own: spinning for each other on one CPU, one would
    // hold the other off for its time slice.
    let cpus = allowed_cpus();
    let (caller_cpu, other_cpu) = match cpus[..] {
        [a, b, ..] => (a, b),
        _ => panic!("MAAS_BENCH_HALVES needs two CPUs"),
    };
    // Runs whose inputs the other thread built, that the caller started, that the other
    // thread finished, counted over all turns. The other thread lives through every turn
    // (a new one for each turn ran its half slower: 27-31 µs against 20-21 for the small
    // CNN's batch of 8) and sleeps between them.
    let (ready, started, done) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let (turns, turn_runs) = std::sync::mpsc::channel::<std::ops::Range<u64>>();
    std::thread::scope(|scope| {
        let (ready, started, done) = (&ready, &started, &done);
        scope.spawn(move || {
            pin(&[other_cpu]);
            for runs in turn_runs {
                for run in runs {
                    let inputs = inputs(halves[1], second, row);
                    ready.store(run, Ordering::Release);
                    wait(started, run);
                    halves[1].run(inputs).expect("inference runs");
                    done.store(run, Ordering::Release);
                }
            }
        });
        for turn in (0..runs).step_by(pace.turn) {
            let count = runs.min(turn + pace.turn) - turn;
            std::thread::sleep(pace.pause);
            pin(&[caller_cpu]);
            let numbers = turn as u64 + 1..(turn + count) as u64 + 1;
            turns.send(numbers.clone()).expect("the other thread waits for a turn");
            for run in numbers {
                let inputs = inputs(halves[0], first, row);
                wait(ready, run);
                let begun = Instant::now();
                started.store(run, Ordering::Release);
                halves[0].run(inputs).expect("inference runs");
                wait(done, run);
                samples[0].push(begun.elapsed().as_secs_f64() * 1000.0);
            }
            pin(&cpus);
            for (model, rows, kept) in [(one, batch, 1), (halves[0], first, 2), (engine, batch, 3)]
            {
                std::thread::sleep(pace.pause);
                for _ in 0..count {
                    samples[kept].push(run_ms(model, rows, row));
                }
            }
        }
        drop(turns);
    });
    samples.map(median)
}

/// The median of `samples` (not empty).
fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// The CPUs the process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity writes a cpu_set_t of the size given; CPU_ISSET reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let set_size = std::mem::size_of::<libc::cpu_set_t>();
        assert_eq!(libc::sched_getaffinity(0, set_size, &mut set), 0, "the allowed CPUs");
        (0..libc::CPU_SETSIZE as usize).filter(|&cpu| libc::CPU_ISSET(cpu, &set)).collect()
    }
}

/// Keeps the calling thread on `cpus`.
fn pin(cpus: &[usize]) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes within it, and
    // sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        let set_size = std::mem::size_of::<libc::cpu_set_t>();
        assert_eq!(libc::sched_setaffinity(0, set_size, &set), 0, "CPUs {cpus:?} for a thread");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: threads MODEL.onnx THREADS RUNS BATCH...";
    let (path, threads, runs) = match &args[..] {
        [path, threads, runs, ..] => {
            (path, threads.parse().expect(usage), runs.parse().expect(usage))
        }
        _ => panic!("{usage}"),
    };
    // As predict runs: its malloc arenas bounded (`MAAS_MALLOC_ARENAS`, else predict's
    // default for the engine's threads) before any other thread starts, and freed memory kept
    // for the next run. (Before freed memory was kept, a thread in an arena of its own paid
    // page faults for its tensors: the small CNN's share of 16 images took 200-230 µs on the
    // pool thread against 115 µs on the caller, 122 µs with two arenas.)
    let arenas = std::env::var("MAAS_MALLOC_ARENAS")
        .map_or(maas::function::SERVING.arenas(threads), |v| {
            v.parse().expect("a number of arenas")
        });
    maas::malloc::limit_arenas(arenas);
    maas::malloc::keep_freed(maas::function::SERVING.keep_freed);
    let bytes = std::fs::read(path).expect("the model file");
    let validated = validate(&bytes, &Settings::default()).expect("the model validates");
    // Validation picks symbolic or per-shape planning by a timed trial, which can go either
    // way from one process to the next for the torch CNNs: `MAAS_BENCH_PLANS=symbolic` or
    // `per_shape` fixes it.
    let planning = match std::env::var("MAAS_BENCH_PLANS").as_deref() {
        Ok("symbolic") => Planning::Symbolic,
        Ok("per_shape") => Planning::PerShape,
        Ok(other) => panic!("MAAS_BENCH_PLANS: symbolic or per_shape, not {other}"),
        Err(_) => validated.plans,
    };
    eprintln!("planning: {planning:?}");
    let load = |threads| {
        // As predict reads it, to compare values of the minimum share.
        let min_share_micros = std::env::var("MAAS_ENGINE_MIN_SHARE_MICROS")
            .map_or(Settings::default().min_share_micros, |v| v.parse().expect("microseconds"));
        let settings = Settings { threads, min_share_micros, ..Default::default() };
        Model::load_path(path.as_ref(), validated.loader, planning, &settings)
            .expect("the model loads")
    };
    // The shape of one row where the model leaves more than the batch open (PaddleOCR's
    // images): `MAAS_BENCH_ROW_SHAPE=3,48,192`.
    let row: Option<Vec<usize>> = std::env::var("MAAS_BENCH_ROW_SHAPE").ok().map(|v| {
        v.split(',').map(|d| d.trim().parse().expect("MAAS_BENCH_ROW_SHAPE: sizes")).collect()
    });
    let row = row.as_deref();
    let (single, several) = (load(1), load(threads));
    let name = path.rsplit('/').next().unwrap_or(path);
    if std::env::var("MAAS_BENCH_HALVES").is_ok_and(|v| v == "1") {
        let halves = [&load(1), &load(1)];
        for batch in args[3..].iter().map(|b| b.parse::<usize>().expect(usage)) {
            halves_ms(halves, [&single, &several], batch, 10, row, PAUSED); // warm up
            let splits = several.split_runs();
            let pace = pace(runs);
            let [both, one, half, many] =
                halves_ms(halves, [&single, &several], batch, runs, row, pace);
            eprintln!("batch {batch}: {} of {runs} runs split", several.split_runs() - splits);
            let (bound, gain) = (one / both, one / many);
            println!(
                "| {name} | {batch} | {one:.3} | {half:.3} | {both:.3} | {many:.3} | {bound:.2}x | {gain:.2}x |"
            );
        }
        return;
    }
    for batch in args[3..].iter().map(|b| b.parse::<usize>().expect(usage)) {
        medians_ms([&single, &several], batch, 10, row, PAUSED); // warm up
        let splits = several.split_runs();
        let [one, many] = medians_ms([&single, &several], batch, runs, row, pace(runs));
        eprintln!("batch {batch}: {} of {runs} runs split", several.split_runs() - splits);
        println!("| {name} | {batch} | {one:.3} | {many:.3} | {:.2}x |", one / many);
    }
}
