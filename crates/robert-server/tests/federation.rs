//! Federation (§8) end to end: two real servers (France 33, Germany 49) on ports 0, each with its
//! own keys, database and signing key (sharing only K_G, as the spec requires), real HTTP between
//! them, and the background delivery loops doing the forwarding.
//!
//! Waiting for a delivery loop is done by polling a condition with a generous deadline; no test
//! asserts on a duration.

mod common;

use common::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use robert_proto::api::*;
use robert_proto::*;
use robert_server::config::{Config, PeerSection};
use robert_server::federation::{Batch, BatchAck, BatchBody, BatchId};
use robert_server::keystore::{self, BatchSigningKey};
use robert_server::storage::Storage;
use robert_server::token::Purpose;
use std::path::Path;
use std::time::Duration;

const FR: u8 = 33;
const DE: u8 = 49;

/// A server's directory with its own keys (seeded), and K_G copied from `kg_from` if given.
fn key_dir(seed: u64, kg_from: Option<&Path>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys");
    keystore::keygen(&keys, &mut ChaCha20Rng::seed_from_u64(seed)).expect("keygen");
    if let Some(from) = kg_from {
        std::fs::copy(
            from.join("keys").join(keystore::FEDERATION_KEY_FILE),
            keys.join(keystore::FEDERATION_KEY_FILE),
        )
        .expect("share K_G");
    }
    dir
}

fn read_hex(path: &Path) -> Vec<u8> {
    hex::decode(std::fs::read_to_string(path).expect("key file").trim()).expect("hex")
}

fn signing_public(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("keys").join(keystore::FEDERATION_SIGNING_PUBLIC_FILE))
        .expect("public key")
        .trim()
        .to_owned()
}

fn country_config(cc: u8, peer_cc: u8, peer_url: &str, peer_key: String) -> Config {
    let mut c = test_config();
    c.protocol.country_code = cc;
    c.federation.retry_initial_ms = 20;
    c.federation.retry_max_ms = 200;
    c.federation.request_timeout_sec = 10;
    c.federation.peers =
        vec![PeerSection { country_code: peer_cc, url: peer_url.to_owned(), public_key: peer_key }];
    c
}

struct Pair {
    fr: TestServer,
    de: TestServer,
}

/// France and Germany, each a peer of the other. `tune` adjusts France's configuration.
async fn two_countries(tune: impl FnOnce(&mut Config)) -> Pair {
    let fr_dir = key_dir(11, None);
    let de_dir = key_dir(12, Some(fr_dir.path()));
    let fr_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let de_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let fr_url = format!("http://{}", fr_listener.local_addr().expect("addr"));
    let de_url = format!("http://{}", de_listener.local_addr().expect("addr"));
    let mut fr_config = country_config(FR, DE, &de_url, signing_public(de_dir.path()));
    tune(&mut fr_config);
    let de_config = country_config(DE, FR, &fr_url, signing_public(fr_dir.path()));
    let fr = TestServer::start_on(fr_config, fr_dir, fr_listener).await;
    let de = TestServer::start_on(de_config, de_dir, de_listener).await;
    Pair { fr, de }
}

impl Pair {
    fn advance(&self, secs: u32) {
        self.fr.advance(secs);
        self.de.advance(secs);
    }
}

/// Polls `cond` until it holds (the delivery loops run in the background), failing after a
/// generous deadline: a correctness bound, not a timing assertion.
async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..1200 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

async fn pool_depth(s: &TestServer) -> u64 {
    s.service.storage().pool_depth().await.expect("pool depth")
}

async fn outbox_depth(s: &TestServer) -> u64 {
    s.service.storage().stats().await.expect("stats").outbox_depth
}

async fn declare(server: &TestServer, pairs: &[(Hello, NtpTime, Option<i8>)]) {
    let resp = server.report(&server.token(Purpose::Declare), &report_body(pairs)).await;
    assert_eq!(resp.status(), 202);
}

async fn at_risk(app: &mut TestApp, server: &TestServer) -> bool {
    let resp = app.status(server).await;
    assert_eq!(resp.status(), 200);
    resp.json::<StatusResponse>().await.expect("json").at_risk
}

