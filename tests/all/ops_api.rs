//! The operations listener through real HTTP: every resource, the errors,
//! auth, the event stream, the OpenAPI document and `/metrics` after a
//! known workload. The host and the listener run in this process; the
//! requests go over TCP.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use workhost::Host;
use workhost_http::{Access, HttpConfig, HttpServer, Token};
use workhost_tests::http_client::{Response, open_events, read_events, request};

const READ: &str = "read-token-0123456789";
const WRITE: &str = "write-token-0123456789";

/// A host with the examples as handlers, and its listener.
struct Ops {
    rt: tokio::runtime::Runtime,
    host: Option<Host>,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Ops {
    fn start(tokens: Vec<Token>) -> Ops {
        Ops::start_on(tokens, None)
    }

    /// On a PostgreSQL database instead of the embedded store.
    fn start_on(tokens: Vec<Token>, database: Option<String>) -> Ops {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let mut config = workhost_tests::host_config(dir.path());
        config.database = database;
        config.engine.cache_dir = Some(workhost_tests::root().join("target/test-compile-cache"));
        let host = rt.block_on(Host::start(config)).unwrap();
        let listen = HttpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tokens,
        };
        let server = rt.block_on(HttpServer::bind(host.handle(), listen)).unwrap();
        let addr = server.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        Ops {
            rt,
            host: Some(host),
            addr,
            stop: Some(stop),
            _dir: dir,
        }
    }

    fn open() -> Ops {
        Ops::start(Vec::new())
    }

    fn get(&self, path: &str) -> Response {
        request(self.addr, "GET", path, &[], "")
    }

    fn post(&self, path: &str, body: &str) -> Response {
        request(self.addr, "POST", path, &[("content-type", "application/json")], body)
    }

    fn delete(&self, path: &str) -> Response {
        request(self.addr, "DELETE", path, &[], "")
    }

    fn enqueue(&self, body: Value) -> i64 {
        let r = self.post("/api/v1/tasks", &body.to_string());
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()["id"].as_i64().unwrap()
    }

