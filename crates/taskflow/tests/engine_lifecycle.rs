//! Submitting, running, retrying and observing tasks through the public API.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::json;
use taskflow::{
    Error, EventKind, IdempotencyMode, SubmitOptions, Submitted, TaskContext, TaskError,
    TaskOptions, TaskStatus,
};

async fn key_of(s: Submitted) -> String {
    s.handle().idempotency_key.clone()
}

#[tokio::test]
async fn task_runs_to_completion_with_its_events_in_order() {
    let (flow, _dir) = start(fast_config()).await;
    flow.register("count", |ctx: TaskContext, n: u32| async move {
        for i in 1..=n {
            ctx.emit("tick", json!({ "i": i })).await?;
        }
        Ok::<_, TaskError>(json!({ "total": n }))
    })
    .unwrap();
    let s = flow
        .submit("count", 3, SubmitOptions::new().user("u1"))
        .await
        .unwrap();
    assert!(matches!(s, Submitted::Created(_)));
    let key = key_of(s).await;
    let events = all_events(&flow, &key, Some("u1"), 0).await;
    assert_eq!(
        names(&events),
        ["created", "started", "tick", "tick", "tick", "completed"]
    );
    assert_gapless(&events, 0);
    assert_eq!(events[1].payload, json!({"attempt": 1}));
    assert_eq!(events[3].payload, json!({"i": 2}));
    assert_eq!(events[5].payload, json!({"result": {"total": 3}}));
    let info = flow.status(&key, Some("u1")).await.unwrap();
    assert_eq!(info.status, TaskStatus::Completed);
    assert_eq!(info.result, Some(json!({"total": 3})));
    assert_eq!(info.last_seq, 6);
    flow.shutdown().await;
}

/// A handler may emit from several futures at once (the emits of one run can share a
/// batch): every event is stored once, with gapless seqs, before `completed`.
#[tokio::test]
async fn concurrent_emits_of_one_run_get_gapless_seqs() {
    let (flow, _dir) = start(fast_config()).await;
    flow.register("fan", |ctx: TaskContext, n: u32| async move {
        let emits = (0..n).map(|i| {
            let ctx = &ctx;
            async move { ctx.emit("part", i).await }
        });
        for done in futures_util::future::join_all(emits).await {
            done?;
        }
        Ok::<_, TaskError>(())
    })
    .unwrap();
    let key = key_of(flow.submit("fan", 16, SubmitOptions::new()).await.unwrap()).await;
    let events = all_events(&flow, &key, None, 0).await;
    assert_gapless(&events, 0);
    assert_eq!(events.len(), 2 + 16 + 1, "{:?}", names(&events));
    assert_eq!(events.last().unwrap().kind, EventKind::Completed);
    let mut parts: Vec<u64> = events[2..18]
        .iter()
        .map(|e| {
            assert_eq!(e.name, "part");
            e.payload.as_u64().unwrap()
        })
        .collect();
    parts.sort_unstable();
    assert_eq!(parts, (0..16).collect::<Vec<_>>(), "each emit stored once");
    flow.shutdown().await;
}

