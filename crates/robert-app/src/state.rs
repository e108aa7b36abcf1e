//! The App's state in one file, encrypted at rest and written atomically.
//!
//! File layout: `MAGIC(8) ‖ IV(12) ‖ AES-256-GCM(key, IV, JSON, aad = MAGIC) ‖ tag(16)`, the key
//! (32 bytes) supplied by the caller (on a phone: from the platform keystore), the IV random.
//!
//! Atomic replacement: the new state is written to `.<name>.tmp` in the same directory, fsynced,
//! renamed over the file, and the directory is fsynced. A crash at any point leaves either the old
//! file or the new one, never a mix; a leftover temporary file (half-written) is ignored on load.

use crate::app::{App, AppConfig, Chunk, ChunkState, Registration};
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use robert_proto::sealed::EbidEntry;
use robert_proto::{
    AuthKey, Ebid, Ecc, Epoch, EpochSchedule, KAuth, KEnc, NtpTime, SecretBytes, UploadRecord,
};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use zeroize::{Zeroize, Zeroizing};

/// The first bytes of a state file (format version 1).
const MAGIC: &[u8; 8] = b"ROBAPP\x00\x01";

/// Why the state could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// There is no state file.
    #[error("no state file at {0}")]
    Missing(PathBuf),
    /// The file exists but is not a state sealed under this key (wrong key, or damaged).
    #[error("the state file is damaged or sealed under another key")]
    Corrupt,
    /// A file-system error.
    #[error("state file: {0}")]
    Io(#[from] std::io::Error),
}

/// The 32-byte key the state is encrypted under. Secret: redacted `Debug`, zeroized on drop.
pub struct StateKey(SecretBytes<32>);

impl StateKey {
    /// Wraps 32 key bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(SecretBytes::new(bytes))
    }

    /// A fresh random key.
    pub fn random(rng: &mut impl rand_core::CryptoRng) -> Self {
        Self(SecretBytes::random(rng))
    }

    /// The key bytes (to store them in a keystore).
    pub fn expose_secret(&self) -> &[u8; 32] {
        self.0.expose_secret()
    }
}

impl core::fmt::Debug for StateKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("StateKey([redacted])")
    }
}

/// The state file: a path and the key it is sealed under.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    key: StateKey,
}

impl StateFile {
    /// The state file at `path`, sealed under `key`.
    pub fn new(path: impl Into<PathBuf>, key: StateKey) -> Self {
        Self { path: path.into(), key }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Does the file exist?
    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    /// The temporary file used while writing: `.<name>.tmp` in the same directory.
    pub fn temp_path(&self) -> PathBuf {
        let name = self.path.file_name().map_or_else(|| "state".into(), |n| n.to_string_lossy().into_owned());
        self.path.with_file_name(format!(".{name}.tmp"))
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, self.key.expose_secret()).expect("the key is 32 bytes"),
        )
    }

    /// Seals `app` and replaces the file atomically (temp file, fsync, rename, fsync directory).
    pub fn save(&self, app: &App, rng: &mut impl rand_core::CryptoRng) -> Result<(), StateError> {
        let mut plain = Zeroizing::new(
            serde_json::to_vec(&Stored::from_app(app))
                .map_err(|e| StateError::Io(std::io::Error::other(e)))?,
        );
        let mut iv = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut iv);
        let tag = self
            .aead()
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(iv),
                Aad::from(MAGIC),
                plain.as_mut_slice(),
            )
            .map_err(|_| StateError::Corrupt)?;
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&iv);
        out.extend_from_slice(&plain);
        out.extend_from_slice(tag.as_ref());

        let tmp = self.temp_path();
        {
            let mut opts = OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp)?;
            f.write_all(&out)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        #[cfg(unix)]
        File::open(&dir)?.sync_all()?;
        Ok(())
    }

    /// Loads and opens the state. A leftover temporary file from an interrupted save is removed
    /// (the file itself still holds the previous state).
    pub fn load(&self, config: AppConfig) -> Result<App, StateError> {
        let tmp = self.temp_path();
        if tmp.exists() {
            let _ = fs::remove_file(&tmp);
        }
        let mut bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::Missing(self.path.clone()));
            }
            Err(e) => return Err(e.into()),
        };
        if bytes.len() < MAGIC.len() + NONCE_LEN + 16 || &bytes[..MAGIC.len()] != MAGIC {
            return Err(StateError::Corrupt);
        }
        let iv: [u8; NONCE_LEN] =
            bytes[MAGIC.len()..MAGIC.len() + NONCE_LEN].try_into().map_err(|_| StateError::Corrupt)?;
        let body = &mut bytes[MAGIC.len() + NONCE_LEN..];
        let plain = self
            .aead()
            .open_in_place(Nonce::assume_unique_for_key(iv), Aad::from(MAGIC), body)
            .map_err(|_| StateError::Corrupt)?;
        let stored: Result<Stored, _> = serde_json::from_slice(plain);
        plain.zeroize();
        stored.ok().and_then(|s| s.into_app(config)).ok_or(StateError::Corrupt)
    }
}

/// A hex string that is zeroized on drop (for the keys inside the serialized state).
#[derive(Serialize, Deserialize)]
#[serde(transparent)]
struct SecretHex(String);

