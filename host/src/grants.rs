//! Grants: what a handler may touch beyond its own memory. Every capability
//! is off unless granted: outbound HTTP to an allow-list of origins
//! ([`AllowedOrigin`], enforced by [`HttpGate`] on every request, redirects
//! included, since wasi:http never follows them on the guest's behalf), a
//! data directory under a quota (enforced in `quota`), and configuration
//! values and secrets (`config_values`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use crate::config_values::ConfigValue;
use crate::runlog::{LogLevel, LogSource, SharedLog};

/// An origin a handler may send HTTP requests to: a scheme, a host (exact,
/// or `*.example.com` for any subdomain), and an optional port (default:
/// any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedOrigin {
    /// `http` or `https`.
    pub scheme: String,
    /// The host, lowercase; a leading `*.` matches any subdomain.
    pub host: String,
    /// The port, if only one is allowed.
    pub port: Option<u16>,
}

/// An origin could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not an origin; write scheme://host[:port], for example https://api.example.com or https://*.example.com:8443"
)]
pub struct OriginError(pub String);

impl AllowedOrigin {
    /// Reads `scheme://host[:port]`.
    pub fn parse(text: &str) -> Result<AllowedOrigin, OriginError> {
        let bad = || OriginError(text.to_string());
        let (scheme, rest) = text.split_once("://").ok_or_else(bad)?;
        if scheme != "http" && scheme != "https" {
            return Err(bad());
        }
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') || rest.contains('@') {
            return Err(bad());
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, Some(p.parse::<u16>().map_err(|_| bad())?)),
            _ => (rest, None),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        let bare = host.strip_prefix("*.").unwrap_or(&host);
        if bare.is_empty() || bare.contains('*') {
            return Err(bad());
        }
        Ok(AllowedOrigin {
            scheme: scheme.to_string(),
            host,
            port,
        })
    }

    /// Whether a request to `scheme://host:port` matches.
    pub fn matches(&self, scheme: &str, host: &str, port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        let host_ok = match self.host.strip_prefix("*.") {
            Some(suffix) => {
                host.len() > suffix.len() + 1
                    && host.ends_with(suffix)
                    && host[..host.len() - suffix.len()].ends_with('.')
            }
            None => self.host == host,
        };
        self.scheme == scheme && host_ok && self.port.is_none_or(|p| p == port)
    }

    /// Whether this entry names `host` exactly (not through a wildcard): only
    /// then may it resolve to a loopback or private address.
    pub fn names_exactly(&self, host: &str) -> bool {
        !self.host.starts_with("*.") && self.host.eq_ignore_ascii_case(host)
    }
}

impl std::fmt::Display for AllowedOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

/// Per-run limits on outbound HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Requests per run (default 32).
    pub max_requests: u32,
    /// Response body bytes per run, all requests together (default 16 MiB).
    pub max_response_bytes: u64,
    /// Time to connect, to the first byte, and between bytes, per request
    /// (default 10 s).
    pub request_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_requests: 32,
            max_response_bytes: 16 << 20,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Where a granted data directory appears inside the guest.
pub const GUEST_DATA_DIR: &str = "/data";

/// Default quota of a granted data directory: 100 MiB.
pub const DEFAULT_DATA_QUOTA_BYTES: u64 = 100 << 20;

/// What a handler is granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grants {
    /// Origins outbound HTTP may reach; empty: none.
    pub allowed_hosts: Vec<AllowedOrigin>,
    /// Limits on outbound HTTP.
    pub http: HttpLimits,
    /// A host directory the handler sees, read-write, at [`GUEST_DATA_DIR`]
    /// and nowhere else: `..`, absolute paths and symlinks cannot leave it
    /// (wasmtime-wasi resolves every path inside the preopen with cap-std).
    pub data_dir: Option<std::path::PathBuf>,
    /// Most bytes the data directory may hold (default 100 MiB). A write
    /// that would grow it past this fails, writing nothing (see the README's
    /// Grants section for what the guest sees).
    pub data_quota_bytes: u64,
    /// Configuration values and secrets the guest reads through the
    /// `config` import. Check each with [`crate::check_config`].
    pub config: BTreeMap<String, ConfigValue>,
    /// Whether the configuration is also the guest's environment
    /// (`wasi:cli/environment`); without it the environment is empty.
    pub config_env: bool,
}

impl Default for Grants {
    fn default() -> Self {
        Grants {
            allowed_hosts: Vec::new(),
            http: HttpLimits::default(),
            data_dir: None,
            data_quota_bytes: DEFAULT_DATA_QUOTA_BYTES,
            config: BTreeMap::new(),
            config_env: false,
        }
    }
}

/// Whether an address is loopback, private, link-local, unspecified or
/// unique-local: reachable only from inside, so a name resolving there is a
/// way into the host's network.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified() || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// Checks every outbound request of one run against its grants, counts
/// requests and response bytes, and logs each refusal in the run's log.
pub(crate) struct HttpGate {
    grants: Arc<Grants>,
    log: SharedLog,
    requests: Arc<AtomicU32>,
    response_bytes: Arc<AtomicU64>,
}

