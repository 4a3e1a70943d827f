//! The taskflow store conformance suite: one set of behavioural cases that every storage
//! backend must pass, driven op by op through `taskflow::testing` (the engine's internal
//! write protocol, exposed by the `testing` feature).
//!
//! Each case is a public async fn taking a fresh, empty, migrated store. A backend's test
//! file generates one `#[tokio::test]` per case with [`conformance_tests!`], given an async
//! factory that returns a fresh store per case, or `None` (after printing why) when the
//! backend is not available:
//!
//! ```text
//! taskflow_store_tests::conformance_tests!(taskflow_store_tests::fresh_sqlite);
//! ```
//!
//! [`fresh_sqlite`] and [`fresh_postgres`] are the factories for this repository's two
//! backends. Where backends may legitimately differ, cases accept either behaviour.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use taskflow::testing::{
    ClaimBudget, ClaimNow, ClaimParams, ClaimedTask, Control, Fence, Finish, OpOutcome, OpResult,
    Storage, SubmitParams, WriteOp,
};
use taskflow::{
    Backend, EventKind, IdempotencyMode, NewEvent, PostgresStore, SqliteStore, TaskEvent, TaskInfo,
    TaskStatus,
};

/// Tasks one `Purge` op deletes at most.
pub const PURGE_LIMIT: u64 = taskflow::testing::PURGE_LIMIT.unsigned_abs();

/// The case list, written once: expands to `$crate::__conformance!{ (<args>) case, ... }`,
/// which turns it into [`CASES`] or into tests, so the two cannot drift.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($($args:tt)*) => {
        $crate::__conformance! { ($($args)*)
            submit_inserts_task_and_created_event,
            submit_with_claim_starts_at_once,
            duplicate_active_submit_attaches,
            at_least_once_runs_again_after_terminal,
            at_most_once_attaches_after_terminal,
            keys_are_scoped_per_owner,
            claim_takes_ready_tasks_in_order,
            claim_skips_future_and_unregistered,
            claim_respects_budget,
            claim_looks_past_candidates_a_limit_refused,
            claim_is_exclusive,
            emit_assigns_gapless_seqs,
            emits_and_steps_of_several_runs_in_one_batch_keep_queue_order,
            fenced_writes_are_refused,
            step_commits_checkpoint_with_events,
            finish_transitions,
            release_does_not_spend_attempt,
            control_transitions_and_refusals,
            lease_renew_returns_held_and_stop_requests,
            reap_recovers_expired_leases,
            reap_all_recovers_every_running_task,
            purge_deletes_old_finished_tasks,
            events_after_pages,
            batch_applies_all_ops_in_order,
            ambiguous_commit_submit_applies_once,
            ambiguous_commit_emit_applies_once,
            ambiguous_commit_step_applies_once,
            ambiguous_commit_finish_applies_once,
            ambiguous_commit_claim_applies_once,
            ambiguous_commit_control_applies_once,
            ambiguous_commit_is_settled_once_the_store_answers,
            ambiguous_commit_during_an_outage_is_answered_unknown_in_bounded_time,
            fail_before_commit_rolls_back_the_whole_batch,
            a_batch_whose_opening_fails_leaves_no_transaction_behind,
            a_batch_failing_at_its_last_statement_commits_nothing,
            stale_epoch_is_fenced_after_reclaim_on_the_same_node,
            recovery_gives_the_attempt_back_and_is_counted,
            recovery_limit_fails_the_task_and_redrive_resets_it,
            redrive_refuses_while_the_key_has_a_live_task,
            a_redriven_task_holds_its_key_again,
            submits_of_one_key_in_a_batch_make_one_task,
            tasks_still_pending_returns_only_pending_ids,
            purge_keeps_recent_commit_markers_working,
            purge_is_bounded_per_op,
        }
    };
}

/// What [`__conformance_cases!`] expands the case list into.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance {
    ((names) $($case:ident,)*) => {
        &[$(stringify!($case)),*]
    };
    ((tests $factory:path) $($case:ident,)*) => {
        $(
            #[tokio::test]
            async fn $case() {
                if let Some(store) = $factory().await {
                    let handle = ::std::sync::Arc::clone(&store);
                    $crate::$case(store).await;
                    handle.close().await;
                }
            }
        )*

        #[test]
        fn every_conformance_case_is_generated() {
            let generated: &[&str] = &[$(stringify!($case)),*];
            assert_eq!(generated, $crate::CASES);
        }
    };
}

/// Generates one `#[tokio::test]` per conformance case (named after it), each on a fresh
/// store from `$factory` (an async fn returning `Option<Arc<dyn Storage>>`; `None` skips
/// the case), plus `every_conformance_case_is_generated`. The calling crate needs `tokio`
/// with the `macros` and `rt` features.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:path) => {
        $crate::__conformance_cases!(tests $factory);
    };
}

/// The name of every case, in the order [`conformance_tests!`] generates them.
pub const CASES: &[&str] = __conformance_cases!(names);

// ---------------------------------------------------------------------------------------
// Factories.

/// A fresh SQLite store in a new temporary directory. Directories left by runs older than
/// an hour are removed on the way (a case's directory must outlive its open store, so it
/// is not removed when the case ends).
pub async fn fresh_sqlite() -> Option<Arc<dyn Storage>> {
    const PREFIX: &str = "taskflow-store-tests-";
    sweep_old_dirs(PREFIX);
    let dir = tempfile::Builder::new()
        .prefix(PREFIX)
        .tempdir()
        .expect("temp dir")
        .keep();
    let store = SqliteStore::open(dir.join("tasks.db"))
        .await
        .expect("open sqlite store");
    Some(taskflow::testing::storage(store))
}

