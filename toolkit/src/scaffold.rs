//! `wasmsched new`: a unit crate that builds and passes its own tests at once.
//!
//! The crate depends on `policy-sdk`, which is not published on crates.io. It is found in
//! one of two ways ([`SdkSource`]):
//!
//! * **from this repository**: a binary built from a clone of the repository knows where
//!   the clone's `policy-sdk` is; while it is there, the scaffold's `Cargo.toml` points at
//!   it (a path dependency);
//! * **embedded**: the toolkit carries the SDK's sources (`build.rs` embeds them); an
//!   installed binary with no repository writes them once into the user's data directory
//!   (`$XDG_DATA_HOME/wasmsched/policy-sdk/VERSION-DIGEST` on Linux), or next to the crate
//!   when there is no data directory, and the scaffold points there. Only the SDK's own
//!   dependencies (serde, bincode) come from crates.io, pinned by the `Cargo.lock` the
//!   scaffold gets.

use crate::embedded::{SDK_DIGEST, SDK_FILES, SDK_MANIFEST, WORKSPACE_LOCK};
use std::path::{Path, PathBuf};
use wasmsched::sdk::UnitKind;
use wasmsched::{Error, Result};

/// Where the new crate's `policy-sdk` comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SdkSource {
    /// The repository's SDK when this binary's repository is still there, else the
    /// embedded copy.
    #[default]
    Auto,
    /// The SDK sources embedded in this binary, written to the user's data directory.
    Embedded,
    /// An existing `policy-sdk` directory.
    Path(PathBuf),
}

/// What `wasmsched new` is asked to make.
#[derive(Debug, Clone)]
pub struct NewUnit {
    /// Crate and unit name (see [`validate_name`]).
    pub name: String,
    /// The unit's kind.
    pub kind: UnitKind,
    /// The directory the crate is created in (`DIR/NAME`).
    pub dir: PathBuf,
    /// Where the SDK comes from.
    pub sdk: SdkSource,
}

/// What `wasmsched new` made.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Scaffold {
    /// The new crate's directory.
    pub dir: PathBuf,
    /// The files written, relative to `dir`.
    pub files: Vec<String>,
    /// The `policy-sdk` directory the crate depends on.
    pub sdk: PathBuf,
    /// Where that SDK came from: `repository`, `embedded` or `path`.
    pub sdk_origin: &'static str,
}

const CARGO_TOML: &str = include_str!("templates/Cargo.toml.in");
const CLUSTER: &str = include_str!("templates/cluster.toml.in");

/// Names a unit crate may not take: they clash with the standard crates, the SDK itself,
/// or Rust path keywords.
const RESERVED: &[&str] = &[
    "alloc",
    "core",
    "crate",
    "policy-sdk",
    "policy_sdk",
    "proc_macro",
    "self",
    "std",
    "super",
    "test",
];

