//! [`SqliteStorage`]: the embedded default backend, one SQLite file in WAL mode.
//!
//! What it guarantees:
//! - **Atomic, serialized writes.** Every write method is a command sent to one dedicated OS thread
//!   that owns the only write connection. Commands run one after the other, each inside its own
//!   `SAVEPOINT`, so each is atomic, and two commands never interleave (which is what makes
//!   [`Storage::status_request`]'s check-and-set safe: within one process there is no race to lose).
//! - **Durable before answered, with group commit.** The thread drains every pending command (up to
//!   [`MAX_GROUP`]), runs them in *one* transaction and commits once, then answers each caller. With
//!   `fsync = true` (`PRAGMA synchronous = FULL`) the commit reaches the disk before any caller is
//!   answered, and concurrent callers share that one fsync. With `fsync = false`
//!   (`synchronous = NORMAL`) a commit survives a crash of the process but not a power loss.
//!   A command that fails rolls back alone (its savepoint) and gets its own error; if the commit
//!   itself fails, every command of the group gets an error, and none of them happened.
//! - **ESRs append, folds rewrite.** What an ESR changes (SRE_A, UN_A) is appended to a status
//!   journal in the same transaction and folded into `user_status` in key order, a slice per group
//!   once it holds [`JOURNAL_FOLD_ROWS`] rows, whole when the writer is idle (see
//!   [`super::status_journal`]): one page write per hundred-odd ESRs instead of one random page
//!   each. An unregistered user's last ESR epoch and UN_A stay in the journal until the next
//!   fold (never their keys).
//! - **A declaration is one row until mixed; LEE_A is keyed by (epoch, ID).** The pool holds a
//!   declaration's pairs in one row, deleted once they are all processed (see
//!   [`super::sqlite_pool`]); LEE_A needs no second index (expiry deletes a key range, an ID's
//!   rows are found from the IDTable). Per pair, one B-tree write at a random place (its LEE_A
//!   row) instead of four.
//! - **The IDTable is read from memory.** The writer keeps every registered ID's row and LEE_A in
//!   an [`IdTable`] (loaded from the file when the store opens: about 164 bytes per ID plus LEE_A).
//!   Each command that changes the IDTable decides on that table, writes the database, and
//!   changes the table as its last step; if its transaction is then lost (rolled back, commit
//!   failed), the writer reads the table back from the file; if even that fails, it refuses every
//!   command until a later read-back succeeds. [`Storage::load_user`] and
//!   [`Storage::load_user_keys`] (an ESR's read, the mixer's key lookups) are a hash lookup under
//!   a read lock, and see every write already answered. Because of this table, one process only
//!   may use a database file (see [`SqliteStorage::open`]).
//! - **Concurrent reads of the rest.** [`Storage::pool_take`], [`Storage::server_keys`] and the
//!   federation and metrics reads run on a small pool of read-only connections (WAL lets them
//!   read while the writer writes) on tokio's blocking threads.
//! - **Versioned schema.** `PRAGMA user_version` holds the schema version; [`SqliteStorage::open`]
//!   applies the missing migrations and refuses ([`StorageError::UnknownSchema`]) a database written
//!   by a newer binary.
//! - **Erased means erased.** The write connection runs with `secure_delete = ON` (deleted rows are
//!   overwritten with zeros in their page), and after the mixer erased pool entries the writer
//!   checkpoints and truncates the WAL as soon as it is idle (at most [`SCRUB_MAX_DELAY`] later
//!   under continuous load), so the uploaded pairs (§6.2 step 10) and unregistered users' keys do
//!   not linger in the file or in old WAL frames.
//! - **Clean shutdown.** Dropping the storage lets the writer finish every command already sent,
//!   then joins it; a call made after the writer is gone gets [`StorageError::Closed`].
//!
//! One process per file: the IDTable in memory would not see another process's writes. Run one
//! `robert serve` per SQLite file, PostgreSQL for several replicas.
//!
//! Error messages carry SQLite's own text (table and constraint names), never a bound value, so
//! never an ID or key bytes.

use super::id_table::{IdTable, add_exposure};
use super::sqlite_pool::{self, PoolIndex};
use super::status_journal::{FoldPass, Journal, Pending, Slice};
use super::{
    ExpiryStats, Exposure, OutboundBatch, PoolEntry, ProcessedBatch, RegisterOutcome, Result, Stats,
    StatusOutcome, Storage, StorageError, TokenUse, UserRecord,
};
use robert_proto::{CountryCode, Epoch, Id};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::oneshot;

/// Most commands run in one transaction: bounds the latency a group adds to its first command.
pub const MAX_GROUP: usize = 4096;

/// Under concurrent load with fsync on, the writer commits at most once per this long: it
/// gathers the commands that arrive meanwhile into the same group (PostgreSQL's `commit_delay`,
/// in spirit). Each commit's fsync costs CPU on a virtual machine (a VM exit per flush), not only
/// time: at 1 M IDs under `robert bench status` this took the CPU per ESR (server and load
/// generator) from 44-47 µs to 38-41 µs in alternating runs. A command that finds the writer
/// idle after a group of one (a lone caller) never waits.
const COMMIT_PACE: Duration = Duration::from_millis(1);

/// Most reads running at once, each on its own read-only connection; the connections stay open.
/// Enough to keep every core busy while some reads wait on the disk. Opening a connection costs
/// far more than a point read (schema parse, WAL index mapping), so a read waits for a free one
/// rather than opening more.
fn max_readers() -> usize {
    std::thread::available_parallelism().map_or(4, |n| n.get() * 4).clamp(4, 64)
}

/// Bytes of the database file the *write* connection maps into memory (`PRAGMA mmap_size`): reads of
/// mapped pages need no system call and no copy. Address space only; the OS page cache backs it.
const MMAP_BYTES: i64 = 1 << 30;

/// Page cache of the write connection (`PRAGMA cache_size`, negative = KiB): the B-tree interior
/// pages of every table stay cached, so a write descends without reading.
const WRITER_CACHE_KIB: i64 = 64 * 1024;

/// WAL size (pages of 4 KiB) at which a commit checkpoints it into the database file: 64 MiB.
const WAL_AUTOCHECKPOINT_PAGES: i64 = 16 * 1024;

/// Rows of the status journal at which the writer starts folding it into `user_status`, in slices
/// of about a millisecond within the groups that follow (see [`super::status_journal`]): about
/// 10 MB of memory. The larger, the fewer times each `user_status` page is rewritten per ESR.
pub const JOURNAL_FOLD_ROWS: u64 = 1 << 18;

/// An idle writer folds whatever the journal holds after this long without a command.
const JOURNAL_FOLD_IDLE: Duration = Duration::from_secs(1);

/// How long a connection waits for a lock held by another process before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the WAL scrub waits for readers on an older snapshot before trying again later.
const SCRUB_BUSY_TIMEOUT: Duration = Duration::from_millis(200);

/// When idle with a scrub still to do, how often the writer retries it.
const SCRUB_RETRY: Duration = Duration::from_millis(100);

/// When idle with its memory stale (see [`Writer::stale`]), how often the writer tries to read
/// it back from the database again.
const RELOAD_RETRY: Duration = Duration::from_secs(1);

/// What a command gets while the writer's memory is stale.
const STALE: &str = "the writer could not read its state back from the database after a lost transaction; \
                     writes are refused until it can";

/// Under continuous load, the longest the writer defers a due scrub. A scrub is a full
/// checkpoint of the WAL, so it waits for an idle moment ([`SCRUB_RETRY`] without a command)
/// rather than following every mixer commit; erased pairs linger in old WAL frames at most this
/// long (plus the scrub itself) even if the writer is never idle.
const SCRUB_MAX_DELAY: Duration = Duration::from_secs(2);

