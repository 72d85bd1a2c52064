//! Cron expressions: parsing, and fire times computed in IANA time zones.
//!
//! # Syntax
//!
//! An expression has 5 whitespace-separated fields, `minute hour day-of-month month day-of-week`, or 6
//! with `second` first. Each field is `*`, a value, a range `a-b`, a step `*/n`, `a/n` (from `a` to the
//! field's maximum) or `a-b/n`, or a comma list of those. `?` means `*` in day-of-month and day-of-week.
//!
//! - Months also take `JAN`-`DEC`, weekdays `SUN`-`SAT` (any case), also in ranges (`MON-FRI`).
//!   Weekday numbers are 0-7, where 0 and 7 are both Sunday (`SUN` at the end of a range means 7, so
//!   `FRI-SUN` works). Ranges may not wrap around (`FRI-MON` is refused).
//! - Day-of-month also takes `L` (the last day of the month), `L-n` (n days before the last, n 1-30),
//!   `nW` (the weekday, Monday to Friday, nearest day n without leaving the month, as in Quartz; nothing
//!   in a month that has no day n) and `LW` (the last weekday of the month).
//! - Day-of-week also takes `dL` / `NAMEL` (the last such weekday of the month: `5L`, `FRIL`) and
//!   `d#n` / `NAME#n` (the n-th such weekday of the month, n 1-5: `MON#2`).
//! - Macros: `@yearly`/`@annually` (`0 0 1 1 *`), `@monthly` (`0 0 1 * *`), `@weekly` (`0 0 * * 0`),
//!   `@daily`/`@midnight` (`0 0 * * *`) and `@hourly` (`0 * * * *`).
//! - As in Vixie cron, when both day-of-month and day-of-week are restricted (neither is exactly `*` or
//!   `?`), a day matching either one fires (`0 0 13 * FRI` fires on every 13th and on every Friday);
//!   otherwise a day must match the restricted one.
//! - An expression that can never fire (`0 0 30 2 *`) is refused when parsed.
//!
//! # Time zones and daylight saving
//!
//! Fire times are wall-clock times in the time zone given. Two rules decide what happens on the days
//! the clocks change:
//!
//! 1. **When the hour field is restricted** (anything but exactly `*`, e.g. `30 2 * * *` or
//!    `0 9 * * MON-FRI`), each matching wall-clock time fires once.
//!    - A wall-clock time the clocks skip (spring forward) fires once, moved forward by the length of
//!      the gap (RFC 5545's rule, jiff's `Disambiguation::Compatible`). In Europe/Paris on 2026-03-29
//!      the clocks go from 02:00 to 03:00, so `30 2 * * *` fires at 03:30 CEST (01:30 UTC) that day.
//!      When two matching wall-clock times land on the same instant this way, it fires once.
//!    - A wall-clock time that happens twice (fall back) fires once, at its first occurrence. In
//!      Europe/Paris on 2026-10-25 the clocks go from 03:00 back to 02:00, so `30 2 * * *` fires at
//!      02:30 CEST (00:30 UTC) and not again at 02:30 CET (01:30 UTC).
//! 2. **When the hour field is exactly `*`** (e.g. `*/15 * * * *`, `0 * * * *`, `@hourly`), the
//!    schedule is an interval: it fires at every instant whose wall-clock time matches. In a repeated
//!    hour it fires in both occurrences: in Paris on 2026-10-25, `*/30 * * * *` fires at 02:00 CEST,
//!    02:30 CEST, 02:00 CET, 02:30 CET and 03:00 CET, every 30 minutes of real time. In a skipped hour
//!    there is nothing to fire: in Paris on 2026-03-29 it fires at 01:30 CET and then at 03:00 CEST,
//!    again 30 minutes of real time later.
//!
//! Fires are on whole seconds; [`Cron::next_after`] gives the first one strictly after the instant
//! given, which may have a fractional second.

use std::fmt;
use std::str::FromStr;

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

/// Fires are searched for up to the end of this (wall-clock) year.
const MAX_YEAR: i32 = 9998;

/// A parsed cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    /// The expression as given, trimmed, whitespace runs collapsed.
    text: String,
    /// Bit n: second n.
    seconds: u64,
    /// Bit n: minute n.
    minutes: u64,
    /// Bit n: hour n.
    hours: u64,
    /// Bit n: day of the month n (1-31).
    days: u64,
    /// Bit n: `L-n` (`L` is bit 0).
    days_before_last: u32,
    /// Bit n: `nW`.
    days_nearest_weekday: u64,
    /// `LW`.
    last_weekday: bool,
    /// Bit n: month n (1-12).
    months: u64,
    /// Bit n: weekday n (0 = Sunday .. 6).
    weekdays: u64,
    /// Bit n: `nL`, the last weekday n of the month.
    weekdays_last: u64,
    /// Bit `8 * d + n`: `d#n`, the n-th weekday d of the month.
    weekdays_nth: u64,
    /// Day-of-month is `*` or `?`.
    dom_any: bool,
    /// Day-of-week is `*` or `?`.
    dow_any: bool,
    /// The hour field is exactly `*`: an interval schedule (rule 2 of the module docs).
    hour_any: bool,
}

/// Why an expression was refused: names the field (position and name) and the token, and says what was
/// expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CronError {
    field: Option<&'static str>,
    message: String,
}

