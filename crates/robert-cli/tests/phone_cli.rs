//! `robert phone` end to end against a child `robert serve` (config mode, keys from `robert
//! keygen`, a health authority from `robert authority keygen`), over real HTTP.

mod common;

use common::{DEADLINE, ServerProcess};

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn robert(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_robert"))
        .current_dir(cwd)
        .env_remove("ROBERT_PHONE_KEY")
        .args(args)
        .output()
        .expect("robert runs")
}

fn ok(cwd: &Path, args: &[&str]) -> String {
    let out = robert(cwd, args);
    assert!(out.status.success(), "robert {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8").trim().to_owned()
}

fn serve(cwd: &Path, config: &str) -> ServerProcess {
    ServerProcess::start(cwd, &["serve", "--config", config])
}

fn ntp_now() -> u32 {
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    u32::try_from(unix + 2_208_988_800).expect("era 0")
}

/// Waits until the server's mixer has emptied the pool.
fn wait_pool_empty(url: &str) {
    let deadline = Instant::now() + DEADLINE;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    loop {
        let text = rt.block_on(async {
            reqwest::get(format!("{url}/metrics")).await.expect("metrics").text().await.expect("text")
        });
        if text.lines().any(|l| l.trim() == "robert_pool_depth 0") {
            return;
        }
        assert!(Instant::now() < deadline, "the mixer never drained the pool:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_person_walks_the_protocol_with_robert_phone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    ok(d, &["keygen", "--dir", "data/keys"]);
    ok(d, &["authority", "keygen", "--out", "ha.pem"]);
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{data}\"\n\n[registration]\npow_difficulty = 4\n\n\
         [reports]\nmixer_min_batch = 1\n\n[risk]\nrule = \"epochs\"\nmin_exposed_epochs = 1\n\n\
         [authorities]\npublic_keys = [\"{pk}\"]\n\n[storage]\nfsync = false\n",
        data = d.join("data").display(),
        pk = d.join("ha.pub.pem").display()
    );
    std::fs::write(d.join("robert.toml"), config).expect("config");
    let server = serve(d, "robert.toml");
    let url = server.url.as_str();
    let phone = |state: &str, args: &[&str]| {
        let mut all = vec!["phone", "--state", state, "--server", url];
        all.extend_from_slice(args);
        robert(d, &all)
    };
    let phone_ok = |state: &str, args: &[&str]| {
        let out = phone(state, args);
        assert!(out.status.success(), "phone {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8").trim().to_owned()
    };

    // Not registered yet.
    assert!(!phone("a.state", &["hello"]).status.success());
    for p in ["a.state", "b.state"] {
        let reg: serde_json::Value = serde_json::from_str(&phone_ok(p, &["register"])).expect("json");
        assert!(reg["epoch"].as_u64().is_some());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join("a.state.key")).expect("key file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let state = std::fs::read(d.join("a.state")).expect("state");
    assert!(!String::from_utf8_lossy(&state).contains("kAuth"), "encrypted at rest");

    // A broadcasts; B hears it. `--at` stamps the HELLO's 16-bit time.
    let at = ntp_now();
    let hello = phone_ok("a.state", &["--at", &at.to_string(), "hello"]);
    assert_eq!(hello.len(), 32);
    assert_eq!(&hello[18..22], format!("{:04x}", at & 0xFFFF));
    let stale = phone("b.state", &["--at", &(at + 120).to_string(), "receive", &hello, "--rssi", "-50"]);
    assert!(!stale.status.success(), "a HELLO after δ is refused");
    assert!(String::from_utf8_lossy(&stale.stderr).contains("refused"));
    phone_ok("b.state", &["--at", &(at + 1).to_string(), "receive", &hello, "--rssi", "-50"]);

    // B is diagnosed and declares.
    let token = ok(d, &["authority", "issue", "--key", "ha.pem", "--purpose", "declare"]);
    let from = (at - 3600).to_string();
    let to = (at + 3600).to_string();
    let report: serde_json::Value = serde_json::from_str(&phone_ok(
        "b.state",
        &["report", "--token", &token, "--from", &from, "--to", &to],
    ))
    .expect("json");
    assert_eq!(report["accepted"], 1);
    let again = phone("b.state", &["report", "--token", &token, "--from", &from, "--to", &to]);
    assert!(!again.status.success(), "a spent token is refused");
    wait_pool_empty(url);

    // A is at risk, acknowledges, and stays at risk without asking again; B is not at risk.
    assert_eq!(phone_ok("a.state", &["status"]), r#"{"atRisk":true}"#);
    phone_ok("a.state", &["ack"]);
    assert_eq!(phone_ok("a.state", &["status"]), r#"{"atRisk":true}"#);
    assert_eq!(phone_ok("a.state", &["hello"]).len(), 32, "HELLOs continue after the ack");
    assert_eq!(phone_ok("b.state", &["status"]), r#"{"atRisk":false}"#);
    let early = phone("b.state", &["status"]);
    assert!(String::from_utf8_lossy(&early.stderr).contains("too early"));

    // Delete history, unregister.
    phone_ok("a.state", &["delete-history"]);
    phone_ok("b.state", &["unregister"]);
    assert!(!phone("b.state", &["status"]).status.success(), "unregistered");
}
