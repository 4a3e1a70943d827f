//! An SSE client over raw TCP: what a browser's `EventSource` reads, byte for byte.
//!
//! [`Sse::open`] and [`Sse::next`] panic on failure (most tests want that);
//! [`Sse::try_open`] and [`Sse::try_next_frame`] return [`SseError`] instead, for chaos
//! tests whose server dies mid-stream. Re-attach after a break by sending
//! [`Sse::last_id`] as `Last-Event-ID`.

use std::io;
use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::DEADLINE;
use crate::http::{self, Response};

/// What an SSE stream carried: a frame (its raw lines, without the blank line) or a
/// comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A frame's raw lines.
    Frame(String),
    /// A comment (every line starts with `:`), e.g. a keep-alive `: hb`.
    Comment(String),
}

/// An item and when it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    /// The item.
    pub item: Item,
    /// When it was parsed.
    pub at: Instant,
}

/// A parsed SSE frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// `id:`, when the frame has one.
    pub id: Option<u64>,
    /// `event:`, `message` when absent.
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

impl Frame {
    /// Parses a frame's raw lines.
    ///
    /// # Panics
    /// When `id:` is not a number (the server's ids always are).
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

    /// The data as JSON.
    ///
    /// # Panics
    /// When the data is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("frame data is JSON")
    }
}

/// Why an SSE stream could not be opened or read on.
#[derive(Debug)]
pub enum SseError {
    /// Connecting, sending or reading failed: the server is down or died mid-stream
    /// (including a connection that ended without the body's last chunk).
    Io(io::Error),
    /// The server answered, but not with a 200 stream.
    Refused(Response),
    /// The stream ended in the middle of a frame.
    Partial(String),
}

impl std::fmt::Display for SseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SseError::Io(e) => write!(f, "stream broke: {e}"),
            SseError::Refused(r) => write!(f, "stream refused: {} {}", r.status, r.text()),
            SseError::Partial(text) => write!(f, "stream ended inside a frame: {text:?}"),
        }
    }
}

impl std::error::Error for SseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SseError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for SseError {
    fn from(e: io::Error) -> Self {
        SseError::Io(e)
    }
}

/// An open SSE response read over raw TCP. Dropping it closes the connection.
#[derive(Debug)]
pub struct Sse {
    reader: BufReader<TcpStream>,
    /// The response status (200).
    pub status: u16,
    /// The response headers.
    pub headers: Vec<(String, String)>,
    text: String,
    ended: bool,
    last_id: Option<u64>,
}

impl Sse {
    /// Sends the request; `Err` with the whole response unless it is a 200 stream.
    ///
    /// # Panics
    /// When the connection fails or no head arrives within [`DEADLINE`].
    pub async fn open(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Result<Self, Response> {
        match Self::try_open(addr, method, path, headers, body).await {
            Ok(sse) => Ok(sse),
            Err(SseError::Refused(response)) => Err(response),
            Err(e) => panic!("{method} {path}: {}", crate::error_chain(&e)),
        }
    }

    /// Sends the request and reads the head within [`DEADLINE`].
    ///
    /// # Errors
    /// [`SseError::Io`] when the server cannot be reached or the head does not arrive
    /// (a timeout is `TimedOut`), [`SseError::Refused`] with the whole response when it
    /// is not a 200 stream.
    pub async fn try_open(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Result<Self, SseError> {
        let head = async {
            let mut reader = http::send(addr, method, path, headers, body).await?;
            let (status, headers) = http::read_head(&mut reader).await?;
            Ok::<_, io::Error>((reader, status, headers))
        };
        let (mut reader, status, headers) = tokio::time::timeout(DEADLINE, head)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no response head"))??;
        if status != 200 {
            let body = http::read_body(&mut reader, &headers).await;
            return Err(SseError::Refused(Response {
                status,
                headers,
                body,
            }));
        }
        Ok(Self {
            reader,
            status,
            headers,
            text: String::new(),
            ended: false,
            last_id: None,
        })
    }

    /// The first response header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        http::header(&self.headers, name)
    }

    /// The id of the last frame read that had one: what to send as `Last-Event-ID`.
    pub fn last_id(&self) -> Option<u64> {
        self.last_id
    }

    /// The next item, or `None` once the body ended.
    ///
    /// # Panics
    /// After [`DEADLINE`] without an item, when the connection breaks, or when the body
    /// ends inside a frame.
    pub async fn next(&mut self) -> Option<Received> {
        match tokio::time::timeout(DEADLINE, self.try_next()).await {
            Ok(Ok(item)) => item,
            Ok(Err(SseError::Io(_))) => None, // a closed connection ends the stream
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => panic!("no SSE item within {DEADLINE:?} (buffer {:?})", self.text),
        }
    }

    /// The next item: `Ok(None)` after the body's last chunk, an error when the
    /// connection broke before it. Waits as long as it takes (wrap it in a timeout).
    ///
    /// # Errors
    /// [`SseError::Io`] when the connection ended without the last chunk,
    /// [`SseError::Partial`] when it ended inside a frame.
    pub async fn try_next(&mut self) -> Result<Option<Received>, SseError> {
        loop {
            if let Some(cut) = self.text.find("\n\n") {
                let raw: String = self.text[..cut].to_owned();
                self.text.drain(..cut + 2);
                let item = if raw.lines().all(|l| l.starts_with(':')) {
                    Item::Comment(raw)
                } else {
                    Item::Frame(raw)
                };
                return Ok(Some(Received {
                    item,
                    at: Instant::now(),
                }));
            }
            if self.ended {
                if self.text.is_empty() {
                    return Ok(None);
                }
                return Err(SseError::Partial(std::mem::take(&mut self.text)));
            }
            match http::read_chunk(&mut self.reader).await {
                Ok(Some(chunk)) => match std::str::from_utf8(&chunk) {
                    Ok(text) => self.text.push_str(text),
                    Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e).into()),
                },
                Ok(None) => self.ended = true,
                Err(e) => {
                    self.ended = true;
                    if self.text.is_empty() {
                        return Err(e.into());
                    }
                    return Err(SseError::Partial(std::mem::take(&mut self.text)));
                }
            }
        }
    }

    /// The next frame, skipping comments: `Ok(None)` at the end of the body.
    ///
    /// # Errors
    /// As [`Sse::try_next`].
    pub async fn try_next_frame(&mut self) -> Result<Option<Frame>, SseError> {
        while let Some(r) = self.try_next().await? {
            if let Item::Frame(raw) = r.item {
                let frame = Frame::parse(&raw);
                if frame.id.is_some() {
                    self.last_id = frame.id;
                }
                return Ok(Some(frame));
            }
        }
        Ok(None)
    }

    /// The next frame, skipping comments; `None` at the end (or when the connection
    /// closed).
    ///
    /// # Panics
    /// As [`Sse::next`].
    pub async fn next_frame(&mut self) -> Option<Frame> {
        while let Some(r) = self.next().await {
            if let Item::Frame(raw) = r.item {
                let frame = Frame::parse(&raw);
                if frame.id.is_some() {
                    self.last_id = frame.id;
                }
                return Some(frame);
            }
        }
        None
    }

    /// Every remaining frame until the body ends.
    ///
    /// # Panics
    /// As [`Sse::next`].
    pub async fn frames_to_end(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(f) = self.next_frame().await {
            frames.push(f);
        }
        frames
    }
}