#[tokio::test]
async fn duplicate_submit_attaches_and_at_most_once_never_reruns() {
    let (flow, _dir) = start(fast_config()).await;
    let runs = Arc::new(AtomicU32::new(0));
    let (tx, rx) = tokio::sync::watch::channel(false);
    let r = runs.clone();
    flow.register("gate", move |_ctx: TaskContext, _: ()| {
        let r = r.clone();
        let mut rx = rx.clone();
        async move {
            r.fetch_add(1, Ordering::SeqCst);
            let _ = rx.wait_for(|open| *open).await;
            Ok::<_, TaskError>(())
        }
    })
    .unwrap();
    let first = flow.submit("gate", (), SubmitOptions::new()).await.unwrap();
    let second = flow.submit("gate", (), SubmitOptions::new()).await.unwrap();
    let Submitted::Existing(h, status) = &second else {
        panic!("{second:?}")
    };
    assert_eq!(h, first.handle());
    assert!(matches!(status, TaskStatus::Pending | TaskStatus::Running));
    tx.send(true).unwrap();
    let key = first.handle().idempotency_key.clone();
    wait_status(&flow, &key, None, TaskStatus::Completed).await;

    // At-most-once attaches to the completed run.
    let again = flow
        .submit(
            "gate",
            (),
            SubmitOptions::new().mode(IdempotencyMode::AtMostOnce),
        )
        .await
        .unwrap();
    assert_eq!(
        again,
        Submitted::Existing(first.handle().clone(), TaskStatus::Completed)
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // At-least-once (default) starts a new run after a terminal state.
    let third = flow.submit("gate", (), SubmitOptions::new()).await.unwrap();
    let Submitted::Created(h3) = &third else {
        panic!("{third:?}")
    };
    assert_ne!(h3.id, first.handle().id);
    assert_eq!(h3.idempotency_key, key);
    wait_status(&flow, &key, None, TaskStatus::Completed).await;
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    flow.shutdown().await;
}

#[tokio::test]
async fn supplied_keys_and_derived_keys() {
    let (flow, _dir) = start(fast_config()).await;
    flow.register("noop", |_ctx: TaskContext, _: serde_json::Value| async {
        Ok::<_, TaskError>(())
    })
    .unwrap();
    let s = flow
        .submit(
            "noop",
            json!({"b": 1, "a": 2}),
            SubmitOptions::new().user("u"),
        )
        .await
        .unwrap();
    assert_eq!(
        s.handle().idempotency_key,
        taskflow::idempotency_key("noop", &json!({"a": 2, "b": 1}), Some("u"))
    );
    let s = flow
        .submit("noop", 1, SubmitOptions::new().idempotency_key("my-key-1"))
        .await
        .unwrap();
    assert_eq!(s.handle().idempotency_key, "my-key-1");
    flow.shutdown().await;
}

#[tokio::test]
async fn retryable_errors_retry_with_backoff_then_complete() {
    let (flow, _dir) = start(fast_config()).await;
    flow.register_with(
        "flaky",
        TaskOptions::new().max_attempts(4),
        |ctx: TaskContext, k: u32| async move {
            if ctx.attempt() <= k {
                return Err(TaskError::retryable(format!("failure {}", ctx.attempt())));
            }
            Ok(json!({"attempts": ctx.attempt()}))
        },
    )
    .unwrap();
    let key = key_of(flow.submit("flaky", 2, SubmitOptions::new()).await.unwrap()).await;
    let events = all_events(&flow, &key, None, 0).await;
    assert_eq!(
        names(&events),
        [
            "created",
            "started",
            "retrying",
            "started",
            "retrying",
            "started",
            "completed"
        ]
    );
    assert_gapless(&events, 0);
    assert_eq!(events[2].payload["error"]["message"], "failure 1");
    assert_eq!(events[5].payload, json!({"attempt": 3}));
    assert_eq!(
        flow.status(&key, None).await.unwrap().result,
        Some(json!({"attempts": 3}))
    );
    flow.shutdown().await;
}

#[tokio::test]
async fn exhausted_and_permanent_failures_dead_letter_and_redrive_runs_again() {
    let (flow, _dir) = start(fast_config()).await;
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let f = fail.clone();
    flow.register_with(
        "always",
        TaskOptions::new().max_attempts(2),
        move |_ctx: TaskContext, _: ()| {
            let f = f.clone();
            async move {
                if f.load(Ordering::SeqCst) {
                    Err(TaskError::retryable("nope"))
                } else {
                    Ok(())
                }
            }
        },
    )
    .unwrap();
    flow.register("fatal", |_ctx: TaskContext, _: ()| async {
        Err::<(), _>(TaskError::permanent("bad input"))
    })
    .unwrap();
    let k1 = key_of(
        flow.submit("always", (), SubmitOptions::new())
            .await
            .unwrap(),
    )
    .await;
    let k2 = key_of(
        flow.submit("fatal", (), SubmitOptions::new())
            .await
            .unwrap(),
    )
    .await;
    let e1 = all_events(&flow, &k1, None, 0).await;
    assert_eq!(
        names(&e1),
        ["created", "started", "retrying", "started", "failed"]
    );
    let e2 = all_events(&flow, &k2, None, 0).await;
    assert_eq!(
        names(&e2),
        ["created", "started", "failed"],
        "permanent errors never retry"
    );
    assert_eq!(
        e2[2].payload["error"],
        json!({"message": "bad input", "kind": "permanent"})
    );

    let dead = flow.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 2);
    let always = flow.status(&k1, None).await.unwrap();
    assert_eq!((always.status, always.attempt), (TaskStatus::Failed, 2));
    fail.store(false, Ordering::SeqCst);
    assert_eq!(flow.redrive(&k1, None).await.unwrap(), TaskStatus::Pending);
    let after = all_events(&flow, &k1, None, always.last_seq).await;
    assert_eq!(names(&after), ["resumed", "started", "completed"]);
    assert!(matches!(
        flow.redrive(&k1, None).await,
        Err(Error::InvalidTransition {
            from: TaskStatus::Completed,
            action: "redrive"
        })
    ));
    flow.shutdown().await;
}

