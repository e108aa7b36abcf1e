//! The PKCS#11 backend of the key store: the server's secrets in a security module (Annex B: the
//! server "relies on a security module to store and manipulate its secrets").
//!
//! Tested against SoftHSM2 (`scripts/softhsm-throwaway.sh`); any PKCS#11 v2.40 module with the
//! mechanisms below works. Objects in the token, by label:
//!
//! | label | object | attributes | used for |
//! |---|---|---|---|
//! | `robert sk_S` / `robert pk_S` | EC P-256 key pair | private: sensitive, never extractable, `DERIVE` | §3.3: `CKM_ECDH1_DERIVE` inside the module |
//! | `robert KEK` | AES-256 | sensitive, never extractable, `ENCRYPT`/`DECRYPT` only | wraps every K_auth ‖ K_enc and every K_S at rest (`CKM_AES_GCM` inside the module) |
//! | `robert K_challenge` | generic secret, 32 B | sensitive, never extractable, `SIGN` | `CKM_SHA256_HMAC` of a fixed label at start: the proof-of-work MAC key |
//! | `robert federation-signing` (+ `-public`) | Ed25519 key pair | private: sensitive, never extractable | §8: `CKM_EDDSA` signs each outbound batch inside the module |
//! | `robert K_G` | AES-256 | **extractable, not sensitive** | §3.1: read once at start into zeroized memory (ECC on every HELLO, §6.2 step 3) |
//! | `robert K_S <day>` | generic secret, 24 B | **extractable, not sensitive** | §3.1 footnote 5: made by the module's generator, read into zeroized memory (SKINNY on every EBID), destroyed CT days after its day |
//!
//! # Trade-offs
//!
//! * **K_G and K_S leave the module.** No security module implements SKINNY-64/192, and ECC is one
//!   AES block per HELLO on the mixer's hot path; a PKCS#11 call per HELLO would cost more than the
//!   rest of the processing. So the module *creates* them (its generator, its audit trail, its
//!   access control) and *destroys* them, but their values are read once into zeroized memory, as
//!   in the file backend. What the module adds for these two is that the value never sits in a
//!   file. `CKA_SENSITIVE` would forbid exactly the read we need, and wrapping them out under the
//!   KEK would require a KEK that can both wrap and decrypt, which makes every sensitive key in
//!   the token extractable (the classic wrap-then-decrypt attack), so we do neither.
//! * **The day keys' durable copy is the wrapped one in storage**, exactly as with the file
//!   backend: `Storage::put_server_key` keeps the first key stored for a day, which is how
//!   replicas (and restarts) agree on one key per day. The module's `robert K_S <day>` object is
//!   the key's life in the module: the replica whose key won keeps it until expiry destroys it;
//!   a replica that lost the race destroys its own at once.
//! * **sk_S, the KEK, the challenge key and the federation signing key never leave the module**:
//!   every registration is one `C_DeriveKey` (ECDH), every wrap or unwrap of session keys one
//!   `C_Encrypt` / `C_Decrypt`. The ECDH output (the shared secret, §3.3) is derived as a session
//!   object that is readable by this session only long enough to feed the §3.3 derivation
//!   (`robert_proto::SessionKeys::derive`), then destroyed: bytes identical to the file backend.
//! * **Wrapped format**: `nonce(12) ‖ AES-256-GCM ciphertext ‖ tag(16)`, the owner's identity as
//!   associated data, exactly [`super::WRAPPED_SESSION_KEYS_LEN`] bytes for session keys, the same
//!   as the file backend's. The nonce is drawn by the server (the module's GCM takes it as a
//!   parameter), so a KEK imported from a key directory (`robert keygen --pkcs11 --from-dir`)
//!   unwraps every row the file backend wrapped.
//!
//! Sessions: PKCS#11 sessions are not thread-safe, so the token keeps a small pool of logged-in
//! read-write sessions, each behind a mutex; a call takes the first free one. One process
//! initialises each module once (`C_Initialize` is per process) and shares it.

use super::{DayKeyObject, KeyError, KeyStore};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use robert_proto::secret::SecretBytes;
use robert_proto::{PublicKey, ServerKey, SessionKeys};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use zeroize::{Zeroize, Zeroizing};