/// Schema migrations: `MIGRATIONS[n]` takes `user_version` from `n` to `n + 1`. Append only; never
/// edit a migration that shipped.
const MIGRATIONS: &[&str] = &[
    // 1: initial schema. IDs are 40-bit integers (the rowid itself); epochs and days integers.
    "CREATE TABLE users (
         id INTEGER PRIMARY KEY,
         keys BLOB NOT NULL,
         notified INTEGER NOT NULL DEFAULT 0,
         acknowledged INTEGER NOT NULL DEFAULT 0,
         sre INTEGER
     );
     CREATE TABLE exposures (
         id INTEGER NOT NULL,
         epoch INTEGER NOT NULL,
         hellos INTEGER NOT NULL,
         rssi_sum INTEGER NOT NULL,
         rssi_count INTEGER NOT NULL,
         PRIMARY KEY (id, epoch)
     ) WITHOUT ROWID;
     CREATE INDEX exposures_by_epoch ON exposures (epoch);
     CREATE TABLE pool (
         slot BLOB PRIMARY KEY,
         record BLOB NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE used_tokens (
         jti TEXT PRIMARY KEY,
         expires INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE server_keys (
         day INTEGER PRIMARY KEY,
         wrapped BLOB NOT NULL
     );
     CREATE TABLE outbox (
         seq INTEGER PRIMARY KEY,
         cc INTEGER NOT NULL,
         record BLOB NOT NULL
     );",
    // 2: federation (§8). One pending batch per peer country (its records: len(1) ‖ record, in
    // outbox order), and each country's last batch sequence number.
    "CREATE INDEX outbox_by_cc ON outbox (cc, seq);
     CREATE TABLE fed_pending (
         cc INTEGER PRIMARY KEY,
         batch_id BLOB NOT NULL,
         seq INTEGER NOT NULL,
         created INTEGER NOT NULL,
         pairs INTEGER NOT NULL,
         records BLOB NOT NULL
     );
     CREATE TABLE fed_sequence (
         cc INTEGER PRIMARY KEY,
         last_seq INTEGER NOT NULL
     );",
    // 3: the status journal (storage/status_journal.rs): SRE_A / UN_A changes of ESRs, appended,
    // folded into `users` later. `state`: 0 not notified, 1 notified, 2 unregistered.
    "CREATE TABLE status_log (
         seq INTEGER PRIMARY KEY,
         id INTEGER NOT NULL,
         sre INTEGER,
         state INTEGER NOT NULL
     );",
    // 4: the pool one row per declaration (storage/sqlite_pool.rs: `slot(16) ‖ len(2) ‖ record`
    // per pair), and LEE_A keyed by (epoch, ID): expiry (footnote 17) deletes a range of the
    // key, so no second index is written with every exposure; an ID's rows are found from the
    // IDTable in memory.
    "CREATE TABLE pool_declarations (
         seq INTEGER PRIMARY KEY,
         entries BLOB NOT NULL
     );
     INSERT INTO pool_declarations (entries)
         SELECT CAST(slot || unhex(printf('%04x', length(record))) || record AS BLOB) FROM pool;
     DROP TABLE pool;
     ALTER TABLE exposures RENAME TO exposures_v3;
     CREATE TABLE exposures (
         epoch INTEGER NOT NULL,
         id INTEGER NOT NULL,
         hellos INTEGER NOT NULL,
         rssi_sum INTEGER NOT NULL,
         rssi_count INTEGER NOT NULL,
         PRIMARY KEY (epoch, id)
     ) WITHOUT ROWID;
     INSERT INTO exposures (epoch, id, hellos, rssi_sum, rssi_count)
         SELECT epoch, id, hellos, rssi_sum, rssi_count FROM exposures_v3;
     DROP TABLE exposures_v3;",
    // 5: SRE_A and UN_A in a table of their own, one short row per ID that has had an ESR
    // (storage/status_journal.rs): a fold rewrites a page per ~300 IDs instead of per ~30
    // `users` rows (each carries its wrapped keys).
    "CREATE TABLE user_status (
         id INTEGER PRIMARY KEY,
         sre INTEGER,
         notified INTEGER NOT NULL
     );
     INSERT INTO user_status (id, sre, notified)
         SELECT id, sre, notified FROM users WHERE sre IS NOT NULL OR notified != 0;
     ALTER TABLE users DROP COLUMN sre;
     ALTER TABLE users DROP COLUMN notified;",
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Maps a rusqlite error to [`StorageError::Backend`] without any bound value: SQLite's own message
/// names tables and constraints only; rusqlite's conversion errors, which can quote a value, are
/// reduced to their kind.
fn backend(op: &'static str, e: rusqlite::Error) -> StorageError {
    let detail = match &e {
        rusqlite::Error::SqliteFailure(code, msg) => {
            format!("{:?} ({}): {}", code.code, code.extended_code, msg.as_deref().unwrap_or(""))
        }
        rusqlite::Error::SqlInputError { error, msg, .. } => format!("{:?}: {msg}", error.code),
        rusqlite::Error::QueryReturnedNoRows => "no rows".to_owned(),
        rusqlite::Error::IntegralValueOutOfRange(column, _) => {
            format!("integer out of range in column {column}")
        }
        rusqlite::Error::InvalidColumnType(column, _, ty) => {
            format!("unexpected {ty} in column {column}")
        }
        rusqlite::Error::FromSqlConversionFailure(column, ty, _) => {
            format!("cannot convert {ty} in column {column}")
        }
        _ => "driver error".to_owned(),
    };
    StorageError::Backend(format!("{op}: {detail}"))
}

/// A second copy of an error, for the commands of a group that all fail for one reason.
fn same_error(e: &StorageError) -> StorageError {
    match e {
        StorageError::Backend(m) => StorageError::Backend(m.clone()),
        StorageError::UnknownSchema { found, known } => {
            StorageError::UnknownSchema { found: *found, known: *known }
        }
        StorageError::Closed => StorageError::Closed,
    }
}

fn id_sql(id: Id) -> i64 {
    // 40 bits: always fits.
    id.value() as i64
}

fn unix_sql(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

fn count_from_sql(v: i64) -> u32 {
    // Counts only grow by addition of u32s; saturate like the reference backend.
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

// ---------------------------------------------------------------------------------------------
// The writer thread.

/// How the writer runs a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// In a savepoint of its own within the group's transaction: it is undone alone if it fails.
    Savepoint,
    /// No savepoint (two statements fewer per command: an ESR is one of these). SQLite undoes a
    /// failed statement by itself, so this fits a command of one statement that changes the
    /// database, or of several where what the earlier ones did may stand if a later one fails
    /// (a registration's spent challenge without its user).
    OneStatement,
    /// In a savepoint, and it erases uploaded pairs: the WAL is scrubbed after it commits.
    Scrubs,
}

/// A write command, type-erased so that commands of every method share one channel.
trait Job: Send {
    /// Runs the command on the write connection (inside its savepoint). Returns whether it
    /// succeeded (so the savepoint is released, not rolled back), and what to answer once the
    /// group's commit is known.
    fn run(self: Box<Self>, conn: &Connection, table: &RwLock<IdTable>) -> (bool, Box<dyn Reply>);
    /// Answers the caller with an error without running the command.
    fn abort(self: Box<Self>, error: StorageError);
    /// How to run it.
    fn mode(&self) -> Mode;
}

/// The answer of a command that ran, sent once the commit succeeded or failed.
trait Reply: Send {
    fn send(self: Box<Self>, commit: std::result::Result<(), &StorageError>);
}

struct Command<T, F> {
    op: &'static str,
    mode: Mode,
    work: F,
    reply: oneshot::Sender<Result<T>>,
}

struct Ready<T> {
    result: Result<T>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> Job for Command<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection, &RwLock<IdTable>) -> rusqlite::Result<T> + Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection, table: &RwLock<IdTable>) -> (bool, Box<dyn Reply>) {
        let Command { op, work, reply, .. } = *self;
        let result = work(conn, table).map_err(|e| backend(op, e));
        (result.is_ok(), Box::new(Ready { result, reply }))
    }

    fn abort(self: Box<Self>, error: StorageError) {
        // The caller may have gone away (its future dropped): nobody left to tell.
        let _ = self.reply.send(Err(error));
    }

    fn mode(&self) -> Mode {
        self.mode
    }
}

impl<T: Send + 'static> Reply for Ready<T> {
    fn send(self: Box<Self>, commit: std::result::Result<(), &StorageError>) {
        let answer = match (self.result, commit) {
            (Ok(value), Ok(())) => Ok(value),
            (Ok(_), Err(e)) => Err(same_error(e)),
            (Err(e), _) => Err(e),
        };
        // As in `abort`: a caller that stopped waiting is not an error here.
        let _ = self.reply.send(answer);
    }
}

struct Writer {
    conn: Connection,
    commits: Arc<AtomicU64>,
    /// Pool entries were erased since the WAL was last truncated.
    scrub_pending: bool,
    /// When the last scrub completed (or the writer started).
    last_scrub: std::time::Instant,
    /// The status journal, shared with the readers.
    journal: Arc<Journal>,
    /// Fold the journal when it holds this many rows.
    fold_rows: u64,
    /// The fold in slices under way, if any.
    pass: Option<FoldPass>,
    /// The in-memory IDTable: each command changes it as its last step; reloaded from the
    /// database if a transaction that changed it does not commit.
    table: Arc<RwLock<IdTable>>,
    /// Which pool row holds each slot; reloaded with the IDTable.
    pool: Arc<PoolIndex>,
    /// `synchronous = FULL`: commits are paced (see [`COMMIT_PACE`]).
    fsync: bool,
    /// When the last group ended, and whether it had more than one command (see [`COMMIT_PACE`]).
    last_commit: std::time::Instant,
    last_group_shared: bool,
    /// A transaction was lost and reading the journal, the IDTable or the pool index back from
    /// the database failed: the memory may hold changes the file does not. Until a later reload
    /// succeeds, every command is refused (its decision would rest on that memory, and a fold
    /// would make a lost change durable) and nothing is folded; reads still answer from memory.
    stale: bool,
    /// Failures injected by unit tests.
    #[cfg(test)]
    faults: Arc<Faults>,
}

/// Failures a unit test injects into the writer: the next `commits` COMMITs fail as a lost
/// transaction's would (the transaction is rolled back), the next `reloads` reloads fail.
#[cfg(test)]
#[derive(Debug, Default)]
struct Faults {
    commits: std::sync::atomic::AtomicUsize,
    reloads: std::sync::atomic::AtomicUsize,
}

#[cfg(test)]
impl Faults {
    /// Takes one injected failure from `n`, if any is left.
    fn take(n: &std::sync::atomic::AtomicUsize) -> bool {
        n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1)).is_ok()
    }

    fn error() -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR), None)
    }
}

