//! The [`Storage`] contract suite: one set of checks that every backend must pass (DESIGN §2
//! "Every storage backend passes the same contract test suite").
//!
//! Each check exercises one method's doc comment, clause by clause, on a fresh, empty store.
//! Running the whole suite on a backend is one line in an integration test:
//!
//! ```
//! # use robert_server::storage::memory::MemoryStorage as MyBackend;
//! #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
//! async fn contract() {
//!     robert_server::storage::contract::run_all(MyBackend::new).await;
//! }
//! ```
//!
//! The factory is called once per check and must return an empty store; it may borrow a
//! temporary directory that outlives the call to [`run_all`]. The checks are also public, one by
//! one, for a backend that wants a finer-grained test report.
//!
//! This is library code on purpose (not `#[cfg(test)]`), so that integration tests and backends in
//! other crates can run it. It panics (with the name of the clause) on the first violation. Test
//! data is derived deterministically; no randomness, no clock.

use super::{
    ExpiryStats, Exposure, OutboundBatch, PoolEntry, ProcessedBatch, RegisterOutcome, Stats, StatusOutcome,
    Storage, TokenUse, UserRecord,
};
use robert_proto::{CountryCode, Epoch, Id};
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::Poll;

/// Runs every check of the suite, each on a fresh store from `make`, in order; panics on the
/// first violation. The name of each check goes to stderr before it runs.
pub async fn run_all<S: Storage>(make: impl Fn() -> S) {
    macro_rules! run {
        ($($check:ident),* $(,)?) => {
            $(
                eprintln!("storage contract: {}", stringify!($check));
                $check(&make()).await;
            )*
        };
    }
    run!(
        insert_user_is_exclusive,
        spend_token_is_single_use,
        register_user_is_one_transaction,
        concurrent_registrations_spend_once,
        load_user_keys_returns_registered_only,
        status_request_unknown_is_rejected,
        status_request_first_is_not_held_back,
        status_request_min_interval,
        status_request_notified_answers_true,
        status_request_acknowledged_is_rejected_forever,
        acknowledge_requires_notification,
        reset_status_spends_token_and_clears,
        unregister_erases,
        delete_history_keeps_registration,
        submit_report_spends_token_and_stores_all,
        pool_take_bounds_and_keeps,
        pool_commit_is_exactly_once,
        pool_commit_applies_only_erased_slots,
        pool_commit_drops_unknown_ids,
        exposures_aggregate_per_epoch,
        expire_boundaries,
        server_keys_first_wins_and_ordered,
        stats_counts,
        concurrent_status_requests_answer_once,
        concurrent_writes_are_exclusive,
        federation_batches_in_outbox_order,
        federation_pending_batch_is_stable,
        federation_batch_done_is_exact,
        federation_concurrent_sealing_agrees,
    );
}

// -------------------------------------------------------------------------------------------
// Deterministic test data.

fn id(n: u64) -> Id {
    Id::new(n).expect("test IDs fit in 40 bits")
}

fn ep(n: u32) -> Epoch {
    Epoch::new(n).expect("test epochs fit in 24 bits")
}

/// A 92-byte "wrapped keys" blob, distinct per `n`.
fn keys(n: u8) -> Vec<u8> {
    (0..92u8).map(|i| i.wrapping_mul(31) ^ n).collect()
}

/// A slot key, distinct per `n`, in no particular order.
fn slot(n: u32) -> [u8; 16] {
    let mut s = [0u8; 16];
    let mut x = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    for chunk in s.chunks_mut(8) {
        x ^= x >> 29;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        chunk.copy_from_slice(&x.to_be_bytes());
    }
    s
}

/// A 20-byte "upload record", distinct per `n`.
fn record(n: u32) -> Vec<u8> {
    let mut r = vec![0xA5; 20];
    r[..16].copy_from_slice(&slot(n ^ 0x5555_5555));
    r
}

fn entry(n: u32) -> PoolEntry {
    PoolEntry { slot: slot(n), record: record(n) }
}

fn token(jti: &str, expires_unix: u64) -> TokenUse {
    TokenUse { jti: jti.to_owned(), expires_unix }
}

/// Far in the future, for tokens whose expiry does not matter to the check.
const LATER: u64 = 4_000_000_000;

fn exposure(epoch: u32, hellos: u32, rssi_sum: i64, rssi_count: u32) -> Exposure {
    Exposure { epoch: ep(epoch), hellos, rssi_sum, rssi_count }
}

fn fresh_record(n: u8) -> UserRecord {
    UserRecord {
        wrapped_keys: keys(n),
        notified: false,
        acknowledged: false,
        last_status_epoch: None,
        exposures: Vec::new(),
    }
}

const ANSWER_FALSE: StatusOutcome = StatusOutcome::Answer { at_risk: false };
const ANSWER_TRUE: StatusOutcome = StatusOutcome::Answer { at_risk: true };

async fn must_load<S: Storage>(s: &S, who: Id) -> UserRecord {
    s.load_user(who).await.expect("load_user").expect("the user is registered")
}

async fn register<S: Storage>(s: &S, who: Id, n: u8) {
    assert!(s.insert_user(who, keys(n)).await.expect("insert_user"), "insert_user: a free ID is taken");
}

async fn stats<S: Storage>(s: &S) -> Stats {
    s.stats().await.expect("stats")
}

async fn sorted_pool<S: Storage>(s: &S) -> Vec<PoolEntry> {
    let mut pool = s.pool_take(usize::MAX).await.expect("pool_take");
    pool.sort_by_key(|e| e.slot);
    pool
}

/// Puts entries `ns` in the pool through one declaration, spending `jti`.
async fn declare<S: Storage>(s: &S, jti: &str, ns: &[u32]) {
    let entries = ns.iter().map(|&n| entry(n)).collect();
    assert!(
        s.submit_report(token(jti, LATER), entries).await.expect("submit_report"),
        "submit_report: a fresh jti is accepted"
    );
}

