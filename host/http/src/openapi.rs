//! The OpenAPI document, generated from the handlers' annotations and the
//! view types (`utoipa`); `GET /openapi.json` serves it, and
//! docs/http-api.md is checked against it by a test.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api;
use crate::error::{ErrorBody, ErrorDetail};
use crate::views::*;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "workhost", description = "The HTTP API of a workhost host: tasks, handlers, hosts, device state. Errors are {\"error\": {\"code\", \"message\"}}."),
    paths(
        crate::session,
        api::list_tasks, api::enqueue, api::get_task, api::cancel_task, api::retry_task, api::run_now_task,
        api::delete_task, api::bulk, api::handlers, api::pause_handler, api::resume_handler, api::periodic,
        api::hosts, api::device, api::counts, api::activity, api::pause_queue, api::resume_queue,
    ),
    components(schemas(ErrorBody, ErrorDetail, TaskView, AttemptView, LogLineView, TaskSummary, Chain, TaskDetail,
        TaskPage, Filter, BulkRequest, BulkResult, EnqueueRequest, EnqueueResult, HandlerView, LastRun, PeriodicView, PeriodicPage,
        HostView, Counts, MinuteView, Activity, Paused, DeviceView, Session)),
    modifiers(&Bearer),
    security(("token" = [])),
)]
struct ApiDoc;

/// The OpenAPI document of the API, as JSON.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
}

pub(crate) async fn serve() -> impl axum::response::IntoResponse {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        DOC.get_or_init(openapi_json).clone(),
    )
}