impl CronError {
    /// The name of the field at fault (`"second"`, `"minute"`, `"hour"`, `"day-of-month"`, `"month"` or
    /// `"day-of-week"`), or `None` when the expression as a whole is at fault (empty, wrong number of
    /// fields, unknown macro).
    pub fn field(&self) -> Option<&'static str> {
        self.field
    }

    fn whole(message: String) -> CronError {
        CronError { field: None, message }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Second,
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

struct Spec {
    kind: Kind,
    name: &'static str,
    min: u32,
    max: u32,
    /// Ends the "out of range" messages.
    desc: &'static str,
}

const SPECS: [Spec; 6] = [
    Spec {
        kind: Kind::Second,
        name: "second",
        min: 0,
        max: 59,
        desc: "seconds are 0-59",
    },
    Spec {
        kind: Kind::Minute,
        name: "minute",
        min: 0,
        max: 59,
        desc: "minutes are 0-59",
    },
    Spec {
        kind: Kind::Hour,
        name: "hour",
        min: 0,
        max: 23,
        desc: "hours are 0-23",
    },
    Spec {
        kind: Kind::DayOfMonth,
        name: "day-of-month",
        min: 1,
        max: 31,
        desc: "days of the month are 1-31",
    },
    Spec {
        kind: Kind::Month,
        name: "month",
        min: 1,
        max: 12,
        desc: "months are 1-12 or JAN-DEC",
    },
    Spec {
        kind: Kind::DayOfWeek,
        name: "day-of-week",
        min: 0,
        max: 7,
        desc: "weekdays are 0-7 or SUN-SAT",
    },
];

const MONTH_NAMES: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
const QUESTION_MARK: &str = "\"?\" is only allowed in day-of-month and day-of-week";
const L_ONLY: &str = "\"L\" is only allowed in day-of-month and day-of-week";

/// One parsed field.
#[derive(Default)]
struct FieldSet {
    bits: u64,
    before_last: u32,
    nearest_weekday: u64,
    last_weekday: bool,
    weekdays_last: u64,
    weekdays_nth: u64,
}

impl Cron {
    /// Parses an expression: 5 fields (`minute hour day-of-month month day-of-week`), 6 fields (`second`
    /// first) or a macro such as `@daily`; see the module documentation for the syntax.
    pub fn parse(expr: &str) -> Result<Cron, CronError> {
        let text = expr.split_whitespace().collect::<Vec<_>>().join(" ");
        if text.is_empty() {
            return Err(CronError::whole(
                "cron expression is empty; expected 5 fields (minute hour day-of-month month day-of-week), \
                 6 (second first) or a macro such as @daily"
                    .to_string(),
            ));
        }
        let body = if text.starts_with('@') {
            if let Some((first, _)) = text.split_once(' ') {
                return Err(CronError::whole(format!(
                    "cron macro {first:?} must stand alone, but the expression is {text:?}"
                )));
            }
            match text.to_ascii_lowercase().as_str() {
                "@yearly" | "@annually" => "0 0 1 1 *",
                "@monthly" => "0 0 1 * *",
                "@weekly" => "0 0 * * 0",
                "@daily" | "@midnight" => "0 0 * * *",
                "@hourly" => "0 * * * *",
                _ => {
                    return Err(CronError::whole(format!(
                        "unknown cron macro {text:?}; expected @yearly, @annually, @monthly, @weekly, @daily, \
                         @midnight or @hourly"
                    )));
                }
            }
        } else {
            text.as_str()
        }
        .to_string();
        let fields: Vec<&str> = body.split(' ').collect();
        let specs: &[Spec] = match fields.len() {
            5 => &SPECS[1..],
            6 => &SPECS[..],
            n => {
                let plural = if n == 1 { "" } else { "s" };
                return Err(CronError::whole(format!(
                    "cron expression {text:?} has {n} field{plural}; expected 5 (minute hour day-of-month month \
                     day-of-week) or 6 (second first)"
                )));
            }
        };
        let mut sets: Vec<FieldSet> = Vec::with_capacity(6);
        if fields.len() == 5 {
            // Second 0.
            sets.push(FieldSet {
                bits: 1,
                ..FieldSet::default()
            });
        }
        for (i, (field, spec)) in fields.iter().zip(specs).enumerate() {
            let set = parse_field(field, spec).map_err(|message| CronError {
                field: Some(spec.name),
                message: format!("cron field {} ({}): {message}", i + 1, spec.name),
            })?;
            sets.push(set);
        }
        let [sec, min, hour, dom, month, dow] = <[FieldSet; 6]>::try_from(sets).unwrap_or_else(|_| unreachable!());
        let n = fields.len();
        let (dom_text, month_text, dow_text) = (fields[n - 3], fields[n - 2], fields[n - 1]);
        let cron = Cron {
            text,
            seconds: sec.bits,
            minutes: min.bits,
            hours: hour.bits,
            days: dom.bits,
            days_before_last: dom.before_last,
            days_nearest_weekday: dom.nearest_weekday,
            last_weekday: dom.last_weekday,
            months: month.bits,
            weekdays: dow.bits,
            weekdays_last: dow.weekdays_last,
            weekdays_nth: dow.weekdays_nth,
            dom_any: matches!(dom_text, "*" | "?"),
            dow_any: matches!(dow_text, "*" | "?"),
            hour_any: fields[n - 4] == "*",
        };
        // Which days match depends only on the month's length, its first weekday and leap years; the 28
        // years 2001-2028 have every combination, so nothing there means never.
        let start = DateTime::new(2001, 1, 1, 0, 0, 0, 0).unwrap_or_default();
        if cron.next_wall(start, 2028).is_none() {
            return Err(CronError {
                field: Some("day-of-month"),
                message: format!(
                    "cron expression {:?} never fires: day-of-month {dom_text:?} has no day in month {month_text:?}",
                    cron.text
                ),
            });
        }
        Ok(cron)
    }

    /// The expression as given, trimmed, with runs of whitespace collapsed to one space.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first fire time strictly after `after`, in zone `tz`; `None` if there is none before the year
    /// 9999. Daylight saving follows the two rules of the module documentation.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        // The first whole second strictly after `after`.
        let truncated = Timestamp::from_second(after.as_second()).ok()?;
        let cur = if truncated > after {
            truncated
        } else {
            truncated.checked_add(SignedDuration::from_secs(1)).ok()?
        };
        let one_ns = SignedDuration::from_nanos(1);
        // Walk the spans of constant UTC offset from `cur` on; within one, wall-clock time grows with
        // real time, so the first matching wall-clock time at or after the span's start is its first fire.
        let mut seg = cur;
        loop {
            let off = tz.to_offset(seg);
            let end = tz.following(seg).next().map(|t| t.timestamp());
            let mut lo = seg;
            let mut best: Option<Timestamp> = None;
            if !self.hour_any
                && let Some(start) = seg
                    .checked_add(one_ns)
                    .ok()
                    .and_then(|t| tz.preceding(t).next())
                    .map(|t| t.timestamp())
                && let Ok(just_before) = start.checked_sub(one_ns)
            {
                // The span began at the transition `start`, from offset `prev`.
                let prev = tz.to_offset(just_before);
                let (p, o) = (prev.seconds(), off.seconds());
                if p > o {
                    // Fall back: the wall-clock times of the first `p - o` of the span already happened
                    // before the transition, and fire only there.
                    if let Ok(repeat_end) = start.checked_add(SignedDuration::from_secs(i64::from(p - o))) {
                        lo = lo.max(repeat_end);
                    }
                } else if o > p {
                    // Spring forward: the skipped wall-clock times [start+p, start+o) fire moved forward by
                    // the gap, at wall - p, which is in [start, start + (o - p)).
                    let gap_lo = prev.to_datetime(start).max(prev.to_datetime(seg));
                    let gap_hi = off.to_datetime(start);
                    if let Some(w) = self.next_wall(gap_lo, MAX_YEAR)
                        && w < gap_hi
                    {
                        best = prev.to_timestamp(w).ok();
                    }
                }
            }
            if end.is_none_or(|e| lo < e) {
                let Some(w) = self.next_wall(off.to_datetime(lo), MAX_YEAR) else {
                    return best;
                };
                if let Ok(t) = off.to_timestamp(w)
                    && end.is_none_or(|e| t < e)
                    && best.is_none_or(|b| t < b)
                {
                    best = Some(t);
                }
            }
            if best.is_some() {
                return best;
            }
            seg = end?;
        }
    }

    /// Up to `n` fire times strictly after `after`, in order (fewer if the schedule ends before the year
    /// 9999).
    pub fn upcoming(&self, after: Timestamp, tz: &TimeZone, n: usize) -> Vec<Timestamp> {
        let mut out = Vec::with_capacity(n.min(1024));
        let mut t = after;
        while out.len() < n {
            let Some(next) = self.next_after(t, tz) else { break };
            out.push(next);
            t = next;
        }
        out
    }

    /// The first wall-clock time at or after `start` (rounded up to a whole second) that matches, no later
    /// than the end of `max_year`. Jumps field by field: month, day, hour, minute, second.
    fn next_wall(&self, start: DateTime, max_year: i32) -> Option<DateTime> {
        let mut y = i32::from(start.year());
        let [mut mo, mut d, mut h, mut mi, mut s] =
            [start.month(), start.day(), start.hour(), start.minute(), start.second()].map(|v| v as u32);
        if start.subsec_nanosecond() > 0 {
            s += 1;
        }
        let mut cached: Option<(i32, u32, u64)> = None;
        loop {
            if y > max_year {
                return None;
            }
            let Some(m2) = next_bit(self.months, mo) else {
                (y, mo, d, h, mi, s) = (y + 1, 1, 1, 0, 0, 0);
                continue;
            };
            if m2 != mo {
                (mo, d, h, mi, s) = (m2, 1, 0, 0, 0);
            }
            let mask = match cached {
                Some((cy, cm, mask)) if cy == y && cm == mo => mask,
                _ => {
                    let mask = self.day_mask(y, mo);
                    cached = Some((y, mo, mask));
                    mask
                }
            };
            let Some(d2) = next_bit(mask, d) else {
                (mo, d, h, mi, s) = (mo + 1, 1, 0, 0, 0);
                continue;
            };
            if d2 != d {
                (d, h, mi, s) = (d2, 0, 0, 0);
            }
            let Some(h2) = next_bit(self.hours, h) else {
                (d, h, mi, s) = (d + 1, 0, 0, 0);
                continue;
            };
            if h2 != h {
                (h, mi, s) = (h2, 0, 0);
            }
            let Some(mi2) = next_bit(self.minutes, mi) else {
                (h, mi, s) = (h + 1, 0, 0);
                continue;
            };
            if mi2 != mi {
                (mi, s) = (mi2, 0);
            }
            let Some(s2) = next_bit(self.seconds, s) else {
                (mi, s) = (mi + 1, 0);
                continue;
            };
            return DateTime::new(
                i16::try_from(y).ok()?,
                i8::try_from(mo).ok()?,
                i8::try_from(d).ok()?,
                i8::try_from(h).ok()?,
                i8::try_from(mi).ok()?,
                i8::try_from(s2).ok()?,
                0,
            )
            .ok();
        }
    }

    /// The days (bits 1-31) of month `m` of year `y` that match day-of-month and day-of-week.
    fn day_mask(&self, y: i32, m: u32) -> u64 {
        let dim = days_in_month(y, m);
        let valid = ((1u64 << (dim + 1)) - 1) & !1;
        let first_wd = weekday(y, m, 1);
        let dom = || {
            let mut mask = self.days & valid;
            for n in bits(u64::from(self.days_before_last)) {
                if n < dim {
                    mask |= 1 << (dim - n);
                }
            }
            for n in bits(self.days_nearest_weekday) {
                if n <= dim {
                    let day = match (first_wd + n - 1) % 7 {
                        6 if n == 1 => 3,
                        6 => n - 1,
                        0 if n == dim => n - 2,
                        0 => n + 1,
                        _ => n,
                    };
                    mask |= 1 << day;
                }
            }
            if self.last_weekday {
                let day = match (first_wd + dim - 1) % 7 {
                    6 => dim - 1,
                    0 => dim - 2,
                    _ => dim,
                };
                mask |= 1 << day;
            }
            mask
        };
        let dow = || {
            let first = |wd: u32| 1 + (wd + 7 - first_wd) % 7;
            let mut mask = 0u64;
            for wd in bits(self.weekdays) {
                let mut day = first(wd);
                while day <= dim {
                    mask |= 1 << day;
                    day += 7;
                }
            }
            let last_wd = (first_wd + dim - 1) % 7;
            for wd in bits(self.weekdays_last) {
                mask |= 1 << (dim - (last_wd + 7 - wd) % 7);
            }
            for b in bits(self.weekdays_nth) {
                let day = first(b / 8) + 7 * (b % 8 - 1);
                if day <= dim {
                    mask |= 1 << day;
                }
            }
            mask
        };
        match (self.dom_any, self.dow_any) {
            (true, true) => valid,
            (false, true) => dom(),
            (true, false) => dow(),
            (false, false) => dom() | dow(),
        }
    }
}

