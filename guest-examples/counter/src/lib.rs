//! `counter`: counts its executions in kv (the seed's `totalExecutions`).
use workhost_guest::{Handler, Input, Outcome, Output, kv, log};

struct Counter;

impl Handler for Counter {
    fn execute(_name: &str, _input: Input) -> Result<Outcome, String> {
        let total = kv::increment("totalExecutions", 1).map_err(|e| format!("kv increment failed: {e:?}"))?;
        log::info(&format!("total executions: {total}"));
        Output::new().with("total_executions", total).success()
    }
}

workhost_guest::export_handler!(Counter);
