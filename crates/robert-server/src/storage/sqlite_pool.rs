//! The SQLite backend's pool of uploaded pairs (§6.1, §6.2): one row per declaration in
//! `pool_declarations`, and an index of the slots in memory.
//!
//! Why: stored one row per pair under its random slot, each pair cost two writes at a random
//! place of a B-tree (its insert by `submit_report`, its delete by `pool_commit`), on the one
//! writer thread every command waits for; under `robert bench upload` at 1 M IDs that was half of
//! the writer's work. A declaration's pairs now go into one row (`slot ‖ len ‖ record`, each),
//! appended at the end of the table, and leave it in one delete.
//!
//! What it keeps:
//! - The trait's unit is still the pair: [`Storage::pool_take`] returns pairs, and
//!   [`Storage::pool_commit`] erases the slots it is given, whichever rows hold them. The writer
//!   maps each slot to its row ([`PoolIndex`]); a row whose slots are all erased is deleted, a row
//!   erased in part is rewritten with the pairs it still holds, so that a pair is processed
//!   exactly once across restarts.
//! - Privacy: a row links the pairs of one declaration, as the request that brought them did, and
//!   only until the mixer processed them: the row is then deleted (with `secure_delete`, its
//!   bytes zeroed) and the WAL scrubbed. Nothing of what the mixer writes (LEE_A, the federation
//!   outbox) says which declaration, or which batch, a pair came from: the mixer shuffles each
//!   batch, and LEE_A is kept in (epoch, ID) order.
//! - Order: [`take`] reads rows in arrival order, so the oldest declarations are mixed first (the
//!   bounded delay of §6.1); the mixer shuffles the pairs of every batch across its declarations.
//! - Like the IDTable, the index changes only as the last step of a command that succeeded, and
//!   the writer reads it back from the file if a transaction is lost.
//!
//! [`Storage::pool_take`]: super::Storage::pool_take
//! [`Storage::pool_commit`]: super::Storage::pool_commit

use super::{FastMap, FastSet, PoolEntry};
use rusqlite::{Connection, params};
use std::sync::Mutex;

/// A slot: the random key of one pair in the pool.
pub(crate) type Slot = [u8; 16];

/// Bytes before a pair's record in a row: its slot and the record's length (2 bytes, big-endian).
const HEADER: usize = 16 + 2;

/// The writer's map of the pool: which row holds each slot. See the [module docs](self).
#[derive(Default)]
pub(crate) struct PoolIndex {
    inner: Mutex<Inner>,
}

/// Counts only: the index holds slots.
impl std::fmt::Debug for PoolIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("PoolIndex")
            .field("pairs", &inner.slots.len())
            .field("rows", &inner.live.len())
            .finish()
    }
}

#[derive(Default)]
struct Inner {
    /// Slot → `pool_declarations.seq` of the row holding it.
    slots: FastMap<Slot, i64>,
    /// Row → how many of its pairs are still in the pool.
    live: FastMap<i64, usize>,
}

/// The slots of a batch that are in the pool, and the rows holding them: what
/// [`PoolIndex::erase`] erases.
#[derive(Default)]
pub(crate) struct Present {
    /// Slot → its row.
    slots: FastMap<Slot, i64>,
}

/// Counts only: the set holds slots.
impl std::fmt::Debug for Present {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Present").field("pairs", &self.slots.len()).finish()
    }
}

impl Present {
    /// Whether `slot` was in the pool.
    pub(crate) fn contains(&self, slot: &Slot) -> bool {
        self.slots.contains_key(slot)
    }

    /// How many.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }
}