impl FromStr for Cron {
    type Err = CronError;

    fn from_str(s: &str) -> Result<Cron, CronError> {
        Cron::parse(s)
    }
}

impl fmt::Display for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Resolves an IANA time zone name ("Europe/Paris", "UTC"); an unknown name is an error that names it and
/// gives an example of a valid one.
pub fn time_zone(name: &str) -> Result<TimeZone, String> {
    TimeZone::get(name).map_err(|_| {
        format!(
            "unknown time zone {name:?}; expected an IANA time zone name such as \"Europe/Paris\", \
             \"America/New_York\" or \"UTC\""
        )
    })
}

/// Parses one field; the error is the message without the "cron field N (name): " prefix.
fn parse_field(text: &str, spec: &Spec) -> Result<FieldSet, String> {
    let mut set = FieldSet::default();
    let dom_or_dow = matches!(spec.kind, Kind::DayOfMonth | Kind::DayOfWeek);
    if text == "?" {
        if !dom_or_dow {
            return Err(QUESTION_MARK.to_string());
        }
        set.bits = range_bits(spec, spec.min, top(spec), 1);
        return Ok(set);
    }
    if text.starts_with(',') {
        return Err(format!("{text:?} starts with a comma; expected a value before it"));
    }
    if text.ends_with(',') {
        return Err(format!("{text:?} has a trailing comma; expected a value after it"));
    }
    for item in text.split(',') {
        if item.is_empty() {
            return Err(format!(
                "{text:?} has two commas in a row; expected a value between them"
            ));
        }
        parse_item(item, spec, &mut set)?;
    }
    Ok(set)
}

/// The highest value `*` and `a/n` reach: 6 (Saturday) in day-of-week, where 7 is only another Sunday.
fn top(spec: &Spec) -> u32 {
    if spec.kind == Kind::DayOfWeek { 6 } else { spec.max }
}

fn range_bits(spec: &Spec, lo: u32, hi: u32, step: u32) -> u64 {
    let mut mask = 0u64;
    let mut v = lo;
    while v <= hi {
        mask |= 1 << if spec.kind == Kind::DayOfWeek { v % 7 } else { v };
        v += step;
    }
    mask
}

fn parse_item(item: &str, spec: &Spec, set: &mut FieldSet) -> Result<(), String> {
    if item.contains('?') {
        return Err(match spec.kind {
            Kind::DayOfMonth | Kind::DayOfWeek => format!("\"?\" must be the whole field, but found {item:?}"),
            _ => QUESTION_MARK.to_string(),
        });
    }
    let special = match spec.kind {
        Kind::DayOfMonth => parse_dom_special(item, set)?,
        Kind::DayOfWeek => parse_dow_special(item, spec, set)?,
        _ => false,
    };
    if special {
        return Ok(());
    }
    let (base, step) = match item.split_once('/') {
        Some((base, step)) => (base, Some(parse_step(step, item, spec)?)),
        None => (item, None),
    };
    let (lo, hi) = if base == "*" {
        (spec.min, top(spec))
    } else if let Some((a, b)) = base.split_once('-') {
        if a.is_empty() || b.is_empty() || b.contains('-') {
            return Err(format!("{item:?} is not a valid range; expected a-b, e.g. 1-5"));
        }
        let lo = parse_atom(a, spec, false)?;
        let hi = parse_atom(b, spec, true)?;
        if lo > hi {
            return Err(format!(
                "range {base:?} goes backwards ({lo} is after {hi}); ranges may not wrap around, so list the two \
                 parts separated by a comma"
            ));
        }
        (lo, hi)
    } else if base.is_empty() {
        return Err(format!("{item:?} has no value before \"/\"; expected e.g. */5 or 10/5"));
    } else {
        let v = parse_atom(base, spec, false)?;
        if step.is_some() { (v, top(spec).max(v)) } else { (v, v) }
    };
    set.bits |= range_bits(spec, lo, hi, step.unwrap_or(1));
    Ok(())
}

fn parse_step(step: &str, item: &str, spec: &Spec) -> Result<u32, String> {
    if step.is_empty() {
        return Err(format!("{item:?} has no step after \"/\"; expected a number, e.g. */5"));
    }
    if !step.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("step {step:?} in {item:?} is not a number"));
    }
    let count = top(spec) - spec.min + 1;
    match step.parse::<u32>() {
        Ok(0) => Err(format!("step 0 in {item:?}; a step must be at least 1")),
        Ok(n) if n <= count => Ok(n),
        _ => Err(format!("step {step} in {item:?} is too large; {}", spec.desc)),
    }
}

/// A value: a number in the field's range, or a month or weekday name; `SUN` is 7 at a range's end.
fn parse_atom(tok: &str, spec: &Spec, range_end: bool) -> Result<u32, String> {
    if !tok.is_empty() && tok.bytes().all(|b| b.is_ascii_digit()) {
        return tok
            .parse::<u32>()
            .ok()
            .filter(|v| (spec.min..=spec.max).contains(v))
            .ok_or_else(|| format!("{tok} is out of range; {}", spec.desc));
    }
    let names: &[&str] = match spec.kind {
        Kind::Month => &MONTH_NAMES,
        Kind::DayOfWeek => &WEEKDAY_NAMES,
        _ => &[],
    };
    if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(tok)) {
        let i = i as u32;
        return Ok(match spec.kind {
            Kind::Month => i + 1,
            _ if i == 0 && range_end => 7,
            _ => i,
        });
    }
    Err(unknown_token(tok, spec))
}

