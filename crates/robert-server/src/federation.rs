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

/// One delivery attempt to `peer`: takes (or seals) its pending batch, sends it, and erases it once
/// acknowledged. Safe to run from several replicas at once (the storage hands them the same batch,
/// and the receiver deduplicates it).
pub async fn deliver_once<S: Storage>(svc: &Service<S>, peer: CountryCode) -> Result<Delivery, ServiceError> {
    let fed = svc.federation();
    let (Some(target), Some(signing), Some(client)) =
        (fed.peers.get(&peer.value()), fed.signing.as_ref(), fed.client.as_ref())
    else {
        return Ok(Delivery::Idle);
    };
    let fresh_id = BatchId(rand::random());
    let now = svc.now();
    let Some(pending) = svc
        .storage()
        .federation_next_batch(peer, fed.config.max_batch_pairs, fresh_id.0, now.seconds())
        .await?
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
    let batch = Batch { from: fed.own, to: peer, id, seq, created: NtpTime::new(created), records };
    let body = BatchBody::sign(&batch, signing);
    let resp = match client.post(&target.endpoint).json(&body).send().await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(peer = peer.value(), error = %without_url(&e), "federation delivery failed");
            return Ok(Delivery::Failed);
        }
    };
    let status = resp.status();
    if status == reqwest::StatusCode::GONE {
        svc.storage().federation_batch_done(peer, id.0).await?;
        counters.batches_expired.inc();
        fed.audit("dropped-expired", peer, id, seq, pairs);
        tracing::warn!(peer = peer.value(), batch = %id, "peer refused a batch as expired; dropped");
        return Ok(Delivery::Expired);
    }
    if status.is_client_error() {
        counters.batches_rejected.inc();
        tracing::warn!(peer = peer.value(), status = status.as_u16(), "peer refused a batch; will retry");
        return Ok(Delivery::Failed);
    }
    if !status.is_success() {
        tracing::warn!(peer = peer.value(), status = status.as_u16(), "peer failed; will retry");
        return Ok(Delivery::Failed);
    }
    match resp.json::<BatchAck>().await {
        Ok(ack) if ack.batch_id == id.to_string() => {
            svc.storage().federation_batch_done(peer, id.0).await?;
            counters.batches_acknowledged.inc();
            counters.pairs_acknowledged.add(pairs);
            fed.audit("acknowledged", peer, id, seq, ack.accepted);
            Ok(Delivery::Delivered { pairs })
        }
        _ => {
            counters.batches_rejected.inc();
            tracing::warn!(peer = peer.value(), "peer answered without acknowledging the batch; will retry");
            Ok(Delivery::Failed)
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
    fn public_keys_parse_from_hex_only() {
        assert_eq!(parse_public_key(&"ab".repeat(32)), Some([0xab; 32]));
        assert_eq!(parse_public_key(&"ab".repeat(31)), None);
        assert_eq!(parse_public_key("not hex"), None);
    }
}
