//! The attack catalogue (issue 8), one test per attack, each against a real server on port 0
//! (SQLite, real HTTP, an injected clock). Every test states the attack and its expected outcome,
//! and where an attack would succeed without the defence, a control shows the honest request
//! passes (so the rejection is not an accident of the setup). `docs/threat-model.md` points here.
//!
//! Attacks already covered elsewhere are referenced, not repeated:
//! - forged challenge, wrong PoW solution, expired challenge: `tests/api.rs registration_checks`;
//! - bad MAC, cross-code MAC and wrong epoch on `/status`, stale time, unknown ID:
//!   `tests/api.rs status_rejections_are_uniform_and_store_nothing`;
//! - every way of malforming a token (padding, DER signatures, HS256 with the public key,
//!   segment counts, claims): `tests/token.rs`.

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use robert_proto::api::*;
use robert_proto::*;
use robert_server::storage::Storage;
use robert_server::token::{AuthorityKey, Purpose};

/// Uploads `pairs` under a fresh `declare` token; returns the HTTP status.
async fn declare(server: &TestServer, pairs: &[(Hello, NtpTime, Option<i8>)]) -> u16 {
    let token = server.token(Purpose::Declare);
    declare_with(server, Some(&token), pairs).await.status().as_u16()
}

async fn declare_with(
    server: &TestServer,
    token: Option<&str>,
    pairs: &[(Hello, NtpTime, Option<i8>)],
) -> reqwest::Response {
    let mut req = server.http.post(format!("{}/api/v1/report", server.url)).json(&report_body(pairs));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("send")
}

fn processed(server: &TestServer) -> u64 {
    server.service.metrics().counter("pairs_processed").unwrap_or(0)
}

async fn pool_depth(server: &TestServer) -> u64 {
    server.service.storage().stats().await.expect("stats").pool_depth
}

/// Uploads `pairs`, runs the mixer, and returns how many became exposures.
async fn exposures_from(server: &TestServer, pairs: &[(Hello, NtpTime, Option<i8>)]) -> u64 {
    let before = processed(server);
    assert_eq!(declare(server, pairs).await, 202);
    assert_eq!(server.mix().await, pairs.len() as u64, "every pair is erased once processed");
    processed(server) - before
}

fn at(t: NtpTime, secs: u32) -> NtpTime {
    t.checked_add(secs).expect("in era 0")
}

/// Replay of a recorded HELLO 2^16 s later: its 16-bit time matches again, so δ passes (§6.2
/// step 2), but the EBID's epoch is ~18 h away from the reception time (step 4).
/// Expected: rejected, no exposure. Control: the same HELLO on time is one exposure.
#[tokio::test]
async fn hello_replay_at_plus_2_16_seconds_is_rejected() {
    let server = TestServer::start(test_config()).await;
    let a = TestApp::register(&server).await;
    let now = server.now();
    let h = a.hello(&server, now);
    assert_eq!(exposures_from(&server, &[(h, at(now, 65_536), Some(-40))]).await, 0);
    assert_eq!(exposures_from(&server, &[(h, now, Some(-40))]).await, 1, "control");
    server.stop().await;
}

/// Replay of a HELLO in a later epoch: as recorded, δ fails (20 min late); with its time field
/// rewritten to the replay time, the MAC (which covers the time) fails.
/// Expected: both rejected, no exposure.
#[tokio::test]
async fn hello_replay_across_epochs_is_rejected() {
    let server = TestServer::start(test_config()).await;
    let a = TestApp::register(&server).await;
    let now = server.now();
    let h = a.hello(&server, now);
    let later = at(now, 1200);
    let mut retimed = h.to_bytes();
    let t16 = (later.seconds() & 0xffff) as u16;
    retimed[9..11].copy_from_slice(&t16.to_be_bytes());
    let pairs = [(h, later, Some(-40)), (Hello::from_bytes(retimed), later, Some(-40))];
    assert_eq!(exposures_from(&server, &pairs).await, 0);
    server.stop().await;
}

