//! The one error type of the host runtime.

use std::fmt;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the runtime. Policy verdicts (a host rejected, with a
/// reason) are not errors; they are data in a [`Decision`](crate::Decision).
///
/// A surface maps an error by its [`Error::kind`]: HTTP 400/404/409/422/500, exit codes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid input: a file (cluster, VM, policy, events) or a request that is malformed
    /// or makes no sense. `file` names the file (or a label such as `<inline>`, or the
    /// request, e.g. `VM "web-1"`); `field` is the path inside it, e.g.
    /// `hosts[2].memory.free_mb`.
    #[error("{file}: {}{message}", field.as_deref().map(|f| format!("{f}: ")).unwrap_or_default())]
    Input {
        /// File name, label (`<inline>`) or the request (`VM "web-1"`).
        file: String,
        /// Field path, when known.
        field: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// Something a request names does not exist (a VM, host, unit, builtin policy).
    #[error("{message}")]
    NotFound {
        /// What kind of thing: `VM`, `host`, `unit`, `builtin policy`...
        what: &'static str,
        /// Its id or name.
        id: String,
        /// The whole message, e.g. `unknown VM "web-9"`.
        message: String,
    },
    /// The request cannot follow the current state (a memory change already in flight, a
    /// VM that is not running, a host id taken).
    #[error("{0}")]
    Conflict(String),
    /// A policy module was rejected at load.
    #[error("module {file}: {reason}")]
    Module {
        /// File name the module came from.
        file: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A unit failed at run time (trap, deadline, memory cap, bad ABI output) and its
    /// failure mode failed the request.
    #[error("unit {unit:?} (module {module}) failed: {fault}")]
    Unit {
        /// Unit name.
        unit: String,
        /// Module file name.
        module: String,
        /// The fault.
        fault: UnitFault,
    },
    /// A file or directory could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The path.
        path: String,
        /// What failed.
        message: String,
    },
    /// The wasm engine itself failed (out of resources at start-up...).
    #[error("engine: {0}")]
    Engine(String),
}

/// The kind of an [`Error`], for surfaces that map errors to statuses or exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// [`Error::Input`]: the caller's input is invalid (HTTP 400).
    InvalidInput,
    /// [`Error::NotFound`] (HTTP 404).
    NotFound,
    /// [`Error::Conflict`] (HTTP 409).
    Conflict,
    /// [`Error::Module`]: a module was rejected (HTTP 422).
    ModuleRejected,
    /// [`Error::Unit`]: a fail-closed unit faulted (HTTP 502: the policy, not the caller).
    UnitFault,
    /// [`Error::Io`].
    Io,
    /// [`Error::Engine`].
    Engine,
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

    /// Something named by a request does not exist: `unknown {what} "{id}"`.
    pub fn not_found(what: &'static str, id: impl Into<String>) -> Self {
        let id = id.into();
        Error::NotFound {
            what,
            message: format!("unknown {what} {id:?}"),
            id,
        }
    }

    /// Something named by a request does not exist, said in `message`.
    pub fn not_found_because(
        what: &'static str,
        id: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::NotFound {
            what,
            id: id.into(),
            message: message.into(),
        }
    }

    /// A request that cannot follow the current state.
    pub fn conflict(message: impl Into<String>) -> Self {
        Error::Conflict(message.into())
    }

    /// A module load error.
    pub fn module(file: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Module {
            file: file.into(),
            reason: reason.into(),
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Io {
            path: path.into(),
            message: message.into(),
        }
    }

    /// The kind of the error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Input { .. } => ErrorKind::InvalidInput,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::Conflict(_) => ErrorKind::Conflict,
            Error::Module { .. } => ErrorKind::ModuleRejected,
            Error::Unit { .. } => ErrorKind::UnitFault,
            Error::Io { .. } => ErrorKind::Io,
            Error::Engine(_) => ErrorKind::Engine,
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
