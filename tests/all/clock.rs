//! The wall clock jumping backwards and forwards, while a host runs and
//! while none does: every wait keeps its length, run budgets are not
//! touched, and nothing accepted is lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use workhost::{Clock, Host, Millis, SteadyReading, SystemClock, TaskId, TaskInfo, TaskState, WorkRequest};
use workhost_tests::host_config;

const HOUR: Millis = 3_600_000;

/// The system clock plus an offset a test sets, with a steady clock that
/// setting the offset does not move: what an administrator (or NTP)
/// stepping the machine's clock looks like to a host.
#[derive(Debug)]
struct SteppedClock {
    offset: AtomicI64,
    started: Instant,
    epoch: Arc<str>,
}

impl SteppedClock {
    fn new() -> Arc<SteppedClock> {
        static N: AtomicU32 = AtomicU32::new(0);
        Arc::new(SteppedClock {
            offset: AtomicI64::new(0),
            started: Instant::now(),
            epoch: format!("stepped-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)).into(),
        })
    }

    /// Steps the wall clock by `by` (negative: backwards).
    fn step(&self, by: Millis) {
        self.offset.fetch_add(by, Ordering::SeqCst);
    }
}

impl Clock for SteppedClock {
    fn now(&self) -> Millis {
        SystemClock.now() + self.offset.load(Ordering::SeqCst)
    }