fn sweep_old_dirs(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < hour_ago);
        if old && entry.file_name().to_string_lossy().starts_with(prefix) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A fresh Postgres store in its own schema of the database at `TEST_DATABASE_URL` (see
/// [`pg_schema`]); `None` when the variable is unset.
pub async fn fresh_postgres() -> Option<Arc<dyn Storage>> {
    let opts = pg_schema().await?;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(opts)
        .await
        .expect("connect to TEST_DATABASE_URL");
    let store = PostgresStore::new(pool)
        .await
        .expect("migrate postgres store");
    Some(taskflow::testing::storage(store))
}

/// Connect options for a fresh schema in the database at `TEST_DATABASE_URL` (the shared
/// test kit's), so cases run in parallel without seeing each other's rows; `None` (after
/// saying so) when the variable is unset.
pub use appkit_testkit::pg::fresh_schema as pg_schema;

// ---------------------------------------------------------------------------------------
// Helpers.

async fn one(store: &dyn Storage, op: WriteOp) -> OpOutcome {
    let mut out = store.write_batch(&[op]).await.expect("write_batch");
    assert_eq!(out.len(), 1);
    out.remove(0)
}

fn params(id: &str, key: &str, user: Option<&str>) -> SubmitParams {
    SubmitParams {
        id: id.to_owned(),
        name: "job".to_owned(),
        key: key.to_owned(),
        user_id: user.map(str::to_owned),
        input: json!({"n": 1}),
        max_attempts: 3,
        max_recoveries: 3,
        auto_recover: true,
        mode: IdempotencyMode::AtLeastOnce,
        now: 1_000,
        claim: None,
    }
}

fn claim_now(p: SubmitParams, node: &str) -> SubmitParams {
    SubmitParams {
        claim: Some(ClaimNow {
            node: node.to_owned(),
            lease_until: 99_000,
        }),
        ..p
    }
}

async fn submit(store: &dyn Storage, p: SubmitParams) -> (TaskInfo, bool) {
    match one(store, WriteOp::Submit(p)).await.result {
        OpResult::Submitted { task, created, .. } => (*task, created),
        other => panic!("unexpected {other:?}"),
    }
}

fn budget(global: usize) -> ClaimBudget {
    ClaimBudget {
        global,
        per_user: 100,
        ..ClaimBudget::default()
    }
}

/// A claim at `now` with a 30 s lease.
fn claim_params(node: &str, now: i64, global: usize) -> ClaimParams {
    ClaimParams {
        node: node.to_owned(),
        now,
        lease_until: now + 30_000,
        names: vec!["job".to_owned()],
        budget: budget(global),
    }
}

async fn claim(store: &dyn Storage, p: ClaimParams) -> Vec<ClaimedTask> {
    match one(store, WriteOp::Claim(p)).await.result {
        OpResult::Claimed { tasks, .. } => tasks,
        other => panic!("unexpected {other:?}"),
    }
}

fn fence(claimed: &ClaimedTask, node: &str) -> Fence {
    Fence {
        task_id: claimed.task.id.clone(),
        node: node.to_owned(),
        epoch: claimed.epoch,
    }
}

/// The claim's runner ends its attempt.
fn finish(claimed: &ClaimedTask, node: &str, outcome: Finish, now: i64) -> WriteOp {
    WriteOp::Finish {
        fence: fence(claimed, node),
        attempt: claimed.task.attempt,
        outcome,
        now,
    }
}

fn custom(name: &str, payload: Value) -> NewEvent {
    NewEvent {
        kind: EventKind::Custom,
        name: name.to_owned(),
        payload,
    }
}

async fn events(store: &dyn Storage, id: &str) -> Vec<TaskEvent> {
    store.events_after(id, 0, 100_000).await.unwrap()
}

async fn seqs(store: &dyn Storage, id: &str) -> Vec<(u64, String)> {
    events(store, id)
        .await
        .into_iter()
        .map(|e| (e.seq, e.name))
        .collect()
}

fn numbered(names: &[&str]) -> Vec<(u64, String)> {
    (1..).zip(names.iter().map(|n| (*n).to_owned())).collect()
}

async fn last_event(store: &dyn Storage, id: &str) -> TaskEvent {
    events(store, id).await.pop().expect("the task has events")
}

async fn status(store: &dyn Storage, id: &str) -> TaskInfo {
    store.task_by_id(id).await.unwrap().expect("task exists")
}

fn control_op(id: &str, action: Control) -> WriteOp {
    WriteOp::Control {
        task_id: id.to_owned(),
        action,
        now: 5_000,
    }
}

async fn control(store: &dyn Storage, id: &str, action: Control) -> (TaskStatus, TaskStatus) {
    match one(store, control_op(id, action)).await.result {
        OpResult::Controlled { from, to } => (from, to),
        other => panic!("unexpected {other:?}"),
    }
}

/// Submits `id` (key `k-<id>`) and claims it for `node` at 2 000 (lease until 32 000).
/// Expects no other task to be ready then.
async fn running(store: &dyn Storage, id: &str, node: &str) -> ClaimedTask {
    submit(store, params(id, &format!("k-{id}"), None)).await;
    let mut claimed = claim(store, claim_params(node, 2_000, 1)).await;
    assert_eq!(claimed.len(), 1, "the only pending task is claimed");
    let claimed = claimed.remove(0);
    assert_eq!(claimed.task.id, id);
    claimed
}

async fn reap(store: &dyn Storage, now: i64, cutoff: i64, all: bool) -> u64 {
    let op = WriteOp::Reap {
        now,
        max_age_cutoff: cutoff,
        all,
    };
    match one(store, op).await.result {
        OpResult::Count(n) => n,
        other => panic!("unexpected {other:?}"),
    }
}

async fn renew(store: &dyn Storage, node: &str) -> Vec<(String, u32, bool)> {
    let op = WriteOp::LeaseRenew {
        node: node.to_owned(),
        until: 500_000,
    };
    match one(store, op).await.result {
        OpResult::Renewed(held) => held
            .into_iter()
            .map(|l| (l.task_id, l.epoch, l.stop_requested))
            .collect(),
        other => panic!("unexpected {other:?}"),
    }
}

async fn purge(store: &dyn Storage, before: i64, batches_before: i64) -> u64 {
    let op = WriteOp::Purge {
        terminal_before: before,
        suspended_before: before,
        batches_before,
    };
    match one(store, op).await.result {
        OpResult::Count(n) => n,
        other => panic!("unexpected {other:?}"),
    }
}

/// Writes `op` with one ambiguous commit armed (the database commits, the COMMIT reports
/// an error) and expects the store to settle it as committed.
async fn ambiguous(store: &dyn Storage, op: WriteOp) -> OpOutcome {
    let armed = &store.faults().commit_then_fail;
    armed.store(1, Ordering::SeqCst);
    let out = store.write_batch(&[op]).await;
    assert_eq!(armed.load(Ordering::SeqCst), 0, "the armed fault was taken");
    let mut out = out.expect("a batch that committed is reported committed");
    assert_eq!(out.len(), 1);
    out.remove(0)
}

fn recovered_retrying(attempt: u32, recoveries: u32) -> Value {
    json!({
        "attempt": attempt,
        "error": {"message": "lease expired", "kind": "lease_expired"},
        "retryInMs": 0,
        "recovery": true,
        "recoveries": recoveries,
    })
}

// ---------------------------------------------------------------------------------------
// Cases ported from the original suite.

/// A submit inserts a pending task with its `created` event at seq 1.
pub async fn submit_inserts_task_and_created_event(store: Arc<dyn Storage>) {
    let s = &*store;
    let (task, created) = submit(s, params("t1", "k1", Some("alice"))).await;
    assert!(created);
    assert_eq!(task.status, TaskStatus::Pending);
    assert_eq!((task.attempt, task.recoveries, task.last_seq), (0, 0, 1));
    let stored = s.task_by_key("k1", Some("alice")).await.unwrap().unwrap();
    assert_eq!(stored, task);
    assert_eq!(stored.input, json!({"n": 1}));
    assert_eq!(seqs(s, "t1").await, numbered(&["created"]));
    assert_eq!(s.tasks_pending_count().await.unwrap(), 1);
}

/// A submit with `claim` inserts the task running (attempt 1, epoch 1) with `created` and
/// `started` in one commit.
pub async fn submit_with_claim_starts_at_once(store: Arc<dyn Storage>) {
    let s = &*store;
    let out = one(
        s,
        WriteOp::Submit(claim_now(params("t1", "k1", None), "n1")),
    )
    .await;
    let OpResult::Submitted { task, claimed, .. } = out.result else {
        panic!("unexpected {:?}", out.result)
    };
    assert!(claimed);
    assert_eq!(
        (task.status, task.attempt, task.last_seq),
        (TaskStatus::Running, 1, 2)
    );
    let got: Vec<_> = out.events.iter().map(|e| (e.seq, e.kind)).collect();
    assert_eq!(got, [(1, EventKind::Created), (2, EventKind::Started)]);
    assert_eq!(out.events[1].payload, json!({"attempt": 1}));
    assert_eq!(status(s, "t1").await.status, TaskStatus::Running);
    assert_eq!(seqs(s, "t1").await, numbered(&["created", "started"]));
    assert_eq!(
        renew(s, "n1").await,
        [("t1".to_owned(), 1, false)],
        "epoch 1"
    );
    let emit = WriteOp::Emit {
        fence: Fence {
            task_id: "t1".into(),
            node: "n1".into(),
            epoch: 1,
        },
        events: vec![custom("a", json!(1))],
    };
    assert!(matches!(one(s, emit).await.result, OpResult::Applied));
}

/// A submit whose key is held by an active task attaches to it.
pub async fn duplicate_active_submit_attaches(store: Arc<dyn Storage>) {
    let s = &*store;
    submit(s, params("t1", "k1", None)).await;
    let (task, created) = submit(s, params("t2", "k1", None)).await;
    assert!(!created);
    assert_eq!(task.id, "t1");
    assert!(s.task_by_id("t2").await.unwrap().is_none());
}

/// At-least-once: a finished task does not block a new run of its key.
pub async fn at_least_once_runs_again_after_terminal(store: Arc<dyn Storage>) {
    let s = &*store;
    let t = running(s, "t1", "n1").await;
    let done = one(
        s,
        finish(&t, "n1", Finish::Complete { result: json!(1) }, 3_000),
    )
    .await;
    assert!(matches!(done.result, OpResult::Applied));
    let (task, created) = submit(s, params("t2", "k-t1", None)).await;
    assert!(created, "a finished task does not block a new run");
    assert_eq!(task.id, "t2");
    let newest = s.task_by_key("k-t1", None).await.unwrap().unwrap();
    assert_eq!(newest.id, "t2", "lookup by key returns the newest run");
}

/// At-most-once: a submit after the key's task finished attaches to it.
pub async fn at_most_once_attaches_after_terminal(store: Arc<dyn Storage>) {
    let s = &*store;
    let t = running(s, "t1", "n1").await;
    let complete = Finish::Complete { result: json!("r") };
    one(s, finish(&t, "n1", complete, 3_000)).await;
    let mut p = params("t2", "k-t1", None);
    p.mode = IdempotencyMode::AtMostOnce;
    let (task, created) = submit(s, p).await;
    assert!(!created);
    assert_eq!(
        (task.id.as_str(), task.status),
        ("t1", TaskStatus::Completed)
    );
    assert_eq!(task.result, Some(json!("r")));
}

/// The same key under different owners names different tasks.
pub async fn keys_are_scoped_per_owner(store: Arc<dyn Storage>) {
    let s = &*store;
    let (_, a) = submit(s, params("t1", "k", Some("alice"))).await;
    let (_, b) = submit(s, params("t2", "k", Some("bob"))).await;
    let (_, c) = submit(s, params("t3", "k", None)).await;
    assert!(
        a && b && c,
        "same key under different owners are different tasks"
    );
    let by_key = async |user| s.task_by_key("k", user).await.unwrap().map(|t| t.id);
    assert_eq!(by_key(Some("alice")).await.as_deref(), Some("t1"));
    assert_eq!(by_key(Some("bob")).await.as_deref(), Some("t2"));
    assert_eq!(by_key(None).await.as_deref(), Some("t3"));
    assert_eq!(by_key(Some("eve")).await, None);
}

/// A claim takes ready tasks oldest first, each with attempt 1, epoch 1 and `started`.
pub async fn claim_takes_ready_tasks_in_order(store: Arc<dyn Storage>) {
    let s = &*store;
    for (i, id) in (0..).zip(["t1", "t2", "t3"]) {
        let mut p = params(id, &format!("k{i}"), None);
        p.now = 1_000 + i;
        submit(s, p).await;
    }
    let claimed = claim(s, claim_params("n1", 2_000, 2)).await;
    let ids: Vec<_> = claimed.iter().map(|c| c.task.id.as_str()).collect();
    assert_eq!(ids, ["t1", "t2"]);
    for c in &claimed {
        let t = &c.task;
        assert_eq!(
            (t.status, t.attempt, t.last_seq, c.epoch, c.recovery),
            (TaskStatus::Running, 1, 2, 1, false)
        );
        let started = last_event(s, &t.id).await;
        assert_eq!((started.seq, started.kind), (2, EventKind::Started));
        assert_eq!(started.payload, json!({"attempt": 1}), "a first run");
    }
    assert_eq!(s.tasks_pending_count().await.unwrap(), 1);
}

/// A claim skips tasks not yet due and tasks of names the node has no handler for.
pub async fn claim_skips_future_and_unregistered(store: Arc<dyn Storage>) {
    let s = &*store;
    let mut later = params("t1", "k1", None);
    later.now = 10_000; // run_at = now
    submit(s, later).await;
    let mut other = params("t2", "k2", None);
    other.name = "other".to_owned();
    submit(s, other).await;
    assert!(claim(s, claim_params("n1", 5_000, 10)).await.is_empty());
    assert_eq!(claim(s, claim_params("n1", 10_000, 10)).await.len(), 1);
}

/// A claim admits candidates against per-user slots and reports the skipped ones.
pub async fn claim_respects_budget(store: Arc<dyn Storage>) {
    let s = &*store;
    for i in 0..4 {
        let p = params(&format!("a{i}"), &format!("ka{i}"), Some("alice"));
        submit(s, p).await;
    }
    submit(s, params("b0", "kb0", Some("bob"))).await;
    let mut p = claim_params("n1", 2_000, 10);
    p.budget.per_user = 2;
    let out = one(s, WriteOp::Claim(p)).await;
    let OpResult::Claimed { tasks, more } = out.result else {
        panic!("unexpected {:?}", out.result)
    };
    let mut ids: Vec<_> = tasks.iter().map(|c| c.task.id.clone()).collect();
    ids.sort();
    assert_eq!(ids, ["a0", "a1", "b0"]);
    assert!(more, "skipped candidates are reported");
}

/// A claim reads about as many candidates as it has free slots; when per-user limits
/// refuse the oldest ones while slots remain, it looks further and still fills the slots
/// in queue order.
pub async fn claim_looks_past_candidates_a_limit_refused(store: Arc<dyn Storage>) {
    let s = &*store;
    for i in 0..4 {
        submit(
            s,
            params(&format!("a{i}"), &format!("ka{i}"), Some("alice")),
        )
        .await;
    }
    submit(s, params("b0", "kb0", Some("bob"))).await;
    submit(s, params("c0", "kc0", Some("carol"))).await;
    let mut p = claim_params("n1", 2_000, 2);
    p.budget.per_user = 1;
    let out = one(s, WriteOp::Claim(p)).await;
    let OpResult::Claimed { tasks, more } = out.result else {
        panic!("unexpected {:?}", out.result)
    };
    let mut ids: Vec<_> = tasks.iter().map(|c| c.task.id.clone()).collect();
    ids.sort();
    assert_eq!(
        ids,
        ["a0", "b0"],
        "alice's first, then the next other user's"
    );
    assert!(more, "c0 and alice's others wait");
    assert_eq!(s.tasks_pending_count().await.unwrap(), 4);
}

/// Two claims in one batch never hand out the same task.
pub async fn claim_is_exclusive(store: Arc<dyn Storage>) {
    let s = &*store;
    for i in 0..10 {
        submit(s, params(&format!("t{i}"), &format!("k{i}"), None)).await;
    }
    let out = s
        .write_batch(&[
            WriteOp::Claim(claim_params("n1", 2_000, 6)),
            WriteOp::Claim(claim_params("n2", 2_000, 6)),
        ])
        .await
        .unwrap();
    let mut all = Vec::new();
    for o in out {
        let OpResult::Claimed { tasks, .. } = o.result else {
            panic!("unexpected {:?}", o.result)
        };
        all.extend(tasks.into_iter().map(|c| c.task.id));
    }
    assert_eq!(all.len(), 10);
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 10, "every task claimed exactly once");
}

