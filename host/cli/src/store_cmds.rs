//! The commands that work on a data directory: `serve` (the daemon) and
//! `enqueue`, `list`, `inspect`, `cancel`, `retry`, `run-now`, `delete`,
//! `pause`, `resume`, `prune`, which may run while a daemon serves the same
//! directory.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use workhost::units::{format_rfc3339 as rfc3339, parse_duration};
use workhost::{
    BackoffPolicy, CatchUp, CronSchedule, ExistingWorkPolicy, Host, HostConfig, OutOfQuotaPolicy, Periodic, Query,
    Queue, Selector, TaskInfo, TaskKind, TaskState, WorkRequest,
};

/// Where the manifest and data directory are.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The manifest.
    #[arg(long = "config", value_name = "PATH", default_value = "workhost.toml", global = true)]
    config: PathBuf,
    /// The data directory (overrides the manifest's `data_dir`).
    #[arg(long = "data-dir", value_name = "DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// The PostgreSQL database of a store several hosts share, as a
    /// `postgres://` URL (overrides the manifest's `database`).
    #[arg(long = "database", value_name = "URL", global = true)]
    database: Option<String>,
    /// Where that store's LISTEN connection goes, when not to `--database`
    /// (behind PgBouncer in transaction mode: the server itself; overrides
    /// the manifest's `database_listen`).
    #[arg(long = "database-listen", value_name = "URL", global = true)]
    database_listen: Option<String>,
}

impl StoreArgs {
    fn host_config(&self) -> anyhow::Result<HostConfig> {
        let mut config = workhost::load_manifest(&self.config, self.data_dir.as_deref())?;
        self.override_database(&mut config)?;
        Ok(config)
    }

    fn override_database(&self, config: &mut HostConfig) -> anyhow::Result<()> {
        if let Some(url) = &self.database {
            config.database = Some(url.clone());
        }
        if let Some(url) = &self.database_listen {
            config.database_listen = Some(url.clone());
        }
        if config.database_listen.is_some() && config.database.is_none() {
            anyhow::bail!(
                "--database-listen names where a PostgreSQL store listens: give --database (or the manifest's `database`) too"
            );
        }
        Ok(())
    }

    /// The manifest as the commands that only work on the store need it: a
    /// missing component file or an unset secret variable does not stop them.
    fn store_config(&self) -> anyhow::Result<HostConfig> {
        let mut config =
            workhost::load_manifest_for(&self.config, self.data_dir.as_deref(), workhost::ManifestUse::Store)?;
        self.override_database(&mut config)?;
        Ok(config)
    }

    async fn queue(&self) -> anyhow::Result<Queue> {
        Ok(self.queue_and_handlers().await?.0)
    }

    /// The queue, and the names of the manifest's handlers.
    async fn queue_and_handlers(&self) -> anyhow::Result<(Queue, Vec<String>)> {
        let c = self.store_config()?;
        let names: Vec<String> = c.handlers.iter().map(|h| h.name.clone()).collect();
        let store = c.open_store().await?;
        store.set_limits(c.limits());
        Ok((
            Queue::with_store(store, names.clone(), c.periodic_floor, c.retention).with_components_in(&c.data_dir),
            names,
        ))
    }
}

/// Whether `t` waits for a handler the manifest lacks: ENQUEUED work that
/// a host serving this manifest never claims.
fn waits_for_handler(t: &TaskInfo, handlers: &[String]) -> bool {
    t.state == TaskState::Enqueued && !handlers.contains(&t.handler)
}

/// `workhost serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Print every state change as it happens.
    #[arg(long)]
    debug: bool,
    /// Serve the HTTP API, the dashboard and /metrics on this address
    /// (overrides the manifest's `[http] listen`; its tokens still apply).
    #[arg(long, value_name = "ADDR")]
    http: Option<std::net::SocketAddr>,
}

