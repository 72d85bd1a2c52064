//! The durable kv backend: the `kv` table of the task store.

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};

use crate::kv::{KvError, KvFuture, KvStore, parse_counter};
use crate::work::StoreError;

use super::SqliteStore;

/// The durable kv backend: the `kv` table of the task store.
pub(super) struct SqliteKv {
    pub(super) store: std::sync::Weak<SqliteStore>,
}

impl SqliteKv {
    fn store(&self) -> Result<Arc<SqliteStore>, KvError> {
        self.store
            .upgrade()
            .ok_or_else(|| KvError::Unavailable("the task store is closed".into()))
    }

    /// Runs `f` in the writer's next transaction; resolves once it commits.
    fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, KvError> + Send + 'static,
    ) -> KvFuture<'_, T> {
        let store = self.store();
        Box::pin(async move { store?.write(f, None).await })
    }
}

pub(super) fn kv_err(e: StoreError) -> KvError {
    KvError::Unavailable(e.to_string())
}

pub(super) fn count_keys(conn: &Connection, ns: &str) -> rusqlite::Result<u32> {
    conn.query_row("SELECT count(*) FROM kv WHERE namespace = ?1", [ns], |r| r.get(0))
}

impl From<StoreError> for KvError {
    fn from(e: StoreError) -> Self {
        kv_err(e)
    }
}

/// A get reads at once when the reader connection is free (in WAL mode a
/// read never waits for the writer); while a long read (a large query)
/// holds that connection, the get waits for it on the blocking pool. A
/// write awaits its group commit. No call blocks the awaiting thread.
impl KvStore for SqliteKv {
    fn get<'a>(&'a self, namespace: &'a str, key: &'a str) -> KvFuture<'a, Option<Vec<u8>>> {
        fn get_in(conn: &Connection, ns: &str, key: &str) -> rusqlite::Result<Option<Vec<u8>>> {
            conn.query_row(
                "SELECT value FROM kv WHERE namespace = ?1 AND key = ?2",
                [ns, key],
                |r| r.get(0),
            )
            .optional()
        }
        let store = match self.store() {
            Ok(store) => store,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        if let Some(now) = store.try_read(|conn| get_in(conn, namespace, key)) {
            return Box::pin(std::future::ready(now.map_err(kv_err)));
        }
        let (ns, key) = (namespace.to_string(), key.to_string());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || store.read(|conn| get_in(conn, &ns, &key)))
                .await
                .map_err(|e| KvError::Unavailable(format!("the kv read failed: {e}")))?
                .map_err(kv_err)
        })
    }

    fn set<'a>(&'a self, namespace: &'a str, key: &'a str, value: &'a [u8], max_keys: u32) -> KvFuture<'a, ()> {
        let (ns, key, value) = (namespace.to_string(), key.to_string(), value.to_vec());
        self.write(move |conn| {
            let exists: bool = conn
                .query_row(
                    "SELECT EXISTS(SELECT 1 FROM kv WHERE namespace = ?1 AND key = ?2)",
                    [&ns, &key],
                    |r| r.get(0),
                )
                .map_err(sq)?;
            if !exists && count_keys(conn, &ns).map_err(sq)? >= max_keys {
                return Err(KvError::TooManyKeys(max_keys));
            }
            conn.execute(
                "INSERT OR REPLACE INTO kv (namespace, key, value) VALUES (?1, ?2, ?3)",
                params![ns, key, value],
            )
            .map_err(sq)?;
            Ok(())
        })
    }

    fn delete<'a>(&'a self, namespace: &'a str, key: &'a str) -> KvFuture<'a, ()> {
        let (ns, key) = (namespace.to_string(), key.to_string());
        self.write(move |conn| {
            conn.execute("DELETE FROM kv WHERE namespace = ?1 AND key = ?2", [&ns, &key])
                .map_err(sq)?;
            Ok(())
        })
    }

    fn increment<'a>(&'a self, namespace: &'a str, key: &'a str, delta: i64, max_keys: u32) -> KvFuture<'a, i64> {
        let (ns, key) = (namespace.to_string(), key.to_string());
        self.write(move |conn| {
            let current: Option<Vec<u8>> = conn
                .query_row(
                    "SELECT value FROM kv WHERE namespace = ?1 AND key = ?2",
                    [&ns, &key],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sq)?;
            let current = match current {
                Some(v) => parse_counter(&v)?,
                None if count_keys(conn, &ns).map_err(sq)? >= max_keys => return Err(KvError::TooManyKeys(max_keys)),
                None => 0,
            };
            let next = current.checked_add(delta).ok_or(KvError::Overflow)?;
            conn.execute(
                "INSERT OR REPLACE INTO kv (namespace, key, value) VALUES (?1, ?2, ?3)",
                params![ns, key, next.to_string().into_bytes()],
            )
            .map_err(sq)?;
            Ok(next)
        })
    }
}

pub(super) fn sq(e: rusqlite::Error) -> KvError {
    KvError::Unavailable(e.to_string())
}
