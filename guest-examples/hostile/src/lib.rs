//! `hostile`: misbehaves in the way its input `mode` names, to show the host
//! holds (see README.md).
use workhost_guest::{Handler, Input, Outcome, Output, Value, context, kv, log};

struct Hostile;

impl Handler for Hostile {
    fn execute(_name: &str, input: Input) -> Result<Outcome, String> {
        let big = "x".repeat(20 << 10);
        match input.str("mode").unwrap_or("") {
            // 20 KiB of output: the host refuses it (the limit is 10 KiB).
            "big-output" => Output::new().with("blob", big).success(),
            // 20 KiB of progress: refused; the guest sees the refusal.
            "big-progress" => {
                let refused = context::set_progress(&[("blob".into(), Value::String(big))])
                    .expect_err("the host must refuse 20 KiB of progress");
                Err(refused)
            }
            // Host calls as fast as it can for the first half of its time.
            // The time left is checked before every call: a kv set is a
            // durable commit, and on a loaded machine a burst of them can
            // take longer than any fixed margin smaller than this half.
            "kv-storm" | "log-storm" => {
                let kv_mode = input.str("mode") == Some("kv-storm");
                let stop_at = context::time_left_ms() / 2;
                let mut calls: i64 = 0;
                while context::time_left_ms() > stop_at {
                    if kv_mode {
                        kv::set("k", &calls.to_le_bytes()).map_err(|e| format!("{e:?}"))?;
                        kv::get("k").map_err(|e| format!("{e:?}"))?;
                    } else {
                        log::info("a line of a flood of log lines");
                    }
                    calls += 1;
                }
                Output::new().with("calls", calls).success()
            }
            other => Err(format!("unknown mode {other:?}")),
        }
    }
}

workhost_guest::export_handler!(Hostile);
