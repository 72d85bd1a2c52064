//! The quota of a granted data directory.
//!
//! wasmtime-wasi has no hook for filesystem writes, so `wasi:filesystem/types`
//! is linked twice: first wasmtime-wasi's own, then [`QuotaFs`] in its place
//! (the linker allows shadowing for exactly this). `QuotaFs` hands every call
//! to wasmtime-wasi's implementation and charges the ones that can grow a
//! file (`write`, `set-size`, and the streams of `write-via-stream` and
//! `append-via-stream`) against the run's [`DataQuota`] first. A write that
//! would pass the quota writes nothing and fails: `write` and `set-size`
//! with the `quota` error code, a stream's write with `last-operation-failed`
//! whose `filesystem-error-code` is `quota` (wasi-libc, and so Rust's
//! `std::fs` and C's stdio, do not ask for that code and report `EIO`). The
//! first refusal of a run puts a host line in the run's log.
//!
//! What is counted: the bytes the directory's files hold (their sizes, so a
//! sparse file counts at its full length), measured on the blocking pool
//! before a run starts (never on a runtime thread), plus every byte a write
//! adds past the end of a file. One count per directory is shared by every
//! run using it at the same time, so concurrent runs of a handler together
//! stay under its quota. Removing or truncating files frees room for the
//! next measurement (a run starting when no other run holds the
//! directory), not for the runs going on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use bytes::Bytes;

use crate::runlog::{LogLevel, LogSource, SharedLog};
use wasmtime::component::{HasData, Resource};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemCtxView};
use wasmtime_wasi::p2::bindings::filesystem::types::{self, ErrorCode, HostDescriptor, HostDirectoryEntryStream};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, FsError, FsResult, OutputStream, StreamError, StreamResult};

/// What one data directory holds, shared by every run that uses it at
/// once: concurrent runs of a handler charge one counter, so together they
/// never pass the directory's quota. The entry lives while a run holds it;
/// the next run after all have ended measures the directory afresh (so
/// files removed in between free their room).
#[derive(Debug, Default)]
struct DirUsage {
    used: tokio::sync::OnceCell<AtomicU64>,
}

/// The shared usage of each data directory in use, by path.
fn dir_usage(dir: &Path) -> Arc<DirUsage> {
    static DIRS: OnceLock<Mutex<HashMap<PathBuf, Weak<DirUsage>>>> = OnceLock::new();
    let mut dirs = DIRS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(u) = dirs.get(dir).and_then(Weak::upgrade) {
        return u;
    }
    dirs.retain(|_, u| u.strong_count() > 0);
    let u = Arc::new(DirUsage::default());
    dirs.insert(dir.to_path_buf(), Arc::downgrade(&u));
    u
}

/// The bytes a run's data directory may still grow by.
#[derive(Debug)]
pub(crate) struct DataQuota {
    dir: PathBuf,
    limit: u64,
    /// What the directory holds, shared with the other runs using it now,
    /// measured off the runtime's threads by [`DataQuota::measure`].
    usage: Arc<DirUsage>,
    /// The run's log, told once when a write is refused.
    log: Option<SharedLog>,
    told: AtomicBool,
}

impl DataQuota {
    /// A quota of `limit` bytes for the directory `dir`, shared with every
    /// other run using `dir` at the same time. Call [`DataQuota::measure`]
    /// before the run starts.
    pub(crate) fn new(dir: &Path, limit: u64, log: Option<SharedLog>) -> DataQuota {
        DataQuota {
            dir: dir.to_path_buf(),
            limit,
            usage: dir_usage(dir),
            log,
            told: AtomicBool::new(false),
        }
    }

    /// Measures what the directory holds, on the blocking pool, unless a
    /// run using it at the same time already has.
    pub(crate) async fn measure(&self) {
        let dir = self.dir.clone();
        self.usage
            .used
            .get_or_init(|| async move {
                let held = tokio::task::spawn_blocking(move || usage(&dir)).await.unwrap_or(0);
                AtomicU64::new(held)
            })
            .await;
    }

