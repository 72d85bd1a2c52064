//! Schedules beyond intervals (docs/schedules.md): cron schedules in IANA
//! time zones and what a missed fire does, priorities and the claim order
//! they give, expedited work and its quota, and per-handler rates. Pure:
//! the stores apply what is decided here.

use std::time::Duration;

use serde::Serialize;

use super::{Millis, WorkError, millis};
use crate::cron::Cron;

/// The highest priority (taken first).
pub const HIGHEST_PRIORITY: u8 = 0;
/// The lowest priority.
pub const LOWEST_PRIORITY: u8 = 9;
/// The priority of work that names none.
pub const DEFAULT_PRIORITY: u8 = 5;
/// How much waiting one priority level is worth: within a handler, due work
/// is taken in the order of its due time plus `priority` × this step, so a
/// priority-0 task goes before a priority-9 task due up to 45 minutes
/// earlier, and a task that has waited longer than that goes first whatever
/// its priority (nothing starves).
pub const PRIORITY_STEP: Duration = Duration::from_secs(5 * 60);
/// How far ahead of normal work expedited work is taken: a year, which in
/// practice means first.
pub const EXPEDITED_LEAD: Duration = Duration::from_secs(365 * 86_400);
/// How late a cron fire may start and still count as on time; later, its
/// fire was missed and the schedule's [`CatchUp`] policy decides (as
/// Quartz's misfire threshold).
pub const MISFIRE_GRACE: Duration = Duration::from_secs(60);
/// The most missed fires `catch-up = "all"` runs.
pub const MAX_CATCH_UP: u32 = 1000;
/// The missed fires `catch-up = "all"` runs when no cap is given.
pub const DEFAULT_CATCH_UP_CAP: u32 = 10;

/// The claim order key of a task (lower is taken first): its due time,
/// plus [`PRIORITY_STEP`] per priority level, minus [`EXPEDITED_LEAD`] if
/// it is expedited. The stores order by the same expression in SQL.
pub fn claim_key(next_run_at: Millis, priority: u8, expedited: bool) -> Millis {
    let mut key = next_run_at.saturating_add(i64::from(priority) * millis(PRIORITY_STEP));
    if expedited {
        key = key.saturating_sub(millis(EXPEDITED_LEAD));
    }
    key
}

/// What a cron schedule does with fires no run was started for in time
/// (no host ran, the wall clock jumped, or a run outlasted later fires).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CatchUp {
    /// Skip them: the next run is at the next fire to come.
    None,
    /// Run once, at once, for the latest of them (the default).
    #[default]
    Last,
    /// Run each of them in turn, at once, at most this many (the latest).
    All(u32),
}

impl Serialize for CatchUp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_text())
    }
}

impl CatchUp {
    /// The policy's names, for the CLI's choices.
    pub const NAMES: &'static [&'static str] = &["none", "last", "all"];

    /// Reads a policy name (`none`, `last`, `all`), with the cap of `all`
    /// (default [`DEFAULT_CATCH_UP_CAP`]).
    pub fn parse(name: &str, cap: Option<u32>) -> Result<CatchUp, WorkError> {
        let policy = match name {
            "none" => CatchUp::None,
            "last" => CatchUp::Last,
            "all" => CatchUp::All(cap.unwrap_or(DEFAULT_CATCH_UP_CAP)),
            other => {
                return Err(WorkError::Invalid(format!(
                    "catch-up {other:?} is not a policy; use none, last or all"
                )));
            }
        };
        if cap.is_some() && !matches!(policy, CatchUp::All(_)) {
            return Err(WorkError::Invalid(
                "a catch-up cap applies only to catch-up \"all\"".into(),
            ));
        }
        if let CatchUp::All(n) = policy
            && !(1..=MAX_CATCH_UP).contains(&n)
        {
            return Err(WorkError::Invalid(format!(
                "the catch-up cap is {n}; it must be 1 to {MAX_CATCH_UP}"
            )));
        }
        Ok(policy)
    }

    /// The policy as stored and printed: `none`, `last`, `all:N`.
    pub fn to_text(self) -> String {
        match self {
            CatchUp::None => "none".into(),
            CatchUp::Last => "last".into(),
            CatchUp::All(n) => format!("all:{n}"),
        }
    }

    /// Reads [`Self::to_text`]'s form.
    pub fn from_text(text: &str) -> Option<CatchUp> {
        match text.split_once(':') {
            Some(("all", n)) => n.parse().ok().map(CatchUp::All),
            None => match text {
                "none" => Some(CatchUp::None),
                "last" => Some(CatchUp::Last),
                _ => None,
            },
            _ => None,
        }
    }
}

