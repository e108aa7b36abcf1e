//! The App against a real server: the spec's Figure 2, HELLO freshness, several days of
//! broadcasting, unregister and delete history — over real HTTP, and the same over the in-process
//! transport.

mod common;

use common::*;
use robert_app::{AppError, ExposureStatus, ReceiveError, Transport, TransportError};
use robert_proto::{NtpTime, RequestCode};

/// What Figure 2 produced, to compare the two transports.
#[derive(Debug, PartialEq, Eq)]
struct Figure2 {
    after_c: [ExposureStatus; 3],
    a_after_ack: ExposureStatus,
    b_after_a: ExposureStatus,
    d_end: ExposureStatus,
    pairs: [u64; 3],
}

/// Figure 2: C is diagnosed and uploads; A is notified, acknowledges, is tested positive and
/// uploads; B is notified; D, who met only B after B stopped, is not.
async fn figure2(server: &TestServer, t: &impl Transport) -> Figure2 {
    let h = 3600;
    let mut a = registered(server, t, 1).await;
    let mut b = registered(server, t, 2).await;
    let mut c = registered(server, t, 3).await;
    let mut d = registered(server, t, 4).await;
    let t0 = server.now();
    let day_before = NtpTime::new(t0.seconds() - 86_400);

    // A meets C for 20 minutes, close.
    meet(&mut a, &mut c, server.advance(h), 20, -50);
    // C is diagnosed and uploads.
    server.advance(h);
    let c_pairs = declare(server, t, &mut c, day_before, server.now()).await;
    let after_c = [
        a.check_status(t, server.now()).await.expect("A's ESR"),
        b.check_status(t, server.now()).await.expect("B's ESR"),
        d.check_status(t, server.now()).await.expect("D's ESR"),
    ];
    // A is notified and acknowledges; then no more ESRs, but HELLOs continue.
    a.acknowledge(t, server.now()).await.expect("ack");
    let a_after_ack = a.check_status(t, server.advance(8 * 900)).await.expect("local answer");
    let raw = a.request(RequestCode::StatusRequest, server.now()).expect("request");
    assert_eq!(t.status(&raw).await, Err(TransportError::Rejected), "ESRs after the ack are rejected");
    // A meets B, then is tested positive and uploads.
    meet(&mut a, &mut b, server.advance(600), 20, -55);
    server.advance(h);
    let a_pairs = declare(server, t, &mut a, day_before, server.now()).await;
    let b_after_a = b.check_status(t, server.now()).await.expect("B's ESR");
    // B stops (confined) now; later B meets D anyway, then is tested positive and declares the
    // contagious period up to when it stopped: D's HELLOs are not in it.
    let b_stopped = server.now();
    meet(&mut b, &mut d, server.advance(h), 20, -50);
    server.advance(h);
    let b_pairs = declare(server, t, &mut b, day_before, b_stopped).await;
    assert_eq!(b_pairs, 20, "only A's HELLOs: ContStart < Time < ContEnd");
    server.advance(8 * 900);
    let d_end = d.check_status(t, server.now()).await.expect("D's ESR");
    Figure2 { after_c, a_after_ack, b_after_a, d_end, pairs: [c_pairs, a_pairs, b_pairs] }
}

fn expected_figure2() -> Figure2 {
    use ExposureStatus::*;
    Figure2 {
        after_c: [AtRisk, NotAtRisk, NotAtRisk],
        a_after_ack: AtRisk,
        b_after_a: AtRisk,
        d_end: NotAtRisk,
        pairs: [20, 40, 20],
    }
}

#[tokio::test]
async fn figure2_over_http() {
    let server = TestServer::start(test_config()).await;
    let outcome = figure2(&server, &server.http()).await;
    assert_eq!(outcome, expected_figure2());
    server.stop().await;
}

#[tokio::test]
async fn figure2_in_process_gives_the_same_outcome() {
    let server = TestServer::start(test_config()).await;
    let http = figure2(&server, &server.http()).await;
    let other = TestServer::start(test_config()).await;
    let in_process = figure2(&other, &other.in_process()).await;
    assert_eq!(http, in_process);
    assert_eq!(in_process, expected_figure2());
    server.stop().await;
    other.stop().await;
}

