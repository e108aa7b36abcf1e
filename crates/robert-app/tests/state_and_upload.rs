//! Persistence (encrypted, atomic) and declaration chunks, tokens and safe retries.

mod common;

use common::*;
use robert_app::*;
use robert_proto::NtpTime;
use robert_proto::api::*;
use std::sync::atomic::{AtomicUsize, Ordering};

fn no_checkpoint() -> impl FnMut(&App) -> Result<(), std::convert::Infallible> + Send {
    |_| Ok(())
}

#[tokio::test]
async fn truncated_state_write_loads_the_previous_state() {
    let server = TestServer::start(test_config()).await;
    let t = server.in_process();
    let mut a = registered(&server, &t, 1).await;
    let mut b = registered(&server, &t, 2).await;
    meet(&mut a, &mut b, server.advance(60), 3, -50);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = StateFile::new(dir.path().join("phone.state"), StateKey::new([7; 32]));
    file.save(&a, &mut rng(5)).expect("saves");
    assert!(!file.temp_path().exists(), "the temp file was renamed");
    let raw = std::fs::read(file.path()).expect("read");
    assert!(!raw.windows(6).any(|w| w == b"kAuth\"" || w == b"contac"), "encrypted at rest");

    // A later save crashes mid-write: the temp file holds a truncated (or garbage) state.
    meet(&mut a, &mut b, server.advance(600), 2, -50);
    std::fs::write(file.temp_path(), &raw[..raw.len() / 2]).expect("truncated temp");
    let loaded = file.load(app_config()).expect("previous state");
    assert_eq!(loaded.contacts().len(), 3);
    assert!(!file.temp_path().exists(), "leftover removed");
    std::fs::write(file.temp_path(), b"garbage").expect("garbage temp");
    let mut loaded = file.load(app_config()).expect("previous state");
    assert_eq!(loaded.contacts(), &a.contacts()[..3]);
    // The loaded App is the same App: same keys and EBIDs, so the same HELLO at the same time.
    let now = server.now();
    assert_eq!(loaded.hello_at(now).expect("hello"), a.hello_at(now).expect("hello"));
    let debug = format!("{loaded:?}");
    assert!(debug.contains("registered: true") && !debug.contains("k_auth"), "{debug}");

    // Wrong key, or a damaged file: an error, never an empty App.
    let other = StateFile::new(file.path(), StateKey::new([8; 32]));
    assert!(matches!(other.load(app_config()), Err(StateError::Corrupt)));
    std::fs::write(file.path(), &raw[..raw.len() - 1]).expect("damage");
    assert!(matches!(file.load(app_config()), Err(StateError::Corrupt)));
    assert!(matches!(
        StateFile::new(dir.path().join("none"), StateKey::new([7; 32])).load(app_config()),
        Err(StateError::Missing(_))
    ));
    server.stop().await;
}

#[tokio::test]
async fn contacts_expire_after_ct_days_and_are_never_uploaded() {
    let server = TestServer::start(test_config()).await;
    let t = server.in_process();
    let mut a = registered(&server, &t, 1).await;
    let mut b = registered(&server, &t, 2).await;
    let start = server.advance(60);
    meet(&mut a, &mut b, start, 2, -50);
    a.purge_expired(NtpTime::new(start.seconds() + 14 * 86_400 - 10));
    assert_eq!(a.contacts().len(), 2);
    a.purge_expired(NtpTime::new(start.seconds() + 14 * 86_400 + 61));
    assert!(a.contacts().is_empty());
    server.stop().await;
}

/// `n` contacts in `app`, heard from `other` one minute apart.
async fn contacts(server: &TestServer, n: u32) -> App {
    let t = server.in_process();
    let mut a = registered(server, &t, 1).await;
    let mut b = registered(server, &t, 2).await;
    let start = server.advance(60);
    for m in 0..n {
        let now = NtpTime::new(start.seconds() + 60 * m);
        a.on_hello_received(&b.hello_at(now).expect("hello"), now, Some(-50)).expect("stored");
    }
    server.advance(60 * n);
    a
}

#[tokio::test]
async fn one_token_per_chunk() {
    let server = TestServer::start(test_config()).await;
    let t = server.http();
    let from = NtpTime::new(server.now().seconds() - 10);
    for (tokens, want_chunks, unused) in [(3, 3, 0), (1, 1, 0), (5, 3, 2)] {
        let mut a = contacts(&server, 25).await;
        a.set_config(AppConfig { upload_chunk_size: 10, ..app_config() });
        let toks = (0..tokens).map(|_| server.declare_token()).collect();
        let plan = a.start_declaration(toks, from, server.now(), server.now(), &mut rng(3)).expect("plan");
        assert_eq!((plan.pairs, plan.chunks, plan.unused_tokens.len()), (25, want_chunks, unused));
        let p = a.upload_due(&t, server.now(), &mut no_checkpoint()).await.expect("sent");
        assert_eq!((p.delivered, p.accepted_pairs, p.pending), (want_chunks, 25, 0));
        assert_eq!(server.mix().await, 25);
    }
    // Too few tokens for the server's per-request limit.
    let mut a = contacts(&server, 25).await;
    a.set_config(AppConfig { max_contacts_per_request: 10, ..app_config() });
    let err =
        a.start_declaration(vec![server.declare_token()], from, server.now(), server.now(), &mut rng(3));
    assert!(matches!(err, Err(AppError::TooFewTokens { needed: 3 })));
    assert!(matches!(
        a.start_declaration(vec![], from, server.now(), server.now(), &mut rng(3)),
        Err(AppError::NoToken)
    ));
    server.stop().await;
}

