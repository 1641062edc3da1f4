//! `wasmsched check`: whether the engine would load a module, and what it holds.
//!
//! The module goes through [`Runtime::load_module`], exactly what a reload does: header,
//! compilation, imports, exports, ABI version, manifest, a smoke sync and the load-time
//! trial (every unit over generated hosts and VM shapes, [`Runtime::load_trial`]). The
//! report carries the ABI version, the units with their parameters (types and defaults in
//! the same words in text and JSON), the imports and the size.

use std::fmt;
use std::path::Path;
use wasmsched::sdk::wire::abi::{MAX_SUPPORTED_ABI_VERSION, MIN_SUPPORTED_ABI_VERSION};
use wasmsched::sdk::{ParamSpec, ParamType, ParamValue};
use wasmsched::{LoadTrial, Runtime};

/// What `wasmsched check` found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckReport {
    /// The module file.
    pub file: String,
    /// Whether the engine loads the module.
    pub ok: bool,
    /// Why it does not, when it does not.
    pub error: Option<String>,
    /// Size of the file in bytes (0 when it cannot be read).
    pub bytes: u64,
    /// SHA-256 of the file (hex), when it could be read.
    pub sha256: Option<String>,
    /// Module name from the manifest.
    pub module: Option<String>,
    /// Module version from the manifest.
    pub version: Option<String>,
    /// The ABI version the module was built against.
    pub abi_version: Option<u32>,
    /// The ABI versions this engine accepts, `MIN..=MAX`.
    pub abi_supported: String,
    /// The module's imports.
    pub imports: Vec<Import>,
    /// The units, in the module's order.
    pub units: Vec<UnitReport>,
    /// The load-time trial the units passed (absent when the module was refused).
    pub trial: Option<LoadTrial>,
}

/// One import of the module.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Import {
    /// Import module (`wasmsched` for the host's own).
    pub module: String,
    /// Imported name.
    pub name: String,
}

/// One unit of a checked module.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UnitReport {
    /// Unit name (as policies name it).
    pub name: String,
    /// `filter`, `weight` or `balance`.
    pub kind: String,
    /// One-line description.
    pub description: String,
    /// Parameters.
    pub params: Vec<ParamReport>,
}

/// A unit parameter, described in the words policy files use.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ParamReport {
    /// Name, as set under `params` in a policy.
    pub name: String,
    /// `int`, `float`, `bool`, `string` or `choice`: the same word in text and JSON.
    #[serde(rename = "type")]
    pub ty: &'static str,
    /// Smallest value (int, float).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<serde_json::Value>,
    /// Largest value (int, float).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<serde_json::Value>,
    /// The allowed values (choice).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    /// Value used when a policy does not set it, as a policy file writes it.
    pub default: serde_json::Value,
    /// What it controls.
    pub description: String,
}

impl ParamReport {
    /// The report of a declared parameter.
    pub fn of(spec: &ParamSpec) -> Self {
        let ty = spec.ty.word();
        let (min, max, options) = match &spec.ty {
            ParamType::Int { min, max } => (Some((*min).into()), Some((*max).into()), vec![]),
            ParamType::Float { min, max } => (Some((*min).into()), Some((*max).into()), vec![]),
            ParamType::Bool | ParamType::Str => (None, None, vec![]),
            ParamType::Choice(options) => (None, None, options.clone()),
        };
        let default = match &spec.default {
            ParamValue::Bool(b) => (*b).into(),
            ParamValue::Int(i) => (*i).into(),
            ParamValue::Float(f) => (*f).into(),
            ParamValue::Str(s) => s.clone().into(),
        };
        Self {
            name: spec.name.clone(),
            ty,
            min,
            max,
            options,
            default,
            description: spec.description.clone(),
        }
    }
}

impl fmt::Display for ParamReport {
    /// `prefix: string = "old-"`, `max_vms: int in 0..=100000 = 10`,
    /// `mode: choice of a, b = "a"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.ty)?;
        if let (Some(min), Some(max)) = (&self.min, &self.max) {
            write!(f, " in {min}..={max}")?;
        }
        if !self.options.is_empty() {
            write!(f, " of {}", self.options.join(", "))?;
        }
        write!(f, " = {}", self.default)
    }
}