/// Checks that `name` can be both a crate name and a unit name: 1-64 characters, ASCII
/// lower-case letters, digits, `-` and `_`, starting with a letter and ending with a
/// letter or digit, and not a reserved name. The error says which rule is broken.
pub fn validate_name(name: &str) -> Result<()> {
    let bad = |why: String| Err(Error::input("unit name", None, format!("{name:?}: {why}")));
    if name.is_empty() || name.len() > 64 {
        return bad("a unit name has 1 to 64 characters".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
    {
        return bad(format!(
            "{c:?} is not allowed; use lower-case letters, digits, '-' and '_'"
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return bad("must start with a lower-case letter".into());
    }
    if name.ends_with(['-', '_']) {
        return bad("must end with a letter or a digit".into());
    }
    if RESERVED.contains(&name) {
        return bad("is reserved (a standard crate, the SDK or a Rust keyword)".into());
    }
    Ok(())
}

/// The unit's Rust type name: `old-hosts` -> `OldHosts`.
fn type_name(name: &str) -> String {
    name.split(['-', '_'])
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            let first = chars.next().map(|c| c.to_ascii_uppercase());
            first.into_iter().chain(chars).collect::<String>()
        })
        .collect()
}

/// The `policy-sdk` of the repository this binary was built from, if it is still there.
pub fn repository_sdk() -> Option<PathBuf> {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .join("policy-sdk");
    sdk.join("Cargo.toml").is_file().then_some(sdk)
}

/// Where [`SdkSource::Embedded`] writes the SDK: a directory named by the SDK's version and
/// digest under the user's data directory; `None` when the platform has none.
pub fn embedded_sdk_home() -> Option<PathBuf> {
    let data = dirs::data_dir()?;
    Some(
        data.join("wasmsched")
            .join("policy-sdk")
            .join(format!("{}-{SDK_DIGEST}", env!("CARGO_PKG_VERSION"))),
    )
}

/// Writes the embedded SDK into `dir` unless a complete copy is already there; returns
/// `dir`. The copy is written next to `dir` and renamed into place, so a reader never sees
/// half an SDK.
pub fn write_embedded_sdk(dir: &Path) -> Result<PathBuf> {
    if dir.join("Cargo.toml").is_file() {
        return Ok(dir.to_path_buf());
    }
    let io = |path: &Path, e: std::io::Error| Error::io(path.display().to_string(), e.to_string());
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
    let staging = parent.join(format!(
        ".{}.{}.partial",
        dir.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&staging);
    for (rel, text) in SDK_FILES {
        let path = staging.join(rel);
        let folder = path.parent().unwrap_or(&staging);
        std::fs::create_dir_all(folder).map_err(|e| io(folder, e))?;
        std::fs::write(&path, text).map_err(|e| io(&path, e))?;
    }
    let manifest = staging.join("Cargo.toml");
    std::fs::write(&manifest, SDK_MANIFEST).map_err(|e| io(&manifest, e))?;
    match std::fs::rename(&staging, dir) {
        Ok(()) => Ok(dir.to_path_buf()),
        // Another `new` wrote the same SDK meanwhile: use it.
        Err(_) if dir.join("Cargo.toml").is_file() => {
            let _ = std::fs::remove_dir_all(&staging);
            Ok(dir.to_path_buf())
        }
        Err(e) => Err(io(dir, e)),
    }
}

/// Creates the crate `dir/name`: `Cargo.toml` (a release profile tuned for size),
/// `src/lib.rs` (a unit of `kind` with a parameter and native tests using the SDK's test
/// builders), `cases.toml` and `cluster.toml` (table cases for `wasmsched test`),
/// `Cargo.lock` (the SDK's dependencies at the versions this repository tests) and
/// `.gitignore`. Refuses an existing directory and an invalid name.
pub fn create(new: &NewUnit) -> Result<Scaffold> {
    validate_name(&new.name)?;
    let dir = new.dir.join(&new.name);
    let shown = dir.display().to_string();
    if dir.exists() {
        return Err(Error::conflict(format!(
            "{shown} already exists; choose another name or directory (nothing was written)"
        )));
    }
    let (sdk, sdk_origin) = match &new.sdk {
        SdkSource::Path(path) => {
            if !path.join("Cargo.toml").is_file() {
                return Err(Error::input(
                    path.display().to_string(),
                    None,
                    "--sdk: not a policy-sdk directory (no Cargo.toml)",
                ));
            }
            (absolute(path)?, "path")
        }
        SdkSource::Auto if repository_sdk().is_some() => {
            (repository_sdk().unwrap_or_default(), "repository")
        }
        SdkSource::Auto | SdkSource::Embedded => {
            let home = embedded_sdk_home().unwrap_or_else(|| dir.join("vendor").join("policy-sdk"));
            (absolute(&home)?, "embedded")
        }
    };
    std::fs::create_dir_all(&new.dir)
        .map_err(|e| Error::io(new.dir.display().to_string(), format!("cannot create: {e}")))?;
    std::fs::create_dir(&dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => Error::conflict(format!(
            "{shown} already exists; choose another name or directory (nothing was written)"
        )),
        _ => Error::io(&shown, format!("cannot create: {e}")),
    })?;
    if sdk_origin == "embedded" {
        write_embedded_sdk(&sdk)?;
    }
    let (unit_template, cases_template) = match new.kind {
        UnitKind::Filter => (
            include_str!("templates/filter.rs.in"),
            include_str!("templates/filter-cases.toml.in"),
        ),
        UnitKind::Weight => (
            include_str!("templates/weight.rs.in"),
            include_str!("templates/weight-cases.toml.in"),
        ),
        UnitKind::Balance => (
            include_str!("templates/balance.rs.in"),
            include_str!("templates/balance-cases.toml.in"),
        ),
    };
    let sdk_note = match sdk_origin {
        "repository" => "The SDK of the wasmsched repository this `wasmsched` was built from.",
        "embedded" => "A copy of the SDK written by `wasmsched new` from the one it embeds.",
        _ => "The SDK given to `wasmsched new --sdk`.",
    };
    let fill = |template: &str| {
        template
            .replace("{{crate}}", &new.name)
            .replace("{{unit}}", &new.name)
            .replace("{{Type}}", &type_name(&new.name))
            .replace("{{sdk_path}}", &toml_path(&sdk))
            .replace("{{sdk_note}}", sdk_note)
    };
    let files: [(&str, String); 6] = [
        ("Cargo.toml", fill(CARGO_TOML)),
        ("src/lib.rs", fill(unit_template)),
        ("cases.toml", fill(cases_template)),
        ("cluster.toml", CLUSTER.to_string()),
        ("Cargo.lock", WORKSPACE_LOCK.to_string()),
        (".gitignore", "/target\n".to_string()),
    ];
    for (rel, text) in &files {
        let path = dir.join(rel);
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder)
                .map_err(|e| Error::io(folder.display().to_string(), e.to_string()))?;
        }
        std::fs::write(&path, text)
            .map_err(|e| Error::io(path.display().to_string(), format!("cannot write: {e}")))?;
    }
    Ok(Scaffold {
        dir,
        files: files.iter().map(|(rel, _)| rel.to_string()).collect(),
        sdk,
        sdk_origin,
    })
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| Error::io(path.display().to_string(), e.to_string()))
}

