//! The PKCS#11 key store against a real security module (SoftHSM2): provisioning, what cannot
//! leave the module, byte-identity with the file backend, a server on the module end to end over
//! HTTP, day-key rotation and destruction in the module, restart.
//!
//! These tests need a token: run them under `scripts/softhsm-throwaway.sh` (as `.ci/run` does),
//! which exports `ROBERT_TEST_PKCS11_MODULE`, `ROBERT_TEST_PKCS11_TOKEN_LABEL` and
//! `ROBERT_TEST_PKCS11_PIN`. Without them each test prints `SKIPPED (no PKCS#11 module: …)` and
//! passes. They share the one token, so they run one at a time and each starts from an empty
//! token.

mod common;

use common::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use robert_proto::{AppEphemeralKey, Epoch, Id, KAuth, KEnc, SessionKeys};
use robert_server::keystore::pkcs11::{self, Pin, Pkcs11Settings, Provision, Token};
use robert_server::keystore::{self, DayKeys, KeyError, ServerSecrets};
use robert_server::storage::memory::MemoryStorage;
use std::sync::Arc;

/// The tests share one token: one at a time.
static TOKEN_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Module {
    settings: Pkcs11Settings,
    pin: String,
}

impl Module {
    fn pin(&self) -> Pin {
        Pin::new(self.pin.clone())
    }

    /// A logged-in handle on the token, emptied of every object.
    fn empty_token(&self) -> Arc<Token> {
        let token = Token::open(&self.settings, &self.pin()).expect("the test token opens");
        token.destroy_all_objects().expect("the test token can be emptied");
        token
    }

    fn labels(&self, token: &Token) -> Vec<String> {
        let mut l: Vec<String> = token.objects().expect("objects").into_iter().map(|o| o.label).collect();
        l.sort();
        l
    }
}

/// The module from the environment, or `None` after printing why the test is skipped.
fn module(test: &str) -> Option<Module> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (
        var("ROBERT_TEST_PKCS11_MODULE"),
        var("ROBERT_TEST_PKCS11_TOKEN_LABEL"),
        var("ROBERT_TEST_PKCS11_PIN"),
    ) {
        (Some(module), Some(label), Some(pin)) => {
            Some(Module { settings: Pkcs11Settings { module: module.into(), token_label: label }, pin })
        }
        _ => {
            eprintln!(
                "{test}: SKIPPED (no PKCS#11 module: set ROBERT_TEST_PKCS11_MODULE, \
                 ROBERT_TEST_PKCS11_TOKEN_LABEL and ROBERT_TEST_PKCS11_PIN, e.g. by running under \
                 scripts/softhsm-throwaway.sh)"
            );
            None
        }
    }
}

