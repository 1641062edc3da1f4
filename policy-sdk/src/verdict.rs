//! What units return: filter verdicts, weight penalties, balance actions.
//!
//! Verdicts are data, not errors: a rejected host is a normal outcome with a reason.

use crate::model::{HostIndex, VmIndex};
use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// A filter unit's answer for one candidate host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// The host may run the VM.
    Pass,
    /// The host may not run the VM.
    Reject {
        /// Stable machine-readable reason, e.g. `not_enough_memory`. Decisions group
        /// rejections by unit and code.
        code: String,
        /// Human detail for this host, e.g. `1024 MiB free, 4096 MiB needed`.
        detail: String,
    },
}

impl Verdict {
    /// A rejection with a code and a detail.
    pub fn reject(code: impl Into<String>, detail: impl Into<String>) -> Self {
        Verdict::Reject {
            code: code.into(),
            detail: detail.into(),
        }
    }

    /// True for [`Verdict::Pass`].
    pub fn is_pass(&self) -> bool {
        matches!(self, Verdict::Pass)
    }
}

/// A weight unit's raw penalty for one host: lower is better. The engine, not the unit,
/// turns penalties into ranks or normalized scores and applies factors.
pub type Penalty = i64;

/// Power actions a balance unit may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerAction {
    /// Move an empty host to maintenance.
    ToMaintenance,
    /// Power a host down.
    PowerDown,
    /// Activate a host in maintenance.
    Activate,
    /// Power a down host up.
    PowerUp,
}

/// An action proposed by a balance unit. The host enforces safety rules no unit can
/// override (migration modes, SPM and excluded hosts, actions per cycle).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BalanceAction {
    /// Migrate a VM to one of the candidate hosts (the engine picks with the policy's
    /// filters and weights).
    Migrate {
        /// The VM to move.
        vm: VmIndex,
        /// Acceptable destinations.
        candidate_hosts: Vec<HostIndex>,
        /// Why.
        reason: String,
    },
    /// Change a host's power state.
    Power {
        /// The host.
        host: HostIndex,
        /// What to do.
        action: PowerAction,
        /// Why.
        reason: String,
    },
}
