//! `robert simulate --server URL`: a real `robert serve` child process (port 0, a temporary data
//! directory, 1-second epochs, its own server and authority keys) and a small seeded simulation
//! against it over HTTP, checked against the invariants the in-process run holds; runs the live
//! mode cannot do are refused with the reason.
//!
//! Wall time: about 2 minutes (a simulated day is 96 server epochs of 1 s, plus the wait for the
//! first block and the final sweep); the waits are the server's real clock, not assertions.

mod common;

use common::ServerProcess;
use std::path::Path;
use std::process::{Command, Output};

fn robert(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_robert")).args(args).output().expect("the binary runs")
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A server with 1-second epochs whose next block of 96 epochs starts `lead` seconds from now.
fn live_config(dir: &Path, lead: u32) -> std::path::PathBuf {
    live_config_with(dir, lead, "")
}

/// [`live_config`] with `protocol` appended to its `[protocol]` section.
fn live_config_with(dir: &Path, lead: u32, protocol: &str) -> std::path::PathBuf {
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let now_ntp = u32::try_from(unix + 2_208_988_800).expect("NTP era 0");
    let start = now_ntp - 96 + lead;
    let cfg = dir.join("live.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{data}\"\nkey_dir = \"{keys}\"\n\
             [protocol]\nepoch_duration_sec = 1\nservice_start_ntp = {start}\n{protocol}\
             [registration]\npow_difficulty = 6\n\
             [reports]\nmixer_min_batch = 1\nmixer_max_delay_sec = 1\n\
             [risk]\nseconds_per_hello = 900\nmin_exposure_minutes = 0.01\n\
             [storage]\nfsync = false\n\
             [authorities]\npublic_keys = [\"{auth}\"]\n",
            data = path(&dir.join("data")),
            keys = path(&dir.join("keys")),
            auth = path(&dir.join("authority.pub.pem")),
        ),
    )
    .expect("config written");
    cfg
}

#[test]
fn simulate_against_a_live_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    ok(&robert(&["keygen", "--dir", path(&dir.path().join("keys"))]));
    let authority = dir.path().join("authority.pem");
    ok(&robert(&["authority", "keygen", "--out", path(&authority)]));
    let cfg = live_config(dir.path(), 15);
    let mut server = ServerProcess::start(dir.path(), &["serve", "--config", path(&cfg)]);
    let url = format!("http://{}", server.url.trim_start_matches("http://"));

    let out_dir = dir.path().join("out");
    let base = [
        "simulate",
        "--server",
        &url,
        "--authority-key",
        path(&authority),
        "--seed",
        "4",
        "--population",
        "400",
        "--days",
        "1",
        // An outbreak already under way, diagnosed and declared within the one day simulated.
        "--initial-infected",
        "0.2",
        "--latent-days",
        "1",
        "--test-result-days",
        "0",
        "--symptomatic-fraction",
        "1",
        "--symptomatic-test-rate",
        "1",
        "--declare-rate",
        "1",
        "--hello-period",
        "900",
        "--min-exposure-minutes",
        "0.01",
        "--loss",
        "0",
        "--rssi-noise",
        "0",
        "--no-plots",
        "--out",
        path(&out_dir),
    ];

    // Refused before anything starts, with the reason and the arithmetic.
    let refused = robert(&[&base[..], &["--loss-sweep", ""]].concat());
    assert!(!refused.status.success());
    let e = String::from_utf8_lossy(&refused.stderr);
    assert!(e.contains("--no-attacks"), "{e}");
    let mut short_hellos = base.to_vec();
    let at = short_hellos.iter().position(|&a| a == "--hello-period").expect("flag") + 1;
    short_hellos[at] = "60";
    let refused = robert(&[&short_hellos[..], &["--loss-sweep", "", "--no-attacks"]].concat());
    assert!(!refused.status.success());
    let e = String::from_utf8_lossy(&refused.stderr);
    assert!(e.contains("900 / 1 = 900") && e.contains("--hello-period 900"), "{e}");
    let refused =
        robert(&[&base[..], &["--loss-sweep", "", "--no-attacks", "--live-max-sec", "100"]].concat());
    assert!(!refused.status.success());
    let e = String::from_utf8_lossy(&refused.stderr);
    assert!(e.contains("= 204 s of real time") && e.contains("--live-max-sec 100"), "{e}");
    assert!(!out_dir.join("results.json").exists());

    // The run.
    let stdout = ok(&robert(&[&base[..], &["--loss-sweep", "", "--no-attacks"]].concat()));
    assert!(stdout.contains(&format!("live server {url}")), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("results.json")).expect("results.json"))
            .expect("JSON");
    assert_eq!(json["live_server"], url.as_str());
    let phones = json["population"]["phones"].as_u64().expect("phones");
    let p = &json["traced"]["protocol"];
    let a = &json["traced"]["accuracy"];
    eprintln!("{stdout}\nprotocol: {p}\naccuracy: {a}");
    // Every phone registered over HTTP, with the server's proof of work.
    assert_eq!(p["registered"].as_u64(), Some(phones));
    assert_eq!(p["server_users"].as_u64(), Some(phones));
    // The scenario is not vacuous: people declared, HELLOs were uploaded, others were exposed.
    assert!(p["declarations"].as_u64() > Some(0), "{p}");
    assert!(p["pairs_uploaded"].as_u64() > Some(0), "{p}");
    assert!(a["truly_exposed"].as_u64() > Some(0), "{a}");
    // Recall 100 % at zero loss, and nobody notified who should not be.
    assert_eq!(a["true_positives"], a["truly_exposed"], "{a}");
    assert_eq!(a["notified"], a["truly_exposed"], "{a}");
    assert_eq!(a["notified_without_true_contact"], 0, "{a}");
    // Every declaration processed: each pair stored, mixed into an exposure, erased.
    assert_eq!(p["server_pairs_accepted"], p["pairs_uploaded"], "{p}");
    assert_eq!(p["server_pairs_processed"], p["pairs_uploaded"], "{p}");
    assert_eq!(p["server_pairs_rejected"], 0, "{p}");
    assert_eq!(p["server_pool_left"], 0, "{p}");
    assert_eq!(p["esr_failed"], 0, "{p}");
    assert_eq!(p["hellos_not_sent"], 0, "{p}");

    let status = server.terminate();
    assert!(status.success(), "server exit {status}; stderr:\n{}", server.stderr());
}

/// A server whose EBID-list blocks are not 96 epochs cannot hold simulated days: refused after
/// registration, with the key to change.
#[test]
fn refuses_a_server_whose_blocks_are_not_days() {
    let dir = tempfile::tempdir().expect("tempdir");
    ok(&robert(&["keygen", "--dir", path(&dir.path().join("keys"))]));
    let authority = dir.path().join("authority.pem");
    ok(&robert(&["authority", "keygen", "--out", path(&authority)]));
    let cfg = live_config_with(dir.path(), 15, "ebid_list_epochs = 48\n");
    let mut server = ServerProcess::start(dir.path(), &["serve", "--config", path(&cfg)]);
    let url = format!("http://{}", server.url.trim_start_matches("http://"));
    let out = robert(&[
        "simulate",
        "--server",
        &url,
        "--authority-key",
        path(&authority),
        "--population",
        "30",
        "--days",
        "1",
        "--hello-period",
        "900",
        "--no-attacks",
        "--loss-sweep",
        "",
        "--no-plots",
        "--out",
        path(&dir.path().join("out")),
    ]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("ebid_list_epochs = 96"), "{e}");
    let status = server.terminate();
    assert!(status.success(), "server exit {status}; stderr:\n{}", server.stderr());
}
