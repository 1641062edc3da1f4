//! Shared by the CLI's test binaries.

use std::path::{Path, PathBuf};

/// The example operator unit (`examples/max-vms-per-host`), compiled to wasm from source
/// once per test binary with the same guest build the library's build script uses.
pub fn example_unit() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let guest = guest_build::Guest {
                package: "max-vms-per-host",
                dir: "examples/max-vms-per-host",
            };
            guest_build::build(Path::new(env!("CARGO_MANIFEST_DIR")), &[guest])[0]
                .wasm
                .clone()
        })
        .clone()
}
