//! `robert serve`, `robert keygen`, `robert authority`: running a country's back-end.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use robert_proto::NtpTime;
use robert_server::config::{Config, KeystoreBackend, PKCS11_PIN_ENV, StorageBackend};
use robert_server::keystore::{self, ServerSecrets};
use robert_server::service::{Service, system_clock};
use robert_server::storage::Storage;
use robert_server::storage::memory::MemoryStorage;
use robert_server::storage::postgres::PostgresStorage;
use robert_server::storage::sqlite::SqliteStorage;
use robert_server::token::{AuthorityKey, Purpose, TrustedAuthorities};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Arguments of `robert serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (TOML; every key is documented in robert.example.toml). Without one, the
    /// server runs in development mode: keys and a trusted development health-authority key are
    /// created in the data directory on first start. With `[storage] backend = "postgres"`, the
    /// database URL comes from the environment variable ROBERT_POSTGRES_URL, else from the file.
    /// With `[keystore] backend = "pkcs11"`, the keys are in a security module provisioned by
    /// `robert keygen --pkcs11`, and its user PIN comes from the environment variable named by
    /// keystore.pkcs11_pin_env (default ROBERT_PKCS11_PIN).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (database, keys). Overrides the config file. Default ./robert-data.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address to listen on. Overrides the config file. Default 127.0.0.1:8080.
    #[arg(long)]
    listen: Option<SocketAddr>,
}

/// File name of the development health-authority key in the data directory.
pub const DEV_AUTHORITY_FILE: &str = "dev-authority.pem";
/// File that records T_pstart when the config does not set it.
const SERVICE_START_FILE: &str = "service-start-ntp";

/// Runs `robert serve` until Ctrl-C or SIGTERM.
pub fn serve(args: &ServeArgs) -> Result<()> {
    let dev_mode = args.config.is_none();
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(d) = &args.data_dir {
        config.server.data_dir = d.clone();
    }
    if let Some(l) = args.listen {
        config.server.listen = l;
    }
    config.validate()?;
    let data_dir = config.server.data_dir.clone();
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let key_dir = config.server.key_dir.clone().unwrap_or_else(|| data_dir.join("keys"));

    let secrets = if config.keystore.backend == KeystoreBackend::Pkcs11 {
        let settings = config.keystore.pkcs11_settings()?;
        let pin = keystore::pkcs11::Pin::from_env(&config.keystore.pkcs11_pin_env)?;
        let secrets = ServerSecrets::load_pkcs11(&settings, &pin).with_context(|| {
            format!("opening the server keys in PKCS#11 token '{}'", settings.token_label)
        })?;
        eprintln!("robert: server keys in PKCS#11 token '{}'", settings.token_label);
        secrets
    } else {
        file_secrets(&key_dir, dev_mode)?
    };

    let mut authorities = TrustedAuthorities::new();
    for pem_path in &config.authorities.public_keys {
        let path = if pem_path.is_relative() { data_dir.join(pem_path) } else { pem_path.clone() };
        let pem = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        authorities.add_public_key_pem(&pem).with_context(|| format!("{}", path.display()))?;
    }
    if dev_mode {
        let dev = data_dir.join(DEV_AUTHORITY_FILE);
        let key = if dev.exists() {
            AuthorityKey::from_pkcs8_pem(&std::fs::read_to_string(&dev)?)
                .with_context(|| format!("{}", dev.display()))?
        } else {
            let key = AuthorityKey::generate(&mut rand::rng());
            write_private(&dev, key.to_pkcs8_pem().as_bytes())?;
            eprintln!(
                "robert: created a DEVELOPMENT health-authority key {} (trusted by this server)",
                dev.display()
            );
            key
        };
        authorities.add_public_key_pem(&key.public_key_pem())?;
        eprintln!(
            "robert: development mode; issue tokens with `robert authority issue --key {} --purpose declare`",
            dev.display()
        );
    }

    let service_start = service_start(&config, &data_dir)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        match config.storage.backend {
            StorageBackend::Sqlite => {
                let db = data_dir.join("robert.db");
                let storage = SqliteStorage::open(&db, config.storage.fsync)
                    .with_context(|| format!("opening {}", db.display()))?;
                run(config, service_start, secrets, storage, authorities).await
            }
            StorageBackend::Postgres => {
                let url = config.storage.postgres_url()?;
                let storage = PostgresStorage::connect(&url, config.storage.postgres_pool_size)
                    .await
                    .context("opening the PostgreSQL storage")?;
                eprintln!(
                    "robert: PostgreSQL storage, {} connections at most",
                    config.storage.postgres_pool_size
                );
                run(config, service_start, secrets, storage, authorities).await
            }
            StorageBackend::Memory => {
                eprintln!("robert: in-memory storage: nothing survives a restart");
                run(config, service_start, secrets, MemoryStorage::new(), authorities).await
            }
        }
    })
}

/// The file backend's keys: loaded from `key_dir`, created there first in development mode.
fn file_secrets(key_dir: &Path, dev_mode: bool) -> Result<ServerSecrets> {
    if !keystore::keys_exist(key_dir) {
        if !dev_mode {
            bail!(
                "no server keys in {}: create them with `robert keygen --dir {}`",
                key_dir.display(),
                key_dir.display()
            );
        }
        keystore::keygen(key_dir, &mut rand::rng())?;
        eprintln!("robert: created DEVELOPMENT server keys in {}", key_dir.display());
    } else if dev_mode && !key_dir.join(keystore::FEDERATION_SIGNING_KEY_FILE).exists() {
        keystore::keygen_federation_signing(key_dir, &mut rand::rng())?;
        eprintln!("robert: created a DEVELOPMENT federation signing key in {}", key_dir.display());
    }
    Ok(ServerSecrets::load(key_dir)?)
}

async fn run<S: Storage>(
    config: Config,
    service_start: NtpTime,
    secrets: ServerSecrets,
    storage: S,
    authorities: TrustedAuthorities,
) -> Result<()> {
    let listen = config.server.listen;
    let service =
        Arc::new(Service::new(config, service_start, secrets, storage, authorities, system_clock()).await?);
    service.prepare_day_keys().await?;
    let shutdown = shutdown_signal()?;
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    eprintln!("robert: serving the ROBERT API on http://{}", listener.local_addr()?);
    robert_server::http::run(listener, service, shutdown).await?;
    eprintln!("robert: stopped");
    Ok(())
}

/// Installs the SIGTERM / SIGINT handlers now (before the server says it is serving, so that a
/// signal arriving right after that line still shuts it down gracefully) and returns the future
/// that resolves on either.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

/// T_pstart: from the config, else recorded in the data directory at first start (the start of
/// that UTC day), so that it never moves.
fn service_start(config: &Config, data_dir: &Path) -> Result<NtpTime> {
    if let Some(t) = config.protocol.service_start_ntp {
        return Ok(NtpTime::new(t));
    }
    let file = data_dir.join(SERVICE_START_FILE);
    if file.exists() {
        let text = std::fs::read_to_string(&file)?;
        let t: u32 = text.trim().parse().with_context(|| format!("{}: not an NTP time", file.display()))?;
        return Ok(NtpTime::new(t));
    }
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let start = NtpTime::from_unix(unix - unix % 86_400).context("the clock is past NTP era 0")?;
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, format!("{}\n", start.seconds()))?;
    std::fs::rename(&tmp, &file)?;
    Ok(start)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// Arguments of `robert keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Directory to write the server keys into (K_G, sk_S and pk_S, the key-encryption key, the
    /// federation signing key and its public key). Refuses to overwrite existing keys. With
    /// --pkcs11, only the public files (pk_S, the federation signing public key) and the audit
    /// log of the key creation are written there.
    #[arg(long)]
    dir: PathBuf,
    /// Only create the federation signing key (Ed25519, §8) in a key directory made before
    /// federation existed; the other keys are left as they are.
    #[arg(long, conflicts_with = "pkcs11")]
    federation_only: bool,
    /// Provision a PKCS#11 security module instead of writing key files: K_G, sk_S, the
    /// key-encryption key, the challenge key and the federation signing key are generated inside
    /// the token (sk_S, the KEK and the signing key non-extractable). Needs --module and
    /// --token-label; the token's user PIN is read from the environment (--pin-env).
    #[arg(long, requires_all = ["module", "token_label"])]
    pkcs11: bool,
    /// With --pkcs11: the PKCS#11 module (shared library), e.g. /usr/lib/softhsm/libsofthsm2.so.
    #[arg(long, requires = "pkcs11")]
    module: Option<PathBuf>,
    /// With --pkcs11: the label of the (initialised) token to provision.
    #[arg(long, requires = "pkcs11")]
    token_label: Option<String>,
    /// With --pkcs11: the environment variable that holds the token's user PIN (the PIN is never
    /// a command-line argument, which other users could read).
    #[arg(long, default_value = PKCS11_PIN_ENV)]
    pin_env: String,
    /// With --pkcs11: import K_G, sk_S and the key-encryption key from this existing key
    /// directory instead of generating them, to move a running deployment into the module
    /// without losing registrations (Apps keep their pinned pk_S; stored rows still unwrap).
    /// Delete the key files once the server runs on the module.
    #[arg(long, requires = "pkcs11")]
    from_dir: Option<PathBuf>,
}

