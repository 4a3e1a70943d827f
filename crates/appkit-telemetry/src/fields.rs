//! The catalogue of span names and fields used across the workspace.
//!
//! Every crate records through `tracing` macros; this module is the one place that says
//! which names exist and what they mean. The constants are for code that handles names as
//! values (tests, filters); `tracing` macros take the literal dotted names.
//!
//! # Spans
//!
//! | span | where | fields |
//! | --- | --- | --- |
//! | `http_request` (OTel name `"{METHOD} {route}"`, kind server) | host, outermost layer, see [`crate::http`] | `http.request.method`, `http.route`, `http.response.status_code` |
//! | [`TASKFLOW_SUBMIT`] | `taskflow`, one per submit | `task.name`, `task.id` (once known) |
//! | [`TASKFLOW_TASK_EXECUTE`] | `taskflow`, one per attempt | `task.name`, `task.id`, `task.attempt` |
//! | [`TASKFLOW_STEP`] | `taskflow`, one per `ctx.step` run | `task.name`, `task.id`, `task.attempt`, `step.name` |
//! | [`TASKFLOW_RECOVERY_SCAN`] | `taskflow`, one per reaper scan | `startup` (true for the start-up scan) |
//!
//! # Fields
//!
//! | field | type | meaning |
//! | --- | --- | --- |
//! | [`TASK_NAME`] | string | registered task name |
//! | [`TASK_ID`] | string (UUIDv7) | task id; in fields only, never in messages or metric labels |
//! | [`TASK_ATTEMPT`] | integer | attempt number, 1 for the first |
//! | [`STEP_NAME`] | string | the step's name as given to `ctx.step` |
//! | [`HTTP_REQUEST_METHOD`] | string | request method (`GET`) |
//! | [`HTTP_ROUTE`] | string | matched route template (`/api/demo/tasks/{key}`), never the raw path |
//! | [`HTTP_RESPONSE_STATUS_CODE`] | integer | response status |
//!
//! IDs go in dotted fields, never in the message text:
//! `info!(task.id = %id, task.attempt = n, "task claimed")`. Metric labels never carry ids
//! or user ids.
//!
//! # Metrics
//!
//! Meter `taskflow` (through `opentelemetry::global::meter`, so [`init`](crate::init) must
//! run before the engine starts): counters `taskflow.tasks.submitted`, `.completed`,
//! `.failed`, `.retried`, `.recovered`, `taskflow.admission.rejected`; up-down counters
//! `taskflow.tasks.running`, `taskflow.streams.active`; gauge `taskflow.tasks.pending`;
//! histogram `taskflow.task.duration`.
//!
//! # Controls read by `tracing-opentelemetry`
//!
//! `otel.name` overrides the exported span name, `otel.kind` sets the span kind
//! (`server`, `client`, `internal`, `producer`, `consumer`), `otel.status_code` sets the
//! status (`ok` or `error`).

/// Span: one task submission.
pub const TASKFLOW_SUBMIT: &str = "taskflow.submit";
/// Span: one execution attempt of a task.
pub const TASKFLOW_TASK_EXECUTE: &str = "taskflow.task.execute";
/// Span: one checkpointed step inside a task.
pub const TASKFLOW_STEP: &str = "taskflow.step";
/// Span: one scan of the lease reaper for expired or orphaned tasks.
pub const TASKFLOW_RECOVERY_SCAN: &str = "taskflow.recovery.scan";

/// Field: the registered task name.
pub const TASK_NAME: &str = "task.name";
/// Field: the task id (UUIDv7).
pub const TASK_ID: &str = "task.id";
/// Field: the attempt number, starting at 1.
pub const TASK_ATTEMPT: &str = "task.attempt";

/// Field: the name of a checkpointed step.
pub const STEP_NAME: &str = "step.name";

/// Field: the HTTP request method.
pub const HTTP_REQUEST_METHOD: &str = "http.request.method";
/// Field: the matched route template.
pub const HTTP_ROUTE: &str = "http.route";
/// Field: the HTTP response status code.
pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
