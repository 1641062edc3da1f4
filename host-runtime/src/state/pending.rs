//! The Pending Resource Manager: what VMs that were placed, but are not running yet, hold on
//! their hosts.
//!
//! Each pending resource is its own [`PendingRecord`] (kind, host, VM, amount). Aggregates per
//! host and per VM are sums over the records, computed when asked, never kept as counters, so
//! releasing a VM twice cannot corrupt them: the second release finds nothing to remove.
//! Adding a record equal to an existing one (same VM and [`ResourceKey`]: kind, plus node,
//! page size or custom kind name where relevant) replaces it, wherever it was.
//!
//! The manager itself is plain data; [`Cluster`](crate::Cluster) owns one and publishes each
//! changed host aggregate into the snapshot so every unit sees it.

use crate::error::{Error, Result};
use policy_sdk::{CustomAmount, HugePages, NodeMemory, PendingAggregate};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

/// Largest memory amount a record may hold, in MiB (1 EiB).
pub const MAX_MEMORY_MB: u64 = 1 << 40;
/// Largest count (vCPUs, pages, custom amounts) a record may hold.
pub const MAX_COUNT: u64 = 1 << 40;
/// Largest pCPU id a pinned-CPU record may name.
pub const MAX_CPU_ID: u32 = 1 << 20;

/// One kind of pending resource, with its amount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum PendingResource {
    /// Memory the host must have free now: the VM's static overhead (the reference's
    /// `PendingMemory`), in MiB.
    Memory {
        /// MiB.
        mb: u64,
    },
    /// Memory counted against the overcommit-aware ceiling: guest memory plus overheads
    /// (`PendingOvercommitMemory`), in MiB.
    OvercommitMemory {
        /// MiB.
        mb: u64,
    },
    /// vCPUs.
    CpuCores {
        /// vCPU count.
        count: u32,
    },
    /// Expected CPU load, in percent of the host's capacity.
    CpuLoad {
        /// Percent.
        percent: u32,
    },
    /// pCPUs claimed exclusively (dedicated pinning).
    PinnedCpus {
        /// pCPU ids.
        cpus: Vec<u32>,
    },
    /// Hugepages of one page size.
    Hugepages {
        /// Page size in KiB.
        size_kb: u64,
        /// Number of pages.
        count: u64,
    },
    /// Memory on one host NUMA node, in MiB.
    NumaMemory {
        /// Host node index.
        node: u32,
        /// MiB.
        mb: u64,
    },
    /// The pending VM itself (counted by affinity and power saving).
    Vm,
    /// Memory being hot plugged into a VM that already runs on the host, until the plug is
    /// confirmed or fails (see `Policy::hot_set_memory`). It counts as memory that must be free
    /// now and against the overcommit ceiling (or, for a hugepage-backed VM, as pages of
    /// its size), and on the host NUMA node the DIMM is bound to; it does not make the VM
    /// a pending VM.
    HotplugMemory {
        /// MiB.
        mb: u64,
        /// Host NUMA node the DIMM's memory is bound to, if any.
        node: Option<u32>,
        /// Hugepage size backing the DIMM (KiB), if any.
        hugepage_size_kb: Option<u64>,
    },
    /// An open-ended named amount (GPUs, SR-IOV VFs...): new kinds need no code here.
    Custom {
        /// Kind name, e.g. `gpu`.
        name: String,
        /// Amount.
        amount: u64,
    },
}

/// What makes two records of one VM "equal" (the second replaces the first): the kind, and
/// for NUMA memory the node, for hugepages the page size, for custom kinds the name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceKey {
    /// [`PendingResource::Memory`].
    Memory,
    /// [`PendingResource::OvercommitMemory`].
    OvercommitMemory,
    /// [`PendingResource::CpuCores`].
    CpuCores,
    /// [`PendingResource::CpuLoad`].
    CpuLoad,
    /// [`PendingResource::PinnedCpus`].
    PinnedCpus,
    /// [`PendingResource::Hugepages`] of a page size (KiB).
    Hugepages(u64),
    /// [`PendingResource::NumaMemory`] on a node.
    NumaMemory(u32),
    /// [`PendingResource::Vm`].
    Vm,
    /// [`PendingResource::HotplugMemory`] (one plug in flight per VM).
    HotplugMemory,
    /// [`PendingResource::Custom`] of a kind name.
    Custom(String),
}

impl PendingResource {
    /// The record identity within a VM.
    pub fn key(&self) -> ResourceKey {
        match self {
            PendingResource::Memory { .. } => ResourceKey::Memory,
            PendingResource::OvercommitMemory { .. } => ResourceKey::OvercommitMemory,
            PendingResource::CpuCores { .. } => ResourceKey::CpuCores,
            PendingResource::CpuLoad { .. } => ResourceKey::CpuLoad,
            PendingResource::PinnedCpus { .. } => ResourceKey::PinnedCpus,
            PendingResource::Hugepages { size_kb, .. } => ResourceKey::Hugepages(*size_kb),
            PendingResource::NumaMemory { node, .. } => ResourceKey::NumaMemory(*node),
            PendingResource::Vm => ResourceKey::Vm,
            PendingResource::HotplugMemory { .. } => ResourceKey::HotplugMemory,
            PendingResource::Custom { name, .. } => ResourceKey::Custom(name.clone()),
        }
    }

