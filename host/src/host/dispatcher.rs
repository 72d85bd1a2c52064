//! The dispatcher: the host's shared state ([`Inner`]) and the loop that
//! claims due work when slots are free and starts runs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use crate::device::{DeviceOverrides, DeviceState, LinuxPaths};
use crate::executor::{Handler, StopHandle};
use crate::outcome::StopReason;
use crate::store::{Change, Claimed, HostIdentity, NextClaim, Query};
use crate::work::{Millis, TaskId, TaskState};

use super::blocking;
use super::queue::Queue;
use super::run::{Running, run_task};
use super::{CLOCK_JUMP_THRESHOLD, DeviceConfig, HandlerConfig, HostAlert};

/// Reads the device state a host starts from.
pub(super) fn read_device(config: &DeviceConfig, data_dir: &std::path::Path) -> DeviceState {
    if config.read_machine {
        DeviceState::read_linux(&LinuxPaths::default(), data_dir, &config.thresholds)
    } else {
        DeviceState::default()
    }
}

pub(super) struct LoadedHandler {
    pub(super) handler: Handler,
    pub(super) config: HandlerConfig,
}

/// The handlers a host runs, swapped whole by a reload: a run takes the
/// snapshot current when it starts and keeps its handler to the end.
#[derive(Default)]
pub(super) struct Handlers {
    pub(super) by_name: HashMap<String, Arc<LoadedHandler>>,
    /// The names, sorted: the work this host may claim.
    pub(super) names: Vec<String>,
}

impl Handlers {
    pub(super) fn new(by_name: HashMap<String, Arc<LoadedHandler>>) -> Handlers {
        let mut names: Vec<String> = by_name.keys().cloned().collect();
        names.sort();
        Handlers { by_name, names }
    }
}

pub(super) struct Inner {
    pub(super) queue: Queue,
    /// Every run task of the host: shutdown waits on it instead of polling.
    pub(super) runs: tokio_util::task::TaskTracker,
    /// See [`HostConfig::memory_budget`].
    pub(super) memory_budget: u64,
    /// The handlers, as the last start or reload made them.
    pub(super) handlers: std::sync::RwLock<Arc<Handlers>>,
    /// The executors components are loaded with (metered, and unmetered
    /// once a handler needs it), kept for reloads.
    pub(super) executors: Mutex<(crate::executor::Executor, Option<crate::executor::Executor>)>,
    /// One reload at a time.
    pub(super) reloading: tokio::sync::Mutex<()>,
    /// Retained component versions loaded for pinned work, by digest.
    pub(super) pinned: Mutex<HashMap<String, Handler>>,
    pub(super) max_concurrency: usize,
    pub(super) poll: Duration,
    pub(super) running: Mutex<HashMap<TaskId, Running>>,
    /// Odd while the dispatcher claims (from before its claim until the
    /// claimed tasks are in `running`), even otherwise: a committed claim
    /// is no longer due in the store, and not yet in `running`.
    pub(super) claim_epoch: AtomicU64,
    pub(super) shutting_down: watch::Sender<bool>,
    /// The device state constraints are checked against (readings with the
    /// overrides applied).
    pub(super) device: watch::Sender<DeviceState>,
    /// The last readings (before overrides) and the overrides.
    pub(super) device_source: Mutex<(DeviceState, DeviceOverrides)>,
    pub(super) device_config: DeviceConfig,
    pub(super) data_dir: PathBuf,
    /// The wall clock minus the steady clock when last recorded in the
    /// store (see [`Inner::follow_clock`]).
    pub(super) clock_reading: Mutex<Option<Millis>>,
    pub(super) alerts: broadcast::Sender<HostAlert>,
    /// When the dispatcher next looks for finished work past the retention
    /// period (clock ms).
    pub(super) next_prune_at: AtomicI64,
    /// [`HostStats::polls`].
    pub(super) polls: AtomicU64,
    /// [`HostStats::claims`].
    pub(super) claims: AtomicU64,
    pub(super) _lock: std::fs::File,
    /// Who this host is to the store (a new incarnation after a lost lease).
    pub(super) me: Mutex<HostIdentity>,
    /// Whether this host holds its lease (always, on a store without
    /// leases): it claims only while it does.
    pub(super) lease_held: std::sync::atomic::AtomicBool,
}