    fn used(&self) -> &AtomicU64 {
        match self.usage.used.get() {
            Some(used) => used,
            // `measure` runs before every run; should a caller skip it, the
            // quota still holds (measured here, on this thread).
            None => {
                let _ = self.usage.used.set(AtomicU64::new(usage(&self.dir)));
                self.usage.used.get().expect("just set")
            }
        }
    }

    /// Takes `n` bytes if they fit; otherwise says so in the run's log
    /// (once per run).
    fn charge(&self, n: u64) -> bool {
        let fits = n == 0
            || self
                .used()
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                    used.checked_add(n).filter(|&total| total <= self.limit)
                })
                .is_ok();
        if !fits
            && !self.told.swap(true, Ordering::AcqRel)
            && let Some(log) = &self.log
        {
            log.push(
                LogLevel::Warn,
                LogSource::Host,
                format!(
                    "a write to the data directory was refused: it would pass the quota of {} bytes ({} in use)",
                    self.limit,
                    self.used().load(Ordering::Acquire)
                ),
            );
        }
        fits
    }

    /// Gives back `n` bytes charged for a write that did not happen.
    fn refund(&self, n: u64) {
        let _ = self
            .used()
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| Some(used.saturating_sub(n)));
    }
}

/// The sum of the sizes of the files under `dir`, not following symlinks.
fn usage(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

/// What a quota stream's write fails with; `filesystem-error-code` turns it
/// into the `quota` error code.
#[derive(Debug, thiserror::Error)]
#[error("the data directory's quota is used up")]
struct QuotaExceeded;

fn quota_error() -> FsError {
    // `charge` has already logged the refusal.
    ErrorCode::Quota.into()
}

/// The file behind `fd`, if it is a file (not a directory).
fn file_of(view: &WasiFilesystemCtxView<'_>, fd: &Resource<Descriptor>) -> FsResult<Option<Arc<std::fs::File>>> {
    Ok(match view.table.get(fd)? {
        Descriptor::File(f) => Some(f.file.clone()),
        Descriptor::Dir(_) => None,
    })
}

fn size_of(file: &std::fs::File) -> u64 {
    file.metadata().map_or(0, |m| m.len())
}

/// `wasi:filesystem/types` with the run's quota on top of wasmtime-wasi's.
pub(crate) struct QuotaFs<'a> {
    pub(crate) inner: WasiFilesystemCtxView<'a>,
    pub(crate) quota: Option<Arc<DataQuota>>,
}

/// Names [`QuotaFs`] for `add_to_linker`.
pub(crate) struct QuotaFsData;

impl HasData for QuotaFsData {
    type Data<'a> = QuotaFs<'a>;
}

impl QuotaFs<'_> {
    /// Charges growing the file behind `fd` to `end` bytes; returns what
    /// was charged.
    fn charge_to(&self, fd: &Resource<Descriptor>, end: u64) -> FsResult<u64> {
        let Some(quota) = &self.quota else { return Ok(0) };
        let Some(file) = file_of(&self.inner, fd)? else {
            return Ok(0);
        };
        let growth = end.saturating_sub(size_of(&file));
        if quota.charge(growth) {
            Ok(growth)
        } else {
            Err(quota_error())
        }
    }

    /// Wraps a new output stream of the file behind `fd` so its writes are
    /// charged.
    fn wrap_stream(
        &mut self,
        fd: &Resource<Descriptor>,
        stream: Resource<DynOutputStream>,
        offset: Option<u64>,
    ) -> FsResult<Resource<DynOutputStream>> {
        let Some(quota) = self.quota.clone() else {
            return Ok(stream);
        };
        let Some(file) = file_of(&self.inner, fd)? else {
            return Ok(stream);
        };
        let inner = self.inner.table.delete(stream)?;
        let wrapped: DynOutputStream = Box::new(QuotaStream {
            inner,
            file,
            position: offset,
            charged_end: 0,
            quota,
        });
        Ok(self.inner.table.push(wrapped)?)
    }
}

impl types::Host for QuotaFs<'_> {
    fn convert_error_code(&mut self, err: FsError) -> wasmtime::Result<ErrorCode> {
        types::Host::convert_error_code(&mut self.inner, err)
    }

    fn filesystem_error_code(&mut self, err: Resource<wasmtime::Error>) -> wasmtime::Result<Option<ErrorCode>> {
        if self.inner.table.get(&err)?.downcast_ref::<QuotaExceeded>().is_some() {
            return Ok(Some(ErrorCode::Quota));
        }
        types::Host::filesystem_error_code(&mut self.inner, err)
    }
}

