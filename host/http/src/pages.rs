//! The dashboard's files (embedded in the binary: no CDN, no file to
//! install) and the login page.

use std::sync::Arc;

use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

use crate::App;
use crate::auth::SESSION_COOKIE;

const INDEX: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");

/// The dashboard, with the CSRF token in its `<meta name="csrf-token">`;
/// to the login page when the listener asks for a token and the browser
/// has no session.
pub(crate) async fn index(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if app.auth.caller(&headers).is_err() {
        return Redirect::to("/login").into_response();
    }
    let page = INDEX.replace("{{csrf}}", &app.auth.csrf);
    ([(header::CACHE_CONTROL, "no-store")], Html(page)).into_response()
}

pub(crate) async fn app_js() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], APP_JS)
}

pub(crate) async fn app_css() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS)
}

const LOGIN: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>workhost: log in</title>
<link rel="stylesheet" href="/assets/app.css"></head>
<body><main class="login"><h1>workhost</h1>
<form method="post" action="/login">
<label for="token">Token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Log in</button>
</form>{{error}}</main></body></html>
"#;

pub(crate) async fn login_form() -> Html<String> {
    Html(LOGIN.replace("{{error}}", ""))
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    token: String,
}

/// Checks the token and starts a session (an HttpOnly, SameSite=Strict
/// cookie).
pub(crate) async fn login(State(app): State<Arc<App>>, Form(form): Form<LoginForm>) -> Response {
    match app.auth.login(&form.token) {
        Some((id, _)) => {
            let cookie = format!("{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict");
            (
                StatusCode::SEE_OTHER,
                [(header::SET_COOKIE, cookie), (header::LOCATION, "/".into())],
            )
                .into_response()
        }
        None => (
            StatusCode::UNAUTHORIZED,
            Html(LOGIN.replace(
                "{{error}}",
                "<p class=\"error\">That token is not one this host accepts.</p>",
            )),
        )
            .into_response(),
    }
}

/// Ends the session.
pub(crate) async fn logout(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    app.auth.logout(&headers);
    let cookie = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    (
        StatusCode::SEE_OTHER,
        [(header::SET_COOKIE, cookie), (header::LOCATION, "/login".into())],
    )
        .into_response()
}
