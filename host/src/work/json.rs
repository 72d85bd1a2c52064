//! The JSON forms of work, for programs that speak JSON rather than Rust
//! (the C ABI, an HTTP API): [`WorkRequest::from_json`] reads an enqueue
//! request, [`TaskInfo::to_json`] writes a task as `workhost inspect --json`
//! prints it.

use std::time::Duration;

use serde_json::{Map, Value};

use super::{
    BackoffPolicy, CatchUp, CronSchedule, ExistingWorkPolicy, OutOfQuotaPolicy, Periodic, TaskInfo, TaskState,
    WorkError, WorkRequest, limits,
};
use crate::budget::TaskKind;
use crate::data::Data;
use crate::device::{Constraints, NetworkType};
use crate::units::format_rfc3339;

/// The fields of an enqueue request, in the order the docs list them.
const REQUEST_FIELDS: &[&str] = &[
    "handler",
    "task",
    "kind",
    "input",
    "delay",
    "at",
    "every",
    "flex",
    "cron",
    "tz",
    "catch_up",
    "catch_up_max",
    "unique",
    "policy",
    "tags",
    "after",
    "backoff",
    "backoff_delay",
    "max_attempts",
    "priority",
    "expedited",
    "out_of_quota",
    "timeout",
    "fuel",
    "max_memory",
    "requires",
];

/// The fields of a request's `requires` object.
const REQUIRES_FIELDS: &[&str] = &[
    "network",
    "charging",
    "battery_not_low",
    "device_idle",
    "storage_not_low",
];

