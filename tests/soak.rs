//! Soak: browsers attached for the whole run while tasks arrive at a steady rate, with the
//! server's RSS, open file descriptors and task-store size (SQLite file plus `-wal`)
//! sampled all along. At the end nothing may keep growing:
//!
//! - RSS: the last third's peak ≤ the middle third's peak × 1.10 + 8 MiB;
//! - open descriptors: the last third's peak ≤ the middle third's peak × 1.10 + 16;
//! - the `-wal` file: the last third's peak ≤ the middle third's peak × 1.25 + 8 MiB
//!   (checkpoints bound it; a reader that never lets go would not);
//! - the store's logical size (`page_count × page_size`, read by a reader of its own, so
//!   the WAL's frames count and its preallocation does not) grows with the tasks it keeps
//!   (finished tasks are kept for the engine's retention, 7 days, which no environment
//!   variable shortens), so its bytes per finished task in the last third ≤ those of the
//!   middle third × 1.5 + 4 KiB.
//!
//! The first third is warm-up (allocator arenas, connection pools, page cache) and only
//! recorded. A leak that grows with time or with tasks adds about the same amount to
//! every third, so it fails the check once it exceeds the margin over one third of the
//! run: the longer the run, the smaller the leak it catches (the short mode catches only
//! gross ones: a per-task leak of ~30 KiB, a per-stream descriptor).
//!
//! Every browser must also see its task's ticks gapless and in order and stay attached
//! until the task is cancelled at the end; every submitted task must complete.
//!
//! Short by default (12 s, 50 browsers, 20 tasks/s); `CHAOS_SECS`, `SOAK_BROWSERS`,
//! `SOAK_RATE` set the duration, the browsers and the tasks per second (e.g. 180, 1000,
//! 200 for the long mode).

#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{ProcStats, Server, temp_dir};
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Long-running tasks the browsers attach to (one tick a second each).
const WATCHED: usize = 4;
/// Submissions in flight at most; beyond it the rate drops (and is reported).
const MAX_IN_FLIGHT: usize = 512;
const MIB: f64 = 1024.0 * 1024.0;

fn env_num(name: &str, default: u64) -> u64 {
    common::env_num(name).unwrap_or(default)
}

/// One sample of the server and its store.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: f64,
    proc: ProcStats,
    /// Logical size of the store: `page_count × page_size`.
    store_bytes: u64,
    wal_bytes: u64,
    done: u64,
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// The store's logical size as a reader sees it now (WAL frames included).
async fn store_bytes(db: &Path) -> u64 {
    use sqlx::Connection as _;
    let url = format!("sqlite://{}?mode=ro", db.display());
    let mut conn = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("open the store read-only");
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
        .fetch_one(&mut conn)
        .await
        .expect("page_count");
    let size: i64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(&mut conn)
        .await
        .expect("page_size");
    conn.close().await.expect("close");
    u64::try_from(pages * size).expect("a size")
}

/// What one attached browser saw.
#[derive(Debug, Default)]
struct Watch {
    ticks: Vec<u64>,
    ids: Vec<u64>,
    last_event: String,
}

/// Attached for the whole run: reads `key`'s stream to its end.
async fn browser(server_addr: std::net::SocketAddr, key: String, user: String) -> Watch {
    let mut sse = common::attach(server_addr, &key, &user, None)
        .await
        .unwrap_or_else(|e| panic!("browser attach to {key}: {e}"));
    let mut watch = Watch::default();
    loop {
        // Ticks come every second; a minute of silence is a stuck stream.
        let frame = tokio::time::timeout(Duration::from_secs(60), sse.try_next_frame())
            .await
            .unwrap_or_else(|_| panic!("browser on {key}: silent for a minute"))
            .unwrap_or_else(|e| panic!("browser on {key}: {e}"));
        let Some(frame) = frame else { break };
        if let Some(id) = frame.id {
            watch.ids.push(id);
        }
        if frame.event == "tick" {
            watch.ticks.push(frame.json()["i"].as_u64().unwrap());
        }
        watch.last_event = frame.event;
    }
    watch
}

