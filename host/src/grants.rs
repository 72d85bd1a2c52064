//! Grants: what a handler may touch beyond its own memory. Every capability
//! is off unless granted: outbound HTTP to an allow-list of origins
//! ([`AllowedOrigin`], enforced by [`HttpGate`] on every request, redirects
//! included, since wasi:http never follows them on the guest's behalf), a
//! data directory under a quota (enforced in `quota`), and configuration
//! values and secrets (`config_values`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use crate::config_values::ConfigValue;
use crate::outbound::{Resolver, Timeouts, send_to};
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

/// IPv4 ranges reachable only from inside a host or its network, or not
/// routable on the internet at all: a name resolving into one is a way into
/// the host's network.
const INTERNAL_V4: &[(Ipv4Addr, u8, &str)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8, "\"this network\" 0.0.0.0/8"),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "private 10.0.0.0/8"),
    (Ipv4Addr::new(100, 64, 0, 0), 10, "shared address space 100.64.0.0/10"),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback 127.0.0.0/8"),
    (Ipv4Addr::new(169, 254, 0, 0), 16, "link-local 169.254.0.0/16"),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "private 172.16.0.0/12"),
    (
        Ipv4Addr::new(192, 0, 0, 0),
        24,
        "IETF protocol assignments 192.0.0.0/24",
    ),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "private 192.168.0.0/16"),
    (Ipv4Addr::new(198, 18, 0, 0), 15, "benchmarking 198.18.0.0/15"),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast 224.0.0.0/4"),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved 240.0.0.0/4 (with broadcast)"),
];

/// IPv6 ranges that are internal whatever follows the prefix. Addresses
/// that embed an IPv4 address (mapped, compatible, NAT64, 6to4) are judged
/// by that address instead, in [`internal_range`].
const INTERNAL_V6: &[(Ipv6Addr, u8, &str)] = &[
    (Ipv6Addr::UNSPECIFIED, 128, "unspecified ::"),
    (Ipv6Addr::LOCALHOST, 128, "loopback ::1"),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        "local-use NAT64 64:ff9b:1::/48",
    ),
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7, "unique-local fc00::/7"),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, "link-local fe80::/10"),
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10, "site-local fec0::/10"),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, "multicast ff00::/8"),
];

/// Whether an address is internal: loopback, private, link-local, shared
/// (carrier-grade NAT), reserved, benchmarking, multicast, broadcast,
/// unspecified or unique-local, or an IPv6 address that embeds an internal
/// IPv4 address (IPv4-mapped `::ffff:0:0/96`, IPv4-compatible `::/96`, NAT64
/// `64:ff9b::/96`, 6to4 `2002::/16`). The full table is in the README's
/// Grants section. A name resolving to one is refused unless listed exactly.
pub fn is_internal(ip: IpAddr) -> bool {
    internal_range(ip).is_some()
}

/// The internal range `ip` lies in, in words (for log lines), or `None` for
/// an address outside them all.
pub(crate) fn internal_range(ip: IpAddr) -> Option<&'static str> {
    let in_v4 = |v4: Ipv4Addr| {
        INTERNAL_V4
            .iter()
            .find(|(net, len, _)| prefix_matches(u32::from(v4).into(), u32::from(*net).into(), 32, *len))
            .map(|(_, _, name)| *name)
    };
    match ip {
        IpAddr::V4(v4) => in_v4(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            if let Some((_, _, name)) = INTERNAL_V6
                .iter()
                .find(|(net, len, _)| prefix_matches(bits, u128::from(*net), 128, *len))
            {
                return Some(name);
            }
            let low32 = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
            // IPv4-mapped ::ffff:0:0/96, IPv4-compatible ::/96 and NAT64
            // 64:ff9b::/96 carry the IPv4 address in their last 32 bits.
            let embeds_low = [
                Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0),
                Ipv6Addr::UNSPECIFIED,
                Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0),
            ];
            if embeds_low
                .iter()
                .any(|net| prefix_matches(bits, u128::from(*net), 128, 96))
            {
                return in_v4(low32);
            }
            // 6to4 2002::/16 carries it in bits 16..48.
            if v6.segments()[0] == 0x2002 {
                return in_v4(Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32));
            }
            None
        }
    }
}

/// Whether the first `len` of `width` bits of `addr` and `net` agree.
fn prefix_matches(addr: u128, net: u128, width: u32, len: u8) -> bool {
    let shift = width - u32::from(len);
    shift >= width || (addr >> shift) == (net >> shift)
}

/// Checks every outbound request of one run against its grants, counts
/// requests and response bytes, and logs each refusal in the run's log.
pub(crate) struct HttpGate {
    grants: Arc<Grants>,
    resolver: Arc<dyn Resolver>,
    log: SharedLog,
    /// Made at the run's first request: most runs make none.
    usage: Option<Arc<HttpUsage>>,
}

/// What a run's requests used so far, shared with their response bodies.
#[derive(Default)]
struct HttpUsage {
    requests: AtomicU32,
    response_bytes: AtomicU64,
}

