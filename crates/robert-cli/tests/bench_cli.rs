//! `robert bench` end to end, at a size a debug build runs in seconds: every subcommand the README
//! lists runs against the real server, exits 0 (each checks that every request was accepted), and
//! prints its figures as JSON lines on stdout. The figures themselves are not asserted: speed
//! lives in the benchmarks, not in tests (DESIGN §6).

use serde_json::Value;
use std::collections::HashMap;
use std::process::Command;

/// Runs `robert bench <args>`; returns each figure's JSON line by its name.
fn bench(args: &[&str]) -> HashMap<String, Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_robert"))
        .arg("bench")
        .args(args)
        .output()
        .expect("the robert binary runs");
    assert!(out.status.success(), "bench {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let mut figures = HashMap::new();
    for line in stdout.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert_eq!(v["bench"], args[0], "{line}");
        assert!(v["value"].is_number(), "{line}");
        let name = v["figure"].as_str().expect("a figure name").to_owned();
        figures.insert(name, v);
    }
    figures
}

fn has(figures: &HashMap<String, Value>, names: &[&str]) {
    for name in names {
        assert!(figures.contains_key(*name), "no figure {name}: {:?}", figures.keys().collect::<Vec<_>>());
    }
}

#[test]
fn register_reports_the_rate_beside_ecdh_and_the_no_op() {
    let f = bench(&["register", "--clients", "4", "--key-pool", "16", "--seconds", "0.3", "--warmup", "0"]);
    has(
        &f,
        &[
            "registrations_per_sec",
            "ecdh_per_sec_all_cores",
            "registrations_to_ecdh_ratio",
            "noop_per_sec",
            "register_cpu_us",
            "registrations_to_ecdh_ceiling",
        ],
    );
    assert!(f["registrations_per_sec"]["registrations"].as_u64().expect("a count") > 0);
    assert_eq!(f["registrations_per_sec"]["errors"], 0);
}

#[test]
fn status_reports_esrs_beside_the_no_op() {
    let f = bench(&[
        "status",
        "--ids",
        "2000",
        "--clients",
        "4",
        "--esr-interval",
        "0",
        "--seconds",
        "0.3",
        "--warmup",
        "0",
    ]);
    has(&f, &["esr_per_sec", "noop_per_sec", "esr_to_noop_ratio", "esr_crypto_ns", "storage_esr_per_sec"]);
    assert!(f["esr_per_sec"]["requests"].as_u64().expect("a count") > 0);
    assert_eq!(f["esr_per_sec"]["errors"], 0);
}

#[test]
fn upload_storage_and_expiry_run_small() {
    let upload = bench(&["upload", "--ids", "2000", "--pairs", "2000", "--per-report", "500"]);
    assert!(!upload.is_empty(), "upload printed figures");
    let storage = bench(&["storage", "--ids", "2000"]);
    assert!(!storage.is_empty(), "storage printed figures");
    let expiry = bench(&["expiry", "--rows", "2000", "--epochs-per-id", "4"]);
    assert!(!expiry.is_empty(), "expiry printed figures");
}