impl WorkRequest {
    /// Reads an enqueue request written as JSON: the form the C ABI's
    /// `workhost_enqueue` takes, with the meaning and limits of the CLI's
    /// `workhost enqueue` flags. The request is checked further (and its
    /// periodic values clamped) when it is enqueued, by
    /// [`Queue::enqueue`](crate::Queue::enqueue).
    ///
    /// ```json
    /// {"handler": "echo", "task": "greet", "input": {"name": "world"},
    ///  "delay": "10s", "tags": ["demo"], "requires": {"network": "connected"}}
    /// ```
    ///
    /// The fields (only `handler` and `task` are required; `null` is the
    /// same as leaving a field out):
    ///
    /// | field | JSON type | meaning (CLI flag) |
    /// |---|---|---|
    /// | `handler` | string | the handler, as named in the manifest |
    /// | `task` | string | the task name passed to `execute-task` (`--task`) |
    /// | `kind` | `"one-off"`, `"periodic"`, `"processing"` | default one-off, or periodic when `every` or `cron` is given (`--processing`) |
    /// | `input` | object | input data, as `--input-json` |
    /// | `delay` | duration string (`"10s"`, `"1h30m"`) | initial delay (`--delay`) |
    /// | `at` | RFC 3339 time | the exact time of the first run (`--at`) |
    /// | `every` | duration string | periodic work with this period (`--every`) |
    /// | `flex` | duration string | run in the last `flex` of each period (`--flex`); needs `every` |
    /// | `cron` | string | periodic work on a cron schedule (`--cron`) |
    /// | `tz` | IANA zone name | the zone of `cron`'s times, default UTC (`--tz`); needs `cron` |
    /// | `catch_up` | `"none"`, `"last"`, `"all"` | missed cron fires (`--catch-up`, default last); needs `cron` |
    /// | `catch_up_max` | integer 1-1000 | most missed fires `all` runs (`--catch-up-max`); needs `catch_up` `"all"` |
    /// | `unique` | string | a unique name (`--unique`) |
    /// | `policy` | `"keep"`, `"replace"`, `"append"`, `"append-or-replace"`, `"update"`, `"cancel-and-reenqueue"` | when the unique name is taken (`--policy`; default keep, or update for periodic work); needs `unique` |
    /// | `tags` | array of strings | tags (`--tag`) |
    /// | `after` | array of task ids | run after these tasks (`--after`) |
    /// | `backoff` | `"exponential"`, `"linear"` | backoff policy (`--backoff`) |
    /// | `backoff_delay` | duration string | backoff delay, clamped to 10 s .. 5 h (`--backoff-delay`) |
    /// | `max_attempts` | integer 1-10000 | attempt limit (`--max-attempts`) |
    /// | `priority` | integer 0-9 | 0 highest, default 5 (`--priority`) |
    /// | `expedited` | boolean | expedited work (`--expedited`) |
    /// | `out_of_quota` | `"run-as-normal"`, `"drop"` | expedited work over its quota (`--out-of-quota`); needs `expedited` |
    /// | `timeout` | duration string | wall-clock budget, at most the handler's |
    /// | `fuel` | integer | fuel budget, at most the handler's |
    /// | `max_memory` | size string (`"64MiB"`) or integer bytes | memory budget, at most the handler's |
    /// | `requires` | object | constraints: `network` (`"not-required"`, `"connected"`, `"unmetered"`, `"not-roaming"`, `"metered"`, `"temporarily-unmetered"`), and booleans `charging`, `battery_not_low`, `device_idle`, `storage_not_low` (`--requires-*`) |
    ///
    /// A field not in this table is refused by name, and so is a value of
    /// the wrong type or out of range (`field "priority": expected an
    /// integer 0-9, found "high"`), or a field that needs another one that
    /// is missing. Every error is [`WorkError::Invalid`], except bad input
    /// data, which is [`WorkError::Data`].
    pub fn from_json(text: &str) -> Result<WorkRequest, WorkError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| WorkError::Invalid(format!("the request is not valid JSON: {e}")))?;
        WorkRequest::from_json_value(&value)
    }

    /// [`WorkRequest::from_json`] on JSON already parsed.
    pub fn from_json_value(value: &Value) -> Result<WorkRequest, WorkError> {
        let Value::Object(map) = value else {
            return Err(WorkError::Invalid(format!(
                "the request must be a JSON object, found {}",
                json_kind(value)
            )));
        };
        let f = Fields::new(map, "", REQUEST_FIELDS)?;
        let handler = f.string("handler")?.ok_or_else(|| required("handler"))?;
        let task = f.string("task")?.ok_or_else(|| required("task"))?;
        let kind = f.choice("kind", TaskKind::NAMES, TaskKind::parse)?;
        let every = f.duration("every")?;
        let flex = f.duration("flex")?;
        let cron = f.string("cron")?;
        let tz = f.string("tz")?;
        let catch_up = f.choice("catch_up", CatchUp::NAMES, Some)?;
        let catch_up_max = f.integer("catch_up_max", 1, u64::from(super::MAX_CATCH_UP), "an integer 1-1000")?;

        let needs = |field: &str, present: bool, other: &str| {
            if present && f.get(field).is_some() {
                Err(WorkError::Invalid(format!(
                    "field {field:?} applies only with {other}; add it or leave {field:?} out"
                )))
            } else {
                Ok(())
            }
        };
        if every.is_some() && cron.is_some() {
            return Err(WorkError::Invalid(
                "fields \"every\" and \"cron\": periodic work has a period or a cron schedule, not both".into(),
            ));
        }
        needs("flex", every.is_none(), "\"every\"")?;
        for field in ["tz", "catch_up", "catch_up_max"] {
            needs(field, cron.is_none(), "\"cron\"")?;
        }
        let scheduled = every.is_some() || cron.is_some();
        let kind = match (kind, scheduled) {
            (None, true) | (Some(TaskKind::Periodic), true) => TaskKind::Periodic,
            (Some(TaskKind::Periodic), false) => {
                return Err(WorkError::Invalid(
                    "field \"kind\": periodic work needs \"every\" or \"cron\"".into(),
                ));
            }
            (Some(k), true) => {
                return Err(WorkError::Invalid(format!(
                    "field \"kind\": {:?} work has no period or cron schedule; leave \"kind\" out or make it \"periodic\"",
                    k.as_str()
                )));
            }
            (k, false) => k.unwrap_or(TaskKind::OneOff),
        };

        let mut r = if let Some(frequency) = every {
            let mut r = WorkRequest::periodic(&handler, &task, frequency);
            r.periodic = Some(Periodic {
                frequency,
                flex: flex.unwrap_or(frequency),
            });
            r
        } else if let Some(expr) = &cron {
            let catch_up = CatchUp::parse(catch_up.unwrap_or("last"), catch_up_max.map(|n| n as u32)).map_err(|e| {
                field_error(
                    if catch_up_max.is_some() {
                        "catch_up_max"
                    } else {
                        "catch_up"
                    },
                    e,
                )
            })?;
            if let Some(tz) = &tz {
                crate::cron::time_zone(tz).map_err(|e| WorkError::Invalid(format!("field \"tz\": {e}")))?;
            }
            let schedule = CronSchedule::new(expr, tz.as_deref(), catch_up).map_err(|e| field_error("cron", e))?;
            WorkRequest::cron(&handler, &task, schedule)
        } else if kind == TaskKind::Processing {
            WorkRequest::processing(&handler, &task)
        } else {
            WorkRequest::one_off(&handler, &task)
        };

        if let Some(input) = f.get("input") {
            r.input = Data::from_json_value(input).map_err(WorkError::Data)?;
        }
        if let Some(d) = f.duration("delay")? {
            r.initial_delay = d;
        }
        if let Some(at) = f.string("at")? {
            let at = crate::units::parse_rfc3339(&at).map_err(|e| WorkError::Invalid(format!("field \"at\": {e}")))?;
            r.run_at = Some(at);
        }
        let policy = f.choice("policy", ExistingWorkPolicy::NAMES, ExistingWorkPolicy::parse)?;
        needs("policy", f.get("unique").is_none(), "\"unique\"")?;
        if let Some(name) = f.string("unique")? {
            let default = if kind == TaskKind::Periodic {
                ExistingWorkPolicy::Update
            } else {
                ExistingWorkPolicy::Keep
            };
            r.unique = Some((name, policy.unwrap_or(default)));
        }
        if let Some(tags) = f.get("tags") {
            r.tags = string_array("tags", tags)?;
        }
        if let Some(after) = f.get("after") {
            r.after = id_array("after", after)?;
        }
        if let Some(b) = f.choice("backoff", BackoffPolicy::NAMES, BackoffPolicy::parse)? {
            r.backoff = b;
        }
        if let Some(d) = f.duration("backoff_delay")? {
            r.backoff_delay = d;
        }
        let max_attempts = f.integer("max_attempts", 1, u64::from(limits::MAX_ATTEMPTS), "an integer 1-10000")?;
        if let Some(n) = max_attempts {
            r.max_attempts = n as u32;
        }
        if let Some(p) = f.integer("priority", 0, u64::from(super::LOWEST_PRIORITY), "an integer 0-9")? {
            r.priority = p as u8;
        }
        let expedited = f.boolean("expedited")?.unwrap_or(false);
        let out_of_quota = f.choice("out_of_quota", OutOfQuotaPolicy::NAMES, OutOfQuotaPolicy::parse)?;
        needs("out_of_quota", !expedited, "\"expedited\": true")?;
        if expedited {
            r.expedited = Some(out_of_quota.unwrap_or(OutOfQuotaPolicy::RunAsNormal));
        }
        r.budget.timeout = f.duration("timeout")?;
        r.budget.fuel = f.integer("fuel", 0, u64::MAX, "a non-negative integer")?;
        r.budget.max_memory_bytes = match f.get("max_memory") {
            None => None,
            Some(Value::String(s)) => Some(
                crate::units::parse_size(s).map_err(|e| WorkError::Invalid(format!("field \"max_memory\": {e}")))?,
            ),
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                expected(
                    "max_memory",
                    "a size such as \"64MiB\", or a non-negative integer of bytes",
                    v,
                )
            })?),
        };
        if let Some(requires) = f.get("requires") {
            r.constraints = constraints(requires)?;
        }
        Ok(r)
    }
}