impl PoolIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every change is made under one lock by calls that do not panic halfway.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Pairs in the pool.
    pub(crate) fn depth(&self) -> u64 {
        self.lock().slots.len() as u64
    }

    /// Reads the index back from the table (opening the store, or after a lost transaction).
    pub(crate) fn reload(&self, conn: &Connection) -> rusqlite::Result<()> {
        let mut fresh = Inner::default();
        let mut stmt = conn.prepare("SELECT seq, entries FROM pool_declarations")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let seq: i64 = row.get(0)?;
            let entries = decode(row.get_ref(1)?.as_blob()?).ok_or_else(malformed)?;
            fresh.live.insert(seq, entries.len());
            for entry in entries {
                fresh.slots.insert(entry.slot, seq);
            }
        }
        *self.lock() = fresh;
        Ok(())
    }

    /// §6.1: stores a declaration's pairs as one row. Fails (a caller bug) if a slot is already
    /// in the pool or twice in `entries`, having changed nothing. An empty declaration stores no
    /// row.
    pub(crate) fn insert(&self, conn: &Connection, entries: &[PoolEntry]) -> rusqlite::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        {
            let index = self.lock();
            let mut seen = FastSet::with_capacity_and_hasher(entries.len(), Default::default());
            if entries.iter().any(|e| index.slots.contains_key(&e.slot) || !seen.insert(e.slot)) {
                return Err(constraint("pool slot already in use"));
            }
        }
        // In slot order, as a table keyed by slot would hold them: random, not the order the
        // App listed its contacts in.
        let mut sorted: Vec<&PoolEntry> = entries.iter().collect();
        sorted.sort_unstable_by_key(|e| e.slot);
        let blob = encode(sorted)?;
        let seq: i64 = conn
            .prepare_cached("INSERT INTO pool_declarations (entries) VALUES (?1) RETURNING seq")?
            .query_row([blob], |row| row.get(0))?;
        // The command's last step.
        let mut index = self.lock();
        index.live.insert(seq, entries.len());
        for entry in entries {
            index.slots.insert(entry.slot, seq);
        }
        Ok(())
    }

    /// Those of `slots` that are in the pool (what [`PoolIndex::erase`] will erase).
    pub(crate) fn present(&self, slots: &[Slot]) -> Present {
        let index = self.lock();
        let mut present = FastMap::with_capacity_and_hasher(slots.len(), Default::default());
        for slot in slots {
            if let Some(seq) = index.slots.get(slot) {
                present.insert(*slot, *seq);
            }
        }
        Present { slots: present }
    }

    /// §6.2 step 10: erases the slots of `present` (found by [`PoolIndex::present`] in this
    /// command): deletes each row left with no pair, rewrites each row left with some. Call it
    /// as the command's last step: it changes the index once the database is written.
    pub(crate) fn erase(&self, conn: &Connection, present: &Present) -> rusqlite::Result<()> {
        let mut per_row: FastMap<i64, usize> = FastMap::default();
        for seq in present.slots.values() {
            *per_row.entry(*seq).or_default() += 1;
        }
        let mut rows: Vec<(i64, usize)> = per_row.into_iter().collect();
        rows.sort_unstable();
        let mut left = Vec::with_capacity(rows.len());
        {
            let index = self.lock();
            for (seq, erased) in rows {
                let live = index.live.get(&seq).copied().unwrap_or(0);
                left.push((seq, live.saturating_sub(erased)));
            }
        }
        for &(seq, remaining) in &left {
            if remaining == 0 {
                conn.prepare_cached("DELETE FROM pool_declarations WHERE seq = ?1")?.execute([seq])?;
                continue;
            }
            let old: Vec<u8> = conn
                .prepare_cached("SELECT entries FROM pool_declarations WHERE seq = ?1")?
                .query_row([seq], |row| row.get(0))?;
            let old = decode(&old).ok_or_else(malformed)?;
            let blob = encode(old.iter().filter(|e| !present.contains(&e.slot)))?;
            conn.prepare_cached("UPDATE pool_declarations SET entries = ?1 WHERE seq = ?2")?
                .execute(params![blob, seq])?;
        }
        // The command's last step.
        let mut index = self.lock();
        for slot in present.slots.keys() {
            index.slots.remove(slot);
        }
        for (seq, remaining) in left {
            if remaining == 0 {
                index.live.remove(&seq);
            } else {
                index.live.insert(seq, remaining);
            }
        }
        Ok(())
    }
}

/// Up to `max` pairs of the pool, oldest declarations first (on a read-only connection).
pub(crate) fn take(conn: &Connection, max: usize) -> rusqlite::Result<Vec<PoolEntry>> {
    let mut out = Vec::new();
    if max == 0 {
        return Ok(out);
    }
    let mut stmt = conn.prepare_cached("SELECT entries FROM pool_declarations ORDER BY seq")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let entries = decode(row.get_ref(0)?.as_blob()?).ok_or_else(malformed)?;
        out.extend(entries.into_iter().take(max - out.len()));
        if out.len() == max {
            break;
        }
    }
    Ok(out)
}

/// A row's bytes: `slot(16) ‖ len(2) ‖ record` per pair.
fn encode<'a>(entries: impl IntoIterator<Item = &'a PoolEntry>) -> rusqlite::Result<Vec<u8>> {
    let mut out = Vec::new();
    for PoolEntry { slot, record } in entries {
        let len =
            u16::try_from(record.len()).map_err(|_| constraint("pool record longer than 65535 bytes"))?;
        out.reserve(HEADER + record.len());
        out.extend_from_slice(slot);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(record);
    }
    Ok(out)
}

/// The pairs of a row, or `None` if its bytes are not what [`encode`] writes.
fn decode(mut bytes: &[u8]) -> Option<Vec<PoolEntry>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let header = bytes.get(..HEADER)?;
        let slot = Slot::try_from(&header[..16]).ok()?;
        let len = usize::from(u16::from_be_bytes([header[16], header[17]]));
        let record = bytes.get(HEADER..HEADER + len)?;
        out.push(PoolEntry { slot, record: record.to_vec() });
        bytes = &bytes[HEADER + len..];
    }
    Some(out)
}

fn malformed() -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Blob,
        "stored pool row malformed".into(),
    )
}

/// A constraint failure of SQLite's kind, with a message that carries no bytes.
fn constraint(message: &str) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT),
        Some(message.to_owned()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn rows_decode_to_what_was_encoded(
            entries in proptest::collection::vec((any::<[u8; 16]>(), proptest::collection::vec(any::<u8>(), 0..300)), 0..20)
        ) {
            let entries: Vec<PoolEntry> =
                entries.into_iter().map(|(slot, record)| PoolEntry { slot, record }).collect();
            let bytes = encode(&entries).expect("encode");
            prop_assert_eq!(decode(&bytes), Some(entries));
        }

        #[test]
        fn truncated_rows_are_malformed(record in proptest::collection::vec(any::<u8>(), 1..50), cut in 1usize..60) {
            let bytes = encode([&PoolEntry { slot: [7; 16], record }]).expect("encode");
            let cut = cut.min(bytes.len() - 1); // all of it would be the empty row: valid
            prop_assert_eq!(decode(&bytes[..bytes.len() - cut]), None);
        }
    }
}
