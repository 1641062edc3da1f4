//! Embedding the wasmsched runtime in a Rust program: build a runtime with the builtin
//! units, load a policy, describe a cluster in code, schedule VMs (each decision reserves
//! the VM's pending resources on its host), report what happened to them (started, failed),
//! and feed changes to the cluster (each change is a new epoch; unit instances catch up with
//! small deltas).
//!
//! Run with `cargo run -p embed-example`.

use wasmsched::plan::Reschedule;
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
    let chosen = first.chosen.clone().expect("a host fits");
    println!(
        "pending on {chosen}: {:?}\n",
        cluster.pending_on_host(&chosen)
    );

    // The VM failed to start there: release its pending resources and try again elsewhere
    // (the failed host is blacklisted).
    let failed = policy.vm_failed(&cluster, &vm.id)?;
    let Reschedule::Decided {
        decision: second, ..
    } = failed.reschedule
    else {
        anyhow::bail!("expected a new decision, got {:?}", failed.reschedule);
    };
    println!("{second}");
    assert_ne!(second.chosen, Some(chosen.clone()));

    // It came up: the pending resources become the host's usage.
    cluster.vm_started(&vm.id)?;

    // The engine reports that a host went to maintenance: a new epoch.
    cluster.set_host_status(&chosen, HostStatus::Maintenance)?;
    let other = Vm {
        id: "app-2".into(),
        ..vm
    };
    let third = policy.schedule(&cluster, &ScheduleRequest::new(other))?;
    println!("{third}");
    assert_ne!(third.chosen, Some(chosen));
    Ok(())
}
