//! Embeds the policy-sdk sources (and the workspace's Cargo.lock) in the toolkit, so that
//! `wasmsched new` works from an installed binary with no repository: the scaffold gets a
//! copy of the SDK, with a stand-alone manifest whose `workspace = true` entries are
//! resolved against this workspace's `[workspace.package]` and `[workspace.dependencies]`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap().to_path_buf();
    let sdk = workspace.join("policy-sdk");
    for path in [
        sdk.clone(),
        workspace.join("Cargo.toml"),
        workspace.join("Cargo.lock"),
    ] {
        println!("cargo:rerun-if-changed={}", path.display());
    }

    let mut files = Vec::new();
    collect(&sdk, &sdk.join("src"), &mut files);
    if sdk.join("ABI.md").exists() {
        files.push(("ABI.md".to_string(), sdk.join("ABI.md")));
    }
    files.sort();
    let manifest = standalone_manifest(&workspace, &sdk);

    let mut digest = Fnv::default();
    digest.add(manifest.as_bytes());
    let mut out = String::from("/// The policy-sdk sources: (path inside the SDK, content).\n");
    out.push_str("pub(crate) const SDK_FILES: &[(&str, &str)] = &[\n");
    for (rel, path) in &files {
        digest.add(rel.as_bytes());
        digest.add(&std::fs::read(path).unwrap());
        writeln!(
            out,
            "    ({rel:?}, include_str!({:?})),",
            path.display().to_string()
        )
        .unwrap();
    }
    out.push_str("];\n");
    writeln!(
        out,
        "/// The SDK's stand-alone Cargo.toml.\npub(crate) const SDK_MANIFEST: &str = {manifest:?};"
    )
    .unwrap();
    writeln!(
        out,
        "/// A digest of the embedded SDK (names its directory).\npub(crate) const SDK_DIGEST: &str = \"{:016x}\";",
        digest.0
    )
    .unwrap();
    writeln!(
        out,
        "/// The workspace's Cargo.lock: pins the SDK's dependencies to the tested versions.\npub(crate) const WORKSPACE_LOCK: &str = include_str!({:?});",
        workspace.join("Cargo.lock").display().to_string()
    )
    .unwrap();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    std::fs::write(out_dir.join("sdk_files.rs"), out).unwrap();
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(root, &path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            files.push((rel, path));
        }
    }
}

/// policy-sdk's Cargo.toml with every `workspace = true` resolved, without dev-dependencies
/// and lints (which need the workspace).
fn standalone_manifest(workspace: &Path, sdk: &Path) -> String {
    let read = |p: &Path| -> toml::Table { std::fs::read_to_string(p).unwrap().parse().unwrap() };
    let root = read(&workspace.join("Cargo.toml"));
    let own = read(&sdk.join("Cargo.toml"));
    let ws = root["workspace"].as_table().unwrap();
    let ws_package = ws["package"].as_table().unwrap();
    let ws_deps = ws["dependencies"].as_table().unwrap();

    let mut package = toml::Table::new();
    for (key, value) in own["package"].as_table().unwrap() {
        let resolved = match value.as_table() {
            Some(t) if t.get("workspace").and_then(|w| w.as_bool()) == Some(true) => {
                ws_package[key].clone()
            }
            _ => value.clone(),
        };
        package.insert(key.clone(), resolved);
    }
    package.insert("publish".into(), toml::Value::Boolean(false));

    let mut deps = toml::Table::new();
    if let Some(own_deps) = own.get("dependencies").and_then(|d| d.as_table()) {
        for (name, value) in own_deps {
            let mut dep = match value.as_table() {
                Some(t) if t.get("workspace").and_then(|w| w.as_bool()) == Some(true) => {
                    let mut base = match &ws_deps[name] {
                        toml::Value::String(v) => {
                            let mut t = toml::Table::new();
                            t.insert("version".into(), toml::Value::String(v.clone()));
                            t
                        }
                        other => other.as_table().unwrap().clone(),
                    };
                    for (k, v) in t {
                        match (k.as_str(), base.get_mut("features")) {
                            ("workspace", _) => {}
                            ("features", Some(toml::Value::Array(existing))) => {
                                existing.extend(v.as_array().unwrap().iter().cloned())
                            }
                            _ => {
                                base.insert(k.clone(), v.clone());
                            }
                        }
                    }
                    base
                }
                _ => value.as_table().cloned().unwrap_or_else(|| {
                    let mut t = toml::Table::new();
                    t.insert("version".into(), value.clone());
                    t
                }),
            };
            assert!(
                !dep.contains_key("path"),
                "policy-sdk dependency {name} is a path dependency; it cannot be embedded"
            );
            dep.remove("workspace");
            deps.insert(name.clone(), toml::Value::Table(dep));
        }
    }
    let mut doc = toml::Table::new();
    doc.insert("package".into(), toml::Value::Table(package));
    doc.insert("dependencies".into(), toml::Value::Table(deps));
    if let Some(features) = own.get("features") {
        doc.insert("features".into(), features.clone());
    }
    format!(
        "# A copy of wasmsched's policy-sdk, written by `wasmsched new` (do not edit).\n{}",
        toml::to_string(&doc).unwrap()
    )
}

/// FNV-1a, 64 bits: a stable digest without a dependency.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn add(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}
