//! Harness for the end-to-end tests: start the real dev-playground binary on an ephemeral
//! port, talk HTTP and SSE to it over raw TCP, send it signals, read its logs.
//!
//! Nothing here sleeps to "wait enough": every wait polls a condition under a deadline.

#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::print_stdout,
    clippy::unwrap_used
)]

pub mod otlp;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Generous bound for anything to happen on a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_dev-playground")
}

/// Collected output lines of the child.
#[derive(Default)]
pub struct Logs {
    lines: Mutex<Vec<String>>,
    changed: Notify,
}

impl Logs {
    fn push(&self, line: String) {
        self.lines.lock().unwrap().push(line);
        self.changed.notify_waiters();
    }

    pub fn snapshot(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn count(&self, needle: &str) -> usize {
        self.snapshot()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until a line satisfies `pred`, returning it.
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

    pub fn dump(&self) -> String {
        self.snapshot().join("\n")
    }
}

/// A running dev-playground process.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub pid: u32,
    pub logs: Arc<Logs>,
    pipes: Vec<tokio::task::JoinHandle<()>>,
}

/// Environment for a test server on `dir`'s own SQLite file, plus `extra`.
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

impl Server {
    /// Starts the binary with the base environment and `extra` (which wins), and waits
    /// for its `listening on http://ADDR` line.
    pub async fn start(dir: &Path, extra: &[(&str, &str)]) -> Self {
        let mut env = base_env(dir);
        for (k, v) in extra {
            env.retain(|(name, _)| name != k);
            env.push(((*k).to_owned(), (*v).to_owned()));
        }
        let mut child = Command::new(binary())
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e} (is it built?)", binary()));
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

    /// Sends `signal` (`INT`, `TERM`, `KILL`) with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid.to_string())
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -{signal} {} failed", self.pid);
    }

    /// Waits for the process to exit and for its output to be read to the end.
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

    pub async fn get(&self, path: &str, user: &str) -> Response {
        request(self.addr, "GET", path, &[("X-Forwarded-User", user)], None).await
    }

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
    pub async fn sse_attach_path(&self, path: &str, user: &str) -> Sse {
        Sse::open(self.addr, "GET", path, &[("X-Forwarded-User", user)], None)
            .await
            .unwrap_or_else(|r| panic!("stream refused: {} {}", r.status, r.text()))
    }

    /// Polls the task's status until it is `want`.
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

/// Runs the binary with the base environment and `extra` (which wins) until it exits by
/// itself (a start-up that must fail), within `DEADLINE`; its exit status and every line
/// it wrote (stdout and stderr).
pub async fn run_to_exit(dir: &Path, extra: &[(&str, &str)]) -> (ExitStatus, String) {
    let mut env = base_env(dir);
    for (k, v) in extra {
        env.retain(|(name, _)| name != k);
        env.push(((*k).to_owned(), (*v).to_owned()));
    }
    let child = Command::new(binary())
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e} (is it built?)", binary()));
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

/// A whole HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

fn request_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.unwrap_or("").as_bytes());
    bytes
}

/// Reads a response head: status and headers.
async fn read_head(reader: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    reader.read_line(&mut line).await.expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).await.expect("header line");
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        let (k, v) = trimmed.split_once(':').expect("header has a colon");
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    (status, headers)
}

fn is_chunked(headers: &[(String, String)]) -> bool {
    headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    })
}

/// One HTTP/1.1 request on its own connection (`Connection: close`).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Response {
    let fut = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(&request_bytes(addr, method, path, headers, body))
            .await
            .expect("send request");
        let mut reader = BufReader::new(stream);
        let (status, headers) = read_head(&mut reader).await;
        let body = if is_chunked(&headers) {
            let mut body = Vec::new();
            while let Some(chunk) = read_chunk(&mut reader).await {
                body.extend_from_slice(&chunk);
            }
            body
        } else {
            let mut body = Vec::new();
            reader.read_to_end(&mut body).await.expect("body");
            body
        };
        Response {
            status,
            headers,
            body,
        }
    };
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("{method} {path} got no response within {DEADLINE:?}"))
}

