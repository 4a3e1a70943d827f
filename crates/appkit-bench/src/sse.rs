//! `sse` mode: idle SSE bridges held open against the real dev-playground server.
//!
//! Two phases, each on a fresh server (the release `dev-playground` binary next to this
//! one, SQLite store in a temporary directory, `DATABRICKS_APP_PORT=0`):
//!
//! 1. **Memory** — opens `--bridges` SSE bridges (default 10,000), each a `POST
//!    /api/demo/sleep` for its own ~50-minute task (distinct inputs, so distinct tasks),
//!    and waits until every bridge has received its `ready` frame. `rss_per_bridge_kib` is
//!    the growth of the server's resident set (`VmRSS` in `/proc/PID/status`) from the
//!    warmed-up idle server to the server holding every bridge, divided by the bridges.
//!    It includes everything a bridge costs the server: the connection, the HTTP/SSE
//!    stream, the keep-alive timer, the task's live channel and the task itself.
//!    With `--shared-task true`, one task is started before the baseline and every
//!    bridge is a `GET /api/demo/tasks/{key}/events` to it (same user), so the number is
//!    the cost of an idle connection and SSE stream alone; the difference from the
//!    default is the per-task cost.
//! 2. **Shutdown** — opens `--shutdown-bridges` bridges (default 1,000) the same way,
//!    sends SIGTERM and measures `shutdown_ms`, the time until the process exited. The
//!    server runs with `TASKFLOW_DRAIN_TIMEOUT_MS=0` so the number measures the host's
//!    drain (every bridge gets `server_shutting_down` and closes, tasks are released),
//!    not the engine waiting for hour-long tasks. `shutdown_frames` counts the bridges
//!    that received the final `server_shutting_down` frame; the bench fails unless all did.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::task::JoinSet;

use crate::args::Flags;

/// What to run.
#[derive(Debug)]
pub(crate) struct Options {
    bridges: usize,
    shutdown_bridges: usize,
    connect_concurrency: usize,
    /// Attach every phase-1 bridge to one shared task instead of one task each, to
    /// separate the cost of a connection from the cost of a task.
    shared_task: bool,
}

impl Options {
    pub(crate) fn parse(mut flags: Flags) -> Result<Self> {
        let opts = Self {
            bridges: flags.take("bridges", 10_000)?,
            shutdown_bridges: flags.take("shutdown-bridges", 1_000)?,
            connect_concurrency: flags.take("connect-concurrency", 128)?,
            shared_task: flags.take("shared-task", false)?,
        };
        flags.finish()?;
        ensure!(
            opts.bridges > 0 && opts.shutdown_bridges > 0,
            "bridge counts must be positive"
        );
        Ok(opts)
    }
}