impl HttpGate {
    pub(crate) fn new(grants: Arc<Grants>, resolver: Arc<dyn Resolver>, log: SharedLog) -> Self {
        HttpGate {
            grants,
            resolver,
            log,
            usage: None,
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
        let resolver = self.resolver.clone();
        let log = self.log.clone();
        let used = self.usage.get_or_insert_with(Arc::default).clone();
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
            if used.requests.fetch_add(1, Ordering::SeqCst) >= grants.http.max_requests {
                return refuse(format!(
                    "the run already made its {} requests",
                    grants.http.max_requests
                ));
            }
            // Resolved once: the connection goes to these very addresses,
            // so a name that answers differently the next time (DNS
            // rebinding) cannot lead the request inside.
            let addresses: Vec<IpAddr> = match host.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => match resolver.resolve(&host).await {
                    Ok(addrs) if !addrs.is_empty() => addrs,
                    _ => {
                        return Err(HttpError::DnsError {
                            rcode: None,
                            info_code: None,
                        });
                    }
                },
            };
            if !entry.names_exactly(&host)
                && let Some((ip, range)) = addresses
                    .iter()
                    .find_map(|ip| internal_range(*ip).map(|range| (ip, range)))
            {
                return refuse(format!(
                    "{host} resolves to the internal address {ip} ({range}); list the host exactly to allow it"
                ));
            }
            let t = grants.http.request_timeout;
            let pick = |o: Option<Duration>| o.map_or(t, |o| o.min(t));
            let timeouts = Timeouts {
                connect: pick(options.and_then(|o| o.connect_timeout)),
                first_byte: pick(options.and_then(|o| o.first_byte_timeout)),
                between_bytes: pick(options.and_then(|o| o.between_bytes_timeout)),
            };
            let checked: Vec<SocketAddr> = addresses.iter().map(|ip| SocketAddr::new(*ip, port)).collect();
            let (response, io) = send_to(request, &host, &checked, timeouts).await?;
            let limit = grants.http.max_response_bytes;
            let response = response.map(|body| {
                http_body_util::BodyExt::boxed_unsync(Capped {
                    inner: Box::pin(body),
                    used,
                    limit,
                })
            });
            Ok((response, io))
        })
    }
}

/// A response body that fails once the run's response bytes pass the limit.
struct Capped<B> {
    inner: Pin<Box<B>>,
    used: Arc<HttpUsage>,
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
            let total = self.used.response_bytes.fetch_add(data.len() as u64, Ordering::SeqCst) + data.len() as u64;
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

    /// Every range of the table, with addresses at both of its edges
    /// (inside) and just past them (outside).
    #[test]
    fn internal_addresses_are_recognised_at_the_edges_of_every_range() {
        let inside = [
            // 0.0.0.0/8
            "0.0.0.0",
            "0.255.255.255",
            // 10.0.0.0/8
            "10.0.0.0",
            "10.255.255.255",
            // 100.64.0.0/10
            "100.64.0.0",
            "100.127.255.255",
            // 127.0.0.0/8
            "127.0.0.0",
            "127.255.255.255",
            // 169.254.0.0/16
            "169.254.0.0",
            "169.254.255.255",
            // 172.16.0.0/12
            "172.16.0.0",
            "172.31.255.255",
            // 192.0.0.0/24
            "192.0.0.0",
            "192.0.0.255",
            // 192.168.0.0/16
            "192.168.0.0",
            "192.168.255.255",
            // 198.18.0.0/15
            "198.18.0.0",
            "198.19.255.255",
            // 224.0.0.0/4
            "224.0.0.0",
            "239.255.255.255",
            // 240.0.0.0/4, broadcast included
            "240.0.0.0",
            "255.255.255.255",
            // ::, ::1
            "::",
            "::1",
            // IPv4-mapped ::ffff:0:0/96, judged by the IPv4 table
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.0",
            "::ffff:100.64.0.0",
            "::ffff:169.254.169.254",
            "::ffff:255.255.255.255",
            // IPv4-compatible ::/96
            "::127.0.0.1",
            "::10.255.255.255",
            "::192.168.0.1",
            // NAT64 64:ff9b::/96
            "64:ff9b::127.0.0.1",
            "64:ff9b::10.0.0.0",
            "64:ff9b::198.19.255.255",
            // local-use NAT64 64:ff9b:1::/48
            "64:ff9b:1::",
            "64:ff9b:1:ffff:ffff:ffff:ffff:ffff",
            // 6to4 2002::/16, the IPv4 address in bits 16..48
            "2002:7f00:1::",
            "2002:a00:1::",
            "2002:c0a8:101:ffff:ffff:ffff:ffff:ffff",
            "2002:6440::",
            // fc00::/7
            "fc00::",
            "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            // fe80::/10
            "fe80::",
            "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            // fec0::/10
            "fec0::",
            "feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            // ff00::/8
            "ff00::",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ];
        let outside = [
            "1.0.0.0",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "191.255.255.255",
            "192.0.1.0",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "93.184.216.34",
            // embedded public IPv4 addresses
            "::ffff:8.8.8.8",
            "::ffff:100.63.255.255",
            "::8.8.8.8",
            "64:ff9b::8.8.8.8",
            "64:ff9b::198.20.0.0",
            "2002:808:808::",
            "2002:6480::",
            // just past the prefixes that embed an address
            "::1:0:0:7f00:1",
            "0:0:0:0:1:ffff:7f00:1",
            "64:ff9b:0:0:0:1:7f00:1",
            "64:ff9a:ffff:ffff:ffff:ffff:7f00:1",
            "64:ff9b:2::",
            "2001:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "2003:7f00:1::",
            // just past fc00::/7 and fe80::/10
            "fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "fe00::",
            "fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "2606:4700::1111",
            "2001:4860:4860::8888",
        ];
        for ip in inside {
            assert!(is_internal(ip.parse().unwrap()), "{ip} should be internal");
        }
        for ip in outside {
            assert!(!is_internal(ip.parse().unwrap()), "{ip} should be outside");
        }
    }
}