impl Inner {
    /// The retained version `digest` of `handler` for a pinned run: loaded
    /// once from `<data_dir>/components` and kept. The error says why it
    /// cannot run (the version was pruned, or never loaded on this host).
    pub(super) async fn pinned_handler(&self, handler: &str, digest: &str, fuel: bool) -> Result<Handler, String> {
        if let Some(h) = self.pinned.lock().unwrap_or_else(|e| e.into_inner()).get(digest) {
            return Ok(h.clone());
        }
        let path = self
            .data_dir
            .join("components")
            .join(handler)
            .join(format!("{digest}.wasm"));
        let executor = {
            let e = self.executors.lock().unwrap_or_else(|e| e.into_inner());
            if fuel { Some(e.0.clone()) } else { e.1.clone() }
        };
        let (name, wanted) = (handler.to_string(), digest.to_string());
        let loaded = blocking(move || {
            let missing = || {
                format!(
                    "the task is pinned to component sha256:{wanted} of handler {name:?}, which this host does not retain (pruned, or never loaded here); enqueue it again without the pin, or add that component back"
                )
            };
            let bytes = std::fs::read(&path).map_err(|_| missing())?;
            if crate::engine::sha256_hex(&bytes) != wanted {
                return Err(missing());
            }
            let executor = executor.ok_or_else(|| "the unmetered engine is not built on this host".to_string())?;
            executor.load_bytes(&bytes).map_err(|e| format!("loading the pinned component sha256:{wanted}: {e}"))
        })
        .await?;
        self.pinned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(digest.to_string(), loaded.clone());
        Ok(loaded)
    }

    /// Prunes retained component versions: each handler keeps its current
    /// one, those unfinished work is pinned to, and the
    /// [`RETAINED_VERSIONS`](super::RETAINED_VERSIONS) most recently loaded.
    pub(super) async fn prune_components(&self) {
        let mut keep: std::collections::HashSet<String> = self
            .handlers()
            .by_name
            .values()
            .map(|h| h.handler.component().digest.clone())
            .collect();
        // The distinct pins, from an index of pinned tasks: a million
        // unpinned tasks waiting cost nothing here.
        match self.queue.store.pins_in_use().await {
            Ok(pins) => keep.extend(pins),
            // Without knowing what is pinned, nothing is pruned.
            Err(_) => return,
        }
        let root = self.data_dir.join("components");
        blocking(move || {
            let Ok(entries) = std::fs::read_dir(&root) else {
                return;
            };
            for e in entries.filter_map(Result::ok) {
                let handler = e.file_name().to_string_lossy().to_string();
                super::components::prune(&root, &handler, &keep);
            }
        })
        .await;
    }

    /// The handlers now: a snapshot a reload does not change.
    pub(super) fn handlers(&self) -> Arc<Handlers> {
        self.handlers.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn alert(&self, task: Option<TaskId>, message: String) {
        let _ = self.alerts.send(HostAlert {
            task,
            message,
            at: self.queue.now(),
        });
    }

    /// Keeps every wait's length when the wall clock jumps: compares the
    /// wall clock with the clock's steady reading and, when they moved
    /// apart by [`CLOCK_JUMP_THRESHOLD`] or more since the store last saw
    /// them, moves every unfinished task's due time by the jump
    /// ([`TaskStore::follow_clock`]). Called when the host starts (a jump
    /// while no host ran, on the same boot) and before every claim. Returns
    /// the wall clock it compared, the "now" a claim must use: a jump after
    /// that reading is seen by the next call, before the next claim.
    pub(super) async fn follow_clock(&self) -> Millis {
        let now = self.queue.now();
        let Some(steady) = self.queue.clock.steady() else {
            return now;
        };
        let reading = now - steady.elapsed;
        let threshold = crate::work::millis(CLOCK_JUMP_THRESHOLD);
        let last = *self.clock_reading.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|l| (reading - l).abs() < threshold) {
            return now;
        }
        let Ok(jump) = self
            .queue
            .store
            .follow_clock(steady.epoch.to_string(), reading, threshold)
            .await
        else {
            // Tried again before the next claim.
            return now;
        };
        *self.clock_reading.lock().unwrap_or_else(|e| e.into_inner()) = Some(reading);
        if jump.by != 0 {
            let (way, by) = if jump.by > 0 {
                ("forward", jump.by)
            } else {
                ("backward", -jump.by)
            };
            // Said to the second: the two clocks are read a moment apart.
            let by = crate::units::format_duration(Duration::from_secs(((by + 500) / 1000) as u64));
            self.queue.publish(&jump.moved, |_| {
                (
                    "rescheduled",
                    format!("the wall clock jumped {way} by {by}; the task's wait keeps its length"),
                )
            });
        }
        now
    }

