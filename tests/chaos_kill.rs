//! Kill chaos: a mixed load (counts with steps, flaky tasks that retry, sleeps) from
//! several concurrent browsers that attach, drop mid-stream and re-attach with
//! `Last-Event-ID`, while the real server is SIGKILLed at random instants and restarted on
//! the same store. Every frame every connection received is recorded; at the end the
//! history must show:
//!
//! - no acknowledged submit lost: every task whose submit answered 200 with its key is
//!   found, and is terminal after the last restart let it finish;
//! - every step's events exactly once: a count's ticks `i = 1..=n` each once;
//! - per connection, ids strictly increasing and all above the `Last-Event-ID` sent;
//!   across re-attaches, one id always carries the same event (a replay from the start
//!   included), and together the connections saw every id from 2 to the terminal one;
//! - recoveries never spend an attempt: a flaky task completes on attempt `fail_times+1`.
//!
//! Two variants: SQLite (one server) and Postgres with two servers on one fresh schema
//! (either is killed; browsers go to either). Short by default (a few kills each, about
//! 15 s); `CHAOS_KILLS=N` kills N times per variant, `CHAOS_SECS=S` keeps killing for at
//! least S seconds, `CHAOS_BROWSERS=B` sets the browsers (6), `CHAOS_SEED` replays a
//! run's random choices (the seed is printed; timing still differs between runs).

#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

mod common;
#[path = "common/pg.rs"]
mod pg;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use common::{Frame, Server, Sse, SseError, env_num, temp_dir};
use serde_json::{Value, json};
use tokio::time::Instant;

/// Kills per variant in the short (CI) mode.
const SHORT_KILLS: usize = 10;
/// A stream silent this long while its task should be moving is a stall.
const STALL: Duration = Duration::from_secs(15);
/// Bound on finishing every task once the kills stop.
const DRAIN: Duration = Duration::from_secs(60);

/// Environment of every server: recoveries unbounded, a disconnect never suspends a task
/// (browsers re-attach at once; the grace is not what this test checks).
const ENV: &[(&str, &str)] = &[
    ("TASKFLOW_MAX_RECOVERIES", "100000"),
    ("APPKIT_SSE_DISCONNECT_GRACE_MS", "600000"),
    ("TASKFLOW_POLL_INTERVAL_MS", "50"),
    ("RUST_LOG", "warn,appkit::app=info"),
];
/// With two servers, a dead one's lease must expire before the other takes its tasks.
const PG_ENV: &[(&str, &str)] = &[
    ("TASKFLOW_LEASE_MS", "900"),
    ("TASKFLOW_REAP_INTERVAL_MS", "50"),
];

#[derive(Debug, Clone, Copy)]
struct Plan {
    kills: usize,
    secs: u64,
    browsers: usize,
    seed: u64,
}

fn plan() -> Plan {
    let secs = env_num("CHAOS_SECS").unwrap_or(0);
    let default_kills = if secs > 0 { 0 } else { SHORT_KILLS };
    Plan {
        kills: env_num("CHAOS_KILLS").map_or(default_kills, |k| usize::try_from(k).unwrap()),
        secs,
        browsers: env_num("CHAOS_BROWSERS").map_or(6, |b| usize::try_from(b).unwrap()),
        seed: env_num("CHAOS_SEED").unwrap_or_else(|| fastrand::u64(..)),
    }
}

/// What a job asked for.
#[derive(Debug, Clone, Copy)]
enum Job {
    Count { to: u64, delay_ms: u64 },
    Flaky { fail_times: u64 },
    Sleep { ms: u64 },
}

impl Job {
    fn random(rng: &mut fastrand::Rng) -> Self {
        match rng.u8(0..10) {
            0..=4 => Job::Count {
                to: rng.u64(3..=8),
                delay_ms: rng.u64(20..=80),
            },
            5..=7 => Job::Flaky {
                fail_times: rng.u64(1..=3),
            },
            _ => Job::Sleep {
                ms: rng.u64(50..=400),
            },
        }
    }