pub(crate) async fn run(opts: Options) -> Result<Value> {
    let binary = server_binary()?;
    eprintln!("sse: phase 1: {} idle bridges", opts.bridges);
    let mut server = Server::start(&binary, &[]).await?;
    // Warm up: one bridge opened and closed, so lazily built state is in the baseline.
    drop(open_bridges(server.addr, 1, 1, "warmup").await?);
    // With --shared-task, one task (and its first bridge) is in the baseline too.
    let shared = if opts.shared_task {
        Some(open_shared_task(server.addr).await?)
    } else {
        None
    };
    let idle_kib = server.rss_kib()?;
    let started = Instant::now();
    let bridges = match &shared {
        Some((_, key)) => {
            open_attached(server.addr, key, opts.bridges, opts.connect_concurrency).await?
        }
        None => open_bridges(server.addr, opts.bridges, opts.connect_concurrency, "mem").await?,
    };
    let open_s = started.elapsed().as_secs_f64();
    let loaded_kib = server.rss_kib()?;
    let per_bridge = loaded_kib.saturating_sub(idle_kib) as f64 / opts.bridges as f64;
    eprintln!(
        "sse: {} bridges open in {open_s:.1} s; server rss {idle_kib} -> {loaded_kib} KiB ({per_bridge:.2} KiB/bridge)",
        opts.bridges
    );
    drop(bridges);
    drop(shared);
    server.kill().await;

    eprintln!(
        "sse: phase 2: SIGTERM with {} open bridges",
        opts.shutdown_bridges
    );
    let mut server = Server::start(&binary, &[("TASKFLOW_DRAIN_TIMEOUT_MS", "0")]).await?;
    let bridges = open_bridges(
        server.addr,
        opts.shutdown_bridges,
        opts.connect_concurrency,
        "down",
    )
    .await?;
    let finals = Arc::new(AtomicUsize::new(0));
    let mut readers = JoinSet::new();
    for stream in bridges {
        let finals = finals.clone();
        readers.spawn(async move {
            if read_to_end_has_shutdown_frame(stream).await {
                finals.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let signalled = Instant::now();
    server.signal("TERM")?;
    let status = tokio::time::timeout(Duration::from_secs(60), server.child.wait())
        .await
        .context("server did not exit within 60 s of SIGTERM")??;
    let shutdown_ms = signalled.elapsed().as_secs_f64() * 1000.0;
    while readers.join_next().await.is_some() {}
    let frames = finals.load(Ordering::Relaxed);
    eprintln!(
        "sse: exit {status} after {shutdown_ms:.0} ms; {frames} bridges got server_shutting_down"
    );
    ensure!(status.success(), "server exited with {status}");
    ensure!(
        frames == opts.shutdown_bridges,
        "only {frames} of {} bridges received server_shutting_down",
        opts.shutdown_bridges
    );
    Ok(json!({
        "mode": "sse",
        "bridges": opts.bridges,
        "shared_task": opts.shared_task,
        "bridges_open_s": round(open_s),
        "server_rss_idle_kib": idle_kib,
        "server_rss_loaded_kib": loaded_kib,
        "rss_per_bridge_kib": round(per_bridge),
        "shutdown_bridges": opts.shutdown_bridges,
        "shutdown_frames": frames,
        "shutdown_ms": round(shutdown_ms),
    }))
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The release `dev-playground` binary beside this one.
fn server_binary() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let path = me.with_file_name("dev-playground");
    if !path.exists() {
        bail!(
            "{} not found: build it first with `cargo build --release -p dev-playground`",
            path.display()
        );
    }
    Ok(path)
}

struct Server {
    child: Child,
    addr: std::net::SocketAddr,
    pid: u32,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(binary: &PathBuf, extra: &[(&str, &str)]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let store = format!("sqlite://{}", dir.path().join("tasks.db").display());
        let mut child = Command::new(binary)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("DATABRICKS_APP_PORT", "0")
            .env("APPKIT_HOST", "127.0.0.1")
            .env("APPKIT_TASKS_STORE", store)
            .env("APPKIT_SSE_DISCONNECT_GRACE_MS", "3600000")
            .env("RUST_LOG", "warn,appkit::app=info")
            // glibc allocator knobs pass through, to compare allocator settings.
            .envs(std::env::vars().filter(|(k, _)| k.starts_with("MALLOC_")))
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id().context("server pid")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr: String = rest
                        .chars()
                        .take_while(|c| !c.is_whitespace() && *c != '"')
                        .collect();
                    return Ok::<_, anyhow::Error>(addr.parse()?);
                }
            }
            bail!("server exited before listening")
        })
        .await
        .context("server did not start listening within 30 s")??;
        // Keep draining its output so the pipe never fills.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child,
            addr,
            pid,
            _dir: dir,
        })
    }

    fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("VmRSS not found")
    }

    fn signal(&self, name: &str) -> Result<()> {
        let ok = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid.to_string())
            .status()?
            .success();
        ensure!(ok, "kill -{name} {} failed", self.pid);
        Ok(())
    }

    async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// Opens `n` bridges, `concurrency` at a time; each has received its `ready` frame.
