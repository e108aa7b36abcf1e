//! Server configuration: every value the spec leaves open (δ, T, M, CT, epoch length, …) is a key
//! here, with a documented default and the reason for it. `robert.example.toml` at the repository
//! root documents every key; this module is the source of truth for defaults.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The whole configuration file (`robert serve --config robert.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Network and files.
    pub server: ServerSection,
    /// Protocol parameters (§2.2, §3.1, §5.2, §7).
    pub protocol: ProtocolSection,
    /// Registration (§3.3).
    pub registration: RegistrationSection,
    /// Declarations and the mixer (§6).
    pub reports: ReportsSection,
    /// Risk scoring (§2.3) and notifications (§7, Annex A).
    pub risk: RiskSection,
    /// Health authorities whose tokens are accepted (§6.1 footnote 11).
    pub authorities: AuthoritiesSection,
    /// Storage backend.
    pub storage: StorageSection,
    /// Federation with other countries' servers (§8): peers, batching, retries, audit log.
    pub federation: FederationSection,
    /// Flood and replay protection (rate limits, replay cache).
    pub limits: LimitsSection,
    /// Where the server's long-term keys live: key files or a PKCS#11 security module.
    pub keystore: KeystoreSection,
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSection {
    /// Address to listen on. Default `127.0.0.1:8080`: loopback, behind a TLS-terminating proxy.
    pub listen: SocketAddr,
    /// Directory for the database and key files. Default `./robert-data`.
    pub data_dir: PathBuf,
    /// Directory of the server's key files (`robert keygen --dir`). Default: `keys` in the data
    /// directory.
    pub key_dir: Option<PathBuf>,
    /// Largest request body accepted, bytes. Default 1 MiB: a declaration of 14 days of contacts
    /// (tens of thousands of pairs of ~60 bytes of JSON) fits; anything larger is refused unread.
    pub max_body_bytes: usize,
    /// The hash-chained audit log (Annex B; `robert audit verify FILE` checks it): key creation
    /// and destruction, token counts, configuration digest at start. Relative to the data
    /// directory. Default `audit.log`; empty to emit the events through `tracing` only.
    pub audit_log: PathBuf,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./robert-data"),
            key_dir: None,
            max_body_bytes: 1 << 20,
            audit_log: PathBuf::from("audit.log"),
        }
    }
}

/// `[protocol]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProtocolSection {
    /// CC_S, this server's country code (§3.1). Default 33 (France, the spec's example).
    pub country_code: u8,
    /// Country codes that are valid federation peers (§6.2 step 3). Pairs whose ECC decrypts to one
    /// of these go to the federation outbox; to any other foreign code, they are dropped.
    pub peer_countries: Vec<u8>,
    /// `T_pstart` in NTP seconds (§3.1). Default: unset, meaning "the start of the UTC day of the
    /// first start", recorded in the data directory so that it never moves afterwards.
    pub service_start_ntp: Option<u32>,
    /// `epoch_duration_sec` (§2.2). Default 900 (15 min): the BLE address rotation period the spec
    /// cites (footnote 4), so an EBID never outlives the MAC address it travels with.
    pub epoch_duration_sec: u32,
    /// CT in days (§1.1): how long contacts, exposures and day keys are kept. Default 14, the
    /// contagious period the spec gives as an example and health authorities used.
    pub ct_days: u32,
    /// δ in seconds (§5.2 step 3, §6.2 step 2). Default 60: phones are only loosely synchronised
    /// (NTP, cellular time), so a tolerance of "a few seconds" rejects real contacts; 60 s still
    /// bounds a relay attack to one minute.
    pub hello_delta_sec: u16,
    /// How far a request's `time` may be from the server's clock, seconds (§7 step 2). Default 300:
    /// phones' clocks drift; the replay window this opens is closed by the T rate limit.
    pub request_time_tolerance_sec: u32,
    /// T, the minimum number of epochs between two ESRs of one App (§7 step 8, footnote 18).
    /// Default 8 (2 h with 15-min epochs, so at most 12 ESRs a day).
    pub esr_min_interval_epochs: u32,
    /// M, the number of epochs an EBID list covers (§4). Default 96 (one day of 15-min epochs):
    /// a registration receives the rest of the current block of M epochs and the next block; an
    /// ESR in the second half of a block receives the next one.
    pub ebid_list_epochs: u32,
}

