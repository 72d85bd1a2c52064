//! `fetch`: an HTTP GET through wasi:http of the input string `url`, or else
//! of the configuration value `url` (the seed's "fetch remote data on a
//! regular basis", as periodic work with the URL in the manifest). The status and body
//! length go into kv and into the output. A refused request fails the
//! task; a network error asks for a retry.
use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, Method, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;
use workhost_guest::{Handler, Input, Outcome, Output, config, kv, log};

struct Fetch;

impl Handler for Fetch {
    fn execute(_name: &str, input: Input) -> Result<Outcome, String> {
        let configured = config::get("url");
        let url = input
            .str("url")
            .or(configured.as_deref())
            .ok_or("no URL: give the input string `url` or the configuration value `url`")?;
        let times = input.i64("times").unwrap_or(1).max(1);
        let mut last = (0, 0);
        for _ in 0..times {
            last = match get(url) {
                Ok(got) => got,
                Err(ErrorCode::HttpRequestDenied) => return Err(format!("request to {url} refused by the host")),
                Err(ErrorCode::HttpResponseBodySize(limit)) => {
                    return Err(format!("response from {url} over the host's limit ({limit:?} bytes)"));
                }
                Err(ErrorCode::InternalError(Some(message))) => {
                    return Err(format!("reading the response from {url} failed: {message}"));
                }
                Err(e) => {
                    log::warn(&format!("GET {url} failed: {e:?}; asking for a retry"));
                    return Ok(Outcome::Retry);
                }
            };
        }
        let (status, bytes) = last;
        let save = |key: &str, value: i64| kv::set(key, value.to_string().as_bytes()).map_err(|e| format!("{e:?}"));
        save("last_status", i64::from(status))?;
        save("last_bytes", bytes as i64)?;
        log::info(&format!("GET {url}: {status}, {bytes} bytes"));
        Output::new()
            .with("status", i64::from(status))
            .with("bytes", bytes as i64)
            .success()
    }
}

/// GETs `url`; returns the status and the body's length.
fn get(url: &str) -> Result<(u16, u64), ErrorCode> {
    let bad = || ErrorCode::HttpRequestUriInvalid;
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    request.set_method(&Method::Get).map_err(|()| bad())?;
    let scheme = if scheme == "https" { Scheme::Https } else { Scheme::Http };
    request.set_scheme(Some(&scheme)).map_err(|()| bad())?;
    request.set_authority(Some(authority)).map_err(|()| bad())?;
    request.set_path_with_query(Some(path)).map_err(|()| bad())?;
    let pending = outgoing_handler::handle(request, None)?;
    pending.subscribe().block();
    let response = pending
        .get()
        .ok_or(ErrorCode::InternalError(None))?
        .map_err(|()| ErrorCode::InternalError(None))??;
    let status = response.status();
    let body = response.consume().map_err(|()| ErrorCode::InternalError(None))?;
    let stream = body.stream().map_err(|()| ErrorCode::InternalError(None))?;
    let mut total = 0u64;
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => total += chunk.len() as u64,
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                // wasi:http maps only some body errors to an error code; the
                // rest (the host's response-size limit among them) arrive as
                // a message, whose first line says what happened.
                let message = e.to_debug_string().lines().next().unwrap_or_default().to_string();
                return Err(wasip2::http::types::http_error_code(&e).unwrap_or(ErrorCode::InternalError(Some(message))));
            }
        }
    }
    Ok((status, total))
}

workhost_guest::export_handler!(Fetch);
