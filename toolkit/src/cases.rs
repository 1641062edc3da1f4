//! `wasmsched test`: table cases run through the real runtime.
//!
//! A case file (TOML, or JSON by extension) lists cases; each names a cluster (a cluster
//! file, relative to the case file, or an inline table in the same format), a VM (inline,
//! or a VM file), the unit's parameters and what the unit must decide:
//!
//! ```toml
//! cluster = "cluster.toml"          # default for every case
//!
//! [[cases]]
//! name = "the old-* host is rejected"
//! unit = "old-hosts"                # optional when the module holds one unit
//! vm = { id = "web-1", memory_mb = 1024 }
//! params = { prefix = "old-" }
//! expect = { host-1 = "pass", host-2 = { reject = "retired_host", detail = "old-" } }
//! # weights:  penalties = { host-1 = 0, host-2 = 3 }
//! # balance:  actions = [{ migrate = "db-1", to = "host-3" }, { power = "host-4", action = "power_down" }]
//! ```
//!
//! Each case runs as the engine runs a decision: a [`Policy`] holding just the unit (its
//! parameters validated against the manifest like a policy file's), the request validated
//! like every request, the filter through [`Policy::evaluate`], the weight's raw penalties
//! from the decision, the balance unit through [`Policy::balance`] with the engine's safety
//! rules. So a case passes here only if the engine would decide the same.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use wasmsched::decision::Outcome;
use wasmsched::plan::PlannedAction;
use wasmsched::sdk::{Snapshot, UnitKind, Vm};
use wasmsched::{Cluster, Error, Format, LoadedModule, Policy, Result, Runtime, ScheduleRequest};

/// A parsed case file, every cluster and VM read and validated.
#[derive(Debug)]
pub struct CaseFile {
    /// The file (as errors and reports name it).
    pub file: String,
    /// The cases, in file order.
    pub cases: Vec<Case>,
}

/// One case.
#[derive(Debug)]
pub struct Case {
    /// Its name.
    pub name: String,
    /// The unit it runs (`None`: the module's only unit).
    pub unit: Option<String>,
    /// The cluster.
    pub cluster: Cluster,
    /// The VM to place (filters and weights).
    pub vm: Option<Vm>,
    /// Parameters, as a policy file sets them.
    pub params: serde_json::Map<String, serde_json::Value>,
    /// What the unit must decide.
    pub expected: Expected,
    /// `cases[INDEX] (NAME)`: how errors name the case.
    at: String,
}

/// What a case expects.
#[derive(Debug, Clone, PartialEq)]
pub enum Expected {
    /// A filter's verdict per host id.
    Verdicts(Vec<(String, ExpectedVerdict)>),
    /// A weight's raw penalty per host id (lower is better).
    Penalties(Vec<(String, i64)>),
    /// A balance unit's actions, in order, as the engine keeps them.
    Actions(Vec<ExpectedAction>),
}

/// A filter verdict a case expects for one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpectedVerdict {
    /// The host passes.
    Pass,
    /// The host is rejected; with a code, the code must be it; with a detail, the detail
    /// must contain it.
    Reject {
        /// The reason code.
        code: Option<String>,
        /// A part of the detail.
        detail: Option<String>,
    },
}

/// A balance action a case expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpectedAction {
    /// Migrate `vm`; with `to`, the engine's chosen destination must be it.
    Migrate {
        /// VM id.
        vm: String,
        /// Destination host id.
        to: Option<String>,
        /// A part of the reason.
        reason: Option<String>,
    },
    /// A power action on `host`; with `action` (`to_maintenance`, `power_down`,
    /// `activate`, `power_up`), it must be that one.
    Power {
        /// Host id.
        host: String,
        /// The action's name.
        action: Option<String>,
        /// A part of the reason.
        reason: Option<String>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    unit: Option<String>,
    #[serde(default)]
    cluster: Option<serde_json::Value>,
    cases: Vec<RawCase>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: String,
    #[serde(default)]
    unit: Option<String>,
    #[serde(default)]
    cluster: Option<serde_json::Value>,
    #[serde(default)]
    vm: Option<serde_json::Value>,
    #[serde(default)]
    params: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    expect: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    penalties: Option<BTreeMap<String, i64>>,
    #[serde(default)]
    actions: Option<Vec<serde_json::Value>>,
}

