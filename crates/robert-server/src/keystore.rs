//! The server's secrets (§3.1): K_G, the registration key pair (sk_S, pk_S), the key-encryption
//! key (KEK) that wraps every K_auth / K_enc at rest, and each UTC day's K_S.
//!
//! This is the only module that touches the server's long-term key material. Where the keys live
//! and where the operations on them run is one trait, [`KeyStore`], with two backends:
//!
//! * **files** ([`FileKeyStore`], the default, for development): the long-term keys are hex text
//!   files (mode 0600) in the key directory, operations run in this process (aws-lc-rs);
//! * **pkcs11** ([`pkcs11::ModuleKeyStore`], production): a security module (Annex B) holds sk_S
//!   and the KEK as non-extractable keys and runs ECDH and AES-GCM inside; it creates and destroys
//!   K_G and the day keys (see [`pkcs11`] for what leaves the module and why).
//!
//! [`ServerSecrets`] is what the service holds, whatever the backend: [`Registration`] (pk_S,
//! §3.3 agreement) and [`Kek`] (wrapping) are handles onto the same store. Both backends produce
//! the same bytes: the same K_auth / K_enc for the same sk_S and App key, the same wrapped format
//! (`nonce ‖ AES-256-GCM ‖ tag`, [`WRAPPED_SESSION_KEYS_LEN`]).
//!
//! Each day's K_S is made by the backend, stored wrapped under the KEK in the database (so every
//! replica and every restart uses the same one), kept CT days after its day, then destroyed
//! (footnote 5), in memory, in storage and, for pkcs11, in the module.

pub mod pkcs11;

use crate::storage::Storage;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use robert_proto::secret::SecretBytes;
use robert_proto::{
    EbidCipher, FederationKey, KAuth, KEnc, PublicKey, ServerKey, ServerKeyPair, SessionKeys,
};
use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use zeroize::Zeroizing;

/// File names in a key directory.
pub const FEDERATION_KEY_FILE: &str = "federation-key.hex";
/// sk_S, the registration private scalar.
pub const REGISTRATION_KEY_FILE: &str = "registration-key.hex";
/// pk_S, SEC1 uncompressed, for apps to pin (not secret).
pub const REGISTRATION_PUBLIC_FILE: &str = "registration-public.hex";
/// The key-encryption key.
pub const KEK_FILE: &str = "kek.hex";
/// The Ed25519 seed that signs this server's federation batches (§8; `docs/federation.md`).
pub const FEDERATION_SIGNING_KEY_FILE: &str = "federation-signing-key.hex";
/// Its public key (not secret): peers list it in their `[[federation.peers]]`.
pub const FEDERATION_SIGNING_PUBLIC_FILE: &str = "federation-signing-public.hex";

/// Key-store errors. Never carry key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key file does not hold a valid key.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the content).
        reason: &'static str,
    },
    /// `keygen` would overwrite existing keys.
    #[error("{0} already exists: refusing to overwrite server keys")]
    Exists(PathBuf),
    /// A wrapped value does not unwrap (wrong KEK, or tampered).
    #[error("wrapped key does not verify under the key-encryption key")]
    Unwrap,
    /// Storage failed while handling day keys.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// The security module (PKCS#11) failed or refused: no module, no token, wrong PIN, missing
    /// object, a mechanism error. The text names labels and PKCS#11 return codes, never a value.
    #[error("security module: {0}")]
    Module(String),
}

