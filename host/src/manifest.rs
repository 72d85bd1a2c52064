//! `workhost.toml`: the data directory, host settings and one table per
//! handler, turned into a [`HostConfig`]. Paths are relative to the
//! manifest; unknown keys are refused by name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config_values::{ConfigValue, check_config};
use crate::host::{HandlerConfig, HostConfig, check_handler_name};
use crate::units::{parse_duration, parse_size};

/// The manifest could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read the manifest {path:?}: {source}; create it, or load another manifest")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key or a value of the wrong type.
    #[error("manifest {path:?}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (it names the key and line).
        message: String,
    },
    /// A value is out of range or refers to something missing.
    #[error("manifest {path:?}: {key}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key, dotted (`handlers.echo.timeout`).
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// A duration in the manifest, read as it is deserialized
/// ([`parse_duration`]: `500ms`, `1h30m`, `2 days`), so a value that is
/// not one is an error at its line and column.
#[derive(Debug, Clone, Copy)]
struct Dur(Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map(Dur).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    data_dir: Option<String>,
    database: Option<SecretFile>,
    database_listen: Option<SecretFile>,
    cache_dir: Option<String>,
    cache_max_size: Option<String>,
    max_concurrency: Option<usize>,
    memory_budget: Option<String>,
    min_periodic_interval: Option<Dur>,
    min_flex: Option<Dur>,
    retention: Option<Dur>,
    shutdown_grace: Option<Dur>,
    host_lease: Option<Dur>,
    #[serde(default)]
    handlers: BTreeMap<String, HandlerFile>,
    device: Option<DeviceFile>,
    #[serde(default)]
    schedules: Vec<ScheduleFile>,
    http: Option<HttpFile>,
}

/// `[http]`: the operations listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    listen: String,
    #[serde(default)]
    tokens: Vec<HttpTokenFile>,
}

/// `[[http.tokens]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpTokenFile {
    name: String,
    token: SecretFile,
    access: String,
}

/// Shortest token accepted: 16 characters leave no room for guessing.
pub const MIN_TOKEN_CHARS: usize = 16;

/// `[[schedules]]`: a cron schedule the deployment declares.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleFile {
    name: String,
    handler: String,
    cron: String,
    tz: Option<String>,
    task: Option<String>,
    #[serde(default)]
    input: toml::Table,
    catch_up: Option<String>,
    catch_up_max: Option<u32>,
    priority: Option<u8>,
}

/// `[device]`: overrides of what the machine reports, and thresholds.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceFile {
    read_machine: Option<bool>,
    refresh: Option<Dur>,
    charging: Option<bool>,
    battery_low: Option<bool>,
    connected: Option<bool>,
    metered: Option<bool>,
    roaming: Option<bool>,
    temporarily_unmetered: Option<bool>,
    storage_low: Option<bool>,
    idle: Option<bool>,
    battery_low_percent: Option<u8>,
    storage_low_bytes: Option<String>,
    idle_load_per_cpu: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HandlerFile {
    component: String,
    concurrency: Option<usize>,
    timeout: Option<Dur>,
    processing_timeout: Option<Dur>,
    fuel: Option<Fuel>,
    max_memory: Option<String>,
    #[serde(default)]
    allowed_hosts: Vec<String>,
    data_dir: Option<bool>,
    max_http_requests: Option<u32>,
    max_http_response_bytes: Option<String>,
    http_timeout: Option<Dur>,
    data_quota: Option<String>,
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    secrets: BTreeMap<String, SecretFile>,
    config_env: Option<bool>,
    rate: Option<String>,
    expedited_quota: Option<String>,
}

/// A secret: the value itself, or `{ env = "NAME" }` to read it from the
/// host's environment when the manifest is loaded.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a secret: a string, or { env = \"VARIABLE\" } to read it from the environment"
)]
enum SecretFile {
    Literal(String),
    FromEnv(EnvRef),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvRef {
    env: String,
}

#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "fuel: true, false or a budget (a whole number of units)")]
enum Fuel {
    Metered(bool),
    Budget(u64),
}

/// Reads the manifest at `path` into a host configuration; `data_dir`
/// overrides the manifest's `data_dir`.
pub fn load_manifest(path: &Path, data_dir: Option<&Path>) -> Result<HostConfig, ManifestError> {
    load_manifest_for(path, data_dir, ManifestUse::Serve)
}

/// What a manifest is loaded for, and so what it must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestUse {
    /// Running handlers: every component file must exist and every secret
    /// read from the environment must be set.
    Serve,
    /// Working on the store only (`enqueue`, `list`, `inspect`, `status`,
    /// `cancel`, `pause`, `resume`, `prune`): the handler names, the data
    /// directory and the scheduling settings. A missing component file or
    /// an unset secret variable does not stop it; secrets read from the
    /// environment are left out of the result.
    Store,
}

