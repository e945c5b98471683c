//! Configuration from the environment, read once at start-up.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::batch::settings::{folder, BatchSettings};
use crate::engine;
use crate::fetch::FetchSettings;
use crate::names::{ModelName, VersionSpec};
use crate::predictor::RequestLimits;
use crate::registry::{CacheSettings, PublishLimits};
use crate::store::{LocalStore, MemoryStore, S3Settings, S3Store, SharedStore};

/// Everything maas reads from its environment.
///
/// | variable | meaning | default |
/// |---|---|---|
/// | `MAAS_STORE` | where models live: `s3://bucket[/prefix]`, `file:///dir` or a plain directory path, or `memory://` | required |
/// | `MAAS_S3_FORCE_PATH_STYLE` | `true` for path-style S3 addressing (local S3-compatible servers) | `false` |
/// | `MAAS_S3_CONNECT_TIMEOUT_MS` | limit on opening a connection to S3 | 1000 |
/// | `MAAS_S3_ATTEMPT_TIMEOUT_MS` | limit on one attempt of an S3 call: up to the response head for a GET, the whole exchange otherwise (writes get 1 s more per 16 MiB of body) | 5000 |
/// | `MAAS_S3_OPERATION_TIMEOUT_MS` | limit on one S3 call with all its retries and backoff (for a GET, up to the response head) | 15000 |
/// | `MAAS_S3_BODY_IDLE_TIMEOUT_MS` | longest wait for the next bytes of an S3 GET body before it is resumed or fails; also the SDK's stalled-stream grace period | 5000 |
/// | `MAAS_S3_MAX_ATTEMPTS` | attempts per S3 call (retries of throttling and transport errors), and per GET body (resumptions after a break) | 3 |
/// | `MAAS_S3_RETRY_MODE` | `standard`, or `adaptive` (also rate-limits the client after throttling) | `standard` |
/// | `MAAS_S3_INITIAL_BACKOFF_MS` | backoff before the first retry; doubled per retry, the wait a random fraction of it (full jitter) | 200 |
/// | `MAAS_S3_MAX_BACKOFF_MS` | largest backoff between retries | 2000 |
/// | `MAAS_FETCH_PART_BYTES` | bytes per ranged GET of a model file; a file no larger comes in one GET | 8388608 (8 MiB) |
/// | `MAAS_FETCH_PARALLELISM` | ranged GETs of one model file in flight at once (parts ahead of the hashed prefix wait in memory: at most this many) | 8 |
/// | `MAAS_FETCH_DECODE` | `true`: a downloaded model file is decoded as its bytes arrive, beside the download; `false`: after it | `true` |
/// | `MAAS_FETCH_PART_ATTEMPTS` | attempts at a part that arrives short (a failing call is retried by the S3 client, `MAAS_S3_MAX_ATTEMPTS`) | 3 |
/// | `MAAS_CACHE_DIR` | directory of the disk cache of model files | `/tmp/maas-cache` |
/// | `MAAS_DISK_CACHE_BYTES` | size bound of the disk cache | 402653184 (384 MiB) |
/// | `MAAS_MEMORY_CACHE_BYTES` | bytes of loaded models kept in memory (LRU beyond it); a model weighs what it holds loaded, at least its file (small models several times it) | half of `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, else 1 GiB |
/// | `MAAS_PRELOAD` | models loaded during start-up (the Lambda init phase): `name` or `name:version`, comma-separated | none |
/// | `MAAS_PRELOAD_BATCHES` | batch sizes (comma-separated, up to `MAAS_MAX_BATCH`) whose plans are built at start-up for the preloaded models planned per shape, so the first request in those buckets does not wait for an optimisation | none |
/// | `MAAS_MAX_REQUEST_BYTES` | largest request body accepted (413 beyond) | 6291456 (6 MiB, Lambda's payload limit) |
/// | `MAAS_MAX_RESPONSE_BYTES` | largest response as Lambda returns it, base64 of binary bodies and JSON escapes counted (413 naming batch-predict beyond) | 6291456 (6 MiB, Lambda's synchronous response limit) |
/// | `MAAS_MAX_BATCH` | most rows in one request: the first dimension of inputs whose first dimension is dynamic (413 beyond) | 4096 |
/// | `MAAS_MAX_ELEMENTS` | most elements of all inputs of one request together (413 beyond) | 4194304 |
/// | `MAAS_RESOLVE_TTL_SECONDS` | how long `latest` and aliases stay resolved before the store is asked again | 30 |
/// | `MAAS_MAX_MODEL_BYTES` | largest ONNX file `model-upload` accepts (413 beyond) | 536870912 (512 MiB) |
/// | `MAAS_MAX_TENSOR_BYTES` | largest tensor an uploaded model may declare, dynamic dimensions at 1 (422 beyond) | 268435456 (256 MiB) |
/// | `MAAS_ENGINE_MEMORY_BYTES` | memory budget of one inference or trial run: bytes of tensors alive at once, and the largest single allocation the engine makes for a request (422 beyond) | a quarter of `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, else 1 GiB |
/// | `MAAS_PRESIGN_EXPIRY_SECONDS` | how long a presigned upload URL stays valid | 900 |
/// | `MAAS_ENGINE_THREADS` | threads for tract's matrix products (1: none besides the caller) | the CPUs available to the process |
/// | `MAAS_SHAPE_PLANS` | optimised plans kept per model that is planned per input shape (LRU) | 8 |
/// | `MAAS_PLANS_BEHIND` | on a model planned per input shape, a batch whose bucket has no plan yet runs on another bucket's plan (padded, or in shares) while its own is built on a thread of its own; `false`: the batch waits for its plan | true |
/// | `MAAS_ENGINE_MIN_SHARE_MICROS` | with several engine threads, a batch may be split into one share per thread (rows run side by side) once a whole run of it took this long; each group of batch sizes then runs whichever way (whole with threaded matrix products, whole on one thread, split) was measured fastest per row | 20 |
/// | `MAAS_ENGINE_ROW_BY_ROW_MICROS` | a batch may run row by row on one thread once a whole run of it took this long, and does where that was measured faster per row (a large model's rows one at a time keep their intermediate tensors in the CPU's cache) | 1000 |
/// | `MAAS_BATCH_INPUT_PREFIX` | batch-predict: keys under it are batch inputs, `<prefix><model>[@<version or alias>]/<path>` | `batch/input/` |
/// | `MAAS_BATCH_OUTPUT_PREFIX` | batch-predict: outputs and manifests go under it; events for its keys are ignored | `batch/output/` |
/// | `MAAS_BATCH_SIZE` | batch-predict: rows per inference (powers of two suit the engine's per-shape plans) | 256 |
/// | `MAAS_BATCH_MAX_ELEMENTS` | batch-predict: input elements per inference; wider rows make mini-batches of fewer rows (a power of two), so memory does not grow with a row's width | 65536 |
/// | `MAAS_BATCH_MAX_FAILED_RATIO` | batch-predict: the job stops when more than this fraction of the rows read so far failed (1 never stops) | 0.5 |
/// | `MAAS_BATCH_DEADLINE_MARGIN_MS` | batch-predict: time kept before the invocation's deadline to abort cleanly | 10000 |
/// | `MAAS_BATCH_MAX_INLINE_RESULT_BYTES` | batch-predict: largest Step Functions answer returned inline; larger ones are written to the store | 250000 |
/// | `MAAS_MALLOC_ARENAS` | glibc malloc arenas (`mallopt(M_ARENA_MAX)`): fewer arenas hold less freed memory; 0 keeps glibc's default (8 per core) | 2, or glibc's default with several engine threads; batch-predict 1 |
///
/// The S3 endpoint, region and credentials come from the standard AWS variables
/// (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, `AWS_REGION`, ...); the `MAAS_S3_*` timeouts
/// and retries take the place of the SDK's own. An S3 call that still fails is a 503 with
/// `Retry-After`.
#[derive(Debug, Clone)]
pub struct Config {
    pub store: StoreLocation,
    pub s3: S3Settings,
    pub cache: CacheSettings,
    pub preload: Vec<(ModelName, VersionSpec)>,
    /// Batch sizes whose plans are built at start-up for the preloaded per-shape models.
    pub preload_batches: Vec<usize>,
    pub requests: RequestLimits,
    pub max_response_bytes: u64,
    pub publish: PublishLimits,
    pub presign_expiry: Duration,
    /// 0: glibc's default; `None`: the function's (see [`crate::function::runtime`]).
    pub malloc_arenas: Option<usize>,
    pub batch: BatchSettings,
}

