//! The real server as a child process: started on an ephemeral port with an environment
//! of the test's own, signalled with kill(1), its output collected line by line, its
//! memory and descriptors sampled from procfs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::DEADLINE;
use crate::http::{Response, request};
use crate::sse::{Sse, SseError};

/// The binary under test: `APPKIT_TEST_BINARY` when set, else `dev-playground` beside the
/// running test executable's `deps/` directory (where cargo puts a package's binaries
/// before it runs that package's integration tests).
///
/// # Panics
/// When the test executable's path is unknown.
pub fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(path) = std::env::var_os("APPKIT_TEST_BINARY") {
            return PathBuf::from(path);
        }
        let exe = std::env::current_exe().expect("the test executable's path");
        let mut dir = exe
            .parent()
            .expect("the test executable's dir")
            .to_path_buf();
        if dir.ends_with("deps") {
            dir.pop();
        }
        dir.join(format!("dev-playground{}", std::env::consts::EXE_SUFFIX))
    })
}

/// Collected output lines of the child.
#[derive(Debug, Default)]
pub struct Logs {
    lines: Mutex<Vec<String>>,
    changed: Notify,
}

impl Logs {
    fn push(&self, line: String) {
        self.lines.lock().expect("logs lock").push(line);
        self.changed.notify_waiters();
    }

    /// Every line so far.
    pub fn snapshot(&self) -> Vec<String> {
        self.lines.lock().expect("logs lock").clone()
    }

    /// How many lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .expect("logs lock")
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until a line satisfies `pred`, returning it.
    ///
    /// # Panics
    /// After [`DEADLINE`] without one, with every line in the message.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let changed = self.changed.notified();
            if let Some(line) = self.snapshot().into_iter().find(|l| pred(l)) {
                return line;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!(
                    "no log line {what} within {DEADLINE:?}; logs:\n{}",
                    self.dump()
                );
            }
        }
    }

    /// Every line, joined.
    pub fn dump(&self) -> String {
        self.snapshot().join("\n")
    }
}

/// Memory and descriptors of a process, from `/proc/<pid>/status` and `/proc/<pid>/fd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStats {
    /// Resident set size (`VmRSS`), bytes.
    pub rss_bytes: u64,
    /// Open file descriptors (entries of `/proc/<pid>/fd`).
    pub fds: u64,
    /// Threads (`Threads`).
    pub threads: u64,
}

impl ProcStats {
    /// Samples process `pid`; `None` when it is gone or there is no procfs.
    pub fn sample(pid: u32) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
        };
        let rss_bytes = field("VmRSS:")? * 1024;
        let threads = field("Threads:")?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
        Some(Self {
            rss_bytes,
            fds,
            threads,
        })
    }
}

/// A running dev-playground process.
#[derive(Debug)]
pub struct Server {
    /// The child process.
    pub child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its pid.
    pub pid: u32,
    /// Its output, stdout and stderr interleaved.
    pub logs: Arc<Logs>,
    pipes: Vec<tokio::task::JoinHandle<()>>,
}

