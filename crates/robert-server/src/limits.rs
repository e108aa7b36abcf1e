//! Hardening against replays and floods (issue 8): a bounded replay cache for authenticated
//! requests, a cap on registrations in flight, and token buckets for the registration endpoints.
//!
//! **Floods.** What keeps the server answering under a flood of registrations is the in-flight
//! cap ([`InFlight`], on by default): beyond `limits.register_max_in_flight` registrations being
//! processed, the next is answered `429` at once, so the work queued never exceeds the cap and
//! other endpoints keep their share of the cores — without capping throughput (a benchmark
//! with fewer concurrent clients never meets it). The token buckets ([`RateLimiter`]) add a
//! policy: at most so many per second, server-wide; they are off by default because the right
//! rate is the deployment's expected registrations, which no default knows.
//!
//! Both run on the service's clock (NTP seconds, injectable), so their behaviour is a function of
//! the requests and that clock, never of scheduling: tests are exact.
//!
//! **Replay cache, one per process.** An authenticated request (§7, Annex C) is accepted only if
//! its time is within `request_time_tolerance_sec` of the server's clock; inside that window, the
//! same bytes would pass §7 steps 1–6 again. The cache remembers the MAC of every request that
//! passed (only those: unauthenticated garbage never enters it, so it cannot be filled by an
//! outsider) until its time leaves the window, and rejects a second use. Per-process is enough as
//! defence in depth, not as the only line, when several replicas share a database:
//! - a replay needs the request's plaintext, which TLS hides from everyone but the App;
//! - an ESR replayed on another replica still meets the storage's atomic T check (§7 step 8) and
//!   is rejected, except while the App is notified and unacknowledged (the answer repeats
//!   `atRisk: true` by design, DESIGN §4), which tells a replayer one bit it could only have
//!   captured with the request anyway;
//! - acknowledge, unregister and delete-history are idempotent in storage: a replay elsewhere
//!   changes nothing a first request did not.
//!
//! Replicas that must refuse replays across processes route an App to one replica (hash of the
//! source) or spend the MAC in storage (`Storage::spend_token`, one durable write per request).
//!
//! Memory is bounded by `limits.replay_cache_entries` (~40 bytes each), split evenly over up to
//! 16 shards, each with its own lock; a request's shard is chosen by its MAC. When a shard is
//! full, its oldest entry is evicted early: that request could be replayed once more within its
//! window, which the storage checks above still bound; the eviction is logged (without any
//! identifier).

use crate::storage::FastMap;
use robert_proto::NtpTime;
use std::collections::VecDeque;
use std::collections::hash_map::Entry;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Most shards of a [`ReplayCache`]: each has a lock of its own, so the cores answering requests
/// rarely wait for one another (one lock took 1 µs per ESR at 60k ESR/s, much of it contention).
const MAX_REPLAY_SHARDS: usize = 16;

/// The remembered MACs of authenticated requests, until their time window closes.
pub struct ReplayCache {
    /// Entries each shard holds at most.
    shard_capacity: usize,
    /// A request's shard is chosen by its MAC's low bits (a power-of-two count of them).
    shards: Box<[Mutex<ReplayInner>]>,
    /// Entries evicted before their window closed, over all shards.
    evicted: AtomicU64,
}

#[derive(Default)]
struct ReplayInner {
    /// First 16 bytes of the MAC (a 128-bit tag: collisions between honest requests are
    /// negligible) → the NTP second after which the request is stale anyway. Hashed with a
    /// per-process seed: the MAC's bits are not trusted to spread the table.
    seen: FastMap<u128, u32>,
    /// Insertion order, for pruning and eviction.
    order: VecDeque<(u32, u128)>,
}

impl ReplayInner {
    /// Drops the oldest entry of `order`, and its tag from `seen` unless a later use replaced it
    /// there. Returns whether a tag left `seen`.
    fn forget_oldest(&mut self) -> bool {
        let Some((exp, tag)) = self.order.pop_front() else { return false };
        match self.seen.entry(tag) {
            Entry::Occupied(e) if *e.get() == exp => {
                e.remove();
                true
            }
            _ => false,
        }
    }
}

fn tag_of(mac: &[u8; 32]) -> u128 {
    let mut tag = [0u8; 16];
    tag.copy_from_slice(&mac[..16]);
    u128::from_be_bytes(tag)
}

