//! Hosts and their leases: `workhost hosts`, and a host that cannot renew
//! its lease on a shared store in time stopping its own runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use workhost::{
    Change, Claimed, ClockJump, Data, DeviceState, EnqueueHooks, Enqueued, HandlerCounts, HandlerWait, Host,
    HostIdentity, HostInfo, KvStore, Millis, Query, RunOutcome, Selector, SqliteStore, StoreError, StoreFuture, TaskId,
    TaskInfo, TaskState, TaskStore, Transition, WorkError, WorkRequest,
};
use workhost_tests::{Daemon, host_config, workhost, write_manifest};

/// The SQLite store posing as a shared store with host leases of `LEASE`,
/// whose lease renewals fail while `down` is set (the database out of
/// reach for this host only).
#[derive(Debug)]
struct Unreachable {
    inner: Arc<SqliteStore>,
    down: AtomicBool,
    /// Runs get a kv backend whose increments panic (a bug in a backend),
    /// to see that a run whose task panics gives back its slot.
    panicking_kv: AtomicBool,
}

/// A kv backend with a bug: every increment panics.
struct PanickingKv(Arc<dyn KvStore>);

impl KvStore for PanickingKv {
    fn get<'a>(&'a self, ns: &'a str, key: &'a str) -> workhost::KvFuture<'a, Option<Vec<u8>>> {
        self.0.get(ns, key)
    }
    fn set<'a>(&'a self, ns: &'a str, key: &'a str, value: &'a [u8], max: u32) -> workhost::KvFuture<'a, ()> {
        self.0.set(ns, key, value, max)
    }
    fn delete<'a>(&'a self, ns: &'a str, key: &'a str) -> workhost::KvFuture<'a, ()> {
        self.0.delete(ns, key)
    }
    fn increment<'a>(&'a self, _: &'a str, _: &'a str, _: i64, _: u32) -> workhost::KvFuture<'a, i64> {
        panic!("a kv backend with a bug")
    }
}

const LEASE: Duration = Duration::from_millis(700);

