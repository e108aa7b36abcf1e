//! The seed corpora of the fuzz targets added for issue 8 item 5 (`federation_batch`, `token`,
//! `register`, `report`), built with the real API and the fixed keys of
//! `robert_proto::fuzz_targets`.
//!
//! `cargo test -p robert-proto --test fuzz_seeds` checks that every seed made here is in
//! `fuzz/corpus/<target>/` and still means what its name says: byte for byte where the seed is
//! deterministic (Ed25519 signatures are), and by the verifier's outcome for tokens (ES256
//! signatures draw a fresh nonce each time). `ROBERT_WRITE_FUZZ_SEEDS=1` (re)writes them.

use aws_lc_rs::rand::SystemRandom;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use robert_proto::api::{ContactBody, RegisterRequest, ReportRequest, b64_encode};
use robert_proto::federation::{Batch, BatchBody, BatchId, HEADER_LEN, MAX_BATCH_PAIRS};
use robert_proto::fuzz_targets::{
    FUZZ_CHALLENGE_LEN, FUZZ_FED_FROM, FUZZ_FED_SEED, FUZZ_K_AUTH, FUZZ_NOW_UNIX, FuzzFederationKey,
    fuzz_authority_key_pair, fuzz_authority_kid,
};
use robert_proto::token::{Purpose, TrustedAuthorities};
use robert_proto::*;
use std::path::{Path, PathBuf};

/// One seed: target, file name, bytes.
#[derive(Clone)]
struct Seed {
    target: &'static str,
    name: String,
    bytes: Vec<u8>,
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target)
}

fn record(n: u8, rssi: Option<i8>) -> UploadRecord {
    let key = AuthKey::new(&KAuth::new(FUZZ_K_AUTH));
    let now = NtpTime::new(3_900_000_000 + u32::from(n) * 61);
    let hello = Hello::build(&key, Ecc::new(n ^ 0x5a), Ebid::new([n; 8]), now);
    UploadRecord { hello, time: NtpTime::new(now.seconds() + 2), rssi }
}

fn batch(from: u8, records: Vec<Vec<u8>>) -> Batch {
    Batch {
        from: CountryCode::new(from),
        to: CountryCode::new(49),
        id: BatchId([0xb1; 16]),
        seq: 7,
        created: NtpTime::new(3_900_000_000),
        records,
    }
}

fn json(v: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(v).expect("serialises")
}

