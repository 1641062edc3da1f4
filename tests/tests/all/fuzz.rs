//! Property tests over hostile input, with a hand-written generator (no fuzzing engine, no
//! nightly): everything the host decodes from a guest (manifest, sync answer, unit
//! results; directly and through a real guest's memory), the cluster, VM and policy
//! parsers, and CPU pinning strings. Each target runs for a bounded time in the normal
//! tests (`WASMSCHED_FUZZ_SECS`, default 1 s per target) and reports its executions; a long
//! run is
//!
//! ```sh
//! WASMSCHED_FUZZ_SECS=600 WASMSCHED_FUZZ_SEED=$RANDOM \
//!     cargo test --release -p integration-tests --test all -- fuzz:: --nocapture
//! ```
//!
//! The properties: no panic, every input answered within [`SLOW`], and what is accepted
//! is consistent (an accepted unit result has one entry per candidate; an accepted cluster
//! builds; an accepted pinning names at least one pCPU per vCPU).

use integration_tests::{wat_bytes, wat_guest};
use policy_sdk::model::topology::CpuPinning;
use policy_sdk::testing::XorShift;
use policy_sdk::wire::abi::{pack, BatchResponse, CallResponse};
use policy_sdk::wire::codec;
use policy_sdk::wire::sync::SyncResponse;
use policy_sdk::{BalanceAction, Snapshot, UnitKind, Verdict, Verdicts, Vm};
use std::path::Path;
use std::time::{Duration, Instant};
use wasmsched::fuzz::{decode_guest_output, GuestOutput};
use wasmsched::{Cluster, Format, Policy, Runtime};

/// Longest any single input may take.
const SLOW: Duration = Duration::from_secs(1);