#[tokio::test]
async fn stale_or_replayed_hellos_are_refused_by_the_app_or_the_server() {
    let server = TestServer::start(epochs_rule(1)).await;
    let t = server.http();
    let mut a = registered(&server, &t, 1).await;
    let mut f = registered(&server, &t, 2).await;
    let mut b = registered(&server, &t, 3).await;
    let mut d = registered(&server, &t, 4).await;
    let now = server.advance(600);
    let hello = a.hello_at(now).expect("hello");

    // After δ (60 s): refused by the App; just within: stored. 16-bit wrap-around is handled.
    assert_eq!(
        b.on_hello_received(&hello, NtpTime::new(now.seconds() + 60), None),
        Err(ReceiveError::OutsideDelta)
    );
    assert_eq!(
        b.on_hello_received(&hello, NtpTime::new(now.seconds() - 60), None),
        Err(ReceiveError::OutsideDelta)
    );
    b.on_hello_received(&hello, NtpTime::new(now.seconds() + 59), Some(-50)).expect("within δ");
    let wrap = NtpTime::new((now.seconds() | 0xFFFF) - 5); // t16 = 0xFFFA
    let h_wrap = a.hello_at(wrap).expect("hello");
    b.on_hello_received(&h_wrap, NtpTime::new(wrap.seconds() + 20), None).expect("wraps past 0xFFFF");
    assert_eq!(
        b.on_hello_received(&[0; 15], now, None),
        Err(ReceiveError::Malformed(robert_proto::DecodeError::Length {
            what: "hello",
            expected: 16,
            got: 15
        }))
    );

    // Replayed 2^16 s later: the δ check passes (footnote 9). B, who heard it, refuses the repeat.
    let replay_at = NtpTime::new(now.seconds() + 65_536);
    assert_eq!(b.on_hello_received(&hello, replay_at, None), Err(ReceiveError::Duplicate));
    // D never heard it and stores it; D also meets F for real. D uploads both: the server's epoch
    // check (§6.2 step 6) drops the replay, so A is not exposed; F is.
    d.on_hello_received(&hello, replay_at, Some(-50)).expect("δ passes after 2^16 s");
    server.set_now(replay_at);
    let fh = f.hello_at(replay_at).expect("f's hello (list still covers this epoch)");
    d.on_hello_received(&fh, replay_at, Some(-50)).expect("fresh");
    let pairs = declare(
        &server,
        &t,
        &mut d,
        NtpTime::new(now.seconds() - 10),
        NtpTime::new(replay_at.seconds() + 10),
    )
    .await;
    assert_eq!(pairs, 2, "both pairs stored, then checked by the mixer");
    assert_eq!(f.check_status(&t, server.now()).await.expect("F"), ExposureStatus::AtRisk);
    assert_eq!(a.check_status(&t, server.now()).await.expect("A"), ExposureStatus::NotAtRisk);
    server.stop().await;
}

/// A phone crossing several days keeps broadcasting valid HELLOs: its ESRs every T epochs refresh
/// the EBID list, and the server's day keys (K_S) rotate at midnight UTC. Every HELLO broadcast
/// (one per hour for 4 days, so in 96 distinct epochs) produces an exposure once uploaded: with
/// the rule "at least 96 exposed epochs", the sender is at risk only if all of them were accepted.
#[tokio::test]
async fn several_days_of_valid_hellos() {
    let hours = 96;
    let server = TestServer::start(epochs_rule(hours)).await;
    let t = server.http();
    let mut s = registered(&server, &t, 1).await;
    let mut r = registered(&server, &t, 2).await;
    let first_list_end = s.ebids_until().expect("list");
    let start = server.now();
    for hour in 0..hours {
        let now = server.set_now_get(start.seconds() + 3600 * hour + 300);
        if s.status_due(now) {
            assert_eq!(s.check_status(&t, now).await.expect("ESR"), ExposureStatus::NotAtRisk);
        }
        let hello = s.hello_at(now).unwrap_or_else(|e| panic!("hour {hour}: {e}"));
        r.on_hello_received(&hello, NtpTime::new(now.seconds() + 2), Some(-50)).expect("stored");
    }
    assert!(s.ebids_until().expect("list") > first_list_end, "the list was refreshed");
    assert!(server.now().seconds() - start.seconds() > 3 * 86_400, "several UTC days crossed");
    let pairs = declare(&server, &t, &mut r, start, server.advance(60)).await;
    assert_eq!(pairs, u64::from(hours));
    server.advance(8 * 900);
    assert_eq!(s.check_status(&t, server.now()).await.expect("ESR"), ExposureStatus::AtRisk);
    server.stop().await;
}

