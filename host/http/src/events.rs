//! `GET /api/v1/events`: server-sent events, coalesced. A stream sends at
//! most one `changed` event every [`COALESCE`], naming up to
//! [`MAX_IDS`] tasks that changed (`more` when there were others), with the
//! counts by state; a comment every 15 s keeps proxies from closing it.
//!
//! It listens to this host's task events and, for changes other processes
//! make (the CLI, other hosts), to the store's change counter, read every
//! [`COALESCE`]. Task events are built only while someone listens, so a
//! host with no dashboard open pays nothing for them.
//!
//! A listener keeps at most [`MAX_STREAMS`] streams open; past that a new
//! one is refused (503, `too_many_streams`) and the open ones go on. The
//! streams share one count by state per [`COALESCE`]: however many are open,
//! the store is counted about once per interval, not once per stream.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use serde::Serialize;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::App;
use crate::error::ApiError;

/// Shortest time between two events of one stream.
pub const COALESCE: Duration = Duration::from_millis(500);
/// Most task ids in one event.
pub const MAX_IDS: usize = 100;
/// Most event streams open at once on one listener.
pub const MAX_STREAMS: usize = 64;

/// The open streams of a listener and the counts they share.
#[derive(Default)]
pub(crate) struct Streams {
    open: AtomicUsize,
    /// The last count by state and when it was read; the lock is held while
    /// one stream reads it again, so the others wait for that reading
    /// instead of each counting.
    counts: tokio::sync::Mutex<Option<(Instant, SharedCounts)>>,
}

/// A count of tasks by state, shared by the streams.
type SharedCounts = Arc<BTreeMap<String, usize>>;

/// One open stream's place under [`MAX_STREAMS`], given back when the
/// stream ends (the client went away or the server shut down).
struct Slot(Arc<App>);

impl Slot {
    fn take(app: &Arc<App>) -> Option<Slot> {
        app.streams
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_STREAMS).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(app.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.streams.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The count by state, read at most once per [`COALESCE`] for all streams.
async fn shared_counts(app: &App) -> SharedCounts {
    let mut cached = app.streams.counts.lock().await;
    if let Some((at, counts)) = cached.as_ref()
        && at.elapsed() < COALESCE
    {
        return counts.clone();
    }
    let counts: SharedCounts = Arc::new(match app.host.queue().count_by_state().await {
        Ok(c) => c.into_iter().map(|(s, n)| (s.as_str().to_string(), n)).collect(),
        Err(_) => Default::default(),
    });
    *cached = Some((Instant::now(), counts.clone()));
    counts
}

#[derive(Serialize)]
struct Changed<'a> {
    ids: Vec<i64>,
    more: bool,
    counts: &'a BTreeMap<String, usize>,
}

/// The live stream of changes.
pub(crate) async fn events(
    State(app): State<Arc<App>>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let slot = Slot::take(&app).ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            format!("{MAX_STREAMS} event streams are open on this listener; close one or poll /api/v1/counts"),
        )
    })?;
    let rx = app.host.queue().subscribe();
    let counter = app.host.queue().store().change_counter().unwrap_or(0);
    let closing = app.closing.subscribe();
    let changes = futures::stream::unfold(
        (app, rx, counter, closing, slot),
        |(app, mut rx, mut last, mut closing, slot)| async move {
            let mut ids = BTreeSet::new();
            let mut more = false;
            // Wait for a change: an event of this host, or another process's
            // commit.
            loop {
                if *closing.borrow_and_update() {
                    return None;
                }
                tokio::select! {
                    _ = closing.changed() => return None,
                    r = rx.recv() => match r {
                        Ok(e) => { ids.insert(e.id); break; }
                        Err(RecvError::Lagged(_)) => { more = true; break; }
                        Err(RecvError::Closed) => return None,
                    },
                    _ = tokio::time::sleep(COALESCE) => {
                        let now = app.host.queue().store().change_counter().unwrap_or(0);
                        if now != last { break; }
                    }
                }
            }
            // Gather what else changes meanwhile into the same event.
            tokio::time::sleep(COALESCE).await;
            loop {
                match rx.try_recv() {
                    Ok(e) if ids.len() < MAX_IDS => {
                        ids.insert(e.id);
                    }
                    Ok(_) | Err(TryRecvError::Lagged(_)) => more = true,
                    Err(_) => break,
                }
            }
            last = app.host.queue().store().change_counter().unwrap_or(0);
            let counts = shared_counts(&app).await;
            let data = Changed {
                ids: ids.into_iter().collect(),
                more,
                counts: &counts,
            };
            let event = Event::default()
                .event("changed")
                .json_data(&data)
                .unwrap_or_else(|_| Event::default().event("changed").data("{}"));
            Some((Ok(event), (app, rx, last, closing, slot)))
        },
    );
    // A first comment at once, so the browser knows the stream is open.
    let stream = futures::stream::once(async { Ok(Event::default().comment("open")) }).chain(changes);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
