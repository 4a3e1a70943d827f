//! Stop, resume, cancel, shutdown, recovery, leases and admission.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use common::*;
use serde_json::json;
use taskflow::testing::{ClaimBudget, ClaimParams, OpResult, WriteOp};
use taskflow::{
    Config, Error, RateLimit, SqliteStore, SubmitOptions, TaskContext, TaskError, TaskFlow,
    TaskOptions, TaskStatus,
};

/// A task that emits `tick` per step and parks until cancelled when `park` is set.
fn register_counter(flow: &TaskFlow, park_after: u32, bodies: Arc<AtomicU32>) {
    flow.register("counter", move |ctx: TaskContext, n: u32| {
        let bodies = bodies.clone();
        async move {
            for i in 1..=n {
                ctx.step(&format!("tick-{i}"), async {
                    bodies.fetch_add(1, Ordering::SeqCst);
                    ctx.emit("tick", json!({ "i": i })).await?;
                    Ok(())
                })
                .await?;
                if i == park_after && !ctx.is_recovery() && ctx.attempt() == 1 {
                    ctx.cancelled().await;
                    return Err(TaskError::retryable("stopped"));
                }
            }
            Ok::<_, TaskError>(json!({ "total": n }))
        }
    })
    .unwrap();
}

#[tokio::test]
async fn stop_suspends_and_resume_replays_steps_to_completion() {
    let (flow, _dir) = start(fast_config()).await;
    let bodies = Arc::new(AtomicU32::new(0));
    register_counter(&flow, 2, bodies.clone());
    let s = flow
        .submit("counter", 4, SubmitOptions::new().user("u"))
        .await
        .unwrap();
    let key = s.handle().idempotency_key.clone();
    wait_for("two ticks", || async {
        (flow.status(&key, Some("u")).await.unwrap().last_seq >= 4).then_some(())
    })
    .await;
    assert_eq!(
        flow.stop(&key, Some("u")).await.unwrap(),
        TaskStatus::Suspended
    );
    assert_eq!(
        flow.stop(&key, Some("u")).await.unwrap(),
        TaskStatus::Suspended,
        "idempotent"
    );
    let suspended = flow.status(&key, Some("u")).await.unwrap();
    assert_eq!(
        flow.resume(&key, Some("u")).await.unwrap(),
        TaskStatus::Pending
    );
    let rest = all_events(&flow, &key, Some("u"), suspended.last_seq).await;
    assert_eq!(
        names(&rest),
        ["resumed", "started", "tick", "tick", "completed"]
    );
    assert_gapless(&rest, suspended.last_seq);
    assert_eq!(
        bodies.load(Ordering::SeqCst),
        4,
        "steps 1 and 2 were not run again"
    );
    let all = all_events(&flow, &key, Some("u"), 0).await;
    assert_eq!(
        names(&all),
        [
            "created",
            "started",
            "tick",
            "tick",
            "suspended",
            "resumed",
            "started",
            "tick",
            "tick",
            "completed"
        ]
    );
    assert!(matches!(
        flow.stop(&key, Some("u")).await,
        Err(Error::InvalidTransition {
            from: TaskStatus::Completed,
            action: "stop"
        })
    ));
    assert!(matches!(
        flow.resume(&key, Some("u")).await,
        Err(Error::InvalidTransition { .. })
    ));
    assert!(matches!(
        flow.cancel(&key, Some("u")).await,
        Err(Error::InvalidTransition { .. })
    ));
    flow.shutdown().await;
}

