//! The core services the host starts before the plugins: the Lakebase pool (if
//! configured), then the task store and engine.
//!
//! Each one registers its close hook as it starts, so the shutdown coordinator closes them
//! once, in reverse start order: the task engine (and its store), the store's own pool,
//! the Lakebase pool, then whatever the app registered before (telemetry).

use appkit_lakebase::{LakebaseConfig, LakebasePool};
use taskflow::{PostgresStore, SqliteStore, TaskFlow};
use tracing::{info, warn};

use crate::config::{Config, TasksStore};
use crate::run_error::RunError;
use crate::shutdown::CloseHooks;

/// The started core services.
pub(crate) struct Services {
    pub(crate) taskflow: TaskFlow,
    pub(crate) lakebase: Option<LakebasePool>,
}

/// Starts the Lakebase pool (if configured), then the task store and engine, pushing a
/// close hook for each onto `hooks`. On failure, runs every hook (what started, and what
/// the app registered before) and returns the error.
pub(crate) async fn start(config: &Config, hooks: &mut CloseHooks) -> Result<Services, RunError> {
    match start_in_order(config, hooks).await {
        Ok(services) => Ok(services),
        Err(e) => {
            std::mem::take(hooks).close_all().await;
            Err(e)
        }
    }
}

async fn start_in_order(config: &Config, hooks: &mut CloseHooks) -> Result<Services, RunError> {
    let lakebase = match &config.lakebase {
        Some(lakebase) => {
            let schema = shared_pool_schema(config);
            let pool = connect(lakebase, schema, "the lakebase pool").await?;
            let closing = pool.clone();
            hooks.push("lakebase", move || async move { closing.close().await });
            Some(pool)
        }
        None => None,
    };
    let engine = |e: taskflow::Error| RunError::start("the task engine", e);
    let store_error = |e: taskflow::Error| RunError::start("the task store", e);
    let settings = config.taskflow_config();
    let taskflow = match (&config.tasks_store, &lakebase) {
        (TasksStore::Sqlite(path), _) => {
            info!(path = %path.display(), "opening the sqlite task store");
            if config.is_production() || config.on_databricks_apps() {
                warn!(
                    path = %path.display(),
                    "the sqlite task store serves one replica on local disk: each replica \
                     gets a store of its own and tasks are lost with the disk; set \
                     APPKIT_TASKS_STORE=postgres://… or APPKIT_TASKS_STORE=lakebase to share \
                     one Postgres store between replicas"
                );
            }
            let store = SqliteStore::open(path).await.map_err(store_error)?;
            TaskFlow::start(store, settings).await.map_err(engine)?
        }
        (TasksStore::Postgres(url), _) => {
            info!(db.host = %url.host(), db.name = ?url.database(), "opening the postgres task store");
            let schema = config.tasks_schema.as_deref();
            let pool = connect(url, schema, "the task store pool").await?;
            let closing = pool.clone();
            hooks.push(
                "task store pool",
                move || async move { closing.close().await },
            );
            let store = PostgresStore::new(pool.pool().clone())
                .await
                .map_err(store_error)?;
            TaskFlow::start(store, settings).await.map_err(engine)?
        }
        (TasksStore::Lakebase, Some(pool)) => {
            info!("opening the task store on the lakebase pool");
            let store = PostgresStore::new(pool.pool().clone())
                .await
                .map_err(store_error)?;
            TaskFlow::start(store, settings).await.map_err(engine)?
        }
        (TasksStore::Lakebase, None) => {
            return Err(RunError::start(
                "the task store",
                "the lakebase task store needs the lakebase pool (PGHOST)",
            ));
        }
    };
    let closing = taskflow.clone();
    hooks.push("taskflow", move || async move { closing.shutdown().await });
    Ok(Services { taskflow, lakebase })
}

/// The schema to set on the Lakebase pool: the task schema when the store shares it.
fn shared_pool_schema(config: &Config) -> Option<&str> {
    match config.tasks_store {
        TasksStore::Lakebase => config.tasks_schema.as_deref(),
        _ => None,
    }
}

/// Connects a pool, with `schema` as the `search_path` of its connections.
async fn connect(
    config: &LakebaseConfig,
    schema: Option<&str>,
    service: &'static str,
) -> Result<LakebasePool, RunError> {
    let mut config = config.clone();
    if let Some(schema) = schema {
        config = config.into_builder().option("search_path", schema).build();
    }
    LakebasePool::connect(config)
        .await
        .map_err(|e| RunError::start(service, e))
}
