//! The pool against a real PostgreSQL (`TEST_DATABASE_URL`): connect, health, close once.

mod common;

use std::time::Duration;

use appkit_lakebase::{Error, LakebaseConfig, LakebasePool};

#[tokio::test]
async fn pool_from_url_connects_and_answers_health() -> anyhow::Result<()> {
    let Some(url) = common::test_database_url("pool_from_url_connects_and_answers_health") else {
        return Ok(());
    };
    let pool = LakebasePool::connect(LakebaseConfig::from_url(&url)?).await?;
    pool.health().await?;
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(pool.pool())
        .await?;
    assert_eq!(one, 1);
    assert!(!pool.is_closed());
    assert_eq!(pool.close_count(), 0);
    assert_eq!(pool.credential_generation(), 0, "no password configured");
    pool.close().await;
    Ok(())
}

#[tokio::test]
async fn close_twice_closes_once_and_health_reports_closed() -> anyhow::Result<()> {
    let Some(url) = common::test_database_url("close_twice_closes_once_and_health_reports_closed")
    else {
        return Ok(());
    };
    let pool = LakebasePool::connect(LakebaseConfig::from_url(&url)?).await?;
    pool.health().await?;
    let clone = pool.clone();
    tokio::join!(pool.close(), clone.close());
    pool.close().await;
    assert!(pool.is_closed() && clone.is_closed());
    assert_eq!(pool.close_count(), 1);
    assert!(matches!(pool.health().await, Err(Error::Closed)));
    assert!(matches!(pool.credential().await, Err(Error::Closed)));
    let query = sqlx::query("SELECT 1").execute(pool.pool()).await;
    assert!(matches!(query, Err(sqlx::Error::PoolClosed)), "{query:?}");
    Ok(())
}

#[tokio::test]
async fn static_password_pool_connects() -> anyhow::Result<()> {
    let Some(url) = common::test_database_url("static_password_pool_connects") else {
        return Ok(());
    };
    let config = LakebaseConfig::from_url(&url)?
        .into_builder()
        .credentials(appkit_lakebase::Credentials::password("unused-under-trust"))
        .max_connections(2)
        .build();
    let pool = LakebasePool::connect(config).await?;
    pool.health().await?;
    assert_eq!(pool.credential_generation(), 1);
    let credential = pool.credential().await?.expect("a static password");
    assert_eq!(credential.expires_at(), None);
    pool.close().await;
    Ok(())
}

#[tokio::test]
async fn unreachable_database_is_unavailable() -> anyhow::Result<()> {
    // Port 1 on loopback refuses connections; no server needed.
    let config = LakebaseConfig::builder("127.0.0.1", "nobody")
        .port(1)
        .connect_timeout(Duration::from_millis(300))
        .build();
    let err = LakebasePool::connect(config).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    Ok(())
}
