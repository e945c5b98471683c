//! Start-up shared by the function binaries: logging (with no secrets in it), configuration,
//! the registry, and running an HTTP handler under the Lambda runtime or as a local server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use lambda_http::{Body, Request, Response};
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

use crate::config::{Config, ConfigError};
use crate::metrics;
use crate::registry::Registry;

/// `serve`: run the function's HTTP API on a local address instead of under Lambda.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Model store: a directory, file:///dir, s3://bucket[/prefix] or memory://.
    #[arg(long, env = "MAAS_STORE")]
    pub store: Option<String>,
}

/// Parses a function binary's command line: nothing (run under Lambda) or `serve [OPTIONS]`,
/// whose options are returned.
pub fn command_line(
    name: &'static str,
    about: &'static str,
    serve_about: &'static str,
) -> Option<ServeArgs> {
    use clap::{Args, FromArgMatches};
    let serve = ServeArgs::augment_args(clap::Command::new("serve")).about(serve_about);
    let matches = clap::Command::new(name)
        .about(about)
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand(serve)
        .get_matches();
    let args = matches.subcommand_matches("serve")?;
    Some(ServeArgs::from_arg_matches(args).unwrap_or_else(|e| e.exit()))
}

/// Dependencies whose most detailed logs hold secrets, and the most detailed level they may
/// log at whatever `RUST_LOG` says: at `trace` the AWS SDK logs every request whole (the
/// signed `authorization` header, the session token, an upload's body), aws-sigv4 each
/// request it signs, and the Lambda runtime every raw event (a caller's request body).
const SECRET_KEEPERS: [(&str, Level); 5] = [
    ("aws_smithy", Level::DEBUG),
    ("aws_sigv4", Level::DEBUG),
    ("aws_sdk", Level::DEBUG),
    ("aws_config", Level::DEBUG),
    ("lambda_runtime", Level::DEBUG),
];

/// JSON logs in Lambda (CloudWatch adds the time); compact human logs locally. `RUST_LOG`
/// filters, `info` by default; [`SECRET_KEEPERS`] never log above their cap.
pub fn init_tracing(in_lambda: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let caps = Targets::new().with_default(Level::TRACE).with_targets(SECRET_KEEPERS);
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    if in_lambda {
        builder.json().without_time().with_ansi(false).finish().with(caps).init();
    } else {
        builder.compact().finish().with(caps).init();
    }
}

/// Reads the configuration, with `store` (from `serve --store`) taking the place of
/// `MAAS_STORE` when given.
pub fn config(store: Option<&str>) -> Result<Config, ConfigError> {
    Config::from_lookup(|name| match (name, store) {
        ("MAAS_STORE", Some(store)) => Some(store.to_owned()),
        _ => std::env::var(name).ok(),
    })
}

/// How a function's process uses memory and threads, beside its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Process {
    /// malloc arenas with one engine thread, unless `MAAS_MALLOC_ARENAS` says otherwise
    /// ([`Process::arenas`]).
    pub arenas: usize,
    /// malloc arenas with several engine threads (0: glibc's default, 8 per core), unless
    /// `MAAS_MALLOC_ARENAS` says otherwise.
    pub threaded_arenas: usize,
    /// Most threads for blocking work (inference, file and hashing work) at once; tokio's
    /// default (512) when `None`.
    pub blocking_threads: Option<usize>,
    /// Freed memory malloc keeps for reuse, and the largest block it serves from its arenas
    /// (up to 32 MiB), in bytes ([`crate::malloc::keep_freed`]); 0 leaves glibc's default.
    pub keep_freed: usize,
}

impl Process {
    /// The malloc arenas of a process whose engine runs on `threads` threads.
    pub fn arenas(&self, threads: usize) -> usize {
        if threads > 1 {
            self.threaded_arenas
        } else {
            self.arenas
        }
    }
}

/// A function serving requests: with one engine thread, two malloc arenas keep ~4 MiB less at
/// the load test's peak than glibc's default at the same warm throughput, one was slower
/// (`scripts/benchmarks.md`, "Arena cap"). With several, glibc's default: under a cap of
/// two, a thread that runs a split batch's share took the arena of the thread that runs the
/// other share, and the two contended for it at every tensor they allocated (the small CNN's
/// two halves of a batch of 8 side by side: 40-44 µs sharing an arena, 32-39 µs with one
/// each, medians in the same processes; `scripts/benchmarks.md`, "What a split in two can
/// gain here; arenas of their own").
/// Freed memory up to 64 MiB is kept for the next request's tensors.
pub const SERVING: Process =
    Process { arenas: 2, threaded_arenas: 0, blocking_threads: None, keep_freed: 64 << 20 };

