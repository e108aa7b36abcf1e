//! Bodies of the fuzz targets (DESIGN §6 "Bad input"), as plain functions over `&[u8]`.
//!
//! The cargo-fuzz binaries in `fuzz/fuzz_targets/` call them, and so does the stable integration
//! test `tests/fuzz_corpus.rs` (every seed of `fuzz/corpus/<target>/`, plus deterministic
//! pseudo-random and mutated inputs), so CI exercises exactly the code the fuzzer runs.
//!
//! Each function must never panic on any input, except through its own `assert!`s, which state
//! properties of the protocol core (round trips, "verifies iff the MAC is the recomputed one", "a
//! MAC verifies for at most one request code", AEAD integrity). A failing assertion is a bug in
//! `robert-proto`, not in the target.
//!
//! | target | function | decoder under test (as the server runs it) |
//! |---|---|---|
//! | `hello` | [`hello_parse_verify`] | HELLO, δ, MAC40; upload records |
//! | `request` | [`request_decode`] | authenticated requests, binary and JSON |
//! | `sealed_list` | [`sealed_list_open`] | the sealed EBID list |
//! | `federation_batch` | [`federation_batch_open`] | `POST /api/v1/federation/batch`: JSON, base64, Ed25519, batch codec |
//! | `token` | [`token_verify`] | health-authority tokens: compact JWS, header/claims JSON, ES256 |
//! | `register` | [`register_decode`] | `POST /api/v1/register` body; P-256 points; proof of work |
//! | `report` | [`report_decode`] | `POST /api/v1/report` body; the records the mixer forwards |

use crate::api::{
    AuthRequestBody, ContactBody, RegisterRequest, ReportRequest, ResetRequestBody, b64_decode, b64_encode,
};
use crate::federation::{self, Batch, BatchBody, BatchDecodeError, BatchId, BatchSigner, OpenError};
use crate::request::AUTH_REQUEST_LEN;
use crate::sealed::{self, ENTRY_LEN, IV_LEN, MAX_ENTRIES, SealError, TAG_LEN};
use crate::token::{self, MAX_TOKEN_LEN, Purpose, TokenError, TrustedAuthorities};
use crate::upload::{RECORD_LEN, RECORD_WITH_RSSI_LEN};
use crate::{
    AuthKey, AuthRequest, CountryCode, Ebid, EbidEntry, Ecc, Epoch, HELLO_LEN, Hello, KAuth, KEnc, NtpTime,
    PublicKey, RequestCode, UploadRecord, pow,
};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use std::sync::OnceLock;

/// The K_auth that [`hello_parse_verify`] uses when its input is shorter than 32 bytes, and that
/// [`request_decode`] verifies every request with. The seed corpora are built with it.
pub const FUZZ_K_AUTH: [u8; 32] = [0x11; 32];
/// The K_enc that [`sealed_list_open`] opens with. The seed corpora are built with it.
pub const FUZZ_K_ENC: [u8; 32] = [0x22; 32];
/// Another K_enc, which must never open what [`FUZZ_K_ENC`] sealed.
const OTHER_K_ENC: [u8; 32] = [0x23; 32];

fn fixed_auth_key() -> &'static AuthKey {
    static KEY: OnceLock<AuthKey> = OnceLock::new();
    KEY.get_or_init(|| AuthKey::new(&KAuth::new(FUZZ_K_AUTH)))
}

/// A cheap, deterministic digest of the input, to pick a bit to flip.
fn pick(data: &[u8]) -> usize {
    data.iter().fold(data.len(), |a, &b| a.wrapping_mul(31).wrapping_add(usize::from(b)))
}

// ---------------------------------------------------------------------------------------------
// HELLO and upload records
// ---------------------------------------------------------------------------------------------

/// HELLO parsing, δ check and MAC verification; upload-record decoding.
///
/// Input layout: `[K_auth(32)] ‖ HELLO(16) ‖ [reception time(4)] ‖ [δ(2)] ‖ …`. An input of at
/// least 32 bytes starts with the key; a shorter one is checked under [`FUZZ_K_AUTH`]. What follows
/// the key is also parsed whole as a HELLO (length errors) and decoded as an [`UploadRecord`], and
/// so is the whole input.
pub fn hello_parse_verify(data: &[u8]) {
    let (key, rest) = match data.split_first_chunk::<32>() {
        Some((k, rest)) => (AuthKey::new(&KAuth::new(*k)), rest),
        None => (fixed_auth_key().clone(), data),
    };

    // Parse: exactly 16 bytes, and then byte for byte the same on the way out.
    match Hello::parse(rest) {
        Ok(h) => {
            assert_eq!(rest.len(), HELLO_LEN);
            assert_eq!(h.to_bytes()[..], rest[..], "HELLO parse/serialise round trip");
        }
        Err(e) => {
            assert_ne!(rest.len(), HELLO_LEN, "a 16-byte HELLO was refused");
            assert_eq!(e.field(), "hello");
        }
    }

    if let Some((hello_bytes, tail)) = rest.split_first_chunk::<HELLO_LEN>() {
        check_hello(&key, hello_bytes, tail);
    }

    check_upload_record(rest);
    if rest.len() != data.len() {
        check_upload_record(data);
    }
}