/// A cron schedule: periodic work that runs at the fire times of a cron
/// expression in an IANA time zone, instead of every interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CronSchedule {
    /// The expression, as [`Cron::as_str`] gives it.
    pub expr: String,
    /// The IANA time zone its wall-clock times are in (`UTC` by default).
    pub tz: String,
    /// What missed fires do.
    pub catch_up: CatchUp,
}

impl CronSchedule {
    /// A schedule, checked: the expression parses and the zone exists.
    pub fn new(expr: &str, tz: Option<&str>, catch_up: CatchUp) -> Result<CronSchedule, WorkError> {
        let cron = Cron::parse(expr).map_err(|e| WorkError::Invalid(e.to_string()))?;
        let tz = tz.unwrap_or("UTC");
        crate::cron::time_zone(tz).map_err(WorkError::Invalid)?;
        Ok(CronSchedule {
            expr: cron.as_str().to_string(),
            tz: tz.to_string(),
            catch_up,
        })
    }

    fn parsed(&self) -> Option<(Cron, jiff::tz::TimeZone)> {
        Some((Cron::parse(&self.expr).ok()?, crate::cron::time_zone(&self.tz).ok()?))
    }

    /// The first fire strictly after `after`; `None` if there is none
    /// (never for a schedule [`Self::new`] accepted, before the year 9999).
    pub fn next_after(&self, after: Millis) -> Option<Millis> {
        let (cron, tz) = self.parsed()?;
        next(&cron, &tz, after)
    }

    /// Up to `n` fires strictly after `after`, in order.
    pub fn upcoming(&self, after: Millis, n: usize) -> Vec<Millis> {
        let Some((cron, tz)) = self.parsed() else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(n);
        let mut at = after;
        while out.len() < n {
            match next(&cron, &tz, at) {
                Some(f) => {
                    out.push(f);
                    at = f;
                }
                None => break,
            }
        }
        out
    }

    /// The last `k` fires in `(after, until]`, oldest first: found by
    /// looking back from `until` over windows that grow fourfold, so a
    /// schedule missed for years is not walked fire by fire.
    pub fn last_fires(&self, after: Millis, until: Millis, k: usize) -> Vec<Millis> {
        let Some((cron, tz)) = self.parsed() else {
            return Vec::new();
        };
        if k == 0 || until <= after {
            return Vec::new();
        }
        let mut span: Millis = 60_000;
        loop {
            let from = until.saturating_sub(span).max(after);
            let mut fires = Vec::new();
            let mut at = from;
            while let Some(f) = next(&cron, &tz, at) {
                if f > until {
                    break;
                }
                fires.push(f);
                at = f;
            }
            if fires.len() >= k || from == after {
                let cut = fires.len().saturating_sub(k);
                return fires.split_off(cut);
            }
            span = span.saturating_mul(4);
        }
    }

    /// The stored form: one JSON object.
    pub fn to_stored(&self) -> String {
        serde_json::json!({"expr": self.expr, "tz": self.tz, "catch_up": self.catch_up.to_text()}).to_string()
    }

    /// Reads [`Self::to_stored`]'s form.
    pub fn from_stored(text: &str) -> Option<CronSchedule> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        Some(CronSchedule {
            expr: v.get("expr")?.as_str()?.to_string(),
            tz: v.get("tz")?.as_str()?.to_string(),
            catch_up: CatchUp::from_text(v.get("catch_up")?.as_str()?)?,
        })
    }

    /// Where a cron task goes after the run for fire `fire` ended at `now`:
    /// `(period_start, next_run_at)`, the fire the next run stands for and
    /// when it is due. Fires in `(fire, now]` were missed during the run
    /// (or while no host ran): [`CatchUp`] decides.
    pub fn after_run(&self, fire: Millis, now: Millis) -> (Millis, Millis) {
        let upcoming = |at: Millis| {
            let n = self.next_after(at).unwrap_or(Millis::MAX);
            (n, n)
        };
        match self.catch_up {
            CatchUp::None => upcoming(now.max(fire)),
            CatchUp::Last => match self.last_fires(fire, now, 1).first() {
                Some(&last) => (last, now),
                None => upcoming(now.max(fire)),
            },
            CatchUp::All(cap) => match self.last_fires(fire, now, cap as usize).first() {
                Some(&first) => (first, first),
                None => upcoming(now.max(fire)),
            },
        }
    }

    /// What a run about to start at `now` for fire `fire` does, if `fire`
    /// was missed (more than [`MISFIRE_GRACE`] ago): `Skip(period_start,
    /// next_run_at)` (catch-up `none`: no run, the task waits for the next
    /// fire) or `Run(fire)` (run now, standing for this fire: the latest
    /// missed one, or with `all` the oldest of the `cap` latest). `None`:
    /// on time, run as claimed.
    pub fn on_late_start(&self, fire: Millis, now: Millis) -> Option<LateStart> {
        if now.saturating_sub(fire) <= millis(MISFIRE_GRACE) {
            return None;
        }
        Some(match self.catch_up {
            CatchUp::None => {
                let n = self.next_after(now).unwrap_or(Millis::MAX);
                LateStart::Skip(n, n)
            }
            CatchUp::Last => LateStart::Run(self.last_fires(fire - 1, now, 1).first().copied().unwrap_or(fire)),
            CatchUp::All(cap) => LateStart::Run(
                self.last_fires(fire - 1, now, cap as usize)
                    .first()
                    .copied()
                    .unwrap_or(fire),
            ),
        })
    }
}