/// A configuration variable has a value that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{variable}: {problem}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

/// Where the model store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    S3 { bucket: String, prefix: String },
    Local(PathBuf),
    Memory,
}

impl FromStr for StoreLocation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!("{s:?} names no bucket"));
            }
            Ok(StoreLocation::S3 { bucket: bucket.to_owned(), prefix: prefix.to_owned() })
        } else if s == "memory://" {
            Ok(StoreLocation::Memory)
        } else if let Some(path) = s.strip_prefix("file://") {
            Ok(StoreLocation::Local(PathBuf::from(path)))
        } else if s.is_empty() || s.contains("://") {
            Err(format!("{s:?} is not s3://bucket[/prefix], file:///dir, a directory or memory://"))
        } else {
            Ok(StoreLocation::Local(PathBuf::from(s)))
        }
    }
}

impl StoreLocation {
    /// Opens the store. S3 clients are built from the standard AWS environment and `s3`.
    pub async fn open(&self, s3: &S3Settings) -> SharedStore {
        match self {
            StoreLocation::S3 { bucket, prefix } => {
                Arc::new(S3Store::connect(bucket, prefix, s3).await)
            }
            StoreLocation::Local(dir) => Arc::new(LocalStore::new(dir)),
            StoreLocation::Memory => Arc::new(MemoryStore::new()),
        }
    }
}