/// Emitted events get consecutive seqs after the task's last one.
pub async fn emit_assigns_gapless_seqs(store: Arc<dyn Storage>) {
    let s = &*store;
    let t = running(s, "t1", "n1").await;
    let emit = |events| WriteOp::Emit {
        fence: fence(&t, "n1"),
        events,
    };
    let out = one(s, emit(vec![custom("a", json!(1)), custom("b", json!(2))])).await;
    assert!(matches!(out.result, OpResult::Applied));
    let got: Vec<_> = out
        .events
        .iter()
        .map(|e| (e.seq, e.name.as_str()))
        .collect();
    assert_eq!(got, [(3, "a"), (4, "b")]);
    one(s, emit(vec![custom("c", json!(null))])).await;
    let all = seqs(s, "t1").await;
    assert_eq!(
        all.iter().map(|(q, _)| *q).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(status(s, "t1").await.last_seq, 5);
}

/// A batch's emits and steps are written in bulk: each run's events get gapless seqs in
/// queue order (one run may have several emits and steps in the batch), a wrong fence
/// refuses only its own ops (a refused step leaves no checkpoint), and a run's emit
/// queued with its own finish lands before `completed`.
pub async fn emits_and_steps_of_several_runs_in_one_batch_keep_queue_order(
    store: Arc<dyn Storage>,
) {
    let s = &*store;
    let t1 = running(s, "t1", "n1").await;
    let t2 = running(s, "t2", "n1").await;
    let emit = |f: Fence, names: &[&str]| WriteOp::Emit {
        fence: f,
        events: names.iter().map(|n| custom(n, json!(n))).collect(),
    };
    let batch = [
        finish(&t2, "n1", Finish::Complete { result: json!(2) }, 3_000),
        emit(fence(&t1, "n1"), &["a"]),
        emit(fence(&t2, "n1"), &["x"]),
        emit(fence(&t2, "n2"), &["stale"]),
        WriteOp::Step {
            fence: fence(&t1, "n1"),
            name: "s1".to_owned(),
            result: json!(7),
            events: vec![custom("s", json!(null))],
        },
        emit(fence(&t1, "n1"), &["b", "c"]),
        emit(fence(&t1, "n1"), &[]),
        WriteOp::Step {
            fence: fence(&t2, "n2"),
            name: "s2".to_owned(),
            result: json!(8),
            events: vec![],
        },
    ];
    let out = s.write_batch(&batch).await.expect("the batch commits");
    let got: Vec<_> = out
        .iter()
        .map(|o| {
            let applied = matches!(o.result, OpResult::Applied);
            let events: Vec<_> = o.events.iter().map(|e| (e.seq, e.name.clone())).collect();
            (applied, events)
        })
        .collect();
    let ev = |pairs: &[(u64, &str)]| -> Vec<(u64, String)> {
        pairs.iter().map(|(q, n)| (*q, (*n).to_owned())).collect()
    };
    assert_eq!(
        got,
        [
            (true, ev(&[(4, "completed")])),
            (true, ev(&[(3, "a")])),
            (true, ev(&[(3, "x")])),
            (false, vec![]),
            (true, ev(&[(4, "s")])),
            (true, ev(&[(5, "b"), (6, "c")])),
            (true, vec![]),
            (false, vec![]),
        ]
    );
    assert_eq!(
        seqs(s, "t1").await,
        numbered(&["created", "started", "a", "s", "b", "c"])
    );
    assert_eq!(
        s.steps("t1").await.unwrap(),
        HashMap::from([("s1".to_owned(), json!(7))])
    );
    assert!(s.steps("t2").await.unwrap().is_empty(), "a refused step");
    assert_eq!(
        seqs(s, "t2").await,
        numbered(&["created", "started", "x", "completed"])
    );
    assert_eq!(status(s, "t1").await.last_seq, 6);
    assert_eq!(status(s, "t2").await.status, TaskStatus::Completed);
}

/// Runner writes with the wrong node or epoch are refused, and so are the owner's once
/// the task was cancelled.
pub async fn fenced_writes_are_refused(store: Arc<dyn Storage>) {
    let s = &*store;
    let t = running(s, "t1", "n1").await;
    let mut wrong_epoch = fence(&t, "n1");
    wrong_epoch.epoch += 1;
    for f in [fence(&t, "n2"), wrong_epoch] {
        let emit = WriteOp::Emit {
            fence: f.clone(),
            events: vec![custom("x", json!(1))],
        };
        let out = one(s, emit).await;
        assert!(matches!(out.result, OpResult::Fenced), "{f:?}");
        assert!(out.events.is_empty());
        let step = WriteOp::Step {
            fence: f.clone(),
            name: "s".into(),
            result: json!(1),
            events: vec![],
        };
        assert!(matches!(one(s, step).await.result, OpResult::Fenced));
        let done = WriteOp::Finish {
            fence: f.clone(),
            attempt: 1,
            outcome: Finish::Complete { result: json!(1) },
            now: 3_000,
        };
        let out = one(s, done).await;
        assert!(matches!(out.result, OpResult::Fenced), "{f:?}");
        assert!(out.events.is_empty());
    }
    assert_eq!(status(s, "t1").await.status, TaskStatus::Running);
    assert!(s.steps("t1").await.unwrap().is_empty());
    // Once cancelled, even the rightful owner is fenced out.
    control(s, "t1", Control::Cancel).await;
    let step = WriteOp::Step {
        fence: fence(&t, "n1"),
        name: "s".into(),
        result: json!(1),
        events: vec![],
    };
    assert!(matches!(one(s, step).await.result, OpResult::Fenced));
    assert!(s.steps("t1").await.unwrap().is_empty());
    assert_eq!(status(s, "t1").await.status, TaskStatus::Cancelled);
    assert_eq!(
        seqs(s, "t1").await,
        numbered(&["created", "started", "cancelled"])
    );
}

/// A step commits its checkpoint together with the events emitted inside it.
pub async fn step_commits_checkpoint_with_events(store: Arc<dyn Storage>) {
    let s = &*store;
    let t = running(s, "t1", "n1").await;
    let out = one(
        s,
        WriteOp::Step {
            fence: fence(&t, "n1"),
            name: "fetch".into(),
            result: json!({"rows": 3}),
            events: vec![custom("tick", json!({"i": 1}))],
        },
    )
    .await;
    assert!(matches!(out.result, OpResult::Applied));
    assert_eq!(out.events.len(), 1);
    let steps = s.steps("t1").await.unwrap();
    assert_eq!(
        steps,
        HashMap::from([("fetch".to_owned(), json!({"rows": 3}))])
    );
    assert_eq!(seqs(s, "t1").await.last(), Some(&(3, "tick".to_owned())));
}

/// Every attempt outcome: the state it leaves, its event and payload; a second finish by
/// the same runner is refused.
pub async fn finish_transitions(store: Arc<dyn Storage>) {
    let s = &*store;
    let error = json!({"message": "x", "kind": "handler"});
    type Case = (Finish, TaskStatus, Option<(EventKind, Value)>);
    let cases: Vec<Case> = vec![
        (
            Finish::Complete {
                result: json!({"ok": true}),
            },
            TaskStatus::Completed,
            Some((EventKind::Completed, json!({"result": {"ok": true}}))),
        ),
        (
            Finish::Retry {
                error: error.clone(),
                run_at: 9_000,
            },
            TaskStatus::Pending,
            Some((
                EventKind::Retrying,
                json!({"attempt": 1, "error": error, "retryInMs": 6_000}),
            )),
        ),
        (
            Finish::Fail {
                error: error.clone(),
            },
            TaskStatus::Failed,
            Some((EventKind::Failed, json!({"error": error, "attempt": 1}))),
        ),
        (
            Finish::Suspend {
                reason: "stopped".into(),
            },
            TaskStatus::Suspended,
            Some((EventKind::Suspended, json!({"reason": "stopped"}))),
        ),
        (Finish::Release, TaskStatus::Pending, None),
    ];
    for (i, (outcome, want, event)) in cases.into_iter().enumerate() {
        let id = format!("t{i}");
        let t = running(s, &id, "n1").await;
        let out = one(s, finish(&t, "n1", outcome.clone(), 3_000)).await;
        assert!(matches!(out.result, OpResult::Applied), "{outcome:?}");
        let got = out.events.first().map(|e| (e.kind, e.payload.clone()));
        assert_eq!(got, event, "{outcome:?}");
        if let Some(e) = out.events.first() {
            assert_eq!(e.seq, 3, "{outcome:?}");
        }
        let after = status(s, &id).await;
        assert_eq!(after.status, want, "{outcome:?}");
        assert_eq!(
            after.last_seq,
            2 + u64::from(event.is_some()),
            "{outcome:?}"
        );
        let given_back = matches!(outcome, Finish::Release);
        assert_eq!(after.attempt, if given_back { 0 } else { 1 }, "{outcome:?}");
        assert_eq!(after.recoveries, 0, "{outcome:?}");
        match &outcome {
            Finish::Complete { result } => assert_eq!(after.result.as_ref(), Some(result)),
            Finish::Fail { error } | Finish::Retry { error, .. } => {
                assert_eq!(after.error.as_ref(), Some(error));
            }
            _ => {}
        }
        // A second finish by the same runner is refused: it no longer runs the task.
        let again = one(
            s,
            finish(&t, "n1", Finish::Complete { result: json!(0) }, 3_001),
        )
        .await;
        assert!(matches!(again.result, OpResult::Fenced), "{outcome:?}");
        assert_eq!(status(s, &id).await.status, want);
        if want == TaskStatus::Pending {
            // Leave it out of later claims.
            control(s, &id, Control::Cancel).await;
        }
    }
}

/// A shutdown release gives the attempt back without counting a recovery; the next claim
/// runs the same attempt under a new epoch and is told the previous run was interrupted.
pub async fn release_does_not_spend_attempt(store: Arc<dyn Storage>) {
    let s = &*store;
    let t = running(s, "t1", "n1").await;
    assert_eq!((t.task.attempt, t.epoch), (1, 1));
    let out = one(s, finish(&t, "n1", Finish::Release, 3_000)).await;
    assert!(matches!(out.result, OpResult::Applied));
    assert!(out.events.is_empty(), "a release commits no event");
    let after = status(s, "t1").await;
    assert_eq!(
        (
            after.status,
            after.attempt,
            after.recoveries,
            after.last_seq
        ),
        (TaskStatus::Pending, 0, 0, 2)
    );
    let again = claim(s, claim_params("n2", 3_000, 1)).await;
    assert_eq!(again.len(), 1);
    assert_eq!(
        again[0].task.attempt, 1,
        "the released attempt is run again"
    );
    assert_eq!(again[0].epoch, 2, "under a new epoch");
    assert!(again[0].recovery, "the previous run was interrupted");
    assert_eq!(
        last_event(s, "t1").await.payload,
        json!({"attempt": 1, "recovery": true, "recoveries": 0})
    );
    assert!(claim(s, claim_params("n3", 3_000, 1)).await.is_empty());
}

/// Control requests: allowed transitions with their events, refused ones unchanged.
pub async fn control_transitions_and_refusals(store: Arc<dyn Storage>) {
    use TaskStatus::{Cancelled, Failed, Pending, Running, Suspended};
    let s = &*store;
    submit(s, params("p", "kp", None)).await;
    assert_eq!(control(s, "p", Control::Stop).await, (Pending, Suspended));
    assert_eq!(control(s, "p", Control::Stop).await, (Suspended, Suspended));
    assert_eq!(control(s, "p", Control::Resume).await, (Suspended, Pending));
    assert_eq!(control(s, "p", Control::Resume).await, (Pending, Pending));
    assert_eq!(control(s, "p", Control::Redrive).await, (Pending, Pending));
    assert_eq!(control(s, "p", Control::Cancel).await, (Pending, Cancelled));
    for action in [
        Control::Stop,
        Control::Resume,
        Control::Cancel,
        Control::Redrive,
    ] {
        assert_eq!(
            control(s, "p", action).await,
            (Cancelled, Cancelled),
            "{action:?}"
        );
    }
    assert_eq!(
        seqs(s, "p").await,
        numbered(&["created", "suspended", "resumed", "cancelled"])
    );

    running(s, "r", "n1").await;
    assert_eq!(
        control(s, "r", Control::Stop).await,
        (Running, Running),
        "owner stops it"
    );
    assert_eq!(
        control(s, "r", Control::RequestStop).await,
        (Running, Running)
    );
    assert_eq!(control(s, "r", Control::Cancel).await, (Running, Cancelled));
    assert_eq!(status(s, "r").await.status, Cancelled);

    let f = running(s, "f", "n1").await;
    let fail = Finish::Fail {
        error: json!({"message": "boom", "kind": "handler"}),
    };
    one(s, finish(&f, "n1", fail, 3_000)).await;
    assert_eq!(control(s, "f", Control::Cancel).await, (Failed, Failed));
    assert_eq!(control(s, "f", Control::Resume).await, (Failed, Failed));
    assert_eq!(control(s, "f", Control::Redrive).await, (Failed, Pending));
    let after = status(s, "f").await;
    assert_eq!(
        (after.attempt, after.max_attempts),
        (1, 4),
        "redrive grants fresh attempts"
    );
    let resumed = last_event(s, "f").await;
    assert_eq!(
        (resumed.kind, resumed.payload),
        (EventKind::Resumed, json!({"redrive": true}))
    );

    let missing = one(s, control_op("nope", Control::Cancel)).await;
    assert!(matches!(missing.result, OpResult::NotFound));
}

/// A lease renewal returns the node's held tasks with their epochs and stop requests.
pub async fn lease_renew_returns_held_and_stop_requests(store: Arc<dyn Storage>) {
    let s = &*store;
    let a = running(s, "a", "n1").await;
    running(s, "b", "n2").await;
    control(s, "a", Control::RequestStop).await;
    assert_eq!(renew(s, "n1").await, [(a.task.id.clone(), 1, true)]);
    assert_eq!(renew(s, "n2").await, [("b".to_owned(), 1, false)]);
    assert!(renew(s, "n3").await.is_empty());
}

/// Reaping expired leases: `auto_recover` tasks go back to pending and the others to
/// suspended, both with the attempt given back and a recovery counted; tasks older than the
/// cutoff fail; a crash never spends the last attempt.
pub async fn reap_recovers_expired_leases(store: Arc<dyn Storage>) {
    let s = &*store;
    // auto_recover → pending; lease 2_000 + 30_000.
    running(s, "auto", "n1").await;
    assert_eq!(reap(s, 31_999, 0, false).await, 0, "lease not yet expired");
    assert_eq!(reap(s, 32_001, 0, false).await, 1);
    let t = status(s, "auto").await;
    assert_eq!(
        (t.status, t.attempt, t.recoveries),
        (TaskStatus::Pending, 0, 1)
    );
    let retrying = last_event(s, "auto").await;
    assert_eq!(
        (retrying.seq, retrying.kind, retrying.payload),
        (3, EventKind::Retrying, recovered_retrying(1, 1))
    );
    let again = claim(s, claim_params("n2", 40_000, 1)).await;
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].task.attempt, again[0].epoch), (1, 2));
    assert!(again[0].recovery);
    assert_eq!(
        last_event(s, "auto").await.payload,
        json!({"attempt": 1, "recovery": true, "recoveries": 1})
    );
    assert!(claim(s, claim_params("n3", 40_000, 1)).await.is_empty());
    control(s, "auto", Control::Cancel).await;

    // Without auto_recover → suspended.
    let mut p = params("manual", "km", None);
    p.auto_recover = false;
    submit(s, p).await;
    assert_eq!(claim(s, claim_params("n1", 2_000, 1)).await.len(), 1);
    assert_eq!(reap(s, 40_000, 0, false).await, 1);
    let t = status(s, "manual").await;
    assert_eq!(
        (t.status, t.attempt, t.recoveries),
        (TaskStatus::Suspended, 0, 1)
    );
    let suspended = last_event(s, "manual").await;
    assert_eq!(
        (suspended.kind, suspended.payload),
        (
            EventKind::Suspended,
            json!({"reason": "lease_expired", "recoveries": 1})
        )
    );
    control(s, "manual", Control::Cancel).await;

    // Too old → failed.
    running(s, "old", "n1").await;
    assert_eq!(reap(s, 40_000, 1_500, false).await, 1);
    let old = status(s, "old").await;
    assert_eq!(old.status, TaskStatus::Failed);
    assert_eq!(old.error.as_ref().unwrap()["kind"], "lease_expired");
    let failed = last_event(s, "old").await;
    assert_eq!(failed.kind, EventKind::Failed);
    assert_eq!(failed.payload["error"], old.error.unwrap());
    assert_eq!(failed.payload["attempt"], 1);

    // The last attempt is not spent by a crash.
    let mut p = params("last", "kl", None);
    p.max_attempts = 1;
    submit(s, p).await;
    assert_eq!(claim(s, claim_params("n1", 2_000, 1)).await.len(), 1);
    assert_eq!(reap(s, 40_000, 0, false).await, 1);
    let last = status(s, "last").await;
    assert_eq!(
        (last.status, last.attempt, last.recoveries),
        (TaskStatus::Pending, 0, 1)
    );
    let again = claim(s, claim_params("n1", 40_000, 1)).await;
    assert_eq!(again[0].task.attempt, 1, "the only attempt runs again");
}