    fn route(&self) -> &'static str {
        match self {
            Job::Count { .. } => "/api/demo/count",
            Job::Flaky { .. } => "/api/demo/flaky",
            Job::Sleep { .. } => "/api/demo/sleep",
        }
    }

    fn body(&self) -> String {
        match *self {
            Job::Count { to, delay_ms } => json!({ "to": to, "delay_ms": delay_ms }),
            Job::Flaky { fail_times } => json!({ "fail_times": fail_times }),
            Job::Sleep { ms } => json!({ "ms": ms }),
        }
        .to_string()
    }
}

/// How one connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// The body ended after a terminal frame.
    Terminal,
    /// The connection broke (server killed) or ended without a terminal frame.
    Broken(String),
    /// The browser dropped it on purpose.
    Dropped,
    /// No frame within [`STALL`] from a live server.
    Stalled,
}

/// Every frame one connection received.
#[derive(Debug, Clone)]
struct Conn {
    /// `Last-Event-ID` sent (`None`: from the start).
    after: Option<u64>,
    frames: Vec<Frame>,
    end: End,
}

/// One acknowledged task and every connection a browser had to it.
#[derive(Debug, Clone)]
struct Task {
    key: String,
    user: String,
    job: Job,
    conns: Vec<Conn>,
}

/// The run's tallies besides the tasks.
#[derive(Debug, Default)]
struct Tally {
    unacknowledged: usize,
    refused: BTreeMap<u16, usize>,
    connect_failures: usize,
}

/// The servers' current addresses (`None` while one is down), shared with the browsers.
type Addrs = Rc<RefCell<Vec<Option<SocketAddr>>>>;

/// A live server's address, chosen at random; waits while all are down.
async fn pick(addrs: &Addrs, rng: &mut fastrand::Rng) -> SocketAddr {
    common::wait_for("a live server", common::DEADLINE, || {
        let live: Vec<SocketAddr> = addrs.borrow().iter().flatten().copied().collect();
        let choice = (!live.is_empty()).then(|| live[rng.usize(..live.len())]);
        async move { choice }
    })
    .await
}

fn is_terminal(event: &str) -> bool {
    matches!(event, "completed" | "failed" | "cancelled")
}

/// Reads `sse` into a new connection record until the task ends, the stream breaks, or
/// the browser decides (with probability `drop_p` per frame) to drop it.
async fn follow(sse: &mut Sse, after: Option<u64>, rng: &mut fastrand::Rng, drop_p: f64) -> Conn {
    let mut conn = Conn {
        after,
        frames: Vec::new(),
        end: End::Broken("no frame".into()),
    };
    loop {
        match tokio::time::timeout(STALL, sse.try_next_frame()).await {
            Err(_) => {
                conn.end = End::Stalled;
                return conn;
            }
            Ok(Err(e)) => {
                conn.end = End::Broken(e.to_string());
                return conn;
            }
            Ok(Ok(None)) => {
                let terminal = conn.frames.last().is_some_and(|f| is_terminal(&f.event));
                conn.end = if terminal {
                    End::Terminal
                } else {
                    End::Broken("body ended without a terminal frame".into())
                };
                return conn;
            }
            Ok(Ok(Some(frame))) => {
                let event = frame.event.clone();
                conn.frames.push(frame);
                assert!(
                    event != "suspended",
                    "a task was suspended, which nothing here asks for: {:?}",
                    conn.frames
                );
                if event == "error" {
                    // The stream itself ended (`server_shutting_down`, store failure).
                    conn.end = End::Broken("error frame".into());
                    return conn;
                }
                if !is_terminal(&event) && event != "ready" && rng.f64() < drop_p {
                    conn.end = End::Dropped;
                    return conn;
                }
            }
        }
    }
}