const GIB: u64 = 1 << 30;

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads configuration through `lookup`, so tests can pass their own variables.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let store = lookup("MAAS_STORE")
            .ok_or_else(|| ConfigError { variable: "MAAS_STORE", problem: "not set".into() })?;
        let store =
            store.parse().map_err(|problem| ConfigError { variable: "MAAS_STORE", problem })?;
        let lambda_memory_mib =
            lookup("AWS_LAMBDA_FUNCTION_MEMORY_SIZE").and_then(|v| v.parse::<u64>().ok());
        let default_memory = lambda_memory_mib.map_or(GIB, |mib| mib * (1 << 20) / 2);
        let defaults = engine::Settings::default();
        let requests = RequestLimits::default();
        let engine = engine::Settings {
            max_tensor_bytes: parse_or(
                &lookup,
                "MAAS_MAX_TENSOR_BYTES",
                defaults.max_tensor_bytes,
            )?,
            memory_bytes: parse_or(
                &lookup,
                "MAAS_ENGINE_MEMORY_BYTES",
                lambda_memory_mib.map_or(defaults.memory_bytes, |mib| mib * (1 << 20) / 4),
            )?,
            threads: parse_or(&lookup, "MAAS_ENGINE_THREADS", available_cpus())?.max(1),
            shape_plans: parse_or(&lookup, "MAAS_SHAPE_PLANS", defaults.shape_plans)?.max(1),
            min_share_micros: parse_or(
                &lookup,
                "MAAS_ENGINE_MIN_SHARE_MICROS",
                defaults.min_share_micros,
            )?,
            row_by_row_micros: parse_or(
                &lookup,
                "MAAS_ENGINE_ROW_BY_ROW_MICROS",
                defaults.row_by_row_micros,
            )?,
            plans_behind: parse_or(&lookup, "MAAS_PLANS_BEHIND", defaults.plans_behind)?,
        };
        let requests = RequestLimits {
            max_request_bytes: parse_or(
                &lookup,
                "MAAS_MAX_REQUEST_BYTES",
                requests.max_request_bytes,
            )?,
            max_batch: parse_or(&lookup, "MAAS_MAX_BATCH", requests.max_batch)?,
            max_elements: parse_or(&lookup, "MAAS_MAX_ELEMENTS", requests.max_elements)?,
        };
        Ok(Config {
            store,
            s3: s3_settings(&lookup)?,
            cache: CacheSettings {
                memory_bytes: parse_or(&lookup, "MAAS_MEMORY_CACHE_BYTES", default_memory)?,
                disk_dir: lookup("MAAS_CACHE_DIR")
                    .map_or_else(|| PathBuf::from("/tmp/maas-cache"), PathBuf::from),
                disk_bytes: parse_or(&lookup, "MAAS_DISK_CACHE_BYTES", 384 << 20)?,
                resolve_ttl: Duration::from_secs(parse_or(
                    &lookup,
                    "MAAS_RESOLVE_TTL_SECONDS",
                    30,
                )?),
                fetch: fetch_settings(&lookup)?,
                engine,
            },
            preload: parse_preload(lookup("MAAS_PRELOAD").as_deref().unwrap_or(""))?,
            preload_batches: parse_batches(
                lookup("MAAS_PRELOAD_BATCHES").as_deref().unwrap_or(""),
                requests.max_batch,
            )?,
            requests,
            max_response_bytes: parse_or(&lookup, "MAAS_MAX_RESPONSE_BYTES", 6 << 20)?,
            publish: PublishLimits {
                max_model_bytes: parse_or(&lookup, "MAAS_MAX_MODEL_BYTES", 512 << 20)?,
                engine,
            },
            presign_expiry: Duration::from_secs(parse_or(
                &lookup,
                "MAAS_PRESIGN_EXPIRY_SECONDS",
                900,
            )?),
            malloc_arenas: parse_set(&lookup, "MAAS_MALLOC_ARENAS")?,
            batch: batch_settings(&lookup)?,
        })
    }
}

