//! Health-authority authorization tokens: the verifying side (DESIGN §4 "Upload authorization").
//!
//! Moved here from `robert-server` so that the whole verification path (compact JWS parsing,
//! header and claims JSON, ES256 signature) is pure, testable and fuzzed without the server
//! (fuzz target `token`, `crate::fuzz_targets::token_verify`). The issuing side (`AuthorityKey`,
//! which draws ECDSA nonces inside aws-lc) stays in `robert_server::token`, which re-exports this
//! module. Everything takes the time as an argument: no clock, no RNG here.
//!
//!
//! The spec (§6.1, footnote 11) has a user who tests positive obtain an authorization from the
//! medical office before uploading their LocalProximityList; DESIGN §4 ("Upload authorization")
//! fixes its form. This module owns that token: how an authority key is made and stored, how a
//! token is issued (offline, by `robert authority issue`), and how the server checks one. The
//! server only ever holds authorities' *public* keys ([`TrustedAuthorities`]).
//!
//! # Format
//!
//! A token is a compact JWS (RFC 7515 §7.1), `B64(header) "." B64(claims) "." B64(signature)`,
//! where `B64` is base64url without padding (RFC 7515 §2; padded or non-canonical encodings are
//! refused).
//!
//! - Header: `{"alg":"ES256","typ":"JWT","kid":"…"}`. Only `ES256` is accepted, spelled exactly
//!   so (RFC 7518 §3.4: ECDSA on P-256 with SHA-256). The signature is the 64-byte fixed-width
//!   `r ‖ s`, never DER. `typ` may be absent, and must be `JWT` when present; a `crit` header is
//!   refused (we understand no extension); other header parameters are ignored (in particular
//!   `jwk`, `jku`, `x5u`, `x5c` are never followed: keys come only from [`TrustedAuthorities`]).
//! - Claims: `jti` (1–64 visible ASCII characters, unique per token; we issue 128 random bits in
//!   base64url), `iat` and `exp` (Unix seconds, JSON integers), `purpose` (`"declare"` or
//!   `"reset"`). Unknown claims are ignored; missing or mistyped ones are refused.
//! - `kid` = base64url of the first 16 bytes of SHA-256 over the key's SubjectPublicKeyInfo DER
//!   (the canonical, uncompressed-point encoding). It is derived from the public key, so neither
//!   side keeps a key-id table, and a token forged under another key's `kid` simply fails the
//!   signature check.
//!
//! # Verification order ([`TrustedAuthorities::verify`])
//!
//! 1. refuse tokens longer than [`MAX_TOKEN_LEN`] before any parsing;
//! 2. split into exactly three segments;
//! 3. decode the header; require `alg == "ES256"` and a known `kid`;
//! 4. verify the signature over the ASCII bytes `B64(header) "." B64(claims)` — *before* any
//!    claim is decoded or trusted;
//! 5. parse the claims strictly, then check `purpose` equals the expected one, `exp > now`,
//!    `iat <= now + `[`CLOCK_SKEW_SECS`], `0 < exp - iat <= `[`MAX_LIFETIME_SECS`].
//!
//! # What this module does not do
//!
//! **Single use of `jti` is the caller's job.** A verified token is returned as a
//! [`VerifiedToken`]; the server's storage must remember each used `jti` until its `exp` and
//! refuse a second use. The lifetime bound ([`MAX_LIFETIME_SECS`]) bounds how long that memory
//! must last. ECDSA signatures are malleable (`(r, n − s)` verifies too), so two different token
//! strings can carry the same claims: single use must be keyed on `jti`, never on the token text.
//!
//! **Errors are for logs and tests, not for peers.** [`TokenError`] variants are specific, but the
//! HTTP layer maps every one of them to the same uniform rejection (`403 {"error":"rejected"}`,
//! DESIGN §4 "Silent rejection"). No `Display` text contains the token, a claim value or key
//! material: every message is a fixed string.
//!
//! # Keys and secrets
//!
//! Private keys are PKCS#8 v1 in PEM (`-----BEGIN PRIVATE KEY-----`), public keys
//! SubjectPublicKeyInfo in PEM (`-----BEGIN PUBLIC KEY-----`) — the forms OpenSSL reads and
//! writes, so an authority may also use its own tooling. [`AuthorityKey`] keeps the key inside
//! aws-lc (which cleanses key memory when freeing it) plus a [`Zeroizing`] copy of its PKCS#8
//! encoding; its `Debug` prints only the `kid`. The private scalar is drawn from the caller's RNG,
//! so a seeded RNG gives a reproducible key; the ECDSA nonces are drawn inside aws-lc (hedged with
//! the key and message), so signatures are not reproducible — token *contents* are.

