//! TaskFlow: a durable task engine.
//!
//! Register typed handlers, submit tasks with idempotency keys, subscribe to their events,
//! stop, resume and cancel them, and checkpoint their steps. The store (SQLite embedded,
//! or Postgres for several processes) is the write-ahead log: every acknowledgement —
//! submit, emit, step, state change — comes after its commit, and subscribers only ever see
//! committed events.
//!
//! ```text
//! pending --claim--> running --ok--> completed
//!    ^                  |----err, attempts left--> pending (run_at = now + backoff)
//!    |                  |----err, none left------> failed (dead-lettered)
//!    |                  |----stop---------------> suspended --resume--> pending
//!    |                  |----cancel-------------> cancelled
//!    |                  '----lease expired------> pending (auto_recover) | suspended
//!    '----------- shutdown releases a running task back to pending, attempt not spent
//! pending|suspended --cancel--> cancelled          failed --redrive--> pending
//! ```
//!
//! Start with [`TaskFlow`]. The engine knows nothing of HTTP; the `appkit` host turns its
//! streams into SSE. How the engine is built inside is mapped in `docs/architecture.md`.

mod backoff;
mod config;
mod delivery;
mod error;
mod event;
mod execution;
mod flow;
mod handler;
mod key;
mod limits;
mod metrics;
mod node;
mod services;
#[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
mod store;
mod task;
#[cfg(feature = "testing")]
pub mod testing;
mod typed;
mod writer;

pub use config::*;
pub use delivery::EventStream;
pub use error::{Error, Result};
pub use event::{EventKind, NewEvent, RESERVED_EVENT_NAMES, TaskEvent};
pub use flow::{NodeStats, TaskFlow};
pub use handler::{TaskContext, TaskError, TaskErrorKind};
pub use key::idempotency_key;
pub use limits::{MAX_KEY_LEN, MAX_PAYLOAD_BYTES, RateLimit};
pub use store::{Backend, PostgresStore, SqliteStore, SqliteSynchronous, Store};
pub use task::{
    DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT, IdempotencyMode, SubmitOptions, Submitted, TaskHandle,
    TaskInfo, TaskOptions, TaskStatus,
};
pub use typed::{TaskDef, TaskName};

/// This crate's README, compiled as doc tests so it cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
