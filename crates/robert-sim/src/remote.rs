//! A live `robert serve` as the simulation's server: the Apps talk to it over HTTP
//! ([`HttpTransport`]), declarations carry tokens of a health-authority key the server trusts,
//! proof of work is the server's own difficulty.
//!
//! ## Simulated time on a server that runs on real time
//!
//! A live server's clock cannot be set, so the simulation is mapped onto it ([`TimeMap`]):
//!
//! - **One simulated epoch (15 min) is one server epoch.** The server must run with short epochs
//!   (`[protocol] epoch_duration_sec` = E, dividing 900 and 86 400): simulated second `t` is
//!   server second `base + t / (900 / E)`, simulated epoch `k` is server epoch `k0 + k`. A
//!   simulated day (96 epochs) takes 96 × E seconds of real time: 96 s with E = 1.
//! - **One server second stands for 900 / E simulated seconds**, so a phone's HELLOs (one every
//!   `--hello-period` P seconds) keep distinct timestamps only if P ≥ 900 / E; otherwise the App
//!   would drop the second HELLO of a second as a duplicate. Such runs are refused.
//! - **Simulated days are the server's blocks of M = 96 epochs** (`ebid_list_epochs`, default
//!   96, §4): the daily ESRs fall in the second half of a block and refresh the EBID lists, as
//!   in-process. The Apps register at the server's current time; simulated epoch 0 is the start
//!   of the next block (the first one their registration lists cover), so a run waits up to one
//!   block (96 × E s) before it starts.
//! - **The simulator waits for real time** to reach the server time of each step before it acts
//!   (HELLOs carry their mapped times, which may be ahead within the epoch being simulated, as
//!   in-process). If it falls behind, requests carry the server's current time instead of the
//!   mapped one (the ground truth uses the same declaration time); a lag beyond the server's
//!   `request_time_tolerance_sec` is harmless for that reason.
//! - **The mixer runs on the server's schedule** (`[reports] mixer_min_batch`,
//!   `mixer_max_delay_sec`): after each round of declarations the simulator polls `/metrics`
//!   until the upload pool is empty, so ESRs see the exposures they depend on, as in-process.
//!   A server with the default 60 s delay works but the run falls behind real time; give it
//!   `mixer_max_delay_sec = 1`.
//! - **What stays in real time:** the server's days (K_S rotation, §3.1) and CT (expiry of
//!   exposures and of the App's LocalProximityList) are real days, so a compressed run never ages
//!   anything out; the ground truth applies the same times, so the two still agree.
//! - **The scoring rule is the server's**, and the ground truth applies
//!   `robert simulate`'s own (`seconds_per_hello` = `--hello-period`,
//!   `min_exposure_minutes` = `--min-exposure-minutes`, the other `[risk]` keys at their
//!   defaults): configure the server the same. The "duration" rule counts at most one epoch's
//!   length per exposed epoch (§2.3): with E-second epochs, choose `min_exposure_minutes` in
//!   those seconds (e.g. 1/60 min: one close epoch).
//!
//! Counters (pairs accepted, processed, rejected, registered IDs) are read from `/metrics` and
//! reported as the difference from the start of the run, so a server that served earlier runs
//! still gives this run's figures (provided nobody else uses it meanwhile).

use crate::SimError;
use crate::config::SimConfig;
use crate::engine::{self, Progress, RunResult};
use crate::population::Population;
use crate::server::{self, SIM_EPOCH_SEC, ServerCounters, SimServer, TimeMap};
use robert_app::{HttpTransport, Transport};
use robert_proto::{Epoch, EpochSchedule, NtpTime};
use robert_server::config::{Config, RiskSection};
use robert_server::token::AuthorityKey;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Epochs in a simulated day (and in the server's EBID-list block, M).
const DAY_EPOCHS: u32 = 86_400 / SIM_EPOCH_SEC;
/// The final sweep comes this many epochs into the day after the last (in-process: 48, half a
/// day): the daily ESRs end at epoch 95 and T is 8 epochs by default, and real time is dear.
const FINAL_SWEEP_EPOCHS: u32 = 12;
/// Seconds between unix time and NTP era 0.
const NTP_UNIX_OFFSET: f64 = 2_208_988_800.0;

/// How to reach and drive a live server.
pub struct LiveOptions {
    /// Base URL of `robert serve` (e.g. `http://127.0.0.1:8080`).
    pub url: String,
    /// A health-authority key the server trusts (its development key, or one listed in
    /// `[authorities] public_keys`).
    pub authority: AuthorityKey,
    /// Longest real time a run may take, seconds; longer runs are refused before they start.
    pub max_run_sec: u64,
    /// Longest wait for the server's mixer to empty the upload pool, seconds.
    pub mixer_timeout_sec: u64,
}

impl std::fmt::Debug for LiveOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveOptions")
            .field("url", &self.url)
            .field("authority", &"[redacted]")
            .field("max_run_sec", &self.max_run_sec)
            .field("mixer_timeout_sec", &self.mixer_timeout_sec)
            .finish()
    }
}