#[tokio::test]
async fn a_panicking_handler_fails_the_attempt_not_the_process() {
    let (flow, _dir) = start(fast_config()).await;
    flow.register("panicky", |ctx: TaskContext, _: ()| async move {
        if ctx.attempt() == 1 {
            panic!("kaboom");
        }
        Ok::<_, TaskError>("survived")
    })
    .unwrap();
    let key = key_of(
        flow.submit("panicky", (), SubmitOptions::new())
            .await
            .unwrap(),
    )
    .await;
    let events = all_events(&flow, &key, None, 0).await;
    assert_eq!(
        names(&events),
        ["created", "started", "retrying", "started", "completed"]
    );
    assert_eq!(
        events[2].payload["error"]["message"],
        "handler panicked: kaboom"
    );
    flow.shutdown().await;
}

#[tokio::test]
async fn an_attempt_past_its_timeout_fails() {
    let (flow, _dir) = start(fast_config()).await;
    flow.register_with(
        "slow",
        TaskOptions::new()
            .max_attempts(1)
            .timeout(Duration::from_millis(50)),
        |_ctx: TaskContext, _: ()| async {
            std::future::pending::<()>().await;
            Ok::<_, TaskError>(())
        },
    )
    .unwrap();
    let key = key_of(flow.submit("slow", (), SubmitOptions::new()).await.unwrap()).await;
    let events = all_events(&flow, &key, None, 0).await;
    assert_eq!(names(&events), ["created", "started", "failed"]);
    assert_eq!(
        events[2].payload["error"]["message"],
        "attempt timed out after 50 ms"
    );
    flow.shutdown().await;
}

#[tokio::test]
async fn steps_run_once_and_replay_their_checkpoint_on_retry() {
    let (flow, _dir) = start(fast_config()).await;
    let bodies = Arc::new(AtomicU32::new(0));
    let b = bodies.clone();
    flow.register("stepped", move |ctx: TaskContext, _: ()| {
        let b = b.clone();
        async move {
            let v: u32 = ctx
                .step("expensive", async {
                    b.fetch_add(1, Ordering::SeqCst);
                    ctx.emit("inside", json!({"step": 1})).await?;
                    Ok(41)
                })
                .await?;
            if ctx.attempt() == 1 {
                return Err(TaskError::retryable("after the step"));
            }
            Ok::<_, TaskError>(v + 1)
        }
    })
    .unwrap();
    let key = key_of(
        flow.submit("stepped", (), SubmitOptions::new())
            .await
            .unwrap(),
    )
    .await;
    let events = all_events(&flow, &key, None, 0).await;
    assert_eq!(
        names(&events),
        [
            "created",
            "started",
            "inside",
            "retrying",
            "started",
            "completed"
        ],
        "the event inside the step is committed once, with the checkpoint"
    );
    assert_eq!(bodies.load(Ordering::SeqCst), 1);
    assert_eq!(
        flow.status(&key, None).await.unwrap().result,
        Some(json!(42))
    );
    flow.shutdown().await;
}