fn s3_settings(lookup: &impl Fn(&str) -> Option<String>) -> Result<S3Settings, ConfigError> {
    let default = S3Settings::default();
    let millis = |variable: &'static str, default: Duration| -> Result<Duration, ConfigError> {
        let ms =
            parse_or(lookup, variable, u64::try_from(default.as_millis()).unwrap_or(u64::MAX))?;
        if ms == 0 {
            return Err(ConfigError { variable, problem: "must be at least 1".into() });
        }
        Ok(Duration::from_millis(ms))
    };
    let max_attempts: u32 = parse_or(lookup, "MAAS_S3_MAX_ATTEMPTS", default.max_attempts)?;
    if max_attempts == 0 {
        return Err(ConfigError {
            variable: "MAAS_S3_MAX_ATTEMPTS",
            problem: "must be at least 1".into(),
        });
    }
    Ok(S3Settings {
        force_path_style: parse_or(lookup, "MAAS_S3_FORCE_PATH_STYLE", default.force_path_style)?,
        connect_timeout: millis("MAAS_S3_CONNECT_TIMEOUT_MS", default.connect_timeout)?,
        attempt_timeout: millis("MAAS_S3_ATTEMPT_TIMEOUT_MS", default.attempt_timeout)?,
        operation_timeout: millis("MAAS_S3_OPERATION_TIMEOUT_MS", default.operation_timeout)?,
        body_idle_timeout: millis("MAAS_S3_BODY_IDLE_TIMEOUT_MS", default.body_idle_timeout)?,
        max_attempts,
        retry_mode: parse_or(lookup, "MAAS_S3_RETRY_MODE", default.retry_mode)?,
        initial_backoff: millis("MAAS_S3_INITIAL_BACKOFF_MS", default.initial_backoff)?,
        max_backoff: millis("MAAS_S3_MAX_BACKOFF_MS", default.max_backoff)?,
    })
}

