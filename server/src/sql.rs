//! The SQL of the stores' writes, written once for both databases: SQLite and PostgreSQL
//! both read `$1`, `$2`, ... placeholders (numbered in order of appearance) and
//! `INSERT ... ON CONFLICT ... DO UPDATE`. Each store only binds and executes.

use crate::store::{StoredDoc, StoredPlacement, Write};
use std::borrow::Cow;

/// One statement and its text parameters, in placeholder order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement<'a> {
    /// The SQL text.
    pub sql: Cow<'static, str>,
    /// The parameters, bound as text.
    pub params: Vec<Cow<'a, str>>,
}

fn statement<'a>(sql: impl Into<Cow<'static, str>>, params: Vec<Cow<'a, str>>) -> Statement<'a> {
    Statement {
        sql: sql.into(),
        params,
    }
}

fn text(value: &str) -> Cow<'_, str> {
    Cow::Borrowed(value)
}

/// The statements that apply `write`, in order. `next_seq` is the SQL expression that
/// numbers a new placement after every earlier one (each database has its own).
pub fn statements<'a>(write: &'a Write, next_seq: &str) -> Vec<Statement<'a>> {
    let policy_json = |policy| Cow::Owned(serde_json::to_string(policy).unwrap_or_default());
    match write {
        Write::PutCluster {
            cluster,
            snapshot,
            policy,
        } => {
            let mut out = vec![statement(
                "INSERT INTO clusters (id, snapshot, policy) VALUES ($1, $2, $3) \
                 ON CONFLICT (id) DO UPDATE SET snapshot = excluded.snapshot, \
                 policy = excluded.policy",
                vec![text(cluster), text(snapshot), policy_json(policy)],
            )];
            out.extend(clear_docs(cluster));
            out
        }
        Write::PutSnapshot { cluster, snapshot } => {
            let mut out = vec![statement(
                "UPDATE clusters SET snapshot = $1 WHERE id = $2",
                vec![text(snapshot), text(cluster)],
            )];
            out.extend(clear_docs(cluster));
            out
        }
        Write::PutPolicy { cluster, policy } => vec![statement(
            "UPDATE clusters SET policy = $1 WHERE id = $2",
            vec![policy_json(policy), text(cluster)],
        )],
        Write::Reserve { cluster, placement } => vec![statement(
            format!(
                "INSERT INTO placements (cluster, vm, host, kind, vm_doc, seq) \
                 VALUES ($1, $2, $3, $4, $5, {next_seq}) \
                 ON CONFLICT (cluster, vm) DO UPDATE SET host = excluded.host, \
                 kind = excluded.kind, vm_doc = excluded.vm_doc, seq = excluded.seq"
            ),
            vec![
                text(cluster),
                text(&placement.vm),
                text(&placement.host),
                text(&placement.kind),
                text(&placement.vm_doc),
            ],
        )],
        Write::Release { cluster, vm } => vec![statement(
            "DELETE FROM placements WHERE cluster = $1 AND vm = $2",
            vec![text(cluster), text(vm)],
        )],
        Write::PutHost { cluster, host } => vec![put_doc("host_docs", "host", cluster, host)],
        Write::PutVm { cluster, vm } => vec![put_doc("vm_docs", "vm", cluster, vm)],
        Write::PutMemoryChange {
            cluster,
            vm,
            record: Some(record),
        } => vec![statement(
            "INSERT INTO memory_changes (cluster, vm, record) VALUES ($1, $2, $3) \
             ON CONFLICT (cluster, vm) DO UPDATE SET record = excluded.record",
            vec![text(cluster), text(vm), text(record)],
        )],
        Write::PutMemoryChange {
            cluster,
            vm,
            record: None,
        } => vec![statement(
            "DELETE FROM memory_changes WHERE cluster = $1 AND vm = $2",
            vec![text(cluster), text(vm)],
        )],
    }
}

/// Creates or replaces one document of `cluster` in `table` (keyed by `key`).
fn put_doc<'a>(table: &str, key: &str, cluster: &'a str, doc: &'a StoredDoc) -> Statement<'a> {
    statement(
        format!(
            "INSERT INTO {table} (cluster, {key}, doc) VALUES ($1, $2, $3) \
             ON CONFLICT (cluster, {key}) DO UPDATE SET doc = excluded.doc"
        ),
        vec![text(cluster), text(&doc.id), text(&doc.doc)],
    )
}

/// A whole snapshot was written: the host and VM documents written before it are in it.
fn clear_docs(cluster: &str) -> [Statement<'_>; 2] {
    ["host_docs", "vm_docs"].map(|table| {
        statement(
            format!("DELETE FROM {table} WHERE cluster = $1"),
            vec![text(cluster)],
        )
    })
}

/// The documents of one cluster in `table` (keyed by `key`), by id: `key, doc`.
pub fn select_docs(table: &str, key: &str) -> String {
    format!("SELECT {key}, doc FROM {table} WHERE cluster = $1 ORDER BY {key}")
}

/// A cluster's placements in the order they were written: `vm, host, kind, vm_doc`.
pub const SELECT_PLACEMENTS: &str =
    "SELECT vm, host, kind, vm_doc FROM placements WHERE cluster = $1 ORDER BY seq";

/// A cluster's memory changes in flight, by VM: `record`.
pub const SELECT_MEMORY_CHANGES: &str =
    "SELECT record FROM memory_changes WHERE cluster = $1 ORDER BY vm";

/// A row of [`SELECT_PLACEMENTS`], from either database.
pub fn placement_of<R>(row: &R) -> StoredPlacement
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    StoredPlacement {
        vm: row.get(0),
        host: row.get(1),
        kind: row.get(2),
        vm_doc: row.get(3),
    }
}

/// A row of [`select_docs`], from either database.
pub fn doc_of<R>(row: &R) -> StoredDoc
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    StoredDoc {
        id: row.get(0),
        doc: row.get(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoredPlacement;

    #[test]
    fn placeholders_are_numbered_in_order_and_match_the_parameters() {
        let reserve = Write::Reserve {
            cluster: "c".into(),
            placement: StoredPlacement {
                vm: "v".into(),
                host: "h".into(),
                vm_doc: "{}".into(),
                kind: "{}".into(),
            },
        };
        let cluster = Write::PutCluster {
            cluster: "c".into(),
            snapshot: "{}".into(),
            policy: Default::default(),
        };
        for write in [reserve, cluster] {
            for s in statements(&write, "7") {
                let count = (1..=9).filter(|n| s.sql.contains(&format!("${n}"))).count();
                assert_eq!(count, s.params.len(), "{}", s.sql);
                for n in 1..count {
                    let (at, next) = (
                        s.sql.find(&format!("${n}")),
                        s.sql.find(&format!("${}", n + 1)),
                    );
                    assert!(at < next, "{}: ${n} before ${}", s.sql, n + 1);
                }
            }
        }
    }
}