    /// Enqueues with a bearer token.
    fn enqueue_as(&self, token: &str, body: Value) -> i64 {
        let auth = format!("Bearer {token}");
        let r = request(
            self.addr,
            "POST",
            "/api/v1/tasks",
            &[("authorization", &auth)],
            &body.to_string(),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()["id"].as_i64().unwrap()
    }

    /// Waits until task `id` is in `state`; returns it.
    fn wait_state(&self, id: i64, state: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let t = self.get(&format!("/api/v1/tasks/{id}")).json();
            if t["state"] == state {
                return t;
            }
            assert!(Instant::now() < deadline, "task {id} never became {state}: {t}");
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Ops {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.host.take() {
            self.rt.block_on(h.shutdown());
        }
    }
}

#[test]
fn tasks_are_enqueued_listed_and_shown_with_their_attempts() {
    let ops = Ops::open();
    let r = ops.post(
        "/api/v1/tasks",
        r#"{"handler":"echo","task":"first","input":{"n":1},"tags":["batch"],"unique":"one"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_i64().unwrap();
    assert_eq!(r.json()["created"], true);
    assert_eq!(r.json()["task"]["handler"], "echo");
    let done = ops.wait_state(id, "succeeded");
    assert_eq!(done["output"], serde_json::json!({"n": 1}));
    let attempts = done["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["outcome"], "success");
    assert!(attempts[0]["fuel_consumed"].as_u64().unwrap() > 0);
    assert!(attempts[0]["peak_memory_bytes"].as_u64().unwrap() > 0);
    assert_eq!(done["chain"]["after"], serde_json::json!([]));

    // The detail is exactly what `inspect --json` prints, plus the chain.
    let info = ops
        .rt
        .block_on(ops.host.as_ref().unwrap().queue().get(id))
        .unwrap()
        .unwrap();
    let mut detail = done.clone();
    detail.as_object_mut().unwrap().remove("chain");
    assert_eq!(detail, info.to_json(true));

    // Newest first, paged by cursor.
    let more: Vec<i64> = (0..4)
        .map(|i| ops.enqueue(serde_json::json!({"handler":"echo","task":format!("t{i}"),"delay":"1h"})))
        .collect();
    let page = ops.get("/api/v1/tasks?limit=3").json();
    let ids: Vec<i64> = page["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![more[3], more[2], more[1]]);
    assert!(page["tasks"][0].get("attempts").is_none(), "lists carry no attempts");
    let cursor = page["next_cursor"].as_str().unwrap().to_string();
    let page2 = ops.get(&format!("/api/v1/tasks?limit=3&cursor={cursor}")).json();
    let ids2: Vec<i64> = page2["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids2, vec![more[0], id]);
    assert_eq!(page2["next_cursor"], Value::Null);

    // Filters: state, tag, handler, text search.
    let by_state = ops.get("/api/v1/tasks?state=SUCCEEDED").json();
    assert_eq!(by_state["tasks"].as_array().unwrap().len(), 1);
    let by_tag = ops.get("/api/v1/tasks?tag=batch").json();
    assert_eq!(by_tag["tasks"][0]["id"].as_i64(), Some(id));
    let by_handler = ops.get("/api/v1/tasks?handler=fail").json();
    assert_eq!(by_handler["tasks"].as_array().unwrap().len(), 0);
    let by_text = ops.get("/api/v1/tasks?q=T2").json();
    let found: Vec<&str> = by_text["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task"].as_str().unwrap())
        .collect();
    assert_eq!(found, vec!["t2"]);

    // KEEP: the same unique name again, while its task waits, is the same
    // task, 200. (A task that waits an hour: `first` may already have
    // succeeded, and a finished task's name is free again.)
    let waiting = ops.post(
        "/api/v1/tasks",
        r#"{"handler":"echo","task":"later","unique":"kept","delay":"1h"}"#,
    );
    assert_eq!(waiting.status, 201, "{}", waiting.body);
    let again = ops.post(
        "/api/v1/tasks",
        r#"{"handler":"echo","task":"later","unique":"kept","delay":"1h"}"#,
    );
    assert_eq!(
        (again.status, again.json()["id"].as_i64()),
        (200, waiting.json()["id"].as_i64()),
        "{}",
        again.body
    );
}

#[test]
fn bad_requests_name_the_problem_as_the_library_does() {
    let ops = Ops::open();
    let body = r#"{"handler":"echo","task":"t","priority":"high"}"#;
    let r = ops.post("/api/v1/tasks", body);
    assert_eq!((r.status, r.code()), (400, "invalid".into()), "{}", r.body);
    let expected = workhost::WorkRequest::from_json(body).unwrap_err().to_string();
    assert_eq!(r.json()["error"]["message"], expected);
    let r = ops.post("/api/v1/tasks", r#"{"handler":"nope","task":"t"}"#);
    assert_eq!((r.status, r.code()), (404, "not_found".into()), "{}", r.body);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("nope"));
    let r = ops.post("/api/v1/tasks", "not json");
    assert_eq!(r.status, 400);
    let r = ops.get("/api/v1/tasks?state=sleeping");
    assert_eq!(r.status, 400);
    assert!(r.body.contains("state"), "{}", r.body);
    let r = ops.get("/api/v1/tasks?limit=0");
    assert!(r.status == 400 && r.body.contains("limit"), "{}", r.body);
    let r = ops.get("/api/v1/tasks?cursor=abc");
    assert!(r.status == 400 && r.body.contains("cursor"), "{}", r.body);
    let r = ops.get("/api/v1/tasks?color=red");
    assert_eq!(r.status, 400, "{}", r.body);
    let r = ops.get("/api/v1/tasks/999");
    assert_eq!((r.status, r.code()), (404, "not_found".into()));
    let r = ops.get("/api/v1/nothing");
    assert_eq!(r.status, 404);
    let r = ops.post("/api/v1/tasks/bulk", r#"{"action":"explode"}"#);
    assert!(r.status == 400 && r.body.contains("action"), "{}", r.body);
    // A big input is refused with the library's message, and nothing is
    // created.
    let big = "x".repeat(20_000);
    let r = ops.post(
        "/api/v1/tasks",
        &serde_json::json!({"handler":"echo","task":"t","input":{"s":big}}).to_string(),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(ops.get("/api/v1/tasks").json()["tasks"].as_array().unwrap().len(), 0);
}

#[test]
fn cancel_retry_run_now_and_delete_act_on_one_task_and_refuse_the_wrong_state() {
    let ops = Ops::open();
    // Cancel a running task: its run stops.
    let spin = ops.enqueue(serde_json::json!({"handler":"spin","task":"s"}));
    ops.wait_state(spin, "running");
    let r = ops.post(&format!("/api/v1/tasks/{spin}/cancel"), "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["state"], "cancelled");
    let t = ops.wait_state(spin, "cancelled");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ops.host.as_ref().unwrap().running().is_empty() {
        assert!(Instant::now() < deadline, "the cancelled run did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(t["state"], "cancelled");

    // Retry a failed task: a fresh attempt runs (and fails again).
    let fail = ops.enqueue(serde_json::json!({"handler":"fail","task":"f","max_attempts":1}));
    ops.wait_state(fail, "failed");
    let r = ops.post(&format!("/api/v1/tasks/{fail}/retry"), "");
    assert_eq!(r.status, 200, "{}", r.body);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let t = ops.get(&format!("/api/v1/tasks/{fail}")).json();
        if t["state"] == "failed" && t["attempts"].as_array().unwrap().len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the retry did not run: {t}");
        std::thread::sleep(Duration::from_millis(25));
    }
    // Retrying a task that did not fail is a conflict naming its state.
    let ok = ops.enqueue(serde_json::json!({"handler":"echo","task":"ok"}));
    ops.wait_state(ok, "succeeded");
    let r = ops.post(&format!("/api/v1/tasks/{ok}/retry"), "");
    assert_eq!((r.status, r.code()), (409, "conflict".into()), "{}", r.body);
    assert!(
        r.json()["error"]["message"].as_str().unwrap().contains("SUCCEEDED"),
        "{}",
        r.body
    );

    // Run now: a task delayed by an hour runs at once.
    let later = ops.enqueue(serde_json::json!({"handler":"echo","task":"later","delay":"1h"}));
    let r = ops.post(&format!("/api/v1/tasks/{later}/run-now"), "");
    assert_eq!(r.status, 200, "{}", r.body);
    ops.wait_state(later, "succeeded");
    let r = ops.post(&format!("/api/v1/tasks/{later}/run-now"), "");
    assert_eq!(r.status, 409, "{}", r.body);

    // Delete: finished tasks only.
    let waiting = ops.enqueue(serde_json::json!({"handler":"echo","task":"w","delay":"1h"}));
    let r = ops.delete(&format!("/api/v1/tasks/{waiting}"));
    assert_eq!(r.status, 409, "{}", r.body);
    let r = ops.delete(&format!("/api/v1/tasks/{ok}"));
    assert_eq!(r.status, 204, "{}", r.body);

    // A task that failed because the work it runs after failed cannot be
    // retried alone: a conflict naming that work. Retrying the parent
    // brings it back.
    let parent = ops.enqueue(serde_json::json!({"handler":"fail","task":"p","max_attempts":1}));
    let child = ops.enqueue(serde_json::json!({"handler":"echo","task":"c","after":[parent]}));
    ops.wait_state(child, "failed");
    let r = ops.post(&format!("/api/v1/tasks/{child}/retry"), "");
    assert_eq!((r.status, r.code()), (409, "conflict".into()), "{}", r.body);
    assert!(r.body.contains(&format!("retry task {parent}")), "{}", r.body);
    assert_eq!(ops.post(&format!("/api/v1/tasks/{parent}/retry"), "").status, 200);
    assert_eq!(ops.get(&format!("/api/v1/tasks/{child}")).json()["state"], "blocked");
    assert_eq!(ops.get(&format!("/api/v1/tasks/{ok}")).status, 404);
    assert_eq!(ops.delete(&format!("/api/v1/tasks/{ok}")).status, 404);
}

#[test]
fn bulk_actions_apply_to_everything_a_filter_matches() {
    let ops = Ops::open();
    let tagged: Vec<i64> = (0..3)
        .map(|i| {
            ops.enqueue(serde_json::json!({"handler":"echo","task":format!("b{i}"),"delay":"1h","tags":["sweep"]}))
        })
        .collect();
    let other = ops.enqueue(serde_json::json!({"handler":"echo","task":"keep","delay":"1h"}));
    let r = ops.post("/api/v1/tasks/bulk", r#"{"action":"cancel","filter":{"tag":"sweep"}}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    let mut ids: Vec<i64> = r.json()["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, tagged);
    assert_eq!(r.json()["count"], 3);
    assert_eq!(ops.get(&format!("/api/v1/tasks/{other}")).json()["state"], "enqueued");
    // Retry every cancelled one, then delete what succeeded.
    let r = ops.post(
        "/api/v1/tasks/bulk",
        r#"{"action":"retry","filter":{"state":"cancelled"}}"#,
    );
    assert_eq!(r.json()["count"], 3, "{}", r.body);
    for id in &tagged {
        ops.wait_state(*id, "succeeded");
    }
    let r = ops.post(
        "/api/v1/tasks/bulk",
        r#"{"action":"delete","filter":{"state":"succeeded"}}"#,
    );
    assert_eq!(r.json()["count"], 3, "{}", r.body);
    let r = ops.post(
        "/api/v1/tasks/bulk",
        r#"{"action":"run-now","filter":{"handler":"echo"}}"#,
    );
    assert_eq!(r.json()["ids"], serde_json::json!([other]), "{}", r.body);
    ops.wait_state(other, "succeeded");
}

#[test]
fn handlers_pause_and_resume_and_the_other_resources_answer() {
    let ops = Ops::open();
    let r = ops.post("/api/v1/handlers/echo/pause", "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["paused"], true);
    let held = ops.enqueue(serde_json::json!({"handler":"echo","task":"held"}));
    let ran = ops.enqueue(serde_json::json!({"handler":"counter","task":"c"}));
    ops.wait_state(ran, "succeeded");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ops.get(&format!("/api/v1/tasks/{held}")).json()["state"], "enqueued");
    let handlers = ops.get("/api/v1/handlers").json();
    let echo = handlers
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "echo")
        .unwrap()
        .clone();
    assert_eq!(echo["paused"], true);
    assert_eq!(echo["counts"]["enqueued"], 1, "{echo}");
    assert_eq!(echo["concurrency"], 4);
    assert_eq!(ops.post("/api/v1/handlers/nope/pause", "").status, 404);
    assert_eq!(ops.post("/api/v1/handlers/echo/resume", "").json()["paused"], false);
    ops.wait_state(held, "succeeded");

    // The whole queue.
    assert_eq!(ops.post("/api/v1/queue/pause", "").json()["paused"], true);
    assert_eq!(ops.get("/api/v1/counts").json()["paused"], true);
    assert_eq!(ops.post("/api/v1/queue/resume", "").json()["paused"], false);

    let activity = ops.get("/api/v1/activity").json();
    let minutes = activity["minutes"].as_array().unwrap();
    assert_eq!(minutes.len(), workhost::ACTIVITY_MINUTES);
    let succeeded: u64 = minutes.iter().map(|m| m["succeeded"].as_u64().unwrap()).sum();
    assert_eq!(succeeded, 2, "{activity}");
    let counts = ops.get("/api/v1/counts").json();
    assert_eq!(counts["by_state"]["succeeded"], 2, "{counts}");
    assert_eq!(counts["by_handler"]["echo"]["succeeded"], 1, "{counts}");
    // Periodic work, newest first, a page at a time.
    let ticks: Vec<i64> = (1..=3)
        .map(|n| ops.enqueue(serde_json::json!({"handler":"echo","task":format!("tick-{n}"),"every":"1h"})))
        .collect();
    let first = ops.get("/api/v1/periodic?limit=2").json();
    let ids = |page: &serde_json::Value| -> Vec<i64> {
        page["periodic"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["task"]["id"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(ids(&first), vec![ticks[2], ticks[1]], "{first}");
    assert!(
        !first["periodic"][0]["next_runs"].as_array().unwrap().is_empty(),
        "{first}"
    );
    let cursor = first["next_cursor"].as_str().expect("a second page").to_string();
    let second = ops.get(&format!("/api/v1/periodic?limit=2&cursor={cursor}")).json();
    assert_eq!(ids(&second), vec![ticks[0]], "{second}");
    assert!(second["next_cursor"].is_null(), "{second}");
    assert_eq!(
        ids(&ops.get("/api/v1/periodic").json()),
        vec![ticks[2], ticks[1], ticks[0]]
    );
    // Finished periodic work (cancelled) is skipped, and a page is still
    // full when it sits between two unfinished tasks.
    assert_eq!(ops.post(&format!("/api/v1/tasks/{}/cancel", ticks[1]), "").status, 200);
    let page = ops.get("/api/v1/periodic?limit=2").json();
    assert_eq!(ids(&page), vec![ticks[2], ticks[0]], "{page}");
    assert!(page["next_cursor"].is_null(), "{page}");
    let page = ops.get("/api/v1/periodic?limit=1").json();
    assert_eq!(ids(&page), vec![ticks[2]], "{page}");
    let cursor = page["next_cursor"].as_str().expect("a second page").to_string();
    let page = ops.get(&format!("/api/v1/periodic?limit=1&cursor={cursor}")).json();
    assert_eq!(ids(&page), vec![ticks[0]], "{page}");
    for bad in ["limit=0", "limit=501", "cursor=abc"] {
        let r = ops.get(&format!("/api/v1/periodic?{bad}"));
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }
    let hosts = ops.get("/api/v1/hosts").json();
    assert_eq!(hosts[0]["alive"], true, "{hosts}");
    let device = ops.get("/api/v1/device").json();
    assert!(
        device["state"].is_object() && device["overrides"].is_object(),
        "{device}"
    );
    assert_eq!(ops.get("/healthz").status, 200);
}

#[test]
fn the_event_stream_reports_changes_coalesced() {
    let ops = Ops::open();
    let addr = ops.addr;
    let reader = std::thread::spawn(move || {
        read_events(addr, "/api/v1/events", &[], Duration::from_secs(20), |s| {
            s.matches("event: changed").count() >= 1 && s.contains("\"succeeded\":3")
        })
    });
    std::thread::sleep(Duration::from_millis(300));
    let ids: Vec<i64> = (0..3)
        .map(|i| ops.enqueue(serde_json::json!({"handler":"echo","task":format!("e{i}")})))
        .collect();
    let seen = reader.join().unwrap();
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(seen.contains("text/event-stream"), "{seen}");
    for id in ids {
        assert!(seen.contains(&id.to_string()), "task {id} not reported: {seen}");
    }
    // Coalesced: far fewer events than the 9 state changes.
    assert!(seen.matches("event: changed").count() <= 4, "{seen}");
}

#[test]
fn event_streams_are_capped_per_listener_and_a_closed_one_gives_its_place_back() {
    let ops = Ops::open();
    let mut open: Vec<_> = (0..workhost_http::MAX_STREAMS)
        .map(|_| open_events(ops.addr, "/api/v1/events").expect("a stream under the cap"))
        .collect();
    let refused = ops.get("/api/v1/events");
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.code(), "too_many_streams");
    assert!(refused.body.contains("64 event streams"), "{}", refused.body);
    // The rest of the API still answers.
    assert_eq!(ops.get("/api/v1/counts").status, 200);
    // A client that goes away gives its place back once the server notices,
    // at the stream's next write: a change makes every stream write.
    drop(open.pop());
    ops.enqueue(serde_json::json!({"handler":"echo","task":"wake"}));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match open_events(ops.addr, "/api/v1/events") {
            Ok(stream) => {
                open.push(stream);
                break;
            }
            Err(refused) => assert!(refused.contains("too_many_streams"), "{refused}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the closed stream's place never came back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(open);
}

#[test]
fn tokens_guard_the_api_and_sessions_need_the_csrf_token() {
    let ops = Ops::start(vec![
        Token {
            name: "viewer".into(),
            secret: READ.into(),
            access: Access::Read,
        },
        Token {
            name: "ops".into(),
            secret: WRITE.into(),
            access: Access::Write,
        },
    ]);
    let bearer = |t: &str| format!("Bearer {t}");
    let body = r#"{"handler":"echo","task":"t"}"#;
    // No token, a wrong token.
    let r = ops.get("/api/v1/tasks");
    assert_eq!((r.status, r.code()), (401, "unauthorized".into()));
    let r = request(
        ops.addr,
        "GET",
        "/api/v1/tasks",
        &[("authorization", &bearer("wrong-token-0123456789"))],
        "",
    );
    assert_eq!(r.status, 401);
    assert_eq!(ops.get("/metrics").status, 401);
    // Read-only: reads, never writes.
    let read = bearer(READ);
    let r = request(ops.addr, "GET", "/api/v1/tasks", &[("authorization", &read)], "");
    assert_eq!(r.status, 200, "{}", r.body);
    let r = request(ops.addr, "POST", "/api/v1/tasks", &[("authorization", &read)], body);
    assert_eq!((r.status, r.code()), (403, "forbidden".into()), "{}", r.body);
    assert_eq!(
        request(ops.addr, "GET", "/metrics", &[("authorization", &read)], "").status,
        200
    );
    // Read-write.
    let write = bearer(WRITE);
    let r = request(ops.addr, "POST", "/api/v1/tasks", &[("authorization", &write)], body);
    assert_eq!(r.status, 201, "{}", r.body);
    // The dashboard sends the browser to log in.
    let r = ops.get("/");
    assert_eq!((r.status, r.header("location")), (303, Some("/login")), "{r:?}");
    let r = request(
        ops.addr,
        "POST",
        "/login",
        &[("content-type", "application/x-www-form-urlencoded")],
        "token=nope",
    );
    assert_eq!(r.status, 401);
    let r = request(
        ops.addr,
        "POST",
        "/login",
        &[("content-type", "application/x-www-form-urlencoded")],
        &format!("token={WRITE}"),
    );
    assert_eq!(r.status, 303, "{r:?}");
    let set = r.header("set-cookie").unwrap();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
    let cookie = set.split(';').next().unwrap().to_string();
    let page = request(ops.addr, "GET", "/", &[("cookie", &cookie)], "");
    assert_eq!(page.status, 200);
    let session = request(ops.addr, "GET", "/api/v1/session", &[("cookie", &cookie)], "").json();
    assert_eq!(session["access"], "write");
    let csrf = session["csrf"].as_str().unwrap().to_string();
    assert!(page.body.contains(&csrf), "the page carries the CSRF token");
    let r = request(ops.addr, "POST", "/api/v1/tasks", &[("cookie", &cookie)], body);
    assert_eq!((r.status, r.code()), (403, "csrf".into()), "{}", r.body);
    let r = request(
        ops.addr,
        "POST",
        "/api/v1/tasks",
        &[("cookie", &cookie), ("x-csrf-token", &csrf)],
        body,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let r = request(
        ops.addr,
        "POST",
        "/api/v1/tasks",
        &[("cookie", &cookie), ("x-csrf-token", "nope")],
        body,
    );
    assert_eq!(r.code(), "csrf");
}

#[test]
fn an_open_listener_refuses_cross_site_posts_and_other_addresses_need_a_token() {
    let ops = Ops::open();
    let r = request(
        ops.addr,
        "POST",
        "/api/v1/queue/pause",
        &[("origin", "https://evil.example")],
        "",
    );
    assert_eq!((r.status, r.code()), (403, "csrf".into()), "{}", r.body);
    assert_eq!(ops.get("/api/v1/counts").json()["paused"], false);
    let handle = ops.host.as_ref().unwrap().handle();
    let open = HttpConfig::new("0.0.0.0:0".parse().unwrap());
    let err = ops.rt.block_on(HttpServer::bind(handle, open)).unwrap_err();
    assert!(err.to_string().contains("needs a token"), "{err}");
}

#[test]
fn the_openapi_document_lists_every_resource() {
    let ops = Ops::open();
    let doc = ops.get("/openapi.json").json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/v1/tasks",
        "/api/v1/tasks/{id}",
        "/api/v1/tasks/{id}/cancel",
        "/api/v1/tasks/{id}/retry",
        "/api/v1/tasks/{id}/run-now",
        "/api/v1/tasks/bulk",
        "/api/v1/handlers",
        "/api/v1/handlers/{name}/pause",
        "/api/v1/periodic",
        "/api/v1/hosts",
        "/api/v1/device",
        "/api/v1/counts",
        "/api/v1/activity",
        "/api/v1/queue/pause",
        "/api/v1/session",
    ] {
        assert!(paths.contains_key(p), "{p} missing from the OpenAPI document");
    }
    assert_eq!(
        doc,
        serde_json::from_str::<Value>(&workhost_http::openapi_json()).unwrap()
    );
}

#[test]
fn metrics_after_a_known_workload_have_the_exact_counts() {
    let ops = Ops::open();
    let ok: Vec<i64> = (0..5)
        .map(|i| ops.enqueue(serde_json::json!({"handler":"echo","task":format!("m{i}")})))
        .collect();
    let bad: Vec<i64> = (0..2)
        .map(|i| ops.enqueue(serde_json::json!({"handler":"fail","task":format!("f{i}"),"max_attempts":1})))
        .collect();
    for id in &ok {
        ops.wait_state(*id, "succeeded");
    }
    for id in &bad {
        ops.wait_state(*id, "failed");
    }
    let text = ops.get("/metrics").body;
    let value = |line: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(line).and_then(|rest| rest.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no {line} in\n{text}"))
            .parse()
            .unwrap()
    };
    assert_eq!(
        value("workhost_tasks_enqueued_total{handler=\"echo\",kind=\"one-off\"}"),
        5.0
    );
    assert_eq!(
        value("workhost_tasks_enqueued_total{handler=\"fail\",kind=\"one-off\"}"),
        2.0
    );
    assert_eq!(
        value("workhost_runs_started_total{handler=\"echo\",kind=\"one-off\"}"),
        5.0
    );
    assert_eq!(
        value("workhost_runs_finished_total{handler=\"echo\",kind=\"one-off\",outcome=\"success\",stop_reason=\"\"}"),
        5.0
    );
    assert_eq!(
        value("workhost_runs_finished_total{handler=\"fail\",kind=\"one-off\",outcome=\"failed\",stop_reason=\"\"}"),
        2.0
    );
    assert_eq!(value("workhost_tasks{handler=\"echo\",state=\"succeeded\"}"), 5.0);
    assert_eq!(value("workhost_tasks{handler=\"fail\",state=\"failed\"}"), 2.0);
    assert_eq!(value("workhost_run_duration_seconds_count{handler=\"echo\"}"), 5.0);
    assert_eq!(value("workhost_due_to_start_seconds_count{handler=\"fail\"}"), 2.0);
    assert_eq!(value("workhost_run_fuel_count{handler=\"echo\"}"), 5.0);
    assert_eq!(value("workhost_run_peak_memory_bytes_count{handler=\"echo\"}"), 5.0);
    assert_eq!(value("workhost_paused{handler=\"\"}"), 0.0);
    assert_eq!(value("workhost_concurrency_limit{handler=\"echo\"}"), 4.0);
    assert_eq!(value("workhost_store_writes_refused_total{op=\"finish\"}"), 0.0);
    // Labels are bounded: handler, kind, state, outcome, stop reason, op
    // and a bucket's bound; never a task.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let labels = line
            .split_once('{')
            .map_or("", |(_, rest)| rest.split_once('}').map_or("", |(l, _)| l));
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let name = pair.split_once('=').unwrap().0;
            assert!(
                ["handler", "kind", "state", "outcome", "stop_reason", "op", "le"].contains(&name),
                "label {name} in {line}"
            );
        }
    }
}

/// schemathesis (PyPI, pinned in scripts/requirements-tools.txt, installed
/// into .tools/venv by the setup recipe) fuzzes every operation of the
/// OpenAPI document, stateful sequences included: no server error, and
/// every response fits its schema.
#[test]
fn schemathesis_finds_no_server_error_and_no_response_off_schema() {
    let tool = workhost_tests::root().join(".tools/venv/bin/schemathesis");
    assert!(
        tool.exists(),
        "no {}: run `scripts/just setup` (its scripts/tools-install installs scripts/requirements-tools.txt)",
        tool.display()
    );
    let ops = Ops::start(vec![Token {
        name: "fuzz".into(),
        secret: WRITE.into(),
        access: Access::Write,
    }]);
    // Some work in every state, so generated ids and filters find some.
    let done = ops.enqueue_as(WRITE, serde_json::json!({"handler":"echo","task":"seed","tags":["t"]}));
    ops.enqueue_as(
        WRITE,
        serde_json::json!({"handler":"echo","task":"later","delay":"1h","unique":"u"}),
    );
    ops.enqueue_as(WRITE, serde_json::json!({"handler":"fail","task":"f","max_attempts":1}));
    let _ = done;
    let out = std::process::Command::new(&tool)
        .args([
            "run",
            &format!("http://{}/openapi.json", ops.addr),
            "--checks",
            "not_a_server_error,response_schema_conformance",
            "--max-examples",
            "25",
            "--generation-deterministic",
            "--request-timeout",
            "10",
            "--header",
            &format!("Authorization: Bearer {WRITE}"),
        ])
        .env("NO_COLOR", "1")
        // It keeps a cache of what it found in its working directory.
        .current_dir(ops._dir.path())
        .output()
        .expect("running schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schemathesis found failures:\n{stdout}");
    assert!(stdout.contains("passed"), "{stdout}");
}

#[test]
fn serve_refuses_a_listener_without_a_token_off_loopback_and_bad_http_tables() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = workhost_tests::write_manifest(dir.path());
    let m = manifest.to_str().unwrap();
    let cache = dir.path().join("cache");
    let r = workhost_tests::workhost_expecting_exit(&["serve", "--config", m, "--http", "0.0.0.0:0"], &cache);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("needs a token"), "{}", r.stderr);
    assert!(!dir.path().join("data").exists(), "a refused start changed nothing");

    let base = std::fs::read_to_string(&manifest).unwrap();
    for (table, key) in [
        ("[http]\nlisten = \"nowhere\"\n", "http.listen"),
        (
            "[http]\nlisten = \"127.0.0.1:0\"\n[[http.tokens]]\nname = \"a\"\ntoken = \"short\"\naccess = \"write\"\n",
            "http.tokens[0].token",
        ),
        (
            "[http]\nlisten = \"127.0.0.1:0\"\n[[http.tokens]]\nname = \"a\"\ntoken = \"0123456789abcdef0\"\naccess = \"admin\"\n",
            "http.tokens[0].access",
        ),
        (
            "[http]\nlisten = \"127.0.0.1:0\"\n[[http.tokens]]\nname = \"a\"\ntoken = { env = \"WORKHOST_TEST_UNSET_TOKEN\" }\naccess = \"read\"\n",
            "http.tokens[0].token",
        ),
        ("[http]\nlisten = \"127.0.0.1:0\"\nport = 1\n", "port"),
    ] {
        std::fs::write(&manifest, format!("{base}\n{table}")).unwrap();
        let r = workhost_tests::workhost_expecting_exit(&["serve", "--config", m], &cache);
        assert_ne!(r.code, 0, "{table}");
        assert!(r.stderr.contains(key), "{table}: {}", r.stderr);
    }
    assert!(!dir.path().join("data").exists());
}

/// The same API on the PostgreSQL store: filters, paging, actions, bulk,
/// a handler's pause and the counts.
#[test]
fn the_api_works_the_same_on_postgres() {
    let db = workhost_tests::pg::database();
    let ops = Ops::start_on(Vec::new(), Some(db.url().to_string()));
    let a = ops.enqueue(serde_json::json!({"handler":"echo","task":"pg-a","tags":["pg"]}));
    let b =
        ops.enqueue(serde_json::json!({"handler":"fail","task":"pg-b","max_attempts":1,"input":{"who":"100%_sure"}}));
    let c = ops.enqueue(serde_json::json!({"handler":"echo","task":"pg-c","delay":"1h","after":[a]}));
    ops.wait_state(a, "succeeded");
    ops.wait_state(b, "failed");
    let page = ops.get("/api/v1/tasks?limit=2").json();
    let ids: Vec<i64> = page["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![c, b]);
    let next = page["next_cursor"].as_str().unwrap().to_string();
    let rest = ops.get(&format!("/api/v1/tasks?limit=2&cursor={next}")).json();
    assert_eq!(rest["tasks"][0]["id"].as_i64(), Some(a));
    let found = ops.get("/api/v1/tasks?q=100%25_SURE").json();
    assert_eq!(found["tasks"].as_array().unwrap().len(), 1, "{found}");
    assert_eq!(found["tasks"][0]["id"].as_i64(), Some(b), "{found}");
    // `_` is itself, not any character.
    assert_eq!(
        ops.get("/api/v1/tasks?q=100%25xsure").json()["tasks"],
        serde_json::json!([])
    );
    let detail = ops.get(&format!("/api/v1/tasks/{a}")).json();
    assert_eq!(detail["chain"]["dependents"][0]["id"].as_i64(), Some(c), "{detail}");
    assert_eq!(ops.post(&format!("/api/v1/tasks/{a}/retry"), "").status, 409);
    let r = ops.post(
        "/api/v1/tasks/bulk",
        r#"{"action":"retry","filter":{"handler":"fail"}}"#,
    );
    assert_eq!(r.json()["ids"], serde_json::json!([b]), "{}", r.body);
    assert_eq!(ops.post("/api/v1/handlers/echo/pause", "").json()["paused"], true);
    assert_eq!(ops.post(&format!("/api/v1/tasks/{c}/run-now"), "").status, 200);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ops.get(&format!("/api/v1/tasks/{c}")).json()["state"], "enqueued");
    assert_eq!(ops.post("/api/v1/handlers/echo/resume", "").json()["paused"], false);
    ops.wait_state(c, "succeeded");
    let counts = ops.get("/api/v1/counts").json();
    assert_eq!(counts["by_handler"]["echo"]["succeeded"], 2, "{counts}");
    let metrics = ops.get("/metrics").body;
    assert!(
        metrics.contains("workhost_tasks{handler=\"echo\",state=\"succeeded\"} 2"),
        "{metrics}"
    );
    assert_eq!(ops.delete(&format!("/api/v1/tasks/{c}")).status, 204);
}
