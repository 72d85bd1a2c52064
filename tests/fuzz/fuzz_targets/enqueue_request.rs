//! Enqueue requests as `workhost enqueue` builds them: task input JSON and
//! every duration and count, one per line of the input. Never panics; a
//! request is either refused with an error, or stored with every value as
//! given (clamped only where documented) and a due time that did not wrap.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use workhost::units::{parse_duration, parse_size};
use workhost::{Data, EnqueueHooks, PeriodicFloor, SqliteStore, TaskKind, TaskStore, WorkRequest, millis};

/// One store for the whole fuzzing process, in a private temporary folder,
/// and the runtime its calls run on.
fn store() -> &'static (Arc<SqliteStore>, tokio::runtime::Runtime) {
    static STORE: OnceLock<(Arc<SqliteStore>, tokio::runtime::Runtime)> = OnceLock::new();
    STORE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("workhost-fuzz-enqueue-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        (SqliteStore::open(&dir).expect("opening the fuzz store"), rt)
    })
}

fuzz_target!(|text: &str| {
    let mut lines = text.split('\n');
    let mut next = || lines.next().unwrap_or("");
    let input = next();
    let (delay, every, flex, backoff) = (next(), next(), next(), next());
    let (attempts, timeout, fuel, memory, tags) = (next(), next(), next(), next(), next());

    let mut r = match parse_duration(every) {
        Ok(frequency) => {
            let mut r = WorkRequest::periodic("h", "t", frequency);
            if let Ok(f) = parse_duration(flex) {
                r.periodic = Some(workhost::Periodic { frequency, flex: f });
            }
            r
        }
        Err(_) => WorkRequest::one_off("h", "t"),
    };
    if !input.is_empty() {
        match Data::from_json(input) {
            Ok(d) => r.input = d,
            Err(_) => return,
        }
    }
    if let Ok(d) = parse_duration(delay) {
        r.initial_delay = d;
    }
    if let Ok(d) = parse_duration(backoff) {
        r.backoff_delay = d;
    }
    if let Ok(n) = attempts.parse::<u32>() {
        r.max_attempts = n;
    }
    if let Ok(d) = parse_duration(timeout) {
        r.budget.timeout = Some(d);
    }
    if let Ok(n) = fuel.parse::<u64>() {
        r.budget.fuel = Some(n);
    }
    if let Ok(n) = parse_size(memory) {
        r.budget.max_memory_bytes = Some(n);
    }
    if let Ok(n) = tags.parse::<u16>() {
        r.tags = (0..n).map(|i| format!("t{i}")).collect();
    }

    let floor = PeriodicFloor::default();
    let Ok((checked, _warnings)) = r.clone().checked(&floor) else {
        return;
    };
    let now = 1_800_000_000_000;
    let (store, rt) = store();
    let (enqueued, _) = rt
        .block_on(store.enqueue(checked.clone(), now, EnqueueHooks::default()))
        .expect("a checked request is stored");
    let t = rt
        .block_on(store.get(enqueued.id))
        .expect("reading it back")
        .expect("it is there");
    assert_eq!(t.input, checked.input);
    assert_eq!(t.max_attempts, checked.max_attempts);
    assert_eq!(t.backoff_delay, checked.backoff_delay);
    assert_eq!(t.budget, checked.budget);
    assert_eq!(t.periodic, checked.periodic);
    assert_eq!(t.tags.len(), checked.tags.len());
    assert!(t.next_run_at >= now, "the due time wrapped: {} < {now}", t.next_run_at);
    let delay = millis(checked.initial_delay);
    match t.kind {
        TaskKind::Periodic => assert!(t.next_run_at <= now + delay + millis(checked.periodic.unwrap().frequency)),
        _ => assert_eq!(t.next_run_at, now + delay),
    }
});
