//! One table test of every example in every language: the Rust, Python,
//! JavaScript and C builds of `echo`, `counter`, `fetch`, `fail`, `spin` and
//! `clock` behave the same, through the same library surface; and the
//! examples in some languages only work: `slug` (a third-party package, in
//! Python and JavaScript) and `fetch-async` (JavaScript).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use workhost::{
    AllowedOrigin, ConfigValue, Data, EngineConfig, Executor, Grants, Handler, Kv, RunOutcome, RunRequest, RunResult,
    StopReason, Value,
};
use workhost_tests::{TestServer, guests, root};

/// An executor on the shared compile cache: the Python and JavaScript
/// components take seconds each to compile, and the cache pays that once.
fn cached_executor() -> Executor {
    Executor::new(EngineConfig {
        cache_dir: Some(root().join("target/test-compile-cache")),
        ..EngineConfig::default()
    })
    .expect("building the engine")
}

/// Every build of `example`: Rust first, then each other language.
fn builds(example: &str) -> Vec<(&'static str, String)> {
    let rust = match example {
        "echo" => guests::ECHO,
        "counter" => guests::COUNTER,
        "fetch" => guests::FETCH,
        "fail" => guests::FAIL,
        "spin" => guests::SPIN,
        "clock" => guests::CLOCK,
        other => panic!("no Rust build of {other}"),
    };
    let mut all = vec![("rust", rust.to_string())];
    all.extend(
        guests::LANGUAGE_EXAMPLES
            .iter()
            .filter(|(e, _, _)| *e == example)
            .map(|(_, lang, path)| (*lang, path.to_string())),
    );
    assert_eq!(all.len(), 4, "{example}: rust, py, js and c");
    all
}

fn load(executor: &Executor, lang: &str, path: &str) -> Handler {
    executor
        .load_file(path.as_ref())
        .unwrap_or_else(|e| panic!("{lang}: loading {path}: {e}"))
}

async fn run(handler: &Handler, setup: impl FnOnce(&mut RunRequest)) -> RunOutcome {
    let mut r = RunRequest::new("table");
    setup(&mut r);
    handler.run(r).await
}