/// Label of sk_S in the token.
pub const LABEL_SK_S: &str = "robert sk_S";
/// Label of pk_S in the token.
pub const LABEL_PK_S: &str = "robert pk_S";
/// Label of the key-encryption key.
pub const LABEL_KEK: &str = "robert KEK";
/// Label of K_G.
pub const LABEL_K_G: &str = "robert K_G";
/// Label of the proof-of-work challenge key.
pub const LABEL_CHALLENGE: &str = "robert K_challenge";
/// Label of the federation signing key (Ed25519).
pub const LABEL_FEDERATION_SIGNING: &str = "robert federation-signing";
/// Label of its public key.
pub const LABEL_FEDERATION_SIGNING_PUBLIC: &str = "robert federation-signing-public";
/// Prefix of each day key's label (`robert K_S 20412`: the UTC day number, a public date).
pub const LABEL_DAY_KEY_PREFIX: &str = "robert K_S ";

/// The long-term labels `robert keygen --pkcs11` creates (the day keys come and go).
pub const PROVISIONED_LABELS: [&str; 7] = [
    LABEL_SK_S,
    LABEL_PK_S,
    LABEL_KEK,
    LABEL_K_G,
    LABEL_CHALLENGE,
    LABEL_FEDERATION_SIGNING,
    LABEL_FEDERATION_SIGNING_PUBLIC,
];

/// DER of the P-256 curve's OID (1.2.840.10045.3.1.7), `CKA_EC_PARAMS`.
const P256_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER of Ed25519's OID (1.3.101.112, RFC 8410), `CKA_EC_PARAMS`.
const ED25519_PARAMS: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];
/// Fixed input of the proof-of-work key derivation (the same label as the file backend's).
pub(super) const CHALLENGE_LABEL: &[u8] = b"robert proof-of-work challenges";
/// Sessions kept open per token.
const SESSIONS: usize = 4;

/// Where the module and the token are. The PIN is not here: it comes from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Settings {
    /// The module (shared library), e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// The token's label.
    pub token_label: String,
}

/// A user PIN: zeroized on drop, never printed.
pub struct Pin(AuthPin);

impl Pin {
    /// From the environment variable `var`; an error naming the variable (never a value) if it is
    /// unset or empty.
    pub fn from_env(var: &str) -> Result<Self, KeyError> {
        match std::env::var(var) {
            Ok(p) if !p.is_empty() => Ok(Self(AuthPin::from(p))),
            _ => Err(KeyError::Module(format!(
                "the token's user PIN is read from the environment variable {var}, which is not set"
            ))),
        }
    }

    /// From a string (tests, and callers that read it elsewhere).
    pub fn new(pin: String) -> Self {
        Self(AuthPin::from(pin))
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin([redacted])")
    }
}

fn ck(what: &str, e: CkError) -> KeyError {
    KeyError::Module(format!("{what}: {e}"))
}

/// One `C_Initialize` per module per process (PKCS#11 §5.4): every [`Token`] of a module shares it.
fn context(module: &Path) -> Result<Pkcs11, KeyError> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut map = CONTEXTS
        .get_or_init(Default::default)
        .lock()
        .expect("context map lock is never poisoned: no panics inside");
    if let Some(c) = map.get(module) {
        return Ok(c.clone());
    }
    if !module.exists() {
        return Err(KeyError::Module(format!(
            "PKCS#11 module {} does not exist (keystore.pkcs11_module)",
            module.display()
        )));
    }
    let ctx = Pkcs11::new(module)
        .map_err(|e| KeyError::Module(format!("loading PKCS#11 module {}: {e}", module.display())))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(ck(&format!("initialising {}", module.display()), e)),
    }
    map.insert(module.to_owned(), ctx.clone());
    Ok(ctx)
}

/// A logged-in token: a pool of sessions on one slot.
pub struct Token {
    sessions: Vec<Mutex<Session>>,
    label: String,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token").field("label", &self.label).finish_non_exhaustive()
    }
}

