//! The two engines a test can run the bridge on, so one test body runs on both: redb (the
//! default) and PostgreSQL (a private cluster the test starts and removes).
//!
//! `on_each_store!(name, ...)` runs each `async fn name(store: TestStore)` twice, as the
//! tests `name::redb` and `name::postgres`.

use std::sync::Arc;

use satcosign_bridge::config::{Backend, Config};
use satcosign_bridge::dev_postgres::Postgres;

/// Where a test's bridge keeps its state.
#[derive(Clone)]
pub enum TestStore {
    Redb,
    Postgres(Arc<Postgres>),
}

impl TestStore {
    /// A fresh PostgreSQL cluster of the test's own.
    pub async fn postgres() -> TestStore {
        let pg = tokio::task::spawn_blocking(Postgres::start)
            .await
            .expect("start postgres");
        TestStore::Postgres(Arc::new(pg))
    }

    /// Points `config` at this engine.
    pub fn apply(&self, config: &mut Config) {
        if let TestStore::Postgres(pg) = self {
            config.store.backend = Backend::Postgres;
            config.store.url = Some(pg.url());
            config.store.pool_size = 8;
        }
    }

    /// A connection string for a new, empty database `name` on this cluster (redb: none).
    pub async fn fresh_database(&self, name: &str) -> String {
        let TestStore::Postgres(pg) = self else {
            panic!("a redb store has no databases");
        };
        pg.database(name).await.expect("create database")
    }

    /// Every byte the engine keeps for the bridge in `config`: the redb file, or every
    /// row of the PostgreSQL tables, for tests that look for what must never be stored.
    pub async fn stored_bytes(&self, config: &Config) -> Vec<u8> {
        match self {
            TestStore::Redb => {
                std::fs::read(config.data_dir.join("bridge.redb")).expect("bridge.redb")
            }
            TestStore::Postgres(pg) => {
                let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
                    .await
                    .expect("connect");
                let conn = tokio::spawn(conn);
                let mut bytes = Vec::new();
                for row in client
                    .query("SELECT tbl::bytea, k, v FROM kv", &[])
                    .await
                    .expect("kv rows")
                {
                    for i in 0..3 {
                        bytes.extend_from_slice(&row.get::<_, Vec<u8>>(i));
                    }
                }
                for row in client
                    .query(
                        "SELECT keyhash, convert_to(message, 'UTF8') FROM mailbox",
                        &[],
                    )
                    .await
                    .expect("mailbox rows")
                {
                    for i in 0..2 {
                        bytes.extend_from_slice(&row.get::<_, Vec<u8>>(i));
                    }
                }
                drop(client);
                let _ = conn.await;
                assert!(!bytes.is_empty(), "the bridge's rows are in PostgreSQL");
                bytes
            }
        }
    }
}

/// For each `async fn name(store: TestStore)`, two tests: `name::redb` and
/// `name::postgres`.
#[macro_export]
macro_rules! on_each_store {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use $crate::common::stores::TestStore;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn redb() {
                    super::$name(TestStore::Redb).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name(TestStore::postgres().await).await
                }
            }
        )*
    };
}
