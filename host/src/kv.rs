//! The handler's key-value store: the [`KvStore`] backend trait, its limits,
//! and the in-memory backend. The durable backend lives with the task store.

use std::collections::HashMap;
use std::future::{Future, ready};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

/// Why a kv operation failed. The guest sees each variant as the matching
/// case of `workhost:task/kv.kv-error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// The value is over the handler's limit.
    #[error("value is over the {0}-byte limit")]
    ValueTooLarge(u64),
    /// The key is empty or too long.
    #[error("key must be 1 to {0} bytes long")]
    InvalidKey(u32),
    /// A new key would exceed the handler's key count.
    #[error("the handler already holds the most keys allowed ({0})")]
    TooManyKeys(u32),
    /// `increment` found a value that is not a decimal integer.
    #[error("the stored value is not a decimal integer")]
    NotAnInteger,
    /// `increment` would overflow.
    #[error("the increment overflows a 64-bit integer")]
    Overflow,
    /// The backend failed.
    #[error("kv store unavailable: {0}")]
    Unavailable(String),
}

/// The future a [`KvStore`] call returns.
pub type KvFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, KvError>> + Send + 'a>>;

/// A kv backend. Every call names the handler's namespace; backends keep
/// namespaces apart.
///
/// A run awaits its kv calls on the runtime's worker threads, which it
/// shares with every other run, the dispatcher and the timers. So a call
/// must not block its thread: a backend that waits (on a commit, a lock,
/// the network) does so inside its future, as the durable backend awaits
/// its writer thread's commit; a backend built on a blocking client hands
/// the call to `tokio::task::spawn_blocking`. A run's deadline and a
/// cancellation end a run waiting in a call; the call's future is dropped
/// then, and a write the backend already started may still complete.
pub trait KvStore: Send + Sync + 'static {
    /// The value under `key`.
    fn get<'a>(&'a self, namespace: &'a str, key: &'a str) -> KvFuture<'a, Option<Vec<u8>>>;
    /// Stores `value`; creating a key fails with `TooManyKeys` when the
    /// namespace already holds `max_keys` keys.
    fn set<'a>(&'a self, namespace: &'a str, key: &'a str, value: &'a [u8], max_keys: u32) -> KvFuture<'a, ()>;
    /// Removes `key`; a missing key is not an error.
    fn delete<'a>(&'a self, namespace: &'a str, key: &'a str) -> KvFuture<'a, ()>;
    /// Adds `delta` to the decimal integer under `key` (missing = 0),
    /// atomically, and returns the new value.
    fn increment<'a>(&'a self, namespace: &'a str, key: &'a str, delta: i64, max_keys: u32) -> KvFuture<'a, i64>;
}

/// Per-handler kv limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLimits {
    /// Largest value in bytes (default 64 KiB).
    pub max_value_bytes: u64,
    /// Longest key in bytes (default 256).
    pub max_key_bytes: u32,
    /// Most keys per handler (default 1,000).
    pub max_keys: u32,
}

impl Default for KvLimits {
    fn default() -> Self {
        KvLimits {
            max_value_bytes: 64 * 1024,
            max_key_bytes: 256,
            max_keys: 1_000,
        }
    }
}

/// A handler's view of a kv backend: its namespace and limits.
#[derive(Clone)]
pub struct Kv {
    store: Arc<dyn KvStore>,
    namespace: String,
    limits: KvLimits,
}

impl std::fmt::Debug for Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kv")
            .field("namespace", &self.namespace)
            .field("limits", &self.limits)
            .finish()
    }
}

impl Kv {
    /// The namespace `namespace` (normally the handler's name) of `store`.
    pub fn new(store: Arc<dyn KvStore>, namespace: impl Into<String>, limits: KvLimits) -> Self {
        Kv {
            store,
            namespace: namespace.into(),
            limits,
        }
    }

    /// A fresh in-memory store, for runs without a durable store.
    pub fn in_memory(namespace: impl Into<String>) -> Self {
        Kv::new(Arc::new(MemoryKv::default()), namespace, KvLimits::default())
    }

    fn check_key(&self, key: &str) -> Result<(), KvError> {
        if key.is_empty() || key.len() > self.limits.max_key_bytes as usize {
            return Err(KvError::InvalidKey(self.limits.max_key_bytes));
        }
        Ok(())
    }

