//! The SQLite store's disk fills up while tasks run, on the real dev-playground binary.
//!
//! The store lives on a small tmpfs of the test's own (`mount -t tmpfs`, root only; the
//! test prints that it skipped where it cannot mount). Tasks run and are followed over SSE;
//! then a filler file takes every free byte. While the disk is full, submits answer 503
//! `STORE_UNAVAILABLE` with `Retry-After` and a message that says the disk is full, the
//! running tasks' events cannot be written (their streams stall, nothing is acknowledged
//! that is not stored), `/health` stays 200 and `/ready` says the store is unavailable or
//! ready (a read still works on a full disk). When the filler is deleted the server
//! recovers by itself: the refused submit succeeds as a fresh task, and every task
//! acknowledged before the disk filled completes, each follower's history with strictly
//! increasing ids and every tick exactly once; the stored log agrees.
//!
//! Short by default; `CHAOS_FAULTS=N` fills and frees the disk N times.

#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{DEADLINE, History, Server, Sse, temp_dir};
use serde_json::Value;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const USER: &str = "olga";
const TASKS: u64 = 3;
const TICKS: u64 = 8;
/// Size of the tmpfs the store lives on: room for the WAL to grow to the 16 MiB after
/// which the store rewinds it.
const DISK: &str = "32m";
const FOLLOW_DEADLINE: Duration = Duration::from_secs(90);

/// `CHAOS_FAULTS`: how many times the disk fills (default 1).
fn rounds() -> u32 {
    common::env_num("CHAOS_FAULTS").map_or(1, |n| u32::try_from(n.max(1)).unwrap())
}