impl Default for ProtocolSection {
    fn default() -> Self {
        Self {
            country_code: 33,
            peer_countries: Vec::new(),
            service_start_ntp: None,
            epoch_duration_sec: 900,
            ct_days: 14,
            hello_delta_sec: 60,
            request_time_tolerance_sec: 300,
            esr_min_interval_epochs: 8,
            ebid_list_epochs: 96,
        }
    }
}

/// `[registration]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrationSection {
    /// Proof-of-work difficulty in leading zero bits (§3.3). Default 20: about a million SHA-256
    /// on the phone (well under a second), so a bot pays that per identity. 0 disables the work
    /// (benchmarks, tests).
    pub pow_difficulty: u8,
    /// How long a challenge stays valid, seconds. Default 300.
    pub challenge_ttl_sec: u32,
}

impl Default for RegistrationSection {
    fn default() -> Self {
        Self { pow_difficulty: 20, challenge_ttl_sec: 300 }
    }
}

/// `[reports]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReportsSection {
    /// Most pairs in one declaration request. Default 20 000 (14 days of dense contacts).
    pub max_contacts: usize,
    /// The mixer waits for at least this many pairs before processing, so a batch mixes several
    /// declarations (§6.1). Default 1000.
    pub mixer_min_batch: usize,
    /// …but never holds a pair longer than this, seconds (DESIGN §4: at most 60 by default).
    pub mixer_max_delay_sec: u64,
    /// Most pairs processed in one transaction. Default 10 000.
    pub mixer_max_batch: usize,
}

impl Default for ReportsSection {
    fn default() -> Self {
        Self { max_contacts: 20_000, mixer_min_batch: 1000, mixer_max_delay_sec: 60, mixer_max_batch: 50_000 }
    }
}

/// `[risk]`: the public scoring rule (§2.3); see `docs/risk-scoring.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RiskSection {
    /// Which rule decides "at risk": `"epochs"` (count of exposed epochs ≥ `min_exposed_epochs`) or
    /// `"duration"` (weighted exposure minutes ≥ `min_exposure_minutes`). Default `"duration"`.
    pub rule: RiskRule,
    /// For `"epochs"`: exposed epochs (within CT days) needed. Default 1.
    pub min_exposed_epochs: u32,
    /// For `"duration"`: seconds of exposure one uploaded HELLO stands for (the apps' HELLO
    /// period). Default 60.
    pub seconds_per_hello: u32,
    /// For `"duration"`: weighted minutes needed. Default 15 (the "15 minutes, close contact"
    /// rule health authorities used).
    pub min_exposure_minutes: f64,
    /// For `"duration"`: mean RSSI at or above which a contact counts fully (weight 1). Default -60.
    pub near_rssi_dbm: i32,
    /// …below `near` and at or above this, the contact counts with `medium_weight`. Default -75.
    pub medium_rssi_dbm: i32,
    /// Weight of medium-distance contact. Default 0.5.
    pub medium_weight: f64,
    /// Weight of far contact (below `medium_rssi_dbm`) and of HELLOs without RSSI. Default 0.
    pub far_weight: f64,
    /// Annex A: probability p that an ESR not at risk is answered "at risk" anyway. Default 0.
    pub notification_probability: f64,
}

/// The scoring rule (see [`RiskSection::rule`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RiskRule {
    /// Count of exposed epochs.
    Epochs,
    /// Weighted duration and proximity.
    Duration,
}

impl Default for RiskSection {
    fn default() -> Self {
        Self {
            rule: RiskRule::Duration,
            min_exposed_epochs: 1,
            seconds_per_hello: 60,
            min_exposure_minutes: 15.0,
            near_rssi_dbm: -60,
            medium_rssi_dbm: -75,
            medium_weight: 0.5,
            far_weight: 0.0,
            notification_probability: 0.0,
        }
    }
}

/// `[authorities]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AuthoritiesSection {
    /// PEM files of health-authority public keys (SubjectPublicKeyInfo) whose tokens are accepted.
    /// Relative paths are relative to the data directory. With no config file, the development key
    /// `dev-authority.pem` is created and trusted.
    pub public_keys: Vec<PathBuf>,
}