/// Where the server's long-term keys live and where the operations on them run (§3.1, §3.3,
/// Annex B). Implementations: [`FileKeyStore`] (key files, operations in this process) and
/// [`pkcs11::ModuleKeyStore`] (a PKCS#11 security module).
///
/// Contract, for every backend: `agree` returns `SessionKeys::derive` of the P-256 x-coordinate
/// (§3.3), so both backends give identical K_auth / K_enc for the same sk_S; `kek_seal` is
/// AES-256-GCM with a 128-bit tag appended, `kek_open` its inverse, failing with
/// [`KeyError::Unwrap`] (and nothing else) when the tag does not verify.
pub trait KeyStore: Send + Sync + fmt::Debug {
    /// `"files"` or `"pkcs11"` (for the audit log and operators).
    fn backend(&self) -> &'static str;
    /// pk_S, which Apps pin.
    fn server_public_key(&self) -> &PublicKey;
    /// Server side of §3.3: `sk_S · pke_A`, then the derivation of K_auth and K_enc.
    fn agree(&self, client: &PublicKey) -> Result<SessionKeys, KeyError>;
    /// AES-256-GCM under the KEK: `ciphertext ‖ tag`.
    fn kek_seal(&self, nonce: &[u8; NONCE_LEN], plain: &[u8], aad: &[u8]) -> Result<Vec<u8>, KeyError>;
    /// Inverse of [`KeyStore::kek_seal`].
    fn kek_open(
        &self,
        nonce: &[u8; NONCE_LEN],
        sealed: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError>;
    /// A fresh K_S for UTC day `day` (§3.1 footnote 5), and the backend's handle on its copy.
    fn create_day_key(&self, day: u32) -> Result<(ServerKey, DayKeyObject), KeyError>;
    /// Destroys the backend's copy of a day key made by [`KeyStore::create_day_key`] that did not
    /// become the day's key (another replica stored one first).
    fn discard_day_key(&self, object: DayKeyObject) -> Result<(), KeyError>;
    /// Destroys the backend's copies of the keys of days before `day`; returns how many.
    fn destroy_day_keys_before(&self, day: u32) -> Result<usize, KeyError>;
}

/// A backend's handle on a day key it created (opaque; nothing for the file backend).
#[derive(Debug)]
pub struct DayKeyObject(Option<[u8; 16]>);

/// Writes fresh K_G (AES-256), sk_S, KEK and the federation signing key into `dir` (created if
/// needed, files mode 0600). Refuses to overwrite: losing these keys loses every registration.
pub fn keygen(dir: &Path, rng: &mut (impl rand_core::CryptoRng + ?Sized)) -> Result<(), KeyError> {
    std::fs::create_dir_all(dir).map_err(|source| KeyError::Io { path: dir.to_owned(), source })?;
    for f in [FEDERATION_KEY_FILE, REGISTRATION_KEY_FILE, KEK_FILE, FEDERATION_SIGNING_KEY_FILE] {
        let p = dir.join(f);
        if p.exists() {
            return Err(KeyError::Exists(p));
        }
    }
    let kg = SecretBytes::<32>::random(rng);
    let kek = SecretBytes::<32>::random(rng);
    let pair = ServerKeyPair::generate(rng);
    write_secret(&dir.join(FEDERATION_KEY_FILE), kg.expose_secret())?;
    write_secret(&dir.join(KEK_FILE), kek.expose_secret())?;
    write_secret(&dir.join(REGISTRATION_KEY_FILE), pair.to_scalar().expose_secret())?;
    let public = dir.join(REGISTRATION_PUBLIC_FILE);
    std::fs::write(&public, format!("{}\n", hex::encode(pair.public_key().as_bytes())))
        .map_err(|source| KeyError::Io { path: public, source })?;
    keygen_federation_signing(dir, rng)?;
    // Annex B: key creation, in the key directory's own audit log (the server's log lives in its
    // data directory, which may not exist yet). Public fingerprints only.
    let audit = crate::audit::AuditLog::open(&dir.join(KEYGEN_AUDIT_FILE))
        .map_err(|e| KeyError::Io { path: dir.join(KEYGEN_AUDIT_FILE), source: std::io::Error::other(e) })?;
    audit.append(
        "keys-created",
        &[
            ("keys", serde_json::json!(["K_G", "sk_S", "KEK", "federation-signing"])),
            (
                "server_key_sha256",
                serde_json::json!(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                    pair.public_key().as_bytes()
                ))),
            ),
        ],
    );
    Ok(())
}

