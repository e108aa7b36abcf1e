//! The SQLite backend's status journal: what ESRs change in `user_status` (SRE_A and UN_A, §7
//! steps 7–8), appended to a log table and later folded into `user_status` in key order.
//!
//! Why: an ESR changes one row of a random page. Written in place, each ESR costs a 4 KiB WAL
//! frame (copied and checksummed), then a checkpoint copy of that page into the database file:
//! at 1 M IDs that was most of the writer thread's time, and the writer is the one thread every
//! ESR waits for. Appended to `status_log` (rowid order, so always the last page), a hundred and
//! more ESRs share one page write. The fold later rewrites each `user_status` page once, however
//! many of its rows changed, and in key order. `user_status` holds only the ID, SRE_A and UN_A
//! (about 300 rows a page), not the `users` row with its wrapped keys (about 30 a page): under
//! `robert bench status` at 1 M IDs, folding into `users` had taken a quarter of the writer's
//! time, and moving the fold to `user_status` took the writer's bytes written per ESR from about
//! 1,100 to about 300.
//!
//! How it stays correct:
//! - `status_log` rows are written in the same transaction as the rest of the command, so they
//!   are exactly as durable as an in-place update; a restart replays the log (in `seq` order,
//!   latest state wins) into memory.
//! - In memory, [`Journal`] maps each ID with log rows to its latest state: what a fold writes,
//!   and, when the store opens, what is laid over the `user_status` rows to rebuild the in-memory
//!   IDTable (which, not this map, is what reads and the writer's decisions use). The writer
//!   thread (the only writer) changes it only as the last step of a command that succeeded; if
//!   a transaction then fails to commit, the writer reloads it from the table (the committed
//!   truth).
//! - Unregistering an ID with pending state appends a tombstone (`state = 2`), so that a replay
//!   does not bring back state of an ID that is gone (IDs may be drawn again later).
//! - A fold under load runs in slices ([`FoldPass`]), so that writes never wait for a whole one
//!   (a fold of 262,144 rows at 1 M IDs took over half a second, during which every ESR waited).
//!   A pass takes the pending IDs as of the log's last row `upto`, in ID order; the writer
//!   writes a few hundred of them into `user_status` inside each group's transaction (each with its
//!   *current* state, skipping IDs unregistered meanwhile), then deletes the log rows up to
//!   `upto` in slices too, and only then forgets the states no newer than `upto`. At any point a
//!   replay is still right: each `user_status` row written holds a state no older than any log row
//!   deleted so far, and the rows left are replayed over it in `seq` order, the latest last.
//! - When the writer is idle, and when the store closes, it folds everything in one
//!   transaction: every pending state written into `user_status` in ID order, the log emptied,
//!   committed; only then is the map cleared.

use rusqlite::{Connection, params};
use std::collections::HashMap;
use std::sync::Mutex;

/// States a fold slice writes into `user_status` (about half a millisecond of the writer's time at 1 M IDs;
/// at 80k ESRs/s the writer commits about a thousand groups a second, so this folds over three
/// times faster than ESRs append).
const SLICE_STATES: usize = 256;

/// Log rows a fold slice deletes once a pass has written its states.
const SLICE_ROWS: i64 = 16_384;

/// Pending SRE_A / UN_A of one ID, newer than its `user_status` row (if it has one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pending {
    /// SRE_A: the epoch of the last ESR answered (§7 step 8).
    pub sre: Option<i64>,
    /// UN_A: the user was told they are at risk.
    pub notified: bool,
}

/// Writes each ID's state into `user_status` (inserted on its first fold), in the order given.
fn write_states(conn: &Connection, states: &[(i64, Pending)]) -> rusqlite::Result<()> {
    let mut upsert = conn.prepare_cached(
        "INSERT INTO user_status (id, sre, notified) VALUES (?1, ?2, ?3) \
         ON CONFLICT (id) DO UPDATE SET sre = excluded.sre, notified = excluded.notified",
    )?;
    for (id, p) in states {
        upsert.execute(params![id, p.sre, p.notified])?;
    }
    Ok(())
}

