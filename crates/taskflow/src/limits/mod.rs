//! Limits on what comes in: size and shape checks of names, keys, users and payloads, and
//! the sliding windows behind rate limits. (Admission itself, the pending bound and the
//! rate-limit decisions, lives in `node::admission`.)

mod ratelimit;
mod validate;

pub use ratelimit::RateLimit;
pub(crate) use ratelimit::SlidingWindow;
pub use validate::{MAX_KEY_LEN, MAX_PAYLOAD_BYTES};
pub(crate) use validate::{
    check_event_name, check_key, check_payload, check_task_name, check_user, valid_task_name,
};