fn check_hello(key: &AuthKey, bytes: &[u8; HELLO_LEN], tail: &[u8]) {
    let hello = match Hello::parse(bytes) {
        Ok(h) => h,
        Err(e) => panic!("16 bytes did not parse as a HELLO: {e}"),
    };
    assert_eq!(hello, Hello::from_bytes(*bytes));
    assert_eq!(hello.to_bytes(), *bytes, "HELLO parse/serialise round trip");
    assert_eq!(hello.ecc().value(), bytes[0]);
    assert_eq!(hello.ebid().as_bytes()[..], bytes[1..9]);
    assert_eq!(hello.time().value(), u16::from_be_bytes([bytes[9], bytes[10]]));
    assert_eq!(hello.mac()[..], bytes[11..16]);

    // δ check (§5.2 step 3, §6.2 step 2): |t16 - TRUNC16(received_at)| < δ, modulo 2^16.
    let received_at = match tail.first_chunk::<4>() {
        Some(t) => NtpTime::from_be_bytes(*t),
        None => NtpTime::new(u32::from(hello.time().value())),
    };
    let delta = match tail.get(4..6) {
        Some(&[a, b]) => u16::from_be_bytes([a, b]),
        _ => 5,
    };
    let d = hello.time().value().wrapping_sub(received_at.t16().value());
    let distance = d.min(d.wrapping_neg());
    let in_delta = hello.check_delta(received_at, delta).is_ok();
    assert_eq!(in_delta, distance < delta, "check_delta disagrees with |t16 - TRUNC16(time)| < δ mod 2^16");
    assert!(delta > 0 || !in_delta, "δ = 0 accepted a HELLO");
    assert!(
        hello.check_delta(NtpTime::new(u32::from(hello.time().value())), 1).is_ok(),
        "a HELLO received at the second it was sent failed δ = 1"
    );

    // MAC (§6.2 step 8): verifies iff it is the recomputed MAC40.
    let expected = key.hello_mac(hello.ecc(), &hello.ebid(), hello.time());
    let verified = hello.verify(key);
    assert_eq!(verified.is_ok(), expected == hello.mac(), "verify disagrees with hello_mac");
    if let Ok(v) = &verified {
        assert_eq!(*v.hello(), hello);
    }

    // Building a HELLO from the same fields, sent at a time with the same low 16 bits, gives a
    // HELLO that verifies; it is this one exactly iff this one verified.
    let sent_at = NtpTime::new((received_at.seconds() & 0xffff_0000) | u32::from(hello.time().value()));
    let rebuilt = Hello::build(key, hello.ecc(), hello.ebid(), sent_at);
    assert_eq!(rebuilt.time(), hello.time());
    assert!(rebuilt.verify(key).is_ok(), "a freshly built HELLO does not verify");
    assert_eq!(rebuilt == hello, verified.is_ok());

    // One flipped bit anywhere in a HELLO that verified must make it fail (up to a 2^-40 chance).
    if verified.is_ok() {
        let bit = pick(bytes) % (HELLO_LEN * 8);
        let mut flipped = *bytes;
        flipped[bit / 8] ^= 1 << (bit % 8);
        assert!(Hello::from_bytes(flipped).verify(key).is_err(), "HELLO with bit {bit} flipped verified");
    }
}