fn budget() -> Duration {
    std::env::var("WASMSCHED_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_secs(1))
}

fn seed() -> u64 {
    std::env::var("WASMSCHED_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234)
}

/// Hostile bytes and text: random, or seeds mutated (bit flips, boundary bytes, huge
/// varint lengths, truncation, duplication, splicing, deep nesting, extreme numbers).
struct Hostile {
    rng: XorShift,
}

/// Bytes that sit on boundaries: bincode varint markers (251-254), sign bits, all ones.
const INTERESTING: [u8; 10] = [0, 1, 0x7f, 0x80, 0xfa, 0xfb, 0xfc, 0xfd, 0xfe, 0xff];
/// Numbers that sit on boundaries, as text.
const NUMBERS: [&str; 12] = [
    "0",
    "-1",
    "4294967295",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "1e309",
    "NaN",
    "0.5",
    "99999999999999999999999999999",
    "\"\"",
];

impl Hostile {
    fn new(salt: u64) -> Self {
        Self {
            rng: XorShift::new(seed() ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        }
    }

    fn below(&mut self, n: usize) -> usize {
        self.rng.below(n.max(1) as u64) as usize
    }

    fn bytes(&mut self, seeds: &[Vec<u8>]) -> Vec<u8> {
        if self.below(5) == 0 || seeds.is_empty() {
            let len = [0, 1, 8, 64, 4096][self.below(5)];
            return (0..self.below(len + 1))
                .map(|_| self.below(256) as u8)
                .collect();
        }
        let mut out = seeds[self.below(seeds.len())].clone();
        for _ in 0..1 + self.below(8) {
            self.mutate(&mut out, seeds);
        }
        out
    }

    fn mutate(&mut self, v: &mut Vec<u8>, seeds: &[Vec<u8>]) {
        let at = self.below(v.len() + 1);
        match self.below(8) {
            0 if !v.is_empty() => {
                let i = at.min(v.len() - 1);
                v[i] ^= 1 << self.below(8);
            }
            1 if !v.is_empty() => {
                let i = at.min(v.len() - 1);
                v[i] = INTERESTING[self.below(INTERESTING.len())];
            }
            2 => {
                // A huge length or count: u64 varint marker then all ones.
                let mut huge = vec![0xfd];
                huge.extend(std::iter::repeat_n(0xff, 8));
                v.splice(at..at, huge);
            }
            3 => v.truncate(at),
            4 if !v.is_empty() => {
                let end = (at + 1 + self.below(64)).min(v.len());
                let chunk = v[at.min(end)..end].to_vec();
                v.splice(at..at, chunk.iter().copied().cycle().take(chunk.len() * 4));
            }
            5 if !v.is_empty() => {
                let end = (at + 1 + self.below(16)).min(v.len());
                v.drain(at.min(end)..end);
            }
            6 => {
                let other = &seeds[self.below(seeds.len())];
                let from = self.below(other.len() + 1);
                v.splice(at..at, other[from..].iter().copied().take(64));
            }
            _ => v.insert(at, self.below(256) as u8),
        }
    }

    fn text(&mut self, seeds: &[String]) -> String {
        let byte_seeds: Vec<Vec<u8>> = seeds.iter().map(|s| s.clone().into_bytes()).collect();
        let mut text = seeds[self.below(seeds.len())].clone();
        for _ in 0..1 + self.below(4) {
            match self.below(5) {
                0 => {
                    // Replace a number with an extreme one.
                    let digits: Vec<usize> = text
                        .char_indices()
                        .filter(|(_, c)| c.is_ascii_digit())
                        .map(|(i, _)| i)
                        .collect();
                    if let Some(&start) = digits.get(self.below(digits.len())) {
                        let end = text[start..]
                            .find(|c: char| !c.is_ascii_digit())
                            .map_or(text.len(), |n| start + n);
                        let number = NUMBERS[self.below(NUMBERS.len())];
                        text.replace_range(start..end, number);
                    }
                }
                1 => {
                    // Deep nesting at a char boundary.
                    let depth = [10, 200, 5_000][self.below(3)];
                    let (open, close) =
                        [("[", "]"), ("{\"a\":", "}"), ("a = [", "]")][self.below(3)];
                    let at = self.boundary(&text);
                    let nest = format!("{}1{}", open.repeat(depth), close.repeat(depth));
                    text.insert_str(at, &nest);
                }
                2 => {
                    let at = self.boundary(&text);
                    let junk = [
                        "\u{0}",
                        "\u{202e}",
                        "\"",
                        "\\u0000",
                        "\n[x]\n",
                        "\u{10ffff}",
                    ][self.below(6)];
                    text.insert_str(at, &junk.repeat(1 + self.below(100)));
                }
                _ => {
                    let mut bytes = text.into_bytes();
                    self.mutate(&mut bytes, &byte_seeds);
                    text = String::from_utf8_lossy(&bytes).into_owned();
                }
            }
        }
        text
    }

    fn boundary(&mut self, text: &str) -> usize {
        let mut at = self.below(text.len() + 1);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        at
    }
}

/// Runs `check` on generated inputs for the budget; asserts each finishes within [`SLOW`]
/// (a panic fails the test with the seed and execution number). Returns executions.
fn run<T: std::fmt::Debug>(
    target: &str,
    salt: u64,
    mut generate: impl FnMut(&mut Hostile) -> T,
    mut check: impl FnMut(&T),
) -> u64 {
    let mut gen = Hostile::new(salt);
    let start = Instant::now();
    let mut executions = 0u64;
    let mut slowest = Duration::ZERO;
    while start.elapsed() < budget() {
        let input = generate(&mut gen);
        let t = Instant::now();
        check(&input);
        let took = t.elapsed();
        slowest = slowest.max(took);
        assert!(
            took < SLOW,
            "{target}: execution {executions} (seed {}) took {took:?}: {:.200}",
            seed(),
            format!("{input:?}")
        );
        executions += 1;
    }
    eprintln!(
        "fuzz {target}: {executions} executions in {:?}, slowest {slowest:?}, seed {}",
        start.elapsed(),
        seed()
    );
    assert!(executions > 0);
    executions
}

fn guest_seeds() -> Vec<Vec<u8>> {
    let rt = integration_tests::runtime();
    let mut seeds: Vec<Vec<u8>> = rt
        .modules()
        .iter()
        .map(|m| codec::encode(&Some(m.manifest().clone())).unwrap())
        .collect();
    seeds.push(codec::encode(&SyncResponse::Synced { epoch: 7 }).unwrap());
    seeds.push(codec::encode(&SyncResponse::Failed("no".into())).unwrap());
    let verdicts = Verdicts::from_verdicts(vec![
        Verdict::Pass,
        Verdict::reject("numa", "node 1 lacks 4096 MiB"),
        Verdict::Pass,
    ]);
    seeds.push(codec::encode(&CallResponse::Verdicts(verdicts)).unwrap());
    seeds.push(codec::encode(&CallResponse::Penalties(vec![1, -5, i64::MAX])).unwrap());
    seeds.push(codec::encode(&CallResponse::SamePenalty(3)).unwrap());
    seeds.push(
        codec::encode(&CallResponse::Actions(vec![BalanceAction::Migrate {
            vm: 2,
            candidate_hosts: vec![0, 1, 2],
            reason: "overloaded".into(),
        }]))
        .unwrap(),
    );
    seeds.push(codec::encode(&CallResponse::Failed("bad vm".into())).unwrap());
    seeds.push(
        codec::encode(&BatchResponse::Answers {
            filters: vec![
                CallResponse::Verdicts(Verdicts::from_verdicts(vec![
                    Verdict::Pass,
                    Verdict::reject("memory", "too little"),
                    Verdict::Pass,
                ])),
                CallResponse::Failed("no".into()),
            ],
            weights: vec![
                CallResponse::Penalties(vec![4, 2]),
                CallResponse::SamePenalty(1),
            ],
        })
        .unwrap(),
    );
    seeds.push(codec::encode(&BatchResponse::Failed("stale".into())).unwrap());
    seeds
}

#[test]
fn fuzz_guest_answers_decoded_by_the_host() {
    let seeds = guest_seeds();
    let kinds = [UnitKind::Filter, UnitKind::Weight, UnitKind::Balance];
    let mut accepted = 0u64;
    let executions = run(
        "guest answers",
        1,
        |g| {
            let what = match g.below(4) {
                0 => GuestOutput::Manifest,
                1 => GuestOutput::Sync,
                2 => GuestOutput::Batch {
                    filters: g.below(3),
                    weights: g.below(3),
                    candidates: g.below(4),
                },
                _ => GuestOutput::Call {
                    kind: kinds[g.below(3)],
                    candidates: g.below(4),
                },
            };
            (what, g.bytes(&seeds))
        },
        |(what, bytes)| {
            if decode_guest_output(*what, bytes).is_ok() {
                accepted += 1;
                // An accepted unit result has the right shape: re-check the count.
                if let GuestOutput::Call {
                    kind: UnitKind::Filter,
                    candidates,
                } = what
                {
                    if let Ok(CallResponse::Verdicts(v)) = codec::decode::<CallResponse>(bytes) {
                        assert_eq!(v.len(), *candidates);
                        assert!(v.check().is_ok());
                    }
                }
                // An accepted batch: one answer per unit, the first filter's verdicts over
                // every candidate.
                if let GuestOutput::Batch {
                    filters,
                    weights,
                    candidates,
                } = what
                {
                    match codec::decode::<BatchResponse>(bytes) {
                        Ok(BatchResponse::Answers {
                            filters: f,
                            weights: w,
                        }) => {
                            assert_eq!((f.len(), w.len()), (*filters, *weights));
                            if let Some(CallResponse::Verdicts(v)) = f.first() {
                                assert_eq!(v.len(), *candidates);
                                assert!(v.check().is_ok());
                            }
                        }
                        other => panic!("accepted batch answer {other:?}"),
                    }
                }
            }
        },
    );
    eprintln!("fuzz guest answers: {accepted} of {executions} accepted");
}

#[test]
fn fuzz_guest_answers_through_a_real_guests_memory() {
    // Each input is a guest whose unit answers with hostile bytes at a hostile pointer; it
    // goes through the whole load (trial over the generated cluster) and, when accepted,
    // a decision. Compiling a module per input makes this target slow per execution.
    let seeds = guest_seeds();
    let rt = Runtime::builder()
        .cache_dir(None)
        .builtins(false)
        .default_deadline(Duration::from_millis(200))
        .default_memory_limit_mb(16)
        .build()
        .unwrap();
    let kinds = [UnitKind::Filter, UnitKind::Weight, UnitKind::Balance];
    let mut loaded = 0u64;
    run(
        "guest memory",
        2,
        |g| {
            let bytes = match g.below(4) {
                // Sometimes an answer as a good guest gives it (then other faults apply).
                0 => seeds[g.below(seeds.len())].clone(),
                _ => g.bytes(&seeds),
            };
            let ptr: u32 = match g.below(4) {
                0 => g.below(u32::MAX as usize) as u32,
                _ => 20480,
            };
            let len: u32 = match g.below(6) {
                0 => u32::MAX - g.below(16) as u32,
                1 => bytes.len() as u32 + 1,
                _ => bytes.len() as u32,
            };
            (kinds[g.below(3)], bytes, ptr, len)
        },
        |(kind, bytes, ptr, len)| {
            let body = format!("i64.const {}", pack(*ptr, *len) as i64);
            let data = format!("(data (i32.const 20480) \"{}\")", wat_bytes(bytes));
            let module = wat_guest("fuzzed", *kind, &body, &data);
            if let Ok(m) = rt.load_module("fuzzed.wasm", &module) {
                loaded += 1;
                assert_eq!(m.manifest().units[0].name, "fuzzed");
            }
        },
    );
    eprintln!("fuzz guest memory: {loaded} guests accepted");
}

fn read_seeds(paths: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    paths
        .iter()
        .map(|p| std::fs::read_to_string(root.join(p)).unwrap())
        .collect()
}

#[test]
fn fuzz_cluster_documents() {
    let seeds = read_seeds(&[
        "examples/clusters/small.json",
        "examples/mass-start/cluster.json",
        "examples/power-day/cluster.json",
    ]);
    let mut accepted = 0u64;
    run(
        "cluster",
        3,
        |g| g.text(&seeds),
        |text| {
            if let Ok(snapshot) = wasmsched::parse_document::<Snapshot>(text, Format::Json, "c") {
                if let Ok(cluster) = Cluster::new(snapshot, "c") {
                    accepted += 1;
                    let _ = cluster.view().epoch();
                }
            }
            let _ = wasmsched::parse_document::<Snapshot>(text, Format::Toml, "c.toml");
        },
    );
    eprintln!("fuzz cluster: {accepted} accepted");
}

#[test]
fn fuzz_vm_and_event_documents() {
    let seeds = read_seeds(&[
        "examples/vms/web.json",
        "examples/vms/huge.json",
        "examples/vms/analytics.json",
        "examples/mass-start/events.json",
        "examples/power-day/scenario.json",
    ]);
    run(
        "vm and events",
        4,
        |g| g.text(&seeds),
        |text| {
            if let Ok(vm) = wasmsched::parse_document::<Vm>(text, Format::Json, "vm.json") {
                let _ = CpuPinning::of_vm(&vm);
            }
            // Scenario files: their `vms` list goes through the same VM parser.
            let _ = wasmsched::parse_document::<serde_json::Value>(text, Format::Json, "e.json")
                .map(|v| {
                    v.get("vms")
                        .map(|vms| serde_json::from_value::<Vec<Vm>>(vms.clone()))
                });
        },
    );
}

#[test]
fn fuzz_policy_documents() {
    let seeds = read_seeds(&[
        "examples/policies/spread.toml",
        "examples/policies/max-vms.toml",
        "examples/power-day/policy.toml",
    ]);
    let rt = integration_tests::runtime();
    let mut accepted = 0u64;
    run(
        "policy",
        5,
        |g| g.text(&seeds),
        |text| {
            if Policy::parse(&rt, text, Format::Toml, "p.toml").is_ok() {
                accepted += 1;
            }
            let _ = Policy::parse(&rt, text, Format::Json, "p.json");
        },
    );
    eprintln!("fuzz policy: {accepted} accepted");
}

#[test]
fn fuzz_cpu_pinning_strings() {
    let seeds: Vec<String> = [
        "0#1-3_1#4",
        "0#0,2,4_1#1,3,^3,5",
        " 0 # 1 - 3 _ 1 # 4 ",
        "3#0-4095_2#^1,0-7",
        "",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut accepted = 0u64;
    run(
        "pinning",
        6,
        |g| {
            if g.below(2) == 0 {
                // Grammar-aware: entries built from the alphabet of the grammar.
                let alphabet = [
                    "#",
                    "_",
                    ",",
                    "-",
                    "^",
                    " ",
                    "0",
                    "1",
                    "7",
                    "4095",
                    "4096",
                    "99999999999",
                ];
                (0..g.below(40))
                    .map(|_| alphabet[g.below(alphabet.len())])
                    .collect()
            } else {
                g.text(&seeds)
            }
        },
        |text| {
            if let Ok(pinning) = CpuPinning::parse(text) {
                accepted += 1;
                for vcpu in 0..64 {
                    if let Some(pcpus) = pinning.pcpus_of(vcpu) {
                        assert!(!pcpus.is_empty(), "{text:?}: vCPU {vcpu} pinned to nothing");
                    }
                }
                assert!(
                    text.trim().is_empty() || !pinning.all_pcpus().is_empty(),
                    "{text:?}"
                );
            }
        },
    );
    eprintln!("fuzz pinning: {accepted} accepted");
}