/// `robert keygen --pkcs11`: creates the long-term keys inside the token (or imports a key
/// directory's, [`pkcs11::Provision::FromDir`]), then writes into `dir` the public files other
/// tools need (pk_S, the federation signing public key) and records the creation in `dir`'s
/// audit log. Refuses to overwrite keys in the token or public files in `dir`.
pub fn keygen_pkcs11(
    dir: &Path,
    settings: &pkcs11::Pkcs11Settings,
    pin: &pkcs11::Pin,
    source: pkcs11::Provision<'_>,
) -> Result<(), KeyError> {
    std::fs::create_dir_all(dir).map_err(|source| KeyError::Io { path: dir.to_owned(), source })?;
    for f in [REGISTRATION_PUBLIC_FILE, FEDERATION_SIGNING_PUBLIC_FILE] {
        let p = dir.join(f);
        if p.exists() {
            return Err(KeyError::Exists(p));
        }
    }
    let imported = matches!(source, pkcs11::Provision::FromDir(_));
    let token = pkcs11::Token::open(settings, pin)?;
    let made = pkcs11::provision(&token, source)?;
    let public = dir.join(REGISTRATION_PUBLIC_FILE);
    std::fs::write(&public, format!("{}\n", hex::encode(made.server_public.as_bytes())))
        .map_err(|source| KeyError::Io { path: public, source })?;
    let public = dir.join(FEDERATION_SIGNING_PUBLIC_FILE);
    std::fs::write(&public, format!("{}\n", hex::encode(made.federation_signing_public)))
        .map_err(|source| KeyError::Io { path: public, source })?;
    let audit = crate::audit::AuditLog::open(&dir.join(KEYGEN_AUDIT_FILE))
        .map_err(|e| KeyError::Io { path: dir.join(KEYGEN_AUDIT_FILE), source: std::io::Error::other(e) })?;
    audit.append(
        "keys-created",
        &[
            ("keys", serde_json::json!(["K_G", "sk_S", "KEK", "K_challenge", "federation-signing"])),
            ("keystore", serde_json::json!("pkcs11")),
            ("imported", serde_json::json!(if imported { vec!["K_G", "sk_S", "KEK"] } else { vec![] })),
            (
                "server_key_sha256",
                serde_json::json!(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                    made.server_public.as_bytes()
                ))),
            ),
        ],
    );
    Ok(())
}

/// The key directory's audit log (hash-chained, `crate::audit`): `robert keygen` records there.
pub const KEYGEN_AUDIT_FILE: &str = "keygen-audit.log";

/// Writes a fresh federation signing key (Ed25519 seed, mode 0600) and its public key into `dir`
/// (§8). Refuses to overwrite. `robert keygen` calls it; on its own it equips a key directory made
/// before federation existed (`robert keygen --dir D --federation-only`).
pub fn keygen_federation_signing(
    dir: &Path,
    rng: &mut (impl rand_core::CryptoRng + ?Sized),
) -> Result<(), KeyError> {
    std::fs::create_dir_all(dir).map_err(|source| KeyError::Io { path: dir.to_owned(), source })?;
    let path = dir.join(FEDERATION_SIGNING_KEY_FILE);
    if path.exists() {
        return Err(KeyError::Exists(path));
    }
    let seed = SecretBytes::<32>::random(rng);
    let key = BatchSigningKey::from_seed(seed.expose_secret())
        .ok_or(KeyError::Invalid { path: path.clone(), reason: "Ed25519 seed rejected" })?;
    write_secret(&path, seed.expose_secret())?;
    let public = dir.join(FEDERATION_SIGNING_PUBLIC_FILE);
    std::fs::write(&public, format!("{}\n", hex::encode(key.public_key())))
        .map_err(|source| KeyError::Io { path: public, source })?;
    Ok(())
}

/// This server's federation signing key (§8): Ed25519 (aws-lc-rs), signing outbound batches.
/// The seed lives only inside AWS-LC (freed and cleansed with the key); `Debug` prints nothing of it.
///
/// With the pkcs11 backend the key is in the module and each batch is signed there (`CKM_EDDSA`).
pub struct BatchSigningKey {
    inner: SigningInner,
}

enum SigningInner {
    File(aws_lc_rs::signature::Ed25519KeyPair),
    Module(pkcs11::ModuleSigningKey),
}

impl BatchSigningKey {
    fn from_seed(seed: &[u8]) -> Option<Self> {
        aws_lc_rs::signature::Ed25519KeyPair::from_seed_unchecked(seed)
            .ok()
            .map(|pair| Self { inner: SigningInner::File(pair) })
    }

