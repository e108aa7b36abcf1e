//! `robert simulate` and `robert demo` end to end: the real binary on a tiny population writes
//! results.json and the plots (PNG and SVG, text rendered with the bundled font) and prints its
//! table; bad flags are refused with the knob named.

use std::process::{Command, Output};

fn robert(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_robert")).args(args).output().expect("the binary runs")
}

#[test]
fn simulate_writes_results_and_plots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("out");
    let out = robert(&[
        "simulate",
        "--population",
        "200",
        "--days",
        "5",
        "--initial-infected",
        "0.05",
        "--loss-sweep",
        "0",
        "--no-attacks",
        "--seed",
        "5",
        "--out",
        out_dir.to_str().expect("utf-8 path"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("recall at 10 % loss") && stdout.contains("results.json"), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("results.json")).expect("results.json"))
            .expect("JSON");
    assert_eq!(json["config"]["seed"], 5);
    assert_eq!(json["population"]["people"], 200);
    assert_eq!(json["traced"]["daily"].as_array().map(Vec::len), Some(5));
    assert_eq!(json["untraced"]["daily"].as_array().map(Vec::len), Some(5));
    assert_eq!(json["loss_sweep"].as_array().map(Vec::len), Some(1));
    assert_eq!(json["loss_sweep"][0]["loss"], 0.0);
    assert_eq!(json["traced"]["accuracy"]["notified_without_true_contact"], 0);
    for name in ["epidemic", "notifications", "recall_by_loss"] {
        let png = std::fs::read(out_dir.join(format!("{name}.png"))).expect("png");
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 5_000, "{name}.png");
        let svg = std::fs::read_to_string(out_dir.join(format!("{name}.svg"))).expect("svg");
        assert!(svg.starts_with("<svg") && svg.contains("<text"), "{name}.svg has no text");
    }
    // The same seed again: the same reproducible results.
    let out_dir2 = dir.path().join("out2");
    let again = robert(&[
        "simulate",
        "--population",
        "200",
        "--days",
        "5",
        "--initial-infected",
        "0.05",
        "--loss-sweep",
        "0",
        "--no-attacks",
        "--seed",
        "5",
        "--no-plots",
        "--out",
        out_dir2.to_str().expect("utf-8 path"),
    ]);
    assert!(again.status.success());
    let json2: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir2.join("results.json")).expect("results.json"))
            .expect("JSON");
    for key in ["population", "traced"] {
        assert_eq!(json[key], json2[key], "{key} differs between two runs with one seed");
    }
}

#[test]
fn bad_knobs_are_named() {
    let out = robert(&["simulate", "--loss", "1.5", "--out", "/nonexistent/never"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loss") && err.contains("[0, 1]"), "{err}");
    let out = robert(&["simulate", "--loss-sweep", "0,x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--loss-sweep"));
}

#[test]
fn help_explains_every_flag() {
    let out = robert(&["simulate", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--population",
        "--adoption",
        "--loss",
        "--rssi-noise",
        "--beta",
        "--store",
        "--loss-sweep",
        "--seed",
        "--out",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    let out = robert(&["demo", "--help"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("--out"));
}
