//! The JSON resources under `/api/v1`, each annotated for the OpenAPI
//! document (`/openapi.json`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query as UrlQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use workhost::{Query, TaskId, TaskInfo, TaskState, WorkRequest};

use crate::App;
use crate::error::{ApiError, ErrorBody};
use crate::views::*;

/// Most tasks on one page.
pub const MAX_PAGE: u32 = 500;
/// Tasks on a page unless `limit` says otherwise.
pub const DEFAULT_PAGE: u32 = 50;

type ApiResult<T> = Result<Json<T>, ApiError>;

fn state_of(field: &str, value: Option<&str>) -> Result<Option<TaskState>, ApiError> {
    value
        .map(|s| {
            TaskState::parse(&s.to_ascii_lowercase()).ok_or_else(|| {
                ApiError::invalid(format!(
                    "{field}: {s:?} is not a state; the states are {}",
                    TaskState::NAMES.join(", ")
                ))
            })
        })
        .transpose()
}

/// The store query of a filter.
fn query_of(f: &Filter) -> Result<Query, ApiError> {
    Ok(Query {
        state: state_of("state", f.state.as_deref())?,
        tag: f.tag.clone(),
        unique_name: f.unique_name.clone(),
        handler: f.handler.clone(),
        search: f.q.clone().filter(|s| !s.is_empty()),
        ..Query::default()
    })
}

/// Lists tasks, newest first.
#[utoipa::path(get, path = "/api/v1/tasks", tag = "tasks", params(ListParams),
    responses((status = 200, body = TaskPage), (status = 400, body = ErrorBody)))]
pub(crate) async fn list_tasks(
    State(app): State<Arc<App>>,
    params: Result<UrlQuery<ListParams>, QueryRejection>,
) -> ApiResult<TaskPage> {
    let UrlQuery(p) = params.map_err(|e| ApiError::invalid(e.body_text()))?;
    let (limit, before) = page_of(p.limit, p.cursor.as_deref())?;
    let filter = Filter {
        handler: p.handler,
        state: p.state,
        tag: p.tag,
        unique_name: p.unique_name,
        q: p.q,
    };
    let mut query = query_of(&filter)?;
    query.before_id = before;
    query.newest_first = true;
    query.limit = Some(limit as usize + 1);
    let mut tasks = app.host.queue().query(query).await?;
    let more = tasks.len() > limit as usize;
    tasks.truncate(limit as usize);
    let next_cursor = more.then(|| tasks.last().map(|t| t.id.to_string())).flatten();
    Ok(Json(TaskPage {
        tasks: tasks.iter().map(|t| TaskView::new(t, false)).collect(),
        next_cursor,
    }))
}

/// A page's size and cursor, checked: the limit within 1-[`MAX_PAGE`]
/// (default [`DEFAULT_PAGE`]), the cursor a task id this API gave.
fn page_of(limit: Option<u32>, cursor: Option<&str>) -> Result<(u32, Option<TaskId>), ApiError> {
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(format!("limit: {limit} is not 1-{MAX_PAGE}")));
    }
    let before = cursor
        .map(|c| {
            c.parse::<TaskId>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| ApiError::invalid(format!("cursor: {c:?} is not a cursor this API gave")))
        })
        .transpose()?;
    Ok((limit, before))
}

async fn task_or_404(app: &App, id: TaskId) -> Result<TaskInfo, ApiError> {
    app.host
        .queue()
        .get(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no task with id {id}")))
}

/// A task with its attempts (and their logs) and its chain.
#[utoipa::path(get, path = "/api/v1/tasks/{id}", tag = "tasks", params(("id" = i64, Path, description = "Task id")),
    responses((status = 200, body = TaskDetail), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_task(State(app): State<Arc<App>>, Path(id): Path<TaskId>) -> ApiResult<TaskDetail> {
    let t = task_or_404(&app, id).await?;
    let mut after = Vec::new();
    for a in &t.after {
        if let Some(p) = app.host.queue().get(*a).await? {
            after.push(TaskSummary::from(&p));
        }
    }
    let dependents = app
        .host
        .queue()
        .query(Query {
            dependents_of: Some(id),
            ..Query::default()
        })
        .await?
        .iter()
        .map(TaskSummary::from)
        .collect();
    Ok(Json(TaskDetail {
        task: TaskView::new(&t, true),
        chain: Chain { after, dependents },
    }))
}

/// Enqueues work.
#[utoipa::path(post, path = "/api/v1/tasks", tag = "tasks", request_body = EnqueueRequest,
    responses((status = 201, body = EnqueueResult), (status = 200, body = EnqueueResult, description = "unique work kept or updated"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody, description = "no such handler")))]