    /// Loads `dir/federation-signing-key.hex`; `Ok(None)` if the file does not exist.
    pub fn load(dir: &Path) -> Result<Option<Self>, KeyError> {
        let path = dir.join(FEDERATION_SIGNING_KEY_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let seed = read_secret(&path)?;
        if seed.len() != 32 {
            return Err(KeyError::Invalid { path, reason: "the federation signing key must be 32 bytes" });
        }
        Self::from_seed(&seed).map(Some).ok_or(KeyError::Invalid { path, reason: "Ed25519 seed rejected" })
    }

    /// Signs `message` (a whole encoded batch). If the security module fails, the failure is
    /// logged and the signature is all zeros: the peer refuses it and the batch is delivered
    /// again on the next attempt (nothing is lost; the sender keeps it until acknowledged).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        match &self.inner {
            SigningInner::File(pair) => {
                let mut out = [0u8; 64];
                out.copy_from_slice(pair.sign(message).as_ref());
                out
            }
            SigningInner::Module(key) => key.sign(message).unwrap_or_else(|e| {
                tracing::error!(error = %e, "federation batch signing failed in the security module");
                [0u8; 64]
            }),
        }
    }

    /// The public key, 32 bytes (RFC 8032 encoding).
    pub fn public_key(&self) -> [u8; 32] {
        match &self.inner {
            SigningInner::File(pair) => {
                use aws_lc_rs::signature::KeyPair;
                let mut out = [0u8; 32];
                out.copy_from_slice(pair.public_key().as_ref());
                out
            }
            SigningInner::Module(key) => key.public_key(),
        }
    }
}

impl fmt::Debug for BatchSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BatchSigningKey([redacted])")
    }
}

fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let io = |source| KeyError::Io { path: path.to_owned(), source };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io)?;
    let text = Zeroizing::new(format!("{}\n", hex::encode(bytes)));
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

fn read_secret(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|source| KeyError::Io { path: path.to_owned(), source })?,
    );
    hex::decode(text.trim())
        .map(Zeroizing::new)
        .map_err(|_| KeyError::Invalid { path: path.to_owned(), reason: "not hex" })
}

/// The long-term keys of a key directory, read (for [`FileKeyStore`] and for importing them into
/// a security module).
pub(crate) struct FileSecrets {
    pub(crate) kg: Zeroizing<Vec<u8>>,
    pub(crate) kek: Zeroizing<Vec<u8>>,
    pub(crate) scalar: SecretBytes<32>,
    pub(crate) pair: ServerKeyPair,
}

impl FileSecrets {
    pub(crate) fn read(dir: &Path) -> Result<Self, KeyError> {
        let invalid = |f: &str, reason| KeyError::Invalid { path: dir.join(f), reason };
        let kg = read_secret(&dir.join(FEDERATION_KEY_FILE))?;
        FederationKey::new(&kg)
            .map_err(|_| invalid(FEDERATION_KEY_FILE, "K_G must be 16, 24 or 32 bytes"))?;
        let sk = read_secret(&dir.join(REGISTRATION_KEY_FILE))?;
        let scalar = SecretBytes::<32>::from_slice("sk_S", &sk)
            .map_err(|_| invalid(REGISTRATION_KEY_FILE, "sk_S must be 32 bytes"))?;
        let pair = ServerKeyPair::from_scalar(&scalar)
            .map_err(|_| invalid(REGISTRATION_KEY_FILE, "sk_S is not a valid P-256 scalar"))?;
        let kek = read_secret(&dir.join(KEK_FILE))?;
        if kek.len() != 32 {
            return Err(invalid(KEK_FILE, "the KEK must be 32 bytes"));
        }
        Ok(Self { kg, kek, scalar, pair })
    }
}

/// True if `dir` holds a complete set of server keys.
pub fn keys_exist(dir: &Path) -> bool {
    [FEDERATION_KEY_FILE, REGISTRATION_KEY_FILE, KEK_FILE].iter().all(|f| dir.join(f).exists())
}

/// The file backend: sk_S and the KEK from the key directory, operations in this process.
pub struct FileKeyStore {
    pair: ServerKeyPair,
    kek: LessSafeKey,
}

impl FileKeyStore {
    fn new(pair: ServerKeyPair, kek: &[u8]) -> Option<Self> {
        UnboundKey::new(&AES_256_GCM, kek).ok().map(|k| Self { pair, kek: LessSafeKey::new(k) })
    }
}

impl fmt::Debug for FileKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FileKeyStore([redacted])")
    }
}

