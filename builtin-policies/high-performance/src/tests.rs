use super::*;
use policy_sdk::testing::{
    check_all_agrees, check_in_both_forms, host, snapshot, vm, HostBuilder, VmBuilder, XorShift,
};
use policy_sdk::{NumaTuneMode, VmType};

fn code(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Pass => "pass".to_string(),
        Verdict::Reject { code, detail } => format!("{code}: {detail}"),
    }
}

/// Runs a filter over `(case, snapshot, vm, host, expected)` rows; `expected` is `pass` or
/// the start of `code: detail`. Without details (a summary decision), each row gets the
/// same verdict with an empty detail.
fn filter_cases<F: Filter>(cases: Vec<(&str, Snapshot, Vm, Host, &str)>) {
    for (case, s, v, h, want) in cases {
        let verdict = check_in_both_forms::<F>(case, &s, &[], &v, &h);
        let got = code(&verdict);
        assert!(got.starts_with(want), "{case}: got `{got}`, want `{want}`");
    }
}

fn plain() -> Snapshot {
    snapshot().build()
}

fn s_flags(flags: &[&str]) -> Snapshot {
    snapshot().cluster_cpu("Skylake", flags).build()
}

#[test]
fn cpu_level_cases() {
    let cluster = s_flags(&["sse4_2", "avx2", "aes"]);
    let with_source = snapshot()
        .cluster_cpu("Skylake", &["sse4_2"])
        .host(host("src").cpu_flags(&["sse4_2", "avx512f"]))
        .build();
    filter_cases::<CpuLevelFilter>(vec![
        (
            "host has every cluster flag",
            cluster.clone(),
            vm("v").build(),
            host("h")
                .cpu_flags(&["aes", "avx2", "sse4_2", "vmx"])
                .build(),
            "pass",
        ),
        (
            "missing flags are listed",
            cluster.clone(),
            vm("v").build(),
            host("h").cpu_flags(&["sse4_2"]).build(),
            "missing_cpu_flags: missing flags of the cluster CPU model: aes, avx2",
        ),
        (
            "VM's own flags replace the cluster's",
            cluster.clone(),
            vm("v").cpu_flags(&["sse4_2"]).build(),
            host("h").cpu_flags(&["sse4_2"]).build(),
            "pass",
        ),
        (
            "starting passthrough VM passes anywhere",
            cluster.clone(),
            vm("v").passthrough().build(),
            host("h").build(),
            "pass",
        ),
        (
            "migrating passthrough VM needs its current CPU's flags",
            cluster.clone(),
            vm("v")
                .passthrough()
                .cpu_flags(&["avx512f", "sse4_2"])
                .current_host("src")
                .build(),
            host("h").cpu_flags(&["sse4_2", "aes", "avx2"]).build(),
            "missing_cpu_flags: missing flags of the VM's current CPU: avx512f",
        ),
        (
            "migrating passthrough VM without flags takes its source host's",
            with_source.clone(),
            vm("v").passthrough().current_host("src").build(),
            host("h").cpu_flags(&["sse4_2"]).build(),
            "missing_cpu_flags: missing flags of the VM's current CPU: avx512f",
        ),
        (
            "migrating passthrough VM fits a host with its source's flags",
            with_source,
            vm("v").passthrough().current_host("src").build(),
            host("h").cpu_flags(&["avx512f", "sse4_2", "x"]).build(),
            "pass",
        ),
        (
            "no flags required anywhere",
            plain(),
            vm("v").build(),
            host("h").build(),
            "pass",
        ),
    ]);
}

fn hp_host() -> HostBuilder {
    // 2 sockets x 2 cores x 2 threads: pCPUs 0-7; NUMA node 0 = socket 0, node 1 = socket 1.
    host("h")
        .cpu(2, 2, 2)
        .numa_node(0, [0, 1, 2, 3], 8_192)
        .numa_node(1, [4, 5, 6, 7], 8_192)
}

fn pinned(text: &str) -> VmBuilder {
    vm("v").vcpus(2).pinning(text)
}

