//! Where the bench's task store lives, so it can be opened more than once: to fill its
//! history, for the engine that submits, and for the engine that drains.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use anyhow::Result;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use taskflow::testing::Storage;
use taskflow::{Config, PostgresStore, SqliteStore, TaskFlow};

use super::StoreKind;

/// A store location.
#[derive(Debug, Clone)]
pub(super) enum StoreSpec {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A schema of the database at `TEST_DATABASE_URL`: its connection options, its name.
    Postgres(Box<PgConnectOptions>, String),
}

impl StoreSpec {
    /// A fresh store of `kind`: a file in `dir`, or a new schema.
    pub(super) async fn create(kind: StoreKind, dir: &Path) -> Result<Self> {
        Ok(match kind {
            StoreKind::Sqlite => Self::Sqlite(dir.join("tasks.db")),
            StoreKind::Postgres => {
                let (opts, schema) = fresh_schema().await?;
                Self::Postgres(Box::new(opts), schema)
            }
        })
    }

    /// The engine on this store.
    pub(super) async fn start(&self, config: Config) -> Result<TaskFlow> {
        Ok(match self {
            Self::Sqlite(path) => TaskFlow::start(SqliteStore::open(path).await?, config).await?,
            Self::Postgres(opts, _) => TaskFlow::start(postgres(opts).await?, config).await?,
        })
    }

    /// The Postgres database's connection options (`None` on SQLite).
    pub(super) fn postgres(&self) -> Option<&PgConnectOptions> {
        match self {
            Self::Sqlite(_) => None,
            Self::Postgres(opts, _) => Some(opts),
        }
    }

    /// Drops the run's Postgres schema (the SQLite file goes with its temporary directory),
    /// so runs leave nothing behind on a shared server.
    pub(super) async fn remove(&self) -> Result<()> {
        if let Self::Postgres(opts, schema) = self {
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .connect_with((**opts).clone())
                .await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
            )))
            .execute(&pool)
            .await?;
            pool.close().await;
        }
        Ok(())
    }

    /// The store's internal write interface (to fill history without an engine).
    pub(super) async fn storage(&self) -> Result<Arc<dyn Storage>> {
        Ok(match self {
            Self::Sqlite(path) => taskflow::testing::storage(SqliteStore::open(path).await?),
            Self::Postgres(opts, _) => taskflow::testing::storage(postgres(opts).await?),
        })
    }
}

async fn postgres(opts: &PgConnectOptions) -> Result<PostgresStore> {
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .connect_with(opts.clone())
        .await?;
    Ok(PostgresStore::new(pool).await?)
}

/// A fresh schema of the database at `TEST_DATABASE_URL`, `VACUUM ANALYZE`d after filling
/// like the peers' harness does (see `history`).
async fn fresh_schema() -> Result<(PgConnectOptions, String)> {
    let url = std::env::var("TEST_DATABASE_URL").map_err(|_| {
        anyhow::anyhow!(
            "--store postgres reads TEST_DATABASE_URL (e.g. postgres://postgres@127.0.0.1:5432/test)"
        )
    })?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let schema = format!("bench_{stamp}_{}", std::process::id());
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
        .execute(&admin)
        .await?;
    admin.close().await;
    eprintln!("engine: postgres schema {schema}");
    let opts = PgConnectOptions::from_str(&url)?
        .options([("search_path", schema.as_str())])
        .application_name(&super::cpu::application_name());
    Ok((opts, schema))
}

/// `VACUUM ANALYZE` of the engine's tables, before a measured run (Postgres only).
pub(super) async fn vacuum(spec: &StoreSpec) -> Result<()> {
    if let StoreSpec::Postgres(opts, _) = spec {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_with((**opts).clone())
            .await?;
        for table in ["tasks", "task_events", "task_steps", "task_batches"] {
            sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM ANALYZE {table}")))
                .execute(&pool)
                .await?;
        }
        pool.close().await;
    }
    Ok(())
}