impl TaskInfo {
    /// The task as JSON, as `workhost inspect --json` prints it (and, with
    /// `attempts` false, as each element of `workhost list --json`): times
    /// in RFC 3339, periods in milliseconds, names as the CLI writes them.
    pub fn to_json(&self, attempts: bool) -> Value {
        let t = self;
        let mut v = serde_json::json!({
            "id": t.id,
            "handler": t.handler,
            "task": t.task,
            "kind": t.kind.as_str(),
            "state": t.state.as_str(),
            "unique_name": t.unique_name,
            "tags": t.tags,
            "input": t.input,
            "output": t.output,
            "progress": t.progress,
            "run_attempt_count": t.run_attempt_count,
            "max_attempts": t.max_attempts,
            "next_run_at": (t.state == TaskState::Enqueued).then(|| format_rfc3339(t.next_run_at)),
            "stop_reason": t.stop_reason,
            "error": t.error,
            "after": t.after,
            "constraints": t.constraints,
            "every_ms": t.periodic.map(|p| millis_u64(p.frequency)),
            "flex_ms": t.periodic.map(|p| millis_u64(p.flex)),
            "cron": t.cron.as_ref().map(|c| c.expr.clone()),
            "tz": t.cron.as_ref().map(|c| c.tz.clone()),
            "catch_up": t.cron.as_ref().map(|c| c.catch_up.to_text()),
            "priority": t.priority,
            "expedited": t.expedited,
            "pin": t.pin,
            "created_at": format_rfc3339(t.created_at),
            "finished_at": t.finished_at.map(format_rfc3339),
        });
        if attempts {
            v["attempts"] = serde_json::to_value(&t.attempts).expect("attempts serialize");
        }
        v
    }
}