impl Writer {
    fn run(mut self, commands: mpsc::Receiver<Box<dyn Job>>) {
        loop {
            let idle_work = if self.stale {
                Some(RELOAD_RETRY)
            } else if self.scrub_pending {
                Some(SCRUB_RETRY)
            } else if self.journal.rows() > 0 {
                Some(JOURNAL_FOLD_IDLE)
            } else {
                None
            };
            let first = if let Some(wait) = idle_work {
                match commands.recv_timeout(wait) {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout) => {
                        if self.stale {
                            self.reload();
                        } else if self.scrub_pending {
                            self.scrub();
                        } else {
                            self.fold();
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match commands.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                }
            };
            // Under load, gather until COMMIT_PACE after the last commit: fewer, larger groups,
            // one fsync each. Sleeping (rather than waiting on the channel) spares a wake-up per
            // arriving command.
            if self.fsync && self.last_group_shared {
                let since = self.last_commit.elapsed();
                if since < COMMIT_PACE {
                    std::thread::sleep(COMMIT_PACE - since);
                }
            }
            let mut group = Vec::with_capacity(64);
            group.push(first);
            while group.len() < MAX_GROUP {
                match commands.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
            self.last_group_shared = group.len() > 1;
            if self.stale && !self.reload() {
                for job in group {
                    job.abort(StorageError::Backend(STALE.into()));
                }
                continue;
            }
            self.run_group(group);
            self.last_commit = std::time::Instant::now();
            if self.pass.is_none() && self.journal.rows() >= self.fold_rows {
                match self.journal.start_pass(&self.conn) {
                    Ok(pass) => self.pass = pass,
                    Err(e) => tracing::warn!(error = %backend("status journal fold", e), "sqlite writer"),
                }
            }
            if self.scrub_pending && self.last_scrub.elapsed() >= SCRUB_MAX_DELAY {
                self.scrub();
            }
        }
        // Every sender is gone and every command answered. The journal folded (the next open
        // replays less), and one last try at leaving no erased pair in the WAL; closing the
        // connection then checkpoints what is left.
        if self.journal.rows() > 0 && (!self.stale || self.reload()) {
            self.fold();
        }
        if self.scrub_pending {
            self.scrub();
        }
    }

    /// Runs one parameterless statement through the statement cache: the per-command
    /// `SAVEPOINT` / `RELEASE` are parsed once, not once per command.
    fn statement(&self, sql: &str) -> rusqlite::Result<()> {
        self.conn.prepare_cached(sql)?.execute([]).map(drop)
    }

    fn begin(&self) -> Result<()> {
        self.statement("BEGIN IMMEDIATE").map_err(|e| backend("begin", e))
    }

    /// Commits the open transaction.
    fn commit(&self) -> rusqlite::Result<()> {
        #[cfg(test)]
        if Faults::take(&self.faults.commits) {
            return Err(Faults::error());
        }
        self.statement("COMMIT")
    }

    /// Runs a command alone in its transaction, without a savepoint: the transaction gives it
    /// the same atomicity, and SQLite need not copy every page it changes into a savepoint
    /// journal first (the mixer's commits change thousands).
    fn run_alone(&mut self, job: Box<dyn Job>) {
        if let Err(e) = self.begin() {
            job.abort(e);
            return;
        }
        let scrubs = job.mode() == Mode::Scrubs;
        let (ok, reply) = job.run(&self.conn, &self.table);
        if !ok {
            // Its own failure: undo what it did; the reply carries its error. If even the
            // rollback fails, the next BEGIN reports it.
            let _ = self.conn.execute_batch("ROLLBACK");
            self.reload_journal();
            reply.send(Ok(()));
            return;
        }
        let slice = self.fold_slice();
        match self.commit() {
            Ok(()) => {
                self.commits.fetch_add(1, Ordering::Relaxed);
                self.scrub_pending |= scrubs;
                self.slice_committed(slice);
                reply.send(Ok(()));
            }
            Err(e) => {
                let e = backend("commit", e);
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                self.reload();
                reply.send(Err(&e));
            }
        }
    }

    /// Runs `group` in one transaction, one savepoint per command (except [`Mode::OneStatement`]
    /// commands), commits once, answers everyone.
    fn run_group(&mut self, group: Vec<Box<dyn Job>>) {
        if group.len() == 1 {
            if let Some(job) = group.into_iter().next() {
                self.run_alone(job);
            }
            return;
        }
        let mut ran: Vec<Box<dyn Reply>> = Vec::with_capacity(group.len());
        let mut scrub = false;
        let mut jobs = group.into_iter();
        if let Err(e) = self.begin() {
            for job in jobs {
                job.abort(same_error(&e));
            }
            return;
        }
        while let Some(job) = jobs.next() {
            let mode = job.mode();
            if mode != Mode::OneStatement
                && let Err(e) = self.statement("SAVEPOINT cmd")
            {
                let e = backend("savepoint", e);
                if self.conn.is_autocommit() {
                    // The transaction is gone: fail what it held, try a fresh one for the rest.
                    self.reload();
                    self.fail_all(&mut ran, &e);
                    job.abort(e);
                    if let Err(e) = self.begin() {
                        for job in jobs {
                            job.abort(same_error(&e));
                        }
                        return;
                    }
                } else {
                    job.abort(e);
                }
                continue;
            }
            let (ok, reply) = job.run(&self.conn, &self.table);
            let end = match (mode, ok) {
                (Mode::OneStatement, true) => Ok(()),
                (Mode::OneStatement, false) => {
                    // SQLite undid the failed statement, or, for some errors (I/O, disk full),
                    // the whole transaction.
                    if self.conn.is_autocommit() {
                        Err(StorageError::Backend("transaction rolled back by SQLite".into()))
                    } else {
                        self.reload_journal();
                        Ok(())
                    }
                }
                (_, true) => self.statement("RELEASE cmd").map_err(|e| backend("savepoint end", e)),
                (_, false) => {
                    let end = self.conn.execute_batch("ROLLBACK TO cmd; RELEASE cmd");
                    self.reload_journal();
                    end.map_err(|e| backend("savepoint end", e))
                }
            };
            match end {
                Ok(()) => {
                    scrub |= ok && mode == Mode::Scrubs;
                    ran.push(reply);
                }
                Err(e) => {
                    // SQLite aborted the whole transaction (I/O error, disk full, …): nothing this
                    // group did so far is there any more.
                    // The memory is read back first, so that no caller told of the failure can
                    // still read what it lost.
                    ran.push(reply);
                    scrub = false;
                    let rolled_back =
                        self.conn.is_autocommit() || self.conn.execute_batch("ROLLBACK").is_ok();
                    self.reload();
                    self.fail_all(&mut ran, &e);
                    if rolled_back {
                        if let Err(e) = self.begin() {
                            for job in jobs {
                                job.abort(same_error(&e));
                            }
                            return;
                        }
                    } else {
                        for job in jobs {
                            job.abort(same_error(&e));
                        }
                        return;
                    }
                }
            }
        }
        let slice = self.fold_slice();
        match self.commit() {
            Ok(()) => {
                self.commits.fetch_add(1, Ordering::Relaxed);
                self.scrub_pending |= scrub;
                self.slice_committed(slice);
                for reply in ran {
                    reply.send(Ok(()));
                }
            }
            Err(e) => {
                let e = backend("commit", e);
                if !self.conn.is_autocommit() {
                    // Best effort: if even the rollback fails, the next BEGIN reports it.
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                self.reload();
                self.fail_all(&mut ran, &e);
            }
        }
    }

    /// The next slice of the fold under way, if any, in the open transaction (see
    /// [`super::status_journal`]): a millisecond or so of work per group, four times that when
    /// the journal has grown past four times [`Writer::fold_rows`]. A failed slice ends the pass
    /// (the idle fold or the next pass does its work); if it took the transaction with it, the
    /// commit that follows fails and says so to every command of the group. Returns what the
    /// slice did, for [`Writer::slice_committed`] once the transaction committed.
    fn fold_slice(&mut self) -> Option<Slice> {
        let pass = self.pass.as_ref()?;
        let scale = if self.journal.rows() >= self.fold_rows.saturating_mul(4) { 4 } else { 1 };
        match self.journal.fold_slice(&self.conn, pass, scale) {
            Ok(Some(slice)) => return Some(slice),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %backend("status journal fold", e), "sqlite writer"),
        }
        self.pass = None;
        None
    }

    /// The transaction that held `slice` (if any) committed: the pass moves on.
    fn slice_committed(&mut self, slice: Option<Slice>) {
        if let (Some(pass), Some(slice)) = (&mut self.pass, slice)
            && self.journal.advance(pass, slice)
        {
            self.pass = None;
            tracing::debug!("sqlite status journal folded into users (in slices)");
        }
    }

    /// After a command's own failure (rolled back alone): read the status journal back from its
    /// table (what this connection sees: committed, plus what the open transaction still holds).
    /// A command changes the journal and the IDTable only as its last step, so this is a
    /// safeguard; the IDTable needs no reload.
    /// If that fails, the writer's memory is [`Writer::stale`].
    fn reload_journal(&mut self) {
        if let Err(e) = self.journal.reload(&self.conn) {
            tracing::error!(error = %backend("status journal reload", e), "sqlite writer");
            self.stale = true;
        }
    }

    /// After a transaction was lost (rolled back whole, or its commit failed): the journal, the
    /// IDTable and the pool index in memory may hold changes that are not in the database; read
    /// them back. Returns whether all three were; if not, the memory is [`Writer::stale`] until
    /// a later call succeeds (tried before the next group, and every [`RELOAD_RETRY`] when idle).
    fn reload(&mut self) -> bool {
        // A fold pass under way was taken from the memory being replaced: the next starts afresh
        // (folding is idempotent: each slice writes the states current when it runs).
        self.pass = None;
        let was_stale = std::mem::replace(&mut self.stale, false);
        #[cfg(test)]
        if Faults::take(&self.faults.reloads) {
            tracing::error!(error = %backend("status journal reload", Faults::error()), "sqlite writer");
            self.stale = true;
            return false;
        }
        self.reload_journal();
        // The IDTable is built from the journal: only read back over a journal that was.
        if !self.stale {
            match load_table(&self.conn, &self.journal) {
                Ok(table) => *write_table(&self.table) = table,
                Err(e) => {
                    tracing::error!(error = %backend("IDTable reload", e), "sqlite writer");
                    self.stale = true;
                }
            }
        }
        if let Err(e) = self.pool.reload(&self.conn) {
            tracing::error!(error = %backend("pool index reload", e), "sqlite writer");
            self.stale = true;
        }
        if was_stale && !self.stale {
            tracing::warn!("sqlite writer: state read back from the database; writes accepted again");
        }
        !self.stale
    }

    /// Folds the status journal into `user_status` in a transaction of its own (see
    /// [`super::status_journal`]). On failure nothing changed and the journal stays as it is.
    fn fold(&mut self) {
        // Everything pending, so whatever a pass under way had left to do.
        self.pass = None;
        let started = std::time::Instant::now();
        if let Err(e) = self.begin() {
            tracing::warn!(error = %e, "sqlite writer: status journal fold");
            return;
        }
        let rows = self.journal.rows();
        match self.journal.fold(&self.conn).and_then(|n| self.statement("COMMIT").map(|()| n)) {
            Ok(n) => {
                self.journal.clear();
                self.commits.fetch_add(1, Ordering::Relaxed);
                let ms = started.elapsed().as_millis();
                if rows >= self.fold_rows {
                    tracing::info!(rows, ids = n, ms, "sqlite status journal folded into users");
                } else {
                    tracing::debug!(rows, ids = n, ms, "sqlite status journal folded into users (idle)");
                }
            }
            Err(e) => {
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                tracing::warn!(error = %backend("status journal fold", e), "sqlite writer");
            }
        }
    }

    fn fail_all(&self, ran: &mut Vec<Box<dyn Reply>>, e: &StorageError) {
        for reply in ran.drain(..) {
            reply.send(Err(e));
        }
    }

    /// Checkpoints the WAL into the database file and truncates it to zero bytes, so frames that
    /// held erased pool entries are gone. Retried later if a reader still uses an older snapshot.
    fn scrub(&mut self) {
        let done = self
            .conn
            .busy_timeout(SCRUB_BUSY_TIMEOUT)
            .and_then(|()| {
                self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get::<_, i64>(0))
            })
            .map(|busy| busy == 0);
        if let Err(e) = self.conn.busy_timeout(BUSY_TIMEOUT) {
            tracing::warn!(error = %backend("busy timeout", e), "sqlite writer");
        }
        match done {
            Ok(true) => {
                self.scrub_pending = false;
                self.last_scrub = std::time::Instant::now();
            }
            Ok(false) => tracing::debug!("sqlite WAL scrub deferred: readers busy"),
            Err(e) => tracing::warn!(error = %backend("wal scrub", e), "sqlite writer"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The readers.

struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// One permit per connection that may exist ([`max_readers`]).
    permits: Arc<tokio::sync::Semaphore>,
}

impl Readers {
    fn open(&self) -> Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| backend("open reader", e))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| backend("open reader", e))?;
        // Readers do not map the file: a read transaction that finds the database changed since
        // its connection's last one (under write load: nearly always) drops the whole mapping
        // (`munmap`, then a page fault per page touched again); measured at 1 M IDs under
        // `robert bench status`, that was 5 % of all CPU and halved ESR throughput (7.7–10.3k vs
        // 14.4–15.5k ESR/s, load_user + status_request 20k vs 63–77k/s). `pread` into the
        // connection's own cache costs less.
        conn.pragma_update(None, "mmap_size", 0).map_err(|e| backend("open reader", e))?;
        conn.set_prepared_statement_cache_capacity(32);
        Ok(conn)
    }

    fn take(&self) -> Result<Connection> {
        let idle =
            self.idle.lock().map_err(|_| StorageError::Backend("reader pool lock poisoned".into()))?.pop();
        match idle {
            Some(conn) => Ok(conn),
            None => self.open(),
        }
    }

    fn give_back(&self, conn: Connection) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The storage.

/// The SQLite backend. See the [module docs](self).
pub struct SqliteStorage {
    /// `None` only while dropping.
    commands: Option<mpsc::Sender<Box<dyn Job>>>,
    writer: Option<JoinHandle<()>>,
    readers: Arc<Readers>,
    commits: Arc<AtomicU64>,
    journal: Arc<Journal>,
    /// The IDTable: every read of it is answered from here.
    table: Arc<RwLock<IdTable>>,
    /// Which pool row holds each slot (the writer's; read for the pool's depth).
    pool: Arc<PoolIndex>,
    /// The writer's injected failures (unit tests).
    #[cfg(test)]
    faults: Arc<Faults>,
    /// Held (locked) while the store lives; dropped after the writer thread is joined.
    _lock: std::fs::File,
}

impl std::fmt::Debug for SqliteStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStorage").field("commits", &self.commit_count()).finish_non_exhaustive()
    }
}

