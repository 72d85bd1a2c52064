//! workhost-capi: the C ABI of workhost, for programs that cannot link a
//! Rust crate (C, C++, Python `ctypes`, Dart FFI, Swift, Kotlin/JNI, C#).
//! `include/workhost.h` is generated from this file by cbindgen; the full
//! reference, with examples, is `docs/embedding.md`.
//!
//! # Layout
//!
//! - this file: the error codes and every `workhost_*` function, each a
//!   thin wrapper that reads its arguments and calls into a session;
//! - `ffi`: the error type, the panic guard, C strings in and out;
//! - `registry`: live handles (a handle is a token, never dereferenced);
//! - `session`: one open host: its runtime, the `Host`, run-once, shutdown;
//! - `callback`: the callback thread.
//!
//! # Rules every function keeps
//!
//! - It returns `WORKHOST_OK` (0) or one error code, and with `error_out`
//!   not NULL sets `*error_out` to NULL on success or to a message the
//!   caller frees with `workhost_string_free`.
//! - Out-parameters are set to NULL (or 0) first, so they hold a defined
//!   value whatever the result; on success they hold the result.
//! - No panic crosses the boundary (`WORKHOST_ERR_PANIC` instead).
//! - Strings passed in are borrowed for the call only and must be UTF-8
//!   and NUL-terminated; strings handed out belong to the caller.
//! - A handle may be used from several threads at once.

// Why: this crate is the FFI boundary; every unsafe block in it reads or
// writes memory the C caller passed, and says why it may.
#![allow(unsafe_code)]

mod callback;
mod ffi;
mod registry;
mod session;

use std::ffi::{c_char, c_int, c_void};
use std::path::{Path, PathBuf};

use workhost::{Query, Selector, TaskState, WorkRequest};

use ffi::{Error, Out, guard, read_opt_str, read_str};
use session::Session;

/// Success.
pub const WORKHOST_OK: c_int = 0;
/// A required pointer argument was NULL.
pub const WORKHOST_ERR_NULL: c_int = 1;
/// A string argument is not valid UTF-8.
pub const WORKHOST_ERR_UTF8: c_int = 2;
/// Malformed JSON, or a request or value that cannot be accepted (an
/// unknown field, a value of the wrong type or out of range); the message
/// names the field.
pub const WORKHOST_ERR_INVALID: c_int = 3;
/// No task with that id, or no handler of that name.
pub const WORKHOST_ERR_NOT_FOUND: c_int = 4;
/// The handle is not a live host: freed already, or never returned by
/// `workhost_open_path` / `workhost_open_toml`.
pub const WORKHOST_ERR_BAD_HANDLE: c_int = 5;
/// The host was shut down; only `workhost_free` may be called on it.
pub const WORKHOST_ERR_SHUTDOWN: c_int = 6;
/// The task store failed, or its data directory cannot be used (also: another
/// host already serves that data directory).
pub const WORKHOST_ERR_STORE: c_int = 7;
/// A handler's component could not be loaded, or the engine not built.
pub const WORKHOST_ERR_HANDLER: c_int = 8;
/// The manifest could not be read or is invalid.
pub const WORKHOST_ERR_CONFIG: c_int = 9;
/// Called from a thread where it would deadlock: `workhost_shutdown` or
/// `workhost_free` from the host's own callback, or any blocking call from
/// a thread that runs a tokio runtime.
pub const WORKHOST_ERR_THREAD: c_int = 10;
/// An internal error (a panic was caught at the boundary); please report it.
pub const WORKHOST_ERR_PANIC: c_int = 11;

/// An open host. Opaque: the pointer is a token the library looks up in
/// its table of live hosts and never dereferences, so a freed or foreign
/// handle is refused with `WORKHOST_ERR_BAD_HANDLE` instead of crashing.
#[allow(non_camel_case_types)] // Why: the C type name the header declares.
pub struct workhost_host {
    _opaque: [u8; 0],
}

