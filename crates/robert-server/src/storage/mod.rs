//! The IDTable (§3.2) and the server's other durable state, behind one trait.
//!
//! Backends: [`memory::MemoryStorage`] (the reference, for tests and the simulator) and
//! [`sqlite::SqliteStorage`] (the embedded default: WAL, one writer thread, group commit).
//! [`postgres::PostgresStorage`], shared by several `robert serve` replicas, implements the same
//! trait; every
//! method's contract is written so that it can (each is one atomic transaction, and none relies on
//! state held in the server's memory between calls).
//!
//! What is stored, and what is deliberately not:
//! - per registered ID: K_auth ‖ K_enc *wrapped* under the key-encryption key (the backend never
//!   sees them in clear), UN_A split into `notified` / `acknowledged`, SRE_A, and LEE_A as one row
//!   per exposed epoch with the HELLO count and an RSSI sum (what scoring needs, §2.3);
//! - the pool of uploaded pairs awaiting the mixer, keyed by a random slot (no declaration
//!   identifier, no token, no IP, no arrival time: nothing links two pairs, §6.1);
//! - used token `jti`s until they expire (single use, DESIGN §4);
//! - each day's K_S, wrapped, until CT days after its day (§3.1 footnote 5);
//! - the federation outbox (§8): pairs for another country, then the batch they are sealed in
//!   (one pending batch per country), until the peer acknowledges it; each country's batch
//!   sequence counter.
//!
//! Every write is durable when its future resolves: a request is answered only after its write
//! reached the disk.

pub mod contract;
mod id_table;
pub mod memory;
pub mod postgres;
pub mod sqlite;
mod sqlite_pool;

/// A hash map for keys the server draws at random (IDs, pool slots), hashed on every request:
/// foldhash, seeded per process, in place of std's SipHash (a tenth of the SQLite writer's time
/// under `robert bench upload`). No caller chooses these keys, and the seed is secret anyway.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The set form of [`FastMap`].
pub(crate) type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
mod status_journal;

use robert_proto::{CountryCode, Epoch, Id};
use std::future::Future;

/// A storage failure. Never carries an identifier or key material.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The backend failed (I/O, corruption, a constraint it should not have hit).
    #[error("storage backend: {0}")]
    Backend(String),
    /// The database holds a schema this binary does not know.
    #[error("unknown schema version {found} (this binary knows up to {known})")]
    UnknownSchema {
        /// Version found in the database.
        found: i64,
        /// Latest version this binary knows.
        known: i64,
    },
    /// The storage is shutting down.
    #[error("storage closed")]
    Closed,
}

/// Result of storage operations.
pub type Result<T> = std::result::Result<T, StorageError>;

/// Exposure recorded for one ID in one epoch (one row of LEE_A, §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exposure {
    /// The epoch of the encounter (the EBID's epoch).
    pub epoch: Epoch,
    /// How many of the ID's HELLOs of that epoch were uploaded (across all declarations).
    pub hellos: u32,
    /// Sum of the RSSIs (dB) of those that carried one.
    pub rssi_sum: i64,
    /// How many carried an RSSI.
    pub rssi_count: u32,
}

/// What the server keeps for one registered ID (§3.2).
#[derive(Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// K_auth ‖ K_enc, wrapped under the key-encryption key (opaque to storage).
    pub wrapped_keys: Vec<u8>,
    /// UN_A: the user was answered "at risk".
    pub notified: bool,
    /// The App acknowledged that answer (code 5); from then on ESRs are rejected (§7 step 7).
    pub acknowledged: bool,
    /// SRE_A: the epoch of the last accepted ESR, if any.
    pub last_status_epoch: Option<Epoch>,
    /// LEE_A, one entry per exposed epoch, in increasing epoch order.
    pub exposures: Vec<Exposure>,
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("notified", &self.notified)
            .field("acknowledged", &self.acknowledged)
            .field("last_status_epoch", &self.last_status_epoch)
            .field("exposures", &self.exposures.len())
            .finish_non_exhaustive()
    }
}

