//! The store conformance suite: one set of behavioural tests that every [`Store`] backend
//! must pass. Enabled by the `testing` feature.
//!
//! Use [`store_conformance_tests!`](crate::store_conformance_tests) in a backend's test
//! file with an async factory that returns a fresh, empty, migrated store per case, or
//! `None` (after printing why) when the backend is not available:
//!
//! ```text
//! taskflow::store_conformance_tests!(fresh_store);
//! async fn fresh_store() -> Option<std::sync::Arc<dyn taskflow::Store>> { … }
//! ```
//!
//! Each case is also a public async fn here, taking the store, so a backend can run them
//! however it likes. Where backends differ, cases assert per [`Backend`] by name.

#![allow(missing_docs, clippy::unwrap_used, clippy::missing_panics_doc)]

use std::sync::Arc;

use serde_json::{Value, json};

use super::{
    Backend, ClaimBudget, ClaimNow, ClaimParams, Control, Fence, Finish, OpOutcome, OpResult,
    Store, SubmitParams, WriteOp,
};
use crate::event::{EventKind, NewEvent};
use crate::task::{IdempotencyMode, TaskInfo, TaskStatus};

/// The names of every case, for generated tests.
pub const CASES: &[&str] = &[
    "submit_inserts_task_and_created_event",
    "submit_with_claim_starts_at_once",
    "duplicate_active_submit_attaches",
    "at_least_once_runs_again_after_terminal",
    "at_most_once_attaches_after_terminal",
    "keys_are_scoped_per_owner",
    "claim_takes_ready_tasks_in_order",
    "claim_skips_future_and_unregistered",
    "claim_respects_budget",
    "claim_is_exclusive",
    "emit_assigns_gapless_seqs",
    "fenced_writes_are_refused",
    "step_commits_checkpoint_with_events",
    "finish_transitions",
    "release_does_not_spend_attempt",
    "control_transitions_and_refusals",
    "lease_renew_returns_held_and_stop_requests",
    "reap_recovers_expired_leases",
    "reap_all_recovers_every_running_task",
    "purge_deletes_old_finished_tasks",
    "events_after_pages",
    "batch_applies_all_ops_in_order",
];

async fn one(store: &dyn Store, op: WriteOp) -> OpOutcome {
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
        auto_recover: true,
        mode: IdempotencyMode::AtLeastOnce,
        now: 1_000,
        claim: None,
    }
}

async fn submit(store: &dyn Store, p: SubmitParams) -> (TaskInfo, bool) {
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

fn claim_params(node: &str, now: i64, global: usize) -> ClaimParams {
    ClaimParams {
        node: node.to_owned(),
        now,
        lease_until: now + 30_000,
        names: vec!["job".to_owned()],
        budget: budget(global),
    }
}

async fn claim(store: &dyn Store, p: ClaimParams) -> Vec<TaskInfo> {
    match one(store, WriteOp::Claim(p)).await.result {
        OpResult::Claimed { tasks, .. } => tasks.into_iter().map(|c| c.task).collect(),
        other => panic!("unexpected {other:?}"),
    }
}

fn fence(task: &TaskInfo, node: &str) -> Fence {
    Fence {
        task_id: task.id.clone(),
        node: node.to_owned(),
        attempt: task.attempt,
    }
}

fn custom(name: &str, payload: Value) -> NewEvent {
    NewEvent {
        kind: EventKind::Custom,
        name: name.to_owned(),
        payload,
    }
}

async fn seqs(store: &dyn Store, id: &str) -> Vec<(u64, String)> {
    store
        .events_after(id, 0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.seq, e.name))
        .collect()
}

async fn status(store: &dyn Store, id: &str) -> TaskInfo {
    store.task_by_id(id).await.unwrap().expect("task exists")
}

async fn control(store: &dyn Store, id: &str, action: Control) -> (TaskStatus, TaskStatus) {
    match one(
        store,
        WriteOp::Control {
            task_id: id.to_owned(),
            action,
            now: 5_000,
        },
    )
    .await
    .result
    {
        OpResult::Controlled { from, to } => (from, to),
        other => panic!("unexpected {other:?}"),
    }
}