#[tokio::test]
async fn cancel_is_terminal_fires_cancelled_and_fences_the_runner() {
    let (flow, _dir) = start(fast_config()).await;
    let saw_cancel = Arc::new(AtomicBool::new(false));
    let late_emit = Arc::new(tokio::sync::Mutex::new(None));
    let (s, l) = (saw_cancel.clone(), late_emit.clone());
    flow.register("park", move |ctx: TaskContext, _: ()| {
        let (s, l) = (s.clone(), l.clone());
        async move {
            ctx.cancelled().await;
            s.store(true, Ordering::SeqCst);
            *l.lock().await = Some(ctx.emit("late", 1).await);
            Ok::<_, TaskError>(())
        }
    })
    .unwrap();
    let key = flow
        .submit("park", (), SubmitOptions::new())
        .await
        .unwrap()
        .handle()
        .idempotency_key
        .clone();
    wait_status(&flow, &key, None, TaskStatus::Running).await;
    assert_eq!(
        flow.cancel(&key, None).await.unwrap(),
        TaskStatus::Cancelled
    );
    let events = all_events(&flow, &key, None, 0).await;
    assert_eq!(names(&events), ["created", "started", "cancelled"]);
    wait_for("handler to see the cancel", || async {
        late_emit
            .lock()
            .await
            .as_ref()
            .map(|r| matches!(r, Err(Error::Fenced)))
    })
    .await
    .then_some(())
    .expect("the cancelled runner's emit is refused");
    assert!(saw_cancel.load(Ordering::SeqCst));
    assert_eq!(
        flow.cancel(&key, None).await.unwrap(),
        TaskStatus::Cancelled,
        "idempotent"
    );
    assert_eq!(flow.status(&key, None).await.unwrap().last_seq, 3);

    // Pending and suspended tasks cancel too.
    let (flow2, _dir2) = start(fast_config().global_slots(1)).await;
    flow2
        .register("park", |ctx: TaskContext, _: u32| async move {
            ctx.cancelled().await;
            Ok::<_, TaskError>(())
        })
        .unwrap();
    let busy = flow2
        .submit("park", 0, SubmitOptions::new())
        .await
        .unwrap()
        .handle()
        .idempotency_key
        .clone();
    let waiting = flow2
        .submit("park", 1, SubmitOptions::new())
        .await
        .unwrap()
        .handle()
        .idempotency_key
        .clone();
    wait_status(&flow2, &busy, None, TaskStatus::Running).await;
    assert_eq!(
        flow2.status(&waiting, None).await.unwrap().status,
        TaskStatus::Pending
    );
    assert_eq!(
        flow2.stop(&waiting, None).await.unwrap(),
        TaskStatus::Suspended
    );
    assert_eq!(
        flow2.cancel(&waiting, None).await.unwrap(),
        TaskStatus::Cancelled
    );
    assert_eq!(
        flow2.cancel(&busy, None).await.unwrap(),
        TaskStatus::Cancelled
    );
    flow.shutdown().await;
    flow2.shutdown().await;
}

#[tokio::test]
async fn shutdown_releases_running_tasks_without_spending_an_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let bodies = Arc::new(AtomicU32::new(0));
    let key = {
        let flow = start_at(dir.path(), fast_config()).await;
        register_counter(&flow, 1, bodies.clone());
        let s = flow
            .submit("counter", 3, SubmitOptions::new())
            .await
            .unwrap();
        let key = s.handle().idempotency_key.clone();
        wait_for("first tick", || async {
            (flow.status(&key, None).await.unwrap().last_seq >= 3).then_some(())
        })
        .await;
        flow.shutdown().await;
        assert!(flow.is_shutting_down());
        assert!(matches!(
            flow.submit("counter", 9, SubmitOptions::new()).await,
            Err(Error::ShuttingDown)
        ));
        key
    };
    let flow = start_at(dir.path(), fast_config()).await;
    let released = flow.status(&key, None).await.unwrap();
    assert_eq!(
        (released.status, released.attempt),
        (TaskStatus::Pending, 0)
    );
    let recovered = Arc::new(AtomicBool::new(false));
    let r = recovered.clone();
    let b = bodies.clone();
    flow.register("counter", move |ctx: TaskContext, n: u32| {
        let (r, b) = (r.clone(), b.clone());
        async move {
            r.store(ctx.is_recovery(), Ordering::SeqCst);
            for i in 1..=n {
                ctx.step(&format!("tick-{i}"), async {
                    b.fetch_add(1, Ordering::SeqCst);
                    ctx.emit("tick", json!({ "i": i })).await?;
                    Ok(())
                })
                .await?;
            }
            Ok::<_, TaskError>(json!({ "total": n }))
        }
    })
    .unwrap();
    let events = all_events(&flow, &key, None, 0).await;
    assert_eq!(
        names(&events),
        [
            "created",
            "started",
            "tick",
            "started",
            "tick",
            "tick",
            "completed"
        ]
    );
    assert_gapless(&events, 0);
    assert_eq!(
        events[3].payload,
        json!({"attempt": 1, "recovery": true, "recoveries": 0}),
        "the released attempt runs again, and a release is not a recovery"
    );
    assert!(recovered.load(Ordering::SeqCst));
    assert_eq!(bodies.load(Ordering::SeqCst), 3);
    flow.shutdown().await;
}

