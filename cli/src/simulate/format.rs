//! The scenario file format: the events and the VMs a scenario defines.

use super::*;

/// A sequence of lifecycle events to replay on a cluster, with the definitions of the VMs
/// it starts that the cluster file does not list.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// VM definitions that are not in the cluster (down, on no host). Optional.
    #[serde(default)]
    pub vms: Vec<Vm>,
    /// The events, applied in order.
    pub events: Vec<Event>,
}

impl Scenario {
    /// Reads a scenario file (JSON, or TOML by extension); errors name the file and field.
    pub fn from_file(path: &Path) -> Result<Self> {
        wasmsched::read_document(path)
    }
}

fn yes() -> bool {
    true
}

/// One lifecycle event. In files: an object tagged by `"event"`, e.g.
/// `{ "event": "vm_failed", "vm": "web-3", "reschedule": false }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    /// A mass start: the VMs are scheduled one after another in the listed order
    /// ([`Policy::schedule_batch`]), each decision seeing the pending resources of the
    /// previous ones.
    Start {
        /// VM ids (from the cluster or the scenario's `vms`).
        vms: Vec<String>,
    },
    /// A starting (or migrating) VM reached up on the host it was placed on
    /// ([`Cluster::vm_started`]).
    VmUp {
        /// VM id.
        vm: String,
    },
    /// A starting (or migrating) VM failed ([`Cluster::vm_failed`]). A failed start is
    /// scheduled again, without the hosts it was tried on, unless `reschedule` is false.
    VmFailed {
        /// VM id.
        vm: String,
        /// Schedule the VM again (default true).
        #[serde(default = "yes")]
        reschedule: bool,
    },
    /// Migrate a running VM away from its host ([`ScheduleRequest::migration`]).
    Migrate {
        /// VM id.
        vm: String,
    },
    /// A migration finished ([`Cluster::migration_finished`]).
    MigrationFinished {
        /// VM id.
        vm: String,
    },
    /// A migration failed; the VM stays on its source ([`Cluster::migration_failed`]).
    MigrationFailed {
        /// VM id.
        vm: String,
    },
    /// A host went down ([`Cluster::host_down`]): the VMs placed there and not started
    /// fail, and are scheduled again unless `reschedule` is false.
    HostDown {
        /// Host id.
        host: String,
        /// Schedule the failed VMs again (default true).
        #[serde(default = "yes")]
        reschedule: bool,
    },
    /// A host came back up.
    HostUp {
        /// Host id.
        host: String,
    },
    /// A host left the cluster ([`Cluster::remove_host`]); the VMs that were placed there
    /// and not started are scheduled again.
    RemoveHost {
        /// Host id.
        host: String,
    },
    /// Balance cycles over time: each advances the clock by `minutes`, sends the host
    /// reports, runs the policy's balance unit and carries its plan out.
    Balance {
        /// Number of cycles (default 1).
        #[serde(default = "one")]
        cycles: u32,
        /// Minutes per cycle (default 5).
        #[serde(default = "five")]
        minutes: u32,
    },
    /// The CPU usage of running VMs changes (the next host reports show it).
    Load {
        /// VM ids.
        vms: Vec<String>,
        /// New CPU usage, in percent of each VM's vCPUs.
        cpu_usage_percent: u32,
    },
    /// Running VMs shut down and leave their hosts.
    Stop {
        /// VM ids.
        vms: Vec<String>,
    },
}

fn one() -> u32 {
    1
}

fn five() -> u32 {
    5
}

impl Event {
    /// The event's name, as in files (`start`, `vm_up`...).
    pub fn name(&self) -> &'static str {
        match self {
            Event::Start { .. } => "start",
            Event::VmUp { .. } => "vm_up",
            Event::VmFailed { .. } => "vm_failed",
            Event::Migrate { .. } => "migrate",
            Event::MigrationFinished { .. } => "migration_finished",
            Event::MigrationFailed { .. } => "migration_failed",
            Event::HostDown { .. } => "host_down",
            Event::HostUp { .. } => "host_up",
            Event::RemoveHost { .. } => "remove_host",
            Event::Balance { .. } => "balance",
            Event::Load { .. } => "load",
            Event::Stop { .. } => "stop",
        }
    }
}

/// How many VM ids the one-line form of a `start` event names before summing up.
const START_LIST_LIMIT: usize = 16;

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        match self {
            Event::Start { vms } => {
                let shown: Vec<&str> = vms
                    .iter()
                    .take(START_LIST_LIMIT)
                    .map(String::as_str)
                    .collect();
                write!(f, " {}", shown.join(", "))?;
                if vms.len() > START_LIST_LIMIT {
                    write!(f, ", ... ({} VMs)", vms.len())?;
                }
                Ok(())
            }
            Event::VmUp { vm }
            | Event::Migrate { vm }
            | Event::MigrationFinished { vm }
            | Event::MigrationFailed { vm } => write!(f, " {vm}"),
            Event::VmFailed { vm, reschedule } => {
                write!(f, " {vm}")?;
                if !reschedule {
                    write!(f, " (no reschedule)")?;
                }
                Ok(())
            }
            Event::HostDown { host, reschedule } => {
                write!(f, " {host}")?;
                if !reschedule {
                    write!(f, " (no reschedule)")?;
                }
                Ok(())
            }
            Event::HostUp { host } | Event::RemoveHost { host } => write!(f, " {host}"),
            Event::Balance { cycles, minutes } => {
                write!(f, " {cycles} cycle(s) of {minutes} min")
            }
            Event::Load {
                vms,
                cpu_usage_percent,
            } => write!(f, " {} at {cpu_usage_percent}%", list(vms)),
            Event::Stop { vms } => write!(f, " {}", list(vms)),
        }
    }
}
