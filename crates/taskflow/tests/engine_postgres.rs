//! Two engines (two nodes) sharing one PostgreSQL schema: exactly-once execution, cross-node
//! event delivery, cross-node idempotency and recovery. Skipped (with a message) without
//! `TEST_DATABASE_URL`.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use taskflow::{Config, PostgresStore, SubmitOptions, Submitted, TaskContext, TaskError, TaskFlow};

async fn node(opts: &PgConnectOptions, runs: Arc<Mutex<HashMap<String, Vec<String>>>>) -> TaskFlow {
    node_with(opts, runs, fast_config()).await
}

async fn node_with(
    opts: &PgConnectOptions,
    runs: Arc<Mutex<HashMap<String, Vec<String>>>>,
    config: Config,
) -> TaskFlow {
    let pool: PgPool = PgPoolOptions::new()
        .max_connections(6)
        .connect_with(opts.clone())
        .await
        .unwrap();
    let store = PostgresStore::new(pool).await.unwrap();
    let flow = TaskFlow::start(store, config.poll_interval(Duration::from_millis(100)))
        .await
        .unwrap();
    let me = flow.node_id().to_owned();
    flow.register("work", move |ctx: TaskContext, n: u32| {
        let runs = runs.clone();
        let me = me.clone();
        async move {
            runs.lock()
                .unwrap()
                .entry(ctx.task_id().to_owned())
                .or_default()
                .push(me);
            for i in 0..n {
                ctx.step(&format!("s{i}"), async {
                    ctx.emit("tick", json!({ "i": i })).await?;
                    Ok(())
                })
                .await?;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok::<_, TaskError>(n)
        }
    })
    .unwrap();
    flow
}

#[tokio::test]
async fn two_nodes_run_each_task_once_and_stream_across_nodes() {
    let Some(opts) = pg_schema().await else {
        return;
    };
    let runs = Arc::new(Mutex::new(HashMap::new()));
    let a = node(&opts, runs.clone()).await;
    let b = node(&opts, runs.clone()).await;
    let mut keys = Vec::new();
    for i in 0..40u32 {
        let flow = if i % 2 == 0 { &a } else { &b };
        let opts = SubmitOptions::new().idempotency_key(format!("t{i}"));
        keys.push(
            flow.submit("work", i % 5 + 1, opts)
                .await
                .unwrap()
                .handle()
                .idempotency_key
                .clone(),
        );
    }
    for (i, key) in keys.iter().enumerate() {
        // Follow each task from the node that did NOT receive its submission.
        let other = if i % 2 == 0 { &b } else { &a };
        let events = all_events(other, key, None, 0).await;
        assert_gapless(&events, 0);
        assert_eq!(names(&events).last(), Some(&"completed"), "{key}");
        let ticks = events.iter().filter(|e| e.name == "tick").count();
        assert_eq!(ticks, i % 5 + 1);
    }
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 40);
    assert!(
        runs.values().all(|nodes| nodes.len() == 1),
        "a task ran twice: {runs:?}"
    );
    let by_a = runs.values().filter(|n| n[0] == a.node_id()).count();
    assert!(
        by_a > 0 && by_a < 40,
        "both nodes did work ({by_a} of 40 on A)"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn concurrent_submits_of_one_key_on_two_nodes_create_one_task() {
    let Some(opts) = pg_schema().await else {
        return;
    };
    // The nodes only submit: a task that ran and ended between the two submits would
    // rightly let the second start a new run (at-least-once), so the race under test,
    // two inserts of one live key on two nodes, needs the first run to stay live.
    let runs = Arc::new(Mutex::new(HashMap::new()));
    let a = node_with(&opts, runs.clone(), fast_config().run_tasks(false)).await;
    let b = node_with(&opts, runs.clone(), fast_config().run_tasks(false)).await;
    for round in 0..10u32 {
        let opts = || {
            SubmitOptions::new()
                .user("u")
                .idempotency_key(format!("same-{round}"))
        };
        let (x, y) = tokio::join!(a.submit("work", 1, opts()), b.submit("work", 1, opts()));
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_eq!(x.handle().id, y.handle().id, "round {round}");
        let created = [&x, &y]
            .iter()
            .filter(|s| matches!(s, Submitted::Created(_)))
            .count();
        assert_eq!(created, 1, "round {round}: {x:?} {y:?}");
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_dead_nodes_expired_lease_is_recovered_by_another_node() {
    use taskflow::testing::{ClaimNow, SubmitParams, WriteOp};
    let Some(opts) = pg_schema().await else {
        return;
    };
    // A node claimed the task and died: its lease runs out in 300 ms and is never renewed.
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(opts.clone())
        .await
        .unwrap();
    let dead = taskflow::testing::storage(PostgresStore::new(pool).await.unwrap());
    let now = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let submit = SubmitParams {
        id: uuid_like(),
        name: "work".into(),
        key: "orphan".into(),
        user_id: None,
        input: json!(2),
        max_attempts: 3,
        max_recoveries: 20,
        auto_recover: true,
        mode: taskflow::IdempotencyMode::AtLeastOnce,
        now,
        claim: Some(ClaimNow {
            node: "dead-node".into(),
            lease_until: now + 300,
        }),
    };
    dead.write_batch(&[WriteOp::Submit(submit)]).await.unwrap();
    dead.close().await;

    let runs = Arc::new(Mutex::new(HashMap::new()));
    let b = node(&opts, runs.clone()).await;
    let events = all_events(&b, "orphan", None, 0).await;
    assert_eq!(
        names(&events),
        [
            "created",
            "started",
            "retrying",
            "started",
            "tick",
            "tick",
            "completed"
        ]
    );
    assert_eq!(events[2].payload["error"]["kind"], "lease_expired");
    assert_eq!(
        events[3].payload,
        json!({"attempt": 1, "recovery": true, "recoveries": 1})
    );
    assert_eq!(runs.lock().unwrap().len(), 1);
    b.shutdown().await;
}

fn uuid_like() -> String {
    format!("orphan-{}", fastrand::u64(..))
}

/// A submit-only node keeps local state (the user's context, the trace parent) for the
/// tasks it submitted only until they leave it: after another node ran all of them, the
/// submitting node holds nothing — no user token lingers for the life of the process.
#[tokio::test]
async fn local_state_of_tasks_run_on_another_node_is_dropped() {
    const TASKS: usize = 1_000;
    let Some(opts) = pg_schema().await else {
        return;
    };
    let pool = |n| {
        PgPoolOptions::new()
            .max_connections(n)
            .connect_with(opts.clone())
    };
    let config = fast_config().poll_interval(Duration::from_millis(100));
    let submitter = TaskFlow::start(
        PostgresStore::new(pool(4).await.unwrap()).await.unwrap(),
        config.clone().run_tasks(false),
    )
    .await
    .unwrap();
    let runner = TaskFlow::start(
        PostgresStore::new(pool(6).await.unwrap()).await.unwrap(),
        config,
    )
    .await
    .unwrap();
    let ran_on = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    for flow in [&submitter, &runner] {
        let me = flow.node_id().to_owned();
        let ran_on = ran_on.clone();
        flow.register("quick", move |_ctx: TaskContext, _: usize| {
            let (me, ran_on) = (me.clone(), ran_on.clone());
            async move {
                *ran_on.lock().unwrap().entry(me).or_default() += 1;
                Ok::<_, TaskError>(())
            }
        })
        .unwrap();
    }
    let mut keys = Vec::with_capacity(TASKS);
    let mut held = 0;
    for chunk in (0..TASKS).collect::<Vec<_>>().chunks(50) {
        let submits = chunk.iter().map(|&i| {
            let options = SubmitOptions::new()
                .user(format!("user-{}", i % 7))
                .user_context(format!("token-{i}"));
            submitter.submit("quick", i, options)
        });
        for s in futures_util::future::join_all(submits).await {
            keys.push((s.unwrap().handle().idempotency_key.clone(), keys.len() % 7));
        }
        held = held.max(submitter.stats().local_tasks);
    }
    assert!(
        held > 0,
        "the submitting node did hold local state for its submits"
    );
    for (key, user) in &keys {
        wait_status(
            &submitter,
            key,
            Some(&format!("user-{user}")),
            taskflow::TaskStatus::Completed,
        )
        .await;
    }
    let ran_on = ran_on.lock().unwrap().clone();
    assert_eq!(
        ran_on.get(submitter.node_id()),
        None,
        "the submit-only node ran nothing"
    );
    assert_eq!(ran_on.get(runner.node_id()), Some(&TASKS));
    wait_for("the submitting node to drop all local state", || async {
        (submitter.stats().local_tasks == 0).then_some(())
    })
    .await;
    wait_for("the running node to drop all local state", || async {
        (runner.stats().local_tasks == 0 && runner.stats().running == 0).then_some(())
    })
    .await;
    submitter.shutdown().await;
    runner.shutdown().await;
}
