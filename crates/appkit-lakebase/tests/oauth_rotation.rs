//! Databricks OAuth against a fake workspace (a real HTTP server) and a real PostgreSQL role
//! whose password the fake workspace changes with every credential it issues.

mod common;

use std::collections::HashSet;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, ensure};
use appkit_lakebase::{
    CredentialProvider, Credentials, DatabricksOAuth, DatabricksOAuthConfig, LakebaseConfig,
    LakebasePool, PgConnectOptions,
};
use common::{CLIENT_ID, CLIENT_SECRET, FakeWorkspace, INSTANCE, wait_for};
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};

/// The startup parameter each connection carries: the password it logged in with.
const PASSWORD_SETTING: &str = "appkit.test_password";
const WAIT: Duration = Duration::from_secs(20);

/// Runs `body` with a fresh login role, and drops the role afterwards whatever happened.
async fn with_role<F, Fut>(url: &str, body: F) -> anyhow::Result<()>
where
    F: FnOnce(PgPool, String) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let admin = PgPool::connect(url).await.context("admin connection")?;
    let role = format!("lakebase_test_{}", uuid::Uuid::now_v7().simple());
    let create = format!("CREATE ROLE \"{role}\" LOGIN PASSWORD 'not-yet-issued'");
    sqlx::query(AssertSqlSafe(create)).execute(&admin).await?;
    let result = body(admin.clone(), role.clone()).await;
    let drop = format!("DROP ROLE IF EXISTS \"{role}\"");
    let dropped = sqlx::query(AssertSqlSafe(drop)).execute(&admin).await;
    admin.close().await;
    result?;
    dropped?;
    Ok(())
}

/// A pool for `role` whose credentials come from `fake`; each connection records its
/// password in [`PASSWORD_SETTING`].
async fn oauth_pool(url: &str, role: &str, fake: &FakeWorkspace) -> anyhow::Result<LakebasePool> {
    let oauth = DatabricksOAuthConfig::new(&fake.url, CLIENT_ID, CLIENT_SECRET, INSTANCE)?;
    let config = LakebaseConfig::from_url(url)?
        .into_builder()
        .user(role)
        .credentials(Credentials::databricks_oauth(oauth))
        .refresh_margin(Duration::from_secs(1))
        .max_connections(4)
        .map_connect_options(|options, credential| {
            options.options([(PASSWORD_SETTING, credential.password())])
        })
        .build();
    Ok(LakebasePool::connect(config).await?)
}

/// Whether the server checks passwords for `role` over the URL's route (it does not when
/// pg_hba says `trust`).
async fn server_checks_passwords(url: &str, role: &str) -> anyhow::Result<bool> {
    let options = PgConnectOptions::from_str(url)?
        .username(role)
        .password("certainly-wrong");
    Ok(match PgConnection::connect_with(&options).await {
        Ok(conn) => {
            conn.close().await?;
            false
        }
        Err(_) => true,
    })
}

/// Opens a new connection (never a pooled one) and returns the password it used.
async fn fresh_connection_password(pool: &LakebasePool, role: &str) -> anyhow::Result<String> {
    // Close idle connections first, so the next acquire has to connect.
    while let Some(mut idle) = pool.pool().try_acquire() {
        idle.close_on_drop();
    }
    let mut conn = pool.pool().acquire().await?;
    conn.close_on_drop();
    let (password, user): (String, String) =
        sqlx::query_as("SELECT current_setting('appkit.test_password'), current_user::text")
            .fetch_one(&mut *conn)
            .await?;
    ensure!(user == role, "connected as {user}, expected {role}");
    Ok(password)
}

#[derive(Default)]
struct LoadReport {
    queries: u64,
    failures: Vec<String>,
    rotation_window_rejections: u64,
    passwords_seen: HashSet<String>,
}

