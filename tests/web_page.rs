//! The dev-playground web page in a real browser (headless Chromium driven by
//! playwright-core, tests/web/page.mjs). The page uses the TypeScript client (clients/js,
//! served as /appkit-client.js): start a count and watch progress (a screenshot is saved
//! mid-run and its path printed), reload mid-run and re-attach with the last seq (every
//! tick exactly once), SIGKILL and restart the server mid-run while the page stays open
//! (the client reconnects by itself, every tick exactly once), stop / resume / cancel, and
//! a failed task's message. Needs `/usr/bin/chromium` (Debian package `chromium`) and
//! `npm ci --prefix tests/web`; `.ci/run` installs both. Elsewhere the test says it skipped,
//! unless `CI` is set, where a missing browser is a failure.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{Server, temp_dir};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

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

const ENV: &[(&str, &str)] = &[("APPKIT_SSE_DISCONNECT_GRACE_MS", "60000")];

#[tokio::test]
async fn page_streams_reattaches_survives_a_server_restart_and_controls_a_task() {
    if let Err(why) = prerequisites() {
        assert!(
            std::env::var_os("CI").is_none(),
            "browser test cannot run in CI: {why}"
        );
        eprintln!("skipped: {why}");
        return;
    }
    let dir = temp_dir();
    let mut server = Server::start(dir.path(), ENV).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/web/page.mjs");
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dev-playground-page.png");
    let mut node = tokio::process::Command::new("node")
        .arg(&script)
        .arg(format!("http://{}", server.addr))
        .arg(&shot)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut stdin = node.stdin.take().expect("stdin");
    let mut lines = BufReader::new(node.stdout.take().expect("stdout")).lines();
    let mut stderr = node.stderr.take().expect("stderr");
    let stderr_text = tokio::spawn(async move {
        let mut text = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text).await;
        text
    });

    // Follow the script: on `@kill-server`, SIGKILL the server and start a new process on
    // the same port and store while the page stays open, then tell the script.
    let mut stdout = String::new();
    let mut restarts = 0;
    let follow = async {
        while let Some(line) = lines.next_line().await.expect("node stdout") {
            stdout.push_str(&line);
            stdout.push('\n');
            if line.trim() == "@kill-server" {
                let port = server.addr.port().to_string();
                server.signal("KILL");
                server.wait_exit(Duration::from_secs(10)).await;
                let mut env = ENV.to_vec();
                env.push(("DATABRICKS_APP_PORT", port.as_str()));
                server = Server::start(dir.path(), &env).await;
                restarts += 1;
                stdin
                    .write_all(b"restarted\n")
                    .await
                    .expect("write to node");
                stdin.flush().await.expect("flush to node");
            }
        }
        node.wait().await.expect("node exits")
    };
    let status = tokio::time::timeout(Duration::from_secs(180), follow)
        .await
        .expect("browser script finishes within 3 minutes");
    let stderr = stderr_text.await.unwrap_or_default();
    assert!(
        status.success(),
        "browser checks failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver log:\n{}",
        server.logs.dump()
    );
    eprint!("{stdout}");
    assert_eq!(restarts, 1, "the server was restarted once:\n{stdout}");
    for check in [
        "page served",
        "window.__CONFIG__",
        "client module",
        "progress bar moved",
        "re-attach after reload",
        "every tick once across the reload",
        "last tick is 8",
        "reconnected by itself",
        "every tick once across the server restart",
        "stop suspends",
        "resume continues",
        "stream stayed open while suspended",
        "cancel ends",
        "failed task shows its message",
    ] {
        assert!(
            stdout.contains(check),
            "missing check `{check}` in:\n{stdout}"
        );
    }
    assert!(shot.exists(), "screenshot saved at {}", shot.display());
    eprintln!("screenshot (mid-run): {}", shot.display());
}
