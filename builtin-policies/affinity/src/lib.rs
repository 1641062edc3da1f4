//! Builtin module `affinity`: VM affinity groups, after the reference scheduler's
//! VmAffinityGroups filter and weight, counting pending VMs as well as running ones.
//!
//! An affinity group ([`AffinityGroup`]) lists VMs that should run on the same host
//! (positive) or on different hosts (negative). Enforcing groups are hard rules, checked by
//! the filter `vm-affinity`; soft groups are preferences, scored by the weight
//! `vm-affinity-weight`. Only groups that list the VM being scheduled matter.
//!
//! A group member *is on* host `H` when it runs there (a VM of the snapshot that
//! [`Vm::is_running`] with `current_host == H`) or when it is pending there (its id is in
//! `H.pending.vms`: placed by an earlier decision, not running yet). Counting pending VMs is
//! what keeps a mass start of a negative group from stacking every member on the same host.
//! A member may be on two hosts at once (migrating: running on the source, pending on the
//! destination); it counts on both. The VM being scheduled never counts as a member, wherever
//! it runs or is pending (it may be being rescheduled or migrated). Member ids that are
//! neither running nor pending anywhere are simply absent.
//!
//! Reject codes (filter `vm-affinity`): `negative_affinity`, `positive_affinity`.
//!
//! Both units work out, once per call, the few `(host, member)` placements of the VM's
//! fellow members: one scan of the snapshot's VMs and of pending lists. Pending members on
//! hosts that are not candidates cannot make a candidate fail a negative rule, so only the
//! candidates' pending lists are read when every relevant group is negative; a positive
//! group, though, is pinned by members pending anywhere, so all hosts' pending lists are read
//! as soon as one relevant group is positive. When the VM is in no relevant group, or none of
//! its fellow members is placed anywhere, every candidate passes (penalty 0) without any
//! per-host work.

use policy_sdk::{
    push_penalties, AffinityGroup, AffinityPolarity, Context, Filter, Host, HostIndex, ParamSpec,
    Penalty, Snapshot, Verdict, Verdicts, Vm, Weight,
};
use std::fmt::Write as _;

/// How many members or hosts a reject detail names before summing up the rest.
const DETAIL_LIST_LIMIT: usize = 5;

/// Enforcing affinity groups of the VM: a host where a member of one of its negative groups
/// runs or is pending is rejected; when members of one of its positive groups run or are
/// pending somewhere, only hosts holding at least one of them pass. A host that breaks
/// several groups is reported for the first one, in group order.
#[derive(Debug, Default)]
pub struct VmAffinityFilter;

impl Filter for VmAffinityFilter {
    const NAME: &'static str = "vm-affinity";
    const DESCRIPTION: &'static str =
        "Enforcing VM affinity groups: apart for negative groups, together for positive ones \
         (running and pending members)";

    fn applies(&self, ctx: &Context<'_>, vm: &Vm) -> bool {
        !relevant_groups(ctx.snapshot(), vm, true, false).is_empty()
    }

    fn check(&self, ctx: &Context<'_>, vm: &Vm, host: &Host) -> Verdict {
        let s = ctx.snapshot();
        let groups = relevant_groups(s, vm, true, false);
        match Placements::for_host(s, vm, groups, host) {
            Some(p) => p.verdict(host, &p.positive_details()),
            None => Verdict::Pass,
        }
    }

    fn check_all(&self, ctx: &Context<'_>, vm: &Vm, candidates: &[HostIndex], out: &mut Verdicts) {
        let s = ctx.snapshot();
        let groups = relevant_groups(s, vm, true, false);
        match Placements::for_candidates(ctx, vm, groups, candidates) {
            Some(p) => {
                let details = p.positive_details();
                out.extend(candidates.iter().map(|&i| p.verdict(ctx.host(i), &details)));
            }
            None => out.extend(candidates.iter().map(|_| Verdict::Pass)),
        }
    }
}

/// Soft affinity groups of the VM (and enforcing ones with `include_enforcing`), as a raw
/// penalty per host, lower is better: for each negative group, the number of its other
/// members on the host; for each positive group with at least one other member placed
/// anywhere, the number of its placed other members that are not on the host.
#[derive(Debug, Default)]
pub struct VmAffinityWeight;

impl Weight for VmAffinityWeight {
    const NAME: &'static str = "vm-affinity-weight";
    const DESCRIPTION: &'static str =
        "Soft VM affinity groups: penalizes hosts holding members of negative groups and hosts \
         away from members of positive groups (running and pending members)";

    fn params() -> Vec<ParamSpec> {
        vec![ParamSpec::bool(
            "include_enforcing",
            false,
            "Also score enforcing groups (for policies without the vm-affinity filter)",
        )]
    }

    fn uniform(&self, ctx: &Context<'_>, vm: &Vm) -> Option<Penalty> {
        relevant_groups(ctx.snapshot(), vm, false, ctx.bool("include_enforcing"))
            .is_empty()
            .then_some(0)
    }

    fn penalty(&self, ctx: &Context<'_>, vm: &Vm, host: &Host) -> Penalty {
        let s = ctx.snapshot();
        let groups = relevant_groups(s, vm, false, ctx.bool("include_enforcing"));
        match Placements::for_host(s, vm, groups, host) {
            Some(p) => p.penalty(host),
            None => 0,
        }
    }

