//! The `workhost` command line: `exec` runs one component once, without a
//! store (the handler author's loop).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod exec;

/// Exit code for usage and load errors.
const EXIT_USAGE: u8 = 2;

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
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}