async fn running(store: &dyn Store, id: &str, node: &str) -> TaskInfo {
    submit(store, params(id, &format!("k-{id}"), None)).await;
    let claimed = claim(store, claim_params(node, 2_000, 1)).await;
    assert_eq!(claimed.len(), 1, "the only pending task is claimed");
    claimed.into_iter().next().unwrap()
}

pub async fn submit_inserts_task_and_created_event(store: Arc<dyn Store>) {
    let s = &*store;
    let (task, created) = submit(s, params("t1", "k1", Some("alice"))).await;
    assert!(created);
    assert_eq!(task.status, TaskStatus::Pending);
    assert_eq!((task.attempt, task.last_seq), (0, 1));
    let stored = s.task_by_key("k1", Some("alice")).await.unwrap().unwrap();
    assert_eq!(stored, task);
    assert_eq!(stored.input, json!({"n": 1}));
    assert_eq!(seqs(s, "t1").await, vec![(1, "created".to_owned())]);
    assert_eq!(s.tasks_pending_count().await.unwrap(), 1);
}

pub async fn submit_with_claim_starts_at_once(store: Arc<dyn Store>) {
    let s = &*store;
    let mut p = params("t1", "k1", None);
    p.claim = Some(ClaimNow {
        node: "n1".to_owned(),
        lease_until: 99_000,
    });
    let out = one(s, WriteOp::Submit(p)).await;
    let OpResult::Submitted { task, claimed, .. } = out.result else {
        panic!("unexpected {:?}", out.result)
    };
    assert!(claimed);
    assert_eq!(
        (task.status, task.attempt, task.last_seq),
        (TaskStatus::Running, 1, 2)
    );
    let names: Vec<_> = out.events.iter().map(|e| (e.seq, e.kind)).collect();
    assert_eq!(names, [(1, EventKind::Created), (2, EventKind::Started)]);
    assert_eq!(out.events[1].payload, json!({"attempt": 1}));
    assert_eq!(status(s, "t1").await.status, TaskStatus::Running);
}

pub async fn duplicate_active_submit_attaches(store: Arc<dyn Store>) {
    let s = &*store;
    submit(s, params("t1", "k1", None)).await;
    let (task, created) = submit(s, params("t2", "k1", None)).await;
    assert!(!created);
    assert_eq!(task.id, "t1");
    assert!(s.task_by_id("t2").await.unwrap().is_none());
}

pub async fn at_least_once_runs_again_after_terminal(store: Arc<dyn Store>) {
    let s = &*store;
    let t = running(s, "t1", "n1").await;
    let done = one(
        s,
        WriteOp::Finish {
            fence: fence(&t, "n1"),
            outcome: Finish::Complete { result: json!(1) },
            now: 3_000,
        },
    )
    .await;
    assert!(matches!(done.result, OpResult::Applied));
    let (task, created) = submit(s, params("t2", "k-t1", None)).await;
    assert!(created, "a finished task does not block a new run");
    assert_eq!(task.id, "t2");
    let newest = s.task_by_key("k-t1", None).await.unwrap().unwrap();
    assert_eq!(newest.id, "t2", "lookup by key returns the newest run");
}

