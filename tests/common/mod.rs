//! Harness for the end-to-end tests: the shared test kit (`crates/appkit-testkit`) under
//! the names the tests use. Start the real dev-playground binary on an ephemeral port,
//! talk HTTP and SSE to it, send it signals, read its logs.
//!
//! Nothing here sleeps to "wait enough": every wait polls a condition under a deadline.
//! Postgres helpers: `#[path = "common/pg.rs"] mod pg;` beside `mod common;`.

#![allow(dead_code, unused_imports, unreachable_pub, missing_docs)]

pub use appkit_testkit::otlp;
pub use appkit_testkit::server::attach;
pub use appkit_testkit::{
    DEADLINE, Frame, History, Item, Logs, ProcStats, Received, Response, Server, Sse, SseError,
    base_env, env_num, error_chain, follow, http_client, request, run_to_exit, temp_dir, ticks,
    wait_for,
};

/// The binary under test, as cargo built it for this package's tests.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_dev-playground")
}