/// Batch jobs. The reader, inference and writer threads share one malloc arena, which holds
/// less freed memory than two while the job's buffers fill. Four blocking threads: the
/// reader holds one for the whole job, inference and the output's file writes take turns on
/// the others. Without a bound, tokio starts a new thread whenever work arrives while none
/// is idle, which over a long job happens again and again, and each thread that has run
/// inference keeps its own scratch memory: a job's peak grew with its file (two threads were
/// slower; `scripts/benchmarks.md`, batch prediction, "Blocking threads bounded").
/// glibc's default for freed memory: a job's peaks were measured with it.
pub const BATCH: Process =
    Process { arenas: 1, threaded_arenas: 1, blocking_threads: Some(4), keep_freed: 0 };

/// The function's tokio runtime (all threads, timers and I/O), laid out as `process` says,
/// built once malloc's arenas are bounded (`MAAS_MALLOC_ARENAS`, else [`Process::arenas`] for
/// the engine's threads): a
/// thread's first allocation gives it an arena of its own while fewer than glibc's default
/// exist, so a cap set after the runtime's worker threads start leaves them outside it.
pub fn runtime(config: &Config, process: Process) -> std::io::Result<tokio::runtime::Runtime> {
    let threads = config.cache.engine.threads;
    crate::malloc::limit_arenas(config.malloc_arenas.unwrap_or(process.arenas(threads)));
    crate::malloc::keep_freed(process.keep_freed);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = process.blocking_threads {
        builder.max_blocking_threads(threads);
    }
    builder.enable_all().build()
}

/// The registry over the configured store, for the whole execution environment; also sizes
/// the engine's thread pool and its per-shape plan caches.
pub async fn registry(config: &Config) -> Arc<Registry> {
    tracing::info!(threads = config.cache.engine.threads, "engine threads");
    let store = config.store.open(&config.s3).await;
    Arc::new(Registry::new(store, &config.cache))
}

/// How a function binary serves HTTP.
#[derive(Debug, Clone, Copy)]
pub struct Serving {
    /// The function's name in logs and metrics.
    pub function: &'static str,
    /// Largest request body the local server reads (API Gateway has its own).
    pub body_limit: usize,
    /// Largest response as Lambda sends it (413 beyond); the local server applies it too.
    pub response_limit: u64,
}

/// Runs `handler` until the process ends: as a local server on `local` when given,
/// otherwise under the Lambda runtime (API Gateway HTTP API events). Every request is
/// reported ([`crate::metrics::observe`]: a summary line, and metrics under Lambda) and
/// every response held to `serving.response_limit`.
pub async fn run<H, F>(
    local: Option<SocketAddr>,
    serving: Serving,
    handler: H,
) -> Result<(), lambda_http::Error>
where
    H: Fn(Request) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let output = match local {
        Some(_) => metrics::Output::SummaryOnly,
        None => metrics::Output::SummaryAndMetrics,
    };
    let handler = move |request: Request| {
        let handler = handler.clone();
        async move {
            let response = metrics::observe(serving.function, output, request, handler).await;
            crate::http::limit_response(response, serving.response_limit)
        }
    };
    match local {
        Some(addr) => Ok(crate::http::serve_locally(addr, serving.body_limit, handler).await?),
        None => crate::http::run_lambda(handler).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::time::Duration;

    /// The threads that run `tasks` blocking tasks submitted at once, each long enough (0.1 s)
    /// for all of them to be waiting before the first ends.
    fn blocking_threads(process: Process, tasks: usize) -> usize {
        // 0 leaves glibc's arenas as they are in this test process.
        let config = Config::from_lookup(|name| match name {
            "MAAS_STORE" => Some("memory://".to_owned()),
            "MAAS_MALLOC_ARENAS" => Some("0".to_owned()),
            _ => None,
        })
        .unwrap();
        let runtime = runtime(&config, process).unwrap();
        let ids = runtime.block_on(async {
            let spawned: Vec<_> = (0..tasks)
                .map(|_| {
                    tokio::task::spawn_blocking(|| {
                        std::thread::sleep(Duration::from_millis(100));
                        std::thread::current().id()
                    })
                })
                .collect();
            futures::future::try_join_all(spawned).await.unwrap()
        });
        ids.into_iter().collect::<HashSet<_>>().len()
    }

    #[test]
    fn serving_caps_the_arenas_only_for_one_engine_thread_and_batch_jobs_always() {
        assert_eq!([1, 2, 6].map(|threads| SERVING.arenas(threads)), [2, 0, 0]);
        assert_eq!([1, 2, 6].map(|threads| BATCH.arenas(threads)), [1, 1, 1]);
    }

    #[test]
    fn batch_jobs_keep_to_their_blocking_threads_where_serving_takes_more() {
        assert_eq!(blocking_threads(BATCH, 12), 4);
        assert!(blocking_threads(SERVING, 12) > 4);
    }
}
