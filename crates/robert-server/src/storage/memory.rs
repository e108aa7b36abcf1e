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

use super::{
    ExpiryStats, Exposure, OutboundBatch, PoolEntry, ProcessedBatch, Result, Stats, StatusOutcome, Storage,
    StorageError, TokenUse, UserRecord,
};
use crate::keystore::WRAPPED_SESSION_KEYS_LEN as WRAPPED_LEN;
use robert_proto::{CountryCode, Epoch, Id};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

/// A user's wrapped keys: inline at the keystore's length (one allocation per user, not two),
/// boxed otherwise (the trait does not fix the length).
enum WrappedKeys {
    Inline([u8; WRAPPED_LEN]),
    Other(Box<[u8]>),
}

impl WrappedKeys {
    fn new(bytes: Vec<u8>) -> Self {
        match <[u8; WRAPPED_LEN]>::try_from(bytes.as_slice()) {
            Ok(inline) => Self::Inline(inline),
            Err(_) => Self::Other(bytes.into_boxed_slice()),
        }
    }

    fn to_vec(&self) -> Vec<u8> {
        match self {
            Self::Inline(bytes) => bytes.to_vec(),
            Self::Other(bytes) => bytes.to_vec(),
        }
    }
}

/// One registered ID (§3.2). Boxed in the table: the table's buckets (a power of two, up to half
/// empty) then hold 16 bytes each, and the user its own allocation.
struct User {
    wrapped_keys: WrappedKeys,
    notified: bool,
    acknowledged: bool,
    last_status_epoch: Option<Epoch>,
    /// LEE_A keyed by epoch, so it comes out in increasing epoch order.
    exposures: BTreeMap<Epoch, Exposure>,
}

#[derive(Default)]
struct State {
    users: HashMap<Id, Box<User>>,
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

/// [`MemoryStorage::layout_estimate`]'s answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayoutEstimate {
    /// Bytes of one table bucket.
    pub bucket_bytes: usize,
    /// Buckets of the table.
    pub buckets: usize,
    /// Heap bytes of one user (its box, with its wrapped keys inline).
    pub heap_bytes_per_user: usize,
    /// Everything, per user.
    pub bytes_per_user: f64,
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

