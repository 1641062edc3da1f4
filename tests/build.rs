//! Builds the example operator unit and the test fixture guests to wasm for the
//! integration tests.

use guest_build::Guest;
use std::path::PathBuf;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let guests = [
        Guest {
            package: "max-vms-per-host",
            dir: "examples/max-vms-per-host",
        },
        Guest {
            package: "misbehave-guest",
            dir: "tests/guests/misbehave",
        },
        Guest {
            package: "device-filter-guest",
            dir: "tests/guests/device-filter",
        },
    ];
    for built in guest_build::build(&manifest_dir, &guests) {
        let var = built.package.to_uppercase().replace('-', "_");
        println!("cargo:rustc-env=WASM_{var}={}", built.wasm.display());
    }
    println!("cargo:rerun-if-changed=build.rs");
}
