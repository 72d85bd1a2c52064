//! The `TaskStore` conformance suite: every backend must pass each case.
//! Cases speak only the trait, through [`Store`], which runs each of its
//! async methods to completion; `BACKENDS` lists the implementations.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use workhost::{
    Change, Claimed, ClockJump, Constraints, Data, DeviceOverrides, DeviceState, EnqueueHooks, Enqueued,
    ExistingWorkPolicy, HandlerCounts, HandlerLimits, HandlerWait, HostIdentity, KvStore, Millis, NetworkType, PgStore,
    Query, RunOutcome, RunResult, Selector, SqliteStore, StopReason, StoreError, TaskId, TaskInfo, TaskState,
    TaskStore, Transition, Value, WorkError, WorkRequest, decide,
};

/// Where one case's store lives: a data directory, or a database.
enum Place {
    Dir(tempfile::TempDir),
    Database(Box<workhost_tests::pg::TestDatabase>),
}

/// Opens (again) the store at a place.
type Open = fn(&Place) -> Arc<dyn TaskStore>;

/// A backend: its name, a fresh place for a case, and how to open it.
type Backend = (&'static str, fn() -> Place, Open);

/// Every backend, by name: a fresh place for a case, and how to open it.
/// A new backend adds a line here.
const BACKENDS: &[Backend] = &[
    (
        "sqlite",
        || Place::Dir(tempfile::tempdir().unwrap()),
        |place| match place {
            Place::Dir(dir) => SqliteStore::open(dir.path()).unwrap(),
            Place::Database(_) => unreachable!("sqlite lives in a directory"),
        },
    ),
    (
        "postgres",
        || Place::Database(Box::new(workhost_tests::pg::database())),
        |place| match place {
            Place::Database(db) => runtime()
                .block_on(PgStore::open(db.url()))
                .unwrap_or_else(|e| panic!("opening the store in {}: {e}", db.url())),
            Place::Dir(_) => unreachable!("postgres lives in a database"),
        },
    ),
];

/// Runs `case` on a fresh store of every backend; `open` reopens the same
/// store (a second process, or a restart). Each case's host is registered,
/// as a serving host is before it claims.
fn each_backend(case: impl Fn(&dyn Fn() -> Arc<Store>)) {
    for (name, place, open) in BACKENDS {
        let place = place();
        eprintln!("backend {name}");
        let first = Store(open(&place));
        first.on(first.0.register_host(me(), NOW)).unwrap();
        drop(first);
        case(&|| Arc::new(Store(open(&place))));
    }
}

/// The runtime every case's store calls run on.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// The host the cases claim as.
fn me() -> HostIdentity {
    HostIdentity {
        id: "conformance".into(),
        incarnation: "1".into(),
    }
}

/// A store as a case drives it: each method awaits the trait's own (the
/// path production runs) on the suite's runtime.
struct Store(Arc<dyn TaskStore>);

impl Store {
    fn on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        runtime().block_on(f)
    }
    fn enqueue(&self, r: WorkRequest, now: Millis) -> Result<(Enqueued, Vec<Change>), WorkError> {
        self.on(self.0.enqueue(r, now, EnqueueHooks::default()))
    }
    fn claim(
        &self,
        now: Millis,
        limit: usize,
        may_run: &HashMap<String, usize>,
        device: &DeviceState,
    ) -> Result<Vec<Claimed>, StoreError> {
        self.on(self.0.claim(me(), now, limit, may_run.clone(), device.clone()))
    }
    fn finish(
        &self,
        id: TaskId,
        lease: u64,
        t: Transition,
        outcome: &RunOutcome,
        now: Millis,
    ) -> Result<Vec<Change>, StoreError> {
        self.on(self.0.finish(id, lease, t, outcome, now))
    }
    fn set_progress(&self, id: TaskId, lease: u64, progress: &Data) -> Result<(), StoreError> {
        self.on(self.0.set_progress(id, lease, progress))
    }
    fn cancel(&self, selector: &Selector, now: Millis) -> Result<Vec<Change>, StoreError> {
        self.on(self.0.cancel(selector.clone(), now))
    }
    fn make_due(&self, id: TaskId, now: Millis) -> Result<(), WorkError> {
        self.on(self.0.make_due(id, now))
    }
    fn get(&self, id: TaskId) -> Result<Option<TaskInfo>, StoreError> {
        self.on(self.0.get(id))
    }
    fn query(&self, q: &Query) -> Result<Vec<TaskInfo>, StoreError> {
        self.on(self.0.query(q.clone()))
    }
    fn last_id(&self) -> Result<TaskId, StoreError> {
        self.on(self.0.last_id())
    }
    fn count_by_state(&self) -> Result<HashMap<TaskState, usize>, StoreError> {
        self.on(self.0.count_by_state())
    }
    fn next_due(&self, handlers: &[String], device: &DeviceState) -> Result<Option<Millis>, StoreError> {
        self.on(self.0.next_due(handlers.to_vec(), device.clone()))
    }
    fn waiting_for_handler(&self, known: &[String], now: Millis) -> Result<Vec<HandlerWait>, StoreError> {
        self.on(self.0.waiting_for_handler(known.to_vec(), now))
    }
    fn recover(&self, now: Millis) -> Result<Vec<Change>, StoreError> {
        // Recovery as a restarted host runs it: a new incarnation.
        let restarted = HostIdentity {
            incarnation: "2".into(),
            ..me()
        };
        self.on(self.0.recover(restarted, now))
    }
    fn set_paused(&self, paused: bool) -> Result<(), StoreError> {
        self.on(self.0.set_paused(paused))
    }
    fn paused(&self) -> Result<bool, StoreError> {
        self.on(self.0.paused())
    }
    fn follow_clock(&self, boot: &str, reading: Millis, threshold: Millis) -> Result<ClockJump, StoreError> {
        self.on(self.0.follow_clock(boot.to_string(), reading, threshold))
    }
    fn prune(&self, before: Millis) -> Result<usize, StoreError> {
        self.on(self.0.prune(before))
    }
    fn oldest_finished(&self) -> Result<Option<Millis>, StoreError> {
        self.on(self.0.oldest_finished())
    }
    fn kv(&self) -> Arc<dyn KvStore> {
        self.0.kv()
    }
    fn cancel_matching(&self, q: Query, now: Millis) -> Result<Vec<Change>, StoreError> {
        self.on(self.0.cancel_matching(q, now))
    }
    fn retry(&self, q: Query, now: Millis) -> Result<Vec<Change>, StoreError> {
        self.on(self.0.retry(q, now))
    }
    fn run_now(&self, q: Query, now: Millis) -> Result<Vec<Change>, StoreError> {
        self.on(self.0.run_now(q, now))
    }
    fn delete(&self, q: Query) -> Result<Vec<TaskId>, StoreError> {
        self.on(self.0.delete(q))
    }
    fn set_handler_paused(&self, handler: &str, paused: bool) -> Result<(), StoreError> {
        self.on(self.0.set_handler_paused(handler.to_string(), paused))
    }
    fn paused_handlers(&self) -> Result<Vec<String>, StoreError> {
        self.on(self.0.paused_handlers())
    }
    fn count_by_handler(&self) -> Result<HandlerCounts, StoreError> {
        self.on(self.0.count_by_handler())
    }
    fn pins_in_use(&self) -> Result<Vec<String>, StoreError> {
        self.on(self.0.pins_in_use())
    }
    fn set_limits(&self, limits: &[(&str, HandlerLimits)]) {
        self.0
            .set_limits(limits.iter().map(|(h, l)| (h.to_string(), *l)).collect());
    }
}

const NOW: i64 = 1_000_000;

/// The handlers [`slots`] gives slots to.
fn handlers() -> Vec<String> {
    vec!["a".into(), "b".into()]
}

fn slots(n: usize) -> HashMap<String, usize> {
    ["a", "b"].iter().map(|h| (h.to_string(), n)).collect()
}

fn outcome(result: RunResult) -> RunOutcome {
    RunOutcome {
        result,
        duration: Duration::from_millis(1),
        fuel_consumed: Some(7),
        peak_memory_bytes: 65536,
        log: Vec::new(),
        component: Some(std::sync::Arc::new(workhost::ComponentId {
            digest: "ab".repeat(32),
            contract: "workhost:task/handler@0.1.1".into(),
        })),
    }
}

fn run(store: &Store, handler_slots: usize, result: RunResult, now: i64) -> Vec<i64> {
    let claimed = store
        .claim(now, 100, &slots(handler_slots), &DeviceState::default())
        .unwrap();
    for c in &claimed {
        let t = decide(&c.retry_facts(), &result, now);
        store
            .finish(c.info.id, c.lease, t, &outcome(result.clone()), now)
            .unwrap();
    }
    claimed.iter().map(|c| c.info.id).collect()
}

fn state(store: &Store, id: i64) -> TaskState {
    store.get(id).unwrap().unwrap().state
}

