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
use robert_proto::api::{b64_decode, b64_encode};
use robert_proto::{CountryCode, NtpTime, UploadRecord};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// Most pairs one batch may hold (the decoder refuses more).
pub const MAX_BATCH_PAIRS: usize = 20_000;
/// Magic and version at the start of every encoded batch (also the signature's domain separator).
pub const BATCH_MAGIC: [u8; 8] = *b"RBFED\x00\x00\x01";
/// Length of the fixed header: magic(8) ‖ from(1) ‖ to(1) ‖ id(16) ‖ seq(8) ‖ created(4) ‖ count(4).
pub const HEADER_LEN: usize = 8 + 1 + 1 + 16 + 8 + 4 + 4;
/// Longest upload record a batch may carry (HELLO ‖ Time ‖ RSSI is 21 bytes today).
pub const MAX_RECORD_LEN: usize = 64;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
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

/// A batch ID: 16 random bytes, drawn by the sender when it seals the batch.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchId(pub [u8; 16]);

impl std::fmt::Display for BatchId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for BatchId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BatchId({self})")
    }
}

/// A federation batch (`docs/federation.md` § "Message format"). Its `Debug` shows the header and
/// the number of pairs, never a pair.
#[derive(Clone, PartialEq, Eq)]
pub struct Batch {
    /// The sending server's country.
    pub from: CountryCode,
    /// The receiving server's country.
    pub to: CountryCode,
    /// The batch ID (idempotence key).
    pub id: BatchId,
    /// The sender's sequence number for this peer (1, 2, …; for the audit trail).
    pub seq: u64,
    /// When the sender sealed the batch (NTP seconds, its clock).
    pub created: NtpTime,
    /// The encoded upload records ([`UploadRecord::encode`]), in outbox order.
    pub records: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("from", &self.from.value())
            .field("to", &self.to.value())
            .field("id", &self.id)
            .field("seq", &self.seq)
            .field("created", &self.created.seconds())
            .field("pairs", &self.records.len())
            .finish()
    }
}

/// Why a batch does not decode. Names the part, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchDecodeError {
    /// Shorter than the header, or than its records.
    #[error("batch truncated")]
    Truncated,
    /// Not a version-1 batch.
    #[error("unknown batch magic or version")]
    Magic,
    /// More pairs than [`MAX_BATCH_PAIRS`].
    #[error("too many pairs in batch")]
    TooMany,
    /// A record of length 0 or above [`MAX_RECORD_LEN`].
    #[error("record length out of range")]
    RecordLength,
    /// Bytes after the last record.
    #[error("trailing bytes after the last record")]
    Trailing,
}

impl Batch {
    /// The bytes that are signed and sent. Records outside 1..=[`MAX_RECORD_LEN`] bytes are left
    /// out (none can come from the outbox, which holds encoded upload records), and so are any
    /// beyond [`MAX_BATCH_PAIRS`]: the output always decodes.
    pub fn encode(&self) -> Vec<u8> {
        let records: Vec<&Vec<u8>> = self
            .records
            .iter()
            .filter(|r| (1..=MAX_RECORD_LEN).contains(&r.len()))
            .take(MAX_BATCH_PAIRS)
            .collect();
        let body: usize = records.iter().map(|r| 1 + r.len()).sum();
        let mut out = Vec::with_capacity(HEADER_LEN + body);
        out.extend_from_slice(&BATCH_MAGIC);
        out.push(self.from.value());
        out.push(self.to.value());
        out.extend_from_slice(&self.id.0);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.created.to_be_bytes());
        out.extend_from_slice(&(records.len() as u32).to_be_bytes());
        for r in records {
            out.push(r.len() as u8); // at most MAX_RECORD_LEN (64)
            out.extend_from_slice(r);
        }
        out
    }

    /// Parses [`Batch::encode`]'s output; refuses anything else (no panic on any input).
    pub fn decode(bytes: &[u8]) -> Result<Self, BatchDecodeError> {
        let header = bytes.get(..HEADER_LEN).ok_or(BatchDecodeError::Truncated)?;
        if header[..8] != BATCH_MAGIC {
            return Err(BatchDecodeError::Magic);
        }
        let be = |r: std::ops::Range<usize>| header[r].iter().fold(0u64, |a, b| (a << 8) | u64::from(*b));
        let mut id = [0u8; 16];
        id.copy_from_slice(&header[10..26]);
        let count = be(38..42) as usize;
        if count > MAX_BATCH_PAIRS {
            return Err(BatchDecodeError::TooMany);
        }
        let mut records = Vec::with_capacity(count);
        let mut rest = &bytes[HEADER_LEN..];
        for _ in 0..count {
            let (&len, tail) = rest.split_first().ok_or(BatchDecodeError::Truncated)?;
            let len = usize::from(len);
            if len == 0 || len > MAX_RECORD_LEN {
                return Err(BatchDecodeError::RecordLength);
            }
            let record = tail.get(..len).ok_or(BatchDecodeError::Truncated)?;
            records.push(record.to_vec());
            rest = &tail[len..];
        }
        if !rest.is_empty() {
            return Err(BatchDecodeError::Trailing);
        }
        Ok(Self {
            from: CountryCode::new(header[8]),
            to: CountryCode::new(header[9]),
            id: BatchId(id),
            seq: be(26..34),
            created: NtpTime::new(be(34..38) as u32),
            records,
        })
    }
}