/// A tmpfs mounted for this test; unmounted on drop (also when the test fails).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` (after saying why) when it cannot be mounted here (not root, no tmpfs).
    fn mount(size: &str) -> Option<Self> {
        let dir = temp_dir();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(dir.path())
            .output();
        match out {
            Ok(out) if out.status.success() => Some(Self { dir }),
            Ok(out) => {
                println!(
                    "skipped chaos_disk_full: cannot mount a tmpfs: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                None
            }
            Err(e) => {
                println!("skipped chaos_disk_full: no mount(8): {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy (a server being killed): detach now, freed when the last user goes.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// Writes `path` until the disk is full; its size.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0xa5u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // The last partial chunk: byte by byte is too slow; small writes until ENOSPC.
    for size in [4096usize, 512, 1] {
        while file.write(&chunk[..size]).is_ok_and(|n| n > 0) {
            written += size as u64;
        }
    }
    written
}

/// A one-connection read-only pool on the store at `db`.
async fn read_only(db: &Path) -> sqlx::SqlitePool {
    let options = SqliteConnectOptions::new().filename(db).read_only(true);
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap()
}

/// Stored events of the task with `key`: (seq, kind, tick i).
async fn stored(db: &Path, key: &str) -> Vec<(i64, String, Option<u64>)> {
    let pool = read_only(db).await;
    let rows = sqlx::query(
        "SELECT e.seq, e.kind, e.name, e.payload FROM task_events e \
         JOIN tasks t ON t.id = e.task_id WHERE t.idempotency_key = ? ORDER BY e.seq",
    )
    .bind(key)
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows.into_iter()
        .map(|r| {
            let (kind, name): (String, String) = (r.get("kind"), r.get("name"));
            let payload: String = r.get("payload");
            let tick = (kind == "custom" && name == "tick")
                .then(|| serde_json::from_str::<Value>(&payload).unwrap()["i"].as_u64())
                .flatten();
            (r.get("seq"), kind, tick)
        })
        .collect()
}

/// How many tasks the store holds.
async fn task_count(db: &Path) -> i64 {
    let pool = read_only(db).await;
    let n = sqlx::query_scalar("SELECT count(*) FROM tasks")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    n
}

/// The stored log ran once: seqs gapless from 1, ticks 1..=n once, one `completed`, last.
async fn assert_stored_once(db: &Path, key: &str, n: u64) {
    let events = stored(db, key).await;
    let seqs: Vec<i64> = events.iter().map(|e| e.0).collect();
    let expected: Vec<i64> = (1..=i64::try_from(events.len()).unwrap()).collect();
    assert_eq!(seqs, expected, "task {key}: seqs gapless: {events:?}");
    let ticks: Vec<u64> = events.iter().filter_map(|e| e.2).collect();
    assert_eq!(ticks, (1..=n).collect::<Vec<_>>(), "task {key}: {events:?}");
    let completed = events.iter().filter(|e| e.1 == "completed").count();
    assert_eq!(completed, 1, "task {key}: {events:?}");
    assert_eq!(events.last().unwrap().1, "completed", "task {key}");
}

#[tokio::test]
async fn disk_full() {
    let Some(disk) = Tmpfs::mount(DISK) else {
        return;
    };
    let began = Instant::now();
    let db: PathBuf = disk.path().join("tasks.db");
    let filler = disk.path().join("filler");
    let store = format!("sqlite://{}", db.display());
    let dir = temp_dir();
    let server = Server::start(
        dir.path(),
        &[
            ("APPKIT_TASKS_STORE", store.as_str()),
            ("APPKIT_SSE_KEEPALIVE_MS", "1000"),
            ("TASKFLOW_LEASE_MS", "1500"),
            ("TASKFLOW_REAP_INTERVAL_MS", "200"),
            ("RUST_LOG", "info,taskflow::execution=debug"),
        ],
    )
    .await;
    assert_eq!(server.get("/ready", USER).await.status, 200);
    let mut acknowledged = 0;

    for round in 0..rounds() {
        // Acknowledged tasks, running and followed.
        let mut load: Vec<(String, JoinHandle<History>)> = Vec::new();
        for i in 0..TASKS {
            let delay = 100 + u64::from(round) * 10 + i;
            let body = format!(r#"{{"to": {TICKS}, "delay_ms": {delay}}}"#);
            let mut sse = server.sse_post("/api/demo/count", USER, &body, None).await;
            let key = sse
                .header("X-AppKit-Task-Idempotency-Key")
                .unwrap()
                .to_owned();
            assert_eq!(sse.next_frame().await.unwrap().event, "ready");
            let follower = common::follow(server.addr, USER, key.clone(), sse, FOLLOW_DEADLINE);
            load.push((key, tokio::spawn(follower)));
            acknowledged += 1;
        }
        // Each has a stored tick before the disk fills.
        for (key, _) in &load {
            let deadline = Instant::now() + DEADLINE;
            while !stored(&db, key).await.iter().any(|e| e.2.is_some()) {
                assert!(Instant::now() < deadline, "task {key}: no tick");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }

        let mut late: Vec<(String, JoinHandle<History>)> = Vec::new();
        let failed_before = server
            .logs
            .snapshot()
            .iter()
            .filter(|l| l.contains("attempt failed") && l.contains("database or disk is full"))
            .count();
        let filled = fill(&filler);
        println!("round {round}: filler took {filled} bytes");

        // Submits fail with a clear error once SQLite needs a page it cannot get (the WAL
        // may reuse space it already has for a few writes). A submit accepted meanwhile
        // is acknowledged like any other: followed, and it must complete.
        let deadline = Instant::now() + DEADLINE;
        let mut accepted_while_full = 0;
        // Short tasks, one input per try, for a user of this round's own (the
        // idempotency key is per user, so no try attaches to an earlier task).
        let short = 2;
        let late_user = format!("{USER}-{round}");
        let (refused, body) = loop {
            let body = format!(r#"{{"to": {short}, "delay_ms": {accepted_while_full}}}"#);
            let headers = [("X-Forwarded-User", late_user.as_str())];
            match Sse::open(
                server.addr,
                "POST",
                "/api/demo/count",
                &headers,
                Some(body.as_str()),
            )
            .await
            {
                Err(r) => break (r, body),
                Ok(sse) => {
                    let key = sse
                        .header("X-AppKit-Task-Idempotency-Key")
                        .unwrap()
                        .to_owned();
                    let follower = common::follow(
                        server.addr,
                        late_user.clone(),
                        key.clone(),
                        sse,
                        FOLLOW_DEADLINE,
                    );
                    late.push((key, tokio::spawn(follower)));
                    accepted_while_full += 1;
                    acknowledged += 1;
                    assert!(Instant::now() < deadline, "no 503 on a full disk");
                }
            }
        };
        assert_eq!(refused.status, 503, "{}", refused.text());
        let message: Value = refused.json();
        assert_eq!(message["code"], "STORE_UNAVAILABLE", "{message}");
        assert!(
            message["error"].as_str().unwrap().contains("full"),
            "the error says the disk is full: {message}"
        );
        assert!(refused.header("Retry-After").is_some(), "Retry-After");
        println!(
            "round {round}: refused on a full disk: {message} \
             (after {accepted_while_full} accepted)"
        );
        // Running tasks cannot write their events either: a step (its tick event and
        // checkpoint) fails on the full disk, and the attempt with it. (Lines of earlier
        // rounds do not count.)
        let step_failed =
            |l: &String| l.contains("attempt failed") && l.contains("database or disk is full");
        let deadline = Instant::now() + DEADLINE;
        while server
            .logs
            .snapshot()
            .iter()
            .filter(|l| step_failed(l))
            .count()
            <= failed_before
        {
            assert!(
                Instant::now() < deadline,
                "no running task's write failed on the full disk; logs:\n{}",
                server.logs.dump()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!("round {round}: a running task's write failed on the full disk");
        assert_eq!(server.get("/health", USER).await.status, 200);
        let ready = server.get("/ready", USER).await;
        assert!(
            ready.status == 200 || ready.status == 503,
            "/ready on a full disk: {}",
            ready.text()
        );

        // Space comes back.
        for entry in std::fs::read_dir(disk.path()).unwrap() {
            let path = entry.unwrap().path();
            if path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("filler")
            {
                std::fs::remove_file(path).unwrap();
            }
        }
        let freed = Instant::now();
        let stored_before = task_count(&db).await;
        assert_eq!(
            stored_before, acknowledged,
            "exactly the acknowledged tasks are stored; the refused submit left nothing"
        );
        let mut again = server
            .sse_post("/api/demo/count", &late_user, &body, None)
            .await;
        let key = again
            .header("X-AppKit-Task-Idempotency-Key")
            .unwrap()
            .to_owned();
        let frames = again.frames_to_end().await;
        assert_eq!(frames.last().unwrap().event, "completed", "{frames:#?}");
        assert_stored_once(&db, &key, short).await;
        acknowledged += 1;
        println!(
            "round {round}: submits work {:?} after space came back",
            freed.elapsed()
        );

        for (key, follower) in late {
            let history = follower.await.unwrap();
            let ticks: Vec<u64> = (1..=short).collect();
            assert_eq!(common::ticks(&history.frames), ticks, "task {key}");
            assert_stored_once(&db, &key, short).await;
        }
        for (key, follower) in load {
            let history = follower.await.unwrap();
            let ids: Vec<u64> = history.frames.iter().filter_map(|f| f.id).collect();
            assert!(
                ids.windows(2).all(|w| w[0] < w[1]),
                "task {key}: ids strictly increasing: {ids:?}"
            );
            assert_eq!(
                common::ticks(&history.frames),
                (1..=TICKS).collect::<Vec<_>>(),
                "task {key}: every tick once: {:#?}",
                history.frames
            );
            assert_eq!(history.frames.last().unwrap().event, "completed");
            assert_stored_once(&db, &key, TICKS).await;
            println!(
                "round {round}: task {}: {} re-attach(es)",
                history.key, history.reattached
            );
        }
    }
    assert_eq!(
        server.logs.count("panicked"),
        0,
        "no panic; logs:\n{}",
        server.logs.dump()
    );
    let mut server = server;
    server.signal("TERM");
    let exit = server.wait_exit(DEADLINE).await;
    assert!(exit.success(), "exit {exit}");
    println!("disk_full took {:?}", began.elapsed());
}
