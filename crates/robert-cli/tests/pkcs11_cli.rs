//! `robert keygen --pkcs11` and `robert serve` on a PKCS#11 security module (SoftHSM2), as an
//! operator runs them: provisioning, serving, a phone registering and sending authenticated
//! requests over HTTP, a restart, and the errors for a wrong PIN or a missing module.
//!
//! Needs a token: run under `scripts/softhsm-throwaway.sh` (as `.ci/run` does). Without
//! `ROBERT_TEST_PKCS11_MODULE` / `_TOKEN_LABEL` / `_PIN` the test prints `SKIPPED (no PKCS#11
//! module: …)` and passes.

mod common;

use common::ServerProcess;
use robert_server::keystore::pkcs11::{Pin, Pkcs11Settings, Token};
use std::path::Path;
use std::process::{Command, Output};

fn robert(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_robert"));
    c.current_dir(cwd).env_remove("ROBERT_PHONE_KEY").env_remove("ROBERT_PKCS11_PIN").args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("robert runs")
}

fn ok(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = robert(cwd, args, env);
    assert!(out.status.success(), "robert {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8").trim().to_owned()
}

fn config(data: &Path, module: &str, label: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{data}\"\n\n[registration]\npow_difficulty = 4\n\n\
         [storage]\nfsync = false\n\n[keystore]\nbackend = \"pkcs11\"\npkcs11_module = \"{module}\"\n\
         pkcs11_token_label = \"{label}\"\npkcs11_pin_env = \"ROBERT_TEST_PKCS11_PIN\"\n",
        data = data.display()
    )
}

#[test]
fn keygen_into_the_token_then_serve_register_restart_and_refuse_bad_settings() {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let (Some(module), Some(label), Some(pin)) = (
        var("ROBERT_TEST_PKCS11_MODULE"),
        var("ROBERT_TEST_PKCS11_TOKEN_LABEL"),
        var("ROBERT_TEST_PKCS11_PIN"),
    ) else {
        eprintln!(
            "pkcs11_cli: SKIPPED (no PKCS#11 module: set ROBERT_TEST_PKCS11_MODULE, \
             ROBERT_TEST_PKCS11_TOKEN_LABEL and ROBERT_TEST_PKCS11_PIN, e.g. by running under \
             scripts/softhsm-throwaway.sh)"
        );
        return;
    };
    // Start from an empty token (the throwaway token may hold another test binary's keys).
    {
        let settings = Pkcs11Settings { module: module.clone().into(), token_label: label.clone() };
        Token::open(&settings, &Pin::new(pin.clone()))
            .expect("token opens")
            .destroy_all_objects()
            .expect("emptied");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let pin_env = [("ROBERT_PKCS11_PIN", pin.as_str())];

    // Provisioning: keys in the token, only public files on disk.
    let keygen = ["keygen", "--pkcs11", "--module", &module, "--token-label", &label, "--dir", "data/keys"];
    let out = robert(d, &keygen, &[]);
    assert!(!out.status.success(), "no PIN in the environment: refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ROBERT_PKCS11_PIN"), "names the variable: {err}");
    ok(d, &keygen, &pin_env);
    let keys = d.join("data/keys");
    for f in ["registration-public.hex", "federation-signing-public.hex", "keygen-audit.log"] {
        assert!(keys.join(f).exists(), "{f} written");
    }
    for f in ["registration-key.hex", "kek.hex", "federation-key.hex", "federation-signing-key.hex"] {
        assert!(!keys.join(f).exists(), "no secret file {f} with --pkcs11");
    }
    ok(d, &["audit", "verify", "data/keys/keygen-audit.log"], &[]);
    let again = robert(
        d,
        &["keygen", "--pkcs11", "--module", &module, "--token-label", &label, "--dir", "k2"],
        &pin_env,
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));

    // Serving on the token; a phone registers (ECDH in the module) and its ESR verifies
    // (K_auth unwrapped in the module).
    std::fs::write(d.join("robert.toml"), config(&d.join("data"), &module, &label)).expect("config");
    let mut server = ServerProcess::start(d, &["serve", "--config", "robert.toml"]);
    assert!(
        server.stderr().contains(&format!("server keys in PKCS#11 token '{label}'")),
        "{}",
        server.stderr()
    );
    let url = server.url.clone();
    let phone = |args: &[&str]| {
        let mut all = vec!["phone", "--state", "a.state", "--server", url.as_str()];
        all.extend_from_slice(args);
        ok(d, &all, &[])
    };
    let reg: serde_json::Value = serde_json::from_str(&phone(&["register"])).expect("json");
    assert!(reg.is_object(), "{reg}");
    assert_eq!(phone(&["status"]), r#"{"atRisk":false}"#);
    assert!(server.terminate().success(), "{}", server.stderr());
    assert!(!server.stderr().contains(&pin), "the PIN is never printed");

    // Restart on the same token and database: the registration still authenticates.
    let mut server = ServerProcess::start(d, &["serve", "--config", "robert.toml"]);
    let url = server.url.clone();
    ok(d, &["phone", "--state", "a.state", "--server", &url, "unregister"], &[]);
    assert!(server.terminate().success(), "{}", server.stderr());

    // A wrong PIN, an unset PIN variable, a missing module, an unknown token: clear errors.
    let serve = ["serve", "--config", "robert.toml"];
    let out = robert(d, &serve, &[("ROBERT_TEST_PKCS11_PIN", "not-the-pin")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("wrong user PIN for PKCS#11 token '{label}'")), "{err}");
    assert!(!err.contains("not-the-pin"), "the PIN is never printed: {err}");
    let out = robert(d, &serve, &[("ROBERT_TEST_PKCS11_PIN", "")]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("ROBERT_TEST_PKCS11_PIN, which is not set"));
    std::fs::write(d.join("missing.toml"), config(&d.join("data"), "/nonexistent/libpkcs11.so", &label))
        .expect("config");
    let out = robert(d, &["serve", "--config", "missing.toml"], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/libpkcs11.so does not exist"), "{err}");
    std::fs::write(d.join("token.toml"), config(&d.join("data"), &module, "no-such-token")).expect("config");
    let out = robert(d, &["serve", "--config", "token.toml"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no PKCS#11 token labelled 'no-such-token'"), "{err}");
}
