//! [`PostgresStorage`]: the scale-out backend, one PostgreSQL database shared by several
//! `robert serve` replicas behind a load balancer.
//!
//! What it guarantees:
//! - **Atomic across replicas.** Every [`Storage`] method is one statement or one transaction at
//!   `READ COMMITTED`, written so that PostgreSQL's row locks make it linearizable whatever other
//!   replicas do at the same moment, and no method relies on anything a replica holds in memory:
//!   - ESR (§7 steps 7–8) is a single conditional `UPDATE … RETURNING`: a second ESR of the same
//!     ID waits for the first one's row lock, then re-checks its `WHERE` (T, UN_A, acknowledgement)
//!     against the row the first one wrote, so two ESRs inside T never both pass, and an
//!     acknowledged ID is never answered;
//!   - single-use values (`jti`s, registration challenges) and IDs are primary keys inserted with
//!     `ON CONFLICT DO NOTHING`: of two racing inserts, the second waits for the first and does
//!     nothing;
//!   - the mixer's commit (§6.2 step 10) claims its slots with `DELETE … WHERE slot IN (SELECT …
//!     FOR UPDATE SKIP LOCKED) RETURNING slot` and applies the exposures and outbox entries of the
//!     returned slots only, in the same transaction: a slot is erased, and its pair applied, by
//!     exactly one mixer. A mixer never waits for another: it skips the slots another is erasing
//!     (if that one rolls back, the slots stay in the pool for the next pass);
//!   - [`Storage::pool_take`] starts at a random slot, so replicas' mixers mostly take disjoint
//!     batches when the pool is larger than a batch;
//!   - federation (§8): [`Storage::federation_next_batch`] takes a per-country advisory lock for
//!     its transaction, so replicas sealing batches for one peer at once return the same pending
//!     batch, and a pair is in the outbox or in that batch, never both, never two batches.
//! - **Transactions as retried closures.** Multi-statement methods run through one helper that
//!   retries the whole closure on serialization failure (SQLSTATE 40001) and deadlock (40P01), a
//!   bounded number of times with a short random back-off. Rows are locked in sorted order, which
//!   makes deadlocks rare; the retry makes them harmless.
//! - **Durable before answered.** A method returns after its `COMMIT` returned, so with the
//!   server's default `synchronous_commit = on` the write is in the (replicated) WAL. Concurrent
//!   commits from many connections share WAL flushes (PostgreSQL's own group commit).
//! - **Batched hot paths.** A declaration stores all its pairs in one `INSERT … SELECT unnest(…)`;
//!   the mixer erases a batch, adds its exposures (summed per (ID, epoch) beforehand) and its
//!   outbox entries in three statements; the mixer's key lookup is one `= ANY($1)` query.
//! - **Versioned schema.** Migrations (`migrations/postgres/NNNN_*.sql`, embedded) are applied at
//!   [`PostgresStorage::connect`] in one transaction under an advisory lock, so replicas starting
//!   together migrate once; a database whose schema is newer than this binary knows is refused
//!   ([`StorageError::UnknownSchema`]) before anything is changed.
//! - **Cheap expiry.** LEE_A rows are indexed by epoch; expiry is one range delete on that index
//!   (measured by `robert bench expiry --storage postgres`).
//!
//! What it does not do: erase deleted bytes at once. PostgreSQL keeps a deleted row's bytes in its
//! page until vacuum reuses the space, and in WAL segments (and WAL archives) until they are
//! recycled; `docs/deploy.md` says how to bound that for the pool of uploaded pairs. It also does
//! not speak TLS to the database: run it on a private network or a unix socket.
//!
//! Error messages carry PostgreSQL's SQLSTATE and primary message (which name tables and
//! constraints), never its DETAIL (which can quote a key) nor a bound value.

use super::{
    ExpiryStats, Exposure, OutboundBatch, PoolEntry, ProcessedBatch, RegisterOutcome, Result, Stats,
    StatusOutcome, Storage, StorageError, TokenUse, UserRecord,
};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Transaction};
use robert_proto::{CountryCode, Epoch, Id};
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::{IsolationLevel, NoTls};

/// Schema migrations: `MIGRATIONS[n]` takes the schema from version `n` to `n + 1`. Append only;
/// never edit a migration that shipped.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/postgres/0001_initial.sql"),
    include_str!("../../migrations/postgres/0002_federation.sql"),
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The table that records applied migrations (one row per version).
pub const SCHEMA_TABLE: &str = "robert_schema_migrations";

/// Advisory-lock key that serializes migrations of replicas starting together ("ROBERT" in ASCII).
const MIGRATION_LOCK: i64 = 0x524F_4245_5254;

/// Advisory-lock keys that serialize the sealing of one country's federation batches ("FED" and
/// the country code).
const FEDERATION_LOCK: i64 = 0x4645_4400;

/// How often a transaction is retried after a serialization failure or a deadlock.
const MAX_RETRIES: u32 = 8;

/// Default number of connections per replica.
pub const DEFAULT_POOL_SIZE: usize = 16;

/// How long a request waits for a free connection before failing (instead of queueing forever
/// when the database is down or the pool is too small).
const POOL_WAIT: Duration = Duration::from_secs(10);

/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Maps a driver error to [`StorageError::Backend`]: SQLSTATE and primary message only. The DETAIL
/// and the bound values are never included (a unique violation's DETAIL quotes the key).
fn backend(op: &'static str, e: &tokio_postgres::Error) -> StorageError {
    let detail = match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None if e.is_closed() => "connection closed".to_owned(),
        // The driver's own errors (I/O, protocol, conversion) name a kind, not a value.
        None => e.to_string(),
    };
    StorageError::Backend(format!("{op}: {detail}"))
}

fn pool_error(op: &'static str, e: &deadpool_postgres::PoolError) -> StorageError {
    let detail = match e {
        deadpool_postgres::PoolError::Timeout(_) => {
            "no database connection available (pool timeout)".to_owned()
        }
        deadpool_postgres::PoolError::Backend(e) => return backend(op, e),
        deadpool_postgres::PoolError::Closed => return StorageError::Closed,
        other => format!("connection pool: {other}"),
    };
    StorageError::Backend(format!("{op}: {detail}"))
}

