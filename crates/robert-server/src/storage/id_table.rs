//! The IDTable (§3.2) in memory: every registered ID with its wrapped keys, UN_A, SRE_A and
//! LEE_A, in one hash map.
//!
//! Two backends hold one: [`super::memory::MemoryStorage`] keeps its whole state in memory and
//! this table is its IDTable; [`super::sqlite::SqliteStorage`] keeps a copy of what its file holds
//! (loaded when it opens, changed after each commit) and answers every read of the IDTable from it,
//! so that an ESR's read (§7 step 5) and the mixer's key lookups (§6.2 steps 5, 7) cost a hash
//! lookup instead of a read transaction. The rules of each protocol step (§7 steps 7–8, Annex C,
//! footnote 17) are written here once for both.

use super::{Exposure, StatusOutcome, UserRecord};
use super::{FastMap, FastSet};
use crate::keystore::WRAPPED_SESSION_KEYS_LEN as WRAPPED_LEN;
use robert_proto::{Epoch, Id};
use std::collections::BTreeMap;

/// A user's wrapped keys: inline at the keystore's length (one allocation per user, not two),
/// boxed otherwise (the storage trait does not fix the length).
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
    /// LEE_A keyed by epoch, so it comes out in increasing epoch order; `None` when empty (most
    /// users): a pointer rather than an empty map keeps a user within 128 bytes, one size class
    /// of the allocator lower.
    #[allow(clippy::box_collection, reason = "8 bytes in the user instead of 24: see above")]
    exposures: Option<Box<BTreeMap<Epoch, Exposure>>>,
}

/// [`IdTable::layout_estimate`]'s answer.
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

/// The registered IDs and their state. See the [module docs](self).
#[derive(Default)]
pub(crate) struct IdTable {
    users: FastMap<Id, Box<User>>,
}

/// Adds `more` to `into` (one (ID, epoch) of LEE_A summed across HELLOs and declarations).
pub(crate) fn add_exposure(into: &mut Exposure, more: &Exposure) {
    into.hellos = into.hellos.saturating_add(more.hellos);
    into.rssi_sum = into.rssi_sum.saturating_add(more.rssi_sum);
    into.rssi_count = into.rssi_count.saturating_add(more.rssi_count);
}

impl IdTable {
    /// What `n` registered IDs without exposures occupy, from this table's layout: the buckets
    /// (hashbrown: a power of two, at most 7/8 full, one control byte per bucket, each holding an
    /// ID and a box) plus one heap chunk per user (the request plus 8 bytes, rounded up to 16:
    /// glibc's malloc; mimalloc, the `robert` binary's allocator, has the same size class for a
    /// user, 128 bytes).
    pub(crate) fn layout_estimate(n: usize) -> LayoutEstimate {
        let bucket_bytes = std::mem::size_of::<(Id, Box<User>)>() + 1;
        let buckets = (n.max(1) * 8).div_ceil(7).next_power_of_two();
        let heap_bytes_per_user = (std::mem::size_of::<User>() + 8).div_ceil(16) * 16;
        let bytes_per_user = (bucket_bytes * buckets) as f64 / n.max(1) as f64 + heap_bytes_per_user as f64;
        LayoutEstimate { bucket_bytes, buckets, heap_bytes_per_user, bytes_per_user }
    }

    /// Registered IDs.
    pub(crate) fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether `id` is registered.
    pub(crate) fn contains(&self, id: Id) -> bool {
        self.users.contains_key(&id)
    }

    /// Makes room for `more` IDs (loading a table).
    pub(crate) fn reserve(&mut self, more: usize) {
        self.users.reserve(more);
    }

    /// Registers `id` (UN_A false, no SRE_A, empty LEE_A). `false`, and nothing changes, if it is.
    pub(crate) fn insert(&mut self, id: Id, wrapped_keys: Vec<u8>) -> bool {
        if self.users.contains_key(&id) {
            return false;
        }
        self.restore(id, wrapped_keys, false, false, None);
        true
    }

    /// Puts a stored user back as it was stored (loading a table); replaces any entry of `id`.
    pub(crate) fn restore(
        &mut self,
        id: Id,
        wrapped_keys: Vec<u8>,
        notified: bool,
        acknowledged: bool,
        last_status_epoch: Option<Epoch>,
    ) {
        self.users.insert(
            id,
            Box::new(User {
                wrapped_keys: WrappedKeys::new(wrapped_keys),
                notified,
                acknowledged,
                last_status_epoch,
                exposures: None,
            }),
        );
    }

    /// The record of `id`, LEE_A in increasing epoch order.
    pub(crate) fn get(&self, id: Id) -> Option<UserRecord> {
        self.users.get(&id).map(|user| UserRecord {
            wrapped_keys: user.wrapped_keys.to_vec(),
            notified: user.notified,
            acknowledged: user.acknowledged,
            last_status_epoch: user.last_status_epoch,
            exposures: user.exposures.iter().flat_map(|lee| lee.values().copied()).collect(),
        })
    }

    /// The wrapped keys of those of `ids` that are registered, each ID once.
    pub(crate) fn keys(&self, ids: Vec<Id>) -> Vec<(Id, Vec<u8>)> {
        let mut seen = FastSet::with_capacity_and_hasher(ids.len(), Default::default());
        ids.into_iter()
            .filter(|id| seen.insert(*id))
            .filter_map(|id| Some((id, self.users.get(&id)?.wrapped_keys.to_vec())))
            .collect()
    }

