//! The HTTP API end to end: a real server on port 0, a real SQLite database, real HTTP.

mod common;

use common::*;
use robert_proto::api::*;
use robert_proto::*;
use robert_server::metrics::Replay;
use robert_server::storage::Storage;
use robert_server::token::Purpose;

/// C meets A for 15 minutes at close range; C is diagnosed and declares; A is notified, keeps
/// being told until she acknowledges, is then refused, and is reset by a `reset` token (§6, §7).
#[tokio::test]
async fn spec_flow_declare_notify_ack_reset() {
    let server = TestServer::start(test_config()).await;
    let mut a = TestApp::register(&server).await;
    let c = TestApp::register(&server).await;

    // First ESR of a new registration: not held back by T, not at risk.
    let resp = a.status(&server).await;
    assert_eq!(resp.status(), 200);
    let s: StatusResponse = resp.json().await.expect("json");
    assert!(!s.at_risk);

    // C hears 15 of A's HELLOs, one a minute, at -50 dBm.
    let mut heard = Vec::new();
    for _ in 0..15 {
        let now = server.now();
        heard.push((a.hello(&server, now), now, Some(-50)));
        server.advance(60);
    }
    let _ = c; // C's own identity never appears in its declaration (§6.1)
    let token = server.token(Purpose::Declare);
    let resp = server.report(&token, &report_body(&heard)).await;
    assert_eq!(resp.status(), 202);
    let r: ReportResponse = resp.json().await.expect("json");
    assert_eq!(r.accepted, 15);
    assert_eq!(server.mix().await, 15);
    assert_eq!(server.service.metrics().counter("pairs_processed"), Some(15));
    assert_eq!(server.service.storage().stats().await.expect("stats").pool_depth, 0);

    // A is at risk once T has passed since her last ESR…
    server.advance(8 * 900);
    let s: StatusResponse = a.status(&server).await.json().await.expect("json");
    assert!(s.at_risk);
    // …and is told again, inside T, until she acknowledges (a lost reply must not lose the alert).
    // The retry is a new request (a second later): the same bytes again would be a replay
    // (tests/attacks.rs `replayed_authenticated_requests_are_rejected`).
    server.advance(1);
    let s: StatusResponse = a.status(&server).await.json().await.expect("json");
    assert!(s.at_risk);
    let resp = server.post("/api/v1/status/ack", &a.request(&server, RequestCode::StatusAck)).await;
    assert_eq!(resp.status(), 204);
    // After the acknowledgement, ESRs are rejected (§7 step 7)…
    assert_rejected(a.status(&server).await).await;
    // …until a health authority resets her status after a negative test.
    let reset = ResetRequestBody {
        request: a.request(&server, RequestCode::StatusReset),
        token: server.token(Purpose::Reset),
    };
    assert_eq!(server.post("/api/v1/status/reset", &reset).await.status(), 204);
    // The same reset token cannot be used twice.
    let again = ResetRequestBody {
        request: a.request(&server, RequestCode::StatusReset),
        token: reset.token.clone(),
    };
    assert_rejected(server.post("/api/v1/status/reset", &again).await).await;
    server.advance(8 * 900);
    let s: StatusResponse = a.status(&server).await.json().await.expect("json");
    assert!(!s.at_risk, "reset cleared UN_A and LEE_A");
    server.stop().await;
}