/// Gives `who` an exposure through the pool (declaration + mixer commit).
async fn expose<S: Storage>(s: &S, who: Id, n: u32, e: Exposure) {
    declare(s, &format!("expose-{n}"), &[n]).await;
    let batch =
        ProcessedBatch { slots: vec![slot(n)], exposures: vec![(who, e, slot(n))], outbox: Vec::new() };
    assert_eq!(s.pool_commit(batch).await.expect("pool_commit"), 1);
}

/// Polls every future of `futures` concurrently in the current task, like `join_all`: each
/// backend call is issued before any is awaited to completion, so a backend with real I/O (a
/// writer thread, a connection pool) sees them all in flight together.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending { Poll::Pending } else { Poll::Ready(()) }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("poll_fn returned Ready only once every future completed")).collect()
}

// -------------------------------------------------------------------------------------------
// The checks.

/// `insert_user`: registers with UN_A false, no SRE_A, empty LEE_A; `false` for a taken ID,
/// changing nothing. `load_user`: `None` for an unknown ID.
pub async fn insert_user_is_exclusive<S: Storage>(s: &S) {
    let a = id(1);
    assert_eq!(s.load_user(a).await.expect("load_user"), None, "unknown ID loads as None");
    register(s, a, 1).await;
    assert_eq!(must_load(s, a).await, fresh_record(1), "a new registration's record");

    assert!(!s.insert_user(a, keys(2)).await.expect("insert_user"), "insert_user: a taken ID returns false");
    assert_eq!(must_load(s, a).await, fresh_record(1), "insert_user on a taken ID changes nothing");

    // The 40-bit extremes are valid IDs.
    register(s, id(0), 3).await;
    register(s, id(Id::MAX), 4).await;
    assert_eq!(must_load(s, id(0)).await, fresh_record(3));
    assert_eq!(must_load(s, id(Id::MAX)).await, fresh_record(4));
    assert_eq!(stats(s).await.users, 3);
}

/// `spend_token`: `true` once, then `false` and no change; one namespace with report and reset
/// tokens; forgotten by `expire` once past its expiry.
pub async fn spend_token_is_single_use<S: Storage>(s: &S) {
    assert!(s.spend_token(token("pow:abc", 100)).await.expect("spend_token"), "fresh value");
    assert!(!s.spend_token(token("pow:abc", LATER)).await.expect("spend_token"), "a spent value is refused");
    assert!(s.spend_token(token("pow:abd", 100)).await.expect("spend_token"), "another value");

    assert!(
        !s.submit_report(token("pow:abc", LATER), vec![entry(1)]).await.expect("submit_report"),
        "a declaration cannot reuse a spent value"
    );
    assert_eq!(stats(s).await.pool_depth, 0);
    declare(s, "jwt:declared", &[2]).await;
    assert!(
        !s.spend_token(token("jwt:declared", LATER)).await.expect("spend_token"),
        "a declaration's jti is spent for spend_token too"
    );
    let a = id(1);
    register(s, a, 1).await;
    assert!(s.reset_status(a, token("jwt:reset", LATER)).await.expect("reset_status"));
    assert!(
        !s.spend_token(token("jwt:reset", LATER)).await.expect("spend_token"),
        "a reset's jti is spent for spend_token too"
    );
    assert!(
        !s.reset_status(a, token("pow:abd", LATER)).await.expect("reset_status"),
        "a reset cannot reuse a spent value"
    );

    // Remembered until (and including) its expiry, then forgotten: the refusal above kept the
    // first expiry (100), not the later one offered by the refused call.
    let removed = s.expire(ep(0), 100, 0).await.expect("expire");
    assert_eq!(removed.tokens, 0, "expires_unix = bound: kept");
    assert!(!s.spend_token(token("pow:abc", LATER)).await.expect("spend_token"));
    let removed = s.expire(ep(0), 101, 0).await.expect("expire");
    assert_eq!(removed.tokens, 2, "both values expiring at 100 forgotten");
    assert!(
        s.spend_token(token("pow:abc", LATER)).await.expect("spend_token"),
        "a forgotten value can be spent again"
    );
}

/// `register_user`: spends the challenge and registers the ID together; a spent challenge changes
/// nothing (no user), a taken ID changes nothing (the challenge stays spendable); the challenge
/// shares the token namespace.
pub async fn register_user_is_one_transaction<S: Storage>(s: &S) {
    let (a, b, c) = (id(1), id(2), id(3));
    assert_eq!(
        s.register_user(token("pow:r1", 100), a, keys(1)).await.expect("register_user"),
        RegisterOutcome::Registered,
        "a fresh challenge and a free ID"
    );
    assert_eq!(must_load(s, a).await, fresh_record(1), "register_user: the record is insert_user's");
    assert!(!s.spend_token(token("pow:r1", LATER)).await.expect("spend_token"), "register_user spent it");

    assert_eq!(
        s.register_user(token("pow:r1", LATER), b, keys(2)).await.expect("register_user"),
        RegisterOutcome::TokenSpent,
        "a spent challenge is refused"
    );
    assert_eq!(s.load_user(b).await.expect("load_user"), None, "a refused challenge registers nothing");

    assert_eq!(
        s.register_user(token("pow:r2", 100), a, keys(3)).await.expect("register_user"),
        RegisterOutcome::IdTaken,
        "a taken ID is refused"
    );
    assert_eq!(must_load(s, a).await, fresh_record(1), "a taken ID's record is unchanged");
    assert_eq!(
        s.register_user(token("pow:r2", 100), c, keys(3)).await.expect("register_user"),
        RegisterOutcome::Registered,
        "after IdTaken the same challenge registers another ID"
    );
    assert_eq!(must_load(s, c).await, fresh_record(3));

    declare(s, "jwt:declared", &[1]).await;
    assert_eq!(
        s.register_user(token("jwt:declared", LATER), b, keys(2)).await.expect("register_user"),
        RegisterOutcome::TokenSpent,
        "one namespace with declarations"
    );
    assert_eq!(s.load_user(b).await.expect("load_user"), None);
    assert_eq!(stats(s).await.users, 2);
    // The spent challenges are forgotten by `expire` like any used token.
    let removed = s.expire(ep(0), 101, 0).await.expect("expire");
    assert_eq!(removed.tokens, 2, "pow:r1 and pow:r2 expire at 100");
}