/// Checks that a live server with `epoch_sec`-second epochs can run `cfg` (`runs` traced runs)
/// within `max_run_sec` seconds of real time. Returns the time scale (simulated seconds per
/// server second).
pub fn check_live(cfg: &SimConfig, epoch_sec: u32, runs: u32, max_run_sec: u64) -> Result<u32, SimError> {
    if cfg.attacks {
        return Err(SimError::Server(
            "live mode cannot run the attack scenarios: they need a server the simulator controls \
             (its clock, its Annex A probability); add --no-attacks (run them in-process)"
                .into(),
        ));
    }
    if epoch_sec == 0 || !SIM_EPOCH_SEC.is_multiple_of(epoch_sec) {
        return Err(SimError::Server(format!(
            "the server's epochs last {epoch_sec} s; live mode maps each simulated 15-minute epoch onto \
             one server epoch, so [protocol] epoch_duration_sec must divide 900 (and 86400): 1, 2, 3, \
             4, 5, 6, 9, 10, 12, 15, 18, 20, 25, 30, 36, 45, 50, 60, 75, 90, 100, 150, 180, 225, 300, \
             450 or 900"
        )));
    }
    let scale = SIM_EPOCH_SEC / epoch_sec;
    if cfg.hello_period_sec < scale {
        return Err(SimError::Server(format!(
            "with {epoch_sec} s server epochs one server second stands for 900 / {epoch_sec} = {scale} \
             simulated seconds, but phones send a HELLO every {} s (--hello-period): two HELLOs of a \
             phone would share a timestamp and the App would drop one as a duplicate; use \
             --hello-period {scale} or more, or a server with epoch_duration_sec >= {}",
            cfg.hello_period_sec,
            SIM_EPOCH_SEC.div_ceil(cfg.hello_period_sec.max(1)),
        )));
    }
    // Per run: up to one block to align on, the days, the epochs to the final sweep.
    let epochs = u64::from(DAY_EPOCHS) * (u64::from(cfg.days) + 1) + u64::from(FINAL_SWEEP_EPOCHS);
    let per_run = epochs * u64::from(epoch_sec);
    let total = per_run * u64::from(runs.max(1));
    if total > max_run_sec {
        return Err(SimError::Server(format!(
            "a live run of {days} days takes up to (({days} days + 1 day to align) x 96 + 12 epochs to \
             the final sweep) x {epoch_sec} s = {per_run} s of real time{runs_txt}, more than \
             --live-max-sec {max_run_sec}: use fewer --days, fewer --loss-sweep points, a server with \
             shorter epochs (epoch_duration_sec), or raise --live-max-sec",
            days = cfg.days,
            runs_txt = if runs > 1 { format!(", x {runs} runs = {total} s") } else { String::new() },
        )));
    }
    Ok(scale)
}

/// The value of the Prometheus sample `name` (no labels) in `text`.
pub fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let mut it = l.split_whitespace();
        if it.next() != Some(name) {
            return None;
        }
        let v: f64 = it.next()?.parse().ok()?;
        (v.is_finite() && v >= 0.0).then_some(v as u64)
    })
}

/// A number no other run of this process or machine starts with: the clock in nanoseconds.
fn run_nonce() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn local_ntp() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()) + NTP_UNIX_OFFSET
}

fn err(what: &str) -> impl Fn(robert_app::TransportError) -> SimError + '_ {
    move |e| SimError::Server(format!("{what}: {e}"))
}