    /// Publishes a new device state: wakes the dispatcher, and stops running
    /// work whose constraints no longer hold.
    pub(super) fn set_device(&self, state: DeviceState) {
        // Publish and scan under the lock the dispatcher holds while it
        // registers a claimed run and checks it against the device state:
        // a run is either seen here or sees the new state there.
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let lost: Vec<TaskId> = running
            .iter()
            .filter(|(_, r)| !r.constraints.hold(&state))
            .map(|(id, _)| *id)
            .collect();
        self.device.send_replace(state);
        for id in &lost {
            running[id].stop.stop(StopReason::ConstraintLost);
        }
        drop(running);
        self.queue.wake.notify_one();
    }

    pub(super) async fn refresh_device(&self) {
        if !self.device_config.read_machine {
            return;
        }
        let (config, dir) = (self.device_config.clone(), self.data_dir.clone());
        let readings = blocking(move || read_device(&config, &dir)).await;
        let mut source = self.device_source.lock().unwrap_or_else(|e| e.into_inner());
        source.0 = readings;
        let state = source.1.apply(source.0.clone());
        drop(source);
        if state != *self.device.borrow() {
            self.set_device(state);
        }
    }

    /// Ids of the tasks this host runs now.
    pub(super) fn running_ids(&self) -> Vec<TaskId> {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect()
    }

