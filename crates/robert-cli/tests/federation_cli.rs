//! Federation (§8) with real `robert serve` child processes: France (33) forwards pairs to Germany
//! (49) through a proxy that the test controls, and France is killed with SIGKILL in the worst
//! place — after Germany stored a batch, before France heard the acknowledgement. France restarts
//! on the same data directory, re-sends that batch (same ID), Germany recognises it, and in the end
//! every pair arrived exactly once.
//!
//! Also: `robert keygen` makes the federation signing key (and `--federation-only` adds it to an
//! older key directory); a server with peers and no signing key refuses to start.
//!
//! Nothing is timed: the kill comes when the proxy holds a batch; every wait is a poll with a
//! generous deadline.

mod common;

use common::{DEADLINE, ServerProcess, metric, metrics, now_unix};
use robert_proto::api::{ContactBody, ReportRequest, b64_decode};
use robert_proto::*;
use robert_server::federation::Batch;
use robert_server::token::{AuthorityKey, Purpose};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Pairs France's users declare (for Germany), in declarations of `PER_DECLARATION`.
const PAIRS: usize = 120;
/// A multiple of `BATCH`: the mixer moves whole declarations to the outbox, so every batch is full.
const PER_DECLARATION: usize = 20;
/// France's `federation.max_batch_pairs`.
const BATCH: usize = 10;
/// Batches the proxy lets through before it holds one back.
const PASS: usize = 4;

fn robert(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_robert")).args(args).output().expect("the robert binary runs")
}

fn keygen(dir: &Path) {
    let out = robert(&["keygen", "--dir", dir.to_str().expect("utf-8 temp path")]);
    assert!(out.status.success(), "keygen: {}", String::from_utf8_lossy(&out.stderr));
}

fn read_hex(path: &Path) -> Vec<u8> {
    hex::decode(std::fs::read_to_string(path).expect("key file").trim()).expect("hex")
}

/// A server of country `cc` whose one peer is `peer_cc` at `peer_url` with `peer_key`.
fn write_config(dir: &Path, cc: u8, peer_cc: u8, peer_url: &str, peer_key: &str) -> PathBuf {
    common::write_config(
        dir,
        &format!("country_code = {cc}"),
        &format!(
            r#"
[federation]
max_batch_pairs = {BATCH}
retry_initial_ms = 50
retry_max_ms = 500

[[federation.peers]]
country_code = {peer_cc}
url = "{peer_url}"
public_key = "{peer_key}"
"#
        ),
    )
}

/// Polls `url`'s metrics until `cond` holds on the page; returns that page.
async fn wait_metrics(http: &reqwest::Client, url: &str, what: &str, cond: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let page = metrics(http, url).await;
        if cond(&page) {
            return page;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}:\n{page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 proxy: forwards each request to the upstream and relays the answer, except
// that from the (PASS+1)-th request on, while `holding`, it forwards the request (so the upstream
// stores the batch) and then never answers.

struct Proxy {
    upstream: String,
    client: reqwest::Client,
    requests: AtomicUsize,
    holding: std::sync::atomic::AtomicBool,
    held: tokio::sync::Notify,
    held_batch: Mutex<Option<String>>,
    pairs_through: AtomicU64,
}

impl Proxy {
    async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            tokio::spawn(self.clone().connection(stream));
        }
    }

    async fn connection(self: Arc<Self>, stream: tokio::net::TcpStream) {
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        loop {
            let mut request_line = String::new();
            if read.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                return;
            }
            let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let mut length = 0usize;
            loop {
                let mut header = String::new();
                if read.read_line(&mut header).await.unwrap_or(0) == 0 {
                    return;
                }
                let header = header.trim_end();
                if header.is_empty() {
                    break;
                }
                if let Some((name, value)) = header.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; length];
            if read.read_exact(&mut body).await.is_err() {
                return;
            }
            let n = self.requests.fetch_add(1, Ordering::SeqCst);
            let hold = n >= PASS && self.holding.load(Ordering::SeqCst);
            let upstream = self
                .client
                .post(format!("{}{path}", self.upstream))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            let Ok(upstream) = upstream else { return };
            let status = upstream.status().as_u16();
            let answer = upstream.bytes().await.unwrap_or_default();
            if status == 200 {
                let sent: serde_json::Value = serde_json::from_slice(&body).expect("a JSON batch body");
                let bytes = b64_decode("batch", sent["batch"].as_str().expect("batch")).expect("b64");
                let batch = Batch::decode(&bytes).expect("a valid batch");
                self.pairs_through.fetch_add(batch.records.len() as u64, Ordering::SeqCst);
                if hold {
                    *self.held_batch.lock().expect("lock") = Some(batch.id.to_string());
                    self.held.notify_one();
                    std::future::pending::<()>().await;
                }
            }
            let head = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                answer.len()
            );
            if write.write_all(head.as_bytes()).await.is_err() || write.write_all(&answer).await.is_err() {
                return;
            }
        }
    }
}

