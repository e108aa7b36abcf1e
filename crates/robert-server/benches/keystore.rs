//! Cost of the key store's operations per backend (issue 8; `cargo bench -p robert-server --bench
//! keystore`): the hot path's unwrap of an App's K_auth ‖ K_enc (one per ESR and per matched
//! HELLO, §6.2 / §7), the wrap (one per registration) and the §3.3 agreement (one per
//! registration), with the key files in this process and with the keys in a PKCS#11 module.
//!
//! The PKCS#11 half runs when `ROBERT_TEST_PKCS11_MODULE`, `ROBERT_TEST_PKCS11_TOKEN_LABEL` and
//! `ROBERT_TEST_PKCS11_PIN` are set, e.g.
//! `scripts/softhsm-throwaway.sh cargo bench -p robert-server --bench keystore`;
//! it provisions the token if it holds no server keys yet, and never deletes anything.

use criterion::{Criterion, criterion_group, criterion_main};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use robert_proto::{AppEphemeralKey, KAuth, KEnc, SessionKeys};
use robert_server::keystore::pkcs11::{Pin, Pkcs11Settings, Provision};
use robert_server::keystore::{self, ServerSecrets};
use std::hint::black_box;

fn module_secrets() -> Option<(ServerSecrets, tempfile::TempDir)> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let (module, label, pin) = (
        var("ROBERT_TEST_PKCS11_MODULE")?,
        var("ROBERT_TEST_PKCS11_TOKEN_LABEL")?,
        var("ROBERT_TEST_PKCS11_PIN")?,
    );
    let settings = Pkcs11Settings { module: module.into(), token_label: label };
    let dir = tempfile::tempdir().expect("tmp");
    if ServerSecrets::load_pkcs11(&settings, &Pin::new(pin.clone())).is_err() {
        keystore::keygen_pkcs11(dir.path(), &settings, &Pin::new(pin.clone()), Provision::Generate)
            .expect("provisioning the benchmark token");
    }
    Some((ServerSecrets::load_pkcs11(&settings, &Pin::new(pin)).expect("module keys"), dir))
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tmp");
    keystore::keygen(dir.path(), &mut ChaCha20Rng::seed_from_u64(1)).expect("keygen");
    let files = ServerSecrets::load(dir.path()).expect("file keys");
    let module = module_secrets();
    if module.is_none() {
        eprintln!(
            "keystore bench: pkcs11 SKIPPED (no PKCS#11 module: run under scripts/softhsm-throwaway.sh)"
        );
    }
    let mut backends = vec![("files", &files)];
    if let Some((m, _)) = &module {
        backends.push(("pkcs11", m));
    }
    let keys = SessionKeys { k_auth: KAuth::new([1; 32]), k_enc: KEnc::new([2; 32]) };
    let id = 0x12_3456_789a_u64.to_be_bytes();
    let app = AppEphemeralKey::generate(&mut ChaCha20Rng::seed_from_u64(2));

    let mut g = c.benchmark_group("unwrap_session_keys");
    for (name, s) in &backends {
        let wrapped = s.kek.wrap_session_keys(&keys, &id).expect("wrap");
        g.bench_function(*name, |b| {
            b.iter(|| black_box(s.kek.unwrap_session_keys(black_box(&wrapped), &id).expect("unwrap")))
        });
    }
    g.finish();
    let mut g = c.benchmark_group("wrap_session_keys");
    for (name, s) in &backends {
        g.bench_function(*name, |b| b.iter(|| black_box(s.kek.wrap_session_keys(&keys, &id).expect("wrap"))));
    }
    g.finish();
    let mut g = c.benchmark_group("agree");
    for (name, s) in &backends {
        g.bench_function(*name, |b| {
            b.iter(|| black_box(s.registration.agree(black_box(app.public_key())).expect("agree")))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
