//! Host power management for the power-saving policy: which hosts are free, in
//! policy-controlled maintenance or down, and the one power action of a cycle chosen by the
//! first of seven rules that matches.

use crate::load::vm_count;
use policy_sdk::{Host, HostIndex, HostStatus, PowerAction, Snapshot};

/// The power management parameters of the `power-saving` unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PowerParams {
    /// `EnableAutomaticHostPowerManagement`: host shutdown allowed.
    pub enabled: bool,
    /// `HostsInReserve`: free (empty, Up) hosts to keep.
    pub reserve: u32,
    /// `HostEmptyMinutesBeforeShutdown`: how long a host must be empty before it is
    /// moved to maintenance.
    pub empty_minutes: u32,
    /// `PowerUpBackoffMinutes`: a host whose power-up failed is not chosen again for this
    /// long.
    pub backoff_minutes: u32,
    /// `ShutdownTimeoutMinutes`: a host powering down for longer is taken as failed to
    /// shut down, and may be powered up again.
    pub shutdown_timeout_minutes: u32,
}

impl Default for PowerParams {
    fn default() -> Self {
        Self {
            enabled: false,
            reserve: 0,
            empty_minutes: 10,
            backoff_minutes: 30,
            shutdown_timeout_minutes: 20,
        }
    }
}

/// The rule that decided a cycle (the reference's order; the first that matches wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// 1. Automatic power management is disabled: nothing.
    Disabled,
    /// 2. Fewer free hosts than the reserve, and nothing in policy maintenance or down to
    ///    wake: nothing.
    NothingToWake,
    /// 3. More free hosts than the reserve and more than one host in policy maintenance:
    ///    power one down, keeping one in maintenance as a warm spare.
    PowerDownSurplusMaintenance,
    /// 4. More free hosts than the reserve: move one empty host to maintenance.
    EmptyHostToMaintenance,
    /// 5. Free hosts equal the reserve and a host is in policy maintenance: power it down.
    PowerDownAtReserve,
    /// 6. Fewer free hosts than the reserve and a host in maintenance: activate it.
    ActivateMaintenance,
    /// 7. Fewer free hosts than the reserve: power up a down host.
    PowerUpDownHost,
}

impl Rule {
    /// The rule's number in the reference (1 to 7).
    pub fn number(self) -> u8 {
        match self {
            Rule::Disabled => 1,
            Rule::NothingToWake => 2,
            Rule::PowerDownSurplusMaintenance => 3,
            Rule::EmptyHostToMaintenance => 4,
            Rule::PowerDownAtReserve => 5,
            Rule::ActivateMaintenance => 6,
            Rule::PowerUpDownHost => 7,
        }
    }
}

/// The outcome of one cycle of power management.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerDecision {
    /// The rule that matched; `None` when no rule applies (free hosts equal the reserve
    /// and nothing sits in maintenance).
    pub rule: Option<Rule>,
    /// The action, if the rule found a host to act on.
    pub action: Option<(HostIndex, PowerAction)>,
    /// Why, with the counts it was decided on.
    pub reason: String,
}

/// Under the power policy: `controlled_by_policy` and not excluded for good.
pub fn policy_controlled(host: &Host) -> bool {
    host.power.controlled_by_policy && !host.power.excluded_from_automatic
}

/// Empty: Up with no running, migrating or pending VM.
pub fn is_empty(snapshot: &Snapshot, host: &Host) -> bool {
    host.status == HostStatus::Up && vm_count(snapshot, host) == 0
}

/// Whether a failed power-up is recent enough that the host must not be chosen again.
/// With an unknown snapshot time every recorded failure counts as recent.
pub fn in_backoff(snapshot: &Snapshot, host: &Host, backoff_minutes: u32) -> bool {
    match host.power.last_failed_power_up {
        None => false,
        Some(failed) => {
            snapshot.time_unix == 0
                || snapshot.time_unix < failed.saturating_add(u64::from(backoff_minutes) * 60)
        }
    }
}

/// Down for the power policy: `Down`, or `PoweringDown` for longer than the shutdown
/// timeout (a shutdown in progress is not down and is never woken mid-way).
pub fn counts_as_down(host: &Host, shutdown_timeout_minutes: u32) -> bool {
    host.status == HostStatus::Down
        || (host.status == HostStatus::PoweringDown
            && host.status_minutes >= shutdown_timeout_minutes)
}