/// The state-change callback: called once per state change of a task, with
/// the `user_data` given to `workhost_set_callback`, the task's id, its
/// state after the change (`"enqueued"`, `"running"`, `"succeeded"`,
/// `"failed"`, `"blocked"`, `"cancelled"`) and the event (`"scheduled"`,
/// `"started"`, `"succeeded"`, `"failed"`, `"cancelled"`, `"retrying"`,
/// `"rescheduled"`, `"blocked"`, `"recovered"`, `"unrecorded"`). When the
/// callback fell too far behind and events were skipped, it is called once
/// with id 0, state `""` and event `"lagged"`: read the tasks again with
/// `workhost_list`. The strings are valid only during the call.
#[allow(non_camel_case_types)] // Why: the C type name the header declares.
pub type workhost_callback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, id: i64, state: *const c_char, event: *const c_char)>;

/// Opens the manifest at `manifest_path` (a `workhost.toml`; relative
/// paths in it are relative to its folder) and starts a host serving it:
/// the store is opened, every handler loaded, and due work starts running
/// on the library's threads. On success `*out` is the new handle, freed
/// with `workhost_free`.
///
/// Errors: `WORKHOST_ERR_NULL`, `WORKHOST_ERR_UTF8`, `WORKHOST_ERR_CONFIG`
/// (unreadable or invalid manifest), `WORKHOST_ERR_STORE` (also: another
/// host serves that data directory), `WORKHOST_ERR_HANDLER`,
/// `WORKHOST_ERR_THREAD`.
///
/// Thread safety: any thread (not one running a tokio runtime).
///
/// # Safety
///
/// `manifest_path` is NULL or a NUL-terminated string; `out` is NULL or
/// points to a writable `workhost_host *`; `error_out` is NULL or points to
/// a writable `char *`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn workhost_open_path(
    manifest_path: *const c_char,
    out: *mut *mut workhost_host,
    error_out: *mut *mut c_char,
) -> c_int {
    guard(error_out, || {
        // SAFETY: the function's contract covers `out`.
        let out = unsafe { Out::new(out, "out", std::ptr::null_mut()) }?;
        // SAFETY: the function's contract covers `manifest_path`.
        let path = unsafe { read_str(manifest_path, "manifest_path") }?;
        let config = workhost::load_manifest(Path::new(&path), None)?;
        out.set(registry::insert(Session::open(config)?));
        Ok(())
    })
}

/// Like `workhost_open_path`, with the manifest given as TOML text.
/// Relative paths in it (`data_dir`, `cache_dir`, components) are relative
/// to `base_dir`, which is required: on a phone, pass the app's private
/// files directory (Android `Context.getFilesDir()`, iOS Application
/// Support) so the store lands there. Errors name the manifest
/// `<base_dir>/workhost.toml`.
///
/// Errors and thread safety: as `workhost_open_path`.
///
/// # Safety
///
/// `toml` and `base_dir` are NULL or NUL-terminated strings; `out` and
/// `error_out` as for `workhost_open_path`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn workhost_open_toml(
    toml: *const c_char,
    base_dir: *const c_char,
    out: *mut *mut workhost_host,
    error_out: *mut *mut c_char,
) -> c_int {
    guard(error_out, || {
        // SAFETY: the function's contract covers `out`.
        let out = unsafe { Out::new(out, "out", std::ptr::null_mut()) }?;
        // SAFETY: the function's contract covers `toml`.
        let text = unsafe { read_str(toml, "toml") }?;
        // SAFETY: the function's contract covers `base_dir`.
        let base = unsafe { read_str(base_dir, "base_dir") }?;
        let path = PathBuf::from(base).join("workhost.toml");
        let config = workhost::parse_manifest(&text, &path, None)?;
        out.set(registry::insert(Session::open(config)?));
        Ok(())
    })
}

