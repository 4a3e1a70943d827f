//! Running tasks: the claim loop and one runner per attempt.

pub(crate) mod executor;
pub(crate) mod runner;