fn federation_seeds() -> Vec<Seed> {
    let key = FuzzFederationKey::new(&FUZZ_FED_SEED);
    let other = FuzzFederationKey::new(&[0x34; 32]);
    let two = vec![record(1, None).encode(), record(2, Some(-70)).encode()];
    let good = batch(FUZZ_FED_FROM, two.clone());
    let body = BatchBody::sign(&good, &key);
    let mut out = vec![
        ("body_valid_2_pairs.json", json(&body)),
        ("body_valid_empty.json", json(&BatchBody::sign(&batch(FUZZ_FED_FROM, vec![]), &key))),
        ("body_valid_one_bad_record.json", {
            json(&BatchBody::sign(&batch(FUZZ_FED_FROM, vec![two[0].clone(), vec![9; 5]]), &key))
        }),
        ("body_other_key.json", json(&BatchBody::sign(&good, &other))),
        ("body_unknown_sender.json", json(&BatchBody::sign(&batch(34, two.clone()), &key))),
        ("body_short_signature.json", {
            json(&BatchBody { batch: body.batch.clone(), signature: b64_encode(&[1; 63]) })
        }),
        ("body_not_base64.json", br#"{"batch":"RBFED*","signature":"AA=="}"#.to_vec()),
        ("body_unknown_field.json", {
            let mut v = serde_json::to_value(&body).expect("value");
            v["extra"] = serde_json::json!(1);
            json(&v)
        }),
        ("body_missing_signature.json", format!(r#"{{"batch":"{}"}}"#, body.batch).into_bytes()),
        ("body_header_only.json", {
            json(&BatchBody { batch: b64_encode(b"RBFED\0\0\x01"), signature: b64_encode(&[0; 64]) })
        }),
    ];
    let mut flipped = good.encode();
    flipped[HEADER_LEN + 3] ^= 0x10;
    out.push((
        "body_record_bit_flipped.json",
        json(&BatchBody { batch: b64_encode(&flipped), signature: body.signature.clone() }),
    ));
    let raw = good.encode();
    out.push(("raw_valid", raw.clone()));
    out.push(("raw_truncated", raw[..raw.len() - 1].to_vec()));
    out.push(("raw_header_truncated", raw[..HEADER_LEN - 1].to_vec()));
    out.push(("raw_trailing_byte", [raw.clone(), vec![0]].concat()));
    let mut magic = raw.clone();
    magic[7] = 2;
    out.push(("raw_bad_version", magic));
    let mut many = raw.clone();
    many[38..42].copy_from_slice(&(MAX_BATCH_PAIRS as u32 + 1).to_be_bytes());
    out.push(("raw_too_many_pairs", many));
    let mut zero = raw.clone();
    zero[HEADER_LEN] = 0;
    out.push(("raw_zero_length_record", zero));
    let mut huge_count = raw;
    huge_count[38..42].copy_from_slice(&u32::MAX.to_be_bytes());
    out.push(("raw_count_u32_max", huge_count));
    out.push(("empty", Vec::new()));
    out.into_iter().map(|(n, b)| Seed { target: "federation_batch", name: n.into(), bytes: b }).collect()
}

/// A compact JWS of these header and claims texts, signed by the fuzz authority.
fn jws(header: &str, claims: &str) -> String {
    let pair = fuzz_authority_key_pair();
    let mut t = URL_SAFE_NO_PAD.encode(header);
    t.push('.');
    t.push_str(&URL_SAFE_NO_PAD.encode(claims));
    let sig = pair.sign(&SystemRandom::new(), t.as_bytes()).expect("signs");
    t.push('.');
    t.push_str(&URL_SAFE_NO_PAD.encode(sig.as_ref()));
    t
}

fn token_seeds() -> Vec<Seed> {
    let kid = fuzz_authority_kid();
    let header = format!(r#"{{"alg":"ES256","typ":"JWT","kid":"{kid}"}}"#);
    let now = FUZZ_NOW_UNIX;
    let claims = |jti: &str, iat: u64, exp: u64, purpose: &str| {
        format!(r#"{{"jti":"{jti}","iat":{iat},"exp":{exp},"purpose":"{purpose}"}}"#)
    };
    let ok = claims("AAECAwQFBgcICQoLDA0ODw", now - 60, now + 3600, "declare");
    let valid = jws(&header, &ok);
    let mut out = vec![
        ("valid_declare", valid.clone()),
        ("valid_reset", jws(&header, &claims("reset-1", now - 60, now + 3600, "reset"))),
        ("valid_bearer_prefixed", format!("Bearer {valid}")),
        ("valid_no_typ", jws(&format!(r#"{{"alg":"ES256","kid":"{kid}"}}"#), &ok)),
        ("valid_unknown_claims", {
            jws(
                &header,
                &format!(r#"{{"jti":"x","iat":{},"exp":{},"purpose":"declare","sub":"p"}}"#, now, now + 1),
            )
        }),
        ("expired", jws(&header, &claims("e", now - 7200, now - 1, "declare"))),
        ("expires_now", jws(&header, &claims("e", now - 7200, now, "declare"))),
        ("not_yet_valid", jws(&header, &claims("n", now + 301, now + 3600, "declare"))),
        ("lifetime_too_long", jws(&header, &claims("l", now - 1, now + 31 * 86_400, "declare"))),
        ("lifetime_negative", jws(&header, &claims("l", now + 100, now + 50, "declare"))),
        ("purpose_unknown", jws(&header, &claims("p", now, now + 60, "admin"))),
        ("jti_empty", jws(&header, &claims("", now, now + 60, "declare"))),
        ("jti_too_long", jws(&header, &claims(&"j".repeat(65), now, now + 60, "declare"))),
        ("jti_with_space", jws(&header, &claims("a b", now, now + 60, "declare"))),
        ("jti_unicode", jws(&header, &claims("é", now, now + 60, "declare"))),
        ("claims_missing_purpose", {
            jws(&header, &format!(r#"{{"jti":"m","iat":{now},"exp":{}}}"#, now + 60))
        }),
        ("claims_iat_string", {
            jws(&header, &format!(r#"{{"jti":"m","iat":"{now}","exp":{},"purpose":"declare"}}"#, now + 60))
        }),
        ("claims_exp_float", {
            jws(&header, &format!(r#"{{"jti":"m","iat":{now},"exp":{}.5,"purpose":"declare"}}"#, now + 60))
        }),
        ("claims_duplicate_purpose", {
            jws(
                &header,
                &format!(
                    r#"{{"jti":"d","iat":{now},"exp":{},"purpose":"reset","purpose":"declare"}}"#,
                    now + 60
                ),
            )
        }),
        ("claims_not_json", jws(&header, "not json")),
        ("header_alg_none", {
            let h = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","kid":"{kid}"}}"#));
            format!("{h}.{}.", URL_SAFE_NO_PAD.encode(&ok))
        }),
        ("header_alg_hs256", jws(&format!(r#"{{"alg":"HS256","kid":"{kid}"}}"#), &ok)),
        ("header_alg_lowercase", jws(&format!(r#"{{"alg":"es256","kid":"{kid}"}}"#), &ok)),
        ("header_crit", jws(&format!(r#"{{"alg":"ES256","kid":"{kid}","crit":["exp"]}}"#), &ok)),
        ("header_typ_jwe", jws(&format!(r#"{{"alg":"ES256","kid":"{kid}","typ":"JWE"}}"#), &ok)),
        ("header_unknown_kid", jws(r#"{"alg":"ES256","kid":"AAAAAAAAAAAAAAAAAAAAAA"}"#, &ok)),
        ("header_no_kid", jws(r#"{"alg":"ES256"}"#, &ok)),
        ("header_jwk_embedded", {
            jws(&format!(r#"{{"alg":"ES256","kid":"{kid}","jwk":{{"kty":"EC"}}}}"#), &ok)
        }),
        ("two_segments", valid.rsplit_once('.').map(|(a, _)| a.to_owned()).unwrap_or_default()),
        ("four_segments", format!("{valid}.AA")),
        ("padded_signature", format!("{valid}==")),
        ("signature_der_length", {
            let (head, _) = valid.rsplit_once('.').unwrap_or_default();
            format!("{head}.{}", URL_SAFE_NO_PAD.encode([0x30u8; 70]))
        }),
        ("too_long", format!("{valid}{}", "A".repeat(2100))),
        ("empty", String::new()),
    ];
    out.push(("dots_only", "..".into()));
    out.into_iter().map(|(n, t)| Seed { target: "token", name: n.into(), bytes: t.into_bytes() }).collect()
}

fn register_seeds() -> Vec<Seed> {
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let app = AppEphemeralKey::generate(&mut rng);
    let point = app.public_key().as_bytes().to_vec();
    let mut challenge = vec![0u8; FUZZ_CHALLENGE_LEN];
    challenge.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
    challenge[20] = 4; // difficulty
    let solution = pow::solve(&challenge, 4, 0).expect("solvable");
    let req = |c: &[u8], s: &[u8], k: &[u8]| RegisterRequest {
        challenge: b64_encode(c),
        solution: b64_encode(s),
        client_public_key: b64_encode(k),
    };
    let mut not_on_curve = point.clone();
    not_on_curve[64] ^= 1;
    let mut compressed = point[..33].to_vec();
    compressed[0] = 0x02;
    let out = vec![
        ("valid.json", json(&req(&challenge, &solution, &point))),
        ("key_not_on_curve.json", json(&req(&challenge, &solution, &not_on_curve))),
        ("key_compressed.json", json(&req(&challenge, &solution, &compressed))),
        ("key_identity.json", json(&req(&challenge, &solution, &[0]))),
        ("challenge_short.json", json(&req(&challenge[..36], &solution, &point))),
        (
            "challenge_long.json",
            json(&req(&[challenge.clone(), challenge.clone()].concat(), &solution, &point)),
        ),
        ("solution_long.json", json(&req(&challenge, &[0; 9], &point))),
        ("challenge_noncanonical_base64.json", {
            let mut r = req(&challenge, &solution, &point);
            r.challenge = r.challenge.trim_end_matches('=').to_owned();
            json(&r)
        }),
        ("solution_not_base64.json", {
            let mut r = req(&challenge, &solution, &point);
            r.solution = "!!!!".into();
            json(&r)
        }),
        ("missing_field.json", br#"{"challenge":"AA==","solution":"AAAAAAAAAAA="}"#.to_vec()),
        ("truncated.json", json(&req(&challenge, &solution, &point))[..40].to_vec()),
        ("raw_point_valid", point.clone()),
        ("raw_point_not_on_curve", not_on_curve),
        ("raw_point_compressed", compressed),
        ("raw_challenge", challenge),
        ("empty", Vec::new()),
    ];
    out.into_iter().map(|(n, b)| Seed { target: "register", name: n.into(), bytes: b }).collect()
}

fn report_seeds() -> Vec<Seed> {
    let contacts: Vec<ContactBody> =
        (0..3).map(|n| ContactBody::from_record(&record(n, (n == 1).then_some(-60)))).collect();
    let report = |c: Vec<ContactBody>| json(&ReportRequest { contacts: c });
    let mut bad_rssi = contacts[0].clone();
    bad_rssi.rssi = Some(128);
    let mut short = contacts[0].clone();
    short.hello = b64_encode(&[1; 15]);
    let mut not_b64 = contacts[0].clone();
    not_b64.hello = "AAAA*AAAAAAAAAAAAAAAAA==".into();
    let out = vec![
        ("valid_3_contacts.json", report(contacts.clone())),
        (
            "valid_50_contacts.json",
            report((0..50).map(|n| ContactBody::from_record(&record(n, None))).collect()),
        ),
        ("empty_contacts.json", report(vec![])),
        ("rssi_out_of_range.json", report(vec![contacts[0].clone(), bad_rssi])),
        ("hello_short.json", report(vec![short])),
        ("hello_not_base64.json", report(vec![not_b64])),
        ("contact_missing_time.json", br#"{"contacts":[{"hello":"AAAAAAAAAAAAAAAAAAAAAA=="}]}"#.to_vec()),
        (
            "contact_time_negative.json",
            br#"{"contacts":[{"hello":"AAAAAAAAAAAAAAAAAAAAAA==","time":-1}]}"#.to_vec(),
        ),
        ("contacts_not_array.json", br#"{"contacts":{}}"#.to_vec()),
        ("one_contact_object.json", json(&contacts[1])),
        ("truncated.json", report(contacts.clone())[..60].to_vec()),
        ("raw_record", record(4, None).encode()),
        ("raw_record_rssi", record(5, Some(-90)).encode()),
        ("empty", Vec::new()),
    ];
    out.into_iter().map(|(n, b)| Seed { target: "report", name: n.into(), bytes: b }).collect()
}

fn all_seeds() -> Vec<Seed> {
    [federation_seeds(), token_seeds(), register_seeds(), report_seeds()].concat()
}

/// What the verifier says of a token seed, for both purposes (the bytes of a token differ from
/// one generation to the next; this does not).
fn token_outcome(bytes: &[u8]) -> String {
    let mut trusted = TrustedAuthorities::new();
    let pem = {
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::signature::KeyPair;
        let spki = fuzz_authority_key_pair().public_key().as_der().expect("der");
        robert_proto::token::pem_encode(robert_proto::token::PUBLIC_KEY_LABEL, spki.as_ref())
    };
    trusted.add_public_key_pem(&pem).expect("own key");
    let token = String::from_utf8_lossy(bytes);
    let token = token.strip_prefix("Bearer ").unwrap_or(&token);
    [Purpose::Declare, Purpose::Reset]
        .map(|p| match trusted.verify(token, p, FUZZ_NOW_UNIX) {
            Ok(v) => format!("ok({})", v.purpose),
            Err(e) => format!("{e:?}"),
        })
        .join(",")
}

#[test]
fn generated_seeds_are_in_the_corpus() {
    let write = std::env::var_os("ROBERT_WRITE_FUZZ_SEEDS").is_some();
    for seed in all_seeds() {
        let path = corpus_dir(seed.target).join(&seed.name);
        if write {
            std::fs::create_dir_all(corpus_dir(seed.target)).expect("corpus directory");
            std::fs::write(&path, &seed.bytes).expect("write seed");
            continue;
        }
        let committed = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (ROBERT_WRITE_FUZZ_SEEDS=1 writes it)", path.display()));
        if seed.target == "token" {
            assert_eq!(token_outcome(&committed), token_outcome(&seed.bytes), "{}", path.display());
        } else {
            assert_eq!(committed, seed.bytes, "{} is stale", path.display());
        }
    }
}

/// The seeds say what their names say (a guard against a seed that silently stopped reaching
/// the path it was made for).
#[test]
fn seeds_reach_their_paths() {
    let seeds = all_seeds();
    let get = |target: &str, name: &str| {
        &seeds.iter().find(|s| s.target == target && s.name == name).expect("seed exists").bytes
    };
    assert_eq!(token_outcome(get("token", "valid_declare")), "ok(declare),WrongPurpose");
    assert_eq!(token_outcome(get("token", "valid_reset")), "WrongPurpose,ok(reset)");
    assert_eq!(token_outcome(get("token", "header_alg_none")), "UnsupportedAlgorithm,UnsupportedAlgorithm");
    assert_eq!(token_outcome(get("token", "expired")), "Expired,WrongPurpose");
    assert!(token_outcome(get("token", "claims_duplicate_purpose")).starts_with("Malformed"));

    let key = FuzzFederationKey::new(&FUZZ_FED_SEED);
    let peers = |cc: CountryCode| (cc.value() == FUZZ_FED_FROM).then(|| key.public());
    let open = |name: &str| {
        let body: BatchBody = serde_json::from_slice(get("federation_batch", name)).expect("json");
        robert_proto::federation::open(&body, peers)
    };
    assert_eq!(open("body_valid_2_pairs.json").map(|b| b.records.len()), Ok(2));
    assert!(open("body_other_key.json").is_err());
    assert!(open("body_record_bit_flipped.json").is_err());

    let reg: RegisterRequest = serde_json::from_slice(get("register", "valid.json")).expect("json");
    let decoded = reg.decode(FUZZ_CHALLENGE_LEN).expect("valid registration decodes");
    assert!(pow::verify(&decoded.challenge, &decoded.solution, 4));

    let report: ReportRequest = serde_json::from_slice(get("report", "valid_3_contacts.json")).expect("json");
    assert!(report.contacts.iter().all(|c| c.to_record().is_ok()));
}