/// Replay of a HELLO on later days, at multiples of 2^16 s so that δ passes: the pair's time
/// selects another day's K_S, under which the EBID decrypts to another epoch (or ID).
/// Expected: rejected for every multiple within CT days, no exposure.
#[tokio::test]
async fn hello_replay_across_day_keys_is_rejected() {
    let server = TestServer::start(test_config()).await;
    let a = TestApp::register(&server).await;
    let now = server.now();
    let h = a.hello(&server, now);
    // Day keys must exist for the replay days for the test to reach step 4: create them.
    let pairs: Vec<_> = (2..=13u32).map(|k| (h, at(now, k * 65_536), Some(-40))).collect();
    for (_, t, _) in &pairs {
        server.set_now(*t);
        server.service.prepare_day_keys().await.expect("day keys");
    }
    server.set_now(at(now, 13 * 65_536 + 60));
    assert_eq!(exposures_from(&server, &pairs).await, 0);
    server.stop().await;
}

/// Relay inside δ: an attacker records a HELLO and rebroadcasts it elsewhere within δ = 60 s
/// (strictly less, §6.2 step 2). Expected: ACCEPTED — inherent to any scheme without distance
/// bounding (the spec's §1.4 and §5.2 bound the relay in time, not in space).
#[tokio::test]
async fn relay_inside_delta_is_accepted_inherent() {
    let server = TestServer::start(test_config()).await;
    let a = TestApp::register(&server).await;
    let now = server.now();
    let h = a.hello(&server, now);
    assert_eq!(exposures_from(&server, &[(h, at(now, 59), Some(-40))]).await, 1);
    server.stop().await;
}

/// Relay outside δ: the same HELLO rebroadcast 60 s or more later. Expected: rejected.
#[tokio::test]
async fn relay_outside_delta_is_rejected() {
    let server = TestServer::start(test_config()).await;
    let a = TestApp::register(&server).await;
    let now = server.now();
    let h = a.hello(&server, now);
    let pairs = [(h, at(now, 60), Some(-40)), (h, at(now, 300), Some(-40))];
    assert_eq!(exposures_from(&server, &pairs).await, 0);
    server.stop().await;
}

/// Every single-bit flip of a HELLO (ECC, EBID, time, MAC: all 128 bits). Expected: none becomes
/// an exposure (ECC and EBID flips: wrong country or ID, or a failed MAC; time flips: δ or MAC;
/// MAC flips: MAC). Control: the unmodified HELLO is one exposure.
#[tokio::test]
async fn bit_flips_in_every_hello_field_are_rejected() {
    let server = TestServer::start(test_config()).await;
    let a = TestApp::register(&server).await;
    let now = server.now();
    let h = a.hello(&server, now);
    let flipped: Vec<_> = (0..128)
        .map(|bit| {
            let mut b = h.to_bytes();
            b[bit / 8] ^= 0x80 >> (bit % 8);
            (Hello::from_bytes(b), now, Some(-40))
        })
        .collect();
    assert_eq!(exposures_from(&server, &flipped).await, 0);
    assert_eq!(exposures_from(&server, &[(h, now, Some(-40))]).await, 1, "control");
    server.stop().await;
}

/// A declaration without a token. Expected: uniform 403, nothing stored.
#[tokio::test]
async fn declaration_without_token_is_rejected() {
    let server = TestServer::start(test_config()).await;
    let a = TestApp::register(&server).await;
    let now = server.now();
    let pairs = [(a.hello(&server, now), now, Some(-40))];
    assert_rejected(declare_with(&server, None, &pairs).await).await;
    assert_eq!(pool_depth(&server).await, 0);
    server.stop().await;
}

/// A declaration with an expired `declare` token (issued 2 h ago for 1 h).
/// Expected: uniform 403, nothing stored.
#[tokio::test]
async fn declaration_with_expired_token_is_rejected() {
    let server = TestServer::start(test_config()).await;
    let a = TestApp::register(&server).await;
    let now = server.now();
    let old =
        server.authority.issue(Purpose::Declare, now.to_unix() - 7200, 3600, &mut rand::rng()).expect("t");
    assert_rejected(declare_with(&server, Some(&old), &[(a.hello(&server, now), now, None)]).await).await;
    assert_eq!(pool_depth(&server).await, 0);
    server.stop().await;
}

