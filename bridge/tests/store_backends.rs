//! The bridge's storage on both of its engines, the same tests for each: redb (the embedded
//! default) and PostgreSQL (a private cluster the test starts, `dev_postgres`).
//! - The tables behave the same: order, replacement, removal, a failed rule undone whole
//!   and alone.
//! - Two stores on one PostgreSQL database never lose an update to each other, and the
//!   schema is migrated once however many start together.
//! - The mailbox behaves the same, and two stores never take it past its quota.
//! - A second bridge on a database in use stands by, and takes over once the first is gone.

use std::sync::Arc;

use satcosign_bridge::config::MailboxConfig;
use satcosign_bridge::mailbox::{now_ms, Keyhash, Mailbox, MailboxError};
use satcosign_bridge::mailbox_rows::MailboxRows;
use satcosign_bridge::postgres::{PgStore, MIGRATIONS};
use satcosign_bridge::store::tables::{ReadableTable, TableDefinition};
use satcosign_bridge::store::{Store, StoreError};

const NUMBERS: TableDefinition<u32, &[u8]> = TableDefinition::new("test_numbers");
const COUNTER: TableDefinition<&str, u64> = TableDefinition::new("test_counter");

fn all_keys(
    rows: impl Iterator<
        Item = Result<
            (
                satcosign_bridge::store::tables::Guard<u32>,
                satcosign_bridge::store::tables::Guard<&'static [u8]>,
            ),
            satcosign_bridge::store::tables::TableError,
        >,
    >,
) -> Result<Vec<u32>, StoreError> {
    rows.map(|r| Ok(r?.0.value())).collect()
}

/// What the bridge's rules rely on, on either engine.
async fn table_semantics(store: &Store) {
    // Keys come back in numeric order (300 sorts after 2 only if the key form keeps order).
    let old = store
        .write(|txn| {
            let mut t = txn.open_table(NUMBERS)?;
            for n in [300u32, 2, 70_000, 1] {
                t.insert(n, format!("v{n}").as_bytes())?;
            }
            let old = t
                .insert(2u32, b"two".as_slice())?
                .map(|g| g.value().to_vec());
            Ok(old)
        })
        .await
        .expect("write");
    assert_eq!(
        old.as_deref(),
        Some(b"v2".as_slice()),
        "insert returns the old value"
    );
    let (keys, ranged, two) = store
        .read(|txn| {
            let t = txn.open_table(NUMBERS)?;
            let keys = all_keys(t.iter()?)?;
            let ranged = all_keys(t.range(2u32..=300)?)?;
            let two = t.get(2u32)?.map(|g| g.value().to_vec());
            Ok((keys, ranged, two))
        })
        .await
        .expect("read");
    assert_eq!(keys, vec![1, 2, 300, 70_000]);
    assert_eq!(ranged, vec![2, 300]);
    assert_eq!(two.as_deref(), Some(b"two".as_slice()));
    // A rule that fails half-way leaves nothing behind.
    let failed = store
        .write(|txn| {
            let mut t = txn.open_table(NUMBERS)?;
            t.remove(1u32)?;
            t.insert(5u32, b"five".as_slice())?;
            Err::<(), _>(StoreError::Database("the rule refuses".into()))
        })
        .await;
    assert!(failed.is_err());
    let removed = store
        .write(|txn| {
            let mut t = txn.open_table(NUMBERS)?;
            Ok((
                t.get(5u32)?.is_some(),
                t.remove(1u32)?.map(|g| g.value().to_vec()),
                t.remove(1u32)?.is_some(),
            ))
        })
        .await
        .expect("write");
    assert_eq!(
        removed,
        (false, Some(b"v1".to_vec()), false),
        "the failed rule changed nothing; remove returns what it removed, once"
    );
}