#[tokio::test]
async fn reusing_a_step_name_in_one_run_is_an_error() {
    let (flow, _dir) = start(fast_config()).await;
    flow.register("twice", |ctx: TaskContext, _: ()| async move {
        ctx.step("same", async { Ok(1) }).await?;
        ctx.step("same", async { Ok(2) }).await?;
        Ok::<_, TaskError>(())
    })
    .unwrap();
    let key = key_of(
        flow.submit("twice", (), SubmitOptions::new())
            .await
            .unwrap(),
    )
    .await;
    let events = all_events(&flow, &key, None, 0).await;
    assert_eq!(names(&events).last(), Some(&"failed"));
    assert_eq!(
        events.last().unwrap().payload["error"]["message"],
        "step `same` was already used in this run"
    );
    flow.shutdown().await;
}

#[tokio::test]
async fn emit_refuses_reserved_names_and_multiline_names() {
    let (flow, _dir) = start(fast_config()).await;
    flow.register("emitter", |ctx: TaskContext, name: String| async move {
        match ctx.emit(&name, 1).await {
            Err(Error::Invalid {
                field: "event name",
                ..
            }) => Ok::<_, TaskError>("refused"),
            other => Ok(if other.is_ok() {
                "accepted"
            } else {
                "other error"
            }),
        }
    })
    .unwrap();
    for (name, want) in [
        ("completed", "refused"),
        ("ready", "refused"),
        ("a\nb", "refused"),
        ("tick", "accepted"),
    ] {
        let key = key_of(
            flow.submit("emitter", name, SubmitOptions::new())
                .await
                .unwrap(),
        )
        .await;
        let info = wait_status(&flow, &key, None, TaskStatus::Completed).await;
        assert_eq!(info.result, Some(json!(want)), "{name:?}");
    }
    flow.shutdown().await;
}

#[tokio::test]
async fn hundred_sleeping_tasks_run_concurrently() {
    let (flow, _dir) = start(fast_config()).await;
    let peak = Arc::new(AtomicUsize::new(0));
    let now = Arc::new(AtomicUsize::new(0));
    let (p, n) = (peak.clone(), now.clone());
    flow.register("nap", move |_ctx: TaskContext, _: u32| {
        let (p, n) = (p.clone(), n.clone());
        async move {
            let cur = n.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(cur, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(200)).await;
            n.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, TaskError>(())
        }
    })
    .unwrap();
    let started = Instant::now();
    let mut keys = Vec::new();
    for i in 0..100 {
        keys.push(key_of(flow.submit("nap", i, SubmitOptions::new()).await.unwrap()).await);
    }
    for key in &keys {
        wait_status(&flow, key, None, TaskStatus::Completed).await;
    }
    let elapsed = started.elapsed();
    // Sequentially this is 20 s; the default 64 slots make it two waves.
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak > 8 && peak <= 64, "peak concurrency {peak}");
    flow.shutdown().await;
}

#[tokio::test]
async fn per_user_slots_bound_one_users_concurrency() {
    let (flow, _dir) = start(fast_config().per_user_slots(2)).await;
    let peak = Arc::new(AtomicUsize::new(0));
    let now = Arc::new(AtomicUsize::new(0));
    let (p, n) = (peak.clone(), now.clone());
    flow.register("nap", move |_ctx: TaskContext, _: u32| {
        let (p, n) = (p.clone(), n.clone());
        async move {
            let cur = n.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(cur, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(30)).await;
            n.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, TaskError>(())
        }
    })
    .unwrap();
    let mut keys = Vec::new();
    for i in 0..10 {
        let s = flow
            .submit("nap", i, SubmitOptions::new().user("alice"))
            .await
            .unwrap();
        keys.push(key_of(s).await);
    }
    for key in &keys {
        wait_status(&flow, key, Some("alice"), TaskStatus::Completed).await;
    }
    assert_eq!(peak.load(Ordering::SeqCst), 2);
    flow.shutdown().await;
}