/// `register_user`: of concurrent registrations with one challenge (each with its own ID), exactly
/// one registers; the others register nothing.
pub async fn concurrent_registrations_spend_once<S: Storage>(s: &S) {
    let outcomes = join_all(
        (0..8u8)
            .map(|n| s.register_user(token("pow:race", LATER), id(100 + u64::from(n)), keys(n)))
            .collect(),
    )
    .await;
    let outcomes: Vec<RegisterOutcome> = outcomes.into_iter().map(|o| o.expect("register_user")).collect();
    assert_eq!(
        outcomes.iter().filter(|o| **o == RegisterOutcome::Registered).count(),
        1,
        "one winner: {outcomes:?}"
    );
    assert!(outcomes.iter().all(|o| matches!(o, RegisterOutcome::Registered | RegisterOutcome::TokenSpent)));
    assert_eq!(stats(s).await.users, 1, "the losers registered nothing");
}

/// `load_user_keys`: the wrapped keys of the registered IDs among those asked, in any order;
/// unknown IDs absent; nothing asked, nothing returned.
pub async fn load_user_keys_returns_registered_only<S: Storage>(s: &S) {
    assert!(s.load_user_keys(Vec::new()).await.expect("load_user_keys").is_empty());
    for n in 1..=3 {
        register(s, id(n), u8::try_from(n).expect("small")).await;
    }
    assert!(s.unregister(id(3)).await.expect("unregister"));
    let mut found = s.load_user_keys(vec![id(3), id(2), id(9), id(1), id(2)]).await.expect("load_user_keys");
    found.sort_by_key(|(who, _)| who.value());
    // Whether an ID asked twice comes back once or twice is not part of the contract.
    found.dedup();
    assert_eq!(found, vec![(id(1), keys(1)), (id(2), keys(2))]);
    assert!(
        s.load_user_keys(vec![id(3), id(9)]).await.expect("load_user_keys").is_empty(),
        "only unknown IDs"
    );
}

/// `status_request` on an unknown ID: `Rejected`, nothing created.
pub async fn status_request_unknown_is_rejected<S: Storage>(s: &S) {
    let outcome = s.status_request(id(7), ep(10), 0, true).await;
    assert_eq!(outcome.expect("status_request"), StatusOutcome::Rejected, "unknown ID");
    assert_eq!(s.load_user(id(7)).await.expect("load_user"), None, "nothing created");
    assert_eq!(stats(s).await.users, 0);
}

/// A new registration has no SRE_A: its first ESR is answered whatever T is, even at epoch 0;
/// and an SRE_A of 0 is a real value, not "unset".
pub async fn status_request_first_is_not_held_back<S: Storage>(s: &S) {
    let a = id(1);
    register(s, a, 1).await;
    let outcome = s.status_request(a, ep(1000), 100, false).await;
    assert_eq!(outcome.expect("status_request"), ANSWER_FALSE, "first ESR answered");
    let rec = must_load(s, a).await;
    assert_eq!(rec.last_status_epoch, Some(ep(1000)), "SRE_A := now");
    assert!(!rec.notified && !rec.acknowledged);

    let b = id(2);
    register(s, b, 2).await;
    let outcome = s.status_request(b, ep(0), 10, false).await;
    assert_eq!(outcome.expect("status_request"), ANSWER_FALSE, "first ESR at epoch 0");
    assert_eq!(must_load(s, b).await.last_status_epoch, Some(ep(0)));
    let outcome = s.status_request(b, ep(5), 10, false).await;
    assert_eq!(
        outcome.expect("status_request"),
        StatusOutcome::Rejected,
        "SRE_A = 0 holds the next ESR back like any other value"
    );
}

/// The T rule: inside T → `Rejected` and nothing changes (not SRE_A, not UN_A, even if the score
/// says at risk); at exactly T → answered; `now` before SRE_A → too early; T = 0 never holds back.
pub async fn status_request_min_interval<S: Storage>(s: &S) {
    let a = id(1);
    register(s, a, 1).await;
    let t = 100;
    assert_eq!(s.status_request(a, ep(1000), t, false).await.expect("esr"), ANSWER_FALSE);
    let before = must_load(s, a).await;

    for now in [1000, 1001, 1099] {
        let outcome = s.status_request(a, ep(now), t, true).await;
        assert_eq!(
            outcome.expect("status_request"),
            StatusOutcome::Rejected,
            "ESR inside T (now - SRE_A = {}) is rejected",
            now - 1000
        );
        assert_eq!(must_load(s, a).await, before, "a rejected ESR changes nothing");
    }
    assert_eq!(
        s.status_request(a, ep(1100), t, false).await.expect("esr"),
        ANSWER_FALSE,
        "ESR at exactly T is answered"
    );
    assert_eq!(must_load(s, a).await.last_status_epoch, Some(ep(1100)));

    // A `now` before SRE_A (a replica's clock behind another's) is not "T epochs later".
    assert_eq!(
        s.status_request(a, ep(900), t, false).await.expect("esr"),
        StatusOutcome::Rejected,
        "now < SRE_A is too early"
    );
    assert_eq!(must_load(s, a).await.last_status_epoch, Some(ep(1100)));

    let b = id(2);
    register(s, b, 2).await;
    for _ in 0..2 {
        assert_eq!(
            s.status_request(b, ep(50), 0, false).await.expect("esr"),
            ANSWER_FALSE,
            "T = 0 never holds an ESR back"
        );
    }
}

