//! Every storage backend against the one contract suite (`storage::contract`), plus what only the
//! SQLite backend promises: durability across a reopen, refusal of a newer schema, group commit,
//! and that the file keeps no uploaded pair once the mixer erased it.

use robert_proto::{Epoch, Id};
use robert_server::storage::memory::MemoryStorage;
use robert_server::storage::sqlite::{SCHEMA_VERSION, SqliteStorage};
use robert_server::storage::{
    Exposure, PoolEntry, ProcessedBatch, StatusOutcome, Storage, StorageError, TokenUse,
};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

fn id(n: u64) -> Id {
    Id::new(n).expect("test IDs fit in 40 bits")
}

fn ep(n: u32) -> Epoch {
    Epoch::new(n).expect("test epochs fit in 24 bits")
}

fn token(jti: &str) -> TokenUse {
    TokenUse { jti: jti.to_owned(), expires_unix: 4_000_000_000 }
}

fn open(path: &Path) -> SqliteStorage {
    SqliteStorage::open(path, true).expect("open the SQLite store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_passes_the_contract() {
    robert_server::storage::contract::run_all(MemoryStorage::new).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_passes_the_contract() {
    let dir = tempfile::tempdir().expect("temp dir");
    let n = AtomicUsize::new(0);
    robert_server::storage::contract::run_all(|| {
        let file = dir.path().join(format!("contract-{}.sqlite", n.fetch_add(1, Ordering::Relaxed)));
        open(&file)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_without_fsync_passes_the_contract() {
    let dir = tempfile::tempdir().expect("temp dir");
    let n = AtomicUsize::new(0);
    robert_server::storage::contract::run_all(|| {
        let file = dir.path().join(format!("contract-{}.sqlite", n.fetch_add(1, Ordering::Relaxed)));
        SqliteStorage::open(&file, false).expect("open the SQLite store")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_survives_a_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("robert.sqlite");
    let (a, b) = (id(1), id(2));
    let pending = PoolEntry { slot: [7; 16], record: vec![1; 20] };
    let before = {
        let s = open(&file);
        assert!(s.insert_user(a, vec![0xAA; 92]).await.expect("insert"));
        assert!(s.insert_user(b, vec![0xBB; 92]).await.expect("insert"));
        assert!(
            s.submit_report(
                token("j1"),
                vec![pending.clone(), PoolEntry { slot: [8; 16], record: vec![2; 20] }]
            )
            .await
            .expect("submit")
        );
        let batch = ProcessedBatch {
            slots: vec![[8; 16]],
            exposures: vec![(a, Exposure { epoch: ep(5), hellos: 1, rssi_sum: -60, rssi_count: 1 }, [8; 16])],
            outbox: Vec::new(),
        };
        assert_eq!(s.pool_commit(batch).await.expect("commit"), 1);
        assert_eq!(
            s.status_request(a, ep(9), 3, true).await.expect("esr"),
            StatusOutcome::Answer { at_risk: true }
        );
        assert_eq!(s.put_server_key(3, vec![3; 40]).await.expect("key"), vec![3; 40]);
        (
            s.load_user(a).await.expect("load"),
            s.load_user(b).await.expect("load"),
            s.stats().await.expect("stats"),
        )
        // Dropped here: the writer finishes and the connections close.
    };
    let s = open(&file);
    assert_eq!(s.load_user(a).await.expect("load"), before.0, "user a as it was");
    assert_eq!(s.load_user(b).await.expect("load"), before.1, "user b as it was");
    assert_eq!(s.stats().await.expect("stats"), before.2);
    assert_eq!(s.pool_take(10).await.expect("pool"), vec![pending]);
    assert_eq!(s.server_keys().await.expect("keys"), vec![(3, vec![3; 40])]);
    assert!(
        !s.submit_report(token("j1"), Vec::new()).await.expect("submit"),
        "the spent jti is still remembered"
    );
    assert!(!s.insert_user(a, vec![0; 92]).await.expect("insert"), "a is still taken");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_refuses_a_newer_schema() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("robert.sqlite");
    drop(open(&file));
    {
        let conn = rusqlite::Connection::open(&file).expect("open raw");
        let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0)).expect("user_version");
        assert_eq!(version, SCHEMA_VERSION, "open migrated to the current schema");
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1).expect("bump user_version");
    }
    match SqliteStorage::open(&file, true) {
        Err(StorageError::UnknownSchema { found, known }) => {
            assert_eq!((found, known), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        Err(other) => panic!("expected UnknownSchema, got {other}"),
        Ok(_) => panic!("a database from a newer binary was opened"),
    }
    let conn = rusqlite::Connection::open(&file).expect("open raw");
    let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0)).expect("user_version");
    assert_eq!(version, SCHEMA_VERSION + 1, "the refused file was left untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_group_commit_shares_commits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = Arc::new(open(&dir.path().join("robert.sqlite")));
    let start = s.commit_count();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..1000u64 {
        let s = Arc::clone(&s);
        tasks.spawn(async move { s.insert_user(id(n), vec![0x5A; 92]).await });
    }
    let mut inserted = 0;
    while let Some(joined) = tasks.join_next().await {
        if joined.expect("task").expect("insert_user") {
            inserted += 1;
        }
    }
    assert_eq!(inserted, 1000);
    let commits = s.commit_count() - start;
    assert!(commits >= 1, "at least one commit");
    assert!(commits < 1000, "1000 concurrent writes shared commits ({commits} commits)");
    assert_eq!(s.stats().await.expect("stats").users, 1000);
}

/// One failing command in a group rolls back alone: the others of its group still commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_failing_command_fails_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = open(&dir.path().join("robert.sqlite"));
    assert!(
        s.submit_report(token("first"), vec![PoolEntry { slot: [1; 16], record: vec![1; 20] }])
            .await
            .expect("submit")
    );
    // The same slot again: a primary-key violation inside the command (a caller bug), sent in the
    // same group as good commands.
    let bad = s.submit_report(
        token("second"),
        vec![
            PoolEntry { slot: [2; 16], record: vec![2; 20] },
            PoolEntry { slot: [1; 16], record: vec![3; 20] },
        ],
    );
    let good_1 = s.insert_user(id(1), vec![1; 92]);
    let good_2 = s.submit_report(token("third"), vec![PoolEntry { slot: [4; 16], record: vec![4; 20] }]);
    let (bad, good_1, good_2) = tokio::join!(bad, good_1, good_2);
    match bad {
        Err(StorageError::Backend(message)) => {
            assert!(!message.contains("0101"), "no bytes in the message: {message}");
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
    assert!(good_1.expect("insert"));
    assert!(good_2.expect("submit"));
    let mut slots: Vec<[u8; 16]> = s.pool_take(10).await.expect("pool").into_iter().map(|e| e.slot).collect();
    slots.sort_unstable();
    assert_eq!(slots, vec![[1; 16], [4; 16]], "the failed declaration stored nothing");
    assert!(
        s.submit_report(token("second"), Vec::new()).await.expect("submit"),
        "… and did not spend its token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_drop_after_writes_keeps_them() {
    // The writer drains what was sent before the drop; nothing can be sent after (the borrow
    // checker sees to that), so the observable promise is that a drop with work in flight
    // completes it. Issue many writes, then drop once they are answered, and reopen.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("robert.sqlite");
    {
        let s = Arc::new(open(&file));
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..200u64 {
            let s = Arc::clone(&s);
            tasks.spawn(async move { s.insert_user(id(n), vec![1; 92]).await });
        }
        while let Some(joined) = tasks.join_next().await {
            assert!(joined.expect("task").expect("insert"));
        }
    }
    let s = open(&file);
    assert_eq!(s.stats().await.expect("stats").users, 200);
}

/// DESIGN §6 "Privacy": after a declaration is processed, the file (database and WAL) holds none
/// of the uploaded bytes, and the token table only the `jti` and its expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_no_uploaded_pair_after_processing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("robert.sqlite");
    let s = open(&file);
    let a = id(0x12_3456_789A);
    assert!(s.insert_user(a, vec![0x11; 92]).await.expect("insert"));

    // 300 records (enough to fill several pages) with a recognisable, non-repeating content.
    let records: Vec<Vec<u8>> = (0..300u32)
        .map(|n| {
            let mut r = b"HELLO-".to_vec();
            r.extend_from_slice(&n.to_be_bytes());
            r.extend_from_slice(&[0xC3, 0x5A, 0x96, 0x69, 0x0F, 0xF0, 0x3C, 0xA5, 0x55, 0xAA]);
            r
        })
        .collect();
    let entries: Vec<PoolEntry> = records
        .iter()
        .enumerate()
        .map(|(n, record)| {
            let mut slot = [0u8; 16];
            slot[..8].copy_from_slice(&(n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
            PoolEntry { slot, record: record.clone() }
        })
        .collect();
    assert!(s.submit_report(token("declaration-jti"), entries).await.expect("submit"));
    let contains = |haystack: &[u8], needle: &[u8]| haystack.windows(needle.len()).any(|w| w == needle);
    let file_bytes = || {
        let mut bytes = std::fs::read(&file).expect("read db");
        if let Ok(wal) = std::fs::read(dir.path().join("robert.sqlite-wal")) {
            bytes.extend_from_slice(&wal);
        }
        bytes
    };
    assert!(
        contains(&file_bytes(), &records[0]),
        "sanity: the pending records are on disk before processing"
    );

    // The mixer processes everything.
    let taken = s.pool_take(1000).await.expect("pool_take");
    assert_eq!(taken.len(), records.len());
    let batch = ProcessedBatch {
        slots: taken.iter().map(|e| e.slot).collect(),
        exposures: taken
            .iter()
            .map(|e| (a, Exposure { epoch: ep(1), hellos: 1, rssi_sum: 0, rssi_count: 0 }, e.slot))
            .collect(),
        outbox: Vec::new(),
    };
    assert_eq!(s.pool_commit(batch).await.expect("commit") as usize, records.len());

    // The WAL scrub runs once the writer is idle (or after at most 2 s of continuous load), unless
    // a reader holds an old snapshot; give it a few retries' time.
    let mut leaked = usize::MAX;
    for _ in 0..50 {
        let bytes = file_bytes();
        leaked = records.iter().filter(|r| contains(&bytes, r)).count();
        if leaked == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(leaked, 0, "uploaded records left in the database file or WAL");

    // What the database holds: the token's jti and expiry, the exposure aggregate, nothing else.
    let conn = rusqlite::Connection::open_with_flags(&file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open raw");
    let tokens: Vec<(String, i64)> = conn
        .prepare("SELECT * FROM used_tokens")
        .expect("prepare")
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(tokens, vec![("declaration-jti".to_owned(), 4_000_000_000)]);
    let columns: i64 = conn
        .query_row("SELECT count(*) FROM pragma_table_info('used_tokens')", [], |row| row.get(0))
        .expect("columns");
    assert_eq!(columns, 2, "used_tokens holds the jti and its expiry only");
    let pool: i64 = conn.query_row("SELECT count(*) FROM pool", [], |row| row.get(0)).expect("pool");
    assert_eq!(pool, 0);
    let exposures: Vec<(i64, i64, i64)> = conn
        .prepare("SELECT id, epoch, hellos FROM exposures")
        .expect("prepare")
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(exposures, vec![(0x12_3456_789A, 1, 300)], "one aggregate, no per-pair row");
    drop(s);
}