/// Enqueues work described by `request_json` (the JSON request form:
/// `{"handler": "echo", "task": "greet", "input": {...}, "delay": "10s",
/// ...}`, every field in docs/embedding.md) and sets `*id_out` to the
/// task's id (with a unique name and the `keep` or `update` policy, the
/// existing task's id). The work is durable when this returns.
///
/// Errors: `WORKHOST_ERR_NULL`, `WORKHOST_ERR_UTF8`, `WORKHOST_ERR_INVALID`
/// (malformed JSON, an unknown field, a bad value; the message names the
/// field), `WORKHOST_ERR_NOT_FOUND` (unknown handler, or an `after` id
/// that does not exist), `WORKHOST_ERR_BAD_HANDLE`, `WORKHOST_ERR_SHUTDOWN`,
/// `WORKHOST_ERR_STORE`, `WORKHOST_ERR_THREAD`.
///
/// Thread safety: any thread, concurrently with other calls on the host,
/// also from the callback.
///
/// # Safety
///
/// `request_json` is NULL or a NUL-terminated string; `id_out` is NULL or
/// points to a writable `int64_t`; `error_out` as above.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn workhost_enqueue(
    host: *mut workhost_host,
    request_json: *const c_char,
    id_out: *mut i64,
    error_out: *mut *mut c_char,
) -> c_int {
    guard(error_out, || {
        // SAFETY: the function's contract covers `id_out`.
        let id_out = unsafe { Out::new(id_out, "id_out", 0) }?;
        // SAFETY: the function's contract covers `request_json`.
        let json = unsafe { read_str(request_json, "request_json") }?;
        let session = registry::get(host)?;
        let request = WorkRequest::from_json(&json)?;
        let enqueued = session.with_host(async |h| h.queue().enqueue(request).await)??;
        id_out.set(enqueued.id);
        Ok(())
    })
}

/// Sets `*json_out` to task `id` as a JSON object, as `workhost inspect
/// --json` prints it (with its attempts and their logs). The caller frees
/// it with `workhost_string_free`.
///
/// Errors: `WORKHOST_ERR_NULL`, `WORKHOST_ERR_NOT_FOUND`,
/// `WORKHOST_ERR_BAD_HANDLE`, `WORKHOST_ERR_SHUTDOWN`, `WORKHOST_ERR_STORE`,
/// `WORKHOST_ERR_THREAD`.
///
/// Thread safety: any thread, concurrently with other calls on the host,
/// also from the callback.
///
/// # Safety
///
/// `json_out` is NULL or points to a writable `char *`; `error_out` as
/// above.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn workhost_get(
    host: *mut workhost_host,
    id: i64,
    json_out: *mut *mut c_char,
    error_out: *mut *mut c_char,
) -> c_int {
    guard(error_out, || {
        // SAFETY: the function's contract covers `json_out`.
        let json_out = unsafe { Out::new(json_out, "json_out", std::ptr::null_mut()) }?;
        let session = registry::get(host)?;
        let task = session.with_host(async |h| h.queue().get(id).await)??;
        let task = task.ok_or_else(|| Error::new(WORKHOST_ERR_NOT_FOUND, format!("no task with id {id}")))?;
        json_out.set(ffi::new_string(&task.to_json(true).to_string()));
        Ok(())
    })
}

/// Sets `*json_out` to a JSON array of the tasks that match `filter_json`,
/// oldest first, each as `workhost list --json` prints it. The filter is
/// NULL (every task) or an object with any of `"state"` (a state name),
/// `"tag"` and `"unique"` (a unique name); other fields are refused. The
/// caller frees the array with `workhost_string_free`.
///
/// Errors: `WORKHOST_ERR_NULL` (`json_out`), `WORKHOST_ERR_UTF8`,
/// `WORKHOST_ERR_INVALID`, `WORKHOST_ERR_BAD_HANDLE`,
/// `WORKHOST_ERR_SHUTDOWN`, `WORKHOST_ERR_STORE`, `WORKHOST_ERR_THREAD`.
///
/// Thread safety: any thread, concurrently with other calls on the host,
/// also from the callback.
///
/// # Safety
///
/// `filter_json` is NULL or a NUL-terminated string; `json_out` and
/// `error_out` as for `workhost_get`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn workhost_list(
    host: *mut workhost_host,
    filter_json: *const c_char,
    json_out: *mut *mut c_char,
    error_out: *mut *mut c_char,
) -> c_int {
    guard(error_out, || {
        // SAFETY: the function's contract covers `json_out`.
        let json_out = unsafe { Out::new(json_out, "json_out", std::ptr::null_mut()) }?;
        // SAFETY: the function's contract covers `filter_json`.
        let filter = unsafe { read_opt_str(filter_json, "filter_json") }?;
        let session = registry::get(host)?;
        let query = match filter {
            Some(text) => list_filter(&text)?,
            None => Query::default(),
        };
        let tasks = session.with_host(async |h| h.queue().query(query).await)??;
        let array: Vec<serde_json::Value> = tasks.iter().map(|t| t.to_json(false)).collect();
        json_out.set(ffi::new_string(&serde_json::Value::Array(array).to_string()));
        Ok(())
    })
}

