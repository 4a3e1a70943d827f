//! `--history H`: the store starts with H finished tasks and their events, as a store that
//! has been up for a while would, so a run measures a long-lived store, not a fresh one.
//!
//! The tasks are written through the store's internal write protocol, not through an
//! engine (no handler runs): per batch, 500 submits claimed at once (`created`, `started`)
//! and then their 500 completions (`completed`), exactly the rows and events a real run
//! leaves behind. Each has the key the engine would derive for its input (a SHA-256
//! digest, so the keys spread over the key index as real ones do; inputs differ from the
//! measured tasks', so no key is shared with them).

use std::time::Instant;

use anyhow::{Result, bail};
use serde_json::json;
use taskflow::IdempotencyMode;
use taskflow::testing::{ClaimNow, Fence, Finish, OpResult, SubmitParams, WriteOp, now_ms};

use super::TASK;
use super::store::StoreSpec;

/// Tasks per batch of history.
const CHUNK: usize = 500;
/// The node the history tasks ran on.
const NODE: &str = "bench-history";

/// Fills `spec` with `n` completed tasks.
pub(super) async fn fill(spec: &StoreSpec, n: usize) -> Result<()> {
    let began = Instant::now();
    let storage = spec.storage().await?;
    let mut done = 0;
    while done < n {
        let chunk = CHUNK.min(n - done);
        let now = now_ms();
        let submits: Vec<WriteOp> = (done..done + chunk)
            .map(|i| {
                let input = json!({ "history": i });
                WriteOp::Submit(SubmitParams {
                    id: format!("history-{i:09}"),
                    name: TASK.to_owned(),
                    key: taskflow::idempotency_key(TASK, &input, None),
                    user_id: None,
                    input,
                    max_attempts: 1,
                    max_recoveries: 20,
                    auto_recover: true,
                    mode: IdempotencyMode::AtLeastOnce,
                    now,
                    claim: Some(ClaimNow {
                        node: NODE.to_owned(),
                        lease_until: now + 60_000,
                    }),
                })
            })
            .collect();
        for out in storage.write_batch(&submits).await? {
            if !matches!(out.result, OpResult::Submitted { claimed: true, .. }) {
                bail!("history submit was not claimed: {:?}", out.result);
            }
        }
        let finishes: Vec<WriteOp> = (done..done + chunk)
            .map(|i| WriteOp::Finish {
                fence: Fence {
                    task_id: format!("history-{i:09}"),
                    node: NODE.to_owned(),
                    epoch: 1,
                },
                attempt: 1,
                outcome: Finish::Complete {
                    result: serde_json::Value::Null,
                },
                now,
            })
            .collect();
        for out in storage.write_batch(&finishes).await? {
            if !matches!(out.result, OpResult::Applied) {
                bail!("history finish was refused: {:?}", out.result);
            }
        }
        done += chunk;
        if done % 100_000 < CHUNK {
            eprintln!(
                "engine: history {done}/{n} ({:.0} tasks/s)",
                done as f64 / began.elapsed().as_secs_f64()
            );
        }
    }
    storage.close().await;
    super::store::vacuum(spec).await?;
    eprintln!(
        "engine: history of {n} tasks written in {:.1} s",
        began.elapsed().as_secs_f64()
    );
    Ok(())
}