/// The listener's settings: the manifest's `[http]`, its address replaced
/// by `--http`.
fn http_config(
    config: &workhost::HostConfig,
    listen: Option<std::net::SocketAddr>,
) -> Option<workhost_http::HttpConfig> {
    let tokens = config.http.as_ref().map_or_else(Vec::new, |h| {
        h.tokens
            .iter()
            .map(|t| workhost_http::Token {
                name: t.name.clone(),
                secret: t.secret.clone(),
                access: if t.write {
                    workhost_http::Access::Write
                } else {
                    workhost_http::Access::Read
                },
            })
            .collect()
    });
    let listen = listen.or(config.http.as_ref().map(|h| h.listen))?;
    Some(workhost_http::HttpConfig { listen, tokens })
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = args.store.host_config()?;
    let http = http_config(&config, args.http);
    // Refused before the host starts, so a bad listener changes nothing.
    if let Some(h) = &http
        && h.tokens.is_empty()
        && !h.listen.ip().is_loopback()
    {
        anyhow::bail!(workhost_http::HttpError::TokenRequired(h.listen));
    }
    // Dropped last (after the host's shutdown), exporting the last spans.
    let _traces = crate::traces::install_from_env()?;
    let (handlers, dir) = (config.handlers.len(), config.data_dir.clone());
    let host = Host::start(config).await?;
    let (http_stop, http_task) = match http {
        None => (None, None),
        Some(h) => match workhost_http::HttpServer::bind(host.handle(), h).await {
            Ok(server) => {
                eprintln!("workhost: dashboard and API at http://{}/", server.local_addr());
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                let task = tokio::spawn(server.serve(async move {
                    let _ = stopped.await;
                }));
                (Some(stop), Some(task))
            }
            Err(e) => {
                host.shutdown().await;
                return Err(e.into());
            }
        },
    };
    eprintln!("workhost: serving {handlers} handlers on {}", dir.display());
    // Alerts go to stderr always: an operator learns the store is refusing
    // writes without running with --debug.
    let mut alerts = host.alerts();
    let alerter = tokio::spawn(async move {
        loop {
            match alerts.recv().await {
                Ok(a) => {
                    let task = a.task.map(|t| format!("task {t}: ")).unwrap_or_default();
                    eprintln!("workhost: warning at {}: {task}{}", rfc3339(a.at), a.message);
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    eprintln!("workhost: warning: {n} alerts dropped (too many at once)");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    });
    // Subscribing costs the dispatcher a look for other processes' enqueues
    // at each change, so only --debug subscribes.
    let printer = args.debug.then(|| {
        let mut events = host.queue().subscribe();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(e) => {
                        let detail = if e.detail.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", e.detail)
                        };
                        out!("{} task {} {}{detail}", rfc3339(e.at), e.id, e.event);
                    }
                    // A burst outran the printer: say so and go on with
                    // the newest events (never stop printing).
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        out!("workhost: {n} state changes skipped (too many at once to print)");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        })
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    // `workhost reload` finds this process by its pid file.
    let pid_file = dir.join(RELOAD_PID);
    std::fs::write(&pid_file, std::process::id().to_string())
        .with_context(|| format!("writing {}", pid_file.display()))?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = hangup.recv() => reload_on_signal(&host, &args.store, &dir).await,
        }
    }
    let _ = std::fs::remove_file(&pid_file);
    eprintln!("workhost: shutting down; running work gets its grace period");
    // The listener first: it holds a handle on the host.
    if let Some(stop) = http_stop {
        let _ = stop.send(());
    }
    if let Some(task) = http_task {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
    }
    host.shutdown().await;
    // The host is gone, so the alert stream ends once what it sent is
    // printed.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), alerter).await;
    if let Some(p) = printer {
        p.abort();
    }
    Ok(ExitCode::SUCCESS)
}