/// Whether running the transaction again may succeed: serialization failure or deadlock.
fn retryable(e: &tokio_postgres::Error) -> bool {
    matches!(e.code(), Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED)
}

fn id_sql(id: Id) -> i64 {
    // 40 bits: always fits.
    id.value() as i64
}

fn id_from_sql(v: i64) -> Result<Id> {
    u64::try_from(v)
        .ok()
        .and_then(Id::new)
        .ok_or_else(|| StorageError::Backend("stored ID out of range".into()))
}

fn epoch_sql(e: Epoch) -> i32 {
    // 24 bits: always fits.
    e.number() as i32
}

fn epoch_from_sql(v: i32) -> Result<Epoch> {
    u32::try_from(v)
        .ok()
        .and_then(Epoch::new)
        .ok_or_else(|| StorageError::Backend("stored epoch out of range".into()))
}

fn day_sql(day: u32) -> Result<i32> {
    i32::try_from(day).map_err(|_| StorageError::Backend("day number out of range".into()))
}

fn unix_sql(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

fn count_from_sql(v: i64) -> u32 {
    // Counts only grow by addition of u32s; saturate like the reference backend.
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

fn u64_from_sql(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn slot_from_sql(v: Vec<u8>) -> Result<[u8; 16]> {
    <[u8; 16]>::try_from(v).map_err(|_| StorageError::Backend("stored pool slot malformed".into()))
}

/// A schema name the backend may create and put on the search path: `[a-z_][a-z0-9_]{0,62}`.
fn valid_schema_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
}

/// The future a transaction closure returns: borrows the transaction.
type TxFuture<'a, T> =
    Pin<Box<dyn Future<Output = std::result::Result<T, tokio_postgres::Error>> + Send + 'a>>;

/// The PostgreSQL backend. See the [module docs](self).
pub struct PostgresStorage {
    pool: Pool,
    /// The ESR group committer's queue (see [`EsrBatcher`]); `None` only while dropping.
    esr: Option<tokio::sync::mpsc::UnboundedSender<EsrJob>>,
}

/// Most ESRs written by one statement.
const ESR_BATCH: usize = 512;

/// One ESR waiting for the group committer.
struct EsrJob {
    id: i64,
    now: i32,
    min_interval: i64,
    at_risk: bool,
    reply: tokio::sync::oneshot::Sender<Result<Option<bool>>>,
}

/// Group commit for ESRs (§7 steps 7–8), the hot path: a task takes every ESR queued (up to
/// [`ESR_BATCH`]) and writes them with *one* conditional `UPDATE … FROM unnest(…)`, so that one
/// WAL flush serves the whole batch instead of one each (a commit is bounded by the disk's flush
/// rate: a few hundred to a few thousand a second). Batches run on up to half the pool's
/// connections at once, so one batch forms while others wait for their flush; under light load
/// an ESR goes alone, at once.
///
/// Each row's check-and-set is the single-ESR statement's, evaluated per row by PostgreSQL (a row
/// another statement is updating is re-checked against its new version), so batching changes
/// throughput, not the outcome. Two ESRs of one ID never share a batch: the second waits for the
/// next one.
struct EsrBatcher {
    pool: Pool,
    jobs: tokio::sync::mpsc::UnboundedReceiver<EsrJob>,
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl EsrBatcher {
    async fn run(mut self) {
        let mut carry: std::collections::VecDeque<EsrJob> = std::collections::VecDeque::new();
        loop {
            let first = match carry.pop_front() {
                Some(job) => job,
                None => match self.jobs.recv().await {
                    Some(job) => job,
                    None => break,
                },
            };
            let Ok(permit) = Arc::clone(&self.in_flight).acquire_owned().await else { break };
            // Everything queued meanwhile joins the batch (carried-over jobs first).
            let mut batch = Vec::with_capacity(64);
            let mut ids = HashSet::with_capacity(64);
            ids.insert(first.id);
            batch.push(first);
            let mut deferred = Vec::new();
            while batch.len() < ESR_BATCH {
                let next = match carry.pop_front() {
                    Some(job) => job,
                    None => match self.jobs.try_recv() {
                        Ok(job) => job,
                        Err(_) => break,
                    },
                };
                if ids.insert(next.id) {
                    batch.push(next);
                } else {
                    deferred.push(next);
                }
            }
            carry.extend(deferred);
            let pool = self.pool.clone();
            tokio::spawn(async move {
                write_esr_batch(&pool, batch).await;
                drop(permit);
            });
        }
        // The storage is gone: answer what is left, in order, one batch at a time.
        while let Some(job) = carry.pop_front() {
            write_esr_batch(&self.pool, vec![job]).await;
        }
    }
}

async fn write_esr_batch(pool: &Pool, batch: Vec<EsrJob>) {
    let ids: Vec<i64> = batch.iter().map(|j| j.id).collect();
    let nows: Vec<i32> = batch.iter().map(|j| j.now).collect();
    let intervals: Vec<i64> = batch.iter().map(|j| j.min_interval).collect();
    let risks: Vec<bool> = batch.iter().map(|j| j.at_risk).collect();
    let mut attempt = 0u32;
    let outcome = loop {
        let result = async {
            let client = pool.get().await.map_err(|e| pool_error("status request", &e))?;
            let stmt = client
                .prepare_cached(
                    "UPDATE users u SET sre = x.now, notified = (u.notified OR x.at_risk)
                     FROM unnest($1::bigint[], $2::integer[], $3::bigint[], $4::boolean[])
                          AS x (id, now, min_interval, at_risk)
                     WHERE u.id = x.id AND NOT u.acknowledged
                       AND (u.notified OR u.sre IS NULL OR (x.now - u.sre)::bigint >= x.min_interval)
                     RETURNING u.id, u.notified",
                )
                .await
                .map_err(|e| backend("status request", &e))?;
            match client.query(&stmt, &[&ids, &nows, &intervals, &risks]).await {
                Ok(rows) => {
                    Ok(Ok(rows.iter().map(|r| (r.get::<_, i64>(0), r.get::<_, bool>(1))).collect::<Vec<_>>()))
                }
                Err(e) => Ok(Err(e)),
            }
        }
        .await;
        match result {
            Ok(Err(e)) if retryable(&e) && attempt < MAX_RETRIES => {
                // Deadlock with another replica's batch over the same IDs (an App sending ESRs
                // to two replicas at once): the statement rolled back; run it again.
                attempt += 1;
                let backoff = rand::random::<u64>() % (u64::from(attempt) * 5_000);
                tokio::time::sleep(Duration::from_micros(backoff)).await;
            }
            Ok(Err(e)) => break Err(backend("status request", &e)),
            Ok(Ok(rows)) => break Ok(rows),
            Err(e) => break Err(e),
        }
    };
    match outcome {
        Ok(rows) => {
            let answered: std::collections::HashMap<i64, bool> = rows.into_iter().collect();
            for job in batch {
                // A caller that stopped waiting is not an error here.
                let _ = job.reply.send(Ok(answered.get(&job.id).copied()));
            }
        }
        Err(e) => {
            let message = e.to_string();
            for job in batch {
                let _ = job.reply.send(Err(StorageError::Backend(message.clone())));
            }
        }
    }
}

impl Drop for PostgresStorage {
    fn drop(&mut self) {
        // Closing the queue lets the group committer answer what was queued, then stop.
        self.esr = None;
    }
}

impl std::fmt::Debug for PostgresStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self.pool.status();
        f.debug_struct("PostgresStorage")
            .field("pool_size", &status.max_size)
            .field("connections", &status.size)
            .finish_non_exhaustive()
    }
}

/// Parses a connection URL (`postgres://user[:password]@host[:port]/db[?options]`, or the
/// `key=value` form), never echoing it: it may hold a password.
fn parse_url(url: &str) -> Result<tokio_postgres::Config> {
    tokio_postgres::Config::from_str(url).map_err(|e| {
        StorageError::Backend(format!(
            "invalid PostgreSQL URL ({e}); expected postgres://user@host:port/database"
        ))
    })
}

impl PostgresStorage {
    /// Connects to the database at `url` with a pool of at most `pool_size` connections, applies
    /// the missing migrations and returns the store. Fails with [`StorageError::UnknownSchema`]
    /// (changing nothing) if the database was migrated by a newer binary, and with
    /// [`StorageError::Backend`] if it cannot be reached.
    pub async fn connect(url: &str, pool_size: usize) -> Result<Self> {
        Self::connect_config(parse_url(url)?, pool_size).await
    }

    /// Like [`PostgresStorage::connect`], but every table lives in schema `schema` (created if
    /// missing), set as the connections' `search_path`: several independent stores in one
    /// database (the tests and benchmarks use it). `schema` must match `[a-z_][a-z0-9_]*`.
    pub async fn connect_in_schema(url: &str, schema: &str, pool_size: usize) -> Result<Self> {
        if !valid_schema_name(schema) {
            return Err(StorageError::Backend("schema name must match [a-z_][a-z0-9_]{0,62}".into()));
        }
        let mut config = parse_url(url)?;
        {
            // Under the migration lock: two concurrent `CREATE SCHEMA IF NOT EXISTS` of one name
            // can both miss the other and one fail on the catalog's unique index.
            let pool = Self::pool(config.clone(), 1)?;
            let mut client = pool.get().await.map_err(|e| pool_error("create schema", &e))?;
            let tx = client.transaction().await.map_err(|e| backend("create schema", &e))?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await
                .map_err(|e| backend("create schema", &e))?;
            tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .await
                .map_err(|e| backend("create schema", &e))?;
            tx.commit().await.map_err(|e| backend("create schema", &e))?;
        }
        let options = match config.get_options() {
            Some(o) => format!("{o} -c search_path={schema}"),
            None => format!("-c search_path={schema}"),
        };
        config.options(options);
        Self::connect_config(config, pool_size).await
    }

    /// Drops schema `schema` and everything in it (tests and benchmarks clean up with it).
    pub async fn drop_schema(url: &str, schema: &str) -> Result<()> {
        if !valid_schema_name(schema) {
            return Err(StorageError::Backend("schema name must match [a-z_][a-z0-9_]{0,62}".into()));
        }
        let pool = Self::pool(parse_url(url)?, 1)?;
        let client = pool.get().await.map_err(|e| pool_error("drop schema", &e))?;
        client
            .batch_execute(&format!(
                "SET client_min_messages = warning; DROP SCHEMA IF EXISTS {schema} CASCADE"
            ))
            .await
            .map_err(|e| backend("drop schema", &e))
    }

    /// For sizing (`robert bench`, docs/deploy.md): each table of schema `schema` with its rows
    /// and its bytes on disk (heap, indexes and TOAST), by table name.
    pub async fn table_sizes(url: &str, schema: &str) -> Result<Vec<(String, u64, u64)>> {
        if !valid_schema_name(schema) {
            return Err(StorageError::Backend("schema name must match [a-z_][a-z0-9_]{0,62}".into()));
        }
        let pool = Self::pool(parse_url(url)?, 1)?;
        let client = pool.get().await.map_err(|e| pool_error("table sizes", &e))?;
        let tables = client
            .query(
                "SELECT c.relname::text, pg_total_relation_size(c.oid) FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relkind = 'r' ORDER BY c.relname",
                &[&schema],
            )
            .await
            .map_err(|e| backend("table sizes", &e))?;
        let mut sizes = Vec::with_capacity(tables.len());
        for row in tables {
            let (name, bytes): (String, i64) = (row.get(0), row.get(1));
            // `name` comes from the catalog of a schema whose name was checked: quoting is enough.
            let rows: i64 = client
                .query_one(&format!("SELECT count(*) FROM {schema}.\"{}\"", name.replace('"', "\"\"")), &[])
                .await
                .map_err(|e| backend("table sizes", &e))?
                .get(0);
            sizes.push((name, u64_from_sql(rows), u64_from_sql(bytes)));
        }
        Ok(sizes)
    }

    fn pool(mut config: tokio_postgres::Config, pool_size: usize) -> Result<Pool> {
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("robert");
        }
        let manager =
            Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StorageError::Backend(format!("connection pool: {e}")))
    }

    async fn connect_config(config: tokio_postgres::Config, pool_size: usize) -> Result<Self> {
        let pool = Self::pool(config, pool_size)?;
        let mut client = pool.get().await.map_err(|e| pool_error("connect", &e))?;
        migrate(&mut client).await?;
        drop(client);
        let (esr, jobs) = tokio::sync::mpsc::unbounded_channel();
        let in_flight = Arc::new(tokio::sync::Semaphore::new((pool_size / 2).max(1)));
        tokio::spawn(EsrBatcher { pool: pool.clone(), jobs, in_flight }.run());
        Ok(Self { pool, esr: Some(esr) })
    }

    /// The schema version recorded in the database (0 if none), without changing anything.
    pub async fn schema_version(&self) -> Result<i64> {
        let client = self.client("schema version").await?;
        read_version(&client).await
    }

    async fn client(&self, op: &'static str) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|e| pool_error(op, &e))
    }

    /// Runs `work` in one `READ COMMITTED` transaction and commits it; on a serialization failure
    /// or a deadlock (anywhere, commit included) rolls back and runs it again, up to
    /// [`MAX_RETRIES`] times. With `retry_fk`, a foreign-key violation is retried too: the mixer's
    /// commit raced an unregistration, and a fresh snapshot no longer sees the ID.
    async fn transaction<D, T, F>(&self, op: &'static str, retry_fk: bool, data: &D, work: F) -> Result<T>
    where
        D: Sync + ?Sized,
        T: Send,
        F: for<'a> Fn(&'a Transaction<'a>, &'a D) -> TxFuture<'a, T> + Send + Sync,
    {
        let mut attempt = 0u32;
        loop {
            let mut client = self.client(op).await?;
            let outcome = async {
                let tx =
                    client.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start().await?;
                let value = work(&tx, data).await?;
                tx.commit().await?;
                Ok::<T, tokio_postgres::Error>(value)
            }
            .await;
            match outcome {
                Ok(value) => return Ok(value),
                Err(e) => {
                    let again =
                        retryable(&e) || (retry_fk && e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION));
                    if !again || attempt >= MAX_RETRIES {
                        return Err(backend(op, &e));
                    }
                    attempt += 1;
                    tracing::debug!(op, attempt, "postgres transaction retried");
                    // A dropped transaction is rolled back before the connection's next query.
                    drop(client);
                    let backoff = rand::random::<u64>() % (u64::from(attempt) * 5_000);
                    tokio::time::sleep(Duration::from_micros(backoff)).await;
                }
            }
        }
    }

    /// Runs one statement outside an explicit transaction (it is its own), retrying it on a
    /// serialization failure or deadlock like [`Self::transaction`].
    async fn statement<D, T, F>(&self, op: &'static str, data: &D, work: F) -> Result<T>
    where
        D: Sync + ?Sized,
        T: Send,
        F: for<'a> Fn(&'a deadpool_postgres::ClientWrapper, &'a D) -> TxFuture<'a, T> + Send + Sync,
    {
        let mut attempt = 0u32;
        loop {
            let client = self.client(op).await?;
            match work(&client, data).await {
                Ok(value) => return Ok(value),
                Err(e) if retryable(&e) && attempt < MAX_RETRIES => {
                    attempt += 1;
                    drop(client);
                    let backoff = rand::random::<u64>() % (u64::from(attempt) * 5_000);
                    tokio::time::sleep(Duration::from_micros(backoff)).await;
                }
                Err(e) => return Err(backend(op, &e)),
            }
        }
    }
}