impl SqliteStorage {
    /// Opens (creating if needed) the database at `path`, applies pending migrations and starts
    /// the writer thread. `fsync` selects `synchronous = FULL` (a commit is on disk before it is
    /// acknowledged) or `NORMAL` (survives a process crash, not a power loss).
    ///
    /// Fails with [`StorageError::UnknownSchema`] if the file was written by a newer binary, and
    /// leaves such a file untouched; fails if another store (in this process or another) has the
    /// file open: the store holds an exclusive lock on `<path>.lock` while it lives (the operating
    /// system releases it if the process dies).
    pub fn open(path: &Path, fsync: bool) -> Result<Self> {
        Self::open_with(path, fsync, JOURNAL_FOLD_ROWS)
    }

    /// [`SqliteStorage::open`] with the status journal folded at `journal_fold_rows` rows
    /// instead of [`JOURNAL_FOLD_ROWS`] (tests fold at every commit with 1; benchmarks compare).
    pub fn open_with(path: &Path, fsync: bool, journal_fold_rows: u64) -> Result<Self> {
        let lock = lock_exclusively(path)?;
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| backend("open", e))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| backend("open", e))?;
        // Before changing anything: is this a schema we know?
        check_version(&conn)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(|e| backend("journal mode", e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StorageError::Backend(format!("journal mode: WAL refused ({mode})")));
        }
        conn.pragma_update(None, "synchronous", if fsync { "FULL" } else { "NORMAL" })
            .map_err(|e| backend("synchronous", e))?;
        conn.pragma_update(None, "secure_delete", "ON").map_err(|e| backend("secure_delete", e))?;
        // Statement and savepoint journals (the pages a command changes, kept until its savepoint
        // is released) in memory, not in a temporary file: under `robert bench upload` their
        // `pwrite`s were 12 % of the writer thread. They hold pages of this transaction only;
        // what is durable is the WAL. (Not a leak of erased data to disk either.)
        conn.pragma_update(None, "temp_store", "MEMORY").map_err(|e| backend("temp_store", e))?;
        conn.pragma_update(None, "mmap_size", MMAP_BYTES).map_err(|e| backend("mmap_size", e))?;
        conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB).map_err(|e| backend("cache_size", e))?;
        // Checkpoint every WAL_AUTOCHECKPOINT_PAGES instead of SQLite's 1000: a page the mixer
        // changes in many commits is copied into the database file once per checkpoint, not
        // once per 4 MB of WAL.
        conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)
            .map_err(|e| backend("wal_autocheckpoint", e))?;
        conn.set_prepared_statement_cache_capacity(64);
        migrate(&conn)?;
        let journal = Arc::new(Journal::default());
        journal.reload(&conn).map_err(|e| backend("status journal", e))?;
        let table =
            Arc::new(RwLock::new(load_table(&conn, &journal).map_err(|e| backend("load IDTable", e))?));
        let pool = Arc::new(PoolIndex::default());
        pool.reload(&conn).map_err(|e| backend("load pool index", e))?;

        let commits = Arc::new(AtomicU64::new(0));
        #[cfg(test)]
        let faults = Arc::new(Faults::default());
        let (commands, receiver) = mpsc::channel::<Box<dyn Job>>();
        let writer = Writer {
            conn,
            commits: Arc::clone(&commits),
            scrub_pending: false,
            last_scrub: std::time::Instant::now(),
            journal: Arc::clone(&journal),
            fold_rows: journal_fold_rows.max(1),
            pass: None,
            table: Arc::clone(&table),
            pool: Arc::clone(&pool),
            fsync,
            last_commit: std::time::Instant::now(),
            last_group_shared: false,
            stale: false,
            #[cfg(test)]
            faults: Arc::clone(&faults),
        };
        let writer = std::thread::Builder::new()
            .name("robert-sqlite-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(|e| StorageError::Backend(format!("spawn writer thread: {e}")))?;
        Ok(Self {
            commands: Some(commands),
            writer: Some(writer),
            readers: Arc::new(Readers {
                path: path.to_path_buf(),
                idle: Mutex::new(Vec::new()),
                permits: Arc::new(tokio::sync::Semaphore::new(max_readers())),
            }),
            commits,
            journal,
            table,
            pool,
            #[cfg(test)]
            faults,
            _lock: lock,
        })
    }

    /// How many transactions the writer has committed (each is one fsync with `fsync = true`).
    /// With group commit, fewer than the write calls made when they came concurrently.
    pub fn commit_count(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Sends a write command to the writer thread and waits for its durable answer.
    async fn write<T, F>(&self, op: &'static str, mode: Mode, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.write_table(op, mode, move |conn, _| work(conn)).await
    }

    /// [`SqliteStorage::write`] for a command that reads or changes the in-memory IDTable. The
    /// writer thread is its only writer: `work` decides on what it reads, writes the database,
    /// and changes the table as its *last* step (nothing after may fail).
    async fn write_table<T, F>(&self, op: &'static str, mode: Mode, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &RwLock<IdTable>) -> rusqlite::Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let command: Box<dyn Job> = Box::new(Command { op, mode, work, reply });
        self.commands
            .as_ref()
            .ok_or(StorageError::Closed)?
            .send(command)
            .map_err(|_| StorageError::Closed)?;
        // The writer answers every command it received, even while shutting down; if it died
        // (it panicked), the reply sender was dropped.
        answer.await.map_err(|_| StorageError::Closed)?
    }

    /// Runs a read on a pooled read-only connection, on a blocking thread.
    async fn read<T, F>(&self, op: &'static str, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let readers = Arc::clone(&self.readers);
        // Never more reads at once than connections may exist: each finds one open and idle.
        let permit =
            Arc::clone(&self.readers.permits).acquire_owned().await.map_err(|_| StorageError::Closed)?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut conn = readers.take()?;
            let result = work(&mut conn).map_err(|e| backend(op, e));
            if result.is_ok() {
                readers.give_back(conn);
            }
            result
        })
        .await
        .map_err(|_| StorageError::Backend(format!("{op}: reader task failed")))?
    }
}

