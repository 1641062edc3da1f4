//! Cluster policies: which filters run in which order, which weights with which factors,
//! which balance unit, which selector, and each unit's parameters and limits. Loaded from
//! TOML or JSON and validated against the units' manifests.

use super::balance::{self, BalancePlan};
use super::decision::Decision;
use super::memory::{self, MemoryPlan};
use super::migration::{self, Migration, MigrationTrigger};
use super::power::{self, StartOutcome};
use super::request::ScheduleRequest;
use super::reschedule::{self, VmFailed};
use super::scheduler;
use super::shadow::{ShadowStats, ShadowStatus};
use crate::engine::{CallLimits, Registry, Runtime, UnitHandle};
use crate::error::{Error, Result};
use crate::files::{self, Format};
use crate::state::{Cluster, ClusterView};
use arc_swap::{ArcSwap, ArcSwapOption};
use policy_sdk::HostStatus;
use policy_sdk::{ParamValue, UnitDescriptor, UnitKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The default policy shipped with the builtins.
pub(crate) const DEFAULT_POLICY_TOML: &str = include_str!("default_policy.toml");

/// The builtin named cluster policies, `(name, TOML)`, selectable by name with
/// [`Policy::builtin`]: `default`, and the reference's `none`, `evenly_distributed` and
/// `power_saving`.
pub(crate) const BUILTIN_POLICIES: &[(&str, &str)] = &[
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

impl SelectorKind {
    /// The name used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            SelectorKind::Rank => "rank",
            SelectorKind::NormalizedSum => "normalized_sum",
            SelectorKind::RawSum => "raw_sum",
        }
    }

    /// How the selector turns the weights' raw penalties into a choice, in one sentence.
    pub fn rule(self) -> &'static str {
        match self {
            SelectorKind::Rank => "per weight, rank = the number of candidates with a strictly higher (worse) penalty (the best of n distinct penalties gets n-1, equal penalties share a rank); contribution = rank x factor; total = sum of contributions; the highest total wins",
            SelectorKind::NormalizedSum => "per weight, points = (penalty - lowest) / (highest - lowest) over the candidates (best 0, worst 1; 0 when all are equal); contribution = points x factor; total = sum of contributions; the lowest total wins",
            SelectorKind::RawSum => "contribution = raw penalty x factor; total = sum of contributions; the lowest total wins",
        }
    }
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
    max_output_kb: Option<u64>,
    /// Run beside the live policy without changing its decisions (see `shadow.rs`).
    #[serde(default)]
    shadow: bool,
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
    /// The parameters the policy sets, to validate again against a new module version.
    pub(crate) explicit: Arc<BTreeMap<String, ParamValue>>,
    /// The kind the policy uses the unit as.
    pub(crate) kind: UnitKind,
    /// Weight factor (1 for filters and balance).
    pub(crate) factor: i64,
    /// What a failure of this unit means.
    pub(crate) failure: FailureMode,
    /// Run-time limits.
    pub(crate) limits: CallLimits,
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

    /// Weight factor (1 for filters and balance).
    pub fn factor(&self) -> i64 {
        self.factor
    }

    /// What a failure of this unit means for a decision.
    pub fn failure_mode(&self) -> FailureMode {
        self.failure
    }

    /// Run-time limits of each call.
    pub fn limits(&self) -> CallLimits {
        self.limits
    }

    /// Resolved parameters.
    pub fn params(&self) -> &[(String, ParamValue)] {
        &self.params
    }

    /// SHA-256 of the module version the unit resolves to.
    pub fn module_hash(&self) -> &str {
        self.handle.module.hash()
    }

    /// The unit resolved against the published module set: the newest version when it
    /// still fits the policy, else this one (the last good) with the reason.
    fn resolved_against(&self, registry: &Registry) -> (PolicyUnit, Option<StaleUnit>) {
        let stale = |reason: String| {
            (
                self.clone(),
                Some(StaleUnit {
                    unit: self.name().to_string(),
                    module_file: self.module_file().to_string(),
                    hash: self.module_hash().to_string(),
                    reason,
                }),
            )
        };
        let Some(handle) = registry.units.get(self.name()) else {
            return stale(format!(
                "no loaded module provides the unit any more; keeping the last good version from {} (sha256 {}) until the policy is reloaded",
                self.module_file(),
                short(self.module_hash())
            ));
        };
        if Arc::ptr_eq(&handle.module, &self.handle.module) && handle.index == self.handle.index {
            return (self.clone(), None);
        }
        let descriptor = handle.descriptor();
        if descriptor.kind != self.kind {
            return stale(format!(
                "the new version in {} makes it a {}, the policy uses it as a {}; keeping the last good version (sha256 {})",
                handle.module.file(),
                descriptor.kind,
                self.kind,
                short(self.module_hash())
            ));
        }
        match resolve_params(descriptor, &self.explicit) {
            Ok(params) => (
                PolicyUnit {
                    handle: handle.clone(),
                    params,
                    ..self.clone()
                },
                None,
            ),
            Err((name, message)) => stale(format!(
                "the new version in {} does not accept parameter {name}: {message}; keeping the last good version (sha256 {})",
                handle.module.file(),
                short(self.module_hash())
            )),
        }
    }
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

