//! # robert-proto: the ROBERT v1.1 protocol core
//!
//! Every byte that ROBERT puts on the air or on the wire is produced and checked here, exactly as
//! `DESIGN.md` §3 fixes it (byte-compatible with the deployed French implementation):
//!
//! | item | module |
//! |---|---|
//! | epochs, IDs, EBIDs, ECCs, country codes, NTP and 16-bit times, request codes | [`types`] |
//! | epoch arithmetic (§2.2, §6.2 step 6, footnote 17) | [`schedule`] |
//! | SKINNY-64/192 | [`skinny`] |
//! | `EBID = SKINNY(K_S, i ‖ ID)` (§4) | [`ebid`] |
//! | `ECC = AES(K_G, EBID ‖ 0^64)[0] ⊕ CC` (§4) | [`ecc`] |
//! | HELLO (§5) | [`hello`] |
//! | HELLO and request MACs (§5.1, §7, Annex C) | [`mac`] |
//! | authenticated requests (§7, Annex C) | [`request`] |
//! | P-256 key agreement, K_auth / K_enc (§3.3) | [`keys`] |
//! | the sealed EBID list (§4) | [`sealed`] |
//! | upload records (§6.1) | [`upload`] |
//! | registration proof of work (§3.3) | [`pow`] |
//! | JSON bodies of the HTTP API | [`api`] |
//! | federation batches between countries' servers (§8): codec and authentication | [`federation`] |
//! | health-authority tokens (compact JWS, ES256): verification | [`token`] |
//! | secrets as types | [`secret`] |
//!
//! ## What is absent, on purpose
//!
//! No I/O, no clock, no global RNG, no async runtime, no database, no HTTP: time comes in as
//! [`NtpTime`] arguments and randomness as `&mut impl CryptoRng`. Every secret is a type that
//! zeroizes on drop, prints `[redacted]` and compares in constant time; identifiers (ID, EBID,
//! HELLO) do not print either, so none can reach a log by accident.
//!
//! ## A HELLO's life, in a few lines
//!
//! ```
//! use robert_proto::*;
//! use rand_core::SeedableRng;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
//! // Server set-up (§3.1) and registration (§3.3).
//! let server = ServerKeyPair::generate(&mut rng);
//! let app = AppEphemeralKey::generate(&mut rng);
//! let app_public = PublicKey::parse("clientPublicKey", app.public_key().as_bytes())?;
//! let server_side = server.agree(&app_public);
//! let app_side = app.agree(server.public_key());
//! // EBID and ECC for epoch 10 (§4).
//! let ks = EbidCipher::new(&ServerKey::random(&mut rng));
//! let kg = FederationKey::new(&[0x42; 16])?;
//! let (epoch, id) = (Epoch::new(10).unwrap(), Id::new(0x12_3456_789a).unwrap());
//! let ebid = ks.encrypt(epoch, id);
//! let ecc = kg.encrypt_country(&ebid, CountryCode::new(33));
//! // The App broadcasts a HELLO (§5.1) ...
//! let now = NtpTime::new(3_900_000_000);
//! let hello = Hello::build(&AuthKey::new(&app_side.k_auth), ecc, ebid, now);
//! // ... which the server later checks (§6.2 steps 1-8).
//! let received = Hello::parse(&hello.to_bytes())?;
//! received.check_delta(now, 5)?;
//! assert_eq!(kg.decrypt_country(&received.ebid(), received.ecc()), CountryCode::new(33));
//! assert_eq!(ks.decrypt(&received.ebid()), (epoch, id));
//! received.verify(&AuthKey::new(&server_side.k_auth))?;
//! # Ok(()) }
//! ```

pub mod api;
pub mod ebid;
pub mod ecc;
mod error;
pub mod federation;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod hello;
pub mod keys;
pub mod mac;
pub mod pow;
pub mod request;
pub mod schedule;
pub mod sealed;
pub mod secret;
pub mod skinny;
pub mod token;
pub mod types;
pub mod upload;

pub use ebid::EbidCipher;
pub use ecc::FederationKey;
pub use error::{DecodeError, Rejected};
pub use hello::{HELLO_LEN, Hello, VerifiedHello};
pub use keys::{AppEphemeralKey, PublicKey, ServerKeyPair, SessionKeys};
pub use mac::AuthKey;
pub use request::AuthRequest;
pub use schedule::EpochSchedule;
pub use sealed::EbidEntry;
pub use secret::{KAuth, KEnc, SecretBytes, ServerKey};
pub use types::{CountryCode, Ebid, Ecc, Epoch, Id, NtpTime, RequestCode, Time16};
pub use upload::UploadRecord;