fn check_upload_record(bytes: &[u8]) {
    match UploadRecord::decode(bytes) {
        Ok(r) => {
            assert!(bytes.len() == RECORD_LEN || bytes.len() == RECORD_WITH_RSSI_LEN);
            assert_eq!(r.encode(), bytes, "upload record decode/encode round trip");
            assert_eq!(r.hello.to_bytes()[..], bytes[..HELLO_LEN]);
            assert_eq!(r.rssi.is_some(), bytes.len() == RECORD_WITH_RSSI_LEN);
            // The JSON contact carries the same record.
            let contact = ContactBody::from_record(&r);
            assert_eq!(contact.to_record(), Ok(r), "ContactBody round trip");
        }
        Err(e) => {
            assert!(
                bytes.len() != RECORD_LEN && bytes.len() != RECORD_WITH_RSSI_LEN,
                "a record of valid length was refused"
            );
            assert_eq!(e.field(), "record");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Authenticated requests and API bodies
// ---------------------------------------------------------------------------------------------

/// Authenticated requests (§7, Annex C): the 47-byte binary form, and the JSON bodies of the HTTP
/// API (`AuthRequestBody`, `ResetRequestBody`, `ReportRequest`). Every request that decodes is
/// checked under [`FUZZ_K_AUTH`] for every [`RequestCode`]: at most one code verifies.
pub fn request_decode(data: &[u8]) {
    let key = fixed_auth_key();

    match AuthRequest::decode(data) {
        Ok(r) => {
            assert_eq!(data.len(), AUTH_REQUEST_LEN);
            assert_eq!(r.encode()[..], data[..], "request decode/encode round trip");
            check_request(key, &r);
        }
        Err(e) => {
            assert_ne!(data.len(), AUTH_REQUEST_LEN, "a 47-byte request was refused");
            assert_eq!(e.field(), "request");
        }
    }
    // Longer inputs: their first 47 bytes, so that the MAC checks see every mutation.
    if data.len() > AUTH_REQUEST_LEN
        && let Some(prefix) = data.first_chunk::<AUTH_REQUEST_LEN>()
    {
        match AuthRequest::decode(prefix) {
            Ok(r) => {
                assert_eq!(r.encode(), *prefix, "request decode/encode round trip");
                check_request(key, &r);
            }
            Err(e) => panic!("47 bytes did not decode as a request: {e}"),
        }
    }

    if let Ok(body) = serde_json::from_slice::<AuthRequestBody>(data) {
        check_request_body(key, &body);
    }
    if let Ok(body) = serde_json::from_slice::<ResetRequestBody>(data) {
        check_request_body(key, &body.request);
        assert_eq!(json_round_trip(&body), body, "ResetRequestBody JSON round trip");
    }
    if let Ok(report) = serde_json::from_slice::<ReportRequest>(data) {
        for contact in &report.contacts {
            check_contact(contact);
        }
        assert_eq!(json_round_trip(&report), report, "ReportRequest JSON round trip");
    }
}

fn json_round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(value: &T) -> T {
    let json = match serde_json::to_vec(value) {
        Ok(j) => j,
        Err(e) => panic!("an API body did not serialise: {e}"),
    };
    match serde_json::from_slice(&json) {
        Ok(v) => v,
        Err(e) => panic!("an API body did not parse back: {e}"),
    }
}

fn check_request(key: &AuthKey, r: &AuthRequest) {
    let mut verifying = 0;
    for code in RequestCode::ALL {
        let ok = r.verify_mac(key, code).is_ok();
        let expected = key.request_mac(code, &r.ebid, r.epoch, r.time);
        // The HELLO code is not a request code: it never verifies.
        assert_eq!(
            ok,
            code.is_request() && expected == r.mac,
            "verify_mac disagrees with request_mac for {code:?}"
        );
        verifying += usize::from(ok);
    }
    assert!(verifying <= 1, "one request MAC verified for {verifying} request codes");

    // A request built with this key verifies for its own code only.
    let code = RequestCode::ALL[pick(&r.encode()) % RequestCode::ALL.len()];
    let built = AuthRequest::new(key, code, r.ebid, r.epoch, r.time);
    for other in RequestCode::ALL {
        let want = other == code && code.is_request();
        assert_eq!(built.verify_mac(key, other).is_ok(), want, "{code:?} MAC vs {other:?}");
    }

    // The wire fields and the JSON body carry the same request.
    let from_parts = AuthRequest::from_parts(r.ebid.as_bytes(), r.epoch.number(), r.time.seconds(), &r.mac);
    assert_eq!(from_parts.as_ref(), Ok(r), "from_parts round trip");
    let body = AuthRequestBody::from_request(r);
    assert_eq!(body.to_request().as_ref(), Ok(r), "AuthRequestBody round trip");
    assert_eq!(json_round_trip(&body), body, "AuthRequestBody JSON round trip");
    assert!(r.check_time(r.time, 0).is_ok());
}

fn check_request_body(key: &AuthKey, body: &AuthRequestBody) {
    match body.to_request() {
        Ok(r) => {
            // Standard base64 with canonical padding and no trailing bits: one request, one body.
            assert_eq!(AuthRequestBody::from_request(&r), *body, "non-canonical AuthRequestBody accepted");
            check_request(key, &r);
        }
        Err(e) => assert!(matches!(e.field(), "ebid" | "epoch" | "mac"), "error names {:?}", e.field()),
    }
}

fn check_contact(contact: &ContactBody) {
    match contact.to_record() {
        Ok(r) => {
            assert_eq!(ContactBody::from_record(&r), *contact, "non-canonical ContactBody accepted");
            assert_eq!(UploadRecord::decode(&r.encode()), Ok(r), "upload record encode/decode round trip");
        }
        Err(e) => assert!(matches!(e.field(), "hello" | "rssi"), "error names {:?}", e.field()),
    }
}

// ---------------------------------------------------------------------------------------------
// Sealed EBID lists
// ---------------------------------------------------------------------------------------------

/// The sealed EBID list (§4): `sealed::open` of the raw input under [`FUZZ_K_ENC`] (which must
/// classify every input without panicking), then a structured part: the input read as
/// `IV(12) ‖ entries(12 each) ‖ …` is sealed with `seal_with_iv` and must open back to the same
/// entries (or to `SealError::Entries` when they are not in strictly increasing epoch order), and
/// not at all under another key or with one bit flipped.
pub fn sealed_list_open(data: &[u8]) {
    let key = KEnc::new(FUZZ_K_ENC);
    check_open(&key, data);

    let (iv, body) = match data.split_first_chunk::<IV_LEN>() {
        Some((iv, body)) => (*iv, body),
        None => {
            let mut iv = [0u8; IV_LEN];
            iv[..data.len()].copy_from_slice(data);
            (iv, &[][..])
        }
    };
    let raw: Vec<EbidEntry> = body
        .chunks_exact(ENTRY_LEN)
        .map(|c| EbidEntry {
            epoch: Epoch::from_be_bytes([c[0], c[1], c[2]]),
            ebid: Ebid::new([c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10]]),
            ecc: Ecc::new(c[11]),
        })
        .collect();

    // As given: opens iff strictly increasing.
    let increasing = raw.windows(2).all(|w| w[0].epoch < w[1].epoch);
    let sealed_raw = sealed::seal_with_iv(&key, &raw, iv);
    assert_eq!(sealed_raw.len(), IV_LEN + raw.len() * ENTRY_LEN + TAG_LEN);
    assert_eq!(sealed_raw[..IV_LEN], iv);
    match sealed::open(&key, &sealed_raw) {
        Ok(entries) => {
            assert!(increasing, "a list out of epoch order opened");
            assert_eq!(entries, raw, "seal/open round trip");
        }
        Err(SealError::Entries) => {
            assert!(!increasing, "an ordered list was refused as out of order")
        }
        Err(e) => panic!("a list sealed under the right key did not open: {e}"),
    }

    // Sorted and deduplicated: must round-trip.
    let mut ordered = raw;
    ordered.sort_by_key(|e| e.epoch);
    ordered.dedup_by_key(|e| e.epoch);
    let sealed = sealed::seal_with_iv(&key, &ordered, iv);
    assert_eq!(sealed::open(&key, &sealed).as_ref(), Ok(&ordered), "seal/open round trip");
    check_open(&key, &sealed);

    // Another key, one flipped bit, one byte less: refused.
    assert_eq!(
        sealed::open(&KEnc::new(OTHER_K_ENC), &sealed),
        Err(SealError::Rejected(crate::Rejected)),
        "a list opened under another key"
    );
    let bit = pick(data) % (sealed.len() * 8);
    let mut flipped = sealed.clone();
    flipped[bit / 8] ^= 1 << (bit % 8);
    assert_eq!(
        sealed::open(&key, &flipped),
        Err(SealError::Rejected(crate::Rejected)),
        "a list with bit {bit} flipped opened"
    );
    assert!(
        matches!(sealed::open(&key, &sealed[..sealed.len() - 1]), Err(SealError::Decode(_))),
        "a list one byte short was not a decode error"
    );
}

fn check_open(key: &KEnc, bytes: &[u8]) {
    let min = IV_LEN + TAG_LEN;
    let well_sized = bytes.len() >= min
        && (bytes.len() - min).is_multiple_of(ENTRY_LEN)
        && (bytes.len() - min) / ENTRY_LEN <= MAX_ENTRIES;
    match sealed::open(key, bytes) {
        Ok(entries) => {
            assert!(well_sized, "a list of impossible length opened");
            assert_eq!(entries.len(), (bytes.len() - min) / ENTRY_LEN);
            assert!(entries.windows(2).all(|w| w[0].epoch < w[1].epoch), "opened list out of order");
            // AES-GCM is deterministic given key and IV: resealing gives back the same bytes.
            let mut iv = [0u8; IV_LEN];
            iv.copy_from_slice(&bytes[..IV_LEN]);
            assert_eq!(sealed::seal_with_iv(key, &entries, iv), bytes, "open/seal round trip");
        }
        Err(SealError::Decode(e)) => {
            assert!(!well_sized, "a well-sized list was a decode error");
            assert_eq!(e.field(), "ebids");
        }
        Err(SealError::Rejected(_) | SealError::Entries) => {
            assert!(well_sized, "a list of impossible length got past the length check");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Federation batches
// ---------------------------------------------------------------------------------------------

/// The Ed25519 seed of the sending peer's key that [`federation_batch_open`] trusts.
pub const FUZZ_FED_SEED: [u8; 32] = [0x33; 32];
/// The country of that peer (France).
pub const FUZZ_FED_FROM: u8 = 33;
/// Another Ed25519 seed, whose signatures must never open.
const OTHER_FED_SEED: [u8; 32] = [0x34; 32];

/// An Ed25519 key from a fixed seed: signatures are deterministic (RFC 8032), so signed seeds
/// are reproducible byte for byte.
pub struct FuzzFederationKey(Ed25519KeyPair);

impl FuzzFederationKey {
    /// The key of `seed`.
    pub fn new(seed: &[u8; 32]) -> Self {
        Self(Ed25519KeyPair::from_seed_unchecked(seed).expect("any 32 bytes are an Ed25519 seed"))
    }

    /// The public key.
    pub fn public(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.public_key().as_ref());
        out
    }
}

impl BatchSigner for FuzzFederationKey {
    fn sign_batch(&self, message: &[u8]) -> [u8; federation::SIGNATURE_LEN] {
        let mut out = [0u8; federation::SIGNATURE_LEN];
        out.copy_from_slice(self.0.sign(message).as_ref());
        out
    }
}

fn fed_keys() -> &'static (FuzzFederationKey, FuzzFederationKey) {
    static KEYS: OnceLock<(FuzzFederationKey, FuzzFederationKey)> = OnceLock::new();
    KEYS.get_or_init(|| (FuzzFederationKey::new(&FUZZ_FED_SEED), FuzzFederationKey::new(&OTHER_FED_SEED)))
}

/// Federation batches (§8): the receiver's whole path up to storage. The input is read three ways:
/// - as a JSON [`BatchBody`], authenticated by [`federation::open`] with [`FUZZ_FED_FROM`] trusted
///   under [`FUZZ_FED_SEED`]'s key (so mutated signed seeds reach the decoder); an opened batch
///   must re-encode to exactly the signed bytes, and nothing opens with an empty allow-list;
/// - as raw batch bytes for [`Batch::decode`], which accepts exactly [`Batch::encode`]'s output;
/// - when those bytes decode, signed by the trusted key: the body must open to the same batch,
///   and fail under another key, with one bit of the batch flipped, or from an unknown sender.
pub fn federation_batch_open(data: &[u8]) {
    let (trusted, other) = fed_keys();
    let peers = |cc: CountryCode| (cc.value() == FUZZ_FED_FROM).then(|| trusted.public());

    if let Ok(body) = serde_json::from_slice::<BatchBody>(data) {
        match federation::open(&body, peers) {
            Ok(batch) => {
                assert_eq!(batch.from.value(), FUZZ_FED_FROM, "a batch from an unknown sender opened");
                let signed = b64_decode("batch", &body.batch).expect("opened, so base64");
                assert_eq!(batch.encode(), signed, "opened batch does not re-encode to the signed bytes");
                check_batch_records(&batch);
            }
            Err(OpenError::Malformed(e)) => {
                assert!(matches!(e.field(), "batch" | "signature"), "error names {:?}", e.field())
            }
            Err(OpenError::Batch(_) | OpenError::UnknownSender | OpenError::BadSignature) => {}
        }
        assert!(federation::open(&body, |_| None).is_err(), "a batch opened with an empty allow-list");
        assert_eq!(json_round_trip(&body), body, "BatchBody JSON round trip");
    }

    let decoded = Batch::decode(data);
    match &decoded {
        Ok(batch) => {
            assert_eq!(batch.encode(), data, "batch decode/encode round trip");
            assert_eq!(Batch::encoded_len(batch.records.iter().map(Vec::len)), data.len());
            assert!(batch.records.len() <= federation::MAX_BATCH_PAIRS);
            check_batch_records(batch);
        }
        Err(BatchDecodeError::Truncated) => {
            assert!(data.len() < federation::HEADER_LEN || data[..8] == federation::BATCH_MAGIC)
        }
        Err(BatchDecodeError::Magic) => assert_ne!(data[..8], federation::BATCH_MAGIC),
        Err(_) => assert!(data.len() >= federation::HEADER_LEN),
    }

    // Structured: the input's batch, or one built from its bytes, signed by the trusted peer.
    let batch = match decoded {
        Ok(mut b) => {
            b.from = CountryCode::new(FUZZ_FED_FROM);
            b
        }
        Err(_) => batch_from_bytes(data),
    };
    let body = BatchBody::sign(&batch, trusted);
    assert_eq!(body.json_len(), serde_json::to_vec(&body).map_or(0, |j| j.len()), "BatchBody::json_len");
    let opened = federation::open(&body, peers);
    assert_eq!(opened.as_ref(), Ok(&Batch::decode(&batch.encode()).expect("encode always decodes")));
    assert_eq!(federation::open(&BatchBody::sign(&batch, other), peers), Err(OpenError::BadSignature));
    let mut bytes = batch.encode();
    let bit = pick(data) % (bytes.len() * 8);
    bytes[bit / 8] ^= 1 << (bit % 8);
    let flipped = BatchBody { batch: b64_encode(&bytes), signature: body.signature.clone() };
    assert!(federation::open(&flipped, peers).is_err(), "a batch with bit {bit} flipped opened");
    let mut stranger = batch;
    stranger.from = CountryCode::new(FUZZ_FED_FROM.wrapping_add(1));
    assert_eq!(federation::open(&BatchBody::sign(&stranger, trusted), peers), Err(OpenError::UnknownSender));
}

/// A batch built from arbitrary bytes: header fields from the first 29 bytes, then records of
/// lengths taken from the input (so that empty and over-long ones are exercised too).
fn batch_from_bytes(data: &[u8]) -> Batch {
    let byte = |i: usize| data.get(i).copied().unwrap_or(0);
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = byte(2 + i);
    }
    let seq = (0..8).fold(0u64, |a, i| (a << 8) | u64::from(byte(18 + i)));
    let created = NtpTime::new((0..4).fold(0u32, |a, i| (a << 8) | u32::from(byte(26 + i))));
    let mut records = Vec::new();
    let mut rest = data.get(30..).unwrap_or(&[]);
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len) % (federation::MAX_RECORD_LEN + 2);
        let take = len.min(tail.len());
        records.push(tail[..take].to_vec());
        rest = &tail[take..];
    }
    Batch {
        from: CountryCode::new(FUZZ_FED_FROM),
        to: CountryCode::new(byte(1)),
        id: BatchId(id),
        seq,
        created,
        records,
    }
}