async fn read_version(client: &tokio_postgres::Client) -> Result<i64> {
    let exists: bool = client
        .query_one(&format!("SELECT to_regclass('{SCHEMA_TABLE}') IS NOT NULL"), &[])
        .await
        .map_err(|e| backend("schema version", &e))?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let version: Option<i32> = client
        .query_one(&format!("SELECT max(version) FROM {SCHEMA_TABLE}"), &[])
        .await
        .map_err(|e| backend("schema version", &e))?
        .get(0);
    Ok(i64::from(version.unwrap_or(0)))
}

/// Applies every migration the database lacks, all in one transaction under an advisory lock (a
/// replica starting at the same time waits, then finds the schema current).
async fn migrate(client: &mut deadpool_postgres::Object) -> Result<()> {
    let tx = client.transaction().await.map_err(|e| backend("migrate", &e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| backend("migrate", &e))?;
    let found = read_version(tx.client()).await?;
    if !(0..=SCHEMA_VERSION).contains(&found) {
        // Dropping the transaction rolls it back: nothing was changed.
        return Err(StorageError::UnknownSchema { found, known: SCHEMA_VERSION });
    }
    if found == SCHEMA_VERSION {
        return tx.commit().await.map_err(|e| backend("migrate", &e));
    }
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} (
             version INTEGER PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )"
    ))
    .await
    .map_err(|e| backend("migrate", &e))?;
    for (n, step) in MIGRATIONS.iter().enumerate().skip(usize::try_from(found).unwrap_or(0)) {
        let version =
            i32::try_from(n + 1).map_err(|_| StorageError::Backend("too many migrations".into()))?;
        tx.batch_execute(step).await.map_err(|e| backend("migrate", &e))?;
        tx.execute(&format!("INSERT INTO {SCHEMA_TABLE} (version) VALUES ($1)"), &[&version])
            .await
            .map_err(|e| backend("migrate", &e))?;
    }
    tx.commit().await.map_err(|e| backend("migrate", &e))?;
    tracing::info!(from = found, to = SCHEMA_VERSION, "postgres schema migrated");
    Ok(())
}

