//! Where "now" comes from: [`Clock`], the system's and a manual one.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use crate::work::Millis;

/// Where "now" comes from.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now(&self) -> Millis;

    /// A reading of a steady clock, one that setting the wall clock does not
    /// move, taken together with [`Clock::now`]. A host compares the two to
    /// tell the wall clock jumping from time passing, and keeps every wait's
    /// length across a jump (see `docs/guarantees.md`). `None`, the default,
    /// means this clock never jumps: every move is time passing
    /// ([`ManualClock`]).
    fn steady(&self) -> Option<SteadyReading> {
        None
    }
}

/// A reading of a steady clock: see [`Clock::steady`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SteadyReading {
    /// Names the span the steady clock counts within (on Linux the boot, by
    /// its boot id); readings of different spans are never compared.
    pub epoch: Arc<str>,
    /// Milliseconds since the span began, counting time suspended.
    pub elapsed: Millis,
}

/// How far the wall clock must move against the steady clock to count as a
/// jump. Smaller drifts (NTP slewing) are left alone until they add up.
pub const CLOCK_JUMP_THRESHOLD: Duration = Duration::from_secs(1);

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, crate::work::millis)
    }

    /// On Linux, `CLOCK_BOOTTIME` within the boot named by
    /// `/proc/sys/kernel/random/boot_id`; elsewhere `None`.
    fn steady(&self) -> Option<SteadyReading> {
        #[cfg(target_os = "linux")]
        {
            static BOOT: std::sync::OnceLock<Option<Arc<str>>> = std::sync::OnceLock::new();
            let epoch = BOOT
                .get_or_init(|| {
                    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                        .ok()
                        .map(|id| Arc::from(id.trim()))
                })
                .clone()?;
            let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
            Some(SteadyReading {
                epoch,
                elapsed: t.tv_sec * 1000 + t.tv_nsec / 1_000_000,
            })
        }
        #[cfg(not(target_os = "linux"))]
        None
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock {
    now: AtomicI64,
}

impl ManualClock {
    /// A clock reading `start`.
    pub fn new(start: Millis) -> Self {
        ManualClock {
            now: AtomicI64::new(start),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.now.fetch_add(crate::work::millis(by), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        self.now.load(Ordering::SeqCst)
    }
}
