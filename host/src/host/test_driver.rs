//! [`TestDriver`]: a host on a manual clock, for tests.

use std::sync::Arc;
use std::time::Duration;

use crate::device::DeviceOverrides;
use crate::work::{Millis, TaskId, WorkError};

use super::{Clock, Host, HostConfig, HostError, ManualClock, Queue};

/// Runs a host on a manual clock so tests control time and delays
/// (WorkManager's TestDriver): nothing becomes due until the test says so.
pub struct TestDriver {
    host: Host,
    clock: Arc<ManualClock>,
}

impl std::fmt::Debug for TestDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDriver")
            .field("now", &self.clock.now())
            .finish_non_exhaustive()
    }
}

impl TestDriver {
    /// Starts a host on a manual clock reading 2026-01-01T00:00:00Z. The
    /// device state does not come from the machine: it starts as
    /// "everything available" and changes only through [`Self::set_device`].
    pub async fn start(mut config: HostConfig) -> Result<TestDriver, HostError> {
        config.device.read_machine = false;
        let clock = Arc::new(ManualClock::new(1_767_225_600_000));
        let host = Host::start_with_clock(config, clock.clone()).await?;
        Ok(TestDriver { host, clock })
    }

    /// The host.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The queue.
    pub fn queue(&self) -> &Queue {
        self.host.queue()
    }

    /// Now, on the manual clock.
    pub fn now(&self) -> Millis {
        self.clock.now()
    }

    /// Moves the clock forward; work that becomes due starts.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
        self.queue().wake.notify_one();
    }

    /// Makes a task's initial delay met: it is due now.
    pub async fn set_initial_delay_met(&self, id: TaskId) -> Result<(), WorkError> {
        self.queue().store.make_due(id, self.now()).await?;
        self.queue().wake.notify_one();
        Ok(())
    }

    /// Makes a periodic task's period delay met: its next run is due now.
    pub async fn set_period_delay_met(&self, id: TaskId) -> Result<(), WorkError> {
        self.set_initial_delay_met(id).await
    }

    /// Sets the device state (overrides on "everything available"):
    /// constraints that now hold let work start; running work whose
    /// constraints no longer hold stops with `constraint-lost`.
    pub fn set_device(&self, overrides: DeviceOverrides) {
        self.host.set_device_overrides(overrides);
    }

    /// Waits until nothing runs and nothing is due at the current time.
    pub async fn run_until_idle(&self) {
        loop {
            self.queue().wake.notify_one();
            tokio::time::sleep(Duration::from_millis(2)).await;
            if self.host.inner.idle().await {
                // Settle: a finishing run may have just made work due.
                tokio::time::sleep(Duration::from_millis(2)).await;
                if self.host.inner.idle().await {
                    return;
                }
            }
        }
    }

    /// Shuts the host down.
    pub async fn shutdown(self) {
        self.host.shutdown().await;
    }
}