impl Drop for SqliteStorage {
    fn drop(&mut self) {
        // Readers first, so that the writer's close can checkpoint the WAL away.
        if let Ok(mut idle) = self.readers.idle.lock() {
            idle.clear();
        }
        // Closing the channel lets the writer drain what was sent, then exit.
        self.commands = None;
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("sqlite writer thread panicked");
        }
    }
}

/// Locks `<path>.lock` exclusively, or fails if someone else holds it.
fn lock_exclusively(path: &Path) -> Result<std::fs::File> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&name)
        .map_err(|e| StorageError::Backend(format!("open {}: {e}", Path::new(&name).display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StorageError::Backend(format!(
            "{} is in use by another robert server (or store) holding {}: one process per SQLite file",
            path.display(),
            Path::new(&name).display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(StorageError::Backend(format!("lock {}: {e}", Path::new(&name).display())))
        }
    }
}

fn user_version(conn: &Connection) -> Result<i64> {
    conn.query_row("PRAGMA user_version", [], |row| row.get(0)).map_err(|e| backend("schema version", e))
}

fn check_version(conn: &Connection) -> Result<i64> {
    let found = user_version(conn)?;
    if !(0..=SCHEMA_VERSION).contains(&found) {
        return Err(StorageError::UnknownSchema { found, known: SCHEMA_VERSION });
    }
    Ok(found)
}

/// Applies every migration the database lacks, each in its own transaction with its version bump.
fn migrate(conn: &Connection) -> Result<()> {
    loop {
        conn.execute_batch("BEGIN IMMEDIATE").map_err(|e| backend("migrate", e))?;
        // Re-read under the write lock: another process may have migrated meanwhile.
        let version = match check_version(conn) {
            Ok(v) => v,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        };
        let Some(step) = usize::try_from(version).ok().and_then(|v| MIGRATIONS.get(v)) else {
            return conn.execute_batch("COMMIT").map_err(|e| backend("migrate", e));
        };
        let applied = conn
            .execute_batch(step)
            .and_then(|()| conn.pragma_update(None, "user_version", version + 1))
            .and_then(|()| conn.execute_batch("COMMIT"));
        if let Err(e) = applied {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(backend("migrate", e));
        }
        tracing::info!(version = version + 1, "sqlite schema migrated");
    }
}

/// Reads the IDTable as committed into memory: every user, LEE_A, and the status journal's
/// pending SRE_A / UN_A over them (the journal is newer than the rows it has not been folded into).
fn load_table(conn: &Connection, journal: &Journal) -> rusqlite::Result<IdTable> {
    let mut table = IdTable::default();
    let users: i64 = conn.query_row("SELECT count(*) FROM users", [], |row| row.get(0))?;
    table.reserve(usize::try_from(users).unwrap_or(0));
    let mut stmt = conn.prepare("SELECT id, keys, acknowledged FROM users")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        table.restore(id_from_sql(row.get(0)?)?, row.get(1)?, false, row.get(2)?, None);
    }
    let mut stmt = conn.prepare("SELECT id, sre, notified FROM user_status")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let sre = row.get::<_, Option<i64>>(1)?.map(epoch_from_sql).transpose()?;
        table.set_status(id_from_sql(row.get(0)?)?, sre, row.get(2)?);
    }
    let mut stmt = conn.prepare("SELECT id, epoch, hellos, rssi_sum, rssi_count FROM exposures")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let exposure = Exposure {
            epoch: epoch_from_sql(row.get(1)?)?,
            hellos: count_from_sql(row.get(2)?),
            rssi_sum: row.get(3)?,
            rssi_count: count_from_sql(row.get(4)?),
        };
        table.add_exposure(id_from_sql(row.get(0)?)?, &exposure);
    }
    for (id, p) in journal.pending() {
        table.set_status(id_from_sql(id)?, p.sre.map(epoch_from_sql).transpose()?, p.notified);
    }
    Ok(table)
}

/// A stored ID, or a conversion error (without the value) if the file holds a bad one.
fn id_from_sql(v: i64) -> rusqlite::Result<Id> {
    u64::try_from(v).ok().and_then(Id::new).ok_or_else(|| bad_value("id"))
}

/// A stored epoch, or a conversion error (without the value) if the file holds a bad one.
fn epoch_from_sql(v: i64) -> rusqlite::Result<Epoch> {
    u32::try_from(v).ok().and_then(Epoch::new).ok_or_else(|| bad_value("epoch"))
}

fn bad_value(column: &'static str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Integer,
        format!("{column} out of range").into(),
    )
}

/// The in-memory IDTable, for reading.
fn read_table(table: &RwLock<IdTable>) -> std::sync::RwLockReadGuard<'_, IdTable> {
    // Every change is one call that does not panic: a poisoned lock still holds a whole table.
    table.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The in-memory IDTable, for changing (the writer thread only).
fn write_table(table: &RwLock<IdTable>) -> std::sync::RwLockWriteGuard<'_, IdTable> {
    table.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Deletes LEE_A of `id` from the file: a point delete per epoch the IDTable lists (the table is
/// keyed by (epoch, ID)). Leaves the IDTable as it is.
fn delete_exposures(conn: &Connection, table: &RwLock<IdTable>, id: Id) -> rusqlite::Result<()> {
    let epochs = read_table(table).exposure_epochs(id);
    let mut delete = conn.prepare_cached("DELETE FROM exposures WHERE epoch = ?1 AND id = ?2")?;
    for epoch in epochs {
        delete.execute(params![epoch.number(), id_sql(id)])?;
    }
    Ok(())
}

/// Remembers `token` unless its `jti` is already known; `false` if it was.
fn spend_token(conn: &Connection, token: &TokenUse) -> rusqlite::Result<bool> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO used_tokens (jti, expires) VALUES (?1, ?2) ON CONFLICT (jti) DO NOTHING",
    )?;
    Ok(stmt.execute(params![token.jti, unix_sql(token.expires_unix)])? == 1)
}

/// Records of a pending batch as stored: `len(1) ‖ record`, concatenated.
fn pack_records(records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.iter().map(|r| r.len() + 1).sum());
    for r in records {
        out.push(r.len().min(255) as u8);
        out.extend_from_slice(&r[..r.len().min(255)]);
    }
    out
}

fn unpack_records(mut packed: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    while let Some((&len, rest)) = packed.split_first() {
        let record = rest.get(..usize::from(len))?;
        out.push(record.to_vec());
        packed = &rest[usize::from(len)..];
    }
    Some(out)
}

/// A `fed_pending` row as stored.
type PendingRow = (Vec<u8>, i64, i64, Vec<u8>);

fn pending_from_sql(country: CountryCode, row: PendingRow) -> Result<OutboundBatch> {
    let (id, seq, created, records) = row;
    let bad = || StorageError::Backend("stored federation batch malformed".into());
    Ok(OutboundBatch {
        country,
        id: <[u8; 16]>::try_from(id).map_err(|_| bad())?,
        seq: u64::try_from(seq).map_err(|_| bad())?,
        created: u32::try_from(created).map_err(|_| bad())?,
        records: unpack_records(&records).ok_or_else(bad)?,
    })
}

/// What `status_request` decided, before the conversion to [`StatusOutcome`].
impl Storage for SqliteStorage {
    async fn insert_user(&self, id: Id, wrapped_keys: Vec<u8>) -> Result<bool> {
        self.write_table("insert user", Mode::OneStatement, move |conn, table| {
            if read_table(table).contains(id) {
                return Ok(false);
            }
            conn.prepare_cached("INSERT INTO users (id, keys) VALUES (?1, ?2)")?
                .execute(params![id_sql(id), &wrapped_keys])?;
            Ok(write_table(table).insert(id, wrapped_keys))
        })
        .await
    }

    async fn register_user(&self, token: TokenUse, id: Id, wrapped_keys: Vec<u8>) -> Result<RegisterOutcome> {
        // No savepoint: if the insert fails after the spend, the spend alone stands (the App's
        // challenge is used up and it fetches another); the reverse order could not be left so.
        self.write_table("register user", Mode::OneStatement, move |conn, table| {
            if read_table(table).contains(id) {
                return Ok(RegisterOutcome::IdTaken);
            }
            if !spend_token(conn, &token)? {
                return Ok(RegisterOutcome::TokenSpent);
            }
            conn.prepare_cached("INSERT INTO users (id, keys) VALUES (?1, ?2)")?
                .execute(params![id_sql(id), &wrapped_keys])?;
            write_table(table).insert(id, wrapped_keys);
            Ok(RegisterOutcome::Registered)
        })
        .await
    }

