//! The app's built front end, with an SPA fallback that never swallows `/api/*`.
//!
//! Every HTML page the host answers with its `index.html` (`/`, `/index.html` and the SPA
//! fallback) gets `window.__CONFIG__` in a script tag: `appName` (`DATABRICKS_APP_NAME`)
//! and each plugin's endpoint map, which AppKit front ends read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tower::ServiceExt;
use tower_http::services::ServeDir;

use crate::error::Error;

/// `true` for `/api` and everything under it.
pub(crate) fn is_api(path: &str) -> bool {
    path == "/api" || path.starts_with("/api/")
}

/// What the front end is told: `{"appName": …, "endpoints": {plugin: {name: path}}}`.
pub(crate) fn client_config(
    app_name: Option<&str>,
    endpoints: BTreeMap<String, BTreeMap<String, String>>,
) -> Value {
    json!({ "appName": app_name, "endpoints": endpoints })
}

/// `<script>window.__CONFIG__ = …;</script>` for `config`, JSON-escaped for a script tag:
/// `<`, `>`, `&`, U+2028 and U+2029 become `\uXXXX` escapes (they can only occur inside
/// JSON strings, where the escapes mean the same), so no value can close the tag.
pub(crate) fn config_script(config: &Value) -> String {
    let json = config.to_string();
    let mut escaped = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => escaped.push_str("\\u003c"),
            '>' => escaped.push_str("\\u003e"),
            '&' => escaped.push_str("\\u0026"),
            '\u{2028}' => escaped.push_str("\\u2028"),
            '\u{2029}' => escaped.push_str("\\u2029"),
            c => escaped.push(c),
        }
    }
    format!("<script>window.__CONFIG__ = {escaped};</script>")
}

/// `html` with `script` before its `</head>` (any case), or at its start without one.
fn inject(html: &str, script: &str) -> String {
    let at = html.to_ascii_lowercase().find("</head>").unwrap_or(0);
    let mut out = String::with_capacity(html.len() + script.len());
    out.push_str(&html[..at]);
    out.push_str(script);
    out.push_str(&html[at..]);
    out
}

/// The router's fallback: `/api/*` answers the JSON 404; anything else is a file of `dir`,
/// or `dir/index.html` (with `script` injected) for `/`, `/index.html` and every path
/// with no such file; without a `dir`, the JSON 404.
pub(crate) fn fallback(
    dir: Option<PathBuf>,
    script: Arc<str>,
) -> impl Fn(Request) -> futures_util::future::BoxFuture<'static, Response> + Clone + Send + Sync + 'static
{
    let dir = dir.map(Arc::new);
    move |req: Request| {
        let dir = dir.clone();
        let script = script.clone();
        Box::pin(async move {
            match dir {
                Some(dir) if !is_api(req.uri().path()) => serve(&dir, &script, req).await,
                _ => Error::NotFound.into_response(),
            }
        })
    }
}

async fn serve(dir: &Path, script: &str, req: Request) -> Response {
    let path = req.uri().path();
    if path == "/" || path == "/index.html" {
        return index(dir, script).await;
    }
    match ServeDir::new(dir).oneshot(req).await {
        Ok(response) if response.status() == StatusCode::NOT_FOUND => index(dir, script).await,
        Ok(response) => response.map(Body::new),
        Err(e) => Error::internal(e).into_response(),
    }
}

/// `dir/index.html` with the config script.
async fn index(dir: &Path, script: &str) -> Response {
    let html = match tokio::fs::read_to_string(dir.join("index.html")).await {
        Ok(html) => html,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Error::NotFound.into_response();
        }
        Err(e) => return Error::internal(e).into_response(),
    };
    let mut response = inject(&html, script).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The directory to serve: `APPKIT_STATIC_DIR`, else the app's choice, else
/// `client/dist` if it exists.
pub(crate) fn resolve_dir(configured: Option<&Path>, app: Option<&Path>) -> Option<PathBuf> {
    configured.or(app).map(Path::to_path_buf).or_else(|| {
        let default = PathBuf::from(crate::config::DEFAULT_STATIC_DIR);
        default.is_dir().then_some(default)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_paths_are_recognised() {
        assert!(is_api("/api"));
        assert!(is_api("/api/demo/x"));
        assert!(!is_api("/apix"));
        assert!(!is_api("/"));
    }

    #[test]
    fn the_config_cannot_break_out_of_its_script_tag() {
        let name = "</script><script>alert(1)</script> & \u{2028}\u{2029}";
        let config = client_config(Some(name), BTreeMap::new());
        let script = config_script(&config);
        let inner = script
            .strip_prefix("<script>window.__CONFIG__ = ")
            .and_then(|s| s.strip_suffix(";</script>"))
            .unwrap();
        assert!(
            !inner.contains(['<', '>', '&', '\u{2028}', '\u{2029}']),
            "{inner}"
        );
        // Still the same JSON.
        let back: Value = serde_json::from_str(inner).unwrap();
        assert_eq!(back, config);
    }

    #[test]
    fn the_script_goes_before_the_end_of_head() {
        let html = "<html><HEAD><title>t</title></HEAD><body></body></html>";
        assert_eq!(
            inject(html, "<script>x</script>"),
            "<html><HEAD><title>t</title><script>x</script></HEAD><body></body></html>"
        );
        assert_eq!(inject("<h1>x</h1>", "<s>"), "<s><h1>x</h1>");
    }
}