    fn penalty_all(
        &self,
        ctx: &Context<'_>,
        vm: &Vm,
        candidates: &[HostIndex],
        out: &mut Vec<Penalty>,
    ) {
        let s = ctx.snapshot();
        let groups = relevant_groups(s, vm, false, ctx.bool("include_enforcing"));
        match Placements::for_candidates(ctx, vm, groups, candidates) {
            Some(p) => push_penalties(out, candidates, |i| p.penalty(ctx.host(i))),
            None => out.resize(out.len() + candidates.len(), 0),
        }
    }
}

/// The groups listing `vm`: enforcing ones when `enforcing`, otherwise soft ones (and
/// enforcing ones too when `include_enforcing`), in group order.
fn relevant_groups<'a>(
    s: &'a Snapshot,
    vm: &Vm,
    enforcing: bool,
    include_enforcing: bool,
) -> Vec<&'a AffinityGroup> {
    s.cluster
        .affinity_groups
        .iter()
        .filter(|g| {
            let kind = if enforcing {
                g.enforcing
            } else {
                !g.enforcing || include_enforcing
            };
            kind && g.contains(&vm.id)
        })
        .collect()
}

/// One member on one host.
#[derive(Debug, Clone, Copy)]
struct Placement<'a> {
    /// Id of the host.
    host: &'a str,
    /// Index of the member in [`Placements::members`].
    member: usize,
    /// Pending there (false: runs there; running wins when it is both).
    pending: bool,
}

/// Where the other members of the VM's relevant groups are, worked out once per call.
#[derive(Debug)]
struct Placements<'a> {
    /// The relevant groups, in group order.
    groups: Vec<&'a AffinityGroup>,
    /// Distinct member ids of those groups, the VM excluded, in order of first listing.
    members: Vec<&'a str>,
    /// `in_group[g * members.len() + m]`: member `m` is listed in group `g`.
    in_group: Vec<bool>,
    /// One entry per (host, member), sorted by host id, then member.
    placements: Vec<Placement<'a>>,
    /// Per group: how many of its members are placed somewhere.
    placed: Vec<usize>,
}

impl<'a> Placements<'a> {
    /// Placements for a call over `candidates`: pending lists of the candidates only, or of
    /// every host when a group is positive (see the module documentation).
    fn for_candidates(
        ctx: &Context<'a>,
        vm: &Vm,
        groups: Vec<&'a AffinityGroup>,
        candidates: &[HostIndex],
    ) -> Option<Self> {
        if groups.is_empty() {
            return None;
        }
        let s = ctx.snapshot();
        if any_positive(&groups) {
            Self::build(s, vm, groups, s.hosts.iter())
        } else {
            Self::build(s, vm, groups, candidates.iter().map(|&i| ctx.host(i)))
        }
    }

    /// Placements for a single host (which need not be one of the snapshot's).
    fn for_host(
        s: &'a Snapshot,
        vm: &Vm,
        groups: Vec<&'a AffinityGroup>,
        host: &'a Host,
    ) -> Option<Self> {
        if groups.is_empty() {
            return None;
        }
        if any_positive(&groups) {
            Self::build(s, vm, groups, s.hosts.iter().chain([host]))
        } else {
            Self::build(s, vm, groups, [host])
        }
    }

