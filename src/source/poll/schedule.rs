//! When poll runs start: a new pipeline at once, an interrupted run at once, a
//! run missed while tributary was down once at start, then every tick of the
//! cron expression (or interval) after the last start. Runs never overlap: a
//! tick that passes while a run is still going is skipped.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

use crate::config::spec::Schedule;

/// The first tick strictly after `after`; `None` if the expression has no more.
pub fn next_after(schedule: &Schedule, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    match schedule {
        Schedule::Cron(cron) => cron.after(&after).next(),
        Schedule::Every(every) => Some(after + chrono::Duration::from_std(*every).ok()?),
    }
}

/// When the next run is due, given the last run's start (if any), whether a
/// run is unfinished, and now. A due time in the past means "now".
pub fn due(
    schedule: &Schedule,
    last_start: Option<DateTime<Utc>>,
    unfinished: bool,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    if unfinished {
        return Some(now);
    }
    let Some(last) = last_start else {
        return Some(now);
    };
    let next = next_after(schedule, last)?;
    if next <= now {
        // Missed ticks (down, or a run longer than the interval) run once.
        return Some(now);
    }
    Some(next)
}

/// A random delay in `[0, jitter]`, so many pipelines on one schedule spread out.
pub fn jitter(jitter: Duration) -> Duration {
    if jitter.is_zero() {
        return Duration::ZERO;
    }
    jitter.mul_f64(rand::rng().random::<f64>())
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn new_unfinished_and_missed_runs_start_now_others_at_the_next_tick() {
        let cron = Schedule::Cron(Box::new(cron::Schedule::from_str("0 */5 * * * *").unwrap()));
        let now = at("2026-01-01T10:07:30Z");
        assert_eq!(due(&cron, None, false, now), Some(now));
        assert_eq!(
            due(&cron, Some(at("2026-01-01T10:05:00Z")), true, now),
            Some(now)
        );
        // Last start 10:05 → next tick 10:10, still ahead.
        assert_eq!(
            due(&cron, Some(at("2026-01-01T10:05:00Z")), false, now),
            Some(at("2026-01-01T10:10:00Z"))
        );
        // Down since 09:00: the missed ticks run once, now.
        assert_eq!(
            due(&cron, Some(at("2026-01-01T09:00:00Z")), false, now),
            Some(now)
        );
        let every = Schedule::Every(Duration::from_secs(60));
        assert_eq!(
            due(&every, Some(at("2026-01-01T10:07:00Z")), false, now),
            Some(at("2026-01-01T10:08:00Z"))
        );
        assert!(jitter(Duration::from_secs(3)) <= Duration::from_secs(3));
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }
}
