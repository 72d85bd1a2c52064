//! The state-change callback: one thread per host that calls the C
//! function for each [`TaskEvent`], in order, fed by a task on the host's
//! runtime that forwards the queue's events.
//!
//! The thread is a plain thread, not one of the runtime's, so the callback
//! may call back into the library (which blocks on the runtime).

use std::ffi::{CString, c_char, c_void};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{JoinHandle, ThreadId};

use tokio::sync::{broadcast, mpsc, watch};
use workhost::TaskEvent;

use crate::ffi::{Error, Result, lock};

/// The C callback's type (`workhost_callback` in the header).
pub(crate) type RawCallback = unsafe extern "C" fn(*mut c_void, i64, *const c_char, *const c_char);

/// A callback and the pointer it is given back.
#[derive(Clone, Copy)]
pub(crate) struct Target {
    pub(crate) function: RawCallback,
    pub(crate) user_data: *mut c_void,
}

// SAFETY: `user_data` is only handed back to the caller's own callback, on
// the callback thread; the caller of `workhost_set_callback` promises that
// the callback may use it from that thread (the header says so).
unsafe impl Send for Target {}

/// What the forwarder hands the callback thread.
enum Delivery {
    Event(TaskEvent),
    /// The callback fell this many events behind; they were skipped.
    Lagged,
}

/// The callback in force, and whether a call of it is going on.
#[derive(Default)]
struct Slot {
    target: Option<Target>,
    in_call: bool,
}

/// The callback thread while it runs.
struct Running {
    thread: JoinHandle<()>,
    /// Tells the forwarder to stop once it has passed on what it holds.
    stop: watch::Sender<bool>,
}

/// A host's callback.
#[derive(Default)]
pub(crate) struct Callbacks {
    slot: Arc<(Mutex<Slot>, Condvar)>,
    running: Mutex<Option<Running>>,
    /// The callback thread's id, under a lock of its own that is never
    /// held while waiting (the callback asks for it).
    thread_id: Mutex<Option<ThreadId>>,
}

/// Events the forwarder holds for a callback thread that is behind.
const DELIVERY_BUFFER: usize = 64;

impl Callbacks {
    /// Whether this is the callback thread.
    pub(crate) fn on_callback_thread(&self) -> bool {
        *lock(&self.thread_id) == Some(std::thread::current().id())
    }

    /// Sets (or with `None` clears) the callback. Unless called from the
    /// callback itself, it returns only once no call of the previous
    /// callback is going on, so the caller may then free that callback's
    /// `user_data`.
    pub(crate) fn replace(&self, target: Option<Target>) {
        let on_thread = self.on_callback_thread();
        let (slot, idle) = &*self.slot;
        let mut s = lock(slot);
        while s.in_call && !on_thread {
            s = idle.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.target = target;
    }

    /// Starts the callback thread, unless it runs; `subscribe` gives it
    /// the host's events.
    pub(crate) fn start(
        &self,
        runtime: &tokio::runtime::Handle,
        subscribe: impl FnOnce() -> broadcast::Receiver<TaskEvent>,
    ) -> Result<()> {
        let mut running = lock(&self.running);
        if running.is_none() {
            *running = Some(self.spawn(runtime, subscribe())?);
        }
        Ok(())
    }

    fn spawn(&self, runtime: &tokio::runtime::Handle, mut events: broadcast::Receiver<TaskEvent>) -> Result<Running> {
        let (tx, mut rx) = mpsc::channel(DELIVERY_BUFFER);
        let (stop, mut stopped) = watch::channel(false);
        let slot = self.slot.clone();
        let thread = std::thread::Builder::new()
            .name("workhost-callback".into())
            .spawn(move || {
                while let Some(d) = rx.blocking_recv() {
                    deliver(&slot, d);
                }
            })
            .map_err(|e| {
                Error::new(
                    crate::WORKHOST_ERR_PANIC,
                    format!("cannot start the callback thread: {e}"),
                )
            })?;
        *lock(&self.thread_id) = Some(thread.thread().id());
        runtime.spawn(async move {
            loop {
                // Biased to the events, so a stop passes on what is
                // already published first.
                let delivery = tokio::select! {
                    biased;
                    e = events.recv() => match e {
                        Ok(e) => Delivery::Event(e),
                        Err(broadcast::error::RecvError::Lagged(_)) => Delivery::Lagged,
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                    _ = stopped.changed() => break,
                };
                if tx.send(delivery).await.is_err() {
                    break;
                }
            }
        });
        Ok(Running { thread, stop })
    }

    /// Stops the forwarder once it has passed on the events published so
    /// far, and waits until the callback thread has delivered them and
    /// ended. Not to be called on the callback thread.
    pub(crate) fn stop(&self) {
        let running = lock(&self.running).take();
        if let Some(r) = running {
            r.stop.send_replace(true);
            let _ = r.thread.join();
        }
        *lock(&self.thread_id) = None;
    }
}

fn deliver(slot: &(Mutex<Slot>, Condvar), d: Delivery) {
    let (slot, idle) = slot;
    let target = {
        let mut s = lock(slot);
        let Some(t) = s.target else { return };
        s.in_call = true;
        t
    };
    let (id, state, event) = match &d {
        Delivery::Event(e) => (e.id, e.state.as_str(), e.event),
        Delivery::Lagged => (0, "", "lagged"),
    };
    let state = CString::new(state).expect("state names hold no NUL");
    let event = CString::new(event).expect("event names hold no NUL");
    // SAFETY: the function and user_data are what the caller registered
    // with workhost_set_callback, whose contract makes them callable from
    // this thread; the strings outlive the call, as the header promises.
    unsafe { (target.function)(target.user_data, id, state.as_ptr(), event.as_ptr()) };
    lock(slot).in_call = false;
    idle.notify_all();
}
