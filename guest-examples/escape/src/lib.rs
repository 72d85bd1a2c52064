//! `escape`: tries every forbidden thing and reports what each attempt got,
//! `denied: ...` or `ALLOWED: ...` (see README.md).
use std::fs;
use std::io::Write;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{Fields, Method, OutgoingRequest, Scheme};
use workhost_guest::{Handler, Input, Outcome, Output, config, kv};

struct Escape;

fn denied(detail: impl std::fmt::Display) -> String {
    format!("denied: {detail}")
}

fn allowed(detail: impl std::fmt::Display) -> String {
    format!("ALLOWED: {detail}")
}

/// An io result as a report: an error is a denial naming its kind.
fn io<T>(r: std::io::Result<T>, got: impl FnOnce(T) -> String) -> String {
    match r {
        Ok(v) => allowed(got(v)),
        Err(e) => denied(error(&e)),
    }
}

/// An io error's kind, and its message where the kind says little.
fn error(e: &std::io::Error) -> String {
    let kind = format!("{:?}", e.kind());
    if kind == "Uncategorized" || kind == "Other" {
        e.to_string()
    } else {
        kind
    }
}

/// Sends a GET to `url` and reports whether the host let it out.
fn http(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "bad url".into();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_method(&Method::Get);
    let _ = request.set_scheme(Some(&if scheme == "https" { Scheme::Https } else { Scheme::Http }));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some(if path.is_empty() { "/" } else { path }));
    let pending = match outgoing_handler::handle(request, None) {
        Ok(p) => p,
        Err(e) => return denied(format!("{e:?}")),
    };
    pending.subscribe().block();
    match pending.get() {
        Some(Ok(Ok(response))) => allowed(format!("status {}", response.status())),
        Some(Ok(Err(e))) => denied(format!("{e:?}")),
        other => denied(format!("{other:?}")),
    }
}

/// Writes `n` bytes to `/data/big` in 1 MiB pieces; reports the first error.
fn fill(n: u64) -> String {
    let result = (|| {
        let mut f = fs::File::create("/data/big")?;
        let chunk = vec![7u8; 1 << 20];
        let mut left = n;
        while left > 0 {
            let take = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..take])?;
            left -= take as u64;
        }
        f.flush()
    })();
    let kept = fs::metadata("/data/big").map(|m| m.len()).unwrap_or(0);
    let _ = fs::remove_file("/data/big");
    match result {
        Ok(()) => allowed(format!("wrote {n} bytes")),
        Err(e) => denied(format!("{} after {kept} bytes", error(&e))),
    }
}

/// Writes `n` bytes to `/data/big2` with one wasi:filesystem `write` call
/// (not a stream), and removes it.
fn write_at_once(n: u64) -> String {
    use wasip2::filesystem::types::{DescriptorFlags, OpenFlags, PathFlags};
    let Some((dir, _)) = wasip2::filesystem::preopens::get_directories()
        .into_iter()
        .find(|(_, path)| path == "/data")
    else {
        return denied("no /data preopen");
    };
    let file = match dir.open_at(PathFlags::empty(), "big2", OpenFlags::CREATE, DescriptorFlags::WRITE) {
        Ok(f) => f,
        Err(e) => return denied(format!("{e:?} (opening)")),
    };
    let result = file.write(&vec![7u8; n as usize], 0);
    drop(file);
    let _ = dir.unlink_file_at("big2");
    match result {
        Ok(written) => allowed(format!("wrote {written} bytes")),
        Err(e) => denied(format!("error code {}", e.name())),
    }
}

/// Creates the symlink `/data/<name>` pointing at `target` through
/// wasi:filesystem (std's way to do it is unstable).
fn symlink_in_data(target: &str, name: &str) -> Result<(), String> {
    let (dir, _) = wasip2::filesystem::preopens::get_directories()
        .into_iter()
        .find(|(_, path)| path == "/data")
        .ok_or("no /data preopen")?;
    dir.symlink_at(target, name).map_err(|e| format!("{e:?}"))
}

impl Handler for Escape {
    fn execute(_name: &str, input: Input) -> Result<Outcome, String> {
        let url = input.str("denied_url").unwrap_or("https://example.com/");
        let addr = input.str("socket_addr").unwrap_or("127.0.0.1:80");
        let other_key = input.str("other_key").unwrap_or("count");
        let quota_bytes = input.i64("quota_bytes").unwrap_or(200 << 20) as u64;

        let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
        let environment = if vars.is_empty() {
            denied("empty")
        } else {
            allowed(vars.join(","))
        };
        let other_kv = match kv::get(other_key) {
            Ok(None) => denied("not found"),
            Ok(Some(v)) => allowed(format!("{} bytes", v.len())),
            Err(e) => denied(format!("{e:?}")),
        };
        let symlink_out = match symlink_in_data("../../../../../../../../etc", "out") {
            Err(e) => denied(format!("{e} (creating the link)")),
            Ok(()) => {
                let r = io(fs::read_to_string("/data/out/passwd"), |s| format!("{} bytes", s.len()));
                let _ = fs::remove_file("/data/out");
                r
            }
        };
        let configured = config::keys();
        let config = if configured.is_empty() {
            denied("none")
        } else {
            allowed(configured.join(","))
        };
        Output::new()
            .with("http_off_list", http(url))
            .with(
                "host_file",
                io(fs::read_to_string("/etc/passwd"), |s| format!("{} bytes", s.len())),
            )
            .with("environment", environment)
            .with("socket", io(std::net::TcpStream::connect(addr), |_| "connected".into()))
            .with(
                "dns",
                io(std::net::ToSocketAddrs::to_socket_addrs(&("localhost", 80)), |a| {
                    format!("{} addresses", a.count())
                }),
            )
            .with("other_kv", other_kv)
            .with("quota", fill(quota_bytes))
            .with("quota_one_write", write_at_once(quota_bytes))
            .with(
                "parent_dir",
                io(fs::write("/data/../outside.txt", "x"), |()| "written".into()),
            )
            .with("symlink_out", symlink_out)
            .with("config", config)
            .success()
    }
}

workhost_guest::export_handler!(Escape);