/// `[storage]`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSection {
    /// `"sqlite"` (default, `robert.db` in the data directory), `"postgres"` (a PostgreSQL
    /// database shared by several replicas) or `"memory"` (nothing survives a restart: tests and
    /// demos only).
    pub backend: StorageBackend,
    /// For SQLite: fsync every commit (`synchronous = FULL`). Default true: an answered write
    /// survives power loss. False trades that for speed (`NORMAL`: survives a process crash).
    pub fsync: bool,
    /// For PostgreSQL: the connection URL (`postgres://user@host:port/database`). Default unset.
    /// The environment variable [`POSTGRES_URL_ENV`], when set, overrides it, so that a password
    /// never has to be written in the file.
    pub postgres_url: Option<String>,
    /// For PostgreSQL: most connections one replica keeps open. Default 16: a request holds one
    /// for a single round trip, so 16 carry thousands of requests a second; replicas × pool size
    /// must stay below the server's `max_connections` (see docs/deploy.md).
    pub postgres_pool_size: usize,
}

/// Environment variable that gives (and overrides) `storage.postgres_url`.
pub const POSTGRES_URL_ENV: &str = "ROBERT_POSTGRES_URL";

impl Default for StorageSection {
    fn default() -> Self {
        Self { backend: StorageBackend::Sqlite, fsync: true, postgres_url: None, postgres_pool_size: 16 }
    }
}

impl std::fmt::Debug for StorageSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: say whether it is set, never what it is.
        f.debug_struct("StorageSection")
            .field("backend", &self.backend)
            .field("fsync", &self.fsync)
            .field("postgres_url", &self.postgres_url.as_ref().map(|_| "[redacted]"))
            .field("postgres_pool_size", &self.postgres_pool_size)
            .finish()
    }
}

impl StorageSection {
    /// The PostgreSQL URL in force: [`POSTGRES_URL_ENV`] if set and not empty, else
    /// `postgres_url`; an error naming both if neither is set.
    pub fn postgres_url(&self) -> Result<String, ConfigError> {
        match std::env::var(POSTGRES_URL_ENV) {
            Ok(url) if !url.is_empty() => Ok(url),
            _ => self.postgres_url.clone().filter(|u| !u.is_empty()).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "storage.backend = \"postgres\" needs a database URL: set storage.postgres_url or \
                     the environment variable {POSTGRES_URL_ENV}"
                ))
            }),
        }
    }
}

/// Storage backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// Embedded SQLite.
    Sqlite,
    /// In memory.
    Memory,
    /// PostgreSQL, shared by replicas.
    Postgres,
}

/// `[keystore]`: where the server's secrets live (`crate::keystore`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeystoreSection {
    /// `"files"` (default: hex key files in `server.key_dir`, for development) or `"pkcs11"` (a
    /// security module provisioned by `robert keygen --pkcs11`: sk_S and the KEK never leave it).
    pub backend: KeystoreBackend,
    /// For pkcs11: the module, e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub pkcs11_module: Option<PathBuf>,
    /// For pkcs11: the token's label.
    pub pkcs11_token_label: Option<String>,
    /// For pkcs11: the environment variable that holds the token's user PIN (never in this file).
    /// Default [`PKCS11_PIN_ENV`].
    pub pkcs11_pin_env: String,
}

/// Default environment variable of the PKCS#11 user PIN.
pub const PKCS11_PIN_ENV: &str = "ROBERT_PKCS11_PIN";

impl Default for KeystoreSection {
    fn default() -> Self {
        Self {
            backend: KeystoreBackend::Files,
            pkcs11_module: None,
            pkcs11_token_label: None,
            pkcs11_pin_env: PKCS11_PIN_ENV.to_owned(),
        }
    }
}