/// The message for a token that is neither a number nor a name of the field.
fn unknown_token(tok: &str, spec: &Spec) -> String {
    let up = tok.to_ascii_uppercase();
    let found = |special: &str| {
        if tok == special {
            String::new()
        } else {
            format!(" (found {tok:?})")
        }
    };
    if up.contains('#') && spec.kind != Kind::DayOfWeek {
        return format!("\"#\" is only allowed in day-of-week{}", found("#"));
    }
    let dom_or_dow = matches!(spec.kind, Kind::DayOfMonth | Kind::DayOfWeek);
    if !dom_or_dow && (up.starts_with('L') || (up.len() > 1 && up.ends_with('L'))) {
        return format!("{L_ONLY}{}", found("L"));
    }
    if spec.kind != Kind::DayOfMonth
        && let Some(day) = up.strip_suffix('W')
        && day.bytes().all(|b| b.is_ascii_digit())
    {
        return format!("\"W\" is only allowed in day-of-month{}", found("W"));
    }
    match spec.kind {
        Kind::Month => format!("{tok:?} is not a month; use 1-12 or JAN-DEC"),
        Kind::DayOfWeek => format!("{tok:?} is not a weekday; use 0-7 or SUN-SAT"),
        Kind::DayOfMonth => format!("{tok:?} is not a day of the month; use 1-31, L, L-n, nW or LW"),
        _ => format!("{tok:?} is not a number; {}", spec.desc),
    }
}

/// `L`, `L-n`, `LW` and `nW`; `Ok(false)` if `item` is none of them.
fn parse_dom_special(item: &str, set: &mut FieldSet) -> Result<bool, String> {
    let up = item.to_ascii_uppercase();
    if let Some((base, _)) = up.split_once('/') {
        if base.starts_with('L') || base.ends_with('W') {
            return Err(format!("{item:?}: L, L-n, LW and nW cannot take a step"));
        }
        return Ok(false);
    }
    if up == "L" {
        set.before_last |= 1;
        return Ok(true);
    }
    if up == "LW" {
        set.last_weekday = true;
        return Ok(true);
    }
    if let Some(n) = up.strip_prefix("L-") {
        let n = number_in(n, 1, 30)
            .ok_or_else(|| format!("{item:?}: n in L-n (n days before the last day of the month) must be 1-30"))?;
        set.before_last |= 1 << n;
        return Ok(true);
    }
    if let Some(n) = up.strip_suffix('W') {
        if n.is_empty() {
            return Err("\"W\" needs a day before it, e.g. 15W (the weekday nearest the 15th)".to_string());
        }
        if n.bytes().all(|b| b.is_ascii_digit()) {
            let n = number_in(n, 1, 31).ok_or_else(|| format!("{item:?}: the day in nW must be 1-31"))?;
            set.nearest_weekday |= 1 << n;
            return Ok(true);
        }
    }
    Ok(false)
}

/// `dL`/`NAMEL` and `d#n`/`NAME#n`; `Ok(false)` if `item` is neither.
fn parse_dow_special(item: &str, spec: &Spec, set: &mut FieldSet) -> Result<bool, String> {
    let up = item.to_ascii_uppercase();
    if let Some((day, n)) = up.split_once('#') {
        if day.is_empty() {
            return Err(format!(
                "{item:?}: \"#\" needs a weekday before it, e.g. MON#2 (the second Monday)"
            ));
        }
        let wd = parse_atom(&item[..day.len()], spec, false)?;
        let n = number_in(n, 1, 5)
            .ok_or_else(|| format!("{item:?}: the week number after \"#\" must be 1-5, e.g. MON#2"))?;
        set.weekdays_nth |= 1 << (8 * (wd % 7) + n);
        return Ok(true);
    }
    if up == "L" {
        return Err("\"L\" in day-of-week needs a weekday before it, e.g. 5L or FRIL (the last Friday)".to_string());
    }
    if up.len() > 1 && up.ends_with('L') && !up.contains(['/', '-']) {
        let wd = parse_atom(&item[..item.len() - 1], spec, false)?;
        set.weekdays_last |= 1 << (wd % 7);
        return Ok(true);
    }
    Ok(false)
}

/// `s` as a decimal number in `lo..=hi`.
fn number_in(s: &str, lo: u32, hi: u32) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u32>().ok().filter(|n| (lo..=hi).contains(n))
}

/// The lowest set bit of `mask` at or above `from`.
fn next_bit(mask: u64, from: u32) -> Option<u32> {
    if from >= 64 {
        return None;
    }
    let rest = mask & (!0u64 << from);
    (rest != 0).then(|| rest.trailing_zeros())
}

/// The set bits of `mask`, lowest first.
fn bits(mut mask: u64) -> impl Iterator<Item = u32> {
    std::iter::from_fn(move || {
        if mask == 0 {
            return None;
        }
        let b = mask.trailing_zeros();
        mask &= mask - 1;
        Some(b)
    })
}