/// At risk: UN_A := true and `Answer { at_risk: true }`; then, until acknowledged, every ESR
/// answers `true` whatever T says and whatever the new score, and moves SRE_A to `now`.
pub async fn status_request_notified_answers_true<S: Storage>(s: &S) {
    let a = id(1);
    register(s, a, 1).await;
    assert_eq!(s.status_request(a, ep(10), 100, true).await.expect("esr"), ANSWER_TRUE);
    let rec = must_load(s, a).await;
    assert!(rec.notified && !rec.acknowledged, "UN_A := true");
    assert_eq!(rec.last_status_epoch, Some(ep(10)));

    for now in [10, 11, 50] {
        assert_eq!(
            s.status_request(a, ep(now), 100, false).await.expect("esr"),
            ANSWER_TRUE,
            "notified, unacknowledged: answered true even inside T"
        );
        let rec = must_load(s, a).await;
        assert_eq!(rec.last_status_epoch, Some(ep(now)), "SRE_A := now");
        assert!(rec.notified, "a repeat answer does not clear UN_A");
    }
}

/// After the acknowledgement every ESR is rejected, however late, and changes nothing.
pub async fn status_request_acknowledged_is_rejected_forever<S: Storage>(s: &S) {
    let a = id(1);
    register(s, a, 1).await;
    assert_eq!(s.status_request(a, ep(10), 5, true).await.expect("esr"), ANSWER_TRUE);
    assert!(s.acknowledge(a).await.expect("acknowledge"));
    let before = must_load(s, a).await;
    assert!(before.notified && before.acknowledged);
    for (now, at_risk) in [(10, true), (11, false), (10_000, false), (Epoch::MAX.number(), true)] {
        assert_eq!(
            s.status_request(a, ep(now), 5, at_risk).await.expect("esr"),
            StatusOutcome::Rejected,
            "acknowledged: rejected forever"
        );
        assert_eq!(must_load(s, a).await, before, "rejected ESR changes nothing");
    }
}

/// `acknowledge`: `false` (and no change) when unknown or not notified; `true` when notified, and
/// `true` again on a repeat.
pub async fn acknowledge_requires_notification<S: Storage>(s: &S) {
    assert!(!s.acknowledge(id(9)).await.expect("acknowledge"), "unknown ID");
    assert_eq!(s.load_user(id(9)).await.expect("load_user"), None);

    let a = id(1);
    register(s, a, 1).await;
    assert!(!s.acknowledge(a).await.expect("acknowledge"), "never notified");
    assert_eq!(must_load(s, a).await, fresh_record(1), "nothing changed");
    assert_eq!(s.status_request(a, ep(3), 10, false).await.expect("esr"), ANSWER_FALSE);
    assert!(!s.acknowledge(a).await.expect("acknowledge"), "answered false, not notified");
    assert!(!must_load(s, a).await.acknowledged);
    assert_eq!(
        s.status_request(a, ep(13), 10, false).await.expect("esr"),
        ANSWER_FALSE,
        "a refused acknowledgement does not block later ESRs"
    );

    assert_eq!(s.status_request(a, ep(23), 10, true).await.expect("esr"), ANSWER_TRUE);
    assert!(s.acknowledge(a).await.expect("acknowledge"), "notified");
    let once = must_load(s, a).await;
    assert!(once.notified && once.acknowledged);
    assert!(s.acknowledge(a).await.expect("acknowledge"), "idempotent");
    assert_eq!(must_load(s, a).await, once, "a repeat changes nothing");
}

/// `reset_status`: with an unused `jti` and a registered ID, clears notified/acknowledged and
/// LEE_A (keeping the keys and SRE_A); a reused `jti` — by a reset or a declaration — is refused
/// and changes nothing; a reset of an unknown ID does not spend the `jti`.
pub async fn reset_status_spends_token_and_clears<S: Storage>(s: &S) {
    let a = id(1);
    register(s, a, 1).await;
    expose(s, a, 1, exposure(5, 2, -120, 2)).await;
    assert_eq!(s.status_request(a, ep(10), 10, true).await.expect("esr"), ANSWER_TRUE);
    assert!(s.acknowledge(a).await.expect("acknowledge"));

    assert!(
        s.reset_status(a, token("reset-1", LATER)).await.expect("reset_status"),
        "fresh jti, registered ID"
    );
    let rec = must_load(s, a).await;
    assert_eq!(
        rec,
        UserRecord { last_status_epoch: Some(ep(10)), ..fresh_record(1) },
        "reset clears UN_A and LEE_A, keeps keys and SRE_A"
    );
    assert_eq!(
        s.status_request(a, ep(20), 10, true).await.expect("esr"),
        ANSWER_TRUE,
        "after a reset, ESRs work again (and can notify again)"
    );

    let before = must_load(s, a).await;
    assert!(
        !s.reset_status(a, token("reset-1", LATER)).await.expect("reset_status"),
        "a reused jti is refused"
    );
    assert_eq!(must_load(s, a).await, before, "a refused reset changes nothing");

    declare(s, "declared", &[2]).await;
    assert!(
        !s.reset_status(a, token("declared", LATER)).await.expect("reset_status"),
        "a jti spent on a declaration is spent for a reset too"
    );
    assert_eq!(must_load(s, a).await, before);

    assert!(!s.reset_status(id(99), token("reset-2", LATER)).await.expect("reset_status"), "unknown ID");
    assert!(
        s.reset_status(a, token("reset-2", LATER)).await.expect("reset_status"),
        "a reset refused for an unknown ID did not spend its jti"
    );
}

/// `unregister`: erases the record and its LEE_A (nothing comes back if the ID is registered
/// again); `false` if unknown.
pub async fn unregister_erases<S: Storage>(s: &S) {
    assert!(!s.unregister(id(1)).await.expect("unregister"), "unknown ID");
    let a = id(1);
    register(s, a, 1).await;
    register(s, id(2), 2).await;
    expose(s, a, 1, exposure(5, 1, 0, 0)).await;
    assert_eq!(s.status_request(a, ep(10), 10, true).await.expect("esr"), ANSWER_TRUE);

    assert!(s.unregister(a).await.expect("unregister"));
    assert_eq!(s.load_user(a).await.expect("load_user"), None, "record erased");
    assert_eq!(stats(s).await.users, 1);
    assert!(!s.unregister(a).await.expect("unregister"), "already gone");
    assert_eq!(
        s.status_request(a, ep(30), 10, false).await.expect("esr"),
        StatusOutcome::Rejected,
        "an unregistered ID is unknown"
    );

    register(s, a, 3).await;
    assert_eq!(must_load(s, a).await, fresh_record(3), "LEE_A, UN_A and SRE_A went with the record");
    assert_eq!(must_load(s, id(2)).await, fresh_record(2), "other IDs untouched");
}