#[tokio::test]
async fn startup_recovers_tasks_a_dead_process_left_running() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.db");
    // A "previous process": claim a task under a node that then vanishes without cleanup.
    let id = {
        let flow = start_at(dir.path(), fast_config().global_slots(1)).await;
        flow.register_with(
            "work",
            TaskOptions::new().auto_recover(true),
            |_c: TaskContext, _: ()| async { Ok::<_, TaskError>(()) },
        )
        .unwrap();
        flow.shutdown().await;
        let store = taskflow::testing::storage(SqliteStore::open(&path).await.unwrap());
        let submit = taskflow::testing::SubmitParams {
            id: "dead-1".into(),
            name: "work".into(),
            key: "k-dead".into(),
            user_id: None,
            input: json!(null),
            max_attempts: 3,
            max_recoveries: 20,
            auto_recover: true,
            mode: taskflow::IdempotencyMode::AtLeastOnce,
            now: i64::try_from(
                std::time::SystemTime::UNIX_EPOCH
                    .elapsed()
                    .unwrap()
                    .as_millis(),
            )
            .unwrap(),
            claim: Some(taskflow::testing::ClaimNow {
                node: "dead-node".into(),
                lease_until: i64::MAX,
            }),
        };
        store.write_batch(&[WriteOp::Submit(submit)]).await.unwrap();
        store.close().await;
        "dead-1".to_owned()
    };
    let flow = start_at(dir.path(), fast_config()).await;
    let recovered = flow.status("k-dead", None).await.unwrap();
    assert_eq!(recovered.id, id);
    assert_eq!(
        recovered.status,
        TaskStatus::Pending,
        "an unexpired lease of a dead process is recovered at start"
    );
    flow.register("work", |_c: TaskContext, _: ()| async {
        Ok::<_, TaskError>("done")
    })
    .unwrap();
    let events = all_events(&flow, "k-dead", None, 0).await;
    assert_eq!(
        names(&events),
        ["created", "started", "retrying", "started", "completed"]
    );
    assert_eq!(
        events[3].payload,
        json!({"attempt": 1, "recovery": true, "recoveries": 1}),
        "a process death does not spend the attempt; it counts a recovery"
    );
    let task = flow.status("k-dead", None).await.unwrap();
    assert_eq!((task.attempt, task.recoveries), (1, 1));
    flow.shutdown().await;
}

#[tokio::test]
async fn a_runner_that_lost_its_lease_is_stopped_and_its_writes_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = taskflow::testing::storage(
        SqliteStore::open(dir.path().join("tasks.db"))
            .await
            .unwrap(),
    );
    let flow = taskflow::testing::start_on(store.clone(), fast_config())
        .await
        .unwrap();
    let first_saw_cancel = Arc::new(AtomicBool::new(false));
    let f = first_saw_cancel.clone();
    flow.register_with(
        "lease",
        TaskOptions::new().max_attempts(5),
        move |ctx: TaskContext, _: ()| {
            let f = f.clone();
            async move {
                if !ctx.is_recovery() {
                    ctx.cancelled().await;
                    f.store(true, Ordering::SeqCst);
                    let refused = ctx.emit("zombie", 1).await;
                    assert!(matches!(refused, Err(Error::Fenced)), "{refused:?}");
                    return Ok(json!("zombie result"));
                }
                let recovery = ctx.is_recovery();
                Ok::<_, TaskError>(json!({"attempt": ctx.attempt(), "recovery": recovery}))
            }
        },
    )
    .unwrap();
    let key = flow
        .submit("lease", (), SubmitOptions::new())
        .await
        .unwrap()
        .handle()
        .idempotency_key
        .clone();
    wait_status(&flow, &key, None, TaskStatus::Running).await;
    // Another node's reaper, with its clock a lease ahead, decides the lease expired (as
    // if this node had stalled); the task becomes claimable at that "now".
    let ahead = std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap() + Duration::from_millis(700);
    let now = i64::try_from(ahead.as_millis()).unwrap();
    let out = store
        .write_batch(&[WriteOp::Reap {
            now,
            max_age_cutoff: 0,
            all: false,
        }])
        .await
        .unwrap();
    assert!(matches!(out[0].result, OpResult::Count(1)));
    let events = all_events(&flow, &key, None, 0).await;
    assert_eq!(
        names(&events),
        ["created", "started", "retrying", "started", "completed"]
    );
    assert_eq!(
        events[4].payload,
        json!({"result": {"attempt": 1, "recovery": true}}),
        "the zombie's result was refused, though it ran the same attempt number"
    );
    wait_for("the stale runner to be told", || async {
        first_saw_cancel.load(Ordering::SeqCst).then_some(())
    })
    .await;
    // A claim by a second node finds nothing: the task is not handed out twice.
    let claim = ClaimParams {
        node: "other".into(),
        now: i64::MAX,
        lease_until: i64::MAX,
        names: vec!["lease".into()],
        budget: ClaimBudget {
            global: 10,
            per_user: 10,
            ..Default::default()
        },
    };
    let out = store.write_batch(&[WriteOp::Claim(claim)]).await.unwrap();
    assert!(matches!(&out[0].result, OpResult::Claimed { tasks, .. } if tasks.is_empty()));
    flow.shutdown().await;
}