impl ReplayCache {
    /// A cache holding at most `capacity` entries (at least 1), in up to [`MAX_REPLAY_SHARDS`]
    /// shards of equal capacity.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        // The largest power of two ≤ min(MAX_REPLAY_SHARDS, capacity): every shard holds ≥ 1.
        let shards = 1usize << capacity.min(MAX_REPLAY_SHARDS).ilog2();
        Self {
            shard_capacity: capacity / shards,
            shards: (0..shards).map(|_| Mutex::new(ReplayInner::default())).collect(),
            evicted: AtomicU64::new(0),
        }
    }

    fn shard(&self, tag: u128) -> &Mutex<ReplayInner> {
        &self.shards[(tag as usize) & (self.shards.len() - 1)]
    }

    /// Records `mac`, valid until `expires`; `false` if it was already recorded and is still
    /// inside its window (a replay). Atomic: of two concurrent identical requests, one wins.
    pub fn first_use(&self, mac: &[u8; 32], expires: NtpTime, now: NtpTime) -> bool {
        let tag = tag_of(mac);
        let Ok(mut inner) = self.shard(tag).lock() else { return false };
        let inner = &mut *inner;
        // Prune entries whose window has closed (insertion order approximates expiry order).
        while inner.order.front().is_some_and(|&(exp, _)| exp < now.seconds()) {
            inner.forget_oldest();
        }
        match inner.seen.entry(tag) {
            Entry::Occupied(e) if *e.get() >= now.seconds() => return false,
            Entry::Occupied(mut e) => {
                e.insert(expires.seconds());
            }
            Entry::Vacant(e) => {
                e.insert(expires.seconds());
            }
        }
        inner.order.push_back((expires.seconds(), tag));
        // Full: the oldest entries go before their window closes (never the one just added).
        while inner.order.len() > self.shard_capacity {
            if inner.forget_oldest() {
                let evicted = self.evicted.fetch_add(1, Ordering::Relaxed) + 1;
                if evicted.is_power_of_two() {
                    tracing::warn!(evicted, "replay cache full: oldest entries evicted");
                }
            }
        }
        true
    }

    /// Whether `mac` is recorded and still inside its window (a lookup only: rejected requests
    /// call it so that their path costs what an accepted one's does).
    pub fn contains(&self, mac: &[u8; 32], now: NtpTime) -> bool {
        let tag = tag_of(mac);
        self.shard(tag).lock().is_ok_and(|i| i.seen.get(&tag).is_some_and(|&exp| exp >= now.seconds()))
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map_or(0, |i| i.seen.len())).sum()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A token bucket on the service clock: `per_sec` tokens a second, at most `burst` stored.
/// `per_sec = 0` disables the limit.
pub struct RateLimiter {
    per_sec: u32,
    burst: u32,
    /// (tokens, last refill second).
    state: Mutex<(u64, u32)>,
}

impl RateLimiter {
    /// A full bucket.
    pub fn new(per_sec: u32, burst: u32) -> Self {
        let burst = burst.max(per_sec).max(1);
        Self { per_sec, burst, state: Mutex::new((u64::from(burst), 0)) }
    }

    /// Takes one token at `now`; `false` when the bucket is empty (answer 429).
    pub fn admit(&self, now: NtpTime) -> bool {
        if self.per_sec == 0 {
            return true;
        }
        let Ok(mut s) = self.state.lock() else { return false };
        let (tokens, last) = &mut *s;
        let now = now.seconds();
        if now > *last {
            let refill = u64::from(now - *last).saturating_mul(u64::from(self.per_sec));
            *tokens = tokens.saturating_add(refill).min(u64::from(self.burst));
            *last = now;
        }
        if *tokens == 0 {
            return false;
        }
        *tokens -= 1;
        true
    }
}

/// A cap on concurrent operations: [`InFlight::try_enter`] fails when `max` are in progress.
pub struct InFlight {
    permits: std::sync::Arc<tokio::sync::Semaphore>,
}