    /// `None` when no other member is placed anywhere (everything passes, penalties are 0).
    fn build(
        s: &'a Snapshot,
        vm: &Vm,
        groups: Vec<&'a AffinityGroup>,
        pending_hosts: impl IntoIterator<Item = &'a Host>,
    ) -> Option<Self> {
        // Distinct member ids, the VM excluded, kept in order of first listing.
        let mut listed: Vec<(&'a str, usize)> = groups
            .iter()
            .flat_map(|g| g.vms.iter())
            .map(String::as_str)
            .filter(|&id| id != vm.id)
            .enumerate()
            .map(|(order, id)| (id, order))
            .collect();
        if listed.is_empty() {
            return None;
        }
        listed.sort_unstable();
        listed.dedup_by_key(|&mut (id, _)| id);
        let mut by_order: Vec<(usize, &'a str)> =
            listed.iter().map(|&(id, order)| (order, id)).collect();
        by_order.sort_unstable();
        let members: Vec<&'a str> = by_order.into_iter().map(|(_, id)| id).collect();
        // Lookup from id to member index, sorted by id.
        let mut lookup: Vec<(&'a str, usize)> =
            members.iter().enumerate().map(|(m, &id)| (id, m)).collect();
        lookup.sort_unstable();
        let find = |id: &str| -> Option<usize> {
            lookup
                .binary_search_by(|&(k, _)| k.cmp(id))
                .ok()
                .map(|i| lookup[i].1)
        };

        let mut placements = Vec::new();
        for v in &s.vms {
            if let (true, Some(host), Some(member)) = (v.is_running(), &v.current_host, find(&v.id))
            {
                placements.push(Placement {
                    host: host.as_str(),
                    member,
                    pending: false,
                });
            }
        }
        for h in pending_hosts {
            for id in &h.pending.vms {
                if let Some(member) = find(id) {
                    placements.push(Placement {
                        host: h.id.as_str(),
                        member,
                        pending: true,
                    });
                }
            }
        }
        if placements.is_empty() {
            return None;
        }
        placements.sort_unstable_by(|a, b| {
            (a.host, a.member, a.pending).cmp(&(b.host, b.member, b.pending))
        });
        placements
            .dedup_by(|later, first| later.host == first.host && later.member == first.member);

        let n = members.len();
        let mut in_group = vec![false; groups.len() * n];
        for (g, group) in groups.iter().enumerate() {
            for id in &group.vms {
                if let Some(m) = find(id) {
                    in_group[g * n + m] = true;
                }
            }
        }
        let mut is_placed = vec![false; n];
        for p in &placements {
            is_placed[p.member] = true;
        }
        let placed = (0..groups.len())
            .map(|g| {
                (0..n)
                    .filter(|&m| in_group[g * n + m] && is_placed[m])
                    .count()
            })
            .collect();
        Some(Self {
            groups,
            members,
            in_group,
            placements,
            placed,
        })
    }

    fn in_group(&self, g: usize, member: usize) -> bool {
        self.in_group[g * self.members.len() + member]
    }

    /// The placements on the host with this id (a binary search, no allocation).
    fn on(&self, host_id: &str) -> &[Placement<'a>] {
        let start = self.placements.partition_point(|p| p.host < host_id);
        let len = self.placements[start..].partition_point(|p| p.host == host_id);
        &self.placements[start..start + len]
    }

    /// The number of members of group `g` among `here`.
    fn count_in(&self, g: usize, here: &[Placement<'a>]) -> usize {
        here.iter().filter(|p| self.in_group(g, p.member)).count()
    }

    /// Per group, the reject detail of a positive group whose members are placed (the same
    /// for every host it rejects); empty for the others.
    fn positive_details(&self) -> Vec<String> {
        self.groups
            .iter()
            .enumerate()
            .map(|(g, group)| {
                if group.polarity != AffinityPolarity::Positive || self.placed[g] == 0 {
                    return String::new();
                }
                // Placements are sorted by host id: distinct hosts are consecutive runs.
                let mut hosts: Vec<&str> = self
                    .placements
                    .iter()
                    .filter(|p| self.in_group(g, p.member))
                    .map(|p| p.host)
                    .collect();
                hosts.dedup();
                let mut detail = format!("group {:?}: members are on host(s) ", group.name);
                push_list(
                    &mut detail,
                    hosts.len(),
                    hosts.iter().map(|h| h.to_string()),
                );
                detail
            })
            .collect()
    }

    /// The filter's verdict for a host; `positive_details` from [`Self::positive_details`].
    fn verdict(&self, host: &Host, positive_details: &[String]) -> Verdict {
        let here = self.on(&host.id);
        for (g, group) in self.groups.iter().enumerate() {
            let count = self.count_in(g, here);
            match group.polarity {
                AffinityPolarity::Negative if count > 0 => {
                    let mut detail = format!("group {:?}: ", group.name);
                    let members = here.iter().filter(|p| self.in_group(g, p.member)).map(|p| {
                        let state = if p.pending {
                            "is pending here"
                        } else {
                            "runs here"
                        };
                        format!("VM {} {state}", self.members[p.member])
                    });
                    push_list(&mut detail, count, members);
                    return Verdict::reject("negative_affinity", detail);
                }
                AffinityPolarity::Positive if count == 0 && self.placed[g] > 0 => {
                    return Verdict::reject("positive_affinity", positive_details[g].clone());
                }
                _ => {}
            }
        }
        Verdict::Pass
    }

    /// The weight's raw penalty for a host.
    fn penalty(&self, host: &Host) -> Penalty {
        let here = self.on(&host.id);
        let total: usize = self
            .groups
            .iter()
            .enumerate()
            .map(|(g, group)| {
                let count = self.count_in(g, here);
                match group.polarity {
                    AffinityPolarity::Negative => count,
                    AffinityPolarity::Positive => self.placed[g] - count,
                }
            })
            .sum();
        Penalty::try_from(total).unwrap_or(Penalty::MAX)
    }
}

fn any_positive(groups: &[&AffinityGroup]) -> bool {
    groups
        .iter()
        .any(|g| g.polarity == AffinityPolarity::Positive)
}

/// Appends `items` (`len` of them) comma-separated, naming at most [`DETAIL_LIST_LIMIT`]
/// and summing up the rest as `and N more`.
fn push_list(out: &mut String, len: usize, items: impl Iterator<Item = String>) {
    for (i, item) in items.take(DETAIL_LIST_LIMIT).enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&item);
    }
    if len > DETAIL_LIST_LIMIT {
        let _ = write!(out, " and {} more", len - DETAIL_LIST_LIMIT);
    }
}

// The shipped wasm module, `builtin-scheduling`, exports these units with the other
// builtin scheduling units; `units()` is their native form.
policy_sdk::unit_set! {
    module: "affinity",
    version: env!("CARGO_PKG_VERSION"),
    units: [filter VmAffinityFilter, weight VmAffinityWeight],
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_sdk::testing::{host, params_of, snapshot, vm, with_param, XorShift};
    use policy_sdk::wire::abi::{CallRequest, CallResponse};
    use policy_sdk::{AffinityPolarity::Negative, AffinityPolarity::Positive};
    use policy_sdk::{ParamValue, VmStatus};

    type Params = Vec<(String, ParamValue)>;

    fn code(verdict: &Verdict) -> &str {
        match verdict {
            Verdict::Pass => "pass",
            Verdict::Reject { code, .. } => code,
        }
    }

    fn all(s: &Snapshot) -> Vec<HostIndex> {
        (0..s.hosts.len() as HostIndex).collect()
    }

    /// The filter's verdicts over every host of `s`, through `check_all`.
    fn verdicts(s: &Snapshot, v: &Vm) -> Vec<Verdict> {
        let ctx = Context::new(s, &[], VmAffinityFilter::NAME);
        let mut out = Verdicts::default();
        VmAffinityFilter.check_all(&ctx, v, &all(s), &mut out);
        out.into_verdicts()
    }

    /// The filter's codes over every host of `s`.
    fn codes(s: &Snapshot, v: &Vm) -> Vec<String> {
        verdicts(s, v).iter().map(|v| code(v).to_string()).collect()
    }

    fn weight_params(include_enforcing: bool) -> Params {
        with_param(
            params_of(&VmAffinityWeight::params()),
            "include_enforcing",
            ParamValue::Bool(include_enforcing),
        )
    }

    /// The weight's penalties over every host of `s`, through `penalty_all`.
    fn penalties(s: &Snapshot, v: &Vm, include_enforcing: bool) -> Vec<Penalty> {
        let params = weight_params(include_enforcing);
        let ctx = Context::new(s, &params, VmAffinityWeight::NAME);
        let mut out = Vec::new();
        VmAffinityWeight.penalty_all(&ctx, v, &all(s), &mut out);
        out
    }

    /// Hosts h1..h`n`.
    fn hosts(n: usize) -> Vec<Host> {
        (1..=n).map(|i| host(&format!("h{i}")).build()).collect()
    }

    #[test]
    fn without_a_group_of_the_vm_every_host_passes_and_weighs_zero() {
        let v = vm("v").build();
        let base = || {
            snapshot()
                .hosts(hosts(3))
                .vm(vm("a").current_host("h1"))
                .vm(vm("b").current_host("h2"))
        };
        // (case, snapshot)
        let cases = [
            ("no groups", base().build()),
            (
                "groups without the vm",
                base()
                    .affinity_group("apart", Negative, true, &["a", "b"])
                    .affinity_group("soft-apart", Negative, false, &["a", "b"])
                    .affinity_group("together", Positive, true, &["a", "b"])
                    .build(),
            ),
            (
                "groups with only the vm",
                base()
                    .affinity_group("alone", Negative, true, &["v"])
                    .affinity_group("alone-soft", Positive, false, &["v", "v"])
                    .build(),
            ),
            (
                "members placed nowhere",
                base()
                    .affinity_group("apart", Negative, true, &["v", "x", "y"])
                    .affinity_group("together", Positive, true, &["v", "x"])
                    .affinity_group("soft", Positive, false, &["v", "y"])
                    .build(),
            ),
        ];
        for (case, s) in cases {
            assert_eq!(codes(&s, &v), ["pass", "pass", "pass"], "{case}");
            assert_eq!(penalties(&s, &v, false), [0, 0, 0], "{case}");
            assert_eq!(penalties(&s, &v, true), [0, 0, 0], "{case}");
        }
    }

    #[test]
    fn negative_enforcing_group_rejects_hosts_where_a_member_runs_or_is_pending() {
        let v = vm("v").build();
        let group = |b: policy_sdk::testing::SnapshotBuilder| {
            b.affinity_group("db-spread", Negative, true, &["db-1", "v", "db-2"])
        };
        // (case, snapshot, expected codes for h1..h3)
        let cases = [
            (
                "member running",
                group(snapshot().hosts(hosts(3)).vm(vm("db-2").current_host("h2"))),
                ["pass", "negative_affinity", "pass"],
            ),
            (
                "member pending",
                group(
                    snapshot()
                        .host(host("h1"))
                        .host(host("h2"))
                        .host(host("h3").pending_vms(["other", "db-1"])),
                ),
                ["pass", "pass", "negative_affinity"],
            ),
            (
                "one running, one pending",
                group(
                    snapshot()
                        .host(host("h1").pending_vms(["db-1"]))
                        .host(host("h2"))
                        .host(host("h3"))
                        .vm(vm("db-2").current_host("h3")),
                ),
                ["negative_affinity", "pass", "negative_affinity"],
            ),
            (
                "member down with a stale current host",
                group(
                    snapshot()
                        .hosts(hosts(3))
                        .vm(vm("db-2").current_host("h1").status(VmStatus::Down)),
                ),
                ["pass", "pass", "pass"],
            ),
            (
                "member starting",
                group(
                    snapshot()
                        .hosts(hosts(3))
                        .vm(vm("db-2").current_host("h1").status(VmStatus::PoweringUp)),
                ),
                ["negative_affinity", "pass", "pass"],
            ),
            (
                "soft group is not the filter's business",
                snapshot()
                    .hosts(hosts(3))
                    .vm(vm("db-2").current_host("h2"))
                    .affinity_group("soft", Negative, false, &["v", "db-2"]),
                ["pass", "pass", "pass"],
            ),
        ];
        for (case, s, expected) in cases {
            assert_eq!(codes(&s.build(), &v), expected, "{case}");
        }

        let s = snapshot()
            .host(host("h1").pending_vms(["db-1"]))
            .host(host("h2"))
            .vm(vm("db-2").current_host("h1"))
            .vm(vm("db-3").current_host("h2"))
            .affinity_group("db-spread", Negative, true, &["v", "db-2", "db-1"])
            .build();
        assert_eq!(
            verdicts(&s, &v),
            [
                Verdict::reject(
                    "negative_affinity",
                    "group \"db-spread\": VM db-2 runs here, VM db-1 is pending here"
                ),
                Verdict::Pass,
            ]
        );
    }

    #[test]
    fn mass_start_of_a_negative_group_lands_each_member_on_its_own_host() {
        // Members are placed one after another; each placement becomes pending on its host
        // before the next decision, as the engine's pending manager does.
        let n = 5;
        let ids: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut s = snapshot()
            .hosts(hosts(n + 1))
            .affinity_group("spread", Negative, true, &id_refs)
            .build();
        let mut chosen = Vec::new();
        for id in &ids {
            let v = vm(id).build();
            let ok: Vec<usize> = verdicts(&s, &v)
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_pass())
                .map(|(i, _)| i)
                .collect();
            assert_eq!(ok.len(), n + 1 - chosen.len(), "{id}: {ok:?}");
            let pick = ok[0];
            s.hosts[pick].pending.vms.push(id.clone());
            chosen.push(pick);
        }
        let mut distinct = chosen.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), n, "{chosen:?}");

