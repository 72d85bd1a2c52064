//! `config-echo`: reports the configuration the host granted it, and writes
//! every value to its log, stdout and stderr, to show what the host lets
//! out (see README.md).
use workhost_guest::{Handler, Input, Outcome, Output, config, context, log};

struct ConfigEcho;

impl Handler for ConfigEcho {
    fn execute(_name: &str, input: Input) -> Result<Outcome, String> {
        let keys = config::keys();
        let mut out = Output::new().with("keys", keys.join(","));
        let mut all = Vec::new();
        for key in &keys {
            let value = config::get(key).ok_or_else(|| format!("{key} is listed but has no value"))?;
            log::info(&format!("config {key}={value}"));
            println!("stdout {key}={value}");
            eprintln!("stderr {key}={value}");
            out.set(&format!("value_{key}"), value.clone());
            all.push(value);
        }
        out.set("missing", config::get("no_such_key").is_none());
        let env: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
        out.set("env", env.join(","));
        if input.bool("progress").unwrap_or(false) {
            context::set_progress(&[("values".into(), workhost_guest::Value::String(all.join(",")))])
                .map_err(|e| e.to_string())?;
        }
        if input.bool("fail").unwrap_or(false) {
            return Err(format!("failing with {}", all.join(",")));
        }
        out.success()
    }
}

workhost_guest::export_handler!(ConfigEcho);