/// A live server, as one traced run sees it.
pub struct Remote<'a> {
    opts: &'a LiveOptions,
    transport: HttpTransport,
    http: reqwest::Client,
    schedule: EpochSchedule,
    /// Server NTP time minus local NTP time, seconds.
    offset: f64,
    risk: RiskSection,
    baseline: ServerCounters,
    lag_warned: AtomicBool,
    /// Token randomness of this run: a live server remembers every token it accepted (`jti`,
    /// single use), so tokens must differ between runs of one seed; unique per run (the
    /// connection time) and per token (a counter). Tokens change no outcome.
    token_nonce: u64,
    tokens_issued: AtomicU64,
}

impl<'a> Remote<'a> {
    /// Connects: reads the server's clock (and synchronises with it), checks `cfg` can run on
    /// it, records the counters at the start.
    pub fn connect(
        rt: &tokio::runtime::Runtime,
        cfg: &SimConfig,
        opts: &'a LiveOptions,
        runs: u32,
    ) -> Result<Self, SimError> {
        let transport = HttpTransport::new(&opts.url).map_err(err("server"))?;
        let clock = rt.block_on(transport.clock()).map_err(err("GET /api/v1/clock"))?;
        check_live(cfg, clock.epoch_duration_sec, runs, opts.max_run_sec)?;
        let schedule = EpochSchedule::new(NtpTime::new(clock.service_start_ntp), clock.epoch_duration_sec)
            .ok_or_else(|| SimError::Server("the server's clock parameters are invalid".into()))?;
        // Synchronise: the moment the server's second changes, its time is that second.
        let mut offset = f64::from(clock.ntp_time) + 0.5 - local_ntp();
        for _ in 0..60 {
            let c = rt.block_on(transport.clock()).map_err(err("GET /api/v1/clock"))?;
            if c.ntp_time != clock.ntp_time {
                offset = f64::from(c.ntp_time) - local_ntp();
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| SimError::Server(format!("HTTP client: {e}")))?;
        let risk = server::server_config(cfg, cfg.notification_probability).risk;
        let mut me = Self {
            opts,
            transport,
            http,
            schedule,
            offset,
            risk,
            baseline: ServerCounters::default(),
            lag_warned: AtomicBool::new(false),
            token_nonce: run_nonce(),
            tokens_issued: AtomicU64::new(0),
        };
        me.baseline = me.read_counters(rt)?;
        Ok(me)
    }

    /// A server with `schedule` whose clock is `offset` seconds ahead of the local one, reached
    /// at `opts.url` (nothing is sent until a method needs it).
    #[cfg(test)]
    fn unconnected(opts: &'a LiveOptions, schedule: EpochSchedule, offset: f64) -> Self {
        Self {
            opts,
            transport: HttpTransport::new(&opts.url).expect("transport"),
            http: reqwest::Client::new(),
            schedule,
            offset,
            risk: RiskSection::default(),
            baseline: ServerCounters::default(),
            lag_warned: AtomicBool::new(false),
            token_nonce: run_nonce(),
            tokens_issued: AtomicU64::new(0),
        }
    }

    /// The server's time now (estimated from the local clock).
    fn server_now(&self) -> f64 {
        local_ntp() + self.offset
    }

    fn wait_until(&self, target: NtpTime) {
        loop {
            let left = f64::from(target.seconds()) + 0.05 - self.server_now();
            if left <= 0.0 {
                return;
            }
            std::thread::sleep(Duration::from_secs_f64(left.min(0.5)));
        }
    }

    fn read_counters(&self, rt: &tokio::runtime::Runtime) -> Result<ServerCounters, SimError> {
        let url = format!("{}/metrics", self.opts.url.trim_end_matches('/'));
        let text = rt
            .block_on(async {
                let r = self.http.get(&url).send().await?.error_for_status()?;
                r.text().await
            })
            .map_err(|e| SimError::Server(format!("GET /metrics: {e}")))?;
        let get = |name: &str| {
            metric(&text, name).ok_or_else(|| SimError::Server(format!("GET /metrics: no {name}")))
        };
        Ok(ServerCounters {
            pairs_accepted: get("robert_pairs_accepted_total")?,
            pairs_processed: get("robert_pairs_processed_total")?,
            pairs_rejected: get("robert_pairs_rejected_total")?,
            users: get("robert_registered_ids")?,
            pool_left: get("robert_pool_depth")?,
        })
    }
}

impl SimServer for Remote<'_> {
    type Transport = HttpTransport;

