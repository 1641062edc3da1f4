//! Checking a whole scenario against the cluster before anything runs.

use super::*;

/// What a VM is expected to be doing at a point of the scenario, assuming every decision
/// finds a host. `by`: the event that put it there (`None`: the cluster file).
#[derive(Debug, Clone)]
enum Expected {
    Down,
    Starting {
        by: Option<usize>,
    },
    Migrating {
        by: usize,
        from: Option<String>,
    },
    Running {
        by: Option<usize>,
        host: Option<String>,
    },
    /// Depends on decisions (e.g. it was pending on a host that went down).
    Unknown,
}

fn by(by: Option<usize>) -> String {
    match by {
        Some(i) => format!("by events[{i}]"),
        None => "in the cluster file".to_string(),
    }
}

impl Expected {
    fn of(vm: &Vm) -> Self {
        if vm.status == VmStatus::WaitForLaunch && vm.current_host.is_some() {
            Expected::Starting { by: None }
        } else if vm.is_running() {
            Expected::Running {
                by: None,
                host: vm.current_host.clone(),
            }
        } else {
            Expected::Down
        }
    }

    /// Why this VM cannot be started now, if it cannot.
    fn cannot_start(&self, id: &str) -> Option<String> {
        match self {
            Expected::Down | Expected::Unknown => None,
            Expected::Running { by: b, host } => Some(match host {
                Some(h) => format!("VM {id:?} is already running on {h:?}"),
                None => format!("VM {id:?} is already running (started {})", by(*b)),
            }),
            Expected::Starting { by: b } => Some(format!(
                "VM {id:?} is already being started ({}); send vm_up or vm_failed first",
                match b {
                    Some(_) => format!("placed {}", by(*b)),
                    None => "waiting for launch in the cluster file".to_string(),
                }
            )),
            Expected::Migrating { by: b, .. } => Some(format!(
                "VM {id:?} is being migrated (by events[{b}]); it is running"
            )),
        }
    }

    /// Why this VM is not waiting for a start or migration to end, if it is not.
    fn not_placed(&self, id: &str) -> Option<String> {
        match self {
            Expected::Starting { .. } | Expected::Migrating { .. } | Expected::Unknown => None,
            Expected::Down => Some(format!(
                "VM {id:?} is not being started or migrated (it is down): no earlier event \
                 places it"
            )),
            Expected::Running { .. } => Some(format!(
                "VM {id:?} is running, not being started or migrated: no earlier event \
                 places it"
            )),
        }
    }
}