/// Held while an operation is in flight; dropping it frees the place.
pub struct InFlightGuard(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

impl InFlight {
    /// At most `max` at once (0: no cap).
    pub fn new(max: usize) -> Self {
        let n = if max == 0 { tokio::sync::Semaphore::MAX_PERMITS } else { max };
        Self { permits: std::sync::Arc::new(tokio::sync::Semaphore::new(n)) }
    }

    /// A place, or `None` when the cap is reached (answer 429).
    pub fn try_enter(&self) -> Option<InFlightGuard> {
        self.permits.clone().try_acquire_owned().ok().map(InFlightGuard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A MAC whose first byte is `first` and the rest `rest`: MACs with one `rest` share a shard.
    fn mac(first: u8, rest: u8) -> [u8; 32] {
        let mut m = [rest; 32];
        m[0] = first;
        m
    }

    #[test]
    fn replay_inside_the_window_is_refused_and_forgotten_after() {
        let c = ReplayCache::new(100);
        let t = NtpTime::new(1000);
        assert!(c.first_use(&mac(1, 1), NtpTime::new(1300), t));
        assert!(c.contains(&mac(1, 1), t) && !c.contains(&mac(9, 9), t));
        assert!(!c.first_use(&mac(1, 1), NtpTime::new(1300), NtpTime::new(1300)));
        assert!(c.first_use(&mac(2, 1), NtpTime::new(1300), t));
        // After the window closes the shard's entries are pruned at its next use (the requests
        // would be stale anyway); an expired MAC is accepted again.
        assert!(c.first_use(&mac(3, 1), NtpTime::new(1700), NtpTime::new(1301)));
        assert_eq!(c.len(), 1);
        assert!(c.first_use(&mac(3, 1), NtpTime::new(2100), NtpTime::new(1701)));
        assert!(!c.first_use(&mac(3, 1), NtpTime::new(2100), NtpTime::new(1702)));
    }

    /// Spread over every shard, the cache still holds at most its capacity, keeps each shard's
    /// newest entries, and refuses a replay of any MAC it holds.
    #[test]
    fn shards_share_the_capacity() {
        let c = ReplayCache::new(64);
        let t = NtpTime::new(1);
        let macs: Vec<[u8; 32]> = (0..=255u8).map(|i| mac(i, i)).collect();
        for m in &macs {
            assert!(c.first_use(m, NtpTime::new(10_000), t));
        }
        assert_eq!(c.len(), 64, "16 shards of 4");
        let held = macs.iter().filter(|m| c.contains(m, t)).count();
        assert_eq!(held, 64);
        for m in macs.iter().rev().take(16) {
            assert!(!c.first_use(m, NtpTime::new(10_000), t), "the newest of each shard is refused");
        }
        assert_eq!(ReplayCache::new(1).len(), 0);
    }

    #[test]
    fn memory_is_bounded() {
        let c = ReplayCache::new(10);
        for i in 0..1000u32 {
            let mut mac = [0u8; 32];
            mac[..4].copy_from_slice(&i.to_be_bytes());
            assert!(c.first_use(&mac, NtpTime::new(10_000), NtpTime::new(1)));
        }
        assert!(c.len() <= 10);
        // The most recent entries are still refused.
        let mut mac = [0u8; 32];
        mac[..4].copy_from_slice(&999u32.to_be_bytes());
        assert!(!c.first_use(&mac, NtpTime::new(10_000), NtpTime::new(1)));
    }

    #[test]
    fn in_flight_cap_frees_on_drop() {
        let cap = InFlight::new(2);
        let a = cap.try_enter().expect("first");
        let _b = cap.try_enter().expect("second");
        assert!(cap.try_enter().is_none(), "third refused while two are in flight");
        drop(a);
        assert!(cap.try_enter().is_some());
        let off = InFlight::new(0);
        let held: Vec<_> = (0..10_000).map(|_| off.try_enter().expect("no cap")).collect();
        assert_eq!(held.len(), 10_000);
    }

    #[test]
    fn bucket_refills_with_the_clock() {
        let r = RateLimiter::new(2, 3);
        let t = NtpTime::new(100);
        assert_eq!((0..10).filter(|_| r.admit(t)).count(), 3);
        assert_eq!((0..10).filter(|_| r.admit(NtpTime::new(101))).count(), 2);
        assert_eq!((0..10).filter(|_| r.admit(NtpTime::new(200))).count(), 3);
        let off = RateLimiter::new(0, 0);
        assert!((0..1000).all(|_| off.admit(t)));
    }
}