pub async fn at_most_once_attaches_after_terminal(store: Arc<dyn Store>) {
    let s = &*store;
    let t = running(s, "t1", "n1").await;
    one(
        s,
        WriteOp::Finish {
            fence: fence(&t, "n1"),
            outcome: Finish::Complete { result: json!("r") },
            now: 3_000,
        },
    )
    .await;
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

pub async fn keys_are_scoped_per_owner(store: Arc<dyn Store>) {
    let s = &*store;
    let (_, a) = submit(s, params("t1", "k", Some("alice"))).await;
    let (_, b) = submit(s, params("t2", "k", Some("bob"))).await;
    let (_, c) = submit(s, params("t3", "k", None)).await;
    assert!(
        a && b && c,
        "same key under different owners are different tasks"
    );
    assert_eq!(
        s.task_by_key("k", Some("alice")).await.unwrap().unwrap().id,
        "t1"
    );
    assert_eq!(
        s.task_by_key("k", Some("bob")).await.unwrap().unwrap().id,
        "t2"
    );
    assert_eq!(s.task_by_key("k", None).await.unwrap().unwrap().id, "t3");
    assert!(s.task_by_key("k", Some("eve")).await.unwrap().is_none());
}

pub async fn claim_takes_ready_tasks_in_order(store: Arc<dyn Store>) {
    let s = &*store;
    for (i, id) in ["t1", "t2", "t3"].iter().enumerate() {
        let mut p = params(id, &format!("k{i}"), None);
        p.now = 1_000 + i64::try_from(i).unwrap();
        submit(s, p).await;
    }
    let claimed = claim(s, claim_params("n1", 2_000, 2)).await;
    let ids: Vec<_> = claimed.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["t1", "t2"]);
    for t in &claimed {
        assert_eq!(
            (t.status, t.attempt, t.last_seq),
            (TaskStatus::Running, 1, 2)
        );
        assert_eq!(seqs(s, &t.id).await[1], (2, "started".to_owned()));
    }
    assert_eq!(s.tasks_pending_count().await.unwrap(), 1);
}

pub async fn claim_skips_future_and_unregistered(store: Arc<dyn Store>) {
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

pub async fn claim_respects_budget(store: Arc<dyn Store>) {
    let s = &*store;
    for i in 0..4 {
        submit(
            s,
            params(&format!("a{i}"), &format!("ka{i}"), Some("alice")),
        )
        .await;
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

pub async fn claim_is_exclusive(store: Arc<dyn Store>) {
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
            panic!("unexpected")
        };
        all.extend(tasks.into_iter().map(|c| c.task.id));
    }
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 10, "every task claimed exactly once");
}

