//! Attacks as scenarios, each against its own fresh in-process server, with real Apps for the
//! honest parties and the attacker's devices reduced to what they do with bytes.
//!
//! | scenario | what the attacker does | expected |
//! |---|---|---|
//! | HELLO replay after 2^16 s | records targets' HELLOs, replays them 65 536 s later next to a person who will declare (the 16-bit time matches again, footnote 9) | the App stores them (δ passes modulo 2^16), the server's epoch check (§6.2 step 6) drops them: nobody notified |
//! | relay within δ | relays targets' HELLOs 30 s later next to a person who will declare | succeeds: ROBERT bounds relays to δ, it cannot stop them (§5.2, footnote 9) |
//! | relay beyond δ | relays 2 min later; a modified App uploads them anyway | the App refuses them, the server's δ check (§6.2 step 2) drops the upload: nobody notified |
//! | one-entry attack (Annex A) | a fresh account meets only its target; notified ⇒ target declared | p = 0: the inference is always right; p > 0: random notifications make it uncertain |
//! | Sybil burst (§3.3) | registers many accounts at once | without work: nothing accepted; one solution reused: accepted once; each identity costs 2^d hashes |

use crate::SimError;
use crate::config::SimConfig;
use crate::rng::{Tag, crypto_rng, hash};
use crate::server::{InProcess, app_config, ntp, server_config};
use robert_app::{App, ExposureStatus, Transport};
use robert_proto::api::{ContactBody, RegisterRequest, ReportRequest, b64_encode};
use robert_proto::{AppEphemeralKey, Hello, UploadRecord, pow};
use robert_server::storage::memory::MemoryStorage;
use serde::Serialize;
use std::time::Instant;

/// One attack's outcome.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AttackOutcome {
    /// Victims the attacker tried to falsely notify (or identities tried).
    pub attempts: u64,
    /// Attempts that succeeded.
    pub successes: u64,
    /// successes / attempts.
    pub success_rate: f64,
    /// Forged or relayed HELLOs the honest App stored.
    pub hellos_stored_by_app: u64,
    /// … that it refused (δ check).
    pub hellos_refused_by_app: u64,
    /// Uploaded pairs the server dropped (§6.2 checks).
    pub pairs_rejected_by_server: u64,
}

/// The one-entry attack's outcome at one Annex A probability.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OneEntryOutcome {
    /// Annex A probability p of the server.
    pub p: f64,
    /// Attackers (one target each).
    pub attackers: u64,
    /// Targets who declared.
    pub targets_declared: u64,
    /// Attackers notified whose target declared.
    pub notified_target_declared: u64,
    /// Attackers notified whose target did not declare (Annex A's random notifications).
    pub notified_target_not_declared: u64,
    /// The attacker's certainty: P(target declared | notified). 1 means the attack succeeds.
    pub inference_precision: f64,
    /// Whether the figures depend on the server's own randomness (p > 0): not reproducible.
    pub server_randomness: bool,
}

/// The Sybil burst's outcome.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SybilOutcome {
    /// Registrations sent with no work done (random solutions).
    pub without_work: AttackOutcome,
    /// One solved challenge replayed for many registrations.
    pub reused_solution: AttackOutcome,
    /// Difficulty of the measured honest solves (bits).
    pub difficulty: u8,
    /// Probability that a blind guess solves a puzzle: 2^-difficulty.
    pub guess_success_probability: f64,
    /// Identities registered with honest work (measured, not reproducible).
    pub solved: u64,
    /// Mean SHA-256 evaluations per identity (expected 2^difficulty).
    pub mean_hashes: f64,
    /// Mean CPU seconds per identity on this machine (measured).
    pub seconds_per_identity: f64,
}

/// Every attack scenario.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AttackReport {
    /// Replay after 2^16 s.
    pub replay_after_2_16: AttackOutcome,
    /// Relay within δ.
    pub relay_within_delta: AttackOutcome,
    /// Relay beyond δ.
    pub relay_beyond_delta: AttackOutcome,
    /// One-entry attack without probabilistic notifications.
    pub one_entry_deterministic: OneEntryOutcome,
    /// One-entry attack with probabilistic notifications (Annex A).
    pub one_entry_probabilistic: OneEntryOutcome,
    /// Sybil registration burst.
    pub sybil: SybilOutcome,
}

