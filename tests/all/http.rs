//! Outbound HTTP reaches only allow-listed origins; refusals are errors the
//! guest sees and lines in the run's log; per-run limits hold. The server is
//! one the test starts on 127.0.0.1.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use workhost::{
    AllowedOrigin, Data, Grants, HttpLimits, LogSource, ResolveFuture, Resolver, RunOutcome, RunRequest, RunResult,
    Value,
};
use workhost_tests::{TestServer, executor, guests};

async fn fetch(url: &str, allowed: &[&str], limits: HttpLimits, times: i64) -> RunOutcome {
    let handler = executor().load_file(guests::FETCH.as_ref()).unwrap();
    let mut r = RunRequest::new("fetch");
    r.input = Data::new().with("url", url).with("times", times);
    r.grants = Arc::new(Grants {
        allowed_hosts: allowed.iter().map(|o| AllowedOrigin::parse(o).unwrap()).collect(),
        http: limits,
        ..Grants::default()
    });
    handler.run(r).await
}

/// Answers lookups from a table (names under `.test`, which no real
/// resolver answers) and counts them.
#[derive(Default)]
struct TableResolver {
    answers: HashMap<String, Vec<IpAddr>>,
    lookups: AtomicUsize,
}

impl TableResolver {
    fn new(answers: &[(&str, &[&str])]) -> Arc<TableResolver> {
        Arc::new(TableResolver {
            answers: answers
                .iter()
                .map(|(name, ips)| (name.to_string(), ips.iter().map(|ip| ip.parse().unwrap()).collect()))
                .collect(),
            lookups: AtomicUsize::new(0),
        })
    }
}

