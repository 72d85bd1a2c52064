//! A host's identity to its store and, on a store with host leases, the
//! keeper that renews its lease, rescues the work of hosts that are gone,
//! and stops this host's runs when it could not renew in time.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use crate::outcome::StopReason;
use crate::store::{HostIdentity, Query};
use crate::work::{StoreError, TaskId, TaskState};

use super::dispatcher::Inner;

/// `len` random bytes as lowercase hex (from the kernel's generator).
fn random_hex(len: usize) -> String {
    use std::io::Read;
    let mut bytes = vec![0u8; len];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if read.is_err() {
        // No /dev/urandom: the time and the process id still tell starts apart.
        let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
        bytes = <sha2::Sha256 as sha2::Digest>::digest(seed.as_bytes())
            .iter()
            .copied()
            .take(len)
            .collect();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// This machine's name, as a host id's prefix (letters, digits, `-`).
fn machine_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let name: String = name
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' })
        .take(48)
        .collect();
    if name.is_empty() { "host".into() } else { name }
}

/// The identity of a host on `data_dir`: its id is kept in
/// `<data_dir>/host-id` (created on the first start, so a restarted host is
/// the same host to its store), with a new incarnation.
pub(super) fn identity(data_dir: &Path) -> Result<HostIdentity, StoreError> {
    let path = data_dir.join("host-id");
    let failed = |e: std::io::Error| StoreError::DataDir {
        path: path.clone(),
        detail: e.to_string(),
    };
    let id = match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => id.trim().to_string(),
        _ => {
            let id = format!("{}-{}", machine_name(), random_hex(4));
            use std::io::Write;
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    file.write_all(format!("{id}\n").as_bytes()).map_err(failed)?;
                    id
                }
                // Another process made it first: its id is the one.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    std::fs::read_to_string(&path).map_err(failed)?.trim().to_string()
                }
                Err(e) => return Err(failed(e)),
            }
        }
    };
    Ok(HostIdentity {
        id,
        incarnation: random_hex(8),
    })
}

/// What a renewal leaves of the lease: it holds until `trusted_until`, a
/// margin short of the store's expiry measured from before the renewal was
/// sent, so no other host can rescue this host's work while it trusts it.
fn trusted_until(sent: Instant, ttl: Duration) -> Instant {
    sent + ttl.saturating_sub(ttl / 5)
}

/// Keeps this host's lease on a store with leases (`ttl`): renews it seven
/// times per `ttl`, and at each renewal rescues the work of hosts whose
/// lease ran out. A run of this host that the store no longer counts as its
/// own (cancelled or rescued elsewhere) is stopped. When the lease could
/// not be renewed in time, every run is stopped (`lease-lost`), nothing is
/// claimed, and the host registers again as a new incarnation, then
/// rescues its own earlier runs. Returns at shutdown.
pub(super) async fn keep_lease(inner: Arc<Inner>, ttl: Duration) {
    let mut shutting_down = inner.shutting_down.subscribe();
    let every = (ttl / 7).max(Duration::from_millis(20));
    let mut trusted = trusted_until(Instant::now(), ttl);
    let mut unreachable = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = async { shutting_down.wait_for(|s| *s).await.is_ok() } => return,
        }
        let store = inner.queue.store.clone();
        let me = inner.me.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if !inner.lease_held.load(Ordering::Acquire) {
            // Lost earlier: join again as a new incarnation.
            let again = HostIdentity {
                id: me.id.clone(),
                incarnation: random_hex(8),
            };
            let sent = Instant::now();
            if store.register_host(again.clone(), inner.queue.now()).await.is_ok() {
                *inner.me.lock().unwrap_or_else(|e| e.into_inner()) = again.clone();
                trusted = trusted_until(sent, ttl);
                inner.lease_held.store(true, Ordering::Release);
                inner.alert(None, "this host joined the store again; it claims work again".into());
                if let Ok(changes) = store.recover(again, inner.queue.now()).await {
                    inner.queue.publish(&changes, |c| {
                        ("recovered", format!("its host's lease ran out; now {}", c.state))
                    });
                }
                inner.queue.wake.notify_one();
            }
            continue;
        }
        let sent = Instant::now();
        let left = trusted.saturating_duration_since(sent);
        let renewal = tokio::time::timeout(left, store.renew_host(me.clone(), inner.queue.now())).await;
        match renewal {
            Ok(Ok(held)) => {
                trusted = trusted_until(sent, ttl);
                if std::mem::take(&mut unreachable) {
                    inner.alert(None, "the store takes this host's lease renewals again".into());
                }
                stop_runs_not_held(&inner, &held, sent).await;
                // Rescue the work of hosts that are gone.
                if let Ok(changes) = store.recover(me, inner.queue.now()).await
                    && !changes.is_empty()
                {
                    inner.queue.publish(&changes, |c| {
                        ("recovered", format!("its host's lease ran out; now {}", c.state))
                    });
                    inner.queue.wake.notify_one();
                }
            }
            Ok(Err(StoreError::LeaseLost(why))) => lose_lease(&inner, &why),
            Ok(Err(e)) if Instant::now() < trusted => {
                if !std::mem::replace(&mut unreachable, true) {
                    inner.alert(
                        None,
                        format!(
                            "the store refused this host's lease renewal ({e}); its runs go on until the lease \
                             would run out, then stop"
                        ),
                    );
                }
            }
            Ok(Err(e)) => lose_lease(&inner, &e.to_string()),
            Err(_) => lose_lease(&inner, "no answer before the lease ran out"),
        }
    }
}

/// Stops every run of this host (`lease-lost`) and claims nothing until it
/// joins again.
fn lose_lease(inner: &Inner, why: &str) {
    if inner.lease_held.swap(false, Ordering::AcqRel) {
        let ids = inner.running_ids();
        inner.stop_running(&ids, StopReason::LeaseLost);
        inner.alert(
            None,
            format!(
                "this host's lease on the store ran out ({why}); its {} runs are stopped (lease-lost) and it claims \
                 nothing until it joins again",
                ids.len()
            ),
        );
    }
}

/// Stops the runs of this host that the store no longer counts as its own:
/// `cancelled` if the task was cancelled, `lease-lost` otherwise (rescued
/// by another host).
/// Runs claimed after `asked` (when the renewal was sent) are left alone:
/// the answer may predate them.
async fn stop_runs_not_held(inner: &Arc<Inner>, held: &[(TaskId, u64)], asked: Instant) {
    let lost: Vec<TaskId> = inner
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(id, r)| r.claimed_at < asked && !held.contains(&(**id, r.lease)))
        .map(|(id, _)| *id)
        .collect();
    if lost.is_empty() {
        return;
    }
    let tasks = inner
        .queue
        .store
        .query(Query {
            ids: Some(lost.clone()),
            ..Query::default()
        })
        .await
        .unwrap_or_default();
    let cancelled: Vec<TaskId> = tasks
        .iter()
        .filter(|t| t.state == TaskState::Cancelled)
        .map(|t| t.id)
        .collect();
    let rescued: Vec<TaskId> = lost.into_iter().filter(|id| !cancelled.contains(id)).collect();
    inner.stop_running(&cancelled, StopReason::Cancelled);
    inner.stop_running(&rescued, StopReason::LeaseLost);
}