    /// Checks the amount; the error names the field.
    fn check(&self) -> std::result::Result<(), String> {
        let too_large = |field: &str, value: u64, max: u64| {
            if value > max {
                Err(format!("{field}: {value} is too large (at most {max})"))
            } else {
                Ok(())
            }
        };
        match self {
            PendingResource::Memory { mb } => too_large("memory.mb", *mb, MAX_MEMORY_MB),
            PendingResource::OvercommitMemory { mb } => {
                too_large("overcommit_memory.mb", *mb, MAX_MEMORY_MB)
            }
            PendingResource::CpuCores { count } => {
                too_large("cpu_cores.count", u64::from(*count), MAX_COUNT)
            }
            PendingResource::CpuLoad { percent } => {
                too_large("cpu_load.percent", u64::from(*percent), 1_000_000)
            }
            PendingResource::PinnedCpus { cpus } => match cpus.iter().find(|&&c| c > MAX_CPU_ID) {
                Some(c) => Err(format!(
                    "pinned_cpus.cpus: pCPU {c} is out of range (at most {MAX_CPU_ID})"
                )),
                None => Ok(()),
            },
            PendingResource::Hugepages { size_kb, count } => {
                if *size_kb == 0 {
                    return Err("hugepages.size_kb: must not be 0".into());
                }
                too_large("hugepages.count", *count, MAX_COUNT)
            }
            PendingResource::NumaMemory { mb, .. } => {
                too_large("numa_memory.mb", *mb, MAX_MEMORY_MB)
            }
            PendingResource::Vm => Ok(()),
            PendingResource::HotplugMemory {
                mb,
                hugepage_size_kb,
                ..
            } => {
                if *hugepage_size_kb == Some(0) {
                    return Err("hotplug_memory.hugepage_size_kb: must not be 0".into());
                }
                too_large("hotplug_memory.mb", *mb, MAX_MEMORY_MB)
            }
            PendingResource::Custom { name, amount } => {
                if name.is_empty() {
                    return Err("custom.name: must not be empty".into());
                }
                too_large("custom.amount", *amount, MAX_COUNT)
            }
        }
    }
}

impl fmt::Display for PendingResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PendingResource::Memory { mb } => write!(f, "memory {mb} MiB"),
            PendingResource::OvercommitMemory { mb } => write!(f, "overcommit memory {mb} MiB"),
            PendingResource::CpuCores { count } => write!(f, "{count} vCPUs"),
            PendingResource::CpuLoad { percent } => write!(f, "CPU load {percent}%"),
            PendingResource::PinnedCpus { cpus } => write!(f, "pinned pCPUs {cpus:?}"),
            PendingResource::Hugepages { size_kb, count } => {
                write!(f, "{count} hugepages of {size_kb} KiB")
            }
            PendingResource::NumaMemory { node, mb } => write!(f, "{mb} MiB on NUMA node {node}"),
            PendingResource::Vm => write!(f, "the VM"),
            PendingResource::HotplugMemory {
                mb,
                node,
                hugepage_size_kb,
            } => {
                write!(f, "hot-plugged memory {mb} MiB")?;
                if let Some(size) = hugepage_size_kb {
                    write!(f, " in {size} KiB hugepages")?;
                }
                match node {
                    Some(node) => write!(f, " on NUMA node {node}"),
                    None => Ok(()),
                }
            }
            PendingResource::Custom { name, amount } => write!(f, "{amount} {name}"),
        }
    }
}

/// One pending resource of one VM on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRecord {
    /// Host id.
    pub host: String,
    /// VM id.
    pub vm: String,
    /// The resource and its amount.
    #[serde(flatten)]
    pub resource: PendingResource,
}

/// The records, indexed by host and by VM. Both indexes hold the same records; every
/// mutation updates both (checked by the tests' invariant helper).
#[derive(Debug, Default, Clone)]
pub struct PendingResources {
    /// host -> vm -> key -> resource.
    by_host: HashMap<String, BTreeMap<String, BTreeMap<ResourceKey, PendingResource>>>,
    /// vm -> hosts on which it has records.
    hosts_of_vm: HashMap<String, BTreeSet<String>>,
}

/// Hosts whose pending aggregate a change moved, sorted by id, each with its new aggregate.
pub type Changed = Vec<(String, PendingAggregate)>;

