//! Test fixture: units that misbehave on request (parameter `mode`), to prove the host
//! survives traps, endless loops, memory growth and ABI garbage.
//!
//! Filter `chaos` modes: `pass`, `trap`, `loop`, `grow`, `wrong_length`, `bad_pointer`,
//! `garbage`. Weight `chaos-weight` modes: `pass`, `trap`. Balance `chaos-balance` modes:
//! `ok` (moves VM 0 to host 0), `unknown_host`, `unknown_vm`.
//!
//! The exports are written by hand (not with `export_units!`) so that `wasmsched_call` and
//! `wasmsched_batch` can corrupt their own result after the SDK produced it.

use core::sync::atomic::{AtomicU32, Ordering};
use policy_sdk::{
    Balance, BalanceAction, Context, Filter, Host, HostIndex, ParamSpec, Penalty, UnitSet, Verdict,
    Verdicts, Vm, Weight,
};

const MODES: &[&str] = &[
    "pass",
    "trap",
    "loop",
    "grow",
    "wrong_length",
    "bad_pointer",
    "garbage",
];

/// What the export wrapper must do to the result of the current call.
static CORRUPT: AtomicU32 = AtomicU32::new(0);
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
const CORRUPT_NONE: u32 = 0;
const CORRUPT_POINTER: u32 = 1;
const CORRUPT_BYTES: u32 = 2;

fn misbehave(mode: &str) {
    match mode {
        "trap" => panic!("chaos unit asked to trap"),
        "loop" => {
            let mut x: u64 = 1;
            loop {
                x = core::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        "grow" => {
            let mut hog: Vec<Vec<u8>> = Vec::new();
            loop {
                hog.push(vec![1u8; 16 << 20]);
                core::hint::black_box(&hog);
            }
        }
        "bad_pointer" => CORRUPT.store(CORRUPT_POINTER, Ordering::Relaxed),
        "garbage" => CORRUPT.store(CORRUPT_BYTES, Ordering::Relaxed),
        _ => {}
    }
}

/// A filter that misbehaves as its `mode` parameter says.
#[derive(Debug, Default)]
pub struct Chaos;

impl Filter for Chaos {
    const NAME: &'static str = "chaos";
    const DESCRIPTION: &'static str = "Test fixture filter that misbehaves on request";
    fn params() -> Vec<ParamSpec> {
        vec![ParamSpec::choice("mode", "pass", MODES, "How to misbehave")]
    }
    fn check(&self, _ctx: &Context<'_>, _vm: &Vm, _host: &Host) -> Verdict {
        Verdict::Pass
    }
    fn check_all(&self, ctx: &Context<'_>, vm: &Vm, candidates: &[HostIndex], out: &mut Verdicts) {
        let mode = ctx.str("mode");
        misbehave(mode);
        out.extend(candidates.iter().map(|&i| self.check(ctx, vm, ctx.host(i))));
        if mode == "wrong_length" {
            out.push(Verdict::Pass);
        }
    }
}

/// A weight that traps on request.
#[derive(Debug, Default)]
pub struct ChaosWeight;

impl Weight for ChaosWeight {
    const NAME: &'static str = "chaos-weight";
    fn params() -> Vec<ParamSpec> {
        vec![ParamSpec::choice(
            "mode",
            "pass",
            &["pass", "trap"],
            "How to misbehave",
        )]
    }
    fn penalty(&self, ctx: &Context<'_>, _vm: &Vm, _host: &Host) -> Penalty {
        misbehave(ctx.str("mode"));
        0
    }
}

/// A balance unit that names hosts or VMs that do not exist, on request.
#[derive(Debug, Default)]
pub struct ChaosBalance;

impl Balance for ChaosBalance {
    const NAME: &'static str = "chaos-balance";
    fn params() -> Vec<ParamSpec> {
        vec![ParamSpec::choice(
            "mode",
            "ok",
            &["ok", "unknown_host", "unknown_vm"],
            "How to misbehave",
        )]
    }
    fn balance(&self, ctx: &Context<'_>, _candidates: &[HostIndex]) -> Vec<BalanceAction> {
        let (vm, host) = match ctx.str("mode") {
            "unknown_host" => (0, 9_999),
            "unknown_vm" => (9_999, 0),
            _ => (0, 0),
        };
        vec![BalanceAction::Migrate {
            vm,
            candidate_hosts: vec![host],
            reason: "chaos".into(),
        }]
    }
}

/// The fixture's units.
pub fn units() -> UnitSet {
    UnitSet::new("misbehave", "0.0.1")
        .filter::<Chaos>()
        .weight::<ChaosWeight>()
        .balance::<ChaosBalance>()
}

#[cfg(target_arch = "wasm32")]
mod exports {
    use super::*;
    use policy_sdk::guest::exports as guest;
    use policy_sdk::wire::abi::pack;

    static GARBAGE: [u8; 16] = [0xff; 16];

    #[unsafe(no_mangle)]
    pub extern "C" fn wasmsched_abi_version() -> u32 {
        guest::abi_version()
    }
    #[unsafe(no_mangle)]
    pub extern "C" fn wasmsched_input(len: u32) -> u32 {
        guest::input(units, len)
    }
    #[unsafe(no_mangle)]
    pub extern "C" fn wasmsched_manifest() -> u64 {
        guest::manifest(units)
    }
    #[unsafe(no_mangle)]
    pub extern "C" fn wasmsched_sync(len: u32) -> u64 {
        guest::sync(units, len)
    }
    #[unsafe(no_mangle)]
    pub extern "C" fn wasmsched_call(len: u32) -> u64 {
        CORRUPT.store(CORRUPT_NONE, Ordering::Relaxed);
        corrupted(guest::call(units, len))
    }
    #[unsafe(no_mangle)]
    pub extern "C" fn wasmsched_batch(len: u32) -> u64 {
        CORRUPT.store(CORRUPT_NONE, Ordering::Relaxed);
        corrupted(guest::batch(units, len))
    }

    /// The result as the current call's mode wants it corrupted.
    fn corrupted(packed: u64) -> u64 {
        match CORRUPT.load(Ordering::Relaxed) {
            CORRUPT_POINTER => pack(0xfff0_0000, 4096),
            CORRUPT_BYTES => pack(GARBAGE.as_ptr() as usize as u32, GARBAGE.len() as u32),
            _ => packed,
        }
    }
}