/// Environment for a test server on `dir`'s own SQLite file (`tasks.db`), on an ephemeral
/// loopback port, with short engine intervals.
pub fn base_env(dir: &Path) -> Vec<(String, String)> {
    let store = format!("sqlite://{}", dir.join("tasks.db").display());
    [
        ("DATABRICKS_APP_PORT", "0"),
        ("APPKIT_HOST", "127.0.0.1"),
        ("APPKIT_TASKS_STORE", store.as_str()),
        ("RUST_LOG", "info,appkit::shutdown=debug"),
        ("TASKFLOW_POLL_INTERVAL_MS", "100"),
        ("TASKFLOW_RETRY_BASE_MS", "20"),
        ("TASKFLOW_RETRY_CAP_MS", "100"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// [`base_env`] with `extra` (which wins), as a command for [`binary`].
fn command(dir: &Path, extra: &[(&str, &str)]) -> Command {
    let mut env = base_env(dir);
    for (k, v) in extra {
        env.retain(|(name, _)| name != k);
        env.push(((*k).to_owned(), (*v).to_owned()));
    }
    let mut command = Command::new(binary());
    command
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

fn spawn(mut command: Command) -> Child {
    command.spawn().unwrap_or_else(|e| {
        panic!(
            "cannot start {}: {e} (is it built? set APPKIT_TEST_BINARY to another path)",
            binary().display()
        )
    })
}

impl Server {
    /// Starts the binary with [`base_env`] on `dir` and `extra` (which wins), and waits
    /// for its `listening on http://ADDR` line.
    ///
    /// # Panics
    /// When it cannot start, exits, or does not listen within [`DEADLINE`].
    pub async fn start(dir: &Path, extra: &[(&str, &str)]) -> Self {
        let mut child = spawn(command(dir, extra));
        let pid = child.id().expect("child has a pid");
        let logs = Arc::new(Logs::default());
        let pipes = vec![
            pipe_lines(child.stdout.take().expect("stdout"), logs.clone()),
            pipe_lines(child.stderr.take().expect("stderr"), logs.clone()),
        ];
        let deadline = Instant::now() + DEADLINE;
        let addr = loop {
            let changed = logs.changed.notified();
            if let Some(addr) = logs.snapshot().iter().find_map(|l| listening_addr(l)) {
                break addr;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "server exited with {status} before listening; logs:\n{}",
                    logs.dump()
                );
            }
            let step = Instant::now() + Duration::from_millis(100);
            if tokio::time::timeout_at(deadline.min(step), changed)
                .await
                .is_err()
                && Instant::now() >= deadline
            {
                panic!(
                    "server did not listen within {DEADLINE:?}; logs:\n{}",
                    logs.dump()
                );
            }
        };
        Self {
            child,
            addr,
            pid,
            logs,
            pipes,
        }
    }

    /// `http://ADDR` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends `signal` (`INT`, `TERM`, `KILL`) with kill(1).
    ///
    /// # Panics
    /// When kill(1) fails (the process is gone).
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid.to_string())
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -{signal} {} failed", self.pid);
    }

    /// Waits for the process to exit and for its output to be read to the end.
    ///
    /// # Panics
    /// When it is still running after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let status = match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.expect("wait for child"),
            Err(_) => panic!(
                "server still running after {within:?}; logs:\n{}",
                self.logs.dump()
            ),
        };
        for pipe in self.pipes.drain(..) {
            tokio::time::timeout(DEADLINE, pipe)
                .await
                .expect("output pipes close after exit")
                .expect("pipe reader");
        }
        status
    }

    /// SIGKILL, then wait for the exit: the crash the engine must survive.
    ///
    /// # Panics
    /// When the process does not die by the signal within [`DEADLINE`].
    pub async fn kill(&mut self) {
        self.signal("KILL");
        let status = self.wait_exit(DEADLINE).await;
        assert_eq!(
            status.code(),
            None,
            "killed by a signal, not exited: {status}"
        );
    }

    /// Memory and descriptors now; `None` once it is gone.
    pub fn stats(&self) -> Option<ProcStats> {
        ProcStats::sample(self.pid)
    }

    /// GET `path` as `user`, raw.
    pub async fn get(&self, path: &str, user: &str) -> Response {
        request(self.addr, "GET", path, &[("X-Forwarded-User", user)], None).await
    }

    /// POST `body` (JSON) to `path` as `user`, raw.
    pub async fn post(&self, path: &str, user: &str, body: &str) -> Response {
        request(
            self.addr,
            "POST",
            path,
            &[("X-Forwarded-User", user)],
            Some(body),
        )
        .await
    }

    /// Opens an SSE stream with a POST (`execute_task`) as `user`.
    ///
    /// # Panics
    /// When it is refused.
    pub async fn sse_post(&self, path: &str, user: &str, body: &str, last: Option<&str>) -> Sse {
        let mut headers = vec![("X-Forwarded-User", user)];
        if let Some(last) = last {
            headers.push(("Last-Event-ID", last));
        }
        Sse::open(self.addr, "POST", path, &headers, Some(body))
            .await
            .unwrap_or_else(|r| panic!("stream refused: {} {}", r.status, r.text()))
    }

    /// Attaches to a task's SSE stream as `user`.
    ///
    /// # Panics
    /// When it is refused.
    pub async fn sse_attach(&self, key: &str, user: &str, last: Option<&str>) -> Sse {
        let mut headers = vec![("X-Forwarded-User", user)];
        if let Some(last) = last {
            headers.push(("Last-Event-ID", last));
        }
        let path = format!("/api/demo/tasks/{key}/events");
        Sse::open(self.addr, "GET", &path, &headers, None)
            .await
            .unwrap_or_else(|r| panic!("attach refused: {} {}", r.status, r.text()))
    }

    /// Opens an SSE stream with a GET of `path` as `user` (a plugin's own stream).
    ///
    /// # Panics
    /// When it is refused.
    pub async fn sse_attach_path(&self, path: &str, user: &str) -> Sse {
        Sse::open(self.addr, "GET", path, &[("X-Forwarded-User", user)], None)
            .await
            .unwrap_or_else(|r| panic!("stream refused: {} {}", r.status, r.text()))
    }

    /// Polls the task's status until it is `want`.
    ///
    /// # Panics
    /// After [`DEADLINE`], with the last status and the logs.
    pub async fn wait_status(&self, key: &str, user: &str, want: &str) -> Value {
        let deadline = Instant::now() + DEADLINE;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            let r = self.get(&format!("/api/demo/tasks/{key}"), user).await;
            if r.status == 200 {
                last = r.json();
                if last["status"] == want {
                    return last;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "task {key} never became {want}; last: {last}; logs:\n{}",
            self.logs.dump()
        );
    }
}

