//! The federation batch codec (§8, `docs/federation.md` § "Message format"): the bytes one
//! country's server signs and sends to another, the JSON body that carries them, and the
//! receiver's authentication of a body ([`open`]) up to a decoded [`Batch`].
//!
//! Pure: no I/O, no clock, no RNG. The server (`robert-server`'s `federation` module) owns the
//! delivery loops, the replay window and storage; the fuzz target `federation_batch`
//! (`crate::fuzz_targets`) runs [`open`] and [`Batch::decode`] on arbitrary input.

use crate::api::{b64_decode, b64_encode};
use crate::{CountryCode, DecodeError, NtpTime};
use aws_lc_rs::signature::{ED25519, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

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
/// Length of an Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;

/// A batch ID: 16 random bytes, drawn by the sender when it seals the batch.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchId(pub [u8; 16]);

impl std::fmt::Display for BatchId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
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
    /// The encoded upload records ([`crate::UploadRecord::encode`]), in outbox order.
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
    /// Length of [`Batch::encode`]'s output for records of these lengths (the ones it keeps).
    pub fn encoded_len(record_lens: impl IntoIterator<Item = usize>) -> usize {
        HEADER_LEN
            + record_lens
                .into_iter()
                .filter(|n| (1..=MAX_RECORD_LEN).contains(n))
                .take(MAX_BATCH_PAIRS)
                .map(|n| 1 + n)
                .sum::<usize>()
    }

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
        // Never trust `count` for an allocation beyond what the bytes can hold (2 bytes a record).
        let mut records = Vec::with_capacity(count.min((bytes.len() - HEADER_LEN) / 2));
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

/// Signs batch bytes for [`BatchBody::sign`]: the server's Ed25519 federation key (RFC 8032).
pub trait BatchSigner {
    /// The 64-byte Ed25519 signature of `message`.
    fn sign_batch(&self, message: &[u8]) -> [u8; SIGNATURE_LEN];
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
    /// Encodes `batch` and signs it with `key`.
    pub fn sign(batch: &Batch, key: &impl BatchSigner) -> Self {
        let bytes = batch.encode();
        let signature = key.sign_batch(&bytes);
        Self { batch: b64_encode(&bytes), signature: b64_encode(&signature) }
    }

    /// Length of this body as compact JSON (what a peer's body limit is compared with).
    pub fn json_len(&self) -> usize {
        // {"batch":"…","signature":"…"}: base64 has no character JSON escapes.
        r#"{"batch":"","signature":""}"#.len() + self.batch.len() + self.signature.len()
    }

    /// The JSON length of the body of a batch whose encoding is `batch_len` bytes.
    pub fn json_len_for(batch_len: usize) -> usize {
        r#"{"batch":"","signature":""}"#.len() + batch_len.div_ceil(3) * 4 + SIGNATURE_LEN.div_ceil(3) * 4
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

/// Why [`open`] refused a body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// `400`: a field does not parse (names the field, never its content).
    #[error("{0}")]
    Malformed(DecodeError),
    /// `400`: the signed bytes are not a batch.
    #[error("batch: {0}")]
    Batch(BatchDecodeError),
    /// `403`: the sender is not on the allow-list.
    #[error("unknown sender")]
    UnknownSender,
    /// `403`: the signature does not verify under the sender's key.
    #[error("bad signature")]
    BadSignature,
}

/// Authenticates a received body (`docs/federation.md` § "Receiving", steps 1–3 up to the
/// decoding): both fields are base64, the signature is 64 bytes, the bytes start like a batch,
/// the `from` byte names a peer that `peer_key` knows, the Ed25519 signature verifies under that
/// key over the whole batch — and only then is the batch decoded. The destination, the replay
/// window and storage are the caller's.
pub fn open(
    body: &BatchBody,
    peer_key: impl FnOnce(CountryCode) -> Option<[u8; PUBLIC_KEY_LEN]>,
) -> Result<Batch, OpenError> {
    let bytes = b64_decode("batch", &body.batch).map_err(OpenError::Malformed)?;
    let signature = b64_decode("signature", &body.signature).map_err(OpenError::Malformed)?;
    if signature.len() != SIGNATURE_LEN {
        return Err(OpenError::Malformed(DecodeError::Length {
            what: "signature",
            expected: SIGNATURE_LEN,
            got: signature.len(),
        }));
    }
    // The sender, from the header, selects the key; nothing else is read before the signature.
    if bytes.len() < HEADER_LEN || bytes[..8] != BATCH_MAGIC {
        return Err(OpenError::Batch(BatchDecodeError::Magic));
    }
    let key = peer_key(CountryCode::new(bytes[8])).ok_or(OpenError::UnknownSender)?;
    UnparsedPublicKey::new(&ED25519, key).verify(&bytes, &signature).map_err(|_| OpenError::BadSignature)?;
    Batch::decode(&bytes).map_err(OpenError::Batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
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

    struct Key(Ed25519KeyPair);
    impl BatchSigner for Key {
        fn sign_batch(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
            let mut out = [0u8; SIGNATURE_LEN];
            out.copy_from_slice(self.0.sign(message).as_ref());
            out
        }
    }

    fn key(seed: u8) -> Key {
        Key(Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).expect("32-byte seed"))
    }

    fn public(k: &Key) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(k.0.public_key().as_ref());
        out
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
        assert_eq!(Batch::encoded_len(b.records.iter().map(Vec::len)), bytes.len());
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
        assert_eq!(BatchId([0xab; 16]).to_string(), "ab".repeat(16));
    }

    #[test]
    fn json_length_is_exact() {
        let body = BatchBody::sign(&sample(), &key(1));
        let json = serde_json::to_vec(&body).expect("serialises");
        assert_eq!(body.json_len(), json.len());
        assert_eq!(BatchBody::json_len_for(sample().encode().len()), json.len());
    }

    #[test]
    fn open_checks_sender_then_signature_then_layout() {
        let (fr, other) = (key(1), key(2));
        let peers = |cc: CountryCode| (cc.value() == 33).then(|| public(&fr));
        let good = BatchBody::sign(&sample(), &fr);
        assert_eq!(open(&good, peers), Ok(sample()));
        assert_eq!(open(&BatchBody::sign(&sample(), &other), peers), Err(OpenError::BadSignature));
        let mut stranger = sample();
        stranger.from = CountryCode::new(34);
        assert_eq!(open(&BatchBody::sign(&stranger, &fr), peers), Err(OpenError::UnknownSender));
        let mut short = good.clone();
        short.signature = b64_encode(&[0; 63]);
        assert!(matches!(open(&short, peers), Err(OpenError::Malformed(e)) if e.field() == "signature"));
        let mut not_b64 = good.clone();
        not_b64.batch.push('*');
        assert!(matches!(open(&not_b64, peers), Err(OpenError::Malformed(e)) if e.field() == "batch"));
        let mut tiny = good;
        tiny.batch = b64_encode(b"RBFED\0\0\x01");
        assert_eq!(open(&tiny, peers), Err(OpenError::Batch(BatchDecodeError::Magic)));
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
