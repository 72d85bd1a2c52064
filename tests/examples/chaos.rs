//! The crash harness for longer runs: `scripts/just chaos SEED KILLS
//! [TASKS_PER_ROUND] [STORE]` (defaults 1, 20, 20, sqlite; STORE
//! `postgres` runs it on a database of the tests' PostgreSQL server, or of
//! `WORKHOST_TEST_DATABASE_URL`). Prints what happened; panics naming the
//! first broken promise (see `workhost_tests::chaos::run`).

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let postgres = match args.get(3).map(String::as_str) {
        None | Some("sqlite") => false,
        Some("postgres") => true,
        Some(other) => panic!("{other:?} is not a store; STORE is sqlite or postgres"),
    };
    args.truncate(3);
    let db = postgres.then(workhost_tests::pg::database);
    let args: Vec<u64> = args
        .iter()
        .map(|a| {
            a.parse()
                .unwrap_or_else(|_| panic!("{a:?} is not a number; usage: chaos SEED KILLS [TASKS_PER_ROUND]"))
        })
        .collect();
    let config = workhost_tests::chaos::ChaosConfig {
        seed: args.first().copied().unwrap_or(1),
        kills: args.get(1).copied().unwrap_or(20) as usize,
        tasks_per_round: args.get(2).copied().unwrap_or(20) as usize,
        database: db.as_ref().map(|d| d.url().to_string()),
    };
    println!("chaos: {config:?}");
    let r = workhost_tests::chaos::run(config);
    println!(
        "chaos: {} tasks accepted, {} one-off succeeded, {} kills; {} attempts cut by a kill, {} runs repeated (at-least-once), periodic ran {} times; every check passed in {:.1} s",
        r.accepted,
        r.succeeded,
        r.kills,
        r.runs_cut_by_kills,
        r.repeated_runs,
        r.periodic_runs,
        r.elapsed.as_secs_f64()
    );
}