#[test]
fn cpu_pinning_cases() {
    filter_cases::<CpuPinningFilter>(vec![
        (
            "unpinned VM",
            plain(),
            vm("v").build(),
            hp_host().build(),
            "pass",
        ),
        (
            "pins online and free",
            plain(),
            pinned("0#1-3_1#4").build(),
            hp_host().build(),
            "pass",
        ),
        (
            "malformed pinning is rejected, not treated as empty",
            plain(),
            pinned("0#1-3_1").build(),
            hp_host().build(),
            "invalid_pinning: pinning `0#1-3_1`: entry 2 `1` has no `#`",
        ),
        (
            "pinning a vCPU the VM lacks",
            plain(),
            pinned("0#1_5#2").build(),
            hp_host().build(),
            "invalid_pinning: pinning `0#1_5#2`: vCPU 5 is pinned but the VM has 2 vCPU(s)",
        ),
        (
            "offline pCPU",
            plain(),
            pinned("0#1_1#5").build(),
            hp_host().online_cpus([0, 1, 2, 3, 4, 6, 7]).build(),
            "pcpu_offline: pinned pCPU(s) 5 offline or absent",
        ),
        (
            "pCPU beyond the host's topology",
            plain(),
            pinned("0#1_1#37").build(),
            hp_host().build(),
            "pcpu_offline: pinned pCPU(s) 37 offline or absent",
        ),
        (
            "the first pCPU past the topology (8 of 0-7)",
            plain(),
            pinned("0#1_1#8").build(),
            hp_host().build(),
            "pcpu_offline: pinned pCPU(s) 8 offline or absent",
        ),
        (
            "the last pCPU of the topology",
            plain(),
            pinned("0#0_1#7").build(),
            hp_host().build(),
            "pass",
        ),
        (
            "pCPU dedicated to a running VM",
            plain(),
            pinned("0#1-3").build(),
            hp_host().dedicated_cpus([2]).build(),
            "pcpu_dedicated: pinned pCPU(s) dedicated to another VM: 2 (running)",
        ),
        (
            "pCPU dedicated to a pending VM",
            plain(),
            pinned("0#1-3").build(),
            hp_host().pending_pinned_cpus([3]).build(),
            "pcpu_dedicated: pinned pCPU(s) dedicated to another VM: 3 (pending)",
        ),
        (
            "dedicated VM fits the free pCPUs",
            plain(),
            vm("v")
                .vcpus(4)
                .pinning_policy(PinningPolicy::Dedicated)
                .build(),
            hp_host()
                .dedicated_cpus([0, 1])
                .pending_pinned_cpus([2, 3])
                .build(),
            "pass",
        ),
        (
            "dedicated VM: pending pins leave too few",
            plain(),
            vm("v")
                .vcpus(5)
                .pinning_policy(PinningPolicy::Dedicated)
                .build(),
            hp_host()
                .dedicated_cpus([0, 1])
                .pending_pinned_cpus([2, 3])
                .build(),
            "not_enough_free_pcpus: needs 5 free online pCPU(s), host has 4",
        ),
        (
            "isolate-threads needs whole cores",
            plain(),
            vm("v")
                .vcpus(3)
                .pinning_policy(PinningPolicy::IsolateThreads)
                .build(),
            hp_host().pending_pinned_cpus([1, 5]).build(),
            "not_enough_free_pcpus: needs 3 whole free core(s), host has 2",
        ),
        (
            "resize-and-pin-NUMA on a host without NUMA",
            plain(),
            vm("v")
                .pinning_policy(PinningPolicy::ResizeAndPinNuma)
                .build(),
            host("h").build(),
            "resize_needs_numa",
        ),
    ]);
}

