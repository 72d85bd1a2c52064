//! Who may do what: bearer tokens (read-only or read-write), browser
//! sessions made by logging in with a token, and the CSRF token every
//! mutation without a bearer token must carry.
//!
//! - A listener on a loopback address with no tokens configured is open:
//!   every caller may read and write. Mutations from a browser (a request
//!   with `Origin`, `Sec-Fetch-Site` or a cookie) still need the CSRF
//!   token, so another web page open in the same browser cannot post to
//!   it; a script's request (no such header) needs none.
//! - A listener on any other address refuses to start without a token
//!   ([`crate::HttpError::TokenRequired`]).
//! - Tokens are compared in constant time.

use std::collections::VecDeque;
use std::sync::Mutex;

use axum::http::{HeaderMap, Method, StatusCode, header};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// What a token lets its bearer do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read everything; change nothing.
    Read,
    /// Read and change: enqueue, cancel, retry, pause, delete.
    Write,
}

impl Access {
    /// `read` or `write`.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
        }
    }

    /// Parses `read` or `write`.
    pub fn parse(s: &str) -> Option<Access> {
        match s {
            "read" => Some(Access::Read),
            "write" => Some(Access::Write),
            _ => None,
        }
    }
}

/// An API token (manifest `[[http.tokens]]`).
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// A name for people (logs); not secret.
    pub name: String,
    /// The secret the caller sends (`Authorization: Bearer <secret>`).
    pub secret: String,
    /// What it allows.
    pub access: Access,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("secret", &"<hidden>")
            .field("access", &self.access)
            .finish()
    }
}

/// How a caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    Bearer,
    Session,
    /// An open listener: no proof asked.
    Open,
}

/// A caller, once authenticated.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caller {
    pub(crate) access: Access,
    pub(crate) via: Via,
}

/// The name of the session cookie.
pub(crate) const SESSION_COOKIE: &str = "workhost_session";

/// The auth state of a listener.
pub(crate) struct Auth {
    tokens: Vec<Token>,
    /// Sessions made by logging in, oldest first, at most
    /// [`MAX_SESSIONS`]: a login past it ends the oldest session. Kept in
    /// memory: a restart asks browsers to log in again.
    sessions: Mutex<VecDeque<(String, Access)>>,
    /// What mutations without a bearer token carry in `X-CSRF-Token`.
    pub(crate) csrf: String,
}

/// Most browser sessions a listener keeps: logging in again and again
/// cannot grow its memory, and each request's constant-time search of
/// the sessions stays short.
pub const MAX_SESSIONS: usize = 256;

/// 32 random bytes, hex.
pub(crate) fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl Auth {
    pub(crate) fn new(tokens: Vec<Token>) -> Auth {
        Auth {
            tokens,
            sessions: Mutex::new(VecDeque::new()),
            csrf: random_token(),
        }
    }

    /// Whether callers must show a token.
    pub(crate) fn required(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The access of a token's secret. Every token is compared, so the
    /// time taken does not tell which one nearly matched.
    pub(crate) fn token(&self, secret: &str) -> Option<Access> {
        let mut found = None;
        for t in &self.tokens {
            if equal(&t.secret, secret) {
                found = Some(t.access);
            }
        }
        found
    }

    /// Starts a browser session for a token's secret: the session id.
    pub(crate) fn login(&self, secret: &str) -> Option<(String, Access)> {
        let access = self.token(secret)?;
        let id = random_token();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if sessions.len() >= MAX_SESSIONS {
            sessions.pop_front();
        }
        sessions.push_back((id.clone(), access));
        Some((id, access))
    }

    pub(crate) fn logout(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, SESSION_COOKIE) {
            self.sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|(k, _)| !equal(k, &id));
        }
    }

    fn session(&self, id: &str) -> Option<Access> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.iter().find(|(k, _)| equal(k, id)).map(|(_, a)| *a)
    }

    /// Who the request comes from, or why it is refused.
    pub(crate) fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let secret = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .ok_or_else(|| unauthorized("the Authorization header must be \"Bearer <token>\""))?;
            return match self.token(secret) {
                Some(access) => Ok(Caller {
                    access,
                    via: Via::Bearer,
                }),
                None => Err(unauthorized("the token is not one this host accepts")),
            };
        }
        if !self.required() {
            return Ok(Caller {
                access: Access::Write,
                via: Via::Open,
            });
        }
        if let Some(access) = cookie(headers, SESSION_COOKIE).and_then(|id| self.session(&id)) {
            return Ok(Caller {
                access,
                via: Via::Session,
            });
        }
        Err(unauthorized(
            "this host asks for a token: send \"Authorization: Bearer <token>\", or log in at /login",
        ))
    }

    /// Whether `caller` may make a request with `method`: reads always;
    /// mutations with write access and, unless a bearer token came, the
    /// CSRF token.
    pub(crate) fn allow(&self, caller: Caller, method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            return Ok(());
        }
        if caller.access != Access::Write {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this token may only read; changes need a read-write token",
            ));
        }
        // Cross-site request forgery needs a browser; a browser says so
        // with `Origin` (every POST and DELETE of a current one),
        // `Sec-Fetch-Site` or its cookies. Those requests, unless a bearer
        // token came, must carry the CSRF token; a script without them
        // (curl on an open loopback listener) need not.
        let browser = ["origin", "sec-fetch-site", "cookie"]
            .iter()
            .any(|h| headers.contains_key(*h));
        if caller.via != Via::Bearer && browser {
            let sent = headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).unwrap_or("");
            if !equal(sent, &self.csrf) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "csrf",
                    "this change needs the X-CSRF-Token header that GET /api/v1/session gives (or a bearer token)",
                ));
            }
        }
        Ok(())
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

