//! Running tasks: slots, the claim loop, one runner per attempt, leases and recovery.

pub(crate) mod executor;
pub(crate) mod maintenance;
pub(crate) mod retry;
pub(crate) mod runner;
pub(crate) mod slots;