/// Reaping with `all` recovers every running task regardless of its lease.
pub async fn reap_all_recovers_every_running_task(store: Arc<dyn Storage>) {
    let s = &*store;
    running(s, "a", "dead").await;
    running(s, "b", "dead").await;
    assert_eq!(reap(s, 3_000, 0, false).await, 0);
    assert_eq!(reap(s, 3_000, 0, true).await, 2);
    for id in ["a", "b"] {
        let t = status(s, id).await;
        assert_eq!(
            (t.status, t.attempt, t.recoveries),
            (TaskStatus::Pending, 0, 1)
        );
    }
    assert!(renew(s, "dead").await.is_empty());
}

/// A purge deletes old terminal and suspended tasks with their events, and keeps live ones.
pub async fn purge_deletes_old_finished_tasks(store: Arc<dyn Storage>) {
    let s = &*store;
    let done = running(s, "done", "n1").await;
    one(
        s,
        finish(&done, "n1", Finish::Complete { result: json!(1) }, 3_000),
    )
    .await;
    submit(s, params("susp", "ks", None)).await;
    control(s, "susp", Control::Stop).await; // updated_at = 5_000
    submit(s, params("live", "kl", None)).await;
    assert_eq!(purge(s, 2_000, 0).await, 0);
    assert_eq!(purge(s, 10_000, 0).await, 2);
    assert!(s.task_by_id("done").await.unwrap().is_none());
    assert!(s.task_by_id("susp").await.unwrap().is_none());
    assert!(seqs(s, "done").await.is_empty());
    assert!(s.steps("done").await.unwrap().is_empty());
    assert!(s.task_by_id("live").await.unwrap().is_some());
    assert_eq!(purge(s, 10_000, 0).await, 0);
}

