//! The cosigner-pool mailbox on both of its backends, the same tests for each: redb (the
//! embedded default) and PostgreSQL (a private cluster the test starts, `dev_postgres`).
//! Two bridges on one PostgreSQL database, putting at once, never take the mailbox past
//! its quota, and the schema is migrated once however many start together.

use std::sync::Arc;

use satcosign_bridge::config::MailboxConfig;
use satcosign_bridge::mailbox::{now_ms, Keyhash, Mailbox, MailboxError};
use satcosign_bridge::mailbox_rows::MailboxRows;
use satcosign_bridge::postgres::{PgStore, MIGRATIONS};
use satcosign_bridge::store::Store;

/// A mailbox of `max_total_bytes` over `rows`.
fn mailbox(rows: Arc<dyn MailboxRows>, max_total_bytes: u64) -> Mailbox {
    let config = MailboxConfig {
        max_total_bytes,
        ..MailboxConfig::default()
    };
    Mailbox::with_rows(rows, &config)
}

/// What a user of the mailbox relies on, on any backend: a put replaces, a get reads, a
/// delete empties, the quota holds and counts replacements by their difference, expired
/// entries are never served and the sweep frees them.
async fn semantics(rows: Arc<dyn MailboxRows>) {
    let mb = mailbox(rows.clone(), 12);
    let msg = "aGVsbG8=".to_owned(); // 8 bytes of text
    let (a, b) = (Keyhash([1; 32]), Keyhash([2; 32]));
    assert_eq!(mb.get(a).await.expect("get"), None);
    mb.put(a, msg.clone()).await.expect("first");
    assert_eq!(mb.get(a).await.expect("get").as_deref(), Some(msg.as_str()));
    let full = mb.put(b, msg.clone()).await;
    assert!(
        matches!(full, Err(MailboxError::Full { held: 8, max: 12 })),
        "{full:?}"
    );
    assert_eq!(
        mb.get(b).await.expect("get"),
        None,
        "a refused put changes nothing"
    );
    mb.put(a, "aGk=".into()).await.expect("replace");
    assert_eq!(rows.held_bytes().await.expect("bytes"), 4);
    mb.put(b, msg.clone()).await.expect("room now");
    assert!(mb.delete(b).await.expect("delete"));
    assert!(!mb.delete(b).await.expect("delete"), "already empty");
    assert_eq!(rows.held_bytes().await.expect("bytes"), 4);
    // Expired: never served, and swept.
    rows.put([3; 32], 1, "AA==".into(), u64::MAX)
        .await
        .expect("put");
    assert_eq!(mb.get(Keyhash([3; 32])).await.expect("get"), None);
    assert_eq!(rows.held_bytes().await.expect("bytes"), 8);
    assert_eq!(rows.purge_expired(now_ms()).await.expect("purge"), 1);
    assert_eq!(rows.held_bytes().await.expect("bytes"), 4);
    assert_eq!(mb.get(a).await.expect("get").as_deref(), Some("aGk="));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mailbox_behaves_the_same_on_redb_and_postgresql() {
    let dir = tempfile::tempdir().expect("tempdir");
    let redb = Store::open(&dir.path().join("m.redb")).expect("redb");
    semantics(Arc::new(redb)).await;

    let pg = tokio::task::spawn_blocking(satcosign_bridge::dev_postgres::Postgres::start)
        .await
        .expect("postgres");
    let store = PgStore::connect(&pg.url(), 4).await.expect("connect");
    assert_eq!(store.version().await.expect("version"), MIGRATIONS.len());
    semantics(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bridges_on_one_database_never_overfill_the_mailbox() {
    let pg = tokio::task::spawn_blocking(satcosign_bridge::dev_postgres::Postgres::start)
        .await
        .expect("postgres");
    // Both start at once: the schema is migrated once.
    let url = pg.url();
    let (a, b) = tokio::join!(PgStore::connect(&url, 8), PgStore::connect(&url, 8));
    let (a, b) = (a.expect("a"), b.expect("b"));
    assert_eq!(a.version().await.expect("version"), MIGRATIONS.len());
    // Room for 10 messages of 100 bytes; 40 puts race from two bridges.
    let message = "A".repeat(100);
    let (ma, mb) = (
        mailbox(Arc::new(a.clone()), 1_000),
        mailbox(Arc::new(b.clone()), 1_000),
    );
    let mut puts = Vec::new();
    for i in 0..40u8 {
        let m = if i % 2 == 0 { ma.clone() } else { mb.clone() };
        let message = message.clone();
        puts.push(tokio::spawn(async move {
            m.put(Keyhash([i; 32]), message).await
        }));
    }
    let mut stored = 0;
    for p in puts {
        match p.await.expect("task") {
            Ok(()) => stored += 1,
            Err(MailboxError::Full { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(stored, 10, "exactly the quota's worth");
    assert_eq!(a.held_bytes().await.expect("bytes"), 1_000);
    // Each bridge reads what the other wrote.
    let mut seen = 0;
    for i in 0..40u8 {
        if mb.get(Keyhash([i; 32])).await.expect("get").is_some() {
            seen += 1;
        }
    }
    assert_eq!(seen, 10);
}
