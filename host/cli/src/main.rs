//! The `workhost` command line: `exec` runs one component once without a
//! store (the handler author's loop); `serve` is the daemon; the other
//! commands work on its data directory.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Prints a line to stdout. A closed pipe (`workhost list | head`) ends the
/// process quietly with success, as `head` expects; any other write error
/// is a bug worth a panic.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            panic!("writing to stdout: {e}");
        }
    }};
}

mod exec;
mod store_cmds;
mod traces;

/// Exit code for bad usage and bad input (arguments, manifest, request,
/// component).
const EXIT_USAGE: u8 = 2;
/// Exit code for a store that is locked, busy, full, damaged or otherwise
/// unavailable, a host already serving, or anything else that is not the
/// user's input.
const EXIT_FAILURE: u8 = 1;

/// The command-line flag that fixes an error the library reports in its own
/// words (library errors name no flags).
fn flag_hint(e: &anyhow::Error) -> Option<&'static str> {
    e.chain().find_map(|cause| {
        if let Some(workhost::ManifestError::Io { .. }) = cause.downcast_ref::<workhost::ManifestError>() {
            return Some("`--config PATH` names the manifest (default ./workhost.toml)");
        }
        match cause.downcast_ref::<workhost::StoreError>() {
            Some(workhost::StoreError::Foreign { .. } | workhost::StoreError::ReadOnly(_)) => {
                Some("`--data-dir DIR` uses another data directory")
            }
            Some(workhost::StoreError::ForeignDatabase { .. } | workhost::StoreError::Unavailable { .. }) => {
                Some("`--database URL` names another database (or set the manifest's `database`)")
            }
            _ => None,
        }
    })
}

/// The exit code of an error: [`EXIT_FAILURE`] when any cause is the store
/// or the host's environment, [`EXIT_USAGE`] otherwise.
fn exit_code_of(e: &anyhow::Error) -> u8 {
    let environment = e.chain().any(|cause| {
        cause.downcast_ref::<workhost::StoreError>().is_some()
            || cause.downcast_ref::<workhost::EngineError>().is_some()
            || matches!(
                cause.downcast_ref::<workhost::HostError>(),
                Some(
                    workhost::HostError::AlreadyServing(_)
                        | workhost::HostError::Store(_)
                        | workhost::HostError::Engine(_)
                )
            )
            || matches!(
                cause.downcast_ref::<workhost::WorkError>(),
                Some(workhost::WorkError::Store(_))
            )
    });
    if environment { EXIT_FAILURE } else { EXIT_USAGE }
}

/// WorkManager for WebAssembly: durable background tasks run in sandboxed
/// components.
#[derive(Debug, Parser)]
#[command(name = "workhost", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one task once in a fresh instance of a component, and print the
    /// outcome. Exit code: 0 success, 75 retry, 1 failed or stopped, 2 usage
    /// or load error.
    Exec(exec::ExecArgs),
    /// Run the daemon: dispatch due work from the data directory until
    /// SIGINT/SIGTERM, then shut down gracefully.
    Serve(store_cmds::ServeArgs),
    /// Enqueue work; prints the task id (with KEEP, the kept task's id).
    Enqueue(Box<store_cmds::EnqueueArgs>),
    /// List tasks with their earliest begin time.
    List(store_cmds::ListArgs),
    /// Show one task with its attempt history and logs.
    Inspect(store_cmds::InspectArgs),
    /// Cancel work by id, unique name, tag, or all; running work stops.
    Cancel(store_cmds::CancelArgs),
    /// Retry a FAILED or CANCELLED task now (with the work that ended
    /// because of it), or every one a filter matches. Exit 2 on a wrong
    /// state or an unknown id.
    Retry(store_cmds::ActionArgs),
    /// Run a delayed ENQUEUED task now (periodic: this period; cron: the
    /// pending fire), or every one a filter matches. Exit 2 on a wrong state
    /// or an unknown id.
    #[command(name = "run-now")]
    RunNow(store_cmds::ActionArgs),
    /// Delete a finished task with its attempts, or every one a filter
    /// matches. Exit 2 on a wrong state or an unknown id.
    Delete(store_cmds::ActionArgs),
    /// Pause: nothing new starts until `resume` (`--handler`: only that
    /// handler's work).
    Pause(store_cmds::PauseArgs),
    /// Resume after `pause`.
    Resume(store_cmds::PauseArgs),
    /// Remove finished work older than the retention period.
    Prune(store_cmds::PruneArgs),
    /// Show the device state, whether the host is paused, and which tasks
    /// wait on which constraint.
    Status(store_cmds::StatusArgs),
    /// List the hosts serving the store: id, start, last lease renewal,
    /// whether it serves now, and how many tasks it runs.
    Hosts(store_cmds::HostsArgs),
    /// Cron expressions: `cron check EXPR [--tz ZONE]` prints the next
    /// fire times.
    Cron(store_cmds::CronArgs),
    /// Ask the `serve` on this data directory to reload its manifest (as
    /// SIGHUP does): changed components are swapped in; running work
    /// finishes on its version. Exit 2 if refused (nothing changed).
    Reload(store_cmds::ReloadArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Exec(args) => exec::run(args).await,
            Command::Serve(args) => store_cmds::serve(args).await,
            Command::Enqueue(args) => store_cmds::enqueue(*args).await,
            Command::List(args) => store_cmds::list(args).await,
            Command::Inspect(args) => store_cmds::inspect(args).await,
            Command::Cancel(args) => store_cmds::cancel(args).await,
            Command::Retry(args) => store_cmds::act(args, store_cmds::Action::Retry).await,
            Command::RunNow(args) => store_cmds::act(args, store_cmds::Action::RunNow).await,
            Command::Delete(args) => store_cmds::act(args, store_cmds::Action::Delete).await,
            Command::Pause(args) => store_cmds::pause(args, true).await,
            Command::Resume(args) => store_cmds::pause(args, false).await,
            Command::Prune(args) => store_cmds::prune(args).await,
            Command::Status(args) => store_cmds::status(args).await,
            Command::Hosts(args) => store_cmds::hosts(args).await,
            Command::Cron(args) => store_cmds::cron(args),
            Command::Reload(args) => store_cmds::reload(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if let Some(hint) = flag_hint(&e) {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(exit_code_of(&e))
        }
    }
}