/// What the receiver does with each record of a batch: those that decode as upload records join
/// the pool, the others are dropped alone.
fn check_batch_records(batch: &Batch) {
    for r in &batch.records {
        assert!((1..=federation::MAX_RECORD_LEN).contains(&r.len()));
        check_upload_record(r);
    }
}

// ---------------------------------------------------------------------------------------------
// Health-authority tokens
// ---------------------------------------------------------------------------------------------

/// The P-256 private scalar of the authority that [`token_verify`] trusts (the seeds are signed
/// with it).
pub const FUZZ_AUTHORITY_SCALAR: [u8; 32] = [0x44; 32];
/// The time (Unix seconds) at which [`token_verify`] checks tokens.
pub const FUZZ_NOW_UNIX: u64 = 1_800_000_000;

/// The ECDSA key pair of [`FUZZ_AUTHORITY_SCALAR`] (for signing seeds in tests).
pub fn fuzz_authority_key_pair() -> aws_lc_rs::signature::EcdsaKeyPair {
    use aws_lc_rs::agreement;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    let ecdh = agreement::PrivateKey::from_private_key(&agreement::ECDH_P256, &FUZZ_AUTHORITY_SCALAR)
        .expect("0x44.. is a valid P-256 scalar");
    let public = ecdh.compute_public_key().expect("aws-lc computes a public point");
    EcdsaKeyPair::from_private_key_and_public_key(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        &FUZZ_AUTHORITY_SCALAR,
        public.as_ref(),
    )
    .expect("a scalar and its own point form a key pair")
}