/// `events_after` pages through a task's log.
pub async fn events_after_pages(store: Arc<dyn Storage>) {
    let s = &*store;
    let t = running(s, "t1", "n1").await;
    let events: Vec<_> = (0..20).map(|i| custom("e", json!(i))).collect();
    let emit = WriteOp::Emit {
        fence: fence(&t, "n1"),
        events,
    };
    one(s, emit).await;
    let page = s.events_after("t1", 5, 4).await.unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [6, 7, 8, 9]);
    assert_eq!(page[0].payload, json!(3));
    assert!(s.events_after("t1", 22, 10).await.unwrap().is_empty());
    assert!(s.events_after("nope", 0, 10).await.unwrap().is_empty());
}

/// Ops in one batch are concurrent: a backend may apply them in any order, but the
/// outcomes it reports must match what it committed, one per op in op order.
pub async fn batch_applies_all_ops_in_order(store: Arc<dyn Storage>) {
    let s = &*store;
    one(
        s,
        WriteOp::Submit(claim_now(params("t1", "k1", None), "n1")),
    )
    .await;
    let f = Fence {
        task_id: "t1".into(),
        node: "n1".into(),
        epoch: 1,
    };
    let out = s
        .write_batch(&[
            WriteOp::Submit(params("t2", "k2", None)),
            WriteOp::Emit {
                fence: f.clone(),
                events: vec![custom("a", json!(1))],
            },
            WriteOp::Finish {
                fence: f,
                attempt: 1,
                outcome: Finish::Complete { result: json!(2) },
                now: 3_000,
            },
            WriteOp::Submit(params("t3", "k2", None)),
        ])
        .await
        .unwrap();
    assert_eq!(out.len(), 4, "one outcome per op, in op order");
    assert!(matches!(
        out[0].result,
        OpResult::Submitted { created: true, .. }
    ));
    assert!(
        matches!(&out[3].result, OpResult::Submitted { created: false, task, .. } if task.id == "t2")
    );
    assert!(matches!(out[2].result, OpResult::Applied));
    let names = seqs(s, "t1").await;
    match out[1].result {
        OpResult::Applied => assert_eq!(names, numbered(&["created", "started", "a", "completed"])),
        OpResult::Fenced => assert_eq!(names, numbered(&["created", "started", "completed"])),
        ref other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(s.backend(), Backend::Sqlite | Backend::Postgres));
}

// ---------------------------------------------------------------------------------------
// Exactly-once batches.

/// A submit whose COMMIT is reported failed after it committed returns its outcome, and
/// the task exists once.
pub async fn ambiguous_commit_submit_applies_once(store: Arc<dyn Storage>) {
    let s = &*store;
    let out = ambiguous(s, WriteOp::Submit(params("t1", "k1", None))).await;
    let OpResult::Submitted { task, created, .. } = out.result else {
        panic!("unexpected {:?}", out.result)
    };
    assert!(created, "the outcome is the committed one: created");
    assert_eq!((task.id.as_str(), task.status), ("t1", TaskStatus::Pending));
    let got: Vec<_> = out.events.iter().map(|e| (e.seq, e.kind)).collect();
    assert_eq!(got, [(1, EventKind::Created)], "its events are published");
    assert_eq!(s.tasks_pending_count().await.unwrap(), 1);
    assert_eq!(seqs(s, "t1").await, numbered(&["created"]));
    assert_eq!(status(s, "t1").await.last_seq, 1);
}

