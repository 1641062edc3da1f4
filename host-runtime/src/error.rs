//! The one error type of the host runtime.

use std::fmt;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the runtime. Policy verdicts (a host rejected, with a
/// reason) are not errors; they are data in a [`Decision`](crate::Decision).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An input file (cluster, VM, policy, events) could not be read or is invalid.
    /// `field` is the path inside the document, e.g. `hosts[2].memory.free_mb`.
    #[error("{file}: {}{message}", field.as_deref().map(|f| format!("{f}: ")).unwrap_or_default())]
    Input {
        /// File name (or a label such as `<inline>`).
        file: String,
        /// Field path, when known.
        field: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// A policy module was rejected at load.
    #[error("module {file}: {reason}")]
    Module {
        /// File name the module came from.
        file: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A unit failed at run time (trap, deadline, memory cap, bad ABI output).
    #[error("unit {unit:?} (module {module}) failed: {fault}")]
    Unit {
        /// Unit name.
        unit: String,
        /// Module file name.
        module: String,
        /// The fault.
        fault: UnitFault,
    },
    /// A request made no sense (unknown unit, duplicate unit name, bad VM...).
    #[error("{0}")]
    Request(String),
    /// The wasm engine itself failed (out of resources at start-up...).
    #[error("engine: {0}")]
    Engine(String),
}

impl Error {
    /// An input error with a field path.
    pub fn input(
        file: impl Into<String>,
        field: Option<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::Input {
            file: file.into(),
            field,
            message: message.into(),
        }
    }

    /// A module load error.
    pub fn module(file: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Module {
            file: file.into(),
            reason: reason.into(),
        }
    }
}

/// Why a unit call failed. Every variant leaves the engine serving; the instance that
/// failed is discarded and a fresh one is made for the next call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitFault {
    /// The guest trapped (a panic in Rust guests); the message includes the guest's last
    /// error log line when it left one.
    Trap(String),
    /// The call ran past its deadline.
    Deadline {
        /// The deadline in milliseconds.
        ms: u64,
    },
    /// The guest tried to grow its memory past the cap.
    MemoryCap {
        /// The cap in MiB.
        mb: u64,
    },
    /// The guest broke the ABI: bad pointer or length, undecodable output, wrong number of
    /// results, unknown host or VM index.
    BadOutput(String),
    /// The guest reported that it could not run the call.
    GuestError(String),
    /// The guest's result is larger than the unit's output cap.
    OutputCap {
        /// Length the guest claimed, in bytes.
        bytes: usize,
        /// The cap in bytes.
        cap: usize,
    },
    /// The module's circuit breaker is open after repeated faults: the unit was not
    /// called, and its failure mode applies.
    CircuitOpen {
        /// Consecutive faults that tripped the breaker.
        failures: u32,
        /// Time until the next trial call, in milliseconds.
        retry_in_ms: u64,
    },
}

impl UnitFault {
    /// Whether the fault says the module is unhealthy (it counts towards its circuit
    /// breaker): traps, deadlines, memory and output caps, broken ABI output. A guest
    /// that reports an error cleanly is healthy.
    pub fn is_sandbox_fault(&self) -> bool {
        matches!(
            self,
            UnitFault::Trap(_)
                | UnitFault::Deadline { .. }
                | UnitFault::MemoryCap { .. }
                | UnitFault::BadOutput(_)
                | UnitFault::OutputCap { .. }
        )
    }
}

impl fmt::Display for UnitFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnitFault::Trap(msg) => write!(f, "trap: {msg}"),
            UnitFault::Deadline { ms } => write!(f, "deadline of {ms} ms exceeded"),
            UnitFault::MemoryCap { mb } => write!(f, "memory cap of {mb} MiB exceeded"),
            UnitFault::BadOutput(msg) => write!(f, "bad output: {msg}"),
            UnitFault::GuestError(msg) => write!(f, "guest error: {msg}"),
            UnitFault::OutputCap { bytes, cap } => {
                write!(f, "result of {bytes} bytes exceeds the output cap of {cap} bytes")
            }
            UnitFault::CircuitOpen {
                failures,
                retry_in_ms,
            } => write!(
                f,
                "circuit breaker open after {failures} consecutive faults; not called (next trial in {retry_in_ms} ms)"
            ),
        }
    }
}