/// sk_S, the KEK, the challenge key and the federation signing key refuse `CKA_VALUE`; K_G is
/// readable by design (the hot path needs it, see `keystore::pkcs11`). Provisioning twice is
/// refused, and the public files match the token.
#[tokio::test]
async fn provisioned_keys_cannot_leave_the_module() {
    let Some(m) = module("provisioned_keys_cannot_leave_the_module") else { return };
    let _one = TOKEN_LOCK.lock().await;
    let token = m.empty_token();
    let dir = tempfile::tempdir().expect("tmp");
    keystore::keygen_pkcs11(dir.path(), &m.settings, &m.pin(), Provision::Generate).expect("provision");
    let mut expected: Vec<String> = pkcs11::PROVISIONED_LABELS.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(m.labels(&token), expected);
    for label in
        [pkcs11::LABEL_SK_S, pkcs11::LABEL_KEK, pkcs11::LABEL_CHALLENGE, pkcs11::LABEL_FEDERATION_SIGNING]
    {
        assert!(!token.value_is_readable(label).expect("attribute read answered"), "{label} is readable");
    }
    assert!(token.value_is_readable(pkcs11::LABEL_K_G).expect("K_G read"), "K_G is documented as readable");
    let readable: Vec<String> =
        token.objects().expect("objects").into_iter().filter(|o| o.readable).map(|o| o.label).collect();
    assert_eq!(readable, vec![pkcs11::LABEL_K_G.to_owned()], "only K_G may leave the module");

    let secrets = ServerSecrets::load_pkcs11(&m.settings, &m.pin()).expect("opens");
    assert_eq!(secrets.backend(), "pkcs11");
    let public = std::fs::read_to_string(dir.path().join(keystore::REGISTRATION_PUBLIC_FILE)).expect("pk_S");
    assert_eq!(public.trim(), hex::encode(secrets.registration.public_key().as_bytes()));
    let signing = secrets.federation_signing.as_ref().expect("the module holds a signing key");
    let public =
        std::fs::read_to_string(dir.path().join(keystore::FEDERATION_SIGNING_PUBLIC_FILE)).expect("public");
    assert_eq!(public.trim(), hex::encode(signing.public_key()));
    // The signature made inside the module verifies as RFC 8032 Ed25519 (what peers check).
    let sig = signing.sign(b"a federation batch");
    aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, signing.public_key())
        .verify(b"a federation batch", &sig)
        .expect("module signature verifies");
    let audit = std::fs::read_to_string(dir.path().join(keystore::KEYGEN_AUDIT_FILE)).expect("audit log");
    assert!(audit.contains("\"keys-created\"") && audit.contains("\"pkcs11\""), "{audit}");

    let again = tempfile::tempdir().expect("tmp");
    let e = keystore::keygen_pkcs11(again.path(), &m.settings, &m.pin(), Provision::Generate)
        .expect_err("second provisioning refused");
    assert!(e.to_string().contains("refusing to overwrite"), "{e}");
    assert_eq!(m.labels(&token), expected, "a refused provisioning changes nothing");
}

/// With the same sk_S and KEK (imported from a key directory), the module and the file backend
/// derive the same K_auth / K_enc for the same App key (§3.3) and unwrap each other's rows: a
/// deployment moves into the module without losing a registration.
#[tokio::test]
async fn module_and_files_give_identical_bytes() {
    let Some(m) = module("module_and_files_give_identical_bytes") else { return };
    let _one = TOKEN_LOCK.lock().await;
    let _token = m.empty_token();
    let dir = tempfile::tempdir().expect("tmp");
    let files_dir = dir.path().join("files");
    keystore::keygen(&files_dir, &mut ChaCha20Rng::seed_from_u64(7)).expect("file keys");
    let files = ServerSecrets::load(&files_dir).expect("file keys load");
    keystore::keygen_pkcs11(
        &dir.path().join("public"),
        &m.settings,
        &m.pin(),
        Provision::FromDir(&files_dir),
    )
    .expect("import");
    let module = ServerSecrets::load_pkcs11(&m.settings, &m.pin()).expect("module keys");
    assert_eq!(module.registration.public_key(), files.registration.public_key());

    let mut rng = ChaCha20Rng::seed_from_u64(8);
    for _ in 0..4 {
        let app = AppEphemeralKey::generate(&mut rng);
        let by_files = files.registration.agree(app.public_key()).expect("files agree");
        let by_module = module.registration.agree(app.public_key()).expect("module agrees");
        assert_eq!(by_module, by_files, "same K_auth and K_enc from both backends");
        assert_eq!(app.agree(files.registration.public_key()), by_module, "and the App agrees");
    }
    let keys = SessionKeys { k_auth: KAuth::new([1; 32]), k_enc: KEnc::new([2; 32]) };
    let id = 0x12_3456_789a_u64.to_be_bytes();
    let w_files = files.kek.wrap_session_keys(&keys, &id).expect("wrap");
    let w_module = module.kek.wrap_session_keys(&keys, &id).expect("wrap in module");
    assert_eq!(w_module.len(), keystore::WRAPPED_SESSION_KEYS_LEN, "the wrapped format is unchanged");
    assert_eq!(module.kek.unwrap_session_keys(&w_files, &id).expect("module unwraps files' row"), keys);
    assert_eq!(files.kek.unwrap_session_keys(&w_module, &id).expect("files unwrap module's row"), keys);
    // A row moved to another ID, or tampered with, is refused the same way as before.
    let other = 1u64.to_be_bytes();
    let r = module.kek.unwrap_session_keys(&w_module, &other);
    assert!(matches!(r, Err(KeyError::Unwrap)), "{r:?}");
    let mut t = w_module.clone();
    t[20] ^= 1;
    assert!(matches!(module.kek.unwrap_session_keys(&t, &id), Err(KeyError::Unwrap)));
    assert!(matches!(module.kek.unwrap_session_keys(&t[..10], &id), Err(KeyError::Unwrap)));
}

