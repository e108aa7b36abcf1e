//! The server's secrets (§3.1): K_G, the registration key pair (sk_S, pk_S), the key-encryption
//! key (KEK) that wraps every K_auth / K_enc at rest, and each UTC day's K_S.
//!
//! This is the only module that touches the server's long-term key material. The file backend
//! keeps the three long-term keys as hex text files (mode 0600) in the key directory; a PKCS#11
//! backend (security module, Annex B) takes the same role later. Each day's K_S is drawn fresh,
//! stored wrapped under the KEK in the database (so every replica and every restart uses the same
//! one), kept CT days after its day, then destroyed (footnote 5).

use crate::storage::Storage;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use robert_proto::secret::SecretBytes;
use robert_proto::{EbidCipher, FederationKey, KAuth, KEnc, ServerKey, ServerKeyPair, SessionKeys};
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
}

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
pub struct BatchSigningKey {
    pair: aws_lc_rs::signature::Ed25519KeyPair,
}

impl BatchSigningKey {
    fn from_seed(seed: &[u8]) -> Option<Self> {
        aws_lc_rs::signature::Ed25519KeyPair::from_seed_unchecked(seed).ok().map(|pair| Self { pair })
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

    /// Signs `message` (a whole encoded batch).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.pair.sign(message).as_ref());
        out
    }

    /// The public key, 32 bytes (RFC 8032 encoding).
    pub fn public_key(&self) -> [u8; 32] {
        use aws_lc_rs::signature::KeyPair;
        let mut out = [0u8; 32];
        out.copy_from_slice(self.pair.public_key().as_ref());
        out
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

/// True if `dir` holds a complete set of server keys.
pub fn keys_exist(dir: &Path) -> bool {
    [FEDERATION_KEY_FILE, REGISTRATION_KEY_FILE, KEK_FILE].iter().all(|f| dir.join(f).exists())
}

/// The key-encryption key: AES-256-GCM, random 96-bit nonce, the owner's identity as associated
/// data (so a wrapped value cannot be moved to another row).
pub struct Kek {
    key: LessSafeKey,
}

/// Length of what [`Kek::wrap_session_keys`] returns: nonce ‖ K_auth ‖ K_enc encrypted ‖ tag.
pub const WRAPPED_SESSION_KEYS_LEN: usize = NONCE_LEN + 64 + 16;

impl Kek {
    fn new(bytes: &[u8]) -> Option<Self> {
        UnboundKey::new(&AES_256_GCM, bytes).ok().map(|k| Self { key: LessSafeKey::new(k) })
    }

    /// `nonce ‖ ciphertext ‖ tag`.
    pub fn wrap(&self, plain: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce[..]);
        let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut body)
            .expect("AES-GCM sealing of a short buffer cannot fail");
        out.extend_from_slice(&body);
        zeroize::Zeroize::zeroize(&mut body);
        out
    }