/// `workhost enqueue`.
#[derive(Debug, Args)]
pub struct EnqueueArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The handler, as named in the manifest.
    handler: String,
    /// The task name passed to `execute-task`.
    #[arg(long = "task", value_name = "NAME")]
    task: String,
    /// An input value, typed from its text. Repeatable.
    #[arg(long = "input", value_name = "KEY=VALUE")]
    input: Vec<String>,
    /// Input as a JSON object.
    #[arg(long = "input-json", value_name = "JSON")]
    input_json: Option<String>,
    /// A unique name for this work.
    #[arg(long = "unique", value_name = "NAME")]
    unique: Option<String>,
    /// What to do when the unique name is taken (default keep for one-off
    /// work, update for periodic work).
    #[arg(long, value_name = "POLICY", requires = "unique",
          value_parser = clap::builder::PossibleValuesParser::new(ExistingWorkPolicy::NAMES))]
    policy: Option<String>,
    /// A tag. Repeatable.
    #[arg(long = "tag", value_name = "T")]
    tags: Vec<String>,
    /// Initial delay.
    #[arg(long, value_name = "DUR")]
    delay: Option<String>,
    /// Make it periodic with this frequency.
    #[arg(long, value_name = "DUR", conflicts_with = "processing")]
    every: Option<String>,
    /// Make it periodic on a cron schedule: 5 fields (minute hour
    /// day-of-month month day-of-week) or 6 (seconds first), e.g.
    /// "0 9 * * MON-FRI". See docs/schedules.md.
    #[arg(long, value_name = "EXPR", conflicts_with_all = ["every", "processing"])]
    cron: Option<String>,
    /// The IANA time zone of --cron's wall-clock times (default UTC).
    #[arg(long, value_name = "ZONE", requires = "cron")]
    tz: Option<String>,
    /// What fires of --cron that no run started for in time do: none
    /// (skip them), last (run once for the latest; default) or all (run
    /// each, at most --catch-up-max).
    #[arg(long = "catch-up", value_name = "POLICY", requires = "cron",
          value_parser = clap::builder::PossibleValuesParser::new(CatchUp::NAMES))]
    catch_up: Option<String>,
    /// The most missed fires `--catch-up all` runs (default 10).
    #[arg(long = "catch-up-max", value_name = "N", requires = "catch_up")]
    catch_up_max: Option<u32>,
    /// Run first at this exact time, RFC 3339 (2026-12-01T09:00:00+01:00);
    /// a time already past runs at once, with a warning.
    #[arg(long, value_name = "TIME", conflicts_with_all = ["delay", "every", "cron"])]
    at: Option<String>,
    /// Priority within the handler: 0 (highest) to 9 (lowest); default 5.
    #[arg(long, value_name = "N")]
    priority: Option<u8>,
    /// Expedited work: taken before the handler's normal work and not held
    /// by device idle, within the handler's expedited quota.
    #[arg(long, conflicts_with_all = ["every", "cron"])]
    expedited: bool,
    /// What --expedited work does when the quota is spent: run-as-normal
    /// (default) or drop.
    #[arg(long = "out-of-quota", value_name = "POLICY", requires = "expedited",
          value_parser = clap::builder::PossibleValuesParser::new(OutOfQuotaPolicy::NAMES))]
    out_of_quota: Option<String>,
    /// Run in the last DUR of each period.
    #[arg(long, value_name = "DUR", requires = "every")]
    flex: Option<String>,
    /// Long processing work (10 min budget by default).
    #[arg(long)]
    processing: bool,
    /// Run after this task (its output is merged into this input). Repeatable.
    #[arg(long = "after", value_name = "ID")]
    after: Vec<i64>,
    /// Backoff policy.
    #[arg(long, value_name = "POLICY", value_parser = clap::builder::PossibleValuesParser::new(BackoffPolicy::NAMES))]
    backoff: Option<String>,
    /// Backoff delay (clamped to 10s..5h).
    #[arg(long = "backoff-delay", value_name = "DUR")]
    backoff_delay: Option<String>,
    /// Attempt limit.
    #[arg(long = "max-attempts", value_name = "N")]
    max_attempts: Option<u32>,
    /// Run only with this network.
    #[arg(long = "requires-network", value_name = "TYPE",
          value_parser = clap::builder::PossibleValuesParser::new(workhost::NetworkType::NAMES))]
    requires_network: Option<String>,
    /// Run only while charging.
    #[arg(long = "requires-charging")]
    requires_charging: bool,
    /// Run only while the battery is not low.
    #[arg(long = "requires-battery-not-low")]
    requires_battery_not_low: bool,
    /// Run only while the device is idle.
    #[arg(long = "requires-device-idle")]
    requires_device_idle: bool,
    /// Run only while storage is not low.
    #[arg(long = "requires-storage-not-low")]
    requires_storage_not_low: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn enqueue(a: EnqueueArgs) -> anyhow::Result<ExitCode> {
    let mut r = match &a.every {
        Some(every) => {
            let frequency = parse_duration(every).context("--every")?;
            let flex = a
                .flex
                .as_deref()
                .map(parse_duration)
                .transpose()
                .context("--flex")?
                .unwrap_or(frequency);
            let mut r = WorkRequest::periodic(&a.handler, &a.task, frequency);
            r.periodic = Some(Periodic { frequency, flex });
            r
        }
        None if a.cron.is_some() => {
            let catch_up =
                CatchUp::parse(a.catch_up.as_deref().unwrap_or("last"), a.catch_up_max).context("--catch-up")?;
            if let Some(tz) = &a.tz {
                workhost::cron::time_zone(tz)
                    .map_err(anyhow::Error::msg)
                    .context("--tz")?;
            }
            let expr = a.cron.as_deref().unwrap_or_default();
            let schedule = CronSchedule::new(expr, a.tz.as_deref(), catch_up).context("--cron")?;
            WorkRequest::cron(&a.handler, &a.task, schedule)
        }
        None if a.processing => WorkRequest::processing(&a.handler, &a.task),
        None => WorkRequest::one_off(&a.handler, &a.task),
    };
    if let Some(at) = &a.at {
        r.run_at = Some(workhost::units::parse_rfc3339(at).context("--at")?);
    }
    if let Some(p) = a.priority {
        r.priority = p;
    }
    if a.expedited {
        r.expedited = Some(
            OutOfQuotaPolicy::parse(a.out_of_quota.as_deref().unwrap_or("run-as-normal")).expect("clap checked it"),
        );
    }
    r.input = crate::exec::read_input(a.input_json.as_deref(), &a.input)?;
    if let Some(name) = &a.unique {
        let default = if r.kind == TaskKind::Periodic { "update" } else { "keep" };
        let policy =
            ExistingWorkPolicy::parse(a.policy.as_deref().unwrap_or(default)).expect("clap checked the policy");
        r.unique = Some((name.clone(), policy));
    }
    r.tags = a.tags.clone();
    if let Some(d) = &a.delay {
        r.initial_delay = parse_duration(d).context("--delay")?;
    }
    r.after = a.after.clone();
    if let Some(b) = &a.backoff {
        r.backoff = BackoffPolicy::parse(b).expect("clap checked the policy");
    }
    if let Some(d) = &a.backoff_delay {
        r.backoff_delay = parse_duration(d).context("--backoff-delay")?;
    }
    if let Some(n) = a.max_attempts {
        r.max_attempts = n;
    }
    r.constraints = workhost::Constraints {
        network: a
            .requires_network
            .as_deref()
            .and_then(workhost::NetworkType::parse)
            .unwrap_or_default(),
        charging: a.requires_charging,
        battery_not_low: a.requires_battery_not_low,
        device_idle: a.requires_device_idle,
        storage_not_low: a.requires_storage_not_low,
    };
    let queue = a.store.queue().await?;
    let e = queue.enqueue(r).await?;
    for w in &e.warnings {
        eprintln!("warning: {w}");
    }
    if a.json {
        out!(
            "{}",
            serde_json::json!({"id": e.id, "created": e.created, "warnings": e.warnings})
        );
    } else {
        out!("{}", e.id);
    }
    Ok(ExitCode::SUCCESS)
}

