//! What a decision is asked: the VM, where it may go, why it is placed and how much the
//! decision reports.

use crate::error::{Error, Result};
use crate::state::{check_vm, PlacementKind};
use policy_sdk::Vm;
use serde::{Deserialize, Serialize};

/// What to schedule and where it may go.
///
/// Deserializes from JSON such as `{"vm": {...}, "blacklist": ["h1"], "detail":
/// "summary"}` (every field but `vm` optional) with the same validation as
/// [`ScheduleRequest::validate`]: a request that deserializes is one a decision accepts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "RequestDocument")]
pub struct ScheduleRequest {
    /// The VM to place.
    pub vm: Vm,
    /// Hosts that must not be chosen (already tried; the source host of a migration).
    pub blacklist: Vec<String>,
    /// When set, only these hosts may be chosen.
    pub whitelist: Option<Vec<String>>,
    /// Start or migration (decides the pending CPU load and what the lifecycle releases).
    pub kind: PlacementKind,
    /// How much the decision reports about the hosts not chosen (default: every host).
    pub detail: Detail,
}

impl ScheduleRequest {
    /// A request to start a VM, any Up host allowed.
    pub fn new(vm: Vm) -> Self {
        Self {
            vm,
            blacklist: Vec::new(),
            whitelist: None,
            kind: PlacementKind::Start,
            detail: Detail::Full,
        }
    }

    /// A request to migrate a running VM away from its current host (which is
    /// blacklisted). Fails when the VM has no current host.
    pub fn migration(vm: Vm) -> Result<Self> {
        let Some(source) = vm.current_host.clone() else {
            return Err(Error::input(
                format!("VM {:?}", vm.id),
                Some("current_host".into()),
                "a migration needs the host the VM runs on",
            ));
        };
        Ok(Self {
            blacklist: vec![source.clone()],
            whitelist: None,
            kind: PlacementKind::Migration { source },
            detail: Detail::Full,
            vm,
        })
    }

    /// Excludes these hosts.
    pub fn blacklist<I: IntoIterator<Item = S>, S: Into<String>>(mut self, hosts: I) -> Self {
        self.blacklist.extend(hosts.into_iter().map(Into::into));
        self
    }

    /// How much the decision reports about the hosts not chosen ([`Detail::Summary`]: the
    /// chosen host and the best runners-up, for engines placing many VMs).
    pub fn detail(mut self, detail: Detail) -> Self {
        self.detail = detail;
        self
    }

    /// Allows only these hosts.
    pub fn whitelist<I: IntoIterator<Item = S>, S: Into<String>>(mut self, hosts: I) -> Self {
        self.whitelist = Some(hosts.into_iter().map(Into::into).collect());
        self
    }

    /// Checks the request as every decision does before running a unit: the VM's id, CPU
    /// topology (at most 4096 vCPUs), memory and guaranteed memory, pinning string, vNUMA
    /// nodes (their memory adding up to the VM's) and custom resource amounts: the rules a
    /// VM listed in a cluster follows too. The error names the VM and the field at fault.
    pub fn validate(&self) -> Result<()> {
        check_vm(&self.vm).map_err(|fault| {
            Error::input(
                format!("VM {:?}", self.vm.id),
                Some(fault.field),
                fault.message,
            )
        })
    }
}

/// How much a [`Decision`](crate::Decision) reports about the hosts it did not choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detail {
    /// Every host of the cluster in snapshot order, with its outcome (the rejecting filter,
    /// code and detail), score and each weight's contribution: for what-if tools and the CLI.
    #[default]
    Full,
    /// The chosen host and the best-scored runners-up (at most [`Detail::SUMMARY_HOSTS`], best
    /// first) with scores and weights; hosts turned away appear only as counts in
    /// [`Decision::summary`](crate::Decision::summary). For engines placing many VMs on large clusters: the decision
    /// is the same, without building an outcome for every host.
    Summary,
}

impl Detail {
    /// How many hosts a [`Detail::Summary`] decision lists (the chosen one and the
    /// runners-up).
    pub const SUMMARY_HOSTS: usize = 10;
}

/// The document form of a [`ScheduleRequest`], before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestDocument {
    vm: Vm,
    #[serde(default)]
    blacklist: Vec<String>,
    #[serde(default)]
    whitelist: Option<Vec<String>>,
    #[serde(default)]
    kind: PlacementKind,
    #[serde(default)]
    detail: Detail,
}

impl TryFrom<RequestDocument> for ScheduleRequest {
    type Error = Error;

    fn try_from(doc: RequestDocument) -> Result<Self> {
        let request = ScheduleRequest {
            vm: doc.vm,
            blacklist: doc.blacklist,
            whitelist: doc.whitelist,
            kind: doc.kind,
            detail: doc.detail,
        };
        request.validate()?;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request read from JSON is checked like one built in code: what deserializes is
    /// what a decision accepts, and a bad request names the VM and field.
    #[test]
    fn requests_deserialize_with_the_decision_validation() {
        let ok = r#"{"vm": {"id": "web-1", "memory_mb": 2048}, "blacklist": ["h1"],
                     "detail": "summary", "kind": {"kind": "migration", "source": "h1"}}"#;
        let request: ScheduleRequest = serde_json::from_str(ok).unwrap();
        assert_eq!(request.vm.id, "web-1");
        assert_eq!(request.blacklist, ["h1"]);
        assert_eq!(request.detail, Detail::Summary);
        assert_eq!(
            request.kind,
            PlacementKind::Migration {
                source: "h1".into()
            }
        );
        let minimal: ScheduleRequest = serde_json::from_str(r#"{"vm": {"id": "v"}}"#).unwrap();
        assert_eq!(
            (minimal.kind, minimal.detail, minimal.whitelist),
            (PlacementKind::Start, Detail::Full, None)
        );
        let cases = [
            (r#"{"vm": {"id": ""}}"#, "VM \"\": id: must not be empty"),
            (
                r#"{"vm": {"id": "v", "cpu_pinning": "0#1-"}}"#,
                "VM \"v\": cpu_pinning: ",
            ),
            (
                r#"{"vm": {"id": "v", "cpu": {"sockets": 0, "cores_per_socket": 1, "threads_per_core": 1}}}"#,
                "VM \"v\": cpu: sockets, cores_per_socket and threads_per_core",
            ),
            (
                r#"{"vm": {"id": "v", "hugepage_size_kb": 0}}"#,
                "VM \"v\": hugepage_size_kb: must not be 0",
            ),
            (
                r#"{"vm": {"id": "v"}, "detial": "summary"}"#,
                "unknown field `detial`",
            ),
            (r#"{"blacklist": []}"#, "missing field `vm`"),
        ];
        for (json, expected) in cases {
            let err = serde_json::from_str::<ScheduleRequest>(json).unwrap_err();
            assert!(err.to_string().contains(expected), "{json}: {err}");
        }
    }
}
