//! `robert bench …`: reproducible throughput benchmarks of the back-end (DESIGN §6, "Benchmarks, not
//! timed tests"). Each figure is printed as one JSON line on stdout, beside the limit it should be
//! read against, measured in the same run; a short human summary goes to stderr.
//!
//! | subcommand | measures | beside |
//! |---|---|---|
//! | `upload` | pairs/s through [`Service::report`] + [`Service::mix_once`] (§6.1, §6.2) | the per-pair crypto floor (SKINNY + AES + HMAC; also batched SKINNY, and the key unwrap), one core |
//! | `status` | ESR/s over HTTP, p50/p99 (§7) | `GET /healthz` under the same load and client; `load_user` and `status_request` alone; the ESR's crypto |
//! | `register` | registrations/s over HTTP, difficulty 0 (§3.3); also per second of CPU time (all threads, and with `--client-threads N` the server's alone) | `Registration::agree` (the key store's §3.3 agreement) per second, one thread and every core, and per CPU-second; `GET /healthz` under the same load, and the ratio that one ECDH plus two such round trips would leave |
//! | `storage` | bytes per registered ID, SQLite file and in-memory | – |
//!
//! How it is measured, and what that means for the figures:
//! - **One process, one machine.** The server under test runs in-process on a tokio runtime with
//!   one worker per core ([`robert_server::http::run`] on `127.0.0.1:0`, a temporary data
//!   directory); the load generator runs in the same process and shares the machine's cores with
//!   it. A server with the machine to itself would do better; the ratios (to the no-op endpoint, to
//!   raw ECDH) are the portable part. Each line carries the 1-minute load average at the start:
//!   other work on the machine shows there.
//! - **The production path.** Default configuration (fsync on, mixer batches of 10 000, T = 8)
//!   except: proof-of-work difficulty 0, and the flags given. The server's clock is fixed (20 days
//!   and 10 h 05 min after a service start of 2026-01-01), in the first half of a 96-epoch block, so
//!   ESR answers carry no refreshed EBID list.
//! - **Honest IDs.** Registered IDs are either written through [`Storage::insert_user`] with their
//!   keys wrapped exactly as [`Service::register`] wraps them (`--populate storage`, the default:
//!   fast), or registered through [`Service::register`] in-process (`--populate service`: slower,
//!   ECDH on both sides). Either way every benchmarked request must be accepted (every pair matched,
//!   every ESR answered 200), which shows that the rows are what the service expects.
//! - **Reproducible.** `--seed` fixes everything the load generator draws (IDs, App keys, contact
//!   times, which App sends what). The server's own randomness (day keys K_S, nonces, pool slots)
//!   comes from the OS, as in production; it changes bytes, not the work done.
//! - **Load generator.** A minimal HTTP/1.1 keep-alive client on tokio sockets by default
//!   (`--client raw`), one connection per client, one request in flight each (closed loop), run
//!   as tasks on the server's runtime (`--client-threads 0`). `--client reqwest` is there for
//!   comparison: measured here it caps `GET /healthz` at ~21–29k/s where the raw client reaches
//!   ~56–79k/s, so with reqwest the benchmark would measure the client. Requests are built before
//!   the clock starts.

