//! Delivery of committed events to subscribers: the live hub and the resumable stream.

mod hub;
mod stream;

pub(crate) use hub::Hub;
pub use stream::EventStream;
pub(crate) use stream::open as open_stream;
