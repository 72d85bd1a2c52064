//! TLS to the database: libpq's `sslmode`, `sslrootcert`, `sslcert` and
//! `sslkey` over rustls (ring, the webpki roots), the TLS stack the host
//! already carries for its handlers' outgoing HTTPS.
//!
//! tokio-postgres itself knows `sslmode=disable|prefer|require` and none of
//! the certificate options, so [`split`] takes them out of the connection
//! string before it parses: the verify modes become `require` there, and the
//! checking they ask for lives in the rustls configuration built here.
//!
//! What each mode checks (as libpq; the table is in docs/scale-out.md):
//! - `disable`: no TLS.
//! - `allow`, `prefer` (the default): TLS when the server offers it.
//! - `require`: TLS or no connection.
//! - `verify-ca`: TLS, and the server's certificate chains to a trusted root.
//! - `verify-full`: as `verify-ca`, and the certificate names the host.
//!
//! Without `verify-*`, the certificate is checked against `sslrootcert`
//! when one is given (libpq's rule), else taken as it is: encryption, with
//! no proof of whom it reaches. The trusted roots are `sslrootcert`'s file,
//! or with `sslrootcert=system` or none given, the webpki (Mozilla) roots.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

/// libpq's `sslmode`, all six values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl Mode {
    /// Every mode, in libpq's order.
    const ALL: [Mode; 6] = [
        Mode::Disable,
        Mode::Allow,
        Mode::Prefer,
        Mode::Require,
        Mode::VerifyCa,
        Mode::VerifyFull,
    ];

    fn parse(value: &str) -> Result<Mode, String> {
        Mode::ALL.into_iter().find(|m| m.name() == value).ok_or_else(|| {
            let names: Vec<&str> = Mode::ALL.iter().map(|m| m.name()).collect();
            format!("sslmode {value:?} is not one of {}", names.join(", "))
        })
    }

    /// The mode as written in a connection string.
    fn name(self) -> &'static str {
        match self {
            Mode::Disable => "disable",
            Mode::Allow => "allow",
            Mode::Prefer => "prefer",
            Mode::Require => "require",
            Mode::VerifyCa => "verify-ca",
            Mode::VerifyFull => "verify-full",
        }
    }

    /// The value tokio-postgres is given: it negotiates, rustls checks.
    fn negotiated(self) -> &'static str {
        match self {
            Mode::Disable => "disable",
            Mode::Allow | Mode::Prefer => "prefer",
            Mode::Require | Mode::VerifyCa | Mode::VerifyFull => "require",
        }
    }
}

