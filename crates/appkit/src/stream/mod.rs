//! The SSE bridge: task events to server-sent events, with keep-alive, resume, the
//! disconnect grace and the shutdown drain; and plugin-owned SSE streams
//! ([`PluginContext::sse_stream`](crate::PluginContext::sse_stream)), drained the same way.

mod bridge;
mod failure;
mod keepalive;
mod plugin;
mod registry;
mod resume;

pub(crate) use bridge::{BridgeParams, sse_response};
pub(crate) use failure::client_error;
pub use failure::{ATTEMPT_FAILED_MESSAGE, TASK_FAILED_MESSAGE};
pub(crate) use plugin::{channel_events, plugin_sse_response};
pub(crate) use registry::{BridgeRegistry, DisconnectPolicy};
pub use resume::LastEventId;

/// Header carrying the task's idempotency key on every bridge response.
pub const IDEMPOTENCY_KEY_HEADER: &str = "x-appkit-task-idempotency-key";

/// Message of the final frame every open bridge gets at shutdown.
pub const SHUTTING_DOWN_MESSAGE: &str = "server_shutting_down";