impl KeyStore for FileKeyStore {
    fn backend(&self) -> &'static str {
        "files"
    }

    fn server_public_key(&self) -> &PublicKey {
        self.pair.public_key()
    }

    fn agree(&self, client: &PublicKey) -> Result<SessionKeys, KeyError> {
        Ok(self.pair.agree(client))
    }

    fn kek_seal(&self, nonce: &[u8; NONCE_LEN], plain: &[u8], aad: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut body = plain.to_vec();
        self.kek
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), &mut body)
            .map_err(|_| KeyError::Module("AES-GCM sealing failed".into()))?;
        Ok(body)
    }

    fn kek_open(
        &self,
        nonce: &[u8; NONCE_LEN],
        sealed: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let mut buf = Zeroizing::new(sealed.to_vec());
        let len = self
            .kek
            .open_in_place(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), &mut buf)
            .map_err(|_| KeyError::Unwrap)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }

    fn create_day_key(&self, _day: u32) -> Result<(ServerKey, DayKeyObject), KeyError> {
        Ok((ServerKey::new(rand::random()), DayKeyObject(None)))
    }

    fn discard_day_key(&self, _object: DayKeyObject) -> Result<(), KeyError> {
        Ok(())
    }

    fn destroy_day_keys_before(&self, _day: u32) -> Result<usize, KeyError> {
        // The file backend keeps no copy of a day key: storage holds the wrapped one.
        Ok(0)
    }
}

/// The key-encryption key, wherever it lives: AES-256-GCM, random 96-bit nonce, the owner's
/// identity as associated data (so a wrapped value cannot be moved to another row).
#[derive(Clone)]
pub struct Kek {
    store: Arc<dyn KeyStore>,
}

/// Length of what [`Kek::wrap_session_keys`] returns: nonce ‖ K_auth ‖ K_enc encrypted ‖ tag.
pub const WRAPPED_SESSION_KEYS_LEN: usize = NONCE_LEN + 64 + 16;

impl Kek {
    /// The KEK of `store`.
    pub fn of(store: Arc<dyn KeyStore>) -> Self {
        Self { store }
    }

    /// The key store behind this KEK.
    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.store
    }

    /// `nonce ‖ ciphertext ‖ tag`.
    pub fn wrap(&self, plain: &[u8], aad: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce[..]);
        let mut body = self.store.kek_seal(&nonce, plain, aad)?;
        let mut out = Vec::with_capacity(NONCE_LEN + body.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        zeroize::Zeroize::zeroize(&mut body);
        Ok(out)
    }

    /// Inverse of [`Kek::wrap`].
    pub fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        if wrapped.len() < NONCE_LEN + 16 {
            return Err(KeyError::Unwrap);
        }
        let (nonce, rest) = wrapped.split_at(NONCE_LEN);
        let nonce: &[u8; NONCE_LEN] = nonce.try_into().map_err(|_| KeyError::Unwrap)?;
        self.store.kek_open(nonce, rest, aad)
    }

    /// Wraps an App's K_auth ‖ K_enc for the IDTable row of `id_bytes`.
    pub fn wrap_session_keys(&self, keys: &SessionKeys, id_bytes: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut plain = Zeroizing::new([0u8; 64]);
        plain[..32].copy_from_slice(keys.k_auth.expose_secret());
        plain[32..].copy_from_slice(keys.k_enc.expose_secret());
        self.wrap(&plain[..], id_bytes)
    }

    /// Unwraps what [`Kek::wrap_session_keys`] made.
    pub fn unwrap_session_keys(&self, wrapped: &[u8], id_bytes: &[u8]) -> Result<SessionKeys, KeyError> {
        let plain = self.unwrap(wrapped, id_bytes)?;
        if plain.len() != 64 {
            return Err(KeyError::Unwrap);
        }
        Ok(SessionKeys {
            k_auth: KAuth::from_slice(&plain[..32]).map_err(|_| KeyError::Unwrap)?,
            k_enc: KEnc::from_slice(&plain[32..]).map_err(|_| KeyError::Unwrap)?,
        })
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kek([redacted])")
    }
}

/// The registration key pair (sk_S, pk_S), wherever sk_S lives (§3.1, §3.3).
#[derive(Clone)]
pub struct Registration {
    store: Arc<dyn KeyStore>,
}

impl Registration {
    /// pk_S, which Apps pin.
    pub fn public_key(&self) -> &PublicKey {
        self.store.server_public_key()
    }

    /// Server side of §3.3: `sk_S · pke_A`, then the derivation.
    pub fn agree(&self, client_public: &PublicKey) -> Result<SessionKeys, KeyError> {
        self.store.agree(client_public)
    }
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Registration([redacted])")
    }
}