    async fn spend_token(&self, token: TokenUse) -> Result<bool> {
        self.write("spend token", Mode::OneStatement, move |conn| spend_token(conn, &token)).await
    }

    async fn load_user(&self, id: Id) -> Result<Option<UserRecord>> {
        Ok(read_table(&self.table).get(id))
    }

    async fn load_user_keys(&self, ids: Vec<Id>) -> Result<Vec<(Id, Vec<u8>)>> {
        Ok(read_table(&self.table).keys(ids))
    }

    async fn status_request(
        &self,
        id: Id,
        now: Epoch,
        min_interval: u32,
        at_risk: bool,
    ) -> Result<StatusOutcome> {
        let journal = Arc::clone(&self.journal);
        self.write_table("status request", Mode::OneStatement, move |conn, table| {
            // §7 steps 7-8, decided on the IDTable in memory: it holds every change of the
            // commands before this one, committed or in this group.
            let outcome = read_table(table).decide_status(id, now, min_interval, at_risk);
            if let StatusOutcome::Answer { at_risk: answer } = outcome {
                // §7 step 8: SRE_A (and UN_A), appended to the journal rather than written in
                // place; the last steps of the command.
                let sre = Some(i64::from(now.number()));
                journal.record(conn, id_sql(id), Pending { sre, notified: answer })?;
                write_table(table).set_status(id, Some(now), answer);
            }
            Ok(outcome)
        })
        .await
    }

    async fn acknowledge(&self, id: Id) -> Result<bool> {
        self.write_table("acknowledge", Mode::OneStatement, move |conn, table| {
            if !read_table(table).is_notified(id) {
                return Ok(false);
            }
            conn.prepare_cached("UPDATE users SET acknowledged = 1 WHERE id = ?1")?.execute([id_sql(id)])?;
            Ok(write_table(table).acknowledge(id))
        })
        .await
    }

    async fn reset_status(&self, id: Id, token: TokenUse) -> Result<bool> {
        let journal = Arc::clone(&self.journal);
        self.write_table("reset status", Mode::Savepoint, move |conn, table| {
            if !read_table(table).contains(id) || !spend_token(conn, &token)? {
                return Ok(false);
            }
            conn.prepare_cached("UPDATE users SET acknowledged = 0 WHERE id = ?1")?.execute([id_sql(id)])?;
            conn.prepare_cached("UPDATE user_status SET notified = 0 WHERE id = ?1")?
                .execute([id_sql(id)])?;
            delete_exposures(conn, table, id)?;
            if let Some(p) = journal.get(id_sql(id)) {
                journal.record(conn, id_sql(id), Pending { notified: false, ..p })?;
            }
            Ok(write_table(table).reset(id))
        })
        .await
    }

    async fn unregister(&self, id: Id) -> Result<bool> {
        let journal = Arc::clone(&self.journal);
        self.write_table("unregister", Mode::Savepoint, move |conn, table| {
            if !read_table(table).contains(id) {
                return Ok(false);
            }
            conn.prepare_cached("DELETE FROM users WHERE id = ?1")?.execute([id_sql(id)])?;
            conn.prepare_cached("DELETE FROM user_status WHERE id = ?1")?.execute([id_sql(id)])?;
            delete_exposures(conn, table, id)?;
            journal.remove(conn, id_sql(id))?;
            Ok(write_table(table).remove(id))
        })
        .await
    }

    async fn delete_history(&self, id: Id) -> Result<bool> {
        self.write_table("delete history", Mode::Savepoint, move |conn, table| {
            if !read_table(table).contains(id) {
                return Ok(false);
            }
            delete_exposures(conn, table, id)?;
            Ok(write_table(table).clear_exposures(id))
        })
        .await
    }

    async fn submit_report(&self, token: TokenUse, entries: Vec<PoolEntry>) -> Result<bool> {
        let pool = Arc::clone(&self.pool);
        self.write("submit report", Mode::Savepoint, move |conn| {
            if !spend_token(conn, &token)? {
                return Ok(false);
            }
            // One row for the declaration (see `sqlite_pool`); the index changes last.
            pool.insert(conn, &entries)?;
            Ok(true)
        })
        .await
    }

    async fn pool_take(&self, max: usize) -> Result<Vec<PoolEntry>> {
        self.read("pool take", move |conn| sqlite_pool::take(conn, max)).await
    }

    async fn pool_commit(&self, batch: ProcessedBatch) -> Result<u64> {
        let pool = Arc::clone(&self.pool);
        self.write_table("pool commit", Mode::Scrubs, move |conn, table| {
            let mut batch = batch;
            // Key order: each B-tree descent starts where the last one ended (cached pages),
            // and neighbouring rows share a page write. The order has no meaning: the batch was
            // already shuffled.
            batch.exposures.sort_unstable_by_key(|(id, e, _)| (e.epoch, *id));
            // The slots still in the pool: erased below, as the last write.
            let erased = pool.present(&batch.slots);
            // The exposures of erased slots, summed per (epoch, id) (sorted: they are adjacent),
            // so that each is written once (a contact of many HELLOs in one epoch is one row
            // write, not one per HELLO); dropped when the ID is not registered (any more).
            let mut sums: Vec<(Id, Exposure)> = Vec::new();
            for (id, exposure, slot) in &batch.exposures {
                if !erased.contains(slot) {
                    continue;
                }
                match sums.last_mut() {
                    Some((last, sum)) if *last == *id && sum.epoch == exposure.epoch => {
                        add_exposure(sum, exposure);
                    }
                    _ => sums.push((*id, *exposure)),
                }
            }
            {
                let known = read_table(table);
                sums.retain(|(id, _)| known.contains(*id));
            }
            {
                // An upsert: looking up first in the IDTable whether the row exists cost more (one
                // more random memory access per sum) than SQLite's statement journal.
                let mut add = conn.prepare_cached(
                    "INSERT INTO exposures (epoch, id, hellos, rssi_sum, rssi_count)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (epoch, id) DO UPDATE SET
                         hellos = hellos + excluded.hellos,
                         rssi_sum = rssi_sum + excluded.rssi_sum,
                         rssi_count = rssi_count + excluded.rssi_count",
                )?;
                for (id, e) in &sums {
                    add.execute(params![e.epoch.number(), id_sql(*id), e.hellos, e.rssi_sum, e.rssi_count])?;
                }
            }
            {
                let mut push = conn.prepare_cached("INSERT INTO outbox (cc, record) VALUES (?1, ?2)")?;
                for (cc, record, slot) in &batch.outbox {
                    if erased.contains(slot) {
                        push.execute(params![cc.value(), record])?;
                    }
                }
            }
            // §6.2 step 10, then the IDTable: the command's last steps.
            pool.erase(conn, &erased)?;
            let mut t = write_table(table);
            for (id, exposure) in &sums {
                t.add_exposure(*id, exposure);
            }
            Ok(erased.len() as u64)
        })
        .await
    }

    async fn expire(
        &self,
        lee_before: Epoch,
        tokens_before_unix: u64,
        keys_before_day: u32,
    ) -> Result<ExpiryStats> {
        self.write_table("expire", Mode::Savepoint, move |conn, table| {
            let exposures = conn
                .prepare_cached("DELETE FROM exposures WHERE epoch < ?1")?
                .execute([lee_before.number()])?;
            let tokens = conn
                .prepare_cached("DELETE FROM used_tokens WHERE expires < ?1")?
                .execute([unix_sql(tokens_before_unix)])?;
            let server_keys =
                conn.prepare_cached("DELETE FROM server_keys WHERE day < ?1")?.execute([keys_before_day])?;
            let stats = ExpiryStats {
                exposures: exposures as u64,
                tokens: tokens as u64,
                server_keys: server_keys as u64,
            };
            write_table(table).expire(lee_before);
            Ok(stats)
        })
        .await
    }

    async fn put_server_key(&self, day: u32, wrapped: Vec<u8>) -> Result<Vec<u8>> {
        self.write("put server key", Mode::Savepoint, move |conn| {
            conn.prepare_cached(
                "INSERT INTO server_keys (day, wrapped) VALUES (?1, ?2)
                 ON CONFLICT (day) DO NOTHING",
            )?
            .execute(params![day, wrapped])?;
            conn.prepare_cached("SELECT wrapped FROM server_keys WHERE day = ?1")?
                .query_row([day], |row| row.get(0))
        })
        .await
    }

    async fn server_keys(&self) -> Result<Vec<(u32, Vec<u8>)>> {
        self.read("server keys", |conn| {
            let mut stmt = conn.prepare_cached("SELECT day, wrapped FROM server_keys ORDER BY day")?;
            let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
            rows.collect()
        })
        .await
    }