/// Runs a query on a new connection every 20 ms until `stop`, recording what happened.
async fn query_load(
    pool: LakebasePool,
    fake: FakeWorkspace,
    role: String,
    checks_passwords: bool,
    stop: Arc<AtomicBool>,
) -> LoadReport {
    let mut report = LoadReport::default();
    while !stop.load(Ordering::SeqCst) {
        let issued_before = fake.state.issued_count();
        match fresh_connection_password(&pool, &role).await {
            Ok(password) => {
                report.queries += 1;
                report.passwords_seen.insert(password);
            }
            // With a password-checking server the fake changes the role's password a moment
            // before the pool learns it (real Lakebase keeps the old one valid until expiry).
            Err(e)
                if checks_passwords
                    && fake.state.issued_count() != issued_before
                    && e.to_string().contains("password authentication failed") =>
            {
                report.rotation_window_rejections += 1;
            }
            Err(e) => report.failures.push(format!("{e:#}")),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_keeps_working_across_credential_rotations() -> anyhow::Result<()> {
    let Some(url) = common::test_database_url("pool_keeps_working_across_credential_rotations")
    else {
        return Ok(());
    };
    with_role(&url.clone(), |admin, role| async move {
        let fake = FakeWorkspace::start(admin.clone(), &role, Duration::from_secs(2)).await?;
        let checks_passwords = server_checks_passwords(&url, &role).await?;
        let pool = oauth_pool(&url, &role, &fake).await?;
        let state = &fake.state;
        ensure!(state.issued_count() == 1 && pool.credential_generation() == 1);

        // A connection opened now must outlive every rotation.
        let mut held = pool.pool().acquire().await?;
        let held_password: String =
            sqlx::query_scalar("SELECT current_setting('appkit.test_password')")
                .fetch_one(&mut *held)
                .await?;
        ensure!(held_password == state.issued()[0]);

        let stop = Arc::new(AtomicBool::new(false));
        let load = tokio::spawn(query_load(
            pool.clone(),
            fake.clone(),
            role.clone(),
            checks_passwords,
            Arc::clone(&stop),
        ));

        for generation in 2..=4 {
            wait_for("the next rotation", WAIT, || {
                pool.credential_generation() >= generation
            })
            .await?;
            // A new connection logs in with the password the workspace issued last.
            loop {
                let before = pool.credential_generation();
                let used = fresh_connection_password(&pool, &role).await?;
                if pool.credential_generation() != before {
                    continue; // rotated meanwhile; try again
                }
                let issued = state.issued();
                let index = usize::try_from(before)? - 1;
                ensure!(
                    used == issued[index],
                    "generation {before} used a stale password"
                );
                if issued.len() == index + 1 {
                    ensure!(common::is_current_password(&admin, &role, &used).await?);
                }
                break;
            }
        }
        stop.store(true, Ordering::SeqCst);
        let report = load.await?;

        ensure!(
            report.failures.is_empty(),
            "queries failed: {:?}",
            report.failures
        );
        ensure!(report.queries >= 20, "only {} queries ran", report.queries);
        ensure!(
            report.passwords_seen.len() >= 3,
            "new connections used {} passwords",
            report.passwords_seen.len()
        );
        let issued: HashSet<String> = state.issued().into_iter().collect();
        ensure!(
            report.passwords_seen.is_subset(&issued),
            "a connection used a password never issued"
        );

        // The connection opened before the rotations still works, with its original login.
        let still: String = sqlx::query_scalar("SELECT current_setting('appkit.test_password')")
            .fetch_one(&mut *held)
            .await?;
        ensure!(still == held_password);
        drop(held);

        ensure!(
            state.tokens_issued.load(Ordering::SeqCst) == 1,
            "the access token is reused"
        );
        ensure!(
            state.violations().is_empty(),
            "protocol violations: {:?}",
            state.violations()
        );
        if checks_passwords {
            let stale = PgConnectOptions::from_str(&url)?
                .username(&role)
                .password(&state.issued()[0]);
            ensure!(
                PgConnection::connect_with(&stale).await.is_err(),
                "a stale password still works"
            );
            eprintln!(
                "postgres verified the rotated passwords ({} rotation-window rejections)",
                report.rotation_window_rejections
            );
        } else {
            eprintln!(
                "note: postgres trusts this route (pg_hba), so it did not verify passwords; \
                 rotation was checked through each connection's startup options and pg_authid"
            );
        }
        pool.close().await;
        ensure!(pool.close_count() == 1);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_share_one_refresh() -> anyhow::Result<()> {
    let Some(url) = common::test_database_url("concurrent_callers_share_one_refresh") else {
        return Ok(());
    };
    with_role(&url.clone(), |admin, role| async move {
        let fake = FakeWorkspace::start(admin, &role, Duration::from_secs(4)).await?;
        let pool = oauth_pool(&url, &role, &fake).await?;
        let state = Arc::clone(&fake.state);

        // Hold the workspace until the background refresh is waiting on it: the credential
        // is now due and one refresh is in flight.
        let hold = state.gate.write().await;
        wait_for("the background refresh", WAIT, || {
            state.credential_requests.load(Ordering::SeqCst) >= 2
        })
        .await?;
        let started = Arc::new(AtomicUsize::new(0));
        let callers: Vec<_> = (0..16)
            .map(|_| {
                let (pool, started) = (pool.clone(), Arc::clone(&started));
                tokio::spawn(async move {
                    started.fetch_add(1, Ordering::SeqCst);
                    pool.credential().await
                })
            })
            .collect();
        wait_for("all callers", WAIT, || started.load(Ordering::SeqCst) == 16).await?;
        tokio::task::yield_now().await;
        drop(hold);

        let mut passwords = HashSet::new();
        for caller in callers {
            let credential = caller.await??.context("an oauth credential")?;
            passwords.insert(credential.password().to_owned());
        }
        ensure!(
            state.credential_requests.load(Ordering::SeqCst) == 2,
            "one refresh for all callers"
        );
        ensure!(
            passwords.len() == 1,
            "callers saw {} passwords",
            passwords.len()
        );
        ensure!(passwords.contains(&state.issued()[1]));
        ensure!(pool.credential_generation() == 2);
        pool.health().await?;

        // A second provider: concurrent fetches share one access-token exchange. Its token
        // replaces the pool's at the fake workspace, so the pool's next refresh gets a 401
        // and must exchange again.
        let oauth = DatabricksOAuthConfig::new(&fake.url, CLIENT_ID, CLIENT_SECRET, INSTANCE)?;
        let provider = Arc::new(DatabricksOAuth::new(oauth)?);
        let fetches: Vec<_> = (0..8)
            .map(|_| {
                let provider = Arc::clone(&provider);
                tokio::spawn(async move { provider.fetch().await })
            })
            .collect();
        for fetch in fetches {
            fetch.await??;
        }
        ensure!(
            state.tokens_issued.load(Ordering::SeqCst) == 2,
            "one exchange per provider"
        );
        wait_for("a refresh after the 401", WAIT, || {
            pool.credential_generation() >= 3
        })
        .await?;
        ensure!(state.tokens_issued.load(Ordering::SeqCst) == 3);
        pool.health().await?;
        ensure!(state.stale_bearers.load(Ordering::SeqCst) == 1);
        ensure!(
            state.violations().is_empty(),
            "protocol violations: {:?}",
            state.violations()
        );
        pool.close().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_refreshes_are_retried_while_queries_keep_working() -> anyhow::Result<()> {
    let Some(url) =
        common::test_database_url("failed_refreshes_are_retried_while_queries_keep_working")
    else {
        return Ok(());
    };
    with_role(&url.clone(), |admin, role| async move {
        let fake = FakeWorkspace::start(admin, &role, Duration::from_secs(2)).await?;
        let pool = oauth_pool(&url, &role, &fake).await?;
        let state = Arc::clone(&fake.state);
        state.fail_next.store(2, Ordering::SeqCst);

        // Refresh due after 1.6 s, then two failures retried after 1 s and 2 s.
        while state.credential_requests.load(Ordering::SeqCst) < 3 {
            pool.health().await?;
            fresh_connection_password(&pool, &role).await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ensure!(
            pool.credential_generation() == 1,
            "failed refreshes change nothing"
        );
        wait_for("the retried refresh", WAIT, || {
            pool.credential_generation() >= 2
        })
        .await?;
        ensure!(state.credential_requests.load(Ordering::SeqCst) == 4);
        let used = fresh_connection_password(&pool, &role).await?;
        ensure!(used == state.issued()[1]);
        pool.health().await?;
        ensure!(
            state.violations().is_empty(),
            "protocol violations: {:?}",
            state.violations()
        );
        pool.close().await;
        Ok(())
    })
    .await
}