#[tokio::test]
async fn every_example_behaves_the_same_in_every_language() {
    let executor = cached_executor();
    let server = TestServer::start();
    let origin = AllowedOrigin::parse(&format!("http://127.0.0.1:{}", server.port)).unwrap();

    for (lang, path) in builds("echo") {
        let h = load(&executor, lang, &path);
        let input = Data::new()
            .with("n", 42i64)
            .with("big", i64::MAX)
            .with("s", "hé")
            .with("f", 1.5)
            .with("b", true)
            .with("l", Value::StringList(vec!["a".into(), "b".into()]))
            .with("nums", Value::S64List(vec![1, -2]))
            .with("floats", Value::F64List(vec![0.5, -2.25]))
            .with("flags", Value::BoolList(vec![true, false]));
        let outcome = run(&h, |r| r.input = input.clone()).await;
        assert_eq!(
            outcome.result,
            RunResult::Succeeded(input),
            "echo-{lang}: {:?}",
            outcome.log
        );
    }

    for (lang, path) in builds("counter") {
        let h = load(&executor, lang, &path);
        let kv = Kv::in_memory("counter");
        for expected in [1i64, 2] {
            let outcome = run(&h, |r| r.kv = kv.clone()).await;
            assert_eq!(
                outcome.result,
                RunResult::Succeeded(Data::new().with("total_executions", expected)),
                "counter-{lang}: {:?}",
                outcome.log
            );
            assert!(
                outcome
                    .log
                    .iter()
                    .any(|l| l.message == format!("total executions: {expected}")),
                "counter-{lang} logs the total: {:?}",
                outcome.log
            );
        }
        assert_eq!(
            kv.get("totalExecutions").await.unwrap(),
            Some(b"2".to_vec()),
            "counter-{lang}"
        );
    }

    for (lang, path) in builds("fetch") {
        let h = load(&executor, lang, &path);
        let kv = Kv::in_memory("fetch");
        let granted = Arc::new(Grants {
            allowed_hosts: vec![origin.clone()],
            ..Grants::default()
        });
        let outcome = run(&h, |r| {
            r.input = Data::new().with("url", server.url("/"));
            r.grants = granted.clone();
            r.kv = kv.clone();
        })
        .await;
        let ok = RunResult::Succeeded(Data::new().with("status", 200i64).with("bytes", 11i64));
        assert_eq!(outcome.result, ok, "fetch-{lang}: {:?}", outcome.log);
        assert_eq!(
            kv.get("last_status").await.unwrap(),
            Some(b"200".to_vec()),
            "fetch-{lang}"
        );
        assert_eq!(
            kv.get("last_bytes").await.unwrap(),
            Some(b"11".to_vec()),
            "fetch-{lang}"
        );

        // The URL from configuration, as periodic work has it.
        let outcome = run(&h, |r| {
            r.grants = Arc::new(Grants {
                allowed_hosts: vec![origin.clone()],
                config: [("url".to_string(), ConfigValue::plain(server.url("/")))].into(),
                ..Grants::default()
            });
        })
        .await;
        assert_eq!(
            outcome.result, ok,
            "fetch-{lang} with a configured URL: {:?}",
            outcome.log
        );

        // Off the allow-list: refused, a failure naming the URL.
        let outcome = run(&h, |r| r.input = Data::new().with("url", server.url("/"))).await;
        let error = outcome
            .error()
            .unwrap_or_else(|| panic!("fetch-{lang}: {:?}", outcome.result));
        assert_eq!(
            error,
            format!("request to {} refused by the host", server.url("/")),
            "fetch-{lang}"
        );

        // A network error: retry.
        let outcome = run(&h, |r| {
            r.input = Data::new().with("url", "http://127.0.0.1:1/");
            r.grants = Arc::new(Grants {
                allowed_hosts: vec![AllowedOrigin::parse("http://127.0.0.1:1").unwrap()],
                ..Grants::default()
            });
        })
        .await;
        assert_eq!(outcome.result, RunResult::Retry, "fetch-{lang}: {:?}", outcome.log);
    }

    for (lang, path) in builds("fail") {
        let h = load(&executor, lang, &path);
        let outcome = run(&h, |r| r.input = Data::new().with("message", "disk on fire")).await;
        assert_eq!(
            outcome.error(),
            Some("disk on fire"),
            "fail-{lang}: {:?}",
            outcome.result
        );
        let outcome = run(&h, |_| {}).await;
        assert_eq!(outcome.error(), Some("fail handler failed on purpose"), "fail-{lang}");
    }

    for (lang, path) in builds("spin") {
        let h = load(&executor, lang, &path);
        let outcome = run(&h, |r| r.budget.timeout = Duration::from_millis(300)).await;
        assert!(
            matches!(
                outcome.result,
                RunResult::Stopped(StopReason::Timeout | StopReason::FuelExhausted)
            ),
            "spin-{lang}: {:?}",
            outcome.result
        );
    }
}

fn now_ms() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

/// `ms` since the Unix epoch as its UTC date, `YYYY-MM-DD`.
fn utc_date(ms: i64) -> String {
    workhost::units::format_rfc3339(ms)[..10].to_string()
}

