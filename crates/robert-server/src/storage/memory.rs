//! [`MemoryStorage`]: the reference backend, plain maps behind one [`std::sync::Mutex`].
//!
//! What it guarantees: every method runs under the one lock, start to finish, so each call is
//! atomic and calls are linearizable (the order in which they take the lock). It is the executable
//! reading of the [`Storage`] contract: simple enough to be obviously right, and the backend the
//! contract suite ([`super::contract`]) is first checked against.
//!
//! What it does not guarantee: durability. Nothing survives the process, so "durable when the
//! future resolves" holds only in the sense that the state is visible to every later call. It is
//! for tests and the simulator, never for `robert serve` with real users.
//!
//! If a thread panicked while holding the lock (which no code path here does), every later call
//! fails with [`StorageError::Backend`] instead of working on a half-updated state.

use super::id_table::IdTable;
pub use super::id_table::LayoutEstimate;
use super::{
    ExpiryStats, OutboundBatch, PoolEntry, ProcessedBatch, RegisterOutcome, Result, Stats, StatusOutcome,
    Storage, StorageError, TokenUse, UserRecord,
};
use robert_proto::{CountryCode, Epoch, Id};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

#[derive(Default)]
struct State {
    users: IdTable,
    /// Slot → encoded upload record. A `HashMap` iterates in an order that depends on a per-process
    /// random seed, never on insertion order.
    pool: HashMap<[u8; 16], Vec<u8>>,
    /// `jti` → expiry (Unix seconds).
    used_tokens: HashMap<String, u64>,
    server_keys: BTreeMap<u32, Vec<u8>>,
    /// Federation outbox, in the order pairs entered it.
    outbox: Vec<(CountryCode, Vec<u8>)>,
    /// The pending batch of each country (at most one).
    pending: BTreeMap<CountryCode, OutboundBatch>,
    /// The last sequence number used per country.
    last_seq: HashMap<CountryCode, u64>,
}

/// The in-memory reference backend. See the [module docs](self).
#[derive(Default)]
pub struct MemoryStorage {
    state: Mutex<State>,
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// What `n` registered IDs without exposures should occupy, from this backend's layout
    /// (`robert bench storage` prints it beside the measured resident-set growth).
    pub fn layout_estimate(n: usize) -> LayoutEstimate {
        IdTable::layout_estimate(n)
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>> {
        self.state.lock().map_err(|_| StorageError::Backend("memory storage lock poisoned".into()))
    }
}

impl std::fmt::Debug for MemoryStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStorage").finish_non_exhaustive()
    }
}

impl Storage for MemoryStorage {
    async fn insert_user(&self, id: Id, wrapped_keys: Vec<u8>) -> Result<bool> {
        Ok(self.lock()?.users.insert(id, wrapped_keys))
    }

    async fn spend_token(&self, token: TokenUse) -> Result<bool> {
        let mut state = self.lock()?;
        if state.used_tokens.contains_key(&token.jti) {
            return Ok(false);
        }
        state.used_tokens.insert(token.jti, token.expires_unix);
        Ok(true)
    }

    async fn register_user(&self, token: TokenUse, id: Id, wrapped_keys: Vec<u8>) -> Result<RegisterOutcome> {
        // Under the one lock: the token is checked, the ID inserted if free, then the token spent.
        let mut state = self.lock()?;
        if state.used_tokens.contains_key(&token.jti) {
            return Ok(RegisterOutcome::TokenSpent);
        }
        if !state.users.insert(id, wrapped_keys) {
            return Ok(RegisterOutcome::IdTaken);
        }
        state.used_tokens.insert(token.jti, token.expires_unix);
        Ok(RegisterOutcome::Registered)
    }

    async fn load_user(&self, id: Id) -> Result<Option<UserRecord>> {
        Ok(self.lock()?.users.get(id))
    }

    async fn load_user_keys(&self, ids: Vec<Id>) -> Result<Vec<(Id, Vec<u8>)>> {
        Ok(self.lock()?.users.keys(ids))
    }

    async fn status_request(
        &self,
        id: Id,
        now: Epoch,
        min_interval: u32,
        at_risk: bool,
    ) -> Result<StatusOutcome> {
        let mut state = self.lock()?;
        let outcome = state.users.decide_status(id, now, min_interval, at_risk);
        if let StatusOutcome::Answer { at_risk } = outcome {
            state.users.set_status(id, Some(now), at_risk);
        }
        Ok(outcome)
    }

    async fn acknowledge(&self, id: Id) -> Result<bool> {
        Ok(self.lock()?.users.acknowledge(id))
    }

    async fn reset_status(&self, id: Id, token: TokenUse) -> Result<bool> {
        let mut state = self.lock()?;
        if !state.users.contains(id) || state.used_tokens.contains_key(&token.jti) {
            return Ok(false);
        }
        state.used_tokens.insert(token.jti, token.expires_unix);
        Ok(state.users.reset(id))
    }

    async fn unregister(&self, id: Id) -> Result<bool> {
        Ok(self.lock()?.users.remove(id))
    }

    async fn delete_history(&self, id: Id) -> Result<bool> {
        Ok(self.lock()?.users.clear_exposures(id))
    }

