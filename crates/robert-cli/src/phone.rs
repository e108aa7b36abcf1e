//! `robert phone`: one virtual phone, its state in one encrypted file, so a person can walk the
//! protocol by hand against a running `robert serve` (DESIGN §5). Every step is `robert-app`; this
//! module only parses arguments, loads and saves the state, and prints.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use robert_app::{App, AppConfig, ExposureStatus, HttpTransport, StateError, StateFile, StateKey};
use robert_proto::NtpTime;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Environment variable holding the state key (64 hex digits); overrides the key file.
const KEY_ENV: &str = "ROBERT_PHONE_KEY";

/// `robert phone` arguments.
#[derive(Debug, Args)]
#[command(after_long_help = "\
STATE KEY: the state file is encrypted (AES-256-GCM) under a 32-byte key. It is read from the \
environment variable ROBERT_PHONE_KEY (64 hex digits) if set, else from the key file (--key-file, \
default: the state path with `.key` appended). `register` creates that key file (mode 0600, 64 hex \
digits) if neither exists.

TIME: without --at the phone uses the system clock corrected by the offset to the server's clock \
measured at registration; with --at it acts at exactly that NTP time (a virtual clock; the server \
still applies its own checks with its own clock).

EXAMPLE:
  robert phone --state a.state --server http://127.0.0.1:8080 register
  robert phone --state a.state --server http://127.0.0.1:8080 hello
  robert phone --state b.state --server http://127.0.0.1:8080 receive <32 hex> --rssi -50
  robert phone --state b.state --server http://127.0.0.1:8080 report --token <JWS> --from N --to N
  robert phone --state a.state --server http://127.0.0.1:8080 status")]
pub struct PhoneArgs {
    /// The phone's state file (created by `register`).
    #[arg(long, value_name = "FILE")]
    state: PathBuf,
    /// The server's base URL, e.g. http://127.0.0.1:8080.
    #[arg(long, value_name = "URL")]
    server: String,
    /// Act at this NTP time (seconds) instead of now.
    #[arg(long, value_name = "NTP")]
    at: Option<u32>,
    /// The state key file (64 hex digits). Default: FILE.key.
    #[arg(long, value_name = "KEYFILE")]
    key_file: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    command: PhoneCommand,
}

/// `robert phone` subcommands.
#[derive(Debug, Subcommand)]
enum PhoneCommand {
    /// Registers (proof of work, key agreement, first EBID list) and creates the state file.
    Register,
    /// Prints the HELLO to broadcast now (16 bytes, 32 hex digits).
    Hello,
    /// Stores a received HELLO (after the δ check) in the LocalProximityList.
    Receive {
        /// The HELLO, 32 hex digits.
        hello: String,
        /// Received signal strength, dB.
        #[arg(long, allow_hyphen_values = true)]
        rssi: Option<i8>,
    },
    /// Declares (diagnosed positive): uploads the pairs received strictly between --from and --to,
    /// one request per token (give --token several times to split the upload).
    Report {
        /// A `declare` token from the health authority (repeatable: one per request).
        #[arg(long = "token", required = true)]
        tokens: Vec<String>,
        /// ContStart, NTP seconds.
        #[arg(long, value_name = "NTP")]
        from: u32,
        /// ContEnd, NTP seconds.
        #[arg(long, value_name = "NTP")]
        to: u32,
    },
    /// Exposure status request; prints {"atRisk": true|false}.
    Status,
    /// Acknowledges an "at risk" answer (no more status requests afterwards).
    Ack,
    /// Resets the status after a negative test, with a `reset` token.
    Reset {
        /// The `reset` token.
        #[arg(long)]
        token: String,
    },
    /// Unregisters; the state file then holds an unregistered phone.
    Unregister,
    /// Deletes the exposure history on the server and the phone's contact list.
    DeleteHistory,
}

fn system_now() -> Result<NtpTime> {
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    NtpTime::from_unix(unix).context("the system clock is outside NTP era 0")
}

fn parse_key(hex_text: &str, what: &str) -> Result<StateKey> {
    let bytes =
        zeroize::Zeroizing::new(hex::decode(hex_text.trim()).with_context(|| format!("{what}: not hex"))?);
    let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| anyhow::anyhow!("{what}: not 32 bytes"))?;
    Ok(StateKey::new(arr))
}

fn key_path(args: &PhoneArgs) -> PathBuf {
    args.key_file.clone().unwrap_or_else(|| {
        let mut p = args.state.clone().into_os_string();
        p.push(".key");
        PathBuf::from(p)
    })
}

