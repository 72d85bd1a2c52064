//! `ledger`: counts its runs per task in kv (`runs:<task-id>`), so a crash
//! test can tell how often each task ran; optionally sleeps and asks for
//! retries first (see README.md).
use workhost_guest::{Handler, Input, Outcome, Output, context, kv};

struct Ledger;

impl Handler for Ledger {
    fn execute(_name: &str, input: Input) -> Result<Outcome, String> {
        let id = context::task_id();
        // `count = false`: a run that only waits (the scale-out bench).
        let runs = if input.bool("count") == Some(false) {
            0
        } else {
            kv::increment(&format!("runs:{id}"), 1).map_err(|e| format!("kv: {e:?}"))?
        };
        let sleep_ms = input.i64("sleep_ms").unwrap_or(0).max(0) as u64;
        std::thread::sleep(std::time::Duration::from_millis(sleep_ms));
        let attempt = i64::from(context::run_attempt_count());
        if attempt <= input.i64("retries").unwrap_or(0) {
            return Ok(Outcome::Retry);
        }
        Output::new().with("runs", runs).with("attempt", attempt).success()
    }
}

workhost_guest::export_handler!(Ledger);