/// A declaration reusing a token already spent (single-use `jti`), even with other contacts.
/// Expected: the first is accepted, the reuse is a uniform 403 that stores nothing more.
#[tokio::test]
async fn declaration_with_reused_token_is_rejected() {
    let server = TestServer::start(test_config()).await;
    let a = TestApp::register(&server).await;
    let now = server.now();
    let token = server.token(Purpose::Declare);
    let first = declare_with(&server, Some(&token), &[(a.hello(&server, now), now, None)]).await;
    assert_eq!(first.status(), 202);
    let other = [(a.hello(&server, at(now, 10)), at(now, 10), None)];
    assert_rejected(declare_with(&server, Some(&token), &other).await).await;
    assert_eq!(pool_depth(&server).await, 1);
    server.stop().await;
}

/// A declaration with a wrongly signed token: (a) signed by an authority the server does not
/// trust; (b) a trusted authority's token whose claims were changed (`purpose: reset` turned
/// into `declare`) keeping the signature. Expected: uniform 403, nothing stored.
#[tokio::test]
async fn declaration_with_wrongly_signed_token_is_rejected() {
    let server = TestServer::start(test_config()).await;
    let a = TestApp::register(&server).await;
    let now = server.now();
    let pairs = [(a.hello(&server, now), now, None)];
    let rogue = AuthorityKey::generate(&mut rand::rng());
    let forged = rogue.issue(Purpose::Declare, now.to_unix(), 3600, &mut rand::rng()).expect("t");
    assert_rejected(declare_with(&server, Some(&forged), &pairs).await).await;
    let reset = server.token(Purpose::Reset);
    let parts: Vec<&str> = reset.split('.').collect();
    let claims = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("utf-8");
    assert!(claims.contains("\"reset\""));
    let swapped = URL_SAFE_NO_PAD.encode(claims.replace("\"reset\"", "\"declare\""));
    let tampered = format!("{}.{swapped}.{}", parts[0], parts[2]);
    assert_rejected(declare_with(&server, Some(&tampered), &pairs).await).await;
    assert_eq!(pool_depth(&server).await, 0);
    server.stop().await;
}

/// A declaration with an `alg: none` token naming a trusted `kid`, with and without a
/// signature segment. Expected: uniform 403 (only ES256 is accepted), nothing stored.
#[tokio::test]
async fn declaration_with_alg_none_token_is_rejected() {
    let server = TestServer::start(test_config()).await;
    let a = TestApp::register(&server).await;
    let now = server.now();
    let pairs = [(a.hello(&server, now), now, None)];
    let genuine = server.token(Purpose::Declare);
    let parts: Vec<&str> = genuine.split('.').collect();
    let header =
        URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","typ":"JWT","kid":"{}"}}"#, server.authority.kid()));
    for token in [format!("{header}.{}.", parts[1]), format!("{header}.{}.{}", parts[1], parts[2])] {
        assert_rejected(declare_with(&server, Some(&token), &pairs).await).await;
    }
    assert_eq!(pool_depth(&server).await, 0);
    // The genuine token was never spent by these attempts.
    assert_eq!(declare_with(&server, Some(&genuine), &pairs).await.status(), 202);
    server.stop().await;
}