/// Remembers `token` unless its `jti` is already known; `false` if it was.
async fn spend_token(
    tx: &Transaction<'_>,
    token: &TokenUse,
) -> std::result::Result<bool, tokio_postgres::Error> {
    let stmt = tx
        .prepare_cached("INSERT INTO used_tokens (jti, expires) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING")
        .await?;
    Ok(tx.execute(&stmt, &[&token.jti, &unix_sql(token.expires_unix)]).await? == 1)
}

/// A `fed_pending` row as read: batch ID, sequence number, creation time, records.
type PendingRow = (Vec<u8>, i64, i64, Vec<Vec<u8>>);

fn pending_from_sql(country: CountryCode, row: PendingRow) -> Result<OutboundBatch> {
    let (id, seq, created, records) = row;
    let bad = || StorageError::Backend("stored federation batch malformed".into());
    Ok(OutboundBatch {
        country,
        id: <[u8; 16]>::try_from(id).map_err(|_| bad())?,
        seq: u64::try_from(seq).map_err(|_| bad())?,
        created: u32::try_from(created).map_err(|_| bad())?,
        records,
    })
}

/// A `users` row and its LEE_A as read, before conversion.
type UserRow = (Vec<u8>, bool, bool, Option<i32>, Vec<(i32, i64, i64, i64)>);