/// Every way an ESR can fail a check gets the same answer, and changes nothing.
#[tokio::test]
async fn status_rejections_are_uniform_and_store_nothing() {
    let server = TestServer::start(test_config()).await;
    let mut a = TestApp::register(&server).await;
    assert_eq!(a.status(&server).await.status(), 200);
    let stats_before = server.service.storage().stats().await.expect("stats");
    // Half of T later: had any rejected request below updated SRE_A, the ESR at T would fail.
    server.advance(4 * 900);

    let good = a.request(&server, RequestCode::StatusRequest);
    // Too early since the last ESR (T).
    assert_rejected(server.post("/api/v1/status", &good).await).await;
    // Bad MAC.
    let mut bad_mac = good.clone();
    bad_mac.mac = b64_encode(&[0u8; 32]);
    assert_rejected(server.post("/api/v1/status", &bad_mac).await).await;
    // A MAC made for another request code.
    let cross = a.request(&server, RequestCode::Unregister);
    assert_rejected(server.post("/api/v1/status", &cross).await).await;
    // Claimed epoch differs from the EBID's epoch (§7 step 4).
    let mut wrong_epoch = good.clone();
    wrong_epoch.epoch += 1;
    assert_rejected(server.post("/api/v1/status", &wrong_epoch).await).await;
    // Stale time (§7 step 2).
    let e = a.entry(server.epoch());
    let stale = AuthRequest::new(
        &a.auth,
        RequestCode::StatusRequest,
        e.ebid,
        e.epoch,
        server.now().checked_sub(3600).expect("positive"),
    );
    assert_rejected(server.post("/api/v1/status", &AuthRequestBody::from_request(&stale)).await).await;
    // Unknown ID: an EBID nobody was issued.
    let mut unknown = good.clone();
    unknown.ebid = b64_encode(&[0x5a; 8]);
    assert_rejected(server.post("/api/v1/status", &unknown).await).await;

    assert_eq!(server.service.storage().stats().await.expect("stats"), stats_before);
    server.advance(4 * 900);
    assert_eq!(a.status(&server).await.status(), 200, "no rejected request moved SRE_A");
    server.stop().await;
}

/// Malformed requests get a 400 problem document naming the field, never echoing a value.
#[tokio::test]
async fn malformed_requests_name_the_field() {
    let server = TestServer::start(test_config()).await;
    let a = TestApp::register(&server).await;
    let mut body = a.request(&server, RequestCode::StatusRequest);
    body.ebid = "not base64!".into();
    let resp = server.post("/api/v1/status", &body).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let p: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(p["field"], "ebid");
    assert!(!p.to_string().contains("not base64!"));

    let resp = server
        .post("/api/v1/status", &serde_json::json!({"ebid": "AAAAAAAAAAA=", "epoch": 1, "time": 1}))
        .await;
    assert_eq!(resp.status(), 400);
    let p: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(p["field"], "mac");

    let resp = server
        .post(
            "/api/v1/status",
            &serde_json::json!({"ebid": "secret-value", "epoch": "x", "time": 1, "mac": ""}),
        )
        .await;
    assert_eq!(resp.status(), 400);
    let text = resp.text().await.expect("text");
    assert!(!text.contains("secret-value") && !text.contains("\"x\""), "{text}");
    let p: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(p["field"], "epoch", "a value of the wrong type names its field");

    // Deeper: the path of the field, into an array.
    let token = server.token(Purpose::Declare);
    let resp = server
        .report(&token, &serde_json::json!({"contacts": [{"hello": "AA==", "time": 1}, {"time": 1}]}))
        .await;
    assert_eq!(resp.status(), 400);
    let p: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(p["field"], "contacts[1].hello");

    // Not JSON, JSON followed by more, and JSON under another media type.
    let url = format!("{}/api/v1/status", server.url);
    let raw = |body: &'static str, media: &'static str| {
        server.http.post(&url).header("content-type", media).body(body).send()
    };
    let resp = raw("{\"ebid\": ", "application/json").await.expect("send");
    assert_eq!(resp.status(), 400);
    let p: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(p["field"], serde_json::Value::Null);
    let resp = raw("{} {}", "application/json").await.expect("send");
    assert_eq!(resp.status(), 400);
    let resp = raw("{}", "text/plain").await.expect("send");
    assert_eq!(resp.status(), 415);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");

    let resp = server
        .post(
            "/api/v1/register",
            &RegisterRequest {
                challenge: "AA==".into(),
                solution: "AA==".into(),
                client_public_key: "AA==".into(),
            },
        )
        .await;
    assert_eq!(resp.status(), 400);
    server.stop().await;
}