/// The value of cookie `name`.
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new(vec![
            Token {
                name: "r".into(),
                secret: "read-secret".into(),
                access: Access::Read,
            },
            Token {
                name: "w".into(),
                secret: "write-secret".into(),
                access: Access::Write,
            },
        ])
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn bearer_tokens_give_their_access_and_wrong_ones_are_refused() {
        let a = auth();
        let r = a.caller(&headers(&[("authorization", "Bearer read-secret")])).unwrap();
        assert_eq!((r.access, r.via), (Access::Read, Via::Bearer));
        let w = a.caller(&headers(&[("authorization", "Bearer write-secret")])).unwrap();
        assert_eq!(w.access, Access::Write);
        assert_eq!(
            a.caller(&headers(&[("authorization", "Bearer nope")]))
                .unwrap_err()
                .code,
            "unauthorized"
        );
        assert_eq!(
            a.caller(&headers(&[("authorization", "Basic x")])).unwrap_err().code,
            "unauthorized"
        );
        assert_eq!(a.caller(&HeaderMap::new()).unwrap_err().code, "unauthorized");
    }

    #[test]
    fn a_read_token_cannot_change_anything_and_sessions_need_the_csrf_token() {
        let a = auth();
        let read = a.caller(&headers(&[("authorization", "Bearer read-secret")])).unwrap();
        assert!(a.allow(read, &Method::GET, &HeaderMap::new()).is_ok());
        assert_eq!(
            a.allow(read, &Method::POST, &HeaderMap::new()).unwrap_err().code,
            "forbidden"
        );
        let (id, _) = a.login("write-secret").unwrap();
        let cookie = format!("other=1; {SESSION_COOKIE}={id}");
        let session = a.caller(&headers(&[("cookie", &cookie)])).unwrap();
        assert_eq!(session.via, Via::Session);
        let from_page = headers(&[("cookie", &cookie)]);
        assert_eq!(a.allow(session, &Method::POST, &from_page).unwrap_err().code, "csrf");
        let csrf = a.csrf.clone();
        assert!(
            a.allow(
                session,
                &Method::POST,
                &headers(&[("cookie", &cookie), ("x-csrf-token", &csrf)])
            )
            .is_ok()
        );
        assert!(a.login("wrong").is_none());
        // Logging in again and again keeps at most MAX_SESSIONS; the
        // oldest session ends first.
        for _ in 0..MAX_SESSIONS {
            a.login("read-secret").unwrap();
        }
        assert!(a.caller(&headers(&[("cookie", &cookie)])).is_err());
        assert_eq!(a.sessions.lock().unwrap().len(), MAX_SESSIONS);
    }

    #[test]
    fn an_open_listener_asks_browser_mutations_for_the_csrf_token() {
        let a = Auth::new(Vec::new());
        let c = a.caller(&HeaderMap::new()).unwrap();
        assert_eq!((c.access, c.via), (Access::Write, Via::Open));
        let evil = headers(&[("origin", "https://evil.example")]);
        assert_eq!(a.allow(c, &Method::DELETE, &evil).unwrap_err().code, "csrf");
        let fetch = headers(&[("sec-fetch-site", "cross-site")]);
        assert_eq!(a.allow(c, &Method::POST, &fetch).unwrap_err().code, "csrf");
        // A script's request is no forgery.
        assert!(a.allow(c, &Method::POST, &HeaderMap::new()).is_ok());
    }
}