/// Checks a scenario against a cluster snapshot before anything runs. Errors are
/// [`Error::Input`] naming `file` and the field at fault: `vms[2].id` for a VM defined
/// twice (in the scenario, or in the scenario and the cluster), `events[4].vm`,
/// `events[0].vms[2]` or `events[1].host` for an unknown VM or host, or for an event that
/// cannot happen after the ones before it (starting a running VM, `vm_up` for a VM no
/// event started, migrating a VM that does not run, naming a removed host...).
pub fn validate(scenario: &Scenario, snapshot: &Snapshot, file: &str) -> Result<()> {
    let err = |field: String, message: String| Error::input(file, Some(field), message);
    let mut vms: HashMap<&str, Expected> = snapshot
        .vms
        .iter()
        .map(|vm| (vm.id.as_str(), Expected::of(vm)))
        .collect();
    let mut defined: HashMap<&str, usize> = HashMap::new();
    for (i, vm) in scenario.vms.iter().enumerate() {
        let id = vm.id.as_str();
        if id.is_empty() {
            return Err(err(format!("vms[{i}].id"), "must not be empty".into()));
        }
        if let Some(k) = defined.get(id) {
            return Err(err(
                format!("vms[{i}].id"),
                format!("duplicate VM id {id:?} (also vms[{k}])"),
            ));
        }
        if vms.contains_key(id) {
            return Err(err(
                format!("vms[{i}].id"),
                format!("VM {id:?} is already defined in the cluster"),
            ));
        }
        if vm.current_host.is_some() {
            return Err(err(
                format!("vms[{i}].current_host"),
                "a VM defined in the scenario runs nowhere; define running VMs in the \
                 cluster file"
                    .into(),
            ));
        }
        // Checked as every request is (vCPUs, memory, pinning, vNUMA...), now rather than
        // when the event that starts it runs.
        if let Err(e) = ScheduleRequest::new(vm.clone()).validate() {
            return Err(match e {
                Error::Input {
                    field: Some(field),
                    message,
                    ..
                } => err(format!("vms[{i}].{field}"), message),
                other => err(format!("vms[{i}]"), other.to_string()),
            });
        }
        defined.insert(id, i);
    }
    for vm in &scenario.vms {
        vms.insert(vm.id.as_str(), Expected::Down);
    }
    let hosts: HashSet<&str> = snapshot.hosts.iter().map(|h| h.id.as_str()).collect();
    let mut removed: HashMap<&str, usize> = HashMap::new();

    for (i, event) in scenario.events.iter().enumerate() {
        let vm_field = || format!("events[{i}].vm");
        let host_field = || format!("events[{i}].host");
        let check_host = |host: &str| -> Result<()> {
            if !hosts.contains(host) {
                return Err(err(host_field(), format!("unknown host {host:?}")));
            }
            if let Some(k) = removed.get(host) {
                return Err(err(
                    host_field(),
                    format!("host {host:?} was removed by events[{k}]"),
                ));
            }
            Ok(())
        };
        match event {
            Event::Start { vms: list } => {
                if list.is_empty() {
                    return Err(err(
                        format!("events[{i}].vms"),
                        "must list at least one VM".into(),
                    ));
                }
                let mut seen: HashMap<&str, usize> = HashMap::new();
                for (j, id) in list.iter().enumerate() {
                    let field = format!("events[{i}].vms[{j}]");
                    if let Some(k) = seen.insert(id.as_str(), j) {
                        return Err(err(
                            field,
                            format!("VM {id:?} is listed twice (also vms[{k}])"),
                        ));
                    }
                    let s = lookup(&mut vms, id, &field, file)?;
                    if let Some(message) = s.cannot_start(id) {
                        return Err(err(field, message));
                    }
                    *s = Expected::Starting { by: Some(i) };
                }
            }
            Event::VmUp { vm } => {
                let field = vm_field();
                let s = lookup(&mut vms, vm, &field, file)?;
                if let Some(message) = s.not_placed(vm) {
                    return Err(err(field, message));
                }
                *s = Expected::Running {
                    by: Some(i),
                    host: None,
                };
            }
            Event::VmFailed { vm, reschedule } => {
                let field = vm_field();
                let s = lookup(&mut vms, vm, &field, file)?;
                if let Some(message) = s.not_placed(vm) {
                    return Err(err(field, message));
                }
                *s = match s {
                    Expected::Starting { .. } if *reschedule => Expected::Starting { by: Some(i) },
                    Expected::Starting { .. } => Expected::Down,
                    Expected::Migrating { from, .. } => Expected::Running {
                        by: None,
                        host: from.clone(),
                    },
                    _ => Expected::Unknown,
                };
            }
            Event::Migrate { vm } => {
                let field = vm_field();
                let s = lookup(&mut vms, vm, &field, file)?;
                *s = match s {
                    Expected::Running { host, .. } => Expected::Migrating {
                        by: i,
                        from: host.clone(),
                    },
                    Expected::Unknown => Expected::Migrating { by: i, from: None },
                    Expected::Down => {
                        return Err(err(
                            field,
                            format!("VM {vm:?} does not run anywhere: nothing to migrate"),
                        ))
                    }
                    Expected::Starting { .. } => {
                        return Err(err(
                            field,
                            format!(
                                "VM {vm:?} is being started, not running yet; send vm_up first"
                            ),
                        ))
                    }
                    Expected::Migrating { by: k, .. } => {
                        return Err(err(
                            field,
                            format!("VM {vm:?} is already being migrated (by events[{k}])"),
                        ))
                    }
                };
            }
            Event::MigrationFinished { vm } | Event::MigrationFailed { vm } => {
                let finished = matches!(event, Event::MigrationFinished { .. });
                let field = vm_field();
                let s = lookup(&mut vms, vm, &field, file)?;
                *s = match s {
                    Expected::Migrating { from, .. } => Expected::Running {
                        by: Some(i),
                        host: if finished { None } else { from.clone() },
                    },
                    Expected::Unknown => Expected::Unknown,
                    Expected::Starting { .. } => {
                        return Err(err(
                            field,
                            format!(
                                "VM {vm:?} is being started, not migrated; use vm_up or \
                                 vm_failed"
                            ),
                        ))
                    }
                    Expected::Down | Expected::Running { .. } => {
                        return Err(err(
                            field,
                            format!("VM {vm:?} is not being migrated: no earlier migrate event"),
                        ))
                    }
                };
            }
            Event::HostDown { host, reschedule } => {
                check_host(host)?;
                // Which VMs were placed there is up to the decisions.
                for s in vms.values_mut() {
                    match s {
                        Expected::Starting { .. } if !*reschedule => *s = Expected::Unknown,
                        Expected::Migrating { .. } => *s = Expected::Unknown,
                        _ => {}
                    }
                }
            }
            Event::HostUp { host } => check_host(host)?,
            Event::RemoveHost { host } => {
                check_host(host)?;
                for s in vms.values_mut() {
                    match s {
                        Expected::Running { host: Some(h), .. } if h == host => *s = Expected::Down,
                        Expected::Running { host: None, .. } => *s = Expected::Unknown,
                        Expected::Migrating { from, .. }
                            if from.is_none() || from.as_deref() == Some(host.as_str()) =>
                        {
                            *s = Expected::Unknown
                        }
                        _ => {}
                    }
                }
                removed.insert(host.as_str(), i);
            }
            Event::Balance { cycles, minutes } => {
                if *cycles == 0 || *cycles > 100_000 {
                    return Err(err(
                        format!("events[{i}].cycles"),
                        format!("must be in 1..=100000, got {cycles}"),
                    ));
                }
                if *minutes == 0 || *minutes > 1_440 {
                    return Err(err(
                        format!("events[{i}].minutes"),
                        format!("must be in 1..=1440, got {minutes}"),
                    ));
                }
                // Balancing moves running VMs to hosts the decisions choose.
                for s in vms.values_mut() {
                    if let Expected::Running { host, .. } = s {
                        *host = None;
                    }
                }
            }
            Event::Load {
                vms: list,
                cpu_usage_percent,
            } => {
                if *cpu_usage_percent > 100 {
                    return Err(err(
                        format!("events[{i}].cpu_usage_percent"),
                        format!("must be in 0..=100, got {cpu_usage_percent}"),
                    ));
                }
                for (j, id) in list.iter().enumerate() {
                    let field = format!("events[{i}].vms[{j}]");
                    match lookup(&mut vms, id, &field, file)? {
                        Expected::Down => {
                            return Err(err(
                                field,
                                format!("VM {id:?} is not running: a load applies to running VMs"),
                            ))
                        }
                        Expected::Starting { .. } => {
                            return Err(err(
                                field,
                                format!(
                                    "VM {id:?} is being started; send vm_up before changing its \
                                     load"
                                ),
                            ))
                        }
                        Expected::Running { .. }
                        | Expected::Migrating { .. }
                        | Expected::Unknown => {}
                    }
                }
            }
            Event::Stop { vms: list } => {
                for (j, id) in list.iter().enumerate() {
                    let field = format!("events[{i}].vms[{j}]");
                    let s = lookup(&mut vms, id, &field, file)?;
                    match s {
                        Expected::Down => {
                            return Err(err(
                                field,
                                format!("VM {id:?} is not running: nothing to stop"),
                            ))
                        }
                        Expected::Starting { .. } | Expected::Migrating { .. } => {
                            return Err(err(
                                field,
                                format!(
                                    "VM {id:?} is being started or migrated; send vm_up, \
                                     vm_failed or migration_finished first"
                                ),
                            ))
                        }
                        Expected::Running { .. } | Expected::Unknown => *s = Expected::Down,
                    }
                }
            }
        }
    }
    Ok(())
}

/// The expected state of a VM an event names; an unknown VM is an error naming `field`.
fn lookup<'m>(
    vms: &'m mut HashMap<&str, Expected>,
    id: &str,
    field: &str,
    file: &str,
) -> Result<&'m mut Expected> {
    vms.get_mut(id)
        .ok_or_else(|| Error::input(file, Some(field.to_string()), format!("unknown VM {id:?}")))
}