fn is_leap(y: i32) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i32, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// The weekday of a date, 0 = Sunday (proleptic Gregorian calendar).
fn weekday(y: i32, m: u32, d: u32) -> u32 {
    // Days since 1970-01-01 (a Thursday), after Howard Hinnant's `days_from_civil`.
    let y = i64::from(y) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days + 4).rem_euclid(7) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::{Date, Weekday};
    use std::collections::BTreeSet;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap_or_else(|e| panic!("bad timestamp {s:?}: {e}"))
    }

    fn zone(name: &str) -> TimeZone {
        time_zone(name).unwrap()
    }

    fn cron(expr: &str) -> Cron {
        Cron::parse(expr).unwrap_or_else(|e| panic!("{expr:?}: {e}"))
    }

    /// Whether a wall-clock time matches, written independently of `day_mask` (with jiff's calendar).
    fn matches(c: &Cron, w: DateTime) -> bool {
        let bit = |mask: u64, v: i8| mask & (1 << v) != 0;
        bit(c.seconds, w.second())
            && bit(c.minutes, w.minute())
            && bit(c.hours, w.hour())
            && bit(c.months, w.month())
            && day_matches(c, w.date())
    }

    fn day_matches(c: &Cron, date: Date) -> bool {
        let is_weekday = |d: Date| !matches!(d.weekday(), Weekday::Saturday | Weekday::Sunday);
        let (day, dim) = (u32::from(date.day() as u8), u32::from(date.days_in_month() as u8));
        let day_of = |n: u32| date.with().day(n as i8).build().unwrap();
        let nearest = |n: u32| {
            let target = day_of(n);
            match target.weekday() {
                Weekday::Saturday if n > 1 => day_of(n - 1),
                Weekday::Saturday => day_of(n + 2),
                Weekday::Sunday if n < dim => day_of(n + 1),
                Weekday::Sunday => day_of(n - 2),
                _ => target,
            }
        };
        let dom = c.days & (1 << day) != 0
            || bits(u64::from(c.days_before_last)).any(|n| n < dim && day == dim - n)
            || bits(c.days_nearest_weekday).any(|n| n <= dim && nearest(n) == date)
            || (c.last_weekday && is_weekday(date) && (day + 1..=dim).all(|k| !is_weekday(day_of(k))));
        let wd = date.weekday().to_sunday_zero_offset() as u32;
        let dow = c.weekdays & (1 << wd) != 0
            || (c.weekdays_last & (1 << wd) != 0 && day + 7 > dim)
            || c.weekdays_nth & (1 << (8 * wd + (day - 1) / 7 + 1)) != 0;
        match (c.dom_any, c.dow_any) {
            (true, true) => true,
            (false, true) => dom,
            (true, false) => dow,
            (false, false) => dom || dow,
        }
    }

    #[test]
    fn parse_errors() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("", "cron expression is empty", None),
            (" \t  ", "cron expression is empty", None),
            (
                "* * *",
                "cron expression \"* * *\" has 3 fields; expected 5 (minute hour day-of-month month day-of-week) or 6 \
                 (second first)",
                None,
            ),
            ("*", "has 1 field;", None),
            ("* * * * * * *", "has 7 fields", None),
            ("@often", "unknown cron macro \"@often\"; expected @yearly", None),
            ("@", "unknown cron macro \"@\"", None),
            ("@daily 5", "cron macro \"@daily\" must stand alone", None),
            (
                "* 25 * * *",
                "cron field 2 (hour): 25 is out of range; hours are 0-23",
                Some("hour"),
            ),
            (
                "60 * * * * *",
                "cron field 1 (second): 60 is out of range; seconds are 0-59",
                Some("second"),
            ),
            (
                "0 60 * * * *",
                "cron field 2 (minute): 60 is out of range; minutes are 0-59",
                Some("minute"),
            ),
            (
                "0 0 0 * *",
                "cron field 3 (day-of-month): 0 is out of range; days of the month are 1-31",
                Some("day-of-month"),
            ),
            (
                "0 0 32 * *",
                "32 is out of range; days of the month are 1-31",
                Some("day-of-month"),
            ),
            (
                "0 0 * 13 *",
                "cron field 4 (month): 13 is out of range; months are 1-12",
                Some("month"),
            ),
            (
                "0 0 * * 8",
                "cron field 5 (day-of-week): 8 is out of range; weekdays are 0-7",
                Some("day-of-week"),
            ),
            (
                "99999999999 * * * *",
                "99999999999 is out of range; minutes are 0-59",
                Some("minute"),
            ),
            (
                "* * * * FUN",
                "cron field 5 (day-of-week): \"FUN\" is not a weekday; use 0-7 or SUN-SAT",
                Some("day-of-week"),
            ),
            (
                "0 0 * FOO *",
                "cron field 4 (month): \"FOO\" is not a month; use 1-12 or JAN-DEC",
                Some("month"),
            ),
            (
                "x * * * *",
                "cron field 1 (minute): \"x\" is not a number; minutes are 0-59",
                Some("minute"),
            ),
            (
                "0 0 x * *",
                "\"x\" is not a day of the month; use 1-31, L, L-n, nW or LW",
                Some("day-of-month"),
            ),
            (
                "*/0 * * * *",
                "cron field 1 (minute): step 0 in \"*/0\"; a step must be at least 1",
                Some("minute"),
            ),
            (
                "0 0 * * 1-5/0",
                "cron field 5 (day-of-week): step 0 in \"1-5/0\"",
                Some("day-of-week"),
            ),
            ("*/x * * * *", "step \"x\" in \"*/x\" is not a number", Some("minute")),
            (
                "*/61 * * * *",
                "step 61 in \"*/61\" is too large; minutes are 0-59",
                Some("minute"),
            ),
            ("5/ * * * *", "\"5/\" has no step after \"/\"", Some("minute")),
            ("/5 * * * *", "\"/5\" has no value before \"/\"", Some("minute")),
            (
                "0 L * * *",
                "cron field 2 (hour): \"L\" is only allowed in day-of-month and day-of-week",
                Some("hour"),
            ),
            (
                "0 0 * L *",
                "cron field 4 (month): \"L\" is only allowed in day-of-month and day-of-week",
                Some("month"),
            ),
            (
                "L 0 0 * * *",
                "cron field 1 (second): \"L\" is only allowed in day-of-month",
                Some("second"),
            ),
            (
                "L-2 * * * *",
                "cron field 1 (minute): \"L\" is only allowed in day-of-month and day-of-week",
                Some("minute"),
            ),
            (
                "0 0 * 5L *",
                "cron field 4 (month): \"L\" is only allowed in day-of-month and day-of-week (found \"5L\")",
                Some("month"),
            ),
            (
                "0 0 * * 15W",
                "cron field 5 (day-of-week): \"W\" is only allowed in day-of-month",
                Some("day-of-week"),
            ),
            (
                "0 15W * * *",
                "cron field 2 (hour): \"W\" is only allowed in day-of-month",
                Some("hour"),
            ),
            (
                "0 0 1#2 * *",
                "cron field 3 (day-of-month): \"#\" is only allowed in day-of-week",
                Some("day-of-month"),
            ),
            (
                "? * * * *",
                "cron field 1 (minute): \"?\" is only allowed in day-of-month and day-of-week",
                Some("minute"),
            ),
            (
                "0 0 ?,1 * *",
                "cron field 3 (day-of-month): \"?\" must be the whole field",
                Some("day-of-month"),
            ),
            (
                "1,2, * * * *",
                "cron field 1 (minute): \"1,2,\" has a trailing comma",
                Some("minute"),
            ),
            (",1 * * * *", "\",1\" starts with a comma", Some("minute")),
            ("1,,2 * * * *", "\"1,,2\" has two commas in a row", Some("minute")),
            (
                "5-2 * * * *",
                "cron field 1 (minute): range \"5-2\" goes backwards (5 is after 2)",
                Some("minute"),
            ),
            (
                "0 0 * * FRI-MON",
                "range \"FRI-MON\" goes backwards (5 is after 1); ranges may not wrap around",
                Some("day-of-week"),
            ),
            ("0 0 * NOV-FEB *", "range \"NOV-FEB\" goes backwards", Some("month")),
            ("1-2-3 * * * *", "\"1-2-3\" is not a valid range", Some("minute")),
            ("-5 * * * *", "\"-5\" is not a valid range", Some("minute")),
            (
                "0 0 L-31 * *",
                "\"L-31\": n in L-n (n days before the last day of the month) must be 1-30",
                Some("day-of-month"),
            ),
            ("0 0 L-0 * *", "must be 1-30", Some("day-of-month")),
            ("0 0 L-x * *", "must be 1-30", Some("day-of-month")),
            ("0 0 0W * *", "\"0W\": the day in nW must be 1-31", Some("day-of-month")),
            ("0 0 32W * *", "the day in nW must be 1-31", Some("day-of-month")),
            ("0 0 W * *", "\"W\" needs a day before it", Some("day-of-month")),
            (
                "0 0 L/2 * *",
                "\"L/2\": L, L-n, LW and nW cannot take a step",
                Some("day-of-month"),
            ),
            ("0 0 5L * *", "\"5L\" is not a day of the month", Some("day-of-month")),
            (
                "0 0 * * MON#6",
                "\"MON#6\": the week number after \"#\" must be 1-5",
                Some("day-of-week"),
            ),
            (
                "0 0 * * 1#0",
                "the week number after \"#\" must be 1-5",
                Some("day-of-week"),
            ),
            ("0 0 * * #2", "\"#\" needs a weekday before it", Some("day-of-week")),
            ("0 0 * * FUN#2", "\"FUN\" is not a weekday", Some("day-of-week")),
            (
                "0 0 * * L",
                "\"L\" in day-of-week needs a weekday before it",
                Some("day-of-week"),
            ),
            ("0 0 * * 9L", "9 is out of range; weekdays are 0-7", Some("day-of-week")),
            (
                "0 0 30 2 *",
                "cron expression \"0 0 30 2 *\" never fires",
                Some("day-of-month"),
            ),
            ("0 0 31 4,6 *", "never fires", Some("day-of-month")),
            ("0 0 31 APR,JUN,SEP,NOV *", "never fires", Some("day-of-month")),
            ("0 0 0 31W 2 *", "never fires", Some("day-of-month")),
            ("0 0 L-30 2 *", "never fires", Some("day-of-month")),
        ];
        for &(expr, want, field) in cases {
            let err = Cron::parse(expr).expect_err(expr);
            let msg = err.to_string();
            assert!(msg.contains(want), "{expr:?}: message {msg:?} lacks {want:?}");
            assert_eq!(err.field(), field, "{expr:?}: {msg}");
            assert_eq!(expr.parse::<Cron>(), Err(err));
        }
    }

    #[test]
    fn parses_and_normalizes() {
        let valid = [
            "0 0 ? * MON#2",
            "0 0 L-3 * *",
            "0 0 LW,L,15W * *",
            "0 0 * * 1-7",
            "0 0 * * SAT-SUN",
            "0 0 * * 5L,sun#1",
            "*/5 1/2 1-10/3 JAN-MAR,dec */2",
            "0 0 1 jan mon",
            "0 0 29 2 *",
            "0 0 L-30 * *",
            "@YEARLY",
            "@annually",
            "@monthly",
            "@weekly",
            "@daily",
            "@midnight",
            "@hourly",
            "*/60 * * * *",
        ];
        for expr in valid {
            let c = cron(expr);
            assert_eq!(c.as_str(), expr);
            assert_eq!(c.to_string(), expr);
        }
        let c: Cron = "  0   9 *\t* \n MON-FRI ".parse().unwrap();
        assert_eq!(c.as_str(), "0 9 * * MON-FRI");
        assert_eq!(c, cron("0 9 * * MON-FRI"));
        // `SUN` at the end of a range is 7; `*/2` in day-of-week runs over 0-6.
        assert_eq!(cron("0 0 * * FRI-SUN").weekdays, 0b110_0001);
        assert_eq!(cron("0 0 * * */2").weekdays, 0b101_0101);
        assert_eq!(cron("0 0 * * 1/2").weekdays, 0b010_1010);
        assert_eq!(cron("0 0 * * 0").weekdays, cron("0 0 * * 7").weekdays);
        assert!(cron("0 * * * *").hour_any && cron("* * * * * *").hour_any && !cron("* 0 * * *").hour_any);
        assert!(cron("0 0 ? * *").dom_any && cron("0 0 * * ?").dow_any && !cron("0 0 */1 * *").dom_any);
        assert!(cron("@hourly").hour_any && !cron("@daily").hour_any && !cron("0 */1 * * *").hour_any);
    }

    /// (expression, zone, after, the fires expected after it)
    type Case = (&'static str, &'static str, &'static str, &'static [&'static str]);

    fn check(cases: &[Case]) {
        for &(expr, tz, after, want) in cases {
            let got: Vec<Timestamp> = cron(expr).upcoming(ts(after), &zone(tz), want.len());
            let want: Vec<Timestamp> = want.iter().map(|s| ts(s)).collect();
            assert_eq!(got, want, "{expr:?} in {tz} after {after}");
        }
    }

    #[test]
    fn known_fire_times() {
        check(&[
            // Weekdays at 9 in Paris across a week boundary, in winter and summer time.
            (
                "0 9 * * MON-FRI",
                "Europe/Paris",
                "2026-01-09T08:00:00Z",
                &["2026-01-12T08:00:00Z", "2026-01-13T08:00:00Z", "2026-01-14T08:00:00Z"],
            ),
            (
                "0 9 * * MON-FRI",
                "Europe/Paris",
                "2026-01-09T07:59:59.999Z",
                &["2026-01-09T08:00:00Z", "2026-01-12T08:00:00Z"],
            ),
            (
                "0 9 * * MON-FRI",
                "Europe/Paris",
                "2026-07-03T12:00:00Z",
                &["2026-07-06T07:00:00Z"],
            ),
            // Last day of February, leap and not, and a century that is not a leap year.
            (
                "0 0 L * *",
                "UTC",
                "2024-02-01T00:00:00Z",
                &["2024-02-29T00:00:00Z", "2024-03-31T00:00:00Z"],
            ),
            (
                "0 0 L * *",
                "UTC",
                "2026-02-01T00:00:00Z",
                &["2026-02-28T00:00:00Z", "2026-03-31T00:00:00Z"],
            ),
            ("0 0 L * *", "UTC", "2100-02-01T00:00:00Z", &["2100-02-28T00:00:00Z"]),
            (
                "0 0 L-2 * *",
                "UTC",
                "2026-02-01T00:00:00Z",
                &["2026-02-26T00:00:00Z", "2026-03-29T00:00:00Z"],
            ),
            // 15W: the 15th is a Saturday (Friday 14th), then a Monday; the 15th is a Sunday (Monday 16th).
            (
                "0 0 15W * *",
                "UTC",
                "2025-11-01T00:00:00Z",
                &["2025-11-14T00:00:00Z", "2025-12-15T00:00:00Z"],
            ),
            ("0 0 15W * *", "UTC", "2026-02-01T00:00:00Z", &["2026-02-16T00:00:00Z"]),
            // 1W on Saturday 2025-11-01: Monday the 3rd, not Friday October 31st.
            (
                "0 0 1W * *",
                "UTC",
                "2025-10-02T00:00:00Z",
                &["2025-11-03T00:00:00Z", "2025-12-01T00:00:00Z"],
            ),
            // 31W on Sunday 2026-05-31: Friday the 29th; nothing in 30-day months.
            (
                "0 0 31W * *",
                "UTC",
                "2026-05-01T00:00:00Z",
                &["2026-05-29T00:00:00Z", "2026-07-31T00:00:00Z"],
            ),
            (
                "0 0 LW * *",
                "UTC",
                "2026-01-01T00:00:00Z",
                &["2026-01-30T00:00:00Z", "2026-02-27T00:00:00Z", "2026-03-31T00:00:00Z"],
            ),
            ("0 0 LW * *", "UTC", "2026-05-01T00:00:00Z", &["2026-05-29T00:00:00Z"]),
            (
                "0 0 * * FRI#3",
                "UTC",
                "2026-01-01T00:00:00Z",
                &["2026-01-16T00:00:00Z", "2026-02-20T00:00:00Z"],
            ),
            (
                "0 0 * * MON#5",
                "UTC",
                "2026-01-01T00:00:00Z",
                &["2026-03-30T00:00:00Z", "2026-06-29T00:00:00Z"],
            ),
            (
                "0 0 * * 5L",
                "UTC",
                "2026-01-01T00:00:00Z",
                &["2026-01-30T00:00:00Z", "2026-02-27T00:00:00Z"],
            ),
            (
                "0 0 * * FRIL",
                "UTC",
                "2026-01-01T00:00:00Z",
                &["2026-01-30T00:00:00Z", "2026-02-27T00:00:00Z"],
            ),
            (
                "@hourly",
                "UTC",
                "2026-01-01T10:30:00Z",
                &["2026-01-01T11:00:00Z", "2026-01-01T12:00:00Z"],
            ),
            (
                "@hourly",
                "Asia/Kolkata",
                "2026-01-01T10:00:00Z",
                &["2026-01-01T10:30:00Z", "2026-01-01T11:30:00Z"],
            ),
            (
                "@weekly",
                "UTC",
                "2026-01-01T00:00:00Z",
                &["2026-01-04T00:00:00Z", "2026-01-11T00:00:00Z"],
            ),
            (
                "@yearly",
                "Europe/Paris",
                "2026-06-01T00:00:00Z",
                &["2026-12-31T23:00:00Z"],
            ),
            (
                "@monthly",
                "America/New_York",
                "2026-01-15T00:00:00Z",
                &["2026-02-01T05:00:00Z", "2026-03-01T05:00:00Z"],
            ),
            (
                "0 0 * * SAT-SUN",
                "UTC",
                "2026-01-01T00:00:00Z",
                &["2026-01-03T00:00:00Z", "2026-01-04T00:00:00Z", "2026-01-10T00:00:00Z"],
            ),
            // Six fields, seconds first; sub-second parts of `after`.
            (
                "*/15 30 9 * * *",
                "UTC",
                "2026-01-01T09:30:50Z",
                &["2026-01-02T09:30:00Z", "2026-01-02T09:30:15Z"],
            ),
            (
                "30 * * * * *",
                "UTC",
                "2026-01-01T10:00:29.999Z",
                &["2026-01-01T10:00:30Z", "2026-01-01T10:01:30Z"],
            ),
            (
                "30 * * * * *",
                "UTC",
                "2026-01-01T10:00:30.5Z",
                &["2026-01-01T10:01:30Z"],
            ),
            (
                "* * * * * *",
                "UTC",
                "1969-12-31T23:59:58.5Z",
                &["1969-12-31T23:59:59Z", "1970-01-01T00:00:00Z"],
            ),
            (
                "0 0 0 29 2 *",
                "UTC",
                "2097-01-01T00:00:00Z",
                &["2104-02-29T00:00:00Z", "2108-02-29T00:00:00Z"],
            ),
            // Vixie cron: both day fields restricted, either fires.
            (
                "0 0 13 * FRI",
                "UTC",
                "2026-04-01T00:00:00Z",
                &[
                    "2026-04-03T00:00:00Z",
                    "2026-04-10T00:00:00Z",
                    "2026-04-13T00:00:00Z",
                    "2026-04-17T00:00:00Z",
                ],
            ),
            (
                "0 0 29 2 MON",
                "UTC",
                "2027-01-01T00:00:00Z",
                &[
                    "2027-02-01T00:00:00Z",
                    "2027-02-08T00:00:00Z",
                    "2027-02-15T00:00:00Z",
                    "2027-02-22T00:00:00Z",
                    "2028-02-07T00:00:00Z",
                ],
            ),
            (
                "0 0 13 * ?",
                "UTC",
                "2026-04-01T00:00:00Z",
                &["2026-04-13T00:00:00Z", "2026-05-13T00:00:00Z"],
            ),
            (
                "0 0 ? * FRI",
                "UTC",
                "2026-04-01T00:00:00Z",
                &["2026-04-03T00:00:00Z", "2026-04-10T00:00:00Z"],
            ),
        ]);
    }

    #[test]
    fn daylight_saving() {
        check(&[
            // Paris, spring forward 2026-03-29 02:00 CET -> 03:00 CEST: 02:30 fires once, at 03:30 CEST.
            (
                "30 2 * * *",
                "Europe/Paris",
                "2026-03-27T12:00:00Z",
                &["2026-03-28T01:30:00Z", "2026-03-29T01:30:00Z", "2026-03-30T00:30:00Z"],
            ),
            (
                "0 3 * * *",
                "Europe/Paris",
                "2026-03-28T12:00:00Z",
                &["2026-03-29T01:00:00Z", "2026-03-30T01:00:00Z"],
            ),
            // 02:30 (moved to 03:30) and 03:30 are the same instant: one fire.
            (
                "30 2,3 * * *",
                "Europe/Paris",
                "2026-03-29T00:00:00Z",
                &["2026-03-29T01:30:00Z", "2026-03-30T00:30:00Z"],
            ),
            (
                "0,30 2 * * *",
                "Europe/Paris",
                "2026-03-29T00:00:00Z",
                &["2026-03-29T01:00:00Z", "2026-03-29T01:30:00Z", "2026-03-30T00:00:00Z"],
            ),
            (
                "0 2 * * *",
                "Europe/Paris",
                "2026-03-29T01:00:00Z",
                &["2026-03-30T00:00:00Z"],
            ),
            (
                "0 2 * * *",
                "Europe/Paris",
                "2026-03-29T00:59:59.5Z",
                &["2026-03-29T01:00:00Z"],
            ),
            // Paris, fall back 2026-10-25 03:00 CEST -> 02:00 CET: 02:30 fires once, at 02:30 CEST.
            (
                "30 2 * * *",
                "Europe/Paris",
                "2026-10-24T12:00:00Z",
                &["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"],
            ),
            (
                "30 2 * * *",
                "Europe/Paris",
                "2026-10-25T00:30:00Z",
                &["2026-10-26T01:30:00Z"],
            ),
            (
                "30 2 * * *",
                "Europe/Paris",
                "2026-10-25T01:10:00Z",
                &["2026-10-26T01:30:00Z"],
            ),
            (
                "0 3 * * *",
                "Europe/Paris",
                "2026-10-24T12:00:00Z",
                &["2026-10-25T02:00:00Z"],
            ),
            // Intervals (hour `*`): both occurrences of the repeated hour, nothing in the skipped one.
            (
                "*/30 * * * *",
                "Europe/Paris",
                "2026-10-24T23:45:00Z",
                &[
                    "2026-10-25T00:00:00Z",
                    "2026-10-25T00:30:00Z",
                    "2026-10-25T01:00:00Z",
                    "2026-10-25T01:30:00Z",
                    "2026-10-25T02:00:00Z",
                ],
            ),
            (
                "*/30 * * * *",
                "Europe/Paris",
                "2026-03-29T00:15:00Z",
                &["2026-03-29T00:30:00Z", "2026-03-29T01:00:00Z", "2026-03-29T01:30:00Z"],
            ),
            (
                "0 * * * *",
                "Europe/Paris",
                "2026-10-24T23:30:00Z",
                &["2026-10-25T00:00:00Z", "2026-10-25T01:00:00Z", "2026-10-25T02:00:00Z"],
            ),
            (
                "30 * * * *",
                "Europe/Paris",
                "2026-03-29T00:00:00Z",
                &["2026-03-29T00:30:00Z", "2026-03-29T01:30:00Z"],
            ),
            (
                "0 0 * * * *",
                "Europe/Paris",
                "2026-10-25T00:59:59Z",
                &["2026-10-25T01:00:00Z", "2026-10-25T02:00:00Z"],
            ),
            // New York, spring forward 2026-03-08 02:00 EST -> 03:00 EDT.
            (
                "30 2 * * *",
                "America/New_York",
                "2026-03-07T12:00:00Z",
                &["2026-03-08T07:30:00Z", "2026-03-09T06:30:00Z"],
            ),
            (
                "*/30 * * * *",
                "America/New_York",
                "2026-03-08T06:15:00Z",
                &["2026-03-08T06:30:00Z", "2026-03-08T07:00:00Z", "2026-03-08T07:30:00Z"],
            ),
            // New York, fall back 2026-11-01 02:00 EDT -> 01:00 EST: 01:30 fires once, at 01:30 EDT.
            (
                "30 1 * * *",
                "America/New_York",
                "2026-10-31T12:00:00Z",
                &["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"],
            ),
            (
                "30 1 * * *",
                "America/New_York",
                "2026-11-01T05:30:00Z",
                &["2026-11-02T06:30:00Z"],
            ),
            (
                "30 2 * * *",
                "America/New_York",
                "2026-10-31T12:00:00Z",
                &["2026-11-01T07:30:00Z"],
            ),
            (
                "*/30 * * * *",
                "America/New_York",
                "2026-11-01T04:45:00Z",
                &[
                    "2026-11-01T05:00:00Z",
                    "2026-11-01T05:30:00Z",
                    "2026-11-01T06:00:00Z",
                    "2026-11-01T06:30:00Z",
                    "2026-11-01T07:00:00Z",
                ],
            ),
            // Lord Howe Island moves its clocks by 30 minutes (02:00 +11 -> 01:30 +10:30 on 2026-04-05).
            (
                "30 1 * * *",
                "Australia/Lord_Howe",
                "2026-04-04T00:00:00Z",
                &["2026-04-04T14:30:00Z", "2026-04-05T15:00:00Z"],
            ),
            (
                "*/15 * * * *",
                "Australia/Lord_Howe",
                "2026-04-04T14:40:00Z",
                &["2026-04-04T14:45:00Z", "2026-04-04T15:00:00Z", "2026-04-04T15:15:00Z"],
            ),
        ]);
    }

    #[test]
    fn a_year_of_daily_fires_in_paris() {
        let (c, tz) = (cron("30 2 * * *"), zone("Europe/Paris"));
        let end = ts("2027-01-01T00:00:00Z");
        let mut t = ts("2026-01-01T00:00:00Z");
        let mut count = 0;
        while let Some(next) = c.next_after(t, &tz)
            && next < end
        {
            assert!(next > t);
            let local = tz.to_datetime(next);
            let want = if local.date() == Date::new(2026, 3, 29).unwrap() {
                (3, 30)
            } else {
                (2, 30)
            };
            assert_eq!(
                (local.hour(), local.minute(), local.second()),
                (want.0, want.1, 0),
                "{next}"
            );
            count += 1;
            t = next;
        }
        assert_eq!(count, 365);
    }

    #[test]
    fn end_of_time() {
        let utc = TimeZone::UTC;
        assert_eq!(cron("0 0 1 1 *").next_after(ts("9998-06-01T00:00:00Z"), &utc), None);
        assert_eq!(
            cron("0 0 L 12 *").next_after(ts("9998-06-01T00:00:00Z"), &utc),
            Some(ts("9998-12-31T00:00:00Z"))
        );
        assert_eq!(cron("* * * * *").next_after(Timestamp::MAX, &utc), None);
        assert_eq!(cron("* * * * *").upcoming(Timestamp::MIN, &utc, 2).len(), 2);
        assert!(
            cron("* * * * *")
                .upcoming(ts("2026-01-01T00:00:00Z"), &utc, 0)
                .is_empty()
        );
    }

    /// Walks `next_after` from `start` for up to 2,000 fires or until `end`, and compares with brute
    /// force: every instant (interval schedules) or every wall-clock time (the others), `step` apart.
    fn brute_force_agrees(expr: &str, tz_name: &str, start: &str, end: &str, step: i64) {
        let (c, tz) = (cron(expr), zone(tz_name));
        let (start, end) = (ts(start), ts(end));
        let mut fires = Vec::new();
        let mut t = start;
        while fires.len() < 2000 {
            let Some(next) = c.next_after(t, &tz) else { break };
            assert!(next > t, "{expr:?} in {tz_name}: {next} after {t}");
            if next > end {
                break;
            }
            fires.push(next);
            t = next;
        }
        let last = if fires.len() == 2000 { t } else { end };
        let step = SignedDuration::from_secs(step);
        let mut want = BTreeSet::new();
        if c.hour_any {
            // Rule 2: every instant whose wall-clock time matches.
            let mut i = start;
            while i <= last {
                if i > start && matches(&c, tz.to_datetime(i)) {
                    want.insert(i);
                }
                i = i.checked_add(step).unwrap();
            }
        } else {
            // Rule 1: each matching wall-clock time once, as jiff's `compatible` resolves it.
            let margin = SignedDuration::from_hours(26);
            let mut w = tz.to_datetime(start.checked_sub(margin).unwrap());
            let stop = tz.to_datetime(last.checked_add(margin).unwrap());
            while w <= stop {
                if matches(&c, w) {
                    let i = tz.to_ambiguous_timestamp(w).compatible().unwrap();
                    if i > start && i <= last {
                        want.insert(i);
                    }
                }
                w = w.checked_add(step).unwrap();
            }
        }
        for &f in &fires {
            let local = tz.to_datetime(f);
            // A fire's wall-clock time matches, unless it is a skipped one moved forward by the gap.
            let moved = !matches(&c, local)
                && tz
                    .preceding(f.checked_add(SignedDuration::from_nanos(1)).unwrap())
                    .next()
                    .is_some_and(|tr| {
                        let gap =
                            tr.offset().seconds() - tz.to_offset(tr.timestamp().checked_sub(step).unwrap()).seconds();
                        gap > 0 && f.duration_since(tr.timestamp()) < SignedDuration::from_secs(gap.into())
                    });
            assert!(
                matches(&c, local) || (moved && !c.hour_any),
                "{expr:?} in {tz_name}: {f} ({local}) does not match"
            );
        }
        let want: Vec<Timestamp> = want.into_iter().collect();
        assert_eq!(
            fires.len(),
            want.len(),
            "{expr:?} in {tz_name} from {start}: fire count"
        );
        assert_eq!(fires, want, "{expr:?} in {tz_name} from {start}");
        assert!(!fires.is_empty(), "{expr:?} in {tz_name} from {start}: no fires");
    }

    const FIVE_FIELD: [&str; 14] = [
        "*/15 * * * *",
        "0 * * * *",
        "*/7 * * * *",
        "30 2 * * *",
        "0,30 1-3 * * *",
        "*/20 2 * * *",
        "15 1,2,3 * * *",
        "59 1,3 * * *",
        "0 9 * * MON-FRI",
        "0 0 * * *",
        "*/10 0-4 L,15W * SUN",
        "45 1 LW,1 * FRI#2",
        "*/5 2 * * *",
        "0 2-3 * * *",
    ];

    fn five_field_spans(tz: &str, spans: &[(&str, &str)]) {
        for expr in FIVE_FIELD {
            for &(start, end) in spans {
                brute_force_agrees(expr, tz, start, end, 60);
            }
        }
    }

    #[test]
    fn brute_force_paris() {
        five_field_spans(
            "Europe/Paris",
            &[
                ("2026-03-15T00:00:00Z", "2026-04-12T00:00:00Z"),
                ("2026-10-11T00:00:00Z", "2026-11-08T00:00:00Z"),
            ],
        );
    }

    #[test]
    fn brute_force_new_york() {
        five_field_spans(
            "America/New_York",
            &[
                ("2026-02-22T00:00:00Z", "2026-03-22T00:00:00Z"),
                ("2026-10-18T00:00:00Z", "2026-11-15T00:00:00Z"),
            ],
        );
    }

    #[test]
    fn brute_force_other_zones() {
        five_field_spans(
            "Australia/Lord_Howe",
            &[
                ("2026-03-22T00:00:00Z", "2026-04-19T00:00:00Z"),
                ("2026-09-27T00:00:00Z", "2026-10-25T00:00:00Z"),
            ],
        );
        five_field_spans("America/Santiago", &[("2026-03-29T00:00:00Z", "2026-04-12T00:00:00Z")]);
        five_field_spans("UTC", &[("2026-02-20T00:00:00Z", "2026-03-20T00:00:00Z")]);
    }

    #[test]
    fn brute_force_seconds() {
        for expr in [
            "*/20 * * * * *",
            "0 */7 1-3 * * *",
            "30 15,45 2 * * *",
            "*/10 0 * * * *",
        ] {
            brute_force_agrees(expr, "Europe/Paris", "2026-10-24T22:00:00Z", "2026-10-25T04:00:00Z", 1);
            brute_force_agrees(expr, "Europe/Paris", "2026-03-28T22:00:00Z", "2026-03-29T04:00:00Z", 1);
        }
    }

    #[test]
    fn sparse_expressions_are_fast() {
        let tzs = [zone("Europe/Paris"), zone("America/New_York"), TimeZone::UTC];
        let exprs = [
            cron("0 0 29 2 MON"),
            cron("0 0 0 29 2 *"),
            cron("0 0 29 2 *"),
            cron("59 23 31 12 *"),
        ];
        let started = std::time::Instant::now();
        let mut calls = 0u32;
        for tz in &tzs {
            for c in &exprs {
                let mut t = ts("2090-01-01T00:00:00Z");
                for _ in 0..10 {
                    t = c.next_after(t, tz).unwrap();
                    calls += 1;
                }
            }
        }
        let per_call = started.elapsed() / calls;
        // Well under a millisecond; the bound is loose for a shared machine.
        assert!(per_call < std::time::Duration::from_millis(5), "{per_call:?} per call");
    }

    #[test]
    fn time_zones() {
        let paris = time_zone("Europe/Paris").unwrap();
        assert_eq!(paris.iana_name(), Some("Europe/Paris"));
        assert!(time_zone("UTC").is_ok());
        let err = time_zone("Mars/Olympus").unwrap_err();
        assert!(
            err.contains("\"Mars/Olympus\"") && err.contains("Europe/Paris"),
            "{err}"
        );
        assert!(time_zone("").is_err());
    }
}