/// The next chunk of a chunked body; `None` at the last chunk or EOF.
async fn read_chunk(reader: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut line = String::new();
    if reader.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let size = usize::from_str_radix(line.trim().split(';').next()?, 16).ok()?;
    if size == 0 {
        return None;
    }
    let mut chunk = vec![0; size + 2];
    reader.read_exact(&mut chunk).await.ok()?;
    chunk.truncate(size);
    Some(chunk)
}

/// What an SSE stream carried: a frame (its raw lines, without the blank line) or a
/// comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Frame(String),
    Comment(String),
}

/// An item and when it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    pub item: Item,
    pub at: Instant,
}

/// A parsed SSE frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub id: Option<u64>,
    pub event: String,
    pub data: String,
}

impl Frame {
    pub fn parse(raw: &str) -> Self {
        let mut frame = Frame {
            id: None,
            event: "message".into(),
            data: String::new(),
        };
        let mut data = Vec::new();
        for line in raw.lines() {
            let (field, value) = line.split_once(": ").unwrap_or((line, ""));
            match field {
                "id" => frame.id = Some(value.parse().expect("numeric id")),
                "event" => frame.event = value.to_owned(),
                "data" => data.push(value),
                _ => {}
            }
        }
        frame.data = data.join("\n");
        frame
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("frame data is JSON")
    }
}

/// An open SSE response read over raw TCP. Dropping it closes the connection.
pub struct Sse {
    reader: BufReader<TcpStream>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    text: String,
    ended: bool,
}

impl Sse {
    /// Sends the request; `Err` with the whole response unless it is a 200 stream.
    pub async fn open(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Result<Self, Response> {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(&request_bytes(addr, method, path, headers, body))
            .await
            .expect("send request");
        let mut reader = BufReader::new(stream);
        let (status, headers) = tokio::time::timeout(DEADLINE, read_head(&mut reader))
            .await
            .expect("response head within the deadline");
        let sse = Self {
            reader,
            status,
            headers,
            text: String::new(),
            ended: false,
        };
        if status == 200 {
            return Ok(sse);
        }
        let mut body = Vec::new();
        let mut reader = sse.reader;
        if is_chunked(&sse.headers) {
            while let Some(chunk) = read_chunk(&mut reader).await {
                body.extend_from_slice(&chunk);
            }
        } else {
            let _ = reader.read_to_end(&mut body).await;
        }
        Err(Response {
            status,
            headers: sse.headers,
            body,
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The next item, or `None` once the body ended; panics after `DEADLINE`.
    pub async fn next(&mut self) -> Option<Received> {
        match tokio::time::timeout(DEADLINE, self.next_item()).await {
            Ok(item) => item,
            Err(_) => panic!("no SSE item within {DEADLINE:?} (buffer {:?})", self.text),
        }
    }

    async fn next_item(&mut self) -> Option<Received> {
        loop {
            if let Some(cut) = self.text.find("\n\n") {
                let raw: String = self.text[..cut].to_owned();
                self.text.drain(..cut + 2);
                let item = if raw.lines().all(|l| l.starts_with(':')) {
                    Item::Comment(raw)
                } else {
                    Item::Frame(raw)
                };
                return Some(Received {
                    item,
                    at: Instant::now(),
                });
            }
            if self.ended {
                assert!(
                    self.text.is_empty(),
                    "partial frame at end: {:?}",
                    self.text
                );
                return None;
            }
            match read_chunk(&mut self.reader).await {
                Some(chunk) => self
                    .text
                    .push_str(std::str::from_utf8(&chunk).expect("utf-8")),
                None => self.ended = true,
            }
        }
    }

    /// The next frame, skipping comments; `None` at the end.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        while let Some(r) = self.next().await {
            if let Item::Frame(raw) = r.item {
                return Some(Frame::parse(&raw));
            }
        }
        None
    }

    /// Every remaining frame until the body ends.
    pub async fn frames_to_end(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(f) = self.next_frame().await {
            frames.push(f);
        }
        frames
    }
}

/// Fresh temp dir for one test's store.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// The `i` of tick frames.
pub fn ticks(frames: &[Frame]) -> Vec<u64> {
    frames
        .iter()
        .filter(|f| f.event == "tick")
        .map(|f| f.json()["i"].as_u64().expect("tick i"))
        .collect()
}
