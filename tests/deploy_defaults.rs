//! Deployment defaults on the real binary: production on Databricks Apps, no identity
//! trust by accident elsewhere, and a warning for SQLite where it cannot serve replicas.

mod common;

use common::{Server, request, run_to_exit, temp_dir};

/// A route that needs a user, for a key nobody has: 404 with a user, 401 without one.
const NEEDS_USER: &str = "/api/demo/tasks/no-such-task";

const SQLITE_WARNING: &str = "the sqlite task store serves one replica on local disk";

#[tokio::test]
async fn on_databricks_apps_the_default_is_production() {
    let dir = temp_dir();
    let mut server = Server::start(dir.path(), &[("DATABRICKS_APP_NAME", "reports-app")]).await;
    let no_user = request(server.addr, "GET", NEEDS_USER, &[], None).await;
    assert_eq!(no_user.status, 401, "{}", no_user.text());
    assert_eq!(no_user.json()["code"], "UNAUTHORIZED");
    // The platform proxy's headers are trusted there without any setting.
    assert_eq!(server.get(NEEDS_USER, "alice").await.status, 404);
    let env = server
        .logs
        .wait_for("saying the environment", |l| {
            l.contains("environment: production")
        })
        .await;
    assert!(env.contains("DATABRICKS_APP_NAME is set"), "{env}");
    assert!(
        env.trim_start().starts_with('{'),
        "JSON logs in production: {env}"
    );
    // SQLite on Databricks Apps: warned about, naming the limit and the variable.
    let warning = server
        .logs
        .wait_for("warning about sqlite", |l| l.contains(SQLITE_WARNING))
        .await;
    assert!(warning.contains("APPKIT_TASKS_STORE"), "{warning}");
    assert!(warning.contains("WARN"), "{warning}");
    server.signal("TERM");
    assert!(server.wait_exit(common::DEADLINE).await.success());
}

#[tokio::test]
async fn elsewhere_the_default_is_development_without_a_sqlite_warning() {
    let dir = temp_dir();
    let mut server = Server::start(dir.path(), &[]).await;
    // The local stand-in user: a 404 for the missing task, not a 401.
    let r = request(server.addr, "GET", NEEDS_USER, &[], None).await;
    assert_eq!(r.status, 404, "{}", r.text());
    let env = server
        .logs
        .wait_for("saying the environment", |l| {
            l.contains("environment: development")
        })
        .await;
    assert!(env.contains("DATABRICKS_APP_NAME is unset"), "{env}");
    server.signal("TERM");
    assert!(server.wait_exit(common::DEADLINE).await.success());
    assert_eq!(
        server.logs.count(SQLITE_WARNING),
        0,
        "{}",
        server.logs.dump()
    );
}

#[tokio::test]
async fn production_elsewhere_refuses_to_start_without_a_trust_decision() {
    let dir = temp_dir();
    let (status, output) = run_to_exit(dir.path(), &[("APPKIT_ENV", "production")]).await;
    assert!(!status.success(), "exit {status}; output:\n{output}");
    assert!(
        output.contains("APPKIT_TRUST_FORWARDED_USER=true")
            && output.contains("any client could claim any user"),
        "the error says why and what to set:\n{output}"
    );
    assert!(!output.contains("listening on"), "{output}");
}

#[tokio::test]
async fn production_with_an_explicit_trust_decision_starts_and_follows_it() {
    let dir = temp_dir();
    let base = [("APPKIT_ENV", "production")];
    // `false`: the headers are never read, whoever sends them.
    let mut server = Server::start(
        dir.path(),
        &[base[0], ("APPKIT_TRUST_FORWARDED_USER", "false")],
    )
    .await;
    assert_eq!(server.get(NEEDS_USER, "mallory").await.status, 401);
    server
        .logs
        .wait_for("saying the environment", |l| {
            l.contains("environment: production (set by APPKIT_ENV)")
        })
        .await;
    server
        .logs
        .wait_for("saying whose word identifies users", |l| {
            l.contains("identity: none: X-Forwarded-* user headers ignored")
        })
        .await;
    // SQLite in production: warned about too.
    server
        .logs
        .wait_for("warning about sqlite", |l| l.contains(SQLITE_WARNING))
        .await;
    server.signal("TERM");
    assert!(server.wait_exit(common::DEADLINE).await.success());
    // `true`: read.
    let mut server = Server::start(
        dir.path(),
        &[base[0], ("APPKIT_TRUST_FORWARDED_USER", "true")],
    )
    .await;
    assert_eq!(server.get(NEEDS_USER, "alice").await.status, 404);
    assert_eq!(
        request(server.addr, "GET", NEEDS_USER, &[], None)
            .await
            .status,
        401
    );
    server.signal("TERM");
    assert!(server.wait_exit(common::DEADLINE).await.success());
}
