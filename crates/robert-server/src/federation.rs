//! Federation between countries' servers (§8, §6.2 step 3): the batch format, its signature, the
//! receiving side (`POST /api/v1/federation/batch`), the sending side (one delivery loop per peer)
//! and the audit log. The protocol is written down in `docs/federation.md`; in short:
//!
//! - The mixer puts every pair whose ECC decrypts to a peer's country in the durable outbox
//!   ([`crate::storage::ProcessedBatch::outbox`]). The delivery loop of that peer seals the oldest
//!   outbox pairs into a batch ([`Storage::federation_next_batch`]: ID, sequence number, creation
//!   time), signs it with this server's Ed25519 key, and POSTs it until the peer acknowledges it;
//!   only then is the batch erased ([`Storage::federation_batch_done`]). One batch per peer is in
//!   flight at a time, so batches arrive in order.
//! - The receiver checks the signature against its allow-list (`[[federation.peers]]`), the
//!   destination country and the replay window, then stores the batch's pairs into its own pool
//!   *and* remembers the batch ID in one transaction ([`Storage::submit_report`] with a `fed:`
//!   single-use value) before answering. A repeated batch changes nothing and gets the same answer.
//!   Received pairs are then mixed and processed exactly as local ones (§6.2 steps 4–10).
//! - A batch carries pairs only: no declaration identifier, no uploader information, no arrival
//!   time; the one timestamp is the batch's creation time (for the replay window).

use crate::config::{Config, FederationSection};
use crate::keystore::BatchSigningKey;
use crate::service::{Service, ServiceError};
use crate::storage::{OutboundBatch, PoolEntry, Storage, TokenUse};
use robert_proto::{CountryCode, NtpTime, UploadRecord};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};

pub use robert_proto::federation::{
    BATCH_MAGIC, Batch, BatchAck, BatchBody, BatchDecodeError, BatchId, BatchSigner, HEADER_LEN,
    MAX_BATCH_PAIRS, MAX_RECORD_LEN, OpenError, SIGNATURE_LEN,
};

/// The receiving endpoint.
pub const BATCH_PATH: &str = "/api/v1/federation/batch";
/// The `tracing` target of audit events.
pub const AUDIT_TARGET: &str = "robert::federation::audit";
/// How far in the future (receiver's clock) a batch's creation time may be, seconds.
pub const CLOCK_SKEW_SEC: u32 = 300;
/// How often an idle delivery loop looks at the outbox (besides being woken by the mixer).
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Parses a peer's Ed25519 public key from hex (64 digits).
pub fn parse_public_key(text: &str) -> Option<[u8; 32]> {
    hex::decode(text.trim()).ok()?.try_into().ok()
}

impl BatchSigner for BatchSigningKey {
    fn sign_batch(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.sign(message)
    }
}

/// Why a received batch was not accepted. Mapped to HTTP in `http.rs`.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// `400`: the body does not parse (names the field).
    #[error("{field}: {reason}")]
    Malformed {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// `403 {"error":"rejected"}`: unknown sender, bad signature, or not addressed to this server.
    #[error("rejected")]
    Rejected,
    /// `410`: the batch is older than the replay window; the sender drops it.
    #[error("batch older than the replay window")]
    Expired,
    /// `500`: storage failed; nothing was stored, the sender will retry.
    #[error("internal error: {0}")]
    Internal(String),
}

/// One peer, from `[[federation.peers]]`.
struct Peer {
    endpoint: String,
    public_key: [u8; 32],
}

/// The federation state of a running server: peers, signing key, HTTP client, audit log.
pub struct Federation {
    own: CountryCode,
    config: FederationSection,
    peers: BTreeMap<u8, Peer>,
    /// `protocol.peer_countries`: routable too (their pairs wait in the outbox until a peer
    /// entry exists for them).
    extra_routable: Vec<u8>,
    signing: Option<BatchSigningKey>,
    /// Built only when there are peers (a server without federation never makes one).
    client: Option<reqwest::Client>,
    wakeup: Notify,
    audit: crate::audit::AuditLog,
    /// The last batch each peer's loop tried, to tell a first send from a retry.
    last_attempt: Mutex<HashMap<u8, BatchId>>,
}