    async fn federation_next_batch(
        &self,
        country: CountryCode,
        max: usize,
        fresh_id: [u8; 16],
        now: u32,
    ) -> Result<Option<OutboundBatch>> {
        let limit = i64::try_from(max.max(1)).unwrap_or(i64::MAX);
        let cc = country.value();
        // A write command even when it only reads: the check and the sealing are one step.
        let row = self
            .write("federation next batch", Mode::Scrubs, move |conn| {
                let select = "SELECT batch_id, seq, created, records FROM fed_pending WHERE cc = ?1";
                let pending: Option<PendingRow> = conn
                    .prepare_cached(select)?
                    .query_row([cc], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                    .optional()?;
                if pending.is_some() {
                    return Ok(pending);
                }
                let taken: Vec<(i64, Vec<u8>)> = {
                    let mut stmt = conn.prepare_cached(
                        "SELECT seq, record FROM outbox WHERE cc = ?1 ORDER BY seq LIMIT ?2",
                    )?;
                    let rows = stmt.query_map(params![cc, limit], |r| Ok((r.get(0)?, r.get(1)?)))?;
                    rows.collect::<rusqlite::Result<_>>()?
                };
                let Some((last, _)) = taken.last() else {
                    return Ok(None);
                };
                conn.prepare_cached("DELETE FROM outbox WHERE cc = ?1 AND seq <= ?2")?
                    .execute(params![cc, last])?;
                let seq: i64 = conn
                    .prepare_cached(
                        "INSERT INTO fed_sequence (cc, last_seq) VALUES (?1, 1)
                         ON CONFLICT (cc) DO UPDATE SET last_seq = last_seq + 1
                         RETURNING last_seq",
                    )?
                    .query_row([cc], |r| r.get(0))?;
                let records: Vec<Vec<u8>> = taken.into_iter().map(|(_, r)| r).collect();
                let packed = pack_records(&records);
                conn.prepare_cached(
                    "INSERT INTO fed_pending (cc, batch_id, seq, created, pairs, records)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    cc,
                    &fresh_id[..],
                    seq,
                    now,
                    records.len() as i64,
                    packed
                ])?;
                Ok(Some((fresh_id.to_vec(), seq, i64::from(now), packed)))
            })
            .await?;
        row.map(|r| pending_from_sql(country, r)).transpose()
    }

    async fn federation_batch_done(&self, country: CountryCode, id: [u8; 16]) -> Result<bool> {
        self.write("federation batch done", Mode::Scrubs, move |conn| {
            let n = conn
                .prepare_cached("DELETE FROM fed_pending WHERE cc = ?1 AND batch_id = ?2")?
                .execute(params![country.value(), &id[..]])?;
            Ok(n == 1)
        })
        .await
    }

