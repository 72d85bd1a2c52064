//! `GET /api/v1/events`: server-sent events, coalesced. A stream sends at
//! most one `changed` event every [`COALESCE`], naming up to
//! [`MAX_IDS`] tasks that changed (`more` when there were others), with the
//! counts by state; a comment every 15 s keeps proxies from closing it.
//!
//! It listens to this host's task events and, for changes other processes
//! make (the CLI, other hosts), to the store's change counter, read every
//! [`COALESCE`]. Task events are built only while someone listens, so a
//! host with no dashboard open pays nothing for them.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use serde::Serialize;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::App;

/// Shortest time between two events of one stream.
pub const COALESCE: Duration = Duration::from_millis(500);
/// Most task ids in one event.
pub const MAX_IDS: usize = 100;

#[derive(Serialize)]
struct Changed {
    ids: Vec<i64>,
    more: bool,
    counts: std::collections::BTreeMap<String, usize>,
}

/// The live stream of changes.
pub(crate) async fn events(State(app): State<Arc<App>>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = app.host.queue().subscribe();
    let counter = app.host.queue().store().change_counter().unwrap_or(0);
    let closing = app.closing.subscribe();
    let changes = futures::stream::unfold(
        (app, rx, counter, closing),
        |(app, mut rx, mut last, mut closing)| async move {
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
            let counts = match app.host.queue().count_by_state().await {
                Ok(c) => c.into_iter().map(|(s, n)| (s.as_str().to_string(), n)).collect(),
                Err(_) => Default::default(),
            };
            let data = Changed {
                ids: ids.into_iter().collect(),
                more,
                counts,
            };
            let event = Event::default()
                .event("changed")
                .json_data(&data)
                .unwrap_or_else(|_| Event::default().event("changed").data("{}"));
            Some((Ok(event), (app, rx, last, closing)))
        },
    );
    // A first comment at once, so the browser knows the stream is open.
    let stream = futures::stream::once(async { Ok(Event::default().comment("open")) }).chain(changes);
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
