//! The OTLP exporter (`workhost-otlp`, the CLI's `otlp` feature): spans of
//! a host in this process reach a collector as OTLP/HTTP protobuf.
//!
//! The only test in this binary that installs a global `tracing`
//! subscriber (a process can have one); keep it that way.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use workhost::{Host, TaskState, WorkRequest};
use workhost_tests::host_config;

/// One request the capture server received.
#[derive(Debug)]
struct Captured {
    /// `POST /v1/traces`.
    request_line: String,
    /// Header names lowercased, values trimmed.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// A stand-in collector: answers every request 200 with an empty protobuf
/// body (an empty `ExportTraceServiceResponse`) and keeps what it received.
fn capture_server() -> (String, Arc<Mutex<Vec<Captured>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let keep = received.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let keep = keep.clone();
            std::thread::spawn(move || serve_connection(conn, &keep));
        }
    });
    (format!("http://{addr}"), received)
}

/// Reads requests off one (keep-alive) connection until it closes.
fn serve_connection(conn: TcpStream, keep: &Mutex<Vec<Captured>>) {
    let mut writer = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("a header line");
            headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
        }
        let length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map_or(0, |(_, v)| v.parse::<usize>().unwrap());
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        keep.lock().unwrap().push(Captured {
            request_line: request_line.trim_end().to_string(),
            headers,
            body,
        });
        let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// How often `needle` occurs in `haystack`.
fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).filter(|w| *w == needle).count()
}

/// The protobuf bytes of a span's `name` (field 5, a string).
fn span_name(name: &str) -> Vec<u8> {
    let mut bytes = vec![0x2a, u8::try_from(name.len()).unwrap()];
    bytes.extend_from_slice(name.as_bytes());
    bytes
}

/// The protobuf bytes of the attribute `task = id`: a `KeyValue` with key
/// `task` (field 1) and an `AnyValue` (field 2) holding `int_value` (field
/// 3, a varint).
fn task_attribute(id: i64) -> Vec<u8> {
    let mut varint = Vec::new();
    let mut v = u64::try_from(id).unwrap();
    loop {
        let byte = u8::try_from(v & 0x7f).unwrap();
        v >>= 7;
        if v == 0 {
            varint.push(byte);
            break;
        }
        varint.push(byte | 0x80);
    }
    let mut bytes = vec![0x0a, 4];
    bytes.extend_from_slice(b"task");
    bytes.extend_from_slice(&[0x12, u8::try_from(1 + varint.len()).unwrap(), 0x18]);
    bytes.extend_from_slice(&varint);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_enqueues_and_runs_reach_the_collector_as_otlp_protobuf() {
    let (endpoint, received) = capture_server();
    let guard = workhost_otlp::install(&endpoint, "workhost-test", "info").unwrap();

    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(host_config(dir.path())).await.unwrap();
    let queue = host.queue().clone();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            queue
                .enqueue(WorkRequest::one_off("echo", format!("otlp-{i}")))
                .await
                .unwrap()
                .id,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for &id in &ids {
        loop {
            let t = queue.get(id).await.unwrap().unwrap();
            if t.state == TaskState::Succeeded {
                break;
            }
            assert!(Instant::now() < deadline, "task {id} did not succeed: {t:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    host.shutdown().await;
    // Exports what is still batched (the batch delay is seconds).
    drop(guard);

    let received = received.lock().unwrap();
    assert!(!received.is_empty(), "the collector received nothing");
    for r in received.iter() {
        assert_eq!(r.request_line, "POST /v1/traces HTTP/1.1");
        assert!(
            r.headers
                .iter()
                .any(|(n, v)| n == "content-type" && v == "application/x-protobuf"),
            "{:?}",
            r.headers
        );
    }
    let body: Vec<u8> = received.iter().flat_map(|r| r.body.iter().copied()).collect();
    assert!(count(&body, b"workhost-test") >= 1, "service.name is missing");
    assert_eq!(count(&body, &span_name("enqueue")), 3, "one enqueue span per task");
    assert_eq!(count(&body, &span_name("run")), 3, "one run span per task");
    // `claim` is a debug span; the filter is `info`.
    assert_eq!(count(&body, &span_name("claim")), 0);
    for id in ids {
        assert_eq!(
            count(&body, &task_attribute(id)),
            2,
            "task {id}: the enqueue and run spans each carry `task`"
        );
    }
}