/// `status_log.state` of a tombstone: the ID was unregistered.
const REMOVED: i64 = 2;

/// The in-memory view of `status_log`. See the [module docs](self).
#[derive(Default)]
pub(crate) struct Journal {
    inner: Mutex<Inner>,
}

/// Counts only: the map holds IDs.
impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("Journal").field("pending", &inner.pending.len()).field("rows", &inner.rows).finish()
    }
}

#[derive(Default)]
struct Inner {
    /// ID → its latest state and the `seq` of the log row that holds it.
    pending: HashMap<i64, (Pending, i64)>,
    /// Rows in `status_log` (what a fold will delete).
    rows: u64,
}

/// A fold in slices (see the [module docs](self)): the IDs pending as of log row `upto`, in ID
/// order, and how far the committed slices got.
pub(crate) struct FoldPass {
    upto: i64,
    ids: Vec<i64>,
    /// IDs whose state is in `user_status` (committed slices).
    written: usize,
    /// Log rows up to this `seq` are deleted (committed slices), once every ID is written.
    deleted_upto: i64,
}

/// Counts only: the pass holds IDs.
impl std::fmt::Debug for FoldPass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FoldPass")
            .field("upto", &self.upto)
            .field("ids", &self.ids.len())
            .field("written", &self.written)
            .field("deleted_upto", &self.deleted_upto)
            .finish()
    }
}

/// What one slice did, applied to the pass once its transaction committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slice {
    /// Wrote this many more states into `user_status`.
    Wrote(usize),
    /// Deleted the log rows up to `to` (`seq`), `rows` of them.
    Deleted { to: i64, rows: u64 },
}