impl CaseFile {
    /// Reads and validates a case file: its syntax, every cluster and VM (the engine's
    /// own validation), and every expectation. Errors name the file, the case (index and
    /// name) and the field.
    pub fn read(path: &Path) -> Result<Self> {
        let raw: RawFile = wasmsched::read_document(path)?;
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        Self::resolve(raw, &path.display().to_string(), &base)
    }

    /// [`CaseFile::read`] for a case file held in memory; `label` names it, `base` is the
    /// directory cluster and VM files are relative to.
    pub fn parse(text: &str, format: Format, label: &str, base: &Path) -> Result<Self> {
        let raw: RawFile = wasmsched::parse_document(text, format, label)?;
        Self::resolve(raw, label, base)
    }

    fn resolve(raw: RawFile, file: &str, base: &Path) -> Result<Self> {
        if raw.cases.is_empty() {
            return Err(Error::input(file, Some("cases".into()), "no cases"));
        }
        let mut cases = Vec::with_capacity(raw.cases.len());
        for (index, case) in raw.cases.into_iter().enumerate() {
            let at = format!("cases[{index}] ({:?})", case.name);
            let err = |field: &str, message: String| {
                Error::input(file, Some(format!("{at}.{field}")), message)
            };
            if cases.iter().any(|c: &Case| c.name == case.name) {
                return Err(err("name", "another case has this name".into()));
            }
            let cluster =
                match (&case.cluster, &raw.cluster) {
                    (Some(own), _) => cluster(own, base, &format!("{file}: {at}.cluster"))?,
                    (None, Some(shared)) => cluster(shared, base, &format!("{file}: cluster"))?,
                    (None, None) => return Err(err(
                        "cluster",
                        "missing: give the case (or the file) a cluster file or an inline cluster"
                            .into(),
                    )),
                };
            let vm = case
                .vm
                .as_ref()
                .map(|value| vm(value, base, file, &format!("{at}.vm")))
                .transpose()?;
            let given = [
                case.expect.is_some(),
                case.penalties.is_some(),
                case.actions.is_some(),
            ];
            if given.iter().filter(|g| **g).count() != 1 {
                return Err(err(
                    "expect",
                    "give exactly one of `expect` (a filter's verdicts), `penalties` (a weight's) or `actions` (a balance unit's)".into(),
                ));
            }
            let snapshot = cluster.snapshot();
            let known_host = |field: &str, id: &str| -> Result<()> {
                match snapshot.host_index(id) {
                    Some(_) => Ok(()),
                    None => Err(err(field, format!("no host {id:?} in the case's cluster"))),
                }
            };
            let expected = if let Some(expect) = case.expect {
                let mut verdicts = Vec::new();
                for (host, value) in expect {
                    let field = format!("expect.{host}");
                    known_host(&field, &host)?;
                    verdicts.push((host, verdict(&value).map_err(|m| err(&field, m))?));
                }
                Expected::Verdicts(verdicts)
            } else if let Some(penalties) = case.penalties {
                for host in penalties.keys() {
                    known_host(&format!("penalties.{host}"), host)?;
                }
                Expected::Penalties(penalties.into_iter().collect())
            } else {
                let mut actions = Vec::new();
                for (i, value) in case.actions.unwrap_or_default().iter().enumerate() {
                    let field = format!("actions[{i}]");
                    let expected = action(value).map_err(|m| err(&field, m))?;
                    match &expected {
                        ExpectedAction::Migrate { vm, to, .. } => {
                            if !snapshot.vms.iter().any(|v| &v.id == vm) {
                                return Err(err(
                                    &format!("{field}.migrate"),
                                    format!("no VM {vm:?} in the case's cluster"),
                                ));
                            }
                            if let Some(to) = to {
                                known_host(&format!("{field}.to"), to)?;
                            }
                        }
                        ExpectedAction::Power { host, .. } => {
                            known_host(&format!("{field}.power"), host)?
                        }
                    }
                    actions.push(expected);
                }
                Expected::Actions(actions)
            };
            if vm.is_none() && !matches!(expected, Expected::Actions(_)) {
                return Err(err(
                    "vm",
                    "missing: filters and weights decide for a VM (inline, or a VM file)".into(),
                ));
            }
            cases.push(Case {
                name: case.name,
                unit: case.unit.or_else(|| raw.unit.clone()),
                cluster,
                vm,
                params: case.params,
                expected,
                at,
            });
        }
        Ok(Self {
            file: file.to_string(),
            cases,
        })
    }
}