impl KeystoreSection {
    /// The module and token of the pkcs11 backend; an error naming the missing keys.
    pub fn pkcs11_settings(&self) -> Result<crate::keystore::pkcs11::Pkcs11Settings, ConfigError> {
        match (&self.pkcs11_module, &self.pkcs11_token_label) {
            (Some(module), Some(label)) if !label.is_empty() && !module.as_os_str().is_empty() => {
                Ok(crate::keystore::pkcs11::Pkcs11Settings {
                    module: module.clone(),
                    token_label: label.clone(),
                })
            }
            _ => Err(ConfigError::Invalid(
                "keystore.backend = \"pkcs11\" needs keystore.pkcs11_module and keystore.pkcs11_token_label"
                    .into(),
            )),
        }
    }
}

/// Key-store backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeystoreBackend {
    /// Key files in the key directory.
    Files,
    /// A PKCS#11 security module.
    Pkcs11,
}

/// `[federation]` (§8, `docs/federation.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FederationSection {
    /// Most pairs in one outbound batch. Default 5000: a batch of ~115 KB of JSON, well under any
    /// peer's body limit (1 MiB by default), and few round trips for a day of a country's uploads.
    pub max_batch_pairs: usize,
    /// Largest request body sent to a peer, bytes (the batch's JSON). Batches are sealed with at
    /// most as many pairs as fit, and a pending batch above it (sealed under another setting) is
    /// sent in parts. Keep it below every peer's `server.max_body_bytes`; a peer that still
    /// answers `413` gets the batch in halves (`docs/federation.md` § "Sending"). Default
    /// 524 288 (512 KiB, half the default body limit; ~17 800 pairs).
    pub max_batch_bytes: usize,
    /// First retry delay after a failed delivery, milliseconds; doubled after each failure.
    /// Default 1000.
    pub retry_initial_ms: u64,
    /// Longest retry delay, milliseconds. Default 300 000 (5 min): a peer back from an outage is
    /// served within minutes, and a peer down for days costs a request every 5 minutes.
    pub retry_max_ms: u64,
    /// How long to wait for a peer's answer, seconds. Default 30.
    pub request_timeout_sec: u64,
    /// Batches created more than this long ago (by the sender's clock) are refused as expired,
    /// seconds; the receiver remembers every batch ID for this long, so a replay inside the window
    /// is recognised and one outside it is refused. Default 1 209 600 (14 days = CT: older pairs
    /// can no longer matter, §6.2 and footnote 17).
    pub replay_window_sec: u32,
    /// Append-only audit log of batches sent and received (IDs and counts, never contents), one
    /// JSON line per event. Relative to the data directory. Default `federation-audit.log`; empty
    /// to log the events only through `tracing` (target `robert::federation::audit`).
    pub audit_log: PathBuf,
    /// The peers: other countries' servers this one exchanges pairs with.
    pub peers: Vec<PeerSection>,
}

impl Default for FederationSection {
    fn default() -> Self {
        Self {
            max_batch_pairs: 5000,
            max_batch_bytes: 512 * 1024,
            retry_initial_ms: 1000,
            retry_max_ms: 300_000,
            request_timeout_sec: 30,
            replay_window_sec: 14 * 86_400,
            audit_log: PathBuf::from("federation-audit.log"),
            peers: Vec::new(),
        }
    }
}

/// One `[[federation.peers]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSection {
    /// The peer's country code (CC of §3.1): pairs whose ECC decrypts to it are sent there.
    pub country_code: u8,
    /// The peer's base URL (`https://…`); batches go to `{url}/api/v1/federation/batch`.
    pub url: String,
    /// The peer's Ed25519 public key, hex (its `federation-signing-public.hex`): batches it sends
    /// are accepted only under this key.
    pub public_key: String,
}

