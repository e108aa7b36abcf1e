//! # robert-app: the App side of ROBERT v1.1
//!
//! Everything a phone app does in the protocol, so that the app's own code only moves 16-byte
//! HELLOs between this crate and the Bluetooth radio:
//!
//! | step | call |
//! |---|---|
//! | registration (§3.3): proof of work, P-256 key agreement, K_auth / K_enc, sealed EBID list, epoch schedule and clock offset | [`App::register`] |
//! | broadcasting (§5.1): the HELLO of the current epoch, fresh `t16` and MAC each call | [`App::hello_at`] |
//! | collection (§5.2): parse, δ check (16-bit wrap-around), store `(HELLO, time', RSSI)`; entries older than CT days dropped | [`App::on_hello_received`] |
//! | declaration (§6.1): pairs with `ContStart < Time < ContEnd`, in chunks spread over time, safe retries | [`App::start_declaration`], [`App::upload_due`] |
//! | ESR (§7): at most every T epochs, EBID refresh (§4), then acknowledgement (code 5) | [`App::check_status`], [`App::acknowledge`] |
//! | unregister, delete history (Annex C), status reset (`reset` token) | [`App::unregister`], [`App::delete_history`], [`App::reset_status`] |
//! | the state in one file, AES-256-GCM under the caller's key, replaced atomically | [`StateFile`] |
//! | the server: HTTP (rustls) or in-process (feature `in-process`) | [`Transport`], [`HttpTransport`], `InProcessTransport` |
//!
//! ## What is absent, on purpose
//!
//! No clock, no global RNG, no Bluetooth: time comes in as `now: NtpTime` (the phone's clock; the
//! App corrects it by the offset to the server's clock measured at registration, see
//! [`AppConfig::apply_clock_offset`]), randomness as `&mut impl CryptoRng`, and the network through
//! a [`Transport`]. Nothing sleeps: spread-out uploads are a schedule ([`UploadProgress::next_at`])
//! that the caller acts on. The server's code is compiled only with the `in-process` feature.
//!
//! ## Decisions
//!
//! - **Declaration chunks and tokens.** The server accepts one single-use token per request, so
//!   the App sends **one request per token**. It wants `ceil(pairs / upload_chunk_size)` requests;
//!   with fewer tokens it sends fewer, larger requests (up to the server's per-request limit, else
//!   [`AppError::TooFewTokens`]); with more, the extra tokens are handed back unspent. With one
//!   token, everything goes in one request. Pairs are shuffled before chunking, and each chunk
//!   after the first is due a uniform random `0..=upload_max_delay_sec` after the previous one.
//! - **Safe retries.** A chunk keeps its token for life. A request whose answer was lost is resent
//!   with the same token: if the server had stored it, the token is spent (atomically with the
//!   pairs) and the resend is rejected, so nothing is counted twice; the chunk then counts as
//!   delivered. [`App::upload_due`] calls a checkpoint before each request so the caller can
//!   persist "attempt in flight" and survive a crash mid-request.
//! - **Notification.** After `atRisk: true` the App sends no more ESRs ([`App::check_status`]
//!   answers `AtRisk` locally); the caller saves the state, tells the user, then acknowledges. The
//!   App keeps broadcasting HELLOs while its EBID list lasts (see the limitation below).
//! - **Duplicates.** The same 16 HELLO bytes are stored once: a HELLO is unique to its second, so a
//!   repeat is a duplicate advertisement or a replay (a replay 2^16 s later passes δ, footnote 9;
//!   the server's epoch check drops it if the App had not heard the original).
//! - **Delete history** erases the server's record of exposures and the App's LocalProximityList;
//!   **unregister** forgets everything (keys, EBIDs, contacts, declaration).
//!
//! Known limitation: after the acknowledgement the server rejects every ESR, and the ESR is the only
//! way to refresh the EBID list, so an acknowledged App can broadcast only until its list ends (at
//! most two blocks of M epochs) — until a status reset.
//!
//! ## An app's life cycle
//!
//! ```
//! # use std::sync::Arc;
//! # use rand_core::SeedableRng;
//! # use robert_server::{config::Config, keystore, service::Service, storage::memory::MemoryStorage};
//! # use robert_server::token::{AuthorityKey, Purpose, TrustedAuthorities};
//! use robert_app::{App, AppConfig, ExposureStatus, InProcessTransport, StateFile, StateKey};
//! use robert_proto::NtpTime;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
//! # let dir = tempfile::tempdir()?;
//! # keystore::keygen(&dir.path().join("keys"), &mut rng)?;
//! # let authority = AuthorityKey::generate(&mut rng);
//! # let mut trusted = TrustedAuthorities::new();
//! # trusted.add_public_key_pem(&authority.public_key_pem())?;
//! # let mut config = Config::default();
//! # config.registration.pow_difficulty = 4;
//! # let start = NtpTime::new(3_976_214_400); // 2026-01-01
//! # let now = NtpTime::new(start.seconds() + 10 * 86_400);
//! # let clock = Arc::new(std::sync::atomic::AtomicU32::new(now.seconds()));
//! # let c = clock.clone();
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! # let service = Arc::new(Service::new(config, start, keystore::ServerSecrets::load(&dir.path().join("keys"))?,
//! #     MemoryStorage::new(), trusted,
//! #     Arc::new(move || NtpTime::new(c.load(std::sync::atomic::Ordering::SeqCst)))).await?);
//! // A server (here in-process; `HttpTransport::new("https://…")` in a real app).
//! let server = InProcessTransport::new(service.clone());
//! let config = AppConfig { upload_max_delay_sec: 0, ..AppConfig::default() };
//!
//! // Two phones register (§3.3).
//! let mut alice = App::new(config.clone());
//! let mut bob = App::new(config);
//! alice.register(&server, now, &mut rng).await?;
//! bob.register(&server, now, &mut rng).await?;
//!
//! // They meet for 20 minutes: the radio carries HELLOs both ways (§5).
//! for minute in 0..20 {
//!     let t = NtpTime::new(now.seconds() + 60 * minute);
//!     let hello: [u8; 16] = alice.hello_at(t)?;
//!     bob.on_hello_received(&hello, t, Some(-50))?;
//! }
//!
//! // The state lives in one encrypted file, replaced atomically.
//! let file = StateFile::new(dir.path().join("bob.state"), StateKey::random(&mut rng));
//! file.save(&bob, &mut rng)?;
//! let mut bob = file.load(AppConfig { upload_max_delay_sec: 0, ..AppConfig::default() })?;
//!
//! // Bob is diagnosed: the health authority gives a token, Bob uploads (§6.1).
//! let later = NtpTime::new(now.seconds() + 3600);
//! # clock.store(later.seconds(), std::sync::atomic::Ordering::SeqCst);
//! let token = authority.issue(Purpose::Declare, later.to_unix(), 3600, &mut rng)?;
//! let plan = bob.start_declaration(vec![token], now, later, later, &mut rng)?;
//! let progress = bob.upload_due(&server, later, &mut |app| file.save(app, &mut rand::rng())).await?;
//! assert!(progress.is_complete() && progress.accepted_pairs == plan.pairs as u64);
//! # service.mix_once(true).await?;
//!
//! // Alice asks for her status (§7), is at risk, acknowledges; no more ESRs after that.
//! assert_eq!(alice.check_status(&server, later).await?, ExposureStatus::AtRisk);
//! alice.acknowledge(&server, later).await?;
//! assert_eq!(alice.check_status(&server, later).await?, ExposureStatus::AtRisk);
//! alice.hello_at(later)?; // HELLOs continue
//!
//! // Leaving: Annex C.
//! bob.unregister(&server, later).await?;
//! assert!(!bob.is_registered());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok(()) }
//! ```

mod app;
mod state;
pub mod transport;

pub use app::{App, AppConfig, AppError, DeclarationPlan, ExposureStatus, ReceiveError, UploadProgress};
pub use state::{StateError, StateFile, StateKey};
#[cfg(feature = "in-process")]
pub use transport::in_process::InProcessTransport;
pub use transport::{HttpTransport, Transport, TransportError};