#[tokio::test]
async fn chunks_are_spread_over_time() {
    let server = TestServer::start(test_config()).await;
    let t = server.http();
    let mut a = contacts(&server, 20).await;
    a.set_config(AppConfig { upload_chunk_size: 10, upload_max_delay_sec: 600, ..app_config() });
    let toks = vec![server.declare_token(), server.declare_token()];
    let from = NtpTime::new(server.now().seconds() - 3600);
    a.start_declaration(toks, from, server.now(), server.now(), &mut rng(4)).expect("plan");
    let p = a.upload_due(&t, server.now(), &mut no_checkpoint()).await.expect("sent");
    assert_eq!((p.delivered, p.pending), (1, 1));
    let next = p.next_at.expect("next chunk due");
    assert!(next >= server.now() && next.seconds() <= server.now().seconds() + 600);
    assert!(matches!(
        a.start_declaration(vec!["x".into()], from, server.now(), server.now(), &mut rng(4)),
        Err(AppError::DeclarationInProgress)
    ));
    server.set_now(next);
    let p = a.upload_due(&t, next, &mut no_checkpoint()).await.expect("sent");
    assert_eq!((p.delivered, p.pending, p.accepted_pairs), (2, 0, 20));
    server.stop().await;
}

/// A transport whose first report either never arrives or arrives but loses its answer.
struct Flaky<T> {
    inner: T,
    lose_answer: bool,
    calls: AtomicUsize,
}

impl<T: Transport + Sync> Transport for Flaky<T> {
    async fn clock(&self) -> Result<ClockResponse, TransportError> {
        self.inner.clock().await
    }
    async fn server_key(&self) -> Result<ServerKeyResponse, TransportError> {
        self.inner.server_key().await
    }
    async fn challenge(&self) -> Result<ChallengeResponse, TransportError> {
        self.inner.challenge().await
    }
    async fn register(&self, r: &RegisterRequest) -> Result<RegisterResponse, TransportError> {
        self.inner.register(r).await
    }
    async fn status(&self, r: &AuthRequestBody) -> Result<StatusResponse, TransportError> {
        self.inner.status(r).await
    }
    async fn acknowledge(&self, r: &AuthRequestBody) -> Result<(), TransportError> {
        self.inner.acknowledge(r).await
    }
    async fn unregister(&self, r: &AuthRequestBody) -> Result<(), TransportError> {
        self.inner.unregister(r).await
    }
    async fn delete_history(&self, r: &AuthRequestBody) -> Result<(), TransportError> {
        self.inner.delete_history(r).await
    }
    async fn reset_status(&self, r: &ResetRequestBody) -> Result<(), TransportError> {
        self.inner.reset_status(r).await
    }
    async fn report(&self, token: &str, r: &ReportRequest) -> Result<ReportResponse, TransportError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            if self.lose_answer {
                let _ = self.inner.report(token, r).await;
                return Err(TransportError::NoAnswer("connection reset".into()));
            }
            return Err(TransportError::Unreachable("connection refused".into()));
        }
        self.inner.report(token, r).await
    }
}

#[tokio::test]
async fn retries_never_double_count() {
    for lose_answer in [true, false] {
        let server = TestServer::start(test_config()).await;
        let t = Flaky { inner: server.http(), lose_answer, calls: AtomicUsize::new(0) };
        let mut a = contacts(&server, 12).await;
        let from = NtpTime::new(server.now().seconds() - 3600);
        a.start_declaration(vec![server.declare_token()], from, server.now(), server.now(), &mut rng(1))
            .expect("plan");
        // The checkpoint sees the attempt marked before the request; persisting there survives a crash.
        let dir = tempfile::tempdir().expect("tempdir");
        let file = StateFile::new(dir.path().join("s"), StateKey::new([1; 32]));
        let mut r = rng(2);
        let mut checkpoint = |app: &App| file.save(app, &mut r);
        let p = a.upload_due(&t, server.now(), &mut checkpoint).await.expect("saved");
        assert_eq!(p.pending, 1);
        assert!(p.last_error.is_some());
        // Resume from the checkpointed file, as after a crash, and retry with the same token.
        let mut resumed = file.load(app_config()).expect("load");
        let p = resumed.upload_due(&t, server.now(), &mut no_checkpoint()).await.expect("retry");
        if lose_answer {
            assert_eq!(
                (p.delivered, p.assumed_delivered, p.refused),
                (0, 1, 0),
                "token spent by the first try"
            );
        } else {
            assert_eq!((p.delivered, p.accepted_pairs), (1, 12));
        }
        assert_eq!(server.mix().await, 12, "stored exactly once");
        server.stop().await;
    }
}

#[tokio::test]
async fn a_bad_token_is_refused_not_assumed_delivered() {
    let server = TestServer::start(test_config()).await;
    let t = server.http();
    let mut a = contacts(&server, 3).await;
    let from = NtpTime::new(server.now().seconds() - 3600);
    a.start_declaration(vec!["not-a-token".into()], from, server.now(), server.now(), &mut rng(1))
        .expect("plan");
    let p = a.upload_due(&t, server.now(), &mut no_checkpoint()).await.expect("ran");
    assert_eq!((p.refused, p.pending, p.assumed_delivered), (1, 0, 0));
    server.stop().await;
}
