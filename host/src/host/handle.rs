//! [`HostHandle`]: a cloneable view of a running host for the operations
//! surface (the HTTP API, the dashboard, `/metrics`), which outlives no
//! borrow of the [`Host`](super::Host) and cannot shut it down.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::device::{DeviceOverrides, DeviceState};
use crate::metrics::{Gauges, MinuteActivity};
use crate::outcome::StopReason;
use crate::store::Selector;
use crate::work::{StoreError, TaskId};

use super::dispatcher::Inner;
use super::{HostAlert, HostStats, Queue};

/// A handler as its host runs it now (see [`HostHandle::handlers`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HandlerStatus {
    /// Its name.
    pub name: String,
    /// Most runs at once.
    pub concurrency: usize,
    /// Runs going on in this host now.
    pub running: usize,
    /// Its rate limit (`100/min`), if it has one.
    pub rate: Option<String>,
    /// Its quota of expedited requests (`10/h`), if it has one.
    pub expedited_quota: Option<String>,
    /// SHA-256 of the component it runs now.
    pub component: String,
}

/// A cloneable handle on a running [`Host`](super::Host): its queue, its
/// handlers and what it is doing, for code that lives beside it (an HTTP
/// server, a metrics exporter). Dropping a handle does nothing; a handle
/// kept after the host's shutdown still reads the store but starts no run.
#[derive(Clone)]
pub struct HostHandle {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for HostHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostHandle")
            .field("queue", &self.inner.queue)
            .finish_non_exhaustive()
    }
}

impl HostHandle {
    /// The queue: enqueue, cancel, query, pause, subscribe.
    pub fn queue(&self) -> &Queue {
        &self.inner.queue
    }

    /// What the dispatcher has done so far.
    pub fn stats(&self) -> HostStats {
        HostStats {
            polls: self.inner.polls.load(std::sync::atomic::Ordering::Relaxed),
            claims: self.inner.claims.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Cancels work; work running in this host stops within about one
    /// epoch tick (in other hosts, at their next look at the store).
    pub async fn cancel(&self, selector: Selector) -> Result<Vec<TaskId>, StoreError> {
        let ids = self.inner.queue.cancel(selector).await?;
        self.stop(&ids);
        Ok(ids)
    }

    /// Stops the runs of `ids` going on in this host, as cancelled (their
    /// tasks were cancelled in the store already).
    pub fn stop(&self, ids: &[TaskId]) {
        self.inner.stop_running(ids, StopReason::Cancelled);
    }

    /// The device state constraints are checked against now.
    pub fn device_state(&self) -> DeviceState {
        self.inner.device.borrow().clone()
    }

    /// The overrides applied to what the machine reads.
    pub fn device_overrides(&self) -> DeviceOverrides {
        self.inner.device_source.lock().unwrap_or_else(|e| e.into_inner()).1
    }

    /// Ids of the tasks running in this host now.
    pub fn running(&self) -> Vec<TaskId> {
        self.inner.running_ids()
    }

    /// A stream of [`HostAlert`]s (see [`Host::alerts`](super::Host::alerts)).
    pub fn alerts(&self) -> broadcast::Receiver<HostAlert> {
        self.inner.alerts.subscribe()
    }

    /// Most runs at once over every handler.
    pub fn max_concurrency(&self) -> usize {
        self.inner.max_concurrency
    }

    /// The handlers this host runs, sorted by name.
    pub fn handlers(&self) -> Vec<HandlerStatus> {
        let handlers = self.inner.handlers();
        let mut running: BTreeMap<String, usize> = BTreeMap::new();
        for r in self.inner.running.lock().unwrap_or_else(|e| e.into_inner()).values() {
            *running.entry(r.handler.clone()).or_default() += 1;
        }
        handlers
            .names
            .iter()
            .filter_map(|n| handlers.by_name.get(n))
            .map(|h| HandlerStatus {
                name: h.config.name.clone(),
                concurrency: h.config.concurrency,
                running: running.get(&h.config.name).copied().unwrap_or(0),
                rate: h.config.rate.map(|r| r.to_string()),
                expedited_quota: h.config.expedited_quota.map(|r| r.to_string()),
                component: h.handler.component().digest.clone(),
            })
            .collect()
    }

    /// The last hour of this host's runs, a minute per entry, oldest first.
    pub fn activity(&self) -> Vec<MinuteActivity> {
        self.inner.queue.metrics.activity(self.inner.queue.now())
    }

    /// The gauges of `/metrics`: the store's tasks by handler and state,
    /// and this host's runs, limits and pauses.
    pub async fn gauges(&self) -> Result<Gauges, StoreError> {
        let queue = &self.inner.queue;
        let tasks = queue.count_by_handler().await?.into_iter().collect();
        let handlers = self.handlers();
        Ok(Gauges {
            tasks,
            running: handlers.iter().map(|h| (h.name.clone(), h.running)).collect(),
            concurrency: handlers.iter().map(|h| (h.name.clone(), h.concurrency)).collect(),
            max_concurrency: self.inner.max_concurrency,
            paused: queue.is_paused().await?,
            paused_handlers: queue.paused_handlers().await?,
        })
    }

    /// The Prometheus text exposition of this host's metrics.
    pub async fn metrics_text(&self) -> Result<String, StoreError> {
        let gauges = self.gauges().await?;
        Ok(self.inner.queue.metrics.render(&gauges))
    }
}