#[tokio::test]
async fn rate_limits_reject_with_retry_after() {
    let config = fast_config().user_rate_limit(RateLimit::new(2, Duration::from_secs(60)));
    let (flow, _dir) = start(config).await;
    flow.register("noop", |_c: TaskContext, _: u32| async {
        Ok::<_, TaskError>(())
    })
    .unwrap();
    flow.submit("noop", 1, SubmitOptions::new().user("a"))
        .await
        .unwrap();
    flow.submit("noop", 2, SubmitOptions::new().user("a"))
        .await
        .unwrap();
    let err = flow
        .submit("noop", 3, SubmitOptions::new().user("a"))
        .await
        .unwrap_err();
    let Error::Rejected { retry_after, .. } = err else {
        panic!("{err:?}")
    };
    assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(60));
    assert_eq!(err_retry(&flow).await, None, "another user is not limited");

    let (flow, _dir) =
        start(fast_config().rate_limit(RateLimit::new(1, Duration::from_secs(60)))).await;
    flow.register("noop", |_c: TaskContext, _: u32| async {
        Ok::<_, TaskError>(())
    })
    .unwrap();
    flow.submit("noop", 1, SubmitOptions::new()).await.unwrap();
    let err = flow
        .submit("noop", 2, SubmitOptions::new().user("z"))
        .await
        .unwrap_err();
    assert!(err.retry_after().is_some(), "{err}");
    flow.shutdown().await;
}

async fn err_retry(flow: &TaskFlow) -> Option<Duration> {
    flow.submit("noop", 9, SubmitOptions::new().user("b"))
        .await
        .err()
        .and_then(|e| e.retry_after())
}

#[tokio::test]
async fn pending_bound_rejects_new_work_until_it_drains() {
    let (flow, _dir) = start(fast_config().global_slots(1).max_pending(2)).await;
    let (tx, rx) = tokio::sync::watch::channel(false);
    flow.register("gate", move |_c: TaskContext, _: u32| {
        let mut rx = rx.clone();
        async move {
            let _ = rx.wait_for(|go| *go).await;
            Ok::<_, TaskError>(())
        }
    })
    .unwrap();
    let mut keys = Vec::new();
    keys.push(
        flow.submit("gate", 0, SubmitOptions::new())
            .await
            .unwrap()
            .handle()
            .idempotency_key
            .clone(),
    );
    wait_status(&flow, &keys[0], None, TaskStatus::Running).await;
    for i in 1..3 {
        keys.push(
            flow.submit("gate", i, SubmitOptions::new())
                .await
                .unwrap()
                .handle()
                .idempotency_key
                .clone(),
        );
    }
    let err = flow
        .submit("gate", 99, SubmitOptions::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Rejected {
                reason: "too many pending tasks",
                ..
            }
        ),
        "{err}"
    );
    tx.send(true).unwrap();
    for key in &keys {
        wait_status(&flow, key, None, TaskStatus::Completed).await;
    }
    wait_for("submissions to be admitted again", || async {
        flow.submit("gate", 100, SubmitOptions::new()).await.ok()
    })
    .await;
    flow.shutdown().await;
}