    pub(super) fn stop_running(&self, ids: &[TaskId], reason: StopReason) {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            if let Some(r) = running.get(id) {
                r.stop.stop(reason);
            }
        }
    }

    /// Runs that may start now: over all handlers, and per handler. Memory
    /// counts too: no more runs start than fit in what is left of the
    /// memory budget at the largest memory limit among the handlers with a
    /// free slot.
    pub(super) fn free_slots(&self) -> (usize, HashMap<String, usize>) {
        self.free_slots_except(None)
    }

    /// [`Self::free_slots`] as if the run of `except` had ended.
    pub(super) fn free_slots_except(&self, except: Option<TaskId>) -> (usize, HashMap<String, usize>) {
        let handlers = self.handlers();
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let others = running.len() - except.map_or(0, |id| usize::from(running.contains_key(&id)));
        let mut per: HashMap<String, usize> = handlers
            .by_name
            .iter()
            .map(|(n, h)| (n.clone(), h.config.concurrency))
            .collect();
        let mut reserved = 0u64;
        for (id, r) in running.iter() {
            if Some(*id) == except {
                continue;
            }
            reserved = reserved.saturating_add(r.memory);
            if let Some(n) = per.get_mut(&r.handler) {
                *n = n.saturating_sub(1);
            }
        }
        let largest = per
            .iter()
            .filter(|(_, free)| **free > 0)
            .filter_map(|(n, _)| handlers.by_name.get(n))
            .map(|h| h.config.memory_limit())
            .max()
            .unwrap_or(1)
            .max(1);
        let fit = usize::try_from(self.memory_budget.saturating_sub(reserved) / largest).unwrap_or(usize::MAX);
        (self.max_concurrency.saturating_sub(others).min(fit), per)
    }

    /// The claim for the slot the run of task `id` (of `handler`) frees as
    /// it finishes ([`crate::store::TaskStore::finish_then_claim`]); none while the host
    /// shuts down or does not hold its lease, or when the freed slot is not
    /// free after all (a reload lowered the limits, or memory).
    pub(super) async fn next_claim(&self, id: TaskId, handler: &str) -> Option<NextClaim> {
        if *self.shutting_down.borrow() || !self.lease_held.load(Ordering::Acquire) {
            return None;
        }
        let (free, may_run) = self.free_slots_except(Some(id));
        if free == 0 || may_run.values().all(|n| *n == 0) {
            return None;
        }
        let now = self.follow_clock().await;
        Some(NextClaim {
            me: self.me.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            now,
            may_run,
            device: self.device.borrow().clone(),
            after: handler.to_string(),
        })
    }

    /// Raises one alert per handler name for due work that names a handler
    /// this host lacks (removed from the manifest, or enqueued under
    /// another): the host never claims it, so it waits, holding up nothing,
    /// until a host with that handler runs or it is cancelled. `alerted`
    /// holds the names already reported.
    pub(super) async fn alert_waiting_for_handler(&self, now: Millis, alerted: &mut Vec<String>) {
        let mut known = self.handlers().names.clone();
        known.extend(alerted.iter().cloned());
        let Ok(waits) = self.queue.store.waiting_for_handler(known, now).await else {
            // Looked at again at the next check.
            return;
        };
        for w in waits {
            let tasks = if w.due == 1 {
                format!("task {} is due", w.first)
            } else {
                format!("{} tasks are due (the oldest is task {})", w.due, w.first)
            };
            self.alert(
                Some(w.first),
                format!(
                    "{tasks} for handler {:?}, which this host does not have; they wait until a host with that \
                     handler serves this store: add it to the manifest, or cancel them",
                    w.handler
                ),
            );
            alerted.push(w.handler);
        }
    }

    /// Deletes finished work past the retention period (SPEC section 5),
    /// if a read finds any, so an idle store takes no write for it; then
    /// sets when to look next ([`PRUNE_EVERY`] later).
    pub(super) async fn prune_finished(&self, now: Millis) {
        let before = now.saturating_sub(crate::work::millis(self.queue.retention));
        let store = &self.queue.store;
        if let Ok(Some(oldest)) = store.oldest_finished().await
            && oldest < before
        {
            let _ = store.prune(before).await;
        }
        self.next_prune_at
            .store(now.saturating_add(crate::work::millis(PRUNE_EVERY)), Ordering::Release);
    }

    /// When work of the handlers with a free slot in `per` is next due;
    /// `None` if none is or the store is paused. A failed read says "now",
    /// so the claim tries and reports what the store says.
    pub(super) async fn next_due(&self, per: &HashMap<String, usize>) -> Option<Millis> {
        let store = &self.queue.store;
        let device = self.device.borrow().clone();
        let handlers: Vec<String> = per.iter().filter(|(_, n)| **n > 0).map(|(h, _)| h.clone()).collect();
        let now = self.queue.now();
        let (paused, due) = (store.paused().await, store.next_due(handlers, device).await);
        match (paused, due) {
            (Ok(true), _) => None,
            (Ok(false), Ok(due)) => due,
            _ => Some(now),
        }
    }

    /// Whether nothing runs and nothing is due now whose constraints hold
    /// (or the host is paused).
    pub(super) async fn idle(&self) -> bool {
        // No claim may start or end while `running` and the store are read:
        // a claimed task is in neither while its claim is under way.
        let epoch = self.claim_epoch.load(Ordering::Acquire);
        if epoch % 2 == 1 || !self.running.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
            return false;
        }
        if self.queue.now() >= self.next_prune_at.load(Ordering::Acquire) {
            return false;
        }
        let store = &self.queue.store;
        let device = self.device.borrow().clone();
        let handlers = self.handlers().names.clone();
        let (paused, due) = (store.paused().await, store.next_due(handlers, device).await);
        let idle = paused.unwrap_or(false) || due.ok().flatten().is_none_or(|d| d > self.queue.now());
        idle && self.claim_epoch.load(Ordering::Acquire) == epoch
    }
}

