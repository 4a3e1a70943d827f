//! One raw HTTP/1.1 request per connection (`Connection: close`), for tests where the
//! bytes on the wire are the point (status lines, chunked bodies, headers as sent).
//! Elsewhere use [`crate::http_client`].

use std::io;
use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::DEADLINE;

/// A whole HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers in the order received.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    ///
    /// # Panics
    /// When the body is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

pub(crate) fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

pub(crate) fn request_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Vec<u8> {
    use std::fmt::Write as _;

    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    if let Some(body) = body {
        let _ = write!(
            head,
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.unwrap_or("").as_bytes());
    bytes
}

fn broken(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, what.to_owned())
}

/// Connects and sends one request; the reader positioned at the response.
pub(crate) async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> io::Result<BufReader<TcpStream>> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(&request_bytes(addr, method, path, headers, body))
        .await?;
    Ok(BufReader::new(stream))
}

/// Reads a response head: status and headers.
pub(crate) async fn read_head(
    reader: &mut BufReader<TcpStream>,
) -> io::Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Err(broken("connection closed before the status line"));
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("{line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Err(broken("connection closed inside the head"));
        }
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        let (k, v) = trimmed
            .split_once(':')
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, trimmed.to_owned()))?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    Ok((status, headers))
}

pub(crate) fn is_chunked(headers: &[(String, String)]) -> bool {
    header(headers, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
}

/// The next chunk of a chunked body: `Ok(None)` at the last (zero-size) chunk, an error
/// when the connection ends or breaks before it.
pub(crate) async fn read_chunk(reader: &mut BufReader<TcpStream>) -> io::Result<Option<Vec<u8>>> {
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Err(broken("connection closed before the last chunk"));
    }
    let size = line
        .trim()
        .split(';')
        .next()
        .and_then(|s| usize::from_str_radix(s, 16).ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("chunk {line:?}")))?;
    if size == 0 {
        return Ok(None);
    }
    let mut chunk = vec![0; size + 2];
    reader.read_exact(&mut chunk).await?;
    chunk.truncate(size);
    Ok(Some(chunk))
}

/// The rest of a body after its head: de-chunked, or read to EOF. A broken body ends
/// where it broke.
pub(crate) async fn read_body(
    reader: &mut BufReader<TcpStream>,
    headers: &[(String, String)],
) -> Vec<u8> {
    let mut body = Vec::new();
    if is_chunked(headers) {
        while let Ok(Some(chunk)) = read_chunk(reader).await {
            body.extend_from_slice(&chunk);
        }
    } else {
        let _ = reader.read_to_end(&mut body).await;
    }
    body
}

/// One HTTP/1.1 request on its own connection (`Connection: close`), or the I/O error
/// that stopped it (refused, reset, closed early).
///
/// # Errors
/// When the connection cannot be made or breaks before the head is read.
pub async fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> io::Result<Response> {
    let mut reader = send(addr, method, path, headers, body).await?;
    let (status, headers) = read_head(&mut reader).await?;
    let body = read_body(&mut reader, &headers).await;
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// One HTTP/1.1 request on its own connection (`Connection: close`).
///
/// # Panics
/// When the request fails or gets no response within [`DEADLINE`].
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Response {
    match tokio::time::timeout(DEADLINE, try_request(addr, method, path, headers, body)).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => panic!("{method} {path}: {}", crate::error_chain(&e)),
        Err(_) => panic!("{method} {path} got no response within {DEADLINE:?}"),
    }
}
