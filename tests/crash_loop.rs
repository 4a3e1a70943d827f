//! SIGKILL the real server again and again while one 60-step count runs, restarting it on
//! the same store each time and re-attaching with the last id seen: the count completes,
//! every tick arrives exactly once, ids strictly increase across all the streams — and
//! since a process death is a recovery, not a failed attempt, the task never spends an
//! attempt however often it is killed. On SQLite and on Postgres.
//!
//! `CRASH_KILLS` sets the number of kills (default 30).

#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

mod common;
#[path = "common/pg.rs"]
mod pg;

use std::future::Future;
use std::time::Duration;

use common::{Frame, Server, temp_dir};
use tokio::time::Instant;

/// Ticks of the count.
const TICKS: u64 = 60;
/// Delay before each tick: long enough that the count is still running at the last kill.
const TICK_MS: u64 = 100;

fn kills() -> usize {
    common::env_num("CRASH_KILLS").map_or(30, |n| usize::try_from(n).unwrap())
}

/// Every frame one client saw, over all its streams, and the kills it survived.
#[derive(Default)]
struct History {
    frames: Vec<Frame>,
    kills: usize,
}

impl History {
    fn last_id(&self) -> Option<u64> {
        self.frames.iter().rev().find_map(|f| f.id)
    }

    fn completed(&self) -> bool {
        self.frames.iter().any(|f| f.event == "completed")
    }
}

/// Reads frames into `history` until `until` says stop (checked per frame) or `deadline`.
async fn read_until(
    sse: &mut common::Sse,
    history: &mut History,
    deadline: Instant,
    until: impl Fn(&Frame) -> bool,
) -> bool {
    loop {
        match tokio::time::timeout_at(deadline, sse.next_frame()).await {
            Ok(Some(frame)) => {
                let stop = until(&frame);
                history.frames.push(frame);
                if stop {
                    return true;
                }
            }
            Ok(None) | Err(_) => return false,
        }
    }
}

/// Runs the kill loop against servers made by `start` (same store each time).
async fn kill_loop<F, Fut>(start: F) -> History
where
    F: Fn() -> Fut,
    Fut: Future<Output = Server>,
{
    let body = format!(r#"{{"to":{TICKS},"delay_ms":{TICK_MS}}}"#);
    let mut server = start().await;
    let mut sse = server
        .sse_post("/api/demo/count", "alice", &body, None)
        .await;
    let key = sse
        .header("x-appkit-task-idempotency-key")
        .expect("key header")
        .to_owned();
    let mut history = History::default();
    let wanted = kills();
    while history.kills < wanted {
        // Wait for this life's claim (`started`), then kill at a random instant.
        let deadline = Instant::now() + common::DEADLINE;
        let started = read_until(&mut sse, &mut history, deadline, |f| f.event == "started").await;
        assert!(started, "no `started` in life {}", history.kills + 1);
        let window = Duration::from_millis(fastrand::u64(0..=150));
        read_until(&mut sse, &mut history, Instant::now() + window, |_| false).await;
        assert!(
            !history.completed(),
            "the count finished after {} kills; make it longer",
            history.kills
        );
        server.signal("KILL");
        let status = server.wait_exit(common::DEADLINE).await;
        assert_eq!(status.code(), None, "killed by a signal");
        drop(sse);
        history.kills += 1;
        server = start().await;
        let last = history.last_id().map(|id| id.to_string());
        sse = server.sse_attach(&key, "alice", last.as_deref()).await;
    }
    let deadline = Instant::now() + common::DEADLINE;
    let done = read_until(&mut sse, &mut history, deadline, |f| f.event == "completed").await;
    assert!(done, "the count did not complete after the last restart");
    let status = server.wait_status(&key, "alice", "completed").await;
    assert_eq!(
        status["attempt"], 1,
        "process deaths never spend an attempt: {status}"
    );
    assert_eq!(
        status["recoveries"],
        u64::try_from(history.kills).unwrap(),
        "every kill hit the running task and counted one recovery: {status}"
    );
    server.signal("TERM");
    server.wait_exit(common::DEADLINE).await;
    history
}

fn assert_exactly_once(history: &History) {
    let ids: Vec<u64> = history.frames.iter().filter_map(|f| f.id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids strictly increase across every stream: {ids:?}"
    );
    assert_eq!(
        common::ticks(&history.frames),
        (1..=TICKS).collect::<Vec<_>>(),
        "every tick exactly once, in order"
    );
    let last = history.frames.last().expect("frames");
    assert_eq!(last.event, "completed");
    assert_eq!(last.json()["result"]["total"], TICKS);
    let restarts = history
        .frames
        .iter()
        .filter(|f| f.event == "started")
        .count();
    assert_eq!(restarts, history.kills + 1, "one claim per life");
    println!(
        "crash loop: {} kills, {} frames, every tick once",
        history.kills,
        history.frames.len()
    );
}

/// Env for a server that must survive many kills.
const ENV: &[(&str, &str)] = &[("TASKFLOW_MAX_RECOVERIES", "1000")];

#[tokio::test]
async fn sqlite_count_survives_repeated_sigkills_exactly_once() {
    let dir = temp_dir();
    let history = kill_loop(|| Server::start(dir.path(), ENV)).await;
    assert_exactly_once(&history);
}

#[tokio::test]
async fn postgres_count_survives_repeated_sigkills_exactly_once() {
    let Some(url) = pg::database_url("postgres_count_survives_repeated_sigkills_exactly_once")
    else {
        return;
    };
    let db = pg::TestDb::create(&url, "crashloop").await;
    let dir = temp_dir();
    // A dead process's lease must expire before another life can take the task over.
    let env = [
        ENV[0],
        ("TASKFLOW_LEASE_MS", "400"),
        ("TASKFLOW_REAP_INTERVAL_MS", "50"),
    ];
    let history = kill_loop(|| db.start_server(dir.path(), "crashloop", &env)).await;
    assert_exactly_once(&history);
    db.cleanup().await;
}

#[tokio::test]
async fn a_task_that_keeps_losing_its_process_fails_with_recovery_limit() {
    let dir = temp_dir();
    let env = [("TASKFLOW_MAX_RECOVERIES", "2")];
    let mut server = Server::start(dir.path(), &env).await;
    let body = format!(r#"{{"to":{TICKS},"delay_ms":{TICK_MS}}}"#);
    let mut sse = server
        .sse_post("/api/demo/count", "alice", &body, None)
        .await;
    let key = sse
        .header("x-appkit-task-idempotency-key")
        .unwrap()
        .to_owned();
    let mut history = History::default();
    for life in 0..3 {
        let deadline = Instant::now() + common::DEADLINE;
        let started = read_until(&mut sse, &mut history, deadline, |f| f.event == "started").await;
        assert!(started, "life {life} claimed the task");
        server.signal("KILL");
        server.wait_exit(common::DEADLINE).await;
        drop(sse);
        server = Server::start(dir.path(), &env).await;
        let last = history.last_id().map(|id| id.to_string());
        sse = server.sse_attach(&key, "alice", last.as_deref()).await;
    }
    let deadline = Instant::now() + common::DEADLINE;
    let failed = read_until(&mut sse, &mut history, deadline, |f| f.event == "failed").await;
    assert!(failed, "the third recovery is past the limit of 2");
    let frame = history.frames.last().unwrap().json();
    assert_eq!(frame["error"]["kind"], "recovery_limit", "{frame}");
    let message = frame["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("3 times") && message.contains("max_recoveries = 2"),
        "{message}"
    );
    server.signal("TERM");
    server.wait_exit(common::DEADLINE).await;
}
