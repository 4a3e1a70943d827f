//! The dev-playground web page in a real browser (headless Chromium driven by
//! playwright-core, tests/web/page.mjs): start a count, watch the progress bar, reload
//! mid-run and re-attach with the last seq (no tick lost or repeated), stop / resume /
//! cancel. Needs `/usr/bin/chromium` (Debian package `chromium`) and
//! `npm ci --prefix tests/web`; `.ci/run` installs both. Elsewhere the test says it skipped,
//! unless `CI` is set, where a missing browser is a failure.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{Server, temp_dir};

fn prerequisites() -> Result<(), String> {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/web");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Err(format!("{chromium} not found (apt-get install chromium)"));
    }
    if !web.join("node_modules/playwright-core").exists() {
        return Err("tests/web/node_modules missing (npm ci --prefix tests/web)".into());
    }
    Ok(())
}

#[tokio::test]
async fn page_starts_reattaches_after_reload_and_controls_a_task() {
    if let Err(why) = prerequisites() {
        assert!(
            std::env::var_os("CI").is_none(),
            "browser test cannot run in CI: {why}"
        );
        eprintln!("skipped: {why}");
        return;
    }
    let dir = temp_dir();
    let server = Server::start(dir.path(), &[("APPKIT_SSE_DISCONNECT_GRACE_MS", "60000")]).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/web/page.mjs");
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dev-playground-page.png");
    let run = tokio::process::Command::new("node")
        .arg(&script)
        .arg(format!("http://{}", server.addr))
        .arg(&shot)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("browser script finishes within 2 minutes")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser checks failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver log:\n{}",
        server.logs.dump()
    );
    for check in [
        "page served",
        "window.__CONFIG__",
        "re-attach",
        "no tick repeated",
        "last tick is 8",
        "stop suspends",
        "resume continues",
        "cancel ends",
    ] {
        assert!(
            stdout.contains(check),
            "missing check `{check}` in:\n{stdout}"
        );
    }
    eprintln!("screenshot: {}", shot.display());
}