/// Registration: the proof of work is checked, a challenge is accepted once, keys are validated.
#[tokio::test]
async fn registration_checks() {
    let mut config = test_config();
    config.registration.pow_difficulty = 12;
    let server = TestServer::start(config).await;
    let ch: ChallengeResponse =
        server.post("/api/v1/register/challenge", &()).await.json().await.expect("json");
    assert_eq!(ch.difficulty, 12);
    let challenge = b64_decode("challenge", &ch.challenge).expect("b64");
    assert!(challenge.len() <= 64);
    let eph = AppEphemeralKey::generate(&mut rand::rng());
    let pk = b64_encode(eph.public_key().as_bytes());
    // A wrong solution is rejected.
    let wrong = (0u64..).map(u64::to_be_bytes).find(|s| !pow::verify(&challenge, s, 12)).expect("exists");
    let req = RegisterRequest {
        challenge: ch.challenge.clone(),
        solution: b64_encode(&wrong),
        client_public_key: pk.clone(),
    };
    assert_rejected(server.post("/api/v1/register", &req).await).await;
    // A right one registers, once.
    let right = pow::solve(&challenge, 12, 0).expect("solvable");
    let req = RegisterRequest {
        challenge: ch.challenge.clone(),
        solution: b64_encode(&right),
        client_public_key: pk,
    };
    assert_eq!(server.post("/api/v1/register", &req).await.status(), 201);
    assert_rejected(server.post("/api/v1/register", &req).await).await;
    // A forged challenge (flipped MAC byte) is rejected.
    let mut forged = challenge.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let sol = pow::solve(&forged, 12, 0).expect("solvable");
    let req = RegisterRequest {
        challenge: b64_encode(&forged),
        solution: b64_encode(&sol),
        client_public_key: b64_encode(eph.public_key().as_bytes()),
    };
    assert_rejected(server.post("/api/v1/register", &req).await).await;
    // An expired challenge is rejected.
    let ch: ChallengeResponse =
        server.post("/api/v1/register/challenge", &()).await.json().await.expect("json");
    let c = b64_decode("challenge", &ch.challenge).expect("b64");
    server.advance(301);
    let req = RegisterRequest {
        challenge: ch.challenge,
        solution: b64_encode(&pow::solve(&c, 12, 0).expect("solvable")),
        client_public_key: b64_encode(eph.public_key().as_bytes()),
    };
    assert_rejected(server.post("/api/v1/register", &req).await).await;
    // An invalid point is a 400 naming the field.
    let ch: ChallengeResponse =
        server.post("/api/v1/register/challenge", &()).await.json().await.expect("json");
    let c = b64_decode("challenge", &ch.challenge).expect("b64");
    let mut bad_point = *eph.public_key().as_bytes();
    bad_point[64] ^= 1;
    let req = RegisterRequest {
        challenge: ch.challenge,
        solution: b64_encode(&pow::solve(&c, 12, 0).expect("solvable")),
        client_public_key: b64_encode(&bad_point),
    };
    let resp = server.post("/api/v1/register", &req).await;
    assert_eq!(resp.status(), 400);
    let p: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(p["field"], "clientPublicKey");
    assert_eq!(server.service.storage().stats().await.expect("stats").users, 1);
    server.stop().await;
}

/// A challenge is accepted once across a restart too: the process's replay cache is gone, and
/// the spend stored with the registration (one storage call) refuses it; nothing is stored.
#[tokio::test]
async fn registration_challenge_is_spent_durably() {
    let server = TestServer::start(test_config()).await;
    let ch: ChallengeResponse =
        server.post("/api/v1/register/challenge", &()).await.json().await.expect("json");
    let challenge = b64_decode("challenge", &ch.challenge).expect("b64");
    let solution = pow::solve(&challenge, ch.difficulty, 0).expect("solvable");
    let register = |key: &AppEphemeralKey| RegisterRequest {
        challenge: ch.challenge.clone(),
        solution: b64_encode(&solution),
        client_public_key: b64_encode(key.public_key().as_bytes()),
    };
    let first = AppEphemeralKey::generate(&mut rand::rng());
    assert_eq!(server.post("/api/v1/register", &register(&first)).await.status(), 201);
    // Replayed in the same process (with another key): refused before any storage write.
    let second = AppEphemeralKey::generate(&mut rand::rng());
    assert_rejected(server.post("/api/v1/register", &register(&second)).await).await;

    let now = server.now();
    let dir = server.stop_keeping_data().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let server = TestServer::start_on_at(test_config(), dir, listener, now).await;
    assert_rejected(server.post("/api/v1/register", &register(&second)).await).await;
    assert_eq!(server.service.storage().stats().await.expect("stats").users, 1, "the replay stored nothing");
    assert_eq!(server.service.metrics().replays_refused(Replay::Challenge), 1);
    server.stop().await;
}