/// Each language's `clock` runs twice: each run reads the host's real wall
/// clock (within a second of it), a monotonic clock that moves forward, and
/// randomness that differs from the other run's. Nothing is frozen into the
/// component when it is built.
#[tokio::test]
async fn every_language_reads_the_real_clocks_and_fresh_randomness() {
    let executor = cached_executor();
    for (lang, path) in builds("clock") {
        let h = load(&executor, lang, &path);
        let mut runs = Vec::new();
        for _ in 0..2 {
            let before = now_ms();
            let outcome = run(&h, |_| {}).await;
            let after = now_ms();
            let out = outcome
                .output()
                .unwrap_or_else(|| panic!("clock-{lang}: {:?} {:?}", outcome.result, outcome.log))
                .clone();
            let Some(&Value::S64(wall)) = out.get("wall_ms") else {
                panic!("clock-{lang}: wall_ms: {out:?}")
            };
            assert!(
                (before - 1000..=after + 1000).contains(&wall),
                "clock-{lang}: wall clock {wall} ms is not the host's ({before}..={after})"
            );
            let Some(Value::String(utc)) = out.get("utc") else {
                panic!("clock-{lang}: utc: {out:?}")
            };
            assert!(
                utc.starts_with(&utc_date(wall)) || utc.starts_with(&utc_date(wall - 1000)),
                "clock-{lang}: {utc:?} is not the date of {wall}"
            );
            assert!(utc.ends_with('Z') && utc.len() >= 20, "clock-{lang}: {utc:?}");
            let Some(Value::F64List(mono)) = out.get("mono_ms") else {
                panic!("clock-{lang}: mono_ms: {out:?}")
            };
            assert!(
                mono.len() == 2 && mono[1] > mono[0] && mono[1] - mono[0] < 1000.0,
                "clock-{lang}: the monotonic clock does not move forward: {mono:?}"
            );
            let Some(&Value::F64(random)) = out.get("random") else {
                panic!("clock-{lang}: random: {out:?}")
            };
            assert!((0.0..1.0).contains(&random), "clock-{lang}: random {random}");
            let Some(Value::S64List(bytes)) = out.get("bytes") else {
                panic!("clock-{lang}: bytes: {out:?}")
            };
            assert!(
                bytes.len() == 16 && bytes.iter().all(|b| (0..=255).contains(b)),
                "clock-{lang}: bytes {bytes:?}"
            );
            if lang == "py" || lang == "js" {
                let Some(Value::String(uuid)) = out.get("uuid") else {
                    panic!("clock-{lang}: uuid: {out:?}")
                };
                assert!(
                    uuid.len() == 36 && uuid.as_bytes()[14] == b'4',
                    "clock-{lang}: {uuid:?} is not a version 4 UUID"
                );
            }
            runs.push(out);
        }
        for key in ["random", "bytes", "uuid"] {
            if let Some(first) = runs[0].get(key) {
                assert_ne!(
                    Some(first),
                    runs[1].get(key),
                    "clock-{lang}: two runs gave the same {key}: randomness is frozen"
                );
            }
        }
    }
}

/// The examples that import a third-party package: Python's from PyPI
/// (`guest-examples/py/requirements.txt`), JavaScript's from npm
/// (`guest-examples/js/package-lock.json`, bundled by esbuild).
#[tokio::test]
async fn handlers_use_third_party_packages() {
    let executor = cached_executor();
    let slugs: Vec<_> = guests::SOME_LANGUAGES.iter().filter(|(e, _, _)| *e == "slug").collect();
    assert_eq!(slugs.len(), 2, "slug in py and js");
    for (_, lang, path) in slugs {
        let h = load(&executor, lang, path);
        let outcome = run(&h, |r| r.input = Data::new().with("title", "Héllo, Wörld! 2026")).await;
        assert_eq!(
            outcome.result,
            RunResult::Succeeded(Data::new().with("slug", "hello-world-2026")),
            "slug-{lang}: {:?}",
            outcome.log
        );
        let outcome = run(&h, |_| {}).await;
        assert_eq!(
            outcome.error(),
            Some("give the input string `title`"),
            "slug-{lang}: {:?}",
            outcome.result
        );
    }
}

/// An async JavaScript handler: componentize-js runs the event loop until
/// its Promise settles, so it can await timers and the standard fetch().
#[tokio::test]
async fn an_async_javascript_handler_awaits_fetch() {
    let executor = cached_executor();
    let (_, _, path) = guests::SOME_LANGUAGES
        .iter()
        .find(|(e, l, _)| *e == "fetch-async" && *l == "js")
        .expect("fetch-async in js");
    let h = load(&executor, "js", path);
    let server = TestServer::start();
    let granted = Arc::new(Grants {
        allowed_hosts: vec![AllowedOrigin::parse(&format!("http://127.0.0.1:{}", server.port)).unwrap()],
        ..Grants::default()
    });
    let outcome = run(&h, |r| {
        r.input = Data::new().with("url", server.url("/"));
        r.grants = granted.clone();
    })
    .await;
    assert_eq!(
        outcome.result,
        RunResult::Succeeded(Data::new().with("status", 200i64).with("bytes", 11i64)),
        "fetch-async-js: {:?}",
        outcome.log
    );
    // Off the allow-list fetch() sees a network error: retry.
    let outcome = run(&h, |r| r.input = Data::new().with("url", server.url("/"))).await;
    assert_eq!(outcome.result, RunResult::Retry, "fetch-async-js: {:?}", outcome.log);
    // A rejected Promise fails the task with its message.
    let outcome = run(&h, |_| {}).await;
    assert_eq!(outcome.error(), Some("give the input string `url`"), "fetch-async-js");
}
