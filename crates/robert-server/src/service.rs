//! The protocol service: every server step of the spec, independent of HTTP.
//!
//! | operation | spec |
//! |---|---|
//! | [`Service::challenge`], [`Service::register`] | §3.3 (proof of work, key agreement), §4 (initial EBID list) |
//! | [`Service::status`] | §7 (ESR, steps 1–8 and the reply), §4 (EBID refresh), Annex A (probabilistic notification) |
//! | [`Service::acknowledge`] | §7 "Application processing" step 1 (code 5) |
//! | [`Service::unregister`], [`Service::delete_history`] | Annex C (codes 3 and 4) |
//! | [`Service::reset_status`] | §3.2 UN_A "can be reset" (code 6, `reset` token) |
//! | [`Service::report`], [`Service::mix_once`] | §6.1 (upload), §6.2 steps 1–10 (mixer) |
//! | [`Service::expire`] | footnote 5 (day keys), footnote 17 (LEE_A), single-use records |
//! | [`Service::federation`] | §6.2 step 3 and §8: routing to peers; sending and receiving is in [`crate::federation`] |
//!
//! Every protocol-check failure is the same [`ServiceError::Rejected`], and the authenticated
//! requests run their checks without early exit (a storage read and a MAC are always performed)
//! so that an unknown ID, a bad MAC, an epoch mismatch or a stale time take comparable time
//! (`cargo bench -p robert-server --bench oracle` compares the distributions). An authenticated
//! request seen before inside the time tolerance is a replay, rejected the same way
//! ([`crate::limits`]).

use crate::config::Config;
use crate::keystore::{DayKeys, KeyError, ServerSecrets};
use crate::metrics::{Metrics, PairTally, Replay};
use crate::risk;
use crate::storage::{
    Exposure, FastMap, FastSet, PoolEntry, ProcessedBatch, RegisterOutcome, StatusOutcome, Storage,
    StorageError, TokenUse, UserRecord,
};
use crate::token::{Purpose, TrustedAuthorities};
use rand::RngExt;
use rand::seq::SliceRandom;
use robert_proto::api::{
    AuthRequestBody, ChallengeResponse, ClockResponse, RegisterRequest, RegisterResponse, ReportRequest,
    ResetRequestBody, StatusResponse, b64_encode,
};
use robert_proto::pow;
use robert_proto::sealed::{self, EbidEntry};
use robert_proto::{
    AuthKey, AuthRequest, CountryCode, DecodeError, Epoch, EpochSchedule, Id, KAuth, KEnc, NtpTime,
    PublicKey, RequestCode, SessionKeys, UploadRecord,
};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The server's clock, injectable for tests (NTP seconds).
pub type Clock = Arc<dyn Fn() -> NtpTime + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        NtpTime::from_unix(unix).unwrap_or(NtpTime::new(u32::MAX))
    })
}