/// A challenge's nonce starts with its issue time in microseconds, so that spent challenges are
/// remembered in issue order (an insert at the end of the index, not on a random page); the rest
/// of the nonce is random, so two challenges never share one.
#[tokio::test]
async fn challenge_nonces_are_in_issue_order_and_distinct() {
    let server = TestServer::start(test_config()).await;
    let mut nonces = Vec::new();
    for _ in 0..20 {
        let ch: ChallengeResponse =
            server.post("/api/v1/register/challenge", &()).await.json().await.expect("json");
        let c = b64_decode("challenge", &ch.challenge).expect("b64");
        nonces.push(<[u8; 16]>::try_from(&c[..16]).expect("16 bytes"));
    }
    let micros = |n: &[u8; 16]| u64::from_be_bytes(n[..8].try_into().expect("8 bytes"));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_micros();
    assert!(nonces.windows(2).all(|w| micros(&w[0]) <= micros(&w[1])), "issue order");
    assert!(u128::from(micros(&nonces[19])) <= now && now - u128::from(micros(&nonces[0])) < 60_000_000);
    let distinct: std::collections::HashSet<_> = nonces.iter().map(|n| n[8..].to_vec()).collect();
    assert_eq!(distinct.len(), nonces.len(), "random tails");
    server.stop().await;
}

/// Declarations need a valid, unused `declare` token; a refused one stores nothing.
#[tokio::test]
async fn report_token_checks_store_nothing() {
    let server = TestServer::start(test_config()).await;
    let a = TestApp::register(&server).await;
    let now = server.now();
    let body = report_body(&[(a.hello(&server, now), now, None)]);
    let url = format!("{}/api/v1/report", server.url);
    let pool = || async { server.service.storage().stats().await.expect("stats").pool_depth };
    // No token, garbage, a reset token, an expired token.
    assert_rejected(server.http.post(&url).json(&body).send().await.expect("send")).await;
    assert_rejected(server.http.post(&url).bearer_auth("x.y.z").json(&body).send().await.expect("send"))
        .await;
    let reset = server.token(Purpose::Reset);
    assert_rejected(server.http.post(&url).bearer_auth(&reset).json(&body).send().await.expect("send")).await;
    let old = server
        .authority
        .issue(Purpose::Declare, now.to_unix() - 7200, 3600, &mut rand::rng())
        .expect("token");
    assert_rejected(server.http.post(&url).bearer_auth(&old).json(&body).send().await.expect("send")).await;
    assert_eq!(pool().await, 0);
    // A good token works once.
    let token = server.token(Purpose::Declare);
    assert_eq!(
        server.http.post(&url).bearer_auth(&token).json(&body).send().await.expect("send").status(),
        202
    );
    assert_eq!(pool().await, 1);
    assert_rejected(server.http.post(&url).bearer_auth(&token).json(&body).send().await.expect("send")).await;
    assert_eq!(pool().await, 1);
    server.stop().await;
}

/// §6.2 checks in the mixer: δ, replay 2^16 s later, forged MAC, unknown EBID — none adds an
/// exposure; every pair is erased.
#[tokio::test]
async fn mixer_rejects_bad_pairs_and_erases_all() {
    let server = TestServer::start(test_config()).await;
    let a = TestApp::register(&server).await;
    let now = server.now();
    let h = a.hello(&server, now);
    let mut forged = h.to_bytes();
    forged[15] ^= 1;
    let pairs = [
        // received 2 minutes after it was sent: outside δ = 60 s
        (h, now.checked_add(120).expect("time"), None),
        // replayed 2^16 s later: passes δ, fails the epoch check
        (h, now.checked_add(65_536).expect("time"), None),
        (Hello::from_bytes(forged), now, None),
        (Hello::from_bytes([7; 16]), now, None),
    ];
    let token = server.token(Purpose::Declare);
    let resp = server.report(&token, &report_body(&pairs)).await;
    assert_eq!(resp.status(), 202);
    assert_eq!(server.mix().await, 4);
    assert_eq!(server.service.metrics().counter("pairs_processed"), Some(0));
    assert_eq!(server.service.metrics().counter("pairs_rejected"), Some(4));
    server.stop().await;
}

