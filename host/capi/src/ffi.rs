//! The boundary's plumbing: [`Error`] and its code, [`guard`] (no panic
//! crosses into the caller), reading C strings, writing out-parameters, and
//! the registry of the strings this library hands out.

use std::collections::HashSet;
use std::ffi::{CStr, CString, c_char, c_int};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{LazyLock, Mutex, MutexGuard};

use crate::{
    WORKHOST_ERR_CONFIG, WORKHOST_ERR_HANDLER, WORKHOST_ERR_INVALID, WORKHOST_ERR_NOT_FOUND, WORKHOST_ERR_NULL,
    WORKHOST_ERR_PANIC, WORKHOST_ERR_SHUTDOWN, WORKHOST_ERR_STORE, WORKHOST_ERR_UTF8, WORKHOST_OK,
};

/// A call's failure: the code it returns and the message it writes to
/// `error_out`.
#[derive(Debug)]
pub(crate) struct Error {
    pub(crate) code: c_int,
    pub(crate) message: String,
}

impl Error {
    pub(crate) fn new(code: c_int, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn shut_down() -> Error {
        Error::new(
            WORKHOST_ERR_SHUTDOWN,
            "the host was shut down; only workhost_free may be called on it now",
        )
    }
}

pub(crate) type Result<T> = std::result::Result<T, Error>;

impl From<workhost::WorkError> for Error {
    fn from(e: workhost::WorkError) -> Error {
        use workhost::WorkError::*;
        let code = match &e {
            UnknownHandler(_) | UnknownTask(_) => WORKHOST_ERR_NOT_FOUND,
            Store(_) => WORKHOST_ERR_STORE,
            _ => WORKHOST_ERR_INVALID,
        };
        Error::new(code, e.to_string())
    }
}

impl From<workhost::StoreError> for Error {
    fn from(e: workhost::StoreError) -> Error {
        Error::new(WORKHOST_ERR_STORE, e.to_string())
    }
}

impl From<workhost::ManifestError> for Error {
    fn from(e: workhost::ManifestError) -> Error {
        Error::new(WORKHOST_ERR_CONFIG, e.to_string())
    }
}

impl From<workhost::HostError> for Error {
    fn from(e: workhost::HostError) -> Error {
        use workhost::HostError::*;
        let code = match &e {
            Store(_) | AlreadyServing(_) => WORKHOST_ERR_STORE,
            Engine(_) | Handler { .. } => WORKHOST_ERR_HANDLER,
            _ => WORKHOST_ERR_CONFIG,
        };
        Error::new(code, e.to_string())
    }
}

/// Runs one entry point's body: clears `*error_out`, runs `f` with any
/// panic caught, and on failure writes the message to `*error_out` and
/// returns the code.
pub(crate) fn guard(error_out: *mut *mut c_char, f: impl FnOnce() -> Result<()>) -> c_int {
    if !error_out.is_null() {
        // SAFETY: the header documents `error_out` as NULL or a pointer to
        // a `char *` the caller owns, writable for the call.
        unsafe { error_out.write(std::ptr::null_mut()) };
    }
    let error = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => return WORKHOST_OK,
        Ok(Err(e)) => e,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            Error::new(
                WORKHOST_ERR_PANIC,
                format!(
                    "internal error: workhost panicked ({what}); the call had no effect it reports, please report this"
                ),
            )
        }
    };
    if !error_out.is_null() {
        // A failure to allocate the message is the only panic left here;
        // it must not cross either.
        if let Ok(message) = catch_unwind(|| new_string(&error.message)) {
            // SAFETY: as above.
            unsafe { error_out.write(message) };
        }
    }
    error.code
}

/// A required string argument, copied: `Err` for NULL or invalid UTF-8.
///
/// # Safety
///
/// `p` is NULL or points to a NUL-terminated string readable for the call.
pub(crate) unsafe fn read_str(p: *const c_char, name: &str) -> Result<String> {
    if p.is_null() {
        return Err(null(name));
    }
    // SAFETY: not NULL, and NUL-terminated by the caller's contract.
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str().map(str::to_string).map_err(|e| {
        Error::new(
            WORKHOST_ERR_UTF8,
            format!(
                "argument {name} is not valid UTF-8 (at byte {}); pass UTF-8 text",
                e.valid_up_to()
            ),
        )
    })
}

/// An optional string argument: `None` for NULL.
///
/// # Safety
///
/// As [`read_str`].
pub(crate) unsafe fn read_opt_str(p: *const c_char, name: &str) -> Result<Option<String>> {
    if p.is_null() {
        Ok(None)
    } else {
        // SAFETY: the caller's contract, passed on.
        unsafe { read_str(p, name) }.map(Some)
    }
}

pub(crate) fn null(name: &str) -> Error {
    Error::new(WORKHOST_ERR_NULL, format!("argument {name} is NULL; it is required"))
}

/// An out-parameter: checked not NULL, and set to `empty` at once, so it
/// holds a defined value whatever the call's result.
pub(crate) struct Out<T>(*mut T);

impl<T> Out<T> {
    /// # Safety
    ///
    /// `p` is NULL or points to a `T` writable for the call.
    pub(crate) unsafe fn new(p: *mut T, name: &str, empty: T) -> Result<Out<T>> {
        if p.is_null() {
            return Err(null(name));
        }
        // SAFETY: not NULL, and writable by the caller's contract.
        unsafe { p.write(empty) };
        Ok(Out(p))
    }

    pub(crate) fn set(self, value: T) {
        // SAFETY: checked not NULL in `new`; writable by the contract `new`
        // was called under, for the rest of the call.
        unsafe { self.0.write(value) }
    }
}

/// The addresses of the strings handed out and not yet freed:
/// `workhost_string_free` frees only these, so a double or foreign free
/// is ignored instead of corrupting the heap.
static STRINGS: LazyLock<Mutex<HashSet<usize>>> = LazyLock::new(Mutex::default);

fn strings() -> MutexGuard<'static, HashSet<usize>> {
    STRINGS.lock().unwrap_or_else(|e| e.into_inner())
}

/// `text` as a C string the caller owns (and frees with
/// `workhost_string_free`). A NUL inside, which JSON never holds, is
/// written `\0`.
pub(crate) fn new_string(text: &str) -> *mut c_char {
    let c = CString::new(text.replace('\0', "\\0")).expect("no NUL is left");
    let p = c.into_raw();
    strings().insert(p as usize);
    p
}

/// Frees a string [`new_string`] handed out; anything else is ignored.
pub(crate) fn free_string(p: *mut c_char) {
    if p.is_null() || !strings().remove(&(p as usize)) {
        return;
    }
    // SAFETY: `p` came from `CString::into_raw` in `new_string` (it was in
    // the registry) and is removed from the registry, so this runs once.
    drop(unsafe { CString::from_raw(p) });
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