impl Token {
    /// Loads the module, finds the token by label and logs in as its user. Errors say which of
    /// these failed: no module, no such token (with the labels present), wrong PIN.
    pub fn open(settings: &Pkcs11Settings, pin: &Pin) -> Result<Arc<Self>, KeyError> {
        let ctx = context(&settings.module)?;
        let slot = find_slot(&ctx, &settings.token_label)?;
        let mut sessions = Vec::with_capacity(SESSIONS);
        for _ in 0..SESSIONS {
            sessions.push(Mutex::new(ctx.open_rw_session(slot).map_err(|e| ck("opening a session", e))?));
        }
        // Login is per application and token: one login covers every session.
        match sessions[0].lock().expect("fresh mutex").login(UserType::User, Some(&pin.0)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(CkError::Pkcs11(RvError::PinIncorrect | RvError::PinLenRange | RvError::PinInvalid, _)) => {
                return Err(KeyError::Module(format!(
                    "wrong user PIN for PKCS#11 token '{}'",
                    settings.token_label
                )));
            }
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => {
                return Err(KeyError::Module(format!(
                    "the user PIN of PKCS#11 token '{}' is locked (too many wrong PINs)",
                    settings.token_label
                )));
            }
            Err(e) => return Err(ck(&format!("logging in to token '{}'", settings.token_label), e)),
        }
        Ok(Arc::new(Self { sessions, label: settings.token_label.clone() }))
    }

    /// Runs `f` on a free session (the first one not in use, else waits for the first).
    fn with<T>(&self, f: impl FnOnce(&Session) -> T) -> T {
        for s in &self.sessions {
            if let Ok(guard) = s.try_lock() {
                return f(&guard);
            }
        }
        let guard = self.sessions[0].lock().expect("session lock is never poisoned: no panics inside");
        f(&guard)
    }

    /// The objects labelled `label`.
    fn find(&self, label: &str) -> Result<Vec<ObjectHandle>, KeyError> {
        self.with(|s| s.find_objects(&[Attribute::Label(label.as_bytes().to_vec())]))
            .map_err(|e| ck("searching the token", e))
    }

    /// The one object labelled `label`; errors if there is none or several.
    fn one(&self, label: &str) -> Result<ObjectHandle, KeyError> {
        let found = self.find(label)?;
        match found.as_slice() {
            [h] => Ok(*h),
            [] => Err(KeyError::Module(format!(
                "token '{}' holds no '{label}': provision it with `robert keygen --pkcs11`",
                self.label
            ))),
            _ => Err(KeyError::Module(format!("token '{}' holds several '{label}' objects", self.label))),
        }
    }

    /// Labels of every object this user sees, with whether its value can be read
    /// (`CKA_EXTRACTABLE` and not `CKA_SENSITIVE`, for secret and private keys). For operators
    /// (`robert keygen --pkcs11 --list`) and tests; prints no value.
    pub fn objects(&self) -> Result<Vec<ObjectInfo>, KeyError> {
        self.with(|s| -> Result<Vec<ObjectInfo>, CkError> {
            let mut out = Vec::new();
            for h in s.find_objects(&[])? {
                let attrs = s.get_attributes(
                    h,
                    &[
                        AttributeType::Label,
                        AttributeType::Class,
                        AttributeType::Sensitive,
                        AttributeType::Extractable,
                    ],
                )?;
                let mut info = ObjectInfo { label: String::new(), class: String::new(), readable: false };
                let (mut sensitive, mut extractable) = (false, false);
                for a in attrs {
                    match a {
                        Attribute::Label(l) => info.label = String::from_utf8_lossy(&l).into_owned(),
                        Attribute::Class(c) => info.class = c.to_string(),
                        Attribute::Sensitive(v) => sensitive = v,
                        Attribute::Extractable(v) => extractable = v,
                        _ => {}
                    }
                }
                info.readable = extractable && !sensitive;
                out.push(info);
            }
            Ok(out)
        })
        .map_err(|e| ck("listing the token", e))
    }