#[tokio::test]
async fn subscribers_resume_after_a_seq_and_lagging_ones_reread_the_store() {
    let (flow, _dir) = start(fast_config()).await;
    let (tx, rx) = tokio::sync::watch::channel(false);
    flow.register("chatty", move |ctx: TaskContext, n: u32| {
        let mut rx = rx.clone();
        async move {
            let _ = rx.wait_for(|go| *go).await;
            for i in 0..n {
                ctx.emit("line", i).await?;
            }
            Ok::<_, TaskError>(())
        }
    })
    .unwrap();
    let key = key_of(
        flow.submit("chatty", 300, SubmitOptions::new())
            .await
            .unwrap(),
    )
    .await;
    // Subscribed but not reading while 300 events (beyond the live buffer) are committed.
    let mut slow = flow.subscribe(&key, None, 0).await.unwrap();
    tx.send(true).unwrap();
    wait_status(&flow, &key, None, TaskStatus::Completed).await;
    let mut seen = Vec::new();
    while let Some(e) = slow.next().await {
        seen.push(e.unwrap());
    }
    assert_eq!(seen.len(), 303);
    assert_gapless(&seen, 0);
    assert_eq!(seen.last().unwrap().kind, EventKind::Completed);

    let tail = all_events(&flow, &key, None, 250).await;
    assert_eq!(tail.len(), 53);
    assert_gapless(&tail, 250);
    let nothing_left = all_events(&flow, &key, None, 303).await;
    assert!(nothing_left.is_empty());
    flow.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let (flow, _dir) = start(fast_config()).await;
    flow.register("noop", |_ctx: TaskContext, _: serde_json::Value| async {
        Ok::<_, TaskError>(())
    })
    .unwrap();
    let noop = |_ctx: TaskContext, _: ()| async { Ok::<_, TaskError>(()) };
    assert!(matches!(
        flow.register("bad name", noop),
        Err(Error::Invalid {
            field: "task name",
            ..
        })
    ));
    assert!(matches!(
        flow.register("noop", noop),
        Err(Error::DuplicateTask(_))
    ));
    let big = "x".repeat(taskflow::MAX_PAYLOAD_BYTES);
    let err = flow
        .submit("noop", big, SubmitOptions::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Invalid { field: "input", .. }),
        "{err}"
    );
    let err = flow
        .submit("nope", 1, SubmitOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownTask(_)), "{err}");
    let err = flow
        .submit(
            "noop",
            1,
            SubmitOptions::new().idempotency_key("k".repeat(257)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Invalid {
                field: "idempotency key",
                ..
            }
        ),
        "{err}"
    );
    let err = flow
        .submit("noop", 1, SubmitOptions::new().user(""))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Invalid {
                field: "user id",
                ..
            }
        ),
        "{err}"
    );
    assert!(matches!(
        flow.status("unknown", None).await,
        Err(Error::NotFound)
    ));
    assert!(matches!(
        flow.subscribe("unknown", None, 0).await,
        Err(Error::NotFound)
    ));

    let key = key_of(flow.submit("noop", 1, SubmitOptions::new()).await.unwrap()).await;
    let done = wait_status(&flow, &key, None, TaskStatus::Completed).await;
    let err = flow
        .subscribe(&key, None, done.last_seq + 1)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::CursorOutOfRange { after_seq, last_seq } if after_seq == 4 && last_seq == 3),
        "{err}"
    );
    flow.shutdown().await;
}

#[tokio::test]
async fn another_users_task_answers_like_a_missing_one() {
    let (flow, _dir) = start(fast_config()).await;
    flow.register("park", |ctx: TaskContext, _: ()| async move {
        ctx.cancelled().await;
        Ok::<_, TaskError>(())
    })
    .unwrap();
    let key = key_of(
        flow.submit("park", (), SubmitOptions::new().user("alice"))
            .await
            .unwrap(),
    )
    .await;
    for user in [Some("mallory"), None] {
        assert!(matches!(
            flow.status(&key, user).await,
            Err(Error::NotFound)
        ));
        assert!(matches!(
            flow.subscribe(&key, user, 0).await,
            Err(Error::NotFound)
        ));
        assert!(matches!(flow.stop(&key, user).await, Err(Error::NotFound)));
        assert!(matches!(
            flow.resume(&key, user).await,
            Err(Error::NotFound)
        ));
        assert!(matches!(
            flow.cancel(&key, user).await,
            Err(Error::NotFound)
        ));
    }
    let info = flow.status(&key, Some("alice")).await.unwrap();
    assert!(
        !info.status.is_terminal(),
        "nothing the others did changed the task"
    );
    flow.cancel(&key, Some("alice")).await.unwrap();
    flow.shutdown().await;
}