    /// See [`KvStore::get`].
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.check_key(key)?;
        self.store.get(&self.namespace, key).await
    }

    /// See [`KvStore::set`]; also enforces the value size limit.
    pub async fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.check_key(key)?;
        if value.len() as u64 > self.limits.max_value_bytes {
            return Err(KvError::ValueTooLarge(self.limits.max_value_bytes));
        }
        self.store.set(&self.namespace, key, value, self.limits.max_keys).await
    }

    /// See [`KvStore::delete`].
    pub async fn delete(&self, key: &str) -> Result<(), KvError> {
        self.check_key(key)?;
        self.store.delete(&self.namespace, key).await
    }

    /// See [`KvStore::increment`].
    pub async fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        self.check_key(key)?;
        self.store
            .increment(&self.namespace, key, delta, self.limits.max_keys)
            .await
    }
}

/// Parses a stored integer: decimal ASCII text.
pub fn parse_counter(value: &[u8]) -> Result<i64, KvError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(KvError::NotAnInteger)
}

/// A kv backend in memory, shared by every handler given it; lost with the
/// process.
#[derive(Debug, Default)]
pub struct MemoryKv {
    namespaces: Mutex<HashMap<String, HashMap<String, Vec<u8>>>>,
}

impl MemoryKv {
    fn with_namespace<R>(&self, namespace: &str, f: impl FnOnce(&mut HashMap<String, Vec<u8>>) -> R) -> R {
        let mut all = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        f(all.entry(namespace.to_string()).or_default())
    }
}

/// Every call completes at once: it only takes a lock held for a map
/// operation.
impl KvStore for MemoryKv {
    fn get<'a>(&'a self, namespace: &'a str, key: &'a str) -> KvFuture<'a, Option<Vec<u8>>> {
        Box::pin(ready(Ok(self.with_namespace(namespace, |ns| ns.get(key).cloned()))))
    }

    fn set<'a>(&'a self, namespace: &'a str, key: &'a str, value: &'a [u8], max_keys: u32) -> KvFuture<'a, ()> {
        Box::pin(ready(self.with_namespace(namespace, |ns| {
            if !ns.contains_key(key) && ns.len() >= max_keys as usize {
                return Err(KvError::TooManyKeys(max_keys));
            }
            ns.insert(key.to_string(), value.to_vec());
            Ok(())
        })))
    }

    fn delete<'a>(&'a self, namespace: &'a str, key: &'a str) -> KvFuture<'a, ()> {
        self.with_namespace(namespace, |ns| ns.remove(key));
        Box::pin(ready(Ok(())))
    }

    fn increment<'a>(&'a self, namespace: &'a str, key: &'a str, delta: i64, max_keys: u32) -> KvFuture<'a, i64> {
        Box::pin(ready(self.with_namespace(namespace, |ns| {
            let current = match ns.get(key) {
                Some(v) => parse_counter(v)?,
                None if ns.len() >= max_keys as usize => {
                    return Err(KvError::TooManyKeys(max_keys));
                }
                None => 0,
            };
            let next = current.checked_add(delta).ok_or(KvError::Overflow)?;
            ns.insert(key.to_string(), next.to_string().into_bytes());
            Ok(next)
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn namespaces_are_apart_and_limits_hold() {
        let store: Arc<dyn KvStore> = Arc::new(MemoryKv::default());
        let limits = KvLimits {
            max_value_bytes: 4,
            max_key_bytes: 8,
            max_keys: 2,
        };
        let a = Kv::new(store.clone(), "a", limits);
        let b = Kv::new(store, "b", limits);
        assert_eq!(a.increment("n", 2).await, Ok(2));
        assert_eq!(a.increment("n", 3).await, Ok(5));
        assert_eq!(a.get("n").await, Ok(Some(b"5".to_vec())));
        assert_eq!(b.get("n").await, Ok(None));
        assert_eq!(a.set("v", b"12345").await, Err(KvError::ValueTooLarge(4)));
        assert_eq!(a.set("", b"1").await, Err(KvError::InvalidKey(8)));
        a.set("s", b"x").await.unwrap();
        assert_eq!(a.set("t", b"x").await, Err(KvError::TooManyKeys(2)));
        assert_eq!(a.increment("s", 1).await, Err(KvError::NotAnInteger));
        a.set("s", i64::MAX.to_string().as_bytes()).await.unwrap_err();
        a.delete("s").await.unwrap();
        a.set("s", b"9").await.unwrap();
        assert_eq!(a.increment("n", i64::MAX).await, Err(KvError::Overflow));
    }
}