use std::collections::HashMap;
use std::fmt;

use aws_lc_rs::digest;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, ParsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::Deserialize;
use zeroize::{Zeroize, Zeroizing};

/// Longest token accepted, in bytes; longer ones are refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 2048;
/// How far in the future `iat` may be (issuer clock ahead of ours), in seconds.
pub const CLOCK_SKEW_SECS: u64 = 300;
/// Longest accepted token lifetime `exp - iat`, in seconds (30 days). This bounds how long the
/// server must remember a used `jti`.
pub const MAX_LIFETIME_SECS: u64 = 30 * 24 * 60 * 60;
/// Longest accepted `jti`, in characters (all visible ASCII, so also in bytes).
pub const MAX_JTI_LEN: usize = 64;

/// The only JWS algorithm accepted.
const ALG: &str = "ES256";
/// Bytes of SHA-256(SPKI) kept in a `kid`.
const KID_BYTES: usize = 16;
/// Fixed-width ES256 signature length (`r ‖ s`, RFC 7518 §3.4).
const SIGNATURE_LEN: usize = 64;
/// Largest PEM file accepted (a P-256 key is well under 1 KiB).
const MAX_PEM_LEN: usize = 16 * 1024;

/// The PEM label of a PKCS#8 private key.
pub const PRIVATE_KEY_LABEL: &str = "PRIVATE KEY";
/// The PEM label of a SubjectPublicKeyInfo public key.
pub const PUBLIC_KEY_LABEL: &str = "PUBLIC KEY";

/// What a token authorizes (the `purpose` claim).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// Upload a LocalProximityList after a positive test (`POST /api/v1/report`; spec §6.1).
    Declare,
    /// Reset the at-risk status after a negative test (`POST /api/v1/status/reset`; DESIGN §4).
    Reset,
}

impl Purpose {
    /// The claim value: `"declare"` or `"reset"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Declare => "declare",
            Purpose::Reset => "reset",
        }
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a token or key file was refused.
///
/// Variants are specific so logs and tests can tell the cases apart; the HTTP layer maps **all**
/// of them to one uniform rejection. `Display` is a fixed string per variant: it never contains
/// the token, a claim value or key material.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token is longer than [`MAX_TOKEN_LEN`].
    #[error("token exceeds the size limit")]
    TooLong,
    /// The token is not a well-formed compact JWS with the expected header and claims.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header's `alg` is missing or is not exactly `ES256`.
    #[error("unsupported token algorithm")]
    UnsupportedAlgorithm,
    /// The header has no `kid`, or names a key that is not trusted.
    #[error("token signed by an unknown key")]
    UnknownKey,
    /// The signature is not a valid 64-byte ES256 signature by the named key.
    #[error("bad token signature")]
    BadSignature,
    /// The token's `purpose` is not the one this request needs.
    #[error("token issued for another purpose")]
    WrongPurpose,
    /// `exp` is not after the current time.
    #[error("token expired")]
    Expired,
    /// `iat` is more than [`CLOCK_SKEW_SECS`] in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `exp - iat` is not in `1..=`[`MAX_LIFETIME_SECS`] (also returned by
    /// [`AuthorityKey::issue`] for such a TTL).
    #[error("token lifetime out of bounds")]
    BadLifetime,
    /// A key file could not be used.
    #[error("bad key file: {0}")]
    BadKeyFile(&'static str),
    /// The cryptographic library failed internally (not caused by the input).
    #[error("internal cryptographic failure")]
    Internal,
}

/// The health-authority public keys a server trusts, by `kid`.
#[derive(Default)]
pub struct TrustedAuthorities {
    keys: HashMap<String, ParsedPublicKey>,
}

impl fmt::Debug for TrustedAuthorities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        f.debug_struct("TrustedAuthorities").field("kids", &kids).finish()
    }
}

