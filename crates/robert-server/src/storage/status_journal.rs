//! The SQLite backend's status journal: what ESRs change in `users` (SRE_A and UN_A, §7 steps
//! 7–8), appended to a log table and later folded into `users` in key order.
//!
//! Why: an ESR changes one row of a random `users` page. Written in place, each ESR costs a 4 KiB
//! WAL frame (copied and checksummed), then a checkpoint copy of that page into the database
//! file: at 1 M IDs that was most of the writer thread's time, and the writer is the one thread
//! every ESR waits for. Appended to `status_log` (rowid order, so always the last page), a hundred
//! and more ESRs share one page write. The fold later rewrites `users` once per *page*, however
//! many of its rows changed, and in key order.
//!
//! How it stays correct:
//! - `status_log` rows are written in the same transaction as the rest of the command, so they
//!   are exactly as durable as an in-place update; a restart replays the log (in `seq` order,
//!   latest state wins) into memory.
//! - In memory, [`Journal`] maps each ID with log rows to its latest state: what a fold writes,
//!   and, when the store opens, what is laid over the `users` rows to rebuild the in-memory
//!   IDTable (which, not this map, is what reads and the writer's decisions use). The writer
//!   thread (the only writer) changes it only as the last step of a command that succeeded; if
//!   a transaction then fails to commit, the writer reloads it from the table (the committed
//!   truth).
//! - Unregistering an ID with pending state appends a tombstone (`state = 2`), so that a replay
//!   does not bring back state of an ID that is gone (IDs may be drawn again later).
//! - A fold runs in the writer thread in a transaction of its own: every pending state written
//!   into `users` in ID order, the log emptied, committed; only then is the map cleared.

use rusqlite::{Connection, params};
use std::collections::HashMap;
use std::sync::Mutex;

/// Pending SRE_A / UN_A of one ID, newer than its `users` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pending {
    /// SRE_A: the epoch of the last ESR answered (§7 step 8).
    pub sre: Option<i64>,
    /// UN_A: the user was told they are at risk.
    pub notified: bool,
}

/// `status_log.state` of a tombstone: the ID was unregistered.
const REMOVED: i64 = 2;

/// The in-memory view of `status_log`. See the [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct Journal {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    pending: HashMap<i64, Pending>,
    /// Rows in `status_log` (what a fold will delete).
    rows: u64,
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
        let mut stmt = conn.prepare_cached("SELECT id, sre, state FROM status_log ORDER BY seq")?;
        let mut q = stmt.query([])?;
        while let Some(row) = q.next()? {
            rows += 1;
            let id: i64 = row.get(0)?;
            let state: i64 = row.get(2)?;
            if state == REMOVED {
                pending.remove(&id);
            } else {
                pending.insert(id, Pending { sre: row.get(1)?, notified: state == 1 });
            }
        }
        *self.lock() = Inner { pending, rows };
        Ok(())
    }

    /// The pending state of `id`, if it has one.
    pub(crate) fn get(&self, id: i64) -> Option<Pending> {
        self.lock().pending.get(&id).copied()
    }

    /// Every pending state, in no order.
    pub(crate) fn pending(&self) -> Vec<(i64, Pending)> {
        self.lock().pending.iter().map(|(&id, &p)| (id, p)).collect()
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
        let mut inner = self.lock();
        inner.pending.insert(id, state);
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

    /// Writes every pending state into `users`, in ID order, and empties the log, in the
    /// caller's transaction. Returns the IDs written. The caller calls [`Journal::clear`] once
    /// the transaction committed, and nothing if it did not.
    pub(crate) fn fold(&self, conn: &Connection) -> rusqlite::Result<usize> {
        let mut states = self.pending();
        states.sort_unstable_by_key(|&(id, _)| id);
        let mut update = conn.prepare_cached("UPDATE users SET sre = ?2, notified = ?3 WHERE id = ?1")?;
        for (id, p) in &states {
            update.execute(params![id, p.sre, p.notified])?;
        }
        conn.prepare_cached("DELETE FROM status_log")?.execute([])?;
        Ok(states.len())
    }

    /// The fold committed: nothing is pending any more.
    pub(crate) fn clear(&self) {
        *self.lock() = Inner::default();
    }
}
