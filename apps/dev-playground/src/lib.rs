//! The dev-playground's demo plugin: `count`, `flaky`, `refuse`, `sleep` and `obo` tasks
//! streamed over SSE, the task routes, a plugin-owned SSE stream (`clock`), and a web page
//! at `/`.

use std::collections::BTreeMap;
use std::time::Duration;

use appkit::extract::Json;
use appkit::taskflow::{TaskContext, TaskDef, TaskError, TaskOptions};
use appkit::{
    AppBuilder, BoxError, Error, Plugin, PluginContext, SetupContext, TaskRequest, UserContext,
};
use axum::Router;
use axum::extract::Query;
use axum::extract::State;
use axum::response::Response;
use axum::response::sse::Event;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Largest `to` a count may have.
pub const MAX_COUNT: u32 = 100_000;
/// Longest delay or sleep a demo task may ask for, in milliseconds.
pub const MAX_DELAY_MS: u64 = 3_600_000;
/// Attempts the flaky task gets, so `fail_times` up to 9 still completes.
pub const FLAKY_MAX_ATTEMPTS: u32 = 10;

/// The app: the demo plugin and the page in `static/`.
pub fn app(test_tasks: bool) -> AppBuilder {
    appkit::App::builder()
        .plugin(Demo { test_tasks })
        .static_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/static"))
}

/// The `demo` plugin: routes under `/api/demo`.
#[derive(Debug, Default)]
pub struct Demo {
    /// Also register the `stubborn` task, which ignores cancellation.
    pub test_tasks: bool,
}

/// Input of `count`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountInput {
    /// Ticks to emit.
    pub to: u32,
    /// Delay before each tick, in milliseconds.
    pub delay_ms: u64,
}

/// Input of `flaky`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlakyInput {
    /// Attempts that fail before one succeeds.
    pub fail_times: u32,
}

/// Query of `GET /clock`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockQuery {
    /// Time between ticks, in milliseconds (at least 1).
    pub interval_ms: u64,
    /// Ticks before the stream ends; without it, it never ends.
    pub ticks: Option<u64>,
}

/// Input of `refuse`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefuseInput {
    /// Why: shown to the user in the failure message.
    pub reason: String,
}

/// Input of `sleep` and `stubborn`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SleepInput {
    /// How long to sleep, in milliseconds.
    pub ms: u64,
}

/// `count`: ticks with checkpointed steps.
pub const COUNT: TaskDef<CountInput, Value> = TaskDef::new("count");
/// `flaky`: fails its first attempts, then succeeds.
pub const FLAKY: TaskDef<FlakyInput, Value> = TaskDef::new("flaky");
/// `refuse`: fails at once with a public message.
pub const REFUSE: TaskDef<RefuseInput, Value> = TaskDef::new("refuse");
/// `obo`: acts on behalf of its user (reads the token).
pub const OBO: TaskDef<SleepInput, Value> = TaskDef::new("obo");
/// `sleep`: sleeps without emitting.
pub const SLEEP: TaskDef<SleepInput, Value> = TaskDef::new("sleep");
/// `stubborn` (test builds only): ignores every request to stop.
pub const STUBBORN: TaskDef<SleepInput, Value> = TaskDef::new("stubborn");
/// `obo-careless` (test builds only): an on-behalf-of task left with `auto_recover` on.
pub const OBO_CARELESS: TaskDef<SleepInput, Value> = TaskDef::new("obo-careless");

#[appkit::async_trait]
impl Plugin for Demo {
    fn name(&self) -> &str {
        "demo"
    }

    async fn setup(&mut self, cx: &SetupContext) -> Result<(), BoxError> {
        let flow = cx.taskflow();
        flow.register(COUNT, count)?;
        flow.register_with(
            FLAKY,
            TaskOptions::new().max_attempts(FLAKY_MAX_ATTEMPTS),
            flaky,
        )?;
        flow.register(REFUSE, refuse)?;
        // Acts with the user's token: suspended rather than recovered without it, and
        // resumed (task route) with the resuming request's fresh token.
        flow.register_with(
            OBO,
            TaskOptions::new().on_behalf_of(true).auto_recover(false),
            obo,
        )?;
        flow.register(SLEEP, sleep)?;
        if self.test_tasks {
            flow.register(STUBBORN, stubborn)?;
            // What not to do: an on-behalf-of task left with auto_recover on (warned about).
            flow.register_with(OBO_CARELESS, TaskOptions::new().on_behalf_of(true), obo)?;
        }
        Ok(())
    }

    fn endpoints(&self) -> BTreeMap<String, String> {
        [
            ("clock", "/clock"),
            ("count", "/count"),
            ("flaky", "/flaky"),
            ("obo", "/obo"),
            ("refuse", "/refuse"),
            ("sleep", "/sleep"),
            ("tasks", "/tasks"),
        ]
        .into_iter()
        .map(|(name, path)| (name.to_owned(), path.to_owned()))
        .collect()
    }

    fn routes(&self) -> Router<PluginContext> {
        let mut router = Router::new()
            .route("/clock", get(clock))
            .route("/count", post(start_count))
            .route("/flaky", post(start_flaky))
            .route("/refuse", post(start_refuse))
            .route("/obo", post(start_obo))
            .route("/sleep", post(start_sleep));
        if self.test_tasks {
            router = router.route("/stubborn", post(start_stubborn));
        }
        router.nest("/tasks", appkit::task_routes())
    }
}

/// Sleeps `ms`, or returns early with a retryable error when the run is asked to stop.
async fn pause(ctx: &TaskContext, ms: u64) -> Result<(), TaskError> {
    tokio::select! {
        () = tokio::time::sleep(Duration::from_millis(ms)) => Ok(()),
        () = ctx.cancelled() => Err(TaskError::retryable("run stopped")),
    }
}