#[test]
fn numa_cases() {
    let two_nodes = |v: VmBuilder| {
        v.vcpus(2)
            .vnuma(0, 4_096, [0], &[0])
            .vnuma(1, 4_096, [1], &[1])
    };
    filter_cases::<NumaFilter>(vec![
        (
            "no vNUMA",
            plain(),
            vm("v").build(),
            host("h").build(),
            "pass",
        ),
        (
            "unpinned vNUMA is not checked",
            plain(),
            vm("v").vnuma(0, 1 << 20, [0], &[]).build(),
            host("h").build(),
            "pass",
        ),
        (
            "pinned nodes fit",
            plain(),
            two_nodes(vm("v")).build(),
            hp_host().build(),
            "pass",
        ),
        (
            "host without NUMA support",
            plain(),
            two_nodes(vm("v")).build(),
            host("h").build(),
            "no_numa_support",
        ),
        (
            "pinned index missing on the host",
            plain(),
            vm("v").vnuma(0, 1_024, [0], &[3]).build(),
            hp_host().build(),
            "numa_node_missing: vNUMA node 0 is pinned to host node 3, which the host lacks",
        ),
        (
            "pending NUMA memory makes a node too small",
            plain(),
            two_nodes(vm("v")).build(),
            hp_host().pending_numa_mb(1, 5_000).build(),
            "not_enough_numa_memory: host node 1 has 3192 MiB of memory free after 5000 MiB \
             pending, its pinned vNUMA nodes need 4096 MiB",
        ),
        (
            // Regression (the detail summed the allowed nodes: "memory needed 20480 MiB, the
            // allowed nodes have 35000 MiB free" while node 1 alone lacked room).
            "regression: the node that lacks room is named, not a sum over the nodes",
            plain(),
            vm("v")
                .vcpus(2)
                .vnuma(0, 10_240, [0], &[0])
                .vnuma(1, 10_240, [1], &[1])
                .build(),
            host("h")
                .cpu(2, 2, 2)
                .numa_node(0, [0, 1, 2, 3], 30_000)
                .numa_node(1, [4, 5, 6, 7], 5_000)
                .build(),
            "not_enough_numa_memory: host node 1 has 5000 MiB of memory free, its pinned vNUMA \
             nodes need 10240 MiB",
        ),
        (
            "no single node lacks room: the nodes fail together",
            plain(),
            vm("v")
                .vcpus(3)
                .vnuma(0, 5_000, [0], &[0, 1])
                .vnuma(1, 5_000, [1], &[0, 1])
                .vnuma(2, 5_000, [2], &[0, 1])
                .build(),
            hp_host().build(),
            "not_enough_numa_memory: no assignment of the pinned vNUMA nodes fits: memory \
             needed 15000 MiB, the allowed nodes have 16384 MiB free together",
        ),
        (
            "backtracking finds the assignment the first choice misses",
            plain(),
            vm("v")
                .vcpus(2)
                .vnuma(0, 3_000, [0], &[0, 1])
                .vnuma(1, 7_000, [1], &[0, 1])
                .build(),
            hp_host().pending_numa_mb(0, 3_000).build(),
            "pass",
        ),
        (
            "hugepage-backed VM counts free pages of its size on the node",
            plain(),
            vm("v")
                .hugepages(1_048_576)
                .vnuma(0, 2_048, [0], &[0])
                .build(),
            hp_host()
                .node_hugepages(0, 2_048, 1_000_000)
                .node_hugepages(0, 1_048_576, 1)
                .build(),
            "not_enough_numa_memory: host node 0 has 1 pages of 1048576 KiB hugepages free, its \
             pinned vNUMA nodes need 2 pages",
        ),
        (
            "interleave mode passes when the nodes exist",
            plain(),
            two_nodes(vm("v"))
                .numa_tune(NumaTuneMode::Interleave)
                .build(),
            hp_host().pending_numa_mb(1, 8_000).build(),
            "pass",
        ),
    ]);
}