/// Cancels task `id` and the work that runs after it; a run going on stops
/// within about 10 ms (`cancelled`). Cancelling a task that already ended
/// is not an error and changes nothing.
///
/// Errors: `WORKHOST_ERR_NOT_FOUND`, `WORKHOST_ERR_NULL` (`host`),
/// `WORKHOST_ERR_BAD_HANDLE`, `WORKHOST_ERR_SHUTDOWN`, `WORKHOST_ERR_STORE`,
/// `WORKHOST_ERR_THREAD`.
///
/// Thread safety: any thread, concurrently with other calls on the host,
/// also from the callback.
///
/// # Safety
///
/// `error_out` is NULL or points to a writable `char *`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn workhost_cancel(host: *mut workhost_host, id: i64, error_out: *mut *mut c_char) -> c_int {
    guard(error_out, || {
        let session = registry::get(host)?;
        session.with_host(async |h| {
            if h.queue().get(id).await?.is_none() {
                return Err(Error::new(WORKHOST_ERR_NOT_FOUND, format!("no task with id {id}")));
            }
            h.cancel(Selector::Id(id)).await?;
            Ok(())
        })?
    })
}

/// Pauses the queue: nothing new starts (runs going on finish) until
/// `workhost_resume`. The pause is kept in the store, so it outlives the
/// host.
///
/// Errors: `WORKHOST_ERR_NULL`, `WORKHOST_ERR_BAD_HANDLE`,
/// `WORKHOST_ERR_SHUTDOWN`, `WORKHOST_ERR_STORE`, `WORKHOST_ERR_THREAD`.
///
/// Thread safety: any thread, also from the callback.
///
/// # Safety
///
/// `error_out` is NULL or points to a writable `char *`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn workhost_pause(host: *mut workhost_host, error_out: *mut *mut c_char) -> c_int {
    guard(error_out, || {
        let session = registry::get(host)?;
        Ok(session.with_host(async |h| h.queue().pause().await)??)
    })
}

/// Resumes a paused queue.
///
/// Errors and thread safety: as `workhost_pause`.
///
/// # Safety
///
/// `error_out` is NULL or points to a writable `char *`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn workhost_resume(host: *mut workhost_host, error_out: *mut *mut c_char) -> c_int {
    guard(error_out, || {
        let session = registry::get(host)?;
        Ok(session.with_host(async |h| h.queue().resume().await)??)
    })
}

/// Runs `handler` once, now, in a fresh sandboxed instance, and waits for
/// it: the plugin use. `task` is the task name `execute-task` receives;
/// `input_json` is NULL (no input) or a JSON object of task data. The run
/// has the handler's budget for one-off work, its grants, and its
/// persistent key-value store; it is not a task (no id in the store, no
/// retries, no callback) and runs beside the scheduled work, at most the
/// host's `max_concurrency` run-once calls at a time (more wait). The
/// handler is loaded on its first run-once call, from the compile cache
/// the host filled at open.
///
/// On success `*outcome_json_out` is the outcome, as `workhost exec --json`
/// prints it: `{"outcome": "success"|"retry"|"failed"|"stopped", "output",
/// "stop_reason", "error", "duration_ms", "fuel_consumed",
/// "peak_memory_bytes", "log"}`. A handler that fails or traps is still
/// `WORKHOST_OK`: the failure is in the outcome.
///
/// Errors: `WORKHOST_ERR_NULL` (`handler`, `task`, `outcome_json_out`),
/// `WORKHOST_ERR_UTF8`, `WORKHOST_ERR_INVALID` (input), `WORKHOST_ERR_NOT_FOUND`
/// (no such handler), `WORKHOST_ERR_HANDLER` (its component cannot be
/// loaded), `WORKHOST_ERR_BAD_HANDLE`, `WORKHOST_ERR_SHUTDOWN` (also: the
/// host shut down during the run, which stopped it), `WORKHOST_ERR_THREAD`.
///
/// Thread safety: any thread, concurrently with other calls on the host;
/// it blocks the calling thread for the whole run, so not a UI thread.
///
/// # Safety
///
/// `handler`, `task` and `input_json` are NULL or NUL-terminated strings;
/// `outcome_json_out` is NULL or points to a writable `char *`;
/// `error_out` as above.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn workhost_run_once(
    host: *mut workhost_host,
    handler: *const c_char,
    task: *const c_char,
    input_json: *const c_char,
    outcome_json_out: *mut *mut c_char,
    error_out: *mut *mut c_char,
) -> c_int {
    guard(error_out, || {
        // SAFETY: the function's contract covers `outcome_json_out`.
        let out = unsafe { Out::new(outcome_json_out, "outcome_json_out", std::ptr::null_mut()) }?;
        // SAFETY: the function's contract covers `handler`, `task` and
        // `input_json`.
        let (name, task, input) = unsafe {
            (
                read_str(handler, "handler")?,
                read_str(task, "task")?,
                read_opt_str(input_json, "input_json")?,
            )
        };
        let session = registry::get(host)?;
        let outcome = session.run_once(&name, task, input)?;
        out.set(ffi::new_string(&outcome));
        Ok(())
    })
}

