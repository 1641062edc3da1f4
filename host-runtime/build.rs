//! Compiles the builtin policy modules to wasm from source and embeds them (see
//! `src/builtin.rs`).

use guest_build::Guest;
use std::path::PathBuf;

const BUILTINS: &[Guest] = &[
    Guest {
        package: "builtin-basic",
        dir: "builtin-policies/basic",
    },
    Guest {
        package: "builtin-affinity",
        dir: "builtin-policies/affinity",
    },
    Guest {
        package: "builtin-high-performance",
        dir: "builtin-policies/high-performance",
    },
    Guest {
        package: "builtin-balance",
        dir: "builtin-policies/balance",
    },
];

/// Built alongside for the CLI tests (not embedded).
const EXAMPLES: &[Guest] = &[Guest {
    package: "max-vms-per-host",
    dir: "examples/max-vms-per-host",
}];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let all: Vec<Guest> = BUILTINS.iter().chain(EXAMPLES).cloned().collect();
    let built = guest_build::build(&manifest_dir, &all);
    for example in &built[BUILTINS.len()..] {
        let var = example.package.to_uppercase().replace('-', "_");
        println!(
            "cargo:rustc-env=WASM_EXAMPLE_{var}={}",
            example.wasm.display()
        );
    }
    let built = &built[..BUILTINS.len()];
    let mut table = String::from("/// Builtin modules: (file name, wasm bytes).\npub static BUILTIN_MODULES: &[(&str, &[u8])] = &[\n");
    for b in built {
        let name = b.package.trim_start_matches("builtin-");
        let dest = out_dir.join(format!("{name}.wasm"));
        std::fs::copy(&b.wasm, &dest).unwrap();
        table.push_str(&format!(
            "    (\"{name}.wasm\", include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{name}.wasm\"))),\n"
        ));
    }
    table.push_str("];\n");
    std::fs::write(out_dir.join("builtins.rs"), table).unwrap();
    println!("cargo:rerun-if-changed=build.rs");
}