/// The TLS options of one connection string, as given.
#[derive(Debug, Default)]
struct Options {
    mode: Option<Mode>,
    root: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

impl Options {
    /// Takes `key = value` if it is one of the TLS options; false if not.
    fn take(&mut self, key: &str, value: &str) -> Result<bool, String> {
        match key {
            "sslmode" => self.mode = Some(Mode::parse(value)?),
            "sslrootcert" => self.root = Some(value.to_string()),
            "sslcert" => self.cert = Some(value.to_string()),
            "sslkey" => self.key = Some(value.to_string()),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// Whether `key` is one of the TLS options taken out here
/// ([`Options::take`]).
fn is_tls_option(key: &str) -> bool {
    TLS_OPTIONS.contains(&key)
}

/// The TLS options taken out of a connection string.
const TLS_OPTIONS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// `url` without the TLS options tokio-postgres does not know (with
/// `sslmode` as it knows it), and the connector that does what they ask.
/// Everything else is left as written, for tokio-postgres to read (and to
/// refuse, naming it). The error names the option and what is wrong with
/// it, never showing another option's value (a password may be one).
pub(super) fn split(url: &str) -> Result<(String, Tls), String> {
    let mut options = Options::default();
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let rest = if is_url {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decoded(key).unwrap_or_else(|()| key.to_string());
            if is_tls_option(&key) {
                let value = percent_decoded(value).map_err(|()| {
                    format!("{key}: its value is not percent-encoded UTF-8 (a `%` must be followed by two hex digits)")
                })?;
                options.take(&key, &value)?;
            } else {
                kept.push(pair);
            }
        }
        let mode = options.mode.map(|m| format!("sslmode={}", m.negotiated()));
        kept.extend(mode.as_deref());
        if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        }
    } else {
        let (pairs, unread) = key_values(url);
        let mut kept = String::new();
        for (key, value, text) in pairs {
            if !options.take(&key, &value)? {
                kept.push_str(text);
                kept.push(' ');
            }
        }
        if let Some(mode) = options.mode {
            kept.push_str("sslmode=");
            kept.push_str(mode.negotiated());
            kept.push(' ');
        }
        kept.push_str(unread);
        kept.trim_end().to_string()
    };
    Ok((rest, Tls::new(&options)?))
}

/// Settles TLS in `config` as libpq would: off when every host is a unix
/// socket (libpq ignores `sslmode` there; the server would answer a TLS
/// request with "no"), and with only `hostaddr` given, the addresses are
/// the hosts as well (the names a certificate is checked against).
pub(super) fn settle(config: &mut tokio_postgres::Config) {
    if config.get_hosts().is_empty() {
        let addresses: Vec<String> = config.get_hostaddrs().iter().map(|a| a.to_string()).collect();
        for address in addresses {
            config.host(&address);
        }
    }
    let hosts = config.get_hosts();
    if !hosts.is_empty() && hosts.iter().all(|h| matches!(h, tokio_postgres::config::Host::Unix(_))) {
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
    }
}

/// `text` with its `%XX` escapes decoded, as UTF-8; `Err` when an escape
/// is malformed or the bytes are not UTF-8.
fn percent_decoded(text: &str) -> Result<String, ()> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(())?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(drop)
}

/// The `key=value` pairs of a libpq connection string (values quoted with
/// `'...'` or not, `\` escaping), each with its text as written; and the
/// text from the first part that is not a pair on, unread.
fn key_values(text: &str) -> (Vec<(String, String, &str)>, &str) {
    let mut pairs = Vec::new();
    let mut chars = text.char_indices().peekable();
    let skip_space = |chars: &mut std::iter::Peekable<std::str::CharIndices>| {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_space(&mut chars);
        let Some(&(start, _)) = chars.peek() else {
            return (pairs, "");
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        skip_space(&mut chars);
        if chars.next_if(|(_, c)| *c == '=').is_none() {
            // Left as written: tokio-postgres refuses it, naming it.
            return (pairs, &text[start..]);
        }
        skip_space(&mut chars);
        let mut value = String::new();
        let quoted = chars.next_if(|(_, c)| *c == '\'').is_some();
        let mut end = text.len();
        while let Some((at, c)) = chars.next() {
            match c {
                '\\' => value.extend(chars.next().map(|(_, c)| c)),
                '\'' if quoted => {
                    end = at + 1;
                    break;
                }
                c if c.is_whitespace() && !quoted => {
                    end = at;
                    break;
                }
                c => value.push(c),
            }
        }
        pairs.push((key, value, &text[start..end]));
    }
}

/// The connector handed to tokio-postgres: rustls configured by the TLS
/// options, used when the mode asks for TLS and the host is not a unix
/// socket (TLS does not run over those).
#[derive(Clone)]
pub(super) struct Tls {
    config: Arc<ClientConfig>,
}

impl Tls {
    fn new(options: &Options) -> Result<Tls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let system = options.root.as_deref() == Some("system");
        let mode = match options.mode {
            // libpq 16: `sslrootcert=system` alone means verify-full, and
            // a weaker mode with it is refused.
            None if system => Mode::VerifyFull,
            Some(mode) if system && mode != Mode::VerifyFull => {
                return Err(format!(
                    "sslrootcert=system needs sslmode=verify-full (it is {})",
                    mode.name()
                ));
            }
            given => given.unwrap_or(Mode::Prefer),
        };
        if mode == Mode::VerifyCa && (options.root.is_none() || system) {
            // Any publicly trusted certificate, for any name, would pass.
            return Err("sslmode=verify-ca needs sslrootcert naming a file of the CA to trust: \
                        without a name check, public roots prove nothing (or use verify-full)"
                .into());
        }
        let roots = match options.root.as_deref() {
            Some(path) if !system => Some(read_roots(path)?),
            _ if matches!(mode, Mode::VerifyCa | Mode::VerifyFull) => Some(RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.into(),
            }),
            _ => None,
        };
        let chain = roots
            .map(|roots| {
                rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| format!("sslrootcert: {e}"))
            })
            .transpose()?;
        let verifier = Arc::new(Verifier {
            chain,
            name: mode == Mode::VerifyFull,
            provider: provider.clone(),
        });
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&options.cert, &options.key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => {
                let chain = read_certs("sslcert", cert)?;
                let key_der = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("sslkey: cannot read a PEM private key from {key:?}: {e}"))?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| format!("sslcert and sslkey: {e}"))?
            }
            (Some(_), None) => return Err("sslcert is given without sslkey (its private key)".into()),
            (None, Some(_)) => return Err("sslkey is given without sslcert (its certificate)".into()),
        };
        // What PostgreSQL 17 asks of a direct TLS connection
        // (`sslnegotiation=direct`); older servers ignore it.
        let mut config = config;
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Tls {
            config: Arc::new(config),
        })
    }
}

/// The certificates in the PEM file at `path`, given as `option`; at
/// least one.
fn read_certs(option: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{option}: cannot read PEM certificates from {path:?}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{option}: {path:?} holds no PEM certificate"));
    }
    Ok(certs)
}

/// The trusted roots in the PEM file at `path`.
fn read_roots(path: &str) -> Result<RootCertStore, String> {
    let certs = read_certs("sslrootcert", path)?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("sslrootcert: {path:?} holds no usable PEM certificate"));
    }
    Ok(roots)
}

