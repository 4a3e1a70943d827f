//! CPU time spent in the measured window: this process's (engine, bench and SQLite
//! together) and, on Postgres, the server backends serving the bench's connections.
//!
//! CPU per task is much less sensitive than wall time to other work on a shared machine,
//! and "flat cost" means it does not grow with the store's size. Both are read from
//! `/proc` (Linux, `USER_HZ` = 100 ticks per second, so 10 ms resolution): the backends'
//! only when PostgreSQL runs on this machine, found by the `application_name` the bench
//! gives its connections.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

/// Clock ticks per second in `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux).
const TICKS_PER_S: u64 = 100;

/// The `application_name` of every connection this bench process opens.
pub(super) fn application_name() -> String {
    format!("appkit-bench-{}", std::process::id())
}

/// User + system CPU time of process `pid` (`self` for this one).
fn process_cpu(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 1000 / TICKS_PER_S))
}

/// CPU counters at one moment.
#[derive(Debug, Clone)]
pub(super) struct Snapshot {
    own: Option<Duration>,
    /// Backend pid → its CPU time so far (empty without Postgres).
    backends: HashMap<String, Duration>,
    postgres: bool,
}

impl Snapshot {
    /// Reads the counters; `db` is the bench's Postgres database, if it runs on one.
    pub(super) async fn take(db: Option<&PgConnectOptions>) -> Self {
        let backends = match db {
            Some(opts) => backend_cpu(opts).await.unwrap_or_default(),
            None => HashMap::new(),
        };
        Self {
            own: process_cpu("self"),
            backends,
            postgres: db.is_some(),
        }
    }

    /// CPU spent since `earlier`: `(this process, Postgres backends)`. A backend that
    /// started after `earlier` counts from zero.
    pub(super) fn since(&self, earlier: &Self) -> (Option<Duration>, Option<Duration>) {
        let own = self.own.zip(earlier.own).map(|(a, b)| a.saturating_sub(b));
        let db = (self.postgres && !self.backends.is_empty()).then(|| {
            self.backends
                .iter()
                .map(|(pid, t)| {
                    t.saturating_sub(earlier.backends.get(pid).copied().unwrap_or_default())
                })
                .sum()
        });
        (own, db)
    }
}

/// CPU time of each backend serving this process's connections, by pid.
async fn backend_cpu(opts: &PgConnectOptions) -> Option<HashMap<String, Duration>> {
    let mut conn = PgConnection::connect_with(&opts.clone().application_name("appkit-bench-probe"))
        .await
        .ok()?;
    let pids: Vec<(i32,)> =
        sqlx::query_as("SELECT pid FROM pg_stat_activity WHERE application_name = $1")
            .bind(application_name())
            .fetch_all(&mut conn)
            .await
            .ok()?;
    let _ = conn.close().await;
    Some(
        pids.into_iter()
            .filter_map(|(pid,)| {
                let pid = pid.to_string();
                process_cpu(&pid).map(|t| (pid, t))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_time() {
        let before = process_cpu("self").unwrap();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert_ne!(std::hint::black_box(x), 1);
        assert!(process_cpu("self").unwrap() >= before);
    }
}