/// For i in 1..=to: a step `tick-{i}` that sleeps `delay_ms` and emits `tick {"i": i}`.
async fn count(ctx: TaskContext, input: CountInput) -> Result<Value, TaskError> {
    for i in 1..=input.to {
        ctx.step(&format!("tick-{i}"), async {
            pause(&ctx, input.delay_ms).await?;
            ctx.emit("tick", json!({ "i": i })).await?;
            Ok::<_, TaskError>(())
        })
        .await?;
    }
    Ok(json!({ "total": input.to }))
}

/// Fails its first `fail_times` attempts (retryably), then reports the attempts it took.
async fn flaky(ctx: TaskContext, input: FlakyInput) -> Result<Value, TaskError> {
    let attempt = ctx.attempt();
    if attempt <= input.fail_times {
        return Err(TaskError::retryable(format!(
            "planned failure {attempt} of {}",
            input.fail_times
        )));
    }
    Ok(json!({ "attempts": attempt }))
}

/// Fails at once, permanently, with a message meant for the user (a public error: shown
/// as is in production too).
async fn refuse(_ctx: TaskContext, input: RefuseInput) -> Result<Value, TaskError> {
    Err(TaskError::permanent(format!("request refused: {}", input.reason)).public())
}

/// Acts on behalf of its user: reports which token this run has (its last 4 characters,
/// never the token) in a `token` event, then sleeps `ms`.
async fn obo(ctx: TaskContext, input: SleepInput) -> Result<Value, TaskError> {
    let token_end = ctx
        .user::<UserContext>()
        .and_then(|user| user.access_token().map(token_end));
    ctx.emit("token", json!({ "tokenEnd": token_end })).await?;
    pause(&ctx, input.ms).await?;
    Ok(json!({ "tokenEnd": token_end }))
}

/// The last 4 characters of a token: enough to tell tokens apart, nothing to use.
fn token_end(token: &str) -> String {
    let chars: Vec<char> = token.chars().collect();
    chars[chars.len().saturating_sub(4)..].iter().collect()
}

/// Sleeps `ms` without emitting anything.
async fn sleep(ctx: TaskContext, input: SleepInput) -> Result<Value, TaskError> {
    pause(&ctx, input.ms).await?;
    Ok(json!({ "sleptMs": input.ms }))
}

/// Sleeps `ms` and ignores every request to stop (test-only; what handlers must not do).
async fn stubborn(_ctx: TaskContext, input: SleepInput) -> Result<Value, TaskError> {
    tokio::time::sleep(Duration::from_millis(input.ms)).await;
    Ok(json!({ "sleptMs": input.ms }))
}

/// A plugin-owned SSE stream, not a task: `tick {"n": n}` every `interval_ms`, forever
/// unless `ticks` is given. Served with the host's helper, so it gets keep-alives and
/// is drained (final `server_shutting_down` frame) at shutdown.
async fn clock(
    State(cx): State<PluginContext>,
    _user: UserContext,
    Query(query): Query<ClockQuery>,
) -> appkit::Result<Response> {
    check(
        (1..=MAX_DELAY_MS).contains(&query.interval_ms),
        "`interval_ms` must be from 1 to 3600000",
    )?;
    let (sender, receiver) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        let mut n = 0u64;
        while query.ticks.is_none_or(|ticks| n < ticks) {
            tokio::time::sleep(Duration::from_millis(query.interval_ms)).await;
            n += 1;
            let tick = Event::default()
                .event("tick")
                .data(json!({ "n": n }).to_string());
            if sender.send(tick).await.is_err() {
                break; // the client left, or the stream was drained at shutdown
            }
        }
    });
    cx.sse_channel(receiver)
}

fn check(ok: bool, message: &str) -> Result<(), Error> {
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(message.to_owned()))
    }
}

async fn start_count(
    State(cx): State<PluginContext>,
    req: TaskRequest,
    Json(input): Json<CountInput>,
) -> appkit::Result<Response> {
    check(
        (1..=MAX_COUNT).contains(&input.to),
        "`to` must be from 1 to 100000",
    )?;
    check(
        input.delay_ms <= MAX_DELAY_MS,
        "`delay_ms` must be at most 3600000",
    )?;
    cx.execute(&req, COUNT, input).await
}

async fn start_flaky(
    State(cx): State<PluginContext>,
    req: TaskRequest,
    Json(input): Json<FlakyInput>,
) -> appkit::Result<Response> {
    check(input.fail_times <= 100, "`fail_times` must be at most 100")?;
    cx.execute(&req, FLAKY, input).await
}

async fn start_refuse(
    State(cx): State<PluginContext>,
    req: TaskRequest,
    Json(input): Json<RefuseInput>,
) -> appkit::Result<Response> {
    check(
        input.reason.len() <= 200,
        "`reason` must be at most 200 bytes",
    )?;
    cx.execute(&req, REFUSE, input).await
}

async fn start_obo(
    State(cx): State<PluginContext>,
    req: TaskRequest,
    Json(input): Json<SleepInput>,
) -> appkit::Result<Response> {
    check(input.ms <= MAX_DELAY_MS, "`ms` must be at most 3600000")?;
    cx.execute(&req, OBO, input).await
}

async fn start_sleep(
    State(cx): State<PluginContext>,
    req: TaskRequest,
    Json(input): Json<SleepInput>,
) -> appkit::Result<Response> {
    check(input.ms <= MAX_DELAY_MS, "`ms` must be at most 3600000")?;
    cx.execute(&req, SLEEP, input).await
}

async fn start_stubborn(
    State(cx): State<PluginContext>,
    req: TaskRequest,
    Json(input): Json<SleepInput>,
) -> appkit::Result<Response> {
    cx.execute(&req, STUBBORN, input).await
}