impl PendingResources {
    /// Adds a record, replacing an equal one (same VM and key) wherever it is. Returns the
    /// hosts whose aggregate changed, with their new aggregates. The amount is checked
    /// first, and so is the sum it makes on its host; on error nothing changes.
    pub fn add(&mut self, record: PendingRecord) -> Result<Changed> {
        self.add_all(vec![record])
    }

    /// Adds records in order (a later equal record replaces an earlier one). All or
    /// nothing: amounts and the resulting host sums are checked before anything changes.
    /// Returns the hosts whose aggregates changed, sorted, with their new aggregates.
    pub fn add_all(&mut self, records: Vec<PendingRecord>) -> Result<Changed> {
        let sums = self.check_add(&records, None)?;
        let changed = self.insert_all(records);
        Ok(self.changed(changed, sums))
    }

    /// Replaces every record of `vm` with `records` (a new placement of the VM). All or
    /// nothing, like [`PendingResources::add_all`]. Returns the hosts whose aggregates
    /// changed (where the VM was and where it goes), sorted, with their new aggregates.
    pub fn replace_vm(&mut self, vm: &str, records: Vec<PendingRecord>) -> Result<Changed> {
        if let Some(other) = records.iter().find(|r| r.vm != vm) {
            return Err(Error::input(
                format!("placement of VM {vm:?}"),
                None,
                format!("cannot hold a record of VM {:?}", other.vm),
            ));
        }
        let sums = self.check_add(&records, Some(vm))?;
        let mut changed: BTreeSet<String> = self.clear_vm(vm).into_iter().map(|r| r.host).collect();
        changed.extend(self.insert_all(records));
        Ok(self.changed(changed, sums))
    }

    /// The changed hosts with their aggregates: those the check summed (the hosts that
    /// received records: the check's sum is of exactly the records they hold now), the
    /// others (hosts that only lost records) summed from their records.
    fn changed(
        &self,
        hosts: impl IntoIterator<Item = String>,
        mut sums: BTreeMap<String, PendingAggregate>,
    ) -> Changed {
        hosts
            .into_iter()
            .map(|host| {
                let aggregate = match sums.remove(&host) {
                    Some(sum) => {
                        debug_assert_eq!(sum, self.host_aggregate(&host), "host {host}");
                        sum
                    }
                    None => self.host_aggregate(&host),
                };
                (host, aggregate)
            })
            .collect()
    }

    /// Inserts checked records in order; returns the hosts whose aggregates changed.
    fn insert_all(&mut self, records: Vec<PendingRecord>) -> BTreeSet<String> {
        let mut changed = BTreeSet::new();
        for PendingRecord { host, vm, resource } in records {
            let key = resource.key();
            if let Some(old_host) = self.host_holding(&vm, &key) {
                if old_host != host {
                    self.remove_one(&old_host, &vm, &key);
                    changed.insert(old_host);
                }
            }
            self.by_host
                .entry(host.clone())
                .or_default()
                .entry(vm.clone())
                .or_default()
                .insert(key, resource);
            self.hosts_of_vm.entry(vm).or_default().insert(host.clone());
            changed.insert(host);
        }
        changed
    }

    /// Checks that `records` could be added: ids present, amounts in range, and no host
    /// sum overflowing once they replace their equal records (and, with `replacing_vm`,
    /// once every record of that VM is gone). The error names the VM, host and field.
    /// Returns the sums it checked: the aggregate each host that receives records will have.
    fn check_add(
        &self,
        records: &[PendingRecord],
        replacing_vm: Option<&str>,
    ) -> Result<BTreeMap<String, PendingAggregate>> {
        let mut new: BTreeMap<(&str, &str, ResourceKey), &PendingResource> = BTreeMap::new();
        for PendingRecord { host, vm, resource } in records {
            let context = || format!("pending resource of VM {vm:?} on host {host:?}");
            if host.is_empty() || vm.is_empty() {
                return Err(Error::input(
                    context(),
                    None,
                    "host and VM ids must not be empty",
                ));
            }
            resource
                .check()
                .map_err(|e| Error::input(context(), None, e))?;
            // A later equal record replaces an earlier one, whatever its host.
            new.retain(|(_, v, k), _| !(*v == vm.as_str() && *k == resource.key()));
            new.insert((host.as_str(), vm.as_str(), resource.key()), resource);
        }
        // A kept record is replaced when a new one has its VM and key (whatever the host);
        // only the records of the VMs that get new ones need that comparison.
        let new_vms: BTreeSet<&str> = new.keys().map(|(_, v, _)| *v).collect();
        let replaced = |vm: &str, key: &ResourceKey| {
            new_vms.contains(vm) && new.keys().any(|(_, nv, nk)| *nv == vm && nk == key)
        };
        let hosts: BTreeSet<&str> = new.keys().map(|(h, _, _)| *h).collect();
        let mut sums = BTreeMap::new();
        for host in hosts {
            let kept = self
                .by_host
                .get(host)
                .into_iter()
                .flatten()
                .filter(|(v, _)| Some(v.as_str()) != replacing_vm)
                .flat_map(|(v, records)| {
                    records
                        .iter()
                        .filter(move |(k, _)| !replaced(v, k))
                        .map(move |(_, r)| (v, r))
                });
            let added: Vec<(String, &PendingResource)> = new
                .iter()
                .filter(|((h, _, _), _)| *h == host)
                .map(|((_, v, _), r)| (v.to_string(), *r))
                .collect();
            let sum = aggregate_of(kept.chain(added.iter().map(|(v, r)| (v, *r))))
                .map_err(|e| Error::conflict(format!("pending resources on host {host:?}: {e}")))?;
            sums.insert(host.to_string(), sum);
        }
        Ok(sums)
    }

