//! Shared helpers: the test database URL, condition waits and a fake Databricks workspace.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, PgPool};

pub const CLIENT_ID: &str = "lakebase-test-sp";
pub const CLIENT_SECRET: &str = "s3cr3t-value";
/// `base64("lakebase-test-sp:s3cr3t-value")`.
const BASIC_AUTH: &str = "Basic bGFrZWJhc2UtdGVzdC1zcDpzM2NyM3QtdmFsdWU=";
pub const INSTANCE: &str = "test-instance";

/// `TEST_DATABASE_URL`, or `None` after printing that the test was skipped.
pub fn test_database_url(test: &str) -> Option<String> {
    match std::env::var("TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("skipped {test}: TEST_DATABASE_URL is not set");
            None
        }
    }
}

/// Polls `condition` until it holds or `timeout` passes.
pub async fn wait_for(
    what: &str,
    timeout: Duration,
    mut condition: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !condition() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Formats a time as RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap();
    let (days, rem) = (since.as_secs() / 86_400, since.as_secs() % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = i64::try_from(days).unwrap() + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// A fake Databricks workspace: the OAuth token endpoint and the database credential
/// endpoint, on a real HTTP server. Each credential it issues becomes the password of a real
/// Postgres role.
#[derive(Clone)]
pub struct FakeWorkspace {
    pub state: Arc<FakeState>,
    pub url: String,
}

pub struct FakeState {
    pub admin: PgPool,
    pub role: String,
    pub lifetime: Duration,
    pub tokens_issued: AtomicU64,
    pub credential_requests: AtomicU64,
    /// Credential requests with an access token that is not the latest (answered 401).
    pub stale_bearers: AtomicU64,
    /// How many of the next credential requests to fail with 503.
    pub fail_next: AtomicU64,
    /// Passwords issued, oldest first.
    pub issued: Mutex<Vec<String>>,
    /// Protocol violations seen by the server; a test asserts there are none.
    pub violations: Mutex<Vec<String>>,
    /// Held for writing by a test to make credential requests wait.
    pub gate: tokio::sync::RwLock<()>,
    /// Serialises `ALTER ROLE` (concurrent updates of one role fail) and the issue order.
    issue: tokio::sync::Mutex<()>,
}

impl FakeState {
    pub fn issued(&self) -> Vec<String> {
        self.issued.lock().unwrap().clone()
    }

    pub fn issued_count(&self) -> usize {
        self.issued.lock().unwrap().len()
    }

    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }

    fn violation(&self, what: String) -> (StatusCode, Json<Value>) {
        self.violations.lock().unwrap().push(what.clone());
        (StatusCode::BAD_REQUEST, Json(json!({ "error": what })))
    }
}

impl FakeWorkspace {
    /// Starts the server on 127.0.0.1:0.
    pub async fn start(admin: PgPool, role: &str, lifetime: Duration) -> anyhow::Result<Self> {
        let state = Arc::new(FakeState {
            admin,
            role: role.to_owned(),
            lifetime,
            tokens_issued: AtomicU64::new(0),
            credential_requests: AtomicU64::new(0),
            stale_bearers: AtomicU64::new(0),
            fail_next: AtomicU64::new(0),
            issued: Mutex::new(Vec::new()),
            violations: Mutex::new(Vec::new()),
            gate: tokio::sync::RwLock::new(()),
            issue: tokio::sync::Mutex::new(()),
        });
        let app = Router::new()
            .route("/oidc/v1/token", post(token))
            .route("/api/2.0/database/credentials", post(credential))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self {
            state,
            url: format!("http://{addr}"),
        })
    }
}

fn access_token(n: u64) -> String {
    format!("access-token-{n}")
}

async fn token(
    State(state): State<Arc<FakeState>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    if auth != Some(BASIC_AUTH) {
        return state.violation(format!("token: bad basic auth {auth:?}"));
    }
    let expected: HashMap<String, String> =
        [("grant_type", "client_credentials"), ("scope", "all-apis")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
    if form != expected {
        return state.violation(format!("token: bad form {form:?}"));
    }
    let n = state.tokens_issued.fetch_add(1, Ordering::SeqCst) + 1;
    let body =
        json!({ "access_token": access_token(n), "token_type": "Bearer", "expires_in": 3600 });
    (StatusCode::OK, Json(body))
}

async fn credential(
    State(state): State<Arc<FakeState>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    state.credential_requests.fetch_add(1, Ordering::SeqCst);
    let _gate = state.gate.read().await;
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    let latest = access_token(state.tokens_issued.load(Ordering::SeqCst));
    match auth.and_then(|a| a.strip_prefix("Bearer access-token-")) {
        Some(_) if auth != Some(&format!("Bearer {latest}")) => {
            state.stale_bearers.fetch_add(1, Ordering::SeqCst);
            let body = json!({ "error_code": "UNAUTHENTICATED", "message": "token expired" });
            return (StatusCode::UNAUTHORIZED, Json(body));
        }
        Some(_) => {}
        None => return state.violation(format!("credential: bad bearer {auth:?}")),
    }
    let failing = state
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        let body = json!({ "error_code": "TEMPORARILY_UNAVAILABLE", "message": "try again" });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body));
    }
    let request_id_ok = body["request_id"]
        .as_str()
        .is_some_and(|id| uuid::Uuid::parse_str(id).is_ok());
    let names_ok = body["instance_names"] == json!([INSTANCE]);
    if !request_id_ok || !names_ok || body.as_object().map(|o| o.len()) != Some(2) {
        return state.violation(format!("credential: bad body {body}"));
    }
    let password = format!("pw{}", uuid::Uuid::now_v7().simple());
    let _issue = state.issue.lock().await;
    if let Err(e) = set_password(&state.admin, &state.role, &password).await {
        return state.violation(format!("credential: alter role failed: {e}"));
    }
    state.issued.lock().unwrap().push(password.clone());
    let expires = SystemTime::now() + state.lifetime;
    let body = json!({ "token": password, "expiration_time": rfc3339(expires) });
    (StatusCode::OK, Json(body))
}

/// Sets the role's password, stored as md5 so a test can check it from SQL.
pub async fn set_password(admin: &PgPool, role: &str, password: &str) -> sqlx::Result<()> {
    let mut conn = admin.acquire().await?;
    sqlx::query("SET password_encryption = 'md5'")
        .execute(&mut *conn)
        .await?;
    let sql = format!("ALTER ROLE \"{role}\" PASSWORD '{password}'");
    sqlx::query(AssertSqlSafe(sql)).execute(&mut *conn).await?;
    Ok(())
}

/// Whether `password` is the role's current password in Postgres.
pub async fn is_current_password(admin: &PgPool, role: &str, password: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT rolpassword = 'md5' || md5($1 || rolname) FROM pg_authid WHERE rolname = $2",
    )
    .bind(password)
    .bind(role)
    .fetch_one(admin)
    .await
}