/// A unit a policy still runs in an older version because the published set no longer
/// holds a version the policy can use (the module was deleted, or its new version changed
/// the unit's kind or parameters). Reported by [`Policy::stale_units`] and in every
/// [`Decision`](crate::Decision)'s warnings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StaleUnit {
    /// Unit name.
    pub unit: String,
    /// File of the module version still in use.
    pub module_file: String,
    /// Its hash.
    pub hash: String,
    /// Why the newest version is not used.
    pub reason: String,
}

impl std::fmt::Display for StaleUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unit {:?}: {}", self.unit, self.reason)
    }
}

/// Every declared parameter of a unit: the policy's value, checked, or the default.
/// `Err((parameter, message))`.
fn resolve_params(
    descriptor: &UnitDescriptor,
    explicit: &BTreeMap<String, ParamValue>,
) -> Result<Vec<(String, ParamValue)>, (String, String)> {
    for name in explicit.keys() {
        if !descriptor.params.iter().any(|p| &p.name == name) {
            let known: Vec<&str> = descriptor.params.iter().map(|p| p.name.as_str()).collect();
            return Err((
                name.clone(),
                format!(
                    "unit {:?} has no parameter {name:?} (it has: {})",
                    descriptor.name,
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
        let value = match explicit.get(&spec.name) {
            Some(value) => spec
                .ty
                .check(value)
                .map_err(|e| (spec.name.clone(), e.to_string()))?,
            None => spec.default.clone(),
        };
        params.push((spec.name.clone(), value));
    }
    Ok(params)
}

/// A policy's link to the runtime's published module set.
struct LiveLink {
    registry: Arc<ArcSwap<Registry>>,
    /// The newest resolution (None: the policy as parsed is current).
    current: ArcSwapOption<Policy>,
    resolving: Mutex<()>,
}

impl LiveLink {
    fn new(registry: Arc<ArcSwap<Registry>>) -> Self {
        LiveLink {
            registry,
            current: ArcSwapOption::empty(),
            resolving: Mutex::new(()),
        }
    }

    /// A link to the same module set with no resolution of its own yet.
    fn fresh(&self) -> Self {
        LiveLink::new(self.registry.clone())
    }
}

impl std::fmt::Debug for LiveLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveLink").finish_non_exhaustive()
    }
}

/// The policy a decision runs with: the parsed one, or a newer resolution.
pub(crate) enum LivePolicy<'a> {
    Parsed(&'a Policy),
    Resolved(Arc<Policy>),
}

impl std::ops::Deref for LivePolicy<'_> {
    type Target = Policy;
    fn deref(&self) -> &Policy {
        match self {
            LivePolicy::Parsed(p) => p,
            LivePolicy::Resolved(p) => p,
        }
    }
}

/// A validated cluster policy. The units are the resolution made when the policy was
/// parsed. Each decision resolves the units again against the runtime's published module
/// set when that set changed (hot reload): a unit whose module was replaced runs in the
/// new version, while a decision already running finishes on the version it started
/// with. A unit that disappeared (or whose new version no longer fits the policy) keeps
/// its last good version until the policy is parsed again, and says so
/// ([`Policy::stale_units`], [`Decision::warnings`](crate::Decision::warnings)).
///
/// A policy is immutable once parsed; [`Policy::with_selector`] and
/// [`Policy::with_factor`] make changed copies. Each copy (and each clone) follows the
/// module set on its own, so a reload never makes one policy run another's settings.
#[derive(Debug)]
pub struct Policy {
    pub(super) name: String,
    pub(super) description: String,
    pub(super) selector: SelectorKind,
    pub(super) filters: Vec<PolicyUnit>,
    pub(super) weights: Vec<PolicyUnit>,
    pub(super) balance: Option<PolicyUnit>,
    pub(super) max_balance_actions: u32,
    /// Filters that run in shadow mode (see [`Policy::shadow_status`]).
    pub(super) shadow_filters: Vec<PolicyUnit>,
    /// Weights that run in shadow mode.
    pub(super) shadow_weights: Vec<PolicyUnit>,
    /// What the shadow units would have changed, shared by every resolution and clone.
    shadow_stats: Arc<ShadowStats>,
    /// Generation of the module set the units were resolved against.
    generation: u64,
    /// Units kept in an older version (see [`StaleUnit`]).
    pub(super) stale: Vec<StaleUnit>,
    /// Follows the runtime's module set (absent in resolutions).
    live: Option<LiveLink>,
}

impl Clone for Policy {
    /// A copy with a live link of its own: the newest resolution is not shared, so the copy
    /// can be changed ([`Policy::with_selector`]...) without the other following it.
    fn clone(&self) -> Self {
        Policy {
            name: self.name.clone(),
            description: self.description.clone(),
            selector: self.selector,
            filters: self.filters.clone(),
            weights: self.weights.clone(),
            balance: self.balance.clone(),
            max_balance_actions: self.max_balance_actions,
            shadow_filters: self.shadow_filters.clone(),
            shadow_weights: self.shadow_weights.clone(),
            shadow_stats: self.shadow_stats.clone(),
            generation: self.generation,
            stale: self.stale.clone(),
            live: self.live.as_ref().map(LiveLink::fresh),
        }
    }
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

    /// A builtin named policy (see [`Policy::builtin_names`]); an unknown name is an error that
    /// lists the known ones.
    pub fn builtin(runtime: &Runtime, name: &str) -> Result<Self> {
        let Some((_, text)) = BUILTIN_POLICIES.iter().find(|(n, _)| *n == name) else {
            let known: Vec<&str> = BUILTIN_POLICIES.iter().map(|(n, _)| *n).collect();
            return Err(Error::not_found_because(
                "builtin policy",
                name,
                format!(
                    "no builtin policy named {name:?} (known: {})",
                    known.join(", ")
                ),
            ));
        };
        Self::parse(
            runtime,
            text,
            Format::Toml,
            &format!("builtin:policies/{name}.toml"),
        )
    }

    /// The names of the builtin policies ([`Policy::builtin`]).
    pub fn builtin_names() -> impl Iterator<Item = &'static str> {
        BUILTIN_POLICIES.iter().map(|(name, _)| *name)
    }

    /// Reads a policy file (TOML by extension, JSON otherwise).
    pub fn from_file(runtime: &Runtime, path: &Path) -> Result<Self> {
        let label = path.display().to_string();
        let text = files::read_text(path, files::MAX_DOCUMENT_BYTES)?;
        Self::parse(runtime, &text, Format::of(path), &label)
    }

    /// Parses and validates a policy; `label` names it in errors.
    pub fn parse(runtime: &Runtime, text: &str, format: Format, label: &str) -> Result<Self> {
        let file: PolicyFile = files::parse_document(text, format, label)?;
        let defaults = runtime.default_limits();
        let registry = runtime.registry();
        let resolve = |entry: &UnitEntry, field: String, kind: UnitKind| -> Result<PolicyUnit> {
            let err = |sub: &str, message: String| {
                Error::input(label, Some(format!("{field}{sub}")), message)
            };
            let handle = registry.units.get(&entry.unit).cloned().ok_or_else(|| {
                let known: Vec<String> = registry
                    .units
                    .iter()
                    .filter(|(_, h)| h.descriptor().kind == kind)
                    .map(|(name, _)| name.clone())
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
            let explicit: BTreeMap<String, ParamValue> = entry
                .params
                .iter()
                .map(|(k, v)| (k.clone(), ParamValue::from(v)))
                .collect();
            let params = resolve_params(&descriptor, &explicit)
                .map_err(|(name, message)| err(&format!(".params.{name}"), message))?;
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
            let max_output_kb = entry.max_output_kb.unwrap_or(defaults.max_output_kb);
            let cap_kb = (policy_sdk::wire::codec::MAX_MESSAGE_BYTES / 1024) as u64;
            if !(1..=cap_kb).contains(&max_output_kb) {
                return Err(err(
                    ".max_output_kb",
                    format!("must be in 1..={cap_kb}, got {max_output_kb}"),
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
                explicit: Arc::new(explicit),
                kind,
                factor,
                failure,
                limits: CallLimits {
                    deadline_ms,
                    memory_limit_mb,
                    max_output_kb,
                },
            })
        };
        // (live, shadow) units of one list, each with its index in the file.
        let resolve_list = |list: &str, entries: &[UnitEntry], kind: UnitKind| {
            let mut live = Vec::new();
            let mut shadow = Vec::new();
            for (i, entry) in entries.iter().enumerate() {
                let unit = resolve(entry, format!("{list}[{i}]"), kind)?;
                let same: &mut Vec<(usize, PolicyUnit)> =
                    if entry.shadow { &mut shadow } else { &mut live };
                if same.iter().any(|(_, u)| u.name() == unit.name()) {
                    return Err(Error::input(
                        label,
                        Some(format!("{list}[{i}].unit")),
                        format!(
                            "unit {:?} is listed twice{}",
                            unit.name(),
                            if entry.shadow { " in shadow mode" } else { "" }
                        ),
                    ));
                }
                same.push((i, unit));
            }
            let units = |v: Vec<(usize, PolicyUnit)>| v.into_iter().map(|(_, u)| u).collect();
            Ok::<(Vec<PolicyUnit>, Vec<PolicyUnit>), Error>((units(live), units(shadow)))
        };
        let (filters, shadow_filters) = resolve_list("filters", &file.filters, UnitKind::Filter)?;
        let (weights, shadow_weights) = resolve_list("weights", &file.weights, UnitKind::Weight)?;
        if file.balance.as_ref().is_some_and(|e| e.shadow) {
            return Err(Error::input(
                label,
                Some("balance.shadow".into()),
                "only filters and weights can run in shadow mode",
            ));
        }
        let balance = file
            .balance
            .as_ref()
            .map(|e| resolve(e, "balance".into(), UnitKind::Balance))
            .transpose()?;
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
            shadow_stats: Arc::new(ShadowStats::new(
                shadow_filters.iter().chain(&shadow_weights),
            )),
            shadow_filters,
            shadow_weights,
            generation: registry.generation,
            stale: Vec::new(),
            live: Some(LiveLink::new(runtime.registry_handle())),
        })
    }

    /// Units this policy runs in an older version than the published one, or that no
    /// loaded module provides any more, with the reason (empty when every unit is
    /// current).
    pub fn stale_units(&self) -> Vec<StaleUnit> {
        self.live().stale.clone()
    }

    /// The policy as decisions run it now: re-resolved when the runtime's published
    /// module set changed since the last resolution.
    pub(crate) fn live(&self) -> LivePolicy<'_> {
        let Some(link) = &self.live else {
            return LivePolicy::Parsed(self);
        };
        let generation = link.registry.load().generation;
        match link.current.load_full() {
            Some(current) if current.generation == generation => {
                return LivePolicy::Resolved(current)
            }
            None if self.generation == generation => return LivePolicy::Parsed(self),
            _ => {}
        }
        let _one_at_a_time = link.resolving.lock().unwrap();
        let registry = link.registry.load_full();
        let base = link.current.load_full();
        if let Some(current) = &base {
            if current.generation == registry.generation {
                return LivePolicy::Resolved(current.clone());
            }
        }
        let base: &Policy = base.as_deref().unwrap_or(self);
        let next = Arc::new(base.resolved_against(&registry));
        for stale in &next.stale {
            if !base.stale.contains(stale) {
                tracing::warn!(policy = next.name, "{stale}");
            }
        }
        link.current.store(Some(next.clone()));
        LivePolicy::Resolved(next)
    }

    /// A copy with every unit resolved against `registry`.
    fn resolved_against(&self, registry: &Registry) -> Policy {
        let mut stale = Vec::new();
        let mut resolve = |unit: &PolicyUnit| {
            let (unit, why) = unit.resolved_against(registry);
            stale.extend(why);
            unit
        };
        let filters = self.filters.iter().map(&mut resolve).collect();
        let weights = self.weights.iter().map(&mut resolve).collect();
        let balance = self.balance.as_ref().map(&mut resolve);
        let shadow_filters = self.shadow_filters.iter().map(&mut resolve).collect();
        let shadow_weights = self.shadow_weights.iter().map(&mut resolve).collect();
        Policy {
            name: self.name.clone(),
            description: self.description.clone(),
            selector: self.selector,
            filters,
            weights,
            balance,
            max_balance_actions: self.max_balance_actions,
            shadow_filters,
            shadow_weights,
            shadow_stats: self.shadow_stats.clone(),
            generation: registry.generation,
            stale,
            live: None,
        }
    }

    /// Policy name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Description.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// How weights become a choice.
    pub fn selector(&self) -> SelectorKind {
        self.selector
    }

    /// Filters, in the order they run.
    pub fn filters(&self) -> &[PolicyUnit] {
        &self.filters
    }

    /// Weights with their factors.
    pub fn weights(&self) -> &[PolicyUnit] {
        &self.weights
    }

    /// The balance unit, if any.
    pub fn balance_unit(&self) -> Option<&PolicyUnit> {
        self.balance.as_ref()
    }

    /// Filters that run in shadow mode: beside the live filters, never changing a
    /// decision.
    pub fn shadow_filters(&self) -> &[PolicyUnit] {
        &self.shadow_filters
    }

    /// Weights that run in shadow mode (with their factors).
    pub fn shadow_weights(&self) -> &[PolicyUnit] {
        &self.shadow_weights
    }

    /// Per shadow unit, the decisions ([`Policy::schedule`] and everything built on it)
    /// made since the policy was parsed, how many it would have changed and how many it
    /// failed in, with the last few changed decisions as examples. Shared by the
    /// policy's clones; empty `units` when the policy has no shadow unit.
    pub fn shadow_status(&self) -> ShadowStatus {
        self.shadow_stats.status(&self.name)
    }

    /// At most this many balance actions per cycle.
    pub fn max_balance_actions(&self) -> u32 {
        self.max_balance_actions
    }

    /// This policy with another selector (a what-if; the copy follows reloads on its own).
    pub fn with_selector(mut self, selector: SelectorKind) -> Self {
        self.selector = selector;
        self.detach();
        self
    }

    /// This policy with the weight `unit`'s factor set to `factor` (0..=1000000).
    pub fn with_factor(mut self, unit: &str, factor: i64) -> Result<Self> {
        if !(0..=1_000_000).contains(&factor) {
            return Err(Error::input(
                format!("policy {:?}", self.name),
                Some(format!("weights[unit={unit}].factor")),
                format!("must be in 0..=1000000, got {factor}"),
            ));
        }
        let Some(weight) = self.weights.iter_mut().find(|w| w.name() == unit) else {
            return Err(Error::not_found_because(
                "weight",
                unit,
                format!("policy {:?} has no weight {unit:?}", self.name),
            ));
        };
        weight.factor = factor;
        self.detach();
        Ok(self)
    }

    /// Drops the newest resolution after a change of settings: the next decision resolves
    /// again from the changed policy.
    fn detach(&mut self) {
        if let Some(link) = &self.live {
            self.live = Some(link.fresh());
        }
        self.shadow_stats = Arc::new(ShadowStats::new(
            self.shadow_filters.iter().chain(&self.shadow_weights),
        ));
    }

    /// Schedules one VM on the cluster and reserves its pending resources on the chosen
    /// host, so the next decision sees them. Safe to call from many threads on one
    /// cluster: no host is ever over-committed (optimistic decisions, re-checked under a
    /// per-cluster lock when the cluster moved; see the scheduler's "Concurrency" notes).
    ///
    /// Returns `Err` only when the request itself is invalid or a fail-closed unit faulted
    /// (the error names the unit). "No host available" is a normal [`Decision`].
    ///
    /// A VM that is already placed (and not started) is placed anew: its current pending
    /// resources are released first, so they do not count against it.
    pub fn schedule(&self, cluster: &Cluster, request: &ScheduleRequest) -> Result<Decision> {
        let live = self.live();
        let decision = scheduler::schedule(&live, cluster, request)?;
        self.shadow_stats.record(&decision);
        Ok(decision)
    }

    /// Places VMs one after another (a mass start), each decision seeing the pending
    /// resources of the previous ones. One result per request, in order; an invalid
    /// request or a unit fault fails only its own entry.
    pub fn schedule_batch(
        &self,
        cluster: &Cluster,
        requests: &[ScheduleRequest],
    ) -> Vec<Result<Decision>> {
        requests
            .iter()
            .map(|request| self.schedule(cluster, request))
            .collect()
    }

    /// Decides where one VM would go on a given view (a fixed epoch), without reserving
    /// anything: a what-if.
    pub fn evaluate(&self, view: &ClusterView, request: &ScheduleRequest) -> Result<Decision> {
        request.validate()?;
        scheduler::decide(&self.live(), view, request)
    }

    /// Schedules a VM, or, when it may only run on powered-down hosts, returns the wake-up
    /// it needs instead of a "no host" decision.
    pub fn schedule_or_wake(
        &self,
        cluster: &Cluster,
        request: &ScheduleRequest,
    ) -> Result<StartOutcome> {
        power::schedule_or_wake(self, cluster, request)
    }

    /// Chooses a destination for the running VM `vm_id` and reserves its pending resources
    /// there (see [`Policy::schedule`]), if its migration mode allows `trigger`. The source
    /// host is excluded; a passthrough VM without recorded CPU flags takes those of its
    /// source host (the destination must have them); a VM with dedicated hosts only goes
    /// to one of them.
    ///
    /// For a high-performance or pinned VM, when no suitable host fits its pinning exactly,
    /// the least loaded, least pinned suitable host is chosen instead of the weights' pick,
    /// and `fallback` says why.
    ///
    /// Errors: unknown VM, VM not running, an invalid VM (see [`Policy::schedule`]), a
    /// fail-closed unit fault.
    pub fn migrate(
        &self,
        cluster: &Cluster,
        vm_id: &str,
        trigger: MigrationTrigger,
    ) -> Result<Migration> {
        migration::migrate(self, cluster, vm_id, trigger)
    }

    /// Host maintenance: a migration ([`MigrationTrigger::HostMaintenance`]) for every VM
    /// running on `host_id`, in snapshot order. Migratable and manual-only VMs get a
    /// destination (high-performance and pinned ones with a warning); pinned-to-host VMs are
    /// reported as not allowed. Each VM's destination sees the pending resources of the
    /// ones before it.
    pub fn evacuate_host(&self, cluster: &Cluster, host_id: &str) -> Result<Vec<Migration>> {
        migration::evacuate_host(self, cluster, host_id)
    }

    /// Runs the balance unit over the cluster's current snapshot and checks its proposals.
    ///
    /// Safety rules applied by the engine, whatever the unit says (a refused action is
    /// reported in [`BalancePlan::refused`] with its reason):
    /// * migrations: only `migratable` VMs that are up; the destination is chosen among
    ///   the unit's candidates by the policy's filters and weights (a migration decision
    ///   on the same snapshot), and refused when none passes;
    /// * power actions: never on a host excluded from automatic power management or not
    ///   under policy control; never move to maintenance or power down the SPM host or a
    ///   host with running or pending VMs; never move to maintenance, power down or power
    ///   up a host whose power management is not OK; the host's status must fit the
    ///   action (maintenance from up, power down or activate from maintenance, power up
    ///   from down or powering down);
    /// * at most one migration, one power action and `max_balance_actions` actions in all
    ///   per cycle.
    ///
    /// Nothing is executed: the plan is returned to the caller.
    pub fn balance(&self, cluster: &Cluster) -> Result<BalancePlan> {
        balance::plan(&self.live(), cluster)
    }

    /// Plans a memory hot set of the running VM `vm_id` to `new_mb` MiB on the host it
    /// runs on, checking the host with this policy's filters. A plug records its memory
    /// as pending on the host; an unplug marks its DIMMs `unplugging`. Either waits for
    /// [`Cluster::confirm_memory_change`] or [`Cluster::fail_memory_change`]; one change
    /// per VM at a time. Runs under the cluster's mutation lock, so it cannot race a
    /// reservation on the same host.
    pub fn hot_set_memory(
        &self,
        cluster: &Cluster,
        vm_id: &str,
        new_mb: u64,
    ) -> Result<MemoryPlan> {
        memory::hot_set(&self.live(), cluster, vm_id, new_mb)
    }

    /// A VM failed to start (or to migrate): its pending resources are released
    /// ([`Cluster::vm_failed`]) and a failed start is scheduled again with every host it
    /// was tried on blacklisted, up to [`PendingRules::max_start_attempts`](crate::PendingRules::max_start_attempts) runs in all. A
    /// failed migration leaves the VM on its source. An unknown VM is a no-op.
    pub fn vm_failed(&self, cluster: &Cluster, vm_id: &str) -> Result<VmFailed> {
        reschedule::vm_failed(self, cluster, vm_id)
    }

    /// A host went down (or non-operational): its status changes and every VM placed there
    /// and not started is failed and scheduled again ([`Policy::vm_failed`]).
    pub fn host_down(
        &self,
        cluster: &Cluster,
        host_id: &str,
        status: HostStatus,
    ) -> Result<Vec<VmFailed>> {
        reschedule::host_down(self, cluster, host_id, status)
    }
}