/// `[limits]`: flood and replay protection (see [`crate::limits`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    /// Registrations processed at once; the next one is answered 429 immediately. Default 256:
    /// far above what honest traffic keeps in flight (a registration takes about a millisecond),
    /// and it bounds the queued work of a flood so that the server keeps answering. 0: no cap.
    pub register_max_in_flight: usize,
    /// Registrations per second, server-wide, beyond which `POST /register` answers 429 before
    /// any cryptographic work. Default 0 (off): set it to the rate the deployment expects (its
    /// population's installs), which no default can know; benchmarks measure capacity without it.
    pub register_per_sec: u32,
    /// Registrations that may arrive at once after a quiet period (with `register_per_sec`).
    /// Default 0 (= `register_per_sec`).
    pub register_burst: u32,
    /// Challenges handed out per second, server-wide, beyond which `POST /register/challenge`
    /// answers 429. Default 0 (off); each challenge is one HMAC, cheap to refuse or to serve.
    pub challenge_per_sec: u32,
    /// Challenges that may be handed out at once after a quiet period. Default 0
    /// (= `challenge_per_sec`).
    pub challenge_burst: u32,
    /// Most authenticated-request MACs remembered to refuse replays inside the time tolerance.
    /// Default 1 048 576 (~40 MB): a country of 10 M Apps sending 12 ESRs a day needs ~1400/s,
    /// i.e. ~840 000 within a 600 s window.
    pub replay_cache_entries: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            register_max_in_flight: 256,
            register_per_sec: 0,
            register_burst: 0,
            challenge_per_sec: 0,
            challenge_burst: 0,
            replay_cache_entries: 1 << 20,
        }
    }
}