/// Sizes of the scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AttackSizes {
    /// Victims per replay/relay scenario.
    pub victims: u32,
    /// Attackers in the one-entry scenario.
    pub one_entry_attackers: u32,
    /// Registrations in each Sybil burst.
    pub sybil_burst: u32,
    /// Honest solves measured, and their difficulty.
    pub sybil_solves: u32,
    /// Difficulty of the measured solves (the production default is 20).
    pub sybil_difficulty: u8,
}

impl Default for AttackSizes {
    fn default() -> Self {
        Self {
            victims: 40,
            one_entry_attackers: 200,
            sybil_burst: 500,
            sybil_solves: 4,
            sybil_difficulty: 20,
        }
    }
}

type Server = InProcess<MemoryStorage>;

async fn start(cfg: &SimConfig, salt: u64, p: f64) -> Result<Server, SimError> {
    let server =
        InProcess::start(cfg.seed ^ salt, server_config(cfg, p), |_| Ok(MemoryStorage::new())).await?;
    server.set_time(60);
    server.service.prepare_day_keys().await.map_err(|e| SimError::Server(e.to_string()))?;
    Ok(server)
}

async fn registered(cfg: &SimConfig, server: &Server, n: u32, salt: u64) -> Result<Vec<App>, SimError> {
    let ac = app_config(cfg, server.service.config());
    let t = server.transport();
    let now = server.set_time(60);
    let mut apps = Vec::with_capacity(n as usize);
    for i in 0..n {
        let mut app = App::new(ac.clone());
        let mut rng = crypto_rng(cfg.seed, Tag::Attack, salt, u64::from(i));
        app.register(&t, now, &mut rng).await.map_err(|e| SimError::App(format!("registration: {e}")))?;
        apps.push(app);
    }
    Ok(apps)
}

/// A diagnosed person's App declares everything it holds at `t`.
async fn declare(cfg: &SimConfig, server: &Server, app: &mut App, t: i64, who: u64) -> Result<(), SimError> {
    let now = server.set_time(t);
    let mut rng = crypto_rng(cfg.seed, Tag::Attack, 7 ^ (who << 8), t as u64);
    let tokens = server.declare_tokens(1, t, &mut rng)?;
    let cont_start = ntp(t - i64::from(cfg.declare_window_days) * 86_400);
    app.start_declaration(tokens, cont_start, now, now, &mut rng)
        .map_err(|e| SimError::App(e.to_string()))?;
    let mut none = |_: &App| Ok::<(), SimError>(());
    app.upload_due(&server.transport(), now, &mut none).await?;
    Ok(())
}

/// How many of `apps` the server answers "at risk" at `t`.
async fn notified(server: &Server, apps: &mut [App], t: i64) -> Result<u64, SimError> {
    let now = server.set_time(t);
    let tr = server.transport();
    let mut n = 0;
    for app in apps {
        if app.check_status(&tr, now).await.map_err(|e| SimError::App(format!("ESR: {e}")))?
            == ExposureStatus::AtRisk
        {
            n += 1;
        }
    }
    Ok(n)
}

fn rate(x: u64, y: u64) -> f64 {
    if y == 0 { 0.0 } else { x as f64 / y as f64 }
}

