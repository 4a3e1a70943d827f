//! A client that stops reading costs the server bounded memory, does not hold up other
//! clients, and is cut off after `APPKIT_SSE_WRITE_TIMEOUT_MS`.
//!
//! The stuck client pipelines many `GET /api/demo/tasks/{key}/events` requests for one
//! finished `count` task on a single connection and then reads nothing: the server
//! replays the task's events from the store as fast as the socket takes them, which is
//! the quickest way to push megabytes at one connection (a live `count` emits a few
//! hundred to a few thousand ~45-byte events a second, and loopback socket buffers hold
//! megabytes before a write blocks). Once the kernel's buffers are full the server's
//! writes stall; the test then checks that
//!
//! - the server's RSS stays within [`RSS_BOUND`] of its warmed-up baseline although the
//!   stuck client asked for several times that much data;
//! - another client's live stream on the same server runs to completion meanwhile;
//! - the server closes the stuck connection once a write made no progress for the
//!   (test-short) timeout, logging the task key once, and the client sees the end of the
//!   stream (EOF or reset) after fewer bytes than it asked for.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{DEADLINE, Server, temp_dir, ticks};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The write-stall timeout the server runs with.
const WRITE_TIMEOUT_MS: u64 = 3_000;
/// Ticks of the finished task whose events the stuck client asks for again and again.
const TICKS: u32 = 500;
/// Replays pipelined on the stuck connection.
const REPLAYS: usize = 2_400;
/// Largest RSS growth allowed while the reader is stuck.
const RSS_BOUND: u64 = 8 * 1024 * 1024;
/// The server's send queue to the stuck client at which its writes count as blocked.
const STALLED_QUEUE: u64 = 256 * 1024;
const USER: &str = "stuck";