    fn steady(&self) -> Option<SteadyReading> {
        Some(SteadyReading {
            epoch: self.epoch.clone(),
            elapsed: self.started.elapsed().as_millis() as Millis,
        })
    }
}

async fn task(host: &Host, id: TaskId) -> TaskInfo {
    host.queue().get(id).await.unwrap().unwrap()
}

/// Waits (in real time, up to 30 s) until task `id` is finished.
async fn finished(host: &Host, id: TaskId) -> TaskInfo {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = task(host, id).await;
        if t.state.is_finished() {
            return t;
        }
        assert!(Instant::now() < deadline, "task {id} still {} after 30 s", t.state);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts at least `wait` of real time passed since `since` (less 100 ms:
/// the clocks are read a moment apart).
fn waited(since: Instant, wait: Duration) {
    let elapsed = since.elapsed();
    assert!(elapsed >= wait - Duration::from_millis(100), "{elapsed:?}");
}

/// Asserts a forward jump did not make task `id` due: a second later it
/// still waits.
async fn still_waiting_a_second_later(host: &Host, id: TaskId) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        task(host, id).await.state,
        TaskState::Enqueued,
        "ran early after a forward jump"
    );
}

/// Asserts task `id`, enqueued at `enqueued` with a delay of `delay`,
/// succeeds, and not before its delay passed in real time.
async fn succeeds_after(host: &Host, id: TaskId, enqueued: Instant, delay: Duration) {
    assert_eq!(finished(host, id).await.state, TaskState::Succeeded);
    waited(enqueued, delay);
}

async fn delayed_echo(host: &Host, delay: Duration) -> (TaskId, Instant) {
    let mut r = WorkRequest::one_off("echo", "later");
    r.initial_delay = delay;
    (host.queue().enqueue(r).await.unwrap().id, Instant::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_jump_keeps_every_wait_its_length_and_leaves_budgets_alone() {
    let dir = tempfile::tempdir().unwrap();
    let clock = SteppedClock::new();
    let host = Host::start_with_clock(host_config(dir.path()), clock.clone())
        .await
        .unwrap();
    let mut events = host.queue().subscribe();

    // Forward by an hour: a wall-clock scheduler would run this at once.
    let (late, enqueued) = delayed_echo(&host, Duration::from_secs(3)).await;
    clock.step(HOUR);
    still_waiting_a_second_later(&host, late).await;
    succeeds_after(&host, late, enqueued, Duration::from_secs(3)).await;
    let event = loop {
        let e = events.recv().await.unwrap();
        if e.id == late && e.event == "rescheduled" {
            break e;
        }
    };
    assert!(event.detail.contains("jumped forward by 1h"), "{}", event.detail);

    // Back by two hours: a wall-clock scheduler would wait two hours more.
    let (soon, enqueued) = delayed_echo(&host, Duration::from_secs(2)).await;
    clock.step(-2 * HOUR);
    succeeds_after(&host, soon, enqueued, Duration::from_secs(2)).await;

    // A running task's wall-clock budget counts real time, not the clock.
    let mut r = WorkRequest::one_off("spin", "spin");
    r.budget.timeout = Some(Duration::from_secs(3));
    r.max_attempts = 1;
    let started = Instant::now();
    let spin = host.queue().enqueue(r).await.unwrap().id;
    tokio::time::sleep(Duration::from_millis(500)).await;
    clock.step(HOUR);
    let t = finished(&host, spin).await;
    assert_eq!(t.attempts[0].stop_reason.as_deref(), Some("timeout"));
    waited(started, Duration::from_secs(3));
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jump_made_while_no_host_runs_is_followed_when_one_starts() {
    let dir = tempfile::tempdir().unwrap();
    let clock = SteppedClock::new();
    let start = || Host::start_with_clock(host_config(dir.path()), clock.clone());

    let host = start().await.unwrap();
    let (back, enqueued) = delayed_echo(&host, Duration::from_secs(2)).await;
    host.shutdown().await;
    clock.step(-HOUR);
    let host = start().await.unwrap();
    succeeds_after(&host, back, enqueued, Duration::from_secs(2)).await;

    let (forward, enqueued) = delayed_echo(&host, Duration::from_secs(3)).await;
    host.shutdown().await;
    clock.step(HOUR);
    let host = start().await.unwrap();
    still_waiting_a_second_later(&host, forward).await;
    succeeds_after(&host, forward, enqueued, Duration::from_secs(3)).await;
    host.shutdown().await;
}

/// Cron fires are wall-clock times: a forward jump leaves them where they
/// are, and the fires it passed over are missed fires (here `last`: one
/// run at once, for the latest), while a delayed task's wait keeps its
/// length. A backward jump repeats no fire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_jump_leaves_cron_fires_at_their_wall_clock_times() {
    let dir = tempfile::tempdir().unwrap();
    let clock = SteppedClock::new();
    let host = Host::start_with_clock(host_config(dir.path()), clock.clone())
        .await
        .unwrap();
    let schedule = workhost::CronSchedule::new("0 * * * *", None, workhost::CatchUp::Last).unwrap();
    let cron = host
        .queue()
        .enqueue(WorkRequest::cron("echo", "hourly", schedule))
        .await
        .unwrap()
        .id;
    let first = task(&host, cron).await.next_run_at;
    assert_eq!(first % HOUR, 0, "on the hour");
    let (delayed, enqueued) = delayed_echo(&host, Duration::from_secs(3)).await;
    // Forward by three hours: the fire at `first` (and those after it,
    // up to now) were passed over: one run, standing for the latest.
    clock.step(3 * HOUR);
    let deadline = Instant::now() + Duration::from_secs(30);
    let t = loop {
        let t = task(&host, cron).await;
        if t.attempts.iter().any(|a| a.outcome.is_some()) && t.state == TaskState::Enqueued {
            break t;
        }
        assert!(Instant::now() < deadline, "the cron task never ran: {t:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(t.attempts.len(), 1, "one run for the missed fires: {:?}", t.attempts);
    let now = SystemClock.now() + 3 * HOUR;
    assert_eq!(
        t.next_run_at,
        (now / HOUR + 1) * HOUR,
        "the next fire on the new wall clock's hour"
    );
    still_waiting_a_second_later(&host, delayed).await;
    succeeds_after(&host, delayed, enqueued, Duration::from_secs(3)).await;
    // Back by two hours: the next fire stays at its wall-clock time.
    clock.step(-2 * HOUR);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = task(&host, cron).await;
    assert_eq!((after.next_run_at, after.attempts.len()), (t.next_run_at, 1));
    host.shutdown().await;
}
