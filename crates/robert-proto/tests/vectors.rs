//! Known-answer vectors for every byte format that has no published vector (DESIGN §3).
//!
//! The JSON files in `tests/vectors/` were generated once by `tests/vectors/generate.py`, an
//! implementation independent of this crate: pyca/cryptography (OpenSSL) for AES, AES-GCM,
//! HMAC-SHA256 and P-256 ECDH, and a Python SKINNY-64/192 written from the SKINNY paper (Beierle
//! et al., CRYPTO 2016) that first checks the paper's Appendix B vector. Inputs are fixed (SHA-256
//! of ASCII labels, simple patterns), and the outputs are frozen: these tests check that the Rust
//! library reproduces them byte for byte and, where there is an inverse, inverts them. One key
//! agreement vector (`"note": "rfc5903"`) is RFC 5903 §8.1's P-256 test.
//!
//! If a test here fails, the library disagrees with an independent implementation of the spec:
//! fix the library, never the vectors.

use robert_proto::keys::SCALAR_LEN;
use robert_proto::sealed::{self, EbidEntry, IV_LEN};
use robert_proto::skinny::Skinny64_192;
use robert_proto::{
    AppEphemeralKey, AuthKey, AuthRequest, CountryCode, Ebid, EbidCipher, Ecc, Epoch, FederationKey, Hello,
    Id, KAuth, KEnc, NtpTime, PublicKey, RequestCode, SecretBytes, ServerKey, ServerKeyPair, SessionKeys,
    UploadRecord,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// What `generate.py` writes into every file's `"source"`.
const SOURCE: &str = "generated once by generate.py from fixed inputs with pyca/cryptography and a \
                      from-the-paper Python SKINNY; frozen";

#[derive(Deserialize)]
struct VectorFile<T> {
    source: String,
    vectors: Vec<T>,
}

/// Loads `tests/vectors/<name>`, checks its provenance and that it holds at least one vector.
fn load<T: DeserializeOwned>(name: &str) -> Vec<T> {
    let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("vector file is readable");
    let file: VectorFile<T> =
        serde_json::from_str(&text).expect("vector file is valid JSON of the expected shape");
    assert_eq!(file.source, SOURCE, "{name}: unexpected source");
    assert!(!file.vectors.is_empty(), "{name}: no vectors");
    file.vectors
}

/// Decodes lowercase hex into exactly `N` bytes.
fn hex_array<const N: usize>(s: &str) -> [u8; N] {
    assert_eq!(s, s.to_ascii_lowercase(), "vectors are lowercase hex");
    let v = hex::decode(s).expect("valid hex");
    v.try_into().unwrap_or_else(|v: Vec<u8>| panic!("expected {N} bytes, got {}", v.len()))
}

fn hex_vec(s: &str) -> Vec<u8> {
    assert_eq!(s, s.to_ascii_lowercase(), "vectors are lowercase hex");
    hex::decode(s).expect("valid hex")
}

fn epoch(n: u32) -> Epoch {
    Epoch::new(n).expect("vector epoch fits in 24 bits")
}

// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct SkinnyVector {
    key: String,
    plaintext: String,
    ciphertext: String,
}

#[test]
fn skinny_encrypts_to_frozen_ciphertexts_and_decrypts_back() {
    let vectors: Vec<SkinnyVector> = load("skinny.json");
    assert!(
        vectors.iter().any(|v| v.key == "ed00c85b120d68618753e24bfd908f60b2dbb41b422dfcd0"
            && v.plaintext == "530c61d35e8663c3"
            && v.ciphertext == "dd2cf1a8f330303c"),
        "the SKINNY paper's Appendix B vector is among them"
    );
    for (n, v) in vectors.iter().enumerate() {
        let cipher = Skinny64_192::new(&hex_array::<24>(&v.key));
        let pt = hex_array::<8>(&v.plaintext);
        let ct = hex_array::<8>(&v.ciphertext);
        assert_eq!(hex::encode(cipher.encrypt_block(pt)), v.ciphertext, "skinny vector {n}: encrypt");
        assert_eq!(hex::encode(cipher.decrypt_block(ct)), v.plaintext, "skinny vector {n}: decrypt");
    }
}

// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct EbidVector {
    ks: String,
    epoch: u32,
    id: u64,
    ebid: String,
}

#[test]
fn ebid_is_skinny_of_epoch_and_id_and_decrypts_to_them() {
    let vectors: Vec<EbidVector> = load("ebid.json");
    for (n, v) in vectors.iter().enumerate() {
        let cipher = EbidCipher::new(&ServerKey::new(hex_array(&v.ks)));
        let (e, id) = (epoch(v.epoch), Id::new(v.id).expect("vector id fits in 40 bits"));
        let ebid = cipher.encrypt(e, id);
        assert_eq!(hex::encode(ebid.to_bytes()), v.ebid, "ebid vector {n}: encrypt");
        let (de, did) = cipher.decrypt(&Ebid::new(hex_array(&v.ebid)));
        assert_eq!(de, e, "ebid vector {n}: decrypted epoch");
        assert_eq!(did.value(), v.id, "ebid vector {n}: decrypted id");
    }
}

// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct EccVector {
    kg: String,
    ebid: String,
    cc: u8,
    ecc: u8,
}

#[test]
fn ecc_matches_for_aes_128_192_256_and_decrypts_to_country_code() {
    let vectors: Vec<EccVector> = load("ecc.json");
    let mut sizes: Vec<usize> = vectors.iter().map(|v| v.kg.len() / 2).collect();
    sizes.sort_unstable();
    sizes.dedup();
    assert_eq!(sizes, [16, 24, 32], "every K_G size is covered");
    for (n, v) in vectors.iter().enumerate() {
        let kg = FederationKey::new(&hex_vec(&v.kg)).expect("vector K_G has a valid length");
        let ebid = Ebid::new(hex_array(&v.ebid));
        assert_eq!(
            kg.encrypt_country(&ebid, CountryCode::new(v.cc)),
            Ecc::new(v.ecc),
            "ecc vector {n}: encrypt"
        );
        assert_eq!(
            kg.decrypt_country(&ebid, Ecc::new(v.ecc)),
            CountryCode::new(v.cc),
            "ecc vector {n}: decrypt"
        );
    }
}

// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct HelloVector {
    kauth: String,
    ecc: u8,
    ebid: String,
    ntp_time: u32,
    hello: String,
}

#[test]
fn hello_builds_to_frozen_bytes_and_parses_and_verifies() {
    let vectors: Vec<HelloVector> = load("hello.json");
    assert!(
        vectors.iter().any(|v| v.ntp_time & 0xffff == 0xffff)
            && vectors.iter().any(|v| v.ntp_time & 0xffff == 0),
        "vectors on both sides of the 16-bit wrap"
    );
    for (n, v) in vectors.iter().enumerate() {
        let key = AuthKey::new(&KAuth::new(hex_array(&v.kauth)));
        let (ecc, ebid, now) = (Ecc::new(v.ecc), Ebid::new(hex_array(&v.ebid)), NtpTime::new(v.ntp_time));
        let built = Hello::build(&key, ecc, ebid, now);
        assert_eq!(hex::encode(built.to_bytes()), v.hello, "hello vector {n}: build");

        let parsed = Hello::parse(&hex_vec(&v.hello)).expect("16 bytes");
        assert_eq!(parsed.ecc(), ecc, "hello vector {n}: ecc");
        assert_eq!(parsed.ebid(), ebid, "hello vector {n}: ebid");
        assert_eq!(parsed.time(), now.t16(), "hello vector {n}: t16");
        assert!(parsed.check_delta(now, 1).is_ok(), "hello vector {n}: delta");
        let verified = parsed.verify(&key).expect("frozen HELLO verifies under its key");
        assert_eq!(verified.hello(), &parsed);

        let other = AuthKey::new(&KAuth::new([0x5a; 32]));
        assert!(parsed.verify(&other).is_err(), "hello vector {n}: verifies under another key");
    }
}

// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct RequestMacVector {
    kauth: String,
    code: u8,
    ebid: String,
    epoch: u32,
    ntp_time: u32,
    mac: String,
}

