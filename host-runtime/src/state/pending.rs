//! The Pending Resource Manager: what VMs that were placed, but are not running yet, hold on
//! their hosts.
//!
//! Each pending resource is its own [`PendingRecord`] (kind, host, VM, amount). Aggregates per
//! host and per VM are sums over the records, never kept as counters that a release
//! subtracts from, so releasing a VM twice cannot corrupt them: the second release finds
//! nothing to remove. A host's last sum is kept only as a cache: records added to the host
//! add to it, and any removal forgets it, so the next sum is made from the records again.
//! Adding a record equal to an existing one (same VM and [`ResourceKey`]: kind, plus node,
//! page size or custom kind name where relevant) replaces it, wherever it was.
//!
//! The manager itself is plain data; [`Cluster`](crate::Cluster) owns one and publishes each
//! changed host aggregate into the snapshot so every unit sees it.

use crate::error::{Error, Result};
use policy_sdk::{HugePages, PendingAggregate};
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
    /// host -> the sum of its records, as last summed. Only a cache of that sum: a change
    /// that removes a host's record forgets the host's entry (its next sum is made from
    /// the records again), and the sum of records added to a host is merged into its entry
    /// in place ([`PendingAggregate::merge`], the canonical form [`add_record`] keeps), the
    /// same as summing them all (checked against a fresh sum in debug builds). It spares a
    /// reservation the walk over every record of its host under the cluster's ledger
    /// lock, and the copy of its host's list of pending VM ids.
    sums: HashMap<String, PendingAggregate>,
}

/// Hosts whose pending aggregate a change moved, sorted by id, each with its new aggregate.
pub type Changed = Vec<(String, HostPending)>;

/// A host's new pending aggregate, as a change of the records gives it.
#[derive(Debug, Clone, PartialEq)]
pub enum HostPending {
    /// The whole new aggregate.
    Whole(PendingAggregate),
    /// What the change added to the host's aggregate, which it otherwise kept (a
    /// reservation): the new aggregate is the old one with this merged in
    /// ([`PendingAggregate::merge`]). It holds only the new records' VM ids, not those of
    /// every VM pending on the host.
    Added(PendingAggregate),
}

