//! `robert audit verify` end to end: the real binary on a real hash-chained log, tampered with
//! each way (edit, deletion, insertion, reordering, truncation against an anchored head).

use robert_server::audit::AuditLog;
use serde_json::json;
use std::path::Path;
use std::process::{Command, Output};

fn robert(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_robert")).args(args).output().expect("the binary runs")
}

fn write_log(path: &Path) {
    let log = AuditLog::open(path).expect("open");
    log.append("start", &[("config_sha256", json!("00ff"))]);
    log.append("day-key-created", &[("day", json!(20_500))]);
    log.append("tokens-accepted", &[("declare", json!(7)), ("reset", json!(1))]);
    log.append("day-keys-destroyed", &[("before_day", json!(20_486)), ("stored", json!(1))]);
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).expect("read").lines().map(str::to_owned).collect()
}

/// Writes `lines` to a fresh file and runs `robert audit verify` on it.
fn verify(dir: &Path, name: &str, lines: &[String], extra: &[&str]) -> Output {
    let path = dir.join(name);
    std::fs::write(&path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).expect("write");
    let p = path.to_str().expect("utf-8 path");
    robert(&[&["audit", "verify", p], extra].concat())
}

fn assert_broken_at(out: &Output, line: usize) {
    assert!(!out.status.success(), "tampering must fail the check");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("line {line}:")), "stderr names line {line}: {err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn verify_accepts_an_intact_log_and_names_every_tampered_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("audit.log");
    write_log(&path);
    let good = lines(&path);
    assert_eq!(good.len(), 4);

    let out = verify(dir.path(), "intact.log", &good, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    assert!(stdout.starts_with("ok: 4 lines, head "), "{stdout}");
    let head = stdout.trim().rsplit(' ').next().expect("head").to_owned();
    assert_eq!(head.len(), 64);

    // Edit: a count changed in line 3.
    let mut edited = good.clone();
    edited[2] = edited[2].replace("\"declare\":7", "\"declare\":8");
    assert_ne!(edited, good);
    assert_broken_at(&verify(dir.path(), "edited.log", &edited, &[]), 3);

    // Deletion of line 2.
    let mut deleted = good.clone();
    deleted.remove(1);
    assert_broken_at(&verify(dir.path(), "deleted.log", &deleted, &[]), 2);

    // Insertion: line 2 written twice.
    let mut inserted = good.clone();
    inserted.insert(2, good[1].clone());
    assert_broken_at(&verify(dir.path(), "inserted.log", &inserted, &[]), 3);

    // Reordering of lines 3 and 4.
    let mut swapped = good.clone();
    swapped.swap(2, 3);
    assert_broken_at(&verify(dir.path(), "swapped.log", &swapped, &[]), 3);

    // Truncation of the tail is a valid shorter chain, caught against an anchored head or count.
    let truncated = good[..3].to_vec();
    assert!(verify(dir.path(), "truncated.log", &truncated, &[]).status.success());
    let out = verify(dir.path(), "truncated.log", &truncated, &["--head", &head]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not the expected"));
    let out = verify(dir.path(), "truncated.log", &truncated, &["--min-lines", "4"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("truncated"));
    assert!(verify(dir.path(), "intact.log", &good, &["--head", &head, "--min-lines", "4"]).status.success());

    // A missing file is an error too.
    let out = robert(&["audit", "verify", dir.path().join("absent.log").to_str().expect("utf-8")]);
    assert!(!out.status.success());
}

#[test]
fn keygen_records_key_creation_in_a_verifiable_log() {
    let dir = tempfile::tempdir().expect("tmp");
    let keys = dir.path().join("keys");
    let out = robert(&["keygen", "--dir", keys.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log = keys.join(robert_server::keystore::KEYGEN_AUDIT_FILE);
    let out = robert(&["audit", "verify", log.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("\"event\":\"keys-created\""), "{text}");
    // Only a public fingerprint: no key file's content appears in the log.
    for f in std::fs::read_dir(&keys).expect("dir") {
        let f = f.expect("entry").path();
        if f == log {
            continue;
        }
        let bytes = std::fs::read(&f).expect("key file");
        assert!(!text.contains(&hex::encode(&bytes)), "{} leaked", f.display());
    }
}
