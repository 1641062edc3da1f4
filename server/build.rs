//! `cfg(postgres_tests)` when `WASMSCHED_TEST_POSTGRES` names a PostgreSQL server to test
//! against: the tests that need one run then, and are reported as ignored (with the
//! command that enables them) otherwise, never as passed.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(postgres_tests)");
    println!("cargo::rerun-if-env-changed=WASMSCHED_TEST_POSTGRES");
    if std::env::var_os("WASMSCHED_TEST_POSTGRES").is_some_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=postgres_tests");
    }
}
