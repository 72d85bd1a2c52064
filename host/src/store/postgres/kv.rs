//! The handlers' kv stores on the `kv` table. `kv_namespaces` keeps each
//! namespace's number of keys, changed in the transaction that adds or
//! removes a key: a new key is counted in with the limit checked on that
//! one row (locked until commit, so the limit holds across hosts), never
//! by counting the namespace. An increment locks its key's row.

use std::sync::{Arc, Weak};

use crate::kv::{KvError, KvFuture, KvStore, parse_counter};

use super::ops::{exec, rows};
use super::rows::Fail;
use super::{PgStore, TRIES, in_tx, retrying, sql};

/// The kv backend of a [`PgStore`].
pub(super) struct PgKv {
    pub(super) store: Weak<PgStore>,
    /// The run whose writes these are (task, lease): each write first
    /// checks, and holds, that the run is still the task's current one.
    pub(super) fence: Option<(i64, i64)>,
}

/// Refuses a write of a run that is no longer its task's current one
/// (cancelled, or rescued after its host lost its lease), marking the run
/// fenced; holds the task's row (`FOR SHARE`) so a rescue waits for the
/// write to commit.
async fn check_fence(tx: &deadpool_postgres::Transaction<'_>, fence: Option<(i64, i64)>) -> Result<(), Fail> {
    let Some((task, lease)) = fence else {
        return Ok(());
    };
    if !rows(tx, sql::KV_FENCE, &[&task, &lease]).await?.is_empty() {
        return Ok(());
    }
    Err(Fail::Fenced)
}

/// Marks run `fence` fenced, in a transaction of its own (the refused
/// write's rolled back).
async fn mark_fenced(store: &PgStore, fence: Option<(i64, i64)>) {
    if let Some((task, lease)) = fence {
        let now = crate::work::millis(super::rows::wall_now());
        let _ = in_tx!(store, |tx| async {
            rows(&tx, sql::MARK_FENCED, &[&task, &lease, &now]).await?;
            Ok::<_, Fail>(())
        }
        .await);
    }
}

impl PgKv {
    fn store(&self) -> Result<Arc<PgStore>, KvError> {
        self.store
            .upgrade()
            .ok_or_else(|| KvError::Unavailable("the task store is closed".into()))
    }
}

/// A kv error of the store: the guest sees "unavailable", naming why.
fn unavailable(store: &PgStore, f: Fail) -> KvError {
    match f {
        Fail::Store(e) => KvError::Unavailable(e.to_string()),
        other => KvError::Unavailable(store.store_error(other).to_string()),
    }
}

/// A kv error the rules raised inside a transaction.
fn rule(e: KvError) -> Fail {
    Fail::Kv(e)
}

/// The rule's own error, or the store's.
fn back(store: &PgStore, f: Fail) -> KvError {
    match f {
        Fail::Kv(e) => e,
        other => unavailable(store, other),
    }
}

/// Adds key `key` of `ns` with `value` if it is new and `ns` has room for
/// it; true if added, false if the key exists (perhaps added by another
/// transaction just now, which this one waited for).
async fn add_key(
    tx: &deadpool_postgres::Transaction<'_>,
    ns: &str,
    key: &str,
    value: &[u8],
    max_keys: u32,
) -> Result<bool, Fail> {
    if exec(tx, sql::KV_INSERT, &[&ns, &key, &value]).await? == 0 {
        return Ok(false);
    }
    if exec(tx, sql::KV_KEY_ADDED, &[&ns, &i64::from(max_keys)]).await? == 0 {
        return Err(rule(KvError::TooManyKeys(max_keys)));
    }
    Ok(true)
}

/// How many times a write looks for its key again after it was added and
/// then removed by other transactions between two statements of its own.
const LOOKS: usize = 8;

/// The error when every look ([`LOOKS`]) lost such a race.
fn contended() -> Fail {
    rule(KvError::Unavailable(
        "the key was added and removed by other writes each time this one looked".into(),
    ))
}

impl PgKv {
    /// A write's result for the guest; a fenced write marks its run.
    async fn settle<T>(&self, store: &PgStore, done: Result<T, Fail>) -> Result<T, KvError> {
        match done {
            Ok(v) => Ok(v),
            Err(Fail::Fenced) => {
                mark_fenced(store, self.fence).await;
                Err(KvError::Unavailable(
                    "this run no longer holds its task (it was cancelled, or its host's lease ran out and another \
                     host runs it): its kv writes are refused"
                        .into(),
                ))
            }
            Err(f) => Err(back(store, f)),
        }
    }
}

impl KvStore for PgKv {
    fn get<'a>(&'a self, namespace: &'a str, key: &'a str) -> KvFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            let store = self.store()?;
            let read = async {
                let client = store.client().await?;
                let row = rows(&client, sql::KV_GET, &[&namespace, &key]).await?.pop();
                Ok::<_, Fail>(row.map(|r| r.get::<_, Vec<u8>>(0)))
            };
            read.await.map_err(|f| unavailable(&store, f))
        })
    }

    fn set<'a>(&'a self, namespace: &'a str, key: &'a str, value: &'a [u8], max_keys: u32) -> KvFuture<'a, ()> {
        Box::pin(async move {
            let store = self.store()?;
            let done = in_tx!(store, |tx| async {
                check_fence(&tx, self.fence).await?;
                for _ in 0..LOOKS {
                    if exec(&tx, sql::KV_UPDATE, &[&namespace, &key, &value]).await? == 1
                        || add_key(&tx, namespace, key, value, max_keys).await?
                    {
                        return Ok(());
                    }
                }
                Err(contended())
            }
            .await);
            self.settle(&store, done).await
        })
    }

    fn delete<'a>(&'a self, namespace: &'a str, key: &'a str) -> KvFuture<'a, ()> {
        Box::pin(async move {
            let store = self.store()?;
            let done = in_tx!(store, |tx| async {
                check_fence(&tx, self.fence).await?;
                if exec(&tx, sql::KV_DELETE, &[&namespace, &key]).await? == 1 {
                    exec(&tx, sql::KV_KEY_REMOVED, &[&namespace]).await?;
                }
                Ok::<_, Fail>(())
            }
            .await);
            self.settle(&store, done).await
        })
    }

    fn increment<'a>(&'a self, namespace: &'a str, key: &'a str, delta: i64, max_keys: u32) -> KvFuture<'a, i64> {
        Box::pin(async move {
            let store = self.store()?;
            let done = in_tx!(store, |tx| async {
                check_fence(&tx, self.fence).await?;
                for _ in 0..LOOKS {
                    if let Some(row) = rows(&tx, sql::KV_GET_FOR_UPDATE, &[&namespace, &key]).await?.pop() {
                        let current = parse_counter(&row.get::<_, Vec<u8>>(0)).map_err(rule)?;
                        let next = current.checked_add(delta).ok_or_else(|| rule(KvError::Overflow))?;
                        exec(&tx, sql::KV_UPDATE, &[&namespace, &key, &next.to_string().into_bytes()]).await?;
                        return Ok(next);
                    }
                    // A new key starts at 0; if another write adds it
                    // first, look again and add to its value.
                    if add_key(&tx, namespace, key, delta.to_string().as_bytes(), max_keys).await? {
                        return Ok(delta);
                    }
                }
                Err(contended())
            }
            .await);
            self.settle(&store, done).await
        })
    }
}