/// Attaches to the demo task `key`'s SSE stream on `addr` as `user`, after event `last`
/// (`Last-Event-ID`) when given.
///
/// # Errors
/// As [`Sse::try_open`].
pub async fn attach(
    addr: SocketAddr,
    key: &str,
    user: &str,
    last: Option<u64>,
) -> Result<Sse, SseError> {
    let last = last.map(|id| id.to_string());
    let mut headers = vec![("X-Forwarded-User", user)];
    if let Some(last) = &last {
        headers.push(("Last-Event-ID", last.as_str()));
    }
    let path = format!("/api/demo/tasks/{key}/events");
    Sse::try_open(addr, "GET", &path, &headers, None).await
}

/// Runs the binary with [`base_env`] on `dir` and `extra` (which wins) until it exits by
/// itself (a start-up that must fail), within [`DEADLINE`]; its exit status and every
/// line it wrote (stdout and stderr).
///
/// # Panics
/// When it is still running after [`DEADLINE`].
pub async fn run_to_exit(dir: &Path, extra: &[(&str, &str)]) -> (ExitStatus, String) {
    let child = spawn(command(dir, extra));
    let output = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("server still running after {DEADLINE:?}"))
        .expect("wait for child");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status, text)
}

/// The address of a `listening on http://ADDR` line, plain text or JSON (production).
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = line.split("listening on http://").nth(1)?;
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']')))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Collects `stream`'s lines into `logs`, echoing each as `[server] …` (the test
/// harness shows it for a failed test only).
#[allow(clippy::print_stdout, reason = "captured by the test harness")]
fn pipe_lines(
    stream: impl AsyncRead + Unpin + Send + 'static,
    logs: Arc<Logs>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            println!("[server] {line}");
            logs.push(line);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_addr_reads_plain_and_json_lines() {
        let plain = "INFO appkit::app: listening on http://127.0.0.1:4321";
        assert_eq!(
            listening_addr(plain),
            Some("127.0.0.1:4321".parse().unwrap())
        );
        let json = r#"{"message":"listening on http://127.0.0.1:80","level":"INFO"}"#;
        assert_eq!(listening_addr(json), Some("127.0.0.1:80".parse().unwrap()));
        assert_eq!(listening_addr("listening on nothing"), None);
    }

    #[test]
    fn this_process_has_stats() {
        let stats = ProcStats::sample(std::process::id()).expect("procfs");
        assert!(stats.rss_bytes > 0 && stats.fds > 0 && stats.threads > 0);
    }
}
