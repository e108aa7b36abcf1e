//! Test harness: a real `robert-server` on port 0 over a temporary SQLite database, an injected
//! clock, a trusted health-authority key, and a minimal App that speaks the wire protocol by hand
//! (built from `robert-proto` only, so the server is tested against the spec's bytes, not against
//! itself).

#![allow(dead_code)] // each test binary uses part of the harness

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use robert_proto::api::*;
use robert_proto::sealed::{self, EbidEntry};
use robert_proto::*;
use robert_server::config::Config;
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

/// Test configuration: little proof-of-work cost, and a background mixer that never fires on its
/// own (tests run it with [`TestServer::mix`], so they know when pairs are processed).
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.registration.pow_difficulty = 4;
    c.reports.mixer_min_batch = 1_000_000;
    c.reports.mixer_max_batch = 1_000_000;
    c.reports.mixer_max_delay_sec = 1_000_000;
    c.storage.fsync = false;
    c
}

pub struct TestServer {
    pub url: String,
    pub clock: Arc<AtomicU32>,
    pub authority: AuthorityKey,
    pub service: Arc<Service<SqliteStorage>>,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// Starts a server whose clock reads `start + 10 days` (epoch 960 with 15-minute epochs).
    pub async fn start(config: Config) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        keystore::keygen(&dir.path().join("keys"), &mut ChaCha20Rng::seed_from_u64(1)).expect("keygen");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::start_on(config, dir, listener).await
    }

    /// Starts a server on the keys already in `dir/keys` and the database (if any) in `dir`,
    /// serving on `listener`; its data directory is `dir` (the federation audit log goes there).
    pub async fn start_on(config: Config, dir: tempfile::TempDir, listener: tokio::net::TcpListener) -> Self {
        let now = service_start().seconds() + 10 * 86_400;
        Self::start_on_at(config, dir, listener, NtpTime::new(now)).await
    }

    /// [`TestServer::start_on`] with the clock reading `now`.
    pub async fn start_on_at(
        config: Config,
        dir: tempfile::TempDir,
        listener: tokio::net::TcpListener,
        now: NtpTime,
    ) -> Self {
        let secrets = ServerSecrets::load(&dir.path().join("keys")).expect("keys");
        Self::start_with_secrets(config, dir, listener, now, secrets).await
    }

    /// [`TestServer::start_on_at`] with the server's secrets given (e.g. in a security module).
    pub async fn start_with_secrets(
        mut config: Config,
        dir: tempfile::TempDir,
        listener: tokio::net::TcpListener,
        now: NtpTime,
        secrets: ServerSecrets,
    ) -> Self {
        config.server.data_dir = dir.path().to_path_buf();
        let authority = AuthorityKey::generate(&mut ChaCha20Rng::seed_from_u64(2));
        let mut trusted = TrustedAuthorities::new();
        trusted.add_public_key_pem(&authority.public_key_pem()).expect("pem");
        let storage = SqliteStorage::open(&dir.path().join("robert.db"), config.storage.fsync).expect("db");
        let clock = Arc::new(AtomicU32::new(now.seconds()));
        let c = clock.clone();
        let clock_fn: Clock = Arc::new(move || NtpTime::new(c.load(Ordering::SeqCst)));
        let service = Arc::new(
            Service::new(config, service_start(), secrets, storage, trusted, clock_fn)
                .await
                .expect("service"),
        );
        service.prepare_day_keys().await.expect("day keys");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(robert_server::http::run(listener, service.clone(), async {
            let _ = rx.await;
        }));
        Self {
            url,
            clock,
            authority,
            service,
            dir,
            http: reqwest::Client::new(),
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// Stops the server gracefully and hands back its directory (keys, database) for a restart.
    pub async fn stop_keeping_data(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.expect("join").expect("server ran");
        }
        drop(self.service);
        self.dir
    }

    pub fn now(&self) -> NtpTime {
        NtpTime::new(self.clock.load(Ordering::SeqCst))
    }

    pub fn set_now(&self, t: NtpTime) {
        self.clock.store(t.seconds(), Ordering::SeqCst);
    }

    pub fn advance(&self, secs: u32) {
        self.clock.fetch_add(secs, Ordering::SeqCst);
    }

    pub fn epoch(&self) -> Epoch {
        self.service.schedule().epoch_at(self.now()).expect("after start")
    }

    pub fn token(&self, purpose: Purpose) -> String {
        self.authority.issue(purpose, self.now().to_unix(), 3600, &mut rand::rng()).expect("token")
    }

    pub async fn post<T: serde::Serialize + ?Sized>(&self, path: &str, body: &T) -> reqwest::Response {
        self.http.post(format!("{}{path}", self.url)).json(body).send().await.expect("request")
    }

    /// `POST /api/v1/report` of `body` with `token` as its bearer token.
    pub async fn report<T: serde::Serialize + ?Sized>(&self, token: &str, body: &T) -> reqwest::Response {
        let url = format!("{}/api/v1/report", self.url);
        self.http.post(url).bearer_auth(token).json(body).send().await.expect("report")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(format!("{}{path}", self.url)).send().await.expect("request")
    }

    /// Runs the mixer now (instead of waiting for the background job).
    pub async fn mix(&self) -> u64 {
        self.service.mix_once(true).await.expect("mixer")
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

/// Asserts the uniform rejection of DESIGN §4.
pub async fn assert_rejected(resp: reqwest::Response) {
    assert_eq!(resp.status(), 403);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body, serde_json::json!({"error": "rejected"}));
}

/// A minimal App: registration, HELLOs and authenticated requests, by hand from robert-proto.
pub struct TestApp {
    pub keys: SessionKeys,
    pub auth: AuthKey,
    pub list: Vec<EbidEntry>,
}

impl TestApp {
    pub async fn register(server: &TestServer) -> Self {
        let ch: ChallengeResponse =
            server.post("/api/v1/register/challenge", &()).await.json().await.expect("json");
        let challenge = b64_decode("challenge", &ch.challenge).expect("b64");
        let solution = pow::solve(&challenge, ch.difficulty, 0).expect("solvable");
        let key: ServerKeyResponse = server.get("/api/v1/server-key").await.json().await.expect("json");
        let server_pk =
            PublicKey::parse("pk", &b64_decode("pk", &key.public_key).expect("b64")).expect("point");
        let eph = AppEphemeralKey::generate(&mut rand::rng());
        let req = RegisterRequest {
            challenge: ch.challenge.clone(),
            solution: b64_encode(&solution),
            client_public_key: b64_encode(eph.public_key().as_bytes()),
        };
        let resp = server.post("/api/v1/register", &req).await;
        assert_eq!(resp.status(), 201);
        let reg: RegisterResponse = resp.json().await.expect("json");
        let keys = eph.agree(&server_pk);
        let list = sealed::open(&keys.k_enc, &b64_decode("ebids", &reg.ebids).expect("b64")).expect("opens");
        assert_eq!(list.first().map(|e| e.epoch.number()), Some(reg.epoch));
        let auth = AuthKey::new(&keys.k_auth);
        Self { keys, auth, list }
    }

    pub fn entry(&self, epoch: Epoch) -> EbidEntry {
        *self.list.iter().find(|e| e.epoch == epoch).expect("the list covers this epoch")
    }

    /// The HELLO this App broadcasts at `now` (§5.1).
    pub fn hello(&self, server: &TestServer, now: NtpTime) -> Hello {
        let epoch = server.service.schedule().epoch_at(now).expect("epoch");
        let e = self.entry(epoch);
        Hello::build(&self.auth, e.ecc, e.ebid, now)
    }

    /// An authenticated request of kind `code` at the server's current time.
    pub fn request(&self, server: &TestServer, code: RequestCode) -> AuthRequestBody {
        let now = server.now();
        let e = self.entry(server.epoch());
        AuthRequestBody::from_request(&AuthRequest::new(&self.auth, code, e.ebid, e.epoch, now))
    }

    /// Merges a refreshed list.
    pub fn merge(&mut self, sealed_b64: &str) {
        let fresh =
            sealed::open(&self.keys.k_enc, &b64_decode("ebids", sealed_b64).expect("b64")).expect("opens");
        for e in fresh {
            if !self.list.iter().any(|x| x.epoch == e.epoch) {
                self.list.push(e);
            }
        }
        self.list.sort_by_key(|e| e.epoch);
    }

    pub async fn status(&mut self, server: &TestServer) -> reqwest::Response {
        server.post("/api/v1/status", &self.request(server, RequestCode::StatusRequest)).await
    }
}

/// A declaration body from (HELLO, reception time, RSSI) triples.
pub fn report_body(pairs: &[(Hello, NtpTime, Option<i8>)]) -> ReportRequest {
    ReportRequest {
        contacts: pairs
            .iter()
            .map(|(h, t, r)| ContactBody::from_record(&UploadRecord { hello: *h, time: *t, rssi: *r }))
            .collect(),
    }
}