impl HostDescriptor for QuotaFs<'_> {
    async fn write(&mut self, fd: Resource<Descriptor>, buf: Vec<u8>, offset: types::Filesize) -> FsResult<u64> {
        let charged = self.charge_to(&fd, offset.saturating_add(buf.len() as u64))?;
        let written = self.inner.write(fd, buf, offset).await;
        if written.is_err()
            && let Some(q) = &self.quota
        {
            q.refund(charged);
        }
        written
    }

    async fn set_size(&mut self, fd: Resource<Descriptor>, size: types::Filesize) -> FsResult<()> {
        let charged = self.charge_to(&fd, size)?;
        let done = self.inner.set_size(fd, size).await;
        if done.is_err()
            && let Some(q) = &self.quota
        {
            q.refund(charged);
        }
        done
    }

    fn write_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
        offset: types::Filesize,
    ) -> FsResult<Resource<DynOutputStream>> {
        let borrowed = Resource::new_borrow(fd.rep());
        let stream = self.inner.write_via_stream(fd, offset)?;
        self.wrap_stream(&borrowed, stream, Some(offset))
    }

    fn append_via_stream(&mut self, fd: Resource<Descriptor>) -> FsResult<Resource<DynOutputStream>> {
        let borrowed = Resource::new_borrow(fd.rep());
        let stream = self.inner.append_via_stream(fd)?;
        self.wrap_stream(&borrowed, stream, None)
    }

    // Everything else is wasmtime-wasi's, unchanged.

    async fn advise(
        &mut self,
        fd: Resource<Descriptor>,
        offset: types::Filesize,
        len: types::Filesize,
        advice: types::Advice,
    ) -> FsResult<()> {
        self.inner.advise(fd, offset, len, advice).await
    }

    async fn sync_data(&mut self, fd: Resource<Descriptor>) -> FsResult<()> {
        self.inner.sync_data(fd).await
    }

    async fn get_flags(&mut self, fd: Resource<Descriptor>) -> FsResult<types::DescriptorFlags> {
        self.inner.get_flags(fd).await
    }

    async fn get_type(&mut self, fd: Resource<Descriptor>) -> FsResult<types::DescriptorType> {
        self.inner.get_type(fd).await
    }

    async fn set_times(
        &mut self,
        fd: Resource<Descriptor>,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        self.inner.set_times(fd, atim, mtim).await
    }

    async fn read(
        &mut self,
        fd: Resource<Descriptor>,
        len: types::Filesize,
        offset: types::Filesize,
    ) -> FsResult<(Vec<u8>, bool)> {
        self.inner.read(fd, len, offset).await
    }

    async fn read_directory(&mut self, fd: Resource<Descriptor>) -> FsResult<Resource<types::DirectoryEntryStream>> {
        self.inner.read_directory(fd).await
    }

    async fn sync(&mut self, fd: Resource<Descriptor>) -> FsResult<()> {
        self.inner.sync(fd).await
    }

    async fn create_directory_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<()> {
        self.inner.create_directory_at(fd, path).await
    }

    async fn stat(&mut self, fd: Resource<Descriptor>) -> FsResult<types::DescriptorStat> {
        self.inner.stat(fd).await
    }

    async fn stat_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
    ) -> FsResult<types::DescriptorStat> {
        self.inner.stat_at(fd, path_flags, path).await
    }

    async fn set_times_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        self.inner.set_times_at(fd, path_flags, path, atim, mtim).await
    }

    async fn link_at(
        &mut self,
        fd: Resource<Descriptor>,
        old_path_flags: types::PathFlags,
        old_path: String,
        new_descriptor: Resource<Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        self.inner
            .link_at(fd, old_path_flags, old_path, new_descriptor, new_path)
            .await
    }

    async fn open_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
        oflags: types::OpenFlags,
        flags: types::DescriptorFlags,
    ) -> FsResult<Resource<Descriptor>> {
        self.inner.open_at(fd, path_flags, path, oflags, flags).await
    }

    fn drop(&mut self, fd: Resource<Descriptor>) -> wasmtime::Result<()> {
        HostDescriptor::drop(&mut self.inner, fd)
    }

    async fn readlink_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<String> {
        self.inner.readlink_at(fd, path).await
    }

    async fn remove_directory_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<()> {
        self.inner.remove_directory_at(fd, path).await
    }

    async fn rename_at(
        &mut self,
        fd: Resource<Descriptor>,
        old_path: String,
        new_fd: Resource<Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        self.inner.rename_at(fd, old_path, new_fd, new_path).await
    }

    async fn symlink_at(&mut self, fd: Resource<Descriptor>, src_path: String, dest_path: String) -> FsResult<()> {
        self.inner.symlink_at(fd, src_path, dest_path).await
    }

    async fn unlink_file_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<()> {
        self.inner.unlink_file_at(fd, path).await
    }

    fn read_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
        offset: types::Filesize,
    ) -> FsResult<Resource<DynInputStream>> {
        self.inner.read_via_stream(fd, offset)
    }

    async fn is_same_object(&mut self, a: Resource<Descriptor>, b: Resource<Descriptor>) -> wasmtime::Result<bool> {
        self.inner.is_same_object(a, b).await
    }

    async fn metadata_hash(&mut self, fd: Resource<Descriptor>) -> FsResult<types::MetadataHashValue> {
        self.inner.metadata_hash(fd).await
    }

    async fn metadata_hash_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
    ) -> FsResult<types::MetadataHashValue> {
        self.inner.metadata_hash_at(fd, path_flags, path).await
    }
}