fn millis_u64(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The fields of one JSON object, checked against the names it may have.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    /// `"requires."` inside `requires`, so errors name the full field.
    prefix: &'static str,
}

impl<'a> Fields<'a> {
    fn new(map: &'a Map<String, Value>, prefix: &'static str, known: &[&str]) -> Result<Fields<'a>, WorkError> {
        if let Some(unknown) = map.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(WorkError::Invalid(format!(
                "field {:?} is not known; the fields are {}",
                format!("{prefix}{unknown}"),
                known.join(", ")
            )));
        }
        Ok(Fields { map, prefix })
    }

    /// The field's value; `null` counts as absent.
    fn get(&self, field: &str) -> Option<&'a Value> {
        self.map.get(field).filter(|v| !v.is_null())
    }

    fn name(&self, field: &str) -> String {
        format!("{}{field}", self.prefix)
    }

    fn string(&self, field: &str) -> Result<Option<String>, WorkError> {
        self.get(field)
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| expected(&self.name(field), "a string", v))
            })
            .transpose()
    }

    fn boolean(&self, field: &str) -> Result<Option<bool>, WorkError> {
        self.get(field)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| expected(&self.name(field), "true or false", v))
            })
            .transpose()
    }

    /// A whole number in `min..=max`.
    fn integer(&self, field: &str, min: u64, max: u64, what: &str) -> Result<Option<u64>, WorkError> {
        self.get(field)
            .map(|v| {
                v.as_u64()
                    .filter(|n| (min..=max).contains(n))
                    .ok_or_else(|| expected(&self.name(field), what, v))
            })
            .transpose()
    }

    fn duration(&self, field: &str) -> Result<Option<Duration>, WorkError> {
        let Some(v) = self.get(field) else {
            return Ok(None);
        };
        let text = v
            .as_str()
            .ok_or_else(|| expected(&self.name(field), "a duration string such as \"30s\" or \"1h30m\"", v))?;
        crate::units::parse_duration(text)
            .map(Some)
            .map_err(|e| WorkError::Invalid(format!("field {:?}: {e}", self.name(field))))
    }

    /// One of `names`, read by `parse`.
    fn choice<T>(
        &self,
        field: &str,
        names: &[&str],
        parse: impl Fn(&'a str) -> Option<T>,
    ) -> Result<Option<T>, WorkError> {
        let Some(v) = self.get(field) else {
            return Ok(None);
        };
        let what = || format!("one of {}", quoted(names));
        let text = v.as_str().ok_or_else(|| expected(&self.name(field), &what(), v))?;
        parse(text)
            .map(Some)
            .ok_or_else(|| expected(&self.name(field), &what(), v))
    }
}