impl Storage for PostgresStorage {
    async fn insert_user(&self, id: Id, wrapped_keys: Vec<u8>) -> Result<bool> {
        self.statement("insert user", &wrapped_keys, move |c, keys| {
            Box::pin(async move {
                let stmt = c
                    .prepare_cached(
                        "INSERT INTO users (id, keys) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
                    )
                    .await?;
                Ok(c.execute(&stmt, &[&id_sql(id), keys]).await? == 1)
            })
        })
        .await
    }

    async fn spend_token(&self, token: TokenUse) -> Result<bool> {
        // One statement: a racing insert of the same jti waits for this one, then does nothing.
        self.statement("spend token", &token, |c, token| {
            Box::pin(async move {
                let stmt = c
                    .prepare_cached(
                        "INSERT INTO used_tokens (jti, expires) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING",
                    )
                    .await?;
                Ok(c.execute(&stmt, &[&token.jti, &unix_sql(token.expires_unix)]).await? == 1)
            })
        })
        .await
    }

    async fn register_user(&self, token: TokenUse, id: Id, wrapped_keys: Vec<u8>) -> Result<RegisterOutcome> {
        self.transaction("register user", false, &(token, wrapped_keys), move |tx, data| {
            Box::pin(async move {
                let (token, keys) = data;
                // The ID first: a taken ID changes nothing (the token stays unspent for the retry).
                let insert = tx
                    .prepare_cached(
                        "INSERT INTO users (id, keys) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
                    )
                    .await?;
                if tx.execute(&insert, &[&id_sql(id), keys]).await? == 0 {
                    return Ok(RegisterOutcome::IdTaken);
                }
                if !spend_token(tx, token).await? {
                    // A replayed challenge: take back the row this transaction inserted, so that
                    // it commits nothing.
                    let undo = tx.prepare_cached("DELETE FROM users WHERE id = $1").await?;
                    tx.execute(&undo, &[&id_sql(id)]).await?;
                    return Ok(RegisterOutcome::TokenSpent);
                }
                Ok(RegisterOutcome::Registered)
            })
        })
        .await
    }

