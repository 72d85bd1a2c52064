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
/// Secrets are capped well under it (`MAX_SECRET_BYTES`), and stdio is
/// redacted before it is cut, so no cut can split a secret.
pub(crate) const MAX_PARTIAL_LINE: usize = 4096;

/// What one stored log line costs beside its message: the JSON the store
/// and `--json` keep for it (`{"at_ms":…,"level":"…","source":"…","message":""}`).
/// An empty line costs this much too, so a flood of bare newlines fills
/// the cap as any flood does.
pub const LOG_LINE_OVERHEAD: usize = 80;

/// The log of one run, shared by the host imports and the stdio streams.
#[derive(Debug, Clone)]
pub(crate) struct SharedLog(Arc<Mutex<LogBuffer>>);

#[derive(Debug)]
struct LogBuffer {
    started: Instant,
    lines: Vec<LogLine>,
    /// What the kept lines cost, counted as [`stored_cost`] counts it.
    bytes: usize,
    cap: usize,
    max_lines: usize,
    dropped_lines: u64,
    dropped_bytes: u64,
    stdout: StdioState,
    stderr: StdioState,
    redactor: Redactor,
}

/// One stdio stream between writes: the redacted bytes of the line being
/// written, and raw bytes held back because they may be the start of a
/// secret that the next write completes.
#[derive(Debug, Default)]
struct StdioState {
    line: Vec<u8>,
    held: Vec<u8>,
}

/// The bytes a message costs once stored: its JSON string form (escapes
/// included) plus [`LOG_LINE_OVERHEAD`].
fn stored_cost(message: &str) -> usize {
    let escaped: usize = message
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum();
    escaped + LOG_LINE_OVERHEAD
}

impl SharedLog {
    /// A log that keeps at most `cap` stored bytes (messages plus
    /// [`LOG_LINE_OVERHEAD`] per line) and at most `max_lines` lines, with
    /// every secret `redactor` knows replaced.
    pub(crate) fn new(started: Instant, cap: usize, max_lines: usize, redactor: Redactor) -> Self {
        SharedLog(Arc::new(Mutex::new(LogBuffer {
            started,
            lines: Vec::new(),
            bytes: 0,
            cap,
            max_lines,
            dropped_lines: 0,
            dropped_bytes: 0,
            stdout: StdioState::default(),
            stderr: StdioState::default(),
            redactor,
        })))
    }

    /// The redactor the log applies, for the rest of the run's record.
    pub(crate) fn redactor(&self) -> Redactor {
        self.lock().redactor.clone()
    }

    /// Appends a line.
    pub(crate) fn push(&self, level: LogLevel, source: LogSource, message: String) {
        let mut buf = self.lock();
        let message = buf.redactor.text(message);
        buf.push(level, source, message);
    }

    /// Appends raw bytes from the guest's stdout or stderr. Secrets are
    /// replaced in the stream first; then lines are cut at newlines and at
    /// [`MAX_PARTIAL_LINE`].
    pub(crate) fn write_stdio(&self, source: LogSource, bytes: &[u8]) {
        let mut buf = self.lock();
        let mut state = std::mem::take(buf.stdio(source));
        state.held.extend_from_slice(bytes);
        buf.drain_stdio(source, &mut state, false);
        *buf.stdio(source) = state;
    }