    /// What `n` registered IDs without exposures should occupy, from this backend's layout:
    /// the table's buckets (hashbrown: a power of two, at most 7/8 full, one control byte per
    /// bucket, each holding an ID and a box) plus one heap chunk per user (glibc malloc: the
    /// request plus an 8-byte header, rounded up to 16). `robert bench storage` prints it beside
    /// the measured resident-set growth.
    pub fn layout_estimate(n: usize) -> LayoutEstimate {
        let bucket_bytes = std::mem::size_of::<(Id, Box<User>)>() + 1;
        let buckets = (n.max(1) * 8).div_ceil(7).next_power_of_two();
        let heap_bytes_per_user = (std::mem::size_of::<User>() + 8).div_ceil(16) * 16;
        let bytes_per_user = (bucket_bytes * buckets) as f64 / n.max(1) as f64 + heap_bytes_per_user as f64;
        LayoutEstimate { bucket_bytes, buckets, heap_bytes_per_user, bytes_per_user }
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

fn add_exposure(into: &mut Exposure, more: &Exposure) {
    into.hellos = into.hellos.saturating_add(more.hellos);
    into.rssi_sum = into.rssi_sum.saturating_add(more.rssi_sum);
    into.rssi_count = into.rssi_count.saturating_add(more.rssi_count);
}

impl Storage for MemoryStorage {
    async fn insert_user(&self, id: Id, wrapped_keys: Vec<u8>) -> Result<bool> {
        let mut state = self.lock()?;
        if state.users.contains_key(&id) {
            return Ok(false);
        }
        state.users.insert(
            id,
            Box::new(User {
                wrapped_keys: WrappedKeys::new(wrapped_keys),
                notified: false,
                acknowledged: false,
                last_status_epoch: None,
                exposures: BTreeMap::new(),
            }),
        );
        Ok(true)
    }

    async fn spend_token(&self, token: TokenUse) -> Result<bool> {
        let mut state = self.lock()?;
        if state.used_tokens.contains_key(&token.jti) {
            return Ok(false);
        }
        state.used_tokens.insert(token.jti, token.expires_unix);
        Ok(true)
    }

    async fn load_user(&self, id: Id) -> Result<Option<UserRecord>> {
        let state = self.lock()?;
        Ok(state.users.get(&id).map(|user| UserRecord {
            wrapped_keys: user.wrapped_keys.to_vec(),
            notified: user.notified,
            acknowledged: user.acknowledged,
            last_status_epoch: user.last_status_epoch,
            exposures: user.exposures.values().copied().collect(),
        }))
    }

    async fn load_user_keys(&self, ids: Vec<Id>) -> Result<Vec<(Id, Vec<u8>)>> {
        let state = self.lock()?;
        let mut seen = HashSet::with_capacity(ids.len());
        Ok(ids
            .into_iter()
            .filter(|id| seen.insert(*id))
            .filter_map(|id| {
                let user = state.users.get(&id)?;
                Some((id, user.wrapped_keys.to_vec()))
            })
            .collect())
    }

    async fn status_request(
        &self,
        id: Id,
        now: Epoch,
        min_interval: u32,
        at_risk: bool,
    ) -> Result<StatusOutcome> {
        let mut state = self.lock()?;
        let Some(user) = state.users.get_mut(&id) else {
            return Ok(StatusOutcome::Rejected);
        };
        if user.acknowledged {
            return Ok(StatusOutcome::Rejected);
        }
        if user.notified {
            user.last_status_epoch = Some(now);
            return Ok(StatusOutcome::Answer { at_risk: true });
        }
        if let Some(last) = user.last_status_epoch {
            // Signed: a `now` before SRE_A (clock skew between replicas) is "too early" too.
            let elapsed = i64::from(now.number()) - i64::from(last.number());
            if elapsed < i64::from(min_interval) {
                return Ok(StatusOutcome::Rejected);
            }
        }
        user.last_status_epoch = Some(now);
        user.notified = at_risk;
        Ok(StatusOutcome::Answer { at_risk })
    }

    async fn acknowledge(&self, id: Id) -> Result<bool> {
        let mut state = self.lock()?;
        match state.users.get_mut(&id) {
            Some(user) if user.notified => {
                user.acknowledged = true;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn reset_status(&self, id: Id, token: TokenUse) -> Result<bool> {
        let mut state = self.lock()?;
        let State { users, used_tokens, .. } = &mut *state;
        let Some(user) = users.get_mut(&id) else {
            return Ok(false);
        };
        if used_tokens.contains_key(&token.jti) {
            return Ok(false);
        }
        used_tokens.insert(token.jti, token.expires_unix);
        user.notified = false;
        user.acknowledged = false;
        user.exposures.clear();
        Ok(true)
    }

    async fn unregister(&self, id: Id) -> Result<bool> {
        Ok(self.lock()?.users.remove(&id).is_some())
    }

    async fn delete_history(&self, id: Id) -> Result<bool> {
        let mut state = self.lock()?;
        let Some(user) = state.users.get_mut(&id) else {
            return Ok(false);
        };
        user.exposures.clear();
        Ok(true)
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
            if let Some(user) = state.users.get_mut(id) {
                user.exposures
                    .entry(exposure.epoch)
                    .and_modify(|e| add_exposure(e, exposure))
                    .or_insert(*exposure);
            }
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
        let mut stats = ExpiryStats::default();
        for user in state.users.values_mut() {
            let before = user.exposures.len();
            user.exposures.retain(|epoch, _| *epoch >= lee_before);
            stats.exposures += (before - user.exposures.len()) as u64;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_keys_inline_at_the_keystore_length_boxed_otherwise() {
        let inline = WrappedKeys::new(vec![7; WRAPPED_LEN]);
        assert!(matches!(inline, WrappedKeys::Inline(_)));
        assert_eq!(inline.to_vec(), vec![7; WRAPPED_LEN]);
        for len in [0, 1, WRAPPED_LEN - 1, WRAPPED_LEN + 1, 300] {
            let other = WrappedKeys::new(vec![9; len]);
            assert!(matches!(other, WrappedKeys::Other(_)));
            assert_eq!(other.to_vec(), vec![9; len]);
        }
    }
}