/// Sets the state-change callback (see `workhost_callback`), replacing
/// any previous one; a NULL `callback` removes it. Only changes after
/// this call are reported.
///
/// Threading rule: the callback is called on one thread the library owns
/// (not the caller's, not a UI thread), one call at a time, in the order
/// the changes happened. Keep it short, or post the event to your own
/// thread or event loop; while it runs, later events wait (and past about
/// 4,000 waiting events some are skipped, reported as `"lagged"`). It may
/// call any function of this library on its host except `workhost_shutdown`
/// and `workhost_free`, which return `WORKHOST_ERR_THREAD` there.
/// `user_data` must be usable from that thread and live until the
/// callback is replaced, removed, or the host shut down: when
/// `workhost_set_callback` returns (called from another thread than the
/// callback's), no call of the previous callback is going on or will
/// start, so its `user_data` may be freed. `workhost_shutdown` delivers
/// the changes made up to its end, then stops the callback.
///
/// Errors: `WORKHOST_ERR_NULL` (`host`), `WORKHOST_ERR_BAD_HANDLE`,
/// `WORKHOST_ERR_SHUTDOWN`.
///
/// Thread safety: any thread, also from the callback itself.
///
/// # Safety
///
/// `callback` is NULL or a function of the `workhost_callback` type, safe
/// to call with `user_data` from another thread; `error_out` as above.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn workhost_set_callback(
    host: *mut workhost_host,
    callback: workhost_callback,
    user_data: *mut c_void,
    error_out: *mut *mut c_char,
) -> c_int {
    guard(error_out, || {
        let session = registry::get(host)?;
        let target = callback.map(|function| callback::Target { function, user_data });
        session.set_callback(target)
    })
}

/// Shuts the host down gracefully: no new work starts, runs going on get
/// the manifest's `shutdown_grace` to finish and are then stopped
/// (`host-shutdown`, retried by the next host), run-once calls in flight
/// are stopped, the callback receives the changes made until then, and
/// the library's threads end. Returns once all that is done. Afterwards
/// every call on the handle except `workhost_free` returns
/// `WORKHOST_ERR_SHUTDOWN` (a second `workhost_shutdown` too).
///
/// Errors: `WORKHOST_ERR_NULL`, `WORKHOST_ERR_BAD_HANDLE`,
/// `WORKHOST_ERR_SHUTDOWN`, `WORKHOST_ERR_THREAD` (called from the
/// callback).
///
/// Thread safety: any thread but the callback's; calls on the host going
/// on in other threads finish first or return `WORKHOST_ERR_SHUTDOWN`.
///
/// # Safety
///
/// `error_out` is NULL or points to a writable `char *`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn workhost_shutdown(host: *mut workhost_host, error_out: *mut *mut c_char) -> c_int {
    guard(error_out, || registry::get(host)?.shutdown())
}