impl Resolver for TableResolver {
    fn resolve(&self, host: &str) -> ResolveFuture {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let answer = self.answers.get(host).cloned();
        Box::pin(async move { answer.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such name")) })
    }
}

async fn fetch_resolving(url: &str, allowed: &str, resolver: Arc<TableResolver>) -> RunOutcome {
    let handler = executor().load_file(guests::FETCH.as_ref()).unwrap();
    let mut r = RunRequest::new("fetch");
    r.input = Data::new().with("url", url);
    r.grants = Arc::new(Grants {
        allowed_hosts: vec![AllowedOrigin::parse(allowed).unwrap()],
        ..Grants::default()
    });
    r.resolver = resolver;
    handler.run(r).await
}

fn host_log(outcome: &RunOutcome) -> String {
    outcome
        .log
        .iter()
        .filter(|l| l.source == LogSource::Host)
        .map(|l| l.message.clone())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn a_granted_origin_is_reached_and_its_answer_kept() {
    let server = TestServer::start();
    let origin = format!("http://127.0.0.1:{}", server.port);
    let handler = executor().load_file(guests::FETCH.as_ref()).unwrap();
    let mut r = RunRequest::new("fetch");
    r.input = Data::new().with("url", server.url("/"));
    r.grants = Arc::new(Grants {
        allowed_hosts: vec![AllowedOrigin::parse(&origin).unwrap()],
        ..Grants::default()
    });
    let kv = r.kv.clone();
    let outcome = handler.run(r).await;
    assert_eq!(
        outcome.result,
        RunResult::Succeeded(Data::new().with("status", 200i64).with("bytes", 11i64)),
        "{:?}",
        outcome.log
    );
    assert_eq!(kv.get("last_status").await.unwrap(), Some(b"200".to_vec()));
}

#[tokio::test]
async fn an_origin_off_the_list_is_refused_as_an_error_the_guest_sees_and_logged() {
    let server = TestServer::start();
    for allowed in [
        &[][..],
        &["https://127.0.0.1"],
        &["http://127.0.0.1:1"],
        &["http://example.com"],
    ] {
        let outcome = fetch(&server.url("/"), allowed, HttpLimits::default(), 1).await;
        assert_eq!(outcome.stop_reason(), None, "a refusal is not a trap");
        assert!(
            outcome.error().unwrap().contains("refused by the host"),
            "{:?}",
            outcome.result
        );
        assert!(
            host_log(&outcome).contains("not on the handler's allowed_hosts"),
            "{allowed:?}: {}",
            host_log(&outcome)
        );
    }
}

#[tokio::test]
async fn a_name_resolving_inside_is_refused_unless_listed_exactly() {
    let server = TestServer::start();
    let p = server.port;
    // A wildcard that matches a loopback address is not enough...
    let outcome = fetch(
        &server.url("/"),
        &[&format!("http://*.0.0.1:{p}")],
        HttpLimits::default(),
        1,
    )
    .await;
    assert!(
        host_log(&outcome).contains("resolves to the internal address 127.0.0.1"),
        "{}",
        host_log(&outcome)
    );
    assert!(outcome.error().is_some());
    // ...an exact listing is, by address or by name.
    let by_name = fetch(
        &format!("http://localhost:{p}/"),
        &[&format!("http://localhost:{p}")],
        HttpLimits::default(),
        1,
    )
    .await;
    assert_eq!(
        by_name.output().and_then(|o| o.get("status")),
        Some(&Value::S64(200)),
        "{:?}",
        by_name.log
    );
}

#[tokio::test]
async fn per_run_request_and_response_byte_limits_hold() {
    let server = TestServer::start();
    let origin = format!("http://127.0.0.1:{}", server.port);
    let limits = HttpLimits {
        max_requests: 2,
        ..HttpLimits::default()
    };
    let outcome = fetch(&server.url("/"), &[&origin], limits, 3).await;
    assert!(
        host_log(&outcome).contains("already made its 2 requests"),
        "{}",
        host_log(&outcome)
    );
    assert!(outcome.error().is_some());
    let ok = fetch(&server.url("/"), &[&origin], limits, 2).await;
    assert!(ok.output().is_some(), "{:?}", ok.result);

    let limits = HttpLimits {
        max_response_bytes: 4096,
        ..HttpLimits::default()
    };
    let big = fetch(&server.url("/big"), &[&origin], limits, 1).await;
    assert!(
        big.error()
            .unwrap_or_default()
            .contains("body size exceeds limit: 4096 bytes"),
        "{:?} {:?}",
        big.result,
        big.log
    );
}

#[test]
fn exec_allow_host_grants_an_origin() {
    let server = TestServer::start();
    let cache = tempfile::tempdir().unwrap();
    let origin = format!("http://127.0.0.1:{}", server.port);
    let url = format!("url={}", server.url("/"));
    let run = workhost_tests::workhost(
        &[
            "exec",
            guests::FETCH,
            "--input",
            &url,
            "--allow-host",
            &origin,
            "--json",
        ],
        cache.path(),
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["output"]["bytes"], 11);
    let refused = workhost_tests::workhost(&["exec", guests::FETCH, "--input", &url, "--json"], cache.path());
    assert_eq!(refused.code, 1);
    assert!(
        refused.json()["error"]
            .as_str()
            .unwrap()
            .contains("refused by the host")
    );
}

#[tokio::test]
async fn fetch_gets_the_configured_url_when_its_input_has_none() {
    let server = TestServer::start();
    let handler = executor().load_file(guests::FETCH.as_ref()).unwrap();
    let mut r = RunRequest::new("fetch");
    r.task.kind = workhost::TaskKind::Periodic;
    r.grants = Arc::new(Grants {
        allowed_hosts: vec![AllowedOrigin::parse(&format!("http://127.0.0.1:{}", server.port)).unwrap()],
        config: [("url".to_string(), workhost::ConfigValue::plain(server.url("/")))].into(),
        ..Grants::default()
    });
    let kv = r.kv.clone();
    let outcome = handler.run(r).await;
    assert_eq!(
        outcome.result,
        RunResult::Succeeded(Data::new().with("status", 200i64).with("bytes", 11i64)),
        "{:?}",
        outcome.log
    );
    assert_eq!(kv.get("last_bytes").await.unwrap(), Some(b"11".to_vec()));

    let outcome = handler.run(RunRequest::new("fetch")).await;
    let error = outcome.error().expect("no URL at all fails");
    assert!(error.contains("`url`") && error.contains("configuration"), "{error}");
}

#[tokio::test]
async fn the_address_checked_is_the_address_connected_to_with_no_second_lookup() {
    let server = TestServer::start();
    let p = server.port;
    // Only the run's resolver knows this name: a connection that looked it
    // up again (the system's resolver) would not find it.
    let resolver = TableResolver::new(&[("inside.test", &["127.0.0.1"])]);
    let outcome = fetch_resolving(
        &format!("http://inside.test:{p}/"),
        &format!("http://inside.test:{p}"),
        resolver.clone(),
    )
    .await;
    assert_eq!(
        outcome.result,
        RunResult::Succeeded(Data::new().with("status", 200i64).with("bytes", 11i64)),
        "{:?}",
        outcome.log
    );
    assert_eq!(resolver.lookups.load(Ordering::SeqCst), 1, "one lookup per request");
}

#[tokio::test]
async fn a_name_resolving_into_any_internal_range_is_refused() {
    let server = TestServer::start();
    let p = server.port;
    for (name, ips) in [
        ("cgnat.test", &["100.64.0.1"][..]),
        ("nat64.test", &["64:ff9b::7f00:1"]),
        ("sixtofour.test", &["2002:7f00:1::1"]),
        ("mapped.test", &["::ffff:169.254.169.254"]),
        ("multicast.test", &["224.0.0.1"]),
        ("benchmark.test", &["198.18.0.1"]),
        // Every address is checked, not only the first.
        ("mixed.test", &["93.184.216.34", "10.0.0.1"]),
    ] {
        let resolver = TableResolver::new(&[(name, ips)]);
        let outcome = fetch_resolving(
            &format!("http://{name}:{p}/"),
            &format!("http://*.test:{p}"),
            resolver.clone(),
        )
        .await;
        assert!(
            host_log(&outcome).contains("resolves to the internal address"),
            "{name}: {}",
            host_log(&outcome)
        );
        assert!(outcome.error().unwrap().contains("refused by the host"), "{name}");
        assert_eq!(resolver.lookups.load(Ordering::SeqCst), 1);
    }
}

/// HTTPS takes the same path as HTTP: the run's resolver is asked once, an
/// internal answer is refused, and the connection goes to the address the
/// gate checked (here a plain-HTTP server, so the TLS handshake fails;
/// a second lookup by the system's resolver would not know the name at
/// all and fail before connecting).
#[tokio::test]
async fn https_resolves_once_is_refused_inside_and_connects_to_the_checked_address() {
    let resolver = TableResolver::new(&[("inside.test", &["10.1.2.3"])]);
    let outcome = fetch_resolving("https://inside.test/", "https://*.test", resolver.clone()).await;
    assert!(
        host_log(&outcome).contains("resolves to the internal address 10.1.2.3"),
        "{}",
        host_log(&outcome)
    );
    assert!(outcome.error().unwrap().contains("refused by the host"));
    assert_eq!(resolver.lookups.load(Ordering::SeqCst), 1);

    let server = TestServer::start();
    let p = server.port;
    let resolver = TableResolver::new(&[("secure.test", &["127.0.0.1"])]);
    let outcome = fetch_resolving(
        &format!("https://secure.test:{p}/"),
        &format!("https://secure.test:{p}"),
        resolver.clone(),
    )
    .await;
    assert_eq!(resolver.lookups.load(Ordering::SeqCst), 1, "one lookup, no second one");
    let log: Vec<&str> = outcome.log.iter().map(|l| l.message.as_str()).collect();
    assert!(
        !host_log(&outcome).contains("resolves to the internal address"),
        "listed exactly, the loopback address is allowed: {log:?}"
    );
    // The handler met the plain-HTTP server's answer to its TLS hello: it
    // connected to the checked address (a new lookup of `secure.test` by
    // the system would have failed as a DNS error before any connection).
    assert_eq!(outcome.result, RunResult::Retry, "{log:?}");
    assert!(log.iter().any(|l| l.contains("TlsProtocolError")), "{log:?}");
}
