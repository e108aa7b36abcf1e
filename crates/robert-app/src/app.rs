//! The App itself: one registered identity, its EBID list, its LocalProximityList and its
//! declaration in progress. Every operation takes the time (`now`, the phone's NTP seconds) and,
//! where needed, randomness and a [`Transport`]; nothing here reads a clock or touches a radio.

use crate::transport::{Transport, TransportError};
use robert_proto::api::{AuthRequestBody, ContactBody, RegisterRequest, ReportRequest, ResetRequestBody};
use robert_proto::api::{b64_decode, b64_encode};
use robert_proto::sealed::{self, EbidEntry};
use robert_proto::{
    AppEphemeralKey, AuthKey, AuthRequest, DecodeError, Epoch, EpochSchedule, HELLO_LEN, Hello, KAuth, KEnc,
    NtpTime, PublicKey, RequestCode, UploadRecord, pow,
};
use zeroize::Zeroizing;

/// Seconds in a day.
const DAY: u32 = 86_400;

/// The App's tunables. The protocol values must match the server's (`robert.example.toml`); the
/// defaults are the server's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppConfig {
    /// CT, days: LocalProximityList entries older than this are dropped, and never uploaded.
    /// Default 14.
    pub ct_days: u32,
    /// δ, seconds (§5.2 step 3): a HELLO whose 16-bit time is not within δ of the reception time
    /// (modulo 2^16) is refused. Default 60, the server's default.
    pub hello_delta_sec: u16,
    /// T, epochs (§7 step 8, footnote 18): the App sends an ESR at most every T epochs. Default 8.
    pub esr_min_interval_epochs: u32,
    /// Preferred number of pairs per declaration request: one request per chunk, one token per
    /// request (see [`App::start_declaration`]). Default 500.
    pub upload_chunk_size: usize,
    /// The server's largest declaration request (`reports.max_contacts`). Default 20 000.
    pub max_contacts_per_request: usize,
    /// Largest random delay between two chunks of a declaration, seconds (§6.1: spread the upload
    /// over time). Default 600. 0 sends every chunk at once.
    pub upload_max_delay_sec: u32,
    /// Correct the caller's `now` by the offset to the server's clock measured at registration
    /// (and by [`App::sync_clock`]). Default true. Turn it off when `now` is a virtual clock that
    /// the server does not share.
    pub apply_clock_offset: bool,
}

impl Default for AppConfig {
    fn default() -> Self {
        Self {
            ct_days: 14,
            hello_delta_sec: 60,
            esr_min_interval_epochs: 8,
            upload_chunk_size: 500,
            max_contacts_per_request: 20_000,
            upload_max_delay_sec: 600,
            apply_clock_offset: true,
        }
    }
}

/// Why an App operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The operation needs a registration (register first, or the App unregistered).
    #[error("not registered")]
    NotRegistered,
    /// [`App::register`] on an App that is already registered.
    #[error("already registered")]
    AlreadyRegistered,
    /// The time is before the service started or past the 24-bit epoch counter.
    #[error("the time is outside the service's epochs")]
    OutsideService,
    /// The EBID list has no entry for this epoch: the list ran out (send an ESR before it does).
    #[error("no EBID for epoch {epoch}: the list ran out")]
    NoEbid {
        /// The epoch asked for.
        epoch: Epoch,
    },
    /// An acknowledgement without an "at risk" answer to acknowledge.
    #[error("nothing to acknowledge: not notified")]
    NotNotified,
    /// A declaration is still being uploaded.
    #[error("a declaration is still being uploaded")]
    DeclarationInProgress,
    /// A declaration needs at least one token.
    #[error("a declaration needs at least one health-authority token")]
    NoToken,
    /// Too few tokens for the pairs: each request carries at most `max_contacts_per_request` pairs.
    #[error("{needed} tokens are needed for this declaration")]
    TooFewTokens {
        /// How many are needed.
        needed: usize,
    },
    /// No proof-of-work solution exists for the challenge (only an absurd difficulty does this).
    #[error("the registration puzzle has no solution")]
    ProofOfWork,
    /// The server sent something the App cannot use (bad base64, a list that does not open).
    #[error("bad data from the server: {0}")]
    BadServerData(&'static str),
    /// The transport failed or the server refused.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// Why a received HELLO was not stored (§5.2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiveError {
    /// Not 16 bytes.
    #[error(transparent)]
    Malformed(#[from] DecodeError),
    /// Its time is not within δ of the reception time (§5.2 step 3): stale, or replayed.
    #[error("outside the time tolerance")]
    OutsideDelta,
    /// The very same 16 bytes are already in the list: a HELLO is unique to its second, so this is
    /// a repeat of one advertisement or a replay (e.g. 2^16 s later, footnote 9).
    #[error("already received")]
    Duplicate,
}

/// The answer to [`App::check_status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExposureStatus {
    /// The server answered "0".
    NotAtRisk,
    /// The server answered "1" (now, or earlier: the App then sends no more ESRs, §7).
    AtRisk,
    /// No request was sent: the last ESR was less than T epochs ago.
    TooEarly {
        /// The first epoch at which an ESR is allowed again.
        next_epoch: Epoch,
    },
}

