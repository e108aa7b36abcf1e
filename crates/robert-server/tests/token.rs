//! Health-authority tokens through the public API: round trips, every refusal path of
//! `TrustedAuthorities::verify`, key files, redaction, and a no-panic property.
//!
//! The OpenSSL fixture below (key, public key, `kid`, token) was made once with OpenSSL 3.0
//! (`openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`; `kid` computed with
//! `openssl pkey -pubout -outform DER | openssl dgst -sha256`; token signed with `openssl dgst
//! -sha256 -sign` and its DER signature converted to `r ‖ s`) and frozen here: it checks the format
//! against an implementation that is not ours.

use aws_lc_rs::hmac;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, EcdsaSigningAlgorithm,
};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use robert_server::token::{
    AuthorityKey, CLOCK_SKEW_SECS, MAX_LIFETIME_SECS, MAX_TOKEN_LEN, Purpose, TokenError, TrustedAuthorities,
};

const NOW: u64 = 1_700_000_000;
const DAY: u64 = 86_400;

const OPENSSL_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg60MuLokJAT5xm7SG
PCpT/N1GgHiUoAfGAaB74CXIwmyhRANCAAQW5FNXish/QhNBmeuBtldafZZ9icXm
U95vweNXGS03z/+xMjb4Lx1tTHgU6D99B1i5o3X9ksxHpm9ygPL4n7dW
-----END PRIVATE KEY-----
";
const OPENSSL_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEFuRTV4rIf0ITQZnrgbZXWn2WfYnF
5lPeb8HjVxktN8//sTI2+C8dbUx4FOg/fQdYuaN1/ZLMR6ZvcoDy+J+3Vg==
-----END PUBLIC KEY-----
";
/// The same key's public point in compressed form (`openssl ec -pubout -conv_form compressed`).
const OPENSSL_PUBLIC_COMPRESSED_PEM: &str = "-----BEGIN PUBLIC KEY-----
MDkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDIgACFuRTV4rIf0ITQZnrgbZXWn2WfYnF
5lPeb8HjVxktN88=
-----END PUBLIC KEY-----
";
/// The same key in SEC1 form (`openssl ec`), which is refused: PKCS#8 only.
const OPENSSL_SEC1_PEM: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIOtDLi6JCQE+cZu0hjwqU/zdRoB4lKAHxgGge+AlyMJsoAoGCCqGSM49
AwEHoUQDQgAEFuRTV4rIf0ITQZnrgbZXWn2WfYnF5lPeb8HjVxktN8//sTI2+C8d
bUx4FOg/fQdYuaN1/ZLMR6ZvcoDy+J+3Vg==
-----END EC PRIVATE KEY-----
";
const OPENSSL_KID: &str = "QSIS2cbfcEtVvknBhIursw";
/// Claims `{"jti":"openssl-interop-1","iat":1700000000,"exp":1700086400,"purpose":"declare"}`.
const OPENSSL_TOKEN: &str = "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6IlFTSVMyY2JmY0V0VnZrbkJoSXVyc3cifQ.eyJqdGkiOiJvcGVuc3NsLWludGVyb3AtMSIsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjoxNzAwMDg2NDAwLCJwdXJwb3NlIjoiZGVjbGFyZSJ9.I6R1ZdAR0Td-TH99pUvF8yO4vEjZ3XeQW-i6zJ4-N-C6HiK0Hg-K5MFnr2EfYEfnXOASw8UnVb1pIkPReV-Yiw";
/// A P-384 key (`ec_paramgen_curve:P-384`): well-formed, wrong curve.
const OPENSSL_P384_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDB1VYHwM6QOy6eb2wsq
QBh977/sDAhQsJudqNRK6OAwwC02WEPokXTuIRgj+ziTEGChZANiAATKvPAmq0KQ
Qq7n9uTJOVunN4zL8gvIzFxijbsWxhgIO3m2uO9ngLBe5l/BjDiaLlrj88Mhu/cb
f+r3Kpln/HOgI6VvsHVisMgz+Xer56/j6jReFEqTrs4JM4iRUB/DTuw=
-----END PRIVATE KEY-----
";
const OPENSSL_P384_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEyrzwJqtCkEKu5/bkyTlbpzeMy/ILyMxc
Yo27FsYYCDt5trjvZ4CwXuZfwYw4mi5a4/PDIbv3G3/q9yqZZ/xzoCOlb7B1YrDI
M/l3q+ev4+o0XhRKk67OCTOIkVAfw07s
-----END PUBLIC KEY-----
";
/// An Ed25519 key (`genpkey -algorithm ED25519`): PKCS#8, wrong algorithm.
const OPENSSL_ED25519_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIDetL2zSLqx2U7wgFXUW9e+V7QLBKStQpHk9yBOiT1q7
-----END PRIVATE KEY-----
";

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