/// The one-entry attack (§1.4, Annex A): an attacker keeps a single HELLO in its list — one
/// person met alone — then asks for its status; "at risk" would identify that person as
/// diagnosed. Expected outcomes:
/// (a) with the default rule (15 weighted minutes), one HELLO (60 s) does not notify;
/// (b) a deployment that notifies on one exposed epoch lets the attack work: inherent to any
///     notification, stated in the threat model;
/// (c) with Annex A's probabilistic notification (here p = 1, so the test is deterministic),
///     an attacker with no exposure at all is also told "at risk": the answer no longer
///     attributes the diagnosis; and once notified, UN_A repeats the same answer until the
///     acknowledgement, after which ESRs are refused — the attacker cannot query again to
///     learn when the exposure was counted.
#[tokio::test]
async fn one_entry_attack_against_un_a_and_annex_a() {
    // (a)
    let server = TestServer::start(test_config()).await;
    let mut attacker = TestApp::register(&server).await;
    let now = server.now();
    // The diagnosed person declares the one HELLO she heard: the attacker's.
    assert_eq!(exposures_from(&server, &[(attacker.hello(&server, now), now, Some(-40))]).await, 1);
    server.advance(8 * 900);
    let s: StatusResponse = attacker.status(&server).await.json().await.expect("json");
    assert!(!s.at_risk, "a single HELLO is below the default threshold");
    server.stop().await;

    // (b)
    let mut config = test_config();
    config.risk.rule = robert_server::config::RiskRule::Epochs;
    config.risk.min_exposed_epochs = 1;
    let server = TestServer::start(config).await;
    let mut attacker = TestApp::register(&server).await;
    let now = server.now();
    assert_eq!(exposures_from(&server, &[(attacker.hello(&server, now), now, None)]).await, 1);
    server.advance(8 * 900);
    let s: StatusResponse = attacker.status(&server).await.json().await.expect("json");
    assert!(s.at_risk, "with a one-epoch threshold the single entry notifies (inherent)");
    // UN_A: told again (a new request) until acknowledged, then refused.
    server.advance(1);
    let s: StatusResponse = attacker.status(&server).await.json().await.expect("json");
    assert!(s.at_risk);
    let ack = attacker.request(&server, RequestCode::StatusAck);
    assert_eq!(server.post("/api/v1/status/ack", &ack).await.status(), 204);
    server.advance(8 * 900);
    assert_rejected(attacker.status(&server).await).await;
    server.stop().await;

    // (c)
    let mut config = test_config();
    config.risk.notification_probability = 1.0;
    let server = TestServer::start(config).await;
    let mut unexposed = TestApp::register(&server).await;
    server.advance(8 * 900);
    let s: StatusResponse = unexposed.status(&server).await.json().await.expect("json");
    assert!(s.at_risk, "Annex A: 'at risk' without any exposure, so it names no one");
    server.stop().await;
}

/// Sybil registrations against the proof of work (§3.3): (a) lowering the difficulty written in
/// the challenge (it is under the server's MAC); (b) one solved challenge for many identities
/// (accepted once). Expected: both rejected; one solved challenge is one identity.
/// (Forged challenge, wrong solution, expiry: `tests/api.rs registration_checks`; a flood of
/// registrations: `registration_flood_is_answered_with_429`.)
#[tokio::test]
async fn sybil_registrations_against_the_proof_of_work() {
    let mut config = test_config();
    config.registration.pow_difficulty = 12;
    let server = TestServer::start(config).await;
    let ch: ChallengeResponse =
        server.post("/api/v1/register/challenge", &()).await.json().await.expect("json");
    let challenge = b64_decode("challenge", &ch.challenge).expect("b64");
    let key = |_| b64_encode(AppEphemeralKey::generate(&mut rand::rng()).public_key().as_bytes());
    // (a) difficulty byte (offset 20) lowered to 0: any solution "works", but the MAC breaks.
    let mut easy = challenge.clone();
    easy[20] = 0;
    let req = RegisterRequest {
        challenge: b64_encode(&easy),
        solution: b64_encode(&[0u8; 8]),
        client_public_key: key(0),
    };
    assert_rejected(server.post("/api/v1/register", &req).await).await;
    // (b) one solution, five identities.
    let solution = b64_encode(&pow::solve(&challenge, 12, 0).expect("solvable"));
    let mut created = 0;
    for i in 0..5 {
        let req = RegisterRequest {
            challenge: ch.challenge.clone(),
            solution: solution.clone(),
            client_public_key: key(i),
        };
        if server.post("/api/v1/register", &req).await.status() == 201 {
            created += 1;
        }
    }
    assert_eq!(created, 1);
    assert_eq!(server.service.storage().stats().await.expect("stats").users, 1);
    server.stop().await;
}

