//! The writer's debug log. In a test binary of its own: `tracing` caches per call site
//! whether anyone listens, and a test running at the same time on another thread without
//! a subscriber would make the debug line look unwanted to this one's thread-local
//! subscriber.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::*;
use taskflow::{SubmitOptions, TaskContext, TaskError};

/// Collects what a `tracing` subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// With `taskflow::writer=debug`, every committed batch is logged with its op mix and its
/// duration (what the benchmarks read to see where latency goes).
#[tokio::test]
async fn the_writer_logs_each_batch_at_debug_level() {
    use tracing_subscriber::util::SubscriberInitExt;
    let captured = Captured::default();
    let sink = captured.clone();
    // This test's runtime has one thread, so a thread-local subscriber sees the writer.
    let _guard = tracing_subscriber::fmt()
        .with_env_filter("taskflow::writer=debug")
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish()
        .set_default();
    let dir = tempfile::tempdir().unwrap();
    let flow = start_at(dir.path(), fast_config().run_tasks(false)).await;
    flow.register("noop", |_ctx: TaskContext, n: u32| async move {
        Ok::<_, TaskError>(n)
    })
    .unwrap();
    flow.submit("noop", 1u32, SubmitOptions::new())
        .await
        .unwrap();
    flow.shutdown().await;
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("batch written") && l.contains("submits=1"))
        .unwrap_or_else(|| panic!("no debug line for the submit's batch in:\n{text}"));
    assert!(line.contains("ops=1") && line.contains("ok=true"), "{line}");
    assert!(line.contains("micros="), "{line}");
}