/// A cluster: a file name (relative to `base`) or an inline snapshot.
fn cluster(value: &serde_json::Value, base: &Path, label: &str) -> Result<Cluster> {
    match value {
        serde_json::Value::String(file) => Cluster::from_file(&base.join(file)),
        serde_json::Value::Object(_) => {
            let snapshot: Snapshot =
                wasmsched::parse_document(&value.to_string(), Format::Json, label)?;
            Cluster::new(snapshot, label)
        }
        _ => Err(Error::input(
            label,
            None,
            "a cluster file name or an inline cluster (a table)",
        )),
    }
}

/// A VM: a file name (relative to `base`) or inline; validated like every request, errors
/// naming the case's field.
fn vm(value: &serde_json::Value, base: &Path, file: &str, at: &str) -> Result<Vm> {
    let vm: Vm = match value {
        serde_json::Value::String(path) => wasmsched::read_document(&base.join(path))?,
        serde_json::Value::Object(_) => {
            wasmsched::parse_document(&value.to_string(), Format::Json, &format!("{file}: {at}"))?
        }
        _ => {
            return Err(Error::input(
                file,
                Some(at.to_string()),
                "a VM file name or an inline VM (a table)",
            ))
        }
    };
    ScheduleRequest::new(vm.clone())
        .validate()
        .map_err(|e| match e {
            Error::Input { field, message, .. } => Error::input(
                file,
                Some(format!(
                    "{at}{}",
                    field.map(|f| format!(".{f}")).unwrap_or_default()
                )),
                message,
            ),
            other => other,
        })?;
    Ok(vm)
}

fn verdict(value: &serde_json::Value) -> std::result::Result<ExpectedVerdict, String> {
    let text = |v: Option<&serde_json::Value>, key: &str| match v {
        None => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("`{key}` must be a string")),
    };
    match value {
        serde_json::Value::String(word) if word == "pass" => Ok(ExpectedVerdict::Pass),
        serde_json::Value::String(word) if word == "reject" => Ok(ExpectedVerdict::Reject {
            code: None,
            detail: None,
        }),
        serde_json::Value::Object(table) => {
            if let Some(key) = table.keys().find(|k| !["reject", "detail"].contains(&k.as_str()))
            {
                return Err(format!(
                    "unknown key `{key}`; a rejection is {{ reject = \"code\", detail = \"part of the detail\" }}"
                ));
            }
            if !table.contains_key("reject") {
                return Err("a table expects a rejection: give `reject` (the code)".into());
            }
            Ok(ExpectedVerdict::Reject {
                code: text(table.get("reject"), "reject")?.filter(|c| !c.is_empty()),
                detail: text(table.get("detail"), "detail")?,
            })
        }
        other => Err(format!(
            "expected \"pass\", \"reject\" or {{ reject = \"code\", detail = \"...\" }}, got {other}"
        )),
    }
}

fn action(value: &serde_json::Value) -> std::result::Result<ExpectedAction, String> {
    let serde_json::Value::Object(table) = value else {
        return Err(format!(
            "expected {{ migrate = \"VM\", to = \"HOST\" }} or {{ power = \"HOST\", action = \"power_down\" }}, got {value}"
        ));
    };
    let text = |key: &str| match table.get(key) {
        None => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("`{key}` must be a string")),
    };
    let allowed: &[&str] = if table.contains_key("migrate") {
        &["migrate", "to", "reason"]
    } else {
        &["power", "action", "reason"]
    };
    if let Some(key) = table.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!(
            "unknown key `{key}` (allowed here: {})",
            allowed.join(", ")
        ));
    }
    if let Some(vm) = text("migrate")? {
        return Ok(ExpectedAction::Migrate {
            vm,
            to: text("to")?,
            reason: text("reason")?,
        });
    }
    let Some(host) = text("power")? else {
        return Err("give `migrate` (a VM id) or `power` (a host id)".into());
    };
    let action = text("action")?;
    const ACTIONS: [&str; 4] = ["to_maintenance", "power_down", "activate", "power_up"];
    if let Some(a) = action.as_deref().filter(|a| !ACTIONS.contains(a)) {
        return Err(format!("action {a:?} is not one of {}", ACTIONS.join(", ")));
    }
    Ok(ExpectedAction::Power {
        host,
        action,
        reason: text("reason")?,
    })
}