    /// Tries to read the value (`CKA_VALUE`) of the object labelled `label`: `Ok(true)` if the
    /// module returned it (the value itself is erased here), `Ok(false)` if the module refused
    /// (sensitive or not extractable). Used to prove the long-term keys cannot leave the module.
    pub fn value_is_readable(&self, label: &str) -> Result<bool, KeyError> {
        let h = self.one(label)?;
        match self.with(|s| s.get_attributes(h, &[AttributeType::Value])) {
            Ok(attrs) => {
                let mut got = false;
                for a in attrs {
                    if let Attribute::Value(mut v) = a {
                        got = !v.is_empty();
                        v.zeroize();
                    }
                }
                Ok(got)
            }
            Err(CkError::Pkcs11(RvError::AttributeSensitive, _)) => Ok(false),
            Err(e) => Err(ck("reading an attribute", e)),
        }
    }

    /// Destroys every object of this user in the token. Used to reprovision a throwaway test
    /// token; `robert keygen --pkcs11` never calls it (it refuses to overwrite instead).
    pub fn destroy_all_objects(&self) -> Result<usize, KeyError> {
        self.with(|s| -> Result<usize, CkError> {
            let all = s.find_objects(&[])?;
            for h in &all {
                s.destroy_object(*h)?;
            }
            Ok(all.len())
        })
        .map_err(|e| ck("destroying objects", e))
    }

    /// Reads a secret value into zeroized memory.
    fn read_value(&self, h: ObjectHandle, what: &str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let attrs = self.with(|s| s.get_attributes(h, &[AttributeType::Value])).map_err(|e| ck(what, e))?;
        let mut out = Zeroizing::new(Vec::new());
        for a in attrs {
            if let Attribute::Value(mut v) = a {
                out.extend_from_slice(&v);
                v.zeroize();
            }
        }
        if out.is_empty() {
            return Err(KeyError::Module(format!("{what}: the module returned no value")));
        }
        Ok(out)
    }

    fn ec_point(&self, label: &str) -> Result<Vec<u8>, KeyError> {
        let h = self.one(label)?;
        let attrs =
            self.with(|s| s.get_attributes(h, &[AttributeType::EcPoint])).map_err(|e| ck(label, e))?;
        for a in attrs {
            if let Attribute::EcPoint(p) = a {
                return Ok(strip_octet_string(p));
            }
        }
        Err(KeyError::Module(format!("{label}: no CKA_EC_POINT")))
    }
}

/// `CKA_EC_POINT` is a DER OCTET STRING (PKCS#11 v2.40 §2.3.3); some modules return the raw point.
fn strip_octet_string(p: Vec<u8>) -> Vec<u8> {
    match p.as_slice() {
        [0x04, len, rest @ ..] if usize::from(*len) == rest.len() && *len < 0x80 => rest.to_vec(),
        [0x04, 0x81, len, rest @ ..] if usize::from(*len) == rest.len() => rest.to_vec(),
        _ => p,
    }
}

/// What [`Token::objects`] reports about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// `CKA_LABEL`.
    pub label: String,
    /// `CKA_CLASS`, e.g. `CKO_SECRET_KEY`.
    pub class: String,
    /// Whether the module would hand out its value.
    pub readable: bool,
}

fn find_slot(ctx: &Pkcs11, label: &str) -> Result<Slot, KeyError> {
    let slots = ctx.get_slots_with_initialized_token().map_err(|e| ck("listing slots", e))?;
    let mut seen = Vec::new();
    for slot in slots {
        let info = ctx.get_token_info(slot).map_err(|e| ck("reading token info", e))?;
        let l = info.label().trim_end().to_owned();
        if l == label {
            return Ok(slot);
        }
        seen.push(l);
    }
    Err(KeyError::Module(if seen.is_empty() {
        format!("no initialised token in the PKCS#11 module (looking for '{label}')")
    } else {
        format!("no PKCS#11 token labelled '{label}' (tokens present: {})", seen.join(", "))
    }))
}

/// Where `robert keygen --pkcs11` takes the long-term keys from.
pub enum Provision<'a> {
    /// Generated inside the module (production).
    Generate,
    /// Imported once from a file key directory, for moving a running deployment into a module
    /// without losing registrations (the KEK unwraps every stored row; Apps keep their pinned
    /// pk_S). Once imported, sk_S and the KEK are as non-extractable as generated ones.
    FromDir(&'a Path),
}

