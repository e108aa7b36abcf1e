//! A real `robert-server` in-process: the protocol [`Service`] over the memory or SQLite store,
//! on the simulated clock, trusting a health authority whose key the simulator holds.

use crate::SimError;
use crate::config::SimConfig;
use crate::rng::{Tag, crypto_rng};
use robert_app::{AppConfig, InProcessTransport};
use robert_proto::NtpTime;
use robert_server::config::Config;
use robert_server::keystore::{self, ServerSecrets};
use robert_server::service::{Clock, Service};
use robert_server::storage::Storage;
use robert_server::token::{AuthorityKey, Purpose, TrustedAuthorities};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// T_pstart of simulated servers, and the start of the simulation: 2026-01-01 00:00 UTC, in NTP
/// seconds. Day `d` of the simulation is the server's UTC day `d`, so blocks of M = 96 epochs
/// are simulated days.
pub const SERVICE_START_NTP: u32 = 3_976_214_400;

/// The server configuration of a simulation: the sim's protocol knobs, a mixer that runs when
/// the simulator says so, no fsync (a crash of the simulator loses nothing worth keeping).
pub fn server_config(cfg: &SimConfig, notification_probability: f64) -> Config {
    let mut c = Config::default();
    c.protocol.service_start_ntp = Some(SERVICE_START_NTP);
    c.protocol.ct_days = cfg.ct_days;
    c.registration.pow_difficulty = cfg.pow_difficulty;
    c.reports.mixer_min_batch = usize::MAX / 2;
    c.reports.mixer_max_delay_sec = u64::from(u32::MAX);
    c.reports.mixer_max_batch = 50_000;
    c.storage.fsync = false;
    c.risk.seconds_per_hello = cfg.hello_period_sec;
    c.risk.min_exposure_minutes = cfg.min_exposure_minutes;
    c.risk.notification_probability = notification_probability;
    c
}

/// The App configuration matching [`server_config`]: the simulated clock is shared, uploads go
/// in one request.
pub fn app_config(cfg: &SimConfig, server: &Config) -> AppConfig {
    AppConfig {
        ct_days: cfg.ct_days,
        hello_delta_sec: server.protocol.hello_delta_sec,
        esr_min_interval_epochs: server.protocol.esr_min_interval_epochs,
        upload_chunk_size: server.reports.max_contacts,
        max_contacts_per_request: server.reports.max_contacts,
        upload_max_delay_sec: 0,
        apply_clock_offset: false,
    }
}

/// An in-process server and what the simulator needs to drive it.
pub struct InProcess<S> {
    /// The protocol service.
    pub service: Arc<Service<S>>,
    clock: Arc<AtomicU32>,
    /// The health authority that issues declaration tokens.
    pub authority: AuthorityKey,
    /// Keys and database live here until the run ends.
    pub dir: tempfile::TempDir,
}

impl<S: Storage> InProcess<S> {
    /// Starts a server with `config`, its store made by `open` in a fresh temporary directory.
    pub async fn start(
        seed: u64,
        mut config: Config,
        open: impl FnOnce(&std::path::Path) -> Result<S, SimError>,
    ) -> Result<Self, SimError> {
        let dir = tempfile::tempdir().map_err(|e| SimError::Server(format!("temporary directory: {e}")))?;
        let key_dir = dir.path().join("keys");
        keystore::keygen(&key_dir, &mut crypto_rng(seed, Tag::Attack, u64::MAX, 1))
            .map_err(|e| SimError::Server(format!("keygen: {e}")))?;
        let secrets = ServerSecrets::load(&key_dir).map_err(|e| SimError::Server(format!("keys: {e}")))?;
        let authority = AuthorityKey::generate(&mut crypto_rng(seed, Tag::Attack, u64::MAX, 2));
        let mut trusted = TrustedAuthorities::new();
        trusted
            .add_public_key_pem(&authority.public_key_pem())
            .map_err(|e| SimError::Server(format!("authority key: {e}")))?;
        // Everything the server writes (database, audit log) stays in the run's directory.
        config.server.data_dir = dir.path().to_path_buf();
        let storage = open(dir.path())?;
        let clock = Arc::new(AtomicU32::new(SERVICE_START_NTP));
        let c = clock.clone();
        let clock_fn: Clock = Arc::new(move || NtpTime::new(c.load(Ordering::SeqCst)));
        let start = NtpTime::new(SERVICE_START_NTP);
        let service = Service::new(config, start, secrets, storage, trusted, clock_fn)
            .await
            .map_err(|e| SimError::Server(e.to_string()))?;
        Ok(Self { service: Arc::new(service), clock, authority, dir })
    }

    /// Sets the server's clock to `t` simulation seconds.
    pub fn set_time(&self, t: i64) -> NtpTime {
        let ntp = ntp(t);
        self.clock.store(ntp.seconds(), Ordering::SeqCst);
        ntp
    }

    /// A transport to this server.
    pub fn transport(&self) -> InProcessTransport<S> {
        InProcessTransport::new(self.service.clone())
    }

    /// `n` declaration tokens valid from simulation time `t` for a day.
    pub fn declare_tokens(
        &self,
        n: usize,
        t: i64,
        rng: &mut impl rand_core::CryptoRng,
    ) -> Result<Vec<String>, SimError> {
        (0..n)
            .map(|_| {
                self.authority
                    .issue(Purpose::Declare, ntp(t).to_unix(), 86_400, rng)
                    .map_err(|e| SimError::Server(format!("token: {e}")))
            })
            .collect()
    }
}

/// NTP time of simulation second `t` (clamped at the service start).
pub fn ntp(t: i64) -> NtpTime {
    NtpTime::new(
        SERVICE_START_NTP.saturating_add(u32::try_from(t.max(0)).unwrap_or(u32::MAX - SERVICE_START_NTP)),
    )
}