/// The long-term secrets of a running server.
pub struct ServerSecrets {
    /// K_G (in memory for the hot path, whatever the backend: see [`pkcs11`]).
    pub federation: FederationKey,
    /// (sk_S, pk_S).
    pub registration: Registration,
    /// The key-encryption key.
    pub kek: Kek,
    /// Keys the proof-of-work challenges' MAC (derived from the KEK for files, from the module's
    /// challenge key for pkcs11, so replicas agree).
    pub challenge_key: aws_lc_rs::hmac::Key,
    /// Signs outbound federation batches (§8); `None` in a key directory made before federation
    /// (a server with peers then refuses to start).
    pub federation_signing: Option<BatchSigningKey>,
}

impl ServerSecrets {
    /// Loads the key files of `dir` (the file backend).
    pub fn load(dir: &Path) -> Result<Self, KeyError> {
        let files = FileSecrets::read(dir)?;
        let federation = FederationKey::new(&files.kg).map_err(|_| KeyError::Invalid {
            path: dir.join(FEDERATION_KEY_FILE),
            reason: "K_G must be 16, 24 or 32 bytes",
        })?;
        let derived = Zeroizing::new(hmac_sha256(&files.kek, pkcs11::CHALLENGE_LABEL));
        let challenge_key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &derived[..]);
        let store: Arc<dyn KeyStore> = Arc::new(
            FileKeyStore::new(files.pair, &files.kek)
                .ok_or(KeyError::Invalid { path: dir.join(KEK_FILE), reason: "the KEK must be 32 bytes" })?,
        );
        let federation_signing = BatchSigningKey::load(dir)?;
        Ok(Self::assemble(federation, store, challenge_key, federation_signing))
    }

    /// Opens the server's keys in a provisioned PKCS#11 token (`robert keygen --pkcs11`).
    pub fn load_pkcs11(settings: &pkcs11::Pkcs11Settings, pin: &pkcs11::Pin) -> Result<Self, KeyError> {
        let token = pkcs11::Token::open(settings, pin)?;
        let kg = pkcs11::read_federation_key(&token)?;
        let federation =
            FederationKey::new(&kg).map_err(|_| KeyError::Module("robert K_G is not an AES key".into()))?;
        let challenge = pkcs11::derive_challenge_key(&token)?;
        let challenge_key =
            aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, challenge.expose_secret());
        let signing = pkcs11::ModuleSigningKey::new(token.clone())?;
        let store: Arc<dyn KeyStore> = Arc::new(pkcs11::ModuleKeyStore::new(token)?);
        Ok(Self::assemble(
            federation,
            store,
            challenge_key,
            Some(BatchSigningKey { inner: SigningInner::Module(signing) }),
        ))
    }

    fn assemble(
        federation: FederationKey,
        store: Arc<dyn KeyStore>,
        challenge_key: aws_lc_rs::hmac::Key,
        federation_signing: Option<BatchSigningKey>,
    ) -> Self {
        Self {
            federation,
            registration: Registration { store: store.clone() },
            kek: Kek { store },
            challenge_key,
            federation_signing,
        }
    }

    /// The key store backend in use (`"files"` or `"pkcs11"`).
    pub fn backend(&self) -> &'static str {
        self.kek.store.backend()
    }
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    let tag = aws_lc_rs::hmac::sign(&k, msg);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

impl fmt::Debug for ServerSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerSecrets([redacted])")
    }
}

/// Each UTC day's K_S (§3.1 footnote 5), expanded for SKINNY, cached in memory, persisted wrapped.
pub struct DayKeys {
    cache: RwLock<BTreeMap<u32, Arc<EbidCipher>>>,
    /// Where key creation is recorded (Annex B), once attached.
    audit: std::sync::OnceLock<Arc<crate::audit::AuditLog>>,
    /// The key store that makes and destroys the keys.
    kek: Kek,
}

/// The associated data that binds a wrapped day key to its day.
fn day_aad(day: u32) -> [u8; 8] {
    let mut aad = *b"K_S\0\0\0\0\0";
    aad[4..].copy_from_slice(&day.to_be_bytes());
    aad
}

impl DayKeys {
    /// Loads every stored day key.
    pub async fn load(storage: &impl Storage, kek: &Kek) -> Result<Self, KeyError> {
        let mut map = BTreeMap::new();
        for (day, wrapped) in storage.server_keys().await? {
            map.insert(day, Arc::new(Self::expand(kek, day, &wrapped)?));
        }
        Ok(Self { cache: RwLock::new(map), audit: std::sync::OnceLock::new(), kek: kek.clone() })
    }

