//! Admission: validation limits, rate limits and the pending bound.

mod ratelimit;
mod validate;

pub use ratelimit::RateLimit;
pub(crate) use ratelimit::SlidingWindow;
pub use validate::{MAX_KEY_LEN, MAX_PAYLOAD_BYTES};
pub(crate) use validate::{
    check_event_name, check_key, check_payload, check_task_name, check_user,
};
