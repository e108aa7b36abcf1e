//! Per-operation costs of the protocol core (`cargo bench -p robert-proto`).
//!
//! These are the floors every server and App figure is compared with: a registration cannot be
//! cheaper than `ecdh/server_agree_derive`, a processed upload pair not cheaper than
//! `skinny/decrypt + hello/verify_prekeyed`, an ESR not cheaper than `request/verify_prekeyed`.

use criterion::{Criterion, criterion_group, criterion_main};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use robert_proto::sealed::{self, EbidEntry};
use robert_proto::skinny::Skinny64_192;
use robert_proto::*;
use std::hint::black_box;

fn skinny(c: &mut Criterion) {
    let cipher = Skinny64_192::new(&[0x5a; 24]);
    let mut g = c.benchmark_group("skinny");
    g.bench_function("key_schedule", |b| b.iter(|| Skinny64_192::new(black_box(&[0x5a; 24]))));
    g.bench_function("encrypt", |b| b.iter(|| cipher.encrypt_block(black_box([1, 2, 3, 4, 5, 6, 7, 8]))));
    g.bench_function("decrypt", |b| b.iter(|| cipher.decrypt_block(black_box([1, 2, 3, 4, 5, 6, 7, 8]))));
    let mut batch = [[7u8; 8]; 64];
    g.throughput(criterion::Throughput::Elements(64));
    g.bench_function("encrypt_batch_64", |b| b.iter(|| cipher.encrypt_blocks(black_box(&mut batch))));
    g.bench_function("decrypt_batch_64", |b| b.iter(|| cipher.decrypt_blocks(black_box(&mut batch))));
    g.finish();
}

fn ebid_ecc(c: &mut Criterion) {
    let ks = EbidCipher::new(&ServerKey::new([7; 24]));
    let epoch = Epoch::new(12345).expect("range");
    let id = Id::new(0x12_3456_789a).expect("range");
    let ebid = ks.encrypt(epoch, id);
    let mut g = c.benchmark_group("ebid");
    g.bench_function("encrypt", |b| b.iter(|| ks.encrypt(black_box(epoch), black_box(id))));
    g.bench_function("decrypt", |b| b.iter(|| ks.decrypt(black_box(&ebid))));
    g.finish();
    let mut g = c.benchmark_group("ecc");
    for len in [16usize, 32] {
        let kg = FederationKey::new(&vec![3u8; len]).expect("valid length");
        g.bench_function(format!("aes{}", len * 8), |b| {
            b.iter(|| kg.encrypt_country(black_box(&ebid), CountryCode::new(33)))
        });
        // A registration's list: 96 EBIDs in one call.
        let ebids = vec![ebid; 96];
        g.bench_function(format!("aes{}_batch_of_96", len * 8), |b| {
            b.iter(|| kg.encrypt_countries(black_box(&ebids), CountryCode::new(33)))
        });
    }
    g.finish();
}

fn macs(c: &mut Criterion) {
    let k_auth = KAuth::new([9; 32]);
    let key = AuthKey::new(&k_auth);
    let ebid = Ebid::new([1; 8]);
    let epoch = Epoch::new(77).expect("range");
    let now = NtpTime::new(3_900_000_000);
    let hello = Hello::build(&key, Ecc::new(1), ebid, now);
    let mut g = c.benchmark_group("hello");
    g.bench_function("build", |b| {
        b.iter(|| Hello::build(&key, Ecc::new(1), black_box(ebid), black_box(now)))
    });
    g.bench_function("parse", |b| b.iter(|| Hello::parse(black_box(&hello.to_bytes()))));
    g.bench_function("verify_prekeyed", |b| b.iter(|| black_box(hello).verify(&key)));
    g.bench_function("key_then_verify", |b| b.iter(|| black_box(hello).verify(&AuthKey::new(&k_auth))));
    g.finish();
    let req = AuthRequest::new(&key, RequestCode::StatusRequest, ebid, epoch, now);
    let mut g = c.benchmark_group("request");
    g.bench_function("mac", |b| {
        b.iter(|| key.request_mac(RequestCode::StatusRequest, black_box(&ebid), epoch, now))
    });
    g.bench_function("verify_prekeyed", |b| {
        b.iter(|| black_box(&req).verify_mac(&key, RequestCode::StatusRequest))
    });
    g.finish();
}

fn key_agreement(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let server = ServerKeyPair::generate(&mut rng);
    let app_pub = *AppEphemeralKey::generate(&mut rng).public_key().as_bytes();
    let mut g = c.benchmark_group("ecdh");
    g.bench_function("server_agree_derive", |b| {
        b.iter(|| {
            let pk = PublicKey::parse("clientPublicKey", black_box(&app_pub)).expect("valid");
            server.agree(&pk)
        })
    });
    g.bench_function("app_generate_agree_derive", |b| {
        b.iter(|| AppEphemeralKey::generate(&mut rng).agree(server.public_key()))
    });
    g.finish();
}

fn sealing(c: &mut Criterion) {
    let k_enc = KEnc::new([6; 32]);
    let entries: Vec<EbidEntry> = (0..96u32)
        .map(|i| EbidEntry {
            epoch: Epoch::new(1000 + i).expect("range"),
            ebid: Ebid::new(u64::from(i).to_be_bytes()),
            ecc: Ecc::new(0),
        })
        .collect();
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let sealed_list = sealed::seal(&k_enc, &entries, &mut rng).expect("ordered");
    let mut g = c.benchmark_group("sealed_list_96");
    g.bench_function("seal", |b| b.iter(|| sealed::seal(&k_enc, black_box(&entries), &mut rng)));
    g.bench_function("open", |b| b.iter(|| sealed::open(&k_enc, black_box(&sealed_list))));
    g.finish();
}

criterion_group!(benches, skinny, ebid_ecc, macs, key_agreement, sealing);
criterion_main!(benches);
