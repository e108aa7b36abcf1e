//! The operator commands end to end (DESIGN §5): `robert keygen`, `robert authority keygen|issue`
//! and `robert serve` — the real binary, its files, stdout, stderr and exit codes, and a real
//! server process reached over HTTP and stopped with SIGTERM.

mod common;

use common::{DEADLINE, ServerProcess, now_unix};

use robert_server::token::{Purpose, TokenError, TrustedAuthorities};
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// The server key files `robert keygen` writes, secret ones first.
const SECRET_KEY_FILES: [&str; 3] = ["federation-key.hex", "registration-key.hex", "kek.hex"];
const PUBLIC_KEY_FILE: &str = "registration-public.hex";

fn robert_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_robert"))
        .current_dir(cwd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs")
}

fn stdout_ok(cwd: &Path, args: &[&str]) -> String {
    let out = robert_in(cwd, args);
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Runs `args`, expects a failure whose stderr contains every one of `needles`; returns stderr.
fn fails_with(cwd: &Path, args: &[&str], needles: &[&str]) -> String {
    let out = robert_in(cwd, args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} should fail; stderr: {err}");
    assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout on error");
    for needle in needles {
        assert!(err.contains(needle), "{args:?}: stderr {err:?} lacks {needle:?}");
    }
    err
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

/// A compact JWS: three non-empty base64url segments, nothing else (one line on stdout).
fn assert_compact_jws(stdout: &str) -> String {
    let token = stdout.strip_suffix('\n').expect("one line");
    assert!(!token.contains('\n'), "exactly one token: {stdout:?}");
    let segments: Vec<&str> = token.split('.').collect();
    assert_eq!(segments.len(), 3, "{token}");
    for s in segments {
        assert!(!s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }
    token.to_owned()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

/// `POST /api/v1/report` with no contacts under `token`: the status and the JSON body.
async fn empty_report(http: &reqwest::Client, url: &str, token: &str) -> (u16, serde_json::Value) {
    let resp = http
        .post(format!("{url}/api/v1/report"))
        .bearer_auth(token)
        .json(&serde_json::json!({"contacts": []}))
        .send()
        .await
        .expect("report");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("a JSON body"))
}

// ---------------------------------------------------------------------------------------------

#[test]
fn keygen_writes_private_key_files_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys");
    let keys_arg = keys.to_str().expect("utf-8 temp path");
    let out = robert_in(dir.path(), &["keygen", "--dir", keys_arg]);
    assert!(out.status.success(), "keygen: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains(PUBLIC_KEY_FILE), "names pk_S's file");
    let mut before = Vec::new();
    for f in SECRET_KEY_FILES {
        let path = keys.join(f);
        #[cfg(unix)]
        assert_eq!(mode(&path), 0o600, "{f} is readable by its owner only");
        let text = std::fs::read_to_string(&path).expect("key file");
        assert!(hex::decode(text.trim()).is_ok_and(|k| k.len() == 32), "{f}: 32 bytes of hex");
        before.push(text);
    }
    // pk_S: SEC1 uncompressed P-256, for apps to pin.
    let public = std::fs::read_to_string(keys.join(PUBLIC_KEY_FILE)).expect("public key file");
    let public = hex::decode(public.trim()).expect("hex");
    assert_eq!((public.len(), public.first()), (65, Some(&4)));

    fails_with(dir.path(), &["keygen", "--dir", keys_arg], &["refusing to overwrite"]);
    for (f, text) in SECRET_KEY_FILES.iter().zip(&before) {
        assert_eq!(&std::fs::read_to_string(keys.join(f)).expect("key file"), text, "{f} untouched");
    }
}

#[test]
fn authority_keygen_and_issue_make_tokens_a_server_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = robert_in(dir.path(), &["authority", "keygen", "--out", "ha.pem"]);
    assert!(out.status.success(), "authority keygen: {}", String::from_utf8_lossy(&out.stderr));
    let private = dir.path().join("ha.pem");
    let public = dir.path().join("ha.pub.pem");
    #[cfg(unix)]
    assert_eq!(mode(&private), 0o600, "the private key is readable by its owner only");
    assert!(std::fs::read_to_string(&private).expect("private key").contains("PRIVATE KEY"));
    let mut trusted = TrustedAuthorities::new();
    trusted.add_public_key_pem(&std::fs::read_to_string(&public).expect("public key")).expect("a SPKI PEM");
    // Never overwrites an authority key.
    fails_with(dir.path(), &["authority", "keygen", "--out", "ha.pem"], &["ha.pem"]);

    let declare = assert_compact_jws(&stdout_ok(
        dir.path(),
        &["authority", "issue", "--key", "ha.pem", "--purpose", "declare"],
    ));
    let now = now_unix();
    let verified = trusted.verify(&declare, Purpose::Declare, now).expect("a valid declare token");
    assert_eq!(verified.purpose, Purpose::Declare);
    assert!(verified.exp > now, "not expired");
    assert_eq!(trusted.verify(&declare, Purpose::Reset, now).err(), Some(TokenError::WrongPurpose));

    let reset = assert_compact_jws(&stdout_ok(
        dir.path(),
        &["authority", "issue", "--key", "ha.pem", "--purpose", "reset", "--ttl", "60"],
    ));
    let verified = trusted.verify(&reset, Purpose::Reset, now).expect("a valid reset token");
    assert!(verified.exp <= now_unix() + 60, "--ttl is honoured");
    assert_eq!(trusted.verify(&reset, Purpose::Declare, now).err(), Some(TokenError::WrongPurpose));
    assert_eq!(trusted.verify(&reset, Purpose::Reset, now + 120).err(), Some(TokenError::Expired));
    // Each token is single-use: a fresh jti every time.
    let again = stdout_ok(dir.path(), &["authority", "issue", "--key", "ha.pem", "--purpose", "declare"]);
    let again = trusted.verify(again.trim(), Purpose::Declare, now).expect("valid");
    assert_ne!(again.jti, trusted.verify(&declare, Purpose::Declare, now).expect("valid").jti);

    fails_with(
        dir.path(),
        &["authority", "issue", "--key", "ha.pem", "--purpose", "admin"],
        &["admin", "--purpose"],
    );
    fails_with(
        dir.path(),
        &["authority", "issue", "--key", "missing.pem", "--purpose", "declare"],
        &["missing.pem"],
    );
}

#[test]
fn serve_without_config_runs_a_development_server_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = ServerProcess::start(dir.path(), &["serve", "--listen", "127.0.0.1:0"]);
    let data = dir.path().join("robert-data");
    for f in SECRET_KEY_FILES.iter().chain([&PUBLIC_KEY_FILE]) {
        assert!(data.join("keys").join(f).is_file(), "robert-data/keys/{f} created");
    }
    let dev_key = data.join("dev-authority.pem");
    assert!(dev_key.is_file(), "robert-data/dev-authority.pem created");
    #[cfg(unix)]
    assert_eq!(mode(&dev_key), 0o600);
    let log = server.stderr();
    for needle in ["DEVELOPMENT server keys", "DEVELOPMENT health-authority key", "dev-authority.pem"] {
        assert!(log.contains(needle), "stderr says {needle:?}:\n{log}");
    }

    let issue = ["authority", "issue", "--key", "robert-data/dev-authority.pem", "--purpose", "declare"];
    let token = assert_compact_jws(&stdout_ok(dir.path(), &issue));
    let reset = stdout_ok(
        dir.path(),
        &["authority", "issue", "--key", "robert-data/dev-authority.pem", "--purpose", "reset"],
    );
    let rt = runtime();
    rt.block_on(async {
        let http = reqwest::Client::builder().timeout(DEADLINE).build().expect("http client");
        let health = http.get(format!("{}/healthz", server.url)).send().await.expect("healthz");
        assert_eq!(health.status(), 200);
        assert_eq!(empty_report(&http, &server.url, &token).await, (202, serde_json::json!({"accepted": 0})));
        // Single use; and a reset token does not authorize a declaration.
        let rejected = (403, serde_json::json!({"error": "rejected"}));
        assert_eq!(empty_report(&http, &server.url, &token).await, rejected);
        assert_eq!(empty_report(&http, &server.url, reset.trim()).await, rejected);
    });
    let status = server.terminate();
    assert!(status.success(), "exit 0 after SIGTERM, got {status}; stderr:\n{}", server.stderr());
    assert!(server.stderr().contains("robert: stopped"), "stderr:\n{}", server.stderr());
    drop(server);

    // A second start keeps the keys and the development authority: its new tokens still work.
    let keys_before = std::fs::read(data.join("keys").join("kek.hex")).expect("kek");
    let mut server = ServerProcess::start(dir.path(), &["serve", "--listen", "127.0.0.1:0"]);
    assert!(!server.stderr().contains("created"), "nothing re-created:\n{}", server.stderr());
    assert_eq!(std::fs::read(data.join("keys").join("kek.hex")).expect("kek"), keys_before);
    let token = assert_compact_jws(&stdout_ok(dir.path(), &issue));
    rt.block_on(async {
        let http = reqwest::Client::builder().timeout(DEADLINE).build().expect("http client");
        assert_eq!(empty_report(&http, &server.url, &token).await, (202, serde_json::json!({"accepted": 0})));
    });
    let status = server.terminate();
    assert!(status.success(), "exit 0 after SIGTERM, got {status}; stderr:\n{}", server.stderr());
    assert!(server.stderr().contains("robert: stopped"));
}

#[test]
fn serve_with_config_needs_keys_and_known_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = dir.path().join("robert.toml");
    let config_arg = config.to_str().expect("utf-8 temp path");
    std::fs::write(
        &config,
        format!("[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n", data.display()),
    )
    .expect("write config");
    fails_with(dir.path(), &["serve", "--config", config_arg], &["no server keys", "robert keygen --dir"]);
    assert!(!data.join("keys").exists(), "config mode never creates keys by itself");

    // An unknown key, in a known section or as a section of its own, is named.
    std::fs::write(&config, "[server]\nlisten = \"127.0.0.1:0\"\nlisten_port = 8080\n").expect("write");
    fails_with(
        dir.path(),
        &["serve", "--config", config_arg],
        &["unknown field `listen_port`", "robert.toml"],
    );
    std::fs::write(&config, "[storage]\nfsync = true\n\n[mixer]\nmin_batch = 1\n").expect("write");
    fails_with(dir.path(), &["serve", "--config", config_arg], &["unknown field `mixer`"]);

    // With keys made by `robert keygen`, the same config serves, and stops cleanly on SIGTERM.
    std::fs::write(
        &config,
        format!("[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n", data.display()),
    )
    .expect("write config");
    let keys = data.join("keys");
    stdout_ok(dir.path(), &["keygen", "--dir", keys.to_str().expect("utf-8 temp path")]);
    let mut server = ServerProcess::start(dir.path(), &["serve", "--config", config_arg]);
    assert!(!server.stderr().contains("DEVELOPMENT"), "config mode is not development mode");
    assert!(!data.join("dev-authority.pem").exists(), "no development authority in config mode");
    runtime().block_on(async {
        let health = reqwest::get(format!("{}/healthz", server.url)).await.expect("healthz");
        assert_eq!(health.status(), 200);
    });
    let status = server.terminate();
    assert!(status.success(), "exit 0 after SIGTERM, got {status}; stderr:\n{}", server.stderr());
    assert!(server.stderr().contains("robert: stopped"));
}