/// One browser: runs jobs one after another until `stop`, each submitted (retried until
/// acknowledged) and followed to its terminal frame across kills and its own drops.
async fn browser(
    id: usize,
    addrs: Addrs,
    stop: Rc<RefCell<bool>>,
    seed: u64,
) -> (Vec<Task>, Tally) {
    let mut rng = fastrand::Rng::with_seed(seed.wrapping_add(id as u64));
    let mut tasks = Vec::new();
    let mut tally = Tally::default();
    let mut n = 0;
    while !*stop.borrow() {
        n += 1;
        let job = Job::random(&mut rng);
        // One user per job: keys are per user, so no two jobs share a task.
        let user = format!("b{id}-{n}");
        let body = job.body();
        // Submit until a 200 stream answers with the key: that is the acknowledgement.
        let deadline = Instant::now() + common::DEADLINE;
        let (mut sse, key) = loop {
            assert!(
                Instant::now() < deadline,
                "browser {id}: no submit of {job:?} acknowledged within {:?}",
                common::DEADLINE
            );
            let addr = pick(&addrs, &mut rng).await;
            let headers = [("X-Forwarded-User", user.as_str())];
            match Sse::try_open(addr, "POST", job.route(), &headers, Some(&body)).await {
                Ok(sse) => {
                    let key = sse
                        .header("x-appkit-task-idempotency-key")
                        .expect("a 200 stream carries the key")
                        .to_owned();
                    break (sse, key);
                }
                Err(SseError::Refused(r)) => {
                    *tally.refused.entry(r.status).or_default() += 1;
                    assert!(
                        r.status == 503 || r.status == 429,
                        "browser {id}: submit refused unexpectedly: {} {}",
                        r.status,
                        r.text()
                    );
                    tally.unacknowledged += 1;
                }
                Err(_) => {
                    tally.unacknowledged += 1;
                    tally.connect_failures += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut task = Task {
            key,
            user,
            job,
            conns: Vec::new(),
        };
        let mut after = None;
        loop {
            let conn = follow(&mut sse, after, &mut rng, 0.08).await;
            task.conns.push(conn);
            // Done once any connection saw the terminal frame (a connection cut right
            // after it, then re-attached at it, gets only `ready`).
            let done = task
                .conns
                .iter()
                .flat_map(|c| &c.frames)
                .any(|f| is_terminal(&f.event));
            if done {
                break;
            }
            // Re-attach: mostly after the last id seen, sometimes from the start (a
            // replay that must repeat the same ids with the same events).
            let seen = task
                .conns
                .iter()
                .flat_map(|c| &c.frames)
                .filter_map(|f| f.id)
                .max();
            after = if rng.f64() < 0.15 { None } else { seen };
            sse = reattach(&addrs, &mut rng, &task, after, &mut tally).await;
        }
        tasks.push(task);
    }
    (tasks, tally)
}

/// Attaches to `task` after `after` on a live server, retrying while servers are down.
async fn reattach(
    addrs: &Addrs,
    rng: &mut fastrand::Rng,
    task: &Task,
    after: Option<u64>,
    tally: &mut Tally,
) -> Sse {
    let deadline = Instant::now() + common::DEADLINE;
    loop {
        let addr = pick(addrs, rng).await;
        match common::attach(addr, &task.key, &task.user, after).await {
            Ok(sse) => return sse,
            Err(SseError::Refused(r)) if r.status != 503 => {
                panic!(
                    "task {} ({:?}): re-attach after {after:?} refused: {} {}",
                    task.key,
                    task.job,
                    r.status,
                    r.text()
                );
            }
            Err(_) => tally.connect_failures += 1,
        }
        assert!(
            Instant::now() < deadline,
            "task {}: no server took a re-attach within {:?}",
            task.key,
            common::DEADLINE
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The kills: at random instants, SIGKILL a random server and start it again on the same
/// store. Returns the servers (running) and how many kills there were.
async fn killer<F, Fut>(
    mut servers: Vec<Server>,
    start: F,
    addrs: Addrs,
    plan: Plan,
) -> (Vec<Server>, usize)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Server>,
{
    let mut rng = fastrand::Rng::with_seed(plan.seed ^ 0x6b69_6c6c);
    let began = Instant::now();
    let mut kills = 0;
    while kills < plan.kills || began.elapsed() < Duration::from_secs(plan.secs) {
        // The schedule of the chaos, not a wait for anything.
        tokio::time::sleep(Duration::from_millis(rng.u64(150..=900))).await;
        let i = rng.usize(..servers.len());
        addrs.borrow_mut()[i] = None;
        servers[i].kill().await;
        kills += 1;
        servers[i] = start(i).await;
        addrs.borrow_mut()[i] = Some(servers[i].addr);
    }
    (servers, kills)
}

/// Runs the chaos on servers made by `start(i)` (same store for every life).
async fn run<F, Fut>(label: &str, n_servers: usize, start: F) -> Report
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Server>,
{
    let plan = plan();
    println!(
        "chaos {label}: {plan:?} (CHAOS_SEED={} replays the choices)",
        plan.seed
    );
    let began = Instant::now();
    let mut servers = Vec::new();
    for i in 0..n_servers {
        servers.push(start(i).await);
    }
    let addrs: Addrs = Rc::new(RefCell::new(servers.iter().map(|s| Some(s.addr)).collect()));
    let stop = Rc::new(RefCell::new(false));
    let browsers = futures_util::future::join_all(
        (0..plan.browsers)
            .map(|id| browser(id, addrs.clone(), stop.clone(), plan.seed))
            .collect::<Vec<_>>(),
    );
    let chaos = async {
        let out = killer(servers, &start, addrs.clone(), plan).await;
        *stop.borrow_mut() = true;
        out
    };
    let (histories, (mut servers, kills)): (Vec<(Vec<Task>, Tally)>, _) = tokio::join!(
        async {
            tokio::time::timeout(
                Duration::from_secs(plan.secs) + DRAIN + Duration::from_secs(5 * plan.kills as u64),
                browsers,
            )
            .await
            .expect("every browser's last task finished after the kills stopped")
        },
        chaos
    );
    let mut tasks = Vec::new();
    let mut tally = Tally::default();
    for (t, y) in histories {
        tasks.extend(t);
        tally.unacknowledged += y.unacknowledged;
        tally.connect_failures += y.connect_failures;
        for (status, n) in y.refused {
            *tally.refused.entry(status).or_default() += n;
        }
    }
    let report = check(label, &tasks, &servers, kills, &tally).await;
    for server in &mut servers {
        server.signal("TERM");
        server.wait_exit(common::DEADLINE).await;
    }
    println!(
        "chaos {label}: {} s, {report:?}, tally {tally:?}",
        began.elapsed().as_secs()
    );
    report
}

/// What the checks covered (printed: the figures of `docs/reliability.md`).
#[derive(Debug, Default)]
#[allow(dead_code, reason = "read through Debug")]
struct Report {
    kills: usize,
    tasks: usize,
    connections: usize,
    /// Distinct events (ids) checked.
    events: usize,
    ticks: usize,
    recoveries: u64,
    stalls: usize,
    /// Ids missing from what the browsers saw, over every task.
    lost: usize,
    /// Events seen twice (a tick beyond its one) or ids that changed meaning.
    duplicated: usize,
}

/// Every check of the module doc over one task's history; what failed, if anything.
fn check_task(task: &Task, report: &mut Report) -> Vec<String> {
    let mut failures = Vec::new();
    let mut fail = |what: String| failures.push(what);
    let mut by_id: BTreeMap<u64, (String, String)> = BTreeMap::new();
    for conn in &task.conns {
        report.connections += 1;
        if conn.end == End::Stalled {
            report.stalls += 1;
            fail(format!(
                "a stream was silent for {STALL:?} (after {:?})",
                conn.after
            ));
        }
        if let Some(first) = conn.frames.first()
            && (first.event != "ready" || first.id.is_some())
        {
            fail(format!("first frame is not an id-less ready: {first:?}"));
        }
        let ids: Vec<u64> = conn.frames.iter().skip(1).filter_map(|f| f.id).collect();
        if !ids.windows(2).all(|w| w[0] < w[1]) {
            fail(format!(
                "ids not strictly increasing in one connection: {ids:?}"
            ));
        }
        if let (Some(after), Some(first)) = (conn.after, ids.first())
            && *first <= after
        {
            fail(format!("id {first} arrived after Last-Event-ID {after}"));
        }
        for f in conn.frames.iter().skip(1) {
            let Some(id) = f.id else {
                if f.event != "error" {
                    fail(format!("a frame without id: {f:?}"));
                }
                continue;
            };
            let seen = (f.event.clone(), f.data.clone());
            match by_id.get(&id) {
                Some(before) if *before != seen => {
                    report.duplicated += 1;
                    fail(format!("id {id} carried {before:?}, then {seen:?}"));
                }
                Some(_) => {}
                None => {
                    by_id.insert(id, seen);
                }
            }
        }
    }
    report.events += by_id.len();
    let ids: Vec<u64> = by_id.keys().copied().collect();
    let Some(&last) = ids.last() else {
        fail("no event at all".into());
        return failures;
    };
    let missing: Vec<u64> = (2..=last).filter(|id| !by_id.contains_key(id)).collect();
    if !missing.is_empty() {
        report.lost += missing.len();
        fail(format!("ids {missing:?} never reached the browser"));
    }
    let terminals: Vec<&String> = by_id
        .values()
        .map(|(e, _)| e)
        .filter(|e| is_terminal(e))
        .collect();
    let (last_event, last_data) = &by_id[&last];
    if terminals.len() != 1 || last_event != "completed" {
        fail(format!(
            "not one terminal event, `completed` and last: {terminals:?}"
        ));
        return failures;
    }
    let result = serde_json::from_str::<Value>(last_data).unwrap()["result"].clone();
    for (event, data) in by_id.values() {
        if event == "started" && serde_json::from_str::<Value>(data).unwrap()["recovery"] == true {
            report.recoveries += 1;
        }
    }
    match task.job {
        Job::Count { to, .. } => {
            let ticks: Vec<u64> = by_id
                .values()
                .filter(|(e, _)| e == "tick")
                .map(|(_, d)| {
                    serde_json::from_str::<Value>(d).unwrap()["i"]
                        .as_u64()
                        .unwrap()
                })
                .collect();
            report.ticks += ticks.len();
            if ticks != (1..=to).collect::<Vec<_>>() {
                report.duplicated += ticks.len().saturating_sub(usize::try_from(to).unwrap());
                fail(format!(
                    "ticks are not 1..={to} each once in order: {ticks:?}"
                ));
            }
            if result["total"] != to {
                fail(format!("result {result}"));
            }
        }
        Job::Flaky { fail_times } => {
            if result["attempts"] != fail_times + 1 {
                fail(format!(
                    "completed on attempt {} instead of {}: a recovery spent an attempt",
                    result["attempts"],
                    fail_times + 1
                ));
            }
        }
        Job::Sleep { ms } => {
            if result["sleptMs"] != ms {
                fail(format!("result {result}"));
            }
        }
    }
    failures
}

/// Checks every task's history, then asks every server for every acknowledged task:
/// found, and completed.
async fn check(
    label: &str,
    tasks: &[Task],
    servers: &[Server],
    kills: usize,
    tally: &Tally,
) -> Report {
    let mut report = Report {
        kills,
        tasks: tasks.len(),
        ..Report::default()
    };
    let mut failures = Vec::new();
    for task in tasks {
        for failure in check_task(task, &mut report) {
            failures.push(format!(
                "{label} task {} ({:?}): {failure}\n{:#?}",
                task.key, task.job, task.conns
            ));
        }
        for server in servers {
            let url = server.url(&format!("/api/demo/tasks/{}", task.key));
            let response = common::http_client()
                .get(&url)
                .header("X-Forwarded-User", &task.user)
                .send()
                .await
                .expect("status request");
            let code = response.status();
            let status: Value = response.json().await.unwrap_or(Value::Null);
            if code != 200 || status["status"] != "completed" {
                report.lost += usize::from(code == 404);
                failures.push(format!(
                    "{label} task {} ({:?}) on {}: {code} {status}",
                    task.key, task.job, server.addr
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures ({report:?}, {tally:?}):\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(report.tasks > 0, "the browsers got work acknowledged");
    assert!(
        kills == 0 || report.recoveries > 0,
        "{kills} kills never hit a running task: the chaos checked nothing ({report:?})"
    );
    report
}

#[tokio::test]
async fn sqlite_mixed_load_survives_random_sigkills() {
    let dir = temp_dir();
    let report = run("sqlite", 1, |_| Server::start(dir.path(), ENV)).await;
    println!("{report:?}");
}

#[tokio::test]
async fn postgres_two_servers_survive_random_sigkills() {
    let Some(url) = pg::database_url("postgres_two_servers_survive_random_sigkills") else {
        return;
    };
    let db = pg::TestDb::create(&url, "chaos").await;
    let dir = temp_dir();
    let env: Vec<(&str, &str)> = ENV.iter().chain(PG_ENV).copied().collect();
    let report = run("postgres", 2, |i| {
        let app = format!("{}_{i}", db.schema);
        let env = env.clone();
        let dir = dir.path().to_owned();
        let db = &db;
        async move { db.start_server(&dir, &app, &env).await }
    })
    .await;
    println!("{report:?}");
    db.cleanup().await;
}
