//! Postgres helpers for the end-to-end tests (from the shared test kit): a schema and a
//! login role of the test's own on the server at `TEST_DATABASE_URL`, servers started on
//! it, the stored event log, and a real outage for just this test's connections.
//!
//! Include it beside the harness with `mod common; #[path = "common/pg.rs"] mod pg;`.

#![allow(dead_code, unused_imports, unreachable_pub, missing_docs)]

pub use appkit_testkit::pg::*;