/// What [`CronSchedule::on_late_start`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LateStart {
    /// Do not run: the task waits for `(period_start, next_run_at)`.
    Skip(Millis, Millis),
    /// Run, standing for this fire.
    Run(Millis),
}

fn next(cron: &Cron, tz: &jiff::tz::TimeZone, after: Millis) -> Option<Millis> {
    let ts = jiff::Timestamp::from_millisecond(after).ok()?;
    cron.next_after(ts, tz).map(|t| t.as_millisecond())
}

/// A rate: at most `count` per `per` (a sliding window).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Rate {
    /// How many.
    pub count: u32,
    /// Per how long.
    pub per: Duration,
}

impl Rate {
    /// Reads `N/unit` (`100/min`, `5/s`, `1000/hour`, `3/day`) or
    /// `N/duration` (`10/15m`); the error names what is wrong.
    pub fn parse(text: &str) -> Result<Rate, WorkError> {
        let bad = |why: &str| WorkError::Invalid(format!("rate {text:?} {why}; write N/unit, as 100/min or 10/15m"));
        let (n, unit) = text.trim().split_once('/').ok_or_else(|| bad("has no `/`"))?;
        let count: u32 = n
            .trim()
            .parse()
            .map_err(|_| bad("does not start with a whole number"))?;
        if count == 0 {
            return Err(bad("allows nothing (0)"));
        }
        let unit = unit.trim();
        let per = match unit {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86_400),
            other => crate::units::parse_duration(other).map_err(|_| bad("has no unit of time after `/`"))?,
        };
        if per.is_zero() {
            return Err(bad("has a window of zero"));
        }
        if per > super::limits::MAX_DURATION {
            return Err(bad("has a window longer than ten years"));
        }
        Ok(Rate { count, per })
    }

    /// The window in milliseconds.
    pub fn window_ms(&self) -> Millis {
        millis(self.per)
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.count, crate::units::format_duration(self.per))
    }
}

/// What an expedited request does when its handler's expedited quota is
/// spent (WorkManager's `OutOfQuotaPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutOfQuotaPolicy {
    /// Enqueue it as normal (not expedited) work, with a warning.
    RunAsNormal,
    /// Drop it: it is recorded as cancelled, saying why, and never runs.
    Drop,
}

crate::names::named_enum!(OutOfQuotaPolicy {
    RunAsNormal => "run-as-normal",
    Drop => "drop",
});