impl TaskStore for Unreachable {
    fn host_lease(&self) -> Option<Duration> {
        Some(LEASE)
    }
    fn renew_host(&self, me: HostIdentity, now: Millis) -> StoreFuture<'_, Result<Vec<(TaskId, u64)>, StoreError>> {
        if self.down.load(Ordering::SeqCst) {
            return Box::pin(async { Err(StoreError::Backend("connection refused".into())) });
        }
        self.inner.renew_host(me, now)
    }
    fn enqueue(
        &self,
        r: WorkRequest,
        now: Millis,
        hooks: EnqueueHooks,
    ) -> StoreFuture<'_, Result<(Enqueued, Vec<Change>), WorkError>> {
        self.inner.enqueue(r, now, hooks)
    }
    fn claim(
        &self,
        me: HostIdentity,
        now: Millis,
        limit: usize,
        may_run: HashMap<String, usize>,
        device: DeviceState,
    ) -> StoreFuture<'_, Result<Vec<Claimed>, StoreError>> {
        self.inner.claim(me, now, limit, may_run, device)
    }
    fn finish<'a>(
        &'a self,
        id: TaskId,
        lease: u64,
        t: Transition,
        outcome: &'a RunOutcome,
        now: Millis,
    ) -> StoreFuture<'a, Result<Vec<Change>, StoreError>> {
        self.inner.finish(id, lease, t, outcome, now)
    }
    fn set_progress<'a>(&'a self, id: TaskId, lease: u64, p: &'a Data) -> StoreFuture<'a, Result<(), StoreError>> {
        self.inner.set_progress(id, lease, p)
    }
    fn cancel(&self, s: Selector, now: Millis) -> StoreFuture<'_, Result<Vec<Change>, StoreError>> {
        self.inner.cancel(s, now)
    }
    fn make_due(&self, id: TaskId, now: Millis) -> StoreFuture<'_, Result<(), WorkError>> {
        self.inner.make_due(id, now)
    }
    fn cancel_matching(&self, q: Query, now: Millis) -> StoreFuture<'_, Result<Vec<Change>, StoreError>> {
        self.inner.cancel_matching(q, now)
    }
    fn retry(&self, q: Query, now: Millis) -> StoreFuture<'_, Result<Vec<Change>, StoreError>> {
        self.inner.retry(q, now)
    }
    fn run_now(&self, q: Query, now: Millis) -> StoreFuture<'_, Result<Vec<Change>, StoreError>> {
        self.inner.run_now(q, now)
    }
    fn delete(&self, q: Query) -> StoreFuture<'_, Result<Vec<TaskId>, StoreError>> {
        self.inner.delete(q)
    }
    fn set_handler_paused(&self, handler: String, paused: bool) -> StoreFuture<'_, Result<(), StoreError>> {
        self.inner.set_handler_paused(handler, paused)
    }
    fn paused_handlers(&self) -> StoreFuture<'_, Result<Vec<String>, StoreError>> {
        self.inner.paused_handlers()
    }
    fn count_by_handler(&self) -> StoreFuture<'_, Result<HandlerCounts, StoreError>> {
        self.inner.count_by_handler()
    }
    fn pins_in_use(&self) -> StoreFuture<'_, Result<Vec<String>, StoreError>> {
        self.inner.pins_in_use()
    }
    fn get(&self, id: TaskId) -> StoreFuture<'_, Result<Option<TaskInfo>, StoreError>> {
        self.inner.get(id)
    }
    fn query(&self, q: Query) -> StoreFuture<'_, Result<Vec<TaskInfo>, StoreError>> {
        self.inner.query(q)
    }
    fn last_id(&self) -> StoreFuture<'_, Result<TaskId, StoreError>> {
        self.inner.last_id()
    }
    fn count_by_state(&self) -> StoreFuture<'_, Result<HashMap<TaskState, usize>, StoreError>> {
        self.inner.count_by_state()
    }
    fn next_due(&self, h: Vec<String>, d: DeviceState) -> StoreFuture<'_, Result<Option<Millis>, StoreError>> {
        self.inner.next_due(h, d)
    }
    fn waiting_for_handler(
        &self,
        k: Vec<String>,
        now: Millis,
    ) -> StoreFuture<'_, Result<Vec<HandlerWait>, StoreError>> {
        self.inner.waiting_for_handler(k, now)
    }
    fn recover(&self, me: HostIdentity, now: Millis) -> StoreFuture<'_, Result<Vec<Change>, StoreError>> {
        // Rescue sweeps run at every renewal on a store with leases; this
        // one's only host is the one under test, so there is nobody else's
        // work to rescue.
        let _ = (me, now);
        Box::pin(async { Ok(Vec::new()) })
    }
    fn cancel_because(
        &self,
        ids: Vec<TaskId>,
        reason: String,
        now: Millis,
    ) -> StoreFuture<'_, Result<Vec<Change>, StoreError>> {
        self.inner.cancel_because(ids, reason, now)
    }
    fn set_limits(&self, limits: std::collections::HashMap<String, workhost::HandlerLimits>) {
        self.inner.set_limits(limits)
    }
    fn set_paused(&self, p: bool) -> StoreFuture<'_, Result<(), StoreError>> {
        self.inner.set_paused(p)
    }
    fn paused(&self) -> StoreFuture<'_, Result<bool, StoreError>> {
        self.inner.paused()
    }
    fn follow_clock(&self, b: String, r: Millis, t: Millis) -> StoreFuture<'_, Result<ClockJump, StoreError>> {
        self.inner.follow_clock(b, r, t)
    }
    fn prune(&self, before: Millis) -> StoreFuture<'_, Result<usize, StoreError>> {
        self.inner.prune(before)
    }
    fn oldest_finished(&self) -> StoreFuture<'_, Result<Option<Millis>, StoreError>> {
        self.inner.oldest_finished()
    }
    fn change_counter(&self) -> Result<u64, StoreError> {
        self.inner.change_counter()
    }
    fn kv(&self) -> Arc<dyn KvStore> {
        self.inner.kv()
    }
    fn run_kv(&self, id: TaskId, lease: u64) -> Arc<dyn KvStore> {
        let kv = self.inner.run_kv(id, lease);
        if self.panicking_kv.load(Ordering::SeqCst) {
            Arc::new(PanickingKv(kv))
        } else {
            kv
        }
    }
    fn register_host(&self, me: HostIdentity, now: Millis) -> StoreFuture<'_, Result<(), StoreError>> {
        if self.down.load(Ordering::SeqCst) {
            return Box::pin(async { Err(StoreError::Backend("connection refused".into())) });
        }
        self.inner.register_host(me, now)
    }
    fn leave_host(&self, me: HostIdentity) -> StoreFuture<'_, Result<(), StoreError>> {
        self.inner.leave_host(me)
    }
    fn hosts(&self, now: Millis) -> StoreFuture<'_, Result<Vec<HostInfo>, StoreError>> {
        self.inner.hosts(now)
    }
}

