//! Test support, behind the `testing` feature: the engine's internal write protocol and
//! storage interface, for the store conformance suite (`crates/taskflow-store-tests`) and
//! for tests that must reach below the public API (a task claimed by a "dead" process,
//! a COMMIT that fails after the database committed).
//!
//! Nothing here is a stable API; applications use [`TaskFlow`].

use std::sync::Arc;

pub use crate::store::batch::PURGE_LIMIT;

pub use crate::store::{
    ClaimBudget, ClaimNow, ClaimParams, ClaimedTask, Control, Faults, Fence, Finish, Notice,
    OpOutcome, OpResult, RenewedLease, Storage, SubmitParams, WriteOp,
};
use crate::{Config, Result, Store, TaskFlow};

/// The storage interface of a store, to drive it op by op.
pub fn storage(store: impl Store) -> Arc<dyn Storage> {
    crate::store::into_storage(store)
}

/// Starts an engine on a storage the test keeps a handle to (to arm [`Faults`] or write
/// ops beside the engine).
///
/// # Errors
///
/// As for [`TaskFlow::start`].
pub async fn start_on(storage: Arc<dyn Storage>, config: Config) -> Result<TaskFlow> {
    TaskFlow::start_on(storage, config).await
}

/// Milliseconds since the Unix epoch, as the engine stamps ops.
pub fn now_ms() -> i64 {
    crate::store::now_ms()
}