/// What provisioning created: public values for the files other tools need.
pub struct Provisioned {
    /// pk_S.
    pub server_public: PublicKey,
    /// The federation signing public key (Ed25519, 32 bytes).
    pub federation_signing_public: [u8; 32],
}

fn secret_template(label: &str, key_type: KeyType, readable: bool) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(key_type),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(!readable),
        Attribute::Extractable(readable),
        Attribute::Modifiable(false),
    ]
}

/// Creates the server's long-term keys in the token (see the module docs for their attributes).
/// Refuses if any of them is already there: losing them loses every registration. If a step
/// fails, the objects made before it are destroyed again, so the token is left as it was.
pub fn provision(token: &Arc<Token>, source: Provision<'_>) -> Result<Provisioned, KeyError> {
    for l in PROVISIONED_LABELS {
        if !token.find(l)?.is_empty() {
            return Err(KeyError::Module(format!(
                "token '{}' already holds '{l}': refusing to overwrite server keys",
                token.label
            )));
        }
    }
    let result = provision_unchecked(token, source);
    if result.is_err() {
        for l in PROVISIONED_LABELS {
            for h in token.find(l).unwrap_or_default() {
                let _ = token.with(|s| s.destroy_object(h));
            }
        }
    }
    result
}

fn provision_unchecked(token: &Arc<Token>, source: Provision<'_>) -> Result<Provisioned, KeyError> {
    let files = match source {
        Provision::Generate => None,
        Provision::FromDir(dir) => Some(super::FileSecrets::read(dir)?),
    };
    let aes = |label: &str, readable: bool, usage: &[Attribute], value: Option<&[u8]>| {
        let mut t = secret_template(label, KeyType::AES, readable);
        t.extend_from_slice(usage);
        token.with(|s| match value {
            Some(v) => {
                t.push(Attribute::Value(v.to_vec()));
                let r = s.create_object(&t);
                if let Some(Attribute::Value(v)) = t.last_mut() {
                    v.zeroize();
                }
                r
            }
            None => {
                t.push(Attribute::ValueLen(32.into()));
                s.generate_key(&Mechanism::AesKeyGen, &t)
            }
        })
    };
    // The KEK: encrypt/decrypt only (no WRAP/UNWRAP: see the module docs).
    aes(
        LABEL_KEK,
        false,
        &[Attribute::Encrypt(true), Attribute::Decrypt(true)],
        files.as_ref().map(|f| f.kek.as_slice()),
    )
    .map_err(|e| ck("creating the KEK", e))?;
    aes(LABEL_K_G, true, &[Attribute::Encrypt(true)], files.as_ref().map(|f| f.kg.as_slice()))
        .map_err(|e| ck("creating K_G", e))?;
    // The challenge key: HMAC-SHA256 signing only.
    {
        let mut t = secret_template(LABEL_CHALLENGE, KeyType::GENERIC_SECRET, false);
        t.push(Attribute::Sign(true));
        t.push(Attribute::ValueLen(32.into()));
        token
            .with(|s| s.generate_key(&Mechanism::GenericSecretKeyGen, &t))
            .map_err(|e| ck("creating the challenge key", e))?;
    }
    // sk_S: generated in the module, or imported from the key directory.
    let pair_public = [
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(KeyType::EC),
        Attribute::Label(LABEL_PK_S.as_bytes().to_vec()),
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::EcParams(P256_PARAMS.to_vec()),
    ];
    let pair_private = [
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(KeyType::EC),
        Attribute::Label(LABEL_SK_S.as_bytes().to_vec()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Derive(true),
        Attribute::Modifiable(false),
    ];
    match &files {
        None => {
            token
                .with(|s| s.generate_key_pair(&Mechanism::EccKeyPairGen, &pair_public, &pair_private))
                .map_err(|e| ck("generating sk_S", e))?;
        }
        Some(f) => {
            let mut private = pair_private.to_vec();
            private.push(Attribute::EcParams(P256_PARAMS.to_vec()));
            private.push(Attribute::Value(f.scalar.expose_secret().to_vec()));
            let mut public = pair_public.to_vec();
            let mut point = vec![0x04, 65];
            point.extend_from_slice(f.pair.public_key().as_bytes());
            public.push(Attribute::EcPoint(point));
            let r = token.with(|s| s.create_object(&private).and_then(|_| s.create_object(&public)));
            if let Some(Attribute::Value(v)) = private.last_mut() {
                v.zeroize();
            }
            r.map_err(|e| ck("importing sk_S", e))?;
        }
    }
    // The federation signing key (§8): Ed25519, generated in the module (a file key is not
    // imported: peers can be given the new public key).
    let ed_public = [
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(KeyType::EC_EDWARDS),
        Attribute::Label(LABEL_FEDERATION_SIGNING_PUBLIC.as_bytes().to_vec()),
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::EcParams(ED25519_PARAMS.to_vec()),
    ];
    let ed_private = [
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(KeyType::EC_EDWARDS),
        Attribute::Label(LABEL_FEDERATION_SIGNING.as_bytes().to_vec()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Modifiable(false),
    ];
    token
        .with(|s| s.generate_key_pair(&Mechanism::EccEdwardsKeyPairGen, &ed_public, &ed_private))
        .map_err(|e| ck("generating the federation signing key", e))?;

    let store = ModuleKeyStore::new(token.clone())?;
    let server_public = store.public.clone();
    let signing = ModuleSigningKey::new(token.clone())?;
    Ok(Provisioned { server_public, federation_signing_public: signing.public })
}

/// The key store in a module: sk_S, the KEK and the day keys' lifecycle.
pub struct ModuleKeyStore {
    token: Arc<Token>,
    sk: ObjectHandle,
    kek: ObjectHandle,
    public: PublicKey,
}

impl fmt::Debug for ModuleKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ModuleKeyStore([in the security module])")
    }
}