/// What [`App::start_declaration`] planned.
#[derive(Debug)]
pub struct DeclarationPlan {
    /// Pairs selected (`ContStart < Time < ContEnd`, younger than CT days).
    pub pairs: usize,
    /// Requests (chunks) planned, one token each.
    pub chunks: usize,
    /// Tokens not needed (more tokens than chunks); still unspent.
    pub unused_tokens: Vec<String>,
}

/// Where a declaration stands, after [`App::upload_due`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadProgress {
    /// Chunks answered `202`.
    pub delivered: usize,
    /// Chunks whose token was found spent after an attempt whose answer was lost: the server
    /// stored them then (a token is single-use and spent atomically with the pairs it carries).
    pub assumed_delivered: usize,
    /// Pairs the server reported accepted (`202 {accepted}`), summed.
    pub accepted_pairs: u64,
    /// Chunks still to send.
    pub pending: usize,
    /// Chunks the server refused on a first answered attempt (bad or expired token, malformed).
    pub refused: usize,
    /// When the next pending chunk is due (`None` if none is pending).
    pub next_at: Option<NtpTime>,
    /// The last transport error of this round, if any (the chunk stays pending).
    pub last_error: Option<TransportError>,
}

impl UploadProgress {
    /// True when no chunk is left to send.
    pub fn is_complete(&self) -> bool {
        self.pending == 0
    }
}

/// State of one declaration chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChunkState {
    Pending,
    Delivered { accepted: u64 },
    AssumedDelivered,
    Refused,
}

/// One request of a declaration: its token, its pairs, when it may be sent.
pub(crate) struct Chunk {
    pub(crate) token: Zeroizing<String>,
    pub(crate) records: Vec<UploadRecord>,
    pub(crate) not_before: NtpTime,
    pub(crate) state: ChunkState,
    /// An attempt was made whose answer never came (it may have been stored).
    pub(crate) attempt_unanswered: bool,
}

/// What a registration gives the App (§3.3).
pub(crate) struct Registration {
    pub(crate) k_auth: KAuth,
    pub(crate) k_enc: KEnc,
    pub(crate) auth: AuthKey,
    pub(crate) schedule: EpochSchedule,
    /// Server clock minus the caller's clock, seconds, when last measured.
    pub(crate) clock_offset: i64,
    /// The EBID list, strictly increasing in epoch.
    pub(crate) ebids: Vec<EbidEntry>,
    /// SRE as the App knows it: the epoch of its last answered ESR.
    pub(crate) last_esr_epoch: Option<Epoch>,
    /// The server answered "at risk".
    pub(crate) notified: bool,
    /// …and the App acknowledged it (code 5).
    pub(crate) acknowledged: bool,
}