pub async fn emit_assigns_gapless_seqs(store: Arc<dyn Store>) {
    let s = &*store;
    let t = running(s, "t1", "n1").await;
    let out = one(
        s,
        WriteOp::Emit {
            fence: fence(&t, "n1"),
            events: vec![custom("a", json!(1)), custom("b", json!(2))],
        },
    )
    .await;
    assert!(matches!(out.result, OpResult::Applied));
    let got: Vec<_> = out
        .events
        .iter()
        .map(|e| (e.seq, e.name.as_str()))
        .collect();
    assert_eq!(got, [(3, "a"), (4, "b")]);
    one(
        s,
        WriteOp::Emit {
            fence: fence(&t, "n1"),
            events: vec![custom("c", json!(null))],
        },
    )
    .await;
    let all = seqs(s, "t1").await;
    assert_eq!(
        all.iter().map(|(q, _)| *q).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(status(s, "t1").await.last_seq, 5);
}

pub async fn fenced_writes_are_refused(store: Arc<dyn Store>) {
    let s = &*store;
    let t = running(s, "t1", "n1").await;
    let mut wrong_attempt = fence(&t, "n1");
    wrong_attempt.attempt += 1;
    for f in [fence(&t, "n2"), wrong_attempt] {
        let out = one(
            s,
            WriteOp::Emit {
                fence: f.clone(),
                events: vec![custom("x", json!(1))],
            },
        )
        .await;
        assert!(matches!(out.result, OpResult::Fenced));
        assert!(out.events.is_empty());
        let out = one(
            s,
            WriteOp::Finish {
                fence: f,
                outcome: Finish::Complete { result: json!(1) },
                now: 3_000,
            },
        )
        .await;
        assert!(matches!(out.result, OpResult::Fenced));
    }
    // Once cancelled, even the rightful owner is fenced out.
    control(s, "t1", Control::Cancel).await;
    let out = one(
        s,
        WriteOp::Step {
            fence: fence(&t, "n1"),
            name: "s".into(),
            result: json!(1),
            events: vec![],
        },
    )
    .await;
    assert!(matches!(out.result, OpResult::Fenced));
    assert!(s.steps("t1").await.unwrap().is_empty());
    assert_eq!(status(s, "t1").await.status, TaskStatus::Cancelled);
    assert_eq!(seqs(s, "t1").await.len(), 3, "created, started, cancelled");
}

pub async fn step_commits_checkpoint_with_events(store: Arc<dyn Store>) {
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
    assert_eq!(steps.get("fetch"), Some(&json!({"rows": 3})));
    assert_eq!(seqs(s, "t1").await.last(), Some(&(3, "tick".to_owned())));
}

pub async fn finish_transitions(store: Arc<dyn Store>) {
    let s = &*store;
    let cases: Vec<(Finish, TaskStatus, Option<EventKind>)> = vec![
        (
            Finish::Complete {
                result: json!({"ok": true}),
            },
            TaskStatus::Completed,
            Some(EventKind::Completed),
        ),
        (
            Finish::Retry {
                error: json!({"message": "x"}),
                run_at: 9_000,
            },
            TaskStatus::Pending,
            Some(EventKind::Retrying),
        ),
        (
            Finish::Fail {
                error: json!({"message": "y"}),
            },
            TaskStatus::Failed,
            Some(EventKind::Failed),
        ),
        (
            Finish::Suspend {
                reason: "stopped".into(),
            },
            TaskStatus::Suspended,
            Some(EventKind::Suspended),
        ),
        (Finish::Release, TaskStatus::Pending, None),
    ];
    for (i, (finish, want, event)) in cases.into_iter().enumerate() {
        let id = format!("t{i}");
        let t = running(s, &id, "n1").await;
        let out = one(
            s,
            WriteOp::Finish {
                fence: fence(&t, "n1"),
                outcome: finish.clone(),
                now: 3_000,
            },
        )
        .await;
        assert!(matches!(out.result, OpResult::Applied), "{finish:?}");
        assert_eq!(out.events.first().map(|e| e.kind), event, "{finish:?}");
        let after = status(s, &id).await;
        assert_eq!(after.status, want, "{finish:?}");
        match finish {
            Finish::Complete { result } => assert_eq!(after.result, Some(result)),
            Finish::Fail { error } | Finish::Retry { error, .. } => {
                assert_eq!(after.error, Some(error));
            }
            _ => {}
        }
        // A second finish by the same runner is refused: it no longer runs the task.
        let again = one(
            s,
            WriteOp::Finish {
                fence: fence(&t, "n1"),
                outcome: Finish::Complete { result: json!(0) },
                now: 3_001,
            },
        )
        .await;
        assert!(matches!(again.result, OpResult::Fenced));
        if want == TaskStatus::Pending {
            // Leave it out of later claims.
            control(s, &id, Control::Cancel).await;
        }
    }
}

pub async fn release_does_not_spend_attempt(store: Arc<dyn Store>) {
    let s = &*store;
    let t = running(s, "t1", "n1").await;
    assert_eq!(t.attempt, 1);
    one(
        s,
        WriteOp::Finish {
            fence: fence(&t, "n1"),
            outcome: Finish::Release,
            now: 3_000,
        },
    )
    .await;
    assert_eq!(status(s, "t1").await.attempt, 0);
    let again = claim(s, claim_params("n2", 3_000, 1)).await;
    assert_eq!(again[0].attempt, 1, "the released attempt is run again");
    let out = one(s, WriteOp::Claim(claim_params("n3", 3_000, 1))).await;
    let OpResult::Claimed { tasks, .. } = out.result else {
        panic!()
    };
    assert!(tasks.is_empty());
}

pub async fn control_transitions_and_refusals(store: Arc<dyn Store>) {
    use TaskStatus::*;
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
    let names: Vec<_> = seqs(s, "p").await.into_iter().map(|(_, n)| n).collect();
    assert_eq!(names, ["created", "suspended", "resumed", "cancelled"]);

    let r = running(s, "r", "n1").await;
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
    let _ = r;

    let f = running(s, "f", "n1").await;
    one(
        s,
        WriteOp::Finish {
            fence: fence(&f, "n1"),
            outcome: Finish::Fail {
                error: json!({"message": "boom"}),
            },
            now: 3_000,
        },
    )
    .await;
    assert_eq!(control(s, "f", Control::Cancel).await, (Failed, Failed));
    assert_eq!(control(s, "f", Control::Resume).await, (Failed, Failed));
    assert_eq!(control(s, "f", Control::Redrive).await, (Failed, Pending));
    let after = status(s, "f").await;
    assert_eq!(
        (after.attempt, after.max_attempts),
        (1, 4),
        "redrive grants fresh attempts"
    );

    let missing = one(
        s,
        WriteOp::Control {
            task_id: "nope".into(),
            action: Control::Cancel,
            now: 1,
        },
    )
    .await;
    assert!(matches!(missing.result, OpResult::NotFound));
}

pub async fn lease_renew_returns_held_and_stop_requests(store: Arc<dyn Store>) {
    let s = &*store;
    let a = running(s, "a", "n1").await;
    running(s, "b", "n2").await;
    control(s, "a", Control::RequestStop).await;
    let out = one(
        s,
        WriteOp::LeaseRenew {
            node: "n1".into(),
            until: 50_000,
        },
    )
    .await;
    let OpResult::Renewed(held) = out.result else {
        panic!("unexpected {:?}", out.result)
    };
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].task_id, a.id);
    assert_eq!(held[0].attempt, 1);
    assert!(held[0].stop_requested);
}