/// The outcome of a run of a case file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TestReport {
    /// The module file.
    pub module: String,
    /// The case file.
    pub cases_file: String,
    /// Cases that passed.
    pub passed: usize,
    /// Cases that failed.
    pub failed: usize,
    /// Every case, in file order.
    pub cases: Vec<CaseResult>,
}

impl TestReport {
    /// Whether every case passed.
    pub fn all_passed(&self) -> bool {
        self.failed == 0
    }
}

/// The outcome of one case.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// The unit it ran.
    pub unit: String,
    /// Whether it passed.
    pub passed: bool,
    /// Where the unit decided otherwise (empty when it passed).
    pub mismatches: Vec<Mismatch>,
    /// Context for a failure: actions the engine refused, the unit's notes, unit faults.
    pub notes: Vec<String>,
}

/// One difference between what a case expects and what the engine decided.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Mismatch {
    /// What differs: `host host-2`, `action 1`.
    pub at: String,
    /// What the case expects.
    pub expected: String,
    /// What the engine decided.
    pub got: String,
}

impl fmt::Display for TestReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for case in &self.cases {
            let mark = if case.passed { "ok  " } else { "FAIL" };
            writeln!(f, "{mark} {} ({})", case.name, case.unit)?;
            for m in &case.mismatches {
                writeln!(f, "       {}:", m.at)?;
                writeln!(f, "         expected: {}", m.expected)?;
                writeln!(f, "         got:      {}", m.got)?;
            }
            if !case.passed {
                for note in &case.notes {
                    writeln!(f, "       note: {note}")?;
                }
            }
        }
        writeln!(
            f,
            "{} case(s): {} passed, {} failed ({} against {})",
            self.cases.len(),
            self.passed,
            self.failed,
            self.cases_file,
            self.module
        )
    }
}

/// Runs every case of `cases` against `module`, loaded in `runtime` (registered there if it
/// is not yet). `Err` is bad input (an unknown unit, an expectation of the wrong kind for
/// the unit, a parameter the unit does not declare or of the wrong type, a module whose
/// unit names are taken): the error names the case and the field. A unit that decides
/// otherwise than a case expects is a failed case in the report.
pub fn run(
    runtime: &Runtime,
    module: &std::sync::Arc<LoadedModule>,
    cases: &CaseFile,
) -> Result<TestReport> {
    if !runtime.modules().iter().any(|m| m.hash() == module.hash()) {
        runtime.add_module(module.clone())?;
    }
    let manifest = module.manifest();
    let mut results = Vec::with_capacity(cases.cases.len());
    for case in &cases.cases {
        let err = |field: &str, message: String| {
            Error::input(&cases.file, Some(format!("{}.{field}", case.at)), message)
        };
        let names: Vec<&str> = manifest.units.iter().map(|u| u.name.as_str()).collect();
        let unit = match &case.unit {
            Some(name) => manifest
                .units
                .iter()
                .find(|u| &u.name == name)
                .ok_or_else(|| {
                    err(
                        "unit",
                        format!(
                            "the module has no unit {name:?} (it has: {})",
                            names.join(", ")
                        ),
                    )
                })?,
            None if manifest.units.len() == 1 => &manifest.units[0],
            None => {
                return Err(err(
                    "unit",
                    format!(
                        "the module holds several units ({}): name one with `unit`",
                        names.join(", ")
                    ),
                ))
            }
        };
        let (section, wanted) = match (&case.expected, unit.kind) {
            (Expected::Verdicts(_), UnitKind::Filter) => ("filters", None),
            (Expected::Penalties(_), UnitKind::Weight) => ("weights", None),
            (Expected::Actions(_), UnitKind::Balance) => ("balance", None),
            (_, UnitKind::Filter) => ("", Some("expect")),
            (_, UnitKind::Weight) => ("", Some("penalties")),
            (_, UnitKind::Balance) => ("", Some("actions")),
        };
        if let Some(wanted) = wanted {
            return Err(err(
                "expect",
                format!(
                    "unit {:?} is a {}: its cases give `{wanted}`",
                    unit.name, unit.kind
                ),
            ));
        }
        let entry = serde_json::json!({ "unit": unit.name, "params": case.params });
        let policy = serde_json::json!({
            "name": "wasmsched-test",
            section: if section == "balance" { entry } else { serde_json::json!([entry]) },
        });
        let policy = Policy::parse(runtime, &policy.to_string(), Format::Json, &cases.file)
            .map_err(|e| match e {
                Error::Input {
                    field: Some(field),
                    message,
                    ..
                } => match field.find(".params") {
                    Some(at) => err(&field[at + 1..], message),
                    None => err("unit", message),
                },
                other => other,
            })?;
        let mut result = CaseResult {
            name: case.name.clone(),
            unit: unit.name.clone(),
            passed: false,
            mismatches: Vec::new(),
            notes: Vec::new(),
        };
        match &case.expected {
            Expected::Verdicts(expected) => filter_case(&policy, case, expected, &mut result)?,
            Expected::Penalties(expected) => {
                weight_case(&policy, case, &unit.name, expected, &mut result)?
            }
            Expected::Actions(expected) => balance_case(&policy, case, expected, &mut result)?,
        }
        result.passed = result.mismatches.is_empty();
        results.push(result);
    }
    let passed = results.iter().filter(|r| r.passed).count();
    Ok(TestReport {
        module: module.file().to_string(),
        cases_file: cases.file.clone(),
        passed,
        failed: results.len() - passed,
        cases: results,
    })
}