pub(crate) async fn enqueue(State(app): State<Arc<App>>, body: Bytes) -> Result<Response, ApiError> {
    let text = std::str::from_utf8(&body).map_err(|_| ApiError::invalid("the request is not UTF-8 text"))?;
    let request = WorkRequest::from_json(text)?;
    let queue = app.host.queue();
    let enqueued = queue.enqueue(request).await?;
    let task = task_or_404(&app, enqueued.id).await?;
    let status = if enqueued.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = EnqueueResult {
        id: enqueued.id,
        created: enqueued.created,
        warnings: enqueued.warnings,
        task: TaskView::new(&task, false),
    };
    Ok((status, Json(body)).into_response())
}

/// Cancels a task (and the work that runs after it); a run going on stops.
#[utoipa::path(post, path = "/api/v1/tasks/{id}/cancel", tag = "tasks", params(("id" = i64, Path, description = "Task id")),
    responses((status = 200, body = TaskView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn cancel_task(State(app): State<Arc<App>>, Path(id): Path<TaskId>) -> ApiResult<TaskView> {
    let t = app.host.queue().cancel_task(id).await?;
    app.host.stop(&[id]);
    Ok(Json(TaskView::new(&t, false)))
}

/// Retries a FAILED or CANCELLED task now, with a fresh set of attempts.
#[utoipa::path(post, path = "/api/v1/tasks/{id}/retry", tag = "tasks", params(("id" = i64, Path, description = "Task id")),
    responses((status = 200, body = TaskView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn retry_task(State(app): State<Arc<App>>, Path(id): Path<TaskId>) -> ApiResult<TaskView> {
    let t = app.host.queue().retry_task(id).await?;
    Ok(Json(TaskView::new(&t, false)))
}

/// Runs an ENQUEUED task now instead of at its due time.
#[utoipa::path(post, path = "/api/v1/tasks/{id}/run-now", tag = "tasks", params(("id" = i64, Path, description = "Task id")),
    responses((status = 200, body = TaskView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn run_now_task(State(app): State<Arc<App>>, Path(id): Path<TaskId>) -> ApiResult<TaskView> {
    let t = app.host.queue().run_now_task(id).await?;
    Ok(Json(TaskView::new(&t, false)))
}

/// Deletes a finished task and its history.
#[utoipa::path(delete, path = "/api/v1/tasks/{id}", tag = "tasks", params(("id" = i64, Path, description = "Task id")),
    responses((status = 204, description = "deleted"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn delete_task(State(app): State<Arc<App>>, Path(id): Path<TaskId>) -> Result<StatusCode, ApiError> {
    app.host.queue().delete_task(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Applies an action to every task the filter matches (whose state allows it).
#[utoipa::path(post, path = "/api/v1/tasks/bulk", tag = "tasks", request_body = BulkRequest,
    responses((status = 200, body = BulkResult), (status = 400, body = ErrorBody)))]
pub(crate) async fn bulk(State(app): State<Arc<App>>, body: Bytes) -> ApiResult<BulkResult> {
    let request: BulkRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::invalid(format!("the request: {e}")))?;
    let action = request.action.as_str();
    if !["cancel", "retry", "run-now", "delete"].contains(&action) {
        return Err(ApiError::invalid(format!(
            "action: {action:?} is not one of cancel, retry, run-now, delete"
        )));
    }
    let query = query_of(&request.filter)?;
    let queue = app.host.queue();
    let ids = match action {
        "cancel" => queue.cancel_matching(query).await?,
        "retry" => queue.retry(query).await?,
        "run-now" => queue.run_now(query).await?,
        _ => queue.delete(query).await?,
    };
    if action == "cancel" {
        app.host.stop(&ids);
    }
    Ok(Json(BulkResult {
        action: request.action,
        count: ids.len(),
        ids,
    }))
}

fn names(states: std::collections::HashMap<TaskState, usize>) -> BTreeMap<String, usize> {
    states.into_iter().map(|(s, n)| (s.as_str().to_string(), n)).collect()
}

async fn handler_views(app: &App) -> Result<Vec<HandlerView>, ApiError> {
    let queue = app.host.queue();
    let paused = queue.paused_handlers().await?;
    let mut counts = queue.count_by_handler().await?;
    Ok(app
        .host
        .handlers()
        .into_iter()
        .map(|h| {
            let c = names(counts.remove(&h.name).unwrap_or_default());
            let p = paused.contains(&h.name);
            HandlerView::new(h, p, c)
        })
        .collect())
}

/// The handlers this host runs, with their limits and tasks.
#[utoipa::path(get, path = "/api/v1/handlers", tag = "handlers", responses((status = 200, body = Vec<HandlerView>)))]
pub(crate) async fn handlers(State(app): State<Arc<App>>) -> ApiResult<Vec<HandlerView>> {
    Ok(Json(handler_views(&app).await?))
}

async fn set_handler_paused(app: &App, name: &str, paused: bool) -> ApiResult<HandlerView> {
    if paused {
        app.host.queue().pause_handler(name).await?;
    } else {
        app.host.queue().resume_handler(name).await?;
    }
    handler_views(app)
        .await?
        .into_iter()
        .find(|h| h.name == name)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no handler named {name:?}")))
}

/// Pauses one handler: its work waits (running work goes on), on every host.
#[utoipa::path(post, path = "/api/v1/handlers/{name}/pause", tag = "handlers", params(("name" = String, Path, description = "Handler name")),
    responses((status = 200, body = HandlerView), (status = 404, body = ErrorBody)))]
pub(crate) async fn pause_handler(State(app): State<Arc<App>>, Path(name): Path<String>) -> ApiResult<HandlerView> {
    set_handler_paused(&app, &name, true).await
}

/// Resumes a paused handler.
#[utoipa::path(post, path = "/api/v1/handlers/{name}/resume", tag = "handlers", params(("name" = String, Path, description = "Handler name")),
    responses((status = 200, body = HandlerView), (status = 404, body = ErrorBody)))]
pub(crate) async fn resume_handler(State(app): State<Arc<App>>, Path(name): Path<String>) -> ApiResult<HandlerView> {
    set_handler_paused(&app, &name, false).await
}

/// Most reads of the store for one page of `/api/v1/periodic`.
const PERIODIC_READS: usize = 4;

/// Periodic and cron work not finished, newest first, a page at a time:
/// next runs and last result.
#[utoipa::path(get, path = "/api/v1/periodic", tag = "tasks", params(PageParams),
    responses((status = 200, body = PeriodicPage), (status = 400, body = ErrorBody)))]
pub(crate) async fn periodic(
    State(app): State<Arc<App>>,
    params: Result<UrlQuery<PageParams>, QueryRejection>,
) -> ApiResult<PeriodicPage> {
    let UrlQuery(p) = params.map_err(|e| ApiError::invalid(e.body_text()))?;
    let (limit, before) = page_of(p.limit, p.cursor.as_deref())?;
    let page = limit as usize;
    // Read by kind alone, newest first, in one snapshot per read, and the
    // finished ones skipped: a task moving between states while the page
    // is read (claimed, or rescheduled after its run) is neither missed
    // nor shown twice, as it was by one read per state. At most
    // PERIODIC_READS reads a page deep; a page cut short by that cap still
    // gives the cursor to go on from.
    let mut periodic: Vec<workhost::TaskInfo> = Vec::new();
    let mut below = before;
    let mut reads = 0;
    let next_cursor = loop {
        reads += 1;
        let read = app
            .host
            .queue()
            .query(Query {
                kind: Some(workhost::TaskKind::Periodic),
                before_id: below,
                newest_first: true,
                limit: Some(page + 1),
                ..Query::default()
            })
            .await?;
        let exhausted = read.len() <= page;
        below = read.last().map(|t| t.id);
        let mut more = false;
        for t in read.into_iter().filter(|t| !t.state.is_finished()) {
            if periodic.len() == page {
                more = true;
                break;
            }
            periodic.push(t);
        }
        if more {
            // One more unfinished task: the next page starts after this one's last.
            break periodic.last().map(|t| t.id.to_string());
        }
        if exhausted {
            break None;
        }
        if reads == PERIODIC_READS {
            // The cap: the next page goes on below the last task read.
            break below.map(|id| id.to_string());
        }
    };
    let mut out = Vec::with_capacity(periodic.len());
    for t in periodic {
        let full = app.host.queue().get(t.id).await?.unwrap_or(t);
        let last = full
            .attempts
            .iter()
            .rev()
            .find(|a| a.ended_at.is_some())
            .map(|a| LastRun {
                outcome: a.outcome.clone(),
                ended_at: a.ended_at.map(workhost::units::format_rfc3339),
                error: a.error.clone(),
            });
        out.push(PeriodicView {
            next_runs: full
                .next_runs(5)
                .into_iter()
                .map(workhost::units::format_rfc3339)
                .collect(),
            task: TaskView::new(&full, false),
            last,
        });
    }
    Ok(Json(PeriodicPage {
        periodic: out,
        next_cursor,
    }))
}

/// The hosts serving the store.
#[utoipa::path(get, path = "/api/v1/hosts", tag = "hosts", responses((status = 200, body = Vec<HostView>)))]
pub(crate) async fn hosts(State(app): State<Arc<App>>) -> ApiResult<Vec<HostView>> {
    Ok(Json(
        app.host
            .queue()
            .hosts()
            .await?
            .into_iter()
            .map(HostView::from)
            .collect(),
    ))
}

/// The device state constraints are checked against.
#[utoipa::path(get, path = "/api/v1/device", tag = "hosts", responses((status = 200, body = DeviceView)))]
pub(crate) async fn device(State(app): State<Arc<App>>) -> ApiResult<DeviceView> {
    Ok(Json(DeviceView {
        state: serde_json::to_value(app.host.device_state()).unwrap_or_default(),
        overrides: serde_json::to_value(app.host.device_overrides()).unwrap_or_default(),
    }))
}

/// Tasks by state and by handler.
#[utoipa::path(get, path = "/api/v1/counts", tag = "tasks", responses((status = 200, body = Counts)))]
pub(crate) async fn counts(State(app): State<Arc<App>>) -> ApiResult<Counts> {
    let queue = app.host.queue();
    let by_handler: BTreeMap<String, BTreeMap<String, usize>> = queue
        .count_by_handler()
        .await?
        .into_iter()
        .map(|(h, s)| (h, names(s)))
        .collect();
    let mut by_state: BTreeMap<String, usize> = TaskState::ALL.iter().map(|s| (s.as_str().to_string(), 0)).collect();
    for states in by_handler.values() {
        for (s, n) in states {
            *by_state.entry(s.clone()).or_default() += n;
        }
    }
    Ok(Json(Counts {
        by_state,
        by_handler,
        paused: queue.is_paused().await?,
    }))
}

/// This host's runs over the last hour, a minute per entry.
#[utoipa::path(get, path = "/api/v1/activity", tag = "hosts", responses((status = 200, body = Activity)))]
pub(crate) async fn activity(State(app): State<Arc<App>>) -> ApiResult<Activity> {
    Ok(Json(Activity {
        minutes: app.host.activity().into_iter().map(MinuteView::from).collect(),
    }))
}

/// Pauses the whole queue: no new run starts on any host.
#[utoipa::path(post, path = "/api/v1/queue/pause", tag = "handlers", responses((status = 200, body = Paused)))]
pub(crate) async fn pause_queue(State(app): State<Arc<App>>) -> ApiResult<Paused> {
    app.host.queue().pause().await?;
    Ok(Json(Paused { paused: true }))
}

/// Resumes the whole queue.
#[utoipa::path(post, path = "/api/v1/queue/resume", tag = "handlers", responses((status = 200, body = Paused)))]
pub(crate) async fn resume_queue(State(app): State<Arc<App>>) -> ApiResult<Paused> {
    app.host.queue().resume().await?;
    Ok(Json(Paused { paused: false }))
}