/// France's users' declarations: HELLOs of German users (ECC = 49 under the shared K_G), each with
/// its reception time. The German server will find no such user (the EBIDs are random): what is
/// checked here is the delivery, pair by pair, not the scoring (`robert-server`'s tests do that).
fn german_pairs(kg: &FederationKey, now: NtpTime) -> Vec<ContactBody> {
    (0..PAIRS)
        .map(|i| {
            let ebid = Ebid::new(rand::random());
            let ecc = kg.encrypt_country(&ebid, CountryCode::new(49));
            let key = AuthKey::new(&KAuth::new(rand::random()));
            let t = now.checked_sub(i as u32).expect("era 0");
            ContactBody::from_record(&UploadRecord {
                hello: Hello::build(&key, ecc, ebid, t),
                time: t,
                rssi: None,
            })
        })
        .collect()
}

#[test]
fn sigkill_of_the_sender_mid_forwarding_loses_nothing() {
    let fr_dir = tempfile::tempdir().expect("tempdir");
    let de_dir = tempfile::tempdir().expect("tempdir");
    keygen(&fr_dir.path().join("keys"));
    keygen(&de_dir.path().join("keys"));
    // K_G is shared between the federated servers (§3.1).
    std::fs::copy(
        fr_dir.path().join("keys/federation-key.hex"),
        de_dir.path().join("keys/federation-key.hex"),
    )
    .expect("share K_G");
    let kg = FederationKey::new(&read_hex(&fr_dir.path().join("keys/federation-key.hex"))).expect("K_G");
    let public = |d: &Path| {
        std::fs::read_to_string(d.join("keys/federation-signing-public.hex")).expect("pub").trim().to_owned()
    };
    let authority = AuthorityKey::generate(&mut rand::rng());
    for d in [fr_dir.path(), de_dir.path()] {
        std::fs::write(d.join("authority.pub.pem"), authority.public_key_pem()).expect("write pem");
    }

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    let http = reqwest::Client::new();
    let de_config = write_config(de_dir.path(), 49, 33, "http://127.0.0.1:9", &public(fr_dir.path()));
    let mut de =
        ServerProcess::start(de_dir.path(), &["serve", "--config", de_config.to_str().expect("utf-8")]);
    let proxy = Arc::new(Proxy {
        upstream: de.url.clone(),
        client: reqwest::Client::new(),
        requests: AtomicUsize::new(0),
        holding: true.into(),
        held: tokio::sync::Notify::new(),
        held_batch: Mutex::new(None),
        pairs_through: AtomicU64::new(0),
    });
    let proxy_url = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(proxy.clone().serve(listener));
        url
    });
    let fr_config = write_config(fr_dir.path(), 33, 49, &proxy_url, &public(de_dir.path()));
    let fr_args = ["serve", "--config", fr_config.to_str().expect("utf-8")];
    let mut fr = ServerProcess::start(fr_dir.path(), &fr_args);

    // Run 1: French users declare; France mixes and starts forwarding; the proxy holds a batch
    // that Germany has stored; France is killed before it hears the acknowledgement.
    let held = rt.block_on(async {
        let pairs = german_pairs(&kg, NtpTime::from_unix(now_unix()).expect("era 0"));
        for chunk in pairs.chunks(PER_DECLARATION) {
            let token = authority.issue(Purpose::Declare, now_unix(), 3600, &mut rand::rng()).expect("token");
            let resp = http
                .post(format!("{}/api/v1/report", fr.url))
                .bearer_auth(token)
                .json(&ReportRequest { contacts: chunk.to_vec() })
                .send()
                .await
                .expect("report");
            assert_eq!(resp.status(), 202);
        }
        tokio::time::timeout(DEADLINE, proxy.held.notified()).await.expect("the proxy held a batch");
        proxy.held_batch.lock().expect("lock").clone().expect("its ID")
    });
    fr.child.kill().expect("SIGKILL");
    fr.child.wait().expect("reaped");
    let through = proxy.pairs_through.load(Ordering::SeqCst);
    assert_eq!(through, ((PASS + 1) * BATCH) as u64, "Germany stored the held batch too");
    rt.block_on(async {
        let page = metrics(&http, &de.url).await;
        assert_eq!(
            metric(&page, "robert_federation_pairs_received_total{peer=\"33\"}"),
            Some(through),
            "{page}"
        );
    });

    // Run 2: the same data directory; the proxy now answers everything.
    proxy.holding.store(false, Ordering::SeqCst);
    let mut fr = ServerProcess::start(fr_dir.path(), &fr_args);
    rt.block_on(async {
        wait_metrics(&http, &fr.url, "France's outbox to drain", |p| {
            // The pool is read before the outbox, and pairs only move pool → outbox → gone.
            metric(p, "robert_pool_depth") == Some(0)
                && metric(p, "robert_federation_outbox_depth{peer=\"49\"}") == Some(0)
        })
        .await;
        let de_page = wait_metrics(&http, &de.url, "Germany to hold every pair", |p| {
            metric(p, "robert_federation_pairs_received_total{peer=\"33\"}") == Some(PAIRS as u64)
        })
        .await;
        assert_eq!(
            metric(&de_page, "robert_federation_batches_duplicate_total{peer=\"33\"}"),
            Some(1),
            "the held batch was re-sent once and recognised: {de_page}"
        );
        assert_eq!(
            metric(&de_page, "robert_pairs_accepted_total"),
            Some(PAIRS as u64),
            "pooled once: {de_page}"
        );
        // Germany's mixer processes what arrived like local pairs (here: unknown IDs, rejected).
        let de_page = wait_metrics(&http, &de.url, "Germany's pool to drain", |p| {
            metric(p, "robert_pool_depth") == Some(0)
        })
        .await;
        assert_eq!(metric(&de_page, "robert_pairs_rejected_total"), Some(PAIRS as u64), "{de_page}");
    });
    // France's audit trail: the held batch was acknowledged after the restart.
    let audit = std::fs::read_to_string(fr_dir.path().join("federation-audit.log")).expect("audit log");
    assert!(
        audit.lines().any(|l| l.contains("\"event\":\"acknowledged\"") && l.contains(&held)),
        "the held batch {held} acknowledged after the restart:\n{audit}"
    );
    let acked: usize = audit.lines().filter(|l| l.contains("\"event\":\"acknowledged\"")).count();
    // Declarations are multiples of the batch size, so every batch is full: 12 acknowledged in all
    // (4 in run 1, the held one and 7 more in run 2), each once.
    assert_eq!(acked, PAIRS / BATCH, "{audit}");
    assert!(fr.terminate().success(), "graceful stop; stderr:\n{}", fr.stderr());
    assert!(de.terminate().success(), "graceful stop; stderr:\n{}", de.stderr());
}