fn decide(policy: &Policy, case: &Case, result: &mut CaseResult) -> Option<wasmsched::Decision> {
    let vm = case.vm.clone().unwrap_or_default();
    match policy.evaluate(&case.cluster.view(), &ScheduleRequest::new(vm)) {
        Ok(decision) => {
            for failure in &decision.unit_failures {
                result.notes.push(format!(
                    "unit {} failed ({:?} applied): {}",
                    failure.unit, failure.applied, failure.error
                ));
            }
            Some(decision)
        }
        Err(e) => {
            result.mismatches.push(Mismatch {
                at: "the decision".into(),
                expected: "a decision".into(),
                got: format!("an error: {e}"),
            });
            None
        }
    }
}

fn filter_case(
    policy: &Policy,
    case: &Case,
    expected: &[(String, ExpectedVerdict)],
    result: &mut CaseResult,
) -> Result<()> {
    let Some(decision) = decide(policy, case, result) else {
        return Ok(());
    };
    for (host, want) in expected {
        let got = decision.hosts.iter().find(|h| &h.host == host);
        let got_text = match got.map(|h| &h.outcome) {
            Some(Outcome::Chosen | Outcome::Available) => "pass".to_string(),
            Some(Outcome::Rejected { code, detail, .. }) => format!("reject {code}: {detail:?}"),
            Some(Outcome::NotCandidate { reason }) => format!("not a candidate ({reason})"),
            None => "no outcome".to_string(),
        };
        let matches = match (want, got.map(|h| &h.outcome)) {
            (ExpectedVerdict::Pass, Some(Outcome::Chosen | Outcome::Available)) => true,
            (
                ExpectedVerdict::Reject {
                    code: want_code,
                    detail: want_detail,
                },
                Some(Outcome::Rejected { code, detail, .. }),
            ) => {
                want_code.as_ref().is_none_or(|c| c == code)
                    && want_detail
                        .as_ref()
                        .is_none_or(|d| detail.contains(d.as_str()))
            }
            _ => false,
        };
        if !matches {
            let expected = match want {
                ExpectedVerdict::Pass => "pass".to_string(),
                ExpectedVerdict::Reject { code, detail } => format!(
                    "reject{}{}",
                    code.as_deref().map(|c| format!(" {c}")).unwrap_or_default(),
                    detail
                        .as_deref()
                        .map(|d| format!(" with a detail containing {d:?}"))
                        .unwrap_or_default()
                ),
            };
            result.mismatches.push(Mismatch {
                at: format!("host {host}"),
                expected,
                got: got_text,
            });
        }
    }
    Ok(())
}

fn weight_case(
    policy: &Policy,
    case: &Case,
    unit: &str,
    expected: &[(String, i64)],
    result: &mut CaseResult,
) -> Result<()> {
    let Some(decision) = decide(policy, case, result) else {
        return Ok(());
    };
    for (host, want) in expected {
        let outcome = decision.hosts.iter().find(|h| &h.host == host);
        let raw = outcome.and_then(|h| h.weights.iter().find(|w| &*w.unit == unit));
        if raw.map(|w| w.raw) != Some(*want) {
            let got = match (raw, outcome.map(|h| &h.outcome)) {
                (Some(w), _) => format!("penalty {}", w.raw),
                (None, Some(Outcome::NotCandidate { reason })) => {
                    format!("no penalty: not a candidate ({reason})")
                }
                (None, Some(_)) if decision.available == 1 => {
                    "no penalty: the only candidate is chosen without running the weights".into()
                }
                (None, _) => "no penalty (the unit gave none: see the notes)".into(),
            };
            result.mismatches.push(Mismatch {
                at: format!("host {host}"),
                expected: format!("penalty {want}"),
                got,
            });
        }
    }
    Ok(())
}