/// The JSON body of `POST /api/v1/federation/batch`: the encoded batch and its Ed25519 signature,
/// standard base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchBody {
    /// [`Batch::encode`], base64.
    pub batch: String,
    /// Ed25519 signature of those bytes by the sender, base64 (64 bytes).
    pub signature: String,
}

impl BatchBody {
    /// Signs `batch` with `key`.
    pub fn sign(batch: &Batch, key: &BatchSigningKey) -> Self {
        let bytes = batch.encode();
        let signature = key.sign(&bytes);
        Self { batch: b64_encode(&bytes), signature: b64_encode(&signature) }
    }
}

/// The receiver's answer (`200`), the same for a first delivery and any repetition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchAck {
    /// The batch ID, hex.
    pub batch_id: String,
    /// Pairs of the batch that joined the pool (records that do not parse are dropped alone).
    pub accepted: u64,
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
    let malformed = |field, reason: String| ReceiveError::Malformed { field, reason };
    let bytes = b64_decode("batch", &body.batch).map_err(|e| malformed("batch", e.to_string()))?;
    let signature =
        b64_decode("signature", &body.signature).map_err(|e| malformed("signature", e.to_string()))?;
    if signature.len() != SIGNATURE_LEN {
        return Err(malformed("signature", format!("expected {SIGNATURE_LEN} bytes")));
    }
    // The sender, from the header, selects the key; nothing else is read before the signature.
    if bytes.len() < HEADER_LEN || bytes[..8] != BATCH_MAGIC {
        return Err(malformed("batch", BatchDecodeError::Magic.to_string()));
    }
    let Some(peer) = fed.peers.get(&bytes[8]) else {
        svc.metrics().federation_refused();
        return Err(ReceiveError::Rejected);
    };
    let key = aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, peer.public_key);
    if key.verify(&bytes, &signature).is_err() {
        svc.metrics().federation_refused();
        return Err(ReceiveError::Rejected);
    }
    let batch = Batch::decode(&bytes).map_err(|e| malformed("batch", e.to_string()))?;
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
    use proptest::prelude::*;

    fn sample() -> Batch {
        Batch {
            from: CountryCode::new(33),
            to: CountryCode::new(49),
            id: BatchId([7; 16]),
            seq: 3,
            created: NtpTime::new(3_900_000_000),
            records: vec![vec![1; 20], vec![2; 21]],
        }
    }

    #[test]
    fn encode_layout_and_round_trip() {
        let b = sample();
        let bytes = b.encode();
        assert_eq!(&bytes[..8], b"RBFED\0\0\x01");
        assert_eq!(bytes[8], 33);
        assert_eq!(bytes[9], 49);
        assert_eq!(&bytes[26..34], &3u64.to_be_bytes());
        assert_eq!(&bytes[38..42], &2u32.to_be_bytes());
        assert_eq!(bytes.len(), HEADER_LEN + 21 + 22);
        assert_eq!(Batch::decode(&bytes), Ok(b));
    }

    #[test]
    fn decode_refuses_bad_input() {
        let bytes = sample().encode();
        assert_eq!(Batch::decode(&bytes[..HEADER_LEN - 1]), Err(BatchDecodeError::Truncated));
        assert_eq!(Batch::decode(&bytes[..bytes.len() - 1]), Err(BatchDecodeError::Truncated));
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(Batch::decode(&extra), Err(BatchDecodeError::Trailing));
        let mut magic = bytes.clone();
        magic[7] = 2;
        assert_eq!(Batch::decode(&magic), Err(BatchDecodeError::Magic));
        let mut zero = bytes.clone();
        zero[HEADER_LEN] = 0;
        assert_eq!(Batch::decode(&zero), Err(BatchDecodeError::RecordLength));
        let mut many = bytes;
        many[38..42].copy_from_slice(&(MAX_BATCH_PAIRS as u32 + 1).to_be_bytes());
        assert_eq!(Batch::decode(&many), Err(BatchDecodeError::TooMany));
    }

    #[test]
    fn encode_leaves_out_records_that_cannot_be_encoded() {
        let mut b = sample();
        b.records.insert(1, Vec::new());
        b.records.push(vec![9; MAX_RECORD_LEN + 1]);
        let decoded = Batch::decode(&b.encode()).expect("always decodes");
        assert_eq!(decoded, sample());
    }

    #[test]
    fn debug_shows_no_pair() {
        let text = format!("{:?}", sample());
        assert!(text.contains("pairs: 2"), "{text}");
        assert!(!text.contains("[1, 1"), "{text}");
    }

    #[test]
    fn public_keys_parse_from_hex_only() {
        assert_eq!(parse_public_key(&"ab".repeat(32)), Some([0xab; 32]));
        assert_eq!(parse_public_key(&"ab".repeat(31)), None);
        assert_eq!(parse_public_key("not hex"), None);
    }

    fn record() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 1..=MAX_RECORD_LEN)
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Batch::decode(&bytes);
        }

        #[test]
        fn decode_after_magic_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut bytes = BATCH_MAGIC.to_vec();
            bytes.extend_from_slice(&tail);
            if let Ok(b) = Batch::decode(&bytes) {
                prop_assert_eq!(b.encode(), bytes);
            }
        }

        #[test]
        fn round_trip(
            from: u8, to: u8, id: [u8; 16], seq: u64, created: u32,
            records in proptest::collection::vec(record(), 0..20),
        ) {
            let b = Batch {
                from: CountryCode::new(from), to: CountryCode::new(to), id: BatchId(id), seq,
                created: NtpTime::new(created), records,
            };
            prop_assert_eq!(Batch::decode(&b.encode()), Ok(b));
        }
    }
}
