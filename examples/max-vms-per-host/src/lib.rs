//! Example operator unit: a filter that allows at most `max_vms` VMs per host, counting the
//! VMs already running there and the ones pending (placed but not yet up).
//!
//! Build it to wasm and drop it into a policy directory:
//!
//! ```text
//! cargo build -p max-vms-per-host --target wasm32-unknown-unknown --release
//! mkdir -p policies && cp target/wasm32-unknown-unknown/release/max_vms_per_host.wasm policies/
//! wasmsched schedule --policies policies --policy examples/policies/max-vms.toml \
//!     --cluster examples/clusters/small.json --vm examples/vms/web.json
//! ```

use policy_sdk::{Context, Filter, Host, ParamSpec, Verdict, Vm};

/// Rejects hosts that already run (or are about to run) `max_vms` VMs.
#[derive(Debug, Default)]
pub struct MaxVmsPerHost;

impl Filter for MaxVmsPerHost {
    const NAME: &'static str = "max-vms-per-host";
    const DESCRIPTION: &'static str = "At most `max_vms` running plus pending VMs per host";

    fn params() -> Vec<ParamSpec> {
        vec![ParamSpec::int(
            "max_vms",
            10,
            0,
            100_000,
            "Largest number of VMs a host may hold",
        )]
    }

    fn check(&self, ctx: &Context<'_>, _vm: &Vm, host: &Host) -> Verdict {
        let max = ctx.int("max_vms").max(0) as u64;
        let count = host.running_vms as u64 + host.pending.vms.len() as u64;
        if count < max {
            Verdict::Pass
        } else {
            ctx.reject("too_many_vms", || {
                format!("{count} VMs running or pending, at most {max} allowed")
            })
        }
    }
}

policy_sdk::export_units! {
    module: "max-vms-per-host",
    version: env!("CARGO_PKG_VERSION"),
    units: [filter MaxVmsPerHost],
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_sdk::{PendingAggregate, Snapshot};

    #[test]
    fn counts_running_and_pending_vms_against_the_limit() {
        let snapshot = Snapshot::default();
        let params = vec![("max_vms".to_string(), policy_sdk::ParamValue::Int(3))];
        let ctx = Context::new(&snapshot, &params, MaxVmsPerHost::NAME);
        let cases = [
            (0, 0, true),
            (2, 0, true),
            (3, 0, false),
            (2, 1, false),
            (1, 1, true),
        ];
        for (running, pending, passes) in cases {
            let host = Host {
                running_vms: running,
                pending: PendingAggregate {
                    vms: (0..pending).map(|i| format!("pending-{i}")).collect(),
                    ..Default::default()
                },
                ..Default::default()
            };
            let verdict = MaxVmsPerHost.check(&ctx, &Vm::default(), &host);
            assert_eq!(
                verdict.is_pass(),
                passes,
                "running {running}, pending {pending}"
            );
        }
    }
}