/// Runs `robert keygen`.
pub fn keygen(args: &KeygenArgs) -> Result<()> {
    if args.pkcs11 {
        let (Some(module), Some(token_label)) = (&args.module, &args.token_label) else {
            bail!("--pkcs11 needs --module and --token-label");
        };
        let settings =
            keystore::pkcs11::Pkcs11Settings { module: module.clone(), token_label: token_label.clone() };
        let pin = keystore::pkcs11::Pin::from_env(&args.pin_env)?;
        let source = match &args.from_dir {
            Some(d) => keystore::pkcs11::Provision::FromDir(d),
            None => keystore::pkcs11::Provision::Generate,
        };
        keystore::keygen_pkcs11(&args.dir, &settings, &pin, source)
            .with_context(|| format!("provisioning PKCS#11 token '{token_label}'"))?;
        eprintln!(
            "robert: created the server keys in PKCS#11 token '{token_label}'{}; public files in {} \
             (pk_S for apps to pin: {})",
            if args.from_dir.is_some() { " (K_G, sk_S, KEK imported)" } else { "" },
            args.dir.display(),
            args.dir.join(keystore::REGISTRATION_PUBLIC_FILE).display()
        );
    } else if args.federation_only {
        keystore::keygen_federation_signing(&args.dir, &mut rand::rng())?;
    } else {
        keystore::keygen(&args.dir, &mut rand::rng())?;
        eprintln!(
            "robert: wrote server keys to {} (pk_S for apps to pin: {})",
            args.dir.display(),
            args.dir.join(keystore::REGISTRATION_PUBLIC_FILE).display()
        );
    }
    eprintln!(
        "robert: federation signing public key for peers' [[federation.peers]] public_key: {}",
        args.dir.join(keystore::FEDERATION_SIGNING_PUBLIC_FILE).display()
    );
    Ok(())
}

