//! `workhost exec`: run one component once and print what happened.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use workhost::units::{format_size, parse_duration, parse_size};
use workhost::{
    Budget, ConfigValue, Data, EngineConfig, Executor, LogSource, RunOutcome, RunRequest, TaskKind, check_config,
};

/// Arguments of `workhost exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The component (.wasm) to run.
    component: PathBuf,
    /// The task name passed to `execute-task` (default: the file's stem).
    #[arg(long = "task", value_name = "NAME")]
    task: Option<String>,
    /// An input value; typed from its text (integer, float, true/false,
    /// else string). Repeatable; applied after --input-json.
    #[arg(long = "input", value_name = "KEY=VALUE")]
    input: Vec<String>,
    /// Input data as a JSON object (lists come this way).
    #[arg(long = "input-json", value_name = "JSON")]
    input_json: Option<String>,
    /// Wall-clock budget, like 500ms, 30s, 15m (default by kind: 30s, or 10m
    /// for processing).
    #[arg(long, value_name = "DUR")]
    timeout: Option<String>,
    /// Fuel budget in units (about one per wasm instruction).
    #[arg(long, value_name = "N", conflicts_with = "no_fuel")]
    fuel: Option<u64>,
    /// Run on an engine without fuel metering (faster for CPU-heavy guests;
    /// only the wall clock bounds the run).
    #[arg(long)]
    no_fuel: bool,
    /// Largest linear memory, like 64MiB or 1GiB (default 256MiB).
    #[arg(long, value_name = "SIZE")]
    max_memory: Option<String>,
    /// The task kind the handler sees; decides the default timeout.
    #[arg(long, value_name = "KIND", default_value = "one-off", value_parser = clap::builder::PossibleValuesParser::new(workhost::TaskKind::NAMES))]
    kind: String,
    /// The run attempt count the handler sees.
    #[arg(long, value_name = "N", default_value_t = 1)]
    attempt: u32,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Where compiled components are cached (default
    /// $XDG_CACHE_HOME/workhost or ~/.cache/workhost).
    #[arg(long, value_name = "DIR", conflicts_with = "no_cache")]
    cache_dir: Option<PathBuf>,
    /// Compile the component without the cache.
    #[arg(long)]
    no_cache: bool,
    /// Let the handler send HTTP requests to this origin
    /// (scheme://host[:port], `*.` wildcards). Repeatable.
    #[arg(long = "allow-host", value_name = "ORIGIN")]
    allow_host: Vec<String>,
    /// Give the handler this host directory, read-write, at /data (created
    /// if missing).
    #[arg(long = "dir", value_name = "PATH")]
    dir: Option<PathBuf>,
    /// Most bytes the --dir directory may hold, like 10MiB (default 100MiB).
    #[arg(long = "dir-quota", value_name = "SIZE", requires = "dir")]
    dir_quota: Option<String>,
    /// A configuration value the handler reads through the `config` import.
    /// Repeatable.
    #[arg(long = "config-value", value_name = "KEY=VALUE")]
    config_value: Vec<String>,
    /// A secret the handler reads through the `config` import, taken from
    /// the host's environment variable ENV_VAR (so it is not on the command
    /// line); removed from the run's log, output and errors. Repeatable.
    #[arg(long = "secret", value_name = "KEY=ENV_VAR")]
    secret: Vec<String>,
    /// Also give the configuration to the handler as environment variables.
    #[arg(long = "config-env")]
    config_env: bool,
}