    /// Every record on a host as (VM id, resource).
    fn host_records<'a>(
        &'a self,
        host: &str,
    ) -> impl Iterator<Item = (&'a String, &'a PendingResource)> + 'a {
        self.by_host
            .get(host)
            .into_iter()
            .flat_map(|vms| vms.iter())
            .flat_map(|(vm, records)| records.values().map(move |r| (vm, r)))
    }

    fn host_holding(&self, vm: &str, key: &ResourceKey) -> Option<String> {
        self.hosts_of_vm.get(vm)?.iter().find_map(|h| {
            self.by_host
                .get(h)
                .and_then(|vms| vms.get(vm))
                .filter(|records| records.contains_key(key))
                .map(|_| h.clone())
        })
    }

    fn remove_one(&mut self, host: &str, vm: &str, key: &ResourceKey) {
        let Some(vms) = self.by_host.get_mut(host) else {
            return;
        };
        let Some(records) = vms.get_mut(vm) else {
            return;
        };
        records.remove(key);
        if records.is_empty() {
            vms.remove(vm);
            if let Some(hosts) = self.hosts_of_vm.get_mut(vm) {
                hosts.remove(host);
                if hosts.is_empty() {
                    self.hosts_of_vm.remove(vm);
                }
            }
        }
        if vms.is_empty() {
            self.by_host.remove(host);
        }
    }

    /// Removes the record of `vm` with this key, wherever it is, and returns it (`None` the
    /// second time). The VM's other records stay.
    pub fn remove(&mut self, vm: &str, key: &ResourceKey) -> Option<PendingRecord> {
        let host = self.host_holding(vm, key)?;
        let resource = self.by_host.get(&host)?.get(vm)?.get(key)?.clone();
        self.remove_one(&host, vm, key);
        Some(PendingRecord {
            host,
            vm: vm.to_string(),
            resource,
        })
    }

    /// Removes every record of a VM and returns them (none the second time).
    pub fn clear_vm(&mut self, vm: &str) -> Vec<PendingRecord> {
        let Some(hosts) = self.hosts_of_vm.remove(vm) else {
            tracing::debug!(vm, "no pending resources to clear for this VM");
            return Vec::new();
        };
        let mut removed = Vec::new();
        for host in hosts {
            if let Some(vms) = self.by_host.get_mut(&host) {
                if let Some(records) = vms.remove(vm) {
                    removed.extend(records.into_values().map(|resource| PendingRecord {
                        host: host.clone(),
                        vm: vm.to_string(),
                        resource,
                    }));
                }
                if vms.is_empty() {
                    self.by_host.remove(&host);
                }
            }
        }
        removed
    }

    /// Removes every record on a host and returns them (none the second time).
    pub fn clear_host(&mut self, host: &str) -> Vec<PendingRecord> {
        let Some(vms) = self.by_host.remove(host) else {
            tracing::debug!(host, "no pending resources to clear on this host");
            return Vec::new();
        };
        let mut removed = Vec::new();
        for (vm, records) in vms {
            if let Some(hosts) = self.hosts_of_vm.get_mut(&vm) {
                hosts.remove(host);
                if hosts.is_empty() {
                    self.hosts_of_vm.remove(&vm);
                }
            }
            removed.extend(records.into_values().map(|resource| PendingRecord {
                host: host.to_string(),
                vm: vm.clone(),
                resource,
            }));
        }
        removed
    }

    /// The records on a host, by VM id then key.
    pub fn records_on_host(&self, host: &str) -> Vec<PendingRecord> {
        let Some(vms) = self.by_host.get(host) else {
            return Vec::new();
        };
        vms.iter()
            .flat_map(|(vm, records)| {
                records.values().map(move |resource| PendingRecord {
                    host: host.to_string(),
                    vm: vm.clone(),
                    resource: resource.clone(),
                })
            })
            .collect()
    }

    /// The records of a VM, by host id then key.
    pub fn records_of_vm(&self, vm: &str) -> Vec<PendingRecord> {
        let Some(hosts) = self.hosts_of_vm.get(vm) else {
            return Vec::new();
        };
        hosts
            .iter()
            .flat_map(|host| {
                self.by_host
                    .get(host)
                    .and_then(|vms| vms.get(vm))
                    .into_iter()
                    .flat_map(move |records| {
                        records.values().map(move |resource| PendingRecord {
                            host: host.clone(),
                            vm: vm.to_string(),
                            resource: resource.clone(),
                        })
                    })
            })
            .collect()
    }

    /// The hosts on which a VM has records.
    pub fn hosts_of_vm(&self, vm: &str) -> Vec<String> {
        self.hosts_of_vm
            .get(vm)
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Sum of the records on a host, by kind (computed from the records, not a counter).
    pub fn host_aggregate(&self, host: &str) -> PendingAggregate {
        aggregate_of(self.host_records(host)).expect("sums are checked when records are added")
    }

    /// Sum of a VM's records over every host, by kind.
    pub fn vm_aggregate(&self, vm: &str) -> PendingAggregate {
        let records = self
            .hosts_of_vm
            .get(vm)
            .into_iter()
            .flatten()
            .filter_map(|host| self.by_host.get(host)?.get_key_value(vm))
            .flat_map(|(vm, records)| records.values().map(move |r| (vm, r)));
        aggregate_of(records).expect("a VM's sums are bounded by its hosts' sums")
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.by_host
            .values()
            .flat_map(|vms| vms.values())
            .map(BTreeMap::len)
            .sum()
    }

    /// Hosts with at least one record, sorted.
    pub fn hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self.by_host.keys().cloned().collect();
        hosts.sort();
        hosts
    }
}

