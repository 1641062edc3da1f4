//! Waking hosts for VMs that may only run on hosts that are powered down.
//!
//! A VM restricted to dedicated hosts (`Vm::dedicated_hosts`) none of which is up cannot be
//! started anywhere. Rather than failing the start with "no host", the engine says which
//! host to wake and how ([`wake_up_for`], [`Policy::schedule_or_wake`]); the caller carries
//! the power action out (the engine never does) and starts the VM once the host is up.

use super::decision::Decision;
use super::policy::Policy;
use super::request::ScheduleRequest;
use crate::error::Result;
use crate::state::Cluster;
use policy_sdk::{Host, HostStatus, PowerAction, Snapshot, Vm};
use serde::Serialize;
use std::fmt;

/// Minutes a host whose power-up failed is not chosen again for a wake-up request (the
/// `power-saving` unit has its own `PowerUpBackoffMinutes` for its cycles).
pub const WAKE_UP_BACKOFF_MINUTES: u32 = 30;

/// A host to wake so that a VM can run. Returned to the caller to carry out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WakeUp {
    /// The VM that needs it.
    pub vm: String,
    /// The host to wake; `None` when none of the VM's hosts can be woken now.
    pub host: Option<String>,
    /// `activate` (from maintenance) or `power_up` (from down); `None` with `host`.
    pub action: Option<PowerAction>,
    /// What was found, in words: why this host, or why none.
    pub reason: String,
}

impl fmt::Display for WakeUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.host, self.action) {
            (Some(host), Some(action)) => write!(
                f,
                "VM {} may only run on powered-down hosts: requesting {} of {host} ({})",
                self.vm,
                action.as_str(),
                self.reason
            ),
            _ => write!(f, "VM {} cannot run now: {}", self.vm, self.reason),
        }
    }
}

fn backoff(snapshot: &Snapshot, host: &Host) -> bool {
    match host.power.last_failed_power_up {
        None => false,
        Some(at) => {
            snapshot.time_unix == 0
                || snapshot.time_unix < at.saturating_add(u64::from(WAKE_UP_BACKOFF_MINUTES) * 60)
        }
    }
}

impl WakeUp {
    /// The wake-up a VM needs, when it may only run on hosts none of which is up: the first of
    /// its dedicated hosts in maintenance is activated, else the first down host with working
    /// power management (not excluded from automatic power management, not in its back-off
    /// after a failed power-up) is powered up. A host powering down is not woken mid-shutdown.
    /// `None` when the VM may run on any host or one of its hosts is up.
    pub fn needed(snapshot: &Snapshot, vm: &Vm) -> Option<WakeUp> {
        if vm.dedicated_hosts.is_empty() {
            return None;
        }
        let hosts: Vec<&Host> = vm
            .dedicated_hosts
            .iter()
            .filter_map(|id| snapshot.hosts.iter().find(|h| h.id == *id))
            .collect();
        if hosts.iter().any(|h| h.status == HostStatus::Up) {
            return None;
        }
        let wake = |host: &Host, action: PowerAction, reason: String| WakeUp {
            vm: vm.id.clone(),
            host: Some(host.id.clone()),
            action: Some(action),
            reason,
        };
        let usable = |h: &&&Host| !h.power.excluded_from_automatic;
        if let Some(h) = hosts
            .iter()
            .filter(usable)
            .find(|h| h.status == HostStatus::Maintenance)
        {
            return Some(wake(
                h,
                PowerAction::Activate,
                format!("{} is in maintenance", h.id),
            ));
        }
        if let Some(h) = hosts
            .iter()
            .filter(usable)
            .find(|h| h.status == HostStatus::Down && h.power.enabled && !backoff(snapshot, h))
        {
            return Some(wake(h, PowerAction::PowerUp, format!("{} is down", h.id)));
        }
        let why: Vec<String> = if hosts.is_empty() {
            vec![format!(
                "none of its dedicated hosts ({}) is in the cluster",
                vm.dedicated_hosts.join(", ")
            )]
        } else {
            hosts
                .iter()
                .map(|h| {
                    let what = if h.power.excluded_from_automatic {
                        "excluded from automatic power management"
                    } else {
                        match h.status {
                            HostStatus::PoweringUp => {
                                "already powering up; start the VM when it is up"
                            }
                            HostStatus::PoweringDown => {
                                "shutting down; it can be powered up once down"
                            }
                            HostStatus::Down if !h.power.enabled => "down, power management not OK",
                            HostStatus::Down => "down, its last power-up failed recently",
                            _ => "not up",
                        }
                    };
                    format!("{} is {what}", h.id)
                })
                .collect()
        };
        Some(WakeUp {
            vm: vm.id.clone(),
            host: None,
            action: None,
            reason: why.join("; "),
        })
    }
}

/// The answer to [`Policy::schedule_or_wake`]: a decision, or the wake-up the VM waits for.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum StartOutcome {
    /// The VM was scheduled (the decision may still have found no host).
    Scheduled(Box<Decision>),
    /// The VM may only run on hosts that are not up: the host to wake (nothing reserved).
    WakeUp(WakeUp),
}

/// Schedules a VM, or, when it may only run on powered-down hosts, returns the wake-up
/// it needs instead of a "no host" decision ([`wake_up_for`]).
pub(super) fn schedule_or_wake(
    policy: &Policy,
    cluster: &Cluster,
    request: &ScheduleRequest,
) -> Result<StartOutcome> {
    if let Some(wake) = WakeUp::needed(&cluster.snapshot(), &request.vm) {
        return Ok(StartOutcome::WakeUp(wake));
    }
    Ok(StartOutcome::Scheduled(Box::new(
        policy.schedule(cluster, request)?,
    )))
}