fn balance_case(
    policy: &Policy,
    case: &Case,
    expected: &[ExpectedAction],
    result: &mut CaseResult,
) -> Result<()> {
    let plan = match policy.balance(&case.cluster) {
        Ok(plan) => plan,
        Err(e) => {
            result.mismatches.push(Mismatch {
                at: "the balance cycle".into(),
                expected: "a plan".into(),
                got: format!("an error: {e}"),
            });
            return Ok(());
        }
    };
    for refused in &plan.refused {
        result.notes.push(format!(
            "refused by the engine: {} ({})",
            describe(&refused.action),
            refused.why
        ));
    }
    result
        .notes
        .extend(plan.notes.iter().map(|n| format!("unit note: {n}")));
    if let Some(failure) = &plan.unit_failure {
        result
            .notes
            .push(format!("unit {} failed: {}", failure.unit, failure.error));
    }
    for i in 0..expected.len().max(plan.actions.len()) {
        let want = expected.get(i);
        let got = plan.actions.get(i);
        let matches = match (want, got) {
            (
                Some(ExpectedAction::Migrate { vm, to, reason }),
                Some(PlannedAction::Migrate {
                    vm: got_vm,
                    destination,
                    reason: got_reason,
                    ..
                }),
            ) => {
                vm == got_vm
                    && to.as_ref().is_none_or(|t| destination.as_ref() == Some(t))
                    && reason
                        .as_ref()
                        .is_none_or(|r| got_reason.contains(r.as_str()))
            }
            (
                Some(ExpectedAction::Power {
                    host,
                    action,
                    reason,
                }),
                Some(PlannedAction::Power {
                    host: got_host,
                    action: got_action,
                    reason: got_reason,
                }),
            ) => {
                host == got_host
                    && action.as_deref().is_none_or(|a| a == got_action.as_str())
                    && reason
                        .as_ref()
                        .is_none_or(|r| got_reason.contains(r.as_str()))
            }
            _ => false,
        };
        if !matches {
            result.mismatches.push(Mismatch {
                at: format!("action {}", i + 1),
                expected: want.map(ToString::to_string).unwrap_or("no action".into()),
                got: got.map(describe).unwrap_or("no action".into()),
            });
        }
    }
    Ok(())
}

impl fmt::Display for ExpectedAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (text, reason) = match self {
            ExpectedAction::Migrate { vm, to, reason } => (
                format!(
                    "migrate {vm}{}",
                    to.as_deref()
                        .map(|t| format!(" to {t}"))
                        .unwrap_or_default()
                ),
                reason,
            ),
            ExpectedAction::Power {
                host,
                action,
                reason,
            } => (
                format!("{} {host}", action.as_deref().unwrap_or("power action on")),
                reason,
            ),
        };
        f.write_str(&text)?;
        match reason {
            Some(r) => write!(f, " (reason containing {r:?})"),
            None => Ok(()),
        }
    }
}