impl Journal {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map half-changed (every change is one
        // insert or remove): go on with it.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads the log as committed (replay in `seq` order) and makes it the in-memory state.
    pub(crate) fn reload(&self, conn: &Connection) -> rusqlite::Result<()> {
        let mut pending = HashMap::new();
        let mut rows = 0u64;
        let mut stmt = conn.prepare_cached("SELECT id, sre, state, seq FROM status_log ORDER BY seq")?;
        let mut q = stmt.query([])?;
        while let Some(row) = q.next()? {
            rows += 1;
            let id: i64 = row.get(0)?;
            let state: i64 = row.get(2)?;
            if state == REMOVED {
                pending.remove(&id);
            } else {
                pending.insert(id, (Pending { sre: row.get(1)?, notified: state == 1 }, row.get(3)?));
            }
        }
        *self.lock() = Inner { pending, rows };
        Ok(())
    }

    /// The pending state of `id`, if it has one.
    pub(crate) fn get(&self, id: i64) -> Option<Pending> {
        self.lock().pending.get(&id).map(|(p, _)| *p)
    }

    /// Every pending state, in no order.
    pub(crate) fn pending(&self) -> Vec<(i64, Pending)> {
        self.lock().pending.iter().map(|(&id, &(p, _))| (id, p)).collect()
    }

    /// Rows the log holds.
    pub(crate) fn rows(&self) -> u64 {
        self.lock().rows
    }

    /// Appends `state` for `id` to the log (in the caller's transaction), then makes it the
    /// pending state. The last step of a command: nothing after it may fail.
    pub(crate) fn record(&self, conn: &Connection, id: i64, state: Pending) -> rusqlite::Result<()> {
        conn.prepare_cached("INSERT INTO status_log (id, sre, state) VALUES (?1, ?2, ?3)")?
            .execute(params![id, state.sre, i64::from(state.notified)])?;
        let seq = conn.last_insert_rowid();
        let mut inner = self.lock();
        inner.pending.insert(id, (state, seq));
        inner.rows += 1;
        Ok(())
    }

    /// `id` was unregistered: forgets its pending state, with a tombstone in the log if it had
    /// one. The last step of a command.
    pub(crate) fn remove(&self, conn: &Connection, id: i64) -> rusqlite::Result<()> {
        if self.get(id).is_none() {
            return Ok(());
        }
        conn.prepare_cached("INSERT INTO status_log (id, sre, state) VALUES (?1, NULL, ?2)")?
            .execute(params![id, REMOVED])?;
        let mut inner = self.lock();
        inner.pending.remove(&id);
        inner.rows += 1;
        Ok(())
    }

    /// Writes every pending state into `user_status`, in ID order, and empties the log, in the
    /// caller's transaction. Returns the IDs written. The caller calls [`Journal::clear`] once
    /// the transaction committed, and nothing if it did not.
    pub(crate) fn fold(&self, conn: &Connection) -> rusqlite::Result<usize> {
        let mut states = self.pending();
        states.sort_unstable_by_key(|&(id, _)| id);
        write_states(conn, &states)?;
        conn.prepare_cached("DELETE FROM status_log")?.execute([])?;
        Ok(states.len())
    }

    /// The fold committed: nothing is pending any more.
    pub(crate) fn clear(&self) {
        *self.lock() = Inner::default();
    }

    /// Starts a fold in slices over what is pending now (`None` if nothing is).
    pub(crate) fn start_pass(&self, conn: &Connection) -> rusqlite::Result<Option<FoldPass>> {
        let upto: Option<i64> =
            conn.prepare_cached("SELECT max(seq) FROM status_log")?.query_row([], |r| r.get(0))?;
        let Some(upto) = upto else { return Ok(None) };
        let mut ids: Vec<i64> = self.lock().pending.keys().copied().collect();
        ids.sort_unstable();
        Ok(Some(FoldPass { upto, ids, written: 0, deleted_upto: 0 }))
    }

    /// The pass's next slice, in the caller's transaction: the next IDs' current states into
    /// `user_status` (`scale` × [`SLICE_STATES`] of them), or, once all are written, the next log rows
    /// up to `upto` deleted. `None` when the pass is done. Changes nothing in memory: the caller
    /// applies the slice to the pass ([`Journal::advance`]) once its transaction committed.
    pub(crate) fn fold_slice(
        &self,
        conn: &Connection,
        pass: &FoldPass,
        scale: usize,
    ) -> rusqlite::Result<Option<Slice>> {
        if pass.written < pass.ids.len() {
            let ids = &pass.ids[pass.written..pass.ids.len().min(pass.written + SLICE_STATES * scale)];
            let states: Vec<(i64, Pending)> = {
                let inner = self.lock();
                // An ID no longer pending was unregistered since: its row is gone, or belongs to
                // a new registration of the same ID, which starts clean.
                ids.iter().filter_map(|id| inner.pending.get(id).map(|(p, _)| (*id, *p))).collect()
            };
            write_states(conn, &states)?;
            return Ok(Some(Slice::Wrote(ids.len())));
        }
        if pass.deleted_upto < pass.upto {
            let first: Option<i64> =
                conn.prepare_cached("SELECT min(seq) FROM status_log")?.query_row([], |r| r.get(0))?;
            let to = first.map_or(pass.upto, |f| pass.upto.min(f.saturating_add(SLICE_ROWS * scale as i64)));
            let rows = conn.prepare_cached("DELETE FROM status_log WHERE seq <= ?1")?.execute([to])?;
            return Ok(Some(Slice::Deleted { to, rows: rows as u64 }));
        }
        Ok(None)
    }

    /// A committed slice's deleted rows are no longer in the log; the pass is done once the last
    /// is: forgets every state no newer than its `upto` (written into `user_status`). Returns whether
    /// the pass is done.
    pub(crate) fn advance(&self, pass: &mut FoldPass, slice: Slice) -> bool {
        match slice {
            Slice::Wrote(n) => pass.written += n,
            Slice::Deleted { to, rows } => {
                pass.deleted_upto = to;
                let mut inner = self.lock();
                inner.rows = inner.rows.saturating_sub(rows);
                if to >= pass.upto {
                    let upto = pass.upto;
                    inner.pending.retain(|_, (_, seq)| *seq > upto);
                    return true;
                }
            }
        }
        false
    }
}