/// A key from `seed` and a trust list holding its public key.
fn setup(seed: u64) -> (AuthorityKey, TrustedAuthorities) {
    let key = AuthorityKey::generate(&mut rng(seed));
    let mut trusted = TrustedAuthorities::new();
    trusted.add_public_key_pem(&key.public_key_pem()).expect("own public key is accepted");
    (key, trusted)
}

fn issue(key: &AuthorityKey, purpose: Purpose, iat: u64, ttl: u64) -> String {
    key.issue(purpose, iat, ttl, &mut rng(99)).expect("valid TTL issues")
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn pem_body(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(body).expect("test PEM is valid base64")
}

/// Signs arbitrary header and claims JSON with `key` (ES256 fixed, or whatever `alg` says).
fn sign_raw_with(
    alg: &'static EcdsaSigningAlgorithm,
    key: &AuthorityKey,
    header: &str,
    claims: &str,
) -> String {
    let pkcs8 = pem_body(&key.to_pkcs8_pem());
    let pair = EcdsaKeyPair::from_pkcs8(alg, &pkcs8).expect("own PKCS#8 loads");
    let input = format!("{}.{}", b64(header), b64(claims));
    let sig = pair.sign(&SystemRandom::new(), input.as_bytes()).expect("signing works");
    format!("{input}.{}", b64(sig.as_ref()))
}

fn sign_raw(key: &AuthorityKey, header: &str, claims: &str) -> String {
    sign_raw_with(&ECDSA_P256_SHA256_FIXED_SIGNING, key, header, claims)
}

fn es256_header(key: &AuthorityKey) -> String {
    format!(r#"{{"alg":"ES256","typ":"JWT","kid":"{}"}}"#, key.kid())
}

fn claims(jti: &str, iat: u64, exp: u64, purpose: &str) -> String {
    format!(r#"{{"jti":"{jti}","iat":{iat},"exp":{exp},"purpose":"{purpose}"}}"#)
}

#[test]
fn round_trip_for_both_purposes() {
    let (key, trusted) = setup(1);
    for purpose in [Purpose::Declare, Purpose::Reset] {
        let token = key.issue(purpose, NOW, DAY, &mut rng(5)).expect("issues");
        let verified = trusted.verify(&token, purpose, NOW).expect("verifies");
        assert_eq!(verified.purpose, purpose);
        assert_eq!(verified.exp, NOW + DAY);
        assert_eq!(verified.jti.len(), 22, "128 bits in base64url");
        assert_eq!(token.split('.').count(), 3);
        assert!(!token.contains('='));
    }
    // Fresh randomness gives a fresh jti.
    let a = trusted
        .verify(&key.issue(Purpose::Declare, NOW, DAY, &mut rng(6)).expect("issues"), Purpose::Declare, NOW)
        .expect("verifies");
    let b = trusted
        .verify(&key.issue(Purpose::Declare, NOW, DAY, &mut rng(7)).expect("issues"), Purpose::Declare, NOW)
        .expect("verifies");
    assert_ne!(a.jti, b.jti);
}

#[test]
fn issued_header_and_claims_have_the_documented_shape() {
    let (key, _) = setup(1);
    let token = issue(&key, Purpose::Reset, NOW, 3600);
    let mut parts = token.split('.');
    let header = URL_SAFE_NO_PAD.decode(parts.next().expect("header")).expect("base64url");
    let claims = URL_SAFE_NO_PAD.decode(parts.next().expect("claims")).expect("base64url");
    let header: serde_json::Value = serde_json::from_slice(&header).expect("JSON");
    let claims: serde_json::Value = serde_json::from_slice(&claims).expect("JSON");
    assert_eq!(header, serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": key.kid()}));
    assert_eq!(claims["iat"], NOW);
    assert_eq!(claims["exp"], NOW + 3600);
    assert_eq!(claims["purpose"], "reset");
    assert!(claims["jti"].is_string());
}

#[test]
fn wrong_purpose_is_refused() {
    let (key, trusted) = setup(1);
    let declare = issue(&key, Purpose::Declare, NOW, DAY);
    let reset = issue(&key, Purpose::Reset, NOW, DAY);
    assert_eq!(trusted.verify(&declare, Purpose::Reset, NOW), Err(TokenError::WrongPurpose));
    assert_eq!(trusted.verify(&reset, Purpose::Declare, NOW), Err(TokenError::WrongPurpose));
    // A validly signed token with a purpose we do not know.
    let other = sign_raw(&key, &es256_header(&key), &claims("j", NOW, NOW + 60, "audit"));
    assert_eq!(trusted.verify(&other, Purpose::Declare, NOW), Err(TokenError::WrongPurpose));
    let upper = sign_raw(&key, &es256_header(&key), &claims("j", NOW, NOW + 60, "Declare"));
    assert_eq!(trusted.verify(&upper, Purpose::Declare, NOW), Err(TokenError::WrongPurpose));
}

#[test]
fn expiry_is_exclusive() {
    let (key, trusted) = setup(1);
    let token = issue(&key, Purpose::Declare, NOW, 600);
    assert!(trusted.verify(&token, Purpose::Declare, NOW + 599).is_ok());
    assert_eq!(
        trusted.verify(&token, Purpose::Declare, NOW + 600),
        Err(TokenError::Expired),
        "exp == now is expired"
    );
    assert_eq!(trusted.verify(&token, Purpose::Declare, u64::MAX), Err(TokenError::Expired));
}

#[test]
fn iat_too_far_in_the_future_is_refused() {
    let (key, trusted) = setup(1);
    let at_skew = issue(&key, Purpose::Declare, NOW + CLOCK_SKEW_SECS, DAY);
    assert!(trusted.verify(&at_skew, Purpose::Declare, NOW).is_ok());
    let beyond = issue(&key, Purpose::Declare, NOW + CLOCK_SKEW_SECS + 1, DAY);
    assert_eq!(trusted.verify(&beyond, Purpose::Declare, NOW), Err(TokenError::NotYetValid));
}

#[test]
fn lifetime_bounds() {
    let (key, trusted) = setup(1);
    // At issue time.
    for ttl in [0, MAX_LIFETIME_SECS + 1, u64::MAX] {
        assert_eq!(key.issue(Purpose::Declare, NOW, ttl, &mut rng(1)), Err(TokenError::BadLifetime));
    }
    assert_eq!(
        key.issue(Purpose::Declare, u64::MAX - 10, 60, &mut rng(1)),
        Err(TokenError::BadLifetime),
        "exp overflow"
    );
    let longest = issue(&key, Purpose::Declare, NOW, MAX_LIFETIME_SECS);
    assert!(trusted.verify(&longest, Purpose::Declare, NOW).is_ok());
    // At verification time, for tokens another issuer signed.
    let header = es256_header(&key);
    let too_long = sign_raw(&key, &header, &claims("j", NOW, NOW + MAX_LIFETIME_SECS + 1, "declare"));
    assert_eq!(trusted.verify(&too_long, Purpose::Declare, NOW), Err(TokenError::BadLifetime));
    let zero = sign_raw(&key, &header, &claims("j", NOW + 10, NOW + 10, "declare"));
    assert_eq!(trusted.verify(&zero, Purpose::Declare, NOW), Err(TokenError::BadLifetime));
    let negative = sign_raw(&key, &header, &claims("j", NOW + 100, NOW + 50, "declare"));
    assert_eq!(trusted.verify(&negative, Purpose::Declare, NOW), Err(TokenError::BadLifetime));
}

#[test]
fn unknown_or_missing_kid_is_refused() {
    let (key, _) = setup(1);
    let token = issue(&key, Purpose::Declare, NOW, DAY);
    assert_eq!(TrustedAuthorities::new().verify(&token, Purpose::Declare, NOW), Err(TokenError::UnknownKey));
    let (_, other_trust) = setup(2);
    assert_eq!(other_trust.verify(&token, Purpose::Declare, NOW), Err(TokenError::UnknownKey));
    let (_, trusted) = setup(1);
    let no_kid = sign_raw(&key, r#"{"alg":"ES256","typ":"JWT"}"#, &claims("j", NOW, NOW + 60, "declare"));
    assert_eq!(trusted.verify(&no_kid, Purpose::Declare, NOW), Err(TokenError::UnknownKey));
    let numeric_kid = sign_raw(&key, r#"{"alg":"ES256","kid":1}"#, &claims("j", NOW, NOW + 60, "declare"));
    assert!(trusted.verify(&numeric_kid, Purpose::Declare, NOW).is_err());
}

#[test]
fn token_signed_by_another_key_under_a_trusted_kid_is_forged() {
    let (trusted_key, trusted) = setup(1);
    let attacker = AuthorityKey::generate(&mut rng(666));
    let forged =
        sign_raw(&attacker, &es256_header(&trusted_key), &claims("forged", NOW, NOW + 60, "declare"));
    assert_eq!(trusted.verify(&forged, Purpose::Declare, NOW), Err(TokenError::BadSignature));
}

#[test]
fn every_single_character_change_of_the_signature_is_refused() {
    let (key, trusted) = setup(1);
    let token = issue(&key, Purpose::Declare, NOW, DAY);
    let sig_start = token.rfind('.').expect("three segments") + 1;
    let alphabet: Vec<char> =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=.+/ ".chars().collect();
    let mut tried = 0;
    for pos in sig_start..token.len() {
        let original = token.as_bytes()[pos] as char;
        for &c in &alphabet {
            if c == original {
                continue;
            }
            let mut changed = token.clone();
            changed.replace_range(pos..=pos, c.encode_utf8(&mut [0; 4]));
            assert!(
                trusted.verify(&changed, Purpose::Declare, NOW).is_err(),
                "change at {pos} to {c:?} accepted"
            );
            tried += 1;
        }
    }
    assert!(tried > 86 * 60);
    // Truncating or extending the signature is refused too.
    assert!(trusted.verify(&token[..token.len() - 1], Purpose::Declare, NOW).is_err());
    assert!(trusted.verify(&format!("{token}A"), Purpose::Declare, NOW).is_err());
}

#[test]
fn changing_the_signed_part_breaks_the_signature() {
    let (key, trusted) = setup(1);
    let token = issue(&key, Purpose::Declare, NOW, DAY);
    let parts: Vec<&str> = token.split('.').collect();
    let claims_json = URL_SAFE_NO_PAD.decode(parts[1]).expect("base64url");
    let stretched = String::from_utf8(claims_json)
        .expect("UTF-8")
        .replace(&format!("\"exp\":{}", NOW + DAY), &format!("\"exp\":{}", NOW + 2 * DAY));
    let tampered = format!("{}.{}.{}", parts[0], b64(stretched), parts[2]);
    assert_eq!(trusted.verify(&tampered, Purpose::Declare, NOW), Err(TokenError::BadSignature));
    // A header re-encoded with the same meaning is a different signing input.
    let respaced = format!(r#"{{"alg": "ES256", "typ":"JWT","kid":"{}"}}"#, key.kid());
    let reheadered = format!("{}.{}.{}", b64(respaced), parts[1], parts[2]);
    assert_eq!(trusted.verify(&reheadered, Purpose::Declare, NOW), Err(TokenError::BadSignature));
}

#[test]
fn alg_none_is_refused() {
    let (key, trusted) = setup(1);
    let body = b64(claims("j", NOW, NOW + 60, "declare"));
    for header in [
        format!(r#"{{"alg":"none","typ":"JWT","kid":"{}"}}"#, key.kid()),
        format!(r#"{{"alg":"none","kid":"{}"}}"#, key.kid()),
        r#"{"alg":"none"}"#.to_owned(),
    ] {
        let unsigned = format!("{}.{body}.", b64(&header));
        assert_eq!(trusted.verify(&unsigned, Purpose::Declare, NOW), Err(TokenError::UnsupportedAlgorithm));
    }
    // `none` with a genuine ES256 signature attached is still refused.
    let signed_none = sign_raw(
        &key,
        &format!(r#"{{"alg":"none","kid":"{}"}}"#, key.kid()),
        &claims("j", NOW, NOW + 60, "declare"),
    );
    assert_eq!(trusted.verify(&signed_none, Purpose::Declare, NOW), Err(TokenError::UnsupportedAlgorithm));
}

#[test]
fn hs256_keyed_with_the_public_key_is_refused() {
    // The classic confusion: a verifier that lets the header pick the algorithm would check an
    // HMAC keyed with the (public) verification key.
    let (key, trusted) = setup(1);
    let public_pem = key.public_key_pem();
    let public_der = pem_body(&public_pem);
    let header = format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{}"}}"#, key.kid());
    let input = format!("{}.{}", b64(&header), b64(claims("j", NOW, NOW + 60, "declare")));
    for secret in [public_pem.as_bytes(), &public_der[..]] {
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), input.as_bytes());
        let token = format!("{input}.{}", b64(tag.as_ref()));
        assert_eq!(trusted.verify(&token, Purpose::Declare, NOW), Err(TokenError::UnsupportedAlgorithm));
    }
}

#[test]
fn only_es256_spelled_exactly_is_accepted() {
    let (key, trusted) = setup(1);
    let body = claims("j", NOW, NOW + 60, "declare");
    let kid = key.kid();
    for header in [
        format!(r#"{{"alg":"es256","kid":"{kid}"}}"#),
        format!(r#"{{"alg":"ES384","kid":"{kid}"}}"#),
        format!(r#"{{"alg":"RS256","kid":"{kid}"}}"#),
        format!(r#"{{"alg":"ES256 ","kid":"{kid}"}}"#),
        format!(r#"{{"alg":"","kid":"{kid}"}}"#),
        format!(r#"{{"alg":null,"kid":"{kid}"}}"#),
        format!(r#"{{"kid":"{kid}"}}"#),
    ] {
        let token = sign_raw(&key, &header, &body);
        assert_eq!(
            trusted.verify(&token, Purpose::Declare, NOW),
            Err(TokenError::UnsupportedAlgorithm),
            "{header}"
        );
    }
    for header in [
        format!(r#"{{"alg":["ES256"],"kid":"{kid}"}}"#),
        format!(r#"{{"alg":"ES256","alg":"ES256","kid":"{kid}"}}"#),
        format!(r#"{{"alg":"ES256","kid":"{kid}","crit":["exp"]}}"#),
        format!(r#"{{"alg":"ES256","kid":"{kid}","typ":"JOSE"}}"#),
        format!(r#"["ES256","{kid}"]"#),
    ] {
        let token = sign_raw(&key, &header, &body);
        assert!(
            matches!(trusted.verify(&token, Purpose::Declare, NOW), Err(TokenError::Malformed(_))),
            "{header}"
        );
    }
    // No typ, and unknown header parameters, are fine.
    let plain = sign_raw(&key, &format!(r#"{{"alg":"ES256","kid":"{kid}","x":1}}"#), &body);
    assert!(trusted.verify(&plain, Purpose::Declare, NOW).is_ok());
}

#[test]
fn der_signature_is_refused() {
    let (key, trusted) = setup(1);
    let token = sign_raw_with(
        &ECDSA_P256_SHA256_ASN1_SIGNING,
        &key,
        &es256_header(&key),
        &claims("j", NOW, NOW + 60, "declare"),
    );
    assert_eq!(trusted.verify(&token, Purpose::Declare, NOW), Err(TokenError::BadSignature));
}

#[test]
fn segment_count_must_be_three() {
    let (key, trusted) = setup(1);
    let token = issue(&key, Purpose::Declare, NOW, DAY);
    let parts: Vec<&str> = token.split('.').collect();
    let two = format!("{}.{}", parts[0], parts[1]);
    let four = format!("{token}.{}", parts[2]);
    let four_empty = format!("{token}.");
    for bad in ["", ".", "..", "...", two.as_str(), four.as_str(), four_empty.as_str()] {
        assert!(
            matches!(trusted.verify(bad, Purpose::Declare, NOW), Err(TokenError::Malformed(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn oversized_token_is_refused_before_parsing() {
    let (key, trusted) = setup(1);
    let token = issue(&key, Purpose::Declare, NOW, DAY);
    let padded = format!("{token}{}", "A".repeat(MAX_TOKEN_LEN + 1 - token.len()));
    assert_eq!(padded.len(), MAX_TOKEN_LEN + 1);
    assert_eq!(trusted.verify(&padded, Purpose::Declare, NOW), Err(TokenError::TooLong));
    assert_eq!(trusted.verify(&"x".repeat(1 << 20), Purpose::Declare, NOW), Err(TokenError::TooLong));
    // At the limit, the token is parsed (and here refused for another reason).
    let at_limit = "A".repeat(MAX_TOKEN_LEN);
    assert!(matches!(trusted.verify(&at_limit, Purpose::Declare, NOW), Err(TokenError::Malformed(_))));
}

#[test]
fn base64_padding_is_refused_in_every_segment() {
    let (key, trusted) = setup(1);
    let token = issue(&key, Purpose::Declare, NOW, DAY);
    let parts: Vec<&str> = token.split('.').collect();
    for i in 0..3 {
        for pad in ["=", "=="] {
            let mut padded: Vec<String> = parts.iter().map(|p| (*p).to_owned()).collect();
            padded[i].push_str(pad);
            let padded = padded.join(".");
            assert!(trusted.verify(&padded, Purpose::Declare, NOW).is_err(), "segment {i}");
        }
    }
    // The header re-encoded with padding ('=' in place, as padded base64url would have it) is
    // refused. Our header is 58 bytes, so its padded encoding ends in "==".
    let header = es256_header(&key);
    let unpadded_header = URL_SAFE_NO_PAD.encode(&header);
    let padded_header = base64::engine::general_purpose::URL_SAFE.encode(&header);
    assert!(padded_header.ends_with('='));
    let padded = token.replacen(&unpadded_header, &padded_header, 1);
    assert!(matches!(trusted.verify(&padded, Purpose::Declare, NOW), Err(TokenError::Malformed(_))));
}

#[test]
fn claims_are_parsed_strictly() {
    let (key, trusted) = setup(1);
    let header = es256_header(&key);
    let exp = NOW + 60;
    let malformed = [
        format!(r#"{{"iat":{NOW},"exp":{exp},"purpose":"declare"}}"#),
        format!(r#"{{"jti":"j","exp":{exp},"purpose":"declare"}}"#),
        format!(r#"{{"jti":"j","iat":{NOW},"purpose":"declare"}}"#),
        format!(r#"{{"jti":"j","iat":{NOW},"exp":{exp}}}"#),
        format!(r#"{{"jti":"j","iat":"{NOW}","exp":{exp},"purpose":"declare"}}"#),
        format!(r#"{{"jti":"j","iat":{NOW},"exp":{exp}.5,"purpose":"declare"}}"#),
        format!(r#"{{"jti":"j","iat":{NOW},"exp":1.7e9,"purpose":"declare"}}"#),
        format!(r#"{{"jti":"j","iat":-1,"exp":{exp},"purpose":"declare"}}"#),
        format!(r#"{{"jti":"j","iat":{NOW},"exp":18446744073709551616,"purpose":"declare"}}"#),
        format!(r#"{{"jti":7,"iat":{NOW},"exp":{exp},"purpose":"declare"}}"#),
        format!(r#"{{"jti":null,"iat":{NOW},"exp":{exp},"purpose":"declare"}}"#),
        format!(r#"{{"jti":"j","iat":{NOW},"exp":{exp},"purpose":["declare"]}}"#),
        format!(r#"{{"jti":"j","jti":"k","iat":{NOW},"exp":{exp},"purpose":"declare"}}"#),
        claims("", NOW, exp, "declare"),
        claims(&"a".repeat(65), NOW, exp, "declare"),
        claims("has space", NOW, exp, "declare"),
        claims("caf\u{e9}", NOW, exp, "declare"),
        format!(r#"{{"jti":"j","iat":{NOW},"exp":{exp},"purpose":"declare"}} trailing"#),
        "null".to_owned(),
        "not json".to_owned(),
    ];
    for body in &malformed {
        let token = sign_raw(&key, &header, body);
        assert!(
            matches!(trusted.verify(&token, Purpose::Declare, NOW), Err(TokenError::Malformed(_))),
            "{body}"
        );
    }
    // Boundaries and unknown claims that are fine.
    for body in [
        claims("j", NOW, exp, "declare"),
        claims(&"a".repeat(64), NOW, exp, "declare"),
        claims("550e8400-e29b-41d4-a716-446655440000", NOW, exp, "declare"),
        format!(r#"{{"jti":"j","iat":{NOW},"exp":{exp},"purpose":"declare","sub":"x","n":{{"a":[1]}}}}"#),
    ] {
        let token = sign_raw(&key, &header, &body);
        let verified = trusted.verify(&token, Purpose::Declare, NOW).expect(&body);
        assert_eq!(verified.exp, exp);
    }
}

#[test]
fn private_key_pem_round_trips() {
    let (key, trusted) = setup(3);
    let pem = key.to_pkcs8_pem();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    assert!(pem.ends_with("-----END PRIVATE KEY-----\n"));
    assert!(pem.lines().all(|l| l.len() <= 64));
    let loaded = AuthorityKey::from_pkcs8_pem(&pem).expect("own PEM loads");
    assert_eq!(loaded.kid(), key.kid());
    assert_eq!(*loaded.to_pkcs8_pem(), *pem);
    assert_eq!(loaded.public_key_pem(), key.public_key_pem());
    // The reloaded key signs tokens the original's public key accepts.
    let token = issue(&loaded, Purpose::Reset, NOW, DAY);
    assert!(trusted.verify(&token, Purpose::Reset, NOW).is_ok());
}

#[test]
fn public_key_pem_round_trips_and_names_the_kid() {
    let key = AuthorityKey::generate(&mut rng(4));
    let pem = key.public_key_pem();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
    assert!(pem.ends_with("-----END PUBLIC KEY-----\n"));
    assert_eq!(pem_body(&pem).len(), 91, "P-256 SPKI with an uncompressed point");
    let mut trusted = TrustedAuthorities::new();
    assert!(trusted.is_empty());
    assert_eq!(trusted.add_public_key_pem(&pem), Ok(key.kid()));
    assert_eq!(trusted.add_public_key_pem(&pem), Ok(key.kid()), "adding twice is harmless");
    assert_eq!(trusted.len(), 1);
    let (other, _) = setup(5);
    trusted.add_public_key_pem(&other.public_key_pem()).expect("second authority");
    assert_eq!(trusted.len(), 2);
    for k in [&key, &other] {
        assert!(trusted.verify(&issue(k, Purpose::Declare, NOW, DAY), Purpose::Declare, NOW).is_ok());
    }
}

#[test]
fn openssl_keys_and_tokens_interoperate() {
    let key = AuthorityKey::from_pkcs8_pem(OPENSSL_PRIVATE_PEM).expect("OpenSSL PKCS#8 loads");
    assert_eq!(key.kid(), OPENSSL_KID, "kid matches SHA-256 of OpenSSL's SPKI DER");
    assert_eq!(key.public_key_pem(), OPENSSL_PUBLIC_PEM, "same SPKI PEM as OpenSSL writes");
    let mut trusted = TrustedAuthorities::new();
    assert_eq!(trusted.add_public_key_pem(OPENSSL_PUBLIC_PEM), Ok(OPENSSL_KID.to_owned()));
    let verified = trusted
        .verify(OPENSSL_TOKEN, Purpose::Declare, 1_700_000_000)
        .expect("OpenSSL-signed token verifies");
    assert_eq!(verified.jti, "openssl-interop-1");
    assert_eq!(verified.exp, 1_700_086_400);
    assert_eq!(trusted.verify(OPENSSL_TOKEN, Purpose::Declare, 1_700_086_400), Err(TokenError::Expired));
    assert!(trusted.verify(&issue(&key, Purpose::Declare, NOW, DAY), Purpose::Declare, NOW).is_ok());
}

#[test]
fn bad_key_files_are_refused() {
    let (key, _) = setup(1);
    let public = key.public_key_pem();
    let private = key.to_pkcs8_pem();
    let bad_private: Vec<(&str, String)> = vec![
        ("public key as private", public.clone()),
        ("SEC1", OPENSSL_SEC1_PEM.to_owned()),
        ("P-384", OPENSSL_P384_PRIVATE_PEM.to_owned()),
        ("Ed25519", OPENSSL_ED25519_PRIVATE_PEM.to_owned()),
        ("empty", String::new()),
        ("no block", "hello".to_owned()),
        ("two blocks", format!("{}{}", private.as_str(), private.as_str())),
        ("truncated", private.replace("-----END PRIVATE KEY-----\n", "")),
        ("garbage body", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_owned()),
        ("trailing DER bytes", {
            let mut der = pem_body(&private);
            der.push(0);
            format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", STANDARD.encode(der))
        }),
    ];
    for (what, pem) in &bad_private {
        assert!(matches!(AuthorityKey::from_pkcs8_pem(pem), Err(TokenError::BadKeyFile(_))), "{what}");
    }
    let bad_public: Vec<(&str, String)> = vec![
        ("private key as public", private.as_str().to_owned()),
        ("compressed point", OPENSSL_PUBLIC_COMPRESSED_PEM.to_owned()),
        ("P-384", OPENSSL_P384_PUBLIC_PEM.to_owned()),
        (
            "bare SEC1 point",
            format!(
                "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
                STANDARD.encode(&pem_body(&public)[26..])
            ),
        ),
        ("trailing DER bytes", {
            let mut der = pem_body(&public);
            der.push(0);
            format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", STANDARD.encode(der))
        }),
        ("empty", String::new()),
    ];
    let mut trusted = TrustedAuthorities::new();
    for (what, pem) in &bad_public {
        assert!(matches!(trusted.add_public_key_pem(pem), Err(TokenError::BadKeyFile(_))), "{what}");
    }
    assert!(trusted.is_empty(), "nothing was trusted from a refused file");
}

#[test]
fn debug_and_errors_reveal_no_secrets() {
    let (key, trusted) = setup(1);
    let debug = format!("{key:?}");
    assert!(debug.contains("[redacted]"));
    let pem = key.to_pkcs8_pem();
    for line in pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!debug.contains(line));
        // No 8-character run of the private key's base64 shows up either.
        for window in line.as_bytes().windows(8) {
            assert!(!debug.contains(std::str::from_utf8(window).expect("ASCII")));
        }
    }
    let der = pem_body(&pem);
    let hex: String = der.iter().map(|b| format!("{b:02x}")).collect();
    for window in hex.as_bytes().windows(16) {
        assert!(!debug.contains(std::str::from_utf8(window).expect("ASCII")));
    }

    let token = issue(&key, Purpose::Declare, NOW, DAY);
    let verified = trusted.verify(&token, Purpose::Declare, NOW).expect("verifies");
    assert!(!format!("{verified:?}").contains(&verified.jti));
    assert!(!format!("{trusted:?}").contains("BEGIN"));

    // Error texts are fixed strings: nothing from the token appears in them.
    let errors = [
        trusted.verify(&token, Purpose::Reset, NOW),
        trusted.verify(&token, Purpose::Declare, NOW + DAY),
        trusted.verify(&format!("{token}x"), Purpose::Declare, NOW),
        trusted.verify(&token.replace('.', ":"), Purpose::Declare, NOW),
        TrustedAuthorities::new().verify(&token, Purpose::Declare, NOW),
        trusted.verify(
            &sign_raw(&key, &es256_header(&key), r#"{"jti":"SECRET-JTI"}"#),
            Purpose::Declare,
            NOW,
        ),
        trusted.verify(
            &sign_raw(&key, &es256_header(&key), &claims("SECRET-JTI", NOW, NOW + 60, "SECRET-PURPOSE")),
            Purpose::Declare,
            NOW,
        ),
    ];
    for result in errors {
        let text = result.expect_err("refused").to_string();
        for part in token.split('.') {
            assert!(!text.contains(part));
        }
        assert!(!text.contains(&key.kid()));
        assert!(!text.contains("SECRET"));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn verify_never_panics_on_arbitrary_strings(s in any::<String>()) {
        let (_, trusted) = setup(1);
        prop_assert!(trusted.verify(&s, Purpose::Declare, NOW).is_err());
    }

    #[test]
    fn verify_never_panics_on_token_shaped_strings(s in "[A-Za-z0-9_=.-]{0,400}") {
        let (_, trusted) = setup(1);
        prop_assert!(trusted.verify(&s, Purpose::Declare, NOW).is_err());
    }

    #[test]
    fn verify_never_panics_on_mutated_tokens(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        now in any::<u64>(),
    ) {
        let (key, trusted) = setup(1);
        let mut bytes = issue(&key, Purpose::Declare, NOW, DAY).into_bytes();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        let text = String::from_utf8_lossy(&bytes);
        let _ = trusted.verify(&text, Purpose::Declare, now);
    }

    /// Whatever a trusted authority signs, verify decides without panicking, and accepts only
    /// claims that pass every documented check.
    #[test]
    fn signed_arbitrary_claims_are_judged_by_the_rules(
        jti in prop_oneof![3 => "[!-~]{1,64}", 1 => "[ -~]{0,70}"],
        iat in prop_oneof![3 => NOW - DAY..NOW + DAY, 1 => any::<u64>()],
        lifetime in prop_oneof![3 => 0..MAX_LIFETIME_SECS + 2, 1 => any::<u64>()],
        now in prop_oneof![3 => NOW - DAY..NOW + DAY, 1 => any::<u64>()],
        purpose in prop_oneof![3 => "declare", 1 => "reset", 1 => ".*"],
    ) {
        let exp = iat.wrapping_add(lifetime);
        let (key, trusted) = setup(1);
        let body = serde_json::json!({"jti": jti, "iat": iat, "exp": exp, "purpose": purpose});
        let token = sign_raw(&key, &es256_header(&key), &body.to_string());
        let accepted = trusted.verify(&token, Purpose::Declare, now).is_ok();
        let should = !jti.is_empty()
            && jti.len() <= 64
            && !jti.contains(' ')
            && purpose == "declare"
            && exp > now
            && iat <= now.saturating_add(CLOCK_SKEW_SECS)
            && exp > iat
            && exp - iat <= MAX_LIFETIME_SECS;
        prop_assert_eq!(accepted, should);
    }
}