#[test]
fn request_mac_matches_and_verifies_for_its_code_only() {
    let vectors: Vec<RequestMacVector> = load("request_mac.json");
    let mut codes: Vec<u8> = vectors.iter().map(|v| v.code).collect();
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes, [2, 3, 4, 5, 6], "every request code is covered");
    for (n, v) in vectors.iter().enumerate() {
        let key = AuthKey::new(&KAuth::new(hex_array(&v.kauth)));
        let code = RequestCode::from_byte(v.code).expect("vector code is a request code");
        let (ebid, e, t) = (Ebid::new(hex_array(&v.ebid)), epoch(v.epoch), NtpTime::new(v.ntp_time));
        let mac = hex_array::<32>(&v.mac);

        assert_eq!(hex::encode(key.request_mac(code, &ebid, e, t)), v.mac, "request vector {n}: mac");
        let request = AuthRequest::new(&key, code, ebid, e, t);
        assert_eq!(request.mac, mac, "request vector {n}: AuthRequest::new");

        let parsed =
            AuthRequest::from_parts(&hex_vec(&v.ebid), v.epoch, v.ntp_time, &mac).expect("well-formed");
        for other in RequestCode::ALL {
            assert_eq!(
                key.verify_request_mac(other, &ebid, e, t, &mac).is_ok(),
                other == code,
                "request vector {n}: made for {code:?}, checked as {other:?}"
            );
            assert_eq!(
                parsed.verify_mac(&key, other).is_ok(),
                other == code,
                "request vector {n}: {other:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct KeyAgreementVector {
    server_scalar: String,
    app_scalar: String,
    server_public: String,
    app_public: String,
    shared_x: String,
    k_auth: String,
    k_enc: String,
    #[serde(default)]
    note: Option<String>,
}

#[test]
fn key_agreement_from_scalars_gives_frozen_public_keys_and_session_keys_on_both_sides() {
    let vectors: Vec<KeyAgreementVector> = load("key_agreement.json");
    assert!(
        vectors.iter().any(|v| v.note.as_deref() == Some("rfc5903")),
        "the RFC 5903 §8.1 vector is present"
    );
    for (n, v) in vectors.iter().enumerate() {
        let server_scalar = SecretBytes::<SCALAR_LEN>::new(hex_array(&v.server_scalar));
        let app_scalar = SecretBytes::<SCALAR_LEN>::new(hex_array(&v.app_scalar));
        let server = ServerKeyPair::from_scalar(&server_scalar).expect("vector server scalar is valid");
        let app = AppEphemeralKey::from_scalar(&app_scalar).expect("vector app scalar is valid");
        assert_eq!(hex::encode(server.public_key().as_bytes()), v.server_public, "ka vector {n}: pk_S");
        assert_eq!(hex::encode(app.public_key().as_bytes()), v.app_public, "ka vector {n}: pke_A");
        assert!(server.to_scalar() == server_scalar, "ka vector {n}: server scalar round trip");

        let expected =
            SessionKeys { k_auth: KAuth::new(hex_array(&v.k_auth)), k_enc: KEnc::new(hex_array(&v.k_enc)) };
        assert!(
            SessionKeys::derive(&hex_vec(&v.shared_x)) == expected,
            "ka vector {n}: derivation from shared x"
        );

        let app_public = PublicKey::parse("clientPublicKey", &hex_vec(&v.app_public)).expect("valid point");
        let server_public =
            PublicKey::parse("serverPublicKey", &hex_vec(&v.server_public)).expect("valid point");
        assert!(server.agree(&app_public) == expected, "ka vector {n}: server side");
        assert!(app.agree(&server_public) == expected, "ka vector {n}: app side");
    }
}

// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct SealedEntry {
    epoch: u32,
    ebid: String,
    ecc: u8,
}

#[derive(Deserialize)]
struct SealedVector {
    k_enc: String,
    iv: String,
    entries: Vec<SealedEntry>,
    sealed: String,
}

#[test]
fn sealed_list_seals_to_frozen_bytes_and_opens_to_its_entries() {
    let vectors: Vec<SealedVector> = load("sealed_list.json");
    let mut lengths: Vec<usize> = vectors.iter().map(|v| v.entries.len()).collect();
    lengths.sort_unstable();
    assert!([0, 1, 96].iter().all(|n| lengths.contains(n)), "lists of 0, 1 and 96 entries");
    for (n, v) in vectors.iter().enumerate() {
        let k_enc = KEnc::new(hex_array(&v.k_enc));
        let iv = hex_array::<IV_LEN>(&v.iv);
        let entries: Vec<EbidEntry> = v
            .entries
            .iter()
            .map(|e| EbidEntry {
                epoch: epoch(e.epoch),
                ebid: Ebid::new(hex_array(&e.ebid)),
                ecc: Ecc::new(e.ecc),
            })
            .collect();
        assert_eq!(
            hex::encode(sealed::seal_with_iv(&k_enc, &entries, iv)),
            v.sealed,
            "sealed vector {n}: seal"
        );
        let opened = sealed::open(&k_enc, &hex_vec(&v.sealed)).expect("frozen list opens under its key");
        assert_eq!(opened, entries, "sealed vector {n}: open");
    }
}

// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct UploadVector {
    hello: String,
    time: u32,
    rssi: Option<i8>,
    encoded: String,
}

#[test]
fn upload_record_encodes_to_frozen_bytes_and_decodes_back() {
    let vectors: Vec<UploadVector> = load("upload_record.json");
    assert!(vectors.iter().any(|v| v.rssi.is_none()), "a record without RSSI");
    assert!(vectors.iter().any(|v| v.rssi.is_some_and(|r| r < 0)), "a record with a negative RSSI");
    for (n, v) in vectors.iter().enumerate() {
        let record = UploadRecord {
            hello: Hello::from_bytes(hex_array(&v.hello)),
            time: NtpTime::new(v.time),
            rssi: v.rssi,
        };
        assert_eq!(hex::encode(record.encode()), v.encoded, "upload vector {n}: encode");
        let decoded = UploadRecord::decode(&hex_vec(&v.encoded)).expect("20 or 21 bytes");
        assert!(decoded == record, "upload vector {n}: decode");
    }
}