/// Sums (VM id, resource) records into an aggregate; VMs with a [`PendingResource::Vm`]
/// record are listed as pending VMs. Errors (naming the field) on overflow.
fn aggregate_of<'a>(
    records: impl Iterator<Item = (&'a String, &'a PendingResource)>,
) -> std::result::Result<PendingAggregate, String> {
    fn add_u64(sum: &mut u64, value: u64, field: &str) -> std::result::Result<(), String> {
        *sum = sum
            .checked_add(value)
            .ok_or_else(|| format!("{field}: the host's total overflows"))?;
        Ok(())
    }
    fn add_u32(sum: &mut u32, value: u32, field: &str) -> std::result::Result<(), String> {
        *sum = sum
            .checked_add(value)
            .ok_or_else(|| format!("{field}: the host's total overflows"))?;
        Ok(())
    }
    let mut agg = PendingAggregate::default();
    let mut pinned = BTreeSet::new();
    let mut hugepages: BTreeMap<u64, u64> = BTreeMap::new();
    let mut numa: BTreeMap<u32, u64> = BTreeMap::new();
    let mut custom: BTreeMap<&str, u64> = BTreeMap::new();
    let mut vms = BTreeSet::new();
    for (vm, resource) in records {
        match resource {
            PendingResource::Memory { mb } => add_u64(&mut agg.memory_mb, *mb, "memory.mb")?,
            PendingResource::OvercommitMemory { mb } => {
                add_u64(&mut agg.overcommit_memory_mb, *mb, "overcommit_memory.mb")?
            }
            PendingResource::CpuCores { count } => {
                add_u32(&mut agg.cpu_cores, *count, "cpu_cores.count")?
            }
            PendingResource::CpuLoad { percent } => {
                add_u32(&mut agg.cpu_load_percent, *percent, "cpu_load.percent")?
            }
            PendingResource::PinnedCpus { cpus } => pinned.extend(cpus.iter().copied()),
            PendingResource::Hugepages { size_kb, count } => add_u64(
                hugepages.entry(*size_kb).or_default(),
                *count,
                "hugepages.count",
            )?,
            PendingResource::NumaMemory { node, mb } => {
                add_u64(numa.entry(*node).or_default(), *mb, "numa_memory.mb")?
            }
            PendingResource::Vm => {
                vms.insert(vm.clone());
            }
            PendingResource::HotplugMemory {
                mb,
                node,
                hugepage_size_kb,
            } => {
                add_u64(
                    &mut agg.overcommit_memory_mb,
                    *mb,
                    "hotplug_memory.mb (overcommit)",
                )?;
                match hugepage_size_kb {
                    Some(size_kb) => add_u64(
                        hugepages.entry(*size_kb).or_default(),
                        HugePages::needed(*mb, *size_kb),
                        "hotplug_memory.hugepages",
                    )?,
                    None => add_u64(&mut agg.memory_mb, *mb, "hotplug_memory.mb")?,
                }
                if let Some(node) = node {
                    add_u64(
                        numa.entry(*node).or_default(),
                        *mb,
                        "hotplug_memory.mb (node)",
                    )?
                }
            }
            PendingResource::Custom { name, amount } => {
                add_u64(custom.entry(name).or_default(), *amount, "custom.amount")?
            }
        }
    }
    agg.vms = vms.into_iter().collect();
    agg.pinned_cpus = pinned.into_iter().collect();
    agg.hugepages = hugepages
        .into_iter()
        .map(|(size_kb, count)| HugePages { size_kb, count })
        .collect();
    agg.numa_memory = numa
        .into_iter()
        .map(|(node, memory_mb)| NodeMemory { node, memory_mb })
        .collect();
    agg.custom = custom
        .into_iter()
        .map(|(kind, amount)| CustomAmount {
            kind: kind.to_string(),
            amount,
        })
        .collect();
    Ok(agg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(host: &str, vm: &str, resource: PendingResource) -> PendingRecord {
        PendingRecord {
            host: host.into(),
            vm: vm.into(),
            resource,
        }
    }

    fn mem(mb: u64) -> PendingResource {
        PendingResource::OvercommitMemory { mb }
    }

    /// Both indexes agree, and every host aggregate equals a fresh sum of its records.
    fn assert_consistent(p: &PendingResources) {
        for (host, vms) in &p.by_host {
            assert!(!vms.is_empty(), "empty host entry {host}");
            for (vm, records) in vms {
                assert!(!records.is_empty(), "empty VM entry {vm} on {host}");
                assert!(p.hosts_of_vm[vm].contains(host));
                for (key, r) in records {
                    assert_eq!(&r.key(), key);
                }
            }
        }
        for (vm, hosts) in &p.hosts_of_vm {
            for host in hosts {
                assert!(p.by_host[host].contains_key(vm), "{vm} not on {host}");
            }
        }
    }

    #[test]
    fn double_release_leaves_other_records_intact_and_aggregates_exact() {
        let mut p = PendingResources::default();
        p.add_all(vec![
            rec("h1", "a", mem(1_000)),
            rec("h1", "a", PendingResource::Vm),
            rec("h1", "b", mem(2_000)),
            rec("h1", "b", PendingResource::Vm),
            rec("h2", "c", mem(4_000)),
        ])
        .unwrap();
        for round in 0..2 {
            let removed = p.clear_vm("a");
            assert_eq!(
                removed.len(),
                if round == 0 { 2 } else { 0 },
                "round {round}"
            );
            let h1 = p.host_aggregate("h1");
            assert_eq!(h1.overcommit_memory_mb, 2_000, "round {round}");
            assert_eq!(h1.vms, ["b"], "round {round}");
            assert_eq!(p.host_aggregate("h2").overcommit_memory_mb, 4_000);
            assert_eq!(p.len(), 3);
            assert_consistent(&p);
        }
        for round in 0..2 {
            let removed = p.clear_host("h1");
            assert_eq!(
                removed.len(),
                if round == 0 { 2 } else { 0 },
                "round {round}"
            );
            assert_eq!(p.host_aggregate("h1"), PendingAggregate::default());
            assert_eq!(p.vm_aggregate("c").overcommit_memory_mb, 4_000);
            assert_consistent(&p);
        }
        assert!(p.clear_vm("never-seen").is_empty());
        assert!(p.clear_host("never-seen").is_empty());
    }

    #[test]
    fn an_equal_record_replaces_the_old_one_wherever_it_was() {
        // (records added in order, expected aggregate on h1, on h2, record count)
        type Case = (&'static str, Vec<PendingRecord>, u64, u64, usize);
        let cases: Vec<Case> = vec![
            (
                "same kind and VM on the same host",
                vec![rec("h1", "a", mem(100)), rec("h1", "a", mem(300))],
                300,
                0,
                1,
            ),
            (
                "same kind and VM on another host moves it",
                vec![rec("h1", "a", mem(100)), rec("h2", "a", mem(300))],
                0,
                300,
                1,
            ),
            (
                "same kind, other VM: both count",
                vec![rec("h1", "a", mem(100)), rec("h1", "b", mem(300))],
                400,
                0,
                2,
            ),
            (
                "other kind, same VM: both kept",
                vec![
                    rec("h1", "a", mem(100)),
                    rec("h1", "a", PendingResource::Memory { mb: 64 }),
                ],
                100,
                0,
                2,
            ),
        ];
        for (name, records, h1, h2, count) in cases {
            let mut p = PendingResources::default();
            for r in records {
                p.add(r).unwrap();
            }
            assert_eq!(p.host_aggregate("h1").overcommit_memory_mb, h1, "{name}");
            assert_eq!(p.host_aggregate("h2").overcommit_memory_mb, h2, "{name}");
            assert_eq!(p.len(), count, "{name}");
            assert_consistent(&p);
        }
    }

    #[test]
    fn hugepages_numa_and_custom_records_are_keyed_by_size_node_and_name() {
        let mut p = PendingResources::default();
        let pages = |size_kb, count| PendingResource::Hugepages { size_kb, count };
        let numa = |node, mb| PendingResource::NumaMemory { node, mb };
        let custom = |name: &str, amount| PendingResource::Custom {
            name: name.into(),
            amount,
        };
        p.add_all(vec![
            rec("h", "a", pages(2_048, 10)),
            rec("h", "a", pages(1_048_576, 2)),
            rec("h", "a", pages(2_048, 12)), // replaces the 10
            rec("h", "b", pages(2_048, 5)),
            rec("h", "a", numa(0, 1_000)),
            rec("h", "a", numa(1, 500)),
            rec("h", "b", numa(1, 250)),
            rec("h", "a", custom("gpu", 1)),
            rec("h", "b", custom("gpu", 2)),
            rec("h", "b", custom("sriov_vf", 4)),
            rec("h", "b", custom("gpu", 1)), // replaces b's 2
            rec("h", "a", PendingResource::PinnedCpus { cpus: vec![3, 1] }),
            rec("h", "b", PendingResource::PinnedCpus { cpus: vec![1, 7] }),
        ])
        .unwrap();
        let agg = p.host_aggregate("h");
        assert_eq!(agg.hugepages_of(2_048), 17);
        assert_eq!(agg.hugepages_of(1_048_576), 2);
        assert_eq!(agg.numa_memory_of(0), 1_000);
        assert_eq!(agg.numa_memory_of(1), 750);
        assert_eq!(agg.custom_of("gpu"), 2);
        assert_eq!(agg.custom_of("sriov_vf"), 4);
        assert_eq!(agg.pinned_cpus, [1, 3, 7]);
        assert!(agg.vms.is_empty(), "no VM records were added");
        let a = p.vm_aggregate("a");
        assert_eq!((a.hugepages_of(2_048), a.custom_of("gpu")), (12, 1));
        assert_consistent(&p);
    }

    #[test]
    fn bad_amounts_are_refused_naming_the_field_and_change_nothing() {
        let cases: Vec<(Vec<PendingRecord>, &str)> = vec![
            (
                vec![rec("h", "a", PendingResource::Memory { mb: u64::MAX })],
                "memory.mb: 18446744073709551615 is too large",
            ),
            (
                vec![rec(
                    "h",
                    "a",
                    PendingResource::Hugepages {
                        size_kb: 0,
                        count: 1,
                    },
                )],
                "hugepages.size_kb: must not be 0",
            ),
            (
                vec![rec(
                    "h",
                    "a",
                    PendingResource::Custom {
                        name: String::new(),
                        amount: 1,
                    },
                )],
                "custom.name: must not be empty",
            ),
            (
                vec![rec("", "a", PendingResource::Vm)],
                "host and VM ids must not be empty",
            ),
            (
                vec![
                    rec("h", "a", PendingResource::CpuCores { count: u32::MAX }),
                    rec("h", "b", PendingResource::CpuCores { count: 1 }),
                ],
                "cpu_cores.count: the host's total overflows",
            ),
        ];
        for (records, expected) in cases {
            let mut p = PendingResources::default();
            p.add(rec("h", "z", mem(7))).unwrap();
            let err = p.add_all(records).unwrap_err().to_string();
            assert!(err.contains(expected), "got {err:?}, want {expected:?}");
            assert_eq!(p.len(), 1, "{expected}: nothing may change");
            assert_eq!(p.host_aggregate("h").overcommit_memory_mb, 7);
        }
    }

    #[test]
    fn a_hotplug_record_adds_memory_pages_and_node_without_a_pending_vm_and_goes_alone() {
        let plug = |mb, node, hugepage_size_kb| PendingResource::HotplugMemory {
            mb,
            node,
            hugepage_size_kb,
        };
        let mut p = PendingResources::default();
        p.add_all(vec![
            rec("h", "new", mem(1_088)),
            rec("h", "new", PendingResource::Vm),
            rec("h", "running", PendingResource::CpuCores { count: 2 }),
            rec("h", "running", plug(2_048, Some(1), None)),
            rec("h", "paged", plug(1_024, None, Some(2_048))),
        ])
        .unwrap();
        let agg = p.host_aggregate("h");
        // Regular memory: free now and under the ceiling; hugepage memory: pages.
        assert_eq!(agg.memory_mb, 2_048);
        assert_eq!(agg.overcommit_memory_mb, 1_088 + 2_048 + 1_024);
        assert_eq!(agg.hugepages_of(2_048), 512);
        assert_eq!(agg.numa_memory_of(1), 2_048);
        assert_eq!(agg.vms, ["new"], "a hot plug does not make its VM pending");
        // Removing the plug by key leaves the VM's other records; twice removes nothing.
        let removed = p.remove("running", &ResourceKey::HotplugMemory).unwrap();
        assert_eq!(removed.resource, plug(2_048, Some(1), None));
        assert!(p.remove("running", &ResourceKey::HotplugMemory).is_none());
        assert_eq!(p.records_of_vm("running").len(), 1);
        assert_eq!(p.host_aggregate("h").memory_mb, 0);
        assert_consistent(&p);
        let err = p
            .add(rec("h", "x", plug(1, None, Some(0))))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("hotplug_memory.hugepage_size_kb: must not be 0"),
            "{err}"
        );
    }

    #[test]
    fn a_replacement_is_not_counted_twice_when_checking_sums() {
        let mut p = PendingResources::default();
        p.add(rec("h", "a", PendingResource::CpuCores { count: u32::MAX }))
            .unwrap();
        // Replacing a's record with a smaller one must not be seen as an overflow.
        p.add(rec("h", "a", PendingResource::CpuCores { count: 5 }))
            .unwrap();
        assert_eq!(p.host_aggregate("h").cpu_cores, 5);
        // Replacing every record of a VM (as a new placement does) neither.
        p.add(rec("h", "a", PendingResource::CpuCores { count: u32::MAX }))
            .unwrap();
        let again = vec![rec("h", "a", PendingResource::CpuCores { count: u32::MAX })];
        let changed = p.replace_vm("a", again).unwrap();
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].0, "h");
        assert_eq!(changed[0].1.cpu_cores, u32::MAX);
        assert_eq!(p.host_aggregate("h").cpu_cores, u32::MAX);
    }

    /// What `add_all` and `replace_vm` return is what the cluster publishes: every host
    /// whose records changed, each with the aggregate a fresh sum of its records gives.
    #[test]
    fn changes_report_every_changed_host_with_the_sum_of_its_records() {
        let pages = |size_kb, count| PendingResource::Hugepages { size_kb, count };
        let pinned = |cpus: &[u32]| PendingResource::PinnedCpus {
            cpus: cpus.to_vec(),
        };
        enum Op {
            Add(Vec<PendingRecord>),
            Replace(&'static str, Vec<PendingRecord>),
        }
        let cases: Vec<(&str, Op, &[&str])> = vec![
            (
                "first records of two VMs on two hosts",
                Op::Add(vec![
                    rec("h1", "a", mem(100)),
                    rec("h1", "a", PendingResource::Vm),
                    rec("h2", "b", mem(200)),
                    rec("h2", "b", pinned(&[4, 2])),
                ]),
                &["h1", "h2"],
            ),
            (
                "a new VM next to others: the sum keeps theirs",
                Op::Replace(
                    "c",
                    vec![
                        rec("h1", "c", mem(50)),
                        rec("h1", "c", PendingResource::Vm),
                        rec("h1", "c", pages(2_048, 3)),
                    ],
                ),
                &["h1"],
            ),
            (
                "an equal record moves from h2 to h3: both change",
                Op::Add(vec![rec("h3", "b", mem(250))]),
                &["h2", "h3"],
            ),
            (
                "a VM re-placed on the host it is on: its old records do not count",
                Op::Replace(
                    "c",
                    vec![rec("h1", "c", mem(70)), rec("h1", "c", PendingResource::Vm)],
                ),
                &["h1"],
            ),
            (
                "a VM moved: where it was and where it goes",
                Op::Replace(
                    "a",
                    vec![rec("h2", "a", mem(100)), rec("h2", "a", pinned(&[2, 9]))],
                ),
                &["h1", "h2"],
            ),
            (
                "several VMs at once, one record replacing an earlier one of the batch",
                Op::Add(vec![
                    rec("h3", "d", mem(10)),
                    rec("h4", "e", mem(20)),
                    rec("h4", "d", mem(30)),
                ]),
                &["h3", "h4"],
            ),
        ];
        let mut p = PendingResources::default();
        for (name, op, hosts) in cases {
            let changed = match op {
                Op::Add(records) => p.add_all(records),
                Op::Replace(vm, records) => p.replace_vm(vm, records),
            }
            .unwrap();
            let names: Vec<&str> = changed.iter().map(|(h, _)| h.as_str()).collect();
            assert_eq!(names, hosts, "{name}");
            for (host, aggregate) in &changed {
                let fresh = aggregate_of(p.host_records(host)).unwrap();
                assert_eq!(aggregate, &fresh, "{name}: host {host}");
            }
            assert_consistent(&p);
        }
        let h1 = p.host_aggregate("h1");
        assert_eq!(
            (h1.overcommit_memory_mb, h1.vms.clone()),
            (70, vec!["c".into()])
        );
        assert_eq!(
            h1.hugepages_of(2_048),
            0,
            "c's re-placement dropped its pages"
        );
        assert_eq!(p.host_aggregate("h2").pinned_cpus, [2, 4, 9]);
        assert_eq!(
            p.host_aggregate("h3").overcommit_memory_mb,
            250,
            "d moved on"
        );
        assert_eq!(p.host_aggregate("h4").overcommit_memory_mb, 50);
    }
}
