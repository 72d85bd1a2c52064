//! Per-run budgets: wall clock, fuel, memory, tables, instances and log
//! size, with defaults per task kind, and the resource limiter that enforces
//! the memory and table parts inside wasmtime.

use std::time::Duration;

use serde::Serialize;

/// How a task was scheduled; it decides the default wall-clock budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskKind {
    /// Runs once (default budget 30 s).
    OneOff,
    /// Runs every period (default budget 30 s per run).
    Periodic,
    /// A long run (default budget 10 min).
    Processing,
}

crate::names::named_enum!(TaskKind {
    OneOff => "one-off",
    Periodic => "periodic",
    Processing => "processing",
});

/// The limits of one run. Defaults come from [`Budget::for_kind`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// Wall-clock time from instantiation to the end of `execute-task`.
    pub timeout: Duration,
    /// Fuel (about one unit per wasm instruction), or `None` to run without
    /// a fuel budget (only on an engine without fuel metering).
    pub fuel: Option<u64>,
    /// Largest linear memory, in bytes.
    pub max_memory_bytes: u64,
    /// Largest table, in elements.
    pub max_table_elements: u64,
    /// Most core instances a component may create (components made by
    /// componentize-py and componentize-js use a dozen or so).
    pub max_instances: usize,
    /// Most tables.
    pub max_tables: usize,
    /// Most memories.
    pub max_memories: usize,
    /// Most bytes of log kept, counted as stored: each line's message
    /// (JSON-escaped) plus [`LOG_LINE_OVERHEAD`](crate::LOG_LINE_OVERHEAD).
    /// The rest is counted and dropped.
    pub max_log_bytes: usize,
    /// Most log lines kept (an empty line counts as any line); the rest is
    /// counted and dropped.
    pub max_log_lines: usize,
}

/// Default fuel for one-off and periodic runs: measured here, a tight Rust
/// loop burns 10^10 units in about 0.7 s, so this is several seconds of
/// busy CPU for compiled guests, inside the 30 s wall-clock budget.
pub const DEFAULT_FUEL: u64 = 100_000_000_000;

impl Budget {
    /// The defaults for a kind: 30 s (one-off, periodic) or 10 min
    /// (processing); fuel 10^11 (20x that for processing); 256 MiB of
    /// memory; 100,000 table elements; 64 KiB and 1,000 lines of log.
    pub fn for_kind(kind: TaskKind) -> Budget {
        let (timeout, fuel) = match kind {
            TaskKind::OneOff | TaskKind::Periodic => (Duration::from_secs(30), DEFAULT_FUEL),
            TaskKind::Processing => (Duration::from_secs(600), DEFAULT_FUEL * 20),
        };
        Budget {
            timeout,
            fuel: Some(fuel),
            max_memory_bytes: 256 << 20,
            max_table_elements: 100_000,
            max_instances: 64,
            max_tables: 64,
            max_memories: 16,
            max_log_bytes: 64 << 10,
            max_log_lines: 1000,
        }
    }
}

impl Default for Budget {
    fn default() -> Self {
        Budget::for_kind(TaskKind::OneOff)
    }
}

/// Enforces a [`Budget`]'s memory and table limits and records what the
/// guest asked for, so a trap after a refused grow is classified as
/// `memory-exceeded` whatever trap code the guest's allocator produced.
#[derive(Debug)]
pub(crate) struct RunLimiter {
    max_memory: usize,
    max_table_elements: usize,
    max_instances: usize,
    max_tables: usize,
    max_memories: usize,
    /// Largest memory size granted.
    pub(crate) peak_memory: usize,
    /// Set when a memory grow was refused.
    pub(crate) memory_refused: bool,
}

impl RunLimiter {
    pub(crate) fn new(budget: &Budget) -> Self {
        RunLimiter {
            max_memory: usize::try_from(budget.max_memory_bytes).unwrap_or(usize::MAX),
            max_table_elements: usize::try_from(budget.max_table_elements).unwrap_or(usize::MAX),
            max_instances: budget.max_instances,
            max_tables: budget.max_tables,
            max_memories: budget.max_memories,
            peak_memory: 0,
            memory_refused: false,
        }
    }
}

impl wasmtime::ResourceLimiter for RunLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max_memory || maximum.is_some_and(|m| desired > m) {
            self.memory_refused = true;
            return Ok(false);
        }
        self.peak_memory = self.peak_memory.max(desired);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= self.max_table_elements && maximum.is_none_or(|m| desired <= m))
    }

    fn instances(&self) -> usize {
        self.max_instances
    }

    fn tables(&self) -> usize {
        self.max_tables
    }

    fn memories(&self) -> usize {
        self.max_memories
    }
}