/// `workhost list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Only tasks in this state.
    #[arg(long, value_name = "S", value_parser = clap::builder::PossibleValuesParser::new(TaskState::NAMES))]
    state: Option<String>,
    /// Only tasks with this tag.
    #[arg(long, value_name = "T")]
    tag: Option<String>,
    /// Only tasks with this unique name.
    #[arg(long, value_name = "NAME")]
    unique: Option<String>,
    /// Only tasks of this handler.
    #[arg(long, value_name = "NAME")]
    handler: Option<String>,
    /// Only tasks where this text occurs (any case): in the id, handler,
    /// task name, unique name, tags, input or last error.
    #[arg(long, value_name = "TEXT")]
    search: Option<String>,
    /// Newest first.
    #[arg(long)]
    newest: bool,
    /// Only tasks with ids below this one (the next page of `--newest`).
    #[arg(long, value_name = "ID")]
    before: Option<i64>,
    /// At most N tasks.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Also show each task's next N run times (cron fires, periods).
    #[arg(long, value_name = "N")]
    next: Option<usize>,
    /// Print a JSON array.
    #[arg(long)]
    json: bool,
}

pub async fn list(a: ListArgs) -> anyhow::Result<ExitCode> {
    let (queue, handlers) = a.store.queue_and_handlers().await?;
    let q = Query {
        state: a.state.as_deref().and_then(TaskState::parse),
        tag: a.tag.clone(),
        unique_name: a.unique.clone(),
        handler: a.handler.clone(),
        search: a.search.clone(),
        before_id: a.before,
        limit: a.limit,
        newest_first: a.newest,
        ..Query::default()
    };
    let tasks = queue.query(q).await?;
    if a.json {
        out!(
            "{}",
            serde_json::Value::Array(
                tasks
                    .iter()
                    .map(|t| {
                        let mut v = task_json(t, false);
                        if waits_for_handler(t, &handlers) {
                            v["waiting_for"] = serde_json::json!(["handler"]);
                        }
                        if let Some(n) = a.next {
                            v["next_runs"] = next_runs_json(t, n);
                        }
                        v
                    })
                    .collect()
            )
        );
        return Ok(ExitCode::SUCCESS);
    }
    print_table(&tasks, &handlers);
    if let Some(n) = a.next {
        for t in tasks.iter().filter(|t| !t.state.is_finished()) {
            let runs: Vec<String> = t.next_runs(n).into_iter().map(rfc3339).collect();
            out!("task {} next: {}", t.id, runs.join(", "));
        }
    }
    if let (Some(limit), Some(last)) = (a.limit, tasks.last())
        && tasks.len() == limit
        && (a.newest || a.before.is_some())
    {
        out!("(more: the next page is `--before {}`)", last.id);
    }
    if queue.is_paused().await? {
        out!("(paused: nothing new starts until `workhost resume`)");
    }
    for h in queue.paused_handlers().await? {
        out!("(handler {h:?} is paused: none of its work starts until `workhost resume --handler {h}`)");
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints tasks as a table with their earliest begin time (the seed's
/// printScheduledTasks); enqueued work of a handler not among `handlers`
/// shows that it waits for its handler instead.
pub fn print_table(tasks: &[TaskInfo], handlers: &[String]) {
    out!(
        "{:>5}  {:<9}  {:<10}  {:<14}  {:<10}  {:>8}  {:<24}  {:<12}  TAGS",
        "ID",
        "STATE",
        "HANDLER",
        "TASK",
        "KIND",
        "ATTEMPTS",
        "EARLIEST BEGIN",
        "UNIQUE"
    );
    for t in tasks {
        let begin = if waits_for_handler(t, handlers) {
            "waits for its handler".into()
        } else if t.state == TaskState::Enqueued {
            rfc3339(t.next_run_at)
        } else {
            "-".into()
        };
        out!(
            "{:>5}  {:<9}  {:<10}  {:<14}  {:<10}  {:>8}  {:<24}  {:<12}  {}",
            t.id,
            t.state.as_str(),
            t.handler,
            t.task,
            t.kind.as_str(),
            t.run_attempt_count,
            begin,
            t.unique_name.as_deref().unwrap_or("-"),
            t.tags.join(",")
        );
    }
}

/// `workhost inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The task id.
    id: i64,
    /// Also show its next N run times (default 5 for periodic work).
    #[arg(long, value_name = "N")]
    next: Option<usize>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub async fn inspect(a: InspectArgs) -> anyhow::Result<ExitCode> {
    let queue = a.store.queue().await?;
    let Some(t) = queue.get(a.id).await? else {
        bail!("no task with id {}", a.id)
    };
    let next = a.next.unwrap_or(if t.kind == TaskKind::Periodic { 5 } else { 0 });
    if a.json {
        let mut v = task_json(&t, true);
        if next > 0 {
            v["next_runs"] = next_runs_json(&t, next);
        }
        out!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    let mut json = task_json(&t, false);
    if next > 0 {
        json["next_runs"] = next_runs_json(&t, next);
    }
    for (k, v) in json.as_object().expect("an object") {
        if !v.is_null() {
            out!("{k:<18} {v}");
        }
    }
    for at in &t.attempts {
        out!(
            "attempt {}: started {} {} {}{}",
            at.attempt,
            rfc3339(at.started_at),
            at.outcome.as_deref().unwrap_or("running"),
            at.stop_reason.as_deref().map(|r| format!("({r}) ")).unwrap_or_default(),
            at.error.as_deref().unwrap_or("")
        );
        if let Some(c) = &at.component {
            out!(
                "    component sha256:{c} ({})",
                at.contract.as_deref().unwrap_or("contract unknown")
            );
        }
        for line in &at.log {
            out!(
                "    {:>6}ms {:?} {:?}: {}",
                line.at_ms,
                line.level,
                line.source,
                line.message
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `workhost cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The task id.
    #[arg(required_unless_present_any = ["unique", "tag", "all", "handler", "state", "search"])]
    id: Option<i64>,
    /// Cancel work with this unique name.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["id", "all"])]
    unique: Option<String>,
    /// Cancel work with this tag.
    #[arg(long, value_name = "T", conflicts_with_all = ["id", "all"])]
    tag: Option<String>,
    /// Cancel this handler's work.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["id", "all"])]
    handler: Option<String>,
    /// Cancel work in this state (enqueued, blocked or running).
    #[arg(long, value_name = "S", conflicts_with_all = ["id", "all"],
          value_parser = clap::builder::PossibleValuesParser::new(TaskState::NAMES))]
    state: Option<String>,
    /// Cancel work where this text occurs (any case), as `list --search`.
    #[arg(long, value_name = "TEXT", conflicts_with_all = ["id", "all"])]
    search: Option<String>,
    /// Cancel all unfinished work.
    #[arg(long, conflicts_with = "id")]
    all: bool,
}

pub async fn cancel(a: CancelArgs) -> anyhow::Result<ExitCode> {
    let queue = a.store.queue().await?;
    // Filters combine (all must match), as in `retry` and `list`.
    let ids =
        if a.handler.is_some() || a.state.is_some() || a.search.is_some() || (a.unique.is_some() && a.tag.is_some()) {
            let query = Query {
                handler: a.handler.clone(),
                state: a.state.as_deref().and_then(TaskState::parse),
                tag: a.tag.clone(),
                unique_name: a.unique.clone(),
                search: a.search.clone(),
                ..Query::default()
            };
            queue.cancel_matching(query).await?
        } else {
            let selector = match (&a.id, &a.unique, &a.tag, a.all) {
                (Some(id), ..) => Selector::Id(*id),
                (_, Some(u), ..) => Selector::UniqueName(u.clone()),
                (_, _, Some(t), _) => Selector::Tag(t.clone()),
                _ => Selector::All,
            };
            queue.cancel(selector).await?
        };
    print_changed("cancelled", &ids);
    Ok(ExitCode::SUCCESS)
}

/// Prints `<done> N task(s): [ids]`.
fn print_changed(done: &str, ids: &[i64]) {
    out!(
        "{done} {} task(s){}",
        ids.len(),
        if ids.is_empty() {
            String::new()
        } else {
            format!(": {ids:?}")
        }
    );
}

/// `workhost pause`, `resume`.
#[derive(Debug, Args)]
pub struct PauseArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Only this handler (running work finishes; new work is still
    /// enqueued).
    #[arg(long, value_name = "NAME")]
    handler: Option<String>,
}

/// The filter of a bulk `retry`, `run-now` or `delete`.
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Tasks of this handler.
    #[arg(long, value_name = "NAME")]
    handler: Option<String>,
    /// Tasks in this state.
    #[arg(long, value_name = "S", value_parser = clap::builder::PossibleValuesParser::new(TaskState::NAMES))]
    state: Option<String>,
    /// Tasks with this tag.
    #[arg(long, value_name = "T")]
    tag: Option<String>,
    /// Tasks with this unique name (as `list --unique`; `--unique-name`
    /// is accepted too).
    #[arg(long = "unique", alias = "unique-name", value_name = "NAME")]
    unique_name: Option<String>,
    /// Tasks where this text occurs (any case), as `list --search`.
    #[arg(long, value_name = "TEXT")]
    search: Option<String>,
}

impl FilterArgs {
    fn query(&self) -> Option<Query> {
        let q = Query {
            handler: self.handler.clone(),
            state: self.state.as_deref().and_then(TaskState::parse),
            tag: self.tag.clone(),
            unique_name: self.unique_name.clone(),
            search: self.search.clone(),
            ..Query::default()
        };
        (q != Query::default()).then_some(q)
    }
}

/// `workhost retry`, `run-now`, `delete`: one task by id, or every task a
/// filter (or `--all`) matches that the action applies to.
#[derive(Debug, Args)]
pub struct ActionArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The task id.
    #[arg(conflicts_with_all = ["handler", "state", "tag", "unique_name", "search", "all"])]
    id: Option<i64>,
    #[command(flatten)]
    filter: FilterArgs,
    /// Every task the action applies to (a bulk action without a filter
    /// must say so).
    #[arg(long)]
    all: bool,
    /// Print JSON: the task (by id), or the ids changed.
    #[arg(long)]
    json: bool,
}

/// What [`act`] does.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    /// `workhost retry`.
    Retry,
    /// `workhost run-now`.
    RunNow,
    /// `workhost delete`.
    Delete,
}

impl Action {
    fn done(self) -> &'static str {
        match self {
            Action::Retry => "retried",
            Action::RunNow => "made due now",
            Action::Delete => "deleted",
        }
    }

    fn command(self) -> &'static str {
        match self {
            Action::Retry => "retry",
            Action::RunNow => "run-now",
            Action::Delete => "delete",
        }
    }
}

/// `workhost retry`, `run-now`, `delete`. A wrong state or an unknown id
/// is an error (exit 2) naming it.
pub async fn act(a: ActionArgs, action: Action) -> anyhow::Result<ExitCode> {
    let queue = a.store.queue().await?;
    if let Some(id) = a.id {
        let task = match action {
            Action::Retry => Some(queue.retry_task(id).await?),
            Action::RunNow => Some(queue.run_now_task(id).await?),
            Action::Delete => {
                queue.delete_task(id).await?;
                None
            }
        };
        match (&task, a.json) {
            (Some(t), true) => out!("{}", task_json(t, false)),
            (None, true) => out!("{}", serde_json::json!({ action.done(): [id] })),
            (Some(t), false) => out!("{} task {id} (now {})", action.done(), t.state.as_str()),
            (None, false) => out!("{} task {id}", action.done()),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let query = match (a.filter.query(), a.all) {
        (Some(q), _) => q,
        (None, true) => Query::default(),
        (None, false) => bail!(
            "give a task id, a filter (--handler, --state, --tag, --unique, --search), or --all to {} every task it applies to",
            action.command()
        ),
    };
    let ids = match action {
        Action::Retry => queue.retry(query).await?,
        Action::RunNow => queue.run_now(query).await?,
        Action::Delete => queue.delete(query).await?,
    };
    if a.json {
        out!("{}", serde_json::json!({ action.done(): ids }));
    } else {
        print_changed(action.done(), &ids);
    }
    Ok(ExitCode::SUCCESS)
}

/// `workhost prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Remove every finished task, not only those past the retention period.
    #[arg(long)]
    all: bool,
}

pub async fn pause(a: PauseArgs, paused: bool) -> anyhow::Result<ExitCode> {
    let queue = a.store.queue().await?;
    if let Some(h) = &a.handler {
        if paused {
            queue.pause_handler(h).await?;
            out!("paused handler {h:?}: none of its work starts until `workhost resume --handler {h}`");
        } else {
            queue.resume_handler(h).await?;
            out!("resumed handler {h:?}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if paused {
        queue.pause().await?
    } else {
        queue.resume().await?
    }
    out!(
        "{}",
        if paused {
            "paused: nothing new starts until `workhost resume`"
        } else {
            "resumed"
        }
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn prune(a: PruneArgs) -> anyhow::Result<ExitCode> {
    let n = a.store.queue().await?.prune(a.all).await?;
    out!("pruned {n} finished task(s)");
    Ok(ExitCode::SUCCESS)
}

/// A task as JSON, with the field names the README documents.
/// A task's next `n` run times, RFC 3339.
fn next_runs_json(t: &TaskInfo, n: usize) -> serde_json::Value {
    serde_json::json!(t.next_runs(n).into_iter().map(rfc3339).collect::<Vec<_>>())
}

/// A task as JSON: the library's form ([`TaskInfo::to_json`]).
pub fn task_json(t: &TaskInfo, attempts: bool) -> serde_json::Value {
    t.to_json(attempts)
}

/// `workhost status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Prints the device state (read as `serve` reads it, with the manifest's
/// overrides), whether the store is paused, and which enqueued tasks wait
/// on which constraint.
pub async fn status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let config = a.store.store_config()?;
    let (queue, handlers) = a.store.queue_and_handlers().await?;
    let device = config.device.clone();
    let dir = config.data_dir.clone();
    let readings = tokio::task::spawn_blocking(move || {
        if device.read_machine {
            workhost::DeviceState::read_linux(&workhost::LinuxPaths::default(), &dir, &device.thresholds)
        } else {
            workhost::DeviceState::default()
        }
    })
    .await?;
    let state = config.device.overrides.apply(readings);
    let paused = queue.is_paused().await?;
    let paused_handlers = queue.paused_handlers().await?;
    let waiting: Vec<(i64, String, Vec<&'static str>)> = queue
        .query(Query {
            state: Some(TaskState::Enqueued),
            ..Query::default()
        })
        .await?
        .iter()
        .map(|t| {
            let mut constraints = t.constraints;
            // Expedited work is not held by device idle.
            constraints.device_idle &= !t.expedited;
            let mut unmet = constraints.unmet(&state);
            if waits_for_handler(t, &handlers) {
                unmet.insert(0, "handler");
            }
            (t.id, t.handler.clone(), unmet)
        })
        .filter(|(_, _, unmet)| !unmet.is_empty())
        .collect();
    if a.json {
        let waiting: Vec<_> = waiting
            .iter()
            .map(|(id, handler, unmet)| serde_json::json!({"id": id, "handler": handler, "waiting_for": unmet}))
            .collect();
        out!(
            "{}",
            serde_json::json!({"device": state, "paused": paused, "paused_handlers": paused_handlers, "waiting": waiting})
        );
        return Ok(ExitCode::SUCCESS);
    }
    let r = &state.readings;
    let yes = |b: bool| if b { "yes" } else { "no" };
    out!("paused            {}", yes(paused));
    if !paused_handlers.is_empty() {
        out!("paused handlers   {}", paused_handlers.join(", "));
    }
    out!(
        "charging          {}{}",
        yes(state.charging),
        r.mains_online
            .map(|m| format!(" (mains {})", if m { "online" } else { "offline" }))
            .unwrap_or_default()
    );
    out!(
        "battery low       {}{}",
        yes(state.battery_low),
        r.battery_percent
            .map(|p| format!(" ({p}%)"))
            .unwrap_or_else(|| " (no battery)".into())
    );
    out!(
        "network           {}{}{}",
        if state.network.connected {
            "connected"
        } else {
            "not connected"
        },
        if state.network.metered { ", metered" } else { "" },
        if r.default_route_interfaces.is_empty() {
            String::new()
        } else {
            format!(" (default route via {})", r.default_route_interfaces.join(", "))
        }
    );
    out!(
        "storage low       {}{}",
        yes(state.storage_low),
        r.storage_free_bytes
            .map(|f| format!(" ({} free)", workhost::units::format_size(f)))
            .unwrap_or_default()
    );
    out!(
        "idle              {}{}",
        yes(state.idle),
        r.load_per_cpu
            .map(|l| format!(" (load {l:.2} per CPU)"))
            .unwrap_or_default()
    );
    if waiting.is_empty() {
        out!("no task waits on a constraint or a handler");
    }
    for (id, handler, unmet) in waiting {
        let unmet: Vec<String> = unmet
            .iter()
            .map(|u| {
                if *u == "handler" {
                    format!("handler {handler:?} (not in this manifest)")
                } else {
                    u.to_string()
                }
            })
            .collect();
        out!("task {id} waits for: {}", unmet.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

/// `workhost hosts`.
#[derive(Debug, Args)]
pub struct HostsArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Print JSON (an array of hosts).
    #[arg(long)]
    json: bool,
}

/// Prints the hosts serving the store.
pub async fn hosts(a: HostsArgs) -> anyhow::Result<ExitCode> {
    let hosts = a.store.queue().await?.hosts().await?;
    if a.json {
        out!("{}", serde_json::to_string_pretty(&hosts)?);
        return Ok(ExitCode::SUCCESS);
    }
    if hosts.is_empty() {
        out!("no host has served this store");
        return Ok(ExitCode::SUCCESS);
    }
    out!(
        "{:<32} {:<8} {:<24} {:<24} {:>7}",
        "HOST",
        "SERVING",
        "STARTED",
        "RENEWED",
        "RUNNING"
    );
    for h in hosts {
        out!(
            "{:<32} {:<8} {:<24} {:<24} {:>7}",
            h.id,
            if h.live { "yes" } else { "no" },
            rfc3339(h.started_at),
            rfc3339(h.renewed_at),
            h.running
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `workhost cron`.
#[derive(Debug, Args)]
pub struct CronArgs {
    #[command(subcommand)]
    command: CronCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CronCommand {
    /// Check a cron expression and print its next fire times, to try it
    /// before deploying it. Exit code 2 names what is wrong.
    Check {
        /// The expression: 5 fields (minute hour day-of-month month
        /// day-of-week) or 6 (seconds first), or a macro (@daily).
        expr: String,
        /// The IANA time zone of its wall-clock times (default UTC).
        #[arg(long, value_name = "ZONE")]
        tz: Option<String>,
        /// How many fire times to print.
        #[arg(long, value_name = "N", default_value_t = 5)]
        next: usize,
        /// Print JSON: the expression, the zone and the fires.
        #[arg(long)]
        json: bool,
    },
}

pub fn cron(a: CronArgs) -> anyhow::Result<ExitCode> {
    let CronCommand::Check { expr, tz, next, json } = a.command;
    if let Some(tz) = &tz {
        workhost::cron::time_zone(tz)
            .map_err(anyhow::Error::msg)
            .context("--tz")?;
    }
    let schedule = CronSchedule::new(&expr, tz.as_deref(), CatchUp::default())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(workhost::millis)
        .unwrap_or(0);
    let fires = schedule.upcoming(now, next);
    let zone = workhost::cron::time_zone(&schedule.tz).map_err(anyhow::Error::msg)?;
    let local = |ms: i64| {
        jiff::Timestamp::from_millisecond(ms)
            .map(|t| {
                t.to_zoned(zone.clone())
                    .strftime("%Y-%m-%d %H:%M:%S %Z (%:z)")
                    .to_string()
            })
            .unwrap_or_default()
    };
    if json {
        out!(
            "{}",
            serde_json::json!({
                "cron": schedule.expr,
                "tz": schedule.tz,
                "next": fires.iter().map(|f| rfc3339(*f)).collect::<Vec<_>>(),
                "next_local": fires.iter().map(|f| local(*f)).collect::<Vec<_>>(),
            })
        );
    } else {
        out!("{} in {}: next {} fires", schedule.expr, schedule.tz, fires.len());
        for f in fires {
            out!("  {}  ({})", local(f), rfc3339(f));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The file `serve` writes its pid to, in the data directory.
const RELOAD_PID: &str = "serve.pid";
/// The file `workhost reload` leaves its request in.
const RELOAD_REQUEST: &str = "reload-request.json";
/// The file `serve` leaves the reload's result in.
const RELOAD_RESULT: &str = "reload-result.json";

/// A SIGHUP: reload the manifest (with the options a `workhost reload`
/// left in the data directory), say what changed or why nothing did on
/// stderr, and leave the result for `workhost reload`.
async fn reload_on_signal(host: &Host, store: &StoreArgs, dir: &std::path::Path) {
    let request: serde_json::Value = std::fs::read_to_string(dir.join(RELOAD_REQUEST))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let _ = std::fs::remove_file(dir.join(RELOAD_REQUEST));
    let options = workhost::ReloadOptions {
        drop_pending: request["drop_pending"].as_bool().unwrap_or(false),
    };
    let result = match store.host_config() {
        Ok(config) => host.reload(config, options).await.map_err(|e| e.to_string()),
        Err(e) => Err(format!("reload refused, nothing changed: {e:#}")),
    };
    let json = match &result {
        Ok(report) => {
            eprintln!("workhost: reloaded: {}", report.summary());
            for w in &report.warnings {
                eprintln!("workhost: warning: {w}");
            }
            serde_json::json!({"request": request["request"], "ok": true, "report": report, "summary": report.summary()})
        }
        Err(message) => {
            eprintln!("workhost: {message}");
            serde_json::json!({"request": request["request"], "ok": false, "error": message})
        }
    };
    let tmp = dir.join(format!("{RELOAD_RESULT}.tmp"));
    if std::fs::write(&tmp, json.to_string()).is_ok() {
        let _ = std::fs::rename(&tmp, dir.join(RELOAD_RESULT));
    }
}

/// `workhost reload`.
#[derive(Debug, Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Cancel the unfinished work of handlers the manifest no longer has
    /// (recorded as cancelled, saying why) instead of refusing the reload.
    #[arg(long = "drop-pending")]
    drop_pending: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Asks the `serve` on the data directory to reload its manifest (as
/// SIGHUP does) and waits for its answer: exit 0 when it reloaded, 2 when
/// it refused (the manifest or a component is wrong; nothing changed), 1
/// when no `serve` runs there.
pub async fn reload(a: ReloadArgs) -> anyhow::Result<ExitCode> {
    let config = a.store.store_config()?;
    let dir = config.data_dir.clone();
    let pid: Option<i32> = std::fs::read_to_string(dir.join(RELOAD_PID))
        .ok()
        .and_then(|p| p.trim().parse().ok());
    // No serve to ask is not bad input: exit 1.
    let no_serve = || {
        eprintln!(
            "error: no `workhost serve` runs on {}; start it, or name its --data-dir",
            dir.display()
        );
        Ok(ExitCode::from(1))
    };
    let Some(pid) = pid.and_then(rustix::process::Pid::from_raw) else {
        return no_serve();
    };
    // A pid file a killed `serve` left behind names no serve: the data
    // directory's lock tells (a serve holds it while it runs), so no other
    // process is ever signalled.
    let Ok(lock) = std::fs::File::options()
        .read(true)
        .write(true)
        .open(dir.join("serve.lock"))
    else {
        return no_serve();
    };
    if lock.try_lock().is_ok() {
        return no_serve();
    }
    drop(lock);
    let request = format!(
        "{}-{}",
        std::process::id(),
        workhost::millis(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
        )
    );
    let tmp = dir.join(format!("{RELOAD_REQUEST}.tmp"));
    std::fs::write(
        &tmp,
        serde_json::json!({"request": request, "drop_pending": a.drop_pending}).to_string(),
    )?;
    std::fs::rename(&tmp, dir.join(RELOAD_REQUEST))?;
    if rustix::process::kill_process(pid, rustix::process::Signal::HUP).is_err() {
        let _ = std::fs::remove_file(dir.join(RELOAD_REQUEST));
        return no_serve();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let result = loop {
        let found: Option<serde_json::Value> = std::fs::read_to_string(dir.join(RELOAD_RESULT))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        if let Some(r) = found.filter(|r| r["request"] == request.as_str()) {
            break r;
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "`workhost serve` (pid {}) did not answer the reload within 120 s",
                pid.as_raw_nonzero()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    if a.json {
        out!("{result}");
    } else if result["ok"] == true {
        out!("reloaded: {}", result["summary"].as_str().unwrap_or(""));
        for w in result["report"]["warnings"].as_array().into_iter().flatten() {
            eprintln!("warning: {}", w.as_str().unwrap_or(""));
        }
    } else {
        eprintln!(
            "error: {}",
            result["error"].as_str().unwrap_or("the reload was refused")
        );
    }
    Ok(if result["ok"] == true {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