fn fetch_settings(lookup: &impl Fn(&str) -> Option<String>) -> Result<FetchSettings, ConfigError> {
    let default = FetchSettings::default();
    let at_least_one = |variable: &'static str, value: u64| {
        if value == 0 {
            return Err(ConfigError { variable, problem: "must be at least 1".into() });
        }
        Ok(value)
    };
    let part_bytes = parse_or(lookup, "MAAS_FETCH_PART_BYTES", default.part_bytes)?;
    let parallelism = parse_or(lookup, "MAAS_FETCH_PARALLELISM", default.parallelism as u64)?;
    let attempts = parse_or(lookup, "MAAS_FETCH_PART_ATTEMPTS", u64::from(default.part_attempts))?;
    let decode = parse_or(lookup, "MAAS_FETCH_DECODE", default.decode)?;
    Ok(FetchSettings {
        part_bytes: at_least_one("MAAS_FETCH_PART_BYTES", part_bytes)?,
        parallelism: usize::try_from(at_least_one("MAAS_FETCH_PARALLELISM", parallelism)?)
            .unwrap_or(usize::MAX),
        part_attempts: u32::try_from(at_least_one("MAAS_FETCH_PART_ATTEMPTS", attempts)?)
            .unwrap_or(u32::MAX),
        decode,
    })
}

fn batch_settings(lookup: &impl Fn(&str) -> Option<String>) -> Result<BatchSettings, ConfigError> {
    let default = BatchSettings::default();
    let prefix = |variable, default: &str| folder(&lookup(variable).unwrap_or(default.to_owned()));
    let settings = BatchSettings {
        input_prefix: prefix("MAAS_BATCH_INPUT_PREFIX", &default.input_prefix),
        output_prefix: prefix("MAAS_BATCH_OUTPUT_PREFIX", &default.output_prefix),
        batch_size: parse_or(lookup, "MAAS_BATCH_SIZE", default.batch_size)?.max(1),
        max_elements: parse_or(lookup, "MAAS_BATCH_MAX_ELEMENTS", default.max_elements)?.max(1),
        max_failed_ratio: parse_or(
            lookup,
            "MAAS_BATCH_MAX_FAILED_RATIO",
            default.max_failed_ratio,
        )?,
        deadline_margin: Duration::from_millis(parse_or(
            lookup,
            "MAAS_BATCH_DEADLINE_MARGIN_MS",
            10_000,
        )?),
        max_inline_result_bytes: parse_or(
            lookup,
            "MAAS_BATCH_MAX_INLINE_RESULT_BYTES",
            default.max_inline_result_bytes,
        )?,
    };
    let (input, output) = (&settings.input_prefix, &settings.output_prefix);
    if input.starts_with(output.as_str()) || output.starts_with(input.as_str()) {
        return Err(ConfigError {
            variable: "MAAS_BATCH_OUTPUT_PREFIX",
            problem: format!(
                "{output:?} and the input prefix {input:?} must not contain each other"
            ),
        });
    }
    Ok(settings)
}

/// The CPUs this process may use (cgroup limits included); Lambda gives 1 per 1769 MB.
fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn parse_or<T: FromStr>(
    lookup: &impl Fn(&str) -> Option<String>,
    variable: &'static str,
    default: T,
) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    Ok(parse_set(lookup, variable)?.unwrap_or(default))
}

/// `variable`'s value, `None` when it is not set.
fn parse_set<T: FromStr>(
    lookup: &impl Fn(&str) -> Option<String>,
    variable: &'static str,
) -> Result<Option<T>, ConfigError>
where
    T::Err: std::fmt::Display,
{
    lookup(variable)
        .map(|value| {
            value
                .trim()
                .parse()
                .map_err(|e| ConfigError { variable, problem: format!("{value:?}: {e}") })
        })
        .transpose()
}

/// Batch sizes to plan for at start-up: each one a request may have (up to `max_batch`).
fn parse_batches(list: &str, max_batch: usize) -> Result<Vec<usize>, ConfigError> {
    list.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| match item.parse::<usize>() {
            Ok(rows) if (1..=max_batch).contains(&rows) => Ok(rows),
            _ => Err(ConfigError {
                variable: "MAAS_PRELOAD_BATCHES",
                problem: format!(
                    "`{item}` is not a batch size from 1 to {max_batch} (MAAS_MAX_BATCH)"
                ),
            }),
        })
        .collect()
}