#[test]
fn keygen_makes_the_federation_signing_key_and_serve_requires_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys");
    keygen(&keys);
    let seed = keys.join("federation-signing-key.hex");
    let public = keys.join("federation-signing-public.hex");
    assert_eq!(read_hex(&seed).len(), 32);
    assert_eq!(read_hex(&public).len(), 32);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&seed).expect("meta").permissions().mode() & 0o777, 0o600);
    }

    // A key directory from before federation: serve with peers refuses, and says how to fix it.
    std::fs::remove_file(&seed).expect("rm");
    std::fs::remove_file(&public).expect("rm");
    std::fs::write(
        dir.path().join("authority.pub.pem"),
        AuthorityKey::generate(&mut rand::rng()).public_key_pem(),
    )
    .expect("pem");
    let config = write_config(dir.path(), 33, 49, "http://127.0.0.1:9", &"ab".repeat(32));
    let out = robert(&["serve", "--config", config.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--federation-only"), "{stderr}");

    // `--federation-only` adds the signing key and leaves the other keys alone.
    let kek_before = std::fs::read(keys.join("kek.hex")).expect("kek");
    let dir_arg = keys.to_str().expect("utf-8");
    let out = robert(&["keygen", "--dir", dir_arg, "--federation-only"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(read_hex(&seed).len(), 32);
    assert_eq!(std::fs::read(keys.join("kek.hex")).expect("kek"), kek_before);
    // Never overwritten.
    let out = robert(&["keygen", "--dir", dir_arg, "--federation-only"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite"));
}
