//! Health-authority authorization tokens for declarations and status resets: the issuing side.
//!
//! The format, the verification ([`TrustedAuthorities::verify`]) and the errors live in
//! [`robert_proto::token`] (pure, fuzzed: fuzz target `token`) and are re-exported here, so
//! `robert_server::token::*` names everything. This module adds [`AuthorityKey`]: how an
//! authority key is made and stored and how a token is issued (offline, by
//! `robert authority issue`). The server only ever holds authorities' *public* keys.
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

pub use robert_proto::token::*;

use std::fmt;

use aws_lc_rs::agreement;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand_core::CryptoRng;
use zeroize::Zeroizing;

/// The only JWS algorithm issued.
const ALG: &str = "ES256";
/// Random bytes in an issued `jti` (128 bits).
const JTI_BYTES: usize = 16;
/// P-256 private scalar length.
const SCALAR_LEN: usize = 32;
/// Attempts at drawing an in-range P-256 scalar before declaring the RNG broken. One attempt fails
/// with probability below 2^-32, so 64 failures in a row mean the RNG is not random.
const MAX_SCALAR_ATTEMPTS: usize = 64;

/// A health authority's ES256 signing key (P-256).
///
/// Held only by the authority (`robert authority`), never by the server. `Debug` shows the `kid`
/// only; the PKCS#8 copy is zeroized on drop and aws-lc cleanses its own copy when freed.
pub struct AuthorityKey {
    pair: EcdsaKeyPair,
    pkcs8: Zeroizing<Vec<u8>>,
    spki: Vec<u8>,
    kid: String,
}

impl fmt::Debug for AuthorityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorityKey").field("kid", &self.kid).field("private_key", &"[redacted]").finish()
    }
}

impl AuthorityKey {
    /// Creates a key whose private scalar is drawn from `rng` (a seeded RNG gives the same key).
    ///
    /// The scalar is drawn by rejection sampling: 32 bytes, retried if not in `[1, n)`. aws-lc
    /// derives the public point from it (through its ECDH key type, which imports a raw scalar)
    /// and checks the pair.
    ///
    /// # Panics
    ///
    /// Only if `rng` produced 64 out-of-range scalars in a row (it is broken: each try fails with
    /// probability below 2^-32) or aws-lc fails internally (allocation failure).
    pub fn generate(rng: &mut impl CryptoRng) -> Self {
        let mut scalar = Zeroizing::new([0u8; SCALAR_LEN]);
        for _ in 0..MAX_SCALAR_ATTEMPTS {
            rng.fill_bytes(scalar.as_mut());
            // Rejects 0 and values >= n, and computes the public point.
            let Ok(ecdh) = agreement::PrivateKey::from_private_key(&agreement::ECDH_P256, &*scalar) else {
                continue;
            };
            let public =
                ecdh.compute_public_key().expect("aws-lc computes the public point of a valid P-256 scalar");
            let pair = EcdsaKeyPair::from_private_key_and_public_key(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                &*scalar,
                public.as_ref(),
            )
            .expect("a valid P-256 scalar and its own public point form a key pair");
            return Self::from_pair(pair).expect("aws-lc serializes a key pair it has just built");
        }
        panic!("the RNG produced {MAX_SCALAR_ATTEMPTS} out-of-range P-256 scalars in a row");
    }

    fn from_pair(pair: EcdsaKeyPair) -> Result<Self, TokenError> {
        let pkcs8 = Zeroizing::new(pair.to_pkcs8v1().map_err(|_| TokenError::Internal)?.as_ref().to_vec());
        let spki = pair.public_key().as_der().map_err(|_| TokenError::Internal)?.as_ref().to_vec();
        let kid = kid_of(&spki);
        Ok(Self { pair, pkcs8, spki, kid })
    }

