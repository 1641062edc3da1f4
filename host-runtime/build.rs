//! Compiles the builtin policy modules to wasm from source and embeds them (see
//! `src/engine/builtin.rs`).

use guest_build::Guest;
use std::path::PathBuf;

const BUILTINS: &[Guest] = &[
    // The scheduling module is built from the basic, affinity and high-performance crates
    // too: the whole directory is watched.
    Guest {
        package: "builtin-scheduling",
        dir: "builtin-policies",
    },
    Guest {
        package: "builtin-balance",
        dir: "builtin-policies/balance",
    },
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let built = guest_build::build(&manifest_dir, BUILTINS);
    let mut table = String::from("/// Builtin modules: (file name, wasm bytes).\npub static BUILTIN_MODULES: &[(&str, &[u8])] = &[\n");
    for b in &built {
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
