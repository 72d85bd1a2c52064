//! `chatty`: writes log lines at every level, to stdout and to stderr,
//! reports progress, and returns the facts of its run context.
use workhost_guest::{Handler, Input, Outcome, Output, TaskKind, context, log};

struct Chatty;

impl Handler for Chatty {
    fn execute(name: &str, input: Input) -> Result<Outcome, String> {
        let repeat = input.i64("repeat").unwrap_or(1).max(0);
        for i in 0..repeat {
            log::write(log::Level::Trace, &format!("trace line {i}"));
            log::debug(&format!("debug line {i}"));
            log::info(&format!("info line {i}"));
            log::warn(&format!("warn line {i}"));
            log::error(&format!("error line {i}"));
            println!("stdout line {i}");
            eprintln!("stderr line {i}");
        }
        context::set_progress(&Output::new().with("percent", 50i64).into_data())?;
        let kind = match context::kind() {
            TaskKind::OneOff => "one-off",
            TaskKind::Periodic => "periodic",
            TaskKind::Processing => "processing",
        };
        Output::new()
            .with("task", name)
            .with("task_id", context::task_id())
            .with("unique_name", context::unique_name().unwrap_or_default())
            .with("tags", context::tags())
            .with("attempt", context::run_attempt_count())
            .with("kind", kind)
            .with("time_left_ms", context::time_left_ms() as i64)
            .with("lines", repeat * 7)
            .success()
    }
}

workhost_guest::export_handler!(Chatty);