fn fuzz_authorities() -> &'static (TrustedAuthorities, String) {
    static TRUSTED: OnceLock<(TrustedAuthorities, String)> = OnceLock::new();
    TRUSTED.get_or_init(|| {
        use aws_lc_rs::encoding::AsDer;
        let pair = fuzz_authority_key_pair();
        let spki = pair.public_key().as_der().expect("aws-lc encodes a public key");
        let pem = token::pem_encode(token::PUBLIC_KEY_LABEL, spki.as_ref());
        let mut trusted = TrustedAuthorities::new();
        let kid = trusted.add_public_key_pem(&pem).expect("the fuzz authority's own key");
        (trusted, kid)
    })
}

/// The `kid` of the fuzz authority (for building seeds).
pub fn fuzz_authority_kid() -> String {
    fuzz_authorities().1.clone()
}

/// Health-authority tokens (DESIGN §4, footnote 11): [`TrustedAuthorities::verify`] — the
/// server's path for `POST /api/v1/report` and `/status/reset` — on the input as a token string
/// (lossy UTF-8), for both purposes, at [`FUZZ_NOW_UNIX`], with one trusted authority
/// ([`FUZZ_AUTHORITY_SCALAR`]). A token verifies for at most one purpose, only if it is a
/// three-segment compact JWS within the size limit, only with a trusted key, and never once a
/// character of its signature is changed. Tokens with valid signatures come from the seeds
/// (signing needs aws-lc's RNG, which this crate does not use).
pub fn token_verify(data: &[u8]) {
    let (trusted, _) = fuzz_authorities();
    let text = String::from_utf8_lossy(data);
    let token = text.as_ref();
    let declare = trusted.verify(token, Purpose::Declare, FUZZ_NOW_UNIX);
    let reset = trusted.verify(token, Purpose::Reset, FUZZ_NOW_UNIX);
    assert!(declare.is_err() || reset.is_err(), "a token verified for both purposes");
    assert!(TrustedAuthorities::new().verify(token, Purpose::Declare, FUZZ_NOW_UNIX).is_err());
    if token.len() > MAX_TOKEN_LEN {
        assert_eq!(declare, Err(TokenError::TooLong));
    }
    for (purpose, outcome) in [(Purpose::Declare, &declare), (Purpose::Reset, &reset)] {
        match outcome {
            Ok(v) => {
                assert_eq!(v.purpose, purpose);
                assert!(v.exp > FUZZ_NOW_UNIX, "an expired token verified");
                assert!(!v.jti.is_empty() && v.jti.len() <= token::MAX_JTI_LEN);
                assert!(v.jti.bytes().all(|b| b.is_ascii_graphic()));
                assert_eq!(token.split('.').count(), 3);
                // Later, the same token has expired; another key never verifies it.
                assert_eq!(trusted.verify(token, purpose, v.exp), Err(TokenError::Expired));
                // A changed signature character never verifies.
                let sig_start = token.rfind('.').map_or(0, |i| i + 1);
                if sig_start < token.len() {
                    let i = sig_start + pick(data) % (token.len() - sig_start);
                    let mut changed = token.as_bytes().to_vec();
                    changed[i] = if changed[i] == b'A' { b'B' } else { b'A' };
                    let changed = String::from_utf8(changed).expect("ASCII replaced by ASCII");
                    assert!(trusted.verify(&changed, purpose, FUZZ_NOW_UNIX).is_err(), "signature changed");
                }
            }
            Err(e) => {
                // Display is a fixed string per variant, whatever the token: never the token
                // or a claim. (An earlier form asserted "the text does not contain the token",
                // which the fuzzer refuted with a token that quotes an error text: regression
                // seed `corpus/token/regression_token_quotes_error_text`.)
                assert_eq!(e.to_string(), fixed_text(*e), "a token error's text depends on the token");
            }
        }
    }
    // The server strips "Bearer " from the Authorization header before verifying.
    if let Some(bearer) = token.strip_prefix("Bearer ") {
        let _ = trusted.verify(bearer, Purpose::Declare, FUZZ_NOW_UNIX);
    }
}