/// The aggregates [`PendingResources::check_add`] summed, one per host that receives records.
type HostSums = Vec<(String, HostPending)>;

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

    /// The whole aggregates of `hosts`, summed from their records and kept as their sums
    /// (after records were removed, as a release does, so that the host's next reservation
    /// grows the sum in place and reports only what it adds).
    pub fn summed_afresh(&mut self, hosts: impl IntoIterator<Item = String>) -> Changed {
        self.changed(hosts, Vec::new())
    }

    /// The changed hosts with their aggregates: those the check summed (the hosts that
    /// received records: the check's sum is of exactly the records they hold now), the
    /// others (hosts that only lost records) summed from their records.
    ///
    /// A host that only gained records has its kept sum grown in place by what they add,
    /// and reports only that: a reservation copies no list of the host's pending VM ids.
    fn changed(&mut self, hosts: impl IntoIterator<Item = String>, mut sums: HostSums) -> Changed {
        hosts
            .into_iter()
            .map(|host| {
                let new = match sums.iter().position(|(h, _)| *h == host) {
                    Some(at) => sums.swap_remove(at).1,
                    None => HostPending::Whole(self.host_aggregate(&host)),
                };
                // A kept sum the change forgot (a record of the batch moved off the host
                // on the way) is not the one the check grew: the host is summed afresh.
                let new = match new {
                    HostPending::Added(_) if !self.sums.contains_key(&host) => {
                        HostPending::Whole(self.host_aggregate(&host))
                    }
                    new => new,
                };
                match &new {
                    HostPending::Added(part) => {
                        let sum = self.sums.get_mut(&host).expect("checked above");
                        sum.merge(part)
                            .expect("the check summed these records onto this sum");
                        debug_assert_eq!(self.sums[&host], self.host_aggregate(&host), "{host}");
                    }
                    HostPending::Whole(aggregate) => {
                        debug_assert_eq!(*aggregate, self.host_aggregate(&host), "host {host}");
                        if self.by_host.contains_key(&host) {
                            self.sums.insert(host.clone(), aggregate.clone());
                        } else {
                            self.sums.remove(&host);
                        }
                    }
                }
                (host, new)
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
            // The host's kept sum stays: `changed` brings it up to date.
            // Look the host and the VM up before making their entries: a placement's
            // records share both, so only the first record of each clones the ids.
            let vms = match self.by_host.get_mut(&host) {
                Some(vms) => vms,
                None => self.by_host.entry(host.clone()).or_default(),
            };
            match vms.get_mut(&vm) {
                Some(held) => {
                    held.insert(key, resource);
                }
                None => {
                    vms.insert(vm.clone(), BTreeMap::from([(key, resource)]));
                }
            }
            let hosts = match self.hosts_of_vm.get_mut(&vm) {
                Some(hosts) => hosts,
                None => self.hosts_of_vm.entry(vm).or_default(),
            };
            if !hosts.contains(&host) {
                hosts.insert(host.clone());
            }
            changed.insert(host);
        }
        changed
    }

    /// Checks that `records` could be added: ids present, amounts in range, and no host
    /// sum overflowing once they replace their equal records (and, with `replacing_vm`,
    /// once every record of that VM is gone). The error names the VM, host and field.
    /// Returns the sums it checked: the aggregate each host that receives records will have.
    ///
    /// Held under the cluster's ledger lock for every reservation: a host that only gains
    /// records adds them to its kept sum; any other is summed in one pass over its records.
    fn check_add(&self, records: &[PendingRecord], replacing_vm: Option<&str>) -> Result<HostSums> {
        let mut keyed: Vec<(&PendingRecord, ResourceKey)> = Vec::with_capacity(records.len());
        for record in records {
            let PendingRecord { host, vm, resource } = record;
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
            keyed.push((record, resource.key()));
        }
        // A later equal record (same VM and key) replaces an earlier one, whatever its host:
        // ordered by VM, key and position, the last of each run of equals is the one kept.
        let mut order: Vec<usize> = (0..keyed.len()).collect();
        order.sort_unstable_by(|&a, &b| {
            let ((ra, ka), (rb, kb)) = (&keyed[a], &keyed[b]);
            (ra.vm.as_str(), ka, a).cmp(&(rb.vm.as_str(), kb, b))
        });
        let equal = |a: usize, b: usize| keyed[a].0.vm == keyed[b].0.vm && keyed[a].1 == keyed[b].1;
        let new: Vec<&(&PendingRecord, ResourceKey)> = order
            .iter()
            .enumerate()
            .filter(|&(i, &at)| order.get(i + 1).is_none_or(|&next| !equal(at, next)))
            .map(|(_, &at)| &keyed[at])
            .collect();
        // In VM order already.
        let mut new_vms: Vec<&str> = new.iter().map(|(r, _)| r.vm.as_str()).collect();
        new_vms.dedup();
        // A kept record is replaced when a new one has its VM and key (whatever the host):
        // only the records of a VM that gets new ones are compared with them.
        let kept_of = |vm: &str, key: &ResourceKey, gets_new: bool| {
            !gets_new || !new.iter().any(|(r, k)| r.vm == vm && k == key)
        };
        let mut hosts: Vec<&str> = new.iter().map(|(r, _)| r.host.as_str()).collect();
        hosts.sort_unstable();
        hosts.dedup();
        let mut sums = Vec::with_capacity(hosts.len());
        for host in hosts {
            let added = new
                .iter()
                .filter(|(r, _)| r.host == host)
                .map(|(r, _)| (r.vm.as_str(), &r.resource));
            let held = self.by_host.get(host);
            // The host's kept sum when it only grows by the records.
            let grows: Option<&PendingAggregate> = match held {
                None => None,
                // Nothing the host holds is replaced or released.
                Some(vms)
                    if replacing_vm
                        .into_iter()
                        .chain(new_vms.iter().copied())
                        .all(|v| !vms.contains_key(v)) =>
                {
                    self.sums.get(host)
                }
                Some(_) => None,
            };
            let sum = match grows {
                // The totals are checked on the kept sum's amounts (not its VM ids), the
                // records in order as a fresh sum adds them; only what they add is kept.
                Some(kept) => {
                    let mut totals = kept.amounts();
                    added
                        .clone()
                        .try_for_each(|(vm, resource)| add_record(&mut totals, vm, resource))
                        .and_then(|()| aggregate_of(added))
                        .map(HostPending::Added)
                }
                None => {
                    let kept = held
                        .into_iter()
                        .flatten()
                        .filter(|(v, _)| Some(v.as_str()) != replacing_vm)
                        .flat_map(|(v, records)| {
                            let gets_new = new_vms.binary_search(&v.as_str()).is_ok();
                            records
                                .iter()
                                .filter(move |(k, _)| kept_of(v, k, gets_new))
                                .map(move |(_, r)| (v.as_str(), r))
                        });
                    aggregate_of(kept.chain(added)).map(HostPending::Whole)
                }
            }
            .map_err(|e| Error::conflict(format!("pending resources on host {host:?}: {e}")))?;
            sums.push((host.to_string(), sum));
        }
        Ok(sums)
    }

    /// Every record on a host as (VM id, resource).
    fn host_records<'a>(
        &'a self,
        host: &str,
    ) -> impl Iterator<Item = (&'a str, &'a PendingResource)> + 'a {
        self.by_host
            .get(host)
            .into_iter()
            .flat_map(|vms| vms.iter())
            .flat_map(|(vm, records)| records.values().map(move |r| (vm.as_str(), r)))
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
        self.sums.remove(host);
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
            self.sums.remove(&host);
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
        self.sums.remove(host);
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

    /// Whether a VM has records anywhere.
    pub fn holds_vm(&self, vm: &str) -> bool {
        self.hosts_of_vm.contains_key(vm)
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
            .flat_map(|(vm, records)| records.values().map(move |r| (vm.as_str(), r)));
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
    records: impl Iterator<Item = (&'a str, &'a PendingResource)>,
) -> std::result::Result<PendingAggregate, String> {
    let mut agg = PendingAggregate::default();
    for (vm, resource) in records {
        add_record(&mut agg, vm, resource)?;
    }
    Ok(agg)
}