/// The federation events of a hash-chained audit log (`robert_server::audit`), each flattened to
/// its fields plus `event` and `time`; the chain must verify.
fn audit_events(audit: &str) -> Vec<serde_json::Value> {
    robert_server::audit::verify_reader(audit.as_bytes()).expect("the audit chain verifies");
    audit
        .lines()
        .map(|l| {
            let line: serde_json::Value = serde_json::from_str(l).expect("one JSON object per line");
            let mut flat = line["fields"].as_object().expect("fields").clone();
            flat.insert("event".into(), line["event"].clone());
            flat.insert("time".into(), line["time"].clone());
            serde_json::Value::Object(flat)
        })
        .collect()
}

/// Sum of HELLO counts over every LEE_A row of a server's database.
fn exposures_in_db(server: &TestServer) -> i64 {
    let conn = rusqlite::Connection::open(server.dir.path().join("robert.db")).expect("open db");
    conn.query_row("SELECT coalesce(sum(hellos), 0) FROM exposures", [], |r| r.get(0)).expect("sum")
}

/// The spec's §8 story, both ways. Bernard (France) meets Uta (Germany) in Germany for 15 minutes;
/// Uta is diagnosed and uploads in Germany; the German server forwards Bernard's HELLOs to the
/// French server, which notifies Bernard. Then Bernard is diagnosed in France, and Uta is notified
/// by the German server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bernard_and_uta_section_8_story() {
    let p = two_countries(|_| {}).await;
    let mut bernard = TestApp::register(&p.fr).await;
    let mut uta = TestApp::register(&p.de).await;
    assert!(!at_risk(&mut bernard, &p.fr).await);
    assert!(!at_risk(&mut uta, &p.de).await);

    // They meet: each phone keeps the other's HELLOs, one a minute, at close range.
    let mut uta_heard = Vec::new();
    let mut bernard_heard = Vec::new();
    for _ in 0..15 {
        let now = p.de.now();
        uta_heard.push((bernard.hello(&p.fr, now), now, Some(-50)));
        bernard_heard.push((uta.hello(&p.de, now), now, Some(-50)));
        p.advance(60);
    }

    // Uta also met a traveller from a country that is not Germany's peer (44).
    let kg = FederationKey::new(&read_hex(&p.de.dir.path().join("keys").join(keystore::FEDERATION_KEY_FILE)))
        .expect("K_G");
    let stranger = {
        let now = p.de.now();
        let ebid = Ebid::new([0x44; 8]);
        let ecc = kg.encrypt_country(&ebid, CountryCode::new(44));
        (Hello::build(&AuthKey::new(&KAuth::new([4; 32])), ecc, ebid, now), now, Some(-50))
    };

    // Uta is diagnosed and uploads in Germany: the German mixer finds France's country code.
    let mut declared = uta_heard.clone();
    declared.push(stranger);
    declare(&p.de, &declared).await;
    assert_eq!(p.de.mix().await, 16);
    assert_eq!(p.de.service.metrics().counter("pairs_forwarded"), Some(15));
    assert_eq!(p.de.service.metrics().counter("pairs_dropped_foreign"), Some(1), "unknown country: dropped");
    assert_eq!(p.de.service.metrics().counter("pairs_processed"), Some(0));
    // The German server forwards them; the French server stores them in its pool…
    eventually("France received the 15 pairs", || async { pool_depth(&p.fr).await == 15 }).await;
    eventually("Germany's outbox acknowledged", || async { outbox_depth(&p.de).await == 0 }).await;
    // …and processes them as local pairs (§6.2 steps 4–10).
    assert_eq!(p.fr.mix().await, 15);
    assert_eq!(p.fr.service.metrics().counter("pairs_processed"), Some(15));
    assert_eq!(exposures_in_db(&p.fr), 15);
    let de_to_fr = p.de.service.metrics().federation_peer(FR);
    assert_eq!(de_to_fr.pairs_acknowledged.get(), 15);
    assert_eq!(p.fr.service.metrics().federation_peer(DE).pairs_received.get(), 15);

    p.advance(8 * 900);
    assert!(at_risk(&mut bernard, &p.fr).await, "Bernard is notified by the French server");
    assert!(!at_risk(&mut uta, &p.de).await, "Uta's own declaration says nothing about her");

    // The reverse: Bernard is diagnosed in France.
    declare(&p.fr, &bernard_heard).await;
    assert_eq!(p.fr.mix().await, 15);
    eventually("Germany received the 15 pairs", || async { pool_depth(&p.de).await == 15 }).await;
    eventually("France's outbox acknowledged", || async { outbox_depth(&p.fr).await == 0 }).await;
    assert_eq!(p.de.mix().await, 15);
    assert_eq!(exposures_in_db(&p.de), 15);
    p.advance(8 * 900);
    assert!(at_risk(&mut uta, &p.de).await, "Uta is notified by the German server");

    // The audit log has batch IDs and counts, never a pair: one JSON object per line.
    let audit = std::fs::read_to_string(p.fr.dir.path().join("federation-audit.log")).expect("audit log");
    let events = audit_events(&audit);
    assert!(
        events.iter().any(|e| e["event"] == "received" && e["pairs"] == 15 && e["peer"] == 49),
        "{audit}"
    );
    assert!(events.iter().any(|e| e["event"] == "acknowledged" && e["peer"] == 49), "{audit}");
    for e in &events {
        let keys: Vec<&str> = e.as_object().expect("object").keys().map(String::as_str).collect();
        assert_eq!(keys, ["batch", "event", "pairs", "peer", "seq", "time"], "{audit}");
    }
    for (hello, _, _) in uta_heard.iter().chain(&bernard_heard) {
        let bytes = hello.to_bytes();
        assert!(!audit.contains(&hex::encode(bytes)) && !audit.contains(&b64_encode(&bytes)));
    }
    let metrics = p.fr.get("/metrics").await.text().await.expect("metrics");
    assert!(metrics.contains("robert_federation_pairs_received_total{peer=\"49\"} 15"), "{metrics}");
    assert!(metrics.contains("robert_federation_outbox_depth{peer=\"49\"} 0"), "{metrics}");
    p.fr.stop().await;
    p.de.stop().await;
}