    async fn load_user(&self, id: Id) -> Result<Option<UserRecord>> {
        // One statement, so the row and its LEE_A come from one snapshot.
        let row: Option<UserRow> = self
            .statement("load user", &(), move |c, _| {
                Box::pin(async move {
                    let stmt = c
                        .prepare_cached(
                            "SELECT u.keys, u.notified, u.acknowledged, u.sre,
                                    e.epoch, e.hellos, e.rssi_sum, e.rssi_count
                             FROM users u LEFT JOIN exposures e ON e.id = u.id
                             WHERE u.id = $1 ORDER BY e.epoch",
                        )
                        .await?;
                    let rows = c.query(&stmt, &[&id_sql(id)]).await?;
                    let Some(first) = rows.first() else {
                        return Ok(None);
                    };
                    let mut exposures = Vec::with_capacity(rows.len());
                    for row in &rows {
                        if let Some(epoch) = row.get::<_, Option<i32>>(4) {
                            exposures.push((epoch, row.get(5), row.get(6), row.get(7)));
                        }
                    }
                    Ok(Some((first.get(0), first.get(1), first.get(2), first.get(3), exposures)))
                })
            })
            .await?;
        let Some((wrapped_keys, notified, acknowledged, sre, exposures)) = row else {
            return Ok(None);
        };
        let exposures = exposures
            .into_iter()
            .map(|(epoch, hellos, rssi_sum, rssi_count)| {
                Ok(Exposure {
                    epoch: epoch_from_sql(epoch)?,
                    hellos: count_from_sql(hellos),
                    rssi_sum,
                    rssi_count: count_from_sql(rssi_count),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(UserRecord {
            wrapped_keys,
            notified,
            acknowledged,
            last_status_epoch: sre.map(epoch_from_sql).transpose()?,
            exposures,
        }))
    }

    async fn load_user_keys(&self, ids: Vec<Id>) -> Result<Vec<(Id, Vec<u8>)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = ids.into_iter().map(id_sql).collect();
        let rows: Vec<(i64, Vec<u8>)> = self
            .statement("load user keys", &ids, |c, ids| {
                Box::pin(async move {
                    let stmt = c.prepare_cached("SELECT id, keys FROM users WHERE id = ANY($1)").await?;
                    Ok(c.query(&stmt, &[ids]).await?.iter().map(|row| (row.get(0), row.get(1))).collect())
                })
            })
            .await?;
        rows.into_iter().map(|(id, keys)| Ok((id_from_sql(id)?, keys))).collect()
    }

    async fn status_request(
        &self,
        id: Id,
        now: Epoch,
        min_interval: u32,
        at_risk: bool,
    ) -> Result<StatusOutcome> {
        // §7 steps 7–8 as one conditional update, written with other ESRs by the group committer
        // ([`EsrBatcher`]). A concurrent ESR of the same ID (here or on another replica) waits for
        // this row lock, then re-evaluates the WHERE on the row written here (sre = now): inside T,
        // it matches nothing. Signed arithmetic: a `now` before SRE_A (skew between replicas'
        // clocks) is "too early" too.
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = EsrJob {
            id: id_sql(id),
            now: epoch_sql(now),
            min_interval: i64::from(min_interval),
            at_risk,
            reply,
        };
        self.esr.as_ref().ok_or(StorageError::Closed)?.send(job).map_err(|_| StorageError::Closed)?;
        let answered = answer.await.map_err(|_| StorageError::Closed)??;
        Ok(match answered {
            Some(at_risk) => StatusOutcome::Answer { at_risk },
            None => StatusOutcome::Rejected,
        })
    }

    async fn acknowledge(&self, id: Id) -> Result<bool> {
        self.statement("acknowledge", &(), move |c, _| {
            Box::pin(async move {
                let stmt = c
                    .prepare_cached("UPDATE users SET acknowledged = TRUE WHERE id = $1 AND notified")
                    .await?;
                Ok(c.execute(&stmt, &[&id_sql(id)]).await? == 1)
            })
        })
        .await
    }

    async fn reset_status(&self, id: Id, token: TokenUse) -> Result<bool> {
        self.transaction("reset status", false, &token, move |tx, token| {
            Box::pin(async move {
                // Lock the row first: an ESR or an unregistration of this ID waits for the reset.
                let lock = tx.prepare_cached("SELECT 1 FROM users WHERE id = $1 FOR UPDATE").await?;
                if tx.query_opt(&lock, &[&id_sql(id)]).await?.is_none() || !spend_token(tx, token).await? {
                    return Ok(false);
                }
                let clear = tx
                    .prepare_cached("UPDATE users SET notified = FALSE, acknowledged = FALSE WHERE id = $1")
                    .await?;
                tx.execute(&clear, &[&id_sql(id)]).await?;
                let forget = tx.prepare_cached("DELETE FROM exposures WHERE id = $1").await?;
                tx.execute(&forget, &[&id_sql(id)]).await?;
                Ok(true)
            })
        })
        .await
    }

    async fn unregister(&self, id: Id) -> Result<bool> {
        // LEE_A goes with the row (ON DELETE CASCADE), in the same statement.
        self.statement("unregister", &(), move |c, _| {
            Box::pin(async move {
                let stmt = c.prepare_cached("DELETE FROM users WHERE id = $1").await?;
                Ok(c.execute(&stmt, &[&id_sql(id)]).await? == 1)
            })
        })
        .await
    }

    async fn delete_history(&self, id: Id) -> Result<bool> {
        self.statement("delete history", &(), move |c, _| {
            Box::pin(async move {
                let stmt = c
                    .prepare_cached(
                        "WITH gone AS (DELETE FROM exposures WHERE id = $1)
                         SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)",
                    )
                    .await?;
                Ok(c.query_one(&stmt, &[&id_sql(id)]).await?.get(0))
            })
        })
        .await
    }

    async fn submit_report(&self, token: TokenUse, entries: Vec<PoolEntry>) -> Result<bool> {
        let slots: Vec<&[u8]> = entries.iter().map(|e| &e.slot[..]).collect();
        let records: Vec<&[u8]> = entries.iter().map(|e| &e.record[..]).collect();
        self.transaction("submit report", false, &(token, slots, records), |tx, data| {
            Box::pin(async move {
                let (token, slots, records) = data;
                if !spend_token(tx, token).await? {
                    return Ok(false);
                }
                if !slots.is_empty() {
                    // The whole declaration in one statement. A slot already taken (a caller bug:
                    // slots are 128 random bits) fails it, and the transaction stores nothing.
                    let stmt = tx
                        .prepare_cached(
                            "INSERT INTO pool (slot, record) SELECT * FROM unnest($1::bytea[], $2::bytea[])",
                        )
                        .await?;
                    tx.execute(&stmt, &[slots, records]).await?;
                }
                Ok(true)
            })
        })
        .await
    }

    async fn pool_take(&self, max: usize) -> Result<Vec<PoolEntry>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        // A random starting slot, wrapping around: replicas' mixers start in different places.
        let start: [u8; 16] = rand::random();
        let rows: Vec<(Vec<u8>, Vec<u8>)> = self
            .statement("pool take", &start, move |c, start| {
                let start = &start[..];
                Box::pin(async move {
                    let stmt = c
                        .prepare_cached(
                            "(SELECT slot, record FROM pool WHERE slot >= $1 ORDER BY slot LIMIT $2)
                             UNION ALL
                             (SELECT slot, record FROM pool WHERE slot < $1 ORDER BY slot LIMIT $2)
                             LIMIT $2",
                        )
                        .await?;
                    Ok(c.query(&stmt, &[&start, &limit])
                        .await?
                        .iter()
                        .map(|r| (r.get(0), r.get(1)))
                        .collect())
                })
            })
            .await?;
        rows.into_iter().map(|(slot, record)| Ok(PoolEntry { slot: slot_from_sql(slot)?, record })).collect()
    }