/// An emit whose COMMIT is reported failed after it committed: applied once, seqs gapless.
pub async fn ambiguous_commit_emit_applies_once(store: Arc<dyn Storage>) {
    let s = &*store;
    let t = running(s, "t1", "n1").await;
    let emit = WriteOp::Emit {
        fence: fence(&t, "n1"),
        events: vec![custom("a", json!(1)), custom("b", json!(2))],
    };
    let out = ambiguous(s, emit).await;
    assert!(matches!(out.result, OpResult::Applied));
    let got: Vec<_> = out
        .events
        .iter()
        .map(|e| (e.seq, e.name.as_str()))
        .collect();
    assert_eq!(got, [(3, "a"), (4, "b")]);
    assert_eq!(
        seqs(s, "t1").await,
        numbered(&["created", "started", "a", "b"])
    );
    assert_eq!(status(s, "t1").await.last_seq, 4);
    // The next write continues the log where the settled batch left it.
    let next = WriteOp::Emit {
        fence: fence(&t, "n1"),
        events: vec![custom("c", json!(3))],
    };
    assert_eq!(one(s, next).await.events[0].seq, 5);
}

/// A step whose COMMIT is reported failed after it committed: one checkpoint, its events
/// once.
pub async fn ambiguous_commit_step_applies_once(store: Arc<dyn Storage>) {
    let s = &*store;
    let t = running(s, "t1", "n1").await;
    let step = WriteOp::Step {
        fence: fence(&t, "n1"),
        name: "fetch".into(),
        result: json!({"rows": 3}),
        events: vec![custom("tick", json!(1))],
    };
    let out = ambiguous(s, step).await;
    assert!(matches!(out.result, OpResult::Applied));
    assert_eq!(out.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [3]);
    assert_eq!(
        s.steps("t1").await.unwrap(),
        HashMap::from([("fetch".to_owned(), json!({"rows": 3}))])
    );
    assert_eq!(
        seqs(s, "t1").await,
        numbered(&["created", "started", "tick"])
    );
    assert_eq!(status(s, "t1").await.last_seq, 3);
}

/// A finish whose COMMIT is reported failed after it committed: the runner is told it
/// applied, the task completed once.
pub async fn ambiguous_commit_finish_applies_once(store: Arc<dyn Storage>) {
    let s = &*store;
    let t = running(s, "t1", "n1").await;
    let out = ambiguous(
        s,
        finish(&t, "n1", Finish::Complete { result: json!(7) }, 3_000),
    )
    .await;
    assert!(matches!(out.result, OpResult::Applied));
    let got: Vec<_> = out.events.iter().map(|e| (e.seq, e.kind)).collect();
    assert_eq!(got, [(3, EventKind::Completed)]);
    let after = status(s, "t1").await;
    assert_eq!(
        (after.status, after.result, after.last_seq),
        (TaskStatus::Completed, Some(json!(7)), 3)
    );
    assert_eq!(
        seqs(s, "t1").await,
        numbered(&["created", "started", "completed"])
    );
}

/// A claim whose COMMIT is reported failed after it committed hands the task to the
/// claimer: no task is left running without its runner knowing.
pub async fn ambiguous_commit_claim_applies_once(store: Arc<dyn Storage>) {
    let s = &*store;
    submit(s, params("t1", "k1", None)).await;
    let out = ambiguous(s, WriteOp::Claim(claim_params("n1", 2_000, 4))).await;
    let OpResult::Claimed { tasks, .. } = out.result else {
        panic!("unexpected {:?}", out.result)
    };
    assert_eq!(tasks.len(), 1, "the claimer is told about the claimed task");
    let c = &tasks[0];
    assert_eq!(
        (c.task.id.as_str(), c.task.status, c.task.attempt, c.epoch),
        ("t1", TaskStatus::Running, 1, 1)
    );
    let got: Vec<_> = out.events.iter().map(|e| (e.seq, e.kind)).collect();
    assert_eq!(got, [(2, EventKind::Started)]);
    let after = status(s, "t1").await;
    assert_eq!((after.status, after.attempt), (TaskStatus::Running, 1));
    assert_eq!(seqs(s, "t1").await, numbered(&["created", "started"]));
    assert_eq!(renew(s, "n1").await, [("t1".to_owned(), 1, false)]);
    assert!(claim(s, claim_params("n2", 2_000, 4)).await.is_empty());
}

/// Control requests whose COMMIT is reported failed after it committed: one transition,
/// one event each.
pub async fn ambiguous_commit_control_applies_once(store: Arc<dyn Storage>) {
    use TaskStatus::{Cancelled, Pending, Running, Suspended};
    let s = &*store;
    submit(s, params("p", "kp", None)).await;
    let out = ambiguous(s, control_op("p", Control::Stop)).await;
    assert!(matches!(
        out.result,
        OpResult::Controlled {
            from: Pending,
            to: Suspended
        }
    ));
    assert_eq!(out.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [2]);
    assert_eq!(seqs(s, "p").await, numbered(&["created", "suspended"]));
    assert_eq!(status(s, "p").await.status, Suspended);

    let r = running(s, "r", "n1").await;
    let out = ambiguous(s, control_op("r", Control::Cancel)).await;
    assert!(matches!(
        out.result,
        OpResult::Controlled {
            from: Running,
            to: Cancelled
        }
    ));
    assert_eq!(
        seqs(s, "r").await,
        numbered(&["created", "started", "cancelled"])
    );
    let late = one(
        s,
        finish(&r, "n1", Finish::Complete { result: json!(1) }, 6_000),
    )
    .await;
    assert!(
        matches!(late.result, OpResult::Fenced),
        "the owner is fenced out"
    );
}

/// An ambiguous COMMIT whose marker cannot be read at first (the store went away as it
/// committed) is settled exactly once the store answers again: the committed outcome.
pub async fn ambiguous_commit_is_settled_once_the_store_answers(store: Arc<dyn Storage>) {
    let s = &*store;
    let unreadable = &s.faults().marker_unreadable;
    unreadable.store(2, Ordering::SeqCst);
    let out = ambiguous(s, WriteOp::Submit(params("t1", "k1", None))).await;
    assert_eq!(
        unreadable.load(Ordering::SeqCst),
        0,
        "both failed checks were taken"
    );
    let OpResult::Submitted { task, created, .. } = out.result else {
        panic!("unexpected {:?}", out.result)
    };
    assert!(created && task.id == "t1", "the committed outcome");
    assert_eq!(seqs(s, "t1").await, numbered(&["created"]));
}

/// An ambiguous COMMIT whose marker stays unreadable is answered
/// [`taskflow::Error::OutcomeUnknown`] after a bounded wait (the writer holds every queued
/// write meanwhile), not after a minute; the store is usable afterwards, and what did
/// commit is there once.
pub async fn ambiguous_commit_during_an_outage_is_answered_unknown_in_bounded_time(
    store: Arc<dyn Storage>,
) {
    let s = &*store;
    let unreadable = &s.faults().marker_unreadable;
    unreadable.store(u32::MAX, Ordering::SeqCst);
    s.faults().commit_then_fail.store(1, Ordering::SeqCst);
    let asked = std::time::Instant::now();
    let out = s
        .write_batch(&[WriteOp::Submit(params("t1", "k1", None))])
        .await;
    let took = asked.elapsed();
    unreadable.store(0, Ordering::SeqCst);
    assert!(
        matches!(out, Err(taskflow::Error::OutcomeUnknown)),
        "unknown, not a guess: {out:?}"
    );
    assert!(took < Duration::from_secs(15), "answered after {took:?}");
    let (task, created) = submit(s, params("t2", "k2", None)).await;
    assert!(created && task.id == "t2", "the next batch commits");
    assert_eq!(
        seqs(s, "t1").await,
        numbered(&["created"]),
        "committed once"
    );
}

/// The statement list that opens a batch (`BEGIN`, then the commit marker) failing after
/// its `BEGIN` fails that batch only: its connection, left inside a transaction, is not
/// reused, and the next batch commits.
pub async fn a_batch_whose_opening_fails_leaves_no_transaction_behind(store: Arc<dyn Storage>) {
    let s = &*store;
    let armed = &s.faults().fail_after_begin;
    armed.store(1, Ordering::SeqCst);
    let failed = s
        .write_batch(&[WriteOp::Submit(params("t1", "k1", None))])
        .await;
    assert!(failed.is_err(), "the failure is reported: {failed:?}");
    assert_eq!(armed.load(Ordering::SeqCst), 0, "the armed fault was taken");
    for (id, key) in [("t2", "k2"), ("t3", "k3")] {
        let (task, created) = submit(s, params(id, key, None)).await;
        assert!(created && task.id == id, "the next batches commit");
    }
    assert!(
        s.task_by_id("t1").await.unwrap().is_none(),
        "nothing of the failed batch"
    );
    assert_eq!(s.tasks_pending_count().await.unwrap(), 2);
}

