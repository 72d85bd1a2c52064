//! Group commit on PostgreSQL. A host's enqueues and its runs' finishes
//! are queued to two writer tasks, one for each, and each writer takes
//! whatever is queued (up to [`MAX_BATCH`]) into one transaction: a busy
//! host pays one BEGIN, COMMIT and NOTIFY per batch instead of per task,
//! and a batch of finishes is one statement (`sql::FINISH` takes arrays).
//! While a batch commits, the next one gathers; an idle host's batch is
//! one job, written at once.
//!
//! A batch is all or nothing: when it fails (after the deadlock retries
//! every transaction gets), it is rolled back and each of its jobs is done
//! again alone, in a transaction of its own, so one bad request fails
//! alone and no accepted job is lost or written twice. Only when the
//! failure says nothing was committed ([`nothing_committed`]): a batch
//! whose connection was lost (perhaps during its COMMIT) is reported
//! failed to each of its callers, as a single write would be, never
//! written again.

use std::collections::{HashSet, VecDeque};

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};

use super::ops::{self, AttemptEnd, Ending};
use super::rows::Fail;
use super::{TRIES, in_tx, pooled, retrying};
use crate::retry::Transition;
use crate::store::{Change, CommitHook, EnqueueHooks};
use crate::work::{Enqueued, Millis, StoreError, TaskId, TaskState, WorkError, WorkRequest};

/// Most jobs one batch takes.
pub(super) const MAX_BATCH: usize = 256;

/// A run's end, queued for the finish writer.
pub(super) struct FinishJob {
    pub(super) id: TaskId,
    pub(super) lease: u64,
    pub(super) transition: Transition,
    pub(super) record: AttemptEnd,
    pub(super) now: Millis,
    pub(super) reply: oneshot::Sender<Result<Vec<Change>, StoreError>>,
}

impl FinishJob {
    fn ending(&self) -> Ending<'_> {
        Ending {
            id: self.id,
            lease: self.lease,
            transition: &self.transition,
            record: &self.record,
            now: self.now,
        }
    }
}

/// An enqueue (already checked), queued for the enqueue writer.
pub(super) struct EnqueueJob {
    pub(super) request: WorkRequest,
    pub(super) now: Millis,
    /// The handler's expedited quota.
    pub(super) quota: Option<crate::work::Rate>,
    pub(super) hooks: EnqueueHooks,
    pub(super) reply: oneshot::Sender<Result<(Enqueued, Vec<Change>), WorkError>>,
}

/// What a writer needs of the store: its pool, and its name for errors.
struct Writer {
    pool: Pool,
    name: String,
}

impl Writer {
    async fn client(&self) -> Result<deadpool_postgres::Object, Fail> {
        pooled(&self.pool).await
    }
}

/// Waits for the first job, then takes whatever else is queued, up to
/// [`MAX_BATCH`]; `None` once the store is gone and nothing is left.
async fn gather<J>(rx: &mut mpsc::UnboundedReceiver<J>, held: &mut VecDeque<J>) -> Option<()> {
    if held.is_empty() {
        held.push_back(rx.recv().await?);
    }
    while held.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(job) => held.push_back(job),
            Err(_) => break,
        }
    }
    Some(())
}

