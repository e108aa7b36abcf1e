//! `robert simulate --countries` end to end: the real binary runs two federated countries and
//! reports them per country in its table and in results.json; bad country flags are refused with
//! the knob named.

use std::process::{Command, Output};

fn robert(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_robert")).args(args).output().expect("the binary runs")
}

#[test]
fn simulate_two_countries_reports_each() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("out");
    let out = robert(&[
        "simulate",
        "--countries",
        "FR,DE",
        "--country-shares",
        "2,1",
        "--travel-rate",
        "0.2",
        "--population",
        "300",
        "--days",
        "5",
        "--initial-infected",
        "0.05",
        "--loss-sweep",
        "",
        "--no-compare",
        "--no-attacks",
        "--no-plots",
        "--seed",
        "3",
        "--out",
        out_dir.to_str().expect("utf-8 path"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    for row in ["FR: recall / precision", "DE: recall / precision", "FR → DE: batches", "person-days abroad"]
    {
        assert!(stdout.contains(row), "no {row:?} in {stdout}");
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("results.json")).expect("results.json"))
            .expect("JSON");
    assert_eq!(json["config"]["countries"][1]["code"], 49);
    let countries = json["countries"]["countries"].as_array().expect("countries");
    assert_eq!(countries.len(), 2);
    assert_eq!(countries[0]["people"], 200);
    assert_eq!(countries[1]["people"], 100);
    assert_eq!(countries[0]["peers"][0]["peer"], "DE");
    assert!(json["countries"]["cross_border"]["person_days_abroad"].as_u64().is_some_and(|d| d > 0));
}

#[test]
fn bad_country_flags_are_named() {
    for (args, knob) in [
        (&["--countries", "FR"][..], "countries"),
        (&["--countries", "FR,XX"][..], "countries"),
        (&["--countries", "FR,DE", "--country-shares", "1"][..], "country-shares"),
        (&["--countries", "FR,DE", "--country-shares", "1,x"][..], "--country-shares"),
        (&["--countries", "FR,DE", "--travel-rate", "2"][..], "travel-rate"),
    ] {
        let mut all = vec!["simulate"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--out", "/nonexistent/never"]);
        let out = robert(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(stderr.contains(knob), "{args:?}: {stderr}");
    }
}