/// A token whose signature, purpose and validity window have been checked.
///
/// Its `jti` has **not** been checked for reuse: the caller must record it until `exp` and refuse
/// a second use. `Debug` omits the `jti` (it identifies the patient's authorization).
#[derive(Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The token's unique id (1–64 visible ASCII characters); single use is the caller's job.
    pub jti: String,
    /// Expiry, Unix seconds: how long the caller must remember `jti`.
    pub exp: u64,
    /// What the token authorizes (always the `expected` purpose passed to `verify`).
    pub purpose: Purpose,
}

impl fmt::Debug for VerifiedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedToken")
            .field("jti", &"[redacted]")
            .field("exp", &self.exp)
            .field("purpose", &self.purpose)
            .finish()
    }
}

/// The JOSE header fields we look at. Unknown fields are ignored; duplicated fields are refused
/// (serde's derive rejects duplicates).
#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
    kid: Option<String>,
    typ: Option<String>,
    crit: Option<serde::de::IgnoredAny>,
}

/// The claims, strictly typed: all four required, integers for times.
#[derive(Deserialize)]
struct Claims {
    jti: String,
    iat: u64,
    exp: u64,
    purpose: String,
}

impl TrustedAuthorities {
    /// An empty trust list (every token is refused with [`TokenError::UnknownKey`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts the public key in `pem` (SubjectPublicKeyInfo PEM of a P-256 key, uncompressed
    /// point, as written by [`AuthorityKey::public_key_pem`] or `openssl pkey -pubout`) and
    /// returns its `kid`. Adding the same key twice is harmless.
    ///
    /// # Errors
    ///
    /// [`TokenError::BadKeyFile`] if the text is not exactly one `PUBLIC KEY` PEM block holding
    /// the canonical SPKI DER of a P-256 key.
    pub fn add_public_key_pem(&mut self, pem: &str) -> Result<String, TokenError> {
        let der = pem_decode(pem, PUBLIC_KEY_LABEL)?;
        // aws-lc would also take a bare SEC1 point; a PEM "PUBLIC KEY" must be an SPKI SEQUENCE.
        if !is_single_der_sequence(&der) {
            return Err(TokenError::BadKeyFile("not a single DER structure"));
        }
        let key = ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &der[..])
            .map_err(|_| TokenError::BadKeyFile("not a P-256 public key"))?;
        // Only the canonical encoding, so that one key has exactly one kid.
        let canonical = key.as_der().map_err(|_| TokenError::Internal)?;
        if canonical.as_ref() != &der[..] {
            return Err(TokenError::BadKeyFile(
                "not the canonical uncompressed SubjectPublicKeyInfo encoding",
            ));
        }
        let kid = kid_of(&der);
        self.keys.insert(kid.clone(), key);
        Ok(kid)
    }

    /// Number of trusted keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks `token` for `expected` at time `now_unix` (Unix seconds), in the order given in the
    /// module docs. Does **not** check that the `jti` is unused: see [`VerifiedToken`].
    ///
    /// # Errors
    ///
    /// The first check that fails, as a [`TokenError`]; never panics on any input.
    pub fn verify(&self, token: &str, expected: Purpose, now_unix: u64) -> Result<VerifiedToken, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        let mut segments = token.split('.');
        let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
            (segments.next(), segments.next(), segments.next(), segments.next())
        else {
            return Err(TokenError::Malformed("not three segments"));
        };

        let header_json = URL_SAFE_NO_PAD
            .decode(header_b64)
            .map_err(|_| TokenError::Malformed("header is not base64url"))?;
        let header: Header = serde_json::from_slice(&header_json)
            .map_err(|_| TokenError::Malformed("header is not the expected JSON object"))?;
        if header.alg.as_deref() != Some(ALG) {
            return Err(TokenError::UnsupportedAlgorithm);
        }
        if header.crit.is_some() {
            return Err(TokenError::Malformed("critical header extensions unsupported"));
        }
        if header.typ.as_deref().is_some_and(|typ| typ != "JWT") {
            return Err(TokenError::Malformed("typ is not JWT"));
        }
        let key = header.kid.as_deref().and_then(|kid| self.keys.get(kid)).ok_or(TokenError::UnknownKey)?;

        let signature = URL_SAFE_NO_PAD.decode(signature_b64).map_err(|_| TokenError::BadSignature)?;
        if signature.len() != SIGNATURE_LEN {
            return Err(TokenError::BadSignature);
        }
        // The signing input is the token up to (not including) the second '.'.
        let signing_input = token
            .get(..header_b64.len() + 1 + claims_b64.len())
            .ok_or(TokenError::Malformed("not three segments"))?;
        key.verify_sig(signing_input.as_bytes(), &signature).map_err(|_| TokenError::BadSignature)?;

        // Only now is anything in the claims trusted.
        let claims_json = URL_SAFE_NO_PAD
            .decode(claims_b64)
            .map_err(|_| TokenError::Malformed("claims are not base64url"))?;
        let claims: Claims = serde_json::from_slice(&claims_json)
            .map_err(|_| TokenError::Malformed("claims are missing, mistyped or not JSON"))?;
        if claims.jti.is_empty()
            || claims.jti.len() > MAX_JTI_LEN
            || !claims.jti.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(TokenError::Malformed("jti is not 1 to 64 visible ASCII characters"));
        }
        if claims.purpose != expected.as_str() {
            return Err(TokenError::WrongPurpose);
        }
        if claims.exp <= now_unix {
            return Err(TokenError::Expired);
        }
        if claims.iat > now_unix.saturating_add(CLOCK_SKEW_SECS) {
            return Err(TokenError::NotYetValid);
        }
        match claims.exp.checked_sub(claims.iat) {
            Some(lifetime) if (1..=MAX_LIFETIME_SECS).contains(&lifetime) => {}
            _ => return Err(TokenError::BadLifetime),
        }
        Ok(VerifiedToken { jti: claims.jti, exp: claims.exp, purpose: expected })
    }
}