/// The finish writer: batches of finishes, until the store is dropped.
pub(super) async fn finisher(pool: Pool, name: String, mut jobs: mpsc::UnboundedReceiver<FinishJob>) {
    let writer = Writer { pool, name };
    let mut held = VecDeque::new();
    while gather(&mut jobs, &mut held).await.is_some() {
        // One run per task in a batch (the statement joins on the task);
        // a second waits for the next batch, in its order.
        let mut seen = HashSet::with_capacity(held.len());
        let (batch, later): (Vec<FinishJob>, Vec<FinishJob>) = held.drain(..).partition(|j| seen.insert(j.id));
        held = later.into();
        match write_finishes(&writer, &batch).await {
            Ok(changes) => {
                for (job, changes) in batch.into_iter().zip(changes) {
                    let _ = job.reply.send(Ok(changes));
                }
            }
            Err(f) if batch.len() == 1 || !nothing_committed(&f) => {
                let e = f.store(&writer.name);
                for job in batch {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
            Err(_) => {
                for job in batch {
                    let alone = write_finishes(&writer, std::slice::from_ref(&job)).await;
                    let alone = alone.map(|mut changes| changes.pop().unwrap_or_default());
                    let _ = job.reply.send(alone.map_err(|f| f.store(&writer.name)));
                }
            }
        }
    }
}

/// Writes `jobs` in one transaction: the changes of each, in order.
async fn write_finishes(writer: &Writer, jobs: &[FinishJob]) -> Result<Vec<Vec<Change>>, Fail> {
    in_tx!(writer, |tx| async {
        let ends: Vec<Ending<'_>> = jobs.iter().map(FinishJob::ending).collect();
        let changes = ops::finish_many_in(&tx, &ends).await?;
        // Other hosts hear of finishes that leave work to claim: a task
        // back in the queue (a retry, a next period) or dependents
        // released. A plain success or failure changes nothing they could
        // act on, and each notification costs every host a read.
        let leaves_work = jobs
            .iter()
            .zip(&changes)
            .any(|(job, changes)| changes.iter().any(|c| c.id != job.id || c.state == TaskState::Enqueued));
        if leaves_work {
            ops::notify(&tx, "finish").await?;
        }
        Ok::<_, Fail>(changes)
    }
    .await)
}

/// The enqueue writer: batches of enqueues, until the store is dropped.
/// Each job's hook before the commit runs once its whole batch is written,
/// and its hook after the commit right after it, in the batch's order.
pub(super) async fn enqueuer(pool: Pool, name: String, mut jobs: mpsc::UnboundedReceiver<EnqueueJob>) {
    let writer = Writer { pool, name };
    let mut held = VecDeque::new();
    while gather(&mut jobs, &mut held).await.is_some() {
        let mut batch: Vec<EnqueueJob> = held.drain(..).collect();
        match write_enqueues(&writer, &mut batch).await {
            Ok(values) => {
                for (job, value) in batch.into_iter().zip(values) {
                    let _ = job.reply.send(Ok(value));
                }
            }
            Err(f) if batch.len() == 1 => {
                let job = batch.pop().expect("one job");
                let _ = job.reply.send(Err(f.work(&writer.name)));
            }
            Err(f) if !nothing_committed(&f) => {
                let e = f.store(&writer.name);
                for job in batch {
                    let _ = job.reply.send(Err(WorkError::Store(e.clone())));
                }
            }
            Err(_) => {
                for mut job in batch {
                    let alone = write_enqueues(&writer, std::slice::from_mut(&mut job)).await;
                    let alone = alone.map(|mut values| values.pop().expect("one value per job"));
                    let _ = job.reply.send(alone.map_err(|f| f.work(&writer.name)));
                }
            }
        }
    }
}

/// Writes `jobs` in one transaction, running their hooks: the result of
/// each, in order.
async fn write_enqueues(writer: &Writer, jobs: &mut [EnqueueJob]) -> Result<Vec<(Enqueued, Vec<Change>)>, Fail> {
    let values = in_tx!(writer, |tx| async {
        // Plain inserts all in one statement, then the others one by one.
        let plain: Vec<(&WorkRequest, Millis)> = jobs
            .iter()
            .filter(|job| ops::is_plain(&job.request, job.quota))
            .map(|job| (&job.request, job.now))
            .collect();
        let mut inserted = ops::enqueue_plain_in(&tx, &plain).await?.into_iter();
        drop(plain);
        let mut values = Vec::with_capacity(jobs.len());
        // (`iter_mut`: a hook is `Send` but not `Sync`.)
        for job in jobs.iter_mut() {
            let value = match ops::is_plain(&job.request, job.quota) {
                true => inserted.next().expect("one insert per plain job"),
                false => ops::enqueue_in(&tx, job.request.clone(), job.now, job.quota).await?,
            };
            values.push(value);
        }
        ops::notify(&tx, "enq").await?;
        for (job, value) in jobs.iter_mut().zip(&values) {
            run_hook(&mut job.hooks.before_commit, value);
        }
        Ok::<_, Fail>(values)
    }
    .await)?;
    for (job, value) in jobs.iter_mut().zip(&values) {
        run_hook(&mut job.hooks.on_commit, value);
    }
    Ok(values)
}

/// Whether a failed batch certainly committed nothing, so its jobs may be
/// written again one by one: the server refused a statement (or its
/// COMMIT), the store or the work model refused a job, or no connection
/// was had. A connection that failed may have failed after the server
/// committed.
fn nothing_committed(f: &Fail) -> bool {
    match f {
        Fail::Pg(e) => e.as_db_error().is_some(),
        Fail::Pool(_) | Fail::Store(_) | Fail::Work(_) | Fail::Kv(_) | Fail::Fenced => true,
    }
}

/// Runs `hook` once, if it has not run.
fn run_hook<T>(hook: &mut Option<CommitHook<T>>, value: &T) {
    if let Some(hook) = hook.take() {
        hook(value);
    }
}
