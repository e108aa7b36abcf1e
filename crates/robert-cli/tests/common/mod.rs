//! Shared by the CLI's integration tests: a `robert serve` child process, a minimal App over
//! HTTP, clocks and metrics.

#![allow(dead_code)] // each test binary uses part of it

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// Generous bound on every wait (server start, pool drain, shutdown).
pub const DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// A `robert serve` child process.

/// A `robert serve` child whose stderr is drained (so it never blocks on a full pipe) and kept.
pub struct ServerProcess {
    pub child: Child,
    pub url: String,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl ServerProcess {
    /// Starts `robert <args>` in `cwd` and waits for `robert: serving the ROBERT API on http://ADDR`.
    pub fn start(cwd: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_robert"))
            .current_dir(cwd)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the robert binary starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().expect("log lock").push(line.clone());
                // The receiver stops listening once the address is known; keep draining anyway.
                let _ = tx.send(line);
            }
        });
        let mut server = Self { child, url: String::new(), log, reader: Some(reader) };
        let deadline = Instant::now() + DEADLINE;
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    if let Some(at) = line.find("robert: serving the ROBERT API on ") {
                        let addr = &line[at + "robert: serving the ROBERT API on ".len()..];
                        server.url = addr.trim().to_owned();
                        return server;
                    }
                }
                Err(_) => {
                    let _ = server.child.kill();
                    let _ = server.child.wait();
                    panic!("robert serve did not start; stderr:\n{}", server.stderr());
                }
            }
        }
    }

    pub fn stderr(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    /// SIGTERM, then waits (bounded) for the exit; returns the status with every stderr line read.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("kill(1) runs");
        assert!(sent.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM; stderr:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(reader) = self.reader.take() {
            reader.join().expect("stderr reader");
        }
        status
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // Never leave a server running behind a failed test.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A minimal App over HTTP, from robert-proto only (as in robert-server's tests/common).

use robert_proto::api::*;
use robert_proto::sealed::{self, EbidEntry};
use robert_proto::*;

/// A registered App: its session keys, its EBID list and the service's epochs.
pub struct App {
    pub keys: SessionKeys,
    pub auth: AuthKey,
    pub list: Vec<EbidEntry>,
    pub schedule: EpochSchedule,
}

impl App {
    /// Registers at `url` (§3.3: challenge, proof of work, key agreement) and opens the list.
    pub async fn register(http: &reqwest::Client, url: &str) -> Self {
        let ch: ChallengeResponse = http
            .post(format!("{url}/api/v1/register/challenge"))
            .send()
            .await
            .expect("challenge")
            .json()
            .await
            .expect("challenge json");
        let challenge = b64_decode("challenge", &ch.challenge).expect("b64");
        let solution = pow::solve(&challenge, ch.difficulty, 0).expect("solvable");
        let key: ServerKeyResponse = http
            .get(format!("{url}/api/v1/server-key"))
            .send()
            .await
            .expect("server key")
            .json()
            .await
            .expect("server key json");
        let server_pk =
            PublicKey::parse("pk", &b64_decode("pk", &key.public_key).expect("b64")).expect("point");
        let eph = AppEphemeralKey::generate(&mut rand::rng());
        let req = RegisterRequest {
            challenge: ch.challenge.clone(),
            solution: b64_encode(&solution),
            client_public_key: b64_encode(eph.public_key().as_bytes()),
        };
        let resp = http.post(format!("{url}/api/v1/register")).json(&req).send().await.expect("register");
        assert_eq!(resp.status(), 201);
        let reg: RegisterResponse = resp.json().await.expect("register json");
        let keys = eph.agree(&server_pk);
        let list = sealed::open(&keys.k_enc, &b64_decode("ebids", &reg.ebids).expect("b64")).expect("opens");
        assert_eq!(list.first().map(|e| e.epoch.number()), Some(reg.epoch));
        let schedule = EpochSchedule::new(NtpTime::new(reg.service_start_ntp), reg.epoch_duration_sec)
            .expect("positive epoch duration");
        let auth = AuthKey::new(&keys.k_auth);
        Self { keys, auth, list, schedule }
    }

    /// The list's entry for `t`'s epoch.
    pub fn entry_at(&self, t: NtpTime) -> &EbidEntry {
        let epoch = self.schedule.epoch_at(t).expect("after the service start");
        self.list.iter().find(|e| e.epoch == epoch).expect("the list covers t")
    }

    /// The first second this App holds an EBID for.
    pub fn first_covered(&self) -> NtpTime {
        let first = self.list.first().expect("a non-empty list").epoch;
        self.schedule.epoch_start(first).expect("in era 0")
    }

    /// The HELLO this App broadcast at `t` (§5.1), with the EBID of `t`'s epoch.
    pub fn hello(&self, t: NtpTime) -> Hello {
        let e = self.entry_at(t);
        Hello::build(&self.auth, e.ecc, e.ebid, t)
    }

    /// An authenticated request of kind `code` now, with the EBID of the current epoch.
    pub fn request(&self, code: RequestCode) -> AuthRequestBody {
        let now = now_ntp();
        let e = self.entry_at(now);
        AuthRequestBody::from_request(&AuthRequest::new(&self.auth, code, e.ebid, e.epoch, now))
    }
}

// ---------------------------------------------------------------------------------------------
// Clocks and metrics.

pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs()
}

pub fn now_ntp() -> NtpTime {
    NtpTime::from_unix(now_unix()).expect("NTP era 0")
}

/// The value of a metric line (`name` with its labels, if any) in a Prometheus text page.
pub fn metric(page: &str, name: &str) -> Option<u64> {
    page.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `url`'s Prometheus page.
pub async fn metrics(http: &reqwest::Client, url: &str) -> String {
    http.get(format!("{url}/metrics")).send().await.expect("metrics").text().await.expect("metrics text")
}

// ---------------------------------------------------------------------------------------------
// A server's configuration file.

/// Writes `dir/robert.toml` for a `robert serve` on SQLite in `dir` (fsync on, keys and
/// `authority.pub.pem` there), listening on a free port, its service started at today's UTC
/// midnight, proof of work off, a mixer that processes every pair within a second; `protocol`
/// adds lines to `[protocol]`, `extra` adds sections.
pub fn write_config(dir: &std::path::Path, protocol: &str, extra: &str) -> std::path::PathBuf {
    let unix = now_unix();
    let start = NtpTime::from_unix(unix - unix % 86_400).expect("era 0");
    let config = format!(
        r#"[server]
listen = "127.0.0.1:0"
data_dir = "{dir}"

[protocol]
service_start_ntp = {start}
{protocol}

[registration]
pow_difficulty = 0

[reports]
mixer_min_batch = 1
mixer_max_delay_sec = 1

[storage]
fsync = true

[authorities]
public_keys = ["authority.pub.pem"]
{extra}"#,
        dir = dir.display(),
        start = start.seconds(),
    );
    let path = dir.join("robert.toml");
    std::fs::write(&path, config).expect("write config");
    path
}