/// A HELLO sent just before a UTC day boundary and received just after: the pair's time selects
/// the next day's K_S, which fails; the adjacent day's key is tried (footnotes 13–16).
#[tokio::test]
async fn day_boundary_key_retry() {
    let server = TestServer::start(test_config()).await;
    let day_end = (server.now().to_unix() / 86_400 + 1) * 86_400;
    server.set_now(NtpTime::from_unix(day_end - 30).expect("era 0"));
    let mut a = TestApp::register(&server).await;
    let sent = server.now();
    let hellos: Vec<_> = (0..15)
        .map(|_| (a.hello(&server, sent), NtpTime::from_unix(day_end + 20).expect("era 0"), Some(-40)))
        .collect();
    server.set_now(NtpTime::from_unix(day_end + 60).expect("era 0"));
    let token = server.token(Purpose::Declare);
    let resp = server.report(&token, &report_body(&hellos)).await;
    assert_eq!(resp.status(), 202);
    assert_eq!(server.mix().await, 15);
    assert_eq!(server.service.metrics().counter("pairs_processed"), Some(15));
    let s: StatusResponse = a.status(&server).await.json().await.expect("json");
    assert!(s.at_risk);
    server.stop().await;
}

/// Exposures older than CT days are purged and no longer count (footnote 17).
#[tokio::test]
async fn expiry_after_ct_days() {
    let server = TestServer::start(test_config()).await;
    let mut a = TestApp::register(&server).await;
    let pairs: Vec<_> = (0..15)
        .map(|i| {
            let t = server.now().checked_add(i * 60).expect("time");
            (a.hello(&server, t), t, Some(-45))
        })
        .collect();
    let token = server.token(Purpose::Declare);
    server.report(&token, &report_body(&pairs)).await;
    server.advance(15 * 60);
    assert_eq!(server.mix().await, 15);
    // CT = 14 days later and one epoch more, the exposure has expired.
    server.advance(14 * 86_400 + 900);
    let stats = server.service.expire().await.expect("expire");
    assert!(stats.exposures >= 1, "the exposure row was deleted");
    // Day keys older than CT days are destroyed (footnote 5).
    let today = (server.now().to_unix() / 86_400) as u32;
    let days: Vec<u32> =
        server.service.storage().server_keys().await.expect("keys").iter().map(|(d, _)| *d).collect();
    assert!(days.iter().all(|d| *d >= today - 14), "{days:?}");
    // A's list runs short: she uses her last EBID; the answer is "not at risk" (the exposure
    // expired) and carries a fresh list starting now.
    let last = *a.list.last().expect("non-empty");
    let req = AuthRequest::new(&a.auth, RequestCode::StatusRequest, last.ebid, last.epoch, server.now());
    let resp = server.post("/api/v1/status", &AuthRequestBody::from_request(&req)).await;
    assert_eq!(resp.status(), 200);
    let s: StatusResponse = resp.json().await.expect("json");
    assert!(!s.at_risk, "an exposure older than CT days no longer counts");
    a.merge(&s.ebids.expect("a refresh for an App that ran out"));
    assert!(a.list.iter().any(|e| e.epoch == server.epoch()));
    server.stop().await;
}

/// ESRs in the second half of a block of M epochs carry the next block's EBIDs (§4).
#[tokio::test]
async fn ebid_refresh_in_status_reply() {
    let server = TestServer::start(test_config()).await;
    // Start of a block: epoch 960 = 10 days × 96.
    let mut a = TestApp::register(&server).await;
    let s: StatusResponse = a.status(&server).await.json().await.expect("json");
    assert!(s.ebids.is_none(), "first half of the block: no refresh");
    let last_before = a.list.last().expect("non-empty").epoch;
    // Registration gave this block and the next; the second half of the next block brings a third.
    server.advance((96 + 60) * 900);
    let s: StatusResponse = a.status(&server).await.json().await.expect("json");
    let fresh = s.ebids.expect("second half: refresh");
    a.merge(&fresh);
    assert!(a.list.last().expect("non-empty").epoch > last_before);
    server.stop().await;
}