/// `kid` = base64url(SHA-256(SPKI DER)[..16]).
pub fn kid_of(spki_der: &[u8]) -> String {
    let hash = digest::digest(&digest::SHA256, spki_der);
    URL_SAFE_NO_PAD.encode(&hash.as_ref()[..KID_BYTES])
}

/// Whether `der` is exactly one DER SEQUENCE (tag, definite length, contents, nothing after).
/// aws-lc parses the contents; this refuses trailing bytes it might tolerate.
pub fn is_single_der_sequence(der: &[u8]) -> bool {
    let (header_len, content_len) = match der {
        [0x30, len @ 0x00..=0x7f, ..] => (2, usize::from(*len)),
        [0x30, 0x81, len @ 0x80..=0xff, ..] => (3, usize::from(*len)),
        [0x30, 0x82, hi @ 0x01..=0xff, lo, ..] => (4, usize::from(*hi) << 8 | usize::from(*lo)),
        _ => return false,
    };
    header_len + content_len == der.len()
}

/// PEM-encodes `der` (RFC 7468): standard base64 with padding, 64-character lines, `\n` endings.
///
/// The output is built in one allocation of the exact size, so no unzeroized copy of a secret
/// is left behind by a reallocation.
pub fn pem_encode(label: &str, der: &[u8]) -> Zeroizing<String> {
    const LINE_BYTES: usize = 48; // 48 bytes -> 64 base64 characters
    let boundaries_len = "-----BEGIN -----\n-----END -----\n".len() + 2 * label.len();
    let lines = der.len().div_ceil(LINE_BYTES);
    let body_len = der.len().div_ceil(3) * 4 + lines;
    let mut out = Zeroizing::new(String::with_capacity(boundaries_len + body_len));
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    let mut line = [0u8; 64];
    for chunk in der.chunks(LINE_BYTES) {
        // A 48-byte chunk encodes to exactly 64 characters, so the buffer always suffices.
        let n = STANDARD.encode_slice(chunk, &mut line).expect("48 bytes encode to 64 base64 characters");
        out.push_str(std::str::from_utf8(&line[..n]).expect("base64 output is ASCII"));
        out.push('\n');
    }
    line.zeroize();
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// Decodes the single PEM block labelled `label` in `pem`.
///
/// Text outside the block is ignored (RFC 7468 §2); a second `-----BEGIN` line, another label,
/// encapsulated headers (encrypted legacy PEM), a missing end line or invalid base64 (padding
/// must be canonical) are refused.
pub fn pem_decode(pem: &str, label: &str) -> Result<Zeroizing<Vec<u8>>, TokenError> {
    if pem.len() > MAX_PEM_LEN {
        return Err(TokenError::BadKeyFile("file too large"));
    }
    let mut body = Zeroizing::new(String::with_capacity(pem.len()));
    // None: before the block; Some(false): inside; Some(true): after the end line.
    let mut state: Option<bool> = None;
    for line in pem.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("-----BEGIN ") {
            if state.is_some() {
                return Err(TokenError::BadKeyFile("more than one PEM block"));
            }
            if rest.strip_suffix("-----") != Some(label) {
                return Err(TokenError::BadKeyFile(if label == PRIVATE_KEY_LABEL {
                    "not a PKCS#8 \"PRIVATE KEY\" PEM block"
                } else {
                    "not a \"PUBLIC KEY\" PEM block"
                }));
            }
            state = Some(false);
        } else if state == Some(false) {
            if let Some(rest) = line.strip_prefix("-----END ") {
                if rest.strip_suffix("-----") != Some(label) {
                    return Err(TokenError::BadKeyFile("PEM end line does not match"));
                }
                state = Some(true);
            } else {
                body.push_str(line);
            }
        }
    }
    match state {
        None => return Err(TokenError::BadKeyFile("no PEM block")),
        Some(false) => return Err(TokenError::BadKeyFile("PEM block not terminated")),
        Some(true) => {}
    }
    let der = STANDARD
        .decode(body.as_bytes())
        .map_err(|_| TokenError::BadKeyFile("PEM body is not valid base64"))?;
    Ok(Zeroizing::new(der))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_sequence_framing() {
        assert!(is_single_der_sequence(&[0x30, 0x00]));
        assert!(is_single_der_sequence(&[0x30, 0x01, 0x05]));
        assert!(!is_single_der_sequence(&[0x30, 0x01, 0x05, 0x00]));
        assert!(!is_single_der_sequence(&[0x30, 0x02, 0x05]));
        assert!(!is_single_der_sequence(&[0x04, 0x00]));
        assert!(!is_single_der_sequence(&[]));
        // Non-minimal long form is not DER.
        assert!(!is_single_der_sequence(&[0x30, 0x81, 0x01, 0x05]));
        let mut long = vec![0x30, 0x82, 0x01, 0x00];
        long.resize(4 + 256, 0);
        assert!(is_single_der_sequence(&long));
    }

    #[test]
    fn pem_lines_are_64_characters_and_round_trip() {
        let der: Vec<u8> = (0u8..=200).collect();
        let pem = pem_encode("TEST", &der);
        let lines: Vec<&str> = pem.lines().collect();
        assert_eq!(lines.first(), Some(&"-----BEGIN TEST-----"));
        assert_eq!(lines.last(), Some(&"-----END TEST-----"));
        let body = &lines[1..lines.len() - 1];
        assert!(body[..body.len() - 1].iter().all(|l| l.len() == 64));
        assert!(body.last().is_some_and(|l| l.len() <= 64));
        // Exact-capacity build: no reallocation happened.
        assert_eq!(pem.len(), pem.capacity());
        let back = pem_decode(&pem, "TEST").expect("own PEM decodes");
        assert_eq!(&back[..], &der[..]);
        // CRLF line endings and surrounding text are tolerated.
        let crlf = format!("comment\r\n{}\r\n", pem.replace('\n', "\r\n"));
        assert_eq!(&pem_decode(&crlf, "TEST").expect("CRLF PEM decodes")[..], &der[..]);
    }

    #[test]
    fn pem_refusals() {
        let pem = pem_encode("TEST", b"abc");
        assert!(pem_decode(&pem, "OTHER").is_err());
        assert!(pem_decode("", "TEST").is_err());
        let unterminated = pem.replace("-----END TEST-----", "");
        assert!(pem_decode(&unterminated, "TEST").is_err());
        let twice = format!("{}{}", pem.as_str(), pem.as_str());
        assert!(pem_decode(&twice, "TEST").is_err());
        let bad_b64 = pem.replace("YWJj", "YW*j");
        assert!(pem_decode(&bad_b64, "TEST").is_err());
        let huge = "A".repeat(MAX_PEM_LEN + 1);
        assert!(pem_decode(&huge, "TEST").is_err());
    }
}