/// Runs `workhost exec`. Errors are usage or load errors (exit 2); a run
/// that fails or stops still returns `Ok` with its exit code.
pub async fn run(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let kind = TaskKind::parse(&args.kind).expect("clap checked the kind");
    let mut budget = Budget::for_kind(kind);
    if let Some(t) = &args.timeout {
        budget.timeout = parse_duration(t).context("--timeout")?;
    }
    if let Some(m) = &args.max_memory {
        budget.max_memory_bytes = parse_size(m).context("--max-memory")?;
    }
    if let Some(f) = args.fuel {
        budget.fuel = Some(f);
    }
    if args.attempt == 0 {
        bail!("--attempt counts from 1 (the first attempt)");
    }
    let input = read_input(args.input_json.as_deref(), &args.input)?;
    let allowed_hosts = args
        .allow_host
        .iter()
        .map(|o| workhost::AllowedOrigin::parse(o))
        .collect::<Result<Vec<_>, _>>()
        .context("--allow-host")?;

    let cache_dir = if args.no_cache {
        None
    } else {
        args.cache_dir.clone().or_else(EngineConfig::default_cache_dir)
    };
    let config = EngineConfig {
        fuel: !args.no_fuel,
        max_concurrent_runs: 4,
        cache_dir,
        ..EngineConfig::default()
    };
    let executor = Executor::new(config)?;
    let handler = executor
        .load_file(&args.component)
        .with_context(|| format!("cannot load {:?}", args.component))?;

    let name = args.task.clone().unwrap_or_else(|| {
        args.component
            .file_stem()
            .map_or("task".into(), |s| s.to_string_lossy().into_owned())
    });
    let mut request = RunRequest::new(name);
    request.task.kind = kind;
    request.task.attempt = args.attempt;
    request.input = input;
    request.budget = budget;
    let mut grants = workhost::Grants {
        allowed_hosts,
        data_dir: args.dir.clone(),
        config: read_config(&args.config_value, &args.secret)?,
        config_env: args.config_env,
        ..workhost::Grants::default()
    };
    if let Some(q) = &args.dir_quota {
        grants.data_quota_bytes = parse_size(q).context("--dir-quota")?;
    }
    request.grants = std::sync::Arc::new(grants);
    let outcome = handler.run(request).await;

    if args.json {
        out!("{}", outcome.to_json());
    } else {
        print_outcome(&outcome);
    }
    Ok(ExitCode::from(outcome.exit_code() as u8))
}

/// Builds the configuration from `--config-value KEY=VALUE` and `--secret
/// KEY=ENV_VAR`.
fn read_config(values: &[String], secrets: &[String]) -> anyhow::Result<BTreeMap<String, ConfigValue>> {
    let mut config = BTreeMap::new();
    for arg in values {
        let (k, v) = arg
            .split_once('=')
            .with_context(|| format!("--config-value {arg:?}: write KEY=VALUE"))?;
        let value = ConfigValue::plain(v);
        check_config(k, &value).context("--config-value")?;
        config.insert(k.to_string(), value);
    }
    for arg in secrets {
        let (k, var) = arg
            .split_once('=')
            .with_context(|| format!("--secret {arg:?}: write KEY=ENV_VAR"))?;
        let v = std::env::var(var)
            .with_context(|| format!("--secret {k}: the environment variable {var:?} is not set (or not UTF-8)"))?;
        let value = ConfigValue::secret(v);
        check_config(k, &value).context("--secret")?;
        if config.insert(k.to_string(), value).is_some() {
            bail!("--secret {k}: {k:?} is also given by --config-value");
        }
    }
    Ok(config)
}

/// Builds input data from `--input-json` and then each `--input KEY=VALUE`.
pub fn read_input(json: Option<&str>, pairs: &[String]) -> anyhow::Result<Data> {
    let mut data = match json {
        Some(text) => Data::from_json(text).context("--input-json")?,
        None => Data::new(),
    };
    for arg in pairs {
        let (key, value) = Data::parse_key_value(arg).context("--input")?;
        data.insert(key, value);
    }
    data.validate().context("input data")?;
    Ok(data)
}

fn print_outcome(outcome: &RunOutcome) {
    out!("outcome      {}", outcome.kind());
    if let Some(output) = outcome.output() {
        out!("output       {output}");
    }
    if let Some(reason) = outcome.stop_reason() {
        out!("stop reason  {reason}");
    }
    if let Some(error) = outcome.error() {
        out!("error        {error}");
    }
    out!("duration     {:.3} ms", outcome.duration.as_secs_f64() * 1000.0);
    if let Some(fuel) = outcome.fuel_consumed {
        out!("fuel         {fuel}");
    }
    out!("peak memory  {}", format_size(outcome.peak_memory_bytes));
    if outcome.log.is_empty() {
        out!("log          (empty)");
    } else {
        out!("log");
        for line in &outcome.log {
            let source = match line.source {
                LogSource::Handler => "",
                LogSource::Stdout => " stdout",
                LogSource::Stderr => " stderr",
                LogSource::Host => " host",
            };
            out!("  {:>6}ms {:?}{source}: {}", line.at_ms, line.level, line.message);
        }
    }
}
