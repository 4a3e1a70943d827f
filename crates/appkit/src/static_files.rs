//! The app's built front end, with an SPA fallback that never swallows `/api/*`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use tower::ServiceExt;
use tower_http::services::{ServeDir, ServeFile};

use crate::error::Error;

/// `true` for `/api` and everything under it.
pub(crate) fn is_api(path: &str) -> bool {
    path == "/api" || path.starts_with("/api/")
}

/// The router's fallback: `/api/*` answers the JSON 404; anything else is a file of `dir`,
/// or `dir/index.html` when there is no such file; without a `dir`, the JSON 404.
pub(crate) fn fallback(
    dir: Option<PathBuf>,
) -> impl Fn(Request) -> futures_util::future::BoxFuture<'static, Response> + Clone + Send + Sync + 'static
{
    let dir = dir.map(Arc::new);
    move |req: Request| {
        let dir = dir.clone();
        Box::pin(async move {
            match dir {
                Some(dir) if !is_api(req.uri().path()) => serve(&dir, req).await,
                _ => Error::NotFound.into_response(),
            }
        })
    }
}

async fn serve(dir: &Path, req: Request) -> Response {
    let index = ServeFile::new(dir.join("index.html"));
    match ServeDir::new(dir).fallback(index).oneshot(req).await {
        Ok(response) => response.map(Body::new),
        Err(e) => Error::internal(e).into_response(),
    }
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
}