async fn reap(s: &dyn Store, now: i64, cutoff: i64, all: bool) -> u64 {
    match one(
        s,
        WriteOp::Reap {
            now,
            max_age_cutoff: cutoff,
            all,
        },
    )
    .await
    .result
    {
        OpResult::Count(n) => n,
        other => panic!("unexpected {other:?}"),
    }
}

pub async fn reap_recovers_expired_leases(store: Arc<dyn Store>) {
    let s = &*store;
    // auto_recover → pending; lease 2_000 + 30_000.
    running(s, "auto", "n1").await;
    assert_eq!(reap(s, 31_999, 0, false).await, 0, "lease not yet expired");
    assert_eq!(reap(s, 32_001, 0, false).await, 1);
    let t = status(s, "auto").await;
    assert_eq!((t.status, t.attempt), (TaskStatus::Pending, 1));
    assert_eq!(seqs(s, "auto").await.last().unwrap().1, "retrying");
    let again = claim(s, claim_params("n2", 40_000, 1)).await;
    assert_eq!(again[0].attempt, 2);
    let out = one(s, WriteOp::Claim(claim_params("n3", 40_000, 1))).await;
    assert!(matches!(out.result, OpResult::Claimed { ref tasks, .. } if tasks.is_empty()));
    let _ = again;
    control(s, "auto", Control::Cancel).await;

    // Without auto_recover → suspended.
    let mut p = params("manual", "km", None);
    p.auto_recover = false;
    submit(s, p).await;
    claim(s, claim_params("n1", 2_000, 1)).await;
    assert_eq!(reap(s, 40_000, 0, false).await, 1);
    assert_eq!(status(s, "manual").await.status, TaskStatus::Suspended);

    // Too old → failed.
    running(s, "old", "n1").await;
    assert_eq!(reap(s, 40_000, 1_500, false).await, 1);
    let old = status(s, "old").await;
    assert_eq!(old.status, TaskStatus::Failed);
    assert_eq!(old.error.unwrap()["kind"], "lease_expired");

    // Last attempt → failed.
    let mut p = params("last", "kl", None);
    p.max_attempts = 1;
    submit(s, p).await;
    claim(s, claim_params("n1", 2_000, 1)).await;
    assert_eq!(reap(s, 40_000, 0, false).await, 1);
    assert_eq!(status(s, "last").await.status, TaskStatus::Failed);
}

pub async fn reap_all_recovers_every_running_task(store: Arc<dyn Store>) {
    let s = &*store;
    running(s, "a", "dead").await;
    running(s, "b", "dead").await;
    assert_eq!(reap(s, 3_000, 0, false).await, 0);
    assert_eq!(reap(s, 3_000, 0, true).await, 2);
    for id in ["a", "b"] {
        assert_eq!(status(s, id).await.status, TaskStatus::Pending);
    }
}