impl std::fmt::Debug for Federation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Federation")
            .field("own", &self.own.value())
            .field("peers", &self.peers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Federation {
    /// Builds the federation state from the configuration. A server with peers needs a signing
    /// key (`robert keygen`).
    pub fn new(config: &Config, signing: Option<BatchSigningKey>) -> Result<Self, String> {
        let f = &config.federation;
        let mut peers = BTreeMap::new();
        for (i, p) in f.peers.iter().enumerate() {
            let public_key = parse_public_key(&p.public_key)
                .ok_or_else(|| format!("federation.peers[{i}].public_key: not 32 bytes of hex"))?;
            let endpoint = format!("{}{BATCH_PATH}", p.url.trim_end_matches('/'));
            peers.insert(p.country_code, Peer { endpoint, public_key });
        }
        if !peers.is_empty() && signing.is_none() {
            return Err("federation peers are configured but the key directory has no federation \
                        signing key: create it with `robert keygen --dir DIR --federation-only`"
                .into());
        }
        let client = if peers.is_empty() {
            None
        } else {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(f.request_timeout_sec))
                .build()
                .map_err(|e| format!("federation HTTP client: {e}"))?;
            Some(client)
        };
        // The hash-chained audit log (Annex B, `crate::audit`), its own file.
        let audit = crate::audit::open_in(&config.server.data_dir, &f.audit_log)
            .map_err(|e| format!("federation.audit_log: {e}"))?;
        Ok(Self {
            own: CountryCode::new(config.protocol.country_code),
            config: f.clone(),
            peers,
            extra_routable: config.protocol.peer_countries.clone(),
            signing,
            client,
            wakeup: Notify::new(),
            audit,
            last_attempt: Mutex::new(HashMap::new()),
        })
    }

    /// §6.2 step 3: is `cc` "a valid country code" whose pairs are forwarded (a configured peer,
    /// or listed in `protocol.peer_countries`)?
    pub fn routes(&self, cc: CountryCode) -> bool {
        cc != self.own && (self.peers.contains_key(&cc.value()) || self.extra_routable.contains(&cc.value()))
    }

    /// The configured peers' country codes, ascending.
    pub fn peers(&self) -> Vec<CountryCode> {
        self.peers.keys().map(|c| CountryCode::new(*c)).collect()
    }

    /// Wakes the delivery loops (the mixer put pairs in the outbox).
    pub fn wake(&self) {
        self.wakeup.notify_waiters();
    }

    /// The one place federation audit events are written: the hash-chained log of
    /// [`crate::audit`] (batch ID, sequence number and pair count; never a pair).
    fn audit(&self, event: &'static str, peer: CountryCode, id: BatchId, seq: u64, pairs: u64) {
        tracing::info!(target: AUDIT_TARGET, event, peer = peer.value(), batch = %id, seq, pairs);
        self.audit.append(
            event,
            &[
                ("peer", serde_json::json!(peer.value())),
                ("batch", serde_json::json!(id.to_string())),
                ("seq", serde_json::json!(seq)),
                ("pairs", serde_json::json!(pairs)),
            ],
        );
    }
}

/// `POST /api/v1/federation/batch`: authenticate, check, store durably, answer (§8).
pub async fn receive<S: Storage>(svc: &Service<S>, body: &BatchBody) -> Result<BatchAck, ReceiveError> {
    let fed = svc.federation();
    let peer_key = |cc: CountryCode| fed.peers.get(&cc.value()).map(|p| p.public_key);
    let batch = match robert_proto::federation::open(body, peer_key) {
        Ok(batch) => batch,
        Err(OpenError::Malformed(e)) => {
            return Err(ReceiveError::Malformed { field: e.field(), reason: e.to_string() });
        }
        Err(OpenError::Batch(e)) => {
            return Err(ReceiveError::Malformed { field: "batch", reason: e.to_string() });
        }
        Err(OpenError::UnknownSender | OpenError::BadSignature) => {
            svc.metrics().federation_refused();
            return Err(ReceiveError::Rejected);
        }
    };
    if batch.to != fed.own {
        svc.metrics().federation_refused();
        return Err(ReceiveError::Rejected);
    }
    let now = svc.now();
    let window = fed.config.replay_window_sec;
    if batch.created.seconds().saturating_add(window) < now.seconds() {
        svc.metrics().federation_peer(batch.from.value()).batches_expired_in.inc();
        fed.audit("refused-expired", batch.from, batch.id, batch.seq, batch.records.len() as u64);
        return Err(ReceiveError::Expired);
    }
    if batch.created.seconds() > now.seconds().saturating_add(CLOCK_SKEW_SEC) {
        svc.metrics().federation_refused();
        return Err(ReceiveError::Rejected);
    }
    // Per-pair outcomes never roll back the batch: a record that does not parse is dropped alone;
    // the rest are checked by the mixer like local pairs (§6.2).
    let mut entries = Vec::with_capacity(batch.records.len());
    for r in &batch.records {
        if UploadRecord::decode(r).is_ok() {
            entries.push(PoolEntry { slot: rand::random(), record: r.clone() });
        } else {
            svc.metrics().pair_rejected();
        }
    }
    let accepted = entries.len() as u64;
    // The batch ID is remembered until the replay window has passed for it: a replay inside the
    // window is a duplicate, one after it is expired.
    let seen = TokenUse {
        jti: format!("fed:{}:{}", batch.from.value(), batch.id),
        expires_unix: batch.created.to_unix().saturating_add(u64::from(window) + u64::from(CLOCK_SKEW_SEC)),
    };
    let counters = svc.metrics().federation_peer(batch.from.value());
    let fresh = svc
        .storage()
        .submit_report(seen, entries)
        .await
        .map_err(|e| ReceiveError::Internal(e.to_string()))?;
    if fresh {
        counters.batches_received.inc();
        counters.pairs_received.add(accepted);
        fed.audit("received", batch.from, batch.id, batch.seq, accepted);
        svc.metrics().pairs_accepted(accepted);
        svc.mixer_wakeup().notify_one();
    } else {
        counters.batches_duplicate.inc();
        fed.audit("duplicate", batch.from, batch.id, batch.seq, accepted);
    }
    Ok(BatchAck { batch_id: batch.id.to_string(), accepted })
}

