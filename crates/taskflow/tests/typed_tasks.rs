//! Typed task definitions and per-submission options.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use common::*;
use serde::{Deserialize, Serialize};
use serde_json::json;
use taskflow::{Error, SubmitOptions, TaskContext, TaskDef, TaskError, TaskOptions, TaskStatus};

#[derive(Debug, Serialize, Deserialize)]
struct Pages {
    count: u32,
}

const BUILD: TaskDef<Pages, u32> = TaskDef::new("build");

async fn build(ctx: TaskContext, pages: Pages) -> Result<u32, TaskError> {
    ctx.emit("built", json!({ "pages": pages.count })).await?;
    Ok(pages.count * 2)
}

#[tokio::test]
async fn a_typed_task_and_its_string_name_reach_the_same_handler() {
    let (flow, _dir) = start(fast_config()).await;
    flow.register(BUILD, build).unwrap();
    let typed = flow
        .submit_task(BUILD, Pages { count: 3 }, SubmitOptions::new())
        .await
        .unwrap();
    let key = typed.handle().idempotency_key.clone();
    let info = wait_status(&flow, &key, None, TaskStatus::Completed).await;
    assert_eq!(info.result, Some(json!(6)));
    // The same input by name derives the same key: the same task (a new run of it, as
    // the first one finished and the mode is at-least-once).
    let by_name = flow
        .submit("build", json!({ "count": 3 }), SubmitOptions::new())
        .await
        .unwrap();
    assert_eq!(by_name.handle().idempotency_key, key);
    let info = wait_status(&flow, &key, None, TaskStatus::Completed).await;
    assert_eq!(info.result, Some(json!(6)));
    let again = flow.register("build", build);
    assert!(
        matches!(&again, Err(Error::DuplicateTask(name)) if name == "build"),
        "{again:?}"
    );
    flow.shutdown().await;
}

#[tokio::test]
async fn max_attempts_per_submission_overrides_the_registration() {
    let (flow, _dir) = start(fast_config()).await;
    flow.register_with(
        "always-fails",
        TaskOptions::new().max_attempts(5),
        |_ctx: TaskContext, _n: u32| async move { Err::<(), _>(TaskError::retryable("no")) },
    )
    .unwrap();
    let once = flow
        .submit("always-fails", 1, SubmitOptions::new().max_attempts(1))
        .await
        .unwrap();
    let twice = flow
        .submit("always-fails", 2, SubmitOptions::new().max_attempts(2))
        .await
        .unwrap();
    let default = flow
        .submit("always-fails", 3, SubmitOptions::new())
        .await
        .unwrap();
    for (submitted, attempts) in [(once, 1), (twice, 2), (default, 5)] {
        let key = &submitted.handle().idempotency_key;
        let info = wait_status(&flow, key, None, TaskStatus::Failed).await;
        assert_eq!(info.attempt, attempts, "{key}");
        assert_eq!(info.max_attempts, attempts, "{key}");
    }
    flow.shutdown().await;
}

#[tokio::test]
async fn redrive_takes_the_key_and_checks_the_owner() {
    let (flow, _dir) = start(fast_config()).await;
    let runs = Arc::new(AtomicU32::new(0));
    let counted = runs.clone();
    flow.register_with(
        "fails-once-permanently",
        TaskOptions::new().max_attempts(1),
        move |_ctx: TaskContext, _n: u32| {
            let run = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if run == 0 {
                    return Err(TaskError::permanent("first run fails"));
                }
                Ok(())
            }
        },
    )
    .unwrap();
    let submitted = flow
        .submit(
            "fails-once-permanently",
            1,
            SubmitOptions::new().user("alice"),
        )
        .await
        .unwrap();
    let key = submitted.handle().idempotency_key.clone();
    wait_status(&flow, &key, Some("alice"), TaskStatus::Failed).await;
    assert!(matches!(
        flow.redrive(&key, Some("mallory")).await,
        Err(Error::NotFound)
    ));
    assert!(matches!(
        flow.redrive("no-such-key", None).await,
        Err(Error::NotFound)
    ));
    assert_eq!(
        flow.redrive(&key, Some("alice")).await.unwrap(),
        TaskStatus::Pending
    );
    wait_status(&flow, &key, Some("alice"), TaskStatus::Completed).await;
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    flow.shutdown().await;
}
