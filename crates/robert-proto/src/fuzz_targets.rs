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

use crate::api::{AuthRequestBody, ContactBody, ReportRequest, ResetRequestBody};
use crate::request::AUTH_REQUEST_LEN;
use crate::sealed::{self, ENTRY_LEN, IV_LEN, MAX_ENTRIES, SealError, TAG_LEN};
use crate::upload::{RECORD_LEN, RECORD_WITH_RSSI_LEN};
use crate::{
    AuthKey, AuthRequest, Ebid, EbidEntry, Ecc, Epoch, HELLO_LEN, Hello, KAuth, KEnc, NtpTime, RequestCode,
    UploadRecord,
};
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
