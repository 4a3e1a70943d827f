//! `appkit-bench`: benchmarks for appkit-rs.
//!
//! Each mode runs one experiment, prints progress to stderr and exactly one JSON object as
//! the last line of stdout, so scripts can read it with `tail -n1`.
//!
//! ```text
//! cargo run --release -p appkit-bench -- engine [--tasks N] [--concurrency C] [--rate R]
//! cargo build --release -p dev-playground && cargo run --release -p appkit-bench -- sse
//! ```
//!
//! Modes:
//! - `engine`: no-op tasks through the TaskFlow engine on a SQLite store in a temporary
//!   directory; see [`engine`] for exactly what each number measures.
//! - `sse`: idle SSE bridges against the real release `dev-playground` server (build it
//!   first); see [`sse`].
#![allow(clippy::print_stdout)]

mod args;
mod engine;
mod sse;
mod stats;

use anyhow::{Result, bail};

const USAGE: &str = "usage: appkit-bench <mode> [flags]

modes:
  engine   no-op tasks through TaskFlow on SQLite (temp dir)
           --tasks N          tasks in the throughput phase (default 50000)
           --concurrency C    concurrent submitters in the throughput phase (default 64)
           --slots S          engine global concurrency slots (default 64)
           --rate R           submits/s in the paced latency phase, 0 to skip (default 2000)
           --latency-secs T   length of the latency phase in seconds (default 3)
           --store S          sqlite (default) | postgres (a fresh schema at TEST_DATABASE_URL)
           --workload W       e2e (default) | submit (no executor) | drain (backlog, then run)
           --history H        first fill the store with H completed tasks (default 0)
           --events E         custom events each task emits before it returns (default 0)
           --steps S          checkpointed steps each task runs before it returns (default 0)
           RUST_LOG=taskflow::writer=debug  one stderr line per batch: its ops and micros
  sse      idle SSE bridges against the release dev-playground binary (build it first)
           --bridges N            bridges held open for the memory phase (default 10000)
           --shutdown-bridges N   bridges open at SIGTERM in the shutdown phase (default 1000)
           --connect-concurrency C  bridges opened at once (default 128)";

/// The allocator the server binary uses (`apps/dev-playground`), so the engine is measured
/// as it is shipped. With glibc's malloc the same runs were 7-8 % slower at 20k tasks and
/// 19 % slower at 200k (`docs/benchmarks.md`). It replaces C's `malloc` as well (see the
/// workspace `Cargo.toml`), so SQLite allocates from it too: a further +5 % (20k tasks).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> Result<()> {
    // `RUST_LOG=taskflow::writer=debug` shows every batch the engine writes (its ops and
    // how long it took), on stderr with the progress lines.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
    }
    let mut argv = std::env::args().skip(1);
    let mode = argv.next();
    let report = match mode.as_deref() {
        Some("engine") => {
            let opts = engine::Options::parse(args::Flags::parse(argv)?)?;
            runtime()?.block_on(engine::run(opts))?
        }
        Some("sse") => {
            let opts = sse::Options::parse(args::Flags::parse(argv)?)?;
            runtime()?.block_on(sse::run(opts))?.to_string()
        }
        Some("-h" | "--help") | None => {
            eprintln!("{USAGE}");
            return Ok(());
        }
        Some(other) => bail!("unknown mode `{other}`\n\n{USAGE}"),
    };
    println!("{report}");
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