/// Decides the cycle's power action over the hosts in `candidates`.
pub fn decide(snapshot: &Snapshot, p: &PowerParams, candidates: &[HostIndex]) -> PowerDecision {
    let hosts: Vec<(HostIndex, &Host)> = candidates
        .iter()
        .map(|&i| (i, &snapshot.hosts[i as usize]))
        .collect();
    let none = |rule: Option<Rule>, reason: String| PowerDecision {
        rule,
        action: None,
        reason,
    };
    if !p.enabled {
        return none(
            Some(Rule::Disabled),
            "automatic host power management is disabled (EnableAutomaticHostPowerManagement)"
                .into(),
        );
    }
    let empty: Vec<(HostIndex, &Host)> = hosts
        .iter()
        .copied()
        .filter(|(_, h)| is_empty(snapshot, h))
        .collect();
    let booting = hosts
        .iter()
        .filter(|(_, h)| h.status == HostStatus::PoweringUp && policy_controlled(h))
        .count() as u32;
    let free = empty.len() as u32 + booting;
    let mut maintenance: Vec<(HostIndex, &Host)> = hosts
        .iter()
        .copied()
        .filter(|(_, h)| h.status == HostStatus::Maintenance && policy_controlled(h))
        .collect();
    // Longest in maintenance first.
    maintenance.sort_by_key(|(i, h)| (core::cmp::Reverse(h.status_minutes), *i));
    let mut down: Vec<(HostIndex, &Host)> = hosts
        .iter()
        .copied()
        .filter(|(_, h)| {
            counts_as_down(h, p.shutdown_timeout_minutes) && policy_controlled(h) && h.power.enabled
        })
        .collect();
    // Really down before timed-out shutdowns.
    down.sort_by_key(|(i, h)| (h.status != HostStatus::Down, *i));
    let counts = format!(
        "{free} free host(s) ({} empty, {booting} powering up), reserve {}, {} in policy \
         maintenance, {} down",
        empty.len(),
        p.reserve,
        maintenance.len(),
        down.len()
    );
    let act = |rule: Rule, host: HostIndex, action: PowerAction, why: String| PowerDecision {
        rule: Some(rule),
        action: Some((host, action)),
        reason: format!("rule {}: {why} ({counts})", rule.number()),
    };
    let shutdown_ok = |h: &Host| h.power.enabled;

    if p.reserve > free && maintenance.is_empty() && down.is_empty() {
        return none(
            Some(Rule::NothingToWake),
            format!("rule 2: below the reserve but no host to wake ({counts})"),
        );
    }
    if p.reserve < free && maintenance.len() > 1 {
        if let Some(&(i, h)) = maintenance.iter().find(|(_, h)| shutdown_ok(h)) {
            return act(
                Rule::PowerDownSurplusMaintenance,
                i,
                PowerAction::PowerDown,
                format!(
                    "surplus of free hosts; powering down {} and keeping another in \
                     maintenance as a warm spare",
                    h.id
                ),
            );
        }
    }
    if p.reserve < free {
        let mut qualifying: Vec<(HostIndex, &Host)> = empty
            .iter()
            .copied()
            .filter(|(_, h)| {
                policy_controlled(h)
                    && !h.spm
                    && h.power.enabled
                    && h.empty_minutes >= p.empty_minutes
            })
            .collect();
        qualifying.sort_by_key(|(i, h)| (core::cmp::Reverse(h.empty_minutes), *i));
        return match qualifying.first() {
            Some(&(i, h)) => act(
                Rule::EmptyHostToMaintenance,
                i,
                PowerAction::ToMaintenance,
                format!(
                    "surplus of free hosts; {} has been empty for {} min (>= {})",
                    h.id, h.empty_minutes, p.empty_minutes
                ),
            ),
            None => none(
                Some(Rule::EmptyHostToMaintenance),
                format!(
                    "rule 4: surplus of free hosts, but no empty host qualifies for \
                     shutdown (policy-controlled, not SPM, power management OK, empty for \
                     {} min) ({counts})",
                    p.empty_minutes
                ),
            ),
        };
    }
    if p.reserve == free {
        if let Some(&(i, h)) = maintenance.iter().find(|(_, h)| shutdown_ok(h)) {
            return act(
                Rule::PowerDownAtReserve,
                i,
                PowerAction::PowerDown,
                format!("reserve met; powering down {} from maintenance", h.id),
            );
        }
        return none(None, format!("reserve met, nothing to do ({counts})"));
    }
    // p.reserve > free
    if let Some(&(i, h)) = maintenance.first() {
        return act(
            Rule::ActivateMaintenance,
            i,
            PowerAction::Activate,
            format!("below the reserve; activating {} from maintenance", h.id),
        );
    }
    let wakeable: Vec<&(HostIndex, &Host)> = down
        .iter()
        .filter(|(_, h)| !in_backoff(snapshot, h, p.backoff_minutes))
        .collect();
    match wakeable.first() {
        Some(&&(i, h)) => act(
            Rule::PowerUpDownHost,
            i,
            PowerAction::PowerUp,
            if h.status == HostStatus::PoweringDown {
                format!(
                    "below the reserve; powering up {} (its shutdown timed out after {} min)",
                    h.id, h.status_minutes
                )
            } else {
                format!("below the reserve; powering up {}", h.id)
            },
        ),
        None => none(
            Some(Rule::PowerUpDownHost),
            format!(
                "rule 7: below the reserve, but every down host failed to power up less than \
                 {} min ago ({counts})",
                p.backoff_minutes
            ),
        ),
    }
}