/// Targets' HELLOs, captured over `minutes` minutes from `t0`, are put back next to a declaring
/// accomplice `delay` seconds later. With `force_upload`, what the App refuses is uploaded
/// anyway by a modified App (raw records with the relay time).
async fn relay(
    cfg: &SimConfig,
    sizes: AttackSizes,
    salt: u64,
    delay: u32,
    force_upload: bool,
) -> Result<AttackOutcome, SimError> {
    let server = start(cfg, salt, 0.0).await?;
    let mut targets = registered(cfg, &server, sizes.victims, salt).await?;
    let mut accomplice = registered(cfg, &server, 1, salt + 1).await?.remove(0);
    let t0: i64 = 86_400 + 8 * 3600;
    let minutes = 20;
    let mut out = AttackOutcome { attempts: u64::from(sizes.victims), ..AttackOutcome::default() };
    let mut forced = Vec::new();
    for target in &mut targets {
        for k in 0..minutes {
            let t = t0 + 60 * k;
            let hello = target.hello_at(ntp(t)).map_err(|e| SimError::App(e.to_string()))?;
            let at = ntp(t + i64::from(delay));
            match accomplice.on_hello_received(&hello, at, Some(-50)) {
                Ok(()) => out.hellos_stored_by_app += 1,
                Err(_) => {
                    out.hellos_refused_by_app += 1;
                    if force_upload {
                        let hello = Hello::parse(&hello).map_err(|e| SimError::App(e.to_string()))?;
                        forced.push(ContactBody::from_record(&UploadRecord {
                            hello,
                            time: at,
                            rssi: Some(-50),
                        }));
                    }
                }
            }
        }
    }
    let t_decl = t0 + i64::from(delay) + 3600;
    let rejected_before = server.service.metrics().counter("pairs_rejected").unwrap_or(0);
    declare(cfg, &server, &mut accomplice, t_decl, salt).await?;
    if !forced.is_empty() {
        server.set_time(t_decl);
        let mut rng = crypto_rng(cfg.seed, Tag::Attack, salt, 99);
        let token = server.declare_tokens(1, t_decl, &mut rng)?.remove(0);
        server.transport().report(&token, &ReportRequest { contacts: forced }).await?;
    }
    server.service.mix_once(true).await.map_err(|e| SimError::Server(e.to_string()))?;
    out.pairs_rejected_by_server =
        server.service.metrics().counter("pairs_rejected").unwrap_or(0) - rejected_before;
    out.successes = notified(&server, &mut targets, t_decl + 600).await?;
    out.success_rate = rate(out.successes, out.attempts);
    Ok(out)
}

/// The one-entry attack at Annex A probability `p`: attackers' fresh accounts each meet one
/// target for 20 minutes at 1 m; every other target declares; attackers ask for 3 days.
async fn one_entry(cfg: &SimConfig, sizes: AttackSizes, p: f64) -> Result<OneEntryOutcome, SimError> {
    let salt = 0x1E + (p * 1000.0) as u64;
    let server = start(cfg, salt, p).await?;
    let n = sizes.one_entry_attackers;
    let mut targets = registered(cfg, &server, n, salt).await?;
    let mut attackers = registered(cfg, &server, n, salt + 1).await?;
    let t0: i64 = 10 * 3600;
    for (target, attacker) in targets.iter_mut().zip(attackers.iter_mut()) {
        for k in 0..20 {
            let t = ntp(t0 + 60 * k);
            let hello = attacker.hello_at(t).map_err(|e| SimError::App(e.to_string()))?;
            target.on_hello_received(&hello, t, Some(-55)).map_err(|e| SimError::App(e.to_string()))?;
        }
    }
    let declares = |k: u32| hash(cfg.seed, Tag::Attack, 0x1E, u64::from(k), 0, 0).is_multiple_of(2);
    let mut out = OneEntryOutcome {
        p,
        attackers: u64::from(n),
        server_randomness: p > 0.0,
        ..OneEntryOutcome::default()
    };
    for (k, target) in targets.iter_mut().enumerate() {
        if declares(k as u32) {
            out.targets_declared += 1;
            declare(cfg, &server, target, 14 * 3600, salt << 20 | k as u64).await?;
        }
    }
    server.service.mix_once(true).await.map_err(|e| SimError::Server(e.to_string()))?;
    let tr = server.transport();
    let mut hit = vec![false; n as usize];
    for day in 0..3i64 {
        let now = server.set_time(day * 86_400 + 20 * 3600);
        for (k, a) in attackers.iter_mut().enumerate() {
            if let ExposureStatus::AtRisk =
                a.check_status(&tr, now).await.map_err(|e| SimError::App(format!("ESR: {e}")))?
            {
                hit[k] = true;
            }
        }
    }
    for (k, h) in hit.iter().enumerate() {
        match (h, declares(k as u32)) {
            (true, true) => out.notified_target_declared += 1,
            (true, false) => out.notified_target_not_declared += 1,
            _ => {}
        }
    }
    out.inference_precision =
        rate(out.notified_target_declared, out.notified_target_declared + out.notified_target_not_declared);
    Ok(out)
}