/// Unregister and delete history (Annex C).
#[tokio::test]
async fn unregister_and_delete_history() {
    let server = TestServer::start(test_config()).await;
    let mut a = TestApp::register(&server).await;
    assert_eq!(
        server.post("/api/v1/delete-history", &a.request(&server, RequestCode::DeleteHistory)).await.status(),
        204
    );
    assert_eq!(
        server.post("/api/v1/unregister", &a.request(&server, RequestCode::Unregister)).await.status(),
        204
    );
    assert_rejected(a.status(&server).await).await;
    assert_rejected(server.post("/api/v1/unregister", &a.request(&server, RequestCode::Unregister)).await)
        .await;
    assert_eq!(server.service.storage().stats().await.expect("stats").users, 0);
    server.stop().await;
}

/// The operational endpoints.
#[tokio::test]
async fn clock_key_metrics_health_openapi() {
    let server = TestServer::start(test_config()).await;
    let c: ClockResponse = server.get("/api/v1/clock").await.json().await.expect("json");
    assert_eq!(c.service_start_ntp, service_start().seconds());
    assert_eq!(c.epoch_duration_sec, 900);
    assert_eq!(c.current_epoch, 960);
    assert_eq!(c.ntp_time, server.now().seconds());
    let k: ServerKeyResponse = server.get("/api/v1/server-key").await.json().await.expect("json");
    assert_eq!(b64_decode("k", &k.public_key).expect("b64").len(), 65);
    assert_eq!(server.get("/healthz").await.text().await.expect("text"), "ok\n");
    let doc: serde_json::Value = server.get("/openapi.json").await.json().await.expect("json");
    for path in [
        "/api/v1/clock",
        "/api/v1/server-key",
        "/api/v1/register/challenge",
        "/api/v1/register",
        "/api/v1/status",
        "/api/v1/status/ack",
        "/api/v1/status/reset",
        "/api/v1/report",
        "/api/v1/unregister",
        "/api/v1/delete-history",
        "/metrics",
        "/healthz",
        "/openapi.json",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is documented");
    }
    let _ = TestApp::register(&server).await;
    let text = server.get("/metrics").await.text().await.expect("text");
    assert!(text.contains("robert_registered_ids 1"));
    assert!(text.contains("robert_http_requests_total{endpoint=\"register\",status=\"201\"} 1"));
    server.stop().await;
}

/// After a declaration is processed, the database holds no uploaded HELLO and no token.
#[tokio::test]
async fn database_holds_no_hello_and_no_token() {
    let server = TestServer::start(test_config()).await;
    let a = TestApp::register(&server).await;
    let pairs: Vec<_> = (0..5)
        .map(|i| {
            let t = server.now().checked_add(i * 60).expect("time");
            (a.hello(&server, t), t, Some(-50))
        })
        .collect();
    let token = server.token(Purpose::Declare);
    server.report(&token, &report_body(&pairs)).await;
    server.advance(5 * 60);
    assert_eq!(server.mix().await, 5);
    // The WAL is emptied right after a group that erased pool entries (retried while a reader
    // holds an old snapshot): poll, with a generous deadline, until the bytes are gone.
    let read_all = || {
        let mut raw = Vec::new();
        for entry in std::fs::read_dir(server.dir.path()).expect("dir") {
            let p = entry.expect("entry").path();
            if p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("robert.db")) {
                raw.extend(std::fs::read(&p).expect("read"));
            }
        }
        raw
    };
    let has_hello = |raw: &[u8]| pairs.iter().any(|(h, _, _)| raw.windows(16).any(|w| w == h.to_bytes()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut raw = read_all();
    while has_hello(&raw) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        raw = read_all();
    }
    assert!(!raw.is_empty());
    for (h, _, _) in &pairs {
        let bytes = h.to_bytes();
        assert!(!raw.windows(16).any(|w| w == bytes), "an uploaded HELLO is in the database");
        assert!(!raw.windows(8).any(|w| w == h.ebid().as_bytes()), "an uploaded EBID is in the database");
    }
    assert!(!raw.windows(token.len()).any(|w| w == token.as_bytes()), "the token is in the database");
    server.stop().await;
}

