//! # robert-server: the ROBERT back-end
//!
//! A health authority runs this for a country (`robert serve`). It follows the spec's numbered
//! steps, cited in the code:
//!
//! | module | owns |
//! |---|---|
//! | [`service`] | every protocol operation: registration (§3.3), EBID issuance (§4), declarations and the mixer (§6), ESR (§7), Annex C requests, expiry |
//! | [`risk`] | the public risk-scoring rule (§2.3) |
//! | [`storage`] | the IDTable (§3.2) and other durable state behind one trait; in-memory and SQLite backends; the contract suite |
//! | [`keystore`] | the server's secrets (§3.1): K_G, (sk_S, pk_S), the key-encryption key, each day's K_S, behind the `KeyStore` trait: key files or a PKCS#11 security module ([`keystore::pkcs11`]) |
//! | [`token`] | health-authority tokens (§6.1 footnote 11) |
//! | [`http`] | the HTTP API v1 (DESIGN §4), error mapping, metrics endpoint |
//! | [`federation`] | §8: batches of pairs between countries' servers (format, signature, receiving, delivery, audit) |
//! | [`jobs`] | the background mixer, the per-epoch upkeep, the federation delivery loops |
//! | [`config`] | every tunable, with its default and reason |
//! | [`audit`] | Annex B: the append-only, hash-chained audit log (keys, token counts, configuration, federation batches) and its verifier |
//! | [`limits`] | hardening: the replay cache of authenticated requests, the registration rate limits |
//! | [`metrics`] | Prometheus counters (no identifiers) |
//!
//! Invariants: secrets are handled only in [`keystore`] (and wrapped before storage); logs,
//! metrics and errors never carry an ID, EBID, HELLO, key, token or client address; every protocol
//! check failure is the same uniform rejection.

pub mod audit;
pub mod config;
pub mod federation;
pub mod http;
pub mod jobs;
pub mod keystore;
pub mod limits;
pub mod metrics;
pub mod risk;
pub mod service;
pub mod storage;
pub mod token;
