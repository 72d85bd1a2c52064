//! Durations and sizes as people write them: `500ms`, `30s`, `15m`, `2h`,
//! `1h30m`, `2 days` (jiff's friendly format); `64MiB`, `1GiB`, `512KiB`,
//! `4096`; and instants as RFC 3339.

use std::time::Duration;

/// A duration or size that could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum UnitError {
    /// Not a duration.
    #[error(
        "{0:?} is not a duration; write a number and a unit such as 500ms, 30s, 15m, 2h, 1h30m or 2 days (months and years are not durations)"
    )]
    BadDuration(String),
    /// Not a size.
    #[error("{0:?} is not a size; write bytes or a number and a unit such as 512KiB, 64MiB or 1GiB")]
    BadSize(String),
}

/// Parses a duration in jiff's "friendly" format: one or more
/// `<number><unit>` parts, with or without spaces (`500ms`, `30s`, `15m`,
/// `2h`, `1h30m`, `1d`, `2 days 4 hours`, `1w`), or ISO 8601 (`PT1H30M`).
/// A day is 24 hours and a week 7 days; months and years, whose length
/// depends on the date, and negative durations are refused.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let bad = || UnitError::BadDuration(text.to_string());
    let text_trimmed = text.trim();
    if text_trimmed.is_empty() {
        return Err(bad());
    }
    let span: jiff::Span = text_trimmed.parse().map_err(|_| bad())?;
    let signed = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|_| bad())?;
    Duration::try_from(signed).map_err(|_| bad())
}

/// Parses a size in bytes: a plain integer, or an integer with `B`, `KiB`,
/// `MiB`, `GiB` (powers of 1024) or `KB`, `MB`, `GB` (powers of 1000).
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let bad = || UnitError::BadSize(text.to_string());
    let t = text.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(bad());
    }
    let n: u64 = t[..digits].parse().map_err(|_| bad())?;
    let mult: u64 = match t[digits..].trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

/// Writes a duration the way [`parse_duration`] reads it, to millisecond
/// precision (`1h30m`, `250ms`, `0s`).
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

/// Writes a size with a binary unit (`64MiB`, `1.5KiB`, `12B`).
pub fn format_size(bytes: u64) -> String {
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes >= size {
            let whole = bytes / size;
            let tenths = (bytes % size) * 10 / size;
            return if tenths == 0 {
                format!("{whole}{unit}")
            } else {
                format!("{whole}.{tenths}{unit}")
            };
        }
    }
    format!("{bytes}B")
}

/// A time that is not RFC 3339.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an RFC 3339 time with an offset; write it as 2026-12-01T09:00:00+01:00 or 2026-12-01T08:00:00Z")]
pub struct TimeError(pub String);

/// Reads an RFC 3339 time (`2026-12-01T09:00:00+01:00`, `...Z`), which must
/// carry its offset, as ms since the epoch.
pub fn parse_rfc3339(text: &str) -> Result<i64, TimeError> {
    let t = text.trim();
    // jiff also reads a bracketed zone annotation; RFC 3339 has none.
    if t.contains('[') {
        return Err(TimeError(text.to_string()));
    }
    t.parse::<jiff::Timestamp>()
        .map(|ts| ts.as_millisecond())
        .map_err(|_| TimeError(text.to_string()))
}

/// Formats ms since the epoch as RFC 3339 UTC with milliseconds.
pub fn format_rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_need_their_offset() {
        assert_eq!(parse_rfc3339("2026-12-01T09:00:00+01:00"), Ok(1_796_112_000_000));
        assert_eq!(parse_rfc3339("2026-12-01T08:00:00Z"), Ok(1_796_112_000_000));
        assert_eq!(parse_rfc3339("2026-12-01T08:00:00.250Z"), Ok(1_796_112_000_250));
        for bad in [
            "2026-12-01 09:00",
            "2026-12-01T09:00:00",
            "tomorrow",
            "",
            "2026-13-01T00:00:00Z",
        ] {
            let e = parse_rfc3339(bad).unwrap_err().to_string();
            assert!(e.contains("RFC 3339"), "{bad}: {e}");
        }
    }

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_rfc3339(1_767_225_600_123), "2026-01-01T00:00:00.123Z");
        assert_eq!(format_rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn durations_read_as_written() {
        for (text, ms) in [
            ("500ms", 500),
            ("30s", 30_000),
            ("15m", 900_000),
            ("2h", 7_200_000),
            ("1h30m", 5_400_000),
            ("1d", 86_400_000),
            ("1.5s", 1_500),
            ("2 days 4 hours", 187_200_000),
            ("1w", 604_800_000),
            ("PT1H30M", 5_400_000),
        ] {
            assert_eq!(parse_duration(text), Ok(Duration::from_millis(ms)), "{text}");
            assert_eq!(
                parse_duration(&format_duration(Duration::from_millis(ms))),
                Ok(Duration::from_millis(ms))
            );
        }
        for bad in ["", "10", "ms", "1x", "-1s", "1mo", "1y", "99999999999999999999h"] {
            assert_eq!(parse_duration(bad), Err(UnitError::BadDuration(bad.into())), "{bad:?}");
        }
    }

    #[test]
    fn sizes_read_as_written() {
        for (text, bytes) in [
            ("4096", 4096),
            ("12B", 12),
            ("512KiB", 512 << 10),
            ("64MiB", 64 << 20),
            ("1GiB", 1 << 30),
            ("1MB", 1_000_000),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for bad in ["", "MiB", "1 TB", "1.5GiB", "-1"] {
            assert_eq!(parse_size(bad), Err(UnitError::BadSize(bad.into())), "{bad:?}");
        }
        assert_eq!(format_size(64 << 20), "64MiB");
        assert_eq!(format_size(1536), "1.5KiB");
    }
}