/// A flood of registrations beyond `[limits]` (token buckets on the server's clock, frozen here
/// so the count is exact). Expected: exactly `burst` answered normally, the rest `429` with a
/// problem document and `Retry-After`, the server keeps answering (healthz, other endpoints),
/// and the bucket refills as the clock moves.
#[tokio::test]
async fn registration_flood_is_answered_with_429() {
    let mut config = test_config();
    config.limits.challenge_per_sec = 10;
    config.limits.challenge_burst = 50;
    config.limits.register_per_sec = 1;
    config.limits.register_burst = 3;
    let server = TestServer::start(config).await;
    let flood = (0..300).map(|_| Box::pin(server.post("/api/v1/register/challenge", &()))).collect();
    let answers = join_vec(flood).await;
    let ok = answers.iter().filter(|r| r.status() == 200).count();
    let limited = answers.iter().filter(|r| r.status() == 429).count();
    assert_eq!((ok, limited), (50, 250), "exactly the burst is served, the rest is 429, nothing else");
    let limited = answers.into_iter().find(|r| r.status() == 429).expect("one 429");
    assert_eq!(limited.headers()["content-type"], "application/problem+json");
    assert_eq!(limited.headers()["retry-after"], "1");
    let p: serde_json::Value = limited.json().await.expect("problem");
    assert_eq!(p["status"], 429);
    assert_eq!(server.get("/healthz").await.status(), 200, "still answering");
    server.advance(1);
    // Registrations: the burst of 3, then 429 before any work (even for a valid request)…
    for _ in 0..3 {
        TestApp::register(&server).await;
    }
    let ch: ChallengeResponse =
        server.post("/api/v1/register/challenge", &()).await.json().await.expect("json");
    let c = b64_decode("challenge", &ch.challenge).expect("b64");
    let req = RegisterRequest {
        challenge: ch.challenge,
        solution: b64_encode(&pow::solve(&c, ch.difficulty, 0).expect("solvable")),
        client_public_key: b64_encode(AppEphemeralKey::generate(&mut rand::rng()).public_key().as_bytes()),
    };
    assert_eq!(server.post("/api/v1/register", &req).await.status(), 429);
    // …and one more a second later (the same challenge: the 429 did not spend it).
    server.advance(1);
    assert_eq!(server.post("/api/v1/register", &req).await.status(), 201);
    assert_eq!(server.service.storage().stats().await.expect("stats").users, 4);
    server.stop().await;
}

/// A flood of concurrent registrations against the in-flight cap (on by default; 1 here).
/// Expected: every answer is 201 or a 429 problem document — never an error, a hang or a crash —
/// exactly the 201s created identities, and the server still answers. (Which requests meet the
/// cap depends on scheduling, so only these invariants are asserted, not the split.)
#[tokio::test]
async fn registration_flood_meets_the_in_flight_cap() {
    let mut config = test_config();
    config.limits.register_max_in_flight = 1;
    let server = TestServer::start(config).await;
    let mut requests = Vec::new();
    for _ in 0..64 {
        let ch: ChallengeResponse =
            server.post("/api/v1/register/challenge", &()).await.json().await.expect("json");
        let c = b64_decode("challenge", &ch.challenge).expect("b64");
        requests.push(RegisterRequest {
            challenge: ch.challenge,
            solution: b64_encode(&pow::solve(&c, ch.difficulty, 0).expect("solvable")),
            client_public_key: b64_encode(
                AppEphemeralKey::generate(&mut rand::rng()).public_key().as_bytes(),
            ),
        });
    }
    let flood = requests.iter().map(|r| Box::pin(server.post("/api/v1/register", r))).collect();
    let answers = join_vec(flood).await;
    let created = answers.iter().filter(|r| r.status() == 201).count();
    for r in &answers {
        assert!(r.status() == 201 || r.status() == 429, "unexpected {}", r.status());
        if r.status() == 429 {
            assert_eq!(r.headers()["content-type"], "application/problem+json");
        }
    }
    assert!(created >= 1);
    assert_eq!(server.service.storage().stats().await.expect("stats").users, created as u64);
    assert_eq!(server.get("/healthz").await.status(), 200);
    server.stop().await;
}