/// Scheduling limits of one handler, from the manifest
/// (`[handlers.NAME]` `rate` and `expedited_quota`), applied by the store
/// across every host that shares it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandlerLimits {
    /// Most runs started per window; work over it waits (attempts are not
    /// spent).
    pub rate: Option<Rate>,
    /// Most expedited requests accepted per window; over it, the request's
    /// [`OutOfQuotaPolicy`] decides. `None`: no quota.
    pub expedited_quota: Option<Rate>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> Millis {
        rfc3339.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn rates_read_every_unit_and_refuse_by_name() {
        let r = |t| Rate::parse(t).unwrap();
        assert_eq!(
            r("100/min"),
            Rate {
                count: 100,
                per: Duration::from_secs(60)
            }
        );
        assert_eq!(r("5/s").per, Duration::from_secs(1));
        assert_eq!(r("3 / day").per, Duration::from_secs(86_400));
        assert_eq!(r("10/15m").per, Duration::from_secs(900));
        assert_eq!(r("1/hour").to_string(), "1/1h");
        for (bad, why) in [
            ("100", "no `/`"),
            ("x/min", "whole number"),
            ("0/min", "allows nothing"),
            ("5/fortnight", "no unit of time"),
            ("5/0s", "window of zero"),
        ] {
            let e = Rate::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("N/unit"), "{bad}: {e}");
        }
    }

    #[test]
    fn catch_up_policies_read_and_store() {
        assert_eq!(CatchUp::parse("all", None).unwrap(), CatchUp::All(DEFAULT_CATCH_UP_CAP));
        assert_eq!(CatchUp::parse("all", Some(3)).unwrap(), CatchUp::All(3));
        assert!(
            CatchUp::parse("some", None)
                .unwrap_err()
                .to_string()
                .contains("none, last or all")
        );
        assert!(CatchUp::parse("last", Some(3)).is_err());
        assert!(CatchUp::parse("all", Some(0)).is_err());
        for p in [CatchUp::None, CatchUp::Last, CatchUp::All(7)] {
            assert_eq!(CatchUp::from_text(&p.to_text()), Some(p));
        }
    }

    #[test]
    fn priority_and_expedited_give_the_claim_order() {
        let now = 1_000_000_000;
        assert!(claim_key(now, 0, false) < claim_key(now, 5, false));
        // A priority-9 task due 46 minutes earlier goes before a fresh
        // priority-0 one; 44 minutes earlier, after it.
        assert!(claim_key(now - 46 * 60_000, 9, false) < claim_key(now, 0, false));
        assert!(claim_key(now - 44 * 60_000, 9, false) > claim_key(now, 0, false));
        assert!(claim_key(now, 9, true) < claim_key(now - 86_400_000, 0, false));
    }

    #[test]
    fn a_cron_schedule_stores_and_finds_its_fires() {
        let s = CronSchedule::new("0 9 * * MON-FRI", Some("Europe/Paris"), CatchUp::Last).unwrap();
        assert_eq!(CronSchedule::from_stored(&s.to_stored()), Some(s.clone()));
        // Friday 2026-12-04 10:00 UTC: the next fire is Monday 09:00 CET.
        let fires = s.upcoming(ms("2026-12-04T10:00:00Z"), 2);
        assert_eq!(fires, vec![ms("2026-12-07T08:00:00Z"), ms("2026-12-08T08:00:00Z")]);
        assert!(
            CronSchedule::new("0 25 * * *", None, CatchUp::Last)
                .unwrap_err()
                .to_string()
                .contains("hour")
        );
        assert!(
            CronSchedule::new("0 9 * * *", Some("Mars/Olympus"), CatchUp::Last)
                .unwrap_err()
                .to_string()
                .contains("Mars/Olympus")
        );
    }

    #[test]
    fn missed_fires_follow_the_catch_up_policy() {
        let hourly = |c| CronSchedule::new("0 * * * *", None, c).unwrap();
        let fire = ms("2026-01-01T08:00:00Z");
        // The run for 08:00 ended at 12:30: 09..12 were missed.
        let now = ms("2026-01-01T12:30:00Z");
        assert_eq!(
            hourly(CatchUp::None).after_run(fire, now),
            (ms("2026-01-01T13:00:00Z"), ms("2026-01-01T13:00:00Z"))
        );
        assert_eq!(
            hourly(CatchUp::Last).after_run(fire, now),
            (ms("2026-01-01T12:00:00Z"), now)
        );
        assert_eq!(
            hourly(CatchUp::All(10)).after_run(fire, now),
            (ms("2026-01-01T09:00:00Z"), ms("2026-01-01T09:00:00Z"))
        );
        assert_eq!(
            hourly(CatchUp::All(2)).after_run(fire, now),
            (ms("2026-01-01T11:00:00Z"), ms("2026-01-01T11:00:00Z"))
        );
        // Nothing missed: the next fire.
        let on_time = ms("2026-01-01T08:00:05Z");
        for c in [CatchUp::None, CatchUp::Last, CatchUp::All(3)] {
            assert_eq!(
                hourly(c).after_run(fire, on_time).0,
                ms("2026-01-01T09:00:00Z"),
                "{c:?}"
            );
        }
        // A start within the grace is on time; later, the policy decides.
        assert_eq!(hourly(CatchUp::None).on_late_start(fire, fire + 60_000), None);
        let late = ms("2026-01-01T11:10:00Z");
        assert_eq!(
            hourly(CatchUp::None).on_late_start(fire, late),
            Some(LateStart::Skip(ms("2026-01-01T12:00:00Z"), ms("2026-01-01T12:00:00Z")))
        );
        assert_eq!(
            hourly(CatchUp::Last).on_late_start(fire, late),
            Some(LateStart::Run(ms("2026-01-01T11:00:00Z")))
        );
        assert_eq!(
            hourly(CatchUp::All(10)).on_late_start(fire, late),
            Some(LateStart::Run(fire))
        );
        assert_eq!(
            hourly(CatchUp::All(2)).on_late_start(fire, late),
            Some(LateStart::Run(ms("2026-01-01T10:00:00Z")))
        );
        // Missed for years: found without walking every fire.
        let years = ms("2036-01-01T00:30:00Z");
        let t = std::time::Instant::now();
        assert_eq!(
            hourly(CatchUp::Last).after_run(fire, years).0,
            ms("2036-01-01T00:00:00Z")
        );
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}
