//! The host side of one run: the store data ([`RunState`]) and the
//! `context`, `log` and `kv` imports of the `platform` world, plus the WASI
//! context each run gets.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::workhost::task::{config, context, kv, log, types};
use crate::budget::{RunLimiter, TaskKind};
use crate::config_values::Redactor;
use crate::data::{Data, Value};
use crate::kv::{Kv, KvError};
use crate::quota::{DataQuota, QuotaFs};
use crate::runlog::{CaptureStream, LogLevel, LogSource, SharedLog};

/// Receives a run's progress each time the handler reports it.
pub type ProgressSink = Arc<dyn Fn(&Data) + Send + Sync>;

/// The facts of the task a run belongs to, as the `context` import reports
/// them.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskFacts {
    /// The task's id.
    pub id: String,
    /// The task name passed to `execute-task`.
    pub name: String,
    /// The unique name, if the task has one.
    pub unique_name: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Kind.
    pub kind: TaskKind,
    /// Run attempt count, this run included (1 on the first attempt).
    pub attempt: u32,
}

/// Largest `wasi:random` request per call: keeps a guest from making the host
/// allocate without bound.
const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// Store data of one run.
pub(crate) struct RunState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: RunLimiter,
    log: SharedLog,
    task: Arc<TaskFacts>,
    deadline: Instant,
    kv: Kv,
    progress: Option<ProgressSink>,
    http_ctx: wasmtime_wasi_http::WasiHttpCtx,
    http_gate: crate::grants::HttpGate,
    grants: Arc<crate::grants::Grants>,
    redactor: Redactor,
    data_quota: Option<Arc<DataQuota>>,
    /// The start of the run's current progress window and the reports in
    /// it (see [`crate::progress::PROGRESS_CALLS_PER_INTERVAL`]).
    progress_window: (Instant, u32),
}

impl RunState {
    // Each argument is one part of a run's state; only `Handler::run`
    // builds a `RunState`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        limiter: RunLimiter,
        log: SharedLog,
        task: Arc<TaskFacts>,
        started: Instant,
        deadline: Instant,
        kv: Kv,
        progress: Option<ProgressSink>,
        grants: Arc<crate::grants::Grants>,
        resolver: Arc<dyn crate::outbound::Resolver>,
    ) -> Self {
        RunState {
            wasi: wasi_context(&log, &grants),
            data_quota: grants
                .data_dir
                .as_deref()
                .map(|dir| Arc::new(DataQuota::new(dir, grants.data_quota_bytes, Some(log.clone())))),
            http_gate: crate::grants::HttpGate::new(grants.clone(), resolver, log.clone()),
            redactor: log.redactor(),
            grants,
            table: ResourceTable::new(),
            limiter,
            log,
            task,
            deadline,
            kv,
            progress,
            http_ctx: wasmtime_wasi_http::WasiHttpCtx::new(),
            progress_window: (started, 0),
        }
    }
}

/// The WASI context of a run: stdout and stderr captured into the run's
/// log; no stdin, arguments or sockets; no environment unless
/// `config_env` makes the configuration the environment; the granted data
/// directory, if any, at `/data`. Outbound HTTP goes through wasi:http and
/// the run's `HttpGate`.
fn wasi_context(log: &SharedLog, grants: &crate::grants::Grants) -> WasiCtx {
    let mut b = WasiCtxBuilder::new();
    let env: Vec<(&str, &str)> = if grants.config_env {
        grants
            .config
            .iter()
            .map(|(k, v)| (k.as_str(), v.value.as_str()))
            .collect()
    } else {
        Vec::new()
    };
    if let Some(dir) = &grants.data_dir {
        let opened = std::fs::create_dir_all(dir)
            .map_err(wasmtime::Error::from)
            .and_then(|()| {
                b.preopened_dir(dir, crate::grants::GUEST_DATA_DIR, wasmtime_wasi::FsPerms::ReadWrite)
                    .map(|_| ())
            });
        if let Err(e) = opened {
            log.push(
                LogLevel::Error,
                LogSource::Host,
                format!("the data directory {dir:?} could not be opened: {e:#}"),
            );
        }
    }
    b.stdout(CaptureStream {
        log: log.clone(),
        source: LogSource::Stdout,
    })
    .stderr(CaptureStream {
        log: log.clone(),
        source: LogSource::Stderr,
    })
    .max_random_size(MAX_RANDOM_BYTES)
    .envs(&env)
    .allow_ip_name_lookup(false)
    .allow_tcp(false)
    .allow_udp(false);
    b.build()
}

impl RunState {
    /// The run's data-directory quota, if it was granted a directory.
    pub(crate) fn data_quota(&self) -> Option<Arc<DataQuota>> {
        self.data_quota.clone()
    }

    /// `wasi:filesystem/types` under the data directory's quota.
    pub(crate) fn quota_fs(&mut self) -> QuotaFs<'_> {
        let quota = self.data_quota.clone();
        QuotaFs {
            inner: wasmtime_wasi::filesystem::WasiFilesystemView::filesystem(self),
            quota,
        }
    }
}

impl WasiView for RunState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wasmtime_wasi_http::WasiHttpView for RunState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http_ctx,
            table: &mut self.table,
            hooks: &mut self.http_gate,
        }
    }
}

