//! A run's progress reports, coalesced: the latest report is kept in memory
//! and written to the store at most every [`PROGRESS_INTERVAL`], and once
//! more at the run's end (latest wins). A handler calling `set-progress` in
//! a tight loop so costs the store at most four writes a second, whatever
//! its rate, and (past [`PROGRESS_CALLS_PER_INTERVAL`] reports an interval,
//! when each call waits for the next interval) next to no CPU.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::data::Data;
use crate::platform::ProgressSink;

/// Shortest time between two progress writes of one run.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Progress reports a run makes at full speed per [`PROGRESS_INTERVAL`];
/// a report past them waits for the next interval (the wait is the run's
/// own time, against its wall-clock budget). Nothing is lost: the latest
/// report is the one written.
pub const PROGRESS_CALLS_PER_INTERVAL: u32 = 64;

/// The progress of one run on its way to the store.
#[derive(Clone)]
pub(crate) struct ProgressWriter(Arc<Shared>);

/// Writes one report to the store (fenced by the run's attempt there). A
/// refused write loses only an observation: the next report, or the run's
/// end, writes again.
pub(crate) type WriteProgress = Arc<dyn Fn(Data) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

struct Shared {
    write: WriteProgress,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The newest report, and its number (reports count from 1).
    latest: Option<(u64, Data)>,
    /// The number of the newest report known to be written.
    written: u64,
    /// When the last write was started.
    last_write: Option<Instant>,
    /// The task writing the latest report, while one is scheduled.
    flusher: Option<JoinHandle<()>>,
    /// Set at the run's end: later reports are ignored.
    closed: bool,
}

impl ProgressWriter {
    /// A writer that stores each report through `write`.
    pub(crate) fn new(write: WriteProgress) -> ProgressWriter {
        ProgressWriter(Arc::new(Shared {
            write,
            state: Mutex::new(State::default()),
        }))
    }

    /// The sink the run reports to. Each call only replaces the latest
    /// report in memory; a write is scheduled if none is.
    pub(crate) fn sink(&self) -> ProgressSink {
        let this = self.clone();
        Arc::new(move |d: &Data| this.report(d))
    }

    fn report(&self, data: &Data) {
        let mut st = self.0.lock();
        if st.closed {
            return;
        }
        let n = st.latest.as_ref().map_or(st.written, |(n, _)| *n) + 1;
        st.latest = Some((n, data.clone()));
        if st.flusher.is_none() {
            let due = st.last_write.map_or_else(Instant::now, |t| t + PROGRESS_INTERVAL);
            let this = self.clone();
            st.flusher = Some(tokio::spawn(async move { this.flush_from(due).await }));
        }
    }

    /// Writes the latest report at `due`, then keeps writing newer ones at
    /// most every [`PROGRESS_INTERVAL`] until there are none.
    async fn flush_from(&self, mut due: Instant) {
        loop {
            tokio::time::sleep_until(due).await;
            let next = {
                let mut st = self.0.lock();
                match st.latest.clone() {
                    Some((n, d)) if n > st.written => {
                        st.last_write = Some(Instant::now());
                        Some((n, d))
                    }
                    _ => {
                        st.flusher = None;
                        return;
                    }
                }
            };
            let Some((n, data)) = next else { return };
            (self.0.write)(data).await;
            let mut st = self.0.lock();
            st.written = st.written.max(n);
            due = st.last_write.unwrap_or_else(Instant::now) + PROGRESS_INTERVAL;
        }
    }

    /// The run has ended: stops the scheduled write and writes the latest
    /// report if it is not written yet. Call before the run's outcome is
    /// recorded (the store keeps progress only while the run is current).
    pub(crate) async fn finish(&self) {
        let (flusher, last) = {
            let mut st = self.0.lock();
            st.closed = true;
            let last = match &st.latest {
                Some((n, d)) if *n > st.written => Some(d.clone()),
                _ => None,
            };
            (st.flusher.take(), last)
        };
        if let Some(f) = flusher {
            // A write the flusher already queued still lands first: the
            // store's writer keeps the order of its queue.
            f.abort();
        }
        if let Some(data) = last {
            (self.0.write)(data).await;
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing panics while holding this lock; recover it if that changes.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a recording writer wrote: when (paused tokio time) and `n`.
    type Written = Arc<Mutex<Vec<(Duration, i64)>>>;

    /// A writer that records what it wrote and when.
    fn recording() -> (ProgressWriter, Written) {
        let start = Instant::now();
        let written = Arc::new(Mutex::new(Vec::new()));
        let w = written.clone();
        let writer = ProgressWriter::new(Arc::new(move |d: Data| {
            let n = match d.get("n") {
                Some(crate::data::Value::S64(n)) => *n,
                _ => -1,
            };
            w.lock().unwrap().push((start.elapsed(), n));
            Box::pin(async {})
        }));
        (writer, written)
    }

    #[tokio::test(start_paused = true)]
    async fn a_storm_of_reports_is_written_at_most_every_interval_and_the_last_one_at_the_end() {
        let (writer, written) = recording();
        let sink = writer.sink();
        // 10,000 reports over one second of (paused) time.
        for n in 1..=10_000i64 {
            sink(&Data::new().with("n", n));
            if n % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        writer.finish().await;
        let seen = written.lock().unwrap().clone();
        assert!(seen.len() <= 6, "{} writes: {seen:?}", seen.len());
        // Writes while the run goes on are at least an interval apart; the
        // last one (the run's end) may follow sooner.
        for pair in seen[..seen.len() - 1].windows(2) {
            assert!(pair[1].0 - pair[0].0 >= PROGRESS_INTERVAL, "{seen:?}");
        }
        assert_eq!(seen.last().unwrap().1, 10_000, "the latest report wins: {seen:?}");
        // Reports after the end are ignored.
        sink(&Data::new().with("n", -5));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(written.lock().unwrap().len(), seen.len());
    }

    #[tokio::test(start_paused = true)]
    async fn a_single_report_is_written_at_once_and_not_again_at_the_end() {
        let (writer, written) = recording();
        writer.sink()(&Data::new().with("n", 1));
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(written.lock().unwrap().len(), 1);
        writer.finish().await;
        assert_eq!(written.lock().unwrap().iter().map(|w| w.1).collect::<Vec<_>>(), vec![1]);
    }
}