/// A server whose keys are in the module registers an App over HTTP; the App opens its sealed
/// EBID list (K_enc agreed through the module's ECDH) and its ESRs verify (K_auth unwrapped by
/// the module); after a restart on the same token and database, it still does.
#[tokio::test]
async fn server_on_the_module_end_to_end_and_after_restart() {
    let Some(m) = module("server_on_the_module_end_to_end_and_after_restart") else { return };
    let _one = TOKEN_LOCK.lock().await;
    let token = m.empty_token();
    let dir = tempfile::tempdir().expect("tmp");
    keystore::keygen_pkcs11(&dir.path().join("keys"), &m.settings, &m.pin(), Provision::Generate)
        .expect("provision");
    let secrets = ServerSecrets::load_pkcs11(&m.settings, &m.pin()).expect("opens");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let now = robert_proto::NtpTime::new(service_start().seconds() + 10 * 86_400);
    let server = TestServer::start_with_secrets(test_config(), dir, listener, now, secrets).await;
    let mut app = TestApp::register(&server).await;
    let resp = app.status(&server).await;
    assert_eq!(resp.status(), 200, "an ESR MACed with the module-agreed K_auth verifies");
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["atRisk"], false);
    // A wrong MAC is still the uniform rejection.
    let mut forged = app.request(&server, robert_proto::RequestCode::StatusRequest);
    forged.mac = robert_proto::api::b64_encode(&[0u8; 32]);
    server.advance(1);
    assert_rejected(server.post("/api/v1/status", &forged).await).await;
    let day_keys_before: Vec<String> =
        m.labels(&token).into_iter().filter(|l| l.starts_with(pkcs11::LABEL_DAY_KEY_PREFIX)).collect();
    assert!(!day_keys_before.is_empty(), "day keys were made in the module");

    let dir = server.stop_keeping_data().await;
    let secrets = ServerSecrets::load_pkcs11(&m.settings, &m.pin()).expect("reopens");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let later = robert_proto::NtpTime::new(now.seconds() + 3 * 3600);
    let server = TestServer::start_with_secrets(test_config(), dir, listener, later, secrets).await;
    let resp = app.status(&server).await;
    assert_eq!(resp.status(), 200, "after a restart the stored row still unwraps in the module");
    let day_keys_after: Vec<String> =
        m.labels(&token).into_iter().filter(|l| l.starts_with(pkcs11::LABEL_DAY_KEY_PREFIX)).collect();
    assert_eq!(day_keys_after, day_keys_before, "a restart reuses the day keys: none made twice");
    server.stop().await;
}