/// `delete_history`: erases LEE_A, keeps the registration (keys, UN_A, SRE_A); `false` if unknown.
pub async fn delete_history_keeps_registration<S: Storage>(s: &S) {
    assert!(!s.delete_history(id(1)).await.expect("delete_history"), "unknown ID");
    assert_eq!(s.load_user(id(1)).await.expect("load_user"), None, "nothing created");
    let a = id(1);
    register(s, a, 1).await;
    expose(s, a, 1, exposure(5, 1, -40, 1)).await;
    expose(s, a, 2, exposure(6, 1, -40, 1)).await;
    assert_eq!(s.status_request(a, ep(10), 10, true).await.expect("esr"), ANSWER_TRUE);
    assert!(s.acknowledge(a).await.expect("acknowledge"));

    assert!(s.delete_history(a).await.expect("delete_history"));
    assert_eq!(
        must_load(s, a).await,
        UserRecord { last_status_epoch: Some(ep(10)), notified: true, acknowledged: true, ..fresh_record(1) },
        "LEE_A erased; keys, UN_A and SRE_A kept (only a reset token clears UN_A)"
    );
    assert!(s.delete_history(a).await.expect("delete_history"), "again: still registered");
}

/// `submit_report`: spends the token and stores every entry; a reused `jti` stores nothing.
pub async fn submit_report_spends_token_and_stores_all<S: Storage>(s: &S) {
    declare(s, "decl-1", &[1, 2, 3]).await;
    assert_eq!(
        sorted_pool(s).await,
        {
            let mut v = vec![entry(1), entry(2), entry(3)];
            v.sort_by_key(|e| e.slot);
            v
        },
        "every entry stored, slot and record"
    );
    assert_eq!(stats(s).await.pool_depth, 3);

    let again =
        s.submit_report(token("decl-1", LATER), vec![entry(4), entry(5)]).await.expect("submit_report");
    assert!(!again, "a reused jti is refused");
    assert_eq!(stats(s).await.pool_depth, 3, "a refused declaration stores nothing");

    assert!(
        s.submit_report(token("decl-empty", LATER), Vec::new()).await.expect("submit_report"),
        "an empty declaration spends its token"
    );
    assert!(
        !s.submit_report(token("decl-empty", LATER), vec![entry(6)]).await.expect("submit_report"),
        "… so it cannot be reused"
    );
    assert_eq!(stats(s).await.pool_depth, 3);

    let a = id(1);
    register(s, a, 1).await;
    assert!(s.reset_status(a, token("reset-1", LATER)).await.expect("reset_status"));
    assert!(
        !s.submit_report(token("reset-1", LATER), vec![entry(7)]).await.expect("submit_report"),
        "a jti spent on a reset is spent for a declaration too"
    );
    assert_eq!(stats(s).await.pool_depth, 3);
}

/// `pool_take`: at most `max` entries, distinct, from the pool; taking removes nothing.
pub async fn pool_take_bounds_and_keeps<S: Storage>(s: &S) {
    assert!(s.pool_take(10).await.expect("pool_take").is_empty(), "empty pool");
    declare(s, "d1", &[1, 2, 3]).await;
    declare(s, "d2", &[4, 5]).await;
    let all = sorted_pool(s).await;
    assert_eq!(all.len(), 5);

    assert!(s.pool_take(0).await.expect("pool_take").is_empty(), "max = 0");
    let mut two = s.pool_take(2).await.expect("pool_take");
    assert_eq!(two.len(), 2, "max respected");
    two.sort_by_key(|e| e.slot);
    two.dedup_by_key(|e| e.slot);
    assert_eq!(two.len(), 2, "distinct entries");
    assert!(two.iter().all(|e| all.contains(e)), "entries come from the pool");
    assert_eq!(stats(s).await.pool_depth, 5, "taking removes nothing");
    assert_eq!(sorted_pool(s).await, all, "… and changes nothing");
}

/// Two mixers take the same entries and both commit: the first erases and applies them, the
/// second erases and applies nothing (exposures and outbox not doubled).
pub async fn pool_commit_is_exactly_once<S: Storage>(s: &S) {
    let a = id(1);
    register(s, a, 1).await;
    declare(s, "d1", &[1, 2, 3, 4]).await;
    let mixer_1 = s.pool_take(100).await.expect("pool_take");
    let mixer_2 = s.pool_take(100).await.expect("pool_take");
    assert_eq!(mixer_1.len(), 4);
    assert_eq!(mixer_2.len(), 4);

    let batch = |taken: &[PoolEntry]| ProcessedBatch {
        slots: taken.iter().map(|e| e.slot).collect(),
        exposures: taken
            .iter()
            .filter(|e| e.slot != slot(4))
            .map(|e| (a, exposure(7, 1, -60, 1), e.slot))
            .collect(),
        outbox: vec![(CountryCode::new(49), record(4), slot(4))],
    };
    assert_eq!(s.pool_commit(batch(&mixer_1)).await.expect("pool_commit"), 4);
    assert_eq!(
        s.pool_commit(batch(&mixer_2)).await.expect("pool_commit"),
        0,
        "the second mixer erases nothing"
    );
    assert_eq!(must_load(s, a).await.exposures, vec![exposure(7, 3, -180, 3)], "exposures applied once");
    let st = stats(s).await;
    assert_eq!(st.pool_depth, 0, "processed pairs erased");
    assert_eq!(st.outbox_depth, 1, "outbox entry added once");
}