async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < Duration::from_secs(20), "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_cannot_renew_its_lease_in_time_stops_its_runs_lease_lost_and_joins_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Unreachable {
        inner: SqliteStore::open(&dir.path().join("store")).unwrap(),
        down: AtomicBool::new(false),
        panicking_kv: AtomicBool::new(false),
    });
    let mut config = host_config(dir.path());
    config.store = Some(store.clone());
    let host = Host::start(config).await.unwrap();
    let mut alerts = host.alerts();
    let queue = host.queue().clone();
    let mut r = WorkRequest::one_off("spin", "forever");
    r.backoff_delay = Duration::from_secs(10);
    let id = queue.enqueue(r).await.unwrap().id;
    wait_until("the spin runs", async || host.running() == vec![id]).await;

    store.down.store(true, Ordering::SeqCst);
    let cut = Instant::now();
    wait_until("the run stops", async || host.running().is_empty()).await;
    let stopped_after = cut.elapsed();
    assert!(
        stopped_after <= LEASE + Duration::from_millis(500),
        "the run went on {stopped_after:?} after the last renewal could be made (lease {LEASE:?})"
    );
    let t = queue.get(id).await.unwrap().unwrap();
    assert_eq!(
        (t.state, t.stop_reason.as_deref()),
        (TaskState::Enqueued, Some("lease-lost")),
        "stopped by the lost lease and retried: {t:?}"
    );
    let mut messages = Vec::new();
    while let Ok(a) = alerts.try_recv() {
        messages.push(a.message);
    }
    assert!(
        messages.iter().any(|m| m.contains("lease on the store ran out")),
        "{messages:?}"
    );

    // Nothing is claimed while the lease is lost; once the store is back
    // in reach the host joins again as a new incarnation and runs work.
    queue.enqueue(WorkRequest::one_off("echo", "while-lost")).await.unwrap();
    tokio::time::sleep(LEASE).await;
    assert!(host.running().is_empty());
    store.down.store(false, Ordering::SeqCst);
    let echoed = queue
        .query(Query {
            state: Some(TaskState::Succeeded),
            ..Query::default()
        })
        .await
        .unwrap();
    assert!(echoed.is_empty(), "nothing ran while the lease was lost");
    wait_until("work runs again", async || {
        queue
            .query(Query {
                state: Some(TaskState::Succeeded),
                ..Query::default()
            })
            .await
            .unwrap()
            .len()
            == 1
    })
    .await;
    let hosts = queue.hosts().await.unwrap();
    assert_eq!(hosts.len(), 1, "the new incarnation replaced the old: {hosts:?}");
    queue.cancel(Selector::All).await.unwrap();
    host.shutdown().await;
}

#[test]
fn hosts_lists_the_serving_daemon_and_no_longer_serving_after_it_died() {
    let dir = tempfile::tempdir().unwrap();
    let m = write_manifest(dir.path());
    let config = ["--config", m.to_str().unwrap()];
    let hosts = || {
        let run = workhost(&["hosts", "--json", config[0], config[1]], dir.path());
        assert_eq!(run.code, 0, "{run:?}");
        run.json()
    };
    assert_eq!(hosts(), serde_json::json!([]), "no host has served yet");
    let daemon = Daemon::start(&m);
    let start = Instant::now();
    let listed = loop {
        let h = hosts();
        if h.as_array().is_some_and(|a| !a.is_empty()) {
            break h;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the daemon never registered");
        std::thread::sleep(Duration::from_millis(50));
    };
    let h = &listed[0];
    assert_eq!(h["live"], true, "{listed}");
    let id = h["id"].as_str().unwrap().to_string();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("data/host-id"))
            .ok()
            .map(|s| s.trim().to_string()),
        Some(id.clone()),
        "the id is kept in the data directory"
    );
    let table = workhost(&["hosts", config[0], config[1]], dir.path());
    assert!(table.stdout.contains(&id) && table.stdout.contains("yes"), "{table:?}");
    daemon.kill9();
    let after = hosts();
    assert_eq!(
        (after[0]["id"].as_str(), &after[0]["live"]),
        (Some(id.as_str()), &serde_json::json!(false))
    );
    // A restart is the same host, a new incarnation.
    let _daemon = Daemon::start(&m);
    let start = Instant::now();
    loop {
        let h = hosts();
        if h[0]["live"] == true && h[0]["incarnation"] != after[0]["incarnation"] {
            assert_eq!((h.as_array().unwrap().len(), &h[0]["id"]), (1, &serde_json::json!(id)));
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the restarted daemon never registered: {h}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A run whose task panics (here a kv backend with a bug panics inside a
/// host call) gives back its slot: the handler's only slot serves the
/// next run, and the host keeps dispatching.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_task_panics_gives_back_its_slot() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Unreachable {
        inner: SqliteStore::open(&dir.path().join("store")).unwrap(),
        down: AtomicBool::new(false),
        panicking_kv: AtomicBool::new(true),
    });
    let mut config = host_config(dir.path());
    config.store = Some(store.clone());
    for h in &mut config.handlers {
        h.concurrency = 1;
    }
    let host = Host::start(config).await.unwrap();
    let queue = host.queue().clone();
    let panicked = queue.enqueue(WorkRequest::one_off("counter", "boom")).await.unwrap().id;
    wait_until("the run's task panicked and its slot is free", async || {
        let t = queue.get(panicked).await.unwrap().unwrap();
        t.state == TaskState::Running && t.attempts.len() == 1 && host.running().is_empty()
    })
    .await;
    store.panicking_kv.store(false, Ordering::SeqCst);
    let next = queue
        .enqueue(WorkRequest::one_off("counter", "after"))
        .await
        .unwrap()
        .id;
    wait_until("the next run takes the handler's one slot", async || {
        queue.get(next).await.unwrap().unwrap().state == TaskState::Succeeded
    })
    .await;
    host.shutdown().await;
}