/// Checks the module file at `path` with `runtime` (whose limits the trial runs under);
/// the module is not registered. Never fails: a module the engine refuses is a report
/// with `ok: false` and the reason.
pub fn check_module(runtime: &Runtime, path: &Path) -> CheckReport {
    let mut report = CheckReport {
        file: path.display().to_string(),
        ok: false,
        error: None,
        bytes: 0,
        sha256: None,
        module: None,
        version: None,
        abi_version: None,
        abi_supported: format!("{MIN_SUPPORTED_ABI_VERSION}..={MAX_SUPPORTED_ABI_VERSION}"),
        imports: Vec::new(),
        units: Vec::new(),
        trial: None,
    };
    let bytes = match Runtime::read_module_file(path) {
        Ok(bytes) => bytes,
        Err(e) => {
            report.error = Some(e.to_string());
            return report;
        }
    };
    report.bytes = bytes.len() as u64;
    report.sha256 = Some(wasmsched::LoadedModule::hash_of(&bytes));
    let loaded = match runtime.load_module(&report.file, &bytes) {
        Ok(loaded) => loaded,
        Err(e) => {
            report.error = Some(e.to_string());
            return report;
        }
    };
    let manifest = loaded.manifest();
    report.ok = true;
    report.module = Some(manifest.module.clone());
    report.version = Some(manifest.version.clone());
    report.abi_version = Some(manifest.abi_version);
    report.imports = loaded
        .imports()
        .into_iter()
        .map(|(module, name)| Import { module, name })
        .collect();
    report.units = manifest
        .units
        .iter()
        .map(|u| UnitReport {
            name: u.name.clone(),
            kind: u.kind.to_string(),
            description: u.description.clone(),
            params: u.params.iter().map(ParamReport::of).collect(),
        })
        .collect();
    report.trial = Some(Runtime::load_trial());
    report
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.error {
            Some(error) => writeln!(f, "{}: REFUSED: {error}", self.file)?,
            None => writeln!(f, "{}: ok, the engine loads it", self.file)?,
        }
        if let (Some(module), Some(version), Some(abi)) =
            (&self.module, &self.version, self.abi_version)
        {
            writeln!(
                f,
                "  module {module} {version}, ABI {abi} (this engine accepts {})",
                self.abi_supported
            )?;
        }
        if let Some(sha) = &self.sha256 {
            writeln!(f, "  size {} bytes, sha256 {sha}", self.bytes)?;
        }
        if self.ok {
            let imports: Vec<String> = self
                .imports
                .iter()
                .map(|i| format!("{}.{}", i.module, i.name))
                .collect();
            writeln!(
                f,
                "  imports {}",
                if imports.is_empty() {
                    "none".into()
                } else {
                    imports.join(", ")
                }
            )?;
        }
        if let Some(trial) = &self.trial {
            writeln!(
                f,
                "  trial passed: every unit ran over {} generated hosts with {} VM shapes ({})",
                trial.hosts,
                trial.vm_shapes.len(),
                trial.vm_shapes.join(", ")
            )?;
        }
        for unit in &self.units {
            writeln!(f, "  {} {}: {}", unit.kind, unit.name, unit.description)?;
            for p in &unit.params {
                writeln!(f, "    - {p}: {}", p.description)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_types_use_the_same_word_in_text_and_json() {
        let specs = [
            (
                ParamSpec::string("prefix", "old-", "d"),
                "string",
                "prefix: string = \"old-\"",
            ),
            (
                ParamSpec::int("n", 10, 0, 99, "d"),
                "int",
                "n: int in 0..=99 = 10",
            ),
            (
                ParamSpec::float("x", 0.5, 0.0, 1.0, "d"),
                "float",
                "x: float in 0.0..=1.0 = 0.5",
            ),
            (ParamSpec::bool("on", true, "d"), "bool", "on: bool = true"),
            (
                ParamSpec::choice("mode", "a", &["a", "b"], "d"),
                "choice",
                "mode: choice of a, b = \"a\"",
            ),
        ];
        for (spec, word, text) in specs {
            let report = ParamReport::of(&spec);
            let json = serde_json::to_value(&report).unwrap();
            assert_eq!(json["type"], word, "{json}");
            assert_eq!(report.to_string(), text);
            assert!(report.to_string().contains(word));
        }
    }

    #[test]
    fn a_file_that_is_not_wasm_is_refused_with_the_reason() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("notes.wasm");
        std::fs::write(&path, "hello").unwrap();
        let runtime = Runtime::builder()
            .builtins(false)
            .cache_dir(None)
            .build()
            .unwrap();
        let report = check_module(&runtime, &path);
        assert!(!report.ok);
        let error = report.error.unwrap();
        assert!(error.contains("not a WebAssembly module"), "{error}");
        assert_eq!(report.bytes, 5);
    }
}
