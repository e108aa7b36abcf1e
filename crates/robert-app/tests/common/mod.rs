//! Test harness: a real `robert-server` (SQLite in a temp dir, injected clock, trusted test
//! authority) served over HTTP on port 0, reachable through both App transports.

#![allow(dead_code)] // each test binary uses part of the harness

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use robert_app::{App, AppConfig, HttpTransport, InProcessTransport};
use robert_proto::NtpTime;
use robert_server::config::{Config, RiskRule};
use robert_server::keystore::{self, ServerSecrets};
use robert_server::service::{Clock, Service};
use robert_server::storage::sqlite::SqliteStorage;
use robert_server::token::{AuthorityKey, Purpose, TrustedAuthorities};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// T_pstart of test servers: 2026-01-01 00:00 UTC.
pub const SERVICE_START_UNIX: u64 = 1_767_225_600;

pub fn service_start() -> NtpTime {
    NtpTime::from_unix(SERVICE_START_UNIX).expect("era 0")
}

/// Little proof of work; a mixer that only runs when the test says so.
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.registration.pow_difficulty = 4;
    c.reports.mixer_min_batch = 1_000_000;
    c.reports.mixer_max_batch = 1_000_000;
    c.reports.mixer_max_delay_sec = 1_000_000;
    c.storage.fsync = false;
    c
}

/// A config whose risk rule is "at least `n` exposed epochs".
pub fn epochs_rule(n: u32) -> Config {
    let mut c = test_config();
    c.risk.rule = RiskRule::Epochs;
    c.risk.min_exposed_epochs = n;
    c
}

/// App config matching the test server, uploads sent at once.
pub fn app_config() -> AppConfig {
    AppConfig { upload_max_delay_sec: 0, ..AppConfig::default() }
}

pub struct TestServer {
    pub url: String,
    pub clock: Arc<AtomicU32>,
    pub authority: AuthorityKey,
    pub service: Arc<Service<SqliteStorage>>,
    pub dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// A server whose clock reads `start + 10 days` (epoch 960 with 15-minute epochs).
    pub async fn start(config: Config) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let key_dir = dir.path().join("keys");
        keystore::keygen(&key_dir, &mut ChaCha20Rng::seed_from_u64(1)).expect("keygen");
        let secrets = ServerSecrets::load(&key_dir).expect("keys");
        let authority = AuthorityKey::generate(&mut ChaCha20Rng::seed_from_u64(2));
        let mut trusted = TrustedAuthorities::new();
        trusted.add_public_key_pem(&authority.public_key_pem()).expect("pem");
        let storage = SqliteStorage::open(&dir.path().join("robert.db"), config.storage.fsync).expect("db");
        let clock = Arc::new(AtomicU32::new(service_start().seconds() + 10 * 86_400));
        let c = clock.clone();
        let clock_fn: Clock = Arc::new(move || NtpTime::new(c.load(Ordering::SeqCst)));
        let service = Arc::new(
            Service::new(config, service_start(), secrets, storage, trusted, clock_fn)
                .await
                .expect("service"),
        );
        service.prepare_day_keys().await.expect("day keys");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(robert_server::http::run(listener, service.clone(), async {
            let _ = rx.await;
        }));
        Self { url, clock, authority, service, dir, shutdown: Some(tx), handle: Some(handle) }
    }

    pub fn now(&self) -> NtpTime {
        NtpTime::new(self.clock.load(Ordering::SeqCst))
    }

    pub fn set_now(&self, t: NtpTime) {
        self.clock.store(t.seconds(), Ordering::SeqCst);
    }

    pub fn advance(&self, secs: u32) -> NtpTime {
        self.clock.fetch_add(secs, Ordering::SeqCst);
        self.now()
    }

    pub fn token(&self, purpose: Purpose) -> String {
        self.authority.issue(purpose, self.now().to_unix(), 3600, &mut rand::rng()).expect("token")
    }

    pub fn declare_token(&self) -> String {
        self.token(Purpose::Declare)
    }

    pub async fn mix(&self) -> u64 {
        self.service.mix_once(true).await.expect("mixer")
    }

    pub fn http(&self) -> HttpTransport {
        HttpTransport::new(&self.url).expect("client")
    }

    pub fn in_process(&self) -> InProcessTransport<SqliteStorage> {
        InProcessTransport::new(self.service.clone())
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.expect("join").expect("server ran");
        }
    }
}

pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

/// Registers a fresh App at the server's current time.
pub async fn registered(server: &TestServer, t: &impl robert_app::Transport, seed: u64) -> App {
    let mut app = App::new(app_config());
    app.register(t, server.now(), &mut rng(seed)).await.expect("registers");
    app
}

/// `a` and `b` meet for `minutes` minutes from `from`: each hears one HELLO of the other per
/// minute, at `rssi`.
pub fn meet(a: &mut App, b: &mut App, from: NtpTime, minutes: u32, rssi: i8) {
    for m in 0..minutes {
        let t = NtpTime::new(from.seconds() + 60 * m);
        let ha = a.hello_at(t).expect("a broadcasts");
        let hb = b.hello_at(t).expect("b broadcasts");
        b.on_hello_received(&ha, NtpTime::new(t.seconds() + 1), Some(rssi)).expect("b stores");
        a.on_hello_received(&hb, NtpTime::new(t.seconds() + 1), Some(rssi)).expect("a stores");
    }
}

/// Declares everything `app` holds from `from` to `to` with one token, sends it, runs the mixer.
pub async fn declare(
    server: &TestServer,
    t: &impl robert_app::Transport,
    app: &mut App,
    from: NtpTime,
    to: NtpTime,
) -> u64 {
    let plan = app
        .start_declaration(vec![server.declare_token()], from, to, server.now(), &mut rng(99))
        .expect("plans");
    let progress = app
        .upload_due(t, server.now(), &mut |_: &App| Ok::<(), std::convert::Infallible>(()))
        .await
        .expect("no checkpoint error");
    assert!(progress.is_complete(), "{progress:?}");
    assert_eq!(progress.accepted_pairs, plan.pairs as u64);
    server.mix().await;
    progress.accepted_pairs
}

impl TestServer {
    /// Sets the clock and returns it.
    pub fn set_now_get(&self, seconds: u32) -> NtpTime {
        self.set_now(NtpTime::new(seconds));
        self.now()
    }
}