impl ModuleKeyStore {
    /// The key store of a provisioned token.
    pub fn new(token: Arc<Token>) -> Result<Self, KeyError> {
        let sk = token.one(LABEL_SK_S)?;
        let kek = token.one(LABEL_KEK)?;
        let point = token.ec_point(LABEL_PK_S)?;
        let public = PublicKey::parse("pk_S", &point)
            .map_err(|_| KeyError::Module("robert pk_S is not a P-256 point".into()))?;
        Ok(Self { token, sk, kek, public })
    }
}

fn gcm_error(e: CkError) -> KeyError {
    ck("AES-GCM under the KEK", e)
}

/// A tag that does not verify is the uniform unwrap failure. PKCS#11 says
/// `CKR_ENCRYPTED_DATA_INVALID`; SoftHSM2 2.6 answers `CKR_GENERAL_ERROR` (and some modules
/// `CKR_FUNCTION_FAILED`), so those mean "does not verify" here too. Anything else (a closed
/// session, a device error) is a module failure.
fn gcm_open_error(e: CkError) -> KeyError {
    match e {
        CkError::Pkcs11(
            RvError::EncryptedDataInvalid
            | RvError::EncryptedDataLenRange
            | RvError::GeneralError
            | RvError::FunctionFailed,
            cryptoki::context::Function::Decrypt,
        ) => KeyError::Unwrap,
        e => gcm_error(e),
    }
}