    /// Flushes partial lines, adds the truncation marker if anything was
    /// dropped, and returns the lines.
    pub(crate) fn finish(&self) -> Vec<LogLine> {
        let mut buf = self.lock();
        for source in [LogSource::Stdout, LogSource::Stderr] {
            let mut state = std::mem::take(buf.stdio(source));
            buf.drain_stdio(source, &mut state, true);
            if !state.line.is_empty() {
                let line = std::mem::take(&mut state.line);
                buf.push_stdio(source, &line);
            }
        }
        let mut lines = std::mem::take(&mut buf.lines);
        if buf.dropped_lines > 0 {
            lines.push(LogLine {
                at_ms: buf.started.elapsed().as_millis() as u64,
                level: LogLevel::Warn,
                source: LogSource::Host,
                message: format!(
                    "log truncated at {} bytes or {} lines: {} more lines ({} bytes) were dropped",
                    buf.cap, buf.max_lines, buf.dropped_lines, buf.dropped_bytes
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
    fn stdio(&mut self, source: LogSource) -> &mut StdioState {
        match source {
            LogSource::Stderr => &mut self.stderr,
            _ => &mut self.stdout,
        }
    }

    /// Stores an already redacted message, or counts it as dropped.
    fn push(&mut self, level: LogLevel, source: LogSource, message: String) {
        let cost = stored_cost(&message);
        if self.lines.len() >= self.max_lines || self.bytes + cost > self.cap {
            self.dropped_lines += 1;
            self.dropped_bytes += message.len() as u64;
            return;
        }
        self.bytes += cost;
        self.lines.push(LogLine {
            at_ms: self.started.elapsed().as_millis() as u64,
            level,
            source,
            message,
        });
    }

    /// Moves `state.held` through the redactor into lines. Unless `last`,
    /// raw bytes that could be the start of a secret stay held.
    fn drain_stdio(&mut self, source: LogSource, state: &mut StdioState, last: bool) {
        let held = std::mem::take(&mut state.held);
        let mut at = 0;
        while at < held.len() {
            match self.redactor.at(&held[at..], last) {
                crate::config_values::Match::Secret(len) => {
                    for &b in crate::config_values::REDACTED.as_bytes() {
                        self.stdio_byte(source, state, b);
                    }
                    at += len;
                }
                crate::config_values::Match::Maybe => break,
                crate::config_values::Match::No => {
                    self.stdio_byte(source, state, held[at]);
                    at += 1;
                }
            }
        }
        state.held = held[at..].to_vec();
    }

    fn stdio_byte(&mut self, source: LogSource, state: &mut StdioState, b: u8) {
        if b == b'\n' {
            let line = std::mem::take(&mut state.line);
            self.push_stdio(source, &line);
            return;
        }
        state.line.push(b);
        if state.line.len() >= MAX_PARTIAL_LINE {
            let line = std::mem::take(&mut state.line);
            self.push_stdio(source, &line);
        }
    }

    /// Stores one stdio line (already redacted: it is never redacted again,
    /// so the marker itself cannot be mangled by a short secret).
    fn push_stdio(&mut self, source: LogSource, bytes: &[u8]) {
        let level = if source == LogSource::Stderr {
            LogLevel::Warn
        } else {
            LogLevel::Info
        };
        if self.lines.len() >= self.max_lines {
            // Past the line cap nothing is stored: count without decoding.
            self.dropped_lines += 1;
            self.dropped_bytes += bytes.len() as u64;
            return;
        }
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
        let log = SharedLog::new(Instant::now(), 1024, 1000, Redactor::default());
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
        let log = SharedLog::new(Instant::now(), 2 * (LOG_LINE_OVERHEAD + 4), 1000, Redactor::default());
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

    fn redactor(secret: &str) -> Redactor {
        let mut config = std::collections::BTreeMap::new();
        config.insert("token".to_string(), crate::config_values::ConfigValue::secret(secret));
        Redactor::new(&config)
    }

    fn all_text(lines: &[LogLine]) -> String {
        lines.iter().map(|l| l.message.as_str()).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn a_secret_split_across_writes_is_redacted() {
        let log = SharedLog::new(Instant::now(), 64 << 10, 1000, redactor("hunter2-secret"));
        log.write_stdio(LogSource::Stdout, b"token=hunt");
        log.write_stdio(LogSource::Stdout, b"er2-sec");
        log.write_stdio(LogSource::Stdout, b"ret done\nhunter2-secr");
        let lines = log.finish();
        let text = all_text(&lines);
        assert!(!text.contains("hunter2-secret"), "{text}");
        assert_eq!(lines[0].message, "token=[redacted] done");
        assert_eq!(
            lines[1].message, "hunter2-secr",
            "an unfinished secret is not the secret"
        );
    }

    #[test]
    fn a_secret_across_the_line_cut_or_a_newline_is_redacted() {
        let secret = "s3cr3t-value-".repeat(20); // 260 bytes
        let log = SharedLog::new(Instant::now(), 64 << 10, 1000, redactor(&secret));
        // The secret straddles the 4 KiB cut of a line with no newline.
        let mut out = vec![b'a'; MAX_PARTIAL_LINE - 100];
        out.extend_from_slice(secret.as_bytes());
        out.extend_from_slice(b"tail\n");
        log.write_stdio(LogSource::Stdout, &out);
        let multi = "line1\nline2-secret";
        let log2 = SharedLog::new(Instant::now(), 64 << 10, 1000, redactor(multi));
        log2.write_stdio(LogSource::Stderr, b"before line1\nline2-secret after\n");
        let text = all_text(&log.finish());
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(text.contains("[redacted]tail"), "{text}");
        let text2 = all_text(&log2.finish());
        assert_eq!(text2, "before [redacted] after");
    }

    #[test]
    fn empty_lines_cost_like_any_line_and_the_line_count_is_capped() {
        let log = SharedLog::new(Instant::now(), 64 << 10, 1000, Redactor::default());
        log.write_stdio(LogSource::Stdout, &vec![b'\n'; 2_000_000]);
        let lines = log.finish();
        let stored = serde_json::to_string(&lines).unwrap().len();
        assert!(lines.len() <= 1001, "{} lines", lines.len());
        assert!(stored <= (64 << 10) + 512, "{stored} bytes stored");
        assert!(lines.last().unwrap().message.starts_with("log truncated"));

        // With a byte cap below the line cap, bare newlines fill the bytes.
        let log = SharedLog::new(Instant::now(), 100 * LOG_LINE_OVERHEAD, 1000, Redactor::default());
        log.write_stdio(LogSource::Stdout, &vec![b'\n'; 10_000]);
        let lines = log.finish();
        assert_eq!(lines.len(), 101, "100 empty lines and the marker");
        assert!(lines[100].message.contains("9900 more lines"), "{:?}", lines[100]);
    }

    #[test]
    fn the_stored_cost_of_a_line_covers_its_json() {
        for message in ["", "plain", "quote \" and \\ back", "ctrl \u{1} \u{7f} é"] {
            let line = LogLine {
                // A day in: the longest budget a task may have.
                at_ms: 86_400_000,
                level: LogLevel::Error,
                source: LogSource::Handler,
                message: message.to_string(),
            };
            let json = serde_json::to_string(&line).unwrap().len() + 1; // the comma in the array
            assert!(
                json <= stored_cost(message),
                "{message:?}: {json} > {}",
                stored_cost(message)
            );
        }
    }
}