/// Only the batch's slots still in the pool count: exposures and outbox entries tagged with an
/// already erased slot, a never-seen slot, or a slot outside `batch.slots` are not applied;
/// a slot listed twice is erased (and counted) once.
pub async fn pool_commit_applies_only_erased_slots<S: Storage>(s: &S) {
    let a = id(1);
    register(s, a, 1).await;
    declare(s, "d1", &[1, 2, 3, 4]).await;

    // Mixer 1 processes slots 1 and 2.
    let first = ProcessedBatch {
        slots: vec![slot(1), slot(2), slot(1)],
        exposures: vec![(a, exposure(1, 1, 0, 0), slot(1)), (a, exposure(2, 1, 0, 0), slot(2))],
        outbox: Vec::new(),
    };
    assert_eq!(s.pool_commit(first).await.expect("pool_commit"), 2, "slot 1 counted once");

    // Mixer 2 overlaps (2), has a fresh one (3), a never-seen one (99), and tags an exposure and an
    // outbox entry with slot 4, which is in the pool but not in this batch.
    let second = ProcessedBatch {
        slots: vec![slot(2), slot(3), slot(99)],
        exposures: vec![
            (a, exposure(2, 5, 0, 0), slot(2)),
            (a, exposure(3, 1, -70, 1), slot(3)),
            (a, exposure(9, 1, 0, 0), slot(99)),
            (a, exposure(4, 1, 0, 0), slot(4)),
        ],
        outbox: vec![
            (CountryCode::new(49), record(2), slot(2)),
            (CountryCode::new(49), record(3), slot(3)),
            (CountryCode::new(49), record(99), slot(99)),
            (CountryCode::new(49), record(4), slot(4)),
        ],
    };
    assert_eq!(s.pool_commit(second).await.expect("pool_commit"), 1, "only slot 3 erased");
    assert_eq!(
        must_load(s, a).await.exposures,
        vec![exposure(1, 1, 0, 0), exposure(2, 1, 0, 0), exposure(3, 1, -70, 1)],
        "exposures of erased slots only"
    );
    let st = stats(s).await;
    assert_eq!(st.outbox_depth, 1, "outbox entries of erased slots only");
    assert_eq!(st.pool_depth, 1, "slot 4 still waits");
    assert_eq!(sorted_pool(s).await, vec![entry(4)]);
}

/// Exposures for IDs not registered are dropped (and do not appear if the ID registers later);
/// the slot is still erased and counted.
pub async fn pool_commit_drops_unknown_ids<S: Storage>(s: &S) {
    let (a, ghost) = (id(1), id(2));
    register(s, a, 1).await;
    declare(s, "d1", &[1, 2]).await;
    let batch = ProcessedBatch {
        slots: vec![slot(1), slot(2)],
        exposures: vec![(ghost, exposure(5, 1, 0, 0), slot(1)), (a, exposure(5, 1, 0, 0), slot(2))],
        outbox: Vec::new(),
    };
    assert_eq!(s.pool_commit(batch).await.expect("pool_commit"), 2);
    assert_eq!(must_load(s, a).await.exposures, vec![exposure(5, 1, 0, 0)]);
    assert_eq!(s.load_user(ghost).await.expect("load_user"), None, "no user created");
    register(s, ghost, 2).await;
    assert_eq!(must_load(s, ghost).await, fresh_record(2), "no exposure kept for it");
}

/// LEE_A has one entry per (ID, epoch): HELLO counts, RSSI sums and RSSI counts add up, within a
/// batch and across batches; entries come out in increasing epoch order.
pub async fn exposures_aggregate_per_epoch<S: Storage>(s: &S) {
    let (a, b) = (id(1), id(2));
    register(s, a, 1).await;
    register(s, b, 2).await;
    declare(s, "d1", &[1, 2, 3, 4, 5, 6]).await;
    let batch = ProcessedBatch {
        slots: vec![slot(1), slot(2), slot(3), slot(4)],
        exposures: vec![
            (a, exposure(20, 1, -50, 1), slot(1)),
            (a, exposure(20, 2, -70, 1), slot(2)),
            (a, exposure(10, 1, 0, 0), slot(3)),
            (b, exposure(20, 1, -90, 1), slot(4)),
        ],
        outbox: Vec::new(),
    };
    assert_eq!(s.pool_commit(batch).await.expect("pool_commit"), 4);
    let later = ProcessedBatch {
        slots: vec![slot(5), slot(6)],
        exposures: vec![(a, exposure(20, 1, 0, 0), slot(5)), (a, exposure(15, 4, -200, 4), slot(6))],
        outbox: Vec::new(),
    };
    assert_eq!(s.pool_commit(later).await.expect("pool_commit"), 2);
    assert_eq!(
        must_load(s, a).await.exposures,
        vec![exposure(10, 1, 0, 0), exposure(15, 4, -200, 4), exposure(20, 4, -120, 2)],
        "summed per epoch, in epoch order"
    );
    assert_eq!(must_load(s, b).await.exposures, vec![exposure(20, 1, -90, 1)], "per ID");
}

