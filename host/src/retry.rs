//! The retry policy: what follows a run, decided from the task and its
//! `RunResult` (SPEC section 3). Pure: the store applies the result.

use crate::budget::TaskKind;
use crate::data::Data;
use crate::outcome::{RunResult, StopReason};
use crate::work::{BackoffPolicy, CronSchedule, Millis, Periodic, TaskState, backoff_delay};

/// The facts of a claimed task the policy needs.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryFacts {
    /// Kind.
    pub kind: TaskKind,
    /// The periodic schedule, for periodic work.
    pub periodic: Option<Periodic>,
    /// The cron schedule, for cron work (then `periodic` is `None`).
    pub cron: Option<CronSchedule>,
    /// Start of the current period (periodic work); for cron work, the
    /// fire time the run stands for.
    pub period_start: Millis,
    /// Attempts counted so far, the run that just ended included.
    pub attempts: u32,
    /// Attempt limit.
    pub max_attempts: u32,
    /// Backoff policy.
    pub backoff: BackoffPolicy,
    /// Backoff delay in ms.
    pub backoff_delay_ms: i64,
}

/// What the store does with a task after a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The new state.
    pub state: TaskState,
    /// The next run time (ENQUEUED), in ms since the epoch.
    pub next_run_at: Millis,
    /// The new period start (periodic work).
    pub period_start: Millis,
    /// The attempt count to keep (reset to 0 when periodic work moves on).
    pub attempts: u32,
    /// Output to keep.
    pub output: Option<Data>,
    /// The stop reason to record.
    pub stop_reason: Option<String>,
    /// The error to record.
    pub error: Option<String>,
}

/// Decides what follows a run that ended with `result` at `now`.
pub fn decide(t: &RetryFacts, result: &RunResult, now: Millis) -> Transition {
    let stop_reason = match result {
        RunResult::Stopped(r) => Some(r.as_str().to_string()),
        RunResult::Failed(crate::outcome::Failure::Trap(_)) => Some("trap".to_string()),
        _ => None,
    };
    let error = match result {
        RunResult::Failed(f) => Some(f.message().to_string()),
        _ => None,
    };
    let base = Transition {
        state: TaskState::Enqueued,
        next_run_at: now,
        period_start: t.period_start,
        attempts: t.attempts,
        output: None,
        stop_reason,
        error,
    };
    let next_period = |base: Transition| {
        if let Some(cron) = &t.cron {
            // The next fire after the one this run stood for; fires missed
            // meanwhile go by the schedule's catch-up policy.
            let (period_start, next_run_at) = cron.after_run(t.period_start, now);
            return Transition {
                state: TaskState::Enqueued,
                period_start,
                next_run_at,
                attempts: 0,
                ..base
            };
        }
        let p = t.periodic.expect("periodic work has a schedule");
        let frequency = crate::work::millis(p.frequency);
        let mut start = t.period_start.saturating_add(frequency);
        if start.saturating_add(frequency) <= now {
            // The host was away for whole periods: start afresh now.
            start = now;
        }
        Transition {
            state: TaskState::Enqueued,
            period_start: start,
            next_run_at: p.due_in_period(start).max(now),
            attempts: 0,
            ..base
        }
    };
    let periodic = t.kind == TaskKind::Periodic;
    match result {
        RunResult::Succeeded(out) => {
            let base = Transition {
                output: Some(out.clone()),
                ..base
            };
            if periodic {
                next_period(base)
            } else {
                Transition {
                    state: TaskState::Succeeded,
                    ..base
                }
            }
        }
        RunResult::Stopped(StopReason::Cancelled) => Transition {
            state: TaskState::Cancelled,
            ..base
        },
        RunResult::Failed(_) => {
            if periodic {
                next_period(base)
            } else {
                Transition {
                    state: TaskState::Failed,
                    ..base
                }
            }
        }
        RunResult::Retry | RunResult::Stopped(_) => {
            if t.attempts >= t.max_attempts {
                let why = match result {
                    RunResult::Stopped(r) => format!("stopped ({r})"),
                    _ => "asked to retry".to_string(),
                };
                let plural = if t.attempts == 1 { "" } else { "s" };
                let error = Some(format!(
                    "gave up after {} attempt{plural}; the last one {why}",
                    t.attempts
                ));
                if periodic {
                    next_period(Transition { error, ..base })
                } else {
                    Transition {
                        state: TaskState::Failed,
                        error,
                        ..base
                    }
                }
            } else {
                let delay = backoff_delay(
                    t.backoff,
                    std::time::Duration::from_millis(t.backoff_delay_ms.max(0) as u64),
                    t.attempts,
                );
                Transition {
                    next_run_at: now.saturating_add(crate::work::millis(delay)),
                    ..base
                }
            }
        }
    }
}

