//! Timing oracle (issue 8; `cargo bench -p robert-server --bench oracle`): are the rejections of
//! an ESR for an unknown ID, for a known ID with a bad MAC, and for an App that was notified and
//! acknowledged (refused at §7 step 7) distinguishable by their latency?
//!
//! The three kinds of request are sent interleaved in a shuffled order to one in-process
//! [`Service`] over the in-memory storage (so the storage's own latency does not mask a
//! difference), N times each. The bench prints each distribution's percentiles and the
//! two-sample Kolmogorov–Smirnov statistic D of each pair, beside the critical value at
//! α = 0.001. It reports; it does not fail: on a shared, noisy machine the verdict is read by a
//! person, with the command to reproduce. (A timed *test* would be flaky by construction.)
//!
//! The replay cache is set to one entry so that the acknowledged App's requests, which pass
//! §7 steps 1–6 and enter it, are refused at step 7 (the path measured), not as replays.

use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use robert_proto::api::{AuthRequestBody, RegisterRequest, b64_decode, b64_encode};
use robert_proto::sealed::{self, EbidEntry};
use robert_proto::{AppEphemeralKey, AuthKey, AuthRequest, NtpTime, RequestCode, pow};
use robert_server::config::Config;
use robert_server::keystore::{self, ServerSecrets};
use robert_server::service::{Clock, Service, ServiceError};
use robert_server::storage::memory::MemoryStorage;
use robert_server::token::TrustedAuthorities;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SERVICE_START_UNIX: u64 = 1_767_225_600;
const SAMPLES: usize = 20_000;

struct App {
    auth: AuthKey,
    list: Vec<EbidEntry>,
}

async fn register(svc: &Service<MemoryStorage>) -> App {
    let ch = svc.challenge();
    let c = b64_decode("challenge", &ch.challenge).expect("b64");
    let eph = AppEphemeralKey::generate(&mut rand::rng());
    let req = RegisterRequest {
        challenge: ch.challenge,
        solution: b64_encode(&pow::solve(&c, ch.difficulty, 0).expect("solvable")),
        client_public_key: b64_encode(eph.public_key().as_bytes()),
    };
    let reg = svc.register(&req).await.expect("registers");
    let keys = eph.agree(svc.server_public_key());
    let list = sealed::open(&keys.k_enc, &b64_decode("ebids", &reg.ebids).expect("b64")).expect("opens");
    App { auth: AuthKey::new(&keys.k_auth), list }
}

fn request(app: &App, svc: &Service<MemoryStorage>, code: RequestCode, time: NtpTime) -> AuthRequestBody {
    let epoch = svc.schedule().epoch_at(svc.now()).expect("epoch");
    let e = app.list.iter().find(|e| e.epoch == epoch).expect("covered");
    AuthRequestBody::from_request(&AuthRequest::new(&app.auth, code, e.ebid, e.epoch, time))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p / 100.0).round() as usize;
    sorted[i].as_nanos() as f64
}

/// Two-sample Kolmogorov–Smirnov statistic of sorted samples.
fn ks(a: &[Duration], b: &[Duration]) -> f64 {
    let (mut i, mut j, mut d) = (0, 0, 0f64);
    while i < a.len() && j < b.len() {
        if a[i] <= b[j] {
            i += 1;
        } else {
            j += 1;
        }
        d = d.max((i as f64 / a.len() as f64 - j as f64 / b.len() as f64).abs());
    }
    d
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().expect("tmp");
    keystore::keygen(&dir.path().join("keys"), &mut ChaCha20Rng::seed_from_u64(1)).expect("keygen");
    let secrets = ServerSecrets::load(&dir.path().join("keys")).expect("keys");
    let mut config = Config::default();
    config.server.data_dir = dir.path().to_path_buf();
    config.registration.pow_difficulty = 0;
    config.risk.notification_probability = 1.0; // the first ESR notifies (Annex A), cheaply
    config.limits.replay_cache_entries = 1;
    let start = NtpTime::from_unix(SERVICE_START_UNIX).expect("era 0");
    let now = NtpTime::new(start.seconds() + 10 * 86_400 + 450);
    let clock: Clock = Arc::new(move || now);
    let svc = Service::new(config, start, secrets, MemoryStorage::new(), TrustedAuthorities::new(), clock)
        .await
        .expect("service");
    svc.prepare_day_keys().await.expect("day keys");
    let known = register(&svc).await;
    let acked = register(&svc).await;
    assert!(svc.status(&request(&acked, &svc, RequestCode::StatusRequest, now)).await.expect("ESR").at_risk);
    svc.acknowledge(&request(&acked, &svc, RequestCode::StatusAck, now)).await.expect("ack");

    // Distinct times inside the tolerance, so that no two acknowledged-App requests are equal.
    let times: Vec<NtpTime> = (0..300).map(|k| NtpTime::new(now.seconds() - k)).collect();
    let mut order: Vec<usize> = (0..3 * SAMPLES).map(|i| i % 3).collect();
    order.shuffle(&mut ChaCha20Rng::seed_from_u64(7));
    let mut samples: [Vec<Duration>; 3] = Default::default();
    for (n, &kind) in order.iter().enumerate() {
        let t = times[n % times.len()];
        let body = match kind {
            0 => {
                let mut b = request(&known, &svc, RequestCode::StatusRequest, t);
                b.ebid = b64_encode(&(n as u64).to_be_bytes());
                b
            }
            1 => {
                let mut b = request(&known, &svc, RequestCode::StatusRequest, t);
                b.mac = b64_encode(&[n as u8; 32]);
                b
            }
            _ => request(&acked, &svc, RequestCode::StatusRequest, t),
        };
        let started = Instant::now();
        let r = svc.status(&body).await;
        samples[kind].push(started.elapsed());
        assert!(matches!(r, Err(ServiceError::Rejected)), "every request here is rejected");
    }
    let names = ["unknown ID", "bad MAC", "acknowledged"];
    for s in &mut samples {
        s.sort_unstable();
    }
    println!("ESR rejection latency, {SAMPLES} samples each, interleaved (ns):");
    println!("{:<14} {:>8} {:>8} {:>8} {:>8}", "kind", "p10", "p50", "p90", "p99");
    for (name, s) in names.iter().zip(&samples) {
        println!(
            "{name:<14} {:>8.0} {:>8.0} {:>8.0} {:>8.0}",
            percentile(s, 10.0),
            percentile(s, 50.0),
            percentile(s, 90.0),
            percentile(s, 99.0)
        );
    }
    // c(α = 0.001) = 1.949; equal sample sizes.
    let critical = 1.949 * (2.0 / SAMPLES as f64).sqrt();
    for (a, b) in [(0, 1), (0, 2), (1, 2)] {
        let d = ks(&samples[a], &samples[b]);
        let median_gap = percentile(&samples[a], 50.0) - percentile(&samples[b], 50.0);
        println!(
            "KS {} vs {}: D = {d:.4} (critical {critical:.4} at α = 0.001: {}), median gap {median_gap:+.0} ns",
            names[a],
            names[b],
            if d > critical { "distributions differ" } else { "not distinguishable" },
        );
    }
}