    fn transport(&self) -> HttpTransport {
        self.transport.clone()
    }

    fn schedule(&self) -> EpochSchedule {
        self.schedule
    }

    fn risk(&self) -> RiskSection {
        self.risk.clone()
    }

    fn max_contacts(&self) -> usize {
        // The server's own limit is not published; the default's.
        Config::default().reports.max_contacts
    }

    fn final_sweep_after(&self) -> i64 {
        FINAL_SWEEP_EPOCHS as i64 * i64::from(SIM_EPOCH_SEC)
    }

    fn registration_time(&self, _: &tokio::runtime::Runtime) -> Result<NtpTime, SimError> {
        Ok(NtpTime::new(self.server_now() as u32))
    }

    fn time_map(&self, _: &tokio::runtime::Runtime, ebids_until: Option<Epoch>) -> Result<TimeMap, SimError> {
        let until =
            ebids_until.ok_or_else(|| SimError::Server("no EBID list after registration".into()))?.number();
        let now = self
            .schedule
            .epoch_at(NtpTime::new(self.server_now() as u32))
            .ok_or_else(|| SimError::Server("the server's clock is before its service start".into()))?;
        // A registration lists the rest of the current block and the next one (§4).
        let end = until.saturating_add(1);
        if !end.is_multiple_of(DAY_EPOCHS) || end - DAY_EPOCHS <= now.number() {
            return Err(SimError::Server(format!(
                "the server's EBID lists end at epoch {until} (now {}): live mode needs blocks of \
                 96 epochs ([protocol] ebid_list_epochs = 96, the default), a simulated day each",
                now.number()
            )));
        }
        TimeMap::new(&self.schedule, end - DAY_EPOCHS)
            .ok_or_else(|| SimError::Server("the server's epochs do not fit the simulation".into()))
    }

    fn start_day(&self, rt: &tokio::runtime::Runtime, map: &TimeMap, day_start: i64) -> Result<(), SimError> {
        // Day keys and expiry are the server's own jobs, on its real days.
        self.advance(rt, map, day_start).map(drop)
    }