impl KeyStore for ModuleKeyStore {
    fn backend(&self) -> &'static str {
        "pkcs11"
    }

    fn server_public_key(&self) -> &PublicKey {
        &self.public
    }

    fn agree(&self, client: &PublicKey) -> Result<SessionKeys, KeyError> {
        // §3.3: SharedSecret = x(sk_S · pke_A), computed by the module (CKM_ECDH1_DERIVE, null
        // KDF: the x-coordinate), as a session object readable just long enough to derive.
        let params = Ecdh1DeriveParams::new(EcKdf::null(), client.as_bytes());
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::Token(false),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
            Attribute::ValueLen(32.into()),
        ];
        let secret = self.token.with(|s| -> Result<Zeroizing<Vec<u8>>, CkError> {
            let h = s.derive_key(&Mechanism::Ecdh1Derive(params), self.sk, &template)?;
            let attrs = s.get_attributes(h, &[AttributeType::Value]);
            let destroyed = s.destroy_object(h);
            let mut out = Zeroizing::new(Vec::new());
            for a in attrs? {
                if let Attribute::Value(mut v) = a {
                    out.extend_from_slice(&v);
                    v.zeroize();
                }
            }
            destroyed?;
            Ok(out)
        });
        let secret = secret.map_err(|e| ck("ECDH with sk_S", e))?;
        if secret.len() != 32 {
            return Err(KeyError::Module("ECDH returned a shared secret that is not 32 bytes".into()));
        }
        Ok(SessionKeys::derive(&secret))
    }

    fn kek_seal(&self, nonce: &[u8; 12], plain: &[u8], aad: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut iv = *nonce;
        let params = GcmParams::new(&mut iv, aad, 128.into()).map_err(|e| ck("GCM parameters", e))?;
        self.token.with(|s| s.encrypt(&Mechanism::AesGcm(params), self.kek, plain)).map_err(gcm_error)
    }

    fn kek_open(&self, nonce: &[u8; 12], sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let mut iv = *nonce;
        let params = GcmParams::new(&mut iv, aad, 128.into()).map_err(|e| ck("GCM parameters", e))?;
        self.token
            .with(|s| s.decrypt(&Mechanism::AesGcm(params), self.kek, sealed))
            .map(Zeroizing::new)
            .map_err(gcm_open_error)
    }

    fn create_day_key(&self, day: u32) -> Result<(ServerKey, DayKeyObject), KeyError> {
        // A fresh K_S from the module's generator, as a token object labelled with its day and a
        // random CKA_ID (replicas sharing a module can tell their objects apart).
        let mut id = [0u8; 16];
        rand::fill(&mut id[..]);
        let mut t = secret_template(&format!("{LABEL_DAY_KEY_PREFIX}{day}"), KeyType::GENERIC_SECRET, true);
        t.push(Attribute::Id(id.to_vec()));
        t.push(Attribute::ValueLen(24.into()));
        let h = self
            .token
            .with(|s| s.generate_key(&Mechanism::GenericSecretKeyGen, &t))
            .map_err(|e| ck("generating a day key", e))?;
        let value = self.token.read_value(h, "reading a day key")?;
        let key = ServerKey::from_slice(&value)
            .map_err(|_| KeyError::Module("the module made a day key that is not 24 bytes".into()))?;
        Ok((key, DayKeyObject(Some(id))))
    }

    fn discard_day_key(&self, object: DayKeyObject) -> Result<(), KeyError> {
        let Some(id) = object.0 else { return Ok(()) };
        let found = self
            .token
            .with(|s| {
                s.find_objects(&[Attribute::Id(id.to_vec()), Attribute::Class(ObjectClass::SECRET_KEY)])
            })
            .map_err(|e| ck("searching the token", e))?;
        for h in found {
            self.token.with(|s| s.destroy_object(h)).map_err(|e| ck("destroying a day key", e))?;
        }
        Ok(())
    }

    fn destroy_day_keys_before(&self, day: u32) -> Result<usize, KeyError> {
        let keys = self
            .token
            .with(|s| -> Result<Vec<(ObjectHandle, Vec<u8>)>, CkError> {
                let mut out = Vec::new();
                let template = [
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::GENERIC_SECRET),
                    Attribute::Token(true),
                ];
                for h in s.find_objects(&template)? {
                    for a in s.get_attributes(h, &[AttributeType::Label])? {
                        if let Attribute::Label(l) = a {
                            out.push((h, l));
                        }
                    }
                }
                Ok(out)
            })
            .map_err(|e| ck("listing day keys", e))?;
        let mut destroyed = 0;
        for (h, label) in keys {
            let Some(d) = std::str::from_utf8(&label)
                .ok()
                .and_then(|l| l.strip_prefix(LABEL_DAY_KEY_PREFIX))
                .and_then(|d| d.parse::<u32>().ok())
            else {
                continue;
            };
            if d < day {
                match self.token.with(|s| s.destroy_object(h)) {
                    Ok(()) => destroyed += 1,
                    // Another replica sharing the module destroyed it first.
                    Err(CkError::Pkcs11(RvError::ObjectHandleInvalid, _)) => {}
                    Err(e) => return Err(ck("destroying a day key", e)),
                }
            }
        }
        Ok(destroyed)
    }
}

