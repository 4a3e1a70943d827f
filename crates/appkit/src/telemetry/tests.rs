//! The request span's name and fields on the real host router, the config merge, and the
//! telemetry table in docs/configuration.md.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use tower::ServiceExt;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;

use super::*;
use crate::{App, Plugin, PluginContext};

/// The fields of every `http_request` span, by span id, as text, with the thread that
/// opened it (the test binary runs other tests' requests on other threads).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<HashMap<u64, OpenedSpan>>>);

/// The opening thread and the fields of one span.
type OpenedSpan = (std::thread::ThreadId, HashMap<String, String>);

impl Captured {
    /// Spans opened on the calling thread.
    fn spans(&self) -> Vec<HashMap<String, String>> {
        let me = std::thread::current().id();
        let spans = self.0.lock().unwrap();
        spans
            .values()
            .filter(|(t, _)| *t == me)
            .map(|(_, f)| f.clone())
            .collect()
    }

    /// The process-wide capture. A global subscriber, because a thread-local one races
    /// with other tests over tracing's per-callsite interest cache.
    fn global() -> Self {
        static GLOBAL: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
        GLOBAL
            .get_or_init(|| {
                let captured = Captured::default();
                let subscriber = tracing_subscriber::registry().with(captured.clone());
                tracing::subscriber::set_global_default(subscriber)
                    .expect("no other test in this binary installs a global subscriber");
                captured
            })
            .clone()
    }
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Captured {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        if attrs.metadata().name() != "http_request" {
            return;
        }
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        let thread = std::thread::current().id();
        self.0
            .lock()
            .unwrap()
            .insert(id.into_u64(), (thread, fields));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        if let Some((_, fields)) = self.0.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut Fields(fields));
        }
    }
}

/// A plugin whose routes nest twice, like the dev-playground's task routes.
struct Nested;

impl Plugin for Nested {
    fn name(&self) -> &str {
        "demo"
    }

    fn routes(&self) -> Router<PluginContext> {
        Router::new()
            .route("/ping", get(|| async { "pong" }))
            .nest("/tasks", crate::task_routes())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn request_spans_are_named_by_the_full_matched_route_of_nested_routers() {
    let captured = Captured::global();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.tasks_store = crate::config::TasksStore::Sqlite(dir.path().join("tasks.db"));
    let app = App::builder().plugin(Nested).build(config).unwrap();
    let started = app.start().await.unwrap();

    for (path, status) in [
        ("/api/demo/tasks/some-key", StatusCode::NOT_FOUND),
        ("/api/demo/ping", StatusCode::OK),
        ("/api/demo/nope", StatusCode::NOT_FOUND),
        ("/health", StatusCode::OK),
    ] {
        let req = Request::get(path)
            .header("X-Forwarded-User", "alice")
            .body(Body::empty())
            .unwrap();
        let res = started.router.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), status, "{path}");
    }
    started.taskflow.shutdown().await;

    let mut names: Vec<(String, Option<String>, String)> = captured
        .spans()
        .into_iter()
        .map(|f| {
            (
                f["otel.name"].clone(),
                f.get("http.route").cloned(),
                f["http.response.status_code"].clone(),
            )
        })
        .collect();
    names.sort();
    let expected = [
        ("GET", None, "404"),
        ("GET /api/demo/ping", Some("/api/demo/ping"), "200"),
        (
            "GET /api/demo/tasks/{key}",
            Some("/api/demo/tasks/{key}"),
            "404",
        ),
        ("GET /health", Some("/health"), "200"),
    ]
    .map(|(n, r, s)| (n.to_owned(), r.map(str::to_owned), s.to_owned()));
    assert_eq!(names, expected);
}

fn lookup(vars: &[(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    let vars: HashMap<&str, &str> = vars.iter().copied().collect();
    move |name| vars.get(name).map(|v| (*v).to_owned())
}

#[test]
fn config_problems_of_host_lakebase_and_telemetry_are_reported_together_once() {
    let env = [
        ("APPKIT_ENV", "prod"),
        ("PORT", "x"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("PGHOST", "db"),
        ("PGPORT", "x"),
        ("PGUSER", "app"),
        ("PGPASSWORD", "pw"),
    ];
    let host = Config::from_lookup(lookup(&env));
    let telemetry = TelemetryConfig::from_lookup(lookup(&env));
    let err = merge(host, telemetry).unwrap_err();
    let names: Vec<_> = err.problems().iter().map(|p| p.variable()).collect();
    assert_eq!(
        names,
        ["PORT", "PGPORT", "APPKIT_ENV", "OTEL_TRACES_SAMPLER"]
    );
}

#[test]
fn telemetry_flush_is_bounded_by_the_shutdown_timeout() {
    let env = [("APPKIT_SHUTDOWN_TIMEOUT_MS", "1000")];
    let host = Config::from_lookup(lookup(&env));
    let (_, telemetry) = merge(host, TelemetryConfig::from_lookup(lookup(&env))).unwrap();
    assert_eq!(telemetry.shutdown_timeout, Duration::from_secs(1));
    let (_, telemetry) = merge(
        Config::from_lookup(lookup(&[])),
        TelemetryConfig::from_lookup(lookup(&[])),
    )
    .unwrap();
    assert_eq!(
        telemetry.shutdown_timeout,
        appkit_telemetry::config::DEFAULT_SHUTDOWN_TIMEOUT
    );
}

/// The rows of every table between `<!-- {marker}:start -->` and `<!-- {marker}:end -->`.
fn documented(marker: &str) -> BTreeSet<String> {
    let doc = include_str!("../../../../docs/configuration.md");
    let start = format!("<!-- {marker}:start -->");
    let end = format!("<!-- {marker}:end -->");
    doc.split(start.as_str())
        .skip(1)
        .filter_map(|rest| rest.split(end.as_str()).next())
        .flat_map(str::lines)
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split('`').next())
        .map(str::to_owned)
        .collect()
}

/// The telemetry table in docs/configuration.md lists exactly the variables
/// `appkit-telemetry` reads, less those the host's table already lists (`APPKIT_ENV`).
#[test]
fn documented_telemetry_table_matches_the_variables_read() {
    let read = Mutex::new(BTreeSet::new());
    // Some variables are read only when others are set: the sampler's argument only for
    // a ratio sampler, `DATABRICKS_APP_NAME` only without `OTEL_SERVICE_NAME`.
    for set in [None, Some(("OTEL_TRACES_SAMPLER", "traceidratio"))] {
        let _ = TelemetryConfig::from_lookup(|name| {
            read.lock().unwrap().insert(name.to_owned());
            set.filter(|(k, _)| *k == name).map(|(_, v)| v.to_owned())
        });
    }
    let read = read.into_inner().unwrap();
    let host = documented("env-table");
    let telemetry = documented("telemetry-table");
    let expected: BTreeSet<String> = read.difference(&host).cloned().collect();
    assert_eq!(telemetry, expected);
    assert!(telemetry.iter().all(|v| !host.contains(v)), "listed twice");
}
