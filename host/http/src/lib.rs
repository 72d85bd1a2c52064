//! The operations surface of a workhost host: a JSON API under `/api/v1`,
//! a web dashboard at `/`, Prometheus metrics at `/metrics`, live updates
//! by server-sent events and the OpenAPI document at `/openapi.json`, all
//! on one listener beside a running [`Host`](workhost::Host).
//!
//! ```no_run
//! # async fn f(host: workhost::Host) -> Result<(), Box<dyn std::error::Error>> {
//! use workhost_http::{HttpConfig, HttpServer};
//! let server = HttpServer::bind(host.handle(), HttpConfig::new("127.0.0.1:8080".parse()?)).await?;
//! println!("dashboard at http://{}", server.local_addr());
//! server.serve(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```
//!
//! - `api`: the resources, each annotated for the OpenAPI document.
//! - `views`: the JSON they return, as types (the document's schemas).
//! - `auth`: tokens, browser sessions, CSRF.
//! - `events`: the coalesced server-sent events.
//! - `pages`: the dashboard's embedded assets, the login page.
//!
//! Reference: docs/http-api.md.

mod api;
mod auth;
mod error;
mod events;
mod openapi;
mod pages;
mod views;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use workhost::HostHandle;

pub use auth::{Access, MAX_SESSIONS, Token};
pub use error::{ErrorBody, ErrorDetail};
pub use events::{COALESCE, MAX_STREAMS};
pub use openapi::openapi_json;

use auth::{Auth, Caller};
use error::ApiError;

/// How the listener is set up (manifest `[http]`, `serve --http`).
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Where to listen (port 0: any free port, see
    /// [`HttpServer::local_addr`]).
    pub listen: SocketAddr,
    /// The tokens it accepts; none: open, which only a loopback address
    /// may be.
    pub tokens: Vec<Token>,
}

impl HttpConfig {
    /// An open listener on `listen` (a loopback address).
    pub fn new(listen: SocketAddr) -> HttpConfig {
        HttpConfig {
            listen,
            tokens: Vec::new(),
        }
    }
}

/// The listener could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// A non-loopback address with no token: anyone who can reach it could
    /// change the queue.
    #[error(
        "the HTTP listener on {0} is not on a loopback address, so it needs a token: add [[http.tokens]] to the manifest (or listen on 127.0.0.1)"
    )]
    TokenRequired(SocketAddr),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// What every request handler shares.
pub(crate) struct App {
    pub(crate) host: HostHandle,
    pub(crate) auth: Auth,
    /// True once the server shuts down: event streams end, so the
    /// graceful shutdown does not wait on them.
    pub(crate) closing: tokio::sync::watch::Sender<bool>,
    /// The event streams open, and the counts they share.
    pub(crate) streams: events::Streams,
}

/// A bound listener, ready to serve.
pub struct HttpServer {
    listener: tokio::net::TcpListener,
    router: Router,
    addr: SocketAddr,
    app: Arc<App>,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl HttpServer {
    /// Binds `config.listen` for `host`. A non-loopback address without
    /// a token is refused.
    pub async fn bind(host: HostHandle, config: HttpConfig) -> Result<HttpServer, HttpError> {
        if config.tokens.is_empty() && !config.listen.ip().is_loopback() {
            return Err(HttpError::TokenRequired(config.listen));
        }
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| HttpError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| HttpError::Bind {
            addr: config.listen,
            source,
        })?;
        let app = Arc::new(App {
            host,
            auth: Auth::new(config.tokens),
            closing: tokio::sync::watch::channel(false).0,
            streams: events::Streams::default(),
        });
        Ok(HttpServer {
            listener,
            router: router(app.clone()),
            addr,
            app,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` completes, then finishes the requests in
    /// flight (event streams end at once).
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let app = self.app;
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async move {
                shutdown.await;
                app.closing.send_replace(true);
            })
            .await
    }
}

/// Every route.
fn router(app: Arc<App>) -> Router {
    let api = Router::new()
        .route("/session", get(session))
        .route("/tasks", get(api::list_tasks).post(api::enqueue))
        .route("/tasks/bulk", post(api::bulk))
        .route("/tasks/{id}", get(api::get_task).delete(api::delete_task))
        .route("/tasks/{id}/cancel", post(api::cancel_task))
        .route("/tasks/{id}/retry", post(api::retry_task))
        .route("/tasks/{id}/run-now", post(api::run_now_task))
        .route("/handlers", get(api::handlers))
        .route("/handlers/{name}/pause", post(api::pause_handler))
        .route("/handlers/{name}/resume", post(api::resume_handler))
        .route("/periodic", get(api::periodic))
        .route("/hosts", get(api::hosts))
        .route("/device", get(api::device))
        .route("/counts", get(api::counts))
        .route("/activity", get(api::activity))
        .route("/queue/pause", post(api::pause_queue))
        .route("/queue/resume", post(api::resume_queue))
        .route("/events", get(events::events))
        .fallback(|| async { ApiError::not_found("no such API resource; see /openapi.json") });
    let guarded = Router::new()
        .nest("/api/v1", api)
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard));
    Router::new()
        .merge(guarded)
        .route("/", get(pages::index))
        .route("/assets/app.js", get(pages::app_js))
        .route("/assets/app.css", get(pages::app_css))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/openapi.json", get(openapi::serve))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(app)
}

/// Authenticates every API request, and checks that it may do what it asks.
async fn guard(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    let headers = request.headers();
    let caller = match app.auth.caller(headers) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = app.auth.allow(caller, request.method(), headers) {
        return e.into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// Headers that keep the dashboard from being framed or sniffed.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'",
        ),
    );
    response
}

/// Who the caller is, and the CSRF token for its changes.
#[utoipa::path(get, path = "/api/v1/session", tag = "session", responses((status = 200, body = views::Session)))]
async fn session(
    State(app): State<Arc<App>>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> axum::Json<views::Session> {
    axum::Json(views::Session {
        auth: app.auth.required(),
        access: caller.access.as_str().into(),
        csrf: app.auth.csrf.clone(),
    })
}

/// The Prometheus text exposition.
async fn metrics(State(app): State<Arc<App>>) -> Response {
    match app.host.metrics_text().await {
        Ok(text) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            text,
        )
            .into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}