/// Adds one record to an aggregate in its canonical form (amounts summed; the pinned pCPUs,
/// page sizes, NUMA nodes, custom kinds and VM ids each sorted and listed once), so that
/// adding records one by one to the sum of others gives exactly the sum of them all, in
/// any order. Errors (naming the field) on overflow, and then `agg` must be dropped.
fn add_record(
    agg: &mut PendingAggregate,
    vm: &str,
    resource: &PendingResource,
) -> std::result::Result<(), String> {
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
    match resource {
        PendingResource::Memory { mb } => add_u64(&mut agg.memory_mb, *mb, "memory.mb"),
        PendingResource::OvercommitMemory { mb } => {
            add_u64(&mut agg.overcommit_memory_mb, *mb, "overcommit_memory.mb")
        }
        PendingResource::CpuCores { count } => {
            add_u32(&mut agg.cpu_cores, *count, "cpu_cores.count")
        }
        PendingResource::CpuLoad { percent } => {
            add_u32(&mut agg.cpu_load_percent, *percent, "cpu_load.percent")
        }
        PendingResource::PinnedCpus { cpus } => {
            agg.add_pinned_cpus(cpus);
            Ok(())
        }
        PendingResource::Hugepages { size_kb, count } => {
            agg.add_hugepages(*size_kb, *count, "hugepages.count")
        }
        PendingResource::NumaMemory { node, mb } => {
            agg.add_numa_memory(*node, *mb, "numa_memory.mb")
        }
        PendingResource::Vm => {
            agg.add_vm(vm);
            Ok(())
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
                Some(size_kb) => agg.add_hugepages(
                    *size_kb,
                    HugePages::needed(*mb, *size_kb),
                    "hotplug_memory.hugepages",
                )?,
                None => add_u64(&mut agg.memory_mb, *mb, "hotplug_memory.mb")?,
            }
            match node {
                Some(node) => agg.add_numa_memory(*node, *mb, "hotplug_memory.mb (node)"),
                None => Ok(()),
            }
        }
        PendingResource::Custom { name, amount } => agg.add_custom(name, *amount, "custom.amount"),
    }
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

    /// The aggregate a host that held `before` has after the change `new` is published.
    fn published(before: &PendingAggregate, new: &HostPending) -> PendingAggregate {
        match new {
            HostPending::Whole(aggregate) => aggregate.clone(),
            HostPending::Added(part) => {
                let mut sum = before.clone();
                sum.merge(part).unwrap();
                sum
            }
        }
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
        for (host, sum) in &p.sums {
            assert!(
                p.by_host.contains_key(host),
                "a sum kept for {host}, which holds nothing"
            );
            assert_eq!(sum, &p.host_aggregate(host), "the sum kept for {host}");
        }
    }

    /// A random record of any kind, for VM `vm` on host `host`.
    fn random_record(
        rng: &mut policy_sdk::testing::XorShift,
        host: &str,
        vm: &str,
    ) -> PendingRecord {
        let small = |rng: &mut policy_sdk::testing::XorShift| 1 + rng.below(500);
        let resource = match rng.below(10) {
            0 => PendingResource::Memory { mb: small(rng) },
            1 => PendingResource::OvercommitMemory { mb: small(rng) },
            2 => PendingResource::CpuCores {
                count: small(rng) as u32,
            },
            3 => PendingResource::CpuLoad {
                percent: small(rng) as u32,
            },
            4 => PendingResource::PinnedCpus {
                cpus: (0..rng.below(4)).map(|_| rng.below(16) as u32).collect(),
            },
            5 => PendingResource::Hugepages {
                size_kb: [2_048, 1_048_576][rng.below(2) as usize],
                count: small(rng),
            },
            6 => PendingResource::NumaMemory {
                node: rng.below(3) as u32,
                mb: small(rng),
            },
            7 => PendingResource::HotplugMemory {
                mb: small(rng),
                node: (rng.below(2) == 0).then(|| rng.below(3) as u32),
                hugepage_size_kb: (rng.below(2) == 0).then_some(2_048),
            },
            8 => PendingResource::Custom {
                name: ["gpu", "vf", "fpga"][rng.below(3) as usize].to_string(),
                amount: small(rng),
            },
            _ => PendingResource::Vm,
        };
        rec(host, vm, resource)
    }

    /// The sums kept per host (what spares a reservation the walk over its host's records)
    /// stay equal to fresh sums of the records through adds, placements, moves, releases
    /// and cleared hosts, and every change reports fresh sums.
    #[test]
    fn kept_host_sums_equal_fresh_sums_through_any_sequence_of_changes() {
        let mut rng = policy_sdk::testing::XorShift::new(11);
        let hosts = ["h1", "h2", "h3", "h4"];
        let vms = ["a", "b", "c", "d", "e", "f", "g"];
        let mut p = PendingResources::default();
        let mut grown = 0;
        for step in 0..3_000 {
            let before: Vec<PendingAggregate> = hosts.iter().map(|h| p.host_aggregate(h)).collect();
            let host = hosts[rng.below(hosts.len() as u64) as usize];
            let vm = vms[rng.below(vms.len() as u64) as usize];
            let what = rng.below(10);
            let changed = match what {
                0..=3 => {
                    let n = 1 + rng.below(5);
                    let records = (0..n).map(|_| random_record(&mut rng, host, vm)).collect();
                    p.replace_vm(vm, records).unwrap()
                }
                4..=6 => {
                    // Several VMs and hosts in one batch, equal records included.
                    let records = (0..1 + rng.below(6))
                        .map(|_| {
                            let host = hosts[rng.below(hosts.len() as u64) as usize];
                            let vm = vms[rng.below(vms.len() as u64) as usize];
                            random_record(&mut rng, host, vm)
                        })
                        .collect();
                    p.add_all(records).unwrap()
                }
                7 => {
                    p.clear_vm(vm);
                    Vec::new()
                }
                8 => {
                    p.clear_host(host);
                    Vec::new()
                }
                _ => {
                    p.remove(vm, &random_record(&mut rng, host, vm).resource.key());
                    Vec::new()
                }
            };
            for (host, new) in &changed {
                let at = hosts.iter().position(|h| h == host).unwrap();
                assert_eq!(
                    published(&before[at], new),
                    p.host_aggregate(host),
                    "step {step}: host {host}"
                );
                grown += usize::from(matches!(new, HostPending::Added(_)));
            }
            assert_consistent(&p);
        }
        assert!(!p.sums.is_empty(), "the sequence never kept a sum");
        assert!(grown > 300, "hosts that only gained records: {grown}");
    }

    /// Records added one at a time give the same aggregate in any order: what lets a kept
    /// sum grow by a placement's records instead of being summed again.
    #[test]
    fn records_summed_in_any_order_give_one_aggregate() {
        let mut rng = policy_sdk::testing::XorShift::new(5);
        for case in 0..200 {
            let records: Vec<PendingRecord> = (0..1 + rng.below(30))
                .map(|_| {
                    let vm = ["a", "b", "c", "d"][rng.below(4) as usize];
                    random_record(&mut rng, "h", vm)
                })
                .collect();
            let forward = aggregate_of(records.iter().map(|r| (r.vm.as_str(), &r.resource)));
            let backward = aggregate_of(records.iter().rev().map(|r| (r.vm.as_str(), &r.resource)));
            assert_eq!(forward, backward, "case {case}");
            let sum = forward.unwrap();
            let mut sorted = sum.vms.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sum.vms, sorted, "case {case}: VM ids sorted, each once");
            assert!(sum.is_canonical(), "case {case}: {sum:?}");
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
        let HostPending::Whole(sum) = &changed[0].1 else {
            panic!("a re-placement releases records: the whole sum, got {changed:?}");
        };
        assert_eq!(sum.cpu_cores, u32::MAX);
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
            let before: Vec<PendingAggregate> = hosts.iter().map(|h| p.host_aggregate(h)).collect();
            let changed = match op {
                Op::Add(records) => p.add_all(records),
                Op::Replace(vm, records) => p.replace_vm(vm, records),
            }
            .unwrap();
            let names: Vec<&str> = changed.iter().map(|(h, _)| h.as_str()).collect();
            assert_eq!(names, hosts, "{name}");
            for ((host, new), before) in changed.iter().zip(&before) {
                let fresh = aggregate_of(p.host_records(host)).unwrap();
                assert_eq!(published(before, new), fresh, "{name}: host {host}");
            }
            if name.starts_with("a new VM next to others") {
                // Only what the VM adds is reported, not the ids of the others.
                let [(_, HostPending::Added(part))] = changed.as_slice() else {
                    panic!("{name}: {changed:?}");
                };
                assert_eq!(
                    (part.vms.as_slice(), part.overcommit_memory_mb),
                    (&["c".to_string()][..], 50)
                );
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