impl HostDirectoryEntryStream for QuotaFs<'_> {
    async fn read_directory_entry(
        &mut self,
        stream: Resource<types::DirectoryEntryStream>,
    ) -> FsResult<Option<types::DirectoryEntry>> {
        self.inner.read_directory_entry(stream).await
    }

    fn drop(&mut self, stream: Resource<types::DirectoryEntryStream>) -> wasmtime::Result<()> {
        HostDirectoryEntryStream::drop(&mut self.inner, stream)
    }
}

/// A file's output stream whose writes are charged to the quota first.
struct QuotaStream {
    inner: DynOutputStream,
    file: Arc<std::fs::File>,
    /// Where the next write lands; `None` for an append stream.
    position: Option<u64>,
    /// The furthest end already charged: writes still in flight have not
    /// grown the file yet, and must not be charged twice.
    charged_end: u64,
    quota: Arc<DataQuota>,
}

#[wasmtime_wasi::async_trait]
impl wasmtime_wasi::p2::Pollable for QuotaStream {
    async fn ready(&mut self) {
        self.inner.ready().await;
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for QuotaStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        let len = bytes.len() as u64;
        let size = size_of(&self.file).max(self.charged_end);
        let start = self.position.unwrap_or(size);
        let end = start.saturating_add(len);
        let growth = end.saturating_sub(size);
        if !self.quota.charge(growth) {
            return Err(StreamError::LastOperationFailed(wasmtime::Error::from(QuotaExceeded)));
        }
        self.charged_end = self.charged_end.max(end);
        if let Some(p) = &mut self.position {
            *p = end;
        }
        self.inner.write(bytes)
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.inner.check_write()
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn usage_sums_file_sizes_below_the_directory_and_runs_at_once_share_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("x"), [0; 10]).unwrap();
        std::fs::write(dir.join("a/b/y"), [0; 32]).unwrap();
        let q = DataQuota::new(&dir, 50, None);
        q.measure().await;
        assert_eq!(q.used().load(Ordering::Relaxed), 42);
        assert!(q.charge(8));
        // A second run at the same time shares the count.
        let other = DataQuota::new(&dir, 50, None);
        other.measure().await;
        assert!(!other.charge(1), "50 of 50 used by the two runs");
        q.refund(8);
        assert!(other.charge(8));
        // Once no run holds the directory, the next measures it afresh.
        drop((q, other));
        std::fs::remove_file(dir.join("x")).unwrap();
        let next = DataQuota::new(&dir, 50, None);
        next.measure().await;
        assert_eq!(next.used().load(Ordering::Relaxed), 32);
    }
}