fn parse_preload(list: &str) -> Result<Vec<(ModelName, VersionSpec)>, ConfigError> {
    list.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            let (name, version) = item.split_once(':').unwrap_or((item, "latest"));
            let problem =
                |e: crate::Error| ConfigError { variable: "MAAS_PRELOAD", problem: e.to_string() };
            Ok((name.parse().map_err(problem)?, version.parse().map_err(problem)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> =
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn store_locations_parse() {
        assert_eq!(
            "s3://bucket/some/prefix".parse::<StoreLocation>().unwrap(),
            StoreLocation::S3 { bucket: "bucket".into(), prefix: "some/prefix".into() }
        );
        assert_eq!(
            "s3://bucket".parse::<StoreLocation>().unwrap(),
            StoreLocation::S3 { bucket: "bucket".into(), prefix: String::new() }
        );
        assert_eq!(
            "file:///srv/models".parse::<StoreLocation>().unwrap(),
            StoreLocation::Local("/srv/models".into())
        );
        assert_eq!(
            "./models".parse::<StoreLocation>().unwrap(),
            StoreLocation::Local("./models".into())
        );
        assert!("s3://".parse::<StoreLocation>().is_err());
        assert!("gs://bucket".parse::<StoreLocation>().is_err());
    }

    #[test]
    fn defaults_and_overrides() {
        let c = config(&[("MAAS_STORE", "memory://")]).unwrap();
        assert_eq!(c.cache.memory_bytes, GIB);
        assert_eq!(c.requests, RequestLimits::default());
        assert_eq!(c.max_response_bytes, 6 << 20);
        assert_eq!(c.malloc_arenas, None);
        assert!(c.preload.is_empty());
        assert_eq!((c.batch.batch_size, c.batch.max_elements), (256, 65_536));
        let c = config(&[
            ("MAAS_STORE", "memory://"),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "2048"),
            ("MAAS_PRELOAD", "iris, mlp:3"),
            ("MAAS_PRELOAD_BATCHES", "1, 8"),
            ("MAAS_S3_FORCE_PATH_STYLE", "true"),
            ("MAAS_MALLOC_ARENAS", "0"),
            ("MAAS_BATCH_SIZE", "64"),
            ("MAAS_BATCH_MAX_ELEMENTS", "0"),
        ])
        .unwrap();
        assert_eq!(c.cache.memory_bytes, GIB);
        assert_eq!(c.malloc_arenas, Some(0));
        assert_eq!((c.batch.batch_size, c.batch.max_elements), (64, 1));
        assert!(c.s3.force_path_style);
        assert_eq!(c.preload.len(), 2);
        assert_eq!(c.preload[0].1, VersionSpec::Latest);
        assert_eq!(c.preload_batches, [1, 8]);
    }

    #[test]
    fn engine_settings_reach_both_the_cache_and_publishing() {
        let c = config(&[("MAAS_STORE", "memory://")]).unwrap();
        assert_eq!(c.cache.engine.shape_plans, 8);
        assert!(c.cache.engine.threads >= 1);
        assert!(c.cache.engine.plans_behind);
        let c = config(&[
            ("MAAS_STORE", "memory://"),
            ("MAAS_ENGINE_THREADS", "3"),
            ("MAAS_SHAPE_PLANS", "0"),
            ("MAAS_PLANS_BEHIND", "false"),
        ])
        .unwrap();
        assert_eq!((c.cache.engine.threads, c.cache.engine.shape_plans), (3, 1));
        assert!(!c.cache.engine.plans_behind);
        assert_eq!(c.publish.engine, c.cache.engine);
    }

    #[test]
    fn bad_values_name_their_variable() {
        assert_eq!(config(&[]).unwrap_err().variable, "MAAS_STORE");
        let err =
            config(&[("MAAS_STORE", "memory://"), ("MAAS_DISK_CACHE_BYTES", "lots")]).unwrap_err();
        assert_eq!(err.variable, "MAAS_DISK_CACHE_BYTES");
        let err = config(&[("MAAS_STORE", "memory://"), ("MAAS_PRELOAD", "../etc")]).unwrap_err();
        assert_eq!(err.variable, "MAAS_PRELOAD");
        let err =
            config(&[("MAAS_STORE", "memory://"), ("MAAS_PRELOAD_BATCHES", "8,0")]).unwrap_err();
        assert_eq!(err.variable, "MAAS_PRELOAD_BATCHES");
        // A batch no request may have is refused, by the configured bound.
        let over =
            [("MAAS_STORE", "memory://"), ("MAAS_MAX_BATCH", "16"), ("MAAS_PRELOAD_BATCHES", "32")];
        let err = config(&over).unwrap_err();
        assert_eq!(err.variable, "MAAS_PRELOAD_BATCHES");
        assert!(err.problem.contains("from 1 to 16"), "{}", err.problem);
        let within = [
            ("MAAS_STORE", "memory://"),
            ("MAAS_MAX_BATCH", "8192"),
            ("MAAS_PRELOAD_BATCHES", "8192"),
        ];
        assert_eq!(config(&within).unwrap().preload_batches, [8192]);
    }

    #[test]
    fn s3_timeouts_and_retries_default_for_lambda_and_can_be_set() {
        let c = config(&[("MAAS_STORE", "memory://")]).unwrap();
        assert_eq!(c.s3, S3Settings::default());
        assert_eq!(c.s3.operation_timeout, Duration::from_secs(15));
        let c = config(&[
            ("MAAS_STORE", "memory://"),
            ("MAAS_S3_CONNECT_TIMEOUT_MS", "250"),
            ("MAAS_S3_ATTEMPT_TIMEOUT_MS", "700"),
            ("MAAS_S3_OPERATION_TIMEOUT_MS", "2000"),
            ("MAAS_S3_BODY_IDLE_TIMEOUT_MS", "300"),
            ("MAAS_S3_MAX_ATTEMPTS", "5"),
            ("MAAS_S3_RETRY_MODE", "adaptive"),
            ("MAAS_S3_INITIAL_BACKOFF_MS", "10"),
            ("MAAS_S3_MAX_BACKOFF_MS", "90"),
        ])
        .unwrap();
        assert_eq!(c.s3.connect_timeout, Duration::from_millis(250));
        assert_eq!(c.s3.attempt_timeout, Duration::from_millis(700));
        assert_eq!(c.s3.operation_timeout, Duration::from_secs(2));
        assert_eq!(c.s3.body_idle_timeout, Duration::from_millis(300));
        assert_eq!(c.s3.max_attempts, 5);
        assert_eq!(c.s3.retry_mode, aws_sdk_s3::config::retry::RetryMode::Adaptive);
        assert_eq!(c.s3.initial_backoff, Duration::from_millis(10));
        assert_eq!(c.s3.max_backoff, Duration::from_millis(90));
    }

    #[test]
    fn fetch_parts_default_for_lambda_and_can_be_set() {
        let c = config(&[("MAAS_STORE", "memory://")]).unwrap();
        assert_eq!(c.cache.fetch, FetchSettings::default());
        assert_eq!(c.cache.fetch.part_bytes, 8 << 20);
        let c = config(&[
            ("MAAS_STORE", "memory://"),
            ("MAAS_FETCH_PART_BYTES", "1048576"),
            ("MAAS_FETCH_PARALLELISM", "16"),
            ("MAAS_FETCH_PART_ATTEMPTS", "2"),
            ("MAAS_FETCH_DECODE", "false"),
        ])
        .unwrap();
        let want =
            FetchSettings { part_bytes: 1 << 20, parallelism: 16, part_attempts: 2, decode: false };
        assert_eq!(c.cache.fetch, want);
        for variable in
            ["MAAS_FETCH_PART_BYTES", "MAAS_FETCH_PARALLELISM", "MAAS_FETCH_PART_ATTEMPTS"]
        {
            let err = config(&[("MAAS_STORE", "memory://"), (variable, "0")]).unwrap_err();
            assert_eq!(err.variable, variable);
        }
    }

    #[test]
    fn unusable_s3_settings_name_their_variable() {
        for (variable, value) in [
            ("MAAS_S3_ATTEMPT_TIMEOUT_MS", "0"),
            ("MAAS_S3_OPERATION_TIMEOUT_MS", "soon"),
            ("MAAS_S3_MAX_ATTEMPTS", "0"),
            ("MAAS_S3_RETRY_MODE", "eager"),
        ] {
            let err = config(&[("MAAS_STORE", "memory://"), (variable, value)]).unwrap_err();
            assert_eq!(err.variable, variable, "{value}");
        }
    }
}