/// `expire` removes exactly LEE rows with `epoch < lee_before`, tokens with
/// `expires_unix < tokens_before_unix` (their `jti` becomes usable again) and day keys with
/// `day < keys_before_day`, and says how many; the boundaries themselves stay.
pub async fn expire_boundaries<S: Storage>(s: &S) {
    let (a, b) = (id(1), id(2));
    register(s, a, 1).await;
    register(s, b, 2).await;
    for (n, (who, epoch)) in [(a, 9), (a, 10), (a, 11), (b, 3), (b, 10)].into_iter().enumerate() {
        let n = u32::try_from(n).expect("small");
        expose(s, who, n, exposure(epoch, 1, 0, 0)).await;
    }
    for (jti, expires) in [("t99", 99), ("t100", 100), ("t101", 101)] {
        assert!(s.submit_report(token(jti, expires), Vec::new()).await.expect("submit_report"));
    }
    for day in [4, 5, 6] {
        s.put_server_key(day, keys(u8::try_from(day).expect("small"))).await.expect("put_server_key");
    }

    let removed = s.expire(ep(10), 100, 5).await.expect("expire");
    // The `expose` helper spent 5 tokens expiring at LATER: not removed.
    assert_eq!(
        removed,
        ExpiryStats { exposures: 2, tokens: 1, server_keys: 1 },
        "exactly what is strictly before each bound"
    );
    assert_eq!(must_load(s, a).await.exposures, vec![exposure(10, 1, 0, 0), exposure(11, 1, 0, 0)]);
    assert_eq!(must_load(s, b).await.exposures, vec![exposure(10, 1, 0, 0)]);
    let days: Vec<u32> =
        s.server_keys().await.expect("server_keys").into_iter().map(|(day, _)| day).collect();
    assert_eq!(days, vec![5, 6]);
    assert!(
        s.submit_report(token("t99", LATER), Vec::new()).await.expect("submit_report"),
        "an expired jti was forgotten"
    );
    for jti in ["t100", "t101"] {
        assert!(
            !s.submit_report(token(jti, LATER), Vec::new()).await.expect("submit_report"),
            "a jti expiring at or after the bound is still remembered"
        );
    }
    assert_eq!(
        s.expire(ep(10), 100, 5).await.expect("expire"),
        ExpiryStats::default(),
        "a second run removes nothing"
    );
}

/// `put_server_key` keeps the first key stored for a day and returns it; `server_keys` lists
/// every day key in increasing day order.
pub async fn server_keys_first_wins_and_ordered<S: Storage>(s: &S) {
    assert!(s.server_keys().await.expect("server_keys").is_empty());
    assert_eq!(s.put_server_key(7, keys(70)).await.expect("put_server_key"), keys(70));
    assert_eq!(
        s.put_server_key(7, keys(71)).await.expect("put_server_key"),
        keys(70),
        "the first key for a day stays in force"
    );
    for day in [9, 3, 1000, 0] {
        let k = keys(u8::try_from(day % 256).expect("small"));
        assert_eq!(s.put_server_key(day, k.clone()).await.expect("put_server_key"), k);
    }
    assert_eq!(
        s.server_keys().await.expect("server_keys"),
        vec![(0, keys(0)), (3, keys(3)), (7, keys(70)), (9, keys(9)), (1000, keys(232)),],
        "every key, in day order"
    );
}

/// `stats` counts users, pool entries and outbox entries.
pub async fn stats_counts<S: Storage>(s: &S) {
    assert_eq!(stats(s).await, Stats::default(), "empty store");
    for n in 1..=3 {
        register(s, id(n), u8::try_from(n).expect("small")).await;
    }
    declare(s, "d1", &[1, 2, 3]).await;
    let batch = ProcessedBatch {
        slots: vec![slot(1)],
        exposures: Vec::new(),
        outbox: vec![(CountryCode::new(49), record(1), slot(1))],
    };
    assert_eq!(s.pool_commit(batch).await.expect("pool_commit"), 1);
    assert!(s.unregister(id(3)).await.expect("unregister"));
    assert_eq!(stats(s).await, Stats { users: 2, pool_depth: 2, outbox_depth: 1 });
}

/// 50 concurrent ESRs for one ID inside T: exactly one is answered.
pub async fn concurrent_status_requests_answer_once<S: Storage>(s: &S) {
    let a = id(1);
    register(s, a, 1).await;
    let calls = (0..50).map(|_| s.status_request(a, ep(100), 10, false)).collect();
    let outcomes: Vec<StatusOutcome> =
        join_all(calls).await.into_iter().map(|r| r.expect("status_request")).collect();
    let answered = outcomes.iter().filter(|o| **o == ANSWER_FALSE).count();
    let rejected = outcomes.iter().filter(|o| **o == StatusOutcome::Rejected).count();
    assert_eq!((answered, rejected), (1, 49), "exactly one concurrent ESR answered");
    assert_eq!(must_load(s, a).await.last_status_epoch, Some(ep(100)));
}

/// Concurrent writes that race for the same thing: one registration of an ID wins, one
/// declaration per `jti` is stored, and two mixers committing the same batch apply it once.
pub async fn concurrent_writes_are_exclusive<S: Storage>(s: &S) {
    let a = id(1);
    let inserts = (0..20u8).map(|n| s.insert_user(a, keys(n))).collect();
    let won = join_all(inserts).await.into_iter().filter(|r| *r.as_ref().expect("insert_user")).count();
    assert_eq!(won, 1, "one registration of a contested ID");

    let reports =
        (0..20u32).map(|n| s.submit_report(token("contested", LATER), vec![entry(100 + n)])).collect();
    let stored = join_all(reports).await.into_iter().filter(|r| *r.as_ref().expect("submit_report")).count();
    assert_eq!(stored, 1, "one declaration per jti");
    assert_eq!(stats(s).await.pool_depth, 1);

    declare(s, "d1", &[1, 2, 3]).await;
    let batch = ProcessedBatch {
        slots: vec![slot(1), slot(2), slot(3)],
        exposures: [1, 2, 3].into_iter().map(|n| (a, exposure(4, 1, -10, 1), slot(n))).collect(),
        outbox: Vec::new(),
    };
    let commits = vec![s.pool_commit(batch.clone()), s.pool_commit(batch)];
    let erased: u64 = join_all(commits).await.into_iter().map(|r| r.expect("pool_commit")).sum();
    assert_eq!(erased, 3, "each slot erased by one mixer");
    assert_eq!(must_load(s, a).await.exposures, vec![exposure(4, 3, -30, 3)]);
}

// -------------------------------------------------------------------------------------------
// Federation (§8): the outbox, pending batches, sequence numbers.

const DE: CountryCode = CountryCode::new(49);
const IT: CountryCode = CountryCode::new(39);

