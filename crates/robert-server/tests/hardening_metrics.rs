//! Hardening metrics over the real wire (issue 8 item 3): after a replay or a flood, `GET /metrics`
//! shows it — `robert_replays_refused_total{kind}` and `robert_rate_limited_total{endpoint}` —
//! and the mixer's pair counters count each pair once, after its commit.

mod common;

use common::*;
use robert_proto::RequestCode;
use robert_server::token::Purpose;

async fn metrics(server: &TestServer) -> String {
    let r = server.get("/metrics").await;
    assert_eq!(r.status(), 200);
    r.text().await.expect("text")
}

fn has(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

/// The same ESR twice inside the time window: the second is a replay (403), and the counter of
/// refused request replays reads 1; the first, served, counted nothing.
#[tokio::test]
async fn replayed_request_is_counted_in_metrics() {
    let server = TestServer::start(test_config()).await;
    let a = TestApp::register(&server).await;
    let before = metrics(&server).await;
    assert!(has(&before, r#"robert_replays_refused_total{kind="request"} 0"#), "{before}");
    let esr = a.request(&server, RequestCode::StatusRequest);
    assert_eq!(server.post("/api/v1/status", &esr).await.status(), 200);
    assert!(has(&metrics(&server).await, r#"robert_replays_refused_total{kind="request"} 0"#));
    assert_rejected(server.post("/api/v1/status", &esr).await).await;
    let after = metrics(&server).await;
    assert!(has(&after, r#"robert_replays_refused_total{kind="request"} 1"#), "{after}");
    assert!(has(&after, r#"robert_replays_refused_total{kind="token"} 0"#), "{after}");
    server.stop().await;
}

/// A declaration token used twice: the second upload is refused and counted as a token replay.
#[tokio::test]
async fn reused_token_is_counted_in_metrics() {
    let server = TestServer::start(test_config()).await;
    let a = TestApp::register(&server).await;
    let now = server.now();
    let body = report_body(&[(a.hello(&server, now), now, None)]);
    let url = format!("{}/api/v1/report", server.url);
    let token = server.token(Purpose::Declare);
    let send = || server.http.post(&url).bearer_auth(&token).json(&body).send();
    assert_eq!(send().await.expect("send").status(), 202);
    assert_rejected(send().await.expect("send")).await;
    let text = metrics(&server).await;
    assert!(has(&text, r#"robert_replays_refused_total{kind="token"} 1"#), "{text}");
    assert!(has(&text, r#"robert_replays_refused_total{kind="request"} 0"#), "{text}");
    server.stop().await;
}

/// The challenge endpoint's token bucket (burst 2, on the frozen test clock): the third request
/// is a 429, counted under its endpoint, and the registration endpoint's count stays 0.
#[tokio::test]
async fn rate_limited_requests_are_counted_by_endpoint() {
    let mut config = test_config();
    config.limits.challenge_per_sec = 1;
    config.limits.challenge_burst = 2;
    let server = TestServer::start(config).await;
    for _ in 0..2 {
        assert_eq!(server.post("/api/v1/register/challenge", &()).await.status(), 200);
    }
    assert_eq!(server.post("/api/v1/register/challenge", &()).await.status(), 429);
    let text = metrics(&server).await;
    assert!(has(&text, r#"robert_rate_limited_total{endpoint="challenge"} 1"#), "{text}");
    assert!(has(&text, r#"robert_rate_limited_total{endpoint="register"} 0"#), "{text}");
    assert!(has(&text, r#"robert_http_requests_total{endpoint="challenge",status="429"} 1"#), "{text}");
    server.stop().await;
}

/// The mixer counts a batch's pairs once its commit is durable: after one pass over three pairs
/// (one matching a registered App, one with a forged MAC, one outside δ) the counters read
/// exactly 1 processed and 2 rejected, and a second pass over the now empty pool adds nothing.
#[tokio::test]
async fn mixer_counts_each_pair_once_after_commit() {
    let server = TestServer::start(test_config()).await;
    let a = TestApp::register(&server).await;
    let now = server.now();
    let good = a.hello(&server, now);
    let mut forged = good.to_bytes();
    forged[15] ^= 1;
    let forged = robert_proto::Hello::from_bytes(forged);
    let late = robert_proto::NtpTime::new(now.seconds() + 3600);
    let body = report_body(&[(good, now, None), (forged, now, None), (good, late, None)]);
    let url = format!("{}/api/v1/report", server.url);
    let token = server.token(Purpose::Declare);
    let r = server.http.post(&url).bearer_auth(&token).json(&body).send().await.expect("send");
    assert_eq!(r.status(), 202);
    assert_eq!(server.mix().await, 3);
    assert_eq!(server.mix().await, 0);
    let m = server.service.metrics();
    assert_eq!((m.counter("pairs_processed"), m.counter("pairs_rejected")), (Some(1), Some(2)));
    let text = metrics(&server).await;
    assert!(has(&text, "robert_pairs_processed_total 1"), "{text}");
    server.stop().await;
}