/// A streak of store writes refused in a row: its first refusal and its end
/// are what an operator is told of.
#[derive(Default)]
pub(super) struct Refusals(u64);

impl Refusals {
    /// Counts a refusal; true if it starts a streak.
    pub(super) fn refused(&mut self) -> bool {
        self.0 += 1;
        self.0 == 1
    }

    /// Ends a streak: how many writes it refused, if it was one.
    pub(super) fn ended(&mut self) -> Option<u64> {
        (self.0 > 0).then(|| std::mem::take(&mut self.0))
    }
}

/// A claim under way: makes `Inner::claim_epoch` odd until dropped, even
/// if the dispatcher unwinds in between.
pub(super) struct Claiming<'a>(&'a AtomicU64);

impl<'a> Claiming<'a> {
    pub(super) fn begin(epoch: &'a AtomicU64) -> Claiming<'a> {
        epoch.fetch_add(1, Ordering::AcqRel);
        Claiming(epoch)
    }
}

impl Drop for Claiming<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

/// How often, by the host's clock, the dispatcher prunes finished work
/// past the retention period.
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Least time between two looks for running work another process
/// cancelled (a look reads the running tasks' states).
pub(super) const FOREIGN_CANCEL_CHECK: Duration = Duration::from_millis(20);

/// How often the dispatcher looks for due work of handlers it lacks.
pub(super) const UNKNOWN_HANDLER_CHECK: Duration = Duration::from_secs(1);

/// The dispatcher: claims due work when slots are free, starts runs, and
/// notices other processes' cancels and pauses by polling the store.
///
/// It takes the write lock only to claim, and claims only when work is due:
/// at each wake it reads `PRAGMA data_version` (a read, no lock), and only
/// after a change (another process's commit or this one's), a wake (an
/// enqueue, a run's end, a new device state, a resume) or its due time
/// does it read again, from the reader connection, when the next work of
/// its handlers with a free slot is due and whether the store is paused.
/// Between those it sleeps until that due time or the poll interval,
/// whichever is first. After a claim that took all it asked for, the next
/// claim (once a slot is free) goes ahead without that read: more work is
/// likely due, and under a burst the read would double the store's round
/// trips per claim.
pub(super) async fn dispatch(inner: Arc<Inner>) {
    let mut shutting_down = inner.shutting_down.subscribe();
    let runs = inner.runs.clone();
    let mut last_change = u64::MAX;
    let mut last_seen: Option<TaskId> = None;
    let mut claims_refused = Refusals::default();
    // Handlers named by due work that this host lacks, already alerted,
    // and when that was last looked at: first a second after the start, so
    // whoever subscribes to the alerts as the host starts hears of them.
    let mut alerted: Vec<String> = Vec::new();
    let mut handlers_checked = tokio::time::Instant::now();
    let mut cancels_checked = tokio::time::Instant::now() - FOREIGN_CANCEL_CHECK;
    // When work of this host's handlers with a free slot is next due (None:
    // none, or paused), as last read; `look` asks for a new read.
    let mut due: Option<Millis> = None;
    let mut look = true;
    let mut looked_at = u64::MAX;
    // The last claim took all it asked for (see above); one that takes
    // less ends it.
    let mut more_due = false;
    loop {
        if *shutting_down.borrow() {
            break;
        }
        inner.polls.fetch_add(1, Ordering::Relaxed);
        let now = inner.follow_clock().await;
        let store = inner.queue.store.clone();
        // A read of SQLite's in-memory change counter: microseconds, so it
        // runs inline rather than on the blocking pool.
        let counter = store.change_counter().unwrap_or(0);
        let (free, per) = inner.free_slots();
        if counter != looked_at || due.is_some_and(|d| d <= now) {
            look = true;
        }
        if look && free > 0 && !more_due {
            looked_at = counter;
            look = false;
            due = inner.next_due(&per).await;
        }
        let claiming = Claiming::begin(&inner.claim_epoch);
        let claimed =
            if free > 0 && (more_due || due.is_some_and(|d| d <= now)) && inner.lease_held.load(Ordering::Acquire) {
                inner.claims.fetch_add(1, Ordering::Relaxed);
                let device = inner.device.borrow().clone();
                let me = inner.me.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let claimed = tracing::Instrument::instrument(
                    store.claim(me, now, free, per, device),
                    tracing::debug_span!("claim", free),
                )
                .await;
                // Look again at once: what this claim left may be due too.
                look = true;
                more_due = matches!(&claimed, Ok(c) if c.len() == free);
                Some(claimed)
            } else {
                None
            };
        // A refused claim is tried again at the next wake or poll; the
        // first refusal of a streak and its end (a claim the store took,
        // not a wake that claimed nothing) are alerts.
        if let Some(Err(_)) = &claimed {
            inner.queue.metrics.refused("claim");
        }
        match &claimed {
            Some(Err(e)) if claims_refused.refused() => {
                inner.alert(
                    None,
                    format!(
                        "the store refused the dispatcher's claim ({e}); no work starts until it takes writes \
                         again (tried every {} ms)",
                        inner.poll.as_millis()
                    ),
                );
            }
            Some(Ok(_)) => {
                if let Some(n) = claims_refused.ended() {
                    inner.alert(
                        None,
                        format!("the store takes the dispatcher's claims again, after {n} refused"),
                    );
                }
            }
            _ => {}
        }
        // Report tasks other processes enqueued before any of them is
        // reported started.
        if inner.queue.events.receiver_count() > 0
            && (counter != last_change || matches!(&claimed, Some(Ok(c)) if !c.is_empty()))
        {
            last_seen = Some(report_foreign_enqueues(&inner, last_seen).await);
        }
        for c in claimed.and_then(Result::ok).unwrap_or_default() {
            let stop = register_run(&inner, &c, None);
            spawn_run(&inner, c, stop);
        }
        drop(claiming);
        if now >= inner.next_prune_at.load(Ordering::Acquire) {
            inner.prune_finished(now).await;
        }
        // A look at due work of unknown handlers every second: one read of
        // an index seek per handler of enqueued work.
        if handlers_checked.elapsed() >= UNKNOWN_HANDLER_CHECK {
            handlers_checked = tokio::time::Instant::now();
            inner.alert_waiting_for_handler(now, &mut alerted).await;
        }
        // At most once per FOREIGN_CANCEL_CHECK: under a burst every wake
        // sees a new change counter, and a look per wake cost more than
        // the claims it came between. A change not looked at yet is looked
        // at on a later pass.
        if counter != last_change && cancels_checked.elapsed() >= FOREIGN_CANCEL_CHECK {
            last_change = counter;
            cancels_checked = tokio::time::Instant::now();
            notice_foreign_cancels(&inner).await;
        }
        // A run that ends wakes the dispatcher through its `Slot`.
        let nap = match due {
            Some(d) if d > now && !look => inner.poll.min(Duration::from_millis((d - now) as u64)),
            _ => inner.poll,
        };
        // A change not looked at for cancels yet is looked at soon.
        let nap = if counter != last_change {
            nap.min(FOREIGN_CANCEL_CHECK)
        } else {
            nap
        };
        tokio::select! {
            () = inner.queue.wake.notified() => look = true,
            () = tokio::time::sleep(nap) => {}
            _ = shutting_down.changed() => {}
        }
    }
    runs.close();
    runs.wait().await;
}

/// Registers a claimed task's run in `running` (stopped at once if the
/// device state or a shutdown changed since its claim), before
/// [`spawn_run`] starts it. The caller holds a claim epoch, or is the run
/// `replacing`, whose place in `running` the new run takes under the same
/// lock: a claimed task is never in neither.
pub(super) fn register_run(inner: &Arc<Inner>, c: &Claimed, replacing: Option<TaskId>) -> StopHandle {
    let stop = StopHandle::new();
    let memory = inner
        .handlers()
        .by_name
        .get(&c.info.handler)
        .map_or(0, |h| h.config.budget_of(&c.info).max_memory_bytes);
    // Expedited work is not held by `device_idle` (the store's
    // claim filter says the same).
    let mut constraints = c.info.constraints;
    if c.info.expedited {
        constraints.device_idle = false;
    }
    let running = Running {
        handler: c.info.handler.clone(),
        stop: stop.clone(),
        constraints,
        memory,
        lease: c.lease,
        claimed_at: tokio::time::Instant::now(),
    };
    {
        // The claim used a snapshot of the device state; if it changed
        // since, the run stops at once (see `Inner::set_device`).
        // Likewise a shutdown (or drop) that came during the claim:
        // it set the flag before taking this lock to stop what runs,
        // so each run is stopped either by it or here.
        let mut all = inner.running.lock().unwrap_or_else(|e| e.into_inner());
        if !constraints.hold(&inner.device.borrow()) {
            stop.stop(StopReason::ConstraintLost);
        }
        if *inner.shutting_down.borrow() {
            stop.stop(StopReason::HostShutdown);
        }
        if let Some(old) = replacing {
            all.remove(&old);
        }
        all.insert(c.info.id, running);
    }
    stop
}

/// Starts the run of `c`, registered by [`register_run`].
pub(super) fn spawn_run(inner: &Arc<Inner>, c: Claimed, stop: StopHandle) {
    let span = tracing::info_span!(
        "run",
        task = c.info.id,
        handler = %c.info.handler,
        attempt = c.info.run_attempt_count
    );
    inner
        .runs
        .spawn(tracing::Instrument::instrument(run_task(inner.clone(), c, stop), span));
}

/// Reports tasks another process enqueued since `last_seen`; the first call
/// only finds where to start. This process's own enqueues are noted in
/// `reported` inside their transaction, so they are never reported twice.
pub(super) async fn report_foreign_enqueues(inner: &Arc<Inner>, last_seen: Option<TaskId>) -> TaskId {
    let store = &inner.queue.store;
    let query = match last_seen {
        Some(after) => Query {
            after_id: Some(after),
            limit: Some(1000),
            ..Query::default()
        },
        None => return store.last_id().await.unwrap_or(0),
    };
    let Ok(tasks) = store.query(query).await else {
        return last_seen.unwrap_or(0);
    };
    let mut reported = inner.queue.reported.lock().unwrap_or_else(|e| e.into_inner());
    let changes: Vec<Change> = tasks
        .iter()
        .filter(|t| !reported.remove(&t.id))
        .map(|t| Change {
            id: t.id,
            state: t.state,
        })
        .collect();
    let last = tasks.last().map_or(last_seen.unwrap_or(0), |t| t.id);
    // Ids at or below `last` are never looked at again.
    reported.retain(|id| *id > last);
    drop(reported);
    inner.queue.publish(&changes, |c| {
        let event = if c.state == TaskState::Blocked {
            "blocked"
        } else {
            "scheduled"
        };
        (event, "enqueued by another process".into())
    });
    last
}

/// Reads the machine every `refresh` until shutdown.
pub(super) async fn refresh_device(inner: Arc<Inner>) {
    let mut shutting_down = inner.shutting_down.subscribe();
    loop {
        tokio::select! {
            () = tokio::time::sleep(inner.device_config.refresh) => inner.refresh_device().await,
            // `wait_for`, not `changed`: a shutdown sent before this task
            // first ran is already the current value, and `changed` would
            // wait for a later one that never comes.
            _ = async { shutting_down.wait_for(|stopping| *stopping).await.is_ok() } => return,
        }
    }
}

/// Stops running work that another process cancelled.
pub(super) async fn notice_foreign_cancels(inner: &Arc<Inner>) {
    let ids = inner.running_ids();
    if ids.is_empty() {
        return;
    }
    // Only the cancelled ones are read: usually none, one index look each.
    let q = Query {
        ids: Some(ids),
        state: Some(TaskState::Cancelled),
        ..Query::default()
    };
    if let Ok(tasks) = inner.queue.store.query(q).await {
        let cancelled: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
        inner.stop_running(&cancelled, StopReason::Cancelled);
    }
}