/// The state key: from the environment, else the key file; `create` makes the key file if missing.
fn state_key(args: &PhoneArgs, create: bool) -> Result<StateKey> {
    if let Ok(v) = std::env::var(KEY_ENV) {
        let v = zeroize::Zeroizing::new(v);
        return parse_key(&v, KEY_ENV);
    }
    let path = key_path(args);
    if path.exists() {
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
        );
        return parse_key(&text, &path.display().to_string());
    }
    if !create {
        bail!("no state key: set {KEY_ENV} or provide {}", path.display());
    }
    let key = StateKey::random(&mut rand::rng());
    write_new_private(&path, hex::encode(key.expose_secret()).as_bytes())?;
    Ok(key)
}

fn write_new_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// Runs `robert phone`, printing results on `out`.
pub fn run(args: &PhoneArgs, out: &mut impl Write) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run_async(args, out))
}

async fn run_async(args: &PhoneArgs, out: &mut impl Write) -> Result<()> {
    let config =
        AppConfig { upload_max_delay_sec: 0, apply_clock_offset: args.at.is_none(), ..AppConfig::default() };
    let now = match args.at {
        Some(t) => NtpTime::new(t),
        None => system_now()?,
    };
    let transport = HttpTransport::new(&args.server)?;
    let mut rng = rand::rng();
    let register = matches!(args.command, PhoneCommand::Register);
    let file = StateFile::new(&args.state, state_key(args, register)?);
    let mut app = match file.load(config.clone()) {
        Ok(app) => app,
        Err(StateError::Missing(_)) if register => App::new(config),
        Err(StateError::Missing(p)) => {
            bail!("no state file at {}: run `robert phone … register` first", p.display())
        }
        Err(e) => return Err(e).context(format!("loading {}", args.state.display())),
    };
    match &args.command {
        PhoneCommand::Register => {
            app.register(&transport, now, &mut rng).await.context("registration")?;
            file.save(&app, &mut rng)?;
            let epoch = app.epoch_at(now)?.number();
            let until = app.ebids_until().map_or(0, |e| e.number());
            writeln!(out, "{}", serde_json::json!({"epoch": epoch, "ebidsUntilEpoch": until}))?;
        }
        PhoneCommand::Hello => {
            let hello = app.hello_at(now)?;
            file.save(&app, &mut rng)?;
            writeln!(out, "{}", hex::encode(hello))?;
        }
        PhoneCommand::Receive { hello, rssi } => {
            let bytes = hex::decode(hello.trim()).context("HELLO: not hex")?;
            app.on_hello_received(&bytes, now, *rssi).context("HELLO refused")?;
            file.save(&app, &mut rng)?;
            writeln!(out, "{}", serde_json::json!({"stored": true, "contacts": app.contacts().len()}))?;
        }
        PhoneCommand::Report { tokens, from, to } => {
            let plan =
                app.start_declaration(tokens.clone(), NtpTime::new(*from), NtpTime::new(*to), now, &mut rng)?;
            file.save(&app, &mut rng)?;
            let mut seed = [0u8; 32];
            rand::Rng::fill_bytes(&mut rng, &mut seed);
            let mut save_rng = <rand_chacha::ChaCha20Rng as rand::SeedableRng>::from_seed(seed);
            let mut checkpoint = |a: &App| file.save(a, &mut save_rng);
            let progress = app.upload_due(&transport, now, &mut checkpoint).await?;
            file.save(&app, &mut rng)?;
            if let Some(e) = &progress.last_error {
                bail!("upload interrupted ({e}); run `report` again to retry with the same tokens");
            }
            if progress.refused > 0 {
                bail!(
                    "the server refused {} of {} requests (invalid or used token?)",
                    progress.refused,
                    plan.chunks
                );
            }
            writeln!(
                out,
                "{}",
                serde_json::json!({"pairs": plan.pairs, "requests": plan.chunks, "accepted": progress.accepted_pairs,
                    "unusedTokens": plan.unused_tokens.len()})
            )?;
        }
        PhoneCommand::Status => {
            let status = app.check_status(&transport, now).await?;
            file.save(&app, &mut rng)?;
            match status {
                ExposureStatus::AtRisk => writeln!(out, "{}", serde_json::json!({"atRisk": true}))?,
                ExposureStatus::NotAtRisk => writeln!(out, "{}", serde_json::json!({"atRisk": false}))?,
                ExposureStatus::TooEarly { next_epoch } => {
                    bail!("too early: the next status request is allowed at epoch {next_epoch}")
                }
            }
        }
        PhoneCommand::Ack => {
            app.acknowledge(&transport, now).await?;
            file.save(&app, &mut rng)?;
        }
        PhoneCommand::Reset { token } => {
            app.reset_status(&transport, token, now).await?;
            file.save(&app, &mut rng)?;
        }
        PhoneCommand::Unregister => {
            app.unregister(&transport, now).await?;
            file.save(&app, &mut rng)?;
        }
        PhoneCommand::DeleteHistory => {
            app.delete_history(&transport, now).await?;
            file.save(&app, &mut rng)?;
        }
    }
    Ok(())
}
