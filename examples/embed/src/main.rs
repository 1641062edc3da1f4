//! Embedding the wasmsched runtime in a Rust program: build a runtime with the builtin
//! units, load a policy, describe a cluster in code, schedule VMs, and feed changes to the
//! cluster (each change is a new epoch; unit instances catch up with small deltas).
//!
//! Run with `cargo run -p embed-example`.

use wasmsched::sdk::{CpuTopology, Host, HostMemory, HostStatus, Snapshot, Vm};
use wasmsched::{Cluster, Policy, Runtime, ScheduleRequest};

fn host(id: &str, free_mb: u64, usage: u32) -> Host {
    Host {
        id: id.into(),
        name: id.into(),
        cpu: CpuTopology {
            sockets: 2,
            cores_per_socket: 8,
            threads_per_core: 2,
        },
        memory: HostMemory {
            physical_mb: 131_072,
            free_mb,
            committed_mb: 131_072 - free_mb,
            max_scheduling_mb: 131_072,
            swap_free_mb: 0,
        },
        cpu_usage_percent: usage,
        ..Default::default()
    }
}

fn main() -> anyhow::Result<()> {
    // One runtime per process; it is Send + Sync and cheap to clone.
    let runtime = Runtime::builder().build()?;
    let policy = Policy::builtin_default(&runtime)?;

    let cluster = Cluster::new(
        Snapshot {
            hosts: vec![
                host("alpha", 100_000, 60),
                host("beta", 80_000, 20),
                host("gamma", 4_000, 5),
            ],
            ..Default::default()
        },
        "<embedded>",
    )?;

    let vm = Vm {
        id: "app-1".into(),
        memory_mb: 8_192,
        cpu: CpuTopology {
            sockets: 1,
            cores_per_socket: 4,
            threads_per_core: 1,
        },
        ..Default::default()
    };

    let first = policy.schedule(&cluster, &ScheduleRequest::new(vm.clone()))?;
    println!("{first}");

    // The engine reports that the chosen host went to maintenance: a new epoch.
    let chosen = first.chosen.clone().expect("a host fits");
    cluster.set_host_status(&chosen, HostStatus::Maintenance)?;
    let second = policy.schedule(&cluster, &ScheduleRequest::new(vm))?;
    println!("{second}");
    assert_ne!(second.chosen, Some(chosen));
    Ok(())
}