/// The peer is down while batches are due: the sender retries with backoff, keeps every pair, and
/// once the peer is back (same address, same database) every pair arrives exactly once, in batches
/// of at most `max_batch_pairs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_down_then_back_every_pair_arrives_once() {
    let p = two_countries(|c| c.federation.max_batch_pairs = 4).await;
    let mut uta = TestApp::register(&p.de).await;
    assert!(!at_risk(&mut uta, &p.de).await);
    let de_addr = p.de.url.trim_start_matches("http://").to_owned();
    let de_dir = p.de.stop_keeping_data().await;

    // Three French users who met Uta declare (18 of her HELLOs between them), while Germany is down.
    let mut hellos = Vec::new();
    for _ in 0..18 {
        let now = p.fr.now();
        hellos.push((uta.hello(&p.fr, now), now, Some(-50)));
        p.fr.advance(60);
    }
    for chunk in hellos.chunks(6) {
        declare(&p.fr, chunk).await;
    }
    assert_eq!(p.fr.mix().await, 18);
    let fr_to_de = p.fr.service.metrics().federation_peer(DE);
    eventually("France retried while Germany was down", || async { fr_to_de.batches_retried.get() >= 3 })
        .await;
    assert_eq!(outbox_depth(&p.fr).await, 18, "nothing lost while the peer is down");
    assert_eq!(fr_to_de.batches_acknowledged.get(), 0);

    // Germany comes back on the same address with the same database.
    let listener = tokio::net::TcpListener::bind(de_addr.as_str()).await.expect("rebind the same address");
    let mut de_config = country_config(DE, FR, &p.fr.url, signing_public(p.fr.dir.path()));
    de_config.federation.max_batch_pairs = 4;
    let de = TestServer::start_on_at(de_config, de_dir, listener, p.fr.now()).await;
    eventually("France's outbox drained", || async { outbox_depth(&p.fr).await == 0 }).await;
    assert_eq!(fr_to_de.batches_acknowledged.get(), 5, "18 pairs in batches of at most 4");
    assert_eq!(fr_to_de.pairs_acknowledged.get(), 18);
    assert_eq!(fr_to_de.batches_rejected.get(), 0, "an outage is not a refusal");
    let from_fr = de.service.metrics().federation_peer(FR);
    assert_eq!(from_fr.pairs_received.get(), 18);
    assert_eq!(pool_depth(&de).await, 18);
    assert_eq!(de.mix().await, 18);
    assert_eq!(exposures_in_db(&de), 18, "every pair counted exactly once");
    de.advance(8 * 900);
    assert!(at_risk(&mut uta, &de).await);
    // The audit trail shows five batches, sequence numbers 1 to 5.
    let audit = std::fs::read_to_string(p.fr.dir.path().join("federation-audit.log")).expect("audit");
    let acked: Vec<u64> = audit_events(&audit)
        .iter()
        .filter(|e| e["event"] == "acknowledged")
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(acked, [1, 2, 3, 4, 5], "five batches, acknowledged in order: {audit}");
    p.fr.stop().await;
    de.stop().await;
}