/// Annex A: with p = 1 every ESR not at risk is answered "at risk" anyway.
#[tokio::test]
async fn probabilistic_notification() {
    let mut config = test_config();
    config.risk.notification_probability = 1.0;
    let server = TestServer::start(config).await;
    let mut a = TestApp::register(&server).await;
    let s: StatusResponse = a.status(&server).await.json().await.expect("json");
    assert!(s.at_risk, "selected at random with p = 1");
    assert_eq!(server.service.metrics().counter("notifications"), Some(1));
    server.stop().await;

    let server = TestServer::start(test_config()).await; // p = 0 (default)
    let mut b = TestApp::register(&server).await;
    let s: StatusResponse = b.status(&server).await.json().await.expect("json");
    assert!(!s.at_risk);
    server.stop().await;
}

/// The acknowledgement and the reset are refused when they make no sense.
#[tokio::test]
async fn ack_and_reset_rejections() {
    let server = TestServer::start(test_config()).await;
    let a = TestApp::register(&server).await;
    // Nothing to acknowledge.
    assert_rejected(server.post("/api/v1/status/ack", &a.request(&server, RequestCode::StatusAck)).await)
        .await;
    // A reset needs a `reset` token: a `declare` one, garbage, or a MAC for another code are refused.
    let with = |token: String, code| ResetRequestBody { request: a.request(&server, code), token };
    let declare = server.token(Purpose::Declare);
    assert_rejected(server.post("/api/v1/status/reset", &with(declare, RequestCode::StatusReset)).await)
        .await;
    assert_rejected(
        server.post("/api/v1/status/reset", &with("a.b.c".into(), RequestCode::StatusReset)).await,
    )
    .await;
    let reset = server.token(Purpose::Reset);
    assert_rejected(
        server.post("/api/v1/status/reset", &with(reset.clone(), RequestCode::StatusRequest)).await,
    )
    .await;
    // The refused attempt did not spend the token.
    assert_eq!(
        server.post("/api/v1/status/reset", &with(reset, RequestCode::StatusReset)).await.status(),
        204
    );
    server.stop().await;
}

/// §6.2 step 3 and §8: a pair whose ECC names a peer country goes to the federation outbox; one
/// naming a country that is not a peer is dropped and counted.
#[tokio::test]
async fn foreign_pairs_are_routed_or_dropped() {
    let mut config = test_config();
    config.protocol.peer_countries = vec![49];
    let server = TestServer::start(config).await;
    let secrets =
        robert_server::keystore::ServerSecrets::load(&server.dir.path().join("keys")).expect("keys");
    let now = server.now();
    let foreign = |cc: u8, seed: u8| {
        let ebid = Ebid::new([seed; 8]);
        let ecc = secrets.federation.encrypt_country(&ebid, CountryCode::new(cc));
        Hello::build(&AuthKey::new(&KAuth::new([seed; 32])), ecc, ebid, now)
    };
    let pairs = [(foreign(49, 1), now, None), (foreign(49, 2), now, Some(-60)), (foreign(44, 3), now, None)];
    let token = server.token(Purpose::Declare);
    let resp = server.report(&token, &report_body(&pairs)).await;
    assert_eq!(resp.status(), 202);
    assert_eq!(server.mix().await, 3);
    assert_eq!(server.service.storage().stats().await.expect("stats").outbox_depth, 2);
    assert_eq!(server.service.metrics().counter("pairs_forwarded"), Some(2));
    assert_eq!(server.service.metrics().counter("pairs_dropped_foreign"), Some(1));
    server.stop().await;
}

/// Oversized bodies are refused before they are read, with a problem document.
#[tokio::test]
async fn body_size_limit() {
    let mut config = test_config();
    config.server.max_body_bytes = 1024;
    let server = TestServer::start(config).await;
    let big =
        serde_json::json!({ "contacts": vec![serde_json::json!({"hello": "A".repeat(24), "time": 1}); 100] });
    let token = server.token(Purpose::Declare);
    let resp = server.report(&token, &big).await;
    assert_eq!(resp.status(), 413);
    assert_eq!(server.service.storage().stats().await.expect("stats").pool_depth, 0);
    server.stop().await;
}
