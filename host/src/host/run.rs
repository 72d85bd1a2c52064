//! One run: from its claim to its recorded outcome, holding its slot.

use std::sync::Arc;
use std::time::Duration;

use crate::budget::TaskKind;
use crate::data::Data;
use crate::device::Constraints;
use crate::executor::{RunRequest, StopHandle};
use crate::kv::Kv;
use crate::outcome::RunResult;
use crate::platform::TaskFacts;
use crate::retry::decide;
use crate::store::{Change, Claimed};
use crate::work::{TaskId, TaskState};

use super::TaskEvent;
use super::dispatcher::{Inner, Refusals};

/// How long a host waits before offering a run's outcome again to a store
/// that refused it.
pub(super) const FINISH_RETRY: Duration = Duration::from_millis(500);

/// A run going on.
pub(super) struct Running {
    pub(super) handler: String,
    pub(super) stop: StopHandle,
    pub(super) constraints: Constraints,
    /// The memory limit of the run, reserved from the host's budget.
    pub(super) memory: u64,
    /// The run's lease (see [`Claimed::lease`]).
    pub(super) lease: u64,
    /// When it was claimed.
    pub(super) claimed_at: tokio::time::Instant,
}

/// A run's place in `Inner::running`: given back when dropped, so a run
/// whose task panics still frees its slot and its memory. The place is the
/// run's, not the task's: a run that handed its slot on to the next run of
/// the same task (periodic work due again at once) leaves that run's place.
pub(super) struct Slot {
    pub(super) inner: Arc<Inner>,
    pub(super) id: TaskId,
    /// The run's lease, which tells it from a later run of the same task.
    pub(super) lease: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut running = self.inner.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.get(&self.id).is_some_and(|r| r.lease == self.lease) {
            running.remove(&self.id);
        }
        drop(running);
        // A freed slot may let waiting work start.
        self.inner.queue.wake.notify_one();
    }
}

/// A cron run that starts after its fire's grace: the schedule's catch-up
/// policy either moves the fire the run stands for (`last`, `all`) or skips
/// the run (`none`): then the transition to record instead of a run.
fn late_cron_start(claimed: &mut Claimed, now: crate::work::Millis) -> Option<crate::retry::Transition> {
    let cron = claimed.info.cron.as_ref()?;
    // A retry of the same fire is not a missed fire.
    if claimed.info.run_attempt_count != 1 {
        return None;
    }
    match cron.on_late_start(claimed.period_start, now)? {
        crate::work::LateStart::Run(fire) => {
            claimed.period_start = fire;
            None
        }
        crate::work::LateStart::Skip(period_start, next_run_at) => Some(crate::retry::Transition {
            state: TaskState::Enqueued,
            next_run_at,
            period_start,
            attempts: 0,
            output: None,
            stop_reason: Some(crate::outcome::StopReason::MissedFire.as_str().into()),
            error: Some(format!(
                "its fire at {} was missed (no run started within {} of it); catch-up \"none\" skips it",
                crate::units::format_rfc3339(claimed.period_start),
                crate::units::format_duration(crate::work::MISFIRE_GRACE)
            )),
        }),
    }
}