impl HttpGate {
    pub(crate) fn new(grants: Arc<Grants>, log: SharedLog) -> Self {
        HttpGate {
            grants,
            log,
            requests: Arc::default(),
            response_bytes: Arc::default(),
        }
    }
}

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn std::future::Future<Output = Result<(), HttpError>> + Send>,
)>;

impl WasiHttpHooks for HttpGate {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn std::future::Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn std::future::Future<Output = SendResult> + Send> {
        drop(fut);
        let grants = self.grants.clone();
        let log = self.log.clone();
        let requests = self.requests.clone();
        let used = self.response_bytes.clone();
        Box::new(async move {
            let uri = request.uri().clone();
            let refuse = |why: String| {
                log.push(
                    LogLevel::Warn,
                    LogSource::Host,
                    format!("http request to {uri} refused: {why}"),
                );
                Err(HttpError::HttpRequestDenied)
            };
            let scheme = uri.scheme_str().unwrap_or("https").to_string();
            let Some(host) = uri
                .host()
                .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
            else {
                return refuse("it has no host".into());
            };
            let port = uri.port_u16().unwrap_or(if scheme == "http" { 80 } else { 443 });
            let Some(entry) = grants.allowed_hosts.iter().find(|o| o.matches(&scheme, &host, port)) else {
                return refuse("not on the handler's allowed_hosts".into());
            };
            if requests.fetch_add(1, Ordering::SeqCst) >= grants.http.max_requests {
                return refuse(format!(
                    "the run already made its {} requests",
                    grants.http.max_requests
                ));
            }
            let addresses: Vec<IpAddr> = match host.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => match tokio::net::lookup_host((host.as_str(), port)).await {
                    Ok(addrs) => addrs.map(|a| a.ip()).collect(),
                    Err(_) => {
                        return Err(HttpError::DnsError {
                            rcode: None,
                            info_code: None,
                        });
                    }
                },
            };
            if let Some(ip) = addresses.iter().find(|ip| is_internal(**ip))
                && !entry.names_exactly(&host)
            {
                return refuse(format!(
                    "{host} resolves to the internal address {ip}; list the host exactly to allow it"
                ));
            }
            let t = grants.http.request_timeout;
            let pick = |o: Option<Duration>| Some(o.map_or(t, |o| o.min(t)));
            let options = RequestOptions {
                connect_timeout: pick(options.and_then(|o| o.connect_timeout)),
                first_byte_timeout: pick(options.and_then(|o| o.first_byte_timeout)),
                between_bytes_timeout: pick(options.and_then(|o| o.between_bytes_timeout)),
            };
            let (response, io) = wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
            let limit = grants.http.max_response_bytes;
            let response = response.map(|body| {
                http_body_util::BodyExt::boxed_unsync(Capped {
                    inner: Box::pin(body),
                    used,
                    limit,
                })
            });
            Ok((
                response,
                Box::new(io) as Box<dyn std::future::Future<Output = _> + Send>,
            ))
        })
    }
}

/// A response body that fails once the run's response bytes pass the limit.
struct Capped<B> {
    inner: Pin<Box<B>>,
    used: Arc<AtomicU64>,
    limit: u64,
}

impl<B: Body<Data = Bytes, Error = HttpError>> Body for Capped<B> {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let polled = self.inner.as_mut().poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let total = self.used.fetch_add(data.len() as u64, Ordering::SeqCst) + data.len() as u64;
            if total > self.limit {
                return Poll::Ready(Some(Err(HttpError::HttpResponseBodySize(Some(self.limit)))));
            }
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_parse_and_match() {
        let o = AllowedOrigin::parse("https://*.Example.com").unwrap();
        assert!(o.matches("https", "api.example.com", 443));
        assert!(o.matches("https", "a.b.example.com", 8443));
        assert!(!o.matches("https", "example.com", 443));
        assert!(!o.matches("https", "badexample.com", 443));
        assert!(!o.matches("http", "api.example.com", 80));
        let p = AllowedOrigin::parse("http://127.0.0.1:8080").unwrap();
        assert!(p.matches("http", "127.0.0.1", 8080) && !p.matches("http", "127.0.0.1", 8081));
        assert!(p.names_exactly("127.0.0.1") && !o.names_exactly("api.example.com"));
        assert_eq!(AllowedOrigin::parse("https://[::1]:9000").unwrap().host, "::1");
        for bad in [
            "example.com",
            "ftp://x",
            "https://",
            "https://a/b",
            "https://a:port",
            "https://*",
            "https://a.*.com",
            "https://u@h",
        ] {
            assert!(AllowedOrigin::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(p.to_string(), "http://127.0.0.1:8080");
    }

    #[test]
    fn internal_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "1.1.1.1", "2606:4700::1111"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }
}