impl Drop for SecretHex {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredRegistration {
    k_auth: SecretHex,
    k_enc: SecretHex,
    service_start_ntp: u32,
    epoch_duration_sec: u32,
    clock_offset: i64,
    /// `i(3) ‖ EBID(8) ‖ ECC(1)` in hex, one per entry.
    ebids: Vec<String>,
    last_esr_epoch: Option<u32>,
    notified: bool,
    acknowledged: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredChunk {
    token: SecretHex,
    records: Vec<String>,
    not_before: u32,
    /// "pending", "delivered", "assumed-delivered", "refused".
    state: String,
    accepted: u64,
    attempt_unanswered: bool,
}

/// The serialized state (JSON inside the sealed file).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Stored {
    registration: Option<StoredRegistration>,
    /// LocalProximityList entries as upload records (`HELLO ‖ Time ‖ RSSI?`), hex.
    contacts: Vec<String>,
    declaration: Vec<StoredChunk>,
}

impl Stored {
    fn from_app(app: &App) -> Self {
        let registration = app.registration.as_ref().map(|r| StoredRegistration {
            k_auth: SecretHex(hex::encode(r.k_auth.expose_secret())),
            k_enc: SecretHex(hex::encode(r.k_enc.expose_secret())),
            service_start_ntp: r.schedule.service_start().seconds(),
            epoch_duration_sec: r.schedule.epoch_duration_sec(),
            clock_offset: r.clock_offset,
            ebids: r
                .ebids
                .iter()
                .map(|e| {
                    let mut b = [0u8; 12];
                    b[..3].copy_from_slice(&e.epoch.to_be_bytes());
                    b[3..11].copy_from_slice(e.ebid.as_bytes());
                    b[11] = e.ecc.value();
                    hex::encode(b)
                })
                .collect(),
            last_esr_epoch: r.last_esr_epoch.map(Epoch::number),
            notified: r.notified,
            acknowledged: r.acknowledged,
        });
        let declaration = app
            .declaration
            .iter()
            .map(|c| {
                let (state, accepted) = match c.state {
                    ChunkState::Pending => ("pending", 0),
                    ChunkState::Delivered { accepted } => ("delivered", accepted),
                    ChunkState::AssumedDelivered => ("assumed-delivered", 0),
                    ChunkState::Refused => ("refused", 0),
                };
                StoredChunk {
                    token: SecretHex(c.token.to_string()),
                    records: c.records.iter().map(|r| hex::encode(r.encode())).collect(),
                    not_before: c.not_before.seconds(),
                    state: state.to_owned(),
                    accepted,
                    attempt_unanswered: c.attempt_unanswered,
                }
            })
            .collect();
        Self {
            registration,
            contacts: app.contacts.iter().map(|r| hex::encode(r.encode())).collect(),
            declaration,
        }
    }

    fn into_app(self, config: AppConfig) -> Option<App> {
        fn record(h: &str) -> Option<UploadRecord> {
            UploadRecord::decode(&hex::decode(h).ok()?).ok()
        }
        let registration = match self.registration {
            None => None,
            Some(r) => {
                let k_auth = KAuth::from_slice(&Zeroizing::new(hex::decode(&r.k_auth.0).ok()?)).ok()?;
                let k_enc = KEnc::from_slice(&Zeroizing::new(hex::decode(&r.k_enc.0).ok()?)).ok()?;
                let mut ebids = Vec::with_capacity(r.ebids.len());
                for h in &r.ebids {
                    let b: [u8; 12] = hex::decode(h).ok()?.try_into().ok()?;
                    ebids.push(EbidEntry {
                        epoch: Epoch::from_be_bytes([b[0], b[1], b[2]]),
                        ebid: Ebid::from_slice(&b[3..11]).ok()?,
                        ecc: Ecc::new(b[11]),
                    });
                }
                if ebids.windows(2).any(|w| w[0].epoch >= w[1].epoch) {
                    return None;
                }
                Some(Registration {
                    auth: AuthKey::new(&k_auth),
                    k_auth,
                    k_enc,
                    schedule: EpochSchedule::new(NtpTime::new(r.service_start_ntp), r.epoch_duration_sec)?,
                    clock_offset: r.clock_offset,
                    ebids,
                    last_esr_epoch: match r.last_esr_epoch {
                        Some(e) => Some(Epoch::new(e)?),
                        None => None,
                    },
                    notified: r.notified,
                    acknowledged: r.acknowledged,
                })
            }
        };
        let mut contacts = self.contacts.iter().map(|h| record(h)).collect::<Option<Vec<_>>>()?;
        // The App keeps its list in reception-time order (binary searches rely on it); a state
        // written by an older version may not be.
        contacts.sort_by_key(|c| c.time);
        let mut declaration = Vec::with_capacity(self.declaration.len());
        for c in &self.declaration {
            let state = match c.state.as_str() {
                "pending" => ChunkState::Pending,
                "delivered" => ChunkState::Delivered { accepted: c.accepted },
                "assumed-delivered" => ChunkState::AssumedDelivered,
                "refused" => ChunkState::Refused,
                _ => return None,
            };
            declaration.push(Chunk {
                token: Zeroizing::new(c.token.0.clone()),
                records: c.records.iter().map(|h| record(h)).collect::<Option<Vec<_>>>()?,
                not_before: NtpTime::new(c.not_before),
                state,
                attempt_unanswered: c.attempt_unanswered,
            });
        }
        Some(App { config, registration, contacts, declaration })
    }
}