#[test]
fn enqueued_work_is_claimed_when_due_in_order_within_handler_slots() {
    each_backend(|open| {
        let s = open();
        let mut later = WorkRequest::one_off("a", "later");
        later.initial_delay = Duration::from_secs(10);
        let later = s.enqueue(later, NOW).unwrap().0.id;
        let ids: Vec<i64> = (0..3)
            .map(|_| s.enqueue(WorkRequest::one_off("a", "now"), NOW).unwrap().0.id)
            .collect();
        let other = s.enqueue(WorkRequest::one_off("b", "now"), NOW).unwrap().0.id;
        assert_eq!(s.next_due(&handlers(), &DeviceState::default()).unwrap(), Some(NOW));
        let claimed: Vec<i64> = s
            .claim(NOW, 10, &slots(2), &DeviceState::default())
            .unwrap()
            .iter()
            .map(|c| c.info.id)
            .collect();
        assert_eq!(
            claimed,
            vec![ids[0], other, ids[1]],
            "two slots for handler a, one task of b, every handler's first before a second"
        );
        let c = s.get(ids[0]).unwrap().unwrap();
        assert_eq!(
            (c.state, c.run_attempt_count, c.attempts.len()),
            (TaskState::Running, 1, 1)
        );
        let claim_ids = |now| {
            s.claim(now, 10, &slots(5), &DeviceState::default())
                .unwrap()
                .iter()
                .map(|c| c.info.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(claim_ids(NOW + 9_999), [ids[2]], "the delayed task is not due yet");
        assert_eq!(claim_ids(NOW + 10_000), [later]);
        assert_eq!(
            s.claim(NOW, 10, &HashMap::new(), &DeviceState::default()).unwrap(),
            vec![],
            "no slot, no claim"
        );
        assert_eq!(s.last_id().unwrap(), other);
        let counts = s.count_by_state().unwrap();
        assert_eq!(counts.get(&TaskState::Running), Some(&5));
    });
}

#[test]
fn a_backlog_of_one_handler_or_of_an_unknown_one_never_holds_up_another_handlers_due_work() {
    each_backend(|open| {
        let s = open();
        let enqueue = |handler: &str, n: usize| -> Vec<i64> {
            (0..n)
                .map(|_| s.enqueue(WorkRequest::one_off(handler, "t"), NOW).unwrap().0.id)
                .collect()
        };
        // Older than everything else: a backlog of a saturated handler and
        // one of a handler no host here knows.
        let backlog = enqueue("a", 300);
        let unknown = enqueue("gone", 300);
        let b = s.enqueue(WorkRequest::one_off("b", "t"), NOW + 1).unwrap().0.id;
        let mut may_run = slots(1);
        may_run.insert("a".into(), 0);
        let claim = |limit: usize, may_run: &HashMap<String, usize>| -> Vec<i64> {
            s.claim(NOW + 1, limit, may_run, &DeviceState::default())
                .unwrap()
                .iter()
                .map(|c| c.info.id)
                .collect()
        };
        assert_eq!(claim(16, &may_run), [b], "a has no free slot, and nobody runs \"gone\"");
        // With slots to spare everywhere but room for two runs in all, each
        // handler gets its oldest due task before any gets a second.
        let b2 = s.enqueue(WorkRequest::one_off("b", "t"), NOW + 1).unwrap().0.id;
        assert_eq!(claim(2, &slots(5)), [backlog[0], b2]);
        assert_eq!(s.next_due(&["b".to_string()], &DeviceState::default()).unwrap(), None);
        assert_eq!(s.next_due(&handlers(), &DeviceState::default()).unwrap(), Some(NOW));
        let waits = s.waiting_for_handler(&handlers(), NOW + 1).unwrap();
        assert_eq!(
            waits,
            [HandlerWait {
                handler: "gone".into(),
                due: 300,
                first: unknown[0]
            }]
        );
        assert_eq!(
            s.waiting_for_handler(&handlers(), NOW - 1).unwrap(),
            [],
            "nothing due yet"
        );
        assert_eq!(state(&s, unknown[0]), TaskState::Enqueued);
    });
}

#[test]
fn task_data_reads_back_with_its_types_and_a_damaged_row_is_an_error_naming_the_task() {
    each_backend(|open| {
        let s = open();
        let empty = Data::new()
            .with("s64s", Value::S64List(vec![]))
            .with("f64s", Value::F64List(vec![]))
            .with("bools", Value::BoolList(vec![]));
        let mut r = WorkRequest::one_off("a", "t");
        r.input = empty.clone();
        let id = s.enqueue(r, NOW).unwrap().0.id;
        let claimed = s.claim(NOW, 1, &slots(1), &DeviceState::default()).unwrap();
        assert_eq!(claimed[0].info.input, empty, "input");
        s.set_progress(id, claimed[0].lease, &empty).unwrap();
        assert_eq!(s.get(id).unwrap().unwrap().progress, Some(empty.clone()), "progress");
        let done = RunResult::Succeeded(empty.clone());
        let t = decide(&claimed[0].retry_facts(), &done, NOW);
        s.finish(id, claimed[0].lease, t, &outcome(done), NOW).unwrap();
        assert_eq!(s.get(id).unwrap().unwrap().output, Some(empty.clone()), "output");
    });
    // Damage is SQLite's own business; the backend here is SQLite.
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(dir.path()).unwrap();
    let s = Store(sqlite.clone());
    let ids: Vec<i64> = (0..4)
        .map(|_| s.enqueue(WorkRequest::one_off("a", "t"), NOW).unwrap().0.id)
        .collect();
    let raw = rusqlite::Connection::open(sqlite.path()).unwrap();
    for (id, set) in ids.iter().zip([
        "input = 'not json'",
        "output = '{\"k\":{\"s64\":\"x\"}}'",
        "state = 'lost'",
        "kind = 'weekly'",
    ]) {
        raw.execute(&format!("UPDATE tasks SET {set} WHERE id = {id}"), [])
            .unwrap();
        let e = s.get(*id).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("task {id} is damaged in the store (its ")),
            "{set}: {e}"
        );
    }
    let e = s.query(&Query::default()).unwrap_err().to_string();
    assert!(e.contains(&format!("task {} is damaged", ids[0])), "{e}");
}

#[test]
fn prune_keeps_a_finished_parent_while_its_child_waits() {
    each_backend(|open| {
        let s = open();
        let p1 = s.enqueue(WorkRequest::one_off("a", "p1"), NOW).unwrap().0.id;
        run(&s, 1, RunResult::Succeeded(Data::new().with("x", 1i64)), NOW);
        let mut p2 = WorkRequest::one_off("a", "p2");
        p2.initial_delay = Duration::from_secs(3600);
        let p2 = s.enqueue(p2, NOW).unwrap().0.id;
        let mut child = WorkRequest::one_off("b", "c");
        child.after = vec![p1, p2];
        let child = s.enqueue(child, NOW).unwrap().0.id;
        assert_eq!(s.oldest_finished().unwrap(), Some(NOW));
        assert_eq!(s.prune(NOW + 1).unwrap(), 0, "p1's child waits");
        assert_eq!(s.get(child).unwrap().unwrap().after, [p1, p2]);
        run(&s, 1, RunResult::Succeeded(Data::new()), NOW + 3_600_000);
        assert_eq!(state(&s, p2), TaskState::Succeeded);
        let c = s.get(child).unwrap().unwrap();
        assert_eq!((c.state, c.input.get("x")), (TaskState::Enqueued, Some(&Value::S64(1))));
        assert_eq!(s.prune(NOW + 1).unwrap(), 0, "its child is still unfinished");
        run(&s, 1, RunResult::Succeeded(Data::new()), NOW + 3_600_000);
        assert_eq!(s.prune(i64::MAX).unwrap(), 3);
        assert_eq!(s.oldest_finished().unwrap(), None);
    });
}

#[test]
fn a_finish_applies_its_transition_only_to_the_attempt_still_running() {
    each_backend(|open| {
        let s = open();
        let id = s.enqueue(WorkRequest::one_off("a", "t"), NOW).unwrap().0.id;
        let c = s.claim(NOW, 1, &slots(1), &DeviceState::default()).unwrap().remove(0);
        s.cancel(&Selector::Id(id), NOW).unwrap();
        let t = decide(&c.retry_facts(), &RunResult::Succeeded(Data::new()), NOW);
        assert_eq!(
            s.finish(id, c.lease, t, &outcome(RunResult::Succeeded(Data::new())), NOW)
                .unwrap(),
            vec![]
        );
        let info = s.get(id).unwrap().unwrap();
        assert_eq!(info.state, TaskState::Cancelled, "a cancelled task is not resurrected");
        assert_eq!(
            info.attempts[0].outcome.as_deref(),
            Some("success"),
            "its attempt is still recorded"
        );
        assert_eq!(info.attempts[0].fuel_consumed, Some(7));
    });
}