    async fn pool_commit(&self, batch: ProcessedBatch) -> Result<u64> {
        let mut slots: Vec<[u8; 16]> = batch.slots.clone();
        slots.sort_unstable();
        slots.dedup();
        let slot_refs: Vec<&[u8]> = slots.iter().map(|s| &s[..]).collect();
        self.transaction("pool commit", true, &(slot_refs, batch), |tx, data| {
            Box::pin(async move {
                let (slot_refs, batch) = data;
                // §6.2 step 10: claim and erase. Slots another mixer is erasing right now are
                // skipped (they are that mixer's); slots already erased are not found.
                let claim = tx
                    .prepare_cached(
                        "DELETE FROM pool WHERE slot IN (
                             SELECT slot FROM pool WHERE slot = ANY($1) ORDER BY slot FOR UPDATE SKIP LOCKED)
                         RETURNING slot",
                    )
                    .await?;
                let erased: HashSet<Vec<u8>> =
                    tx.query(&claim, &[slot_refs]).await?.into_iter().map(|r| r.get(0)).collect();
                if erased.is_empty() {
                    return Ok(0);
                }
                // §6.2 step 9 for the erased slots only, summed per (ID, epoch) so that the upsert
                // touches each row once, in (ID, epoch) order (one lock order for every mixer).
                let mut sums: BTreeMap<(i64, i32), (i64, i64, i64)> = BTreeMap::new();
                for (id, e, slot) in &batch.exposures {
                    if erased.contains(&slot[..]) {
                        let sum = sums.entry((id_sql(*id), epoch_sql(e.epoch))).or_default();
                        sum.0 = sum.0.saturating_add(i64::from(e.hellos));
                        sum.1 = sum.1.saturating_add(e.rssi_sum);
                        sum.2 = sum.2.saturating_add(i64::from(e.rssi_count));
                    }
                }
                if !sums.is_empty() {
                    let mut cols = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
                    for ((id, epoch), (hellos, rssi_sum, rssi_count)) in sums {
                        cols.0.push(id);
                        cols.1.push(epoch);
                        cols.2.push(hellos);
                        cols.3.push(rssi_sum);
                        cols.4.push(rssi_count);
                    }
                    // IDs no longer registered are dropped by the join.
                    let add = tx
                        .prepare_cached(
                            "INSERT INTO exposures (id, epoch, hellos, rssi_sum, rssi_count)
                             SELECT x.id, x.epoch, x.hellos, x.rssi_sum, x.rssi_count
                             FROM unnest($1::bigint[], $2::integer[], $3::bigint[], $4::bigint[], $5::bigint[])
                                  AS x (id, epoch, hellos, rssi_sum, rssi_count)
                             JOIN users u ON u.id = x.id
                             ORDER BY x.id, x.epoch
                             ON CONFLICT (id, epoch) DO UPDATE SET
                                 hellos = exposures.hellos + excluded.hellos,
                                 rssi_sum = exposures.rssi_sum + excluded.rssi_sum,
                                 rssi_count = exposures.rssi_count + excluded.rssi_count",
                        )
                        .await?;
                    tx.execute(&add, &[&cols.0, &cols.1, &cols.2, &cols.3, &cols.4]).await?;
                }
                // §6.2 step 3: pairs for another country, of the erased slots only.
                let (ccs, records): (Vec<i16>, Vec<&[u8]>) = batch
                    .outbox
                    .iter()
                    .filter(|(_, _, slot)| erased.contains(&slot[..]))
                    .map(|(cc, record, _)| (i16::from(cc.value()), &record[..]))
                    .unzip();
                if !ccs.is_empty() {
                    let push = tx
                        .prepare_cached("INSERT INTO outbox (cc, record) SELECT * FROM unnest($1::smallint[], $2::bytea[])")
                        .await?;
                    tx.execute(&push, &[&ccs, &records]).await?;
                }
                Ok(erased.len() as u64)
            })
        })
        .await
    }

    async fn expire(
        &self,
        lee_before: Epoch,
        tokens_before_unix: u64,
        keys_before_day: u32,
    ) -> Result<ExpiryStats> {
        let lee_before = epoch_sql(lee_before);
        let tokens_before = unix_sql(tokens_before_unix);
        // Days past i32 cannot be stored, so "before" such a day is "every stored day".
        let keys_before = i32::try_from(keys_before_day).unwrap_or(i32::MAX);
        self.transaction("expire", false, &(), move |tx, _| {
            Box::pin(async move {
                // Range deletes on the epoch and expiry indexes.
                let exposures = tx.execute("DELETE FROM exposures WHERE epoch < $1", &[&lee_before]).await?;
                let tokens =
                    tx.execute("DELETE FROM used_tokens WHERE expires < $1", &[&tokens_before]).await?;
                let server_keys =
                    tx.execute("DELETE FROM server_keys WHERE day < $1", &[&keys_before]).await?;
                Ok(ExpiryStats { exposures, tokens, server_keys })
            })
        })
        .await
    }

    async fn put_server_key(&self, day: u32, wrapped: Vec<u8>) -> Result<Vec<u8>> {
        let day = day_sql(day)?;
        // Two statements in autocommit: the second takes a fresh snapshot, so it sees the key
        // another replica committed while the insert waited for it.
        self.statement("put server key", &wrapped, move |c, wrapped| {
            Box::pin(async move {
                let put = c
                    .prepare_cached(
                        "INSERT INTO server_keys (day, wrapped) VALUES ($1, $2) ON CONFLICT (day) DO NOTHING",
                    )
                    .await?;
                c.execute(&put, &[&day, wrapped]).await?;
                let get = c.prepare_cached("SELECT wrapped FROM server_keys WHERE day = $1").await?;
                Ok(c.query_one(&get, &[&day]).await?.get(0))
            })
        })
        .await
    }

    async fn server_keys(&self) -> Result<Vec<(u32, Vec<u8>)>> {
        let rows: Vec<(i32, Vec<u8>)> = self
            .statement("server keys", &(), |c, _| {
                Box::pin(async move {
                    let stmt = c.prepare_cached("SELECT day, wrapped FROM server_keys ORDER BY day").await?;
                    Ok(c.query(&stmt, &[]).await?.iter().map(|r| (r.get(0), r.get(1))).collect())
                })
            })
            .await?;
        rows.into_iter()
            .map(|(day, wrapped)| {
                let day = u32::try_from(day)
                    .map_err(|_| StorageError::Backend("stored day out of range".into()))?;
                Ok((day, wrapped))
            })
            .collect()
    }

    async fn pool_depth(&self) -> Result<u64> {
        let n: i64 = self
            .statement("pool depth", &(), |c, _| {
                Box::pin(async move {
                    let stmt = c.prepare_cached("SELECT count(*) FROM pool").await?;
                    Ok(c.query_one(&stmt, &[]).await?.get(0))
                })
            })
            .await?;
        Ok(u64_from_sql(n))
    }

    async fn federation_next_batch(
        &self,
        country: CountryCode,
        max: usize,
        fresh_id: [u8; 16],
        now: u32,
    ) -> Result<Option<OutboundBatch>> {
        let limit = i64::try_from(max.max(1)).unwrap_or(i64::MAX);
        let cc = i16::from(country.value());
        let row: Option<PendingRow> = self
            .transaction("federation next batch", false, &fresh_id, move |tx, fresh_id| {
                Box::pin(async move {
                    // One sealer per country at a time, across replicas; every statement after the
                    // lock sees what the previous holder committed (READ COMMITTED).
                    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&(FEDERATION_LOCK + i64::from(cc))])
                        .await?;
                    let pending = tx
                        .prepare_cached(
                            "SELECT batch_id, seq, created, records FROM fed_pending WHERE cc = $1",
                        )
                        .await?;
                    if let Some(r) = tx.query_opt(&pending, &[&cc]).await? {
                        return Ok(Some((r.get(0), r.get(1), r.get(2), r.get(3))));
                    }
                    let take = tx
                        .prepare_cached(
                            "DELETE FROM outbox WHERE seq IN (
                                 SELECT seq FROM outbox WHERE cc = $1 ORDER BY seq LIMIT $2)
                             RETURNING seq, record",
                        )
                        .await?;
                    let mut taken: Vec<(i64, Vec<u8>)> =
                        tx.query(&take, &[&cc, &limit]).await?.iter().map(|r| (r.get(0), r.get(1))).collect();
                    if taken.is_empty() {
                        return Ok(None);
                    }
                    taken.sort_unstable_by_key(|(seq, _)| *seq);
                    let records: Vec<Vec<u8>> = taken.into_iter().map(|(_, r)| r).collect();
                    let next = tx
                        .prepare_cached(
                            "INSERT INTO fed_sequence (cc, last_seq) VALUES ($1, 1)
                             ON CONFLICT (cc) DO UPDATE SET last_seq = fed_sequence.last_seq + 1
                             RETURNING last_seq",
                        )
                        .await?;
                    let seq: i64 = tx.query_one(&next, &[&cc]).await?.get(0);
                    let created = i64::from(now);
                    let seal = tx
                        .prepare_cached(
                            "INSERT INTO fed_pending (cc, batch_id, seq, created, records)
                             VALUES ($1, $2, $3, $4, $5)",
                        )
                        .await?;
                    tx.execute(&seal, &[&cc, &&fresh_id[..], &seq, &created, &records]).await?;
                    Ok(Some((fresh_id.to_vec(), seq, created, records)))
                })
            })
            .await?;
        row.map(|r| pending_from_sql(country, r)).transpose()
    }

    async fn federation_batch_done(&self, country: CountryCode, id: [u8; 16]) -> Result<bool> {
        let cc = i16::from(country.value());
        self.statement("federation batch done", &id, move |c, id| {
            Box::pin(async move {
                let stmt =
                    c.prepare_cached("DELETE FROM fed_pending WHERE cc = $1 AND batch_id = $2").await?;
                Ok(c.execute(&stmt, &[&cc, &&id[..]]).await? == 1)
            })
        })
        .await
    }

    async fn federation_depths(&self) -> Result<Vec<(CountryCode, u64)>> {
        let rows: Vec<(i16, i64)> = self
            .statement("federation depths", &(), |c, _| {
                Box::pin(async move {
                    let stmt = c
                        .prepare_cached(
                            "SELECT cc, sum(n)::bigint FROM (
                                 SELECT cc, count(*) AS n FROM outbox GROUP BY cc
                                 UNION ALL SELECT cc, cardinality(records)::bigint AS n FROM fed_pending
                             ) AS d GROUP BY cc HAVING sum(n) > 0 ORDER BY cc",
                        )
                        .await?;
                    Ok(c.query(&stmt, &[]).await?.iter().map(|r| (r.get(0), r.get(1))).collect())
                })
            })
            .await?;
        rows.into_iter()
            .map(|(cc, n)| {
                let cc = u8::try_from(cc)
                    .map_err(|_| StorageError::Backend("stored country code out of range".into()))?;
                Ok((CountryCode::new(cc), u64_from_sql(n)))
            })
            .collect()
    }

    async fn stats(&self) -> Result<Stats> {
        let (users, pool_depth, outbox_depth): (i64, i64, i64) = self
            .statement("stats", &(), |c, _| {
                Box::pin(async move {
                    let stmt = c
                        .prepare_cached(
                            "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM pool),
                                    (SELECT count(*) FROM outbox)
                                      + (SELECT coalesce(sum(cardinality(records)), 0) FROM fed_pending)",
                        )
                        .await?;
                    let row = c.query_one(&stmt, &[]).await?;
                    Ok((row.get(0), row.get(1), row.get(2)))
                })
            })
            .await?;
        Ok(Stats {
            users: u64_from_sql(users),
            pool_depth: u64_from_sql(pool_depth),
            outbox_depth: u64_from_sql(outbox_depth),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_checked() {
        for good in ["robert", "contract_12_3", "_x"] {
            assert!(valid_schema_name(good), "{good}");
        }
        for bad in ["", "Robert", "1abc", "a-b", "a;drop", "a b", &"x".repeat(64)] {
            assert!(!valid_schema_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_bad_url_is_refused_without_echoing_it() {
        let e = parse_url("postgres://robert:s3cret@host:notaport/db").expect_err("bad port");
        let message = e.to_string();
        assert!(message.contains("invalid PostgreSQL URL"), "{message}");
        assert!(!message.contains("s3cret"), "the password is not echoed: {message}");
    }

    #[test]
    fn migrations_are_numbered_from_one() {
        assert_eq!(SCHEMA_VERSION, MIGRATIONS.len() as i64);
        assert!(MIGRATIONS[0].contains("CREATE TABLE users"));
        assert!(MIGRATIONS[1].contains("CREATE TABLE fed_pending"));
    }
}
