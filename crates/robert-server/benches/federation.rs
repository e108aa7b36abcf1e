//! Federation costs (§8; `cargo bench -p robert-server --bench federation`).
//!
//! - `federation/seal_sign`: encode a batch of 5000 pairs, sign it (Ed25519), base64 the body —
//!   the sender's CPU cost per batch, beside it the floor of one Ed25519 signature.
//! - `federation/verify_decode`: base64-decode, verify, decode the same batch — the receiver's CPU
//!   cost before storage.
//! - `federation/receive_sqlite_fsync`: the whole receiving step on a real SQLite file with
//!   `fsync = true` (verification, per-record parse, one durable transaction pooling 5000 pairs and
//!   remembering the batch ID) — what bounds a receiver's intake.
//!
//! Throughput is reported in pairs.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use robert_proto::api::b64_decode;
use robert_proto::{AuthKey, CountryCode, Ebid, Ecc, Hello, KAuth, NtpTime, UploadRecord};
use robert_server::config::{Config, PeerSection};
use robert_server::federation::{self, Batch, BatchBody, BatchId};
use robert_server::keystore::{self, BatchSigningKey, ServerSecrets};
use robert_server::service::{Clock, Service};
use robert_server::storage::sqlite::SqliteStorage;
use robert_server::token::TrustedAuthorities;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

const PAIRS: usize = 5000;
const NOW: u32 = 3_976_000_000;

fn batch(id: [u8; 16]) -> Batch {
    let key = AuthKey::new(&KAuth::new([9; 32]));
    let records = (0..PAIRS)
        .map(|i| {
            let t = NtpTime::new(NOW - i as u32);
            let ebid = Ebid::new((i as u64).to_be_bytes());
            UploadRecord { hello: Hello::build(&key, Ecc::new(0x21), ebid, t), time: t, rssi: Some(-60) }
                .encode()
        })
        .collect();
    Batch {
        from: CountryCode::new(33),
        to: CountryCode::new(49),
        id: BatchId(id),
        seq: 1,
        created: NtpTime::new(NOW),
        records,
    }
}

fn key(dir: &std::path::Path, seed: u64) -> BatchSigningKey {
    keystore::keygen(dir, &mut ChaCha20Rng::seed_from_u64(seed)).expect("keygen");
    BatchSigningKey::load(dir).expect("load").expect("present")
}

fn cpu(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let signing = key(&dir.path().join("keys"), 1);
    let b = batch([1; 16]);
    let body = BatchBody::sign(&b, &signing);
    let public = signing.public_key();
    let mut g = c.benchmark_group("federation");
    g.bench_function("ed25519_sign_floor", |bench| {
        bench.iter(|| signing.sign(black_box(b"one short message")))
    });
    g.throughput(Throughput::Elements(PAIRS as u64));
    g.bench_function("seal_sign", |bench| bench.iter(|| BatchBody::sign(black_box(&b), &signing)));
    g.bench_function("verify_decode", |bench| {
        bench.iter(|| {
            let bytes = b64_decode("batch", &body.batch).expect("b64");
            let sig = b64_decode("signature", &body.signature).expect("b64");
            aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, &public)
                .verify(&bytes, &sig)
                .expect("verifies");
            Batch::decode(&bytes).expect("decodes")
        })
    });
    g.finish();
}

fn receive(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    let dir = tempfile::tempdir().expect("tempdir");
    let sender = key(&dir.path().join("fr-keys"), 2);
    let de_keys = dir.path().join("de-keys");
    keystore::keygen(&de_keys, &mut ChaCha20Rng::seed_from_u64(3)).expect("keygen");
    let mut config = Config::default();
    config.protocol.country_code = 49;
    config.server.data_dir = dir.path().to_path_buf();
    config.federation.audit_log = std::path::PathBuf::new();
    config.federation.peers = vec![PeerSection {
        country_code: 33,
        url: "http://127.0.0.1:9".into(),
        public_key: hex::encode(sender.public_key()),
    }];
    let clock: Clock = Arc::new(|| NtpTime::new(NOW));
    let service = rt.block_on(async {
        let storage = SqliteStorage::open(&dir.path().join("robert.db"), true).expect("db");
        let secrets = ServerSecrets::load(&de_keys).expect("keys");
        Service::new(config, NtpTime::new(NOW - 86_400), secrets, storage, TrustedAuthorities::new(), clock)
            .await
            .expect("service")
    });
    let counter = AtomicU8::new(0);
    let mut g = c.benchmark_group("federation");
    g.throughput(Throughput::Elements(PAIRS as u64));
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.bench_function("receive_sqlite_fsync", |bench| {
        bench.iter_custom(|iters| {
            // Fresh batch IDs (a repeated one would be a cheap duplicate), signed outside the timing.
            let bodies: Vec<BatchBody> = (0..iters)
                .map(|i| {
                    let mut id = [counter.fetch_add(1, Ordering::Relaxed); 16];
                    id[..8].copy_from_slice(&i.to_be_bytes());
                    BatchBody::sign(&batch(id), &sender)
                })
                .collect();
            let start = Instant::now();
            rt.block_on(async {
                for body in &bodies {
                    let ack = federation::receive(&service, body).await.expect("stored");
                    assert_eq!(ack.accepted, PAIRS as u64);
                }
            });
            start.elapsed()
        })
    });
    g.finish();
}

criterion_group!(benches, cpu, receive);
criterion_main!(benches);