use anyhow::{Context, Result, bail, ensure};
use clap::{Args, Subcommand, ValueEnum};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;
use robert_proto::api::{
    AuthRequestBody, ChallengeResponse, ContactBody, RegisterRequest, ReportRequest, b64_decode, b64_encode,
};
use robert_proto::{
    AppEphemeralKey, AuthKey, AuthRequest, CountryCode, EbidCipher, Epoch, EpochSchedule, Hello, Id, KAuth,
    KEnc, NtpTime, PublicKey, RequestCode, SessionKeys, UploadRecord, pow, sealed,
};
use robert_server::config::{Config, POSTGRES_URL_ENV};
use robert_server::keystore::{self, DayKeys, ServerSecrets};
use robert_server::service::{Clock, Service};
use robert_server::storage::Storage;
use robert_server::storage::memory::MemoryStorage;
use robert_server::storage::postgres::PostgresStorage;
use robert_server::storage::sqlite::SqliteStorage;
use robert_server::token::{AuthorityKey, Purpose, TrustedAuthorities};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::hint::black_box;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Arguments of `robert bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Pairs/s through §6.2 validation and durable LEE writes (`report` + `mix_once`), beside the
    /// per-pair crypto floor on one core.
    Upload(UploadArgs),
    /// ESR/s over HTTP with many concurrent clients, p50/p99, beside `GET /healthz` under the same
    /// load.
    Status(StatusArgs),
    /// Registrations/s over HTTP (difficulty 0), beside raw server-side ECDH/s.
    Register(RegisterArgs),
    /// Bytes per registered ID: SQLite file size, and in memory.
    Storage(StorageArgs),
    /// LEE_A expiry at scale: `Storage::expire` on a table of `--rows` exposure rows spread over
    /// CT days of epochs (one epoch's worth, then one day's worth, then nothing to delete).
    Expiry(ExpiryArgs),
}

/// The storage backend under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// SQLite in WAL mode, one writer thread with group commit (the embedded default).
    Sqlite,
    /// The in-memory reference backend.
    Memory,
    /// PostgreSQL (`--postgres-url`), in a schema of its own created for the run and dropped after.
    Postgres,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Memory => "memory",
            Backend::Postgres => "postgres",
        }
    }
}

/// How registered IDs are created before the measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Populate {
    /// `Storage::insert_user` with keys wrapped as the service wraps them (fast).
    Storage,
    /// `Service::register` in-process: challenge, ECDH on both sides, sealed list (slow).
    Service,
}

/// The load generator's HTTP client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ClientKind {
    /// Minimal HTTP/1.1 keep-alive client on tokio sockets.
    Raw,
    /// reqwest (hyper) with a connection pool.
    Reqwest,
}

impl ClientKind {
    fn name(self) -> &'static str {
        match self {
            ClientKind::Raw => "raw",
            ClientKind::Reqwest => "reqwest",
        }
    }
}

/// Options every server benchmark takes.
#[derive(Debug, Args)]
struct Common {
    /// Seed of everything the load generator draws (IDs, App keys, contacts, order).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Storage backend of the server under test.
    #[arg(long, value_enum, default_value_t = Backend::Sqlite)]
    storage: Backend,
    /// SQLite without fsync (`synchronous = NORMAL`); the default, like production, is fsync on.
    /// (PostgreSQL's durability is the database server's own `fsync`/`synchronous_commit`.)
    #[arg(long)]
    no_fsync: bool,
    /// With `--storage postgres`: the database URL (postgres://user@host:port/db). Default: the
    /// environment variable ROBERT_POSTGRES_URL. The run creates a schema of its own in that
    /// database and drops it at the end.
    #[arg(long)]
    postgres_url: Option<String>,
    /// With `--storage postgres`: connections in the server's pool.
    #[arg(long, default_value_t = robert_server::storage::postgres::DEFAULT_POOL_SIZE)]
    postgres_pool_size: usize,
    /// Worker threads of the server's tokio runtime (default: one per core).
    #[arg(long)]
    server_threads: Option<usize>,
    /// Most threads of the server runtime's blocking pool, where SQLite reads run (tokio's
    /// default, as in `robert serve`: 512).
    #[arg(long, default_value_t = 512)]
    max_blocking_threads: usize,
}

impl Common {
    /// SQLite's fsync setting; `null` for the memory backend, which has none.
    fn fsync_json(&self) -> Value {
        match self.storage {
            Backend::Sqlite => json!(!self.no_fsync),
            Backend::Memory => Value::Null,
            Backend::Postgres => json!("the database server's setting"),
        }
    }
}

/// Options of the HTTP load generator.
#[derive(Debug, Args)]
struct LoadArgs {
    /// Measured duration, seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Warm-up before the measured window, seconds (same load, not counted).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// HTTP client of the load generator.
    #[arg(long, value_enum, default_value_t = ClientKind::Raw)]
    client: ClientKind,
    /// Worker threads of a separate runtime for the load generator; 0 (the default) runs the
    /// clients as tasks on the server's runtime, so that neither side has cores reserved.
    #[arg(long, default_value_t = 0)]
    client_threads: usize,
}

/// `robert bench upload`.
#[derive(Debug, Args)]
struct UploadArgs {
    #[command(flatten)]
    common: Common,
    /// Registered IDs.
    #[arg(long, default_value_t = 1_000_000)]
    ids: usize,
    /// Uploaded (HELLO, time) pairs.
    #[arg(long, default_value_t = 200_000)]
    pairs: usize,
    /// Pairs per declaration (one token each).
    #[arg(long, default_value_t = 2_000)]
    per_report: usize,
    /// How the IDs are registered.
    #[arg(long, value_enum, default_value_t = Populate::Storage)]
    populate: Populate,
}

/// `robert bench status`.
#[derive(Debug, Args)]
struct StatusArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    load: LoadArgs,
    /// Registered IDs (Apps); each sends at most one ESR unless `--esr-interval 0`.
    #[arg(long, default_value_t = 1_000_000)]
    ids: usize,
    /// Concurrent clients (connections).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// T, `esr_min_interval_epochs`. With the default 8, one App can send one ESR in the run, so
    /// the run fails if it needs more Apps than `--ids`; 0 lets Apps repeat.
    #[arg(long, default_value_t = 8)]
    esr_interval: u32,
    /// How the IDs are registered.
    #[arg(long, value_enum, default_value_t = Populate::Storage)]
    populate: Populate,
}

/// `robert bench register`.
#[derive(Debug, Args)]
struct RegisterArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    load: LoadArgs,
    /// Concurrent clients (connections).
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Distinct App public keys, generated before the run and used in turn.
    #[arg(long, default_value_t = 4096)]
    key_pool: usize,
}

/// `robert bench storage`.
#[derive(Debug, Args)]
struct StorageArgs {
    /// Registered IDs.
    #[arg(long, default_value_t = 1_000_000)]
    ids: usize,
    /// Seed of the IDs and keys.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// `robert bench expiry`.
#[derive(Debug, Args)]
struct ExpiryArgs {
    #[command(flatten)]
    common: Common,
    /// LEE_A rows (one per (ID, exposed epoch)) before expiry.
    #[arg(long, default_value_t = 10_000_000)]
    rows: usize,
    /// Exposed epochs per ID (so IDs = rows / this).
    #[arg(long, default_value_t = 20)]
    epochs_per_id: usize,
}

/// Runs `robert bench …`.
pub fn run(args: &BenchArgs) -> Result<()> {
    match &args.command {
        BenchCommand::Upload(a) => upload(a),
        BenchCommand::Status(a) => status(a),
        BenchCommand::Register(a) => register(a),
        BenchCommand::Storage(a) => storage(a),
        BenchCommand::Expiry(a) => expiry(a),
    }
}

// ---------------------------------------------------------------------------------------------
// Output.

/// One benchmark's output: every figure is a JSON line carrying the run's context.
struct Report {
    bench: &'static str,
    context: Map<String, Value>,
}

impl Report {
    fn new(bench: &'static str, context: Value) -> Self {
        let mut map = match context {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        map.insert("cores".into(), json!(cores()));
        if let Some(load) = load_average() {
            map.insert("load_1m_at_start".into(), json!(load));
        }
        let setup = if bench == "storage" {
            "storage backends in-process, no HTTP"
        } else {
            "in-process server and load generator on one machine, sharing its cores"
        };
        map.insert("setup".into(), json!(setup));
        map.insert("release_build".into(), json!(!cfg!(debug_assertions)));
        Self { bench, context: map }
    }

    /// Prints one figure (with `extra` fields) as a JSON line: `bench`, `figure`, `value`, `unit`
    /// first, then the figure's own fields, then the run's context.
    fn figure(&self, figure: &str, value: f64, unit: &str, extra: Value) {
        let mut rest = match extra {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        for (k, v) in &self.context {
            rest.entry(k.clone()).or_insert_with(|| v.clone());
        }
        let mut line = format!(
            "{{\"bench\":{},\"figure\":{},\"value\":{},\"unit\":{}",
            json!(self.bench),
            json!(figure),
            json!(round(value)),
            json!(unit)
        );
        for (k, v) in rest {
            line.push_str(&format!(",{}:{v}", json!(k)));
        }
        line.push('}');
        let mut out = std::io::stdout().lock();
        // A closed stdout (a pipe to `head`) is not the benchmark's failure.
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Three significant decimals are plenty for throughput and latency figures.
fn round(v: f64) -> f64 {
    if v.abs() >= 100.0 { v.round() } else { (v * 1000.0).round() / 1000.0 }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The 1-minute load average (Linux), to judge whether the machine was busy.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

fn per_sec(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

// ---------------------------------------------------------------------------------------------
// The server under test.

/// T_pstart of the benchmark server: 2026-01-01 00:00 UTC.
const SERVICE_START_UNIX: u64 = 1_767_225_600;
/// The fixed server clock, seconds after T_pstart: 20 days, 10 h 05 min (epoch 1960 with 15-min
/// epochs, the 40th of its day: first half of the 96-epoch block, so ESRs get no refreshed list).
const NOW_OFFSET_SEC: u32 = 20 * 86_400 + 10 * 3_600 + 300;

fn service_start() -> Result<NtpTime> {
    NtpTime::from_unix(SERVICE_START_UNIX).context("2026 is in NTP era 0")
}

/// The UTC day (days since 1970) whose K_S makes epoch `e`'s EBIDs (as the service computes it).
fn day_of_epoch(schedule: &EpochSchedule, e: Epoch) -> Option<u32> {
    schedule.epoch_start(e).map(|t| (t.to_unix() / 86_400) as u32)
}

/// What a registered App keeps: its ID (known to the bench only to make EBIDs, as the server
/// would) and its keys.
struct AppKeys {
    id: Id,
    k_auth: KAuth,
    k_enc: KEnc,
}

/// A service over a temporary data directory, with the secrets the load generator needs to act
/// as Apps and as the health authority.
struct Server<S: Storage> {
    service: Arc<Service<S>>,
    /// A second copy of the server's secrets (the KEK to wrap keys as the service does, K_G for
    /// ECCs, sk_S for the ECDH reference).
    secrets: Arc<ServerSecrets>,
    /// Each day's K_S, from today - (CT - 1) to today + 2.
    ciphers: BTreeMap<u32, Arc<EbidCipher>>,
    authority: AuthorityKey,
    now: NtpTime,
    /// Dropped last: the storage (inside the service) closes first.
    _dir: TempDir,
}

fn bench_config(common: &Common) -> Config {
    let mut c = Config::default();
    c.registration.pow_difficulty = 0;
    c.storage.fsync = !common.no_fsync;
    c
}

fn data_dir() -> Result<TempDir> {
    tempfile::Builder::new().prefix("robert-bench-").tempdir().context("creating a temporary data directory")
}

impl<S: Storage> Server<S> {
    /// Creates keys (from `seed`), every day key of the last CT days and the next two, and the
    /// service over `storage`.
    async fn new(storage: S, mut config: Config, dir: TempDir, seed: u64) -> Result<Self> {
        // The audit logs go to the run's temporary directory, like everything else it writes.
        config.server.data_dir = dir.path().to_path_buf();
        let key_dir = dir.path().join("keys");
        let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x5eed_0000_0000_0001);
        keystore::keygen(&key_dir, &mut rng)?;
        let for_service = ServerSecrets::load(&key_dir)?;
        let secrets = Arc::new(ServerSecrets::load(&key_dir)?);
        let authority = AuthorityKey::generate(&mut rng);
        let mut trusted = TrustedAuthorities::new();
        trusted.add_public_key_pem(&authority.public_key_pem())?;

        let start = service_start()?;
        let now = start.checked_add(NOW_OFFSET_SEC).context("in NTP era 0")?;
        let today = (now.to_unix() / 86_400) as u32;
        let first_day = today + 1 - config.protocol.ct_days;
        let day_keys = DayKeys::load(&storage, &secrets.kek).await?;
        let mut ciphers = BTreeMap::new();
        for day in first_day..=today + 2 {
            ciphers.insert(day, day_keys.get_or_create(day, &storage, &secrets.kek).await?);
        }
        let clock: Clock = Arc::new(move || now);
        let service = Arc::new(Service::new(config, start, for_service, storage, trusted, clock).await?);
        Ok(Self { service, secrets, ciphers, authority, now, _dir: dir })
    }

    fn schedule(&self) -> &EpochSchedule {
        self.service.schedule()
    }

    fn now_epoch(&self) -> Result<Epoch> {
        self.schedule().epoch_at(self.now).context("after the service start")
    }

    fn cipher_for(&self, e: Epoch) -> Result<&Arc<EbidCipher>> {
        let day = day_of_epoch(self.schedule(), e).context("epoch in NTP era 0")?;
        self.ciphers.get(&day).context("no day key for that epoch (outside the last CT days)")
    }

    /// Registers `n` Apps (see [`Populate`]), printing progress on stderr.
    async fn populate(&self, n: usize, how: Populate, rng: &mut ChaCha20Rng) -> Result<Vec<AppKeys>> {
        let t0 = Instant::now();
        let apps = match how {
            Populate::Storage => self.populate_storage(n, rng).await?,
            Populate::Service => self.populate_service(n, rng).await?,
        };
        eprintln!(
            "robert bench: registered {} IDs via {} in {:.1} s",
            apps.len(),
            match how {
                Populate::Storage => "Storage::insert_user",
                Populate::Service => "Service::register",
            },
            t0.elapsed().as_secs_f64()
        );
        Ok(apps)
    }

    /// Distinct uniform 40-bit IDs and random keys from `rng`, written as [`Service::register`]
    /// writes them: `insert_user(id, kek.wrap_session_keys(keys, id))`, many in flight so that the
    /// SQLite writer groups them.
    async fn populate_storage(&self, n: usize, rng: &mut ChaCha20Rng) -> Result<Vec<AppKeys>> {
        let mut seen = HashSet::with_capacity(n);
        let mut apps = Vec::with_capacity(n);
        while apps.len() < n {
            let id = Id::new(rng.random_range(0..=Id::MAX)).expect("drawn in range");
            if seen.insert(id) {
                apps.push(AppKeys { id, k_auth: KAuth::random(rng), k_enc: KEnc::random(rng) });
            }
        }
        drop(seen);
        let apps = Arc::new(apps);
        let done = Arc::new(AtomicUsize::new(0));
        let workers = 1024.min(n.max(1));
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..workers {
            let (apps, done, service, secrets) =
                (apps.clone(), done.clone(), self.service.clone(), self.secrets.clone());
            tasks.spawn(async move {
                for a in apps.iter().skip(w).step_by(workers) {
                    let keys = SessionKeys { k_auth: a.k_auth.clone(), k_enc: a.k_enc.clone() };
                    let wrapped = secrets.kek.wrap_session_keys(&keys, &a.id.to_be_bytes())?;
                    ensure!(service.storage().insert_user(a.id, wrapped).await?, "an ID was taken twice");
                    progress(&done, apps.len(), "registering");
                }
                Ok::<_, anyhow::Error>(())
            });
        }
        join_all(tasks).await?;
        Arc::try_unwrap(apps).map_err(|_| anyhow::anyhow!("populate tasks still hold the Apps"))
    }

    /// Registers through [`Service::register`] (difficulty 0), the App side done as an App does it:
    /// ephemeral key, ECDH, opening the sealed list. The ID is read back from the first EBID with
    /// K_S (the bench plays the server there).
    async fn populate_service(&self, n: usize, rng: &mut ChaCha20Rng) -> Result<Vec<AppKeys>> {
        let done = Arc::new(AtomicUsize::new(0));
        let workers = (cores() * 16).min(n.max(1));
        let mut tasks = tokio::task::JoinSet::new();
        let me = Arc::new(RegisterCtx {
            service: self.service.clone(),
            ciphers: self.ciphers.clone(),
            schedule: *self.schedule(),
        });
        for w in 0..workers {
            let count = n / workers + usize::from(w < n % workers);
            let mut rng = ChaCha20Rng::seed_from_u64(rng.random());
            let (me, done) = (me.clone(), done.clone());
            tasks.spawn(async move {
                let mut apps = Vec::with_capacity(count);
                for _ in 0..count {
                    apps.push(me.register(&mut rng).await?);
                    progress(&done, n, "registering");
                    // Registration is CPU-bound and never waits with MemoryStorage: let the other
                    // tasks (and the progress line) run.
                    tokio::task::yield_now().await;
                }
                Ok::<_, anyhow::Error>(apps)
            });
        }
        let mut apps = Vec::with_capacity(n);
        for part in join_all(tasks).await? {
            apps.extend(part);
        }
        Ok(apps)
    }

    /// Starts the HTTP API on 127.0.0.1:0 (with the background jobs), on the current runtime.
    async fn serve(&self) -> Result<Running> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(robert_server::http::run(listener, self.service.clone(), async {
            let _ = rx.await;
        }));
        Ok(Running { addr, stop: tx, handle })
    }
}

/// What an in-process registration needs (shared by the populating tasks).
struct RegisterCtx<S: Storage> {
    service: Arc<Service<S>>,
    ciphers: BTreeMap<u32, Arc<EbidCipher>>,
    schedule: EpochSchedule,
}

impl<S: Storage> RegisterCtx<S> {
    async fn register(&self, rng: &mut ChaCha20Rng) -> Result<AppKeys> {
        let ch = self.service.challenge();
        let challenge = b64_decode("challenge", &ch.challenge)?;
        let solution = pow::solve(&challenge, ch.difficulty, 0).context("no proof-of-work solution")?;
        let eph = AppEphemeralKey::generate(rng);
        let req = RegisterRequest {
            challenge: ch.challenge,
            solution: b64_encode(&solution),
            client_public_key: b64_encode(eph.public_key().as_bytes()),
        };
        let resp = self.service.register(&req).await?;
        let keys = eph.agree(self.service.server_public_key());
        let list = sealed::open(&keys.k_enc, &b64_decode("ebids", &resp.ebids)?)?;
        let first = list.first().context("an empty EBID list")?;
        let day = day_of_epoch(&self.schedule, first.epoch).context("epoch in NTP era 0")?;
        let (epoch, id) = self.ciphers.get(&day).context("no day key for the list")?.decrypt(&first.ebid);
        ensure!(epoch == first.epoch, "the EBID list does not decrypt under the day key");
        Ok(AppKeys { id, k_auth: keys.k_auth, k_enc: keys.k_enc })
    }
}

/// A running HTTP server.
struct Running {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    async fn shutdown(self) -> Result<()> {
        let _ = self.stop.send(());
        self.handle.await.context("server task")??;
        Ok(())
    }
}

/// Prints a progress line on stderr every tenth of `total`.
fn progress(done: &AtomicUsize, total: usize, what: &str) {
    let d = done.fetch_add(1, Ordering::Relaxed) + 1;
    let step = (total / 10).max(1);
    if total >= 50_000 && d.is_multiple_of(step) {
        eprintln!("robert bench: {what}: {d}/{total}");
    }
}

async fn join_all<T: 'static>(mut tasks: tokio::task::JoinSet<Result<T>>) -> Result<Vec<T>> {
    let mut out = Vec::with_capacity(tasks.len());
    while let Some(r) = tasks.join_next().await {
        out.push(r.context("a benchmark task panicked")??);
    }
    Ok(out)
}

fn server_runtime(common: &Common) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(common.server_threads.unwrap_or_else(cores).max(1))
        .max_blocking_threads(common.max_blocking_threads.max(1))
        .thread_name("robert-server")
        .enable_all()
        .build()
        .context("building the server runtime")
}

/// Opens the chosen backend in `dir` and runs `f` with a server over it.
fn with_backend<F>(common: &Common, config: Config, f: F) -> Result<()>
where
    F: BackendRun,
{
    let rt = server_runtime(common)?;
    let dir = data_dir()?;
    match common.storage {
        Backend::Sqlite => {
            let storage = SqliteStorage::open(&dir.path().join("robert.db"), config.storage.fsync)?;
            let server = rt.block_on(Server::new(storage, config, dir, common.seed))?;
            f.run(&rt, server)
        }
        Backend::Memory => {
            let server = rt.block_on(Server::new(MemoryStorage::new(), config, dir, common.seed))?;
            f.run(&rt, server)
        }
        Backend::Postgres => {
            let url = postgres_url(common.postgres_url.as_deref())?;
            let schema = format!("robert_bench_{}", std::process::id());
            let storage = rt
                .block_on(PostgresStorage::connect_in_schema(&url, &schema, common.postgres_pool_size))
                .context("connecting to PostgreSQL")?;
            eprintln!("robert bench: PostgreSQL, schema {schema} (dropped at the end)");
            let outcome = rt
                .block_on(Server::new(storage, config, dir, common.seed))
                .and_then(|server| f.run(&rt, server));
            // The storage (in the server) is gone: what the run left on disk, then drop the run's
            // schema, whatever the outcome.
            if outcome.is_ok() {
                for (table, rows, bytes) in rt.block_on(PostgresStorage::table_sizes(&url, &schema))? {
                    if rows > 0 {
                        eprintln!(
                            "robert bench: postgres table {table}: {rows} rows, {:.1} MB with indexes, {:.0} B/row",
                            bytes as f64 / 1e6,
                            bytes as f64 / rows as f64
                        );
                    }
                }
            }
            let dropped = rt.block_on(PostgresStorage::drop_schema(&url, &schema));
            outcome?;
            Ok(dropped.context("dropping the benchmark schema")?)
        }
    }
}

/// The PostgreSQL URL of a benchmark: the flag, else `ROBERT_POSTGRES_URL`.
fn postgres_url(flag: Option<&str>) -> Result<String> {
    match flag {
        Some(url) => Ok(url.to_owned()),
        None => std::env::var(POSTGRES_URL_ENV)
            .ok()
            .filter(|u| !u.is_empty())
            .with_context(|| format!("--storage postgres needs --postgres-url or {POSTGRES_URL_ENV}")),
    }
}

/// A benchmark body, generic over the backend.
trait BackendRun {
    fn run<S: Storage>(self, rt: &tokio::runtime::Runtime, server: Server<S>) -> Result<()>;
}

// ---------------------------------------------------------------------------------------------
// upload

fn upload(args: &UploadArgs) -> Result<()> {
    ensure!(
        args.ids > 0 && args.pairs > 0 && args.per_report > 0,
        "--ids, --pairs and --per-report must be > 0"
    );
    let config = bench_config(&args.common);
    ensure!(args.per_report <= config.reports.max_contacts, "--per-report above reports.max_contacts");
    let report = Report::new(
        "upload",
        json!({
            "seed": args.common.seed, "storage": args.common.storage.name(), "fsync": args.common.fsync_json(),
            "ids": args.ids, "pairs": args.pairs, "per_report": args.per_report,
            "populate": format!("{:?}", args.populate).to_lowercase(),
            "mixer_max_batch": config.reports.mixer_max_batch,
        }),
    );
    with_backend(&args.common, config, UploadRun { args, report })
}

struct UploadRun<'a> {
    args: &'a UploadArgs,
    report: Report,
}

/// One generated pair and the App that sent its HELLO.
struct Pair {
    record: UploadRecord,
    app: usize,
}

impl BackendRun for UploadRun<'_> {
    fn run<S: Storage>(self, rt: &tokio::runtime::Runtime, server: Server<S>) -> Result<()> {
        let UploadRun { args, report } = self;
        let mut rng = ChaCha20Rng::seed_from_u64(args.common.seed);
        let apps = rt.block_on(server.populate(args.ids, args.populate, &mut rng))?;

        // The pairs: a uniformly drawn App, a reception time uniform over the last CT days, sent
        // up to 10 s before; each pair is a distinct (ID, epoch) with overwhelming probability:
        // the worst case for LEE writes (one new row per pair).
        let t0 = Instant::now();
        let pairs = make_pairs(&server, &apps, args.pairs, &mut rng)?;
        let mut bodies = Vec::new();
        for chunk in pairs.chunks(args.per_report) {
            let token = server.authority.issue(Purpose::Declare, server.now.to_unix(), 3600, &mut rng)?;
            let body = ReportRequest {
                contacts: chunk.iter().map(|p| ContactBody::from_record(&p.record)).collect(),
            };
            bodies.push((token, body));
        }
        eprintln!(
            "robert bench: built {} pairs in {} declarations in {:.1} s",
            pairs.len(),
            bodies.len(),
            t0.elapsed().as_secs_f64()
        );

        // The crypto floor first (the machine otherwise idle), on one thread.
        let floor = crypto_floor(&server, &apps, &pairs)?;

        // §6.1: every declaration at once (as concurrent requests would), durably in the pool.
        let service = server.service.clone();
        let n = pairs.len() as u64;
        let (report_time, mix_time, mixed) = rt.block_on(async move {
            let t0 = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for (token, body) in bodies {
                let service = service.clone();
                tasks.spawn(async move {
                    Ok::<_, anyhow::Error>(service.report(Some(token.as_str()), &body).await?)
                });
            }
            let accepted: u64 = join_all(tasks).await?.into_iter().sum();
            let report_time = t0.elapsed();
            ensure!(accepted == n, "{accepted} of {n} pairs accepted");
            // §6.2: one forced mixer pass over the whole pool, in batches of mixer_max_batch.
            let t1 = Instant::now();
            let mixed =
                tokio::spawn(async move { service.mix_once(true).await }).await.context("mixer task")??;
            Ok::<_, anyhow::Error>((report_time, t1.elapsed(), mixed))
        })?;
        let metrics = server.service.metrics();
        let processed = metrics.counter("pairs_processed").unwrap_or(0);
        let rejected = metrics.counter("pairs_rejected").unwrap_or(0);

        let total = report_time + mix_time;
        let rate = per_sec(n, total);
        let floor_rate = 1e9 / floor.floor_ns;
        let secs = |d: Duration| round(d.as_secs_f64());
        report.figure(
            "pairs_per_sec",
            rate,
            "1/s",
            json!({"what": "report (pool insert) + mix_once(true) (§6.2 steps 1-10, LEE writes), end to end",
                   "seconds": secs(total), "target": 200_000, "processed": processed, "rejected": rejected}),
        );
        report.figure(
            "report_pairs_per_sec",
            per_sec(n, report_time),
            "1/s",
            json!({"what": "Service::report: token check, decode, durable pool insert", "seconds": secs(report_time)}),
        );
        report.figure(
            "mix_pairs_per_sec",
            per_sec(mixed, mix_time),
            "1/s",
            json!({"what": "Service::mix_once(true): §6.2 checks, key unwrap, MAC, LEE writes, pool erase",
                   "seconds": secs(mix_time)}),
        );
        report.figure(
            "crypto_floor_ns_per_pair",
            floor.floor_ns,
            "ns",
            json!({"what": "SKINNY decrypt + ECC AES + HMAC-SHA256 verify (pre-keyed), one thread",
                   "samples": floor.samples, "skinny_decrypt_ns": round(floor.skinny_ns),
                   "ecc_aes_ns": round(floor.aes_ns), "hmac_verify_ns": round(floor.hmac_ns)}),
        );
        report.figure(
            "crypto_floor_pairs_per_sec_per_core",
            floor_rate,
            "1/s",
            json!({"ratio_of_pairs_per_sec_to_floor_on_all_cores": round(rate / (floor_rate * cores() as f64))}),
        );
        let batched = floor.skinny_batched_ns + floor.aes_ns + floor.hmac_ns;
        report.figure(
            "crypto_floor_batched_ns_per_pair",
            batched,
            "ns",
            json!({"what": "as crypto_floor_ns_per_pair with SKINNY decrypting 64 EBIDs at a time (bitsliced, \
                            EbidCipher::decrypt_many, as the mixer does)",
                   "skinny_decrypt_batched_ns": round(floor.skinny_batched_ns),
                   "pairs_per_sec_per_core": round(1e9 / batched)}),
        );
        report.figure(
            "key_unwrap_ns_per_pair",
            floor.unwrap_ns,
            "ns",
            json!({"what": "per matched pair, beyond the floor: AES-256-GCM unwrap of K_auth||K_enc + HMAC pre-keying, one thread"}),
        );
        eprintln!(
            "robert bench upload: {:.0} pairs/s end to end ({:.0}/s report, {:.0}/s mix) with {} IDs on {}; \
             crypto floor {:.0} ns/pair = {:.0} pairs/s/core (+{:.0} ns/pair key unwrap)",
            rate,
            per_sec(n, report_time),
            per_sec(mixed, mix_time),
            args.ids,
            args.common.storage.name(),
            floor.floor_ns,
            floor_rate,
            floor.unwrap_ns
        );
        ensure!(mixed == n && processed == n, "only {processed} of {n} pairs matched ({rejected} rejected)");
        drop(apps);
        drop(server);
        Ok(())
    }
}

fn make_pairs<S: Storage>(
    server: &Server<S>,
    apps: &[AppKeys],
    n: usize,
    rng: &mut ChaCha20Rng,
) -> Result<Vec<Pair>> {
    let cc = CountryCode::new(server.service.config().protocol.country_code);
    let first_day = *server.ciphers.keys().next().context("day keys")?;
    let from = NtpTime::from_unix(u64::from(first_day) * 86_400).context("era 0")?.seconds() + 60;
    let to = server.now.seconds() - 60;
    let mut pairs = Vec::with_capacity(n);
    for _ in 0..n {
        let app = rng.random_range(0..apps.len());
        let received = NtpTime::new(rng.random_range(from..=to));
        let sent = NtpTime::new(received.seconds() - rng.random_range(0..10));
        let epoch = server.schedule().epoch_at(sent).context("after the service start")?;
        let ebid = server.cipher_for(epoch)?.encrypt(epoch, apps[app].id);
        let ecc = server.secrets.federation.encrypt_country(&ebid, cc);
        let hello = Hello::build(&AuthKey::new(&apps[app].k_auth), ecc, ebid, sent);
        let rssi = Some(rng.random_range(-90..=-40));
        pairs.push(Pair { record: UploadRecord { hello, time: received, rssi }, app });
    }
    Ok(pairs)
}

struct Floor {
    floor_ns: f64,
    skinny_ns: f64,
    skinny_batched_ns: f64,
    aes_ns: f64,
    hmac_ns: f64,
    unwrap_ns: f64,
    samples: usize,
}

/// The per-pair crypto floor of §6.2 on one thread: SKINNY decryption of the EBID (step 4), the
/// ECC's AES (step 3), the HELLO's HMAC under a pre-keyed K_auth (step 8); best of 5 passes. And,
/// separately, what the mixer adds per matched pair: unwrapping the stored keys and pre-keying
/// HMAC.
fn crypto_floor<S: Storage>(server: &Server<S>, apps: &[AppKeys], pairs: &[Pair]) -> Result<Floor> {
    let sample = &pairs[..pairs.len().min(50_000)];
    let schedule = server.schedule();
    let mut cases = Vec::with_capacity(sample.len());
    for p in sample {
        let hello = p.record.hello;
        let epoch = schedule.epoch_at(p.record.time).context("after the service start")?;
        let (_, id) = server.cipher_for(epoch)?.decrypt(&hello.ebid());
        let keys = SessionKeys { k_auth: apps[p.app].k_auth.clone(), k_enc: apps[p.app].k_enc.clone() };
        let wrapped = server.secrets.kek.wrap_session_keys(&keys, &id.to_be_bytes())?;
        cases.push((hello, server.cipher_for(epoch)?.clone(), AuthKey::new(&keys.k_auth), wrapped, id));
    }
    let fed = &server.secrets.federation;
    let best = |f: &dyn Fn() -> usize| {
        (0..5)
            .map(|_| {
                let t = Instant::now();
                let ok = f();
                (t.elapsed().as_nanos() as f64 / cases.len() as f64, ok)
            })
            .fold((f64::INFINITY, 0), |(b, _), (ns, ok)| (b.min(ns), ok))
    };
    let (floor_ns, ok) = best(&|| {
        cases
            .iter()
            .filter(|(hello, cipher, auth, _, _)| {
                let cc = fed.decrypt_country(&hello.ebid(), hello.ecc());
                let (epoch, id) = cipher.decrypt(&hello.ebid());
                black_box((cc, epoch, id));
                hello.verify(auth).is_ok()
            })
            .count()
    });
    ensure!(ok == cases.len(), "the floor's MACs do not verify");
    // The three parts alone, to say where the floor goes.
    let (skinny_ns, _) = best(&|| {
        cases
            .iter()
            .filter(|(hello, cipher, _, _, _)| black_box(cipher.decrypt(&hello.ebid())).1.value() != 0)
            .count()
    });
    let (aes_ns, _) = best(&|| {
        cases
            .iter()
            .filter(|(hello, _, _, _, _)| {
                black_box(fed.decrypt_country(&hello.ebid(), hello.ecc())).value() != 0
            })
            .count()
    });
    // The mixer decrypts a batch's EBIDs with the bitsliced SKINNY (64 blocks at a time).
    let ebids: Vec<_> = cases.iter().map(|c| c.0.ebid()).collect();
    let batch_cipher = &cases.first().context("no pairs")?.1;
    let (skinny_batched_ns, _) = best(&|| black_box(batch_cipher.decrypt_many(&ebids)).len());
    let (hmac_ns, _) =
        best(&|| cases.iter().filter(|(hello, _, auth, _, _)| hello.verify(auth).is_ok()).count());
    let (unwrap_ns, ok) = best(&|| {
        cases
            .iter()
            .filter(|(_, _, _, wrapped, id)| {
                server
                    .secrets
                    .kek
                    .unwrap_session_keys(wrapped, &id.to_be_bytes())
                    .map(|k| black_box(AuthKey::new(&k.k_auth)))
                    .is_ok()
            })
            .count()
    });
    ensure!(ok == cases.len(), "the wrapped keys do not unwrap");
    Ok(Floor { floor_ns, skinny_ns, skinny_batched_ns, aes_ns, hmac_ns, unwrap_ns, samples: cases.len() })
}

// ---------------------------------------------------------------------------------------------
// status

fn status(args: &StatusArgs) -> Result<()> {
    ensure!(args.ids > 0 && args.clients > 0, "--ids and --clients must be > 0");
    let mut config = bench_config(&args.common);
    config.protocol.esr_min_interval_epochs = args.esr_interval;
    let apps = if args.esr_interval == 0 { "Apps may repeat (T = 0)" } else { "one App per ESR" };
    let report = Report::new(
        "status",
        json!({
            "seed": args.common.seed, "storage": args.common.storage.name(), "fsync": args.common.fsync_json(),
            "ids": args.ids, "clients": args.clients, "seconds": args.load.seconds,
            "client": args.load.client.name(), "client_threads": args.load.client_threads,
            "esr_min_interval_epochs": args.esr_interval,
            "apps": apps,
            "populate": format!("{:?}", args.populate).to_lowercase(),
        }),
    );
    with_backend(&args.common, config, StatusRun { args, report })
}

struct StatusRun<'a> {
    args: &'a StatusArgs,
    report: Report,
}

impl BackendRun for StatusRun<'_> {
    fn run<S: Storage>(self, rt: &tokio::runtime::Runtime, server: Server<S>) -> Result<()> {
        let StatusRun { args, report } = self;
        let mut rng = ChaCha20Rng::seed_from_u64(args.common.seed);
        let mut apps = rt.block_on(server.populate(args.ids, args.populate, &mut rng))?;
        // Which App asks when: a seeded shuffle.
        rand::seq::SliceRandom::shuffle(apps.as_mut_slice(), &mut rng);
        // A quarter of the Apps (at most 200 000) are kept apart for the storage diagnostics.
        let reserved = (apps.len() / 4).min(200_000);
        let diag: Vec<Id> = apps.split_off(apps.len() - reserved).iter().map(|a| a.id).collect();
        let crypto_ns = esr_crypto_ns(&server, &apps[..apps.len().min(20_000)])?;
        let t0 = Instant::now();
        let bodies = esr_bodies(&server, &apps)?;
        drop(apps);
        eprintln!("robert bench: built {} ESR bodies in {:.1} s", bodies.len(), t0.elapsed().as_secs_f64());

        // The storage half of an ESR alone, no HTTP, from as many concurrent tasks as clients:
        // §7 step 5's read, then steps 7-8's check-and-set (each ID once).
        let limits = if diag.is_empty() {
            None
        } else {
            Some(rt.block_on(storage_limits(&server, diag, args.clients, args.esr_interval))?)
        };

        let running = rt.block_on(server.serve())?;
        let spec = LoadSpec::new(running.addr, args.clients, &args.load);
        let esr = Arc::new(EsrWork { bodies, next: AtomicUsize::new(0), repeat: args.esr_interval == 0 });
        eprintln!("robert bench: ESRs over HTTP for {} s", args.load.seconds);
        let esr_result = spec.run(rt, esr.clone())?;
        eprintln!("robert bench: no-op requests over HTTP for {} s", args.load.seconds);
        let noop = spec.run(rt, Arc::new(NoopWork))?;
        rt.block_on(running.shutdown())?;

        let ratio = esr_result.rate() / noop.rate().max(1e-9);
        report.figure(
            "esr_per_sec",
            esr_result.rate(),
            "1/s",
            json!({"what": "POST /api/v1/status, each a valid ESR answered 200 (§7 steps 1-8)",
                   "requests": esr_result.ok, "errors": esr_result.bad, "target": 40_000}),
        );
        report.figure("esr_p50_us", esr_result.percentile(50.0), "us", json!({}));
        report.figure("esr_p99_us", esr_result.percentile(99.0), "us", json!({}));
        report.figure(
            "noop_per_sec",
            noop.rate(),
            "1/s",
            json!({"what": "GET /healthz, same server, clients and client", "requests": noop.ok, "errors": noop.bad}),
        );
        report.figure("noop_p50_us", noop.percentile(50.0), "us", json!({}));
        report.figure("noop_p99_us", noop.percentile(99.0), "us", json!({}));
        report.figure("esr_to_noop_ratio", ratio, "1", json!({"target": 0.5}));
        if let (Some(esr_cpu), Some(noop_cpu)) = (esr_result.cpu_us_per_unit(), noop.cpu_us_per_unit()) {
            report.figure(
                "esr_cpu_us",
                esr_cpu,
                "us",
                json!({"what": "CPU time of the process (server and load generator) per ESR answered"}),
            );
            report.figure("noop_cpu_us", noop_cpu, "us", json!({"what": "the same per no-op answered"}));
            report.figure(
                "noop_to_esr_cpu_ratio",
                noop_cpu / esr_cpu,
                "1",
                json!({"what": "what the throughput ratio is on saturated cores, from CPU time: hardly moved by \
                                other load on the machine"}),
            );
        }
        report.figure(
            "esr_crypto_ns",
            crypto_ns,
            "ns",
            json!({"what": "per ESR, one thread: SKINNY decrypt + AES-256-GCM key unwrap + HMAC pre-keying and \
                            request-MAC verify (§7 steps 3-6)"}),
        );
        if let Some([reads, writes, both]) = limits {
            report.figure(
                "storage_load_user_per_sec",
                reads,
                "1/s",
                json!({"what": "Storage::load_user alone (§7 step 5), concurrent tasks = clients, no HTTP"}),
            );
            report.figure(
                "storage_status_request_per_sec",
                writes,
                "1/s",
                json!({"what": "Storage::status_request alone (§7 steps 7-8, durable), concurrent tasks = clients, \
                                no HTTP"}),
            );
            report.figure(
                "storage_esr_per_sec",
                both,
                "1/s",
                json!({"what": "load_user then status_request, as an ESR does them, concurrent tasks = clients, \
                                no HTTP, no crypto"}),
            );
        }
        eprintln!(
            "robert bench status: {:.0} ESR/s (p50 {:.0} µs, p99 {:.0} µs) vs {:.0} no-op/s (p50 {:.0} µs, p99 {:.0} µs): \
             ratio {:.2}; {} clients, {} IDs on {}",
            esr_result.rate(),
            esr_result.percentile(50.0),
            esr_result.percentile(99.0),
            noop.rate(),
            noop.percentile(50.0),
            noop.percentile(99.0),
            ratio,
            args.clients,
            args.ids,
            args.common.storage.name()
        );
        if let (Some(esr_cpu), Some(noop_cpu)) = (esr_result.cpu_us_per_unit(), noop.cpu_us_per_unit()) {
            eprintln!(
                "robert bench status: CPU per request {esr_cpu:.1} µs (ESR) vs {noop_cpu:.1} µs (no-op): \
                 ratio {:.2}",
                noop_cpu / esr_cpu
            );
        }
        if let Some([reads, writes, both]) = limits {
            eprintln!(
                "robert bench status: storage alone, without HTTP: load_user {reads:.0}/s, status_request \
                 {writes:.0}/s, both in turn {both:.0}/s; ESR crypto {crypto_ns:.0} ns on one core"
            );
        }
        ensure!(
            !esr_result.exhausted,
            "ran out of Apps after {} ESRs: with T = {} each App asks once; use more --ids or --esr-interval 0",
            esr.next.load(Ordering::Relaxed),
            args.esr_interval
        );
        ensure!(esr_result.bad == 0 && noop.bad == 0, "some requests were not answered 200");
        drop(server);
        Ok(())
    }
}

/// The crypto of one ESR on the server (§7 steps 3-6), one thread, best of 5 passes.
fn esr_crypto_ns<S: Storage>(server: &Server<S>, apps: &[AppKeys]) -> Result<f64> {
    let epoch = server.now_epoch()?;
    let cipher = server.cipher_for(epoch)?;
    let mut cases = Vec::with_capacity(apps.len());
    for a in apps {
        let keys = SessionKeys { k_auth: a.k_auth.clone(), k_enc: a.k_enc.clone() };
        let wrapped = server.secrets.kek.wrap_session_keys(&keys, &a.id.to_be_bytes())?;
        let req = AuthRequest::new(
            &AuthKey::new(&a.k_auth),
            RequestCode::StatusRequest,
            cipher.encrypt(epoch, a.id),
            epoch,
            server.now,
        );
        cases.push((req, wrapped));
    }
    let kek = &server.secrets.kek;
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        let ok = cases
            .iter()
            .filter(|(req, wrapped)| {
                req.open_ebid(cipher)
                    .ok()
                    .and_then(|id| kek.unwrap_session_keys(wrapped, &id.to_be_bytes()).ok())
                    .is_some_and(|k| {
                        req.verify_mac(&AuthKey::new(&k.k_auth), RequestCode::StatusRequest).is_ok()
                    })
            })
            .count();
        ensure!(ok == cases.len(), "an ESR's crypto did not verify");
        best = best.min(t.elapsed().as_nanos() as f64 / cases.len().max(1) as f64);
    }
    Ok(best)
}

/// `[load_user/s, status_request/s, both/s]` from `clients` concurrent tasks, 2 s each, on the
/// server's runtime: the storage's share of an ESR without HTTP, each half alone, then both in
/// turn as an ESR does them (each ID's first ESR).
async fn storage_limits<S: Storage>(
    server: &Server<S>,
    ids: Vec<Id>,
    clients: usize,
    min_interval: u32,
) -> Result<[f64; 3]> {
    let ids = Arc::new(ids);
    let now = server.now_epoch()?;
    let period = Duration::from_secs(2);
    let mut rates = [0.0; 3];
    // Phases 1 and 2 spend IDs (one first ESR each): each has its half; a phase that runs out
    // stops early, and its rate is over the time it ran.
    let half = ids.len() / 2;
    for (phase, rate) in rates.iter_mut().enumerate() {
        let next = Arc::new(AtomicUsize::new(if phase == 2 { half } else { 0 }));
        let end = if phase == 1 { half } else { ids.len() };
        let t0 = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..clients {
            let (ids, next, service) = (ids.clone(), next.clone(), server.service.clone());
            tasks.spawn(async move {
                let mut n = 0u64;
                while t0.elapsed() < period {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let storage = service.storage();
                    if phase == 0 {
                        let id = ids[i % ids.len()];
                        ensure!(storage.load_user(id).await?.is_some(), "a registered ID is missing");
                    } else {
                        let Some(&id) = ids.get(i).filter(|_| i < end) else { break };
                        if phase == 2 {
                            ensure!(storage.load_user(id).await?.is_some(), "a registered ID is missing");
                        }
                        let outcome = storage.status_request(id, now, min_interval, false).await?;
                        ensure!(
                            outcome == robert_server::storage::StatusOutcome::Answer { at_risk: false },
                            "a first ESR was refused"
                        );
                    }
                    n += 1;
                }
                Ok::<_, anyhow::Error>(n)
            });
        }
        let n: u64 = join_all(tasks).await?.into_iter().sum();
        *rate = per_sec(n, t0.elapsed());
    }
    Ok(rates)
}

/// One ESR body per App, for the current epoch and time, built on every core.
fn esr_bodies<S: Storage>(server: &Server<S>, apps: &[AppKeys]) -> Result<Vec<Box<[u8]>>> {
    let epoch = server.now_epoch()?;
    let cipher = server.cipher_for(epoch)?.clone();
    let now = server.now;
    let chunk = apps.len().div_ceil(cores()).max(1);
    std::thread::scope(|s| {
        let parts: Vec<_> = apps
            .chunks(chunk)
            .map(|part| {
                let cipher = cipher.clone();
                s.spawn(move || {
                    part.iter()
                        .map(|a| {
                            let ebid = cipher.encrypt(epoch, a.id);
                            let req = AuthRequest::new(
                                &AuthKey::new(&a.k_auth),
                                RequestCode::StatusRequest,
                                ebid,
                                epoch,
                                now,
                            );
                            serde_json::to_vec(&AuthRequestBody::from_request(&req))
                                .map(Vec::into_boxed_slice)
                        })
                        .collect::<serde_json::Result<Vec<_>>>()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(apps.len());
        for p in parts {
            out.extend(p.join().map_err(|_| anyhow::anyhow!("a body-building thread panicked"))??);
        }
        Ok(out)
    })
}

/// ESRs: each client takes the next App's request.
struct EsrWork {
    bodies: Vec<Box<[u8]>>,
    next: AtomicUsize,
    /// T = 0: Apps may ask again (wrap around).
    repeat: bool,
}

impl Work for EsrWork {
    async fn step(&self, conn: &mut Conn) -> Result<Step> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let body = match self.bodies.get(i) {
            Some(b) => b,
            None if self.repeat => &self.bodies[i % self.bodies.len()],
            None => return Ok(Step::Exhausted),
        };
        let (status, _) = conn.call(Method::Post, "/api/v1/status", body, false).await?;
        Ok(if status == 200 { Step::Ok } else { Step::Unexpected(status) })
    }
}

/// The no-op endpoint.
struct NoopWork;

impl Work for NoopWork {
    async fn step(&self, conn: &mut Conn) -> Result<Step> {
        let (status, _) = conn.call(Method::Get, "/healthz", b"", false).await?;
        Ok(if status == 200 { Step::Ok } else { Step::Unexpected(status) })
    }
}

// ---------------------------------------------------------------------------------------------
// register

fn register(args: &RegisterArgs) -> Result<()> {
    ensure!(args.clients > 0 && args.key_pool > 0, "--clients and --key-pool must be > 0");
    let config = bench_config(&args.common);
    let report = Report::new(
        "register",
        json!({
            "seed": args.common.seed, "storage": args.common.storage.name(), "fsync": args.common.fsync_json(),
            "clients": args.clients, "seconds": args.load.seconds, "client": args.load.client.name(),
            "client_threads": args.load.client_threads, "pow_difficulty": 0, "key_pool": args.key_pool,
        }),
    );
    with_backend(&args.common, config, RegisterRun { args, report })
}

struct RegisterRun<'a> {
    args: &'a RegisterArgs,
    report: Report,
}

impl BackendRun for RegisterRun<'_> {
    fn run<S: Storage>(self, rt: &tokio::runtime::Runtime, server: Server<S>) -> Result<()> {
        let RegisterRun { args, report } = self;
        let mut rng = ChaCha20Rng::seed_from_u64(args.common.seed);
        let publics: Vec<PublicKey> =
            (0..args.key_pool).map(|_| AppEphemeralKey::generate(&mut rng).public_key().clone()).collect();

        // The reference: raw ECDH with the server's own key, server idle.
        let (one, ecdh_per_cpu_sec) =
            ecdh_rate(&server.secrets.registration, &publics, 1, Duration::from_secs(2));
        let (all, _) = ecdh_rate(&server.secrets.registration, &publics, cores(), Duration::from_secs(2));

        eprintln!(
            "robert bench: ECDH {one:.0}/s on one thread, {all:.0}/s on {} threads; now registering over HTTP",
            cores()
        );
        let running = rt.block_on(server.serve())?;
        // One registration done in full, as an App would (ECDH, opening the list), to check the
        // path the load takes.
        rt.block_on(check_registration(
            running.addr,
            AppEphemeralKey::generate(&mut rng),
            server.service.server_public_key(),
        ))?;
        let work = Arc::new(RegisterWork {
            keys: publics.iter().map(|p| b64_encode(p.as_bytes())).collect(),
            next: AtomicUsize::new(0),
        });
        let spec = LoadSpec::new(running.addr, args.clients, &args.load);
        let sampler = CpuSampler::spawn(server.service.clone(), &args.load);
        let result = spec.run(rt, work)?;
        let cpu = sampler.join();
        // The HTTP stack's share: a registration is two round trips (challenge, then register).
        eprintln!("robert bench: no-op requests over HTTP for {} s", args.load.seconds);
        let noop = spec.run(rt, Arc::new(NoopWork))?;
        rt.block_on(running.shutdown())?;

        report.figure(
            "registrations_per_sec",
            result.rate(),
            "1/s",
            json!({"what": "POST /api/v1/register/challenge + POST /api/v1/register (201), difficulty 0",
                   "registrations": result.ok, "errors": result.bad}),
        );
        report.figure("register_p50_us", result.percentile(50.0), "us", json!({"what": "both requests"}));
        report.figure("register_p99_us", result.percentile(99.0), "us", json!({"what": "both requests"}));
        report.figure(
            "ecdh_per_sec_one_thread",
            one,
            "1/s",
            json!({"what": "Registration::agree (files key store: P-256 + HMAC derivation)"}),
        );
        report.figure("ecdh_per_sec_all_cores", all, "1/s", json!({"threads": cores()}));
        report.figure(
            "noop_per_sec",
            noop.rate(),
            "1/s",
            json!({"what": "GET /healthz, same server, clients and client, after the registrations",
                   "requests": noop.ok, "errors": noop.bad}),
        );
        report.figure(
            "registrations_to_ecdh_ratio",
            result.rate() / all.max(1e-9),
            "1",
            json!({"target": 0.5}),
        );
        // The same comparison per CPU-second consumed, which other load on the machine does not
        // skew (the wall-clock figures above compare two moments of a shared machine).
        report.figure(
            "ecdh_per_cpu_sec",
            ecdh_per_cpu_sec,
            "1/s",
            json!({"what": "Registration::agree per second of the measuring thread's CPU time"}),
        );
        if let Some(cpu) = &cpu {
            let per_cpu = |ns: u64| cpu.registrations as f64 / (ns as f64 / 1e9).max(1e-9);
            report.figure(
                "registrations_per_cpu_sec",
                per_cpu(cpu.server_ns + cpu.client_ns),
                "1/s",
                json!({"what": "registrations per second of CPU time of every thread of the process \
                                (server, and the load generator)", "registrations": cpu.registrations}),
            );
            if args.load.client_threads > 0 {
                let server_rate = per_cpu(cpu.server_ns);
                report.figure(
                    "registrations_per_server_cpu_sec",
                    server_rate,
                    "1/s",
                    json!({"what": "registrations per second of CPU time of the threads other than the \
                                    load generator's (its own runtime: --client-threads)"}),
                );
                report.figure(
                    "registrations_to_ecdh_cpu_ratio",
                    server_rate / ecdh_per_cpu_sec.max(1e-9),
                    "1",
                    json!({"what": "the share of the server's CPU time that the ECDH takes", "target": 0.5}),
                );
            }
        }
        // What the HTTP round trips alone leave for the ratio: the CPU of one ECDH, beside the CPU
        // of a registration and of two no-op round trips (each with its load-generator side).
        let ceiling = match (result.cpu_us_per_unit(), noop.cpu_us_per_unit()) {
            (Some(register_cpu), Some(noop_cpu)) if ecdh_per_cpu_sec > 0.0 => {
                let ecdh_cpu = 1e6 / ecdh_per_cpu_sec;
                let ceiling = ecdh_cpu / (ecdh_cpu + 2.0 * noop_cpu);
                report.figure(
                    "register_cpu_us",
                    register_cpu,
                    "us",
                    json!({"what": "CPU time of the process (server and load generator) per registration"}),
                );
                report.figure("noop_cpu_us", noop_cpu, "us", json!({"what": "the same per no-op answered"}));
                report.figure(
                    "ecdh_cpu_us",
                    ecdh_cpu,
                    "us",
                    json!({"what": "CPU time of one Registration::agree"}),
                );
                report.figure(
                    "registrations_to_ecdh_ceiling",
                    ceiling,
                    "1",
                    json!({"what": "the ratio a registration would reach if it cost only its ECDH and two round \
                                    trips at the no-op's cost: ecdh_cpu_us / (ecdh_cpu_us + 2 noop_cpu_us)"}),
                );
                Some((register_cpu, noop_cpu, ecdh_cpu, ceiling))
            }
            _ => None,
        };
        eprintln!(
            "robert bench register: {:.0} registrations/s (p50 {:.0} µs, p99 {:.0} µs) vs ECDH {:.0}/s on one thread, \
             {:.0}/s on {} cores: ratio {:.2}",
            result.rate(),
            result.percentile(50.0),
            result.percentile(99.0),
            one,
            all,
            cores(),
            result.rate() / all.max(1e-9)
        );
        if let Some((register_cpu, noop_cpu, ecdh_cpu, ceiling)) = ceiling {
            eprintln!(
                "robert bench register: CPU per registration {register_cpu:.1} µs = ECDH {ecdh_cpu:.1} µs + two \
                 no-op round trips {:.1} µs + the rest {:.1} µs; ECDH and round trips alone would allow a ratio \
                 of {ceiling:.2}",
                2.0 * noop_cpu,
                register_cpu - ecdh_cpu - 2.0 * noop_cpu
            );
        }
        ensure!(result.bad == 0 && noop.bad == 0, "some requests were not answered 201 / 200");
        drop(server);
        Ok(())
    }
}

/// ECDH agreements per second with the server's key on `threads` threads: per second of wall
/// clock, and per second of the threads' CPU time (0 where Linux's schedstat is missing).
fn ecdh_rate(pair: &keystore::Registration, peers: &[PublicKey], threads: usize, d: Duration) -> (f64, f64) {
    let t0 = Instant::now();
    let (total, cpu_ns): (u64, u64) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let cpu0 = own_cpu_ns();
                    let mut n = 0u64;
                    let mut i = t;
                    while t0.elapsed() < d {
                        for _ in 0..16 {
                            let _ = black_box(pair.agree(&peers[i % peers.len()]));
                            i += 1;
                            n += 1;
                        }
                    }
                    (n, own_cpu_ns().zip(cpu0).map_or(0, |(b, a)| b.saturating_sub(a)))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or((0, 0)))
            .fold((0, 0), |(n, c), (dn, dc)| (n + dn, c + dc))
    });
    let per_cpu = if cpu_ns > 0 { total as f64 / (cpu_ns as f64 / 1e9) } else { 0.0 };
    (per_sec(total, t0.elapsed()), per_cpu)
}

/// CPU time the calling thread has run, nanoseconds (Linux `/proc/thread-self/schedstat`).
fn own_cpu_ns() -> Option<u64> {
    schedstat_ns(Path::new("/proc/thread-self/schedstat"))
}

fn schedstat_ns(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.split_whitespace().next()?.parse().ok()
}

/// CPU time of this process's live threads, nanoseconds: the load generator's (threads named
/// `robert-bench-client`) and all others (the server's). `None` without Linux's schedstat.
fn thread_cpu_ns() -> Option<(u64, u64)> {
    let (mut server, mut client) = (0u64, 0u64);
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        // A thread may end between the listing and the reads: skip it.
        let Some(ns) = schedstat_ns(&task.path().join("schedstat")) else { continue };
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        // `comm` is the thread name cut to 15 bytes.
        if comm.trim_end().starts_with("robert-bench-cl") {
            client += ns;
        } else {
            server += ns;
        }
    }
    Some((server, client))
}

/// What [`CpuSampler`] measured over the load's measured window.
struct CpuWindow {
    /// Registrations the service completed in the window.
    registrations: u64,
    /// CPU time of the server's threads (with the in-process clients when they share them).
    server_ns: u64,
    /// CPU time of the load generator's own threads (`--client-threads`), else 0.
    client_ns: u64,
}

/// Samples the process's CPU time and the service's registration counter at the start and the
/// end of the measured window (after the warm-up), on a thread of its own.
struct CpuSampler(std::thread::JoinHandle<Option<CpuWindow>>);

impl CpuSampler {
    fn spawn<S: Storage>(service: Arc<Service<S>>, load: &LoadArgs) -> Self {
        let warmup = Duration::from_secs_f64(load.warmup.max(0.0));
        let window = Duration::from_secs_f64(load.seconds.max(0.001));
        Self(std::thread::spawn(move || {
            let sample = || Some((thread_cpu_ns()?, service.metrics().counter("registrations")?));
            std::thread::sleep(warmup);
            let ((s0, c0), r0) = sample()?;
            std::thread::sleep(window);
            let ((s1, c1), r1) = sample()?;
            Some(CpuWindow {
                registrations: r1.saturating_sub(r0),
                server_ns: s1.saturating_sub(s0),
                client_ns: c1.saturating_sub(c0),
            })
        }))
    }

    fn join(self) -> Option<CpuWindow> {
        self.0.join().ok().flatten()
    }
}

async fn check_registration(addr: SocketAddr, key: AppEphemeralKey, server_key: &PublicKey) -> Result<()> {
    let mut conn = Conn::connect(addr, ClientKind::Raw).await?;
    let (status, body) = conn.call(Method::Post, "/api/v1/register/challenge", b"", true).await?;
    ensure!(status == 200, "challenge answered {status}");
    let ch: ChallengeResponse = serde_json::from_slice(&body)?;
    let solution = pow::solve(&b64_decode("challenge", &ch.challenge)?, ch.difficulty, 0).context("pow")?;
    let req = RegisterRequest {
        challenge: ch.challenge,
        solution: b64_encode(&solution),
        client_public_key: b64_encode(key.public_key().as_bytes()),
    };
    let (status, body) =
        conn.call(Method::Post, "/api/v1/register", &serde_json::to_vec(&req)?, true).await?;
    ensure!(status == 201, "register answered {status}");
    let resp: robert_proto::api::RegisterResponse = serde_json::from_slice(&body)?;
    let keys = key.agree(server_key);
    let list = sealed::open(&keys.k_enc, &b64_decode("ebids", &resp.ebids)?)?;
    ensure!(
        list.first().map(|e| e.epoch.number()) == Some(resp.epoch),
        "the registration's EBID list does not start at its epoch"
    );
    Ok(())
}

/// Registrations: challenge, solve (difficulty 0: one SHA-256), register with the next pool key.
struct RegisterWork {
    keys: Vec<String>,
    next: AtomicUsize,
}

impl Work for RegisterWork {
    async fn step(&self, conn: &mut Conn) -> Result<Step> {
        let (status, body) = conn.call(Method::Post, "/api/v1/register/challenge", b"", true).await?;
        if status != 200 {
            return Ok(Step::Unexpected(status));
        }
        let ch: ChallengeResponse = serde_json::from_slice(&body)?;
        let solution =
            pow::solve(&b64_decode("challenge", &ch.challenge)?, ch.difficulty, 0).context("pow")?;
        let key = &self.keys[self.next.fetch_add(1, Ordering::Relaxed) % self.keys.len()];
        let req = serde_json::to_vec(&RegisterRequest {
            challenge: ch.challenge,
            solution: b64_encode(&solution),
            client_public_key: key.clone(),
        })?;
        let (status, _) = conn.call(Method::Post, "/api/v1/register", &req, false).await?;
        Ok(if status == 201 { Step::Ok } else { Step::Unexpected(status) })
    }
}

// ---------------------------------------------------------------------------------------------
// expiry

fn expiry(args: &ExpiryArgs) -> Result<()> {
    ensure!(
        args.rows > 0 && (1..=1344).contains(&args.epochs_per_id),
        "--rows must be > 0 and --epochs-per-id in 1..=1344 (CT days of 15-min epochs)"
    );
    let config = bench_config(&args.common);
    let report = Report::new(
        "expiry",
        json!({
            "seed": args.common.seed, "storage": args.common.storage.name(), "fsync": args.common.fsync_json(),
            "rows": args.rows, "epochs_per_id": args.epochs_per_id,
        }),
    );
    with_backend(&args.common, config, ExpiryRun { args, report })
}

struct ExpiryRun<'a> {
    args: &'a ExpiryArgs,
    report: Report,
}

impl BackendRun for ExpiryRun<'_> {
    fn run<S: Storage>(self, rt: &tokio::runtime::Runtime, server: Server<S>) -> Result<()> {
        let ExpiryRun { args, report } = self;
        let service = server.service.clone();
        let epochs = server.service.config().protocol.ct_days * 86_400
            / server.service.config().protocol.epoch_duration_sec;
        let last = server.now_epoch()?.number();
        let first = last + 1 - epochs;
        let ids = args.rows.div_ceil(args.epochs_per_id);
        let mut rng = ChaCha20Rng::seed_from_u64(args.common.seed);
        let apps = rt.block_on(server.populate(ids, Populate::Storage, &mut rng))?;
        // LEE_A through the mixer's own path: pool entries (declarations of 10 000 pairs), then
        // pool_commit with one exposure per pair, each ID at `epochs_per_id` distinct epochs
        // spread over the last CT days. Several batches in flight.
        let rows: Vec<(Id, u32)> = apps
            .iter()
            .flat_map(|a| {
                let offset = rng.random_range(0..epochs);
                let stride = (epochs / args.epochs_per_id as u32).max(1);
                (0..args.epochs_per_id as u32).map(move |k| (a.id, first + (offset + k * stride) % epochs))
            })
            .take(args.rows)
            .collect();
        let rows = Arc::new(rows);
        let t0 = Instant::now();
        let done = Arc::new(AtomicUsize::new(0));
        rt.block_on(async {
            const CHUNK: usize = 10_000;
            let chunks = rows.len().div_ceil(CHUNK);
            let workers = 4.min(chunks);
            let mut tasks = tokio::task::JoinSet::new();
            for w in 0..workers {
                let (rows, service, done) = (rows.clone(), service.clone(), done.clone());
                tasks.spawn(async move {
                    for c in (w..chunks).step_by(workers) {
                        let part = &rows[c * CHUNK..((c + 1) * CHUNK).min(rows.len())];
                        let slots: Vec<[u8; 16]> = (0..part.len())
                            .map(|i| {
                                let mut s = [0u8; 16];
                                s[..8].copy_from_slice(&((c * CHUNK + i) as u64).to_be_bytes());
                                s[8..].copy_from_slice(&0x6578_7069_7279_u64.to_be_bytes());
                                s
                            })
                            .collect();
                        let entries = slots
                            .iter()
                            .map(|s| robert_server::storage::PoolEntry { slot: *s, record: vec![0; 20] });
                        let token = robert_server::storage::TokenUse {
                            jti: format!("bench-expiry-{c}"),
                            expires_unix: u64::MAX >> 1,
                        };
                        let storage = service.storage();
                        ensure!(
                            storage.submit_report(token, entries.collect()).await?,
                            "a jti was spent twice"
                        );
                        let exposures = part
                            .iter()
                            .zip(&slots)
                            .map(|((id, epoch), slot)| {
                                let epoch = Epoch::new(*epoch).context("24-bit epoch")?;
                                let e = robert_server::storage::Exposure {
                                    epoch,
                                    hellos: 1,
                                    rssi_sum: -60,
                                    rssi_count: 1,
                                };
                                Ok((*id, e, *slot))
                            })
                            .collect::<Result<Vec<_>>>()?;
                        let batch = robert_server::storage::ProcessedBatch {
                            slots: slots.clone(),
                            exposures,
                            outbox: Vec::new(),
                        };
                        let erased = storage.pool_commit(batch).await?;
                        ensure!(
                            erased as usize == part.len(),
                            "pool_commit erased {erased} of {}",
                            part.len()
                        );
                        progress(&done, chunks, "exposure batches");
                    }
                    Ok::<_, anyhow::Error>(())
                });
            }
            while let Some(joined) = tasks.join_next().await {
                joined.context("a fill task panicked")??;
            }
            Ok::<_, anyhow::Error>(())
        })?;
        let fill = t0.elapsed();
        report.figure(
            "fill_exposures_per_sec",
            per_sec(rows.len() as u64, fill),
            "rows/s",
            json!({"what": "LEE_A rows written through submit_report + pool_commit (10 000 pairs per batch, \
                            4 batches in flight), the mixer's storage path without its crypto"}),
        );
        eprintln!(
            "robert bench expiry: {} LEE_A rows for {} IDs over epochs {first}..={last} in {:.1} s",
            rows.len(),
            apps.len(),
            fill.as_secs_f64()
        );
        let storage = service.storage();
        let measure = |what: &str, before: u32| -> Result<()> {
            let before_epoch = Epoch::new(before).context("24-bit epoch")?;
            let t = Instant::now();
            let s = rt.block_on(storage.expire(before_epoch, 0, 0))?;
            let took = t.elapsed();
            report.figure(
                &format!("expire_{what}_seconds"),
                took.as_secs_f64(),
                "s",
                json!({"what": format!("Storage::expire removing LEE_A rows with epoch < {before} ({what})"),
                       "rows_removed": s.exposures, "rows_before": rows.len(),
                       "rows_per_sec": round(per_sec(s.exposures, took))}),
            );
            eprintln!(
                "robert bench expiry: {what}: {} rows removed in {:.3} s",
                s.exposures,
                took.as_secs_f64()
            );
            Ok(())
        };
        // The upkeep job's steady state: the oldest epoch leaves the CT window.
        measure("one_epoch", first + 1)?;
        // Catching up after a day without upkeep: a day of epochs at once.
        measure("one_day", first + 1 + 86_400 / server.service.config().protocol.epoch_duration_sec)?;
        // The common case of a pass: nothing is old enough.
        measure("nothing", first + 1 + 86_400 / server.service.config().protocol.epoch_duration_sec)?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// storage

fn storage(args: &StorageArgs) -> Result<()> {
    ensure!(args.ids > 0, "--ids must be > 0");
    let report = Report::new("storage", json!({"seed": args.seed, "ids": args.ids}));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;

    // Memory first, on a fresh heap: resident-set growth while N users go into MemoryStorage,
    // and the layout estimate.
    let (rss, estimate) = rt.block_on(memory_size(args.ids, args.seed))?;
    report.figure(
        "memory_bytes_per_id_estimate",
        estimate.total,
        "B",
        json!({"what": "HashMap<Id, User> bucket (size of (Id, User) + 1 control byte) times buckets/N \
                        (power-of-two buckets at most 7/8 full), plus the 92-byte wrapped-key Vec's heap \
                        chunk (glibc: 112 B)",
               "bucket_bytes": estimate.bucket, "buckets": estimate.buckets, "heap_bytes": estimate.heap,
               "target": 200}),
    );
    if let Some(rss) = rss {
        report.figure(
            "memory_bytes_per_id_rss",
            rss,
            "B",
            json!({"what": "growth of the process's resident set while inserting N users into MemoryStorage, / N"}),
        );
    }

    // SQLite: the file after N registrations, minus an empty database's, per ID.
    let (sqlite_bytes, empty_bytes, insert_time) = rt.block_on(sqlite_size(args.ids, args.seed))?;
    let per_id = (sqlite_bytes.saturating_sub(empty_bytes)) as f64 / args.ids as f64;
    report.figure(
        "sqlite_bytes_per_id",
        per_id,
        "B",
        json!({"what": "robert.db size after N insert_user (keys wrapped as the service does, random 40-bit IDs) \
                        and a WAL checkpoint, minus an empty database, divided by N",
               "file_bytes": sqlite_bytes, "empty_file_bytes": empty_bytes, "target": 200,
               "insert_per_sec": round(per_sec(args.ids as u64, insert_time)), "fsync": false}),
    );
    eprintln!(
        "robert bench storage: {:.0} B/ID in SQLite ({} IDs, {:.1} MB file); in memory {:.0} B/ID estimated{}",
        per_id,
        args.ids,
        sqlite_bytes as f64 / 1e6,
        estimate.total,
        rss.map(|r| format!(", {r:.0} B/ID measured (RSS)")).unwrap_or_default()
    );
    Ok(())
}

async fn sqlite_size(n: usize, seed: u64) -> Result<(u64, u64, Duration)> {
    let dir = data_dir()?;
    let empty_path = dir.path().join("empty.db");
    drop(SqliteStorage::open(&empty_path, false)?);
    let empty = file_size(&empty_path)?;
    let path = dir.path().join("robert.db");
    // fsync off: it changes how long the inserts take, not what the file holds.
    let storage = Arc::new(SqliteStorage::open(&path, false)?);
    let kek_dir = dir.path().join("keys");
    keystore::keygen(&kek_dir, &mut ChaCha20Rng::seed_from_u64(seed))?;
    let secrets = Arc::new(ServerSecrets::load(&kek_dir)?);
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let ids: Vec<(Id, KAuth, KEnc)> =
        (0..n).map(|_| (random_id(&mut rng), KAuth::random(&mut rng), KEnc::random(&mut rng))).collect();
    let ids = Arc::new(ids);
    let done = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let workers = 1024.min(n);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let (ids, storage, secrets, done) = (ids.clone(), storage.clone(), secrets.clone(), done.clone());
        tasks.spawn(async move {
            for (id, k_auth, k_enc) in ids.iter().skip(w).step_by(workers) {
                let keys = SessionKeys { k_auth: k_auth.clone(), k_enc: k_enc.clone() };
                // A duplicate draw (p ~ N^2 / 2^41) is refused and simply not counted twice.
                storage.insert_user(*id, secrets.kek.wrap_session_keys(&keys, &id.to_be_bytes())?).await?;
                progress(&done, ids.len(), "sqlite inserts");
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    join_all(tasks).await?;
    let elapsed = t0.elapsed();
    let users = storage.stats().await?.users;
    // Closing the storage checkpoints the WAL into the file.
    drop(Arc::try_unwrap(storage).map_err(|_| anyhow::anyhow!("storage still shared"))?);
    let size = file_size(&path)? + file_size(&path.with_extension("db-wal")).unwrap_or(0);
    ensure!(users as usize + 2 >= n, "only {users} of {n} users stored");
    Ok((size, empty, elapsed))
}

fn file_size(p: &Path) -> Result<u64> {
    Ok(std::fs::metadata(p).with_context(|| format!("{}", p.display()))?.len())
}

/// CPU time (user + system, every thread) this process has used so far, from `/proc/self/stat`
/// (Linux, in USER_HZ = 100 ticks per second); `None` elsewhere.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces, in parentheses): state is the first,
    // utime the 12th, stime the 13th.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

fn random_id(rng: &mut ChaCha20Rng) -> Id {
    Id::new(rng.random_range(0..=Id::MAX)).expect("drawn in range")
}

struct MemoryEstimate {
    total: f64,
    bucket: usize,
    buckets: usize,
    heap: usize,
}

async fn memory_size(n: usize, seed: u64) -> Result<(Option<f64>, MemoryEstimate)> {
    let dir = data_dir()?;
    keystore::keygen(dir.path(), &mut ChaCha20Rng::seed_from_u64(seed))?;
    let secrets = ServerSecrets::load(dir.path())?;
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let storage = MemoryStorage::new();
    let before = resident_bytes();
    let mut stored = 0usize;
    while stored < n {
        let id = random_id(&mut rng);
        let keys = SessionKeys { k_auth: KAuth::random(&mut rng), k_enc: KEnc::random(&mut rng) };
        let wrapped = secrets.kek.wrap_session_keys(&keys, &id.to_be_bytes())?;
        if storage.insert_user(id, wrapped).await? {
            stored += 1;
        }
    }
    let after = resident_bytes();
    ensure!(storage.stats().await?.users as usize == n, "memory storage lost users");
    let rss = before.zip(after).map(|(b, a)| a.saturating_sub(b) as f64 / n as f64);

    let layout = MemoryStorage::layout_estimate(n);
    let (total, bucket, buckets, heap) =
        (layout.bytes_per_user, layout.bucket_bytes, layout.buckets, layout.heap_bytes_per_user);
    drop(storage);
    Ok((rss, MemoryEstimate { total, bucket, buckets, heap }))
}

/// The process's resident set size (Linux `/proc/self/statm`, pages of 4 KiB).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

// ---------------------------------------------------------------------------------------------
// The HTTP load generator.

/// What one unit of work ended with.
enum Step {
    /// Accepted with the expected status.
    Ok,
    /// Answered with another status.
    Unexpected(u16),
    /// Nothing left to send (every App has asked).
    Exhausted,
}

/// One unit of load (one or more requests on one connection).
trait Work: Send + Sync + 'static {
    fn step(&self, conn: &mut Conn) -> impl Future<Output = Result<Step>> + Send;
}

/// A closed-loop load: `clients` connections, each with one request in flight.
struct LoadSpec {
    addr: SocketAddr,
    clients: usize,
    warmup: Duration,
    duration: Duration,
    kind: ClientKind,
    client_threads: usize,
}

/// What the clients saw in the measured window.
#[derive(Default)]
struct LoadResult {
    ok: u64,
    bad: u64,
    exhausted: bool,
    elapsed: Duration,
    /// CPU time of the whole process (server and load generator) over the measured window.
    cpu: Option<Duration>,
    /// Latencies of the accepted units, microseconds, sorted.
    latencies_us: Vec<u32>,
}

impl LoadResult {
    /// CPU microseconds per accepted unit (all of the process's threads: server and clients),
    /// over the measured window: unlike the rate, hardly moved by other load on the machine.
    fn cpu_us_per_unit(&self) -> Option<f64> {
        let cpu = self.cpu?;
        (self.ok > 0).then(|| cpu.as_secs_f64() * 1e6 / self.ok as f64)
    }

    fn rate(&self) -> f64 {
        per_sec(self.ok, self.elapsed)
    }

    fn percentile(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() as f64 * p / 100.0) as usize).min(self.latencies_us.len() - 1);
        f64::from(self.latencies_us[i])
    }
}

#[derive(Default)]
struct ClientStats {
    ok: u64,
    bad: u64,
    exhausted: bool,
    last: Option<Instant>,
    latencies_us: Vec<u32>,
}

impl LoadSpec {
    fn new(addr: SocketAddr, clients: usize, load: &LoadArgs) -> Self {
        Self {
            addr,
            clients,
            warmup: Duration::from_secs_f64(load.warmup.max(0.0)),
            duration: Duration::from_secs_f64(load.seconds.max(0.001)),
            kind: load.client,
            client_threads: load.client_threads,
        }
    }

    /// Connects every client, then runs the warm-up and the measured window.
    fn run<W: Work>(&self, server_rt: &tokio::runtime::Runtime, work: Arc<W>) -> Result<LoadResult> {
        let own;
        let rt = if self.client_threads == 0 {
            server_rt
        } else {
            own = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(self.client_threads)
                .thread_name("robert-bench-client")
                .enable_all()
                .build()?;
            &own
        };
        rt.block_on(async {
            let mut conns = Vec::with_capacity(self.clients);
            for _ in 0..self.clients {
                conns.push(Conn::connect(self.addr, self.kind).await?);
            }
            let start = Instant::now() + self.warmup;
            let end = start + self.duration;
            let cpu = tokio::spawn(async move {
                tokio::time::sleep_until(start.into()).await;
                let before = process_cpu();
                tokio::time::sleep_until(end.into()).await;
                before.zip(process_cpu()).map(|(a, b)| b.saturating_sub(a))
            });
            let mut tasks = tokio::task::JoinSet::new();
            for mut conn in conns {
                let work = work.clone();
                tasks.spawn(async move {
                    let mut s =
                        ClientStats { latencies_us: Vec::with_capacity(1 << 16), ..Default::default() };
                    loop {
                        let t = Instant::now();
                        if t >= end {
                            break;
                        }
                        let step = work.step(&mut conn).await?;
                        let done = Instant::now();
                        let counted = t >= start;
                        match step {
                            Step::Exhausted => {
                                s.exhausted = true;
                                break;
                            }
                            Step::Ok if counted => {
                                s.ok += 1;
                                s.latencies_us.push((done - t).as_micros().min(u128::from(u32::MAX)) as u32);
                            }
                            Step::Ok => {}
                            Step::Unexpected(status) => {
                                if s.bad == 0 {
                                    eprintln!("robert bench: unexpected HTTP status {status}");
                                }
                                s.bad += 1;
                            }
                        }
                        if counted {
                            s.last = Some(done);
                        }
                    }
                    Ok(s)
                });
            }
            let mut result = LoadResult::default();
            let mut last = start;
            for s in join_all(tasks).await? {
                result.ok += s.ok;
                result.bad += s.bad;
                result.exhausted |= s.exhausted;
                result.latencies_us.extend(s.latencies_us);
                last = last.max(s.last.unwrap_or(start));
            }
            result.elapsed = last.saturating_duration_since(start);
            result.latencies_us.sort_unstable();
            result.cpu = cpu.await.ok().flatten();
            Ok(result)
        })
    }
}

/// HTTP methods the benchmarks use.
#[derive(Clone, Copy)]
enum Method {
    Get,
    Post,
}

/// One client connection.
enum Conn {
    Raw(RawConn),
    Reqwest { client: reqwest::Client, base: String },
}

impl Conn {
    async fn connect(addr: SocketAddr, kind: ClientKind) -> Result<Self> {
        Ok(match kind {
            ClientKind::Raw => Conn::Raw(RawConn::connect(addr).await?),
            ClientKind::Reqwest => {
                // One pool per client: each keeps its own keep-alive connection, like the raw one.
                let client = reqwest::Client::builder().tcp_nodelay(true).build()?;
                Conn::Reqwest { client, base: format!("http://{addr}") }
            }
        })
    }

    /// Sends one request; returns the status and, if `want_body`, the body.
    async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: &[u8],
        want_body: bool,
    ) -> Result<(u16, Vec<u8>)> {
        match self {
            Conn::Raw(c) => c.call(method, path, body, want_body).await,
            Conn::Reqwest { client, base } => {
                let url = format!("{base}{path}");
                let req = match method {
                    Method::Get => client.get(url),
                    Method::Post => client
                        .post(url)
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(body.to_vec()),
                };
                let resp = req.send().await?;
                let status = resp.status().as_u16();
                let bytes = resp.bytes().await?;
                Ok((status, if want_body { bytes.to_vec() } else { Vec::new() }))
            }
        }
    }
}

/// A minimal HTTP/1.1 client on one keep-alive connection: writes a request, reads one response
/// delimited by `content-length` (every answer of this server has one). Just enough for a load
/// generator that must cost the shared CPU as little as possible.
struct RawConn {
    stream: tokio::net::TcpStream,
    host: String,
    out: Vec<u8>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl RawConn {
    async fn connect(addr: SocketAddr) -> Result<Self> {
        let stream =
            tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connecting {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            host: addr.to_string(),
            out: Vec::with_capacity(512),
            buf: vec![0; 16 << 10],
            start: 0,
            end: 0,
        })
    }

    async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: &[u8],
        want_body: bool,
    ) -> Result<(u16, Vec<u8>)> {
        self.out.clear();
        match method {
            Method::Get => write!(self.out, "GET {path} HTTP/1.1\r\nhost: {}\r\n\r\n", self.host)?,
            Method::Post => {
                write!(
                    self.out,
                    "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    self.host,
                    body.len()
                )?;
                self.out.extend_from_slice(body);
            }
        }
        self.send().await?;
        let (head, status, len) = loop {
            if let Some(h) = parse_head(&self.buf[self.start..self.end])? {
                break h;
            }
            self.fill().await?;
        };
        while self.end - self.start < head + len {
            self.fill().await?;
        }
        let body = if want_body {
            self.buf[self.start + head..self.start + head + len].to_vec()
        } else {
            Vec::new()
        };
        self.start += head + len;
        Ok((status, body))
    }

    async fn send(&mut self) -> std::io::Result<()> {
        let mut off = 0;
        while off < self.out.len() {
            self.stream.writable().await?;
            match self.stream.try_write(&self.out[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads more bytes into the buffer (compacting or growing it first if full).
    async fn fill(&mut self) -> std::io::Result<()> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        loop {
            self.stream.readable().await?;
            match self.stream.try_read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the server closed the connection",
                    ));
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Parses a response head: `(head length, status, content length)`, or `None` if incomplete.
fn parse_head(bytes: &[u8]) -> Result<Option<(usize, u16, usize)>> {
    let Some(pos) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        ensure!(bytes.len() < 64 << 10, "response head too long");
        return Ok(None);
    };
    let head = std::str::from_utf8(&bytes[..pos]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .context("malformed status line")?;
    let mut len = 0;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().context("malformed content-length")?;
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                bail!("chunked responses are not supported by the raw client");
            }
        }
    }
    Ok(Some((pos + 4, status, len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_response_heads() {
        let r = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nContent-Length: 3\r\n\r\nok\n";
        assert_eq!(parse_head(r).expect("valid"), Some((r.len() - 3, 200, 3)));
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n").expect("partial"), None);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn percentiles() {
        let r = LoadResult { latencies_us: (1..=100).collect(), ..Default::default() };
        assert_eq!(r.percentile(50.0), 51.0);
        assert_eq!(r.percentile(99.0), 100.0);
        assert_eq!(LoadResult::default().percentile(50.0), 0.0);
    }
}