/// What one delivery attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Nothing to send for this peer.
    Idle,
    /// The peer acknowledged a batch of this many pairs; it is erased here.
    Delivered {
        /// Pairs in the batch.
        pairs: u64,
    },
    /// The peer refused the batch as older than its replay window; it is dropped.
    Expired,
    /// The peer did not acknowledge (down, error, refusal): the batch stays and is retried.
    Failed,
}

/// The JSON body length of a batch of `pairs` pairs of the longest upload record (HELLO ‖ Time ‖
/// RSSI): what `federation.max_batch_bytes` is compared with when sealing.
pub fn body_len_for_pairs(pairs: usize) -> usize {
    let record = robert_proto::upload::RECORD_WITH_RSSI_LEN;
    BatchBody::json_len_for(HEADER_LEN + pairs * (1 + record))
}

/// Most pairs whose batch body stays within `max_bytes` (at least 1: a single pair is always
/// sealed, and refused by config validation if it cannot fit).
pub fn pairs_within(max_bytes: usize) -> usize {
    // json_len_for is increasing in the pair count: the largest n with body_len(n) <= max_bytes.
    let (mut lo, mut hi) = (1usize, MAX_BATCH_PAIRS);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if body_len_for_pairs(mid) <= max_bytes { lo = mid } else { hi = mid - 1 }
    }
    lo
}

/// The ID of a part of a split batch: the parts of batch `root` form a binary tree (each part
/// split at half its length), and the part of `len` records from `start` always has this ID, so a
/// part re-sent after a failure or a restart is the same batch for the receiver (idempotence,
/// `docs/federation.md` § "Sending"). The whole batch keeps its own ID.
fn part_id(root: BatchId, start: usize, len: usize, total: usize) -> BatchId {
    use sha2::{Digest, Sha256};
    if start == 0 && len == total {
        return root;
    }
    let digest = Sha256::new()
        .chain_update(b"robert federation batch part\0")
        .chain_update(root.0)
        .chain_update((start as u64).to_be_bytes())
        .chain_update((len as u64).to_be_bytes())
        .finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    BatchId(id)
}

/// What the peer said to one part.
enum PartAnswer {
    Acknowledged(u64),
    TooLarge,
    Expired,
    /// Not acknowledged; `refused` when the peer answered (4xx, or no valid acknowledgement)
    /// rather than being unreachable or failing (5xx).
    Failed {
        refused: bool,
    },
}