#[tokio::test]
async fn unregister_then_esr_is_rejected() {
    let server = TestServer::start(test_config()).await;
    let t = server.http();
    let mut a = registered(&server, &t, 1).await;
    let now = server.advance(60);
    let esr = a.request(RequestCode::StatusRequest, now).expect("request");
    a.unregister(&t, now).await.expect("unregisters");
    assert!(!a.is_registered());
    assert!(matches!(a.check_status(&t, now).await, Err(AppError::NotRegistered)));
    assert_eq!(t.status(&esr).await, Err(TransportError::Rejected), "the server forgot the ID");
    server.stop().await;
}

#[tokio::test]
async fn delete_history_then_not_at_risk() {
    let server = TestServer::start(test_config()).await;
    let t = server.in_process();
    let mut a = registered(&server, &t, 1).await;
    let mut c = registered(&server, &t, 2).await;
    meet(&mut a, &mut c, server.advance(600), 20, -50);
    let before = NtpTime::new(server.now().seconds() - 3600);
    declare(&server, &t, &mut c, before, server.advance(1200)).await;
    a.delete_history(&t, server.now()).await.expect("deletes");
    assert!(a.contacts().is_empty(), "the local list is erased too");
    assert_eq!(a.check_status(&t, server.now()).await.expect("ESR"), ExposureStatus::NotAtRisk);
    server.stop().await;
}

#[tokio::test]
async fn status_reset_resumes_esrs() {
    let server = TestServer::start(test_config()).await;
    let t = server.http();
    let mut a = registered(&server, &t, 1).await;
    let mut c = registered(&server, &t, 2).await;
    meet(&mut a, &mut c, server.advance(600), 20, -50);
    let before = NtpTime::new(server.now().seconds() - 3600);
    declare(&server, &t, &mut c, before, server.advance(1200)).await;
    assert_eq!(a.check_status(&t, server.now()).await.expect("ESR"), ExposureStatus::AtRisk);
    a.acknowledge(&t, server.now()).await.expect("ack");
    assert!(a.is_acknowledged());
    let reset = server.token(robert_server::token::Purpose::Reset);
    a.reset_status(&t, &reset, server.advance(60)).await.expect("reset");
    assert!(!a.is_notified());
    let next = server.advance(8 * 900);
    assert!(a.status_due(next));
    a.check_status(&t, next).await.expect("ESRs resume");
    server.stop().await;
}

#[tokio::test]
async fn esr_at_most_every_t_epochs() {
    let server = TestServer::start(test_config()).await;
    let t = server.http();
    let mut a = registered(&server, &t, 1).await;
    let first = a.epoch_at(server.now()).expect("epoch");
    assert_eq!(a.check_status(&t, server.now()).await.expect("first"), ExposureStatus::NotAtRisk);
    let next_epoch = first.checked_add(8).expect("epoch");
    assert_eq!(
        a.check_status(&t, server.advance(7 * 900)).await.expect("local"),
        ExposureStatus::TooEarly { next_epoch }
    );
    assert_eq!(a.check_status(&t, server.advance(900)).await.expect("due"), ExposureStatus::NotAtRisk);
    server.stop().await;
}