#[test]
fn hugepages_cases() {
    filter_cases::<HugePagesFilter>(vec![
        ("VM without hugepages", plain(), vm("v").build(), host("h").build(), "pass"),
        (
            "enough pages of the VM's size",
            plain(),
            vm("v").memory_mb(4_096).hugepages(1_048_576).build(),
            host("h").hugepages(1_048_576, 4).build(),
            "pass",
        ),
        (
            "pages are rounded up",
            plain(),
            vm("v").memory_mb(4_097).hugepages(1_048_576).build(),
            host("h").hugepages(1_048_576, 4).build(),
            "not_enough_hugepages: needs 5 pages of 1048576 KiB; 4 available (4 free, 0 pending)",
        ),
        (
            "pending pages of the same size count",
            plain(),
            vm("v").memory_mb(2_048).hugepages(2_048).build(),
            host("h").hugepages(2_048, 1_500).pending_hugepages(2_048, 600).build(),
            "not_enough_hugepages: needs 1024 pages of 2048 KiB; 900 available (1500 free, 600 pending)",
        ),
        (
            "hugepage sizes are not mixed up: many 2 MiB pages do not hold 1 GiB pages",
            plain(),
            vm("v").memory_mb(1_024).hugepages(1_048_576).build(),
            host("h").hugepages(2_048, 100_000).build(),
            "not_enough_hugepages: needs 1 pages of 1048576 KiB; 0 available",
        ),
        (
            "hugepage sizes are not mixed up: pending 2 MiB pages do not take 1 GiB pages",
            plain(),
            vm("v").memory_mb(1_024).hugepages(1_048_576).build(),
            host("h")
                .hugepages(1_048_576, 1)
                .pending_hugepages(2_048, 1_000)
                .build(),
            "pass",
        ),
    ]);
}

fn penalties<W: Weight>(v: &Vm, hosts: &[Host]) -> Vec<i64> {
    let s = snapshot().hosts(hosts.to_vec()).build();
    let ctx = Context::new(&s, &[], W::NAME);
    let candidates: Vec<HostIndex> = (0..hosts.len() as HostIndex).collect();
    let mut out = Vec::new();
    W::default().penalty_all(&ctx, v, &candidates, &mut out);
    // Per-host and all-at-once agree, and a uniform answer is what every host gets.
    for (h, p) in hosts.iter().zip(&out) {
        assert_eq!(W::default().penalty(&ctx, v, h), *p, "{}", h.id);
    }
    if let Some(same) = W::default().uniform(&ctx, v) {
        assert!(out.iter().all(|p| *p == same), "{out:?} vs uniform {same}");
    }
    out
}

#[test]
fn cpu_and_numa_pinning_weight_cases() {
    let numa = hp_host().build();
    let no_numa = host("flat").cpu(2, 2, 2).build();
    let cases: Vec<(&str, Vm, Vec<i64>)> = vec![
        (
            "no pinned vNUMA: 1 everywhere",
            vm("v").build(),
            vec![FITS, FITS],
        ),
        (
            "CPU pinning agrees with a node assignment",
            vm("v")
                .vcpus(2)
                .pinning("0#4_1#0")
                .vnuma(0, 1_024, [0], &[0, 1])
                .vnuma(1, 1_024, [1], &[0, 1])
                .build(),
            vec![FITS, DOES_NOT_FIT],
        ),
        (
            "vCPU pinned away from the only allowed node",
            vm("v")
                .vcpus(1)
                .pinning("0#5")
                .vnuma(0, 1_024, [0], &[0])
                .build(),
            vec![DOES_NOT_FIT, DOES_NOT_FIT],
        ),
        (
            "NUMA pinning without CPU pinning: memory decides",
            vm("v").vnuma(0, 9_000, [0], &[0, 1]).build(),
            vec![DOES_NOT_FIT, DOES_NOT_FIT],
        ),
    ];
    for (case, v, want) in cases {
        assert_eq!(
            penalties::<CpuAndNumaPinningWeight>(&v, &[numa.clone(), no_numa.clone()]),
            want,
            "{case}"
        );
    }
}