/// The text of each [`TokenError`], spelled out here independently of the `thiserror`
/// attributes, so that any text that would vary with the input fails the target.
fn fixed_text(e: TokenError) -> String {
    match e {
        TokenError::TooLong => "token exceeds the size limit".into(),
        TokenError::Malformed(why) => format!("malformed token: {why}"),
        TokenError::UnsupportedAlgorithm => "unsupported token algorithm".into(),
        TokenError::UnknownKey => "token signed by an unknown key".into(),
        TokenError::BadSignature => "bad token signature".into(),
        TokenError::WrongPurpose => "token issued for another purpose".into(),
        TokenError::Expired => "token expired".into(),
        TokenError::NotYetValid => "token not yet valid".into(),
        TokenError::BadLifetime => "token lifetime out of bounds".into(),
        TokenError::BadKeyFile(why) => format!("bad key file: {why}"),
        TokenError::Internal => "internal cryptographic failure".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Registration bodies
// ---------------------------------------------------------------------------------------------

/// The server's challenge length (nonce 16 ‖ expiry 4 ‖ difficulty 1 ‖ MAC 16).
pub const FUZZ_CHALLENGE_LEN: usize = 37;

/// `POST /api/v1/register` (§3.3): the JSON body decoded as the server does
/// ([`RegisterRequest::decode`]); the input as a raw P-256 point ([`PublicKey::parse`]); the
/// proof of work over the input. A decoded body is canonical base64 (one body per registration),
/// its errors name a field, and a point parses only if it is 65 bytes starting with `04`.
pub fn register_decode(data: &[u8]) {
    if let Ok(req) = serde_json::from_slice::<RegisterRequest>(data) {
        match req.decode(FUZZ_CHALLENGE_LEN) {
            Ok(r) => {
                assert_eq!(r.challenge.len(), FUZZ_CHALLENGE_LEN);
                assert_eq!(b64_encode(&r.challenge), req.challenge, "non-canonical challenge accepted");
                assert_eq!(b64_encode(&r.solution), req.solution, "non-canonical solution accepted");
                assert_eq!(
                    b64_encode(r.client_public_key.as_bytes()),
                    req.client_public_key,
                    "non-canonical key accepted"
                );
                assert!(pow::verify(&r.challenge, &r.solution, 0), "difficulty 0 refused a solution");
                let _ = pow::verify(&r.challenge, &r.solution, r.challenge[20]);
            }
            Err(e) => assert!(
                matches!(e.field(), "challenge" | "solution" | "clientPublicKey"),
                "error names {:?}",
                e.field()
            ),
        }
        assert_eq!(json_round_trip(&req), req, "RegisterRequest JSON round trip");
    }

    match PublicKey::parse("clientPublicKey", data) {
        Ok(k) => {
            assert_eq!(k.as_bytes()[..], data[..], "point parse round trip");
            assert_eq!(data[0], 0x04);
        }
        Err(e) => assert_eq!(e.field(), "clientPublicKey"),
    }

    // Proof of work: solve at a small difficulty, then the solution verifies.
    let difficulty = data.first().map_or(0, |d| d % 6);
    let start = data.iter().take(8).fold(0u64, |a, &b| (a << 8) | u64::from(b));
    let solution = pow::solve(data, difficulty, start).expect("a solution exists at difficulty < 6");
    assert!(pow::verify(data, &solution, difficulty), "a solution found by solve does not verify");
}

// ---------------------------------------------------------------------------------------------
// Report bodies
// ---------------------------------------------------------------------------------------------

/// `POST /api/v1/report` (§6.1): the JSON body decoded as the server does (each contact's
/// `to_record`, then `encode` into the pool), and what the mixer forwards of it (§8: the pool
/// records in a federation batch). Errors name `hello` or `rssi`; every decoded contact is
/// canonical and its record survives the pool and a batch byte for byte.
pub fn report_decode(data: &[u8]) {
    if let Ok(report) = serde_json::from_slice::<ReportRequest>(data) {
        let mut pooled = Vec::with_capacity(report.contacts.len());
        for contact in &report.contacts {
            check_contact(contact);
            if let Ok(r) = contact.to_record() {
                pooled.push(r.encode());
            }
        }
        assert_eq!(json_round_trip(&report), report, "ReportRequest JSON round trip");
        let batch = Batch {
            from: CountryCode::new(FUZZ_FED_FROM),
            to: CountryCode::new(49),
            id: BatchId([0; 16]),
            seq: 1,
            created: NtpTime::new(0),
            records: pooled.clone(),
        };
        let decoded = Batch::decode(&batch.encode()).expect("encode always decodes");
        let kept = pooled.len().min(federation::MAX_BATCH_PAIRS);
        assert_eq!(decoded.records[..], pooled[..kept], "pool records do not survive a batch");
        for r in &decoded.records {
            assert!(UploadRecord::decode(r).is_ok(), "a pooled record does not decode");
        }
    }
    // Contacts one by one, as the body's elements (a single contact object).
    if let Ok(contact) = serde_json::from_slice::<ContactBody>(data) {
        check_contact(&contact);
    }
    check_upload_record(data);
}