/// One delivery attempt to `peer`: takes (or seals) its pending batch, sends it, and erases it once
/// acknowledged. Safe to run from several replicas at once (the storage hands them the same batch,
/// and the receiver deduplicates it).
///
/// A batch too large for the peer — its body above `federation.max_batch_bytes` (sealed under
/// another setting), or refused with `413` — is sent as two halves, recursively, each under a
/// [`part_id`] derived from the batch ID; the batch is erased once every part is acknowledged.
pub async fn deliver_once<S: Storage>(svc: &Service<S>, peer: CountryCode) -> Result<Delivery, ServiceError> {
    let fed = svc.federation();
    let (Some(target), Some(signing), Some(client)) =
        (fed.peers.get(&peer.value()), fed.signing.as_ref(), fed.client.as_ref())
    else {
        return Ok(Delivery::Idle);
    };
    let fresh_id = BatchId(rand::random());
    let now = svc.now();
    let max_pairs = fed.config.max_batch_pairs.min(pairs_within(fed.config.max_batch_bytes));
    let Some(pending) =
        svc.storage().federation_next_batch(peer, max_pairs, fresh_id.0, now.seconds()).await?
    else {
        return Ok(Delivery::Idle);
    };
    let OutboundBatch { id, seq, created, records, .. } = pending;
    let id = BatchId(id);
    let pairs = records.len() as u64;
    let counters = svc.metrics().federation_peer(peer.value());
    if id == fresh_id {
        fed.audit("sealed", peer, id, seq, pairs);
    }
    let retry = {
        let mut last =
            fed.last_attempt.lock().map_err(|_| ServiceError::Internal("federation lock".into()))?;
        last.insert(peer.value(), id) == Some(id)
    };
    if retry {
        counters.batches_retried.inc()
    } else {
        counters.batches_sent.inc()
    }
    // Parts still to send, in order: (start, len) into `records`. The whole batch first.
    let total = records.len();
    let mut parts = std::collections::VecDeque::from([(0usize, total)]);
    let mut accepted = 0u64;
    while let Some((start, len)) = parts.pop_front() {
        let part_records = records[start..start + len].to_vec();
        let part = Batch {
            from: fed.own,
            to: peer,
            id: part_id(id, start, len, total),
            seq,
            created: NtpTime::new(created),
            records: part_records,
        };
        let body = BatchBody::sign(&part, signing);
        let answer = if body.json_len() > fed.config.max_batch_bytes && len > 1 {
            PartAnswer::TooLarge // not worth a round trip: the configured cap says so
        } else {
            send_part(client, &target.endpoint, &body, part.id, peer).await
        };
        match answer {
            PartAnswer::Acknowledged(n) => accepted += n,
            PartAnswer::TooLarge if len > 1 => {
                counters.batches_split.inc();
                fed.audit("split", peer, part.id, seq, len as u64);
                let half = len / 2;
                parts.push_front((start + half, len - half));
                parts.push_front((start, half));
            }
            PartAnswer::TooLarge => {
                counters.batches_rejected.inc();
                tracing::error!(
                    peer = peer.value(),
                    "peer refuses a single pair as too large: its server.max_body_bytes is too small; will retry"
                );
                return Ok(Delivery::Failed);
            }
            PartAnswer::Expired => {
                svc.storage().federation_batch_done(peer, id.0).await?;
                counters.batches_expired.inc();
                fed.audit("dropped-expired", peer, id, seq, pairs);
                tracing::warn!(peer = peer.value(), batch = %id, "peer refused a batch as expired; dropped");
                return Ok(Delivery::Expired);
            }
            PartAnswer::Failed { refused } => {
                if refused {
                    counters.batches_rejected.inc();
                }
                return Ok(Delivery::Failed);
            }
        }
    }
    svc.storage().federation_batch_done(peer, id.0).await?;
    counters.batches_acknowledged.inc();
    counters.pairs_acknowledged.add(pairs);
    fed.audit("acknowledged", peer, id, seq, accepted);
    Ok(Delivery::Delivered { pairs })
}

/// POSTs one signed (part of a) batch and classifies the answer.
async fn send_part(
    client: &reqwest::Client,
    endpoint: &str,
    body: &BatchBody,
    id: BatchId,
    peer: CountryCode,
) -> PartAnswer {
    let resp = match client.post(endpoint).json(body).send().await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(peer = peer.value(), error = %without_url(&e), "federation delivery failed");
            return PartAnswer::Failed { refused: false };
        }
    };
    let status = resp.status();
    if status == reqwest::StatusCode::GONE {
        return PartAnswer::Expired;
    }
    if status == reqwest::StatusCode::PAYLOAD_TOO_LARGE {
        tracing::warn!(
            peer = peer.value(),
            body_bytes = body.json_len(),
            "peer refused a batch as too large; splitting"
        );
        return PartAnswer::TooLarge;
    }
    if status.is_client_error() {
        tracing::warn!(peer = peer.value(), status = status.as_u16(), "peer refused a batch; will retry");
        return PartAnswer::Failed { refused: true };
    }
    if !status.is_success() {
        tracing::warn!(peer = peer.value(), status = status.as_u16(), "peer failed; will retry");
        return PartAnswer::Failed { refused: false };
    }
    match resp.json::<BatchAck>().await {
        Ok(ack) if ack.batch_id == id.to_string() => PartAnswer::Acknowledged(ack.accepted),
        _ => {
            tracing::warn!(peer = peer.value(), "peer answered without acknowledging the batch; will retry");
            PartAnswer::Failed { refused: true }
        }
    }
}