/// A sender whose batch is older than the receiver's replay window gets `410` and drops it (and
/// counts it), instead of retrying forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_batch_is_dropped_by_the_sender() {
    let p = two_countries(|_| {}).await;
    let uta = TestApp::register(&p.de).await;
    let now = p.fr.now();
    declare(&p.fr, &[(uta.hello(&p.fr, now), now, None)]).await;
    // Germany's clock is past France's batch time plus the replay window.
    p.de.advance(p.de.service.config().federation.replay_window_sec + 3600);
    assert_eq!(p.fr.mix().await, 1);
    let fr_to_de = p.fr.service.metrics().federation_peer(DE);
    eventually("the expired batch was dropped", || async { fr_to_de.batches_expired.get() == 1 }).await;
    assert_eq!(outbox_depth(&p.fr).await, 0);
    assert_eq!(pool_depth(&p.de).await, 0, "nothing stored by the receiver");
    p.fr.stop().await;
    p.de.stop().await;
}

/// Only Germany runs; the test plays France (and impostors) by hand.
struct Receiver {
    de: TestServer,
    fr_key: BatchSigningKey,
    uta: TestApp,
}

async fn receiver() -> Receiver {
    let fr_dir = key_dir(21, None);
    let de_dir = key_dir(22, Some(fr_dir.path()));
    let config = country_config(DE, FR, "http://127.0.0.1:9", signing_public(fr_dir.path()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let de = TestServer::start_on(config, de_dir, listener).await;
    let fr_key = BatchSigningKey::load(&fr_dir.path().join("keys")).expect("load").expect("present");
    let uta = TestApp::register(&de).await;
    Receiver { de, fr_key, uta }
}

impl Receiver {
    /// A batch from France of `n` of Uta's HELLOs (as heard by French users in Germany).
    fn batch(&self, n: usize, id: u8) -> Batch {
        let start = self.de.now();
        let records = (0..n)
            .map(|i| {
                let t = start.checked_add(60 * i as u32).expect("era 0");
                UploadRecord { hello: self.uta.hello(&self.de, t), time: t, rssi: Some(-55) }.encode()
            })
            .collect();
        Batch {
            from: CountryCode::new(FR),
            to: CountryCode::new(DE),
            id: BatchId([id; 16]),
            seq: u64::from(id),
            created: self.de.now(),
            records,
        }
    }

    async fn send(&self, body: &BatchBody) -> reqwest::Response {
        self.de.post("/api/v1/federation/batch", body).await
    }
}

/// A forged, unsigned, tampered, misaddressed batch, or one from a country that is not a peer, is
/// refused and stores nothing; a replayed batch is answered the same and stored once; a bad pair
/// inside a good batch is dropped alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_unsigned_unknown_and_replayed_batches_change_nothing() {
    let r = receiver().await;
    let stats_before = r.de.service.storage().stats().await.expect("stats");

    // Forged: signed by a key Germany does not know for France.
    let impostor_dir = key_dir(99, None);
    let impostor = BatchSigningKey::load(&impostor_dir.path().join("keys")).expect("load").expect("present");
    let good = r.batch(5, 1);
    assert_rejected(r.send(&BatchBody::sign(&good, &impostor)).await).await;
    // Unsigned: a zero signature; and no signature at all.
    let mut unsigned = BatchBody::sign(&good, &r.fr_key);
    unsigned.signature = b64_encode(&[0u8; 64]);
    assert_rejected(r.send(&unsigned).await).await;
    let resp = r.de.post("/api/v1/federation/batch", &serde_json::json!({"batch": unsigned.batch})).await;
    assert_eq!(resp.status(), 400);
    // Tampered after signing: one record byte changed.
    let mut tampered = BatchBody::sign(&good, &r.fr_key);
    let mut bytes = b64_decode("batch", &tampered.batch).expect("b64");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    tampered.batch = b64_encode(&bytes);
    assert_rejected(r.send(&tampered).await).await;
    // From a country that is not a peer (even when signed with France's key).
    let mut unknown = r.batch(5, 2);
    unknown.from = CountryCode::new(44);
    assert_rejected(r.send(&BatchBody::sign(&unknown, &r.fr_key)).await).await;
    // Addressed to another country.
    let mut elsewhere = r.batch(5, 3);
    elsewhere.to = CountryCode::new(39);
    assert_rejected(r.send(&BatchBody::sign(&elsewhere, &r.fr_key)).await).await;
    // Expired.
    let mut old = r.batch(5, 4);
    old.created =
        old.created.checked_sub(r.de.service.config().federation.replay_window_sec + 1).expect("era 0");
    assert_eq!(r.send(&BatchBody::sign(&old, &r.fr_key)).await.status(), 410);
    // Garbage.
    let garbage =
        BatchBody { batch: b64_encode(b"RBFED\0\0\x01 too short"), signature: b64_encode(&[1; 64]) };
    assert_eq!(r.send(&garbage).await.status(), 400);
    assert_eq!(r.de.service.storage().stats().await.expect("stats"), stats_before, "nothing stored");
    assert_eq!(r.de.service.metrics().counter("federation_batches_refused"), Some(5));

    // The genuine batch is stored; replaying it gets the same answer and stores nothing more.
    let body = BatchBody::sign(&good, &r.fr_key);
    let first = r.send(&body).await;
    assert_eq!(first.status(), 200);
    let first: BatchAck = first.json().await.expect("json");
    assert_eq!(first, BatchAck { batch_id: hex::encode([1u8; 16]), accepted: 5 });
    for _ in 0..3 {
        let again = r.send(&body).await;
        assert_eq!(again.status(), 200);
        assert_eq!(again.json::<BatchAck>().await.expect("json"), first, "the same answer");
    }
    assert_eq!(pool_depth(&r.de).await, 5, "stored once");
    let from_fr = r.de.service.metrics().federation_peer(FR);
    assert_eq!((from_fr.batches_received.get(), from_fr.batches_duplicate.get()), (1, 3));

    // Per-pair outcomes never roll back a batch: one record that does not parse, one pair with a
    // bad MAC; the other three count.
    let mut mixed = r.batch(5, 5);
    mixed.records[1] = vec![0xff; 3];
    mixed.records[3][19] ^= 0x80; // Time moved by 128 s: fails the δ check (§6.2 step 2)
    let ack: BatchAck = r.send(&BatchBody::sign(&mixed, &r.fr_key)).await.json().await.expect("json");
    assert_eq!(ack.accepted, 4, "the unparsable record alone is dropped on arrival");
    assert_eq!(r.de.mix().await, 9);
    assert_eq!(exposures_in_db(&r.de), 5 + 3, "the replays counted nothing; the bad pair alone failed");
    r.de.stop().await;
}

/// Without peers, the endpoint refuses everything (nobody is on the allow-list); it is in the
/// OpenAPI document.
#[tokio::test]
async fn a_server_without_peers_refuses_batches() {
    let server = TestServer::start(test_config()).await;
    let dir = key_dir(5, None);
    let key = BatchSigningKey::load(&dir.path().join("keys")).expect("load").expect("present");
    let batch = Batch {
        from: CountryCode::new(49),
        to: CountryCode::new(33),
        id: BatchId([3; 16]),
        seq: 1,
        created: server.now(),
        records: vec![vec![0; 20]],
    };
    assert_rejected(server.post("/api/v1/federation/batch", &BatchBody::sign(&batch, &key)).await).await;
    assert_eq!(pool_depth(&server).await, 0);
    let doc: serde_json::Value = server.get("/openapi.json").await.json().await.expect("json");
    assert!(doc["paths"]["/api/v1/federation/batch"]["post"]["responses"]["410"].is_object());
    server.stop().await;
}

/// France and Germany where Germany's body limit is `de_body_limit` bytes; `tune` adjusts France.
async fn two_countries_small_receiver(de_body_limit: usize, tune: impl FnOnce(&mut Config)) -> Pair {
    let fr_dir = key_dir(21, None);
    let de_dir = key_dir(22, Some(fr_dir.path()));
    let fr_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let de_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let fr_url = format!("http://{}", fr_listener.local_addr().expect("addr"));
    let de_url = format!("http://{}", de_listener.local_addr().expect("addr"));
    let mut fr_config = country_config(FR, DE, &de_url, signing_public(de_dir.path()));
    tune(&mut fr_config);
    let mut de_config = country_config(DE, FR, &fr_url, signing_public(fr_dir.path()));
    de_config.server.max_body_bytes = de_body_limit;
    let fr = TestServer::start_on(fr_config, fr_dir, fr_listener).await;
    let de = TestServer::start_on(de_config, de_dir, de_listener).await;
    Pair { fr, de }
}

/// Uta (DE) is met by French users who declare `n` of her HELLOs in France; France's mixer puts
/// them in its outbox for Germany.
async fn french_outbox_for_uta(p: &Pair, n: usize) -> TestApp {
    let uta = TestApp::register(&p.de).await;
    let mut hellos = Vec::new();
    for _ in 0..n {
        let now = p.fr.now();
        hellos.push((uta.hello(&p.fr, now), now, Some(-50)));
        p.fr.advance(60);
    }
    p.de.advance(60 * n as u32);
    for chunk in hellos.chunks(20) {
        declare(&p.fr, chunk).await;
    }
    assert_eq!(p.fr.mix().await, n as u64);
    uta
}

/// Issue 6 leftover: a batch larger than the receiver's body limit was retried forever. Germany
/// accepts bodies of at most 1500 bytes (about 40 pairs); France's `max_batch_bytes` (default
/// 512 KiB) does not know it. Expected: the 60-pair batch is refused with 413, split in two halves
/// that fit, each acknowledged; the outbox drains; every pair arrives exactly once; the split is
/// counted and audited, and nothing is counted as a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_above_the_peers_body_limit_is_split_and_delivered() {
    let p = two_countries_small_receiver(1500, |_| {}).await;
    let _uta = french_outbox_for_uta(&p, 60).await;
    eventually("France's outbox drained", || async { outbox_depth(&p.fr).await == 0 }).await;
    let fr_to_de = p.fr.service.metrics().federation_peer(DE);
    assert_eq!(fr_to_de.batches_split.get(), 1, "one split: 60 pairs into 30 + 30");
    assert_eq!(fr_to_de.batches_acknowledged.get(), 1, "the batch, acknowledged once all its parts are");
    assert_eq!(fr_to_de.pairs_acknowledged.get(), 60);
    assert_eq!(fr_to_de.batches_rejected.get(), 0, "a 413 is handled, not a refusal");
    let from_fr = p.de.service.metrics().federation_peer(FR);
    assert_eq!(from_fr.batches_received.get(), 2, "two parts received");
    assert_eq!(from_fr.pairs_received.get(), 60);
    assert_eq!(pool_depth(&p.de).await, 60);
    assert_eq!(p.de.mix().await, 60);
    assert_eq!(exposures_in_db(&p.de), 60, "every pair counted exactly once");
    let audit = std::fs::read_to_string(p.fr.dir.path().join("federation-audit.log")).expect("audit");
    let events: Vec<String> =
        audit_events(&audit).iter().map(|e| e["event"].as_str().unwrap_or("?").to_owned()).collect();
    assert_eq!(events, ["sealed", "split", "acknowledged"], "{audit}");
    p.fr.stop().await;
    p.de.stop().await;
}

/// The sender's own cap: with `max_batch_bytes = 1200` (about 34 full pairs) France seals batches
/// that fit, so Germany (limit 1500) never answers 413. Expected: 60 pairs in two batches, no
/// split, every pair once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_sealed_within_max_batch_bytes() {
    let p = two_countries_small_receiver(1500, |c| c.federation.max_batch_bytes = 1200).await;
    let per_batch = robert_server::federation::pairs_within(1200);
    assert!((30..40).contains(&per_batch), "{per_batch}");
    let _uta = french_outbox_for_uta(&p, 60).await;
    eventually("France's outbox drained", || async { outbox_depth(&p.fr).await == 0 }).await;
    let fr_to_de = p.fr.service.metrics().federation_peer(DE);
    assert_eq!(fr_to_de.batches_split.get(), 0);
    assert_eq!(fr_to_de.batches_acknowledged.get(), 60_u64.div_ceil(per_batch as u64));
    assert_eq!(fr_to_de.pairs_acknowledged.get(), 60);
    assert_eq!(p.de.mix().await, 60);
    assert_eq!(exposures_in_db(&p.de), 60);
    p.fr.stop().await;
    p.de.stop().await;
}
