//! The builtin scheduling module: every builtin filter and weight (the `basic`, `affinity`
//! and `high-performance` crates' units) in one wasm module, so that a decision of the
//! default policy crosses into the sandbox once, and the module keeps one copy of the
//! snapshot.

use builtin_affinity::{VmAffinityFilter, VmAffinityWeight};
use builtin_basic::{CpuFilter, CpuLoadWeight, FreeMemoryWeight, MemoryFilter};
use builtin_high_performance::{
    CpuAndNumaPinningWeight, CpuLevelFilter, CpuPinningFilter, HighPerformanceCpuWeight,
    HugePagesFilter, NumaFilter,
};

policy_sdk::export_units! {
    module: "scheduling",
    version: env!("CARGO_PKG_VERSION"),
    units: [
        filter MemoryFilter,
        filter CpuFilter,
        filter CpuLevelFilter,
        filter CpuPinningFilter,
        filter HugePagesFilter,
        filter NumaFilter,
        filter VmAffinityFilter,
        weight CpuLoadWeight,
        weight FreeMemoryWeight,
        weight VmAffinityWeight,
        weight HighPerformanceCpuWeight,
        weight CpuAndNumaPinningWeight,
    ],
}

#[cfg(test)]
mod tests {
    use super::units;
    use policy_sdk::UnitSet;

    /// The units of a set as (name, kind) pairs, sorted.
    fn unit_list(set: UnitSet) -> Vec<(String, String)> {
        let mut list: Vec<(String, String)> = set
            .manifest()
            .units
            .iter()
            .map(|u| (u.name.clone(), format!("{:?}", u.kind)))
            .collect();
        list.sort();
        list
    }

    #[test]
    fn the_module_exports_every_unit_of_the_three_families_once() {
        let manifest = units().manifest();
        manifest.validate().unwrap();
        assert_eq!(manifest.module, "scheduling");
        let mut families: Vec<(String, String)> = [
            builtin_basic::units(),
            builtin_affinity::units(),
            builtin_high_performance::units(),
        ]
        .into_iter()
        .flat_map(unit_list)
        .collect();
        families.sort();
        assert_eq!(unit_list(units()), families);
        assert_eq!(manifest.units.len(), 12);
    }
}