/// Forty rules at once, every fourth failing after it wrote: each failure is undone alone
/// and every other rule stands (on PostgreSQL they share transactions, one savepoint each).
async fn failures_stay_alone(store: &Store) {
    const FAILING: TableDefinition<u32, &[u8]> = TableDefinition::new("test_failing");
    let mut jobs = Vec::new();
    for n in 0u32..40 {
        let store = store.clone();
        jobs.push(tokio::spawn(async move {
            store
                .write(move |txn| {
                    txn.open_table(FAILING)?.insert(n, b"x".as_slice())?;
                    if n % 4 == 0 {
                        return Err(StoreError::Database(format!("rule {n} refuses")));
                    }
                    Ok(n)
                })
                .await
        }));
    }
    for (n, job) in jobs.into_iter().enumerate() {
        let result = job.await.expect("task");
        if n % 4 == 0 {
            assert!(result.expect_err("fails").to_string().contains("refuses"));
        } else {
            assert_eq!(result.expect("stands"), n as u32);
        }
    }
    let kept = store
        .read(|txn| all_keys(txn.open_table(FAILING)?.iter()?))
        .await
        .expect("read");
    assert_eq!(kept, (0..40).filter(|n| n % 4 != 0).collect::<Vec<u32>>());
}

/// Adds one to the counter, `n` times, each in its own transaction, all at once.
async fn count(store: &Store, n: usize) {
    let mut jobs = Vec::new();
    for _ in 0..n {
        let store = store.clone();
        jobs.push(tokio::spawn(async move {
            store
                .write(|txn| {
                    let mut t = txn.open_table(COUNTER)?;
                    let now = t.get("n")?.map_or(0, |g| g.value());
                    t.insert("n", now + 1)?;
                    Ok(())
                })
                .await
        }));
    }
    for j in jobs {
        j.await.expect("task").expect("write");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tables_behave_the_same_on_redb_and_postgresql() {
    let dir = tempfile::tempdir().expect("tempdir");
    let redb = Store::open(&dir.path().join("t.redb")).expect("redb");
    table_semantics(&redb).await;
    failures_stay_alone(&redb).await;

    let pg = tokio::task::spawn_blocking(satcosign_bridge::dev_postgres::Postgres::start)
        .await
        .expect("postgres");
    let store = Store::connect_postgres(&pg.url(), 4)
        .await
        .expect("connect");
    table_semantics(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_database_never_lose_an_update() {
    let pg = tokio::task::spawn_blocking(satcosign_bridge::dev_postgres::Postgres::start)
        .await
        .expect("postgres");
    let url = pg.url();
    let (a, b) = tokio::join!(
        Store::connect_postgres(&url, 4),
        Store::connect_postgres(&url, 4)
    );
    let (a, b) = (a.expect("a"), b.expect("b"));
    // Each reads the counter and writes it plus one: 2 x 30 racing read-modify-writes.
    tokio::join!(count(&a, 30), count(&b, 30));
    let n = b
        .read(|txn| Ok(txn.open_table(COUNTER)?.get("n")?.map_or(0, |g| g.value())))
        .await
        .expect("read");
    assert_eq!(n, 60, "no update was lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_holds_the_ground_lease_another_takes_it_over_and_the_first_can_no_longer_write_the_link(
) {
    use satcosign_bridge::store::fence::Fence;
    use satcosign_bridge::store::LinkRows;
    use satcosign_link::store::LinkStore as _;
    let lease = std::time::Duration::from_secs(4);
    let pg = tokio::task::spawn_blocking(satcosign_bridge::dev_postgres::Postgres::start)
        .await
        .expect("postgres");
    let first = Store::connect_postgres(&pg.url(), 2).await.expect("first");
    let first_token = first
        .postgres()
        .expect("postgres engine")
        .take_ground(lease)
        .await
        .expect("the first takes the lease");
    let first_fence = Arc::new(Fence::default());
    first_fence.set(Some(first_token));
    let first_link = LinkRows::new(first.clone(), first_fence);
    let queued = first_link
        .enqueue(b"hello")
        .expect("the holder writes the link");
    // The second waits for the lease.
    let second = Store::connect_postgres(&pg.url(), 2).await.expect("second");
    let standby = tokio::spawn({
        let second = second.clone();
        async move { second.postgres().expect("pg").take_ground(lease).await }
    });
    // Meanwhile the lease is the first's: a third that only tries is refused.
    let third = Store::connect_postgres(&pg.url(), 2).await.expect("third");
    let tried = third.postgres().expect("pg").try_take_ground(lease).await;
    assert_eq!(tried.expect("asked"), None, "the lease is held");
    assert!(
        !standby.is_finished(),
        "the standby waits while the first holds it"
    );
    // The first's lease goes (as when its connection is cut) and it has not noticed.
    first.postgres().expect("pg").release_ground().await;
    let second_token = tokio::time::timeout(std::time::Duration::from_secs(30), standby)
        .await
        .expect("the standby took over in time")
        .expect("task")
        .expect("holds it");
    assert!(
        second_token > first_token,
        "{second_token} after {first_token}"
    );
    let refused = first_link
        .enqueue(b"late")
        .expect_err("a replica that lost the lease cannot write the link");
    assert!(
        refused.to_string().contains("no longer the latest"),
        "{refused}"
    );
    let second_fence = Arc::new(Fence::default());
    second_fence.set(Some(second_token));
    let second_link = LinkRows::new(second.clone(), second_fence);
    // The new holder carries on the first's outbox, without the refused message.
    let outbox = second_link.outbox().expect("outbox");
    assert_eq!(outbox, vec![(queued, b"hello".to_vec())]);
    second_link
        .acknowledged(queued)
        .expect("the holder writes the link");
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_goes_silent_for_a_whole_lease_is_ended_and_its_lease_taken_over() {
    use satcosign_bridge::store::fence::Fence;
    use satcosign_bridge::store::LinkRows;
    use satcosign_link::store::LinkStore as _;
    let lease = std::time::Duration::from_secs(2);
    let pg = tokio::task::spawn_blocking(satcosign_bridge::dev_postgres::Postgres::start)
        .await
        .expect("postgres");
    // The first takes the lease, then shows no sign of life (a frozen process: its kernel
    // still keeps the connection open).
    let frozen = Store::connect_postgres(&pg.url(), 2).await.expect("first");
    let token = frozen
        .postgres()
        .expect("pg")
        .take_ground(lease)
        .await
        .expect("the first takes the lease");
    let fence = Arc::new(Fence::default());
    fence.set(Some(token));
    let frozen_link = LinkRows::new(frozen.clone(), fence);
    // The second waits, sees the holder silent for a whole lease, and takes over.
    let second = Store::connect_postgres(&pg.url(), 2).await.expect("second");
    let taken = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        second.postgres().expect("pg").take_ground(lease),
    )
    .await
    .expect("taken over")
    .expect("holds it");
    assert_eq!(taken, token + 1);
    // The first, waking, finds its lease gone at its next look, and cannot write the link.
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        frozen.postgres().expect("pg").ground_lost(lease),
    )
    .await
    .expect("the first notices");
    let refused = frozen_link.enqueue(b"late").expect_err("fenced");
    assert!(
        refused.to_string().contains("no longer the latest"),
        "{refused}"
    );
}

/// Makes `store` look like one written before layouts were recorded: a wallet row and no
/// stamp.
async fn make_layout_1(store: &Store) {
    store
        .write(|txn| {
            txn.open_table(satcosign_bridge::state::WALLETS)?
                .insert(&[7u8; 16], b"a wallet of layout 1".as_slice())?;
            txn.open_table(satcosign_bridge::state::META)?
                .remove("layout")?;
            Ok(())
        })
        .await
        .expect("write");
}

fn assert_refused_as_layout_1(opened: Result<Store, StoreError>) {
    match opened {
        Err(e @ StoreError::Layout { found: 1, expected }) => {
            assert_eq!(expected, satcosign_bridge::state::LAYOUT);
            assert!(e.to_string().contains("layout 1"), "{e}");
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a database of layout 1 was opened"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_in_an_older_layout_is_refused_at_open_never_misread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("old.redb");
    let store = Store::open(&path).expect("a new database opens");
    make_layout_1(&store).await;
    let released = store.released().file(&path);
    drop(store);
    assert!(released.wait(std::time::Duration::from_secs(30)).await);
    assert_refused_as_layout_1(Store::open(&path));
    // A new database of this layout opens again and again.
    let fresh = dir.path().join("new.redb");
    let store = Store::open(&fresh).expect("opens");
    let released = store.released().file(&fresh);
    drop(store);
    assert!(released.wait(std::time::Duration::from_secs(30)).await);
    Store::open(&fresh).expect("reopens");

    let pg = tokio::task::spawn_blocking(satcosign_bridge::dev_postgres::Postgres::start)
        .await
        .expect("postgres");
    let store = Store::connect_postgres(&pg.url(), 2)
        .await
        .expect("connect");
    make_layout_1(&store).await;
    assert_refused_as_layout_1(Store::connect_postgres(&pg.url(), 2).await);
}
