//! The builtin policy modules, compiled from `builtin-policies/` by the build script and
//! embedded in the binary so the runtime works with no policy directory.

use std::path::{Path, PathBuf};

include!(concat!(env!("OUT_DIR"), "/builtins.rs"));

/// Writes the builtin modules into `dir` (created if needed) and returns the paths.
pub fn write_builtins(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    BUILTIN_MODULES
        .iter()
        .map(|(file, bytes)| {
            let path = dir.join(file);
            std::fs::write(&path, bytes)?;
            Ok(path)
        })
        .collect()
}