pub(super) async fn run_task(inner: Arc<Inner>, mut claimed: Claimed, stop: StopHandle) {
    let _slot = Slot {
        inner: inner.clone(),
        id: claimed.info.id,
        lease: claimed.lease,
    };
    let skipped = late_cron_start(&mut claimed, inner.queue.now());
    let ran = skipped.is_none();
    let info = &claimed.info;
    let queue = &inner.queue;
    let attempt = info.run_attempt_count;
    let lease = claimed.lease;
    // A skipped run never starts.
    if skipped.is_none() {
        let now = queue.now();
        let late = u64::try_from(now.saturating_sub(info.next_run_at)).unwrap_or(0);
        queue
            .metrics
            .started(&info.handler, info.kind, Duration::from_millis(late), now);
        if queue.events.receiver_count() > 0 {
            let _ = queue.events.send(TaskEvent {
                id: info.id,
                state: TaskState::Running,
                event: "started",
                detail: format!("{}/{} attempt {attempt}", info.handler, info.task),
                at: queue.now(),
            });
        }
    }
    let mut progress = None;
    let handlers = inner.handlers();
    // Work pinned to a version runs that version, the current one or a
    // retained one (docs/versions.md).
    let pinned = match (&info.pin, handlers.by_name.get(&info.handler)) {
        (Some(pin), Some(loaded)) if loaded.handler.component().digest != *pin => {
            Some(inner.pinned_handler(&info.handler, pin, loaded.config.fuel).await)
        }
        _ => None,
    };
    let outcome = match handlers.by_name.get(&info.handler) {
        _ if skipped.is_some() => crate::outcome::RunOutcome {
            result: RunResult::Stopped(crate::outcome::StopReason::MissedFire),
            duration: Duration::ZERO,
            fuel_consumed: None,
            peak_memory_bytes: 0,
            log: Vec::new(),
            component: None,
        },
        Some(_) if matches!(pinned, Some(Err(_))) => crate::outcome::RunOutcome {
            result: RunResult::Failed(crate::outcome::Failure::Error(
                pinned
                    .as_ref()
                    .and_then(|p| p.as_ref().err())
                    .cloned()
                    .unwrap_or_default(),
            )),
            duration: Duration::ZERO,
            fuel_consumed: None,
            peak_memory_bytes: 0,
            log: Vec::new(),
            component: None,
        },
        Some(loaded) => {
            let budget = loaded.config.budget_of(info);
            let store = queue.store.clone();
            let id = info.id;
            progress = Some(crate::progress::ProgressWriter::new(Arc::new(move |d: Data| {
                let store = store.clone();
                Box::pin(async move {
                    let _ = store.set_progress(id, lease, &d).await;
                })
            })));
            let request = RunRequest {
                task: TaskFacts {
                    id: info.id.to_string(),
                    name: info.task.clone(),
                    unique_name: info.unique_name.clone(),
                    tags: info.tags.clone(),
                    kind: info.kind,
                    attempt,
                },
                input: info.input.clone(),
                budget,
                kv: Kv::new(
                    queue.store.run_kv(info.id, lease),
                    info.handler.clone(),
                    loaded.config.kv_limits,
                ),
                progress: progress.as_ref().map(|p| p.sink()),
                stop,
                grants: loaded.config.grants.clone(),
                resolver: crate::outbound::system_resolver(),
            };
            match pinned.and_then(Result::ok) {
                Some(version) => version.run(request).await,
                None => loaded.handler.run(request).await,
            }
        }
        None => crate::outcome::RunOutcome {
            result: RunResult::Failed(crate::outcome::Failure::Error(format!(
                "no handler named {:?} in this host's manifest",
                info.handler
            ))),
            duration: Duration::ZERO,
            fuel_consumed: None,
            peak_memory_bytes: 0,
            log: Vec::new(),
            component: None,
        },
    };
    if let Some(p) = &progress {
        p.finish().await;
    }
    let now = queue.now();
    let transition = skipped.unwrap_or_else(|| decide(&claimed.retry_facts(), &outcome.result, now));
    let next = || crate::units::format_rfc3339(transition.next_run_at);
    let why = match (&transition.stop_reason, &transition.error) {
        (Some(r), Some(e)) => format!("{r}: {e}"),
        (Some(r), None) => r.clone(),
        (None, Some(e)) => e.clone(),
        (None, None) => String::new(),
    };
    // Periodic work that moved on to its next period resets its attempts.
    let next_period = info.kind == TaskKind::Periodic && transition.attempts == 0;
    let id = info.id;
    let mut refused = Refusals::default();
    // The slot this run frees is claimed for in the finish's own commit
    // (one offer: a refused finish is offered again without it).
    let mut next_claim = inner.next_claim(id, &info.handler).await;
    let (changes, claimed) = loop {
        match queue
            .store
            .finish_then_claim(id, lease, transition.clone(), &outcome, now, next_claim.take())
            .await
        {
            Ok(changes) => {
                if let Some(n) = refused.ended() {
                    inner.alert(
                        Some(id),
                        format!("its run's outcome is recorded, after {n} refused writes"),
                    );
                }
                break changes;
            }
            // The store refused the write (a full disk, a lock held too
            // long). The outcome stays here and is offered again until the
            // store takes it, so it is recorded once there is room; the task
            // keeps its slot meanwhile, and the first refusal is reported.
            // A host stopped first leaves the task RUNNING, and the next
            // host recovers and reruns it (at least once).
            Err(e) if !*inner.shutting_down.borrow() => {
                queue.metrics.refused("finish");
                if refused.refused() {
                    let change = Change {
                        id,
                        state: TaskState::Running,
                    };
                    let why = format!(
                        "the store refused this run's outcome ({e}); it is kept and offered again every {} ms",
                        FINISH_RETRY.as_millis()
                    );
                    inner.alert(Some(id), why.clone());
                    queue.publish(&[change], |_| ("unrecorded", why.clone()));
                }
                tokio::time::sleep(FINISH_RETRY).await
            }
            Err(_) => break (Vec::new(), Vec::new()),
        }
    };
    // The next run takes this one's place at once; it starts after this
    // run's events are out, so a dependent this finish released and the
    // hand-on claimed is reported scheduled before started.
    let handed_on = claimed.into_iter().next().map(|c| {
        let stop = super::dispatcher::register_run(&inner, &c, Some(id));
        (c, stop)
    });
    if handed_on.is_none() {
        inner.running.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }
    if ran {
        let state = changes
            .iter()
            .find(|c| c.id == id)
            .map_or(transition.state, |c| c.state);
        queue
            .metrics
            .finished(&info.handler, info.kind, &outcome, state, next_period, queue.now());
    }
    queue.publish(&changes, |c| {
        if c.id != id {
            return match c.state {
                TaskState::Enqueued => ("scheduled", "the work it runs after succeeded".into()),
                s => (
                    if s == TaskState::Failed { "failed" } else { "cancelled" },
                    "the work it runs after ended".into(),
                ),
            };
        }
        match c.state {
            TaskState::Succeeded => ("succeeded", String::new()),
            TaskState::Failed => ("failed", why.clone()),
            TaskState::Cancelled => ("cancelled", String::new()),
            TaskState::Enqueued if next_period => ("rescheduled", format!("next period at {}", next())),
            _ if why.is_empty() => ("retrying", format!("next attempt at {}", next())),
            _ => ("retrying", format!("{why}; next attempt at {}", next())),
        }
    });
    if let Some((c, stop)) = handed_on {
        super::dispatcher::spawn_run(&inner, c, stop);
    }
    queue.wake.notify_one();
}
