//! The library's layers point one way: sdk <- state <- engine <- scheduling <- surfaces
//! (DESIGN.md). A file under `state/` names neither the engine nor scheduling, one under
//! `engine/` does not name scheduling, not even through the crate root (`crate::Policy`
//! re-exported at the root is still scheduling); and the library depends on no surface
//! crate (command-line parsing, log subscribers, HTTP, databases).

use std::path::{Path, PathBuf};

/// What each layer of `host-runtime/src` may name after `crate::`.
const LAYERS: &[(&str, &[&str])] = &[
    ("state", &["state", "error", "files"]),
    ("engine", &["engine", "state", "error", "files"]),
];

/// Crates only the surfaces (CLI, server, toolkit) may depend on.
const SURFACE_CRATES: &[&str] = &[
    "clap",
    "tracing-subscriber",
    "axum",
    "tower-http",
    "hyper",
    "sqlx",
    "tokio-postgres",
    "rusqlite",
    "utoipa",
];

fn library_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../host-runtime/src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The modules a source text names right after `crate::` (also inside `crate::{a, b::c}`),
/// outside comments, with their line numbers.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or("");
                for part in inner.split(',') {
                    let name: String = part
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        found.push((n + 1, name));
                    }
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                found.push((n + 1, name));
            }
        }
        // `super::super::scheduling` from a nested file reaches out the same way.
        if code.contains("super::super::") {
            found.push((n + 1, "super::super".into()));
        }
    }
    found
}

/// The upward references of one file of `layer`: `file:line: crate::name`.
fn violations(layer: &str, allowed: &[&str], file: &str, text: &str) -> Vec<String> {
    crate_paths(text)
        .into_iter()
        .filter(|(_, name)| !allowed.contains(&name.as_str()))
        .map(|(line, name)| format!("{file}:{line}: {layer}/ names crate::{name}"))
        .collect()
}

#[test]
fn lower_layers_never_name_a_higher_one() {
    let mut problems = Vec::new();
    for (layer, allowed) in LAYERS {
        let mut files = Vec::new();
        rust_files(&library_src().join(layer), &mut files);
        assert!(!files.is_empty(), "no files under {layer}/");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            problems.extend(violations(
                layer,
                allowed,
                &file.display().to_string(),
                &text,
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "upward imports:\n{}",
        problems.join("\n")
    );
}

/// The check itself: an upward import, in each of the forms it can take, is reported.
#[test]
fn the_layer_check_reports_each_form_of_an_upward_import() {
    let cases: &[(&str, &str, bool)] = &[
        ("state", "use crate::scheduling::Policy;", true),
        ("state", "use crate::engine::LoadedModule;", true),
        ("state", "use crate::Policy;", true),
        (
            "state",
            "use crate::{error::Result, scheduling::Decision};",
            true,
        ),
        ("state", "    let d: crate::Decision = todo!();", true),
        ("state", "use super::super::scheduling::Policy;", true),
        ("engine", "use crate::scheduling::policy::PolicyUnit;", true),
        ("engine", "use crate::Runtime;", true),
        ("state", "use crate::error::{Error, Result};", false),
        ("state", "use super::pending::PendingRecord;", false),
        ("state", "// see crate::scheduling for the logic", false),
        ("engine", "use crate::state::ClusterView;", false),
    ];
    for (layer, line, upward) in cases {
        let allowed = LAYERS.iter().find(|(l, _)| l == layer).unwrap().1;
        let found = violations(layer, allowed, "x.rs", line);
        assert_eq!(!found.is_empty(), *upward, "{layer}: {line}: {found:?}");
    }
}

#[test]
fn the_library_depends_on_no_surface_crate() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../host-runtime/Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let deps = text
        .split("[dependencies]")
        .nth(1)
        .and_then(|rest| rest.split("\n[").next())
        .expect("a [dependencies] table");
    for line in deps.lines() {
        let name = line.split(['=', '.']).next().unwrap_or("").trim();
        assert!(
            !SURFACE_CRATES.contains(&name),
            "host-runtime depends on {name}, a surface crate: {line}"
        );
    }
}