/// Polls every future until all are done (a minimal `join_all`).
async fn join_vec<F: std::future::Future + Unpin>(mut futs: Vec<F>) -> Vec<F::Output> {
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in futs.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match std::pin::Pin::new(f).poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    out.into_iter().map(|o| o.expect("every future completed")).collect()
}

/// Replayed authenticated requests (the same bytes again inside the time tolerance): an ESR of
/// a notified App (whose repeat would otherwise be answered `atRisk: true` again), an
/// acknowledgement, a delete-history and an unregister. Expected: each replay a uniform 403;
/// a fresh request (a second later) of the same App is served.
#[tokio::test]
async fn replayed_authenticated_requests_are_rejected() {
    let mut config = test_config();
    config.risk.rule = robert_server::config::RiskRule::Epochs;
    let server = TestServer::start(config).await;
    let mut a = TestApp::register(&server).await;
    let now = server.now();
    assert_eq!(exposures_from(&server, &[(a.hello(&server, now), now, None)]).await, 1);
    server.advance(8 * 900);
    let esr = a.request(&server, RequestCode::StatusRequest);
    assert_eq!(server.post("/api/v1/status", &esr).await.status(), 200);
    assert_rejected(server.post("/api/v1/status", &esr).await).await;
    server.advance(1);
    let s: StatusResponse = a.status(&server).await.json().await.expect("json");
    assert!(s.at_risk, "a fresh ESR is still told (UN_A)");
    server.advance(1);
    let ack = a.request(&server, RequestCode::StatusAck);
    assert_eq!(server.post("/api/v1/status/ack", &ack).await.status(), 204);
    assert_rejected(server.post("/api/v1/status/ack", &ack).await).await;
    let del = a.request(&server, RequestCode::DeleteHistory);
    assert_eq!(server.post("/api/v1/delete-history", &del).await.status(), 204);
    assert_rejected(server.post("/api/v1/delete-history", &del).await).await;
    server.advance(1);
    let unreg = a.request(&server, RequestCode::Unregister);
    assert_eq!(server.post("/api/v1/unregister", &unreg).await.status(), 204);
    assert_rejected(server.post("/api/v1/unregister", &unreg).await).await;
    server.stop().await;
}

/// Cross-code requests (Annex C): a MAC made for one code presented to every other endpoint.
/// Expected: uniform 403 everywhere, and the App is untouched (still registered, its history
/// kept): its own unregister request still works afterwards.
#[tokio::test]
async fn cross_code_authenticated_requests_are_rejected() {
    let server = TestServer::start(test_config()).await;
    let a = TestApp::register(&server).await;
    let endpoints = [
        (RequestCode::StatusRequest, "/api/v1/status"),
        (RequestCode::StatusAck, "/api/v1/status/ack"),
        (RequestCode::Unregister, "/api/v1/unregister"),
        (RequestCode::DeleteHistory, "/api/v1/delete-history"),
    ];
    for (made_for, _) in endpoints {
        let body = a.request(&server, made_for);
        for (code, path) in endpoints {
            if code != made_for {
                assert_rejected(server.post(path, &body).await).await;
            }
        }
    }
    assert_eq!(server.service.storage().stats().await.expect("stats").users, 1);
    server.advance(1);
    let unreg = a.request(&server, RequestCode::Unregister);
    assert_eq!(server.post("/api/v1/unregister", &unreg).await.status(), 204);
    server.stop().await;
}

/// Claimed epoch ≠ the EBID's epoch (§7 step 4), on every authenticated endpoint, with a MAC
/// made over the claimed epoch (so only the EBID/epoch binding can catch it).
/// Expected: uniform 403; the App is still registered.
#[tokio::test]
async fn claimed_epoch_differs_from_ebid_epoch() {
    let server = TestServer::start(test_config()).await;
    let a = TestApp::register(&server).await;
    let e = a.entry(server.epoch());
    for (code, path) in [
        (RequestCode::StatusRequest, "/api/v1/status"),
        (RequestCode::Unregister, "/api/v1/unregister"),
        (RequestCode::DeleteHistory, "/api/v1/delete-history"),
    ] {
        for claimed in [e.epoch.checked_sub(1), e.epoch.checked_add(1)].into_iter().flatten() {
            let req = AuthRequest::new(&a.auth, code, e.ebid, claimed, server.now());
            assert_rejected(server.post(path, &AuthRequestBody::from_request(&req)).await).await;
        }
    }
    assert_eq!(server.service.storage().stats().await.expect("stats").users, 1);
    server.stop().await;
}