    /// Records every day key this instance creates from now on in `audit` (Annex B).
    pub fn attach_audit(&self, audit: Arc<crate::audit::AuditLog>) {
        let _ = self.audit.set(audit);
    }

    fn expand(kek: &Kek, day: u32, wrapped: &[u8]) -> Result<EbidCipher, KeyError> {
        let plain = kek.unwrap(wrapped, &day_aad(day))?;
        let key = ServerKey::from_slice(&plain).map_err(|_| KeyError::Unwrap)?;
        Ok(EbidCipher::new(&key))
    }

    /// Loads the stored day keys this instance does not hold yet (another replica may have created
    /// them). Returns how many were added.
    pub async fn refresh(&self, storage: &impl Storage, kek: &Kek) -> Result<usize, KeyError> {
        let known = self.days();
        let mut added = Vec::new();
        for (day, wrapped) in storage.server_keys().await? {
            if !known.contains(&day) {
                added.push((day, Arc::new(Self::expand(kek, day, &wrapped)?)));
            }
        }
        let n = added.len();
        let mut cache = self.cache.write().expect("day-key lock is never poisoned: no panics inside");
        for (day, cipher) in added {
            cache.entry(day).or_insert(cipher);
        }
        Ok(n)
    }

    /// The cipher of `day` if it exists (decryption never creates a key).
    pub fn get(&self, day: u32) -> Option<Arc<EbidCipher>> {
        self.cache.read().expect("day-key lock is never poisoned: no panics inside").get(&day).cloned()
    }

    /// The cipher of `day`, creating (fresh, random) and persisting the key if the day has none.
    /// Replicas racing to create the same day agree on the one stored first.
    pub async fn get_or_create(
        &self,
        day: u32,
        storage: &impl Storage,
        kek: &Kek,
    ) -> Result<Arc<EbidCipher>, KeyError> {
        if let Some(c) = self.get(day) {
            return Ok(c);
        }
        let (fresh, object) = kek.store.create_day_key(day)?;
        let wrapped = kek.wrap(fresh.expose_secret(), &day_aad(day));
        drop(fresh);
        let wrapped = match wrapped {
            Ok(w) => w,
            Err(e) => {
                let _ = kek.store.discard_day_key(object);
                return Err(e);
            }
        };
        let in_force = storage.put_server_key(day, wrapped.clone()).await?;
        if in_force == wrapped {
            if let Some(audit) = self.audit.get() {
                // Rotation (§3.1 footnote 5): a fresh K_S for a new day; the day is a public date.
                audit.append(
                    "day-key-created",
                    &[("day", serde_json::json!(day)), ("keystore", serde_json::json!(kek.store.backend()))],
                );
            }
        } else {
            // Another replica stored its key first: ours never served, so it goes.
            kek.store.discard_day_key(object)?;
        }
        let cipher = Arc::new(Self::expand(kek, day, &in_force)?);
        let mut cache = self.cache.write().expect("day-key lock is never poisoned: no panics inside");
        Ok(cache.entry(day).or_insert(cipher).clone())
    }

    /// Forgets (destroys in memory) the keys of days before `day`, and has the key store destroy
    /// its copies (the security module's objects; the audit log records how many); the storage's
    /// `expire` deletes the wrapped copies. Returns how many were forgotten in memory.
    pub fn forget_before(&self, day: u32) -> usize {
        let n = {
            let mut cache = self.cache.write().expect("day-key lock is never poisoned: no panics inside");
            let keep = cache.split_off(&day);
            let n = cache.len();
            *cache = keep;
            n
        };
        match self.kek.store.destroy_day_keys_before(day) {
            Ok(0) => {}
            Ok(in_module) => {
                if let Some(audit) = self.audit.get() {
                    // Footnote 5, in the module: the day numbers are public dates.
                    audit.append(
                        "day-keys-destroyed-in-module",
                        &[
                            ("before_day", serde_json::json!(day)),
                            ("destroyed", serde_json::json!(in_module)),
                        ],
                    );
                }
            }
            // Retried at the next expiry run; the wrapped copies are gone from storage already.
            Err(e) => tracing::error!(error = %e, "destroying expired day keys in the key store failed"),
        }
        n
    }

