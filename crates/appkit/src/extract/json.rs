//! A JSON body extractor whose rejections answer in the host's error shape.

use axum::extract::FromRequest;

use crate::error::Error;

/// Like [`axum::Json`], but a bad body answers with the host's JSON error: 400 for
/// malformed or mistyped JSON, 413 over the body limit, 415 without a JSON content type.
///
/// # Examples
///
/// ```
/// use appkit::extract::Json;
/// #[derive(serde::Deserialize)]
/// struct Input { to: u32 }
/// async fn handler(Json(input): Json<Input>) -> String {
///     input.to.to_string()
/// }
/// # let _: axum::routing::MethodRouter = axum::routing::post(handler);
/// ```
#[derive(Debug, Clone, Copy, Default, FromRequest)]
#[from_request(via(axum::Json), rejection(Error))]
pub struct Json<T>(pub T);