/// A path as a TOML basic-string body (backslashes and quotes escaped).
fn toml_path(path: &Path) -> String {
    path.display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_valid_crate_and_unit_names_are_accepted() {
        for name in ["old-hosts", "a", "gpu_filter2", "x-1"] {
            assert!(validate_name(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn invalid_names_are_refused_saying_which_rule_they_break() {
        let long = "a".repeat(65);
        let cases = [
            ("", "1 to 64"),
            (long.as_str(), "1 to 64"),
            ("Old", "'O' is not allowed"),
            ("old hosts", "' ' is not allowed"),
            ("old.hosts", "'.' is not allowed"),
            ("1filter", "start with a lower-case letter"),
            ("-x", "start with a lower-case letter"),
            ("old-", "end with a letter or a digit"),
            ("test", "reserved"),
            ("policy-sdk", "reserved"),
        ];
        for (name, why) in cases {
            let error = validate_name(name).expect_err(name).to_string();
            assert!(error.contains(why), "{name:?}: {error}");
        }
    }

    #[test]
    fn type_names_are_camel_case_of_the_unit_name() {
        assert_eq!(type_name("old-hosts"), "OldHosts");
        assert_eq!(type_name("gpu_filter2"), "GpuFilter2");
        assert_eq!(type_name("a"), "A");
    }

    #[test]
    fn an_existing_directory_is_not_overwritten() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("taken")).unwrap();
        std::fs::write(tmp.path().join("taken/keep.txt"), "mine").unwrap();
        let new = NewUnit {
            name: "taken".into(),
            kind: UnitKind::Filter,
            dir: tmp.path().to_path_buf(),
            sdk: SdkSource::Path(tmp.path().to_path_buf()),
        };
        let error = create(&new).unwrap_err().to_string();
        assert!(error.contains("already exists"), "{error}");
        let kept: Vec<_> = std::fs::read_dir(tmp.path().join("taken"))
            .unwrap()
            .collect();
        assert_eq!(
            kept.len(),
            1,
            "nothing was written into the existing directory"
        );
    }

    #[test]
    fn the_embedded_sdk_is_a_stand_alone_crate_with_every_source_file() {
        let tmp = tempfile::tempdir().unwrap();
        let sdk = write_embedded_sdk(&tmp.path().join("sdk")).unwrap();
        let manifest = std::fs::read_to_string(sdk.join("Cargo.toml")).unwrap();
        assert!(!manifest.contains("workspace"), "{manifest}");
        for key in [
            "name = \"policy-sdk\"",
            "[dependencies",
            "serde",
            "bincode",
            "testing",
        ] {
            assert!(manifest.contains(key), "{key} missing from\n{manifest}");
        }
        let repo_sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy-sdk/src");
        let mut stack = vec![repo_sdk.clone()];
        let mut sources = 0;
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let rel = path.strip_prefix(repo_sdk.parent().unwrap()).unwrap();
                    let copy = std::fs::read_to_string(sdk.join(rel)).unwrap();
                    assert_eq!(copy, std::fs::read_to_string(&path).unwrap(), "{rel:?}");
                    sources += 1;
                }
            }
        }
        assert!(sources > 5, "only {sources} SDK sources found");
    }
}