async fn open_bridges(
    addr: std::net::SocketAddr,
    n: usize,
    concurrency: usize,
    tag: &str,
) -> Result<Vec<TcpStream>> {
    let mut streams = Vec::with_capacity(n);
    let mut pending = JoinSet::new();
    let mut next = 0;
    while streams.len() < n {
        while next < n && pending.len() < concurrency.max(1) {
            // Distinct users spread the tasks over per-user slots; distinct inputs make
            // distinct tasks.
            let user = format!("bench-{tag}-{}", next % 1000);
            let body = json!({ "ms": 3_000_000 + next as u64 }).to_string();
            pending.spawn(open_bridge(addr, user, body));
            next += 1;
        }
        match pending.join_next().await {
            Some(r) => streams.push(r??),
            None => bail!("no bridge left to open"),
        }
        if streams.len() % 2000 == 0 {
            eprintln!("sse: {} bridges open", streams.len());
        }
    }
    Ok(streams)
}

async fn open_bridge(addr: std::net::SocketAddr, user: String, body: String) -> Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!(
        "POST /api/demo/sleep HTTP/1.1\r\nHost: {addr}\r\nX-Forwarded-User: {user}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nAccept: text/event-stream\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut seen = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(60), stream.read(&mut buf))
            .await
            .context("no ready frame within 60 s")??;
        ensure!(n > 0, "server closed the bridge before its ready frame");
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen);
        ensure!(text.starts_with("HTTP/1.1 200"), "bridge refused: {text}");
        if text.contains("event: ready") {
            return Ok(stream);
        }
    }
}

/// The user that owns the shared task of `--shared-task`.
const SHARED_USER: &str = "bench-shared";

/// Starts the one task of `--shared-task`; returns its first bridge and its key.
async fn open_shared_task(addr: std::net::SocketAddr) -> Result<(TcpStream, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let body = json!({ "ms": 3_000_000 }).to_string();
    let request = format!(
        "POST /api/demo/sleep HTTP/1.1\r\nHost: {addr}\r\nX-Forwarded-User: {SHARED_USER}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nAccept: text/event-stream\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let text = read_until_ready(&mut stream).await?;
    let key = text
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("x-appkit-task-idempotency-key")
                .then(|| value.trim().to_owned())
        })
        .context("no X-Appkit-Task-Idempotency-Key header on the shared task's bridge")?;
    Ok((stream, key))
}

/// Opens `n` bridges to the existing task `key`, `concurrency` at a time.
async fn open_attached(
    addr: std::net::SocketAddr,
    key: &str,
    n: usize,
    concurrency: usize,
) -> Result<Vec<TcpStream>> {
    let mut streams = Vec::with_capacity(n);
    let mut pending = JoinSet::new();
    let mut next = 0;
    while streams.len() < n {
        while next < n && pending.len() < concurrency.max(1) {
            let request = format!(
                "GET /api/demo/tasks/{key}/events HTTP/1.1\r\nHost: {addr}\r\n\
                 X-Forwarded-User: {SHARED_USER}\r\nAccept: text/event-stream\r\n\r\n"
            );
            pending.spawn(async move {
                let mut stream = TcpStream::connect(addr).await?;
                stream.write_all(request.as_bytes()).await?;
                read_until_ready(&mut stream).await?;
                Ok::<_, anyhow::Error>(stream)
            });
            next += 1;
        }
        match pending.join_next().await {
            Some(r) => streams.push(r??),
            None => bail!("no bridge left to open"),
        }
    }
    Ok(streams)
}

/// Reads a bridge's response until its `ready` frame; returns what was read.
async fn read_until_ready(stream: &mut TcpStream) -> Result<String> {
    let mut seen = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(60), stream.read(&mut buf))
            .await
            .context("no ready frame within 60 s")??;
        ensure!(n > 0, "server closed the bridge before its ready frame");
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen);
        ensure!(text.starts_with("HTTP/1.1 200"), "bridge refused: {text}");
        if text.contains("event: ready") {
            return Ok(text.into_owned());
        }
    }
}

async fn read_to_end_has_shutdown_frame(mut stream: TcpStream) -> bool {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(60), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&seen);
    text.contains("event: error") && text.contains("server_shutting_down")
}
