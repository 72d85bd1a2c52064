//! The live handles: a `workhost_host *` is a token looked up here, never a
//! pointer followed, so a freed, forged or foreign handle is refused with
//! `WORKHOST_ERR_BAD_HANDLE` instead of read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use crate::WORKHOST_ERR_BAD_HANDLE;
use crate::ffi::{Error, Result, lock, null};
use crate::session::Session;
use crate::workhost_host;

/// Where tokens start ("WH"), and the step between them: aligned like a
/// pointer, far from NULL and from the small integers a confused caller
/// might pass.
const BASE: usize = 0x5748_0000;
const STEP: usize = 16;

static NEXT: AtomicUsize = AtomicUsize::new(1);
static LIVE: LazyLock<Mutex<HashMap<usize, Arc<Session>>>> = LazyLock::new(Mutex::default);

/// Registers a session and returns its new handle. Tokens are not reused
/// (until 2^28 handles were opened on a 32-bit machine).
pub(crate) fn insert(session: Arc<Session>) -> *mut workhost_host {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let token = BASE.wrapping_add(n.wrapping_mul(STEP));
    lock(&LIVE).insert(token, session);
    std::ptr::without_provenance_mut(token)
}

/// The session of a live handle.
pub(crate) fn get(handle: *const workhost_host) -> Result<Arc<Session>> {
    if handle.is_null() {
        return Err(null("host"));
    }
    lock(&LIVE).get(&(handle as usize)).cloned().ok_or_else(|| bad(handle))
}

/// Unregisters a handle and returns its session.
pub(crate) fn remove(handle: *const workhost_host) -> Result<Arc<Session>> {
    lock(&LIVE).remove(&(handle as usize)).ok_or_else(|| bad(handle))
}

fn bad(handle: *const workhost_host) -> Error {
    Error::new(
        WORKHOST_ERR_BAD_HANDLE,
        format!(
            "handle {handle:p} is not a live host: it was freed, or never returned by workhost_open_path or workhost_open_toml"
        ),
    )
}