    /// §7 steps 7–8 as [`super::Storage::status_request`] specifies them, decided without changing
    /// anything: `Answer` means SRE_A := `now` and UN_A := the answer (see [`IdTable::set_status`]).
    pub(crate) fn decide_status(
        &self,
        id: Id,
        now: Epoch,
        min_interval: u32,
        at_risk: bool,
    ) -> StatusOutcome {
        let Some(user) = self.users.get(&id) else {
            return StatusOutcome::Rejected;
        };
        if user.acknowledged {
            return StatusOutcome::Rejected;
        }
        if user.notified {
            // A lost reply must not lose the alert: repeated until acknowledged, whatever T says.
            return StatusOutcome::Answer { at_risk: true };
        }
        if let Some(last) = user.last_status_epoch {
            // Signed: a `now` before SRE_A (clock skew between replicas) is "too early" too.
            let elapsed = i64::from(now.number()) - i64::from(last.number());
            if elapsed < i64::from(min_interval) {
                return StatusOutcome::Rejected;
            }
        }
        StatusOutcome::Answer { at_risk }
    }

    /// SRE_A := `last_status_epoch`, UN_A := `notified` (§7 step 8), if `id` is registered.
    pub(crate) fn set_status(&mut self, id: Id, last_status_epoch: Option<Epoch>, notified: bool) {
        if let Some(user) = self.users.get_mut(&id) {
            user.last_status_epoch = last_status_epoch;
            user.notified = notified;
        }
    }

    /// Whether `id` is registered and notified (UN_A), i.e. may acknowledge.
    pub(crate) fn is_notified(&self, id: Id) -> bool {
        self.users.get(&id).is_some_and(|user| user.notified)
    }

    /// The App acknowledged (code 5): `true` if `id` was notified (and is now acknowledged).
    pub(crate) fn acknowledge(&mut self, id: Id) -> bool {
        match self.users.get_mut(&id) {
            Some(user) if user.notified => {
                user.acknowledged = true;
                true
            }
            _ => false,
        }
    }

    /// A health authority's reset (code 6): UN_A and the acknowledgement cleared, LEE_A erased.
    /// `false` if `id` is not registered.
    pub(crate) fn reset(&mut self, id: Id) -> bool {
        let Some(user) = self.users.get_mut(&id) else {
            return false;
        };
        user.notified = false;
        user.acknowledged = false;
        user.exposures = None;
        true
    }

    /// Unregister (Annex C): the ID and everything about it. `false` if it was not registered.
    pub(crate) fn remove(&mut self, id: Id) -> bool {
        self.users.remove(&id).is_some()
    }

    /// Delete history (Annex C): LEE_A erased, the rest kept. `false` if `id` is not registered.
    pub(crate) fn clear_exposures(&mut self, id: Id) -> bool {
        let Some(user) = self.users.get_mut(&id) else {
            return false;
        };
        user.exposures = None;
        true
    }

    /// The epochs of LEE_A of `id`, in increasing order (empty if none, or if not registered).
    pub(crate) fn exposure_epochs(&self, id: Id) -> Vec<Epoch> {
        self.users
            .get(&id)
            .and_then(|user| user.exposures.as_ref())
            .map_or_else(Vec::new, |lee| lee.keys().copied().collect())
    }

    /// §6.2 step 9: adds `exposure` to LEE_A of `id` (summed with the entry of its epoch, if
    /// any). `false`, and nothing changes, if `id` is not registered (any more).
    pub(crate) fn add_exposure(&mut self, id: Id, exposure: &Exposure) -> bool {
        let Some(user) = self.users.get_mut(&id) else {
            return false;
        };
        user.exposures
            .get_or_insert_default()
            .entry(exposure.epoch)
            .and_modify(|e| add_exposure(e, exposure))
            .or_insert(*exposure);
        true
    }

    /// Footnote 17: removes every LEE_A entry of an epoch before `before`; returns how many.
    pub(crate) fn expire(&mut self, before: Epoch) -> u64 {
        let mut removed = 0;
        for user in self.users.values_mut() {
            let Some(lee) = user.exposures.as_mut() else { continue };
            if lee.first_key_value().is_some_and(|(epoch, _)| *epoch < before) {
                let n = lee.len();
                lee.retain(|epoch, _| *epoch >= before);
                removed += (n - lee.len()) as u64;
                if lee.is_empty() {
                    user.exposures = None;
                }
            }
        }
        removed
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

    fn epoch(n: u32) -> Epoch {
        Epoch::new(n).expect("epoch")
    }

    fn exposure(n: u32, hellos: u32) -> Exposure {
        Exposure { epoch: epoch(n), hellos, rssi_sum: -60 * i64::from(hellos), rssi_count: hellos }
    }

    #[test]
    fn a_user_fits_in_128_bytes() {
        assert!(std::mem::size_of::<User>() <= 120, "{} bytes", std::mem::size_of::<User>());
    }

    #[test]
    fn exposures_sum_per_epoch_come_out_in_epoch_order_and_expire() {
        let mut t = IdTable::default();
        let id = Id::new(7).expect("id");
        assert!(t.insert(id, vec![1; WRAPPED_LEN]));
        assert!(!t.insert(id, vec![2; WRAPPED_LEN]), "drawn without replacement");
        for (epoch, hellos) in [(30, 2), (10, 1), (30, 3), (20, 4)] {
            assert!(t.add_exposure(id, &exposure(epoch, hellos)));
        }
        let got = t.get(id).expect("registered").exposures;
        assert_eq!(got, vec![exposure(10, 1), exposure(20, 4), exposure(30, 5)]);
        assert_eq!(t.expire(epoch(21)), 2);
        assert_eq!(t.get(id).expect("registered").exposures, vec![exposure(30, 5)]);
        assert!(!t.add_exposure(Id::new(8).expect("id"), &exposure(40, 1)), "unknown ID dropped");
    }
}