fn constraints(value: &Value) -> Result<Constraints, WorkError> {
    let Value::Object(map) = value else {
        return Err(expected("requires", "an object of constraints", value));
    };
    let f = Fields::new(map, "requires.", REQUIRES_FIELDS)?;
    Ok(Constraints {
        network: f
            .choice("network", NetworkType::NAMES, NetworkType::parse)?
            .unwrap_or_default(),
        charging: f.boolean("charging")?.unwrap_or(false),
        battery_not_low: f.boolean("battery_not_low")?.unwrap_or(false),
        device_idle: f.boolean("device_idle")?.unwrap_or(false),
        storage_not_low: f.boolean("storage_not_low")?.unwrap_or(false),
    })
}

fn string_array(field: &str, value: &Value) -> Result<Vec<String>, WorkError> {
    let bad = || expected(field, "an array of strings", value);
    value
        .as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|v| v.as_str().map(str::to_string).ok_or_else(bad))
        .collect()
}

fn id_array(field: &str, value: &Value) -> Result<Vec<super::TaskId>, WorkError> {
    let bad = || expected(field, "an array of task ids (integers)", value);
    value
        .as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|v| v.as_i64().ok_or_else(bad))
        .collect()
}

fn required(field: &str) -> WorkError {
    WorkError::Invalid(format!("field {field:?} is required"))
}

fn expected(field: &str, what: &str, found: &Value) -> WorkError {
    WorkError::Invalid(format!("field {field:?}: expected {what}, found {}", shown(found)))
}

/// A library error about one field, prefixed with its name.
fn field_error(field: &str, e: WorkError) -> WorkError {
    WorkError::Invalid(format!("field {field:?}: {e}"))
}