/// Frees a host, shutting it down first if that was not done. NULL is a
/// no-op (`WORKHOST_OK`). A handle already freed, or never returned by
/// `workhost_open_*`, is refused with `WORKHOST_ERR_BAD_HANDLE` and
/// nothing happens; called from the host's own callback, it is refused with
/// `WORKHOST_ERR_THREAD` and the host stays open.
///
/// Thread safety: any thread but the callback's. Calls on the host going
/// on in other threads finish first or return `WORKHOST_ERR_SHUTDOWN`;
/// calls made after it returns get `WORKHOST_ERR_BAD_HANDLE`.
#[unsafe(no_mangle)]
pub extern "C" fn workhost_free(host: *mut workhost_host) -> c_int {
    if host.is_null() {
        return WORKHOST_OK;
    }
    guard(std::ptr::null_mut(), || {
        let session = registry::get(host)?;
        if session.on_callback_thread() {
            // The same refusal shutdown gives, before the handle is gone.
            return session.shutdown();
        }
        let session = registry::remove(host)?;
        match session.shutdown() {
            Ok(()) => Ok(()),
            Err(e) if e.code == WORKHOST_ERR_SHUTDOWN => Ok(()),
            Err(e) => Err(e),
        }
    })
}

/// Frees a string this library handed out (`*json_out`, `*error_out`,
/// ...). NULL is a no-op; so is a pointer the library did not hand out or
/// already freed (it keeps a table of its strings), instead of corrupting
/// the heap. Never free these strings with `free()`.
///
/// Thread safety: any thread.
#[unsafe(no_mangle)]
pub extern "C" fn workhost_string_free(s: *mut c_char) {
    let _ = std::panic::catch_unwind(|| ffi::free_string(s));
}

/// A static, NUL-terminated description of an error code (`"invalid JSON
/// or request"`, ...); `"unknown error code"` for a number that is none.
/// Never free it.
///
/// Thread safety: any thread.
#[unsafe(no_mangle)]
pub extern "C" fn workhost_error_message(code: c_int) -> *const c_char {
    let text: &'static std::ffi::CStr = match code {
        WORKHOST_OK => c"ok",
        WORKHOST_ERR_NULL => c"a required pointer argument is NULL",
        WORKHOST_ERR_UTF8 => c"a string argument is not valid UTF-8",
        WORKHOST_ERR_INVALID => c"invalid JSON or request",
        WORKHOST_ERR_NOT_FOUND => c"no such task or handler",
        WORKHOST_ERR_BAD_HANDLE => c"not a live host handle (freed, or never opened)",
        WORKHOST_ERR_SHUTDOWN => c"the host was shut down",
        WORKHOST_ERR_STORE => c"the task store or its data directory failed",
        WORKHOST_ERR_HANDLER => c"a handler could not be loaded or run",
        WORKHOST_ERR_CONFIG => c"the manifest could not be read or is invalid",
        WORKHOST_ERR_THREAD => c"called from a thread where it would deadlock",
        WORKHOST_ERR_PANIC => c"internal error (a panic was caught)",
        _ => c"unknown error code",
    };
    text.as_ptr()
}

/// The library's version (`"0.1.0"`), static; never free it.
///
/// Thread safety: any thread.
#[unsafe(no_mangle)]
pub extern "C" fn workhost_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// Reads `workhost_list`'s filter.
fn list_filter(text: &str) -> Result<Query, Error> {
    let invalid = |m: String| Error::new(WORKHOST_ERR_INVALID, m);
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| invalid(format!("the filter is not valid JSON: {e}")))?;
    let serde_json::Value::Object(map) = value else {
        return Err(invalid(
            "the filter must be a JSON object with \"state\", \"tag\" or \"unique\"".into(),
        ));
    };
    let mut query = Query::default();
    for (key, v) in &map {
        if v.is_null() {
            continue;
        }
        let text = v
            .as_str()
            .ok_or_else(|| invalid(format!("filter field {key:?}: expected a string, found {v}")))?;
        match key.as_str() {
            "state" => {
                query.state = Some(TaskState::parse(text).ok_or_else(|| {
                    invalid(format!(
                        "filter field \"state\": {text:?} is not a state; use one of {}",
                        TaskState::NAMES.join(", ")
                    ))
                })?)
            }
            "tag" => query.tag = Some(text.to_string()),
            "unique" => query.unique_name = Some(text.to_string()),
            other => {
                return Err(invalid(format!(
                    "filter field {other:?} is not known; the fields are state, tag, unique"
                )));
            }
        }
    }
    Ok(query)
}