/// Why an operation did not succeed. The HTTP layer maps these in one place.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A protocol check failed: answered uniformly, with no detail (§6.2, §7).
    #[error("rejected")]
    Rejected,
    /// Malformed input: the field is named, its value never.
    #[error("{field}: {reason}")]
    BadRequest {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The server failed; the detail is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<DecodeError> for ServiceError {
    fn from(e: DecodeError) -> Self {
        Self::BadRequest { field: e.field(), reason: e.to_string() }
    }
}

impl From<StorageError> for ServiceError {
    fn from(e: StorageError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<KeyError> for ServiceError {
    fn from(e: KeyError) -> Self {
        Self::Internal(e.to_string())
    }
}

/// Result of service operations.
pub type ServiceResult<T> = Result<T, ServiceError>;

/// A pool entry after §6.2 steps 2–6: its index in the batch, the record, and each (epoch, ID) its
/// EBID decrypts to under a plausible day key.
type Candidate = (usize, UploadRecord, Vec<(Epoch, Id)>);

/// What [`Service::authenticate`] established about a request that passed §7 steps 1–6.
struct Authenticated {
    id: Id,
    record: UserRecord,
    keys: SessionKeys,
    now: Epoch,
    claimed_epoch: Epoch,
    req: AuthRequest,
}

/// The associated data of the dummy wrapped session keys (no ID is 6 bytes long).
const DUMMY_AAD: &[u8] = b"dummy!";

/// Length of a proof-of-work challenge: nonce(16) ‖ expiry(4) ‖ difficulty(1) ‖ MAC(16). The
/// nonce is the issue time in microseconds (8, big-endian) then 8 random bytes: see
/// [`Service::challenge`].
const CHALLENGE_LEN: usize = 16 + 4 + 1 + 16;

/// The ROBERT back-end, over a storage backend `S`.
pub struct Service<S> {
    config: Config,
    schedule: EpochSchedule,
    secrets: ServerSecrets,
    day_keys: DayKeys,
    storage: S,
    authorities: TrustedAuthorities,
    clock: Clock,
    metrics: Metrics,
    mixer_wakeup: tokio::sync::Notify,
    pending_since: Mutex<Option<Instant>>,
    /// Session keys of nobody, wrapped: unwrapped when a request names no record, so that an
    /// unknown ID costs the same unwrap, key setup and MAC as a known one (timing oracle).
    dummy_wrapped: Vec<u8>,
    federation: crate::federation::Federation,
    audit: Arc<crate::audit::AuditLog>,
    replay: crate::limits::ReplayCache,
    /// Registration challenges this process has accepted, until they expire: a replay is refused
    /// before the ECDH (the storage's spend is the authoritative check).
    challenge_replay: crate::limits::ReplayCache,
    challenge_limit: crate::limits::RateLimiter,
    register_limit: crate::limits::RateLimiter,
    register_in_flight: crate::limits::InFlight,
    /// Tokens accepted since the last audit line (declare, reset): counts only (Annex B).
    tokens_accepted: [AtomicU64; 2],
}

impl<S: Storage> Service<S> {
    /// Builds the service; loads the stored day keys.
    pub async fn new(
        config: Config,
        service_start: NtpTime,
        mut secrets: ServerSecrets,
        storage: S,
        authorities: TrustedAuthorities,
        clock: Clock,
    ) -> ServiceResult<Self> {
        let federation = crate::federation::Federation::new(&config, secrets.federation_signing.take())
            .map_err(ServiceError::Internal)?;
        let schedule = EpochSchedule::new(service_start, config.protocol.epoch_duration_sec)
            .ok_or_else(|| ServiceError::Internal("epoch duration must be positive".into()))?;
        let day_keys = DayKeys::load(&storage, &secrets.kek).await?;
        let audit = Arc::new(
            crate::audit::open_in(&config.server.data_dir, &config.server.audit_log)
                .map_err(|e| ServiceError::Internal(format!("server.audit_log: {e}")))?,
        );
        day_keys.attach_audit(audit.clone());
        // Annex B: the configuration in force (a digest: it holds no secret, but the log holds
        // no paths either) and the public key's fingerprint, at every start.
        let config_json = serde_json::to_vec(&config).map_err(|e| ServiceError::Internal(e.to_string()))?;
        audit.append(
            "start",
            &[
                ("version", serde_json::json!(env!("CARGO_PKG_VERSION"))),
                ("config_sha256", serde_json::json!(hex::encode(Sha256::digest(&config_json)))),
                (
                    "server_key_sha256",
                    serde_json::json!(hex::encode(Sha256::digest(
                        secrets.registration.public_key().as_bytes()
                    ))),
                ),
                ("day_keys_loaded", serde_json::json!(day_keys.days().len())),
            ],
        );
        let dummy = SessionKeys { k_auth: KAuth::new(rand::random()), k_enc: KEnc::new(rand::random()) };
        let dummy_wrapped = secrets.kek.wrap_session_keys(&dummy, DUMMY_AAD)?;
        let l = &config.limits;
        let replay = crate::limits::ReplayCache::new(l.replay_cache_entries);
        let challenge_replay = crate::limits::ReplayCache::new(l.replay_cache_entries);
        let challenge_limit = crate::limits::RateLimiter::new(l.challenge_per_sec, l.challenge_burst);
        let register_limit = crate::limits::RateLimiter::new(l.register_per_sec, l.register_burst);
        let register_in_flight = crate::limits::InFlight::new(l.register_max_in_flight);
        Ok(Self {
            config,
            schedule,
            secrets,
            day_keys,
            storage,
            authorities,
            clock,
            metrics: Metrics::default(),
            mixer_wakeup: tokio::sync::Notify::new(),
            pending_since: Mutex::new(None),
            dummy_wrapped,
            federation,
            audit,
            replay,
            challenge_replay,
            challenge_limit,
            register_limit,
            register_in_flight,
            tokens_accepted: [AtomicU64::new(0), AtomicU64::new(0)],
        })
    }

    /// The audit log (Annex B).
    pub fn audit(&self) -> &crate::audit::AuditLog {
        &self.audit
    }

    /// Rate limit of `POST /register/challenge`: `false` means answer 429.
    pub fn admit_challenge(&self) -> bool {
        self.challenge_limit.admit(self.now())
    }

    /// Flood limits of `POST /register` (the in-flight cap, then the rate): `None` means answer
    /// 429 before any work; otherwise hold the guard while registering.
    pub fn admit_registration(&self) -> Option<crate::limits::InFlightGuard> {
        let guard = self.register_in_flight.try_enter()?;
        self.register_limit.admit(self.now()).then_some(guard)
    }

    /// Writes the counts of health-authority tokens accepted since the last call to the audit
    /// log (nothing when there were none). Run by the upkeep job every epoch, so the log shows
    /// volumes per epoch, never one line per declaration (which would time-stamp each one).
    pub fn audit_token_counts(&self) {
        let declare = self.tokens_accepted[0].swap(0, Ordering::Relaxed);
        let reset = self.tokens_accepted[1].swap(0, Ordering::Relaxed);
        if declare + reset > 0 {
            self.audit.append(
                "tokens-accepted",
                &[("declare", serde_json::json!(declare)), ("reset", serde_json::json!(reset))],
            );
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The epoch schedule.
    pub fn schedule(&self) -> &EpochSchedule {
        &self.schedule
    }

    /// The storage backend.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Federation (§8): peers, routing, delivery state.
    pub fn federation(&self) -> &crate::federation::Federation {
        &self.federation
    }

    /// The server's current time.
    pub fn now(&self) -> NtpTime {
        (self.clock)()
    }

    fn now_epoch(&self, now: NtpTime) -> ServiceResult<Epoch> {
        self.schedule
            .epoch_at(now)
            .ok_or_else(|| ServiceError::Internal("the clock is before the service start".into()))
    }

    /// The UTC day (days since 1970-01-01) that epoch `e` starts in: the day whose K_S makes its
    /// EBIDs.
    fn day_of_epoch(&self, e: Epoch) -> Option<u32> {
        self.schedule.epoch_start(e).map(|t| (t.to_unix() / 86_400) as u32)
    }

    /// `GET /api/v1/clock`.
    pub fn clock(&self) -> ServiceResult<ClockResponse> {
        let now = self.now();
        Ok(ClockResponse {
            service_start_ntp: self.schedule.service_start().seconds(),
            epoch_duration_sec: self.schedule.epoch_duration_sec(),
            current_epoch: self.now_epoch(now)?.number(),
            ntp_time: now.seconds(),
        })
    }

    /// `GET /api/v1/server-key`: pk_S.
    pub fn server_public_key(&self) -> &PublicKey {
        self.secrets.registration.public_key()
    }

    /// `POST /api/v1/register/challenge` (§3.3): a puzzle the server can check without storing it.
    pub fn challenge(&self) -> ChallengeResponse {
        let now = self.now();
        let expires = now.checked_add(self.config.registration.challenge_ttl_sec).unwrap_or(now);
        let difficulty = self.config.registration.pow_difficulty;
        let mut c = [0u8; CHALLENGE_LEN];
        // The nonce: the issue time in microseconds, then 8 random bytes (two challenges of one
        // microsecond still differ). A spent challenge is remembered under its nonce (the
        // storage's `spend_token`, key `pow:<hex>`) until it expires, so keys in issue order make
        // each spend an insert at the end of that index rather than on a random page of it: a
        // SQLite registration writes 7.6 KB instead of 12.8 KB. The time tells the App nothing
        // the expiry does not (issue = expiry − TTL).
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        c[..8].copy_from_slice(&micros.to_be_bytes());
        rand::fill(&mut c[8..16]);
        c[16..20].copy_from_slice(&expires.to_be_bytes());
        c[20] = difficulty;
        let mac = self.challenge_mac(&c[..21]);
        c[21..].copy_from_slice(&mac);
        ChallengeResponse { challenge: b64_encode(&c), difficulty, expires_ntp: expires.seconds() }
    }

    fn challenge_mac(&self, body: &[u8]) -> [u8; 16] {
        let tag = aws_lc_rs::hmac::sign(&self.secrets.challenge_key, body);
        let mut out = [0u8; 16];
        out.copy_from_slice(&tag.as_ref()[..16]);
        out
    }

    /// `POST /api/v1/register` (§3.3, §4).
    pub async fn register(&self, req: &RegisterRequest) -> ServiceResult<RegisterResponse> {
        let robert_proto::api::Registration { challenge, solution, client_public_key: client } =
            req.decode(CHALLENGE_LEN)?;

        // The challenge is ours, unexpired, and solved.
        let now = self.now();
        let expected = self.challenge_mac(&challenge[..21]);
        let mac_ok = aws_lc_rs::constant_time::verify_slices_are_equal(&expected, &challenge[21..]).is_ok();
        let expires = NtpTime::from_be_bytes([challenge[16], challenge[17], challenge[18], challenge[19]]);
        if !mac_ok || expires < now || !pow::verify(&challenge, &solution, challenge[20]) {
            self.metrics.registration_rejected();
            return Err(ServiceError::Rejected);
        }
        // Accepted once (DESIGN §4). A challenge this process has already seen is refused here,
        // before the key agreement, so that replaying one costs the server no ECDH; the durable
        // spend below (in the same transaction as the registration) is what holds across
        // restarts and replicas.
        let mut nonce = [0u8; 32];
        nonce[..16].copy_from_slice(&challenge[..16]);
        if !self.challenge_replay.first_use(&nonce, expires, now) {
            self.metrics.registration_rejected();
            self.metrics.replay_refused(Replay::Challenge);
            return Err(ServiceError::Rejected);
        }
        let spent = TokenUse {
            jti: format!("pow:{}", hex::encode(&challenge[..16])),
            expires_unix: expires.to_unix(),
        };

        let keys = self.secrets.registration.agree(&client)?;
        // ID_A drawn at random without replacement (§3.2): a taken ID is redrawn. The challenge is
        // spent and the ID registered in one durable write (one commit per registration).
        let mut id = None;
        for _ in 0..32 {
            let candidate = Id::new(rand::rng().random_range(0..=Id::MAX)).expect("drawn in range");
            let wrapped = self.secrets.kek.wrap_session_keys(&keys, &candidate.to_be_bytes())?;
            match self.storage.register_user(spent.clone(), candidate, wrapped).await? {
                RegisterOutcome::Registered => {
                    id = Some(candidate);
                    break;
                }
                RegisterOutcome::TokenSpent => {
                    self.metrics.registration_rejected();
                    self.metrics.replay_refused(Replay::Challenge);
                    return Err(ServiceError::Rejected);
                }
                RegisterOutcome::IdTaken => {}
            }
        }
        let id = id.ok_or_else(|| ServiceError::Internal("could not draw a free ID in 32 tries".into()))?;

        let epoch = self.now_epoch(now)?;
        let ebids = self.ebid_list(id, epoch, &keys.k_enc).await?;
        self.metrics.registered();
        Ok(RegisterResponse {
            epoch: epoch.number(),
            epoch_duration_sec: self.schedule.epoch_duration_sec(),
            service_start_ntp: self.schedule.service_start().seconds(),
            next_epoch_start_ntp: self.schedule.next_epoch_start(epoch).map_or(u32::MAX, NtpTime::seconds),
            ebids,
        })
    }

    /// The EBID list an App receives at epoch `from` (§4): from `from` to the end of the block of M
    /// epochs after the current one, so that an App polling at least every M/2 epochs never runs
    /// out. The server keeps none of it (footnote 7).
    async fn ebid_list(&self, id: Id, from: Epoch, k_enc: &KEnc) -> ServiceResult<String> {
        let m = self.config.protocol.ebid_list_epochs;
        let end = (from.number() / m + 2).saturating_mul(m).min(Epoch::MAX.number() + 1);
        let cc = CountryCode::new(self.config.protocol.country_code);
        let mut entries = Vec::with_capacity((end - from.number()) as usize);
        // Group the epochs by the day whose K_S makes them, and encrypt each group bitsliced.
        let mut n = from.number();
        while n < end {
            let first = Epoch::new(n).expect("below 2^24 by construction");
            let day = self
                .day_of_epoch(first)
                .ok_or_else(|| ServiceError::Internal("epoch past NTP era 0".into()))?;
            let mut group = Vec::new();
            while n < end {
                let epoch = Epoch::new(n).expect("below 2^24 by construction");
                if self.day_of_epoch(epoch) != Some(day) {
                    break;
                }
                group.push((epoch, id));
                n += 1;
            }
            let cipher = self.day_keys.get_or_create(day, &self.storage, &self.secrets.kek).await?;
            let ebids = cipher.encrypt_many(&group);
            let eccs = self.secrets.federation.encrypt_countries(&ebids, cc);
            for (((epoch, _), ebid), ecc) in group.iter().zip(ebids).zip(eccs) {
                entries.push(EbidEntry { epoch: *epoch, ebid, ecc });
            }
        }
        let sealed = sealed::seal(k_enc, &entries, &mut rand::rng())
            .map_err(|_| ServiceError::Internal("EBID list out of order".into()))?;
        Ok(b64_encode(&sealed))
    }

    /// §7 steps 1–6 (and Annex C: the same for every authenticated request), without early exit.
    async fn authenticate(&self, body: &AuthRequestBody, code: RequestCode) -> ServiceResult<Authenticated> {
        let req: AuthRequest = body.to_request()?; // step 1 (malformed → 400)
        let now = self.now();
        let now_epoch = self.now_epoch(now)?;
        let mut ok = req.check_time(now, self.config.protocol.request_time_tolerance_sec).is_ok(); // step 2
        // Steps 3–4: K_S is the one of the claimed epoch's day.
        let cipher = self.day_of_epoch(req.epoch).and_then(|d| self.day_keys.get(d));
        let id = match cipher.as_deref().map(|c| req.open_ebid(c)) {
            Some(Ok(id)) => id,
            _ => {
                ok = false;
                Id::new(0).expect("0 is a valid ID")
            }
        };
        // Step 5, always performed; with no record, a dummy is unwrapped (the same AES-GCM open).
        let record = self.storage.load_user(id).await?;
        let unwrapped = match &record {
            Some(r) => self.secrets.kek.unwrap_session_keys(&r.wrapped_keys, &id.to_be_bytes()).ok(),
            None => self.secrets.kek.unwrap_session_keys(&self.dummy_wrapped, DUMMY_AAD).ok(),
        };
        // Step 6, always performed: the key set up and the MAC checked, record or not.
        let mac_ok =
            unwrapped.as_ref().is_some_and(|k| req.verify_mac(&AuthKey::new(&k.k_auth), code).is_ok());
        let keys = if record.is_some() { unwrapped } else { None };
        if !(ok && mac_ok) {
            // The replay cache is looked up on this path too, as accepted requests insert into it.
            let _ = self.replay.contains(&req.mac, now);
        }
        match (ok && mac_ok, record, keys) {
            (true, Some(record), Some(keys)) => {
                Ok(Authenticated { id, record, keys, now: now_epoch, claimed_epoch: req.epoch, req })
            }
            _ => Err(ServiceError::Rejected),
        }
    }

    /// Hardening: the same authenticated request (same MAC) twice inside the time window is a
    /// replay, rejected uniformly (see [`crate::limits`]). Called once the request passed §7
    /// steps 1–6 (and, for a reset, its token verified), so only authenticated requests enter
    /// the cache: an outsider cannot fill it.
    fn first_use(&self, req: &AuthRequest) -> ServiceResult<()> {
        let tol = self.config.protocol.request_time_tolerance_sec;
        let expires = req.time.checked_add(tol).unwrap_or(NtpTime::new(u32::MAX));
        if self.replay.first_use(&req.mac, expires, self.now()) {
            Ok(())
        } else {
            self.metrics.replay_refused(Replay::Request);
            Err(ServiceError::Rejected)
        }
    }

    /// `POST /api/v1/status` (§7).
    pub async fn status(&self, body: &AuthRequestBody) -> ServiceResult<StatusResponse> {
        let Authenticated { id, record, keys, now, claimed_epoch, req } =
            self.authenticate(body, RequestCode::StatusRequest).await?;
        self.first_use(&req)?;
        // Steps 7–8, first from the record read (so every rejection costs the same), then again
        // atomically in storage (so concurrent requests and replicas cannot both pass).
        let t = self.config.protocol.esr_min_interval_epochs;
        if record.acknowledged {
            return Err(ServiceError::Rejected);
        }
        if !record.notified
            && record.last_status_epoch.is_some_and(|sre| now.number().saturating_sub(sre.number()) < t)
        {
            return Err(ServiceError::Rejected);
        }
        let score = risk::score(
            &record.exposures,
            now,
            &self.schedule,
            self.config.protocol.ct_days,
            &self.config.risk,
        );
        let mut at_risk = record.notified || score.at_risk;
        let p = self.config.risk.notification_probability;
        if !at_risk && p > 0.0 && rand::rng().random_bool(p) {
            at_risk = true; // Annex A: selected at random.
        }
        match self.storage.status_request(id, now, t, at_risk).await? {
            StatusOutcome::Rejected => Err(ServiceError::Rejected),
            StatusOutcome::Answer { at_risk } => {
                if at_risk && !record.notified {
                    self.metrics.notified();
                }
                // §4: refresh the EBID list when the App's runs short: it used an EBID older than
                // the current epoch, or the current block of M epochs is half gone.
                let m = self.config.protocol.ebid_list_epochs;
                let ebids = if claimed_epoch < now || now.number() % m >= m / 2 {
                    Some(self.ebid_list(id, now, &keys.k_enc).await?)
                } else {
                    None
                };
                Ok(StatusResponse { at_risk, ebids })
            }
        }
    }

    /// `POST /api/v1/status/ack` (code 5).
    pub async fn acknowledge(&self, body: &AuthRequestBody) -> ServiceResult<()> {
        let auth = self.authenticate(body, RequestCode::StatusAck).await?;
        self.first_use(&auth.req)?;
        let id = auth.id;
        if self.storage.acknowledge(id).await? { Ok(()) } else { Err(ServiceError::Rejected) }
    }

    /// `POST /api/v1/unregister` (Annex C, code 3).
    pub async fn unregister(&self, body: &AuthRequestBody) -> ServiceResult<()> {
        let auth = self.authenticate(body, RequestCode::Unregister).await?;
        self.first_use(&auth.req)?;
        let id = auth.id;
        if self.storage.unregister(id).await? { Ok(()) } else { Err(ServiceError::Rejected) }
    }

    /// `POST /api/v1/delete-history` (Annex C, code 4).
    pub async fn delete_history(&self, body: &AuthRequestBody) -> ServiceResult<()> {
        let auth = self.authenticate(body, RequestCode::DeleteHistory).await?;
        self.first_use(&auth.req)?;
        let id = auth.id;
        if self.storage.delete_history(id).await? { Ok(()) } else { Err(ServiceError::Rejected) }
    }

    /// `POST /api/v1/status/reset` (code 6, with a `reset` token).
    pub async fn reset_status(&self, body: &ResetRequestBody) -> ServiceResult<()> {
        let auth = self.authenticate(&body.request, RequestCode::StatusReset).await;
        let token = self.authorities.verify(&body.token, Purpose::Reset, self.now().to_unix());
        let (id, token) = match (auth, token) {
            (Ok(a), Ok(t)) => {
                self.first_use(&a.req)?;
                (a.id, t)
            }
            (Err(e @ ServiceError::BadRequest { .. }), _) => return Err(e),
            _ => return Err(ServiceError::Rejected),
        };
        let spent = TokenUse { jti: format!("jwt:{}", token.jti), expires_unix: token.exp };
        if self.storage.reset_status(id, spent).await? {
            self.tokens_accepted[1].fetch_add(1, Ordering::Relaxed);
            Ok(())
        } else {
            Err(ServiceError::Rejected)
        }
    }

    /// `POST /api/v1/report` (§6.1): checks the token, stores the pairs durably in the shared pool
    /// (random slots: no declaration identifier, no token, no address) and returns how many.
    pub async fn report(&self, bearer: Option<&str>, body: &ReportRequest) -> ServiceResult<u64> {
        let now = self.now();
        let token = bearer
            .and_then(|t| self.authorities.verify(t, Purpose::Declare, now.to_unix()).ok())
            .ok_or(ServiceError::Rejected)?;
        if body.contacts.len() > self.config.reports.max_contacts {
            return Err(ServiceError::BadRequest {
                field: "contacts",
                reason: format!("at most {} contacts per request", self.config.reports.max_contacts),
            });
        }
        let mut entries = Vec::with_capacity(body.contacts.len());
        for c in &body.contacts {
            let record = c.to_record()?;
            entries.push(PoolEntry { slot: rand::random(), record: record.encode() });
        }
        let n = entries.len() as u64;
        let spent = TokenUse { jti: format!("jwt:{}", token.jti), expires_unix: token.exp };
        if !self.storage.submit_report(spent, entries).await? {
            self.metrics.replay_refused(Replay::Token); // the jti was spent
            return Err(ServiceError::Rejected);
        }
        self.metrics.pairs_accepted(n);
        self.tokens_accepted[0].fetch_add(1, Ordering::Relaxed);
        self.pending_since
            .lock()
            .expect("mixer lock is never poisoned: no panics inside")
            .get_or_insert_with(Instant::now);
        self.mixer_wakeup.notify_one();
        Ok(n)
    }

    /// The mixer's wake-up signal (new pairs arrived).
    pub fn mixer_wakeup(&self) -> &tokio::sync::Notify {
        &self.mixer_wakeup
    }

    /// One mixer pass (§6.1, §6.2): if the pool holds at least `mixer_min_batch` pairs, or pairs
    /// have waited `mixer_max_delay_sec`, or `force`, processes the whole pool in shuffled batches.
    /// Returns the number of pairs erased.
    pub async fn mix_once(&self, force: bool) -> ServiceResult<u64> {
        let depth = self.storage.pool_depth().await?;
        let since = {
            let mut p = self.pending_since.lock().expect("mixer lock is never poisoned: no panics inside");
            if depth == 0 {
                *p = None;
                return Ok(0);
            }
            *p.get_or_insert_with(Instant::now)
        };
        let r = &self.config.reports;
        if !force
            && (depth as usize) < r.mixer_min_batch
            && since.elapsed() < Duration::from_secs(r.mixer_max_delay_sec)
        {
            return Ok(0);
        }
        // Pipelined: while storage commits batch n (durably, on its own writer), batch n + 1 is
        // taken and processed here. Batch n's slots are still in the pool until that commit, so
        // the take asks for that many more and leaves them out.
        let mut erased = 0;
        let mut pending: Option<(ProcessedBatch, PairTally)> = None;
        let mut contended = false;
        loop {
            let committing = pending.take();
            let in_flight: FastSet<[u8; 16]> =
                committing.as_ref().map(|(b, _)| b.slots.iter().copied().collect()).unwrap_or_default();
            let commit = async {
                match committing {
                    Some((batch, tally)) => {
                        let forwarded = !batch.outbox.is_empty();
                        let n = self.storage.pool_commit(batch).await?;
                        if n > 0 {
                            // Durable now: count (0 means another mixer committed and counts them).
                            self.metrics.pairs_mixed(&tally);
                        }
                        if forwarded && n > 0 {
                            self.federation.wake(); // §8: the delivery loops have pairs to send
                        }
                        Ok::<_, ServiceError>(Some(n))
                    }
                    None => Ok(None),
                }
            };
            let next = async {
                if contended {
                    return Ok::<_, ServiceError>(None);
                }
                let mut batch = self.storage.pool_take(r.mixer_max_batch + in_flight.len()).await?;
                batch.retain(|e| !in_flight.contains(&e.slot));
                batch.truncate(r.mixer_max_batch);
                if batch.is_empty() {
                    return Ok(None);
                }
                self.process_batch(batch).await.map(Some)
            };
            let (committed, next) = tokio::join!(commit, next);
            if let Some(n) = committed? {
                erased += n;
                // Another mixer holds these: commit what is already processed, then let it finish.
                contended |= n == 0;
            }
            match next? {
                Some(batch) => pending = Some(batch),
                None => break,
            }
        }
        *self.pending_since.lock().expect("mixer lock is never poisoned: no panics inside") = None;
        Ok(erased)
    }

    /// §6.2 steps 1–9 on a batch; step 10 is the commit that erases every slot of the batch.
    async fn process_batch(&self, mut batch: Vec<PoolEntry>) -> ServiceResult<(ProcessedBatch, PairTally)> {
        // Counted once the batch's commit is durable (`mix_once`): a crash before it, which has
        // the batch processed again, counts nothing twice.
        let mut tally = PairTally::default();
        batch.shuffle(&mut rand::rng());
        let cc_s = self.config.protocol.country_code;
        let delta = self.config.protocol.hello_delta_sec;
        let mut out = ProcessedBatch { slots: batch.iter().map(|e| e.slot).collect(), ..Default::default() };
        // Steps 2–3 per pair; the pairs that stay here, with the days whose K_S may have made
        // their EBID (footnotes 13–16: the EBID's epoch may be that of the reception time or one
        // either side).
        let mut local: Vec<(usize, UploadRecord, Vec<u32>)> = Vec::with_capacity(batch.len());
        let mut decoded: Vec<(usize, UploadRecord)> = Vec::with_capacity(batch.len());
        for (i, entry) in batch.iter().enumerate() {
            let Ok(rec) = UploadRecord::decode(&entry.record) else {
                tally.rejected += 1;
                continue;
            };
            // Step 2: δ.
            if rec.hello.check_delta(rec.time, delta).is_err() {
                tally.rejected += 1;
                continue;
            }
            decoded.push((i, rec));
        }
        // Step 3: the country, AES over the whole batch at once.
        let eccs: Vec<_> = decoded.iter().map(|(_, rec)| (rec.hello.ebid(), rec.hello.ecc())).collect();
        let countries = self.secrets.federation.decrypt_countries(&eccs);
        for ((i, rec), cc) in decoded.into_iter().zip(countries) {
            let entry = &batch[i];
            if cc.value() != cc_s {
                if self.federation.routes(cc) {
                    out.outbox.push((cc, entry.record.clone(), entry.slot));
                    tally.forwarded += 1;
                } else {
                    tally.dropped_foreign += 1;
                }
                continue;
            }
            let Some(t_epoch) = self.schedule.epoch_at(rec.time) else {
                tally.rejected += 1;
                continue;
            };
            let mut days: Vec<u32> = [t_epoch.checked_sub(1), Some(t_epoch), t_epoch.checked_add(1)]
                .into_iter()
                .flatten()
                .filter_map(|e| self.day_of_epoch(e))
                .collect();
            days.dedup();
            local.push((i, rec, days));
        }
        // Steps 4 and 6, per day key, bitsliced: decrypt every EBID that may be of that day.
        let mut found: Vec<Vec<(Epoch, Id)>> = vec![Vec::new(); local.len()];
        let mut wanted: Vec<Id> = Vec::new();
        let mut all_days: Vec<u32> = local.iter().flat_map(|(_, _, d)| d.iter().copied()).collect();
        all_days.sort_unstable();
        all_days.dedup();
        for day in all_days {
            let Some(cipher) = self.day_keys.get(day) else { continue };
            let members: Vec<usize> = (0..local.len()).filter(|&j| local[j].2.contains(&day)).collect();
            let ebids: Vec<robert_proto::Ebid> = members.iter().map(|&j| local[j].1.hello.ebid()).collect();
            for (&j, (epoch, id)) in members.iter().zip(cipher.decrypt_many(&ebids)) {
                if self.schedule.time_matches_epoch(local[j].1.time, epoch)
                    && self.day_of_epoch(epoch) == Some(day)
                {
                    found[j].push((epoch, id));
                    wanted.push(id);
                }
            }
        }
        let mut candidates: Vec<Candidate> = Vec::with_capacity(local.len());
        for ((i, rec, _), found) in local.into_iter().zip(found) {
            if found.is_empty() {
                tally.rejected += 1;
            } else {
                candidates.push((i, rec, found));
            }
        }
        // Steps 5 and 7: one read for the whole batch.
        let keys: FastMap<Id, Vec<u8>> = self.storage.load_user_keys(wanted).await?.into_iter().collect();
        for (i, rec, found) in candidates {
            let mut matched = false;
            for (epoch, id) in found {
                let Some(wrapped) = keys.get(&id) else { continue };
                let Ok(k) = self.secrets.kek.unwrap_session_keys(wrapped, &id.to_be_bytes()) else {
                    continue;
                };
                // Step 8: the MAC.
                if rec.hello.verify(&AuthKey::new(&k.k_auth)).is_ok() {
                    // Step 9: add i_A to LEE_A.
                    let (rssi_sum, rssi_count) = rec.rssi.map_or((0, 0), |r| (i64::from(r), 1));
                    out.exposures.push((
                        id,
                        Exposure { epoch, hellos: 1, rssi_sum, rssi_count },
                        batch[i].slot,
                    ));
                    matched = true;
                    break;
                }
            }
            if matched {
                tally.processed += 1;
            } else {
                tally.rejected += 1;
            }
        }
        Ok((out, tally))
    }

    /// Expiry, run every epoch: LEE rows older than CT days (footnote 17), used-token records past
    /// their expiry, and day keys more than CT days old (footnote 5), in storage and in memory.
    pub async fn expire(&self) -> ServiceResult<crate::storage::ExpiryStats> {
        let now = self.now();
        let epoch = self.now_epoch(now)?;
        let horizon = self.schedule.epochs_in_days(self.config.protocol.ct_days);
        let lee_before = epoch.checked_sub(horizon).unwrap_or(Epoch::new(0).expect("0 is valid"));
        let today = (now.to_unix() / 86_400) as u32;
        let keys_before = today.saturating_sub(self.config.protocol.ct_days);
        let stats = self.storage.expire(lee_before, now.to_unix(), keys_before).await?;
        let in_memory = self.day_keys.forget_before(keys_before);
        if stats.server_keys > 0 || in_memory > 0 {
            // Footnote 5: K_S destroyed after CT days (the day numbers are public dates).
            self.audit.append(
                "day-keys-destroyed",
                &[
                    ("before_day", serde_json::json!(keys_before)),
                    ("stored", serde_json::json!(stats.server_keys)),
                    ("in_memory", serde_json::json!(in_memory)),
                ],
            );
        }
        Ok(stats)
    }

    /// Makes sure the day keys from today to the end of the longest EBID list exist (so that
    /// registrations never wait for a key to be created and persisted), and picks up the keys
    /// other replicas created.
    pub async fn prepare_day_keys(&self) -> ServiceResult<()> {
        self.day_keys.refresh(&self.storage, &self.secrets.kek).await?;
        let today = (self.now().to_unix() / 86_400) as u32;
        let list_days =
            (2 * self.config.protocol.ebid_list_epochs * self.schedule.epoch_duration_sec()).div_ceil(86_400);
        for day in today..=today + list_days {
            self.day_keys.get_or_create(day, &self.storage, &self.secrets.kek).await?;
        }
        Ok(())
    }
}
