//! Rescheduling after a failure: a VM that failed to start is placed anew away from the
//! hosts it was tried on, up to the cluster's attempt limit; a host going down fails (and
//! reschedules) the VMs placed there.

use super::decision::Decision;
use super::policy::Policy;
use super::request::ScheduleRequest;
use crate::error::Result;
use crate::state::{Cluster, FailedPlacement, Placement, PlacementKind, Release, Retry};
use policy_sdk::HostStatus;
use serde::Serialize;

/// What became of a failed VM start.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Reschedule {
    /// No reschedule was asked for ([`Cluster::vm_failed`]): the VM stays down.
    NotRequested,
    /// The VM was not placed anywhere (nothing to retry).
    NotPlaced,
    /// The VM was migrating: it stays on its source host.
    MigrationAbandoned,
    /// The VM ran out of attempts.
    GaveUp {
        /// Hosts tried, in order.
        tried: Vec<String>,
    },
    /// A new decision; it reserved on its host if it chose one.
    Decided {
        /// The decision.
        decision: Box<Decision>,
        /// The hosts it was tried on before, blacklisted for this decision.
        avoided: Vec<String>,
    },
}

/// The result of [`Policy::vm_failed`](crate::Policy::vm_failed).
#[derive(Debug, Clone, Serialize)]
pub struct VmFailed {
    /// The VM id.
    pub vm: String,
    /// Where it was placed (the host it failed on, start or migration); `None` when it
    /// was not placed.
    pub placement: Option<Placement>,
    /// The pending resources released.
    pub release: Release,
    /// What happened next.
    pub reschedule: Reschedule,
}

impl From<FailedPlacement> for VmFailed {
    /// The result of a failure nothing was scheduled again for ([`Cluster::vm_failed`]).
    fn from(failed: FailedPlacement) -> Self {
        let reschedule = match failed.placement.as_ref().map(|p| &p.kind) {
            None => Reschedule::NotPlaced,
            Some(PlacementKind::Start) => Reschedule::NotRequested,
            Some(PlacementKind::Migration { .. }) => Reschedule::MigrationAbandoned,
        };
        VmFailed::new(failed, reschedule)
    }
}

impl VmFailed {
    fn new(failed: FailedPlacement, reschedule: Reschedule) -> Self {
        VmFailed {
            vm: failed.vm,
            placement: failed.placement,
            release: failed.release,
            reschedule,
        }
    }
}

/// See [`Policy::vm_failed`](crate::Policy::vm_failed).
pub(super) fn vm_failed(policy: &Policy, cluster: &Cluster, vm_id: &str) -> Result<VmFailed> {
    let (failed, retry) = cluster.fail_placement(vm_id, true)?;
    let reschedule = match (&failed.placement, retry) {
        (None, _) => Reschedule::NotPlaced,
        (Some(_), Retry::GaveUp(tried)) => Reschedule::GaveUp { tried },
        (Some(placement), Retry::Allowed(tried)) => {
            let request = ScheduleRequest::new(placement.vm.clone()).blacklist(tried.clone());
            let decision = policy.schedule(cluster, &request)?;
            if decision.chosen.is_none() {
                cluster.forget_attempts(vm_id);
            }
            Reschedule::Decided {
                decision: Box::new(decision),
                avoided: tried,
            }
        }
        (Some(_), Retry::No) => Reschedule::MigrationAbandoned,
    };
    Ok(VmFailed::new(failed, reschedule))
}

/// See [`Policy::host_down`](crate::Policy::host_down).
pub(super) fn host_down(
    policy: &Policy,
    cluster: &Cluster,
    host_id: &str,
    status: HostStatus,
) -> Result<Vec<VmFailed>> {
    cluster.set_host_status(host_id, status)?;
    cluster
        .placed_on(host_id)
        .iter()
        .map(|vm| vm_failed(policy, cluster, vm))
        .collect()
}