/// Outcome of [`Storage::status_request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusOutcome {
    /// Answer with this bit (and SRE_A was set to the current epoch).
    Answer {
        /// The bit: true if the user is (now, or still unacknowledged) notified.
        at_risk: bool,
    },
    /// Silently reject: unknown ID, acknowledged, or too early since the last ESR (§7 steps 7–8).
    Rejected,
}

/// Outcome of [`Storage::register_user`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterOutcome {
    /// The challenge was spent and the ID registered, in one transaction.
    Registered,
    /// The challenge was already spent (a replay): nothing changed.
    TokenSpent,
    /// The ID is already taken: nothing changed (the challenge is still unspent); the caller draws
    /// another ID and calls again.
    IdTaken,
}

/// A single-use token being spent: its `jti` is remembered until `expires_unix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenUse {
    /// The token's unique identifier.
    pub jti: String,
    /// When the token expires (Unix seconds); the `jti` may be forgotten after.
    pub expires_unix: u64,
}

/// One uploaded pair waiting in the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolEntry {
    /// Random slot key (drawn by the server; carries no order and no link).
    pub slot: [u8; 16],
    /// The encoded [`robert_proto::UploadRecord`].
    pub record: Vec<u8>,
}

/// The mixer's results for a batch of pool entries, applied atomically by [`Storage::pool_commit`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessedBatch {
    /// The slots processed (each is erased, §6.2 step 10).
    pub slots: Vec<[u8; 16]>,
    /// Exposures to add to LEE_A (§6.2 step 9), tagged with the slot they came from.
    pub exposures: Vec<(Id, Exposure, [u8; 16])>,
    /// Pairs for another country's server (§6.2 step 3), tagged with their slot.
    pub outbox: Vec<(CountryCode, Vec<u8>, [u8; 16])>,
}

/// A batch of outbox pairs sealed for one peer (§8), pending until that peer acknowledges it.
///
/// Its `Debug` shows the header and the number of pairs, never a pair.
#[derive(Clone, PartialEq, Eq)]
pub struct OutboundBatch {
    /// The peer's country.
    pub country: CountryCode,
    /// The batch ID (drawn by the caller that sealed it).
    pub id: [u8; 16],
    /// Sequence number of the batch for this country: 1, 2, … with no gap and no reuse.
    pub seq: u64,
    /// When it was sealed (NTP seconds, as passed by the caller that sealed it).
    pub created: u32,
    /// The encoded upload records, in the order they entered the outbox.
    pub records: Vec<Vec<u8>>,
}

impl std::fmt::Debug for OutboundBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundBatch")
            .field("country", &self.country.value())
            .field("seq", &self.seq)
            .field("created", &self.created)
            .field("pairs", &self.records.len())
            .finish_non_exhaustive()
    }
}

/// Counters for metrics (no identifiers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Registered IDs.
    pub users: u64,
    /// Pairs waiting in the pool.
    pub pool_depth: u64,
    /// Pairs not yet acknowledged by a federation peer: in the outbox or in a pending batch.
    pub outbox_depth: u64,
}

/// What [`Storage::expire`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExpiryStats {
    /// LEE rows removed (footnote 17).
    pub exposures: u64,
    /// Used-token records forgotten.
    pub tokens: u64,
    /// Day keys destroyed.
    pub server_keys: u64,
}