#[test]
fn high_performance_cpu_weight_cases() {
    let big = host("big").cpu(2, 8, 2).build();
    let small = host("small").cpu(1, 4, 1).build();
    let cases: Vec<(&str, Vm, Vec<i64>)> = vec![
        (
            "plain VM: 1 everywhere",
            vm("v").cpu(2, 8, 2).build(),
            vec![FITS, FITS],
        ),
        (
            "HP VM fits the bigger topology only",
            vm("v")
                .vm_type(VmType::HighPerformance)
                .cpu(2, 2, 1)
                .build(),
            vec![FITS, DOES_NOT_FIT],
        ),
        (
            "threads per core count",
            vm("v").passthrough().cpu(1, 2, 2).build(),
            vec![FITS, DOES_NOT_FIT],
        ),
        (
            "pinned VM within both",
            vm("v").pinning("0#1").cpu(1, 1, 1).build(),
            vec![FITS, FITS],
        ),
        (
            "NUMA-pinned VM",
            vm("v").vnuma(0, 1, [0], &[0]).cpu(1, 16, 1).build(),
            vec![DOES_NOT_FIT, DOES_NOT_FIT],
        ),
    ];
    for (case, v, want) in cases {
        assert_eq!(
            penalties::<HighPerformanceCpuWeight>(&v, &[big.clone(), small.clone()]),
            want,
            "{case}"
        );
    }
}

/// `check_all` over random hosts equals `check` host by host, for every filter.
#[test]
fn check_all_matches_per_host_check() {
    let mut rng = XorShift::new(11);
    let flags = ["sse4_2", "avx2", "aes", "avx512f"];
    for round in 0..300 {
        let mut hosts = Vec::new();
        for i in 0..6 {
            // One host in three has 96 pCPUs (two sockets of 24 cores x 2 threads), whose
            // ids from 64 on share their unavailable-pCPU bits with lower ones.
            let threads = if rng.below(3) == 0 { 96 } else { 8 };
            let base = if threads == 96 {
                host("h")
                    .cpu(2, 24, 2)
                    .numa_node(0, 0..48, 8_192)
                    .numa_node(1, 48..96, 8_192)
            } else {
                hp_host()
            };
            let mut h = base
                .cpu_flags(&flags[..rng.below(5) as usize])
                .hugepages(2_048, rng.below(3_000))
                .pending_hugepages(2_048, rng.below(1_000))
                .hugepages(1_048_576, rng.below(6))
                .pending_hugepages(1_048_576, rng.below(3))
                .pending_numa_mb(rng.below(2) as u32, rng.below(8_000));
            if rng.below(4) == 0 {
                // A size listed twice counts twice.
                h = h.hugepages(2_048, rng.below(500));
            }
            if rng.below(3) == 0 {
                h = h.dedicated_cpus([rng.below(threads) as u32]);
            }
            if rng.below(3) == 0 {
                h = h.pending_pinned_cpus([rng.below(threads) as u32]);
            }
            if rng.below(4) == 0 {
                // One pCPU offline.
                let off = rng.below(threads) as u32;
                h = h.online_cpus((0..threads as u32).filter(move |&c| c != off));
            }
            let mut h = h.build();
            h.id = format!("h{i}");
            hosts.push(h);
        }
        let s = snapshot()
            .cluster_cpu("m", &flags[..rng.below(4) as usize])
            .hosts(hosts.clone())
            .build();
        // Up to 7 vCPUs: a dedicated VM then may not find the free pCPUs it needs.
        let mut v = vm("v")
            .vcpus(1 + rng.below(7) as u32)
            .memory_mb(1_024 + rng.below(4_000));
        if rng.below(2) == 0 {
            // "0#7-8" names pCPUs 7 and 8 of hosts with 8 (0-7); the last three name pCPUs
            // past 63, absent from hosts with 8 and sharing bits with 1-5 on hosts with 96.
            v = v.pinning(
                [
                    "0#1_1#2",
                    "0#4-5",
                    "0#1-3_1",
                    "0#6_1#7",
                    "0#7-8",
                    "0#68",
                    "0#4_1#69",
                    "0#64-65_1#1",
                ][rng.below(8) as usize],
            );
        }
        if rng.below(2) == 0 {
            v = v.vnuma(0, rng.below(8_000), [0], &[rng.below(3) as u32]);
        }
        match rng.below(4) {
            0 => v = v.hugepages(2_048),
            1 => v = v.hugepages(1_048_576),
            _ => {}
        }
        if rng.below(3) == 0 {
            v = v.pinning_policy(PinningPolicy::Dedicated);
        }
        if rng.below(3) == 0 {
            // A CPU model of its own: its flags, not the cluster's (whose mask the index
            // keeps).
            let first = rng.below(4) as usize;
            v = v.cpu_flags(&flags[first..first + rng.below(5 - first as u64) as usize]);
        }
        let v = v.build();
        let case = format!("round {round}");
        check_all_agrees::<CpuLevelFilter>(&case, &s, &[], &v);
        check_all_agrees::<CpuPinningFilter>(&case, &s, &[], &v);
        check_all_agrees::<NumaFilter>(&case, &s, &[], &v);
        check_all_agrees::<HugePagesFilter>(&case, &s, &[], &v);
    }
}