/// One App instance. Persist it with [`StateFile`](crate::StateFile) after every operation that
/// changed it (all `&mut self` methods that returned `Ok`).
pub struct App {
    pub(crate) config: AppConfig,
    pub(crate) registration: Option<Registration>,
    /// The LocalProximityList: `(HELLO, time', RSSI)` (§5.2 step 4).
    pub(crate) contacts: Vec<UploadRecord>,
    pub(crate) declaration: Vec<Chunk>,
}

impl core::fmt::Debug for App {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let reg = self.registration.as_ref();
        f.debug_struct("App")
            .field("registered", &reg.is_some())
            .field("ebids", &reg.map_or(0, |r| r.ebids.len()))
            .field("notified", &reg.is_some_and(|r| r.notified))
            .field("acknowledged", &reg.is_some_and(|r| r.acknowledged))
            .field("contacts", &self.contacts.len())
            .field("declaration_chunks", &self.declaration.len())
            .finish_non_exhaustive()
    }
}

fn offset_time(now: NtpTime, offset: i64) -> NtpTime {
    let t = (i64::from(now.seconds()) + offset).clamp(0, i64::from(u32::MAX));
    NtpTime::new(u32::try_from(t).unwrap_or(u32::MAX))
}

/// Uniform draw in `0..n` (n > 0) by rejection sampling.
fn below(rng: &mut impl rand_core::CryptoRng, n: u64) -> u64 {
    let zone = u64::MAX - (u64::MAX % n);
    loop {
        let x = rng.next_u64();
        if x < zone {
            return x % n;
        }
    }
}

impl App {
    /// A fresh, unregistered App.
    pub fn new(config: AppConfig) -> Self {
        Self { config, registration: None, contacts: Vec::new(), declaration: Vec::new() }
    }

    /// The configuration in use.
    pub fn config(&self) -> &AppConfig {
        &self.config
    }

    /// Replaces the configuration (it is not part of the persisted state).
    pub fn set_config(&mut self, config: AppConfig) {
        self.config = config;
    }

    fn reg(&self) -> Result<&Registration, AppError> {
        self.registration.as_ref().ok_or(AppError::NotRegistered)
    }

    fn reg_mut(&mut self) -> Result<&mut Registration, AppError> {
        self.registration.as_mut().ok_or(AppError::NotRegistered)
    }

    /// The caller's `now` on the server's clock (see [`AppConfig::apply_clock_offset`]).
    pub fn server_time(&self, now: NtpTime) -> NtpTime {
        match &self.registration {
            Some(r) if self.config.apply_clock_offset => offset_time(now, r.clock_offset),
            _ => now,
        }
    }

    /// Is the App registered?
    pub fn is_registered(&self) -> bool {
        self.registration.is_some()
    }

    /// The epoch schedule learnt from the server (§3.3).
    pub fn schedule(&self) -> Option<EpochSchedule> {
        self.registration.as_ref().map(|r| r.schedule)
    }

    /// Server clock minus the caller's clock, seconds, as last measured.
    pub fn clock_offset_sec(&self) -> Option<i64> {
        self.registration.as_ref().map(|r| r.clock_offset)
    }

    /// The server epoch at `now`.
    pub fn epoch_at(&self, now: NtpTime) -> Result<Epoch, AppError> {
        let r = self.reg()?;
        r.schedule.epoch_at(self.server_time(now)).ok_or(AppError::OutsideService)
    }

    /// The last epoch the EBID list covers.
    pub fn ebids_until(&self) -> Option<Epoch> {
        self.registration.as_ref().and_then(|r| r.ebids.last().map(|e| e.epoch))
    }

    /// The server said "at risk" (and the App has not been reset since).
    pub fn is_notified(&self) -> bool {
        self.registration.as_ref().is_some_and(|r| r.notified)
    }

    /// The App acknowledged the notification (code 5); it sends no more ESRs.
    pub fn is_acknowledged(&self) -> bool {
        self.registration.as_ref().is_some_and(|r| r.acknowledged)
    }

