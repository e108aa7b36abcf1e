//! The server a simulation talks to, behind one trait ([`SimServer`]) so that the engine runs
//! unchanged on either kind:
//!
//! - [`InProcess`]: a real `robert-server` in-process, the protocol [`Service`] over the memory or
//!   SQLite store, on the simulated clock (the engine sets it), trusting a health authority whose
//!   key the simulator holds; the mixer runs when the engine says so.
//! - [`crate::remote::Remote`]: a live `robert serve` over HTTP, on real time (see that module for
//!   how simulated time maps onto it).
//!
//! Simulated time is mapped onto the server's NTP time by a [`TimeMap`]: in-process the identity
//! (simulation second `t` is `SERVICE_START_NTP + t`), live a compression of each simulated
//! 15-minute epoch onto one of the server's (shorter) epochs.

use crate::SimError;
use crate::config::SimConfig;
use crate::epidemic::SimTime;
use crate::rng::{Tag, crypto_rng};
use robert_app::{AppConfig, InProcessTransport, Transport};
use robert_proto::{Epoch, EpochSchedule, NtpTime};
use robert_server::config::{Config, RiskSection};
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

/// The simulator's epoch: 15 minutes of simulated time; blocks of 96 are simulated days.
pub const SIM_EPOCH_SEC: u32 = 900;

/// How simulated time maps onto the server's NTP time: simulation second `t` is server second
/// `base_ntp + t / scale`, and simulated epoch `k` (of [`SIM_EPOCH_SEC`]) is server epoch
/// `first_epoch + k`. `base_ntp` is the start of server epoch `first_epoch`, and a server epoch
/// lasts `SIM_EPOCH_SEC / scale` seconds, so both statements agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeMap {
    base_ntp: u32,
    scale: u32,
    first_epoch: u32,
}

impl TimeMap {
    /// The in-process map: the identity from [`SERVICE_START_NTP`], epoch 0 first.
    pub const IN_PROCESS: TimeMap = TimeMap { base_ntp: SERVICE_START_NTP, scale: 1, first_epoch: 0 };

    /// A map onto a server with epochs of `epoch_sec` seconds (a divisor of [`SIM_EPOCH_SEC`]),
    /// simulated epoch 0 being server epoch `first_epoch` of the schedule `schedule`.
    pub fn new(schedule: &EpochSchedule, first_epoch: u32) -> Option<TimeMap> {
        let epoch_sec = schedule.epoch_duration_sec();
        if epoch_sec == 0 || !SIM_EPOCH_SEC.is_multiple_of(epoch_sec) {
            return None;
        }
        let base_ntp = schedule.epoch_start(Epoch::new(first_epoch)?)?.seconds();
        Some(TimeMap { base_ntp, scale: SIM_EPOCH_SEC / epoch_sec, first_epoch })
    }

    /// Simulated seconds per server second (1 in-process).
    pub fn scale(&self) -> u32 {
        self.scale
    }

    /// The server epoch of simulated epoch 0.
    pub fn first_epoch(&self) -> u32 {
        self.first_epoch
    }

    /// The server's NTP time of simulation second `t` (clamped at 0 and at the end of NTP era 0).
    pub fn ntp(&self, t: SimTime) -> NtpTime {
        let s = u32::try_from(t.max(0) / i64::from(self.scale)).unwrap_or(u32::MAX);
        NtpTime::new(self.base_ntp.saturating_add(s))
    }

    /// The server epoch number of simulation second `t`.
    pub fn epoch(&self, t: u32) -> u32 {
        self.first_epoch.saturating_add(t / SIM_EPOCH_SEC)
    }
}

/// The server's counters at the end of a run (no identifiers), as [`ProtocolStats`] reports them.
///
/// [`ProtocolStats`]: crate::engine::ProtocolStats
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerCounters {
    /// Pairs durably stored in the upload pool.
    pub pairs_accepted: u64,
    /// Pairs that added an exposure.
    pub pairs_processed: u64,
    /// Pairs that failed a §6.2 check.
    pub pairs_rejected: u64,
    /// IDs registered.
    pub users: u64,
    /// Pairs left in the upload pool.
    pub pool_left: u64,
}

/// What the engine needs from a server: a transport for the Apps, the protocol parameters the
/// ground truth applies, the clock, declaration tokens and the mixer. Every method that talks to
/// the server blocks on `rt`.
pub trait SimServer {
    /// How the Apps reach the server.
    type Transport: Transport + Clone + Send + Sync + 'static;

    /// A transport to this server.
    fn transport(&self) -> Self::Transport;

    /// The server's epoch schedule (§2.2).
    fn schedule(&self) -> EpochSchedule;

    /// The scoring rule the server applies (§2.3), which the ground truth applies too.
    fn risk(&self) -> RiskSection;

    /// Most pairs the server accepts in one declaration request (one token each).
    fn max_contacts(&self) -> usize;

    /// How long after the last simulated day the final sweep happens (mix, every phone asks once
    /// more): late enough that every phone's last daily ESR is T epochs old (§7 step 8).
    fn final_sweep_after(&self) -> SimTime {
        12 * 3600
    }

    /// Gets the server ready for registrations (§3.3) and says at what server time they happen.
    fn registration_time(&self, rt: &tokio::runtime::Runtime) -> Result<NtpTime, SimError>;

