//! A real PostgreSQL for tests: each test gets a database of its own on the server that
//! `WASMSCHED_TEST_POSTGRES` names (a `postgres://` URL of a role allowed to create
//! databases). `scripts/with-postgres` starts a throw-away server and sets it.
//!
//! Tests that need it carry `#[cfg_attr(not(postgres_tests), ignore = ...)]` (the cfg is
//! set by the crate's build script when the variable is set), so without a server they
//! are reported as ignored with [`HOW_TO_RUN`], never as passed; with the variable set
//! they run, and fail when the server cannot be reached.

use std::process::Command;

/// The environment variable naming the test server.
pub const ENV: &str = "WASMSCHED_TEST_POSTGRES";

/// The one command that runs the PostgreSQL tests on a machine with PostgreSQL's
/// packages installed.
pub const HOW_TO_RUN: &str = "scripts/with-postgres cargo test --workspace";

/// Creates an empty database named `wasmsched_<name>_<process id>` (dropping one left
/// by an earlier run) and returns its URL. Panics, naming the cause, when
/// [`ENV`] is unset or the server refuses.
pub fn fresh_database(name: &str) -> String {
    let admin = std::env::var(ENV).unwrap_or_else(|_| {
        panic!("{ENV} is not set; run the PostgreSQL tests with: {HOW_TO_RUN}")
    });
    let database = format!(
        "wasmsched_{}_{}",
        name.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
        std::process::id()
    );
    for statement in [
        format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"),
        format!("CREATE DATABASE {database}"),
    ] {
        let out = Command::new("psql")
            .args([
                admin.as_str(),
                "-v",
                "ON_ERROR_STOP=1",
                "-q",
                "-c",
                &statement,
            ])
            .output()
            .unwrap_or_else(|e| panic!("psql (PostgreSQL's client) could not run: {e}"));
        assert!(
            out.status.success(),
            "{statement}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    with_database(&admin, &database)
}

/// `url` with its database replaced by `database` (query parameters kept).
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority_end = base
        .find("://")
        .map(|i| i + 3)
        .and_then(|start| base[start..].find('/').map(|i| start + i))
        .unwrap_or(base.len());
    let mut out = format!("{}/{database}", &base[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_is_replaced_and_query_kept() {
        for (url, want) in [
            (
                "postgres://u@127.0.0.1:5432/postgres",
                "postgres://u@127.0.0.1:5432/t",
            ),
            (
                "postgres://u@127.0.0.1:5432",
                "postgres://u@127.0.0.1:5432/t",
            ),
            (
                "postgres://u@localhost/postgres?host=/tmp/pg",
                "postgres://u@localhost/t?host=/tmp/pg",
            ),
        ] {
            assert_eq!(with_database(url, "t"), want, "{url}");
        }
    }
}