/// A transport error's text without the URL (it is not secret, but keeps logs uniform).
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_decode() {
        "bad response"
    } else {
        "request failed"
    };
    kind.to_owned()
}

/// The delivery loop of one peer (an owned, stoppable job): sends batches in order; after a
/// failure waits `retry_initial_ms`, doubling up to `retry_max_ms` (with up to 10 % jitter so that
/// replicas spread out), and retries the same batch until it is acknowledged.
pub async fn delivery_loop<S: Storage>(
    svc: Arc<Service<S>>,
    peer: CountryCode,
    mut stop: watch::Receiver<bool>,
) {
    let cfg = svc.federation().config.clone();
    let initial = Duration::from_millis(cfg.retry_initial_ms);
    let max = Duration::from_millis(cfg.retry_max_ms);
    let mut backoff = initial;
    loop {
        if *stop.borrow() {
            return;
        }
        // Cancelled by shutdown at any point, a delivery leaves the batch pending (or, if the
        // acknowledgement was already recorded, done): the next start picks it up.
        let outcome = tokio::select! {
            outcome = deliver_once(&svc, peer) => outcome,
            _ = stop.changed() => return,
        };
        let wait = match outcome {
            Ok(Delivery::Delivered { .. } | Delivery::Expired) => {
                backoff = initial;
                continue;
            }
            Ok(Delivery::Idle) => {
                backoff = initial;
                None
            }
            Ok(Delivery::Failed) => Some(backoff),
            Err(e) => {
                tracing::error!(peer = peer.value(), error = %e, "federation delivery: storage failed");
                Some(backoff)
            }
        };
        match wait {
            Some(d) => {
                let jitter = d.mul_f64(rand::random::<f64>() * 0.1);
                backoff = (backoff * 2).min(max);
                tokio::select! {
                    _ = tokio::time::sleep(d + jitter) => {}
                    _ = stop.changed() => return,
                }
            }
            None => {
                tokio::select! {
                    _ = svc.federation().wakeup.notified() => {}
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_cap_gives_the_largest_batch_that_fits() {
        for max in [body_len_for_pairs(1), 1000, 4096, 65_536, 512 * 1024, 1 << 20] {
            let n = pairs_within(max);
            assert!(body_len_for_pairs(n) <= max, "{max}: {n} pairs do not fit");
            assert!(n == MAX_BATCH_PAIRS || body_len_for_pairs(n + 1) > max, "{max}: {n} is not the largest");
        }
        assert_eq!(pairs_within(0), 1);
        // A real body of n full-length records is exactly body_len_for_pairs(n).
        let batch = Batch {
            from: CountryCode::new(33),
            to: CountryCode::new(49),
            id: BatchId([1; 16]),
            seq: 1,
            created: NtpTime::new(1),
            records: vec![vec![7; robert_proto::upload::RECORD_WITH_RSSI_LEN]; 10],
        };
        let body =
            BatchBody { batch: robert_proto::api::b64_encode(&batch.encode()), signature: "A".repeat(88) };
        assert_eq!(body.json_len(), body_len_for_pairs(10));
    }

    #[test]
    fn part_ids_are_stable_and_distinct() {
        let root = BatchId([9; 16]);
        assert_eq!(part_id(root, 0, 10, 10), root, "the whole batch keeps its ID");
        assert_eq!(part_id(root, 0, 5, 10), part_id(root, 0, 5, 10), "a part's ID is a function of it");
        let ids = [part_id(root, 0, 5, 10), part_id(root, 5, 5, 10), part_id(root, 0, 2, 10)];
        assert!(ids.iter().all(|i| *i != root));
        assert!(ids[0] != ids[1] && ids[0] != ids[2] && ids[1] != ids[2]);
        assert_ne!(part_id(BatchId([8; 16]), 0, 5, 10), ids[0], "parts of another batch differ");
    }

    #[test]
    fn public_keys_parse_from_hex_only() {
        assert_eq!(parse_public_key(&"ab".repeat(32)), Some([0xab; 32]));
        assert_eq!(parse_public_key(&"ab".repeat(31)), None);
        assert_eq!(parse_public_key("not hex"), None);
    }
}
