//! Extractors: the request's user, JSON bodies with the host's error shape, the SSE
//! resume cursor, and the two together for task routes ([`TaskRequest`]).

mod json;
mod task_request;
mod user;

pub use crate::stream::LastEventId;
pub use json::Json;
pub use task_request::TaskRequest;
pub(crate) use user::RequestPolicy;
pub use user::{DEV_USER_ID, UserContext, UserExtractor};