/// The server's durable state. Every method is one atomic transaction, durable when it returns.
pub trait Storage: Send + Sync + 'static {
    /// Registers `id` with its wrapped keys, UN_A false, no SRE_A, empty LEE_A (§3.2). Returns
    /// `false` (and changes nothing) if the ID is already taken: the caller draws another, so IDs
    /// are drawn without replacement.
    fn insert_user(&self, id: Id, wrapped_keys: Vec<u8>) -> impl Future<Output = Result<bool>> + Send;

    /// Spends a single-use value (a registration challenge, DESIGN §4 "accepts once"): remembers
    /// `token.jti` until `token.expires_unix` and returns `true`, or returns `false` and changes
    /// nothing if it was already spent. Shares its namespace with report and reset tokens (callers
    /// prefix their values, e.g. `pow:` and `jwt:`).
    fn spend_token(&self, token: TokenUse) -> impl Future<Output = Result<bool>> + Send;

    /// A registration's two writes (§3.3, §3.2, DESIGN §4) as one atomic transaction, durable when
    /// it returns: spends `token` (the proof-of-work challenge, accepted once) and registers `id`
    /// with its wrapped keys as [`Storage::insert_user`] does.
    /// - `token.jti` already spent → [`RegisterOutcome::TokenSpent`], nothing changes;
    /// - `id` already taken → [`RegisterOutcome::IdTaken`], nothing changes (the token stays
    ///   unspent, so the caller can draw another ID and call again with the same token);
    /// - otherwise both writes → [`RegisterOutcome::Registered`].
    ///
    /// One call, one commit (one fsync) per registration instead of two. If it fails (`Err`), the
    /// token may be left spent without the ID (the App's challenge is used up: it fetches
    /// another), never the ID registered with its token unspent.
    fn register_user(
        &self,
        token: TokenUse,
        id: Id,
        wrapped_keys: Vec<u8>,
    ) -> impl Future<Output = Result<RegisterOutcome>> + Send;

    /// The record of `id`, or `None` if it is not registered.
    fn load_user(&self, id: Id) -> impl Future<Output = Result<Option<UserRecord>>> + Send;

    /// The wrapped keys of those of `ids` that are registered, in any order (the mixer's batched
    /// read, §6.2 steps 5 and 7). Unknown IDs are simply absent.
    fn load_user_keys(&self, ids: Vec<Id>) -> impl Future<Output = Result<Vec<(Id, Vec<u8>)>>> + Send;

    /// §7 steps 7–8 and the reply, as one check-and-set:
    /// - unknown or acknowledged ID → `Rejected`, nothing changes;
    /// - notified (not yet acknowledged) → `Answer { at_risk: true }`, whatever the T rule says
    ///   (a lost reply must not lose the alert), SRE_A set to `now`;
    /// - otherwise, if SRE_A is set and `now - SRE_A < min_interval` → `Rejected`, nothing changes;
    /// - otherwise SRE_A := `now`, UN_A := `at_risk`, and `Answer { at_risk }`.
    ///
    /// Atomic across replicas: two concurrent calls within `min_interval` never both answer.
    fn status_request(
        &self,
        id: Id,
        now: Epoch,
        min_interval: u32,
        at_risk: bool,
    ) -> impl Future<Output = Result<StatusOutcome>> + Send;

    /// The App acknowledged an at-risk answer (code 5). `true` if the ID was notified and is now
    /// acknowledged (idempotent: `true` again for a repeated acknowledgement), `false` otherwise.
    fn acknowledge(&self, id: Id) -> impl Future<Output = Result<bool>> + Send;

    /// Resets UN_A after a negative test (code 6), spending `token`: atomically, if the `jti` is
    /// unused and the ID registered, remember the `jti`, clear notified/acknowledged and LEE_A,
    /// return `true`. Otherwise change nothing and return `false`.
    fn reset_status(&self, id: Id, token: TokenUse) -> impl Future<Output = Result<bool>> + Send;

    /// Unregister (Annex C, code 3): erases the ID's record and its LEE_A. `false` if unknown.
    fn unregister(&self, id: Id) -> impl Future<Output = Result<bool>> + Send;

    /// Delete history (Annex C, code 4): erases LEE_A of the ID, keeps the registration and UN_A
    /// (only a health authority's reset clears a notification, §3.2). `false` if unknown.
    fn delete_history(&self, id: Id) -> impl Future<Output = Result<bool>> + Send;

    /// A declaration (§6.1): atomically spends `token` and adds every entry to the pool. Returns
    /// `false` (and stores nothing) if the `jti` was already used.
    ///
    /// Federation (§8) receives a peer's batch through this method too, with `jti` =
    /// `fed:<country>:<batch id>`: the batch's pairs join the pool and its ID is remembered in one
    /// transaction, so a repeated batch stores nothing twice.
    fn submit_report(
        &self,
        token: TokenUse,
        entries: Vec<PoolEntry>,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Up to `max` pool entries, in no meaningful order. Does not remove them: several mixers
    /// (replicas) may take the same entries; [`Storage::pool_commit`] decides who wins.
    fn pool_take(&self, max: usize) -> impl Future<Output = Result<Vec<PoolEntry>>> + Send;

    /// Applies a processed batch atomically: erases the batch's slots that are still in the pool,
    /// and applies the exposures and outbox entries *of those slots only* (a slot already erased
    /// by another mixer contributes nothing), so each pair is processed exactly once. Exposures
    /// for IDs no longer registered are dropped. Returns the number of slots erased.
    fn pool_commit(&self, batch: ProcessedBatch) -> impl Future<Output = Result<u64>> + Send;

    /// Expiry (footnote 17, DESIGN §4): removes LEE rows with `epoch < lee_before`, used-token
    /// records with `expires_unix < tokens_before_unix`, and day keys with `day < keys_before_day`.
    fn expire(
        &self,
        lee_before: Epoch,
        tokens_before_unix: u64,
        keys_before_day: u32,
    ) -> impl Future<Output = Result<ExpiryStats>> + Send;

    /// Stores day `day`'s K_S (wrapped) unless that day already has one; returns the wrapped key
    /// in force for the day (the one stored first, so replicas racing to create it agree).
    fn put_server_key(&self, day: u32, wrapped: Vec<u8>) -> impl Future<Output = Result<Vec<u8>>> + Send;

    /// Every stored day key, `(day, wrapped)`, in increasing day order.
    fn server_keys(&self) -> impl Future<Output = Result<Vec<(u32, Vec<u8>)>>> + Send;

    /// Pairs waiting in the pool (cheap: the mixer asks every second).
    fn pool_depth(&self) -> impl Future<Output = Result<u64>> + Send;

    /// Federation (§8): the batch to send to `country` next.
    ///
    /// - If a batch for `country` is pending (sealed, not yet done), returns it unchanged (same ID,
    ///   sequence number, creation time and records, in the same order): a sender retries the same
    ///   batch until the peer acknowledges it, and one batch per country is in flight at a time.
    /// - Otherwise, if the outbox holds pairs for `country`, atomically moves the oldest `max` of
    ///   them (in outbox order, the order `pool_commit` added them) out of the outbox into a new
    ///   pending batch with ID `fresh_id`, creation time `now`, and the country's next sequence
    ///   number (1 for its first batch; never reused, even after the batch is done), and returns it.
    /// - Otherwise returns `None` and changes nothing.
    ///
    /// Atomic across replicas: concurrent calls for one country all return the same batch; a pair
    /// is in exactly one place (outbox or one pending batch) at any time, so none is lost or sent in
    /// two batches. `max` is at least 1. (SQL sketch: one pending row per country with the country
    /// as primary key; take the country's sequence row `FOR UPDATE` first, or retry the
    /// transaction when inserting the pending row conflicts, then return the row that won.)
    fn federation_next_batch(
        &self,
        country: CountryCode,
        max: usize,
        fresh_id: [u8; 16],
        now: u32,
    ) -> impl Future<Output = Result<Option<OutboundBatch>>> + Send;

    /// Federation (§8): the pending batch `id` of `country` was acknowledged by the peer (or
    /// refused as expired): erases it and its pairs. Returns `true` if it was pending; `false`, and
    /// nothing changes, if no pending batch of `country` has this ID (already done, or another
    /// country's). Idempotent.
    fn federation_batch_done(
        &self,
        country: CountryCode,
        id: [u8; 16],
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Federation (§8): pairs not yet acknowledged per country (outbox plus pending batch), for
    /// the per-peer metrics. Countries with none are omitted; ascending by country code.
    fn federation_depths(&self) -> impl Future<Output = Result<Vec<(CountryCode, u64)>>> + Send;

    /// Counters for metrics (may scan tables: not for hot paths).
    fn stats(&self) -> impl Future<Output = Result<Stats>> + Send;
}