/// The federation signing key (Ed25519) in the module: every batch is signed by `CKM_EDDSA`.
pub struct ModuleSigningKey {
    token: Arc<Token>,
    key: ObjectHandle,
    public: [u8; 32],
}

impl ModuleSigningKey {
    /// The signing key of a provisioned token.
    pub fn new(token: Arc<Token>) -> Result<Self, KeyError> {
        let key = token.one(LABEL_FEDERATION_SIGNING)?;
        let point = token.ec_point(LABEL_FEDERATION_SIGNING_PUBLIC)?;
        let public: [u8; 32] = point
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::Module("the federation signing public key is not 32 bytes".into()))?;
        Ok(Self { token, key, public })
    }

    /// The public key (RFC 8032 encoding).
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// Signs `message` inside the module.
    pub fn sign(&self, message: &[u8]) -> Result<[u8; 64], KeyError> {
        let params = EddsaParams::new(EddsaSignatureScheme::Pure);
        let sig = self
            .token
            .with(|s| s.sign(&Mechanism::Eddsa(params), self.key, message))
            .map_err(|e| ck("signing a federation batch", e))?;
        sig.as_slice().try_into().map_err(|_| KeyError::Module("EdDSA signature is not 64 bytes".into()))
    }
}

/// K_G read from the module (see the trade-off in the module docs).
pub fn read_federation_key(token: &Token) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let h = token.one(LABEL_K_G)?;
    token.read_value(h, "reading K_G")
}

/// The proof-of-work MAC key: `HMAC-SHA256(K_challenge, label)` computed in the module, so that
/// every replica on the token derives the same one.
pub fn derive_challenge_key(token: &Token) -> Result<SecretBytes<32>, KeyError> {
    let h = token.one(LABEL_CHALLENGE)?;
    let mut mac = token
        .with(|s| s.sign(&Mechanism::Sha256Hmac, h, CHALLENGE_LABEL))
        .map_err(|e| ck("deriving the challenge key", e))?;
    let out = SecretBytes::from_slice("K_challenge", &mac)
        .map_err(|_| KeyError::Module("HMAC-SHA256 did not return 32 bytes".into()));
    mac.zeroize();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ec_points_are_unwrapped_from_their_octet_string() {
        let point = [4u8; 65];
        let mut der = vec![0x04, 65];
        der.extend_from_slice(&point);
        assert_eq!(strip_octet_string(der), point.to_vec());
        let ed = [9u8; 32];
        let mut der = vec![0x04, 32];
        der.extend_from_slice(&ed);
        assert_eq!(strip_octet_string(der), ed.to_vec());
        let mut long = vec![0x04, 0x81, 133];
        long.extend_from_slice(&[1u8; 133]);
        assert_eq!(strip_octet_string(long).len(), 133);
        // A raw point (some modules) is returned as it is.
        let mut raw = vec![0x04];
        raw.extend_from_slice(&[7u8; 64]);
        assert_eq!(strip_octet_string(raw.clone()), raw);
    }

    #[test]
    fn the_pin_never_prints() {
        assert_eq!(format!("{:?}", Pin::new("123456".into())), "Pin([redacted])");
        let e = Pin::from_env("ROBERT_UNIT_TEST_PIN_VARIABLE_NOT_SET").expect_err("unset");
        assert!(e.to_string().contains("ROBERT_UNIT_TEST_PIN_VARIABLE_NOT_SET"));
    }

    #[test]
    fn a_missing_module_is_named() {
        let s = Pkcs11Settings { module: "/nonexistent/module.so".into(), token_label: "t".into() };
        let e = Token::open(&s, &Pin::new("1".into())).expect_err("no module").to_string();
        assert!(e.contains("/nonexistent/module.so does not exist"), "{e}");
    }

    proptest! {
        /// Whatever a module returns as CKA_EC_POINT, reading it never panics, and the result is
        /// the input or a suffix of it.
        #[test]
        fn ec_point_parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let out = strip_octet_string(bytes.clone());
            prop_assert!(bytes.ends_with(&out));
        }
    }
}
