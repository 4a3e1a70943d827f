//! Extractors: the request's user, JSON bodies with the host's error shape, and the SSE
//! resume cursor.

mod json;
mod user;

pub use crate::stream::LastEventId;
pub use json::Json;
pub(crate) use user::RequestPolicy;
pub use user::{DEV_USER_ID, UserContext, UserExtractor};