#[tokio::test]
async fn retention_deletes_old_finished_tasks() {
    let config = fast_config()
        .retention(Duration::ZERO)
        .purge_interval(Duration::from_millis(50));
    let (flow, _dir) = start(config).await;
    flow.register("noop", |_c: TaskContext, _: ()| async {
        Ok::<_, TaskError>(())
    })
    .unwrap();
    let key = flow
        .submit("noop", (), SubmitOptions::new())
        .await
        .unwrap()
        .handle()
        .idempotency_key
        .clone();
    wait_for("the finished task to be purged", || async {
        matches!(flow.status(&key, None).await, Err(Error::NotFound)).then_some(())
    })
    .await;
    flow.shutdown().await;
}

#[tokio::test]
async fn user_context_reaches_the_handler_in_process_only() {
    #[derive(Debug)]
    struct Token(&'static str);
    let (flow, _dir) = start(fast_config()).await;
    flow.register("who", |ctx: TaskContext, _: ()| async move {
        Ok::<_, TaskError>(json!({
            "token": ctx.user::<Token>().map(|t| t.0),
            "owner": ctx.owner(),
        }))
    })
    .unwrap();
    let key = flow
        .submit(
            "who",
            (),
            SubmitOptions::new()
                .user("alice")
                .user_context(Token("secret")),
        )
        .await
        .unwrap()
        .handle()
        .idempotency_key
        .clone();
    let done = wait_status(&flow, &key, Some("alice"), TaskStatus::Completed).await;
    assert_eq!(
        done.result,
        Some(json!({"token": "secret", "owner": "alice"}))
    );
    flow.shutdown().await;
}

/// The payload's `token` and the seq of the task's next `token` event after `after`.
async fn next_token(flow: &TaskFlow, key: &str, after: u64) -> (serde_json::Value, u64) {
    use futures_util::StreamExt;
    let mut stream = flow.subscribe(key, Some("alice"), after).await.unwrap();
    let find = async {
        while let Some(event) = stream.next().await {
            let event = event.unwrap();
            if event.name == "token" {
                return (event.payload["token"].clone(), event.seq);
            }
        }
        panic!("the stream ended without a token event");
    };
    tokio::time::timeout(DEADLINE, find).await.unwrap()
}

#[tokio::test]
async fn a_stopped_task_resumed_with_a_fresh_user_context_runs_with_it() {
    #[derive(Debug)]
    struct Token(&'static str);
    let (flow, _dir) = start(fast_config()).await;
    flow.register_with(
        "obo",
        TaskOptions::new().on_behalf_of(true).auto_recover(false),
        |ctx: TaskContext, _: ()| async move {
            let token = ctx.user::<Token>().map(|t| t.0);
            ctx.emit("token", json!({ "token": token })).await?;
            ctx.cancelled().await;
            Err::<(), _>(TaskError::retryable("stopped"))
        },
    )
    .unwrap();
    let key = flow
        .submit(
            "obo",
            (),
            SubmitOptions::new()
                .user("alice")
                .user_context(Token("first")),
        )
        .await
        .unwrap()
        .handle()
        .idempotency_key
        .clone();
    let (first, seq) = next_token(&flow, &key, 0).await;
    assert_eq!(first, json!("first"));
    assert_eq!(
        flow.stop(&key, Some("alice")).await.unwrap(),
        TaskStatus::Suspended
    );
    // Another user cannot resume it, with or without a context.
    assert!(matches!(
        flow.resume_with(&key, Some("mallory"), Token("stolen"))
            .await,
        Err(Error::NotFound)
    ));
    assert_eq!(
        flow.resume_with(&key, Some("alice"), Token("second"))
            .await
            .unwrap(),
        TaskStatus::Pending
    );
    let (second, _) = next_token(&flow, &key, seq).await;
    assert_eq!(second, json!("second"));
    flow.cancel(&key, Some("alice")).await.unwrap();
    // A terminal task cannot be resumed, and keeps no context here.
    assert!(matches!(
        flow.resume_with(&key, Some("alice"), Token("late")).await,
        Err(Error::InvalidTransition { .. })
    ));
    wait_for("no local state left", || async {
        (flow.stats().local_tasks == 0).then_some(())
    })
    .await;
    flow.shutdown().await;
}

#[tokio::test]
async fn shutdown_is_single_flight_and_bounded() {
    let config = fast_config()
        .drain_timeout(Duration::from_millis(100))
        .stop_grace(Duration::from_millis(100));
    let (flow, _dir) = start(config).await;
    flow.register("deaf", |_c: TaskContext, _: ()| async {
        std::future::pending::<()>().await;
        Ok::<_, TaskError>(())
    })
    .unwrap();
    let key = flow
        .submit("deaf", (), SubmitOptions::new())
        .await
        .unwrap()
        .handle()
        .idempotency_key
        .clone();
    wait_status(&flow, &key, None, TaskStatus::Running).await;
    let started = std::time::Instant::now();
    let other = flow.clone();
    tokio::join!(flow.shutdown(), flow.shutdown(), other.shutdown());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a handler ignoring cancellation cannot pin shutdown"
    );
    // The abandoned task was released, not lost.
    let store = SqliteStore::open(_dir.path().join("tasks.db"))
        .await
        .unwrap();
    let flow = TaskFlow::start(store, Config::default()).await.unwrap();
    assert_eq!(
        flow.status(&key, None).await.unwrap().status,
        TaskStatus::Pending
    );
    flow.shutdown().await;
}

/// COMMITs that fail after the database committed (the connection dropped on the way
/// back) are settled by the batch's commit marker: callers get the first outcome, nothing
/// is applied twice, no event is lost or repeated, no claimed task is left without a runner.
#[tokio::test]
async fn ambiguous_commits_neither_duplicate_nor_lose_anything() {
    let dir = tempfile::tempdir().unwrap();
    let store = taskflow::testing::storage(
        SqliteStore::open(dir.path().join("tasks.db"))
            .await
            .unwrap(),
    );
    let flow = taskflow::testing::start_on(store.clone(), fast_config())
        .await
        .unwrap();
    flow.register("count", |ctx: TaskContext, n: u32| async move {
        for i in 1..=n {
            ctx.step(&format!("tick-{i}"), async {
                ctx.emit("tick", json!({ "i": i })).await?;
                Ok(())
            })
            .await?;
            ctx.emit("between", json!({ "i": i })).await?;
        }
        Ok::<_, TaskError>(n)
    })
    .unwrap();
    // Arm one ambiguous commit after another while tasks are submitted, claimed, emit,
    // checkpoint and finish.
    let armed = Arc::new(AtomicBool::new(true));
    let arming = {
        let (store, armed) = (store.clone(), armed.clone());
        tokio::spawn(async move {
            let mut injected = 0u32;
            while armed.load(Ordering::SeqCst) {
                if store.faults().commit_then_fail.load(Ordering::SeqCst) == 0 {
                    store.faults().commit_then_fail.store(1, Ordering::SeqCst);
                    injected += 1;
                }
                // Re-armed once per round of the runtime (this test's has one thread), so
                // the count follows the number of batches, not how long they take.
                tokio::task::yield_now().await;
            }
            injected
        })
    };
    let mut keys = Vec::new();
    for i in 0..20u32 {
        let s = flow
            .submit(
                "count",
                5,
                SubmitOptions::new().idempotency_key(format!("k{i}")),
            )
            .await
            .unwrap();
        keys.push(s.handle().idempotency_key.clone());
    }
    for key in &keys {
        let events = all_events(&flow, key, None, 0).await;
        assert_gapless(&events, 0);
        let ticks: Vec<_> = events
            .iter()
            .filter(|e| e.name == "tick")
            .map(|e| e.payload["i"].as_u64().unwrap())
            .collect();
        assert_eq!(
            ticks,
            [1, 2, 3, 4, 5],
            "{key}: every checkpointed tick once"
        );
        let between = events.iter().filter(|e| e.name == "between").count();
        assert_eq!(between, 5, "{key}: no emit applied twice");
        assert_eq!(
            events.iter().filter(|e| e.name == "started").count(),
            1,
            "{key}"
        );
        assert_eq!(events.last().unwrap().name, "completed");
    }
    armed.store(false, Ordering::SeqCst);
    let injected = arming.await.unwrap();
    assert!(injected >= 10, "faults were injected ({injected})");
    flow.shutdown().await;
}