/// An action as a case diff shows it: `migrate db-1 from host-2 to host-3 ("reason")`.
fn describe(action: &PlannedAction) -> String {
    match action {
        PlannedAction::Migrate {
            vm,
            source,
            destination,
            reason,
            ..
        } => format!(
            "migrate {vm}{}{} ({reason:?})",
            source
                .as_deref()
                .map(|s| format!(" from {s}"))
                .unwrap_or_default(),
            destination
                .as_deref()
                .map(|d| format!(" to {d}"))
                .unwrap_or(" (no destination)".into()),
        ),
        PlannedAction::Power {
            host,
            action,
            reason,
        } => format!("{} {host} ({reason:?})", action.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = r#"cluster = { hosts = [{ id = "a", name = "old-a" }, { id = "b", name = "b-1" }], vms = [{ id = "db-1", memory_mb = 512, current_host = "a" }] }"#;

    fn parse(cases: &str) -> Result<CaseFile> {
        let text = format!("{CLUSTER}\n{cases}");
        CaseFile::parse(&text, Format::Toml, "cases.toml", Path::new("."))
    }

    #[test]
    fn every_kind_of_expectation_is_read() {
        let file = parse(
            r#"
[[cases]]
name = "verdicts"
vm = { id = "web-1", memory_mb = 1024 }
params = { prefix = "old-" }
expect = { a = { reject = "retired_host", detail = "old-" }, b = "pass" }

[[cases]]
name = "penalties"
unit = "w"
vm = { id = "web-1", memory_mb = 1024 }
penalties = { a = 3, b = 0 }

[[cases]]
name = "actions"
actions = [{ migrate = "db-1", to = "b", reason = "busy" }, { power = "a", action = "power_down" }]
"#,
        )
        .unwrap();
        assert_eq!(file.cases.len(), 3);
        assert_eq!(
            file.cases[0].expected,
            Expected::Verdicts(vec![
                (
                    "a".into(),
                    ExpectedVerdict::Reject {
                        code: Some("retired_host".into()),
                        detail: Some("old-".into())
                    }
                ),
                ("b".into(), ExpectedVerdict::Pass),
            ])
        );
        assert_eq!(file.cases[0].params["prefix"], "old-");
        assert_eq!(file.cases[1].unit.as_deref(), Some("w"));
        assert_eq!(
            file.cases[1].expected,
            Expected::Penalties(vec![("a".into(), 3), ("b".into(), 0)])
        );
        assert_eq!(
            file.cases[2].expected,
            Expected::Actions(vec![
                ExpectedAction::Migrate {
                    vm: "db-1".into(),
                    to: Some("b".into()),
                    reason: Some("busy".into())
                },
                ExpectedAction::Power {
                    host: "a".into(),
                    action: Some("power_down".into()),
                    reason: None
                },
            ])
        );
        assert!(file.cases[2].vm.is_none());
    }

    #[test]
    fn case_file_errors_name_the_case_and_the_field() {
        let vm = r#"vm = { id = "web-1", memory_mb = 1024 }"#;
        let cases = [
            (
                format!("[[cases]]\nname = \"x\"\n{vm}\nexpect = {{ a = \"pas\" }}"),
                "cases[0] (\"x\").expect.a: expected \"pass\", \"reject\"",
            ),
            (
                format!("[[cases]]\nname = \"x\"\n{vm}\nexpect = {{ nowhere = \"pass\" }}"),
                "cases[0] (\"x\").expect.nowhere: no host \"nowhere\"",
            ),
            (
                format!("[[cases]]\nname = \"x\"\n{vm}\nexpect = {{ a = {{ code = \"c\" }} }}"),
                "cases[0] (\"x\").expect.a: unknown key `code`",
            ),
            (
                format!("[[cases]]\nname = \"x\"\n{vm}\npenalties = {{ a = 1 }}\nexpect = {{ a = \"pass\" }}"),
                "cases[0] (\"x\").expect: give exactly one of",
            ),
            (
                format!("[[cases]]\nname = \"x\"\n{vm}"),
                "cases[0] (\"x\").expect: give exactly one of",
            ),
            (
                "[[cases]]\nname = \"x\"\nexpect = { a = \"pass\" }".to_string(),
                "cases[0] (\"x\").vm: missing",
            ),
            (
                "[[cases]]\nname = \"x\"\nvm = { id = \"v\", cpu = { sockets = 0 } }\nexpect = { a = \"pass\" }".to_string(),
                "cases[0] (\"x\").vm.cpu: sockets, cores_per_socket and threads_per_core must be at least 1",
            ),
            (
                format!("[[cases]]\nname = \"x\"\n{vm}\nexpect = {{ a = \"pass\" }}\n[[cases]]\nname = \"x\"\n{vm}\nexpect = {{ a = \"pass\" }}"),
                "cases[1] (\"x\").name: another case has this name",
            ),
            (
                "[[cases]]\nname = \"x\"\nactions = [{ migrate = \"ghost\" }]".to_string(),
                "cases[0] (\"x\").actions[0].migrate: no VM \"ghost\"",
            ),
            (
                "[[cases]]\nname = \"x\"\nactions = [{ power = \"a\", action = \"explode\" }]".to_string(),
                "cases[0] (\"x\").actions[0]: action \"explode\" is not one of",
            ),
            (
                format!("[[cases]]\nname = \"x\"\n{vm}\nexpct = {{ a = \"pass\" }}"),
                "cases[0].expct: unknown field",
            ),
            ("cases = []".to_string(), "cases: no cases"),
        ];
        for (text, want) in cases {
            let error = parse(&text).expect_err(&text).to_string();
            assert!(error.starts_with("cases.toml: "), "{error}");
            assert!(
                error.contains(want),
                "{want:?} not in {error:?}\nfor\n{text}"
            );
        }
    }

    #[test]
    fn an_inline_cluster_is_validated_like_a_cluster_file() {
        let error = CaseFile::parse(
            "[[cases]]\nname = \"x\"\ncluster = { hosts = [{ id = \"a\" }, { id = \"a\" }] }\nactions = []",
            Format::Toml,
            "cases.toml",
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("cases[0] (\"x\").cluster"), "{error}");
        assert!(error.contains("hosts[1]"), "{error}");
    }

    /// A filter compiled into the test (a native unit): rejects hosts named `old-*`.
    #[derive(Debug, Default)]
    struct OldHosts;

    impl wasmsched::sdk::Filter for OldHosts {
        const NAME: &'static str = "old-hosts";
        fn params() -> Vec<wasmsched::sdk::ParamSpec> {
            vec![wasmsched::sdk::ParamSpec::string("prefix", "old-", "d")]
        }
        fn check(
            &self,
            ctx: &wasmsched::sdk::Context<'_>,
            _vm: &Vm,
            host: &wasmsched::sdk::Host,
        ) -> wasmsched::sdk::Verdict {
            if host.name.starts_with(ctx.str("prefix")) {
                wasmsched::sdk::Verdict::reject("retired_host", format!("{} is old", host.name))
            } else {
                wasmsched::sdk::Verdict::Pass
            }
        }
    }

    fn run_native(cases: &str) -> Result<TestReport> {
        let runtime = Runtime::builder().builtins(false).cache_dir(None).build()?;
        let units = wasmsched::sdk::UnitSet::new("old-hosts", "1").filter::<OldHosts>();
        let module = runtime.add_native("old-hosts", units)?;
        run(&runtime, &module, &parse(cases)?)
    }

    #[test]
    fn a_wrong_expectation_fails_with_the_difference_per_host() {
        let report = run_native(
            r#"
[[cases]]
name = "right"
vm = { id = "web-1", memory_mb = 1024 }
expect = { a = { reject = "retired_host", detail = "old-a" }, b = "pass" }

[[cases]]
name = "wrong"
vm = { id = "web-1", memory_mb = 1024 }
params = { prefix = "b" }
expect = { a = { reject = "retired_host" }, b = "pass" }
"#,
        )
        .unwrap();
        assert_eq!((report.passed, report.failed), (1, 1));
        assert!(report.cases[0].passed);
        let wrong = &report.cases[1];
        assert!(!wrong.passed);
        assert_eq!(
            wrong.mismatches,
            vec![
                Mismatch {
                    at: "host a".into(),
                    expected: "reject retired_host".into(),
                    got: "pass".into()
                },
                Mismatch {
                    at: "host b".into(),
                    expected: "pass".into(),
                    got: "reject retired_host: \"b-1 is old\"".into()
                },
            ]
        );
    }

    #[test]
    fn cases_that_do_not_fit_the_unit_are_bad_input_naming_the_case() {
        let vm = r#"vm = { id = "web-1", memory_mb = 1024 }"#;
        let cases = [
            (
                format!("[[cases]]\nname = \"x\"\n{vm}\npenalties = {{ a = 1 }}"),
                "cases[0] (\"x\").expect: unit \"old-hosts\" is a filter: its cases give `expect`",
            ),
            (
                format!("[[cases]]\nname = \"x\"\nunit = \"other\"\n{vm}\nexpect = {{ a = \"pass\" }}"),
                "cases[0] (\"x\").unit: the module has no unit \"other\"",
            ),
            (
                format!("[[cases]]\nname = \"x\"\n{vm}\nparams = {{ nope = 1 }}\nexpect = {{ a = \"pass\" }}"),
                "cases[0] (\"x\").params.nope",
            ),
            (
                format!("[[cases]]\nname = \"x\"\n{vm}\nparams = {{ prefix = 3 }}\nexpect = {{ a = \"pass\" }}"),
                "cases[0] (\"x\").params.prefix: expected string, got 3",
            ),
        ];
        for (text, want) in cases {
            let error = run_native(&text).expect_err(&text).to_string();
            assert!(error.contains(want), "{want:?} not in {error:?}");
        }
    }
}