/// The `i` of `tick` frames, in order.
///
/// # Panics
/// When a tick has no numeric `i`.
pub fn ticks(frames: &[Frame]) -> Vec<u64> {
    frames
        .iter()
        .filter(|f| f.event == "tick")
        .map(|f| f.json()["i"].as_u64().expect("tick i"))
        .collect()
}

/// What a browser following one task saw, across every attach: see [`follow`].
#[derive(Debug)]
pub struct History {
    /// The task's idempotency key.
    pub key: String,
    /// Every frame but `ready` and `error`, in the order received.
    pub frames: Vec<Frame>,
    /// How many times the follower re-attached.
    pub reattached: u32,
}

impl History {
    /// Checks a demo `count` of `n` ticks: ids strictly increasing across re-attaches,
    /// ticks `1..=n` each once, one `completed`, and it last.
    ///
    /// # Panics
    /// When any of that does not hold.
    pub fn check_count(&self, n: u64) {
        let key = &self.key;
        let ids: Vec<u64> = self.frames.iter().filter_map(|f| f.id).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "task {key}: ids strictly increasing across re-attaches: {ids:?}"
        );
        assert_eq!(
            ticks(&self.frames),
            (1..=n).collect::<Vec<_>>(),
            "task {key}: every tick once: {:#?}",
            self.frames
        );
        let completed = self.frames.iter().filter(|f| f.event == "completed");
        assert_eq!(completed.count(), 1, "task {key}: one completed");
        assert_eq!(
            self.frames.last().map(|f| f.event.as_str()),
            Some("completed"),
            "task {key}"
        );
    }
}

/// Follows the demo task `key` as `user` would in a browser: reads `sse` to its end and,
/// whenever it ends without `completed` (an in-band `error`, or the connection closed),
/// re-attaches to `/api/demo/tasks/{key}/events` with `Last-Event-ID`, retrying every
/// 100 ms while the attach is refused with 503, until a stream ends with `completed`.
///
/// # Panics
/// When `within` passes first, or a re-attach is refused with anything but 503.
pub async fn follow(
    addr: SocketAddr,
    user: impl Into<String>,
    key: String,
    mut sse: Sse,
    within: std::time::Duration,
) -> History {
    let user: String = user.into();
    let deadline = Instant::now() + within;
    let mut frames: Vec<Frame> = Vec::new();
    let mut reattached = 0;
    loop {
        let mut done = false;
        while let Some(frame) = sse.next_frame().await {
            if frame.event == "ready" || frame.event == "error" {
                continue;
            }
            done |= frame.event == "completed";
            frames.push(frame);
        }
        if done {
            break;
        }
        let last = frames.iter().rev().find_map(|f| f.id).unwrap_or(0);
        let last = last.to_string();
        let path = format!("/api/demo/tasks/{key}/events");
        sse = loop {
            assert!(Instant::now() < deadline, "task {key}: not completed");
            let headers = [
                ("X-Forwarded-User", user.as_str()),
                ("Last-Event-ID", last.as_str()),
            ];
            match Sse::open(addr, "GET", &path, &headers, None).await {
                Ok(sse) => break sse,
                Err(r) => {
                    assert_eq!(r.status, 503, "task {key}: re-attach refused: {}", r.text());
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        };
        reattached += 1;
    }
    History {
        key,
        frames,
        reattached,
    }
}