    /// The LocalProximityList: `(HELLO, time', RSSI)` entries, oldest first.
    pub fn contacts(&self) -> &[UploadRecord] {
        &self.contacts
    }

    // ---------------------------------------------------------------------------------------
    // Registration (§3.3).

    /// Registers (§3.3): reads the server's clock and pk_S, solves the proof of work, sends an
    /// ephemeral P-256 key, derives K_auth / K_enc and opens the initial EBID list. The clock
    /// offset (server − `now`) is measured here.
    pub async fn register(
        &mut self,
        transport: &impl Transport,
        now: NtpTime,
        rng: &mut impl rand_core::CryptoRng,
    ) -> Result<(), AppError> {
        if self.registration.is_some() {
            return Err(AppError::AlreadyRegistered);
        }
        let clock = transport.clock().await?;
        let pk = transport.server_key().await?;
        let pk = b64_decode("publicKey", &pk.public_key).map_err(|_| AppError::BadServerData("publicKey"))?;
        let server_pk =
            PublicKey::parse("publicKey", &pk).map_err(|_| AppError::BadServerData("publicKey"))?;
        let ch = transport.challenge().await?;
        let challenge =
            b64_decode("challenge", &ch.challenge).map_err(|_| AppError::BadServerData("challenge"))?;
        let solution = pow::solve(&challenge, ch.difficulty, rng.next_u64()).ok_or(AppError::ProofOfWork)?;
        let eph = AppEphemeralKey::generate(rng);
        let req = RegisterRequest {
            challenge: ch.challenge,
            solution: b64_encode(&solution),
            client_public_key: b64_encode(eph.public_key().as_bytes()),
        };
        let resp = transport.register(&req).await?;
        let keys = eph.agree(&server_pk);
        let sealed = b64_decode("ebids", &resp.ebids).map_err(|_| AppError::BadServerData("ebids"))?;
        let ebids = sealed::open(&keys.k_enc, &sealed).map_err(|_| AppError::BadServerData("ebids"))?;
        let schedule = EpochSchedule::new(NtpTime::new(resp.service_start_ntp), resp.epoch_duration_sec)
            .ok_or(AppError::BadServerData("epochDurationSec"))?;
        let auth = AuthKey::new(&keys.k_auth);
        self.registration = Some(Registration {
            k_auth: keys.k_auth,
            k_enc: keys.k_enc,
            auth,
            schedule,
            clock_offset: i64::from(clock.ntp_time) - i64::from(now.seconds()),
            ebids,
            last_esr_epoch: None,
            notified: false,
            acknowledged: false,
        });
        Ok(())
    }

