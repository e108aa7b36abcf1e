//! `robert crypto` end to end: the real binary, its stdout, stderr and exit code.

use std::process::{Command, Output};

fn robert(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_robert")).args(args).output().expect("the binary runs")
}

fn stdout_ok(args: &[&str]) -> String {
    let out = robert(args);
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

fn fails_with(args: &[&str], needle: &str) {
    let out = robert(args);
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(out.stdout.is_empty(), "nothing on stdout on error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(needle), "{args:?}: stderr {err:?} lacks {needle:?}");
}

const KEY: &str = "ed00c85b120d68618753e24bfd908f60b2dbb41b422dfcd0";

/// SKINNY paper (Beierle et al., CRYPTO 2016), Appendix B, SKINNY-64-192.
#[test]
fn skinny_known_answer_both_ways() {
    assert_eq!(
        stdout_ok(&["crypto", "skinny", "--key", KEY, "--block", "530c61d35e8663c3"]),
        "dd2cf1a8f330303c\n"
    );
    assert_eq!(
        stdout_ok(&[
            "crypto",
            "skinny",
            "--key",
            &KEY.to_uppercase(),
            "--block",
            "dd2cf1a8f330303c",
            "--decrypt"
        ]),
        "530c61d35e8663c3\n"
    );
    assert_eq!(
        stdout_ok(&["crypto", "--json", "skinny", "--key", KEY, "--block", "530c61d35e8663c3"]),
        "{\"ciphertext\":\"dd2cf1a8f330303c\"}\n"
    );
}

#[test]
fn bad_input_is_a_clear_error() {
    fails_with(&["crypto", "skinny", "--key", "zz", "--block", "530c61d35e8663c3"], "--key: not valid hex");
    fails_with(
        &["crypto", "skinny", "--key", &KEY[..46], "--block", "530c61d35e8663c3"],
        "expected 24 bytes",
    );
    fails_with(&["crypto", "skinny", "--key", KEY, "--block", "530c61d35e8663"], "--block: expected 8 bytes");
    fails_with(&["crypto", "ebid", "--ks", KEY, "--epoch", "16777216", "--id", "1"], "24 bits");
    fails_with(&["crypto", "ebid", "--ks", KEY, "--epoch", "1", "--id", "0x10000000000"], "40 bits");
    fails_with(&["crypto", "ebid", "--ks", KEY, "--epoch", "1", "--id", "twelve"], "--id");
    fails_with(
        &["crypto", "ecc", "--kg", "00", "--ebid", "0011223344556677", "--cc", "33"],
        "16, 24 or 32 bytes",
    );
    fails_with(
        &[
            "crypto",
            "request-mac",
            "--kauth",
            &"00".repeat(32),
            "--code",
            "1",
            "--ebid",
            "0011223344556677",
            "--epoch",
            "1",
            "--ntp-time",
            "1",
        ],
        "not a request code",
    );
    fails_with(&["crypto", "decode-hello", "00"], "expected 16 bytes");
    // A usage error (missing flag) is clap's, also non-zero.
    assert!(!robert(&["crypto", "skinny", "--key", KEY]).status.success());
}

#[test]
fn ebid_ecc_hello_chain_matches_the_library() {
    let ks = "000102030405060708090a0b0c0d0e0f1011121314151617";
    let ebid = stdout_ok(&["crypto", "ebid", "--ks", ks, "--epoch", "4242", "--id", "0x0102030405"]);
    let ebid = ebid.trim();
    assert_eq!(ebid.len(), 16);
    // The same EBID from the decimal form of the ID.
    assert_eq!(
        stdout_ok(&["crypto", "ebid", "--ks", ks, "--epoch", "4242", "--id", "4328719365"]).trim(),
        ebid
    );
    // SKINNY of epoch(3) ‖ id(5) is the EBID.
    assert_eq!(stdout_ok(&["crypto", "skinny", "--key", ks, "--block", "0010920102030405"]).trim(), ebid);

    let kg = "2b7e151628aed2a6abf7158809cf4f3c";
    let ecc = stdout_ok(&["crypto", "ecc", "--kg", kg, "--ebid", ebid, "--cc", "33"]);
    let ecc = ecc.trim();
    assert_eq!(ecc.len(), 2);

    let kauth = "11".repeat(32);
    let hello = stdout_ok(&[
        "crypto",
        "hello",
        "--kauth",
        &kauth,
        "--ecc",
        ecc,
        "--ebid",
        ebid,
        "--ntp-time",
        "3900000000",
    ]);
    let hello = hello.trim();
    assert_eq!(hello.len(), 32);
    let decoded = stdout_ok(&["crypto", "decode-hello", hello]);
    let t16 = format!("{:04x}", 3_900_000_000u32 & 0xffff);
    assert!(decoded.contains(&format!("ecc {ecc}\n")));
    assert!(decoded.contains(&format!("ebid {ebid}\n")));
    assert!(decoded.contains(&format!("time16 {t16}\n")));

    let json = stdout_ok(&["crypto", "--json", "decode-hello", hello]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v["ebid"], ebid);
    assert_eq!(v["mac"].as_str().map(str::len), Some(10));

    // And the library agrees with the tool byte for byte.
    use robert_proto::*;
    let key = AuthKey::new(&KAuth::from_slice(&hex::decode(&kauth).expect("hex")).expect("32 bytes"));
    let ebid_bytes: [u8; 8] = hex::decode(ebid).expect("hex").try_into().expect("8 bytes");
    let ecc_byte = hex::decode(ecc).expect("hex")[0];
    let expected = Hello::build(&key, Ecc::new(ecc_byte), Ebid::new(ebid_bytes), NtpTime::new(3_900_000_000));
    assert_eq!(hex::encode(expected.to_bytes()), hello);
    assert!(expected.verify(&key).is_ok());
}

#[test]
fn request_macs_differ_by_code() {
    let kauth = "22".repeat(32);
    let mut seen = std::collections::HashSet::new();
    for code in 2..=6 {
        let mac = stdout_ok(&[
            "crypto",
            "request-mac",
            "--kauth",
            &kauth,
            "--code",
            &code.to_string(),
            "--ebid",
            "0011223344556677",
            "--epoch",
            "10",
            "--ntp-time",
            "3900000000",
        ]);
        assert_eq!(mac.trim().len(), 64);
        assert!(seen.insert(mac), "code {code} repeats a MAC");
    }
}
