//! Test fixture: a filter on one custom resource kind, the way an operator would write one
//! for GPUs or SR-IOV VFs. The host's free amount minus the amount pending there must cover
//! what the VM needs; the pending manager needs no change for a new kind.

use policy_sdk::{amount_of, Context, Filter, Host, ParamSpec, Verdict, Vm};

/// Rejects hosts without enough free units of the `kind` parameter, pending ones counted.
#[derive(Debug, Default)]
pub struct DeviceFilter;

impl Filter for DeviceFilter {
    const NAME: &'static str = "devices";
    const DESCRIPTION: &'static str =
        "Free units of a custom resource kind, minus pending ones, must cover the VM's need";

    fn params() -> Vec<ParamSpec> {
        vec![ParamSpec::string(
            "kind",
            "gpu",
            "Custom resource kind to check",
        )]
    }

    fn check(&self, ctx: &Context<'_>, vm: &Vm, host: &Host) -> Verdict {
        let kind = ctx.str("kind");
        let need = amount_of(&vm.custom_resources, kind);
        if need == 0 {
            return Verdict::Pass;
        }
        let free = host.custom_free(kind);
        let pending = host.pending.custom_of(kind);
        let available = free.saturating_sub(pending);
        if available >= need {
            Verdict::Pass
        } else {
            Verdict::reject(
                "not_enough_devices",
                format!(
                    "{available} {kind} available ({free} free - {pending} pending), {need} needed"
                ),
            )
        }
    }
}

policy_sdk::export_units! {
    module: "device-filter",
    version: env!("CARGO_PKG_VERSION"),
    units: [filter DeviceFilter],
}