    async fn federation_depths(&self) -> Result<Vec<(CountryCode, u64)>> {
        let rows: Vec<(i64, i64)> = self
            .read("federation depths", |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT cc, sum(n) FROM (
                         SELECT cc, count(*) AS n FROM outbox GROUP BY cc
                         UNION ALL SELECT cc, pairs AS n FROM fed_pending
                     ) GROUP BY cc HAVING sum(n) > 0 ORDER BY cc",
                )?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect()
            })
            .await?;
        rows.into_iter()
            .map(|(cc, n)| {
                let cc = u8::try_from(cc)
                    .map_err(|_| StorageError::Backend("stored country code out of range".into()))?;
                Ok((CountryCode::new(cc), u64::try_from(n).unwrap_or(0)))
            })
            .collect()
    }

    async fn pool_depth(&self) -> Result<u64> {
        Ok(self.pool.depth())
    }

    async fn stats(&self) -> Result<Stats> {
        let outbox_depth: i64 = self
            .read("stats", |conn| {
                conn.prepare_cached(
                    "SELECT (SELECT count(*) FROM outbox) + (SELECT coalesce(sum(pairs), 0) FROM fed_pending)",
                )?
                .query_row([], |row| row.get(0))
            })
            .await?;
        let users = read_table(&self.table).len() as u64;
        Ok(Stats {
            users,
            pool_depth: self.pool.depth(),
            outbox_depth: u64::try_from(outbox_depth).unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> Id {
        Id::new(n).expect("id")
    }

    fn ep(n: u32) -> Epoch {
        Epoch::new(n).expect("epoch")
    }

    /// A database of the current schema in a temporary directory (kept alive by the first).
    fn migrated() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().expect("temp dir");
        let conn = Connection::open(dir.path().join("robert.sqlite")).expect("open");
        migrate(&conn).expect("migrate");
        (dir, conn)
    }

    /// A file of schema 3 (pool one row per pair, LEE_A keyed by (ID, epoch), SRE_A / UN_A in
    /// `users`) opens as the current schema with its pending pairs, LEE_A and users kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn schema_3_file_migrates_with_pool_and_lee_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("robert.sqlite");
        {
            let conn = Connection::open(&path).expect("open raw");
            for step in &MIGRATIONS[..3] {
                conn.execute_batch(step).expect("old migration");
            }
            conn.pragma_update(None, "user_version", 3).expect("user_version");
            conn.execute_batch(
                "INSERT INTO users (id, keys, notified, acknowledged, sre)
                     VALUES (7, x'11', 1, 1, 42), (9, x'22', 0, 0, NULL), (11, x'33', 0, 0, 40);
                 INSERT INTO exposures VALUES (7, 100, 3, -180, 3), (7, 90, 1, 0, 0), (9, 100, 2, -100, 2);
                 INSERT INTO pool VALUES (x'01010101010101010101010101010101', x'AABB'),
                                         (x'02020202020202020202020202020202', x'');",
            )
            .expect("old rows");
        }
        let s = SqliteStorage::open(&path, false).expect("open migrates");
        let status = |u: UserRecord| (u.last_status_epoch, u.notified, u.acknowledged);
        for (n, want) in
            [(7, (Some(ep(42)), true, true)), (9, (None, false, false)), (11, (Some(ep(40)), false, false))]
        {
            assert_eq!(status(s.load_user(id(n)).await.expect("load").expect("registered")), want, "ID {n}");
        }
        let lee = s.load_user(id(7)).await.expect("load").expect("registered").exposures;
        assert_eq!(
            lee,
            vec![
                Exposure { epoch: ep(90), hellos: 1, rssi_sum: 0, rssi_count: 0 },
                Exposure { epoch: ep(100), hellos: 3, rssi_sum: -180, rssi_count: 3 },
            ]
        );
        assert_eq!(s.pool_depth().await.expect("depth"), 2);
        let mut pool = s.pool_take(10).await.expect("take");
        pool.sort_by_key(|e| e.slot);
        assert_eq!(
            pool,
            vec![
                PoolEntry { slot: [1; 16], record: vec![0xAA, 0xBB] },
                PoolEntry { slot: [2; 16], record: Vec::new() },
            ]
        );
        // The migrated rows behave as new ones: one pair processed, the other kept; LEE_A added to
        // the migrated entry of its epoch; expiry and delete history by the new key.
        let batch = ProcessedBatch {
            slots: vec![[1; 16]],
            exposures: vec![(
                id(9),
                Exposure { epoch: ep(100), hellos: 1, rssi_sum: -50, rssi_count: 1 },
                [1; 16],
            )],
            outbox: Vec::new(),
        };
        assert_eq!(s.pool_commit(batch).await.expect("commit"), 1);
        assert_eq!(s.expire(ep(95), 0, 0).await.expect("expire").exposures, 1);
        assert!(s.delete_history(id(7)).await.expect("delete history"));
        drop(s);
        let s = SqliteStorage::open(&path, false).expect("reopen");
        assert_eq!(
            s.pool_take(10).await.expect("take"),
            vec![PoolEntry { slot: [2; 16], record: Vec::new() }]
        );
        assert!(s.load_user(id(7)).await.expect("load").expect("registered").exposures.is_empty());
        assert_eq!(
            s.load_user(id(9)).await.expect("load").expect("registered").exposures,
            vec![Exposure { epoch: ep(100), hellos: 3, rssi_sum: -150, rssi_count: 3 }]
        );
        let conn = Connection::open(&path).expect("open raw");
        let rows: i64 = conn.query_row("SELECT count(*) FROM exposures", [], |r| r.get(0)).expect("count");
        assert_eq!(rows, 1, "expired and deleted rows gone from the file");
        let status: Vec<(i64, Option<i64>, bool)> = conn
            .prepare("SELECT id, sre, notified FROM user_status")
            .and_then(|mut q| q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect())
            .expect("user_status");
        assert_eq!(status, vec![(7, Some(42), true), (11, Some(40), false)], "only IDs with a status");
        let users: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('users')")
            .and_then(|mut q| q.query_map([], |r| r.get(0))?.collect())
            .expect("columns");
        assert_eq!(users, ["id", "keys", "acknowledged"]);
    }

    /// A fold in slices, interleaved with ESRs, unregistrations (with the ID drawn again) and
    /// resets: after every committed slice, what a restart would rebuild (the `user_status` rows
    /// with the log replayed over them) is the state every command left; at the end the log holds only
    /// rows newer than the pass, and the journal counts them.
    #[test]
    fn a_fold_in_slices_keeps_every_state_at_every_step() {
        let (_dir, conn) = migrated();
        let journal = Journal::default();
        let mut expected: std::collections::BTreeMap<u64, (Option<Epoch>, bool)> = Default::default();
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut draw = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let esr = |conn: &Connection, id: u64, epoch: u32, notified: bool| {
            journal
                .record(conn, id as i64, Pending { sre: Some(i64::from(epoch)), notified })
                .expect("record");
        };
        conn.execute_batch("BEGIN").expect("begin");
        for n in 1..=2000u64 {
            conn.execute("INSERT INTO users (id, keys) VALUES (?1, x'00')", [n as i64]).expect("user");
            let notified = n % 3 == 0;
            esr(&conn, n, (n % 50) as u32 + 1, notified);
            expected.insert(n, (Some(ep((n % 50) as u32 + 1)), notified));
        }
        conn.execute_batch("COMMIT").expect("commit");
        let check = |expected: &std::collections::BTreeMap<u64, (Option<Epoch>, bool)>| {
            let replayed = Journal::default();
            replayed.reload(&conn).expect("reload");
            let table = load_table(&conn, &replayed).expect("load");
            for (id, want) in expected {
                let user = table.get(self::id(*id)).expect("registered");
                assert_eq!((user.last_status_epoch, user.notified), *want, "ID {id}");
            }
        };
        let mut pass = journal.start_pass(&conn).expect("start").expect("something pending");
        let mut epoch = 100;
        let mut steps = 0;
        loop {
            conn.execute_batch("BEGIN").expect("begin");
            for _ in 0..40 {
                let id = draw(2000) + 1;
                epoch += 1;
                match draw(4) {
                    0 | 1 => {
                        esr(&conn, id, epoch, draw(2) == 0);
                        expected.insert(
                            id,
                            (Some(ep(epoch)), journal.get(id as i64).expect("just recorded").notified),
                        );
                    }
                    2 => {
                        // Unregistered, and the ID drawn again: a fresh user.
                        conn.execute("DELETE FROM users WHERE id = ?1", [id as i64]).expect("delete");
                        conn.execute("DELETE FROM user_status WHERE id = ?1", [id as i64]).expect("delete");
                        journal.remove(&conn, id as i64).expect("tombstone");
                        conn.execute("INSERT INTO users (id, keys) VALUES (?1, x'00')", [id as i64])
                            .expect("again");
                        expected.insert(id, (None, false));
                    }
                    _ => {
                        // A reset, as `reset_status` does it.
                        conn.execute("UPDATE user_status SET notified = 0 WHERE id = ?1", [id as i64])
                            .expect("reset");
                        if let Some(p) = journal.get(id as i64) {
                            journal
                                .record(&conn, id as i64, Pending { notified: false, ..p })
                                .expect("record");
                        }
                        expected.entry(id).and_modify(|e| e.1 = false);
                    }
                }
            }
            let slice = journal.fold_slice(&conn, &pass, 1).expect("slice");
            conn.execute_batch("COMMIT").expect("commit");
            check(&expected);
            steps += 1;
            match slice {
                Some(slice) => {
                    if journal.advance(&mut pass, slice) {
                        break;
                    }
                }
                None => break,
            }
        }
        assert!(steps >= 5, "2000 IDs take four slices to write and one to delete ({steps})");
        let (rows, oldest): (i64, Option<i64>) = conn
            .query_row("SELECT count(*), min(seq) FROM status_log", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("log");
        assert!(oldest.is_none_or(|s| s > 2000), "rows of the pass deleted");
        assert_eq!(journal.rows(), rows as u64, "the journal counts the rows left");
        check(&expected);
    }

    /// The writer's in-memory maps print counts, never an ID or a slot.
    #[test]
    fn journal_pass_and_pool_index_debug_show_no_identifier() {
        let (_dir, conn) = migrated();
        let journal = Journal::default();
        journal.record(&conn, 0x1234_5678, Pending { sre: Some(7), notified: true }).expect("record");
        let pass = journal.start_pass(&conn).expect("start").expect("pending");
        let pool = PoolIndex::default();
        let slot = [0xAB; 16];
        pool.insert(&conn, &[PoolEntry { slot, record: vec![1, 2, 3] }]).expect("insert");
        let present = pool.present(&[slot]);
        let printed = format!("{journal:?} {pass:?} {pool:?} {present:?}");
        assert!(!printed.contains("305419896") && !printed.contains("1234"), "{printed}");
        assert!(!printed.contains("171") && !printed.to_lowercase().contains("ab"), "{printed}");
        assert!(printed.contains("pending: 1") && printed.contains("pairs: 1"), "{printed}");
    }

    /// A declaration partly processed keeps its other pairs across a restart, each once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn partly_processed_declaration_keeps_the_rest() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("robert.sqlite");
        let s = SqliteStorage::open(&path, false).expect("open");
        let entries: Vec<PoolEntry> =
            (0..10u8).map(|n| PoolEntry { slot: [n; 16], record: vec![n; usize::from(n)] }).collect();
        let token = TokenUse { jti: "decl".into(), expires_unix: 4_000_000_000 };
        assert!(s.submit_report(token, entries.clone()).await.expect("submit"));
        let first: Vec<[u8; 16]> = entries.iter().step_by(3).map(|e| e.slot).collect();
        let batch = ProcessedBatch { slots: first.clone(), ..Default::default() };
        assert_eq!(s.pool_commit(batch.clone()).await.expect("commit"), first.len() as u64);
        assert_eq!(s.pool_commit(batch).await.expect("commit again"), 0, "erased once");
        drop(s);
        let s = SqliteStorage::open(&path, false).expect("reopen");
        let mut left = s.pool_take(100).await.expect("take");
        left.sort_by_key(|e| e.slot);
        let expected: Vec<PoolEntry> = entries.iter().filter(|e| !first.contains(&e.slot)).cloned().collect();
        assert_eq!(left, expected);
        assert_eq!(s.pool_depth().await.expect("depth"), expected.len() as u64);
        let rest = ProcessedBatch { slots: expected.iter().map(|e| e.slot).collect(), ..Default::default() };
        assert_eq!(s.pool_commit(rest).await.expect("commit"), expected.len() as u64);
        assert_eq!(s.pool_depth().await.expect("depth"), 0);
        let conn = Connection::open(&path).expect("open raw");
        let rows: i64 =
            conn.query_row("SELECT count(*) FROM pool_declarations", [], |r| r.get(0)).expect("count");
        assert_eq!(rows, 0, "the row goes with its last pair");
    }

    /// A registration whose user insert fails after its challenge was spent (here: its ID is in
    /// the file but not in memory, which only a foreign write can cause) answers an error and
    /// registers nothing, in memory or in the file, while the registrations sharing its group
    /// are registered. Its spend may stand alone (in a group) or go with it (alone): never is the
    /// ID registered without the spend.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_registration_whose_insert_fails_registers_nothing_and_spares_its_group() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("robert.sqlite");
        let s = Arc::new(SqliteStorage::open(&path, false).expect("open"));
        {
            let foreign = Connection::open(&path).expect("open foreign");
            foreign.busy_timeout(Duration::from_secs(5)).expect("busy timeout");
            foreign.execute("INSERT INTO users (id, keys) VALUES (7, x'07')", []).expect("foreign row");
        }
        let token = |n: u64| TokenUse { jti: format!("pow:{n:032x}"), expires_unix: 4_000_000_000 };
        let mut tasks = tokio::task::JoinSet::new();
        for n in 1..=32u64 {
            let s = s.clone();
            tasks.spawn(async move { (n, s.register_user(token(n), id(n), vec![n as u8]).await) });
        }
        while let Some(joined) = tasks.join_next().await {
            let (n, outcome) = joined.expect("task");
            if n == 7 {
                outcome.expect_err("the insert fails");
            } else {
                assert_eq!(outcome.expect("registered"), RegisterOutcome::Registered, "ID {n}");
            }
        }
        assert_eq!(s.load_user(id(7)).await.expect("load"), None, "memory did not take the failed insert");
        for n in (1..=32u64).filter(|&n| n != 7) {
            assert!(!s.spend_token(token(n)).await.expect("spend"), "ID {n}'s challenge is spent");
        }
        drop(Arc::into_inner(s).expect("the only handle"));

        let s = SqliteStorage::open(&path, false).expect("reopen");
        for n in (1..=32u64).filter(|&n| n != 7) {
            assert_eq!(
                s.load_user(id(n)).await.expect("load").expect("registered").wrapped_keys,
                vec![n as u8]
            );
        }
        let seven = s.load_user(id(7)).await.expect("load").expect("the foreign row");
        assert_eq!(seven.wrapped_keys, vec![7], "the failed registration wrote nothing over it");
    }

    /// A lost transaction whose read-back fails leaves the writer refusing commands until a
    /// read-back succeeds; then what the lost transaction did is gone from memory as from the
    /// file, and commands are accepted again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_reload_refuses_writes_until_one_succeeds() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("robert.sqlite");
        let s = SqliteStorage::open(&path, false).expect("open");
        let inject = |commits: usize, reloads: usize| {
            s.faults.commits.store(commits, Ordering::SeqCst);
            s.faults.reloads.store(reloads, Ordering::SeqCst);
        };
        assert!(s.insert_user(id(1), vec![1]).await.expect("insert"));

        // The commit is lost, and so are the next two read-backs: the one right after it, and
        // the one the next command tries first.
        inject(1, 2);
        s.insert_user(id(2), vec![2]).await.expect_err("commit lost");
        let refused = s.insert_user(id(3), vec![3]).await.expect_err("refused while stale");
        assert!(refused.to_string().contains("writes are refused"), "{refused}");
        assert!(s.insert_user(id(4), vec![4]).await.expect("read back: accepted again"));
        assert_eq!(s.load_user(id(2)).await.expect("load"), None, "the lost insert is gone from memory");
        assert_eq!(s.load_user(id(3)).await.expect("load"), None, "the refused insert did nothing");

        // The same for an ESR's status, which lives in the journal until folded.
        inject(1, 1);
        s.status_request(id(1), ep(10), 0, false).await.expect_err("commit lost");
        assert_eq!(
            s.status_request(id(1), ep(10), 0, false).await.expect("read back: accepted again"),
            StatusOutcome::Answer { at_risk: false },
            "the lost SRE_A does not make this ESR too early"
        );
        assert_eq!(s.load_user(id(1)).await.expect("load").expect("user").last_status_epoch, Some(ep(10)));
        drop(s);

        let s = SqliteStorage::open(&path, false).expect("reopen");
        let mut registered = Vec::new();
        for n in 1..=4 {
            registered.push(s.load_user(id(n)).await.expect("load").is_some());
        }
        assert_eq!(registered, [true, false, false, true], "the file holds what was answered, nothing else");
        assert_eq!(s.load_user(id(1)).await.expect("load").expect("user").last_status_epoch, Some(ep(10)));
    }
}