/// `robert authority …`: health-authority keys and tokens, made offline.
#[derive(Debug, Subcommand)]
pub enum AuthorityCommand {
    /// Creates a health-authority key: the private key (PKCS#8 PEM) at --out, the public key
    /// (SubjectPublicKeyInfo PEM) beside it with `.pub.pem`, for servers' `[authorities]`.
    Keygen {
        /// Where to write the private key (refuses to overwrite).
        #[arg(long)]
        out: PathBuf,
    },
    /// Issues one single-use token (compact JWS, ES256) and prints it on stdout.
    Issue {
        /// The authority's private key (PEM).
        #[arg(long)]
        key: PathBuf,
        /// `declare` (upload contacts) or `reset` (clear an at-risk status after a negative test).
        #[arg(long, value_parser = ["declare", "reset"])]
        purpose: String,
        /// Lifetime in seconds (at most 30 days).
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
    },
}

/// Runs `robert authority …`.
pub fn authority(cmd: &AuthorityCommand) -> Result<()> {
    match cmd {
        AuthorityCommand::Keygen { out } => {
            let key = AuthorityKey::generate(&mut rand::rng());
            write_private(out, key.to_pkcs8_pem().as_bytes())?;
            let public = out.with_extension("pub.pem");
            std::fs::write(&public, key.public_key_pem())
                .with_context(|| format!("writing {}", public.display()))?;
            eprintln!(
                "robert: wrote {} (private) and {} (public, kid {})",
                out.display(),
                public.display(),
                key.kid()
            );
            Ok(())
        }
        AuthorityCommand::Issue { key, purpose, ttl } => {
            let pem = std::fs::read_to_string(key).with_context(|| format!("reading {}", key.display()))?;
            let key = AuthorityKey::from_pkcs8_pem(&pem).with_context(|| format!("{}", key.display()))?;
            let purpose = if purpose == "reset" { Purpose::Reset } else { Purpose::Declare };
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
            let token = key.issue(purpose, now, *ttl, &mut rand::rng())?;
            println!("{token}");
            Ok(())
        }
    }
}