#[tokio::test]
async fn a_stuck_reader_costs_bounded_memory_does_not_hold_up_others_and_is_cut_off() {
    let dir = temp_dir();
    let timeout = WRITE_TIMEOUT_MS.to_string();
    let server = Server::start(dir.path(), &[("APPKIT_SSE_WRITE_TIMEOUT_MS", &timeout)]).await;

    // A finished task with TICKS events, and one full replay of it: warms the replay
    // path into the baseline and measures what one replay weighs.
    let body = format!(r#"{{"to":{TICKS},"delay_ms":0}}"#);
    let mut sse = server.sse_post("/api/demo/count", USER, &body, None).await;
    let key = sse
        .header("x-appkit-task-idempotency-key")
        .expect("key header")
        .to_owned();
    let frames = sse.frames_to_end().await;
    assert_eq!(frames.last().map(|f| f.event.as_str()), Some("completed"));
    let replay_bytes = replay_once(server.addr, &key).await;
    let requested = replay_bytes * REPLAYS as u64;
    assert!(
        requested >= 3 * RSS_BOUND,
        "the stuck client must ask for far more than the bound: {requested} bytes"
    );
    let baseline = rss_bytes(server.pid);

    // The stuck client: a small receive buffer, every request sent, nothing read.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stuck = socket.connect(server.addr).await.unwrap();
    let client_port = stuck.local_addr().unwrap().port();
    let (mut stuck_read, mut stuck_write) = stuck.into_split();
    let request = attach_request(server.addr, &key, false);
    let sent_at = Instant::now();
    let writer = tokio::spawn(async move {
        for _ in 0..REPLAYS {
            if stuck_write.write_all(request.as_bytes()).await.is_err() {
                break;
            }
        }
        stuck_write // kept open: a half-close would end the exchange
    });

    // Wait until the server's writes to it are blocked: its send queue is full.
    let queue = loop {
        if let Some(queue) = send_queue(server.addr.port(), client_port)
            && queue >= STALLED_QUEUE
        {
            break queue;
        }
        assert!(
            sent_at.elapsed() < DEADLINE,
            "the server's send queue to the stuck client never filled: {:?}",
            send_queue(server.addr.port(), client_port)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut peak = rss_bytes(server.pid);

    // Meanwhile another client's live stream flows as usual.
    let live_body = r#"{"to":200,"delay_ms":0}"#;
    let mut live = server
        .sse_post("/api/demo/count", "other", live_body, None)
        .await;
    let live_frames = live.frames_to_end().await;
    assert_eq!(ticks(&live_frames), (1..=200).collect::<Vec<u64>>());
    assert_eq!(
        live_frames.last().map(|f| f.event.as_str()),
        Some("completed")
    );
    assert_eq!(
        server.logs.count("read nothing"),
        0,
        "the stuck connection was closed before the other stream finished: raise WRITE_TIMEOUT_MS"
    );
    assert!(
        send_queue(server.addr.port(), client_port).is_some(),
        "the stuck connection is still open while the other stream flowed"
    );

    // Until the server gives up on it, the stuck connection costs bounded memory.
    let line = loop {
        peak = peak.max(rss_bytes(server.pid));
        if let Some(line) = server
            .logs
            .snapshot()
            .into_iter()
            .find(|l| l.contains("read nothing"))
        {
            break line;
        }
        assert!(
            sent_at.elapsed() < DEADLINE + Duration::from_millis(WRITE_TIMEOUT_MS),
            "the server did not close the stuck connection; logs:\n{}",
            server.logs.dump()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let closed_after = sent_at.elapsed();
    assert!(
        peak.saturating_sub(baseline) <= RSS_BOUND,
        "server RSS grew by {} KiB while a reader was stuck (baseline {} KiB, bound {} KiB; \
         the client asked for {} KiB; send queue was {queue} bytes)",
        peak.saturating_sub(baseline) / 1024,
        baseline / 1024,
        RSS_BOUND / 1024,
        requested / 1024,
    );
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains(&key), "the warning names the task: {line}");
    assert!(
        closed_after >= Duration::from_millis(WRITE_TIMEOUT_MS),
        "closed after {closed_after:?}, before the {WRITE_TIMEOUT_MS} ms timeout"
    );
    assert_eq!(server.logs.count("read nothing"), 1, "logged once");

    // The client, draining now, sees the end of the stream, short of what it asked for.
    let mut received = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let ended = tokio::time::timeout(DEADLINE, async {
        loop {
            match stuck_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received += n as u64,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stuck connection did not end");
    eprintln!(
        "stuck reader: replay {replay_bytes} B x {REPLAYS} = {} KiB asked; send queue {} KiB at the stall; \
         server RSS {} KiB -> peak {} KiB; closed {closed_after:?} after the requests; client got {} KiB",
        requested / 1024,
        queue / 1024,
        baseline / 1024,
        peak / 1024,
        received / 1024
    );
    assert!(
        received < requested,
        "received all {received} bytes: the server never cut the connection"
    );
    drop(writer);
}

/// `GET` of `key`'s events; with `close`, the server closes the connection after it.
fn attach_request(addr: SocketAddr, key: &str, close: bool) -> String {
    let connection = if close { "Connection: close\r\n" } else { "" };
    format!(
        "GET /api/demo/tasks/{key}/events HTTP/1.1\r\nHost: {addr}\r\n\
         X-Forwarded-User: {USER}\r\nAccept: text/event-stream\r\n{connection}\r\n"
    )
}

/// Reads one whole replay of `key`'s events; returns its size on the wire.
async fn replay_once(addr: SocketAddr, key: &str) -> u64 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(attach_request(addr, key, true).as_bytes())
        .await
        .unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut all))
        .await
        .expect("replay within the deadline")
        .unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200"), "{text:.200}");
    assert!(text.contains("event: completed"), "a whole replay");
    all.len() as u64
}

/// `VmRSS` of `pid`, bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// The kernel's send queue (bytes) of the loopback connection from `local_port` to
/// `remote_port`, from `/proc/net/tcp`; `None` when there is no such connection.
fn send_queue(local_port: u16, remote_port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
        if port(fields.get(1)?)? != local_port || port(fields.get(2)?)? != remote_port {
            return None;
        }
        let tx = fields.get(4)?.split(':').next()?;
        u64::from_str_radix(tx, 16).ok()
    })
}
