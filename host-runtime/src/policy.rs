//! Cluster policies: which filters run in which order, which weights with which factors,
//! which balance unit, which selector, and each unit's parameters and limits. Loaded from
//! TOML or JSON and validated against the units' manifests.

use crate::error::{Error, Result};
use crate::files::{self, Format};
use crate::module::CallLimits;
use crate::runtime::{Runtime, UnitHandle};
use policy_sdk::{ParamValue, UnitKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// The default policy shipped with the builtins.
pub const DEFAULT_POLICY_TOML: &str = include_str!("default_policy.toml");

/// The builtin named cluster policies, `(name, TOML)`, selectable by name with
/// [`Policy::builtin`]: `default`, and the reference's `none`, `evenly_distributed` and
/// `power_saving`.
pub const BUILTIN_POLICIES: &[(&str, &str)] = &[
    ("default", DEFAULT_POLICY_TOML),
    ("none", include_str!("policies/none.toml")),
    (
        "evenly_distributed",
        include_str!("policies/evenly_distributed.toml"),
    ),
    ("power_saving", include_str!("policies/power_saving.toml")),
];

/// How weights are turned into a choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelectorKind {
    /// The reference's default: per unit rank hosts (best penalty gets rank n-1, ties share),
    /// multiply by the factor, sum; highest total wins.
    #[default]
    Rank,
    /// Per unit scale penalties to [0, 1] (best 0, worst 1), multiply by the factor, sum;
    /// lowest total wins.
    NormalizedSum,
    /// The reference's second selector: sum of factor x raw penalty; lowest wins.
    RawSum,
}

