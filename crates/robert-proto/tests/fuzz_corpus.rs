//! The fuzz targets on stable, as ordinary tests (DESIGN §6 "Bad input").
//!
//! For each target of `fuzz/` this runs the very function the cargo-fuzz binary calls
//! (`robert_proto::fuzz_targets`) on:
//! - every seed of `fuzz/corpus/<target>/` (which must not be empty);
//! - a few thousand deterministic pseudo-random inputs of 0 to 99 bytes;
//! - deterministic mutations of every seed (bit flips, truncations, extensions, byte overwrites),
//!   which reach the paths that random bytes never do (valid MACs, valid AEAD tags, valid JSON).
//!
//! A failure prints the input in hex: save it as a file under `fuzz/corpus/<target>/` (or replay
//! it with `cargo fuzz run <target> <file>`) once the bug is fixed, so it stays covered.

use robert_proto::fuzz_targets::{
    federation_batch_open, hello_parse_verify, register_decode, report_decode, request_decode,
    sealed_list_open, token_verify,
};
use std::path::{Path, PathBuf};

/// Random inputs per target.
const RANDOM_INPUTS: usize = 4000;
/// Mutations per seed.
const MUTATIONS_PER_SEED: usize = 200;

/// xorshift64: tiny, deterministic, good enough to spread bytes.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        // n is small here; the modulo bias does not matter for test inputs.
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        (self.next() >> 56) as u8
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.byte()).collect()
    }
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target)
}

/// Every seed of `fuzz/corpus/<target>/`, in name order.
fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = corpus_dir(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut paths: Vec<PathBuf> = entries
        .map(|e| e.unwrap_or_else(|e| panic!("{}: {e}", dir.display())).path())
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "the seed corpus {} is empty", dir.display());
    paths
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, data)
        })
        .collect()
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `target` on `data`, saying which input it was if it panics (test output is shown only for
/// failing tests, so this costs nothing when all is well).
fn run(target: fn(&[u8]), what: &str, data: &[u8]) {
    struct Reporter<'a>(&'a str, &'a [u8]);
    impl Drop for Reporter<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                eprintln!("failing input ({}, {} bytes): {}", self.0, self.1.len(), hex(self.1));
            }
        }
    }
    let _reporter = Reporter(what, data);
    target(data);
}

fn mutate(rng: &mut XorShift, seed: &[u8]) -> Vec<u8> {
    let mut m = seed.to_vec();
    for _ in 0..=rng.below(3) {
        match rng.below(5) {
            0 | 1 if !m.is_empty() => {
                let bit = rng.below(m.len() * 8);
                m[bit / 8] ^= 1 << (bit % 8);
            }
            2 if !m.is_empty() => {
                let i = rng.below(m.len());
                m[i] = rng.byte();
            }
            3 if !m.is_empty() => m.truncate(rng.below(m.len())),
            _ => {
                let extra = rng.below(16) + 1;
                m.extend(rng.bytes(extra));
            }
        }
    }
    m
}

fn exercise(name: &str, target: fn(&[u8]), seed: u64) {
    let corpus = seeds(name);
    for (path, data) in &corpus {
        run(target, &path.display().to_string(), data);
    }
    let mut rng = XorShift(seed);
    for i in 0..RANDOM_INPUTS {
        let len = rng.below(100);
        let data = rng.bytes(len);
        run(target, &format!("random input {i}"), &data);
    }
    for (path, data) in &corpus {
        for i in 0..MUTATIONS_PER_SEED {
            let m = mutate(&mut rng, data);
            run(target, &format!("mutation {i} of {}", path.display()), &m);
        }
    }
}

#[test]
fn hello_target() {
    exercise("hello", hello_parse_verify, 0x9e37_79b9_7f4a_7c15);
}

#[test]
fn request_target() {
    exercise("request", request_decode, 0xd1b5_4a32_d192_ed03);
}

#[test]
fn sealed_list_target() {
    exercise("sealed_list", sealed_list_open, 0x2545_f491_4f6c_dd1d);
}

#[test]
fn federation_batch_target() {
    exercise("federation_batch", federation_batch_open, 0x8cb9_2ba7_2f3d_8dd7);
}

#[test]
fn token_target() {
    exercise("token", token_verify, 0x5851_f42d_4c95_7f2d);
}

#[test]
fn register_target() {
    exercise("register", register_decode, 0x1405_7b7e_f767_814f);
}

#[test]
fn report_target() {
    exercise("report", report_decode, 0xda94_2042_e4dd_58b5);
}

/// The harness itself: the generator is deterministic and the mutator changes its input.
#[test]
fn harness_is_deterministic() {
    let (mut a, mut b) = (XorShift(1), XorShift(1));
    assert_eq!(a.bytes(32), b.bytes(32));
    let seed = [0u8; 16];
    let changed = (0..100).filter(|_| mutate(&mut a, &seed) != seed).count();
    assert!(changed > 90, "mutations left the seed unchanged {} times out of 100", 100 - changed);
}

/// Regression (fuzz campaign, target `token`, `crash-e81e6c3d…`): the token
/// `ed token: not three segment` is refused as malformed, and its error text — which happens to
/// contain the token — is the fixed text of that refusal, not an echo. The target used to assert
/// "the error text does not contain the token", a property of the harness that this input refutes
/// without any leak; it now checks that every error text is the fixed text of its variant.
#[test]
fn regression_token_quotes_error_text() {
    use robert_proto::token::{Purpose, TokenError, TrustedAuthorities};
    let input = std::fs::read(corpus_dir("token").join("regression_token_quotes_error_text")).expect("seed");
    assert_eq!(input, b"ed token: not three segment");
    let e = TrustedAuthorities::new()
        .verify("ed token: not three segment", Purpose::Declare, 0)
        .expect_err("not a token");
    assert_eq!(e, TokenError::Malformed("not three segments"));
    assert_eq!(e.to_string(), "malformed token: not three segments");
    run(token_verify, "regression_token_quotes_error_text", &input);
}