/// One submitted task streamed to its end over `reqwest`; whether it completed.
async fn submit(base: String, n: u64) -> Result<(), String> {
    let user = format!("s{}", n % 64);
    let response = common::http_client()
        .post(format!("{base}/api/demo/count"))
        .header("X-Forwarded-User", user)
        .header("Content-Type", "application/json")
        .body(format!(r#"{{"to":2,"delay_ms":{}}}"#, n % 7))
        .send()
        .await
        .map_err(|e| common::error_chain(&e))?;
    let status = response.status();
    let body = response.text().await.map_err(|e| common::error_chain(&e))?;
    if status == 200 && body.contains("event: completed") {
        Ok(())
    } else {
        Err(format!("{status}: {body}"))
    }
}

fn peak(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    samples.iter().map(f).fold(0.0, f64::max)
}

/// Bytes the store gained per task finished over `samples`.
fn bytes_per_task(samples: &[Sample]) -> f64 {
    let (first, last) = (samples.first().unwrap(), samples.last().unwrap());
    let bytes = last.store_bytes as f64 - first.store_bytes as f64;
    bytes / ((last.done - first.done).max(1) as f64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_levels_off() {
    let secs = env_num("CHAOS_SECS", 12);
    let browsers = env_num("SOAK_BROWSERS", 50);
    let rate = env_num("SOAK_RATE", 20).max(1);
    let dir = temp_dir();
    let env = [
        ("RUST_LOG", "warn,appkit::app=info"),
        ("TASKFLOW_POLL_INTERVAL_MS", "100"),
    ];
    let mut server = Server::start(dir.path(), &env).await;
    let base = server.url("");

    // The watched tasks outlive the run; they are cancelled at its end.
    let mut watched = Vec::new();
    for w in 0..WATCHED {
        let user = format!("watch{w}");
        let body = format!(r#"{{"to":100000,"delay_ms":{}}}"#, 1000 + w);
        let mut sse = server.sse_post("/api/demo/count", &user, &body, None).await;
        let key = sse
            .header("x-appkit-task-idempotency-key")
            .unwrap()
            .to_owned();
        assert_eq!(sse.next_frame().await.unwrap().event, "ready");
        drop(sse);
        watched.push((key, user));
    }
    let attached: Vec<_> = (0..browsers)
        .map(|b| {
            let (key, user) = watched[usize::try_from(b).unwrap() % WATCHED].clone();
            tokio::spawn(browser(server.addr, key, user))
        })
        .collect();

    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let began = Instant::now();
    let until = began + Duration::from_secs(secs);

    // The sampler: about 45 samples over the run, at least 4 a second in the short mode.
    let sampler = {
        let done = done.clone();
        let pid = server.pid;
        let db = dir.path().join("tasks.db");
        let wal = dir.path().join("tasks.db-wal");
        let every = Duration::from_millis((secs * 1000 / 45).clamp(100, 5000));
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(every);
            while Instant::now() < until {
                tick.tick().await;
                let proc = ProcStats::sample(pid).expect("the server is alive");
                samples.push(Sample {
                    at: began.elapsed().as_secs_f64(),
                    proc,
                    store_bytes: store_bytes(&db).await,
                    wal_bytes: file_len(&wal),
                    done: done.load(Ordering::Relaxed),
                });
            }
            samples
        })
    };

    // The steady rate: one submission every 1/rate s, each streamed to its end.
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut submitted = 0u64;
    let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut inflight = tokio::task::JoinSet::new();
    while Instant::now() < until {
        pace.tick().await;
        let permit = slots.clone().acquire_owned().await.unwrap();
        submitted += 1;
        let (base, done, failed) = (base.clone(), done.clone(), failed.clone());
        inflight.spawn(async move {
            match submit(base, submitted).await {
                Ok(()) => {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => failed.lock().unwrap().push(e),
            }
            drop(permit);
        });
    }
    let samples = sampler.await.unwrap();
    let elapsed = began.elapsed().as_secs_f64();
    while inflight.join_next().await.is_some() {}
    let completed = done.load(Ordering::Relaxed);

    // End the watched tasks; every browser must see `cancelled` after gapless ticks.
    for (key, user) in &watched {
        let r = server
            .post(&format!("/api/demo/tasks/{key}/cancel"), user, "{}")
            .await;
        assert!(r.status < 300, "cancel {key}: {} {}", r.status, r.text());
    }
    let mut frames = 0;
    for handle in attached {
        let watch = handle.await.unwrap();
        assert_eq!(watch.last_event, "cancelled", "{watch:?}");
        assert!(watch.ids.windows(2).all(|w| w[0] < w[1]), "{watch:?}");
        assert!(
            watch.ticks.windows(2).all(|w| w[1] == w[0] + 1),
            "ticks gapless: {watch:?}"
        );
        frames += watch.ids.len();
    }
    let final_stats = server.stats().unwrap();
    server.signal("TERM");
    server.wait_exit(common::DEADLINE).await;

    let failures = failed.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} of {submitted} tasks failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(completed, submitted, "every submitted task completed");

    let third = samples.len() / 3;
    assert!(third >= 3, "too few samples: {}", samples.len());
    let (middle, last) = (&samples[third..2 * third], &samples[2 * third..]);
    let rss = |s: &Sample| s.proc.rss_bytes as f64;
    let fds = |s: &Sample| s.proc.fds as f64;
    let wal = |s: &Sample| s.wal_bytes as f64;
    let figures = format!(
        "soak: {secs} s, {browsers} browsers, asked {rate}/s, {completed} tasks done ({:.1}/s), \
         {frames} frames to browsers; RSS peak MiB first/middle/last third {:.1}/{:.1}/{:.1}; \
         fds peak {}/{}/{}; wal peak MiB {:.1}/{:.1}/{:.1}; store MiB at end {:.1} \
         ({:.0} B/task middle, {:.0} B/task last); threads at end {}",
        completed as f64 / elapsed,
        peak(&samples[..third], rss) / MIB,
        peak(middle, rss) / MIB,
        peak(last, rss) / MIB,
        peak(&samples[..third], fds),
        peak(middle, fds),
        peak(last, fds),
        peak(&samples[..third], wal) / MIB,
        peak(middle, wal) / MIB,
        peak(last, wal) / MIB,
        samples.last().unwrap().store_bytes as f64 / MIB,
        bytes_per_task(middle),
        bytes_per_task(last),
        final_stats.threads,
    );
    println!("{figures}");
    for s in &samples {
        println!(
            "sample t={:.1}s rss={:.1}MiB fds={} store={:.2}MiB wal={:.2}MiB done={}",
            s.at,
            rss(s) / MIB,
            s.proc.fds,
            s.store_bytes as f64 / MIB,
            s.wal_bytes as f64 / MIB,
            s.done
        );
    }
    assert!(
        peak(last, rss) <= peak(middle, rss) * 1.10 + 8.0 * MIB,
        "RSS keeps growing: {figures}"
    );
    assert!(
        peak(last, fds) <= peak(middle, fds) * 1.10 + 16.0,
        "open descriptors keep growing: {figures}"
    );
    assert!(
        peak(last, wal) <= peak(middle, wal) * 1.25 + 8.0 * MIB,
        "the WAL keeps growing: {figures}"
    );
    assert!(
        bytes_per_task(last) <= bytes_per_task(middle) * 1.5 + 4096.0,
        "the store grows faster than the tasks it keeps: {figures}"
    );
}