/// Checks the server's certificate as the mode asks: against trusted
/// roots (`chain`), with its name only for `verify-full` (libpq's
/// `verify-ca` does not check it); without roots (`prefer`, `require`
/// without `sslrootcert`) it is taken as it is. Either way the handshake's
/// signature is checked, so the server holds the certificate's key.
#[derive(Debug)]
struct Verifier {
    chain: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    name: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

impl<S> MakeTlsConnect<S> for Tls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type TlsConnect = Connect;
    type Error = io::Error;

    /// Called for every host, unix sockets too (with `""`), before it is
    /// known whether TLS is used: a name that cannot be a TLS server name
    /// is an error only at the handshake.
    fn make_tls_connect(&mut self, host: &str) -> Result<Connect, io::Error> {
        let name = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(ServerName::from(ip)),
            Err(_) => ServerName::try_from(host.to_string()).map_err(|e| format!("TLS server name {host:?}: {e}")),
        };
        Ok(Connect {
            connector: tokio_rustls::TlsConnector::from(self.config.clone()),
            name,
        })
    }
}

/// One connection's TLS handshake, to the server `name`.
pub(super) struct Connect {
    connector: tokio_rustls::TlsConnector,
    name: Result<ServerName<'static>, String>,
}

impl<S> TlsConnect<S> for Connect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let name = self.name.map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            Ok(TlsStream(self.connector.connect(name, stream).await?))
        })
    }
}

/// A connection to the database inside TLS. No channel binding: SCRAM
/// authenticates without `-PLUS`, as with libpq's `channel_binding=prefer`
/// against a client that offers none.
pub(super) struct TlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for TlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rest(url: &str) -> String {
        split(url)
            .map(|(rest, _)| rest)
            .unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    #[test]
    fn the_tls_options_leave_the_url_and_the_verify_modes_become_require() {
        assert_eq!(rest("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            rest("postgres://u@h/db?sslmode=verify-full&application_name=x"),
            "postgres://u@h/db?application_name=x&sslmode=require"
        );
        assert_eq!(
            rest("postgres://u@h/db?sslmode=disable"),
            "postgres://u@h/db?sslmode=disable"
        );
        assert_eq!(
            rest("postgres://u@h/db?sslmode=allow"),
            "postgres://u@h/db?sslmode=prefer"
        );
        assert_eq!(
            rest("host=h user=u sslmode = verify-full  dbname='my db'"),
            "host=h user=u dbname='my db' sslmode=require"
        );
        assert_eq!(rest("host=h options='-c a=b\\'c'"), "host=h options='-c a=b\\'c'");
    }

    #[test]
    fn bad_tls_options_are_refused_naming_the_option() {
        let err = |url: &str| split(url).err().unwrap_or_else(|| panic!("{url} was accepted"));
        assert!(err("postgres://h/db?sslmode=verify").contains("sslmode \"verify\""));
        assert!(err("host=h sslmode=strict").contains("sslmode \"strict\""));
        assert!(err("postgres://h/db?sslrootcert=/nonexistent/ca.pem").contains("sslrootcert"));
        assert!(err("postgres://h/db?sslcert=/a.pem").contains("without sslkey"));
        assert!(err("postgres://h/db?sslkey=/a.pem").contains("without sslcert"));
        assert!(err("postgres://h/db?sslrootcert=system&sslmode=require").contains("verify-full"));
        assert!(err("postgres://h/db?sslmode=%zz").contains("hex"));
        assert!(err("postgres://h/db?sslmode=verify-ca").contains("needs sslrootcert"));
        assert!(err("postgres://h/db?sslmode=verify-ca&sslrootcert=system").contains("verify-full"));
    }

    #[test]
    fn what_is_not_a_tls_option_is_left_as_written_and_never_shown() {
        // A value that is not percent-encoded, as tokio-postgres reads it.
        assert_eq!(
            rest("postgres://u@h/db?password=50%off&sslmode=require"),
            "postgres://u@h/db?password=50%off&sslmode=require"
        );
        let err = split("postgres://u@h/db?password=50%off&sslrootcert=%zz")
            .err()
            .unwrap();
        assert!(!err.contains("50%off"), "{err}");
        // A malformed part of a key=value string stays, for tokio-postgres
        // to refuse: nothing after it is dropped.
        assert_eq!(
            rest("host=db junk sslmode=verify-full sslrootcert=/x"),
            "host=db junk sslmode=verify-full sslrootcert=/x"
        );
        // `://` inside a key=value string does not make it a URL.
        assert_eq!(
            rest("host=h application_name=http://x sslmode=require"),
            "host=h application_name=http://x sslmode=require"
        );
    }

    #[test]
    fn escaped_values_are_decoded() {
        let err = split("postgres://h/db?sslrootcert=%2Fno%20such%2Fca.pem")
            .err()
            .unwrap();
        assert!(err.contains("\"/no such/ca.pem\""), "{err}");
        let err = split("host=h sslrootcert='/no such/ca.pem'").err().unwrap();
        assert!(err.contains("\"/no such/ca.pem\""), "{err}");
    }
}