#[test]
fn manifest_lists_every_unit() {
    let names: Vec<String> = units()
        .manifest()
        .units
        .iter()
        .map(|u| u.name.clone())
        .collect();
    assert_eq!(
        names,
        [
            "cpu-level",
            "cpu-pinning",
            "numa",
            "hugepages",
            "cpu-and-numa-pinning",
            "high-performance-cpu"
        ]
    );
}

/// `check_all` with the snapshot's flag index (what the runtime passes) over hosts with more
/// than 64 distinct flags (masks of several words) and long flag names: the same verdicts
/// as comparing names host by host.
#[test]
fn cpu_level_with_the_flag_index_over_many_and_long_flags() {
    let names: Vec<String> = (0..70)
        .map(|i| format!("f{i:02}"))
        .chain(["avx512_vp2intersect".to_string()])
        .collect();
    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    let without =
        |gone: &str| -> Vec<&str> { all.iter().copied().filter(|f| *f != gone).collect() };
    let s = snapshot()
        .cluster_cpu("m", &all)
        .host(host("full").cpu_flags(&all))
        .host(host("no-f42").cpu_flags(&without("f42")))
        .host(host("no-long").cpu_flags(&without("avx512_vp2intersect")))
        .build();
    let index = policy_sdk::model::index::SnapshotIndex::build(&s);
    let v = vm("v").build();
    let mut out = Verdicts::default();
    let indexed = Context::new(&s, &[], CpuLevelFilter::NAME).with_index(&index);
    CpuLevelFilter.check_all(&indexed, &v, &[0, 1, 2], &mut out);
    let got: Vec<String> = out.into_verdicts().iter().map(code).collect();
    assert_eq!(
        got,
        [
            "pass",
            "missing_cpu_flags: missing flags of the cluster CPU model: f42",
            "missing_cpu_flags: missing flags of the cluster CPU model: avx512_vp2intersect",
        ]
    );
    let plain = Context::new(&s, &[], CpuLevelFilter::NAME);
    let by_name: Vec<String> = s
        .hosts
        .iter()
        .map(|h| code(&CpuLevelFilter.check(&plain, &v, h)))
        .collect();
    assert_eq!(got, by_name);
}

/// `cpu-pinning` decides whether it applies without parsing the pinning string
/// (`PinningNeeds::any`), and that must be what the parsed needs say: over no string, blank
/// ones, well-formed ones, malformed ones and ones naming a vCPU the VM lacks, under every
/// pinning policy.
#[test]
fn cpu_pinning_applies_exactly_when_the_parsed_needs_are_not_none() {
    let texts = [
        None,
        Some(""),
        Some("  "),
        Some("0#1-3_1#4"),
        Some("0#1,2"),
        Some("not a pinning"),
        Some("0#"),
        Some("7#1"),
    ];
    let policies = [
        PinningPolicy::None,
        PinningPolicy::Manual,
        PinningPolicy::ResizeAndPinNuma,
        PinningPolicy::Dedicated,
        PinningPolicy::IsolateThreads,
    ];
    let snapshot = plain();
    let ctx = Context::new(&snapshot, &[], CpuPinningFilter::NAME);
    for text in texts {
        for policy in policies {
            let mut builder = vm("v").vcpus(2).pinning_policy(policy);
            if let Some(text) = text {
                builder = builder.pinning(text);
            }
            let vm = builder.build();
            let parsed = !matches!(PinningNeeds::of(&vm), PinningNeeds::None);
            assert_eq!(
                CpuPinningFilter.applies(&ctx, &vm),
                parsed,
                "pinning {text:?}, policy {policy:?}"
            );
        }
    }
}