/// What a unit failure means for the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// The request fails, naming the unit (filters' default; balance: no actions).
    Closed,
    /// The unit is skipped: a filter passes every host, a weight drops out of the sum.
    Open,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    selector: SelectorKind,
    #[serde(default)]
    filters: Vec<UnitEntry>,
    #[serde(default)]
    weights: Vec<UnitEntry>,
    #[serde(default)]
    balance: Option<UnitEntry>,
    #[serde(default)]
    max_balance_actions: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UnitEntry {
    unit: String,
    #[serde(default)]
    factor: Option<i64>,
    #[serde(default)]
    failure: Option<FailureMode>,
    #[serde(default)]
    deadline_ms: Option<u64>,
    #[serde(default)]
    memory_limit_mb: Option<u64>,
    #[serde(default)]
    params: BTreeMap<String, RawParam>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawParam {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl From<&RawParam> for ParamValue {
    fn from(raw: &RawParam) -> Self {
        match raw {
            RawParam::Bool(b) => ParamValue::Bool(*b),
            RawParam::Int(i) => ParamValue::Int(*i),
            RawParam::Float(f) => ParamValue::Float(*f),
            RawParam::Str(s) => ParamValue::Str(s.clone()),
        }
    }
}

/// One unit of a policy, resolved against the registry.
#[derive(Debug, Clone)]
pub struct PolicyUnit {
    pub(crate) handle: UnitHandle,
    /// The unit name, shared by every per-host outcome and score that names it.
    pub(crate) label: Arc<str>,
    /// Every declared parameter, validated, defaults filled in.
    pub(crate) params: Vec<(String, ParamValue)>,
    /// Weight factor (1 for filters and balance).
    pub factor: i64,
    /// What a failure of this unit means.
    pub failure: FailureMode,
    /// Run-time limits.
    pub limits: CallLimits,
}

impl PolicyUnit {
    /// Unit name.
    pub fn name(&self) -> &str {
        &self.handle.descriptor().name
    }

    /// File of the module that holds the unit.
    pub fn module_file(&self) -> &str {
        self.handle.module.file()
    }

    /// Resolved parameters.
    pub fn params(&self) -> &[(String, ParamValue)] {
        &self.params
    }
}

/// A validated cluster policy. Holds the modules it resolved, so decisions made with it
/// keep working on those module versions even if the registry changes.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Policy name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Selector.
    pub selector: SelectorKind,
    /// Filters in order.
    pub filters: Vec<PolicyUnit>,
    /// Weights.
    pub weights: Vec<PolicyUnit>,
    /// The balance unit.
    pub balance: Option<PolicyUnit>,
    /// At most this many balance actions per cycle.
    pub max_balance_actions: u32,
}

impl Policy {
    /// The builtin default policy (memory and CPU filters; CPU-load x2 and free-memory x1
    /// weights; rank selector).
    pub fn builtin_default(runtime: &Runtime) -> Result<Self> {
        Self::parse(
            runtime,
            DEFAULT_POLICY_TOML,
            Format::Toml,
            "builtin:default_policy.toml",
        )
    }

    /// A builtin named policy (see [`BUILTIN_POLICIES`]); an unknown name is an error that
    /// lists the known ones.
    pub fn builtin(runtime: &Runtime, name: &str) -> Result<Self> {
        let Some((_, text)) = BUILTIN_POLICIES.iter().find(|(n, _)| *n == name) else {
            let known: Vec<&str> = BUILTIN_POLICIES.iter().map(|(n, _)| *n).collect();
            return Err(Error::Request(format!(
                "no builtin policy named {name:?} (known: {})",
                known.join(", ")
            )));
        };
        Self::parse(
            runtime,
            text,
            Format::Toml,
            &format!("builtin:policies/{name}.toml"),
        )
    }

    /// Reads a policy file (TOML by extension, JSON otherwise).
    pub fn from_file(runtime: &Runtime, path: &Path) -> Result<Self> {
        let label = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::input(&label, None, format!("cannot read: {e}")))?;
        Self::parse(runtime, &text, Format::of(path), &label)
    }

    /// Parses and validates a policy; `label` names it in errors.
    pub fn parse(runtime: &Runtime, text: &str, format: Format, label: &str) -> Result<Self> {
        let file: PolicyFile = files::parse_document(text, format, label)?;
        let defaults = runtime.default_limits();
        let resolve = |entry: &UnitEntry, field: String, kind: UnitKind| -> Result<PolicyUnit> {
            let err = |sub: &str, message: String| {
                Error::input(label, Some(format!("{field}{sub}")), message)
            };
            let handle = runtime.unit(&entry.unit).ok_or_else(|| {
                let known: Vec<String> = runtime
                    .units()
                    .into_iter()
                    .filter(|u| u.kind == kind)
                    .map(|u| u.name)
                    .collect();
                err(
                    ".unit",
                    format!(
                        "no {kind} unit named {:?} is loaded (known {kind}s: {})",
                        entry.unit,
                        if known.is_empty() {
                            "none".into()
                        } else {
                            known.join(", ")
                        }
                    ),
                )
            })?;
            let descriptor = handle.descriptor().clone();
            if descriptor.kind != kind {
                return Err(err(
                    ".unit",
                    format!(
                        "unit {:?} is a {}, not a {kind}",
                        entry.unit, descriptor.kind
                    ),
                ));
            }
            let factor = match (kind, entry.factor) {
                (UnitKind::Weight, Some(f)) if !(0..=1_000_000).contains(&f) => {
                    return Err(err(".factor", format!("must be in 0..=1000000, got {f}")))
                }
                (UnitKind::Weight, Some(f)) => f,
                (UnitKind::Weight, None) => 1,
                (_, Some(_)) => return Err(err(".factor", "only weights take a factor".into())),
                (_, None) => 1,
            };
            for name in entry.params.keys() {
                if !descriptor.params.iter().any(|p| &p.name == name) {
                    let known: Vec<&str> =
                        descriptor.params.iter().map(|p| p.name.as_str()).collect();
                    return Err(err(
                        &format!(".params.{name}"),
                        format!(
                            "unit {:?} has no parameter {name:?} (it has: {})",
                            entry.unit,
                            if known.is_empty() {
                                "none".into()
                            } else {
                                known.join(", ")
                            }
                        ),
                    ));
                }
            }
            let mut params = Vec::with_capacity(descriptor.params.len());
            for spec in &descriptor.params {
                let value = match entry.params.get(&spec.name) {
                    Some(raw) => spec
                        .ty
                        .check(&ParamValue::from(raw))
                        .map_err(|e| err(&format!(".params.{}", spec.name), e))?,
                    None => spec.default.clone(),
                };
                params.push((spec.name.clone(), value));
            }
            let deadline_ms = entry.deadline_ms.unwrap_or(defaults.deadline_ms);
            if !(1..=600_000).contains(&deadline_ms) {
                return Err(err(
                    ".deadline_ms",
                    format!("must be in 1..=600000, got {deadline_ms}"),
                ));
            }
            let memory_limit_mb = entry.memory_limit_mb.unwrap_or(defaults.memory_limit_mb);
            if !(1..=4096).contains(&memory_limit_mb) {
                return Err(err(
                    ".memory_limit_mb",
                    format!("must be in 1..=4096, got {memory_limit_mb}"),
                ));
            }
            let failure = entry.failure.unwrap_or(match kind {
                UnitKind::Weight => FailureMode::Open,
                _ => FailureMode::Closed,
            });
            Ok(PolicyUnit {
                label: Arc::from(handle.descriptor().name.as_str()),
                handle,
                params,
                factor,
                failure,
                limits: CallLimits {
                    deadline_ms,
                    memory_limit_mb,
                },
            })
        };
        let filters = file
            .filters
            .iter()
            .enumerate()
            .map(|(i, e)| resolve(e, format!("filters[{i}]"), UnitKind::Filter))
            .collect::<Result<Vec<_>>>()?;
        let weights = file
            .weights
            .iter()
            .enumerate()
            .map(|(i, e)| resolve(e, format!("weights[{i}]"), UnitKind::Weight))
            .collect::<Result<Vec<_>>>()?;
        let balance = file
            .balance
            .as_ref()
            .map(|e| resolve(e, "balance".into(), UnitKind::Balance))
            .transpose()?;
        for (list, units) in [("filters", &filters), ("weights", &weights)] {
            for (i, unit) in units.iter().enumerate() {
                if units[..i].iter().any(|u| u.name() == unit.name()) {
                    return Err(Error::input(
                        label,
                        Some(format!("{list}[{i}].unit")),
                        format!("unit {:?} is listed twice", unit.name()),
                    ));
                }
            }
        }
        if file.name.trim().is_empty() {
            return Err(Error::input(
                label,
                Some("name".into()),
                "must not be empty",
            ));
        }
        Ok(Policy {
            name: file.name,
            description: file.description,
            selector: file.selector,
            filters,
            weights,
            balance,
            max_balance_actions: file.max_balance_actions.unwrap_or(1),
        })
    }
}