/// A batch whose last statement before `COMMIT` fails (on SQLite, inside the statement
/// list that also commits) reports an error, commits nothing, and leaves no transaction
/// open: the next batches commit and are seen by readers.
pub async fn a_batch_failing_at_its_last_statement_commits_nothing(store: Arc<dyn Storage>) {
    let s = &*store;
    let t = running(s, "t1", "n1").await;
    let armed = &s.faults().fail_before_commit_statement;
    armed.store(1, Ordering::SeqCst);
    let failed = s
        .write_batch(&[
            WriteOp::Submit(params("t2", "k2", None)),
            WriteOp::Emit {
                fence: fence(&t, "n1"),
                events: vec![custom("a", json!(1))],
            },
        ])
        .await;
    assert!(
        matches!(failed, Err(ref e) if !matches!(e, taskflow::Error::OutcomeUnknown)),
        "a plain failure is reported: {failed:?}"
    );
    assert_eq!(armed.load(Ordering::SeqCst), 0, "the armed fault was taken");
    assert!(s.task_by_id("t2").await.unwrap().is_none(), "no submit");
    let seqs = |evs: Vec<TaskEvent>| evs.iter().map(|e| e.seq).collect::<Vec<_>>();
    let before = seqs(s.events_after("t1", 0, 100).await.unwrap());
    for (id, key) in [("t3", "k3"), ("t4", "k4")] {
        let (task, created) = submit(s, params(id, key, None)).await;
        assert!(created && task.id == id, "the next batches commit");
    }
    assert!(
        s.task_by_id("t3").await.unwrap().is_some(),
        "a reader sees what the next batch committed"
    );
    assert_eq!(
        seqs(s.events_after("t1", 0, 100).await.unwrap()),
        before,
        "no event of the failed batch"
    );
    assert_eq!(s.tasks_pending_count().await.unwrap(), 2);
}

/// A batch rolled back before its commit returns an error and leaves nothing behind; the
/// same batch written again then applies with the seqs the first would have had.
pub async fn fail_before_commit_rolls_back_the_whole_batch(store: Arc<dyn Storage>) {
    let s = &*store;
    let t = running(s, "t1", "n1").await;
    let batch = [
        WriteOp::Submit(params("t2", "k2", None)),
        WriteOp::Emit {
            fence: fence(&t, "n1"),
            events: vec![custom("a", json!(1))],
        },
    ];
    let armed = &s.faults().fail_before_commit;
    armed.store(1, Ordering::SeqCst);
    assert!(
        s.write_batch(&batch).await.is_err(),
        "the failure is reported"
    );
    assert_eq!(armed.load(Ordering::SeqCst), 0, "the armed fault was taken");
    assert!(s.task_by_id("t2").await.unwrap().is_none(), "no submit");
    assert_eq!(s.tasks_pending_count().await.unwrap(), 0);
    assert_eq!(seqs(s, "t1").await, numbered(&["created", "started"]));
    assert_eq!(status(s, "t1").await.last_seq, 2);

    let out = s.write_batch(&batch).await.unwrap();
    assert!(matches!(
        out[0].result,
        OpResult::Submitted { created: true, .. }
    ));
    assert!(matches!(out[1].result, OpResult::Applied));
    assert_eq!(out[1].events[0].seq, 3);
    assert_eq!(seqs(s, "t1").await, numbered(&["created", "started", "a"]));
    assert_eq!(seqs(s, "t2").await, numbered(&["created"]));
}

/// After a task was reaped and claimed again by the same node, the new claim runs the same
/// attempt number under a new epoch, and the stale runner's writes are refused.
pub async fn stale_epoch_is_fenced_after_reclaim_on_the_same_node(store: Arc<dyn Storage>) {
    let s = &*store;
    let first = running(s, "t1", "n1").await;
    assert_eq!(reap(s, 32_001, 0, false).await, 1);
    let mut again = claim(s, claim_params("n1", 40_000, 1)).await;
    assert_eq!(again.len(), 1);
    let second = again.remove(0);
    assert_eq!(
        second.task.attempt, first.task.attempt,
        "same attempt number"
    );
    assert_ne!(second.epoch, first.epoch, "new epoch");
    assert_eq!(second.epoch, 2);

    let stale = fence(&first, "n1");
    let emit = WriteOp::Emit {
        fence: stale.clone(),
        events: vec![custom("stale", json!(1))],
    };
    assert!(matches!(one(s, emit).await.result, OpResult::Fenced));
    let step = WriteOp::Step {
        fence: stale.clone(),
        name: "s".into(),
        result: json!(1),
        events: vec![],
    };
    assert!(matches!(one(s, step).await.result, OpResult::Fenced));
    let done = one(
        s,
        finish(&first, "n1", Finish::Complete { result: json!(1) }, 41_000),
    )
    .await;
    assert!(matches!(done.result, OpResult::Fenced));
    assert!(s.steps("t1").await.unwrap().is_empty());
    let t = status(s, "t1").await;
    assert_eq!((t.status, t.last_seq), (TaskStatus::Running, 4));
    assert_eq!(
        seqs(s, "t1").await,
        numbered(&["created", "started", "retrying", "started"])
    );
    assert_eq!(renew(s, "n1").await, [("t1".to_owned(), 2, false)]);

    let emit = WriteOp::Emit {
        fence: fence(&second, "n1"),
        events: vec![custom("fresh", json!(2))],
    };
    let out = one(s, emit).await;
    assert!(matches!(out.result, OpResult::Applied));
    assert_eq!(out.events[0].seq, 5);
}

/// Each reap gives the attempt back and counts a recovery; the next claim's `started`
/// says so, with the count.
pub async fn recovery_gives_the_attempt_back_and_is_counted(store: Arc<dyn Storage>) {
    let s = &*store;
    submit(s, params("t1", "k1", None)).await;
    let mut now = 2_000;
    for round in 1..=3u32 {
        let mut c = claim(s, claim_params("n1", now, 1)).await;
        assert_eq!(c.len(), 1, "round {round}");
        let c = c.remove(0);
        assert_eq!((c.task.attempt, c.epoch), (1, round), "round {round}");
        assert_eq!(c.task.recoveries, round - 1, "round {round}");
        assert_eq!(c.recovery, round > 1, "round {round}");
        let started = last_event(s, "t1").await;
        let want = if round == 1 {
            json!({"attempt": 1})
        } else {
            json!({"attempt": 1, "recovery": true, "recoveries": round - 1})
        };
        assert_eq!((started.kind, started.payload), (EventKind::Started, want));
        if round == 3 {
            break;
        }
        now += 30_001;
        assert_eq!(reap(s, now, 0, false).await, 1, "round {round}");
        let t = status(s, "t1").await;
        assert_eq!(
            (t.status, t.attempt, t.recoveries, t.max_attempts),
            (TaskStatus::Pending, 0, round, 3),
            "round {round}"
        );
        let retrying = last_event(s, "t1").await;
        assert_eq!(
            (retrying.kind, retrying.payload),
            (EventKind::Retrying, recovered_retrying(1, round))
        );
    }
    // A handler failure after recoveries spends the attempt as usual.
    let c = Fence {
        task_id: "t1".into(),
        node: "n1".into(),
        epoch: 3,
    };
    let retry = WriteOp::Finish {
        fence: c,
        attempt: 1,
        outcome: Finish::Retry {
            error: json!({"message": "x", "kind": "handler"}),
            run_at: now,
        },
        now,
    };
    assert!(matches!(one(s, retry).await.result, OpResult::Applied));
    let again = claim(s, claim_params("n1", now, 1)).await;
    assert_eq!((again[0].task.attempt, again[0].epoch), (2, 4));
    assert_eq!(again[0].task.recoveries, 2);
}

/// One live task per (key, owner) holds through a redrive: while a newer run of the key is
/// live, redriving the failed one changes nothing (it would make two live tasks of one
/// key); once that run has ended, the redrive goes through.
pub async fn redrive_refuses_while_the_key_has_a_live_task(store: Arc<dyn Storage>) {
    let s = &*store;
    let t = running(s, "t1", "n1").await;
    let fail = Finish::Fail {
        error: json!({"message": "boom", "kind": "handler"}),
    };
    one(s, finish(&t, "n1", fail, 3_000)).await;
    let (newer, created) = submit(s, params("t2", "k-t1", None)).await;
    assert!(created, "a failed task does not block a new run of its key");
    assert_eq!(newer.id, "t2");
    assert_eq!(
        control(s, "t1", Control::Redrive).await,
        (TaskStatus::Failed, TaskStatus::Failed),
        "refused while t2 is live"
    );
    assert_eq!(status(s, "t1").await.status, TaskStatus::Failed);
    assert_eq!(
        seqs(s, "t1").await.len(),
        3,
        "no event for a refused redrive"
    );
    assert_eq!(
        control(s, "t2", Control::Cancel).await.1,
        TaskStatus::Cancelled
    );
    assert_eq!(
        control(s, "t1", Control::Redrive).await,
        (TaskStatus::Failed, TaskStatus::Pending),
        "allowed once no run of the key is live"
    );
    let by_key = s.task_by_key("k-t1", None).await.unwrap().unwrap();
    assert_eq!(
        by_key.id, "t2",
        "a lookup by key returns the newest run, even when an older one is live again"
    );
}

/// A redriven task is live again: a submit of its key attaches to it instead of starting a
/// second run.
pub async fn a_redriven_task_holds_its_key_again(store: Arc<dyn Storage>) {
    let s = &*store;
    let t = running(s, "t1", "n1").await;
    let fail = Finish::Fail {
        error: json!({"message": "boom", "kind": "handler"}),
    };
    one(s, finish(&t, "n1", fail, 3_000)).await;
    assert_eq!(
        control(s, "t1", Control::Redrive).await,
        (TaskStatus::Failed, TaskStatus::Pending)
    );
    let (task, created) = submit(s, params("t2", "k-t1", None)).await;
    assert!(!created, "the key's task is live again");
    assert_eq!(task.id, "t1");
    assert!(s.task_by_id("t2").await.unwrap().is_none());
}