/// [`load_manifest`] for a use: see [`ManifestUse`].
pub fn load_manifest_for(
    path: &Path,
    data_dir: Option<&Path>,
    usage: ManifestUse,
) -> Result<HostConfig, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_manifest_for(&text, path, data_dir, usage)
}

/// Parses manifest text; `path` locates relative paths and names the file
/// in errors.
pub fn parse_manifest(text: &str, path: &Path, data_dir: Option<&Path>) -> Result<HostConfig, ManifestError> {
    parse_manifest_for(text, path, data_dir, ManifestUse::Serve)
}

/// [`parse_manifest`] for a use: see [`ManifestUse`].
pub fn parse_manifest_for(
    text: &str,
    path: &Path,
    data_dir: Option<&Path>,
    usage: ManifestUse,
) -> Result<HostConfig, ManifestError> {
    let file: File = toml::from_str(text).map_err(|e| ManifestError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim().to_string(),
    })?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let invalid = |key: String, message: String| ManifestError::Invalid {
        path: path.to_path_buf(),
        key,
        message,
    };
    // Every duration of the manifest has an upper bound (see README,
    // "Budgets and defaults"), checked here so nothing inside wraps.
    let duration = |key: &str, value: &Option<Dur>, max: Duration| -> Result<Option<Duration>, ManifestError> {
        match value.map(|d| d.0) {
            Some(d) if d > max => Err(invalid(
                key.to_string(),
                format!(
                    "{} is longer than the limit of {}",
                    crate::units::format_duration(d),
                    crate::units::format_duration(max)
                ),
            )),
            d => Ok(d),
        }
    };
    let count = |key: &str, n: u64, max: u64| -> Result<(), ManifestError> {
        if n > max {
            Err(invalid(key.to_string(), format!("{n} is over the limit of {max}")))
        } else {
            Ok(())
        }
    };
    use crate::work::limits::{MAX_DURATION, MAX_FUEL, MAX_MEMORY_BYTES, MAX_TIMEOUT};
    const HOUR: Duration = Duration::from_secs(3600);
    /// Most runs at once, of a host or of one handler.
    const MAX_RUNS: u64 = 10_000;
    let data_dir = match data_dir {
        Some(d) => d.to_path_buf(),
        None => base.join(file.data_dir.as_deref().unwrap_or("workhost-data")),
    };
    let mut config = HostConfig::new(data_dir);
    config.database = database_url(file.database).map_err(|m| invalid("database".into(), m))?;
    config.database_listen = database_url(file.database_listen).map_err(|m| invalid("database_listen".into(), m))?;
    if config.database_listen.is_some() && config.database.is_none() {
        return Err(invalid(
            "database_listen".into(),
            "it names where a PostgreSQL store listens; set `database` too (the SQLite store has no listener)".into(),
        ));
    }
    if let Some(cache) = &file.cache_dir {
        config.engine.cache_dir = Some(base.join(cache));
    }
    if let Some(size) = &file.cache_max_size {
        config.engine.cache_max_bytes =
            parse_size(size).map_err(|e| invalid("cache_max_size".into(), e.to_string()))?;
    }
    if let Some(b) = &file.memory_budget {
        config.memory_budget = parse_size(b).map_err(|e| invalid("memory_budget".into(), e.to_string()))?;
        if config.memory_budget == 0 {
            return Err(invalid("memory_budget".into(), "must be more than 0".into()));
        }
    }
    if let Some(n) = file.max_concurrency {
        if n == 0 {
            return Err(invalid("max_concurrency".into(), "must be at least 1".into()));
        }
        count("max_concurrency", n as u64, MAX_RUNS)?;
        config.max_concurrency = n;
    }
    if let Some(d) = duration("min_periodic_interval", &file.min_periodic_interval, MAX_DURATION)? {
        config.periodic_floor.min_frequency = d;
    }
    if let Some(d) = duration("min_flex", &file.min_flex, MAX_DURATION)? {
        config.periodic_floor.min_flex = d;
    }
    if let Some(d) = duration("retention", &file.retention, MAX_DURATION)? {
        config.retention = d;
    }
    if let Some(d) = duration("shutdown_grace", &file.shutdown_grace, HOUR)? {
        config.shutdown_grace = d;
    }
    if let Some(d) = duration("host_lease", &file.host_lease, HOUR)? {
        if d < Duration::from_secs(1) {
            return Err(invalid("host_lease".into(), "must be at least 1s".into()));
        }
        config.host_lease = d;
    }
    if let Some(d) = &file.device {
        let c = &mut config.device;
        if let Some(v) = d.read_machine {
            c.read_machine = v;
        }
        if let Some(r) = duration("device.refresh", &d.refresh, HOUR)? {
            c.refresh = r;
        }
        c.overrides = crate::device::DeviceOverrides {
            charging: d.charging,
            battery_low: d.battery_low,
            connected: d.connected,
            metered: d.metered,
            roaming: d.roaming,
            temporarily_unmetered: d.temporarily_unmetered,
            storage_low: d.storage_low,
            idle: d.idle,
        };
        if let Some(p) = d.battery_low_percent {
            c.thresholds.battery_low_percent = p;
        }
        if let Some(b) = &d.storage_low_bytes {
            c.thresholds.storage_low_bytes =
                parse_size(b).map_err(|e| invalid("device.storage_low_bytes".into(), e.to_string()))?;
        }
        if let Some(l) = d.idle_load_per_cpu {
            c.thresholds.idle_load_per_cpu = l;
        }
    }
    for (name, h) in file.handlers {
        check_handler_name(&name).map_err(|e| invalid("handlers".into(), format!("{e}; rename the table")))?;
        let key = |k: &str| format!("handlers.{name}.{k}");
        let component = base.join(&h.component);
        if usage == ManifestUse::Serve && !component.is_file() {
            return Err(invalid(
                key("component"),
                format!("{component:?} is not a file; build the component, or correct the path"),
            ));
        }
        let mut hc = HandlerConfig::new(name.clone(), component);
        if let Some(n) = h.concurrency {
            if n == 0 {
                return Err(invalid(key("concurrency"), "must be at least 1".into()));
            }
            count(&key("concurrency"), n as u64, MAX_RUNS)?;
            hc.concurrency = n;
        }
        if let Some(d) = duration(&key("timeout"), &h.timeout, MAX_TIMEOUT)? {
            hc.budget.timeout = d;
        }
        if let Some(d) = duration(&key("processing_timeout"), &h.processing_timeout, MAX_TIMEOUT)? {
            hc.processing_budget.timeout = d;
        }
        match h.fuel {
            Some(Fuel::Metered(false)) => {
                hc.fuel = false;
                hc.budget.fuel = None;
                hc.processing_budget.fuel = None;
            }
            Some(Fuel::Metered(true)) | None => {}
            Some(Fuel::Budget(n)) => {
                count(&key("fuel"), n, MAX_FUEL)?;
                hc.budget.fuel = Some(n);
                hc.processing_budget.fuel = Some(n);
            }
        }
        if let Some(m) = &h.max_memory {
            let bytes = parse_size(m).map_err(|e| invalid(key("max_memory"), e.to_string()))?;
            count(&key("max_memory"), bytes, MAX_MEMORY_BYTES)?;
            hc.budget.max_memory_bytes = bytes;
            hc.processing_budget.max_memory_bytes = bytes;
        }
        let mut grants = crate::grants::Grants::default();
        for origin in &h.allowed_hosts {
            grants.allowed_hosts.push(
                crate::grants::AllowedOrigin::parse(origin)
                    .map_err(|e| invalid(key("allowed_hosts"), e.to_string()))?,
            );
        }
        if let Some(n) = h.max_http_requests {
            count(&key("max_http_requests"), u64::from(n), 100_000)?;
            grants.http.max_requests = n;
        }
        if let Some(b) = &h.max_http_response_bytes {
            grants.http.max_response_bytes =
                parse_size(b).map_err(|e| invalid(key("max_http_response_bytes"), e.to_string()))?;
        }
        if let Some(t) = duration(&key("http_timeout"), &h.http_timeout, HOUR)? {
            grants.http.request_timeout = t;
        }
        if h.data_dir == Some(true) {
            grants.data_dir = Some(config.data_dir.join("handlers").join(&name));
        }
        if let Some(q) = &h.data_quota {
            grants.data_quota_bytes = parse_size(q).map_err(|e| invalid(key("data_quota"), e.to_string()))?;
        }
        for (k, v) in h.config {
            let value = ConfigValue::plain(v);
            check_config(&k, &value).map_err(|e| invalid(key(&format!("config.{k}")), e.to_string()))?;
            grants.config.insert(k, value);
        }
        for (k, v) in h.secrets {
            let at = key(&format!("secrets.{k}"));
            let value = match v {
                SecretFile::Literal(v) => v,
                // Store commands run no handler: the secret is not needed.
                SecretFile::FromEnv(_) if usage == ManifestUse::Store => continue,
                SecretFile::FromEnv(EnvRef { env }) => std::env::var(&env).map_err(|_| {
                    invalid(
                        at.clone(),
                        format!("the environment variable {env:?} is not set (or not UTF-8)"),
                    )
                })?,
            };
            let value = ConfigValue::secret(value);
            check_config(&k, &value).map_err(|e| invalid(at.clone(), e.to_string()))?;
            if grants.config.contains_key(&k) {
                return Err(invalid(
                    at,
                    format!("{k:?} is also in handlers.{name}.config; a key is one or the other"),
                ));
            }
            grants.config.insert(k, value);
        }
        grants.config_env = h.config_env.unwrap_or(false);
        hc.grants = std::sync::Arc::new(grants);
        if let Some(r) = &h.rate {
            hc.rate = Some(crate::work::Rate::parse(r).map_err(|e| invalid(key("rate"), e.to_string()))?);
        }
        if let Some(r) = &h.expedited_quota {
            hc.expedited_quota =
                Some(crate::work::Rate::parse(r).map_err(|e| invalid(key("expedited_quota"), e.to_string()))?);
        }
        config.handlers.push(hc);
    }
    for (i, s) in file.schedules.into_iter().enumerate() {
        let key = |k: &str| format!("schedules[{i}].{k}");
        if !config.handlers.iter().any(|h| h.name == s.handler) {
            return Err(invalid(
                key("handler"),
                format!("no handler named {:?} in this manifest", s.handler),
            ));
        }
        if s.name.is_empty() || s.name.len() > crate::work::limits::MAX_NAME_BYTES {
            return Err(invalid(key("name"), "must be 1 to 256 bytes".into()));
        }
        if config.schedules.iter().any(|c| c.name == s.name) {
            return Err(invalid(key("name"), format!("{:?} names two schedules", s.name)));
        }
        let catch_up = crate::work::CatchUp::parse(s.catch_up.as_deref().unwrap_or("last"), s.catch_up_max)
            .map_err(|e| invalid(key("catch_up"), e.to_string()))?;
        let schedule = crate::work::CronSchedule::new(&s.cron, s.tz.as_deref(), catch_up).map_err(|e| {
            let k = if e.to_string().contains("time zone") {
                "tz"
            } else {
                "cron"
            };
            invalid(key(k), e.to_string())
        })?;
        let json = serde_json::to_value(&s.input).map_err(|e| invalid(key("input"), e.to_string()))?;
        let input = crate::data::Data::from_json_value(&json).map_err(|e| invalid(key("input"), e.to_string()))?;
        let priority = s.priority.unwrap_or(crate::work::DEFAULT_PRIORITY);
        if priority > crate::work::LOWEST_PRIORITY {
            return Err(invalid(
                key("priority"),
                format!("{priority} is out of range; use 0 (highest) to 9 (lowest)"),
            ));
        }
        config.schedules.push(crate::host::ScheduleConfig {
            task: s.task.unwrap_or_else(|| s.name.clone()),
            name: s.name,
            handler: s.handler,
            schedule,
            input,
            priority,
        });
    }
    if let Some(http) = file.http {
        let listen = http.listen.parse().map_err(|_| {
            invalid(
                "http.listen".into(),
                format!("{:?} is not an address and port, such as 127.0.0.1:8080", http.listen),
            )
        })?;
        let mut tokens: Vec<crate::host::HttpToken> = Vec::new();
        for (i, t) in http.tokens.into_iter().enumerate() {
            let key = |k: &str| format!("http.tokens[{i}].{k}");
            let secret = match t.token {
                SecretFile::Literal(s) => s,
                SecretFile::FromEnv(EnvRef { env }) => std::env::var(&env).map_err(|_| {
                    invalid(
                        key("token"),
                        format!("the environment variable {env:?} is not set (or not UTF-8)"),
                    )
                })?,
            };
            if secret.chars().count() < MIN_TOKEN_CHARS {
                return Err(invalid(
                    key("token"),
                    format!("a token needs at least {MIN_TOKEN_CHARS} characters"),
                ));
            }
            let write = match t.access.as_str() {
                "read" => false,
                "write" => true,
                other => {
                    return Err(invalid(
                        key("access"),
                        format!("{other:?} is not \"read\" or \"write\""),
                    ));
                }
            };
            if tokens.iter().any(|x| x.name == t.name) {
                return Err(invalid(key("name"), format!("{:?} names two tokens", t.name)));
            }
            tokens.push(crate::host::HttpToken {
                name: t.name,
                secret,
                write,
            });
        }
        config.http = Some(crate::host::HttpSettings { listen, tokens });
    }
    Ok(config)
}

/// A PostgreSQL URL of the manifest, read from the environment variable it
/// names if it names one, and checked to be a URL or a connection string;
/// the message says what is wrong.
fn database_url(value: Option<SecretFile>) -> Result<Option<String>, String> {
    let url = match value {
        None => return Ok(None),
        Some(SecretFile::Literal(url)) => url,
        Some(SecretFile::FromEnv(EnvRef { env })) => {
            std::env::var(&env).map_err(|_| format!("the environment variable {env:?} is not set (or not UTF-8)"))?
        }
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://") || url.contains('=')) {
        return Err(
            "expected a PostgreSQL URL (postgres://user@host/db) or connection string (host=... dbname=...)".into(),
        );
    }
    Ok(Some(url))
}
