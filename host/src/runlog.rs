//! A run's log: leveled lines from the `log` import and the captured
//! stdout/stderr of the guest, capped in bytes with a marker for what was
//! dropped.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::config_values::Redactor;

/// The severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that the handler survived.
    Warn,
    /// Something failed.
    Error,
}

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogSource {
    /// The handler's `log.write` import.
    Handler,
    /// A line the guest wrote to standard output (level `info`).
    Stdout,
    /// A line the guest wrote to standard error (level `warn`).
    Stderr,
    /// The host itself, about the run (trap details, refused calls,
    /// truncation).
    Host,
}

/// One line of a run's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// Milliseconds since the run started.
    pub at_ms: u64,
    /// Severity.
    pub level: LogLevel,
    /// Origin.
    pub source: LogSource,
    /// The text, without a trailing newline.
    pub message: String,
}

/// Longest partial stdout/stderr line kept before it is cut into a line of
/// its own, so a guest that never writes a newline still shows its output.
const MAX_PARTIAL_LINE: usize = 4096;

/// The log of one run, shared by the host imports and the stdio streams.
#[derive(Debug, Clone)]
pub(crate) struct SharedLog(Arc<Mutex<LogBuffer>>);

#[derive(Debug)]
struct LogBuffer {
    started: Instant,
    lines: Vec<LogLine>,
    bytes: usize,
    cap: usize,
    dropped_lines: u64,
    dropped_bytes: u64,
    partial_stdout: Vec<u8>,
    partial_stderr: Vec<u8>,
    redactor: Redactor,
}

impl SharedLog {
    /// A log that keeps at most `cap` bytes of messages, with every secret
    /// `redactor` knows replaced.
    pub(crate) fn new(started: Instant, cap: usize, redactor: Redactor) -> Self {
        SharedLog(Arc::new(Mutex::new(LogBuffer {
            started,
            lines: Vec::new(),
            bytes: 0,
            cap,
            dropped_lines: 0,
            dropped_bytes: 0,
            partial_stdout: Vec::new(),
            partial_stderr: Vec::new(),
            redactor,
        })))
    }

    /// The redactor the log applies, for the rest of the run's record.
    pub(crate) fn redactor(&self) -> Redactor {
        self.lock().redactor.clone()
    }

    /// Appends a line.
    pub(crate) fn push(&self, level: LogLevel, source: LogSource, message: String) {
        self.lock().push(level, source, message);
    }

    /// Appends raw bytes from the guest's stdout or stderr, cutting lines at
    /// newlines.
    pub(crate) fn write_stdio(&self, source: LogSource, bytes: &[u8]) {
        let mut buf = self.lock();
        let mut partial = std::mem::take(match source {
            LogSource::Stderr => &mut buf.partial_stderr,
            _ => &mut buf.partial_stdout,
        });
        for &b in bytes {
            if b == b'\n' {
                buf.push_stdio(source, &partial);
                partial.clear();
            } else {
                partial.push(b);
                if partial.len() >= MAX_PARTIAL_LINE {
                    buf.push_stdio(source, &partial);
                    partial.clear();
                }
            }
        }
        *match source {
            LogSource::Stderr => &mut buf.partial_stderr,
            _ => &mut buf.partial_stdout,
        } = partial;
    }

    /// Flushes partial lines, adds the truncation marker if anything was
    /// dropped, and returns the lines.
    pub(crate) fn finish(&self) -> Vec<LogLine> {
        let mut buf = self.lock();
        for source in [LogSource::Stdout, LogSource::Stderr] {
            let partial = std::mem::take(match source {
                LogSource::Stderr => &mut buf.partial_stderr,
                _ => &mut buf.partial_stdout,
            });
            if !partial.is_empty() {
                buf.push_stdio(source, &partial);
            }
        }
        let mut lines = std::mem::take(&mut buf.lines);
        if buf.dropped_lines > 0 {
            lines.push(LogLine {
                at_ms: buf.started.elapsed().as_millis() as u64,
                level: LogLevel::Warn,
                source: LogSource::Host,
                message: format!(
                    "log truncated at {} bytes: {} more lines ({} bytes) were dropped",
                    buf.cap, buf.dropped_lines, buf.dropped_bytes
                ),
            });
        }
        lines
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogBuffer> {
        // A panic while holding this lock can only come from a bug in this
        // module; the buffer is still usable, so recover it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl LogBuffer {
    fn push(&mut self, level: LogLevel, source: LogSource, message: String) {
        let message = self.redactor.text(message);
        if self.bytes + message.len() > self.cap {
            self.dropped_lines += 1;
            self.dropped_bytes += message.len() as u64;
            return;
        }
        self.bytes += message.len();
        self.lines.push(LogLine {
            at_ms: self.started.elapsed().as_millis() as u64,
            level,
            source,
            message,
        });
    }

    fn push_stdio(&mut self, source: LogSource, bytes: &[u8]) {
        let level = if source == LogSource::Stderr {
            LogLevel::Warn
        } else {
            LogLevel::Info
        };
        let text = String::from_utf8_lossy(bytes);
        self.push(level, source, text.trim_end_matches('\r').to_string());
    }
}

/// Captures one of the guest's stdio streams into the run's log. Writes
/// never block and never fail: past the cap they are counted and dropped.
pub(crate) struct CaptureStream {
    pub(crate) log: SharedLog,
    pub(crate) source: LogSource,
}

impl wasmtime_wasi::cli::IsTerminal for CaptureStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for CaptureStream {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(CaptureWriter {
            log: self.log.clone(),
            source: self.source,
        })
    }

    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::OutputStream> {
        Box::new(CaptureWriter {
            log: self.log.clone(),
            source: self.source,
        })
    }
}

struct CaptureWriter {
    log: SharedLog,
    source: LogSource,
}

impl tokio::io::AsyncWrite for CaptureWriter {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.log.write_stdio(self.source, buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[wasmtime_wasi::async_trait]
impl wasmtime_wasi::p2::Pollable for CaptureWriter {
    async fn ready(&mut self) {}
}

impl wasmtime_wasi::p2::OutputStream for CaptureWriter {
    fn write(&mut self, bytes: bytes::Bytes) -> wasmtime_wasi::p2::StreamResult<()> {
        self.log.write_stdio(self.source, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> wasmtime_wasi::p2::StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> wasmtime_wasi::p2::StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdio_is_cut_into_lines_and_partial_lines_are_flushed() {
        let log = SharedLog::new(Instant::now(), 1024, Redactor::default());
        log.write_stdio(LogSource::Stdout, b"one\ntw");
        log.write_stdio(LogSource::Stderr, b"err\n");
        log.write_stdio(LogSource::Stdout, b"o\nthree");
        let lines: Vec<_> = log.finish().into_iter().map(|l| (l.source, l.message)).collect();
        assert_eq!(
            lines,
            vec![
                (LogSource::Stdout, "one".to_string()),
                (LogSource::Stderr, "err".to_string()),
                (LogSource::Stdout, "two".to_string()),
                (LogSource::Stdout, "three".to_string()),
            ]
        );
    }

    #[test]
    fn a_full_log_drops_lines_and_says_how_many() {
        let log = SharedLog::new(Instant::now(), 10, Redactor::default());
        for _ in 0..5 {
            log.push(LogLevel::Info, LogSource::Handler, "abcd".into());
        }
        let lines = log.finish();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[2].message.contains("3 more lines (12 bytes) were dropped"),
            "{:?}",
            lines[2]
        );
    }
}