/// Submits of one key in one batch make one task: the first creates it, the others attach
/// to it, whatever their mode; a key per owner, so another owner's submit creates its own.
pub async fn submits_of_one_key_in_a_batch_make_one_task(store: Arc<dyn Storage>) {
    let s = &*store;
    let mut at_most_once = params("t3", "k1", None);
    at_most_once.mode = IdempotencyMode::AtMostOnce;
    let out = s
        .write_batch(&[
            WriteOp::Submit(params("t1", "k1", None)),
            WriteOp::Submit(params("t2", "k1", None)),
            WriteOp::Submit(at_most_once),
            WriteOp::Submit(params("t4", "k1", Some("bob"))),
        ])
        .await
        .unwrap();
    let got: Vec<_> = out
        .iter()
        .map(|o| match &o.result {
            OpResult::Submitted { task, created, .. } => (task.id.as_str(), *created),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        got,
        [("t1", true), ("t1", false), ("t1", false), ("t4", true)]
    );
    assert!(out[1].events.is_empty() && out[2].events.is_empty());
    assert_eq!(s.tasks_pending_count().await.unwrap(), 2);
    assert!(s.task_by_id("t2").await.unwrap().is_none());
}

/// Past `max_recoveries` a reap fails the task with kind `recovery_limit`; a redrive resets
/// the count and grants fresh attempts.
pub async fn recovery_limit_fails_the_task_and_redrive_resets_it(store: Arc<dyn Storage>) {
    let s = &*store;
    let mut p = params("t1", "k1", None);
    p.max_recoveries = 2;
    submit(s, p).await;
    let mut now = 2_000;
    let cycle = async |now: &mut i64| {
        assert_eq!(claim(s, claim_params("n1", *now, 1)).await.len(), 1);
        *now += 30_001;
        assert_eq!(reap(s, *now, 0, false).await, 1);
        status(s, "t1").await
    };
    for n in 1..=2 {
        let t = cycle(&mut now).await;
        assert_eq!((t.status, t.recoveries), (TaskStatus::Pending, n));
    }
    let t = cycle(&mut now).await;
    assert_eq!(
        t.status,
        TaskStatus::Failed,
        "the third recovery is one too many"
    );
    assert_eq!(t.attempt, 1);
    let error = t.error.clone().unwrap();
    assert_eq!(error["kind"], "recovery_limit");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains('3'),
        "the message names the count: {message}"
    );
    let failed = last_event(s, "t1").await;
    assert_eq!(
        (failed.kind, failed.payload),
        (EventKind::Failed, json!({"error": error, "attempt": 1}))
    );
    let dead: Vec<_> = s.tasks_failed(10).await.unwrap();
    assert_eq!(
        dead.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        ["t1"]
    );

    assert_eq!(
        control(s, "t1", Control::Redrive).await,
        (TaskStatus::Failed, TaskStatus::Pending)
    );
    let t = status(s, "t1").await;
    assert_eq!(
        (t.status, t.recoveries, t.attempt, t.max_attempts),
        (TaskStatus::Pending, 0, 1, 4)
    );
    // A redriven task has its recoveries again.
    let t = cycle(&mut now).await;
    assert_eq!(
        (t.status, t.recoveries, t.attempt),
        (TaskStatus::Pending, 1, 1)
    );
}

/// `tasks_still_pending` returns exactly the pending ones among the given ids.
pub async fn tasks_still_pending_returns_only_pending_ids(store: Arc<dyn Storage>) {
    let s = &*store;
    running(s, "r", "n1").await;
    submit(s, params("p1", "k1", None)).await;
    submit(s, params("p2", "k2", None)).await;
    submit(s, params("susp", "ks", None)).await;
    control(s, "susp", Control::Stop).await;
    submit(s, params("gone", "kg", None)).await;
    control(s, "gone", Control::Cancel).await;
    submit(s, params("other", "ko", None)).await;
    let ids: Vec<String> = ["p1", "r", "susp", "gone", "unknown", "p2"]
        .map(str::to_owned)
        .to_vec();
    let mut still = s.tasks_still_pending(&ids).await.unwrap();
    still.sort();
    assert_eq!(still, ["p1", "p2"], "only given ids, only pending ones");
    assert!(s.tasks_still_pending(&[]).await.unwrap().is_empty());
    let none = ["unknown".to_owned()];
    assert!(s.tasks_still_pending(&none).await.unwrap().is_empty());
}

/// A purge that also deletes every commit marker older than now keeps recent tasks, and
/// batches after it (including an ambiguous one) still settle by their own markers.
pub async fn purge_keeps_recent_commit_markers_working(store: Arc<dyn Storage>) {
    let s = &*store;
    submit(s, params("t1", "k1", None)).await;
    submit(s, params("t2", "k2", None)).await;
    tokio::time::sleep(Duration::from_millis(2)).await;
    let cutoff = taskflow::testing::now_ms();
    let op = WriteOp::Purge {
        terminal_before: 0,
        suspended_before: 0,
        batches_before: cutoff,
    };
    let out = ambiguous(s, op).await;
    assert!(matches!(out.result, OpResult::Count(0)), "{:?}", out.result);
    assert_eq!(s.tasks_pending_count().await.unwrap(), 2);
    let out = ambiguous(s, WriteOp::Submit(params("t3", "k3", None))).await;
    assert!(matches!(
        out.result,
        OpResult::Submitted { created: true, .. }
    ));
    assert_eq!(s.tasks_pending_count().await.unwrap(), 3);
}

/// One purge deletes at most [`PURGE_LIMIT`] tasks and says how many; the next takes the
/// rest.
pub async fn purge_is_bounded_per_op(store: Arc<dyn Storage>) {
    let s = &*store;
    let n = PURGE_LIMIT + 1;
    let submits: Vec<WriteOp> = (0..n)
        .map(|i| {
            let p = params(&format!("t{i:05}"), &format!("k{i}"), None);
            WriteOp::Submit(claim_now(p, "n1"))
        })
        .collect();
    let out = s.write_batch(&submits).await.unwrap();
    assert!(
        out.iter()
            .all(|o| matches!(o.result, OpResult::Submitted { claimed: true, .. }))
    );
    let finishes: Vec<WriteOp> = (0..n)
        .map(|i| WriteOp::Finish {
            fence: Fence {
                task_id: format!("t{i:05}"),
                node: "n1".into(),
                epoch: 1,
            },
            attempt: 1,
            outcome: Finish::Complete { result: json!(i) },
            now: 3_000,
        })
        .collect();
    let out = s.write_batch(&finishes).await.unwrap();
    assert!(out.iter().all(|o| matches!(o.result, OpResult::Applied)));
    submit(s, params("live", "kl", None)).await;

    assert_eq!(purge(s, 10_000, 0).await, PURGE_LIMIT);
    assert_eq!(purge(s, 10_000, 0).await, 1);
    assert_eq!(purge(s, 10_000, 0).await, 0);
    assert!(s.task_by_id("t00000").await.unwrap().is_none());
    assert!(s.task_by_id("t05000").await.unwrap().is_none());
    assert!(s.task_by_id("live").await.unwrap().is_some());
}

// ---------------------------------------------------------------------------------------
// Backend-specific checks.

/// Not a conformance case (it needs a look at the table): a purge deletes the commit
/// markers of batches before `batches_before` and keeps the later ones. `markers` counts
/// the rows of `task_batches`.
pub async fn purge_deletes_commit_markers_before_the_cutoff(
    store: Arc<dyn Storage>,
    markers: impl AsyncFn() -> u64,
) {
    let s = &*store;
    for i in 0..3 {
        submit(s, params(&format!("t{i}"), &format!("k{i}"), None)).await;
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let cutoff = taskflow::testing::now_ms();
    tokio::time::sleep(Duration::from_millis(5)).await;
    submit(s, params("late", "kl", None)).await;
    assert_eq!(markers().await, 4, "one marker per batch");
    assert_eq!(purge(s, 0, cutoff).await, 0, "no task is old enough");
    assert_eq!(
        markers().await,
        2,
        "the three early markers went; the late batch's and the purge's own stayed"
    );
    assert_eq!(s.tasks_pending_count().await.unwrap(), 4);
}

#[cfg(test)]
mod tests {
    /// Every `pub async fn <case>(store: Arc<dyn Storage>)` in this file is in `CASES`
    /// (a case left out of the list would silently never run).
    #[test]
    fn every_case_fn_is_listed() {
        let source = include_str!("lib.rs");
        let mut defined: Vec<&str> = source
            .split("\npub async fn ")
            .skip(1)
            .filter_map(|item| {
                let (name, rest) = item.split_once('(')?;
                let (params, _) = rest.split_once(')')?;
                let params: String = params.split_whitespace().collect();
                let params = params.trim_end_matches(',');
                (params == "store:Arc<dynStorage>").then_some(name)
            })
            .collect();
        defined.sort_unstable();
        let mut listed = super::CASES.to_vec();
        listed.sort_unstable();
        assert_eq!(defined, listed);
    }
}