    /// The private key as PKCS#8 v1 PEM (`-----BEGIN PRIVATE KEY-----`, 64-character lines).
    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        pem_encode(PRIVATE_KEY_LABEL, &self.pkcs8)
    }

    /// Loads a private key from PKCS#8 PEM (as written by [`to_pkcs8_pem`](Self::to_pkcs8_pem)
    /// or `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`).
    ///
    /// # Errors
    ///
    /// [`TokenError::BadKeyFile`] if the text is not exactly one `PRIVATE KEY` PEM block holding
    /// an unencrypted P-256 PKCS#8 key (SEC1 `EC PRIVATE KEY` files are refused: convert with
    /// `openssl pkcs8 -topk8 -nocrypt`).
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, TokenError> {
        let der = pem_decode(pem, PRIVATE_KEY_LABEL)?;
        if !is_single_der_sequence(&der) {
            return Err(TokenError::BadKeyFile("not a single DER structure"));
        }
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
            .map_err(|_| TokenError::BadKeyFile("not an unencrypted P-256 PKCS#8 key"))?;
        Self::from_pair(pair)
    }

    /// The public key as SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`), for the server's
    /// trust list.
    pub fn public_key_pem(&self) -> String {
        let pem = pem_encode(PUBLIC_KEY_LABEL, &self.spki);
        pem.as_str().to_owned()
    }

    /// The key id: base64url(SHA-256(SPKI DER)[..16]), 22 characters.
    pub fn kid(&self) -> String {
        self.kid.clone()
    }

    /// Issues a token for `purpose`, valid from `now_unix` (its `iat`) for `ttl_secs` seconds,
    /// with a fresh 128-bit `jti` drawn from `rng`.
    ///
    /// # Errors
    ///
    /// [`TokenError::BadLifetime`] if `ttl_secs` is 0, above [`MAX_LIFETIME_SECS`], or makes
    /// `exp` overflow; [`TokenError::Internal`] if aws-lc fails to sign.
    pub fn issue(
        &self,
        purpose: Purpose,
        now_unix: u64,
        ttl_secs: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<String, TokenError> {
        if ttl_secs == 0 || ttl_secs > MAX_LIFETIME_SECS {
            return Err(TokenError::BadLifetime);
        }
        let exp = now_unix.checked_add(ttl_secs).ok_or(TokenError::BadLifetime)?;
        let mut jti_bytes = [0u8; JTI_BYTES];
        rng.fill_bytes(&mut jti_bytes);
        let jti = URL_SAFE_NO_PAD.encode(jti_bytes);
        // Every interpolated value is a base64url string, an integer or a fixed word: no JSON
        // escaping is needed, and the field order is fixed.
        let header = format!(r#"{{"alg":"{ALG}","typ":"JWT","kid":"{}"}}"#, self.kid);
        let claims =
            format!(r#"{{"jti":"{jti}","iat":{now_unix},"exp":{exp},"purpose":"{}"}}"#, purpose.as_str());
        let mut token = URL_SAFE_NO_PAD.encode(header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(claims, &mut token);
        // aws-lc ignores this RNG argument (kept for ring compatibility) and draws nonces itself.
        let signature =
            self.pair.sign(&SystemRandom::new(), token.as_bytes()).map_err(|_| TokenError::Internal)?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut token);
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    /// An RNG that first yields a fixed block, then defers to ChaCha20.
    struct Scripted {
        first: Option<[u8; 32]>,
        rest: ChaCha20Rng,
    }

    impl rand_core::TryRng for Scripted {
        type Error = core::convert::Infallible;
        fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
            self.rest.try_next_u32()
        }
        fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
            self.rest.try_next_u64()
        }
        fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
            match self.first.take() {
                Some(block) if dst.len() == block.len() => {
                    dst.copy_from_slice(&block);
                    Ok(())
                }
                _ => self.rest.try_fill_bytes(dst),
            }
        }
    }
    impl rand_core::TryCryptoRng for Scripted {}

    #[test]
    fn out_of_range_scalars_are_redrawn() {
        for bad in [[0u8; 32], [0xff; 32]] {
            let mut scripted = Scripted { first: Some(bad), rest: ChaCha20Rng::seed_from_u64(7) };
            let key = AuthorityKey::generate(&mut scripted);
            let mut plain = ChaCha20Rng::seed_from_u64(7);
            // The bad block was discarded: the key is the one drawn from the seed directly.
            assert_eq!(key.kid(), AuthorityKey::generate(&mut plain).kid());
        }
    }

    #[test]
    fn seeded_generation_is_reproducible() {
        let a = AuthorityKey::generate(&mut ChaCha20Rng::seed_from_u64(1));
        let b = AuthorityKey::generate(&mut ChaCha20Rng::seed_from_u64(1));
        let c = AuthorityKey::generate(&mut ChaCha20Rng::seed_from_u64(2));
        assert_eq!(*a.to_pkcs8_pem(), *b.to_pkcs8_pem());
        assert_ne!(a.kid(), c.kid());
        assert_eq!(a.kid().len(), 22);
    }
}