impl types::Host for RunState {}

impl context::Host for RunState {
    fn task_id(&mut self) -> String {
        self.task.id.clone()
    }

    fn unique_name(&mut self) -> Option<String> {
        self.task.unique_name.clone()
    }

    fn tags(&mut self) -> Vec<String> {
        self.task.tags.clone()
    }

    fn run_attempt_count(&mut self) -> u32 {
        self.task.attempt
    }

    fn kind(&mut self) -> types::TaskKind {
        match self.task.kind {
            TaskKind::OneOff => types::TaskKind::OneOff,
            TaskKind::Periodic => types::TaskKind::Periodic,
            TaskKind::Processing => types::TaskKind::Processing,
        }
    }

    fn time_left_ms(&mut self) -> u64 {
        self.deadline.saturating_duration_since(Instant::now()).as_millis() as u64
    }

    async fn set_progress(&mut self, progress: Vec<(String, types::Value)>) -> Result<(), String> {
        let data = data_from_wit(progress).map_err(|e| {
            let message = format!("progress refused: {e}");
            self.log.push(LogLevel::Warn, LogSource::Host, message.clone());
            message
        })?;
        if let Some(sink) = &self.progress {
            sink(&self.redactor.data(data));
        }
        // Reports are written at most once per interval (`progress.rs`), so
        // a run reporting faster than PROGRESS_CALLS_PER_INTERVAL per
        // interval gains nothing by it: past that, a call waits for the
        // next interval, on the run's own clock, instead of spinning on a
        // core other work needs. Below it, a call still gives the
        // runtime's thread to other work.
        let interval = crate::progress::PROGRESS_INTERVAL;
        let now = Instant::now();
        if now >= self.progress_window.0 + interval {
            self.progress_window = (now, 0);
        }
        self.progress_window.1 += 1;
        if self.progress_window.1 > crate::progress::PROGRESS_CALLS_PER_INTERVAL {
            let next = self.progress_window.0 + interval;
            tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
            self.progress_window = (next, 0);
        } else {
            tokio::task::yield_now().await;
        }
        Ok(())
    }
}

impl log::Host for RunState {
    async fn write(&mut self, level: log::Level, message: String) {
        let level = match level {
            log::Level::Trace => LogLevel::Trace,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        self.log.push(level, LogSource::Handler, message);
        // As `set-progress`: a flood of log calls shares the thread.
        tokio::task::yield_now().await;
    }
}

impl config::Host for RunState {
    fn get(&mut self, key: String) -> Option<String> {
        self.grants.config.get(&key).map(|v| v.value.clone())
    }

    fn keys(&mut self) -> Vec<String> {
        self.grants.config.keys().cloned().collect()
    }
}

impl kv::Host for RunState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, kv::KvError> {
        self.kv.get(&key).await.map_err(kv_error)
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), kv::KvError> {
        self.kv.set(&key, &value).await.map_err(kv_error)
    }

    async fn delete(&mut self, key: String) -> Result<(), kv::KvError> {
        self.kv.delete(&key).await.map_err(kv_error)
    }

    async fn increment(&mut self, key: String, delta: i64) -> Result<i64, kv::KvError> {
        self.kv.increment(&key, delta).await.map_err(kv_error)
    }
}

fn kv_error(e: KvError) -> kv::KvError {
    match e {
        KvError::ValueTooLarge(n) => kv::KvError::ValueTooLarge(n),
        KvError::InvalidKey(n) => kv::KvError::InvalidKey(n),
        KvError::TooManyKeys(n) => kv::KvError::TooManyKeys(n),
        KvError::NotAnInteger => kv::KvError::NotAnInteger,
        KvError::Overflow => kv::KvError::Overflow,
        KvError::Unavailable(m) => kv::KvError::Unavailable(m),
    }
}

/// Converts data from the guest, validating it.
pub(crate) fn data_from_wit(pairs: Vec<(String, types::Value)>) -> Result<Data, crate::data::DataError> {
    Data::from_pairs(pairs.into_iter().map(|(k, v)| {
        let v = match v {
            types::Value::S64(x) => Value::S64(x),
            types::Value::Bool(x) => Value::Bool(x),
            types::Value::F64(x) => Value::F64(x),
            types::Value::String(x) => Value::String(x),
            types::Value::S64List(x) => Value::S64List(x),
            types::Value::BoolList(x) => Value::BoolList(x),
            types::Value::F64List(x) => Value::F64List(x),
            types::Value::StringList(x) => Value::StringList(x),
        };
        (k, v)
    }))
}

/// Converts data for the guest, moving its keys and values.
pub(crate) fn data_into_wit(data: Data) -> Vec<(String, types::Value)> {
    data.into_pairs()
        .map(|(k, v)| {
            let v = match v {
                Value::S64(x) => types::Value::S64(x),
                Value::Bool(x) => types::Value::Bool(x),
                Value::F64(x) => types::Value::F64(x),
                Value::String(x) => types::Value::String(x),
                Value::S64List(x) => types::Value::S64List(x),
                Value::BoolList(x) => types::Value::BoolList(x),
                Value::F64List(x) => types::Value::F64List(x),
                Value::StringList(x) => types::Value::StringList(x),
            };
            (k, v)
        })
        .collect()
}