    /// Measures the offset to the server's clock again (`GET /api/v1/clock`).
    pub async fn sync_clock(&mut self, transport: &impl Transport, now: NtpTime) -> Result<(), AppError> {
        let clock = transport.clock().await?;
        self.reg_mut()?.clock_offset = i64::from(clock.ntp_time) - i64::from(now.seconds());
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // Broadcasting (§5.1) and collection (§5.2).

    /// The HELLO to broadcast at `now` (§5.1): the EBID and ECC of the current epoch, `t16` of
    /// `now`, a fresh MAC. Entries of past epochs are dropped from the list.
    pub fn hello_at(&mut self, now: NtpTime) -> Result<[u8; HELLO_LEN], AppError> {
        let t = self.server_time(now);
        let r = self.reg_mut()?;
        let epoch = r.schedule.epoch_at(t).ok_or(AppError::OutsideService)?;
        prune_ebids(&mut r.ebids, epoch);
        let e = r.ebids.iter().find(|e| e.epoch == epoch).ok_or(AppError::NoEbid { epoch })?;
        Ok(Hello::build(&r.auth, e.ecc, e.ebid, t).to_bytes())
    }

    /// A HELLO heard at `now` with signal strength `rssi` (§5.2): parsed, δ-checked (16-bit
    /// wrap-around), and stored as `(HELLO, time', rssi)`. Entries older than CT days are dropped.
    pub fn on_hello_received(
        &mut self,
        bytes: &[u8],
        now: NtpTime,
        rssi: Option<i8>,
    ) -> Result<(), ReceiveError> {
        let hello = Hello::parse(bytes)?;
        let t = self.server_time(now);
        self.purge_expired(now);
        let delta = self.config.hello_delta_sec;
        if !hello.time().within_delta(t, delta) {
            return Err(ReceiveError::OutsideDelta);
        }
        // The list is kept in reception-time order. A copy of this HELLO was accepted only within
        // δ of its 16-bit time, as this one is: within 2δ of `t`, or of `t` minus a multiple of
        // 2^16 s (a replay after the 16-bit time wrapped). Only those stretches are searched.
        let ct = self.config.ct_days.saturating_mul(DAY);
        let window = 2 * u32::from(delta);
        let mut back = 0u32;
        while back <= ct.saturating_add(window) {
            let centre = t.seconds().saturating_sub(back);
            let lo = self.contacts.partition_point(|c| c.time.seconds() < centre.saturating_sub(window));
            let hi = self.contacts.partition_point(|c| c.time.seconds() <= centre.saturating_add(window));
            if self.contacts[lo..hi].iter().any(|c| c.hello == hello) {
                return Err(ReceiveError::Duplicate);
            }
            if centre == 0 {
                break;
            }
            back = back.saturating_add(1 << 16);
        }
        let at = self.contacts.partition_point(|c| c.time <= t);
        self.contacts.insert(at, UploadRecord { hello, time: t, rssi });
        Ok(())
    }

    /// Drops the LocalProximityList entries that are CT days old or older (§5.2 note).
    pub fn purge_expired(&mut self, now: NtpTime) {
        let t = self.server_time(now);
        let ct = self.config.ct_days.saturating_mul(DAY);
        // Sorted by time: the expired entries are a prefix.
        let expired = self.contacts.partition_point(|c| t.seconds().saturating_sub(c.time.seconds()) >= ct);
        self.contacts.drain(..expired);
    }

    // ---------------------------------------------------------------------------------------
    // Authenticated requests (§7, Annex C).

    /// An authenticated request of kind `code` at `now`, with the EBID of the current epoch, or of
    /// the latest epoch the App has one for (§7).
    pub fn request(&self, code: RequestCode, now: NtpTime) -> Result<AuthRequestBody, AppError> {
        let t = self.server_time(now);
        let r = self.reg()?;
        let epoch = r.schedule.epoch_at(t).ok_or(AppError::OutsideService)?;
        let e = r.ebids.iter().rev().find(|e| e.epoch <= epoch).ok_or(AppError::NoEbid { epoch })?;
        Ok(AuthRequestBody::from_request(&AuthRequest::new(&r.auth, code, e.ebid, e.epoch, t)))
    }

    /// Is an ESR allowed at `now` (registered, not notified, T epochs since the last)?
    pub fn status_due(&self, now: NtpTime) -> bool {
        let Ok(epoch) = self.epoch_at(now) else { return false };
        match &self.registration {
            Some(r) if !r.notified => r.last_esr_epoch.is_none_or(|l| {
                epoch.number().saturating_sub(l.number()) >= self.config.esr_min_interval_epochs
            }),
            _ => false,
        }
    }

    /// The Exposure Status Request (§7). Sends nothing once notified (the answer stays
    /// [`ExposureStatus::AtRisk`]) or when the last ESR was less than T epochs ago. A fresh EBID
    /// list in the answer is merged (§4). After `AtRisk`, save the state, tell the user, then
    /// [`App::acknowledge`].
    pub async fn check_status(
        &mut self,
        transport: &impl Transport,
        now: NtpTime,
    ) -> Result<ExposureStatus, AppError> {
        let t_min = self.config.esr_min_interval_epochs;
        let epoch = self.epoch_at(now)?;
        let r = self.reg()?;
        if r.notified {
            return Ok(ExposureStatus::AtRisk);
        }
        if let Some(last) = r.last_esr_epoch
            && epoch.number().saturating_sub(last.number()) < t_min
        {
            let next_epoch = last.checked_add(t_min).ok_or(AppError::OutsideService)?;
            return Ok(ExposureStatus::TooEarly { next_epoch });
        }
        let body = self.request(RequestCode::StatusRequest, now)?;
        let resp = transport.status(&body).await?;
        let r = self.reg_mut()?;
        r.last_esr_epoch = Some(epoch);
        if resp.at_risk {
            r.notified = true;
        }
        if let Some(list) = resp.ebids {
            let sealed = b64_decode("ebids", &list).map_err(|_| AppError::BadServerData("ebids"))?;
            let fresh = sealed::open(&r.k_enc, &sealed).map_err(|_| AppError::BadServerData("ebids"))?;
            merge_ebids(&mut r.ebids, fresh);
            prune_ebids(&mut r.ebids, epoch);
        }
        Ok(if resp.at_risk { ExposureStatus::AtRisk } else { ExposureStatus::NotAtRisk })
    }

    /// Acknowledges an "at risk" answer (code 5, §7 "Application processing" step 1). Afterwards
    /// the App sends no more ESRs; it keeps broadcasting HELLOs.
    pub async fn acknowledge(&mut self, transport: &impl Transport, now: NtpTime) -> Result<(), AppError> {
        if !self.reg()?.notified {
            return Err(AppError::NotNotified);
        }
        let body = self.request(RequestCode::StatusAck, now)?;
        transport.acknowledge(&body).await?;
        self.reg_mut()?.acknowledged = true;
        Ok(())
    }

    /// Status reset after a negative test (code 6 with a `reset` token): ESRs resume.
    pub async fn reset_status(
        &mut self,
        transport: &impl Transport,
        token: &str,
        now: NtpTime,
    ) -> Result<(), AppError> {
        let request = self.request(RequestCode::StatusReset, now)?;
        transport.reset_status(&ResetRequestBody { request, token: token.to_owned() }).await?;
        let r = self.reg_mut()?;
        r.notified = false;
        r.acknowledged = false;
        Ok(())
    }

    /// Unregisters (Annex C, code 3). On success the App forgets its keys, EBIDs, contacts and
    /// any declaration: it is a fresh, unregistered App.
    pub async fn unregister(&mut self, transport: &impl Transport, now: NtpTime) -> Result<(), AppError> {
        let body = self.request(RequestCode::Unregister, now)?;
        transport.unregister(&body).await?;
        self.registration = None;
        self.contacts.clear();
        self.declaration.clear();
        Ok(())
    }

    /// Deletes the history (Annex C, code 4): the server erases LEE_A (the exposures recorded for
    /// this App); on success the App also erases its own LocalProximityList.
    pub async fn delete_history(&mut self, transport: &impl Transport, now: NtpTime) -> Result<(), AppError> {
        let body = self.request(RequestCode::DeleteHistory, now)?;
        transport.delete_history(&body).await?;
        self.contacts.clear();
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // Declaration (§6.1).

    /// Plans a declaration (§6.1): selects the pairs with `ContStart < Time < ContEnd` younger than
    /// CT days, shuffles them (their order says nothing) and splits them into chunks, one request
    /// and one single-use token per chunk:
    ///
    /// - the App wants `ceil(pairs / upload_chunk_size)` chunks; with fewer tokens it makes one
    ///   chunk per token (larger chunks), as long as none exceeds `max_contacts_per_request`
    ///   (else [`AppError::TooFewTokens`]); with more tokens, the extra ones are returned unspent;
    /// - chunk 0 is due at `now`, each next one a uniform random `0..=upload_max_delay_sec` later.
    ///
    /// Nothing is sent here: call [`App::upload_due`] (now and whenever the next chunk is due).
    pub fn start_declaration(
        &mut self,
        tokens: Vec<String>,
        cont_start: NtpTime,
        cont_end: NtpTime,
        now: NtpTime,
        rng: &mut impl rand_core::CryptoRng,
    ) -> Result<DeclarationPlan, AppError> {
        if self.declaration.iter().any(|c| c.state == ChunkState::Pending) {
            return Err(AppError::DeclarationInProgress);
        }
        if tokens.is_empty() {
            return Err(AppError::NoToken);
        }
        self.purge_expired(now);
        let t = self.server_time(now);
        let mut pairs: Vec<UploadRecord> =
            self.contacts.iter().filter(|c| cont_start < c.time && c.time < cont_end).copied().collect();
        for i in (1..pairs.len()).rev() {
            let j = below(rng, i as u64 + 1) as usize;
            pairs.swap(i, j);
        }
        let n = pairs.len();
        let mut tokens = tokens;
        if n == 0 {
            self.declaration.clear();
            return Ok(DeclarationPlan { pairs: 0, chunks: 0, unused_tokens: tokens });
        }
        let wanted = n.div_ceil(self.config.upload_chunk_size.max(1));
        let chunks = wanted.min(tokens.len());
        if n.div_ceil(chunks) > self.config.max_contacts_per_request {
            return Err(AppError::TooFewTokens { needed: n.div_ceil(self.config.max_contacts_per_request) });
        }
        let unused_tokens = tokens.split_off(chunks);
        let mut due = t;
        let mut plan = Vec::with_capacity(chunks);
        let mut rest = pairs.as_slice();
        for (k, token) in tokens.into_iter().enumerate() {
            let size = (rest.len()).div_ceil(chunks - k);
            let (these, others) = rest.split_at(size);
            rest = others;
            if k > 0 {
                let delay = below(rng, u64::from(self.config.upload_max_delay_sec) + 1);
                due = due.checked_add(u32::try_from(delay).unwrap_or(u32::MAX)).unwrap_or(due);
            }
            plan.push(Chunk {
                token: Zeroizing::new(token),
                records: these.to_vec(),
                not_before: due,
                state: ChunkState::Pending,
                attempt_unanswered: false,
            });
        }
        self.declaration = plan;
        Ok(DeclarationPlan { pairs: n, chunks, unused_tokens })
    }

    /// Where the current declaration stands.
    pub fn upload_progress(&self) -> UploadProgress {
        let mut p = UploadProgress {
            delivered: 0,
            assumed_delivered: 0,
            accepted_pairs: 0,
            pending: 0,
            refused: 0,
            next_at: None,
            last_error: None,
        };
        for c in &self.declaration {
            match c.state {
                ChunkState::Pending => {
                    p.pending += 1;
                    p.next_at = Some(p.next_at.map_or(c.not_before, |n| n.min(c.not_before)));
                }
                ChunkState::Delivered { accepted } => {
                    p.delivered += 1;
                    p.accepted_pairs += accepted;
                }
                ChunkState::AssumedDelivered => p.assumed_delivered += 1,
                ChunkState::Refused => p.refused += 1,
            }
        }
        p
    }

    /// Sends every chunk of the declaration that is due at `now`, one request each with its own
    /// token, and retries safely:
    ///
    /// - `checkpoint` is called (with the App marked "attempt in flight") before each request, so
    ///   that a crash during the request is remembered: persist the state there;
    /// - a request that certainly did not arrive ([`TransportError::Unreachable`]) stays pending;
    ///   one whose answer was lost stays pending and is resent later **with the same token**: if
    ///   the server had stored it, the token is spent and the resend is rejected, so a pair is
    ///   never counted twice; such a chunk is then counted as assumed delivered;
    /// - a rejection on a first answered attempt means the token is not valid: the chunk is refused.
    ///
    /// Stops at the first transport error (the network is likely down) and reports it.
    pub async fn upload_due<E>(
        &mut self,
        transport: &impl Transport,
        now: NtpTime,
        checkpoint: &mut (dyn FnMut(&App) -> Result<(), E> + Send),
    ) -> Result<UploadProgress, E> {
        let t = self.server_time(now);
        let mut last_error = None;
        for k in 0..self.declaration.len() {
            let c = &self.declaration[k];
            if c.state != ChunkState::Pending || c.not_before > t {
                continue;
            }
            let prior_unanswered = c.attempt_unanswered;
            let body = ReportRequest { contacts: c.records.iter().map(ContactBody::from_record).collect() };
            let token = c.token.clone();
            self.declaration[k].attempt_unanswered = true;
            checkpoint(self)?;
            let result = transport.report(&token, &body).await;
            let c = &mut self.declaration[k];
            match result {
                Ok(r) => {
                    c.state = ChunkState::Delivered { accepted: r.accepted };
                    c.attempt_unanswered = false;
                }
                Err(TransportError::Rejected) if prior_unanswered => c.state = ChunkState::AssumedDelivered,
                Err(TransportError::Rejected | TransportError::Refused { .. }) => {
                    c.state = ChunkState::Refused
                }
                Err(e) => {
                    if matches!(e, TransportError::Unreachable(_)) {
                        c.attempt_unanswered = prior_unanswered;
                    }
                    last_error = Some(e);
                    break;
                }
            }
        }
        let mut p = self.upload_progress();
        p.last_error = last_error;
        Ok(p)
    }
}

/// Adds the entries of `fresh` for epochs the list lacks; keeps the list sorted.
fn merge_ebids(list: &mut Vec<EbidEntry>, fresh: Vec<EbidEntry>) {
    for e in fresh {
        if let Err(pos) = list.binary_search_by_key(&e.epoch, |x| x.epoch) {
            list.insert(pos, e);
        }
    }
}

/// Drops entries of epochs before `current`, keeping at least the latest one (an ESR may need it).
fn prune_ebids(list: &mut Vec<EbidEntry>, current: Epoch) {
    let keep_from = list.iter().position(|e| e.epoch >= current).unwrap_or(list.len().saturating_sub(1));
    list.drain(..keep_from);
}

#[cfg(test)]
mod tests {
    use super::*;
    use robert_proto::{AuthKey, Ebid, Ecc, KAuth};

    fn hello(key: &AuthKey, ebid: u8, at: u32) -> [u8; HELLO_LEN] {
        Hello::build(key, Ecc::new(33), Ebid::new([ebid; 8]), NtpTime::new(at)).to_bytes()
    }

    #[test]
    fn the_proximity_list_stays_in_time_order_and_purges_its_prefix() {
        let key = AuthKey::new(&KAuth::new([5; 32]));
        let mut app = App::new(AppConfig::default());
        let t0 = 3_900_000_000u32;
        // Received out of order (a clock step back): still stored in time order.
        for (ebid, at) in [(1, t0 + 100), (2, t0 + 40), (3, t0 + 70), (4, t0 + 10)] {
            app.on_hello_received(&hello(&key, ebid, at), NtpTime::new(at), None).expect("fresh");
        }
        let times: Vec<u32> = app.contacts().iter().map(|c| c.time.seconds()).collect();
        assert_eq!(times, vec![t0 + 10, t0 + 40, t0 + 70, t0 + 100]);
        // Each is a duplicate whenever it comes again within δ, whatever the order.
        for (ebid, at) in [(2, t0 + 40), (4, t0 + 10), (1, t0 + 100)] {
            assert_eq!(
                app.on_hello_received(&hello(&key, ebid, at), NtpTime::new(at + 30), None),
                Err(ReceiveError::Duplicate)
            );
        }
        // CT days after the second one, the first two are gone, the others kept.
        let ct = app.config.ct_days * DAY;
        app.purge_expired(NtpTime::new(t0 + 40 + ct));
        let times: Vec<u32> = app.contacts().iter().map(|c| c.time.seconds()).collect();
        assert_eq!(times, vec![t0 + 70, t0 + 100]);
    }
}