    /// After registration: how simulated time maps onto the server's. `ebids_until` is the last
    /// epoch of a freshly registered App's EBID list (§4).
    fn time_map(&self, rt: &tokio::runtime::Runtime, ebids_until: Option<Epoch>)
    -> Result<TimeMap, SimError>;

    /// The start of a simulated day: the day's keys and the expiry of old data (§3.1, §6.2).
    fn start_day(
        &self,
        rt: &tokio::runtime::Runtime,
        map: &TimeMap,
        day_start: SimTime,
    ) -> Result<(), SimError>;

    /// Brings the server's clock to simulation second `t` (in-process: sets it; live: waits for
    /// it) and returns the server time at which the Apps act (live: later than `map.ntp(t)` if
    /// the simulator lags behind real time).
    fn advance(&self, rt: &tokio::runtime::Runtime, map: &TimeMap, t: SimTime) -> Result<NtpTime, SimError>;

    /// `n` declaration tokens (§6.1) valid from `now` for a day.
    fn declare_tokens(
        &self,
        n: usize,
        now: NtpTime,
        rng: &mut dyn rand_core::CryptoRng,
    ) -> Result<Vec<String>, SimError>;

    /// Returns once the pairs uploaded so far have been processed by the mixer (§6.2).
    fn process_uploads(&self, rt: &tokio::runtime::Runtime) -> Result<(), SimError>;

    /// The server's counters for this run.
    fn counters(&self, rt: &tokio::runtime::Runtime) -> Result<ServerCounters, SimError>;
}

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
        issue_tokens(&self.authority, n, ntp(t), rng)
    }
}

/// `n` declaration tokens of `authority`, valid from `now` for a day.
pub(crate) fn issue_tokens(
    authority: &AuthorityKey,
    n: usize,
    now: NtpTime,
    mut rng: &mut dyn rand_core::CryptoRng,
) -> Result<Vec<String>, SimError> {
    (0..n)
        .map(|_| {
            authority
                .issue(Purpose::Declare, now.to_unix(), 86_400, &mut rng)
                .map_err(|e| SimError::Server(format!("token: {e}")))
        })
        .collect()
}

fn server_err(e: impl std::fmt::Display) -> SimError {
    SimError::Server(e.to_string())
}

impl<S: Storage> SimServer for InProcess<S> {
    type Transport = InProcessTransport<S>;

    fn transport(&self) -> Self::Transport {
        InProcess::transport(self)
    }

    fn schedule(&self) -> EpochSchedule {
        *self.service.schedule()
    }

    fn risk(&self) -> RiskSection {
        self.service.config().risk.clone()
    }

    fn max_contacts(&self) -> usize {
        self.service.config().reports.max_contacts
    }

    fn registration_time(&self, rt: &tokio::runtime::Runtime) -> Result<NtpTime, SimError> {
        let now = self.set_time(60);
        rt.block_on(self.service.prepare_day_keys()).map_err(server_err)?;
        Ok(now)
    }

    fn time_map(&self, _: &tokio::runtime::Runtime, _: Option<Epoch>) -> Result<TimeMap, SimError> {
        Ok(TimeMap::IN_PROCESS)
    }

    fn start_day(
        &self,
        rt: &tokio::runtime::Runtime,
        map: &TimeMap,
        day_start: SimTime,
    ) -> Result<(), SimError> {
        self.clock.store(map.ntp(day_start).seconds(), Ordering::SeqCst);
        rt.block_on(async {
            self.service.prepare_day_keys().await?;
            self.service.expire().await.map(drop)
        })
        .map_err(server_err)
    }

    fn advance(&self, _: &tokio::runtime::Runtime, map: &TimeMap, t: SimTime) -> Result<NtpTime, SimError> {
        let now = map.ntp(t);
        self.clock.store(now.seconds(), Ordering::SeqCst);
        Ok(now)
    }

    fn declare_tokens(
        &self,
        n: usize,
        now: NtpTime,
        rng: &mut dyn rand_core::CryptoRng,
    ) -> Result<Vec<String>, SimError> {
        issue_tokens(&self.authority, n, now, rng)
    }

    fn process_uploads(&self, rt: &tokio::runtime::Runtime) -> Result<(), SimError> {
        // §6.2: the mixer processes the pool (a live server does within its bounded delay).
        rt.block_on(self.service.mix_once(true)).map(drop).map_err(server_err)
    }

    fn counters(&self, rt: &tokio::runtime::Runtime) -> Result<ServerCounters, SimError> {
        let m = self.service.metrics();
        let counter = |name| m.counter(name).unwrap_or(0);
        let st = rt.block_on(self.service.storage().stats()).map_err(server_err)?;
        Ok(ServerCounters {
            pairs_accepted: counter("pairs_accepted"),
            pairs_processed: counter("pairs_processed"),
            pairs_rejected: counter("pairs_rejected"),
            users: st.users,
            pool_left: st.pool_depth,
        })
    }
}

/// NTP time of simulation second `t` (clamped at the service start).
pub fn ntp(t: i64) -> NtpTime {
    NtpTime::new(
        SERVICE_START_NTP.saturating_add(u32::try_from(t.max(0)).unwrap_or(u32::MAX - SERVICE_START_NTP)),
    )
}
