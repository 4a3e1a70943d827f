//! dev-playground: the example appkit server.
//!
//! Serves the `demo` plugin (DESIGN.md §9) and a web page that starts a count, shows its
//! progress live, re-attaches after a reload, and can stop, resume and cancel it.
//!
//! ```text
//! cargo run -p dev-playground
//! # INFO appkit::app: listening on http://0.0.0.0:8000
//! # open http://localhost:8000/
//! ```
//!
//! Configuration comes from the environment (docs/configuration.md). Logs go to stderr;
//! the process exits 0 after a clean shutdown and 1 when start-up fails or the shutdown
//! deadline passes.

use std::io::IsTerminal;
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the tokio runtime");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(run()) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e:#}");
            1
        }
    };
    // Exit now: a handler that ignores cancellation must not keep the process alive.
    std::process::exit(code)
}

async fn run() -> anyhow::Result<()> {
    let test_tasks = std::env::var("DEV_PLAYGROUND_TEST_TASKS").is_ok_and(|v| v == "1");
    dev_playground::app(test_tasks)
        .build_from_env()?
        .run()
        .await?;
    Ok(())
}

/// Installs the log subscriber: plain text on stderr, filtered by `RUST_LOG` (default
/// `info`). The one place to swap for `appkit_telemetry::init` when it lands.
fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
