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
            // An error message of `bytes` bytes (default 4 MiB): the host
            // keeps 8 KiB of it with a marker.
            "huge-error" => {
                let n = input.i64("bytes").unwrap_or(4 << 20) as usize;
                Err("e".repeat(n))
            }
            // `lines` bare newlines on stdout (default two million), in
            // 64 KiB writes: every one costs a stored line, so the log cap
            // stops them.
            "newline-flood" => {
                use std::io::Write;
                let mut left = input.i64("lines").unwrap_or(2_000_000) as usize;
                let chunk = vec![b'\n'; 64 << 10];
                let mut out = std::io::stdout().lock();
                while left > 0 {
                    let n = left.min(chunk.len());
                    out.write_all(&chunk[..n]).map_err(|e| e.to_string())?;
                    left -= n;
                }
                out.flush().map_err(|e| e.to_string())?;
                Output::new().success()
            }
            // set-progress as fast as it can for the first half of its
            // time; the last report says how many came before it.
            "progress-storm" => {
                let stop_at = context::time_left_ms() / 2;
                let mut calls: i64 = 0;
                while context::time_left_ms() > stop_at {
                    calls += 1;
                    context::set_progress(&[("calls".into(), Value::S64(calls))])?;
                }
                Output::new().with("calls", calls).success()
            }
            // Writes one byte to `/data/<name>-start` (the run's first
            // write), waits `wait_ms`, then writes `bytes` bytes to
            // `/data/<name>`: two runs at once each see the other's bytes
            // only if they share one quota.
            "fill" => {
                let name = input.str("name").unwrap_or("fill");
                std::fs::write(format!("/data/{name}-start"), b"s").map_err(|e| format!("first write: {e}"))?;
                std::thread::sleep(std::time::Duration::from_millis(
                    input.i64("wait_ms").unwrap_or(300) as u64
                ));
                let n = input.i64("bytes").unwrap_or(1 << 20) as usize;
                match std::fs::write(format!("/data/{name}"), vec![b'f'; n]) {
                    Ok(()) => Output::new().with("wrote", n as i64).success(),
                    Err(e) => Output::new().with("refused", e.to_string()).success(),
                }
            }
            // exit(0) from inside the handler, without returning.
            "exit" => std::process::exit(input.i64("code").unwrap_or(0) as i32),
            other => Err(format!("unknown mode {other:?}")),
        }
    }
}

workhost_guest::export_handler!(Hostile);