/// What follows a run whose host died during it (a host starting finds it
/// RUNNING, left by its dead predecessor): the rule [`decide`] gives a run
/// stopped by `host-shutdown`, except that a retry is due at once, not
/// after the backoff: the handler did nothing wrong, its host went away.
/// The attempt stays counted, so a run that kills its host each time still
/// reaches its limit: then the task fails (periodic work moves on to its
/// next period), saying its last attempt died with its host.
pub fn decide_orphaned(t: &RetryFacts, now: Millis) -> Transition {
    let mut next = decide(t, &RunResult::Stopped(StopReason::HostShutdown), now);
    if t.attempts >= t.max_attempts {
        let plural = if t.attempts == 1 { "" } else { "s" };
        next.error = Some(format!(
            "gave up after {} attempt{plural}; the last one died with its host",
            t.attempts
        ));
    } else if next.state == TaskState::Enqueued {
        next.next_run_at = now;
    }
    next
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::outcome::Failure;

    fn facts(kind: TaskKind, attempts: u32) -> RetryFacts {
        RetryFacts {
            kind,
            periodic: (kind == TaskKind::Periodic).then_some(Periodic {
                frequency: Duration::from_secs(900),
                flex: Duration::from_secs(300),
            }),
            cron: None,
            period_start: 0,
            attempts,
            max_attempts: 3,
            backoff: BackoffPolicy::Exponential,
            backoff_delay_ms: 30_000,
        }
    }

    #[test]
    fn a_run_its_host_died_during_is_due_again_at_once_until_its_last_attempt() {
        let now = 1_000_000;
        let t = decide_orphaned(&facts(TaskKind::OneOff, 1), now);
        assert_eq!(
            (t.state, t.next_run_at, t.attempts, t.stop_reason.as_deref()),
            (TaskState::Enqueued, now, 1, Some("host-shutdown"))
        );
        let t = decide_orphaned(&facts(TaskKind::OneOff, 3), now);
        assert_eq!(
            (t.state, t.error.as_deref()),
            (
                TaskState::Failed,
                Some("gave up after 3 attempts; the last one died with its host")
            )
        );
        // Periodic work on its last attempt moves on to its next period.
        let t = decide_orphaned(&facts(TaskKind::Periodic, 3), now);
        assert_eq!((t.state, t.attempts), (TaskState::Enqueued, 0));
    }

    #[test]
    fn one_off_results_follow_spec_section_3() {
        let now = 1_000_000;
        let t = decide(
            &facts(TaskKind::OneOff, 1),
            &RunResult::Succeeded(Data::new().with("a", 1i64)),
            now,
        );
        assert_eq!((t.state, t.output.is_some()), (TaskState::Succeeded, true));
        let t = decide(&facts(TaskKind::OneOff, 2), &RunResult::Retry, now);
        assert_eq!((t.state, t.next_run_at), (TaskState::Enqueued, now + 60_000));
        let t = decide(
            &facts(TaskKind::OneOff, 1),
            &RunResult::Stopped(StopReason::Timeout),
            now,
        );
        assert_eq!(
            (t.state, t.stop_reason.as_deref()),
            (TaskState::Enqueued, Some("timeout"))
        );
        let t = decide(&facts(TaskKind::OneOff, 3), &RunResult::Retry, now);
        assert_eq!(t.state, TaskState::Failed);
        assert!(t.error.unwrap().contains("gave up after 3 attempts"));
        let t = decide(
            &facts(TaskKind::OneOff, 1),
            &RunResult::Failed(Failure::Trap("boom".into())),
            now,
        );
        assert_eq!(
            (t.state, t.stop_reason.as_deref(), t.error.as_deref()),
            (TaskState::Failed, Some("trap"), Some("boom"))
        );
        let t = decide(
            &facts(TaskKind::OneOff, 1),
            &RunResult::Stopped(StopReason::Cancelled),
            now,
        );
        assert_eq!(t.state, TaskState::Cancelled);
    }

    #[test]
    fn periodic_work_moves_to_its_next_period_and_never_ends() {
        let now = 700_000;
        for result in [
            RunResult::Succeeded(Data::new()),
            RunResult::Failed(Failure::Error("x".into())),
        ] {
            let t = decide(&facts(TaskKind::Periodic, 2), &result, now);
            assert_eq!(
                (t.state, t.attempts, t.period_start, t.next_run_at),
                (TaskState::Enqueued, 0, 900_000, 1_500_000)
            );
        }
        let t = decide(&facts(TaskKind::Periodic, 3), &RunResult::Retry, now);
        assert_eq!(
            (t.state, t.attempts, t.period_start),
            (TaskState::Enqueued, 0, 900_000),
            "attempt limit: next period"
        );
        let t = decide(&facts(TaskKind::Periodic, 1), &RunResult::Retry, now);
        assert_eq!(
            (t.period_start, t.next_run_at, t.attempts),
            (0, now + 30_000, 1),
            "retry within the period"
        );
        let late = decide(
            &facts(TaskKind::Periodic, 1),
            &RunResult::Succeeded(Data::new()),
            10_000_000,
        );
        assert_eq!((late.period_start, late.next_run_at), (10_000_000, 10_600_000));
    }
}
