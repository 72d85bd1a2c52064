//! PostgreSQL: the server the tests run on (`workhost_tests::pg`: a private
//! throwaway server, or `WORKHOST_TEST_DATABASE_URL`'s), and the PostgreSQL
//! store's schema and SQL (`host/src/store/postgres/sql.rs`) run against it:
//! migration and identity, fair claims that skip locked rows, fencing by
//! lease, host leases and rescue, unique names raced from several
//! connections, chains, and notifications.

use std::time::Duration;

use tokio_postgres::{Client, Row};
use workhost::{BackoffPolicy, Periodic, RetryFacts, RunResult, StopReason, TaskKind, TaskState, decide};
use workhost_tests::pg;

use crate::pg_sql as sql;

/// Two test databases are two databases: what one creates the other does
/// not see, and each connection lands in its own.
#[tokio::test]
async fn each_test_gets_a_database_of_its_own() {
    let (a, b) = (pg::database(), pg::database());
    assert_ne!(a.name(), b.name());
    let (ca, cb) = (a.connect().await, b.connect().await);
    for (client, db) in [(&ca, &a), (&cb, &b)] {
        let name: String = client.query_one("SELECT current_database()", &[]).await.unwrap().get(0);
        assert_eq!(name, db.name());
    }
    ca.batch_execute("CREATE TABLE only_in_a (x int); INSERT INTO only_in_a VALUES (1)")
        .await
        .unwrap();
    let seen: i64 = ca
        .query_one("SELECT count(*) FROM only_in_a", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen, 1);
    let in_b: bool = cb
        .query_one("SELECT to_regclass('only_in_a') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!in_b, "a table created in one test database is visible in another");
}

/// The private server listens on its unix socket only, as the role the
/// tests use, and spends no time on disk flushes.
#[tokio::test]
async fn the_private_server_listens_on_a_unix_socket_only() {
    if !pg::is_private() {
        // WORKHOST_TEST_DATABASE_URL: the server is someone else's.
        return;
    }
    let db = pg::database();
    assert!(db.url().contains("host=/"), "{}", db.url());
    let client = db.connect().await;
    for (setting, expected) in [("listen_addresses", ""), ("fsync", "off")] {
        let value: String = client
            .query_one("SELECT current_setting($1)", &[&setting])
            .await
            .unwrap()
            .get(0);
        assert_eq!(value, expected, "{setting}");
    }
}

/// Migrating an empty database creates the store; opening it again finds
/// it current and changes nothing; every statement of sql.rs then prepares
/// against it (it parses, its tables and columns exist, its parameters
/// have types).
#[tokio::test]
async fn an_empty_database_becomes_a_store_and_every_statement_prepares_against_it() {
    let db = pg::database();
    let client = db.connect().await;
    assert_eq!(open(&client).await, Ok(Opened::Created));
    assert_eq!(open(&client).await, Ok(Opened::Current));
    let version: String = client
        .query_one("SELECT value FROM workhost.meta WHERE key = 'schema_version'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, sql::SCHEMA_VERSION.to_string());
    for (name, statement) in sql::ALL {
        if let Err(e) = client.prepare(statement).await {
            panic!("{name} does not prepare: {}\n{statement}", db_error(&e));
        }
    }
}

/// A database of another program, a `workhost` schema that is not a
/// workhost store, and a store of a newer schema version are each refused,
/// naming what was found, and left as they were.
#[tokio::test]
async fn another_programs_database_and_a_newer_schema_are_refused_by_name() {
    let other = pg::database();
    let client = other.connect().await;
    client.batch_execute("CREATE TABLE users (id int)").await.unwrap();
    let refused = open(&client).await.unwrap_err();
    assert!(refused.contains("public.users"), "{refused}");
    assert!(!schema_exists(&client).await, "a refused database was changed");

    let squatter = pg::database();
    let client = squatter.connect().await;
    client
        .batch_execute("CREATE SCHEMA workhost; CREATE TABLE workhost.jobs (id int)")
        .await
        .unwrap();
    let refused = open(&client).await.unwrap_err();
    assert!(refused.contains("no workhost.meta"), "{refused}");

    let newer = pg::database();
    let client = newer.connect().await;
    open(&client).await.unwrap();
    let next = (sql::SCHEMA_VERSION + 1).to_string();
    client.execute(sql::SET_SCHEMA_VERSION, &[&next]).await.unwrap();
    let refused = open(&client).await.unwrap_err();
    assert!(refused.contains(&format!("schema version {next}")), "{refused}");

    // An extension's own tables do not make a database another program's.
    let with_extension = pg::database();
    let client = with_extension.connect().await;
    if client
        .batch_execute("CREATE EXTENSION pg_stat_statements")
        .await
        .is_ok()
    {
        // pg_stat_statements brings views, not tables owned by a program.
        assert_eq!(open(&client).await, Ok(Opened::Created));
    }
}

/// A claim is fair across handlers: each handler with a free slot gets its
/// oldest due task before any gets a second, at most its free slots, up
/// to the limit; a handler without slots, work not yet due and work whose
/// constraints do not hold stay. The claim counts the attempt, issues a
/// lease of its own to each run and opens its attempt row, in one statement.
/// While the store is paused nothing is claimed.
#[tokio::test]
async fn a_claim_is_fair_per_handler_and_counts_the_attempt_with_a_lease() {
    let (_db, client) = store().await;
    register(&client, "h1", "i1", 15_000, false).await.unwrap();
    let mut a = Vec::new();
    for due in 1..=5 {
        a.push(enqueue(&client, &Spec::new("a", due)).await);
    }
    let b1 = enqueue(&client, &Spec::new("b", 10)).await;
    let b2 = enqueue(&client, &Spec::new("b", 11)).await;
    let _c = enqueue(&client, &Spec::new("c", 1)).await;
    let _later = enqueue(&client, &Spec::new("b", NOW + 1)).await;
    let _charging = enqueue(&client, &Spec::new("b", 0).needs_charging()).await;

    let free = [("a", 3), ("b", 5), ("c", 0)];
    let claimed = claim(&client, "h1", "i1", &free, 4, &on_battery()).await;
    assert_eq!(
        ids(&claimed),
        vec![a[0], b1, a[1], b2],
        "round by round, oldest due first"
    );
    let rounds: Vec<i64> = claimed.iter().map(|r| r.get("round")).collect();
    assert_eq!(rounds, vec![1, 1, 2, 2]);
    let mut leases: Vec<i64> = claimed.iter().map(|r| r.get("lease")).collect();
    leases.sort();
    leases.dedup();
    assert_eq!(leases.len(), claimed.len(), "a lease per run");
    for row in &claimed {
        assert_eq!(row.get::<_, String>("state"), "running");
        assert_eq!(row.get::<_, i64>("attempts"), 1);
    }
    let opened: Vec<(i64, i64, i64, String)> = client
        .query(
            "SELECT task_id, lease, run_attempt, host FROM workhost.attempts ORDER BY lease",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let mut expected: Vec<(i64, i64, i64, String)> = claimed
        .iter()
        .map(|r| (r.get("id"), r.get("lease"), 1, "h1".to_string()))
        .collect();
    expected.sort_by_key(|e| e.1);
    assert_eq!(opened, expected, "one attempt row per run, keyed by its lease");

    // `a` has one slot left of its three: its oldest remaining task.
    let claimed = claim(&client, "h1", "i1", &[("a", 1)], 10, &on_battery()).await;
    assert_eq!(ids(&claimed), vec![a[2]]);

    set_paused(&client, true).await;
    assert!(claim(&client, "h1", "i1", &free, 10, &plugged_in()).await.is_empty());
    set_paused(&client, false).await;
    let claimed = claim(&client, "h1", "i1", &free, 10, &plugged_in()).await;
    assert_eq!(claimed.len(), 3, "a's last two and b's task that needs charging");
}

/// Two claimers at once get disjoint tasks, and the second does not wait
/// for the first: rows one holds the other skips (`FOR UPDATE SKIP
/// LOCKED`).
#[tokio::test]
async fn concurrent_claims_skip_each_others_rows_without_waiting() {
    let db = pg::database();
    let (first, second) = (db.connect().await, db.connect().await);
    open(&first).await.unwrap();
    for host in ["h1", "h2"] {
        register(&first, host, "i", 15_000, false).await.unwrap();
    }
    for due in 0..6 {
        enqueue(&first, &Spec::new("a", due)).await;
    }
    first.batch_execute("BEGIN").await.unwrap();
    let mine = claim(&first, "h1", "i", &[("a", 3)], 3, &plugged_in()).await;
    let theirs = tokio::time::timeout(
        Duration::from_secs(10),
        claim(&second, "h2", "i", &[("a", 3)], 3, &plugged_in()),
    )
    .await
    .expect("the second claim waited for the first one's transaction");
    first.batch_execute("COMMIT").await.unwrap();
    let (mine, theirs) = (ids(&mine), ids(&theirs));
    assert_eq!((mine.len(), theirs.len()), (3, 3));
    assert!(mine.iter().all(|id| !theirs.contains(id)), "{mine:?} {theirs:?}");
}

/// A finish names its run's lease: a finish with another lease changes
/// nothing and says so; the run's own finish applies its transition and
/// ends the lease.
#[tokio::test]
async fn a_finish_with_a_stale_lease_changes_nothing_and_reports_it() {
    let (_db, client) = store().await;
    register(&client, "h1", "i1", 15_000, false).await.unwrap();
    let id = enqueue(&client, &Spec::new("a", 0)).await;
    let run = claim(&client, "h1", "i1", &[("a", 1)], 1, &plugged_in())
        .await
        .remove(0);
    let lease: i64 = run.get("lease");

    let stale = finish(&client, &run, lease + 1000, &RunResult::Succeeded(Default::default())).await;
    assert_eq!(stale, FENCED);
    assert_eq!(task(&client, id).await.get::<_, String>("state"), "running");

    let done = finish(&client, &run, lease, &RunResult::Succeeded(Default::default())).await;
    assert_eq!(done, APPLIED);
    let row = task(&client, id).await;
    assert_eq!(row.get::<_, String>("state"), "succeeded");
    assert_eq!(row.get::<_, Option<i64>>("lease"), None);
    // A second finish of the same run is stale too: its lease has ended.
    let again = finish(&client, &run, lease, &RunResult::Succeeded(Default::default())).await;
    assert!(!again.applied);

    // A cancelled run's late finish is refused without being fenced.
    let id = enqueue(&client, &Spec::new("a", 0)).await;
    let run = claim(&client, "h1", "i1", &[("a", 1)], 1, &plugged_in())
        .await
        .remove(0);
    let cancelled = client.query(sql::CANCEL, &[&vec![id], &NOW]).await.unwrap();
    assert_eq!(cancelled.len(), 1);
    assert_eq!(cancelled[0].get::<_, Option<String>>("host").as_deref(), Some("h1"));
    let late = finish(
        &client,
        &run,
        run.get("lease"),
        &RunResult::Stopped(StopReason::Cancelled),
    )
    .await;
    assert_eq!(
        late,
        Finished {
            applied: false,
            fenced: false
        }
    );
    assert_eq!(task(&client, id).await.get::<_, String>("state"), "cancelled");
}

/// The periodic ABA case: a periodic task resets its attempt count every
/// period, so a run of an old period and a run of a new one can have the
/// same attempt number. The lease cannot repeat: the zombie's finish
/// matches nothing, and its own attempt row keeps its outcome, marked
/// fenced.
#[tokio::test]
async fn a_zombie_run_of_an_earlier_period_cannot_finish_a_later_one() {
    let (_db, client) = store().await;
    for host in ["a", "b"] {
        register(&client, host, "i", 15_000, false).await.unwrap();
    }
    let id = enqueue(&client, &Spec::new("p", 0).every_minute()).await;
    let zombie = claim(&client, "a", "i", &[("p", 1)], 1, &plugged_in()).await.remove(0);
    assert_eq!(zombie.get::<_, i64>("attempts"), 1);
    // Host a stops renewing; b rescues its run and retries it.
    expire(&client, "a").await;
    let rescued = rescue(&client, "b", "i").await;
    assert_eq!(ids(&rescued), vec![id]);
    client.execute(sql::MAKE_DUE, &[&id, &0i64]).await.unwrap();
    // b runs it and succeeds: the next period starts, attempts back to 0.
    let run = claim(&client, "b", "i", &[("p", 1)], 1, &plugged_in()).await.remove(0);
    assert_eq!(run.get::<_, i64>("attempts"), 2);
    succeed(&client, &run).await;
    client.execute(sql::MAKE_DUE, &[&id, &0i64]).await.unwrap();
    let current = claim(&client, "b", "i", &[("p", 1)], 1, &plugged_in()).await.remove(0);
    assert_eq!(
        current.get::<_, i64>("attempts"),
        1,
        "the same attempt number as the zombie's"
    );

    let late = succeed(&client, &zombie).await;
    assert_eq!(late, FENCED);
    let row = task(&client, id).await;
    assert_eq!(
        (row.get::<_, String>("state"), row.get::<_, i64>("lease")),
        ("running".to_string(), current.get::<_, i64>("lease")),
        "the current run is untouched"
    );
    // Matching on the attempt count instead would have hit the current run.
    let by_attempt: i64 = client
        .query_one(
            "SELECT count(*) FROM workhost.tasks WHERE id = $1 AND state = 'running' AND attempts = 1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(by_attempt, 1);
    let zombie_row = client
        .query_one(
            "SELECT outcome, fenced_at FROM workhost.attempts WHERE task_id = $1 AND lease = $2",
            &[&id, &zombie.get::<_, i64>("lease")],
        )
        .await
        .unwrap();
    // The rescue closed the zombie's attempt row; its late finish keeps that
    // record (as SQLite's) and marks the write it was refused.
    assert_eq!(zombie_row.get::<_, Option<String>>(0).as_deref(), Some("stopped"));
    assert_eq!(zombie_row.get::<_, Option<i64>>(1), Some(NOW));

    // The zombie's progress report is refused the same way.
    let n = client
        .execute(sql::SET_PROGRESS, &[&id, &zombie.get::<_, i64>("lease"), &"{}"])
        .await
        .unwrap();
    assert_eq!(n, 0);
}

/// A host renews its lease while it holds; once it expired, its renewal
/// fails for good, another host's rescue deletes its row and returns its
/// runs (only its runs), the retry policy decides each (the attempt stays
/// counted; on the last attempt the task fails), and the runs' own late
/// writes are fenced. A restarted host rescues its earlier incarnation's
/// runs at once. A host that has expired claims nothing.
#[tokio::test]
async fn an_expired_hosts_runs_are_rescued_and_its_late_writes_fenced() {
    let (_db, client) = store().await;
    register(&client, "dead", "i1", 15_000, false).await.unwrap();
    register(&client, "live", "i1", 15_000, false).await.unwrap();
    let retried = enqueue(&client, &Spec::new("a", 0)).await;
    let last_try = enqueue(&client, &Spec::new("a", 1).max_attempts(1)).await;
    let child = enqueue(&client, &Spec::new("a", 2).after(&[last_try])).await;
    let theirs = claim(&client, "dead", "i1", &[("a", 2)], 2, &plugged_in()).await;
    assert_eq!(ids(&theirs), vec![retried, last_try]);
    let own = enqueue(&client, &Spec::new("b", 0)).await;
    claim(&client, "live", "i1", &[("b", 1)], 1, &plugged_in()).await;

    assert!(renew(&client, "dead", "i1").await, "a valid lease renews");
    expire(&client, "dead").await;
    assert!(!renew(&client, "dead", "i1").await, "an expired lease does not renew");
    assert!(
        claim(&client, "dead", "i1", &[("a", 5)], 5, &plugged_in())
            .await
            .is_empty(),
        "an expired host claims nothing"
    );
    let rescued = rescue(&client, "live", "i1").await;
    assert_eq!(ids(&rescued), vec![retried, last_try], "only the dead host's runs");
    assert!(!renew(&client, "dead", "i1").await, "a lost lease stays lost");
    let hosts: Vec<String> = client
        .query(sql::LIST_HOSTS, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get("id"))
        .collect();
    assert_eq!(hosts, vec!["live"]);

    let retried_row = task(&client, retried).await;
    assert_eq!(
        (
            retried_row.get::<_, String>("state"),
            retried_row.get::<_, i64>("attempts")
        ),
        ("enqueued".to_string(), 1),
        "re-enqueued, the attempt counted"
    );
    assert_eq!(
        retried_row.get::<_, Option<String>>("stop_reason").as_deref(),
        Some("host-shutdown")
    );
    let failed = task(&client, last_try).await;
    assert_eq!(
        failed.get::<_, String>("state"),
        "failed",
        "its last attempt died with its host"
    );
    assert_eq!(
        task(&client, child).await.get::<_, String>("state"),
        "failed",
        "and its dependent with it"
    );
    assert_eq!(task(&client, own).await.get::<_, String>("state"), "running");

    for run in &theirs {
        let late = succeed(&client, run).await;
        assert_eq!(late, FENCED);
        let fence: Vec<Row> = client
            .query(sql::KV_FENCE, &[&run.get::<_, i64>("id"), &run.get::<_, i64>("lease")])
            .await
            .unwrap();
        assert!(fence.is_empty(), "a rescued run's kv write is refused");
    }
    assert!(
        rescue(&client, "live", "i1").await.is_empty(),
        "nothing is rescued twice"
    );

    // "live" restarts: a new incarnation of the same id takes over its row
    // (it holds serve.lock) and rescues its earlier incarnation's run.
    assert!(
        register(&client, "live", "i2", 15_000, false).await.is_none(),
        "the row is live"
    );
    register(&client, "live", "i2", 15_000, true).await.unwrap();
    assert_eq!(ids(&rescue(&client, "live", "i2").await), vec![own]);
}

/// The rescuer judges a host dead only through the row it deletes, under
/// that row's lock: when a renewal holds the row, the rescuer waits, and
/// if the renewal commits, the host is alive and none of its runs are
/// returned, though the rescuer's snapshot saw its lease expired.
#[tokio::test]
async fn a_rescuer_waiting_on_a_renewal_in_flight_leaves_the_host_alone() {
    let db = pg::database();
    let (renewer, rescuer, observer) = (db.connect().await, db.connect().await, db.connect().await);
    open(&renewer).await.unwrap();
    register(&renewer, "slow", "i", 15_000, false).await.unwrap();
    register(&renewer, "other", "i", 15_000, false).await.unwrap();
    enqueue(&renewer, &Spec::new("a", 0)).await;
    claim(&renewer, "slow", "i", &[("a", 1)], 1, &plugged_in()).await;
    expire(&renewer, "slow").await;

    // A renewal that began while the lease held, and has the row locked.
    renewer.batch_execute("BEGIN").await.unwrap();
    renewer
        .query("SELECT 1 FROM workhost.hosts WHERE id = 'slow' FOR UPDATE", &[])
        .await
        .unwrap();
    let pid = backend_pid(&rescuer).await;
    let rescue = tokio::spawn(async move {
        let rows = rescue(&rescuer, "other", "i").await;
        (ids(&rows), rescuer)
    });
    waiting_on_a_lock(&observer, pid).await;
    renewer
        .batch_execute("UPDATE workhost.hosts SET expires_at = now() + interval '15 seconds' WHERE id = 'slow'; COMMIT")
        .await
        .unwrap();
    let (rescued, _rescuer) = rescue.await.unwrap();
    assert_eq!(rescued, Vec::<i64>::new());
    assert!(renew(&renewer, "slow", "i").await, "the host kept its lease");
}

/// Enqueues of one unique name from two connections at once create one
/// task: each takes the name's advisory lock before it reads, so the
/// second reads what the first committed and keeps it. Without the lock
/// both read "none" and both insert.
#[tokio::test]
async fn racing_enqueues_of_one_unique_name_create_one_task() {
    let db = pg::database();
    let (first, second, observer) = (db.connect().await, db.connect().await, db.connect().await);
    open(&first).await.unwrap();

    // Unlocked, two readers interleaved: two tasks.
    for client in [&first, &second] {
        client.batch_execute("BEGIN").await.unwrap();
        assert!(unfinished(client, "racy").await.is_empty());
    }
    for client in [&first, &second] {
        enqueue(client, &Spec::unique("racy")).await;
        client.batch_execute("COMMIT").await.unwrap();
    }
    assert_eq!(unfinished(&first, "racy").await.len(), 2);

    // Locked: the second waits for the first and then keeps its task.
    first.batch_execute("BEGIN").await.unwrap();
    first.execute(sql::UNIQUE_LOCK, &[&"once"]).await.unwrap();
    let pid = backend_pid(&second).await;
    let later = tokio::spawn(async move {
        let created = keep_enqueue(&second, "once").await;
        (created, second)
    });
    waiting_on_a_lock(&observer, pid).await;
    assert!(unfinished(&first, "once").await.is_empty());
    enqueue(&first, &Spec::unique("once")).await;
    first.batch_execute("COMMIT").await.unwrap();
    let (created, _second) = later.await.unwrap();
    assert!(!created, "the second enqueue kept the first one's task");
    assert_eq!(unfinished(&first, "once").await.len(), 1);

    // Eight connections, no choreography: still one.
    let mut racers = Vec::new();
    for _ in 0..8 {
        let client = db.connect().await;
        racers.push(tokio::spawn(async move { keep_enqueue(&client, "storm").await }));
    }
    let mut created = 0;
    for racer in racers {
        created += usize::from(racer.await.unwrap());
    }
    assert_eq!((created, unfinished(&first, "storm").await.len()), (1, 1));
}

/// A notification reaches a listener only once its transaction commits
/// (so a listener counting them never reads ahead of what it can see),
/// and once per distinct payload of a transaction.
#[tokio::test]
async fn notifications_reach_listeners_when_their_transaction_commits() {
    let db = pg::database();
    let (listener, mut connection) = db
        .config()
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connecting the listener");
    let (tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        // Driving the connection ourselves hands us its notifications.
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let Ok(tokio_postgres::AsyncMessage::Notification(n)) = message {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    listener
        .batch_execute(&format!("LISTEN {}", sql::CHANNEL))
        .await
        .unwrap();
    let sender = db.connect().await;
    sender.batch_execute("BEGIN").await.unwrap();
    for payload in [
        r#"{"k":"enq","handler":"a"}"#,
        r#"{"k":"enq","handler":"a"}"#,
        r#"{"k":"pause"}"#,
    ] {
        sender.execute(sql::NOTIFY, &[&payload]).await.unwrap();
    }
    // A round trip of the listener's: anything already sent has arrived.
    listener.batch_execute("SELECT 1").await.unwrap();
    assert!(heard.try_recv().is_err(), "a notification arrived before its commit");
    sender.batch_execute("COMMIT").await.unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let next = tokio::time::timeout(Duration::from_secs(10), heard.recv()).await;
        got.push(next.expect("no notification after the commit").unwrap());
    }
    listener.batch_execute("SELECT 1").await.unwrap();
    assert!(heard.try_recv().is_err(), "an identical payload was sent twice");
    let channel = sql::CHANNEL.to_string();
    assert_eq!(
        got,
        vec![
            (channel.clone(), r#"{"k":"enq","handler":"a"}"#.to_string()),
            (channel, r#"{"k":"pause"}"#.to_string())
        ]
    );
}

/// Chains in SQL: a failed parent fails its dependents transitively
/// through unfinished ones, each naming the parent it was reached through,
/// and leaves finished ones alone; a child whose parents all succeeded is
/// released once.
#[tokio::test]
async fn chains_fail_down_through_unfinished_work_and_release_once() {
    let (_db, client) = store().await;
    let root = enqueue(&client, &Spec::new("a", 0)).await;
    let child = enqueue(&client, &Spec::new("a", 0).after(&[root])).await;
    let grandchild = enqueue(&client, &Spec::new("a", 0).after(&[child, root])).await;
    let finished_parent = enqueue(&client, &Spec::new("a", 0)).await;
    client
        .execute(
            sql::SET_STATE,
            &[&finished_parent, &"succeeded", &None::<&str>, &Some(NOW)],
        )
        .await
        .unwrap();
    client
        .execute(sql::SET_STATE, &[&root, &"failed", &Some("boom"), &Some(NOW)])
        .await
        .unwrap();
    let changed: Vec<(i64, String)> = client
        .query(sql::PROPAGATE, &[&vec![root], &"failed", &NOW])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut changed = changed;
    changed.sort();
    assert_eq!(
        changed,
        vec![(child, "failed".to_string()), (grandchild, "failed".to_string())]
    );
    let error: String = task(&client, grandchild).await.get("error");
    assert_eq!(error, format!("task {root} that this task runs after failed"));
    assert_eq!(
        task(&client, finished_parent).await.get::<_, String>("state"),
        "succeeded"
    );

    let released = enqueue(&client, &Spec::new("a", 0).after(&[finished_parent])).await;
    client.batch_execute("BEGIN").await.unwrap();
    let locked = client.query_one(sql::LOCK_TASK, &[&released]).await.unwrap();
    assert_eq!(locked.get::<_, String>("state"), "blocked");
    let parents = client.query(sql::PARENT_STATES, &[&released]).await.unwrap();
    assert!(parents.iter().all(|p| p.get::<_, String>("state") == "succeeded"));
    let blocked = client.query(sql::BLOCKED_CHILDREN, &[&finished_parent]).await.unwrap();
    assert_eq!(ids_of(&blocked, "child"), vec![released]);
    let input: String = locked.get("input");
    for expected in [1, 0] {
        let n = client.execute(sql::RELEASE, &[&released, &input, &NOW]).await.unwrap();
        assert_eq!(n, expected, "released once");
    }
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(task(&client, released).await.get::<_, String>("state"), "enqueued");
}

// ---------------------------------------------------------------------------
// Helpers: what the store will do, statement by statement.

/// "Now" in the tests' task times (ms).
const NOW: i64 = 1_000_000;

/// A fresh store in a database of its own, and a connection to it (the
/// database lives as long as the first).
async fn store() -> (pg::TestDatabase, Client) {
    let db = pg::database();
    let client = db.connect().await;
    open(&client).await.unwrap();
    (db, client)
}

/// How opening a store went.
#[derive(Debug, PartialEq, Eq)]
enum Opened {
    Created,
    Current,
}

/// Opens the store in `client`'s database, as the store will: in one
/// transaction under the migration lock, reads what the database holds,
/// refuses another program's database, a `workhost` schema without the
/// mark, or a newer version, naming them; creates or migrates the rest.
async fn open(client: &Client) -> Result<Opened, String> {
    client.batch_execute("BEGIN").await.unwrap();
    let result = open_in(client).await;
    client
        .batch_execute(if result.is_ok() { "COMMIT" } else { "ROLLBACK" })
        .await
        .unwrap();
    result
}

async fn open_in(client: &Client) -> Result<Opened, String> {
    client.execute(sql::MIGRATION_LOCK, &[]).await.unwrap();
    let found = client.query_one(sql::IDENTITY, &[]).await.unwrap();
    let (has_schema, has_meta): (bool, bool) = (found.get("has_schema"), found.get("has_meta"));
    let version = if has_meta {
        let mark = client.query_one(sql::READ_IDENTITY, &[]).await.unwrap();
        if mark.get::<_, Option<String>>("application").as_deref() != Some(sql::APPLICATION) {
            return Err("its schema `workhost` is not a workhost store (no workhost mark in workhost.meta)".into());
        }
        let version: Option<String> = mark.get("schema_version");
        version.and_then(|v| v.parse::<i64>().ok()).unwrap_or(0)
    } else if has_schema {
        return Err("it has a schema `workhost` with no workhost.meta: not a workhost store".into());
    } else {
        let others: i64 = found.get("other_tables");
        if others > 0 {
            let first: String = found.get("first_other");
            return Err(format!(
                "it holds {others} tables of another program (first: {first}); give workhost a database of its own"
            ));
        }
        0
    };
    if version > sql::SCHEMA_VERSION {
        return Err(format!(
            "it is a workhost store of schema version {version}, this workhost reads versions up to {}",
            sql::SCHEMA_VERSION
        ));
    }
    if version == sql::SCHEMA_VERSION {
        return Ok(Opened::Current);
    }
    for migration in &sql::MIGRATIONS[version as usize..] {
        client.batch_execute(migration).await.map_err(|e| db_error(&e))?;
    }
    client
        .execute(sql::SET_SCHEMA_VERSION, &[&sql::SCHEMA_VERSION.to_string()])
        .await
        .unwrap();
    Ok(Opened::Created)
}

/// What a test task looks like.
#[derive(Debug, Clone)]
struct Spec {
    handler: String,
    due: i64,
    max_attempts: i64,
    periodic: Option<Periodic>,
    unique: Option<String>,
    after: Vec<i64>,
    req_charging: bool,
}

impl Spec {
    fn new(handler: &str, due: i64) -> Spec {
        Spec {
            handler: handler.into(),
            due,
            max_attempts: 20,
            periodic: None,
            unique: None,
            after: Vec::new(),
            req_charging: false,
        }
    }

    fn after(self, parents: &[i64]) -> Spec {
        Spec {
            after: parents.to_vec(),
            ..self
        }
    }

    fn max_attempts(self, max_attempts: i64) -> Spec {
        Spec { max_attempts, ..self }
    }

    fn needs_charging(self) -> Spec {
        Spec {
            req_charging: true,
            ..self
        }
    }

    fn every_minute(self) -> Spec {
        let minute = Duration::from_secs(60);
        Spec {
            periodic: Some(Periodic {
                frequency: minute,
                flex: minute,
            }),
            ..self
        }
    }

    fn unique(name: &str) -> Spec {
        Spec {
            unique: Some(name.into()),
            ..Spec::new("u", 0)
        }
    }
}

/// Inserts a task (no unique policy applied); returns its id.
async fn enqueue(client: &Client, spec: &Spec) -> i64 {
    let ms = |d: Duration| d.as_millis() as i64;
    let kind = if spec.periodic.is_some() { "periodic" } else { "one-off" };
    let state = if spec.after.is_empty() { "enqueued" } else { "blocked" };
    // The statement takes one array per column (a batch of tasks): here,
    // one task.
    let row = client
        .query_one(
            sql::INSERT_TASK,
            &[
                &[spec.handler.as_str()].as_slice(),
                &["t"].as_slice(),
                &["{}"].as_slice(),
                &[spec.max_attempts].as_slice(),
                &[spec.periodic.map(|p| ms(p.frequency))].as_slice(),
                &[spec.periodic.map(|p| ms(p.flex))].as_slice(),
                &["exponential"].as_slice(),
                &[30_000i64].as_slice(),
                &[None::<i64>].as_slice(),
                &[None::<i64>].as_slice(),
                &[None::<i64>].as_slice(),
                &[kind].as_slice(),
                &[state].as_slice(),
                &[spec.unique.as_deref()].as_slice(),
                &[spec.due].as_slice(),
                &[0i64].as_slice(),
                &[0i64].as_slice(),
                &[NOW].as_slice(),
                &[0i64].as_slice(),
                &[spec.req_charging].as_slice(),
                &[false].as_slice(),
                &[false].as_slice(),
                &[false].as_slice(),
                &[5i64].as_slice(),
                &[None::<&str>].as_slice(),
                &[false].as_slice(),
                &[None::<i64>].as_slice(),
                &[None::<&str>].as_slice(),
                &[None::<&str>].as_slice(),
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("INSERT_TASK: {}", db_error(&e)));
    let id: i64 = row.get(0);
    if !spec.after.is_empty() {
        let parents = client.query(sql::LOCK_PARENTS, &[&spec.after]).await.unwrap();
        assert_eq!(parents.len(), spec.after.len(), "a parent does not exist");
        client.execute(sql::INSERT_DEPS, &[&spec.after, &id]).await.unwrap();
    }
    id
}

/// The KEEP policy, as the store runs it: lock the name, read, insert if
/// nothing unfinished has it. Returns whether it created a task.
async fn keep_enqueue(client: &Client, name: &str) -> bool {
    client.batch_execute("BEGIN").await.unwrap();
    client.execute(sql::UNIQUE_LOCK, &[&name]).await.unwrap();
    let create = unfinished(client, name).await.is_empty();
    if create {
        enqueue(client, &Spec::unique(name)).await;
    }
    client.batch_execute("COMMIT").await.unwrap();
    create
}

async fn unfinished(client: &Client, name: &str) -> Vec<i64> {
    client
        .query(sql::UNIQUE_UNFINISHED, &[&name])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The device state a claim filters constraints by.
struct Device {
    charging: bool,
}

fn plugged_in() -> Device {
    Device { charging: true }
}

fn on_battery() -> Device {
    Device { charging: false }
}

/// Claims for `host`: `free` slots per handler, at most `limit`, at
/// [`NOW`], on `device` (every network type holds; not idle-required, not
/// low on battery or storage).
async fn claim(
    client: &Client,
    host: &str,
    incarnation: &str,
    free: &[(&str, i64)],
    limit: i64,
    device: &Device,
) -> Vec<Row> {
    let networks: Vec<i64> = (0..6).collect();
    let handlers: Vec<&str> = free.iter().map(|(h, _)| *h).collect();
    let slots: Vec<i64> = free.iter().map(|(_, n)| *n).collect();
    let budgets: Vec<i64> = free.iter().map(|_| 30_000).collect();
    client
        .query(
            sql::CLAIM,
            &[
                &networks,
                &device.charging,
                &false,
                &true,
                &false,
                &host,
                &incarnation,
                &handlers,
                &slots,
                &limit,
                &NOW,
                &budgets,
                &60_000i64,
                &workhost::claim_key(NOW, workhost::LOWEST_PRIORITY, false),
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("CLAIM: {}", db_error(&e)))
}

/// What [`finish`] reported.
#[derive(Debug, PartialEq, Eq)]
struct Finished {
    applied: bool,
    fenced: bool,
}

/// A finish that applied.
const APPLIED: Finished = Finished {
    applied: true,
    fenced: false,
};

/// A finish refused because the run's lease was gone.
const FENCED: Finished = Finished {
    applied: false,
    fenced: true,
};

/// Ends `run` as succeeded under its own lease, in a transaction of its
/// own.
async fn succeed(client: &Client, run: &Row) -> Finished {
    finish(client, run, run.get("lease"), &RunResult::Succeeded(Default::default())).await
}

/// Ends `run` (a claimed row) with `result` under `lease`, in a
/// transaction of its own (see [`finish_in`]).
async fn finish(client: &Client, run: &Row, lease: i64, result: &RunResult) -> Finished {
    client.batch_execute("BEGIN").await.unwrap();
    let finished = finish_in(client, run, lease, result).await;
    client.batch_execute("COMMIT").await.unwrap();
    finished
}

/// Ends `run` with `result` under `lease`, as the store will: the
/// transition decided by the retry policy, applied by FINISH, then the
/// chain effects when it applied.
async fn finish_in(client: &Client, run: &Row, lease: i64, result: &RunResult) -> Finished {
    let id: i64 = run.get("id");
    let t = decide(&facts(run), result, NOW);
    let (outcome, stop_reason, error) = match result {
        RunResult::Succeeded(_) => ("succeeded", None, None),
        RunResult::Retry => ("retry", None, None),
        RunResult::Failed(f) => ("failed", None, Some(f.message().to_string())),
        RunResult::Stopped(r) => ("stopped", Some(r.as_str()), None),
    };
    // The tests' outputs are empty data, whose typed JSON is `{}`.
    let output = t.output.as_ref().map(|_| "{}");
    // As the store runs it: under index lookups only, one array per
    // column (a batch of runs), here of one run.
    client.batch_execute(sql::INDEX_LOOKUPS_ONLY).await.unwrap();
    let row = client
        .query_one(
            sql::FINISH,
            &[
                &[id].as_slice(),
                &[lease].as_slice(),
                &[NOW].as_slice(),
                &[outcome].as_slice(),
                &[stop_reason].as_slice(),
                &[error.as_deref()].as_slice(),
                &[None::<i64>].as_slice(),
                &[0i64].as_slice(),
                &["[]"].as_slice(),
                &[t.state.as_str()].as_slice(),
                &[t.next_run_at].as_slice(),
                &[t.period_start].as_slice(),
                &[i64::from(t.attempts)].as_slice(),
                &[output].as_slice(),
                &[t.stop_reason.as_deref()].as_slice(),
                &[t.error.as_deref()].as_slice(),
                &[t.state.is_finished().then_some(NOW)].as_slice(),
                &[Some("ab".repeat(32))].as_slice(),
                &[Some("workhost:task/handler@0.1.1")].as_slice(),
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("FINISH: {}", db_error(&e)));
    let finished = Finished {
        applied: row.get("applied"),
        fenced: row.get("fenced"),
    };
    if finished.applied && matches!(t.state, TaskState::Failed | TaskState::Cancelled) {
        client
            .query(sql::PROPAGATE, &[&vec![id], &t.state.as_str(), &NOW])
            .await
            .unwrap_or_else(|e| panic!("PROPAGATE: {}", db_error(&e)));
    }
    finished
}

/// The retry policy's facts of a claimed (or rescued) row.
fn facts(run: &Row) -> RetryFacts {
    let ms = |v: i64| Duration::from_millis(v as u64);
    let frequency: Option<i64> = run.get("frequency_ms");
    let flex: Option<i64> = run.get("flex_ms");
    RetryFacts {
        kind: TaskKind::parse(run.get("kind")).unwrap(),
        periodic: frequency.map(|f| Periodic {
            frequency: ms(f),
            flex: ms(flex.unwrap_or(f)),
        }),
        cron: None,
        period_start: run.get("period_start"),
        attempts: run.get::<_, i64>("attempts") as u32,
        max_attempts: run.get::<_, i64>("max_attempts") as u32,
        backoff: BackoffPolicy::Exponential,
        backoff_delay_ms: run.get("backoff_delay_ms"),
    }
}

/// One rescue round by `host`, as the store runs it, in one transaction:
/// RESCUE, then each run ended as stopped by `host-shutdown` under its
/// lease (the retry policy decides); returns the rescued rows.
async fn rescue(client: &Client, host: &str, incarnation: &str) -> Vec<Row> {
    client.batch_execute("BEGIN").await.unwrap();
    let rows = client
        .query(sql::RESCUE, &[&host, &incarnation, &500i64])
        .await
        .unwrap_or_else(|e| panic!("RESCUE: {}", db_error(&e)));
    for run in &rows {
        let done = finish_in(
            client,
            run,
            run.get("lease"),
            &RunResult::Stopped(StopReason::HostShutdown),
        )
        .await;
        assert!(done.applied, "a rescued run's end applies");
    }
    client.batch_execute("COMMIT").await.unwrap();
    rows
}

/// Registers `host`; its lease expiry (ms), or `None` when a live host
/// holds the id.
async fn register(client: &Client, host: &str, incarnation: &str, ttl_ms: i64, take_over: bool) -> Option<i64> {
    client
        .query_opt(sql::REGISTER_HOST, &[&host, &incarnation, &ttl_ms, &take_over])
        .await
        .unwrap_or_else(|e| panic!("REGISTER_HOST: {}", db_error(&e)))
        .map(|r| r.get(0))
}

/// Renews `host`'s lease by 15 s; whether it held.
async fn renew(client: &Client, host: &str, incarnation: &str) -> bool {
    client
        .query_opt(sql::RENEW_HOST, &[&host, &incarnation, &15_000i64])
        .await
        .unwrap()
        .is_some()
}

/// Makes `host`'s lease expire, as time passing without a renewal would.
async fn expire(client: &Client, host: &str) {
    client
        .execute(
            "UPDATE workhost.hosts SET expires_at = now() - interval '1 second' WHERE id = $1",
            &[&host],
        )
        .await
        .unwrap();
}

async fn set_paused(client: &Client, paused: bool) {
    client
        .execute(sql::SET_SETTING, &[&"paused", &if paused { "1" } else { "0" }])
        .await
        .unwrap();
}

async fn task(client: &Client, id: i64) -> Row {
    client.query_one(sql::GET_TASK, &[&id]).await.unwrap()
}

async fn schema_exists(client: &Client) -> bool {
    client.query_one(sql::IDENTITY, &[]).await.unwrap().get("has_schema")
}

fn ids(rows: &[Row]) -> Vec<i64> {
    ids_of(rows, "id")
}

fn ids_of(rows: &[Row], column: &str) -> Vec<i64> {
    rows.iter().map(|r| r.get(column)).collect()
}

async fn backend_pid(client: &Client) -> i32 {
    client.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0)
}

/// Returns once backend `pid` waits for a lock (up to 10 s).
async fn waiting_on_a_lock(observer: &Client, pid: i32) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: Option<String> = observer
            .query_one("SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", &[&pid])
            .await
            .unwrap()
            .get(0);
        if waiting.as_deref() == Some("Lock") {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "backend {pid} never waited for a lock"
        );
        // Polling another session's state; nothing to await.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The server's message, with its detail and hint.
fn db_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{}: {}{}{}",
            db.code().code(),
            db.message(),
            db.detail().map(|d| format!(" ({d})")).unwrap_or_default(),
            db.position().map(|p| format!(" at {p:?}")).unwrap_or_default()
        ),
        None => e.to_string(),
    }
}

/// A run's kv writes go through its lease: once its task was recovered and
/// claimed again, the old run's set, increment and delete are refused (the
/// guest sees the kv store unavailable), change nothing, and mark the old
/// run fenced; the current run's writes go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_kv_writes_are_refused_once_its_lease_was_taken_away() {
    use workhost::{DeviceState, EnqueueHooks, HostIdentity, PgStore, TaskStore, WorkRequest};
    let db = pg::database();
    let store = PgStore::open(db.url()).await.unwrap();
    let me = HostIdentity {
        id: "h".into(),
        incarnation: "1".into(),
    };
    store.register_host(me.clone(), NOW).await.unwrap();
    let id = store
        .enqueue(WorkRequest::one_off("a", "t"), NOW, EnqueueHooks::default())
        .await
        .unwrap()
        .0
        .id;
    let slots: std::collections::HashMap<String, usize> = [("a".to_string(), 1)].into();
    let claim = || store.claim(me.clone(), NOW, 1, slots.clone(), DeviceState::default());
    let old = claim().await.unwrap().remove(0);
    let old_kv = store.run_kv(id, old.lease);
    old_kv.set("a", "k", b"old", 10).await.unwrap();
    // A restart of the host rescues the run; it is claimed again.
    let restarted = HostIdentity {
        incarnation: "2".into(),
        ..me.clone()
    };
    store.register_host(restarted.clone(), NOW).await.unwrap();
    store.recover(restarted.clone(), NOW).await.unwrap();
    let new = store
        .claim(restarted, NOW, 1, slots.clone(), DeviceState::default())
        .await
        .unwrap()
        .remove(0);
    let refused = old_kv.set("a", "k", b"zombie", 10).await;
    assert!(
        matches!(&refused, Err(workhost::KvError::Unavailable(m)) if m.contains("no longer holds its task")),
        "{refused:?}"
    );
    assert!(old_kv.increment("a", "n", 1, 10).await.is_err());
    assert!(old_kv.delete("a", "k").await.is_err());
    assert_eq!(store.kv().get("a", "k").await.unwrap(), Some(b"old".to_vec()));
    let new_kv = store.run_kv(id, new.lease);
    new_kv.set("a", "k", b"new", 10).await.unwrap();
    assert_eq!(store.kv().get("a", "k").await.unwrap(), Some(b"new".to_vec()));
    let client = db.connect().await;
    let fenced: Option<i64> = client
        .query_one(
            "SELECT fenced_at FROM workhost.attempts WHERE task_id = $1 AND lease = $2",
            &[&id, &(old.lease as i64)],
        )
        .await
        .unwrap()
        .get(0);
    assert!(fenced.is_some(), "the old run is marked fenced");
}

/// A store of schema version 4 (before `kv_namespaces`) with kv keys is
/// migrated forward with each namespace's count taken from its keys, so
/// the key limit holds from the first write after the upgrade.
#[tokio::test]
async fn a_version_4_store_is_migrated_with_its_kv_namespaces_counted() {
    let db = pg::database();
    let client = db.connect().await;
    for migration in &sql::MIGRATIONS[..4] {
        client.batch_execute(migration).await.unwrap();
    }
    client.execute(sql::SET_SCHEMA_VERSION, &[&"4"]).await.unwrap();
    client
        .batch_execute(
            "INSERT INTO workhost.kv (namespace, key, value) VALUES \
             ('a', 'x', '1'), ('a', 'y', '2'), ('a', 'z', '3'), ('b', 'x', '1')",
        )
        .await
        .unwrap();
    let store = workhost::PgStore::open(db.url()).await.unwrap();
    let counts: Vec<(String, i64)> = client
        .query(
            "SELECT namespace, keys FROM workhost.kv_namespaces ORDER BY namespace",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(counts, [("a".to_string(), 3), ("b".to_string(), 1)]);
    let kv = workhost::TaskStore::kv(&*store);
    kv.set("a", "w", b"4", 4).await.unwrap();
    assert_eq!(kv.set("a", "v", b"5", 4).await, Err(workhost::KvError::TooManyKeys(4)));
    kv.set("b", "y", b"2", 2).await.unwrap();
    assert_eq!(kv.get("a", "y").await.unwrap(), Some(b"2".to_vec()));
}