    /// Days with a key in memory.
    pub fn days(&self) -> Vec<u32> {
        self.cache.read().expect("day-key lock is never poisoned: no panics inside").keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_then_load_and_no_overwrite() {
        let dir = tempfile::tempdir().expect("tmp");
        keygen(dir.path(), &mut rand::rng()).expect("keygen");
        assert!(keys_exist(dir.path()));
        let s = ServerSecrets::load(dir.path()).expect("load");
        let public = std::fs::read_to_string(dir.path().join(REGISTRATION_PUBLIC_FILE)).expect("public");
        assert_eq!(public.trim(), hex::encode(s.registration.public_key().as_bytes()));
        assert!(matches!(keygen(dir.path(), &mut rand::rng()), Err(KeyError::Exists(_))));
        let signing = s.federation_signing.as_ref().expect("keygen makes the federation signing key");
        let public = std::fs::read_to_string(dir.path().join(FEDERATION_SIGNING_PUBLIC_FILE)).expect("pub");
        assert_eq!(public.trim(), hex::encode(signing.public_key()));
        assert_eq!(format!("{signing:?}"), "BatchSigningKey([redacted])");
        assert!(matches!(keygen_federation_signing(dir.path(), &mut rand::rng()), Err(KeyError::Exists(_))));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in [KEK_FILE, FEDERATION_SIGNING_KEY_FILE] {
                let mode = std::fs::metadata(dir.path().join(f)).expect("meta").permissions().mode();
                assert_eq!(mode & 0o777, 0o600);
            }
        }
    }

    fn test_kek(bytes: &[u8; 32]) -> Kek {
        let pair = ServerKeyPair::generate(&mut rand::rng());
        Kek::of(Arc::new(FileKeyStore::new(pair, bytes).expect("32 bytes")))
    }

    #[test]
    fn wrap_binds_to_owner() {
        let kek = test_kek(&[7; 32]);
        let w = kek.wrap(b"secret", b"id-1").expect("wraps");
        assert_eq!(&kek.unwrap(&w, b"id-1").expect("unwraps")[..], b"secret");
        assert!(kek.unwrap(&w, b"id-2").is_err());
        let mut t = w.clone();
        t[20] ^= 1;
        assert!(kek.unwrap(&t, b"id-1").is_err());
        assert!(kek.unwrap(&w[..10], b"id-1").is_err());
        assert_eq!(format!("{kek:?}"), "Kek([redacted])");
    }

    #[test]
    fn file_backend_day_keys_are_fresh_and_kept_by_storage_only() {
        let kek = test_kek(&[7; 32]);
        assert_eq!(kek.store().backend(), "files");
        let (a, _) = kek.store().create_day_key(1).expect("key");
        let (b, obj) = kek.store().create_day_key(1).expect("key");
        assert_ne!(a.expose_secret(), b.expose_secret(), "each day key is fresh");
        kek.store().discard_day_key(obj).expect("nothing to discard");
        assert_eq!(kek.store().destroy_day_keys_before(u32::MAX).expect("no copies"), 0);
    }

    #[tokio::test]
    async fn day_keys_first_stored_wins_and_are_forgotten() {
        let storage = crate::storage::memory::MemoryStorage::new();
        let kek = test_kek(&[7; 32]);
        let one = DayKeys::load(&storage, &kek).await.expect("load");
        let two = DayKeys::load(&storage, &kek).await.expect("load");
        let a = one.get_or_create(5, &storage, &kek).await.expect("create");
        let b = two.get_or_create(5, &storage, &kek).await.expect("the stored key");
        let (e, i) = (robert_proto::Epoch::new(1).expect("epoch"), robert_proto::Id::new(9).expect("id"));
        assert_eq!(a.encrypt(e, i), b.encrypt(e, i));
        assert_eq!(one.forget_before(6), 1);
        assert!(one.get(5).is_none());
    }

    #[test]
    fn wrapped_session_keys_have_the_published_length() {
        use robert_proto::{KAuth, KEnc, SessionKeys};
        let kek = test_kek(&[7; 32]);
        let keys = SessionKeys { k_auth: KAuth::new([1; 32]), k_enc: KEnc::new([2; 32]) };
        assert_eq!(kek.wrap_session_keys(&keys, b"id").expect("wraps").len(), WRAPPED_SESSION_KEYS_LEN);
    }
}