/// A configuration error, with the file and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (names the key).
        message: String,
    },
    /// A value is out of its domain.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let config: Config = toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the values' domains.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let p = &self.protocol;
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if p.epoch_duration_sec == 0 || 86_400 % p.epoch_duration_sec != 0 {
            return bad("protocol.epoch_duration_sec must divide 86400 (a day holds whole epochs)");
        }
        if p.ct_days == 0 || p.ct_days > 60 {
            return bad("protocol.ct_days must be in 1..=60");
        }
        if p.hello_delta_sec == 0 {
            return bad("protocol.hello_delta_sec must be at least 1");
        }
        if p.ebid_list_epochs == 0 || p.ebid_list_epochs > 4096 {
            return bad("protocol.ebid_list_epochs must be in 1..=4096");
        }
        if p.peer_countries.contains(&p.country_code) {
            return bad("protocol.peer_countries must not contain the server's own country_code");
        }
        let r = &self.risk;
        if !(0.0..=1.0).contains(&r.notification_probability) {
            return bad("risk.notification_probability must be in [0, 1]");
        }
        if r.seconds_per_hello == 0 || r.min_exposure_minutes.is_nan() || r.min_exposure_minutes < 0.0 {
            return bad("risk.seconds_per_hello must be > 0 and risk.min_exposure_minutes >= 0");
        }
        if r.near_rssi_dbm < r.medium_rssi_dbm {
            return bad("risk.near_rssi_dbm must be >= risk.medium_rssi_dbm");
        }
        for w in [r.medium_weight, r.far_weight] {
            if !(0.0..=1.0).contains(&w) {
                return bad("risk weights must be in [0, 1]");
            }
        }
        let m = &self.reports;
        if m.mixer_min_batch == 0 || m.mixer_max_batch < m.mixer_min_batch || m.max_contacts == 0 {
            return bad("reports: need 0 < mixer_min_batch <= mixer_max_batch and max_contacts > 0");
        }
        if self.limits.replay_cache_entries == 0 {
            return bad("limits.replay_cache_entries must be at least 1");
        }
        if self.registration.challenge_ttl_sec == 0 {
            return bad("registration.challenge_ttl_sec must be at least 1");
        }
        if self.storage.backend == StorageBackend::Postgres {
            if self.storage.postgres_pool_size == 0 {
                return bad("storage.postgres_pool_size must be at least 1");
            }
            // Replicas each derive T_pstart on their own otherwise (the start of the day of their
            // first start), and replicas that disagree on epochs reject each other's EBIDs.
            if self.protocol.service_start_ntp.is_none() {
                return bad("storage.backend = \"postgres\" (replicas) needs protocol.service_start_ntp set");
            }
        }
        if self.keystore.backend == KeystoreBackend::Pkcs11 {
            self.keystore.pkcs11_settings()?;
        }
        if self.keystore.pkcs11_pin_env.is_empty() {
            return bad("keystore.pkcs11_pin_env must name an environment variable");
        }
        self.validate_federation()
    }

    fn validate_federation(&self) -> Result<(), ConfigError> {
        let f = &self.federation;
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if f.max_batch_pairs == 0 || f.max_batch_pairs > crate::federation::MAX_BATCH_PAIRS {
            return bad(format!(
                "federation.max_batch_pairs must be in 1..={}",
                crate::federation::MAX_BATCH_PAIRS
            ));
        }
        let one_pair = crate::federation::body_len_for_pairs(1);
        if f.max_batch_bytes < one_pair {
            return bad(format!("federation.max_batch_bytes must be at least {one_pair} (one pair)"));
        }
        if f.retry_initial_ms == 0 || f.retry_max_ms < f.retry_initial_ms {
            return bad("federation: need 0 < retry_initial_ms <= retry_max_ms".into());
        }
        if f.request_timeout_sec == 0 || f.replay_window_sec == 0 {
            return bad("federation.request_timeout_sec and replay_window_sec must be at least 1".into());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, peer) in f.peers.iter().enumerate() {
            if peer.country_code == self.protocol.country_code {
                return bad(format!("federation.peers[{i}]: country_code is this server's own"));
            }
            if !seen.insert(peer.country_code) {
                return bad(format!(
                    "federation.peers[{i}]: country_code {} listed twice",
                    peer.country_code
                ));
            }
            if !(peer.url.starts_with("http://") || peer.url.starts_with("https://")) {
                return bad(format!("federation.peers[{i}].url must start with http:// or https://"));
            }
            if crate::federation::parse_public_key(&peer.public_key).is_none() {
                return bad(format!("federation.peers[{i}].public_key must be 64 hex digits (Ed25519)"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().expect("defaults valid");
    }

    #[test]
    fn pkcs11_keystore_needs_module_and_token() {
        let mut c = Config::default();
        c.keystore.backend = KeystoreBackend::Pkcs11;
        let e = c.validate().expect_err("no module").to_string();
        assert!(e.contains("keystore.pkcs11_module") && e.contains("keystore.pkcs11_token_label"), "{e}");
        c.keystore.pkcs11_module = Some(PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
        c.keystore.pkcs11_token_label = Some("robert".into());
        c.validate().expect("valid");
        c.keystore.pkcs11_pin_env = String::new();
        assert!(c.validate().expect_err("no PIN variable").to_string().contains("pkcs11_pin_env"));
        let parsed: Config = toml::from_str(
            "[keystore]\nbackend = \"pkcs11\"\npkcs11_module = \"/m.so\"\npkcs11_token_label = \"t\"\n",
        )
        .expect("parses");
        assert_eq!(parsed.keystore.pkcs11_settings().expect("settings").token_label, "t");
        assert_eq!(parsed.keystore.pkcs11_pin_env, PKCS11_PIN_ENV);
        assert!(toml::from_str::<Config>("[keystore]\npkcs11_pin = \"1234\"\n").is_err(), "no PIN key");
    }

    #[test]
    fn example_file_parses_to_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../robert.example.toml");
        let config = Config::load(&path).expect("example config loads");
        assert_eq!(config, Config::default(), "robert.example.toml documents the defaults");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let dir = std::env::temp_dir().join(format!("robert-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let f = dir.join("bad.toml");
        std::fs::write(&f, "[protocol]\nepoch_duration_secs = 900\n").expect("write");
        let e = Config::load(&f).expect_err("unknown key").to_string();
        assert!(e.contains("epoch_duration_secs"), "{e}");
        std::fs::write(&f, "[protocol]\nepoch_duration_sec = 7\n").expect("write");
        let e = Config::load(&f).expect_err("bad value").to_string();
        assert!(e.contains("epoch_duration_sec"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn postgres_needs_a_fixed_service_start_and_a_pool() {
        let mut c = Config::default();
        c.storage.backend = StorageBackend::Postgres;
        let e = c.validate().expect_err("no service start").to_string();
        assert!(e.contains("service_start_ntp"), "{e}");
        c.protocol.service_start_ntp = Some(3_944_678_400);
        c.validate().expect("valid");
        c.storage.postgres_pool_size = 0;
        let e = c.validate().expect_err("empty pool").to_string();
        assert!(e.contains("postgres_pool_size"), "{e}");
    }

    #[test]
    fn postgres_url_is_never_printed() {
        let mut c = Config::default();
        c.storage.postgres_url = Some("postgres://robert:s3cret@db/robert".into());
        let printed = format!("{c:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("postgres_url: Some(\"[redacted]\")"), "{printed}");
    }
}
