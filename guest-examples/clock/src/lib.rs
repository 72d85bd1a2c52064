//! `clock`: this run's real wall-clock time, two readings of the monotonic
//! clock, and fresh randomness.
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use workhost_guest::{Handler, Input, Outcome, Output};

struct Clock;

impl Handler for Clock {
    fn execute(_name: &str, _input: Input) -> Result<Outcome, String> {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| format!("the wall clock is before 1970: {e}"))?;
        let wall_ms = i64::try_from(wall.as_millis()).map_err(|e| e.to_string())?;

        // Two readings of the monotonic clock, the second once it has moved.
        let origin = Instant::now();
        let first = origin.elapsed();
        let mut second = origin.elapsed();
        while second == first {
            second = origin.elapsed();
        }

        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
        let mut word = [0u8; 8];
        getrandom::fill(&mut word).map_err(|e| format!("no randomness: {e}"))?;
        // 53 random bits as a float in [0, 1).
        let random = (u64::from_le_bytes(word) >> 11) as f64 / (1u64 << 53) as f64;

        Output::new()
            .with("wall_ms", wall_ms)
            .with("utc", utc(wall.as_secs()))
            .with("mono_ms", vec![first.as_secs_f64() * 1e3, second.as_secs_f64() * 1e3])
            .with("random", random)
            .with("bytes", bytes.iter().map(|&b| i64::from(b)).collect::<Vec<_>>())
            .success()
    }
}

/// `secs` since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (the standard
/// library has no calendar; this is Howard Hinnant's `civil_from_days`).
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rest = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

workhost_guest::export_handler!(Clock);