/// Puts pairs `ns` in the outbox for `cc` through the pool and one mixer commit, in that order.
async fn to_outbox<S: Storage>(s: &S, cc: CountryCode, ns: &[u32]) {
    declare(s, &format!("outbox-{}-{}", cc.value(), ns[0]), ns).await;
    let batch = ProcessedBatch {
        slots: ns.iter().map(|&n| slot(n)).collect(),
        exposures: Vec::new(),
        outbox: ns.iter().map(|&n| (cc, record(n), slot(n))).collect(),
    };
    assert_eq!(s.pool_commit(batch).await.expect("pool_commit"), ns.len() as u64);
}

async fn next<S: Storage>(s: &S, cc: CountryCode, max: usize, fresh: u8, now: u32) -> Option<OutboundBatch> {
    s.federation_next_batch(cc, max, [fresh; 16], now).await.expect("federation_next_batch")
}

async fn depths<S: Storage>(s: &S) -> Vec<(u8, u64)> {
    let d = s.federation_depths().await.expect("federation_depths");
    d.into_iter().map(|(cc, n)| (cc.value(), n)).collect()
}

/// `federation_next_batch` seals the oldest `max` pairs of the country, in outbox order, with
/// sequence numbers 1, 2, …; other countries' pairs stay; `None` when nothing is left.
pub async fn federation_batches_in_outbox_order<S: Storage>(s: &S) {
    assert_eq!(next(s, DE, 10, 1, 100).await, None, "empty outbox: no batch");
    to_outbox(s, DE, &[1, 2, 3]).await;
    to_outbox(s, IT, &[10]).await;
    to_outbox(s, DE, &[4, 5]).await;
    assert_eq!(depths(s).await, vec![(39, 1), (49, 5)]);
    let b = next(s, DE, 4, 1, 100).await.expect("a batch");
    assert_eq!(
        (b.country, b.id, b.seq, b.created),
        (DE, [1; 16], 1, 100),
        "fresh ID, creation time and first sequence number"
    );
    assert_eq!(b.records, vec![record(1), record(2), record(3), record(4)], "oldest first, bounded by max");
    assert_eq!(depths(s).await, vec![(39, 1), (49, 5)], "pending pairs still count until done");
    assert_eq!(stats(s).await.outbox_depth, 6);
    assert!(s.federation_batch_done(DE, [1; 16]).await.expect("done"));
    let b = next(s, DE, 4, 2, 200).await.expect("the rest");
    assert_eq!((b.id, b.seq, b.records.clone()), ([2; 16], 2, vec![record(5)]));
    assert!(s.federation_batch_done(DE, [2; 16]).await.expect("done"));
    assert_eq!(next(s, DE, 4, 3, 300).await, None, "all of DE's pairs sent");
    assert_eq!(depths(s).await, vec![(39, 1)], "a country with nothing left is omitted");
    let it = next(s, IT, 4, 4, 300).await.expect("IT's batch");
    assert_eq!((it.seq, it.records), (1, vec![record(10)]), "sequence numbers are per country");
    // Sequence numbers are never reused, even once every batch is done.
    assert!(s.federation_batch_done(IT, [4; 16]).await.expect("done"));
    to_outbox(s, DE, &[6]).await;
    assert_eq!(next(s, DE, 4, 5, 400).await.expect("batch").seq, 3);
    assert_eq!(stats(s).await.outbox_depth, 1);
}

/// A pending batch is returned unchanged (same ID, sequence, time, records) until it is done,
/// even when more pairs arrive and another fresh ID is offered.
pub async fn federation_pending_batch_is_stable<S: Storage>(s: &S) {
    to_outbox(s, DE, &[1, 2]).await;
    let first = next(s, DE, 10, 1, 100).await.expect("batch");
    to_outbox(s, DE, &[3]).await;
    let again = next(s, DE, 10, 2, 999).await.expect("batch");
    assert_eq!(again, first, "the pending batch, not a new one");
    assert!(s.federation_batch_done(DE, first.id).await.expect("done"));
    let b = next(s, DE, 10, 3, 1000).await.expect("batch");
    assert_eq!((b.id, b.records), ([3; 16], vec![record(3)]), "later pairs go in the next batch");
}

/// `federation_batch_done` erases only the pending batch of that country with that ID; it is
/// idempotent and changes nothing otherwise.
pub async fn federation_batch_done_is_exact<S: Storage>(s: &S) {
    assert!(!s.federation_batch_done(DE, [1; 16]).await.expect("done"), "nothing pending");
    to_outbox(s, DE, &[1]).await;
    to_outbox(s, IT, &[2]).await;
    let de = next(s, DE, 10, 1, 100).await.expect("batch");
    assert!(!s.federation_batch_done(DE, [9; 16]).await.expect("done"), "another ID");
    assert!(!s.federation_batch_done(IT, de.id).await.expect("done"), "another country");
    assert_eq!(next(s, DE, 10, 2, 100).await, Some(de.clone()), "still pending");
    assert!(s.federation_batch_done(DE, de.id).await.expect("done"));
    assert!(!s.federation_batch_done(DE, de.id).await.expect("done"), "idempotent");
    assert_eq!(depths(s).await, vec![(39, 1)]);
}

/// Concurrent sealing for one country (replicas) returns one batch to everyone: no pair is in two
/// batches, none is lost.
pub async fn federation_concurrent_sealing_agrees<S: Storage>(s: &S) {
    to_outbox(s, DE, &(1..=30).collect::<Vec<_>>()).await;
    let calls = (0..10u8).map(|n| s.federation_next_batch(DE, 20, [n + 1; 16], 100)).collect();
    let batches: Vec<OutboundBatch> = join_all(calls)
        .await
        .into_iter()
        .map(|r| r.expect("federation_next_batch").expect("a batch"))
        .collect();
    assert!(batches.iter().all(|b| *b == batches[0]), "every caller got the same batch");
    assert_eq!(batches[0].records.len(), 20);
    assert_eq!(depths(s).await, vec![(49, 30)], "no pair lost or duplicated");
}
