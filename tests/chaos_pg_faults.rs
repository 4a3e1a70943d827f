//! Postgres faults while the real dev-playground binary runs tasks, one test each:
//!
//! - `terminated_connections`: every connection of the server is terminated
//!   (`pg_terminate_backend`, filtered by the server's own `application_name` and role), once
//!   as a blip and then as an outage (its role's logins refused and its connections killed
//!   again and again for longer than a lease). Supersedes the former `pg_outage` test.
//! - `restarted_database`: a private PostgreSQL of the test's own (`initdb` into a temp dir,
//!   run as the `postgres` OS user on a free port) is stopped (fast shutdown) under load and
//!   started again on the same port. The shared server on 5432 is never touched.
//! - `paused_database`: a TCP proxy in the test between the server and PostgreSQL stops
//!   forwarding (connections accepted, bytes held) and later resumes.
//!
//! Each checks the same promises: the process stays up (`/health` 200, the web page served);
//! `/ready` answers 503 `store_unavailable` during the fault and 200 after; a submit during the
//! fault answers 503 with `Retry-After` and the JSON error shape, and leaves nothing behind
//! (after recovery the store holds exactly the acknowledged tasks, and the refused submit
//! resubmitted starts a fresh task at attempt 1); streams opened before the fault are
//! followed to the end by re-attaching with `Last-Event-ID` as a browser does, and the
//! history each follower received has strictly increasing ids, every tick exactly once and
//! one `completed`; the stored log of every task shows it ran once.
//!
//! Short by default; `CHAOS_FAULTS=N` repeats each test's fault N times (a fresh load each
//! round). Needs `TEST_DATABASE_URL` (prints that it skipped without it);
//! `restarted_database` also needs PostgreSQL's server binaries under
//! `/usr/lib/postgresql/*/bin` (prints that it skipped without them).

#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

mod common;
#[path = "common/pg.rs"]
mod pg;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use common::{DEADLINE, History, Server, temp_dir};
use pg::{EventRow, SHORT_LEASE_MS, SHORT_REAP_MS, TestDb, assert_count_ran_once};
use serde_json::Value;
use sqlx::AssertSqlSafe;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const USER: &str = "olga";
/// Tasks running when each fault hits.
const TASKS: u64 = 3;
/// Ticks per task.
const TICKS: u64 = 8;
/// How long a follower may take to see its task complete, faults included.
const FOLLOW_DEADLINE: Duration = Duration::from_secs(90);

/// `CHAOS_FAULTS`: how many times each test injects its fault (default 1).
fn rounds() -> u32 {
    common::env_num("CHAOS_FAULTS").map_or(1, |n| u32::try_from(n.max(1)).unwrap())
}

/// Server environment: short leases and reaps, quick polls, keep-alives every second (so
/// a stream stalled on the database still shows signs of life).
fn server_env() -> Vec<(&'static str, String)> {
    vec![
        ("TASKFLOW_LEASE_MS", SHORT_LEASE_MS.to_string()),
        ("TASKFLOW_REAP_INTERVAL_MS", SHORT_REAP_MS.to_string()),
        ("APPKIT_SSE_KEEPALIVE_MS", "1000".to_owned()),
    ]
}

fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Polls `check` every 50 ms until it is true, within `within`.
async fn wait_until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "not {what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Count tasks for `round`, each streamed and followed; their keys and followers. Each is
/// acknowledged: its stream answered 200 with the `ready` frame.
async fn start_load(server: &Server, round: u32) -> Vec<(String, JoinHandle<History>)> {
    let mut load = Vec::new();
    for i in 0..TASKS {
        let delay = 150 + u64::from(round) * 10 + i;
        let body = format!(r#"{{"to": {TICKS}, "delay_ms": {delay}}}"#);
        let mut sse = server.sse_post("/api/demo/count", USER, &body, None).await;
        let key = sse
            .header("X-AppKit-Task-Idempotency-Key")
            .unwrap()
            .to_owned();
        assert_eq!(sse.next_frame().await.unwrap().event, "ready");
        load.push((
            key.clone(),
            tokio::spawn(common::follow(server.addr, USER, key, sse, FOLLOW_DEADLINE)),
        ));
    }
    load
}

/// The JSON error shape with a 503, `STORE_UNAVAILABLE` and `Retry-After`.
fn assert_store_unavailable(what: &str, r: &common::Response) {
    assert_eq!(r.status, 503, "{what}: {}", r.text());
    let body: Value = r.json();
    assert!(body["error"].is_string(), "{what}: {body}");
    assert_eq!(body["code"], "STORE_UNAVAILABLE", "{what}: {body}");
    let retry = r
        .header("Retry-After")
        .unwrap_or_else(|| panic!("{what}: no Retry-After"));
    assert!(
        retry.parse::<u64>().is_ok_and(|s| s >= 1),
        "{what}: Retry-After {retry:?}"
    );
}

/// A fresh submit body for `round` (no task with it exists yet).
fn refused_body(round: u32) -> String {
    format!(r#"{{"to": 2, "delay_ms": {}}}"#, 7 + round)
}

/// While the fault lasts: `/ready` answers 503 `store_unavailable` (within `ready_within`
/// each), a submit answers 503 with `Retry-After` and the JSON error, `/health` and the
/// page stay up.
async fn assert_outage(server: &Server, round: u32, ready_within: Duration) {
    let addr = server.addr;
    let ready = wait_until("/ready 503 during the fault", DEADLINE, || async move {
        let asked = Instant::now();
        let r = common::request(addr, "GET", "/ready", &[], None).await;
        let took = asked.elapsed();
        assert!(
            took <= ready_within,
            "/ready answered after {took:?} (bound {ready_within:?})"
        );
        if r.status == 503 {
            assert_eq!(r.json()["status"], "store_unavailable", "{}", r.text());
        }
        r.status == 503
    });
    // The submit waits for the pool (its connect timeout) while /ready is polled.
    let body = refused_body(round);
    let (submit, ()) = tokio::join!(server.post("/api/demo/count", USER, &body), ready);
    assert_store_unavailable("submit during the fault", &submit);
    let health = server.get("/health", USER).await;
    assert_eq!(health.status, 200, "{}", health.text());
    let page = server.get("/", USER).await;
    assert_eq!(page.status, 200, "the web page is served from disk");
}

/// After the fault: `/ready` 200 again, the store holds exactly the `acknowledged` tasks
/// (`count_tasks`), every follower completes with a clean history, every task's stored log
/// shows one run, and the refused submit now starts a fresh task that completes.
async fn assert_recovered<C, CF, E, EF>(
    server: &Server,
    round: u32,
    load: Vec<(String, JoinHandle<History>)>,
    acknowledged: i64,
    count_tasks: C,
    events: E,
) where
    C: Fn() -> CF,
    CF: Future<Output = i64>,
    E: Fn(String) -> EF,
    EF: Future<Output = Vec<EventRow>>,
{
    let addr = server.addr;
    wait_until("/ready 200 after the fault", DEADLINE, || async move {
        common::request(addr, "GET", "/ready", &[], None)
            .await
            .status
            == 200
    })
    .await;
    assert_eq!(
        count_tasks().await,
        acknowledged,
        "no task was written for a refused submit"
    );
    for (key, follower) in load {
        let history = follower.await.unwrap();
        history.check_count(TICKS);
        let stored = events(key.clone()).await;
        assert_count_ran_once(&key, &stored, TICKS);
        println!(
            "round {round}: task {key}: {} re-attach(es), attempts {:?}",
            history.reattached,
            pg::started_attempts(&stored)
        );
    }
    let mut again = server
        .sse_post("/api/demo/count", USER, &refused_body(round), None)
        .await;
    let key = again
        .header("X-AppKit-Task-Idempotency-Key")
        .unwrap()
        .to_owned();
    let frames = again.frames_to_end().await;
    assert_eq!(frames.last().unwrap().event, "completed", "{frames:#?}");
    let stored = events(key.clone()).await;
    assert_count_ran_once(&key, &stored, 2);
    assert_eq!(pg::started_attempts(&stored), vec![1], "a fresh task");
}

/// The server exits cleanly on SIGTERM and never panicked.
async fn assert_clean_exit(mut server: Server) {
    assert_eq!(
        server.logs.count("panicked"),
        0,
        "no panic; logs:\n{}",
        server.logs.dump()
    );
    server.signal("TERM");
    let exit = server.wait_exit(DEADLINE).await;
    assert!(exit.success(), "exit {exit}");
}

/// Waits until the task `key` has a stored tick.
async fn wait_first_tick<E, EF>(key: &str, events: &E)
where
    E: Fn(String) -> EF,
    EF: Future<Output = Vec<EventRow>>,
{
    let deadline = Instant::now() + DEADLINE;
    while pg::stored_ticks(&events(key.to_owned()).await).is_empty() {
        assert!(Instant::now() < deadline, "task {key}: no tick");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// How many tasks `schema` (`None`: the search path) holds.
async fn tasks_in(pool: &PgPool, schema: Option<&str>) -> i64 {
    let s = schema.map(|s| format!("{s}.")).unwrap_or_default();
    sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {s}tasks")))
        .fetch_one(pool)
        .await
        .expect("count tasks")
}

/// `url` with `connect_timeout=SECS` added: the server's pool gives up on a connection
/// (and the request answers 503) after that long.
fn with_connect_timeout(url: &str, secs: u64) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}connect_timeout={secs}")
}

#[tokio::test]
async fn terminated_connections() {
    let Some(url) = pg::database_url("terminated_connections") else {
        return;
    };
    let db = TestDb::create(&url, "chaos_term").await;
    let dir = temp_dir();
    let app = format!("{}_app", db.schema);
    let store = with_connect_timeout(&db.url(&app), 1);
    let env = server_env();
    let mut extra = env_refs(&env);
    extra.push(("APPKIT_TASKS_STORE", &store));
    extra.push(("APPKIT_TASKS_SCHEMA", &db.schema));
    let server = Server::start(dir.path(), &extra).await;
    assert_eq!(server.get("/ready", USER).await.status, 200);
    let schema = db.schema.clone();
    let events = |key: String| {
        let (admin, schema) = (db.admin.clone(), schema.clone());
        async move { pg::events_in(&admin, &schema, &key).await }
    };
    let count = || {
        let (admin, schema) = (db.admin.clone(), schema.clone());
        async move { tasks_in(&admin, Some(&schema)).await }
    };

    for round in 0..rounds() {
        let load = start_load(&server, round).await;
        for (key, _) in &load {
            wait_first_tick(key, &events).await;
        }
        let acknowledged = count().await;

        // A blip: every connection of this server terminated once; it reconnects.
        assert!(db.app_backends(&app).await > 0, "connections named {app}");
        let killed = db.terminate_app(&app).await;
        assert!(killed > 0, "the server had connections to terminate");
        println!("round {round}: blip: terminated {killed} backends of {app}");
        wait_until("the server reconnected", DEADLINE, || async {
            db.app_backends(&app).await > 0
        })
        .await;
        assert_eq!(server.get("/health", USER).await.status, 200);

        // An outage: logins refused, connections killed again and again, longer than a
        // lease, so running tasks lose theirs.
        let killed = db.outage_begin().await;
        println!("round {round}: outage: terminated {killed} backends");
        let started = Instant::now();
        let killer = {
            let admin = db.admin.clone();
            let (role, app) = (db.schema.clone(), app.clone());
            tokio::spawn(async move {
                loop {
                    let _: Result<i64, _> = sqlx::query_scalar(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                         WHERE usename = $1 OR application_name = $2",
                    )
                    .bind(&role)
                    .bind(&app)
                    .fetch_one(&admin)
                    .await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        assert_outage(&server, round, Duration::from_secs(5)).await;
        let status = server
            .get(&format!("/api/demo/tasks/{}", load[0].0), USER)
            .await;
        assert_store_unavailable("status during the outage", &status);
        let window = Duration::from_millis(SHORT_LEASE_MS * 2);
        wait_until("the outage window over", DEADLINE, || async {
            assert_eq!(server.get("/health", USER).await.status, 200);
            started.elapsed() >= window
        })
        .await;
        killer.abort();
        let _ = killer.await;
        db.outage_end().await;
        println!("round {round}: outage over after {:?}", started.elapsed());
        assert_recovered(&server, round, load, acknowledged, count, events).await;
    }
    assert_clean_exit(server).await;
    db.cleanup().await;
}

/// A PostgreSQL cluster of this test's own in a temp dir, run by the `postgres` OS user
/// when the test runs as root (PostgreSQL refuses root). Stopped (immediate) on drop.
struct PrivatePg {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    as_postgres: bool,
}

impl PrivatePg {
    /// `initdb` with trust auth and no fsync; `None` when the binaries are not installed.
    fn init() -> Option<Self> {
        let mut bins: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|b| b.join("initdb").exists() && b.join("pg_ctl").exists())
            .collect();
        bins.sort_by_key(|b| {
            let version = b.parent().and_then(Path::file_name);
            version.and_then(|v| v.to_str()?.parse::<u32>().ok())
        });
        let bin = bins.pop()?;
        let dir = temp_dir();
        let as_postgres = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
        if as_postgres {
            let status = std::process::Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "chown the cluster dir to postgres");
        }
        // A free port: bound and released (nothing else here picks ports this way in the
        // tiny window before the cluster binds it).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = Self {
            bin,
            dir,
            port,
            as_postgres,
        };
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        Some(pg)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn command(&self, tool: &str, args: &[&str]) -> std::process::Command {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut cmd = std::process::Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(exe);
            cmd
        } else {
            std::process::Command::new(exe)
        };
        cmd.args(args);
        cmd
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = self.command(tool, args).output().unwrap();
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts it on its port (waits until it accepts connections).
    fn start(&self) {
        let sockets = self.dir.path().display().to_string();
        let options = format!(
            "-p {} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=40",
            self.port
        );
        let log = self.dir.path().join("postgres.log").display().to_string();
        let data = self.data();
        self.run(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-o", &options, "-w", "start"],
        );
    }

    /// Fast shutdown: sessions are terminated, the postmaster exits.
    fn stop(&self, mode: &str) {
        let data = self.data();
        self.run("pg_ctl", &["-D", &data, "-m", mode, "-w", "stop"]);
    }

    fn url(&self, app: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?application_name={app}",
            self.port
        )
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .command("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
    }
}

#[tokio::test]
async fn restarted_database() {
    if pg::database_url("restarted_database").is_none() {
        return;
    }
    let began = Instant::now();
    let Some(cluster) = PrivatePg::init() else {
        println!("skipped restarted_database: no /usr/lib/postgresql/*/bin/initdb");
        return;
    };
    cluster.start();
    println!("private cluster ready after {:?}", began.elapsed());
    let admin = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(PgConnectOptions::from_str(&cluster.url("chaos_admin")).unwrap())
        .await
        .unwrap();
    let dir = temp_dir();
    let store = with_connect_timeout(&cluster.url("chaos_restart"), 1);
    let env = server_env();
    let mut extra = env_refs(&env);
    extra.push(("APPKIT_TASKS_STORE", &store));
    let server = Server::start(dir.path(), &extra).await;
    assert_eq!(server.get("/ready", USER).await.status, 200);
    let events = |key: String| {
        let admin = admin.clone();
        async move { pg::events_in(&admin, "public", &key).await }
    };
    let count = || {
        let admin = admin.clone();
        async move { tasks_in(&admin, None).await }
    };

    for round in 0..rounds() {
        let load = start_load(&server, round).await;
        for (key, _) in &load {
            wait_first_tick(key, &events).await;
        }
        let acknowledged = count().await;
        let stopped = Instant::now();
        cluster.stop("fast");
        println!("round {round}: database stopped in {:?}", stopped.elapsed());
        assert_outage(&server, round, Duration::from_secs(5)).await;
        cluster.start();
        println!("round {round}: database back after {:?}", stopped.elapsed());
        assert_recovered(&server, round, load, acknowledged, count, events).await;
    }
    assert_clean_exit(server).await;
    admin.close().await;
    println!("restarted_database took {:?}", began.elapsed());
}

/// A TCP proxy to `upstream` that stops forwarding while paused: connections are accepted
/// but no byte moves either way (nor is a new upstream connection opened) until resumed.
struct Proxy {
    addr: SocketAddr,
    paused: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (paused, gate) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut gate = gate.clone();
                tokio::spawn(async move {
                    let open = gate.wait_for(|p| !*p).await.is_ok();
                    if !open {
                        return;
                    }
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = tokio::spawn(pipe(cr, sw, gate.clone()));
                    pipe(sr, cw, gate).await;
                    let _ = up.await;
                });
            }
        });
        Self { addr, paused, task }
    }

    fn pause(&self, paused: bool) {
        self.paused.send_replace(paused);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, holding each read while the gate says paused.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut gate: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let open = gate.wait_for(|p| !*p).await.is_ok();
        if !open || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[tokio::test]
async fn paused_database() {
    let Some(url) = pg::database_url("paused_database") else {
        return;
    };
    let db = TestDb::create(&url, "chaos_pause").await;
    let options = PgConnectOptions::from_str(&url).unwrap();
    let upstream = tokio::net::lookup_host((options.get_host(), options.get_port()))
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = Proxy::start(upstream).await;
    let app = format!("{}_app", db.schema);
    let direct = format!("@{}:{}/", options.get_host(), options.get_port());
    let proxied = format!("@{}/", proxy.addr);
    let url = db.url(&app);
    assert!(url.contains(&direct), "{url} names {direct}");
    // The pool waits up to 5 s for a connection, more than the 2 s bound on /ready.
    let store = with_connect_timeout(&url.replace(&direct, &proxied), 5);
    let dir = temp_dir();
    let env = server_env();
    let mut extra = env_refs(&env);
    extra.push(("APPKIT_TASKS_STORE", &store));
    extra.push(("APPKIT_TASKS_SCHEMA", &db.schema));
    let server = Server::start(dir.path(), &extra).await;
    assert_eq!(server.get("/ready", USER).await.status, 200);
    let schema = db.schema.clone();
    let events = |key: String| {
        let (admin, schema) = (db.admin.clone(), schema.clone());
        async move { pg::events_in(&admin, &schema, &key).await }
    };
    let count = || {
        let (admin, schema) = (db.admin.clone(), schema.clone());
        async move { tasks_in(&admin, Some(&schema)).await }
    };

    for round in 0..rounds() {
        let load = start_load(&server, round).await;
        for (key, _) in &load {
            wait_first_tick(key, &events).await;
        }
        let acknowledged = count().await;
        proxy.pause(true);
        let paused = Instant::now();
        // A database that accepts but does not answer: /ready must still answer, in about
        // its 2 s bound, not the pool's 5 s.
        assert_outage(&server, round, Duration::from_millis(4000)).await;
        let window = Duration::from_millis(SHORT_LEASE_MS * 2);
        wait_until("the pause window over", DEADLINE, || async {
            assert_eq!(server.get("/health", USER).await.status, 200);
            paused.elapsed() >= window
        })
        .await;
        proxy.pause(false);
        println!("round {round}: resumed after {:?}", paused.elapsed());
        assert_recovered(&server, round, load, acknowledged, count, events).await;
    }
    assert_clean_exit(server).await;
    drop(proxy);
    db.cleanup().await;
}
