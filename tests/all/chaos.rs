//! The crash harness, briefly: SIGKILL at random moments, restart, and
//! every promise of SPEC section 6 checked (`workhost_tests::chaos::run`).
//! `scripts/just chaos SEED KILLS` runs it longer.

#[test]
fn a_daemon_killed_at_random_moments_loses_nothing_and_repeats_only_runs_in_flight() {
    let report = workhost_tests::chaos::run(workhost_tests::chaos::ChaosConfig {
        seed: 7,
        kills: 4,
        tasks_per_round: 8,
        database: None,
    });
    println!("{report:?}");
    assert_eq!(report.kills, 4);
    // All but the periodic task and the pending unique one.
    assert_eq!(report.succeeded, report.accepted - 2, "every one-off task succeeded");
}

#[test]
fn a_host_on_postgresql_killed_at_random_moments_loses_nothing_and_repeats_only_runs_in_flight() {
    let db = workhost_tests::pg::database();
    let report = workhost_tests::chaos::run(workhost_tests::chaos::ChaosConfig {
        seed: 11,
        kills: 4,
        tasks_per_round: 8,
        database: Some(db.url().to_string()),
    });
    println!("{report:?}");
    assert_eq!(report.kills, 4);
    assert_eq!(report.succeeded, report.accepted - 2, "every one-off task succeeded");
}