    fn advance(&self, _: &tokio::runtime::Runtime, map: &TimeMap, t: i64) -> Result<NtpTime, SimError> {
        let target = map.ntp(t);
        self.wait_until(target);
        let now = self.server_now() as u32;
        let lag = now.saturating_sub(target.seconds());
        if lag > self.schedule.epoch_duration_sec() && !self.lag_warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(lag_sec = lag, "the simulation runs behind the live server's clock");
        }
        Ok(NtpTime::new(now.max(target.seconds())))
    }

    fn declare_tokens(
        &self,
        n: usize,
        now: NtpTime,
        _: &mut dyn rand_core::CryptoRng,
    ) -> Result<Vec<String>, SimError> {
        let k = self.tokens_issued.fetch_add(1, Ordering::Relaxed);
        let mut rng = crate::rng::crypto_rng(self.token_nonce, crate::rng::Tag::PhoneCrypto, k, u64::MAX);
        server::issue_tokens(&self.opts.authority, n, now, &mut rng)
    }

    fn process_uploads(&self, rt: &tokio::runtime::Runtime) -> Result<(), SimError> {
        let deadline = std::time::Instant::now() + Duration::from_secs(self.opts.mixer_timeout_sec);
        loop {
            let c = self.read_counters(rt)?;
            if c.pool_left == 0 {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(SimError::Server(format!(
                    "the server's mixer left {} pairs in the upload pool for {} s (--live-mixer-timeout): \
                     live mode needs a mixer that runs within seconds ([reports] mixer_max_delay_sec, \
                     mixer_min_batch)",
                    c.pool_left, self.opts.mixer_timeout_sec
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn counters(&self, rt: &tokio::runtime::Runtime) -> Result<ServerCounters, SimError> {
        let c = self.read_counters(rt)?;
        let b = self.baseline;
        Ok(ServerCounters {
            pairs_accepted: c.pairs_accepted.saturating_sub(b.pairs_accepted),
            pairs_processed: c.pairs_processed.saturating_sub(b.pairs_processed),
            pairs_rejected: c.pairs_rejected.saturating_sub(b.pairs_rejected),
            users: c.users.saturating_sub(b.users),
            pool_left: c.pool_left,
        })
    }
}

/// Runs a traced simulation of `cfg` against the live server of `opts` (one of `runs`).
pub fn traced_run(
    cfg: &SimConfig,
    pop: &Population,
    rt: &tokio::runtime::Runtime,
    opts: &LiveOptions,
    runs: u32,
    progress: Progress,
) -> Result<RunResult, SimError> {
    let remote = Remote::connect(rt, cfg, opts, runs)?;
    let app_cfg = server::app_config(cfg, &Config::default());
    engine::run_traced(cfg, pop, rt, &remote, &app_cfg, progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live_cfg() -> SimConfig {
        SimConfig { attacks: false, days: 2, hello_period_sec: 900, ..SimConfig::default() }
    }

    #[test]
    fn time_map_compresses_epochs() {
        let schedule = EpochSchedule::new(NtpTime::new(3_976_214_400), 2).expect("schedule");
        let map = TimeMap::new(&schedule, 96).expect("map");
        assert_eq!(map.scale(), 450);
        // Simulated epoch k is server epoch 96 + k, and the times agree with it.
        for t in [0u32, 449, 450, 899, 900, 86_399, 86_400] {
            let ntp = map.ntp(i64::from(t));
            assert_eq!(schedule.epoch_at(ntp).map(|e| e.number()), Some(map.epoch(t)), "t = {t}");
            assert_eq!(map.epoch(t), 96 + t / 900);
        }
        assert_eq!(map.ntp(0).seconds(), 3_976_214_400 + 192);
        assert_eq!(map.ntp(449).seconds(), map.ntp(0).seconds());
        assert_eq!(map.ntp(450).seconds(), map.ntp(0).seconds() + 1);
        assert_eq!(map.ntp(-5), map.ntp(0));
        // HELLOs one period >= scale apart keep distinct seconds.
        assert_ne!(map.ntp(100), map.ntp(550));
        // Epochs that do not divide 900 s are not mapped.
        let seven = EpochSchedule::new(NtpTime::new(3_976_214_400), 7).expect("schedule");
        assert!(TimeMap::new(&seven, 0).is_none());
        // In-process: the identity.
        assert_eq!(TimeMap::IN_PROCESS.ntp(61).seconds(), server::SERVICE_START_NTP + 61);
        assert_eq!(TimeMap::IN_PROCESS.epoch(1800), 2);
    }

    #[test]
    fn refusals_state_the_arithmetic() {
        let ok = check_live(&live_cfg(), 1, 1, 3600).expect("fits");
        assert_eq!(ok, 900);
        let e = check_live(&SimConfig { attacks: true, ..live_cfg() }, 1, 1, 3600).expect_err("attacks");
        assert!(e.to_string().contains("--no-attacks"), "{e}");
        let e = check_live(&live_cfg(), 7, 1, 3600).expect_err("7 s epochs");
        assert!(e.to_string().contains("must divide 900"), "{e}");
        let e = check_live(&live_cfg(), 8, 1, 3600).expect_err("8 s epochs");
        assert!(e.to_string().contains("epochs last 8 s"), "{e}");
        let e =
            check_live(&SimConfig { hello_period_sec: 60, ..live_cfg() }, 1, 1, 3600).expect_err("HELLOs");
        let m = e.to_string();
        assert!(
            m.contains("900 / 1 = 900") && m.contains("--hello-period 900") && m.contains(">= 15"),
            "{m}"
        );
        // (2 days + 1) x 96 + 12 = 300 epochs of 900 s.
        let e =
            check_live(&SimConfig { hello_period_sec: 60, ..live_cfg() }, 900, 1, 3600).expect_err("long");
        let m = e.to_string();
        assert!(m.contains("x 900 s = 270000 s") && m.contains("--live-max-sec 3600"), "{m}");
        let e = check_live(&live_cfg(), 1, 3, 600).expect_err("three runs");
        assert!(e.to_string().contains("300 s of real time, x 3 runs = 900 s"), "{e}");
        assert!(check_live(&live_cfg(), 1, 2, 600).is_ok());
    }

    fn opts() -> LiveOptions {
        LiveOptions {
            url: "http://127.0.0.1:9".into(),
            authority: AuthorityKey::generate(&mut crate::rng::crypto_rng(1, crate::rng::Tag::Attack, 0, 0)),
            max_run_sec: 3600,
            mixer_timeout_sec: 1,
        }
    }

    /// A 1-s-epoch server that started `ago` seconds before now.
    fn started(ago: u32) -> (EpochSchedule, f64) {
        let now = local_ntp();
        let start = now as u32 - ago;
        (EpochSchedule::new(NtpTime::new(start), 1).expect("schedule"), 0.0)
    }

    #[test]
    fn day_zero_is_the_block_after_registration() {
        let opts = opts();
        // 150 s after the start: epoch 150, block 1 (96..191); a registration lists up to 287.
        let (schedule, offset) = started(150);
        let r = Remote::unconnected(&opts, schedule, offset);
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let map = r.time_map(&rt, Epoch::new(287)).expect("aligned");
        assert_eq!(map.first_epoch(), 192);
        assert_eq!(map.scale(), 900);
        // Lists that do not end on a block of 96, or whose next block has begun: refused.
        for until in [239, 191] {
            let e = r.time_map(&rt, Epoch::new(until)).expect_err("not a day");
            assert!(e.to_string().contains("ebid_list_epochs = 96"), "{e}");
        }
        assert!(r.time_map(&rt, None).is_err());
    }

    #[test]
    fn behind_the_clock_requests_carry_the_servers_time() {
        let opts = opts();
        let (schedule, offset) = started(1000);
        let r = Remote::unconnected(&opts, schedule, offset);
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        // Simulated epoch 0 is server epoch 10: long past, so no wait, and the time returned is
        // the server's (about epoch 1000), not the mapped one.
        let map = TimeMap::new(&schedule, 10).expect("map");
        let now = r.advance(&rt, &map, 0).expect("advance");
        assert!(now.seconds() >= map.ntp(0).seconds() + 900, "{now:?}");
        assert!(schedule.epoch_at(now).is_some_and(|e| e.number() >= 1000));
        // Tokens are issued at that time and verify with the authority's public key.
        let mut rng = crate::rng::crypto_rng(1, crate::rng::Tag::Attack, 1, 1);
        let tokens = r.declare_tokens(2, now, &mut rng).expect("tokens");
        let mut trusted = robert_server::token::TrustedAuthorities::new();
        trusted.add_public_key_pem(&opts.authority.public_key_pem()).expect("pem");
        for t in &tokens {
            trusted
                .verify(t, robert_server::token::Purpose::Declare, now.to_unix())
                .expect("token valid at the server's time");
        }
        assert_ne!(tokens[0], tokens[1]);
        // The same seed's draws give other tokens in another run (a live server refuses a
        // token it has seen: runs of one seed on one server must not share any).
        let other = Remote::unconnected(&opts, schedule, offset);
        let mut rng = crate::rng::crypto_rng(1, crate::rng::Tag::Attack, 1, 1);
        let again = other.declare_tokens(2, now, &mut rng).expect("tokens");
        assert!(again.iter().all(|t| !tokens.contains(t)));
    }

    #[test]
    fn an_unreachable_server_is_a_clear_error() {
        let opts = opts();
        let (schedule, offset) = started(10);
        let r = Remote::unconnected(&opts, schedule, offset);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let e = r.process_uploads(&rt).expect_err("nothing listens on port 9");
        assert!(e.to_string().contains("GET /metrics"), "{e}");
    }

    #[test]
    fn metrics_are_parsed() {
        let text = "# HELP robert_pool_depth x\n# TYPE robert_pool_depth gauge\nrobert_pool_depth 12\n\
                    robert_pairs_processed_total 3\nrobert_outbox_depth{country=\"49\"} 4\n";
        assert_eq!(metric(text, "robert_pool_depth"), Some(12));
        assert_eq!(metric(text, "robert_pairs_processed_total"), Some(3));
        assert_eq!(metric(text, "robert_pairs"), None);
        assert_eq!(metric(text, "robert_outbox_depth"), None);
        assert_eq!(metric("robert_x -1\nrobert_y NaN\n", "robert_x"), None);
        assert_eq!(metric("robert_y NaN\n", "robert_y"), None);
    }
}