async fn sybil(cfg: &SimConfig, sizes: AttackSizes) -> Result<SybilOutcome, SimError> {
    let mut c = server_config(cfg, 0.0);
    c.registration.pow_difficulty = sizes.sybil_difficulty;
    let server = InProcess::start(cfg.seed ^ 0x5B, c, |_| Ok(MemoryStorage::new())).await?;
    server.set_time(60);
    server.service.prepare_day_keys().await.map_err(|e| SimError::Server(e.to_string()))?;
    let tr = server.transport();
    let mut rng = crypto_rng(cfg.seed, Tag::Attack, 0x5B, 0);
    let key = || -> String {
        b64_encode(
            AppEphemeralKey::generate(&mut crypto_rng(cfg.seed, Tag::Attack, 0x5B, 1))
                .public_key()
                .as_bytes(),
        )
    };
    let n = u64::from(sizes.sybil_burst);
    // (a) No work: a solution that does not solve the puzzle. (A blind guess solves it with
    // probability 2^-d; `guess_success_probability` reports that figure rather than leaving a
    // test to luck.)
    let mut without = AttackOutcome { attempts: n, ..AttackOutcome::default() };
    for i in 0..n {
        let ch = tr.challenge().await?;
        let bytes = robert_proto::api::b64_decode("challenge", &ch.challenge)
            .map_err(|e| SimError::App(e.to_string()))?;
        let mut k = 0;
        let sol = loop {
            let guess = hash(cfg.seed, Tag::Attack, 0x5B, i, k, 0).to_be_bytes();
            if ch.difficulty == 0 || !pow::verify(&bytes, &guess, ch.difficulty) {
                break guess;
            }
            k += 1;
        };
        let req =
            RegisterRequest { challenge: ch.challenge, solution: b64_encode(&sol), client_public_key: key() };
        if tr.register(&req).await.is_ok() {
            without.successes += 1;
        }
    }
    without.success_rate = rate(without.successes, without.attempts);
    // (b) One honest solution, replayed.
    let mut reused = AttackOutcome { attempts: n, ..AttackOutcome::default() };
    let ch = tr.challenge().await?;
    let bytes = robert_proto::api::b64_decode("challenge", &ch.challenge)
        .map_err(|e| SimError::App(e.to_string()))?;
    let sol = pow::solve(&bytes, ch.difficulty, 0).ok_or_else(|| SimError::App("no solution".into()))?;
    for _ in 0..n {
        let req = RegisterRequest {
            challenge: ch.challenge.clone(),
            solution: b64_encode(&sol),
            client_public_key: key(),
        };
        if tr.register(&req).await.is_ok() {
            reused.successes += 1;
        }
    }
    reused.success_rate = rate(reused.successes, reused.attempts);
    // (c) Honest work per identity (measured).
    let started = Instant::now();
    let mut hashes = 0u64;
    for _ in 0..sizes.sybil_solves {
        let ch = tr.challenge().await?;
        let bytes = robert_proto::api::b64_decode("challenge", &ch.challenge)
            .map_err(|e| SimError::App(e.to_string()))?;
        let start = rand_core::Rng::next_u64(&mut rng);
        let sol =
            pow::solve(&bytes, ch.difficulty, start).ok_or_else(|| SimError::App("no solution".into()))?;
        hashes += u64::from_be_bytes(sol).wrapping_sub(start) + 1;
        let req =
            RegisterRequest { challenge: ch.challenge, solution: b64_encode(&sol), client_public_key: key() };
        tr.register(&req).await?;
    }
    let solves = u64::from(sizes.sybil_solves);
    Ok(SybilOutcome {
        without_work: without,
        reused_solution: reused,
        difficulty: sizes.sybil_difficulty,
        guess_success_probability: 0.5f64.powi(i32::from(sizes.sybil_difficulty)),
        solved: solves,
        mean_hashes: rate(hashes, solves),
        seconds_per_identity: if solves == 0 { 0.0 } else { started.elapsed().as_secs_f64() / solves as f64 },
    })
}

/// Runs every scenario.
pub fn run(
    cfg: &SimConfig,
    sizes: AttackSizes,
    rt: &tokio::runtime::Runtime,
) -> Result<AttackReport, SimError> {
    rt.block_on(async {
        Ok(AttackReport {
            replay_after_2_16: relay(cfg, sizes, 0xA1, 65_536, true).await?,
            relay_within_delta: relay(cfg, sizes, 0xA2, 30, false).await?,
            relay_beyond_delta: relay(cfg, sizes, 0xA3, 120, true).await?,
            one_entry_deterministic: one_entry(cfg, sizes, 0.0).await?,
            one_entry_probabilistic: one_entry(cfg, sizes, cfg.attack_annex_a_p).await?,
            sybil: sybil(cfg, sizes).await?,
        })
    })
}