#[test]
fn unique_names_are_enforced_atomically_across_connections() {
    each_backend(|open| {
        let stores: Vec<Arc<Store>> = (0..4).map(|_| open()).collect();
        let handles: Vec<_> = stores
            .into_iter()
            .map(|s| {
                std::thread::spawn(move || {
                    let mut r = WorkRequest::one_off("a", "t");
                    r.unique = Some(("u".into(), ExistingWorkPolicy::Keep));
                    s.enqueue(r, NOW).unwrap().0
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(results.iter().filter(|e| e.created).count(), 1, "{results:?}");
        assert!(results.iter().all(|e| e.id == results[0].id));
    });
}

#[test]
fn failure_and_cancellation_propagate_to_dependents_and_success_releases_them() {
    each_backend(|open| {
        let s = open();
        let parent = s.enqueue(WorkRequest::one_off("a", "p"), NOW).unwrap().0.id;
        let mut child = WorkRequest::one_off("b", "c");
        child.after = vec![parent];
        child.input = Data::new().with("own", 1i64);
        let child = s.enqueue(child, NOW).unwrap().0.id;
        assert_eq!(state(&s, child), TaskState::Blocked);
        run(&s, 1, RunResult::Succeeded(Data::new().with("from", "parent")), NOW);
        let c = s.get(child).unwrap().unwrap();
        assert_eq!(
            (c.state, c.input),
            (
                TaskState::Enqueued,
                Data::new().with("from", "parent").with("own", 1i64)
            )
        );

        let p2 = s.enqueue(WorkRequest::one_off("a", "p2"), NOW).unwrap().0.id;
        let mut c2 = WorkRequest::one_off("a", "c2");
        c2.after = vec![p2];
        let c2 = s.enqueue(c2, NOW).unwrap().0.id;
        s.cancel(&Selector::Id(child), NOW).unwrap();
        run(&s, 1, RunResult::Failed(workhost::Failure::Error("no".into())), NOW);
        assert_eq!((state(&s, p2), state(&s, c2)), (TaskState::Failed, TaskState::Failed));
    });
}

#[test]
fn recovery_re_enqueues_work_left_running_and_fails_it_on_its_last_attempt() {
    each_backend(|open| {
        let s = open();
        let a = s.enqueue(WorkRequest::one_off("a", "t"), NOW).unwrap().0.id;
        let mut last = WorkRequest::one_off("a", "t");
        last.max_attempts = 1;
        let b = s.enqueue(last, NOW).unwrap().0.id;
        s.claim(NOW, 10, &slots(5), &DeviceState::default()).unwrap();
        drop(s);
        let s = open();
        let changes = s.recover(NOW + 5).unwrap();
        assert_eq!(changes.len(), 2);
        let a = s.get(a).unwrap().unwrap();
        assert_eq!(
            (a.state, a.run_attempt_count, a.next_run_at),
            (TaskState::Enqueued, 1, NOW + 5)
        );
        assert_eq!(a.attempts[0].stop_reason.as_deref(), Some("host-shutdown"));
        assert_eq!(state(&s, b), TaskState::Failed);
    });
}

#[test]
fn retries_return_to_enqueued_with_backoff_and_stops_are_recorded() {
    each_backend(|open| {
        let s = open();
        let id = s.enqueue(WorkRequest::one_off("a", "t"), NOW).unwrap().0.id;
        run(&s, 1, RunResult::Stopped(StopReason::Timeout), NOW);
        let t = s.get(id).unwrap().unwrap();
        assert_eq!(
            (t.state, t.next_run_at, t.stop_reason.as_deref()),
            (TaskState::Enqueued, NOW + 30_000, Some("timeout"))
        );
        assert_eq!(run(&s, 1, RunResult::Retry, NOW), Vec::<i64>::new(), "not due yet");
        assert_eq!(run(&s, 1, RunResult::Retry, NOW + 30_000), vec![id]);
        assert_eq!(s.get(id).unwrap().unwrap().next_run_at, NOW + 30_000 + 60_000);
    });
}

#[test]
fn pause_is_shared_prune_drops_only_old_finished_work_and_queries_filter() {
    each_backend(|open| {
        let (s, other) = (open(), open());
        other.set_paused(true).unwrap();
        assert!(s.paused().unwrap());
        s.set_paused(false).unwrap();
        assert!(!other.paused().unwrap());
        let mut tagged = WorkRequest::one_off("a", "t");
        tagged.tags = vec!["x".into()];
        let done = s.enqueue(tagged, NOW).unwrap().0.id;
        run(&s, 1, RunResult::Succeeded(Data::new()), NOW);
        let mut waiting = WorkRequest::one_off("a", "w");
        waiting.initial_delay = Duration::from_secs(60);
        let waiting = s.enqueue(waiting, NOW).unwrap().0.id;
        s.make_due(waiting, NOW + 1).unwrap();
        assert_eq!(s.next_due(&handlers(), &DeviceState::default()).unwrap(), Some(NOW + 1));
        let ids = |q: Query| s.query(&q).unwrap().into_iter().map(|t| t.id).collect::<Vec<_>>();
        assert_eq!(
            ids(Query {
                tag: Some("x".into()),
                ..Query::default()
            }),
            [done]
        );
        assert_eq!(
            ids(Query {
                state: Some(TaskState::Enqueued),
                ..Query::default()
            }),
            [waiting]
        );
        assert_eq!(s.prune(NOW).unwrap(), 0, "finished at NOW is not older than NOW");
        assert_eq!(s.prune(NOW + 1).unwrap(), 1);
        assert!(s.get(done).unwrap().is_none());
        assert!(s.get(waiting).unwrap().is_some());
    });
}

#[test]
fn kv_namespaces_are_apart_increments_are_atomic_and_values_survive_reopening() {
    each_backend(|open| {
        let s = open();
        let kv = s.kv();
        runtime().block_on(async {
            // Four tasks of 50 increments each, in flight together, so
            // increments share the writer's transactions.
            let tasks: Vec<_> = (0..4)
                .map(|_| {
                    let kv = kv.clone();
                    tokio::spawn(async move {
                        for _ in 0..50 {
                            kv.increment("h1", "n", 1, 10).await.unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            kv.set("h2", "n", b"x", 10).await.unwrap();
            assert_eq!(kv.get("h1", "n").await.unwrap(), Some(b"200".to_vec()));
            assert_eq!(
                kv.increment("h2", "n", 1, 10).await,
                Err(workhost::KvError::NotAnInteger)
            );
            kv.set("h1", "k2", b"v", 2).await.unwrap();
            assert_eq!(
                kv.set("h1", "k3", b"v", 2).await,
                Err(workhost::KvError::TooManyKeys(2))
            );
        });
        drop((kv, s));
        let again = open();
        assert_eq!(
            runtime().block_on(again.kv().get("h1", "n")).unwrap(),
            Some(b"200".to_vec())
        );
    });
}

/// The kv key limit is exact under concurrent writers: of 40 new keys
/// raced into a namespace of 10, 10 are added; a key raced by several
/// writers counts once; deleting a key (not a missing one) makes room;
/// an existing key is written when the namespace is full; and the count
/// survives reopening.
#[test]
fn the_kv_key_limit_is_exact_under_concurrent_new_keys_and_deletes_make_room() {
    each_backend(|open| {
        let s = open();
        let kv = s.kv();
        runtime().block_on(async {
            let racers: Vec<_> = (0..40)
                .map(|i| {
                    let kv = kv.clone();
                    tokio::spawn(async move {
                        let key = format!("k{i}");
                        if i % 2 == 0 {
                            kv.set("lim", &key, b"v", 10).await.map(drop)
                        } else {
                            kv.increment("lim", &key, 5, 10).await.map(drop)
                        }
                    })
                })
                .collect();
            let mut added = Vec::new();
            for (i, r) in racers.into_iter().enumerate() {
                match r.await.unwrap() {
                    Ok(()) => added.push(format!("k{i}")),
                    Err(e) => assert_eq!(e, workhost::KvError::TooManyKeys(10)),
                }
            }
            assert_eq!(added.len(), 10, "exactly the limit was added: {added:?}");
            kv.set("lim", &added[0], b"again", 10)
                .await
                .expect("an existing key is written when the namespace is full");
            kv.delete("lim", "never-there").await.unwrap();
            assert_eq!(
                kv.set("lim", "new", b"v", 10).await,
                Err(workhost::KvError::TooManyKeys(10)),
                "deleting a missing key makes no room"
            );
            for key in &added[..3] {
                kv.delete("lim", key).await.unwrap();
            }
            // Three places: one key raced by five writers takes one.
            let same: Vec<_> = (0..5)
                .map(|_| {
                    let kv = kv.clone();
                    tokio::spawn(async move { kv.increment("lim", "shared", 1, 10).await })
                })
                .collect();
            for r in same {
                r.await.unwrap().unwrap();
            }
            assert_eq!(kv.get("lim", "shared").await.unwrap(), Some(b"5".to_vec()));
            kv.set("lim", "second", b"v", 10).await.unwrap();
            kv.set("lim", "third", b"v", 10).await.unwrap();
            assert_eq!(
                kv.set("lim", "fourth", b"v", 10).await,
                Err(workhost::KvError::TooManyKeys(10))
            );
        });
        drop((kv, s));
        let again = open();
        let kv = again.kv();
        runtime().block_on(async {
            assert_eq!(
                kv.set("lim", "after-reopening", b"v", 10).await,
                Err(workhost::KvError::TooManyKeys(10))
            );
            kv.delete("lim", "third").await.unwrap();
            kv.set("lim", "after-reopening", b"v", 10).await.unwrap();
        });
    });
}

#[test]
fn only_work_whose_constraints_hold_is_claimed() {
    each_backend(|open| {
        let s = open();
        let mut ids = Vec::new();
        let needs = [
            Constraints {
                network: NetworkType::Unmetered,
                ..Constraints::default()
            },
            Constraints {
                charging: true,
                ..Constraints::default()
            },
            Constraints {
                battery_not_low: true,
                ..Constraints::default()
            },
            Constraints {
                device_idle: true,
                ..Constraints::default()
            },
            Constraints {
                storage_not_low: true,
                ..Constraints::default()
            },
            Constraints::default(),
        ];
        for c in needs {
            let mut r = WorkRequest::one_off("a", "t");
            r.constraints = c;
            ids.push(s.enqueue(r, NOW).unwrap().0.id);
        }
        assert_eq!(s.get(ids[0]).unwrap().unwrap().constraints, needs[0]);
        let nothing = DeviceOverrides {
            charging: Some(false),
            battery_low: Some(true),
            metered: Some(true),
            storage_low: Some(true),
            idle: Some(false),
            ..DeviceOverrides::default()
        }
        .apply(DeviceState::default());
        let claim = |device: &DeviceState| {
            s.claim(NOW, 10, &slots(10), device)
                .unwrap()
                .iter()
                .map(|c| c.info.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(s.next_due(&handlers(), &nothing).unwrap(), Some(NOW));
        assert_eq!(claim(&nothing), [ids[5]], "only the unconstrained task");
        assert_eq!(
            s.next_due(&handlers(), &nothing).unwrap(),
            None,
            "nothing left that may run"
        );
        for (i, fix) in [
            DeviceOverrides {
                metered: Some(false),
                ..DeviceOverrides::default()
            },
            DeviceOverrides {
                charging: Some(true),
                ..DeviceOverrides::default()
            },
            DeviceOverrides {
                battery_low: Some(false),
                ..DeviceOverrides::default()
            },
            DeviceOverrides {
                idle: Some(true),
                ..DeviceOverrides::default()
            },
            DeviceOverrides {
                storage_low: Some(false),
                ..DeviceOverrides::default()
            },
        ]
        .into_iter()
        .enumerate()
        {
            assert_eq!(claim(&fix.apply(nothing.clone())), [ids[i]], "constraint {i}");
        }
    });
}

#[test]
fn a_clock_jump_moves_every_waiting_task_once_and_finished_ones_never() {
    each_backend(|open| {
        let s = open();
        let mut later = WorkRequest::one_off("a", "later");
        later.initial_delay = Duration::from_secs(10);
        let later = s.enqueue(later, NOW).unwrap().0.id;
        let mut child = WorkRequest::one_off("b", "child");
        child.after = vec![later];
        let child = s.enqueue(child, NOW).unwrap().0.id;
        let done = s.enqueue(WorkRequest::one_off("b", "done"), NOW).unwrap().0.id;
        assert_eq!(run(s.as_ref(), 1, RunResult::Succeeded(Data::new()), NOW), vec![done]);
        let due = |id| s.get(id).unwrap().unwrap().next_run_at;
        let (done_at, child_at) = (due(done), due(child));

        // The first reading of a boot is only recorded; drift under the
        // threshold is left alone.
        assert_eq!(s.follow_clock("boot-1", 500, 1000).unwrap().by, 0);
        assert_eq!(s.follow_clock("boot-1", 1400, 1000).unwrap().by, 0);
        assert_eq!(due(later), NOW + 10_000);

        let jump = s.follow_clock("boot-1", 500 + 3_600_000, 1000).unwrap();
        assert_eq!(jump.by, 3_600_000);
        let mut moved: Vec<_> = jump.moved.iter().map(|c| (c.id, c.state)).collect();
        moved.sort_by_key(|(id, _)| *id);
        assert_eq!(moved, vec![(later, TaskState::Enqueued), (child, TaskState::Blocked)]);
        assert_eq!(due(later), NOW + 10_000 + 3_600_000);
        assert_eq!((due(done), due(child)), (done_at, child_at + 3_600_000));

        // Another process seeing the same jump moves nothing again.
        assert_eq!(open().follow_clock("boot-1", 500 + 3_600_000, 1000).unwrap().by, 0);
        assert_eq!(due(later), NOW + 10_000 + 3_600_000);

        // Backwards; then a new boot, whose readings are not comparable.
        assert_eq!(s.follow_clock("boot-1", 500, 1000).unwrap().by, -3_600_000);
        assert_eq!(due(later), NOW + 10_000);
        assert_eq!(
            s.follow_clock("boot-2", 99_999_999, 1000).unwrap(),
            workhost::ClockJump::default()
        );
        assert_eq!(due(later), NOW + 10_000);
    });
}

/// A read of one task is one snapshot: while claims commit, `get` never
/// shows a task's row from before a claim with its attempt from after it.
#[test]
fn a_task_read_while_it_is_claimed_is_never_torn() {
    each_backend(|open| {
        let s = open();
        let ids: Vec<i64> = (0..1000)
            .map(|_| s.enqueue(WorkRequest::one_off("a", "now"), NOW).unwrap().0.id)
            .collect();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (s, ids, done) = (s.clone(), ids.clone(), done.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !done.load(std::sync::atomic::Ordering::Acquire) {
                    for id in &ids {
                        let t = s.get(*id).unwrap().unwrap();
                        let claimed = t.state == TaskState::Running;
                        assert_eq!(
                            (t.run_attempt_count as usize, t.attempts.len()),
                            if claimed { (1, 1) } else { (0, 0) },
                            "a torn read after {reads} reads: {t:?}"
                        );
                        reads += 1;
                    }
                }
                reads
            })
        };
        for _ in &ids {
            assert_eq!(s.claim(NOW, 1, &slots(1000), &DeviceState::default()).unwrap().len(), 1);
        }
        done.store(true, std::sync::atomic::Ordering::Release);
        let reads = reader.join().unwrap();
        assert!(reads >= ids.len() as u64, "the reader read along: {reads} reads");
    });
}

/// A paused store claims nothing, whichever process paused it; resumed, it
/// claims again.
#[test]
fn a_paused_store_claims_nothing_until_resumed() {
    each_backend(|open| {
        let (s, other) = (open(), open());
        let id = s.enqueue(WorkRequest::one_off("a", "t"), NOW).unwrap().0.id;
        other.set_paused(true).unwrap();
        assert_eq!(s.claim(NOW, 10, &slots(5), &DeviceState::default()).unwrap(), vec![]);
        assert_eq!(state(&s, id), TaskState::Enqueued);
        other.set_paused(false).unwrap();
        let claimed = s.claim(NOW, 10, &slots(5), &DeviceState::default()).unwrap();
        assert_eq!(claimed.iter().map(|c| c.info.id).collect::<Vec<_>>(), [id]);
    });
}

/// Progress and finish carry the run's lease: once the task has been
/// claimed again (after a recovery), the old run's writes change nothing,
/// and each claim's lease is larger than any before it.
#[test]
fn writes_of_a_run_whose_lease_was_superseded_change_nothing() {
    each_backend(|open| {
        let s = open();
        let id = s.enqueue(WorkRequest::one_off("a", "t"), NOW).unwrap().0.id;
        let first = s.claim(NOW, 1, &slots(1), &DeviceState::default()).unwrap().remove(0);
        s.set_progress(id, first.lease, &Data::new().with("p", 1i64)).unwrap();
        // The host is presumed dead: its run is recovered and claimed again.
        s.recover(NOW + 1).unwrap();
        let second = s
            .claim(NOW + 1, 1, &slots(1), &DeviceState::default())
            .unwrap()
            .remove(0);
        assert!(second.lease > first.lease, "{} then {}", first.lease, second.lease);
        assert_eq!(second.info.progress, None, "a new run starts without progress");
        s.set_progress(id, first.lease, &Data::new().with("p", 99i64)).unwrap();
        let done = RunResult::Succeeded(Data::new().with("by", "first"));
        let t = decide(&first.retry_facts(), &done, NOW + 2);
        assert_eq!(s.finish(id, first.lease, t, &outcome(done), NOW + 2).unwrap(), vec![]);
        let info = s.get(id).unwrap().unwrap();
        assert_eq!(
            (info.state, info.progress, info.output),
            (TaskState::Running, None, None)
        );
        assert_eq!(
            info.attempts[0].error.as_deref(),
            Some("the host died during this run"),
            "the old run's record keeps what recovery wrote"
        );
        s.set_progress(id, second.lease, &Data::new().with("p", 2i64)).unwrap();
        assert_eq!(s.get(id).unwrap().unwrap().progress, Some(Data::new().with("p", 2i64)));
        let done = RunResult::Succeeded(Data::new().with("by", "second"));
        let t = decide(&second.retry_facts(), &done, NOW + 3);
        let changes = s.finish(id, second.lease, t, &outcome(done), NOW + 3).unwrap();
        assert_eq!(
            changes,
            [Change {
                id,
                state: TaskState::Succeeded
            }]
        );
        let info = s.get(id).unwrap().unwrap();
        assert_eq!(info.output, Some(Data::new().with("by", "second")));
    });
}

/// A periodic run moves its task to the next period with its attempts
/// reset, and the task keeps only its latest attempt records.
#[test]
fn a_periodic_finish_moves_to_the_next_period_and_keeps_the_latest_attempts() {
    each_backend(|open| {
        let s = open();
        let period = Duration::from_secs(900);
        let id = s.enqueue(WorkRequest::periodic("a", "p", period), NOW).unwrap().0.id;
        let mut now = NOW;
        for run_no in 0..(workhost::PERIODIC_ATTEMPTS_KEPT + 3) {
            let due = s.get(id).unwrap().unwrap().next_run_at;
            now = now.max(due);
            let c = s.claim(now, 1, &slots(1), &DeviceState::default()).unwrap();
            assert_eq!(c.len(), 1, "run {run_no} is due at {due}");
            let result = RunResult::Succeeded(Data::new().with("n", i64::from(run_no)));
            let t = decide(&c[0].retry_facts(), &result, now);
            s.finish(id, c[0].lease, t, &outcome(result), now).unwrap();
            let info = s.get(id).unwrap().unwrap();
            assert_eq!((info.state, info.run_attempt_count), (TaskState::Enqueued, 0));
            assert!(info.next_run_at > now, "the next period is later");
        }
        let info = s.get(id).unwrap().unwrap();
        assert_eq!(info.attempts.len(), workhost::PERIODIC_ATTEMPTS_KEPT as usize);
        assert_eq!(
            info.output,
            Some(Data::new().with("n", i64::from(workhost::PERIODIC_ATTEMPTS_KEPT + 2)))
        );
    });
}

/// Every unique-work policy, at the store: what a second enqueue of a name
/// does while the first task is unfinished, and after it failed.
#[test]
fn every_unique_work_policy_holds_at_the_store() {
    use ExistingWorkPolicy::*;
    each_backend(|open| {
        let s = open();
        let named = |name: &str, policy: ExistingWorkPolicy, task: &str| {
            let mut r = WorkRequest::one_off("a", task);
            r.unique = Some((name.into(), policy));
            r
        };
        // KEEP: the unfinished task stays, nothing new.
        let first = s.enqueue(named("keep", Keep, "one"), NOW).unwrap().0;
        let again = s.enqueue(named("keep", Keep, "two"), NOW).unwrap().0;
        assert!(first.created && !again.created && again.id == first.id);
        // UPDATE: the unfinished task takes the new request's spec.
        let first = s.enqueue(named("update", Update, "one"), NOW).unwrap().0;
        let again = s.enqueue(named("update", Update, "two"), NOW).unwrap().0;
        assert_eq!((again.id, again.created), (first.id, false));
        assert_eq!(s.get(first.id).unwrap().unwrap().task, "two");
        // REPLACE and CANCEL_AND_REENQUEUE: the old one is cancelled.
        for (name, policy) in [("replace", Replace), ("cancel", CancelAndReenqueue)] {
            let first = s.enqueue(named(name, policy, "one"), NOW).unwrap().0;
            let (again, changes) = s.enqueue(named(name, policy, "two"), NOW).unwrap();
            assert!(again.created && again.id != first.id);
            assert!(changes.contains(&Change {
                id: first.id,
                state: TaskState::Cancelled
            }));
            assert_eq!(state(&s, first.id), TaskState::Cancelled);
        }
        // APPEND: the new task runs after the latest one.
        let first = s.enqueue(named("append", Append, "one"), NOW).unwrap().0;
        let again = s.enqueue(named("append", Append, "two"), NOW).unwrap().0;
        let info = s.get(again.id).unwrap().unwrap();
        assert_eq!((info.state, info.after.clone()), (TaskState::Blocked, vec![first.id]));
        // APPEND_OR_REPLACE: after a failed latest one, a fresh start
        // (handler b, so the claim below takes only this task).
        let mut r = named("aor", AppendOrReplace, "one");
        r.handler = "b".into();
        let first = s.enqueue(r, NOW).unwrap().0;
        let only_b: HashMap<String, usize> = [("b".to_string(), 1)].into();
        let c = s.claim(NOW, 1, &only_b, &DeviceState::default()).unwrap().remove(0);
        assert_eq!(c.info.id, first.id);
        let failed = RunResult::Failed(workhost::Failure::Error("no".into()));
        let t = decide(&c.retry_facts(), &failed, NOW);
        s.finish(first.id, c.lease, t, &outcome(failed), NOW).unwrap();
        let again = s.enqueue(named("aor", AppendOrReplace, "two"), NOW).unwrap().0;
        let info = s.get(again.id).unwrap().unwrap();
        assert_eq!((info.state, info.after), (TaskState::Enqueued, vec![]));
    });
}

/// A host registers, is listed with the work it runs, renews (receiving the
/// tasks it holds and their leases), and leaves.
#[test]
fn a_host_is_listed_while_it_serves_with_the_work_it_runs() {
    each_backend(|open| {
        let s = open();
        s.on(s.0.register_host(me(), NOW)).unwrap();
        let id = s.enqueue(WorkRequest::one_off("a", "t"), NOW).unwrap().0.id;
        let c = s.claim(NOW, 1, &slots(1), &DeviceState::default()).unwrap().remove(0);
        let held = s.on(s.0.renew_host(me(), NOW + 1)).unwrap();
        assert_eq!(held, [(id, c.lease)]);
        let hosts = s.on(s.0.hosts(NOW + 1)).unwrap();
        assert_eq!(hosts.len(), 1, "{hosts:?}");
        // Started by the store's clock: the database's, on a shared store.
        assert_eq!(
            (hosts[0].id.as_str(), hosts[0].incarnation.as_str()),
            ("conformance", "1")
        );
        assert!(hosts[0].started_at > 0 && hosts[0].renewed_at >= hosts[0].started_at);
        s.on(s.0.leave_host(me())).unwrap();
        assert_eq!(s.on(s.0.hosts(NOW + 2)).unwrap(), vec![]);
    });
}

// ---------------------------------------------------------------------------
// Schedules (docs/schedules.md): priorities, expedited work, rates, cron.

fn claim_order(s: &Store, now: Millis, n: usize, device: &DeviceState) -> Vec<TaskId> {
    let may_run: HashMap<String, usize> = [("a".to_string(), n)].into();
    s.claim(now, n, &may_run, device)
        .unwrap()
        .iter()
        .map(|c| c.info.id)
        .collect()
}

fn with_priority(task: &str, priority: u8) -> WorkRequest {
    let mut r = WorkRequest::one_off("a", task);
    r.priority = priority;
    r
}

#[test]
fn priorities_order_claims_within_a_handler_and_waiting_ages_low_priority_work_forward() {
    each_backend(|open| {
        let s = open();
        let low = s.enqueue(with_priority("low", 9), NOW).unwrap().0.id;
        let normal = s.enqueue(with_priority("normal", 5), NOW).unwrap().0.id;
        let high = s.enqueue(with_priority("high", 0), NOW).unwrap().0.id;
        let got = s.get(high).unwrap().unwrap();
        assert_eq!((got.priority, got.expedited), (0, false));
        let device = DeviceState::default();
        assert_eq!(claim_order(&s, NOW, 1, &device), [high]);
        assert_eq!(claim_order(&s, NOW, 1, &device), [normal]);
        assert_eq!(claim_order(&s, NOW, 1, &device), [low]);
        // Ageing: a priority-9 task due 46 minutes before a fresh
        // priority-0 one goes first; one due 44 minutes before, after it.
        let min = 60_000;
        let old = s.enqueue(with_priority("old", 9), NOW).unwrap().0.id;
        let fresh = s.enqueue(with_priority("fresh", 0), NOW + 46 * min).unwrap().0.id;
        assert_eq!(claim_order(&s, NOW + 46 * min, 2, &device), [old, fresh]);
        let old = s.enqueue(with_priority("old", 9), NOW + 100 * min).unwrap().0.id;
        let fresh = s.enqueue(with_priority("fresh", 0), NOW + 144 * min).unwrap().0.id;
        assert_eq!(claim_order(&s, NOW + 144 * min, 2, &device), [fresh, old]);
        // Priority never makes work due early.
        let mut later = with_priority("later", 0);
        later.initial_delay = Duration::from_secs(60);
        s.enqueue(later, NOW + 200 * min).unwrap();
        assert_eq!(claim_order(&s, NOW + 200 * min, 5, &device), Vec::<TaskId>::new());
    });
}

#[test]
fn expedited_work_goes_first_is_not_held_by_idle_and_keeps_to_its_quota() {
    each_backend(|open| {
        let s = open();
        let hour = 3_600_000;
        s.set_limits(&[(
            "a",
            HandlerLimits {
                rate: None,
                expedited_quota: Some(workhost::Rate::parse("2/h").unwrap()),
            },
        )]);
        let idle_only = |mut r: WorkRequest| {
            r.constraints.device_idle = true;
            r
        };
        let normal = s.enqueue(with_priority("normal", 0), NOW - hour).unwrap().0.id;
        let waits_for_idle = s
            .enqueue(idle_only(WorkRequest::one_off("a", "idle")), NOW)
            .unwrap()
            .0
            .id;
        let mut fast = idle_only(with_priority("fast", 9));
        fast.expedited = Some(workhost::OutOfQuotaPolicy::RunAsNormal);
        let (e, _) = s.enqueue(fast.clone(), NOW).unwrap();
        assert!(e.warnings.is_empty(), "{:?}", e.warnings);
        assert!(s.get(e.id).unwrap().unwrap().expedited);
        let busy = DeviceState {
            idle: false,
            ..DeviceState::default()
        };
        // Expedited first, whatever its priority or age, and not held by
        // device_idle; the normal idle-only task waits.
        assert_eq!(claim_order(&s, NOW, 1, &busy), [e.id]);
        assert_eq!(claim_order(&s, NOW, 5, &busy), [normal]);
        assert_eq!(state(&s, waits_for_idle), TaskState::Enqueued);
        // The quota: two per hour. The second is expedited, the third runs
        // as normal work (with a warning) or is dropped (recorded).
        let (second, _) = s.enqueue(fast.clone(), NOW + 1).unwrap();
        assert!(s.get(second.id).unwrap().unwrap().expedited);
        let (third, _) = s.enqueue(fast.clone(), NOW + 2).unwrap();
        let t = s.get(third.id).unwrap().unwrap();
        assert!(!t.expedited && t.state == TaskState::Enqueued);
        assert!(
            third.warnings[0].contains("quota") && third.warnings[0].contains("run-as-normal"),
            "{:?}",
            third.warnings
        );
        let mut drop = fast.clone();
        drop.expedited = Some(workhost::OutOfQuotaPolicy::Drop);
        let (dropped, changes) = s.enqueue(drop.clone(), NOW + 3).unwrap();
        let t = s.get(dropped.id).unwrap().unwrap();
        assert_eq!(t.state, TaskState::Cancelled);
        assert!(t.error.as_deref().unwrap().contains("expedited quota"), "{:?}", t.error);
        assert_eq!(
            changes,
            vec![Change {
                id: dropped.id,
                state: TaskState::Cancelled
            }]
        );
        assert!(dropped.warnings[0].contains("dropped"));
        // A window later the quota has room again.
        let (again, _) = s.enqueue(drop, NOW + hour + 10).unwrap();
        assert_eq!(s.get(again.id).unwrap().unwrap().state, TaskState::Enqueued);
        assert!(s.get(again.id).unwrap().unwrap().expedited);
    });
}

#[test]
fn a_rate_lets_no_more_runs_start_per_window_over_every_handle_on_the_store() {
    each_backend(|open| {
        let (one, two) = (open(), open());
        let rate = HandlerLimits {
            rate: Some(workhost::Rate::parse("2/min").unwrap()),
            expedited_quota: None,
        };
        one.set_limits(&[("a", rate)]);
        two.set_limits(&[("a", rate)]);
        let ids: Vec<TaskId> = (0..5)
            .map(|i| {
                one.enqueue(WorkRequest::one_off("a", format!("t{i}")), NOW)
                    .unwrap()
                    .0
                    .id
            })
            .collect();
        let device = DeviceState::default();
        assert_eq!(claim_order(&one, NOW, 10, &device), ids[..2]);
        assert_eq!(
            claim_order(&two, NOW + 1000, 10, &device),
            Vec::<TaskId>::new(),
            "the other host counts the same window"
        );
        // Work over the rate waits: not failed, no attempt spent, due when
        // the window has room.
        let t = one.get(ids[2]).unwrap().unwrap();
        assert_eq!((t.state, t.run_attempt_count), (TaskState::Enqueued, 0));
        assert_eq!(one.next_due(&handlers(), &device).unwrap(), Some(NOW + 60_000));
        assert_eq!(claim_order(&two, NOW + 59_999, 10, &device), Vec::<TaskId>::new());
        assert_eq!(claim_order(&two, NOW + 60_000, 10, &device), ids[2..4]);
        assert_eq!(claim_order(&one, NOW + 120_000, 10, &device), ids[4..]);
        // A handler without a rate is not held.
        let b = one.enqueue(WorkRequest::one_off("b", "free"), NOW).unwrap().0.id;
        let may_run: HashMap<String, usize> = [("b".to_string(), 5)].into();
        assert_eq!(one.claim(NOW, 5, &may_run, &device).unwrap()[0].info.id, b);
    });
}

#[test]
fn cron_work_fires_at_its_times_keeps_them_across_a_clock_jump_and_moves_on_after_a_run() {
    each_backend(|open| {
        let s = open();
        let hour = 3_600_000;
        let schedule = workhost::CronSchedule::new("0 * * * *", Some("UTC"), workhost::CatchUp::Last).unwrap();
        let id = s
            .enqueue(WorkRequest::cron("a", "hourly", schedule.clone()), NOW)
            .unwrap()
            .0
            .id;
        let t = s.get(id).unwrap().unwrap();
        assert_eq!(t.next_run_at, hour, "the first fire after the enqueue");
        assert_eq!(t.cron, Some(schedule.clone()));
        assert_eq!(t.kind, workhost::TaskKind::Periodic);
        let mut delayed = WorkRequest::one_off("a", "delayed");
        delayed.initial_delay = Duration::from_secs(600);
        let delayed = s.enqueue(delayed, NOW).unwrap().0.id;
        // A jump of the wall clock moves the delayed task, not the fires.
        s.follow_clock("boot", 0, 1000).unwrap();
        let jump = s.follow_clock("boot", 2 * hour, 1000).unwrap();
        assert_eq!(jump.by, 2 * hour);
        assert!(jump.moved.iter().all(|c| c.id != id), "{jump:?}");
        assert_eq!(s.get(id).unwrap().unwrap().next_run_at, hour);
        assert_eq!(s.get(delayed).unwrap().unwrap().next_run_at, NOW + 600_000 + 2 * hour);
        // A run on time moves on to the next fire.
        let may_run: HashMap<String, usize> = [("a".to_string(), 1)].into();
        let c = s.claim(hour + 5, 1, &may_run, &DeviceState::default()).unwrap();
        assert_eq!((c[0].info.id, c[0].period_start), (id, hour));
        let result = RunResult::Succeeded(Data::new());
        let t = decide(&c[0].retry_facts(), &result, hour + 10);
        s.finish(id, c[0].lease, t, &outcome(result), hour + 10).unwrap();
        let t = s.get(id).unwrap().unwrap();
        assert_eq!(
            (t.state, t.next_run_at, t.run_attempt_count),
            (TaskState::Enqueued, 2 * hour, 0)
        );
        // The UPDATE policy with a changed schedule takes effect at once.
        let mut r = WorkRequest::cron(
            "a",
            "hourly",
            workhost::CronSchedule::new("30 * * * *", None, workhost::CatchUp::None).unwrap(),
        );
        r.unique = Some(("u".into(), ExistingWorkPolicy::Update));
        let u = s.enqueue(r.clone(), hour + 20).unwrap().0.id;
        assert_eq!(s.get(u).unwrap().unwrap().next_run_at, hour + hour / 2);
        r.cron = Some(workhost::CronSchedule::new("45 * * * *", None, workhost::CatchUp::None).unwrap());
        assert_eq!(s.enqueue(r, hour + 30).unwrap().0.id, u);
        let t = s.get(u).unwrap().unwrap();
        assert_eq!(t.next_run_at, hour + hour * 3 / 4);
        assert_eq!(t.cron.unwrap().expr, "45 * * * *");
        // make_due (the test driver's "period delay met") makes the fire now.
        s.make_due(id, 3 * hour).unwrap();
        let c = s.claim(3 * hour, 5, &slots(5), &DeviceState::default()).unwrap();
        let c = c.iter().find(|c| c.info.id == id).unwrap();
        assert_eq!(c.period_start, 3 * hour);
    });
}

#[test]
fn every_attempt_records_the_component_it_ran() {
    each_backend(|open| {
        let s = open();
        let id = s.enqueue(WorkRequest::one_off("a", "t"), NOW).unwrap().0.id;
        assert_eq!(run(&s, 1, RunResult::Succeeded(Data::new()), NOW), [id]);
        let a = &s.get(id).unwrap().unwrap().attempts[0];
        assert_eq!(a.component.as_deref(), Some("ab".repeat(32).as_str()));
        assert_eq!(a.contract.as_deref(), Some("workhost:task/handler@0.1.1"));
    });
}

/// The ids `q` reads.
fn ids_of(s: &Store, q: Query) -> Vec<TaskId> {
    s.query(&q).unwrap().into_iter().map(|t| t.id).collect()
}

/// The query of these ids.
fn these(ids: &[TaskId]) -> Query {
    Query {
        ids: Some(ids.to_vec()),
        ..Query::default()
    }
}

fn changes(list: &[(TaskId, TaskState)]) -> Vec<Change> {
    list.iter().map(|&(id, state)| Change { id, state }).collect()
}

#[test]
fn queries_filter_by_handler_and_a_search_that_takes_like_metacharacters_literally() {
    each_backend(|open| {
        let s = open();
        let with = |handler: &str, task: &str, note: &str, tag: &str| {
            let mut r = WorkRequest::one_off(handler, task);
            r.input = Data::new().with("note", note);
            r.tags = vec![tag.into()];
            s.enqueue(r, NOW).unwrap().0.id
        };
        let sale = with("a", "Alpha", "50% off", "shop");
        let five = with("b", "beta_x", "5x off", "shop");
        let plain = with("a", "gamma", "betaxx", "Quiet_Tag");
        let mut unique = WorkRequest::one_off("b", "delta");
        unique.unique = Some(("Nightly-Report".into(), ExistingWorkPolicy::Keep));
        let nightly = s.enqueue(unique, NOW).unwrap().0.id;
        let search = |text: &str| {
            ids_of(
                &s,
                Query {
                    search: Some(text.into()),
                    ..Query::default()
                },
            )
        };
        assert_eq!(search("50%"), [sale], "% is itself, not any text");
        assert_eq!(search("5_"), Vec::<TaskId>::new(), "_ is itself, not any character");
        assert_eq!(search("beta_x"), [five], "not betaxx");
        assert_eq!(search("ALPHA"), [sale], "any case, in the task name");
        assert_eq!(search("quiet_tag"), [plain], "in a tag");
        assert_eq!(search("nightly-report"), [nightly], "in the unique name");
        assert_eq!(search("off"), [sale, five], "in the input");
        assert_eq!(search("\\"), Vec::<TaskId>::new());
        assert_eq!(search(&nightly.to_string()), [nightly], "the id as text");
        run(
            &s,
            1,
            RunResult::Failed(workhost::Failure::Error("disk on FIRE".into())),
            NOW,
        );
        assert_eq!(
            search("on fire"),
            [sale, five],
            "in the last error (each handler's first task ran)"
        );
        let by = |handler: &str, text: Option<&str>| {
            ids_of(
                &s,
                Query {
                    handler: Some(handler.into()),
                    search: text.map(str::to_string),
                    ..Query::default()
                },
            )
        };
        assert_eq!(by("a", None), [sale, plain]);
        assert_eq!(by("b", Some("5x")), [five]);
        assert_eq!(
            ids_of(
                &s,
                Query {
                    handler: Some("b".into()),
                    newest_first: true,
                    ..Query::default()
                }
            ),
            [nightly, five]
        );
        // Bulk cancel by the same filter, paging fields ignored.
        let cancelled = s
            .cancel_matching(
                Query {
                    handler: Some("b".into()),
                    search: Some("delt".into()),
                    limit: Some(0),
                    before_id: Some(0),
                    ..Query::default()
                },
                NOW,
            )
            .unwrap();
        assert_eq!(cancelled, changes(&[(nightly, TaskState::Cancelled)]));
        assert_eq!(state(&s, plain), TaskState::Enqueued);
    });
}

#[test]
fn newest_first_pages_follow_their_cursor_across_a_concurrent_insert() {
    each_backend(|open| {
        let (s, other) = (open(), open());
        let ids: Vec<TaskId> = (0..5)
            .map(|i| s.enqueue(WorkRequest::one_off("a", format!("t{i}")), NOW).unwrap().0.id)
            .collect();
        let page = |before: Option<TaskId>| {
            ids_of(
                &s,
                Query {
                    newest_first: true,
                    before_id: before,
                    limit: Some(2),
                    ..Query::default()
                },
            )
        };
        let first = page(None);
        assert_eq!(first, [ids[4], ids[3]]);
        // Another process enqueues while the pages are read.
        let newer = other.enqueue(WorkRequest::one_off("b", "new"), NOW).unwrap().0.id;
        let second = page(first.last().copied());
        assert_eq!(
            second,
            [ids[2], ids[1]],
            "the cursor, not an offset: nothing seen twice"
        );
        let third = page(second.last().copied());
        assert_eq!(third, [ids[0]]);
        assert_eq!(page(third.last().copied()), Vec::<TaskId>::new());
        assert_eq!(page(None), [newer, ids[4]], "a new first page shows it");
        let by_state = ids_of(
            &s,
            Query {
                state: Some(TaskState::Enqueued),
                newest_first: true,
                after_id: Some(ids[1]),
                limit: Some(10),
                ..Query::default()
            },
        );
        assert_eq!(by_state, [newer, ids[4], ids[3], ids[2]]);
    });
}

#[test]
fn retry_re_enqueues_failed_work_with_the_chain_it_ended_and_keeps_its_attempts() {
    each_backend(|open| {
        let s = open();
        let done = s.enqueue(WorkRequest::one_off("b", "done"), NOW).unwrap().0.id;
        run(&s, 1, RunResult::Succeeded(Data::new()), NOW);
        let parent = s.enqueue(WorkRequest::one_off("a", "p"), NOW).unwrap().0.id;
        let mut child = WorkRequest::one_off("b", "c");
        child.after = vec![parent];
        let child = s.enqueue(child, NOW).unwrap().0.id;
        let mut grandchild = WorkRequest::one_off("b", "g");
        grandchild.after = vec![child];
        let grandchild = s.enqueue(grandchild, NOW).unwrap().0.id;
        run(&s, 1, RunResult::Failed(workhost::Failure::Error("boom".into())), NOW);
        assert_eq!(
            [state(&s, parent), state(&s, child), state(&s, grandchild)],
            [TaskState::Failed; 3]
        );
        // The child alone cannot run: the work it runs after stays FAILED.
        assert_eq!(s.retry(these(&[child]), NOW + 1).unwrap(), []);
        assert_eq!(
            s.retry(these(&[done]), NOW + 1).unwrap(),
            [],
            "SUCCEEDED work is not retried"
        );
        let retried = s.retry(these(&[parent]), NOW + 5).unwrap();
        assert_eq!(
            retried,
            changes(&[
                (parent, TaskState::Enqueued),
                (child, TaskState::Blocked),
                (grandchild, TaskState::Blocked)
            ])
        );
        let p = s.get(parent).unwrap().unwrap();
        assert_eq!(
            (
                p.run_attempt_count,
                p.next_run_at,
                p.finished_at,
                p.error.as_deref(),
                p.stop_reason.as_deref()
            ),
            (0, NOW + 5, None, None, None)
        );
        assert_eq!(p.attempts.len(), 1, "its history is kept");
        let c = s.get(child).unwrap().unwrap();
        assert_eq!((c.error, c.finished_at), (None, None));
        run(&s, 1, RunResult::Succeeded(Data::new().with("x", 1i64)), NOW + 5);
        let p = s.get(parent).unwrap().unwrap();
        assert_eq!(p.state, TaskState::Succeeded);
        assert_eq!(
            p.attempts.iter().map(|a| a.outcome.as_deref()).collect::<Vec<_>>(),
            [Some("failed"), Some("success")],
            "both runs are kept, in order"
        );
        assert_eq!(state(&s, child), TaskState::Enqueued, "released by its parent");

        // A cancelled task brings back what its cancel ended; a bulk retry
        // by filter retries a chain's members together.
        let root = s.enqueue(WorkRequest::one_off("a", "root"), NOW).unwrap().0.id;
        let mut leaf = WorkRequest::one_off("a", "leaf");
        leaf.after = vec![root];
        leaf.tags = vec!["batch".into()];
        let leaf = s.enqueue(leaf, NOW).unwrap().0.id;
        s.cancel(&Selector::Id(root), NOW).unwrap();
        assert_eq!(state(&s, leaf), TaskState::Cancelled);
        let retried = s
            .retry(
                Query {
                    handler: Some("a".into()),
                    state: Some(TaskState::Cancelled),
                    limit: Some(1),
                    ..Query::default()
                },
                NOW + 9,
            )
            .unwrap();
        assert_eq!(
            retried,
            changes(&[(root, TaskState::Enqueued), (leaf, TaskState::Blocked)])
        );
    });
}

#[test]
fn retried_periodic_work_resumes_its_schedule_from_now() {
    each_backend(|open| {
        let s = open();
        let hour = 3_600_000;
        let mut every = WorkRequest::periodic("a", "every", Duration::from_secs(3600));
        every.periodic.as_mut().unwrap().flex = Duration::from_secs(900);
        let every = s.enqueue(every, NOW).unwrap().0.id;
        let schedule = workhost::CronSchedule::new("0 * * * *", Some("UTC"), workhost::CatchUp::Last).unwrap();
        let fires = s.enqueue(WorkRequest::cron("a", "hourly", schedule), NOW).unwrap().0.id;
        s.cancel(&Selector::All, NOW).unwrap();
        let later = 10 * hour + 60_000;
        let retried = s.retry(Query::default(), later).unwrap();
        assert_eq!(
            retried,
            changes(&[(every, TaskState::Enqueued), (fires, TaskState::Enqueued)])
        );
        assert_eq!(s.get(every).unwrap().unwrap().next_run_at, later + 45 * 60_000);
        assert_eq!(
            s.get(fires).unwrap().unwrap().next_run_at,
            11 * hour,
            "the next fire after now"
        );
    });
}

#[test]
fn run_now_makes_delayed_periodic_and_cron_work_due_and_leaves_other_states_alone() {
    each_backend(|open| {
        let s = open();
        let hour = 3_600_000;
        let mut delayed = WorkRequest::one_off("a", "delayed");
        delayed.initial_delay = Duration::from_secs(3600);
        let delayed = s.enqueue(delayed, NOW).unwrap().0.id;
        let mut every = WorkRequest::periodic("b", "every", Duration::from_secs(3600));
        every.periodic.as_mut().unwrap().flex = Duration::from_secs(900);
        let every = s.enqueue(every, NOW).unwrap().0.id;
        let schedule = workhost::CronSchedule::new("0 * * * *", Some("UTC"), workhost::CatchUp::Last).unwrap();
        let fires = s.enqueue(WorkRequest::cron("b", "hourly", schedule), NOW).unwrap().0.id;
        let due = s.enqueue(WorkRequest::one_off("a", "due"), NOW).unwrap().0.id;
        let mut blocked = WorkRequest::one_off("a", "blocked");
        blocked.after = vec![delayed];
        let blocked = s.enqueue(blocked, NOW).unwrap().0.id;
        assert_eq!(s.get(fires).unwrap().unwrap().next_run_at, hour);
        let changed = s.run_now(Query::default(), NOW).unwrap();
        assert_eq!(
            changed,
            changes(&[
                (delayed, TaskState::Enqueued),
                (every, TaskState::Enqueued),
                (fires, TaskState::Enqueued)
            ]),
            "not the due one, not the blocked one"
        );
        assert_eq!(state(&s, blocked), TaskState::Blocked);
        let mut claimed = run(&s, 5, RunResult::Succeeded(Data::new()), NOW);
        claimed.sort();
        assert_eq!(claimed, [delayed, every, fires, due]);
        let e = s.get(every).unwrap().unwrap();
        assert_eq!(
            e.next_run_at,
            NOW + hour + 45 * 60_000,
            "this period ran now; the next follows"
        );
        assert_eq!(
            s.get(fires).unwrap().unwrap().next_run_at,
            2 * hour,
            "the pending fire ran now: the next is the one after it"
        );
    });
}

#[test]
fn delete_removes_finished_work_only_and_keeps_a_parent_a_waiting_child_needs() {
    each_backend(|open| {
        let s = open();
        let parent = s.enqueue(WorkRequest::one_off("a", "p"), NOW).unwrap().0.id;
        run(&s, 1, RunResult::Succeeded(Data::new()), NOW);
        let mut later = WorkRequest::one_off("a", "later");
        later.initial_delay = Duration::from_secs(3600);
        let later = s.enqueue(later, NOW).unwrap().0.id;
        let mut child = WorkRequest::one_off("b", "c");
        child.after = vec![parent, later];
        let child = s.enqueue(child, NOW).unwrap().0.id;
        let mut failed = WorkRequest::one_off("b", "f");
        failed.tags = vec!["old".into()];
        let failed = s.enqueue(failed, NOW).unwrap().0.id;
        run(&s, 1, RunResult::Failed(workhost::Failure::Error("no".into())), NOW);
        assert_eq!(state(&s, failed), TaskState::Failed);
        let cancelled = s.enqueue(WorkRequest::one_off("b", "x"), NOW).unwrap().0.id;
        s.cancel(&Selector::Id(cancelled), NOW).unwrap();
        assert_eq!(
            s.delete(Query {
                state: Some(TaskState::Cancelled),
                ..Query::default()
            })
            .unwrap(),
            [cancelled]
        );
        assert_eq!(
            s.delete(these(&[later, child])).unwrap(),
            [0; 0],
            "unfinished work is never deleted"
        );
        assert_eq!(
            s.delete(Query::default()).unwrap(),
            [failed],
            "the parent is kept for its child"
        );
        assert!(s.get(failed).unwrap().is_none());
        assert_eq!(
            ids_of(
                &s,
                Query {
                    tag: Some("old".into()),
                    ..Query::default()
                }
            ),
            [0; 0]
        );
        assert_eq!(s.get(child).unwrap().unwrap().after, [parent, later]);
        s.cancel(&Selector::Id(later), NOW).unwrap();
        let mut gone = s.delete(Query::default()).unwrap();
        gone.sort();
        assert_eq!(gone, [parent, later, child]);
        assert_eq!(s.count_by_state().unwrap(), HashMap::new());
    });
}

#[test]
fn a_paused_handler_is_neither_claimed_nor_due_and_its_pause_is_shared_and_survives_reopening() {
    each_backend(|open| {
        let (s, other) = (open(), open());
        let a = s.enqueue(WorkRequest::one_off("a", "a"), NOW).unwrap().0.id;
        let b = s.enqueue(WorkRequest::one_off("b", "b"), NOW).unwrap().0.id;
        let c = s.enqueue(WorkRequest::one_off("c", "c"), NOW).unwrap().0.id;
        s.set_handler_paused("a", true).unwrap();
        s.set_handler_paused("c", true).unwrap();
        s.set_handler_paused("a", true).unwrap();
        assert_eq!(other.paused_handlers().unwrap(), ["a", "c"]);
        assert_eq!(s.next_due(&["a".into()], &DeviceState::default()).unwrap(), None);
        assert_eq!(
            s.waiting_for_handler(&handlers(), NOW).unwrap(),
            [],
            "c is paused, not missing"
        );
        assert_eq!(run(&s, 1, RunResult::Succeeded(Data::new()), NOW), [b]);
        drop(s);
        let reopened = open();
        assert_eq!(reopened.paused_handlers().unwrap(), ["a", "c"]);
        assert_eq!(run(&reopened, 1, RunResult::Succeeded(Data::new()), NOW), [0; 0]);
        other.set_handler_paused("a", false).unwrap();
        assert_eq!(reopened.paused_handlers().unwrap(), ["c"]);
        assert_eq!(
            reopened.next_due(&handlers(), &DeviceState::default()).unwrap(),
            Some(NOW)
        );
        assert_eq!(run(&reopened, 1, RunResult::Succeeded(Data::new()), NOW), [a]);
        assert_eq!(state(&reopened, c), TaskState::Enqueued);
    });
}

#[test]
fn counts_by_handler_and_the_pins_of_unfinished_work_are_read_without_the_tasks() {
    each_backend(|open| {
        let s = open();
        let pinned = |handler: &str, pin: char| {
            let mut r = WorkRequest::one_off(handler, "t");
            r.pin = Some(pin.to_string().repeat(64));
            s.enqueue(r, NOW).unwrap().0.id
        };
        pinned("a", 'a');
        pinned("a", 'a');
        pinned("b", 'b');
        let finished = pinned("b", 'c');
        s.cancel(&Selector::Id(finished), NOW).unwrap();
        s.enqueue(WorkRequest::one_off("b", "unpinned"), NOW).unwrap();
        assert_eq!(s.pins_in_use().unwrap(), ["a".repeat(64), "b".repeat(64)]);
        let counts = s.count_by_handler().unwrap();
        assert_eq!(counts["a"], HashMap::from([(TaskState::Enqueued, 2)]));
        assert_eq!(
            counts["b"],
            HashMap::from([(TaskState::Enqueued, 2), (TaskState::Cancelled, 1)])
        );
    });
}

/// Many enqueues and finishes at once, as a busy host makes them (a
/// backend may write them many to a commit): each caller gets its own
/// result, a bad request fails alone and loses nothing of the others, one
/// unique name still has one winner, and a stale finish among them is
/// refused while its task's real one applies.
#[test]
fn concurrent_enqueues_and_finishes_each_get_their_own_result() {
    each_backend(|open| {
        let s = open();
        let parent = s.enqueue(WorkRequest::one_off("b", "parent"), NOW).unwrap().0.id;
        let request = |i: usize| {
            let mut r = WorkRequest::one_off("a", format!("task {i}"));
            r.tags = vec![format!("tag {}", i % 3), "all".into()];
            match i % 10 {
                // One unique name, KEEP: one winner among all.
                3 => r.unique = Some(("only".into(), ExistingWorkPolicy::Keep)),
                // Runs after work that does not exist: refused.
                5 => r.after = vec![parent + 1_000_000],
                // Runs after a task that exists: blocked.
                7 => r.after = vec![parent],
                _ => {}
            }
            r
        };
        // First only good requests, then (a second round) good and bad.
        let mut ids = Vec::new();
        let mut kept = Vec::new();
        for round in [
            (0..150usize).filter(|i| i % 10 != 5).collect::<Vec<_>>(),
            (150..200).collect(),
        ] {
            let mut set = tokio::task::JoinSet::new();
            for i in round {
                let (store, r) = (s.0.clone(), request(i));
                set.spawn_on(
                    async move { (i, store.enqueue(r, NOW, EnqueueHooks::default()).await) },
                    runtime().handle(),
                );
            }
            for (i, result) in s.on(set.join_all()) {
                match i % 10 {
                    5 => assert!(
                        matches!(result, Err(WorkError::UnknownTask(p)) if p == parent + 1_000_000),
                        "request {i}: {result:?}"
                    ),
                    3 => kept.push(result.unwrap().0),
                    _ => {
                        let (enqueued, changes) = result.unwrap();
                        let info = s.get(enqueued.id).unwrap().unwrap();
                        assert_eq!(info.task, format!("task {i}"), "request {i} got another's task");
                        let mut tags = info.tags.clone();
                        tags.sort();
                        assert_eq!(tags, vec!["all".to_string(), format!("tag {}", i % 3)]);
                        let expected = if i % 10 == 7 {
                            TaskState::Blocked
                        } else {
                            TaskState::Enqueued
                        };
                        assert_eq!(
                            (info.state, changes),
                            (
                                expected,
                                vec![Change {
                                    id: enqueued.id,
                                    state: expected
                                }]
                            )
                        );
                        ids.push(enqueued.id);
                    }
                }
            }
        }
        assert_eq!(kept.iter().filter(|e| e.created).count(), 1, "{kept:?}");
        assert!(kept.iter().all(|e| e.id == kept[0].id));
        ids.push(kept[0].id);
        ids.sort();
        ids.dedup();
        assert_eq!(
            ids.len(),
            200 - 20 - 20 + 1,
            "every accepted request has a task of its own"
        );
        let tagged = Query {
            tag: Some("all".into()),
            ..Query::default()
        };
        assert_eq!(s.query(&tagged).unwrap().len(), ids.len());

        // Every enqueued task of `a` claimed, then finished at once: even
        // ones succeed, odd ones ask to retry; the first also gets a
        // finish under a stale lease, which changes nothing.
        let only_a: HashMap<String, usize> = [("a".to_string(), 1000)].into();
        let claimed = s.claim(NOW, 1000, &only_a, &DeviceState::default()).unwrap();
        assert_eq!(claimed.len(), ids.len() - 20, "all but the blocked ones");
        let mut set = tokio::task::JoinSet::new();
        for (n, c) in claimed.iter().enumerate() {
            let result = if n % 2 == 0 {
                RunResult::Succeeded(Data::new())
            } else {
                RunResult::Retry
            };
            let mut runs = vec![(c.lease, result.clone())];
            if n == 0 {
                runs.push((
                    c.lease + 1_000_000,
                    RunResult::Failed(workhost::Failure::Error("stale".into())),
                ));
            }
            for (lease, result) in runs {
                let store = s.0.clone();
                let (id, t) = (c.info.id, decide(&c.retry_facts(), &result, NOW));
                set.spawn_on(
                    async move { (id, lease, store.finish(id, lease, t, &outcome(result), NOW).await) },
                    runtime().handle(),
                );
            }
        }
        let finished = s.on(set.join_all());
        for (id, lease, changes) in finished {
            let changes = changes.unwrap();
            let n = claimed.iter().position(|c| c.info.id == id).unwrap();
            let info = s.get(id).unwrap().unwrap();
            if lease != claimed[n].lease {
                assert!(changes.is_empty(), "a stale finish changed {changes:?}");
            } else if n % 2 == 0 {
                assert_eq!(info.state, TaskState::Succeeded);
                assert_eq!(
                    changes,
                    vec![Change {
                        id,
                        state: TaskState::Succeeded
                    }]
                );
            } else {
                assert_eq!(info.state, TaskState::Enqueued);
                assert_eq!(
                    changes,
                    vec![Change {
                        id,
                        state: TaskState::Enqueued
                    }]
                );
            }
            let attempt = &info.attempts[0];
            assert!(attempt.ended_at.is_some(), "task {id}'s attempt is recorded");
        }
        assert_eq!(state(&s, claimed[0].info.id), TaskState::Succeeded);
    });
}