    async fn submit_report(&self, token: TokenUse, entries: Vec<PoolEntry>) -> Result<bool> {
        let mut state = self.lock()?;
        if state.used_tokens.contains_key(&token.jti) {
            return Ok(false);
        }
        // All or nothing: check every slot is free before changing anything. Slots are 128 random
        // bits, so a collision means a bug in the caller, reported as the SQL backend would.
        let mut fresh = HashSet::with_capacity(entries.len());
        for entry in &entries {
            if state.pool.contains_key(&entry.slot) || !fresh.insert(entry.slot) {
                return Err(StorageError::Backend("pool slot already taken".into()));
            }
        }
        state.used_tokens.insert(token.jti, token.expires_unix);
        for entry in entries {
            state.pool.insert(entry.slot, entry.record);
        }
        Ok(true)
    }

    async fn pool_take(&self, max: usize) -> Result<Vec<PoolEntry>> {
        let state = self.lock()?;
        Ok(state
            .pool
            .iter()
            .take(max)
            .map(|(slot, record)| PoolEntry { slot: *slot, record: record.clone() })
            .collect())
    }

    async fn pool_commit(&self, batch: ProcessedBatch) -> Result<u64> {
        let mut state = self.lock()?;
        let mut erased = HashSet::new();
        for slot in &batch.slots {
            if state.pool.remove(slot).is_some() {
                erased.insert(*slot);
            }
        }
        for (id, exposure, slot) in &batch.exposures {
            if !erased.contains(slot) {
                continue;
            }
            state.users.add_exposure(*id, exposure);
        }
        for (cc, record, slot) in batch.outbox {
            if erased.contains(&slot) {
                state.outbox.push((cc, record));
            }
        }
        Ok(erased.len() as u64)
    }

    async fn expire(
        &self,
        lee_before: Epoch,
        tokens_before_unix: u64,
        keys_before_day: u32,
    ) -> Result<ExpiryStats> {
        let mut state = self.lock()?;
        let mut stats = ExpiryStats { exposures: state.users.expire(lee_before), ..ExpiryStats::default() };
        let before = state.used_tokens.len();
        state.used_tokens.retain(|_, expires| *expires >= tokens_before_unix);
        stats.tokens = (before - state.used_tokens.len()) as u64;
        let before = state.server_keys.len();
        state.server_keys.retain(|day, _| *day >= keys_before_day);
        stats.server_keys = (before - state.server_keys.len()) as u64;
        Ok(stats)
    }

    async fn put_server_key(&self, day: u32, wrapped: Vec<u8>) -> Result<Vec<u8>> {
        let mut state = self.lock()?;
        Ok(state.server_keys.entry(day).or_insert(wrapped).clone())
    }

    async fn server_keys(&self) -> Result<Vec<(u32, Vec<u8>)>> {
        let state = self.lock()?;
        Ok(state.server_keys.iter().map(|(day, wrapped)| (*day, wrapped.clone())).collect())
    }

    async fn federation_next_batch(
        &self,
        country: CountryCode,
        max: usize,
        fresh_id: [u8; 16],
        now: u32,
    ) -> Result<Option<OutboundBatch>> {
        let mut state = self.lock()?;
        if let Some(b) = state.pending.get(&country) {
            return Ok(Some(b.clone()));
        }
        let mut records = Vec::new();
        let mut kept = Vec::with_capacity(state.outbox.len());
        for (cc, record) in std::mem::take(&mut state.outbox) {
            if cc == country && records.len() < max.max(1) {
                records.push(record);
            } else {
                kept.push((cc, record));
            }
        }
        state.outbox = kept;
        if records.is_empty() {
            return Ok(None);
        }
        let seq = state.last_seq.get(&country).copied().unwrap_or(0) + 1;
        state.last_seq.insert(country, seq);
        let batch = OutboundBatch { country, id: fresh_id, seq, created: now, records };
        state.pending.insert(country, batch.clone());
        Ok(Some(batch))
    }

    async fn federation_batch_done(&self, country: CountryCode, id: [u8; 16]) -> Result<bool> {
        let mut state = self.lock()?;
        if state.pending.get(&country).is_some_and(|b| b.id == id) {
            state.pending.remove(&country);
            return Ok(true);
        }
        Ok(false)
    }

    async fn federation_depths(&self) -> Result<Vec<(CountryCode, u64)>> {
        let state = self.lock()?;
        let mut depths: BTreeMap<CountryCode, u64> = BTreeMap::new();
        for (cc, _) in &state.outbox {
            *depths.entry(*cc).or_default() += 1;
        }
        for (cc, b) in &state.pending {
            *depths.entry(*cc).or_default() += b.records.len() as u64;
        }
        Ok(depths.into_iter().collect())
    }

    async fn pool_depth(&self) -> Result<u64> {
        Ok(self.lock()?.pool.len() as u64)
    }

    async fn stats(&self) -> Result<Stats> {
        let state = self.lock()?;
        Ok(Stats {
            users: state.users.len() as u64,
            pool_depth: state.pool.len() as u64,
            outbox_depth: (state.outbox.len()
                + state.pending.values().map(|b| b.records.len()).sum::<usize>())
                as u64,
        })
    }
}