/// A value as an error shows it: short values as JSON, others by kind.
fn shown(v: &Value) -> String {
    match v {
        Value::Bool(_) | Value::Number(_) => v.to_string(),
        Value::String(s) if s.chars().count() <= 40 => v.to_string(),
        _ => json_kind(v).to_string(),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn quoted(names: &[&str]) -> String {
    names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::work::PeriodicFloor;

    /// Each case: a request and either a check of what it reads as, or a
    /// part of the error it is refused with.
    enum Expect {
        Reads(fn(&WorkRequest)),
        Refused(&'static str),
    }
    use Expect::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn requests_read_as_the_cli_builds_them_or_are_refused_naming_the_field() {
        let cases: &[(&str, Expect)] = &[
            (
                r#"{"handler": "echo", "task": "t"}"#,
                Reads(|r| assert_eq!(*r, WorkRequest::one_off("echo", "t"))),
            ),
            (
                r#"{"handler": "h", "task": "t", "kind": null, "input": null, "tags": null}"#,
                Reads(|r| assert_eq!(*r, WorkRequest::one_off("h", "t"))),
            ),
            (
                r#"{"handler": "h", "task": "t", "input": {"n": 3, "s": "x", "l": [true]}}"#,
                Reads(|r| {
                    assert_eq!(r.input.get("n"), Some(&3i64.into()));
                    assert_eq!(r.input.get("s"), Some(&"x".into()));
                }),
            ),
            (
                r#"{"handler": "h", "task": "t", "kind": "processing", "delay": "1m30s"}"#,
                Reads(|r| {
                    assert_eq!(r.kind, TaskKind::Processing);
                    assert_eq!(r.initial_delay, s(90));
                }),
            ),
            (
                r#"{"handler": "h", "task": "t", "every": "1h", "flex": "15m"}"#,
                Reads(|r| {
                    assert_eq!(r.kind, TaskKind::Periodic);
                    assert_eq!(
                        r.periodic,
                        Some(Periodic {
                            frequency: s(3600),
                            flex: s(900)
                        })
                    );
                }),
            ),
            (
                r#"{"handler": "h", "task": "t", "kind": "periodic", "every": "2h"}"#,
                Reads(|r| assert_eq!(r.periodic.map(|p| p.flex), Some(s(7200)))),
            ),
            (
                r#"{"handler": "h", "task": "t", "cron": "0 9 * * *", "tz": "Europe/Paris", "catch_up": "all", "catch_up_max": 3}"#,
                Reads(|r| {
                    let c = r.cron.as_ref().expect("a cron schedule");
                    assert_eq!((c.expr.as_str(), c.tz.as_str()), ("0 9 * * *", "Europe/Paris"));
                    assert_eq!(c.catch_up, CatchUp::All(3));
                    assert_eq!(r.kind, TaskKind::Periodic);
                }),
            ),
            (
                r#"{"handler": "h", "task": "t", "at": "2030-01-01T09:00:00+01:00"}"#,
                Reads(|r| assert_eq!(r.run_at, Some(1_893_484_800_000))),
            ),
            (
                r#"{"handler": "h", "task": "t", "unique": "u"}"#,
                Reads(|r| assert_eq!(r.unique, Some(("u".into(), ExistingWorkPolicy::Keep)))),
            ),
            (
                r#"{"handler": "h", "task": "t", "every": "1h", "unique": "u"}"#,
                Reads(|r| assert_eq!(r.unique, Some(("u".into(), ExistingWorkPolicy::Update)))),
            ),
            (
                r#"{"handler": "h", "task": "t", "unique": "u", "policy": "append-or-replace"}"#,
                Reads(|r| assert_eq!(r.unique, Some(("u".into(), ExistingWorkPolicy::AppendOrReplace)))),
            ),
            (
                r#"{"handler": "h", "task": "t", "tags": ["a", "b"], "after": [4, 7]}"#,
                Reads(|r| {
                    assert_eq!(r.tags, ["a", "b"]);
                    assert_eq!(r.after, [4, 7]);
                }),
            ),
            (
                r#"{"handler": "h", "task": "t", "backoff": "linear", "backoff_delay": "1m", "max_attempts": 3}"#,
                Reads(|r| {
                    assert_eq!(
                        (r.backoff, r.backoff_delay, r.max_attempts),
                        (BackoffPolicy::Linear, s(60), 3)
                    );
                }),
            ),
            (
                r#"{"handler": "h", "task": "t", "priority": 0, "expedited": true}"#,
                Reads(|r| {
                    assert_eq!(r.priority, 0);
                    assert_eq!(r.expedited, Some(OutOfQuotaPolicy::RunAsNormal));
                }),
            ),
            (
                r#"{"handler": "h", "task": "t", "expedited": true, "out_of_quota": "drop"}"#,
                Reads(|r| assert_eq!(r.expedited, Some(OutOfQuotaPolicy::Drop))),
            ),
            (
                r#"{"handler": "h", "task": "t", "timeout": "5s", "fuel": 1000, "max_memory": "64MiB"}"#,
                Reads(|r| {
                    assert_eq!(r.budget.timeout, Some(s(5)));
                    assert_eq!(r.budget.fuel, Some(1000));
                    assert_eq!(r.budget.max_memory_bytes, Some(64 << 20));
                }),
            ),
            (
                r#"{"handler": "h", "task": "t", "max_memory": 1048576}"#,
                Reads(|r| assert_eq!(r.budget.max_memory_bytes, Some(1 << 20))),
            ),
            (
                r#"{"handler": "h", "task": "t", "requires": {"network": "unmetered", "charging": true, "battery_not_low": true, "device_idle": true, "storage_not_low": true}}"#,
                Reads(|r| {
                    assert_eq!(
                        r.constraints,
                        Constraints {
                            network: NetworkType::Unmetered,
                            charging: true,
                            battery_not_low: true,
                            device_idle: true,
                            storage_not_low: true,
                        }
                    );
                }),
            ),
            // Malformed or not an object.
            (r#"{"handler": "h", "#, Refused("the request is not valid JSON")),
            ("[1]", Refused("the request must be a JSON object, found an array")),
            // Missing, unknown and mistyped fields are named.
            (r#"{"task": "t"}"#, Refused(r#"field "handler" is required"#)),
            (r#"{"handler": "h"}"#, Refused(r#"field "task" is required"#)),
            (
                r#"{"handler": "h", "task": "t", "prioriy": 1}"#,
                Refused(r#"field "prioriy" is not known; the fields are handler, task"#),
            ),
            (
                r#"{"handler": "h", "task": "t", "requires": {"wifi": true}}"#,
                Refused(r#"field "requires.wifi" is not known"#),
            ),
            (
                r#"{"handler": 7, "task": "t"}"#,
                Refused(r#"field "handler": expected a string, found 7"#),
            ),
            (
                r#"{"handler": "h", "task": "t", "priority": "high"}"#,
                Refused(r#"field "priority": expected an integer 0-9, found "high""#),
            ),
            (
                r#"{"handler": "h", "task": "t", "priority": 10}"#,
                Refused(r#"field "priority": expected an integer 0-9, found 10"#),
            ),
            (
                r#"{"handler": "h", "task": "t", "priority": -1}"#,
                Refused(r#"field "priority": expected an integer 0-9"#),
            ),
            (
                r#"{"handler": "h", "task": "t", "max_attempts": 0}"#,
                Refused(r#"field "max_attempts": expected an integer 1-10000, found 0"#),
            ),
            (
                r#"{"handler": "h", "task": "t", "max_attempts": 4294967296}"#,
                Refused(r#"field "max_attempts": expected an integer 1-10000"#),
            ),
            (
                r#"{"handler": "h", "task": "t", "fuel": 1.5}"#,
                Refused(r#"field "fuel": expected a non-negative integer, found 1.5"#),
            ),
            (
                r#"{"handler": "h", "task": "t", "delay": 10}"#,
                Refused(r#"field "delay": expected a duration string such as "30s""#),
            ),
            (
                r#"{"handler": "h", "task": "t", "delay": "soon"}"#,
                Refused(r#"field "delay": "#),
            ),
            (
                r#"{"handler": "h", "task": "t", "at": "tomorrow"}"#,
                Refused(r#"field "at": "#),
            ),
            (
                r#"{"handler": "h", "task": "t", "max_memory": "lots"}"#,
                Refused(r#"field "max_memory": "#),
            ),
            (
                r#"{"handler": "h", "task": "t", "max_memory": true}"#,
                Refused(r#"field "max_memory": expected a size"#),
            ),
            (
                r#"{"handler": "h", "task": "t", "kind": "daily"}"#,
                Refused(r#"field "kind": expected one of "one-off", "periodic", "processing", found "daily""#),
            ),
            (
                r#"{"handler": "h", "task": "t", "backoff": "quadratic"}"#,
                Refused(r#"field "backoff": expected one of "exponential", "linear""#),
            ),
            (
                r#"{"handler": "h", "task": "t", "expedited": "yes"}"#,
                Refused(r#"field "expedited": expected true or false, found "yes""#),
            ),
            (
                r#"{"handler": "h", "task": "t", "tags": ["a", 1]}"#,
                Refused(r#"field "tags": expected an array of strings"#),
            ),
            (
                r#"{"handler": "h", "task": "t", "after": ["1"]}"#,
                Refused(r#"field "after": expected an array of task ids (integers)"#),
            ),
            (
                r#"{"handler": "h", "task": "t", "input": [1]}"#,
                Refused("input data refused"),
            ),
            (
                r#"{"handler": "h", "task": "t", "requires": "wifi"}"#,
                Refused(r#"field "requires": expected an object of constraints, found "wifi""#),
            ),
            (
                r#"{"handler": "h", "task": "t", "requires": {"network": "5g"}}"#,
                Refused(r#"field "requires.network": expected one of "not-required""#),
            ),
            (
                r#"{"handler": "h", "task": "t", "requires": {"charging": 1}}"#,
                Refused(r#"field "requires.charging": expected true or false, found 1"#),
            ),
            // Fields that need another, or exclude one.
            (
                r#"{"handler": "h", "task": "t", "every": "1h", "cron": "0 9 * * *"}"#,
                Refused("not both"),
            ),
            (
                r#"{"handler": "h", "task": "t", "flex": "5m"}"#,
                Refused(r#"field "flex" applies only with "every""#),
            ),
            (
                r#"{"handler": "h", "task": "t", "tz": "UTC"}"#,
                Refused(r#"field "tz" applies only with "cron""#),
            ),
            (
                r#"{"handler": "h", "task": "t", "cron": "0 9 * * *", "catch_up_max": 3}"#,
                Refused(r#"field "catch_up_max": a catch-up cap applies only to catch-up "all""#),
            ),
            (
                r#"{"handler": "h", "task": "t", "cron": "0 9 * * *", "catch_up": "all", "catch_up_max": 0}"#,
                Refused(r#"field "catch_up_max": expected an integer 1-1000, found 0"#),
            ),
            (
                r#"{"handler": "h", "task": "t", "cron": "0 9 * * *", "tz": "Mars/Olympus"}"#,
                Refused(r#"field "tz": unknown time zone "Mars/Olympus""#),
            ),
            (
                r#"{"handler": "h", "task": "t", "cron": "every day"}"#,
                Refused(r#"field "cron": "#),
            ),
            (
                r#"{"handler": "h", "task": "t", "kind": "periodic"}"#,
                Refused(r#"field "kind": periodic work needs "every" or "cron""#),
            ),
            (
                r#"{"handler": "h", "task": "t", "kind": "processing", "every": "1h"}"#,
                Refused(r#"field "kind": "processing" work has no period"#),
            ),
            (
                r#"{"handler": "h", "task": "t", "policy": "replace"}"#,
                Refused(r#"field "policy" applies only with "unique""#),
            ),
            (
                r#"{"handler": "h", "task": "t", "out_of_quota": "drop"}"#,
                Refused(r#"field "out_of_quota" applies only with "expedited": true"#),
            ),
        ];
        for (json, expect) in cases {
            let result = WorkRequest::from_json(json);
            match (expect, result) {
                (Reads(check), Ok(r)) => check(&r),
                (Refused(part), Err(e)) => {
                    assert!(
                        e.to_string().contains(part),
                        "{json}\n  refused with {e:?},\n  expected {part:?}"
                    )
                }
                (Reads(_), Err(e)) => panic!("{json}\n  refused: {e}"),
                (Refused(part), Ok(r)) => panic!("{json}\n  read as {r:?},\n  expected a refusal with {part:?}"),
            }
        }
    }

    /// Past the reading, the request meets the CLI's limits at enqueue.
    #[test]
    fn requests_are_held_to_the_cli_limits_when_checked() {
        let floor = PeriodicFloor::default();
        for (json, part) in [
            (r#"{"handler": "h", "task": ""}"#, "the task name must not be empty"),
            (
                r#"{"handler": "h", "task": "t", "delay": "4000d"}"#,
                "longer than the limit",
            ),
            (r#"{"handler": "h", "task": "t", "timeout": "2d"}"#, "the timeout of 2d"),
            (
                r#"{"handler": "h", "task": "t", "fuel": 2000000000000000}"#,
                "the fuel budget",
            ),
            (
                r#"{"handler": "h", "task": "t", "max_memory": "8GiB"}"#,
                "the memory budget",
            ),
            (
                r#"{"handler": "h", "task": "t", "tags": [""]}"#,
                "tags must not be empty",
            ),
            (
                r#"{"handler": "h", "task": "t", "at": "2030-01-01T00:00:00Z", "delay": "1m"}"#,
                "not both",
            ),
            (
                r#"{"handler": "h", "task": "t", "every": "1h", "expedited": true}"#,
                "cannot be expedited",
            ),
            (
                r#"{"handler": "h", "task": "t", "every": "1h", "after": [1]}"#,
                "cannot run after",
            ),
            (
                r#"{"handler": "h", "task": "t", "unique": "u", "policy": "update"}"#,
                "does not apply to one-off work",
            ),
        ] {
            let r = WorkRequest::from_json(json).unwrap_or_else(|e| panic!("{json}: {e}"));
            let e = r.checked(&floor).expect_err(json).to_string();
            assert!(e.contains(part), "{json}: {e}");
        }
        let (r, warnings) = WorkRequest::from_json(r#"{"handler": "h", "task": "t", "every": "1m"}"#)
            .and_then(|r| r.checked(&floor))
            .expect("a periodic request");
        assert_eq!(
            r.periodic.map(|p| p.frequency),
            Some(s(15 * 60)),
            "clamped to the floor"
        );
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }
}
