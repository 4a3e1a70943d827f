//! dev-playground: the example appkit server.
//!
//! Serves the `demo` plugin and a web page that starts a count, shows its
//! progress live, re-attaches after a reload, and can stop, resume and cancel it.
//!
//! ```text
//! cargo run -p dev-playground
//! # INFO appkit::app: listening on http://0.0.0.0:8000
//! # open http://localhost:8000/
//! ```
//!
//! Configuration comes from the environment (docs/configuration.md). Telemetry is the
//! host's: logs go to stdout (JSON with `APPKIT_ENV=production`), and traces, metrics and
//! logs are exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. The process
//! exits 0 after a clean shutdown (an unreachable collector included) and 1 when start-up
//! fails or the shutdown deadline passes.

use std::process::ExitCode;

/// jemalloc instead of the system allocator. With upstream hyper an idle SSE bridge held
/// two 8 KiB connection buffers and touched a few hundred bytes of each; jemalloc keeps
/// blocks of that size page-aligned in runs of their own, which is the likely reason fewer
/// of their pages became resident (a reading of the numbers, not a page-level profile).
/// Measured with `appkit-bench sse` (10,000 idle bridges): 12.2 KiB of server RSS per
/// bridge, 15.8–15.9 with glibc's malloc (the workspace's patched hyper, `vendor/`, has
/// since removed those buffers: 7.6 KiB); and 10.3 µs of server CPU per `/health` request
/// instead of 11.5–11.7 (`docs/benchmarks.md`, SSE memory). It serves C's `malloc` too
/// (the workspace enables `unprefixed_malloc_on_supported_platforms`), so SQLite's pages
/// and statements come from it as well: +5 % on the engine bench over glibc for those.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(run()) {
        Ok(()) => 0,
        Err(e) => {
            report(&e);
            1
        }
    };
    // Exit now, without dropping the runtime: dropping it waits for every blocking task,
    // and neither a handler that ignores cancellation nor an OTel provider still giving up
    // on an unreachable collector (its shutdown thread can outlive the bounded flush by
    // seconds) may keep the process alive past the shutdown deadline.
    std::process::exit(code)
}

/// Logs a fatal error, on stderr when it came before the log subscriber was installed
/// (a configuration error, a failed telemetry start).
fn report(e: &anyhow::Error) {
    if tracing::dispatcher::has_been_set() {
        tracing::error!("{e:#}");
    } else {
        eprintln!("error: {e:#}");
    }
}

async fn run() -> anyhow::Result<()> {
    let test_tasks = std::env::var("DEV_PLAYGROUND_TEST_TASKS").is_ok_and(|v| v == "1");
    dev_playground::app(test_tasks)
        .build_from_env()?
        .run()
        .await?;
    Ok(())
}