        // Once the members start running, the pending records go and the rule still holds.
        for (id, &h) in ids.iter().zip(&chosen) {
            s.hosts[h].pending.vms.clear();
            s.vms.push(vm(id).current_host(&s.hosts[h].id).build());
        }
        let again = verdicts(&s, &vm("m0").build());
        let passing: Vec<usize> = (0..=n).filter(|&i| again[i].is_pass()).collect();
        assert_eq!(passing, [chosen[0], n], "m0 may stay or take the free host");
    }

    #[test]
    fn positive_enforcing_group_keeps_the_vm_with_its_members() {
        let v = vm("v").build();
        let group = |b: policy_sdk::testing::SnapshotBuilder| {
            b.affinity_group("app", Positive, true, &["v", "web", "api"])
        };
        // (case, snapshot, expected codes for h1..h3)
        let cases = [
            (
                "no member placed",
                group(snapshot().hosts(hosts(3))),
                ["pass", "pass", "pass"],
            ),
            (
                "member on one host",
                group(snapshot().hosts(hosts(3)).vm(vm("web").current_host("h2"))),
                ["positive_affinity", "pass", "positive_affinity"],
            ),
            (
                "members on two hosts",
                group(
                    snapshot()
                        .hosts(hosts(3))
                        .vm(vm("web").current_host("h1"))
                        .vm(vm("api").current_host("h3")),
                ),
                ["pass", "positive_affinity", "pass"],
            ),
            (
                "member pending on one host",
                group(
                    snapshot()
                        .host(host("h1"))
                        .host(host("h2").pending_vms(["api"]))
                        .host(host("h3")),
                ),
                ["positive_affinity", "pass", "positive_affinity"],
            ),
            (
                "member on a host outside the snapshot",
                group(
                    snapshot()
                        .hosts(hosts(3))
                        .vm(vm("web").current_host("gone")),
                ),
                [
                    "positive_affinity",
                    "positive_affinity",
                    "positive_affinity",
                ],
            ),
        ];
        for (case, s, expected) in cases {
            assert_eq!(codes(&s.build(), &v), expected, "{case}");
        }

        let s = group(
            snapshot()
                .host(host("h1"))
                .host(host("h2"))
                .host(host("h3").pending_vms(["api"]))
                .vm(vm("web").current_host("h1")),
        )
        .build();
        assert_eq!(
            verdicts(&s, &v)[1],
            Verdict::reject(
                "positive_affinity",
                "group \"app\": members are on host(s) h1, h3"
            )
        );
    }

    #[test]
    fn pending_members_on_hosts_that_are_not_candidates_still_pin_a_positive_group() {
        let s = snapshot()
            .host(host("h1").pending_vms(["web"]))
            .host(host("h2"))
            .host(host("h3"))
            .affinity_group("app", Positive, true, &["v", "web"])
            .affinity_group("soft-app", Positive, false, &["v", "web"])
            .build();
        let v = vm("v").build();
        let ctx = Context::new(&s, &[], VmAffinityFilter::NAME);
        let mut out = Verdicts::default();
        VmAffinityFilter.check_all(&ctx, &v, &[2, 1], &mut out);
        let out = out.into_verdicts();
        let got: Vec<&str> = out.iter().map(code).collect();
        assert_eq!(got, ["positive_affinity", "positive_affinity"]);

        let params = weight_params(false);
        let ctx = Context::new(&s, &params, VmAffinityWeight::NAME);
        let mut out = Vec::new();
        VmAffinityWeight.penalty_all(&ctx, &v, &[2, 1], &mut out);
        assert_eq!(out, [1, 1]);
    }

    #[test]
    fn a_migrating_member_counts_on_its_source_and_its_destination() {
        let v = vm("v").build();
        let migrating = || {
            snapshot()
                .host(host("src"))
                .host(host("dst").pending_vms(["m"]))
                .host(host("other"))
                .vm(vm("m").current_host("src").status(VmStatus::MigratingFrom))
        };
        // (polarity, enforcing codes, soft penalties) for src, dst, other
        let cases = [
            (
                Negative,
                ["negative_affinity", "negative_affinity", "pass"],
                [1, 1, 0],
            ),
            (Positive, ["pass", "pass", "positive_affinity"], [0, 0, 1]),
        ];
        for (polarity, expected_codes, expected_penalties) in cases {
            let hard = migrating()
                .affinity_group("g", polarity, true, &["v", "m"])
                .build();
            assert_eq!(codes(&hard, &v), expected_codes, "{polarity:?}");
            let soft = migrating()
                .affinity_group("g", polarity, false, &["v", "m"])
                .build();
            assert_eq!(
                penalties(&soft, &v, false),
                expected_penalties,
                "{polarity:?}"
            );
        }
        let s = migrating()
            .affinity_group("g", Negative, true, &["v", "m"])
            .build();
        let details: Vec<String> = verdicts(&s, &v)
            .into_iter()
            .filter_map(|v| match v {
                Verdict::Reject { detail, .. } => Some(detail),
                Verdict::Pass => None,
            })
            .collect();
        assert_eq!(
            details,
            [
                "group \"g\": VM m runs here",
                "group \"g\": VM m is pending here"
            ]
        );
    }

    #[test]
    fn a_member_both_running_and_pending_on_one_host_counts_once_as_running() {
        let s = snapshot()
            .host(host("h1").pending_vms(["m"]))
            .host(host("h2"))
            .vm(vm("m").current_host("h1"))
            .vm(vm("m").current_host("h1"))
            .affinity_group("apart", Negative, true, &["v", "m", "m"])
            .affinity_group("soft-apart", Negative, false, &["v", "m", "m"])
            .build();
        let v = vm("v").build();
        assert_eq!(
            verdicts(&s, &v)[0],
            Verdict::reject("negative_affinity", "group \"apart\": VM m runs here")
        );
        assert_eq!(penalties(&s, &v, false), [1, 0]);
    }

    #[test]
    fn the_vm_being_scheduled_never_counts_as_a_member() {
        // v runs on h1 and is pending on h2 (it is being migrated or rescheduled).
        let s = |polarity, enforcing| {
            snapshot()
                .host(host("h1"))
                .host(host("h2").pending_vms(["v"]))
                .host(host("h3"))
                .vm(vm("v").current_host("h1"))
                .affinity_group("g", polarity, enforcing, &["v", "nowhere"])
                .build()
        };
        let v = vm("v").build();
        for polarity in [Negative, Positive] {
            assert_eq!(
                codes(&s(polarity, true), &v),
                ["pass", "pass", "pass"],
                "{polarity:?}"
            );
            assert_eq!(
                penalties(&s(polarity, false), &v, false),
                [0, 0, 0],
                "{polarity:?}"
            );
        }
        // With another member placed, v's own places still do not count.
        let s = snapshot()
            .host(host("h1"))
            .host(host("h2").pending_vms(["v"]))
            .host(host("h3"))
            .vm(vm("v").current_host("h1"))
            .vm(vm("w").current_host("h3"))
            .affinity_group("apart", Negative, true, &["v", "w"])
            .affinity_group("soft-together", Positive, false, &["v", "w"])
            .build();
        assert_eq!(codes(&s, &v), ["pass", "pass", "negative_affinity"]);
        assert_eq!(penalties(&s, &v, false), [1, 1, 0]);
    }

    #[test]
    fn soft_groups_give_exact_penalties() {
        let v = vm("v").build();
        // a, b on h1; c pending on h2; d on h3 and pending on h1 (migrating to h1).
        let base = || {
            snapshot()
                .host(host("h1").pending_vms(["d"]))
                .host(host("h2").pending_vms(["c"]))
                .host(host("h3"))
                .host(host("h4"))
                .vm(vm("a").current_host("h1"))
                .vm(vm("b").current_host("h1"))
                .vm(vm("d").current_host("h3").status(VmStatus::MigratingFrom))
        };
        // (case, groups as (polarity, members), expected penalties for h1..h4)
        type Groups = &'static [(AffinityPolarity, &'static [&'static str])];
        let cases: [(&str, Groups, [Penalty; 4]); 7] = [
            (
                "negative: members on the host",
                &[(Negative, &["v", "a", "b", "c"])],
                [2, 1, 0, 0],
            ),
            (
                "negative: migrating member on both hosts",
                &[(Negative, &["v", "d"])],
                [1, 0, 1, 0],
            ),
            (
                "positive: placed members not on the host",
                &[(Positive, &["v", "a", "b", "c"])],
                [1, 2, 3, 3],
            ),
            (
                "positive: migrating member is on both hosts",
                &[(Positive, &["v", "a", "d"])],
                [0, 2, 1, 2],
            ),
            (
                "positive: unplaced members do not count",
                &[(Positive, &["v", "c", "ghost"])],
                [1, 0, 1, 1],
            ),
            (
                "positive: nobody placed",
                &[(Positive, &["v", "ghost"])],
                [0, 0, 0, 0],
            ),
            (
                "several groups add up",
                &[
                    (Negative, &["v", "a", "b"]),
                    (Positive, &["v", "c"]),
                    (Negative, &["a", "v", "d"]),
                ],
                [2 + 1 + 2, 0, 1 + 1, 1],
            ),
        ];
        for (case, groups, expected) in cases {
            let mut b = base();
            for (i, (polarity, members)) in groups.iter().enumerate() {
                b = b.affinity_group(&format!("g{i}"), *polarity, false, members);
            }
            let s = b.build();
            assert_eq!(penalties(&s, &v, false), expected, "{case}");
            assert_eq!(
                penalties(&s, &v, true),
                expected,
                "{case} (include_enforcing)"
            );
        }
    }

    #[test]
    fn include_enforcing_makes_the_weight_score_enforcing_groups_too() {
        let spec = &VmAffinityWeight::params()[0];
        assert_eq!(spec.name, "include_enforcing");
        assert_eq!(spec.default, ParamValue::Bool(false));

        let s = snapshot()
            .hosts(hosts(3))
            .vm(vm("a").current_host("h1"))
            .vm(vm("b").current_host("h2"))
            .affinity_group("hard-apart", Negative, true, &["v", "a"])
            .affinity_group("soft-together", Positive, false, &["v", "b"])
            .build();
        let v = vm("v").build();
        // (include_enforcing, expected penalties for h1..h3)
        let cases = [(false, [1, 0, 1]), (true, [2, 0, 1])];
        for (include, expected) in cases {
            assert_eq!(penalties(&s, &v, include), expected, "{include}");
        }
        // The filter only looks at the enforcing group.
        assert_eq!(codes(&s, &v), ["negative_affinity", "pass", "pass"]);
    }

    #[test]
    fn a_host_breaking_several_groups_is_reported_for_the_first_group() {
        let s = snapshot()
            .hosts(hosts(4))
            .vm(vm("a").current_host("h1"))
            .vm(vm("b").current_host("h2"))
            .vm(vm("c").current_host("h1"))
            .affinity_group("together", Positive, true, &["v", "a", "b"])
            .affinity_group("apart", Negative, true, &["c", "v"])
            .affinity_group("apart-too", Negative, true, &["v", "b"])
            .build();
        let v = vm("v").build();
        assert_eq!(
            verdicts(&s, &v),
            [
                Verdict::reject("negative_affinity", "group \"apart\": VM c runs here"),
                Verdict::reject("negative_affinity", "group \"apart-too\": VM b runs here"),
                Verdict::reject(
                    "positive_affinity",
                    "group \"together\": members are on host(s) h1, h2"
                ),
                Verdict::reject(
                    "positive_affinity",
                    "group \"together\": members are on host(s) h1, h2"
                ),
            ]
        );
    }

    #[test]
    fn unknown_member_ids_are_simply_absent() {
        let s = snapshot()
            .hosts(hosts(2))
            .vm(vm("a").current_host("h2"))
            .affinity_group("apart", Negative, true, &["v", "ghost", "a", "phantom"])
            .affinity_group("together", Positive, false, &["v", "ghost", "a"])
            .build();
        let v = vm("v").build();
        assert_eq!(codes(&s, &v), ["pass", "negative_affinity"]);
        assert_eq!(penalties(&s, &v, false), [1, 0]);
    }

    #[test]
    fn long_reject_details_name_five_and_count_the_rest() {
        let members: Vec<String> = (0..8).map(|i| format!("m{i}")).collect();
        let mut listed: Vec<&str> = vec!["v"];
        listed.extend(members.iter().map(String::as_str));
        let mut b = snapshot().hosts(hosts(9));
        for m in &members {
            b = b.vm(vm(m).current_host("h1"));
        }
        let apart = b
            .clone()
            .affinity_group("apart", Negative, true, &listed)
            .build();
        let v = vm("v").build();
        assert_eq!(
            verdicts(&apart, &v)[0],
            Verdict::reject(
                "negative_affinity",
                "group \"apart\": VM m0 runs here, VM m1 runs here, VM m2 runs here, \
                 VM m3 runs here, VM m4 runs here and 3 more"
            )
        );

        let mut b = snapshot().hosts(hosts(9));
        for (i, m) in members.iter().enumerate() {
            b = b.vm(vm(m).current_host(&format!("h{}", i + 2)));
        }
        let together = b
            .affinity_group("together", Positive, true, &listed)
            .build();
        assert_eq!(
            verdicts(&together, &v)[0],
            Verdict::reject(
                "positive_affinity",
                "group \"together\": members are on host(s) h2, h3, h4, h5, h6 and 3 more"
            )
        );
    }

    /// A random cluster: hosts with pending VMs, VMs running (or migrating, or down with a
    /// stale host), and groups of every kind over those VMs and some unknown ids.
    fn random_snapshot(next: &mut impl FnMut(u64) -> u64) -> Snapshot {
        let n_hosts = 1 + next(12) as usize;
        let n_vms = next(30) as usize;
        let id = |i: u64| format!("vm{i}");
        let mut b = snapshot();
        for h in 0..n_hosts {
            let pending: Vec<String> = (0..next(4)).map(|_| id(next(34))).collect();
            b = b.host(host(&format!("h{h}")).pending_vms(pending));
        }
        for i in 0..n_vms {
            let mut v = vm(&id(i as u64));
            if next(4) > 0 {
                v = v.current_host(&format!("h{}", next(n_hosts as u64 + 1)));
                v = v.status(match next(5) {
                    0 => VmStatus::MigratingFrom,
                    1 => VmStatus::Down,
                    2 => VmStatus::WaitForLaunch,
                    _ => VmStatus::Up,
                });
            }
            b = b.vm(v);
        }
        for g in 0..next(5) {
            let members: Vec<String> = (0..next(8)).map(|_| id(next(34))).collect();
            let mut members: Vec<&str> = members.iter().map(String::as_str).collect();
            if next(4) > 0 {
                members.push("v");
            }
            let polarity = if next(2) == 0 { Negative } else { Positive };
            b = b.affinity_group(&format!("g{g}"), polarity, next(2) == 0, &members);
        }
        b.build()
    }

    #[test]
    fn check_all_and_penalty_all_match_the_per_host_answers_on_random_snapshots() {
        let mut rng = XorShift::new(0x5eed_aff1);
        let mut next = move |bound: u64| rng.below(bound);
        let mut seen = std::collections::BTreeMap::new();
        let mut nonzero_penalties = 0;
        for round in 0..2_000 {
            let s = random_snapshot(&mut next);
            // The VM being scheduled is often one of the cluster's VMs (running or pending
            // somewhere, listed in groups at random), otherwise the `v` the groups list.
            let v = if next(3) == 0 {
                vm("v").build()
            } else {
                vm(&format!("vm{}", next(34))).build()
            };
            // A random subset of the hosts, in random order.
            let mut candidates = all(&s);
            for i in (1..candidates.len()).rev() {
                candidates.swap(i, next(i as u64 + 1) as usize);
            }
            candidates.truncate(1 + next(candidates.len() as u64) as usize);

            let ctx = Context::new(&s, &[], VmAffinityFilter::NAME);
            let mut out = Verdicts::default();
            VmAffinityFilter.check_all(&ctx, &v, &candidates, &mut out);
            let out = out.into_verdicts();
            let one_by_one: Vec<Verdict> = candidates
                .iter()
                .map(|&i| VmAffinityFilter.check(&ctx, &v, ctx.host(i)))
                .collect();
            assert_eq!(out, one_by_one, "round {round}: {s:?}");
            for verdict in &out {
                *seen.entry(code(verdict).to_string()).or_insert(0) += 1;
            }

            for include in [false, true] {
                let params = weight_params(include);
                let ctx = Context::new(&s, &params, VmAffinityWeight::NAME);
                let mut out = Vec::new();
                VmAffinityWeight.penalty_all(&ctx, &v, &candidates, &mut out);
                let one_by_one: Vec<Penalty> = candidates
                    .iter()
                    .map(|&i| VmAffinityWeight.penalty(&ctx, &v, ctx.host(i)))
                    .collect();
                assert_eq!(out, one_by_one, "round {round}, include {include}: {s:?}");
                nonzero_penalties += out.iter().filter(|&&p| p != 0).count();
            }
        }
        // The random clusters exercise every outcome.
        for c in ["pass", "negative_affinity", "positive_affinity"] {
            assert!(seen.get(c).copied().unwrap_or(0) > 100, "{c}: {seen:?}");
        }
        assert!(nonzero_penalties > 100, "{nonzero_penalties}");
    }

    #[test]
    fn manifest_declares_the_two_units_in_export_order() {
        let manifest = units().manifest();
        manifest.validate().unwrap();
        assert_eq!(manifest.module, "affinity");
        let names: Vec<&str> = manifest.units.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["vm-affinity", "vm-affinity-weight"]);
        assert!(manifest.units.iter().all(|u| !u.description.is_empty()));
    }

    #[test]
    fn evaluate_returns_one_result_per_candidate_in_candidate_order() {
        let s = snapshot()
            .host(host("h1"))
            .host(host("h2").pending_vms(["b"]))
            .host(host("h3"))
            .vm(vm("a").current_host("h1"))
            .affinity_group("apart", Negative, true, &["v", "a", "b"])
            .affinity_group("soft-apart", Negative, false, &["v", "a"])
            .build();
        let set = units();
        let manifest = set.manifest();
        let call = |unit: u32| {
            let request = CallRequest {
                unit,
                epoch: s.epoch,
                params: params_of(&manifest.units[unit as usize].params),
                vm: Some(vm("v").build()),
                candidates: vec![2, 0, 1],
                details: true,
            };
            set.evaluate(&s, request.as_call())
        };
        match call(0) {
            CallResponse::Verdicts(v) => {
                let v = v.into_verdicts();
                let got: Vec<&str> = v.iter().map(code).collect();
                assert_eq!(got, ["pass", "negative_affinity", "negative_affinity"]);
            }
            other => panic!("expected verdicts, got {other:?}"),
        }
        match call(1) {
            CallResponse::Penalties(p) => assert_eq!(p, [0, 1, 0]),
            other => panic!("expected penalties, got {other:?}"),
        }
    }
}
