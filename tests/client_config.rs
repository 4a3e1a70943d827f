//! `window.__CONFIG__` in the HTML the server answers (`/` and the SPA fallback): the app's
//! name from `DATABRICKS_APP_NAME` and each plugin's endpoint map, which AppKit front ends
//! read — escaped so no value can close the script tag.

mod common;

use common::{Server, request, temp_dir};
use serde_json::Value;

const START: &str = "<script>window.__CONFIG__ = ";
const END: &str = ";</script>";

/// The config object in `page`, checking there is exactly one.
fn page_config(page: &str) -> Value {
    assert_eq!(page.matches(START).count(), 1, "{page}");
    let rest = page.split(START).nth(1).unwrap_or_default();
    let json = rest.split(END).next().unwrap_or_default();
    serde_json::from_str(json).unwrap_or_else(|e| panic!("not JSON ({e}): {json}"))
}

async fn page(server: &Server, path: &str) -> String {
    let r = request(server.addr, "GET", path, &[], None).await;
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("text/html")),
        "{path}: {:?}",
        r.headers
    );
    r.text()
}

#[tokio::test]
async fn the_page_and_the_spa_fallback_carry_the_config() {
    let dir = temp_dir();
    let env = [
        ("DATABRICKS_APP_NAME", "reports-app"),
        ("APPKIT_ENV", "development"),
    ];
    let server = Server::start(dir.path(), &env).await;
    for path in [
        "/",
        "/index.html",
        "/reports/2026/11",
        "/deep/client/route?x=1",
    ] {
        let page = page(&server, path).await;
        let config = page_config(&page);
        assert_eq!(config["appName"], "reports-app", "{path}");
        let demo = &config["endpoints"]["demo"];
        assert_eq!(demo["count"], "/api/demo/count", "{config}");
        assert_eq!(demo["flaky"], "/api/demo/flaky", "{config}");
        assert_eq!(demo["tasks"], "/api/demo/tasks", "{config}");
        // In the head, before the page's own script.
        let at = page.find(START).unwrap_or_default();
        assert!(at < page.find("</head>").unwrap_or_default(), "{path}");
        assert!(page.contains("appkit dev-playground"), "the page itself");
    }
    // The API never falls back to the page.
    let api = request(server.addr, "GET", "/api/demo/nope", &[], None).await;
    assert_eq!(api.status, 404);
    assert!(!api.text().contains("__CONFIG__"));
}

#[tokio::test]
async fn an_app_name_cannot_break_out_of_the_script_tag() {
    let dir = temp_dir();
    let hostile = "x</script><script>alert(1)</script>&\u{2028}\u{2029}y";
    let env = [
        ("DATABRICKS_APP_NAME", hostile),
        ("APPKIT_ENV", "development"),
    ];
    let server = Server::start(dir.path(), &env).await;
    let page = page(&server, "/").await;
    assert!(!page.contains("<script>alert(1)"), "{page}");
    assert_eq!(
        page.matches("</script>").count(),
        page.matches("<script").count()
    );
    assert_eq!(page_config(&page)["appName"], hostile);
}

#[tokio::test]
async fn without_databricks_the_app_name_is_null() {
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[]).await;
    let config = page_config(&page(&server, "/").await);
    assert!(config["appName"].is_null(), "{config}");
    assert!(config["endpoints"]["demo"].is_object(), "{config}");
}