/// Day keys are made in the module, one per day even when two replicas race, rotate with the
/// days, and are destroyed in the module (and in storage) CT days after their day, with an
/// audit line.
#[tokio::test]
async fn day_keys_rotate_and_are_destroyed_in_the_module() {
    let Some(m) = module("day_keys_rotate_and_are_destroyed_in_the_module") else { return };
    let _one = TOKEN_LOCK.lock().await;
    let token = m.empty_token();
    let dir = tempfile::tempdir().expect("tmp");
    keystore::keygen_pkcs11(&dir.path().join("keys"), &m.settings, &m.pin(), Provision::Generate)
        .expect("provision");
    let day_labels = || -> Vec<u32> {
        let mut days: Vec<u32> = m
            .labels(&token)
            .into_iter()
            .filter_map(|l| l.strip_prefix(pkcs11::LABEL_DAY_KEY_PREFIX).and_then(|d| d.parse().ok()))
            .collect();
        days.sort();
        days
    };

    // Two replicas on one storage and one module race for the same day: one key survives.
    let storage = MemoryStorage::new();
    let a = ServerSecrets::load_pkcs11(&m.settings, &m.pin()).expect("replica a");
    let b = ServerSecrets::load_pkcs11(&m.settings, &m.pin()).expect("replica b");
    let keys_a = DayKeys::load(&storage, &a.kek).await.expect("a");
    let keys_b = DayKeys::load(&storage, &b.kek).await.expect("b");
    let ca = keys_a.get_or_create(20_000, &storage, &a.kek).await.expect("a creates");
    let cb = keys_b.get_or_create(20_000, &storage, &b.kek).await.expect("b creates, loses the race");
    let epoch = Epoch::new(5).expect("epoch");
    let id = Id::new(42).expect("id");
    assert_eq!(ca.encrypt(epoch, id), cb.encrypt(epoch, id), "both replicas use the stored key");
    assert_eq!(day_labels(), vec![20_000], "the loser's key was destroyed in the module");
    assert_eq!(keys_b.forget_before(20_001), 1);
    assert!(day_labels().is_empty(), "expiry destroys the key in the module");
    drop((keys_a, keys_b, a, b));

    // A server: keys for today and the next lists, rotated as days pass, destroyed after CT.
    let secrets = ServerSecrets::load_pkcs11(&m.settings, &m.pin()).expect("opens");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let now = robert_proto::NtpTime::new(service_start().seconds() + 10 * 86_400);
    let server = TestServer::start_with_secrets(test_config(), dir, listener, now, secrets).await;
    let today = (now.to_unix() / 86_400) as u32;
    let first = day_labels();
    assert_eq!(first.first(), Some(&today), "{first:?}");
    let ct = server.service.config().protocol.ct_days;
    server.advance((ct + 3) * 86_400);
    server.service.prepare_day_keys().await.expect("rotation");
    assert!(day_labels().contains(&(today + ct + 3)), "a fresh key for the new day");
    server.service.expire().await.expect("expiry");
    let left = day_labels();
    assert!(left.iter().all(|d| *d >= today + 3), "keys older than CT days are gone: {left:?}");
    assert!(!left.is_empty());
    let audit = std::fs::read_to_string(server.dir.path().join("audit.log")).expect("audit log");
    assert!(audit.contains("\"day-keys-destroyed-in-module\""), "{audit}");
    assert!(audit.contains("\"day-key-created\"") && audit.contains("\"keystore\":\"pkcs11\""), "{audit}");
    server.stop().await;
}

/// Opening fails with errors that say what is wrong: no module, no such token, wrong PIN.
#[tokio::test]
async fn clear_errors_for_missing_module_token_and_wrong_pin() {
    let Some(m) = module("clear_errors_for_missing_module_token_and_wrong_pin") else { return };
    let _one = TOKEN_LOCK.lock().await;
    let missing = Pkcs11Settings { module: "/nonexistent/libpkcs11.so".into(), token_label: "x".into() };
    let e = Token::open(&missing, &m.pin()).expect_err("no module").to_string();
    assert!(e.contains("/nonexistent/libpkcs11.so") && e.contains("does not exist"), "{e}");
    let no_token = Pkcs11Settings { token_label: "no-such-token".into(), ..m.settings.clone() };
    let e = Token::open(&no_token, &m.pin()).expect_err("no token").to_string();
    assert!(e.contains("no PKCS#11 token labelled 'no-such-token'"), "{e}");
    assert!(e.contains(&m.settings.token_label), "names the tokens present: {e}");
    // An unprovisioned token: the error says how to provision it.
    let _token = m.empty_token();
    let e = ServerSecrets::load_pkcs11(&m.settings, &m.pin()).expect_err("empty token").to_string();
    assert!(e.contains("robert keygen --pkcs11"), "{e}");
    assert!(!e.contains(&m.pin), "the PIN is never printed");
    // The wrong-PIN refusal needs a process that is not logged in yet: see
    // robert-cli/tests/pkcs11_cli.rs (`robert serve` with a wrong PIN).
    let e = Pin::from_env("ROBERT_TEST_PKCS11_PIN_THAT_IS_NOT_SET").expect_err("unset").to_string();
    assert!(e.contains("ROBERT_TEST_PKCS11_PIN_THAT_IS_NOT_SET"), "{e}");
    assert_eq!(format!("{:?}", m.pin()), "Pin([redacted])");
}
