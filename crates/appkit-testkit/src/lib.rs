//! The test kit every test of this workspace shares (unpublished).
//!
//! - [`server`]: start the real dev-playground binary on a free port with its own
//!   environment, send it signals, read its logs, sample its memory and descriptors;
//! - [`http`]: one raw HTTP/1.1 request per connection, for tests where the bytes on the
//!   wire are the point (use [`http_client`] elsewhere);
//! - [`sse`]: an SSE client over raw TCP: frames with id, event and data, comments,
//!   `Last-Event-ID` re-attach, and errors instead of panics for chaos tests;
//! - [`otlp`]: a real OTLP/HTTP receiver on loopback that decodes what exporters send;
//! - [`pg`]: fresh Postgres schemas (and login roles) of a test's own at
//!   `TEST_DATABASE_URL`, swept once their test process is gone.
//!
//! It depends on no workspace crate, so any crate may dev-depend on it. Everything here
//! panics on failure (it runs inside tests), and nothing sleeps to "wait long enough":
//! every wait polls a condition under [`DEADLINE`].

pub mod http;
pub mod otlp;
pub mod pg;
pub mod server;
pub mod sse;

use std::error::Error;
use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

pub use http::{Response, request};
pub use server::{Logs, ProcStats, Server, base_env, binary, run_to_exit};
pub use sse::{Frame, History, Item, Received, Sse, SseError, follow, ticks};

/// Generous bound for anything to happen on a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The non-negative integer in environment variable `name` (a long mode's size, such as
/// `CHAOS_KILLS`), `None` when it is unset.
///
/// # Panics
/// When it is set to anything else: a typo must not silently run the short mode.
pub fn env_num(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse() {
        Ok(n) => Some(n),
        Err(e) => panic!("{name}={value:?}: expected a non-negative integer ({e})"),
    }
}

/// Fresh temporary directory for one test's store (removed when dropped).
///
/// # Panics
/// When no temporary directory can be made.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// `e` and every `source()` below it, joined with `: ` (what `anyhow`'s `{:#}` prints),
/// so a panic message names the root cause and not only the outermost layer.
pub fn error_chain(e: &(dyn Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.ends_with(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

/// Polls `check` every few milliseconds until it yields `Some`, within `within`.
///
/// # Panics
/// When `within` passes first, naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A shared `reqwest` client for tests where a raw client is not the point (status
/// polls, JSON calls): no proxy, a per-request timeout of [`DEADLINE`].
///
/// # Panics
/// When the client cannot be built (no TLS provider).
pub fn http_client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .no_proxy()
            .timeout(DEADLINE)
            .build()
            .expect("reqwest client")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("cannot open the store")
        }
    }

    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn error_chain_names_every_cause_once() {
        let e = Outer(std::io::Error::other("disk full"));
        assert_eq!(error_chain(&e), "cannot open the store: disk full");
        let flat = std::io::Error::other("flat");
        assert_eq!(error_chain(&flat), "flat");
    }
}
