//! `flaky`: asks for a retry until its run attempt count reaches the input
//! integer `succeed_at` (default 3), then succeeds.
use workhost_guest::{Handler, Input, Outcome, Output, context, log};

struct Flaky;

impl Handler for Flaky {
    fn execute(_name: &str, input: Input) -> Result<Outcome, String> {
        let succeed_at = input.i64("succeed_at").unwrap_or(3);
        let attempt = i64::from(context::run_attempt_count());
        if attempt < succeed_at {
            log::warn(&format!("attempt {attempt} of {succeed_at}: asking for a retry"));
            return Ok(Outcome::Retry);
        }
        Output::new().with("attempts", attempt).success()
    }
}

workhost_guest::export_handler!(Flaky);