    /// Inverse of [`Kek::wrap`].
    pub fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        if wrapped.len() < NONCE_LEN + 16 {
            return Err(KeyError::Unwrap);
        }
        let (nonce, rest) = wrapped.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| KeyError::Unwrap)?;
        let mut buf = Zeroizing::new(rest.to_vec());
        let len =
            self.key.open_in_place(nonce, Aad::from(aad), &mut buf).map_err(|_| KeyError::Unwrap)?.len();
        buf.truncate(len);
        Ok(buf)
    }

    /// Wraps an App's K_auth ‖ K_enc for the IDTable row of `id_bytes`.
    pub fn wrap_session_keys(&self, keys: &SessionKeys, id_bytes: &[u8]) -> Vec<u8> {
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

/// The long-term secrets of a running server.
pub struct ServerSecrets {
    /// K_G.
    pub federation: FederationKey,
    /// (sk_S, pk_S).
    pub registration: ServerKeyPair,
    /// The key-encryption key.
    pub kek: Kek,
    /// Keys the proof-of-work challenges' MAC (derived from the KEK, so replicas agree).
    pub challenge_key: aws_lc_rs::hmac::Key,
    /// Signs outbound federation batches (§8); `None` in a key directory made before federation
    /// (a server with peers then refuses to start).
    pub federation_signing: Option<BatchSigningKey>,
}

impl ServerSecrets {
    /// Loads the three key files of `dir`.
    pub fn load(dir: &Path) -> Result<Self, KeyError> {
        let invalid = |f: &str, reason| KeyError::Invalid { path: dir.join(f), reason };
        let kg = read_secret(&dir.join(FEDERATION_KEY_FILE))?;
        let federation = FederationKey::new(&kg)
            .map_err(|_| invalid(FEDERATION_KEY_FILE, "K_G must be 16, 24 or 32 bytes"))?;
        let sk = read_secret(&dir.join(REGISTRATION_KEY_FILE))?;
        let scalar = SecretBytes::<32>::from_slice("sk_S", &sk)
            .map_err(|_| invalid(REGISTRATION_KEY_FILE, "sk_S must be 32 bytes"))?;
        let registration = ServerKeyPair::from_scalar(&scalar)
            .map_err(|_| invalid(REGISTRATION_KEY_FILE, "sk_S is not a valid P-256 scalar"))?;
        let kek_bytes = read_secret(&dir.join(KEK_FILE))?;
        let kek = Kek::new(&kek_bytes).ok_or_else(|| invalid(KEK_FILE, "the KEK must be 32 bytes"))?;
        let derived = Zeroizing::new(hmac_sha256(&kek_bytes, b"robert proof-of-work challenges"));
        let challenge_key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &derived[..]);
        let federation_signing = BatchSigningKey::load(dir)?;
        Ok(Self { federation, registration, kek, challenge_key, federation_signing })
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
#[derive(Default)]
pub struct DayKeys {
    cache: RwLock<BTreeMap<u32, Arc<EbidCipher>>>,
    /// Where key creation is recorded (Annex B), once attached.
    audit: std::sync::OnceLock<Arc<crate::audit::AuditLog>>,
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
        Ok(Self { cache: RwLock::new(map), audit: std::sync::OnceLock::new() })
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
        let fresh = ServerKey::new(rand::random());
        let wrapped = kek.wrap(fresh.expose_secret(), &day_aad(day));
        drop(fresh);
        let in_force = storage.put_server_key(day, wrapped.clone()).await?;
        if in_force == wrapped
            && let Some(audit) = self.audit.get()
        {
            // Rotation (§3.1 footnote 5): a fresh K_S for a new day; the day is a public date.
            audit.append("day-key-created", &[("day", serde_json::json!(day))]);
        }
        let cipher = Arc::new(Self::expand(kek, day, &in_force)?);
        let mut cache = self.cache.write().expect("day-key lock is never poisoned: no panics inside");
        Ok(cache.entry(day).or_insert(cipher).clone())
    }

    /// Forgets (destroys in memory) the keys of days before `day`; the storage's `expire` deletes
    /// the wrapped copies.
    pub fn forget_before(&self, day: u32) -> usize {
        let mut cache = self.cache.write().expect("day-key lock is never poisoned: no panics inside");
        let keep = cache.split_off(&day);
        let n = cache.len();
        *cache = keep;
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

    #[test]
    fn wrap_binds_to_owner() {
        let kek = Kek::new(&[7; 32]).expect("32 bytes");
        let w = kek.wrap(b"secret", b"id-1");
        assert_eq!(&kek.unwrap(&w, b"id-1").expect("unwraps")[..], b"secret");
        assert!(kek.unwrap(&w, b"id-2").is_err());
        let mut t = w.clone();
        t[20] ^= 1;
        assert!(kek.unwrap(&t, b"id-1").is_err());
        assert!(kek.unwrap(&w[..10], b"id-1").is_err());
        assert_eq!(format!("{kek:?}"), "Kek([redacted])");
    }

    #[test]
    fn wrapped_session_keys_have_the_published_length() {
        use robert_proto::{KAuth, KEnc, SessionKeys};
        let kek = Kek::new(&[7; 32]).expect("32 bytes");
        let keys = SessionKeys { k_auth: KAuth::new([1; 32]), k_enc: KEnc::new([2; 32]) };
        assert_eq!(kek.wrap_session_keys(&keys, b"id").len(), WRAPPED_SESSION_KEYS_LEN);
    }
}