/// Existence oracles: an unknown ID, a known ID with a bad MAC, and an App that was notified and
/// acknowledged (so its ESRs are refused) must be indistinguishable: same status, same headers
/// that matter, the same body bytes, on every authenticated endpoint. (Latency is compared in a
/// benchmark, not here: the machine is shared.) Expected: identical answers.
#[tokio::test]
async fn existence_oracles_give_identical_answers() {
    let mut config = test_config();
    config.risk.rule = robert_server::config::RiskRule::Epochs;
    let server = TestServer::start(config).await;
    let known = TestApp::register(&server).await;
    let mut notified = TestApp::register(&server).await;
    let now = server.now();
    assert_eq!(exposures_from(&server, &[(notified.hello(&server, now), now, None)]).await, 1);
    server.advance(8 * 900);
    assert!(notified.status(&server).await.json::<StatusResponse>().await.expect("json").at_risk);
    server.advance(1);
    let ack = notified.request(&server, RequestCode::StatusAck);
    assert_eq!(server.post("/api/v1/status/ack", &ack).await.status(), 204);
    server.advance(1);

    let answer = |resp: reqwest::Response| async move {
        let status = resp.status().as_u16();
        let ctype = resp.headers().get("content-type").cloned();
        (status, ctype, resp.bytes().await.expect("body").to_vec())
    };
    for (code, path) in [
        (RequestCode::StatusRequest, "/api/v1/status"),
        (RequestCode::StatusAck, "/api/v1/status/ack"),
        (RequestCode::Unregister, "/api/v1/unregister"),
        (RequestCode::DeleteHistory, "/api/v1/delete-history"),
    ] {
        let mut unknown = known.request(&server, code);
        unknown.ebid = b64_encode(&[0x5a; 8]);
        let mut bad_mac = known.request(&server, code);
        bad_mac.mac = b64_encode(&[0u8; 32]);
        let a = answer(server.post(path, &unknown).await).await;
        let b = answer(server.post(path, &bad_mac).await).await;
        assert_eq!(a, b, "{path}: unknown ID vs bad MAC");
        assert_eq!(a.0, 403);
        assert_eq!(a.2, br#"{"error":"rejected"}"#);
        // The notified App, with a MAC that is not its own: same answer.
        let mut notified_bad_mac = notified.request(&server, code);
        notified_bad_mac.mac = b64_encode(&[1u8; 32]);
        let c = answer(server.post(path, &notified_bad_mac).await).await;
        assert_eq!(a, c, "{path}: unknown ID vs notified ID with a bad MAC");
        if code == RequestCode::StatusRequest {
            // The notified-and-acknowledged App's own ESR is refused the same way (§7 step 7).
            // (A repeated acknowledgement is idempotent, 204: only the holder of K_auth can ask.)
            let d = answer(server.post(path, &notified.request(&server, code)).await).await;
            assert_eq!(a, d, "{path}: unknown ID vs notified-and-acknowledged");
        }
    }
    server.stop().await;
}

/// An upload window longer than CT days: a HELLO recorded 15 days ago (CT = 14) declared today.
/// Its day key has been destroyed (footnote 5), so the EBID cannot be opened.
/// Expected: accepted into the pool (the server cannot tell before the mixer), never an
/// exposure, erased. Control: a HELLO 13 days old is still counted.
#[tokio::test]
async fn upload_window_longer_than_ct_days_counts_nothing() {
    let server = TestServer::start(test_config()).await;
    let start = server.now();
    // An App registered on day D broadcasts the old HELLO, another on D + 2 the recent one;
    // both are declared on D + 15 (so 15 and 13 days old).
    let day = 86_400;
    let old = TestApp::register(&server).await;
    let t_old = server.now();
    let h_old = old.hello(&server, t_old);
    server.set_now(at(start, 2 * day));
    server.service.prepare_day_keys().await.expect("keys");
    let recent = TestApp::register(&server).await;
    let t_recent = server.now();
    let h_recent = recent.hello(&server, t_recent);
    server.set_now(at(start, 15 * day + 600));
    server.service.prepare_day_keys().await.expect("keys");
    let expired = server.service.expire().await.expect("expiry");
    assert!(expired.server_keys > 0, "day keys older than CT days are destroyed");
    assert_eq!(exposures_from(&server, &[(h_old, t_old, Some(-40))]).await, 0);
    assert_eq!(exposures_from(&server, &[(h_recent, t_recent, Some(-40))]).await, 1, "control");
    server.stop().await;
}

/// The audit log (Annex B) records the start (configuration digest), day-key creation and
/// destruction, and token counts, as a valid hash chain holding no HELLO, EBID or token.
#[tokio::test]
async fn audit_log_records_security_events_without_personal_data() {
    let server = TestServer::start(test_config()).await;
    let a = TestApp::register(&server).await;
    let now = server.now();
    let h = a.hello(&server, now);
    let token = server.token(Purpose::Declare);
    assert_eq!(declare_with(&server, Some(&token), &[(h, now, None)]).await.status(), 202);
    server.service.audit_token_counts();
    server.advance(16 * 86_400);
    server.service.prepare_day_keys().await.expect("keys");
    server.service.expire().await.expect("expiry");
    let path = server.dir.path().join("audit.log");
    let head = robert_server::audit::verify(&path).expect("valid chain");
    let text = std::fs::read_to_string(&path).expect("audit log");
    assert_eq!(head.seq as usize, text.lines().count());
    for event in ["\"start\"", "\"day-key-created\"", "\"tokens-accepted\"", "\"day-keys-destroyed\""] {
        assert!(text.contains(&format!("\"event\":{event}")), "{event} missing:\n{text}");
    }
    assert!(text.contains("\"declare\":1"), "{text}");
    let hello = h.to_bytes();
    for needle in [hex::encode(hello), b64_encode(&hello), b64_encode(&hello[1..9]), token] {
        assert!(!text.contains(&needle), "the audit log holds no HELLO, EBID or token");
    }
    server.stop().await;
}

/// No debug bypass of the proof of work, the token check or the MACs exists in a release build.
/// Decision: these checks have no `cfg(debug_assertions)` / feature switch at all, so release and
/// debug builds run the same code; this test fails if one appears in the crates that hold them.
/// Difficulty 0 is a *configuration* (benchmarks), never a default: the default is 20, and the
/// difficulty served is the one configured.
#[tokio::test]
async fn no_debug_bypass_of_pow_token_or_mac() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut checked = 0;
    for dir in ["robert-proto/src", "robert-server/src"] {
        for entry in std::fs::read_dir(root.join(dir)).expect("src dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("source");
                // No build-dependent switch anywhere; no environment switch in the files that
                // hold the checks (config.rs may read a database URL from the environment).
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                let checks = [
                    "service.rs",
                    "token.rs",
                    "http.rs",
                    "limits.rs",
                    "pow.rs",
                    "mac.rs",
                    "hello.rs",
                    "request.rs",
                    "keys.rs",
                    "keystore.rs",
                ]
                .contains(&name);
                let mut banned = vec!["debug_assertions", "cfg(feature", "cfg(not(feature"];
                if checks {
                    banned.extend(["option_env!", "env::var"]);
                }
                for banned in banned {
                    assert!(
                        !text.contains(banned),
                        "{} mentions `{banned}`: no check may differ between builds",
                        path.display()
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 10, "the scan found the sources ({checked} files)");
    assert_eq!(robert_server::config::Config::default().registration.pow_difficulty, 20);
    let mut config = test_config();
    config.registration.pow_difficulty = 9;
    let server = TestServer::start(config).await;
    let ch: ChallengeResponse =
        server.post("/api/v1/register/challenge", &()).await.json().await.expect("json");
    assert_eq!(ch.difficulty, 9);
    server.stop().await;
}