pub async fn purge_deletes_old_finished_tasks(store: Arc<dyn Store>) {
    let s = &*store;
    let done = running(s, "done", "n1").await;
    one(
        s,
        WriteOp::Finish {
            fence: fence(&done, "n1"),
            outcome: Finish::Complete { result: json!(1) },
            now: 3_000,
        },
    )
    .await;
    submit(s, params("susp", "ks", None)).await;
    control(s, "susp", Control::Stop).await; // updated_at = 5_000
    submit(s, params("live", "kl", None)).await;
    let purge = |before| WriteOp::Purge {
        terminal_before: before,
        suspended_before: before,
    };
    assert!(matches!(
        one(s, purge(2_000)).await.result,
        OpResult::Count(0)
    ));
    assert!(matches!(
        one(s, purge(10_000)).await.result,
        OpResult::Count(2)
    ));
    assert!(s.task_by_id("done").await.unwrap().is_none());
    assert!(s.task_by_id("susp").await.unwrap().is_none());
    assert!(seqs(s, "done").await.is_empty());
    assert!(s.task_by_id("live").await.unwrap().is_some());
}

pub async fn events_after_pages(store: Arc<dyn Store>) {
    let s = &*store;
    let t = running(s, "t1", "n1").await;
    let events: Vec<_> = (0..20).map(|i| custom("e", json!(i))).collect();
    one(
        s,
        WriteOp::Emit {
            fence: fence(&t, "n1"),
            events,
        },
    )
    .await;
    let page = s.events_after("t1", 5, 4).await.unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [6, 7, 8, 9]);
    assert_eq!(page[0].payload, json!(3));
    assert!(s.events_after("t1", 22, 10).await.unwrap().is_empty());
    assert!(s.events_after("nope", 0, 10).await.unwrap().is_empty());
}

/// Ops in one batch are concurrent: a backend may apply them in any order, but the
/// outcomes it reports must match what it committed.
pub async fn batch_applies_all_ops_in_order(store: Arc<dyn Store>) {
    let s = &*store;
    let mut p = params("t1", "k1", None);
    p.claim = Some(ClaimNow {
        node: "n1".into(),
        lease_until: 99_000,
    });
    one(s, WriteOp::Submit(p)).await;
    let f = Fence {
        task_id: "t1".into(),
        node: "n1".into(),
        attempt: 1,
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
    let names: Vec<_> = seqs(s, "t1").await.into_iter().map(|(_, n)| n).collect();
    match out[1].result {
        OpResult::Applied => assert_eq!(names, ["created", "started", "a", "completed"]),
        OpResult::Fenced => assert_eq!(names, ["created", "started", "completed"]),
        ref other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(s.backend(), Backend::Sqlite | Backend::Postgres));
}

/// Generates one `#[tokio::test]` per conformance case, each on a fresh store from
/// `$factory` (an async fn returning `Option<Arc<dyn Store>>`; `None` skips the case).
#[macro_export]
macro_rules! store_conformance_tests {
    ($factory:path) => {
        $crate::store_conformance_tests!(@cases $factory;
            submit_inserts_task_and_created_event,
            submit_with_claim_starts_at_once,
            duplicate_active_submit_attaches,
            at_least_once_runs_again_after_terminal,
            at_most_once_attaches_after_terminal,
            keys_are_scoped_per_owner,
            claim_takes_ready_tasks_in_order,
            claim_skips_future_and_unregistered,
            claim_respects_budget,
            claim_is_exclusive,
            emit_assigns_gapless_seqs,
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
        );
    };
    (@cases $factory:path; $($case:ident,)*) => {
        $(
            #[tokio::test]
            async fn $case() {
                if let Some(store) = $factory().await {
                    $crate::store::conformance::$case(store).await;
                }
            }
        )*
        #[test]
        fn every_conformance_case_is_generated() {
            let generated = [$(stringify!($case)),*];
            assert_eq!(generated.as_slice(), $crate::store::conformance::CASES);
        }
    };
}
