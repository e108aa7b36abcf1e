//! The secured audit log (Annex B: "the server keeps a log … for audits"): append-only,
//! hash-chained, fsync'd, with no personal data.
//!
//! One JSON object per line, keys in this order:
//!
//! ```text
//! {"seq":N,"time":UNIX,"event":"NAME","fields":{…},"prev":"<64 hex>","hash":"<64 hex>"}
//! ```
//!
//! `hash` is SHA-256 of the line's bytes up to (not including) `,"hash":` followed by `}` — that
//! is, of the exact bytes of the object without its `hash` member — and `prev` is the previous
//! line's `hash` (64 zeros for line 1). `seq` counts from 1 without gaps. So editing any byte of a
//! line breaks its hash; deleting, inserting or reordering lines breaks the next line's `prev`
//! (and `seq`). Truncating the *tail* leaves a valid shorter chain: [`verify`] reports the head
//! (last `seq` and `hash`), which an auditor anchors elsewhere (the head is also written to the
//! server's log at every start, and a later line always names it in `prev`).
//!
//! What goes in: events about keys (creation, rotation, destruction), counts of accepted
//! health-authority tokens, a digest of the configuration at start, federation batches (IDs and
//! counts). What never goes in: an ID, EBID, HELLO, key, token, `jti` or client address —
//! [`AuditLog::append`] takes only small integers and fixed strings from its callers.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The `prev` of the first line.
pub const GENESIS: [u8; 32] = [0; 32];

/// The `tracing` target of audit events (also emitted when no file is configured).
pub const AUDIT_TARGET: &str = "robert::audit";

/// Why an audit file is not a valid chain, naming the first bad line (1-based).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuditError {
    /// The file could not be read or written.
    #[error("audit log I/O: {0}")]
    Io(String),
    /// A line is not a chained audit record.
    #[error("line {line}: {reason}")]
    Broken {
        /// 1-based line number.
        line: usize,
        /// What is wrong (hash, prev, seq or syntax).
        reason: String,
    },
}

/// The state of a valid chain: how many lines and the last hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    /// The last line's `seq` (0 for an empty file).
    pub seq: u64,
    /// The last line's `hash` ([`GENESIS`] for an empty file).
    pub hash: [u8; 32],
}

impl Default for ChainHead {
    fn default() -> Self {
        Self { seq: 0, hash: GENESIS }
    }
}

const HASH_SUFFIX_START: &str = ",\"hash\":\"";

/// Builds one line (without the newline) following `head`; returns it and its hash.
fn make_line(head: &ChainHead, time: u64, event: &str, fields: &Map<String, Value>) -> (String, [u8; 32]) {
    // serde_json writes these in insertion order here because the object is written by hand.
    let body = format!(
        "{{\"seq\":{},\"time\":{},\"event\":{},\"fields\":{},\"prev\":\"{}\"}}",
        head.seq + 1,
        time,
        Value::String(event.to_owned()),
        Value::Object(fields.clone()),
        hex::encode(head.hash),
    );
    let hash: [u8; 32] = Sha256::digest(body.as_bytes()).into();
    let line = format!("{}{HASH_SUFFIX_START}{}\"}}", &body[..body.len() - 1], hex::encode(hash));
    (line, hash)
}

/// Checks one line against the chain so far; returns the new head.
fn check_line(n: usize, line: &str, head: &ChainHead) -> Result<ChainHead, AuditError> {
    let broken = |reason: &str| AuditError::Broken { line: n, reason: reason.to_owned() };
    // `…,"hash":"<64 hex>"}`: the last 64 + 2 characters after the marker.
    let cut = line.rfind(HASH_SUFFIX_START).ok_or_else(|| broken("no hash"))?;
    let tail = &line[cut + HASH_SUFFIX_START.len()..];
    let hash_hex = tail.strip_suffix("\"}").ok_or_else(|| broken("no hash at the end of the line"))?;
    let claimed: [u8; 32] = hex::decode(hash_hex)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| broken("hash is not 64 hex digits"))?;
    let body = format!("{}}}", &line[..cut]);
    let actual: [u8; 32] = Sha256::digest(body.as_bytes()).into();
    if actual != claimed {
        return Err(broken("hash does not match the line's content (edited)"));
    }
    let v: Value = serde_json::from_str(&body).map_err(|_| broken("not a JSON object"))?;
    let seq = v.get("seq").and_then(Value::as_u64).ok_or_else(|| broken("no seq"))?;
    let prev = v.get("prev").and_then(Value::as_str).ok_or_else(|| broken("no prev"))?;
    if v.get("event").and_then(Value::as_str).is_none() || !v.get("fields").is_some_and(Value::is_object) {
        return Err(broken("no event or fields"));
    }
    if prev != hex::encode(head.hash) {
        return Err(broken(&format!(
            "prev does not name line {}'s hash (a line was deleted, inserted or moved before it)",
            n - 1
        )));
    }
    if seq != head.seq + 1 {
        return Err(broken(&format!("seq {seq}, expected {}", head.seq + 1)));
    }
    Ok(ChainHead { seq, hash: claimed })
}

/// Verifies a whole audit file; returns its head, or the first broken line.
pub fn verify(path: &Path) -> Result<ChainHead, AuditError> {
    let file = std::fs::File::open(path).map_err(|e| AuditError::Io(format!("{}: {e}", path.display())))?;
    verify_reader(std::io::BufReader::new(file))
}

/// [`verify`] over any reader.
pub fn verify_reader(reader: impl BufRead) -> Result<ChainHead, AuditError> {
    let mut head = ChainHead::default();
    for (i, line) in reader.lines().enumerate() {
        let line =
            line.map_err(|e| AuditError::Broken { line: i + 1, reason: format!("unreadable: {e}") })?;
        head = check_line(i + 1, &line, &head)?;
    }
    Ok(head)
}

struct Open {
    file: std::fs::File,
    head: ChainHead,
}

/// An append-only, hash-chained audit file (or, with no path, `tracing` only).
pub struct AuditLog {
    path: Option<PathBuf>,
    state: Mutex<Option<Open>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("path", &self.path).finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (creating it if needed) the log at `path` and verifies the chain already there, so
    /// that new lines extend it. A file that is not a valid chain is refused: the server must not
    /// silently continue a log that was tampered with.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let head = if path.exists() { verify(path)? } else { ChainHead::default() };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| AuditError::Io(format!("{}: {e}", path.display())))?;
        tracing::info!(
            target: AUDIT_TARGET,
            seq = head.seq,
            head = %hex::encode(head.hash),
            "audit log opened"
        );
        Ok(Self { path: Some(path.to_owned()), state: Mutex::new(Some(Open { file, head })) })
    }

    /// A log that only emits `tracing` events (no file configured).
    pub fn disabled() -> Self {
        Self { path: None, state: Mutex::new(None) }
    }

    /// The file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Appends one event with its fields (integers and fixed strings only: never an identifier,
    /// a key or a token), fsync'd before returning. Errors are logged, never fatal to the caller
    /// (an audit write failure must not turn into a refused protocol request).
    pub fn append(&self, event: &str, fields: &[(&str, Value)]) {
        let map: Map<String, Value> = fields.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
        let shown = Value::Object(map.clone());
        tracing::info!(target: AUDIT_TARGET, event, fields = %shown);
        if let Err(e) = self.try_append(event, &map) {
            tracing::error!(error = %e, "cannot append to the audit log");
        }
    }

    fn try_append(&self, event: &str, fields: &Map<String, Value>) -> Result<(), AuditError> {
        let mut guard = self.state.lock().map_err(|_| AuditError::Io("audit lock poisoned".into()))?;
        let Some(open) = guard.as_mut() else { return Ok(()) };
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let (mut line, hash) = make_line(&open.head, time, event, fields);
        line.push('\n');
        open.file
            .write_all(line.as_bytes())
            .and_then(|()| open.file.sync_data())
            .map_err(|e| AuditError::Io(e.to_string()))?;
        open.head = ChainHead { seq: open.head.seq + 1, hash };
        Ok(())
    }

    /// The head of the chain written so far (for tests and the start-up log line).
    pub fn head(&self) -> Option<ChainHead> {
        self.state.lock().ok()?.as_ref().map(|o| o.head)
    }
}

/// Opens the log at `path` relative to `data_dir`, or a disabled one for an empty path.
///
/// A directory that does not exist (a library user's in-memory service with the default data
/// directory, never `robert serve`, which creates it first) gives a disabled log with a
/// warning, rather than creating directories where nobody asked; an existing file that is not
/// a valid chain is an error.
pub fn open_in(data_dir: &Path, path: &Path) -> Result<AuditLog, AuditError> {
    if path.as_os_str().is_empty() {
        return Ok(AuditLog::disabled());
    }
    let full = if path.is_relative() { data_dir.join(path) } else { path.to_owned() };
    if full.parent().is_some_and(|p| !p.as_os_str().is_empty() && !p.is_dir()) {
        tracing::warn!(
            path = %full.display(),
            "the audit log's directory does not exist: audit events go to tracing only"
        );
        return Ok(AuditLog::disabled());
    }
    AuditLog::open(&full)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write_three(dir: &Path) -> PathBuf {
        let path = dir.join("audit.log");
        let log = AuditLog::open(&path).expect("open");
        log.append("start", &[("config_sha256", json!("ab"))]);
        log.append("day-key-created", &[("day", json!(20_000))]);
        log.append("tokens-accepted", &[("declare", json!(3)), ("reset", json!(0))]);
        path
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path).expect("read").lines().map(str::to_owned).collect()
    }

    fn put(path: &Path, lines: &[String]) {
        std::fs::write(path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).expect("write");
    }

    #[test]
    fn chain_verifies_and_reopens_where_it_ended() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = write_three(dir.path());
        let head = verify(&path).expect("valid");
        assert_eq!(head.seq, 3);
        let reopened = AuditLog::open(&path).expect("reopen");
        assert_eq!(reopened.head(), Some(head));
        reopened.append("stop", &[]);
        assert_eq!(verify(&path).expect("still valid").seq, 4);
        let first: Value = serde_json::from_str(&lines(&path)[0]).expect("json");
        assert_eq!(first["prev"], hex::encode(GENESIS));
        assert_eq!(first["fields"]["config_sha256"], "ab");
        let keys: Vec<&str> = first.as_object().expect("object").keys().map(String::as_str).collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, ["event", "fields", "hash", "prev", "seq", "time"]);
    }

    #[test]
    fn every_kind_of_tampering_names_the_line() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = write_three(dir.path());
        let good = lines(&path);
        let broken_at = |ls: Vec<String>| match verify(&{
            put(&path, &ls);
            path.clone()
        }) {
            Err(AuditError::Broken { line, .. }) => line,
            other => panic!("expected a broken chain, got {other:?}"),
        };
        // Edit: one count changed.
        let mut edited = good.clone();
        edited[2] = edited[2].replace("\"declare\":3", "\"declare\":4");
        assert_eq!(broken_at(edited), 3);
        // Edit with a recomputed hash: the next line's prev no longer matches.
        let mut rehashed = good.clone();
        let v: Value = serde_json::from_str(&good[1]).expect("json");
        let head = ChainHead {
            seq: 1,
            hash: hex::decode(v["prev"].as_str().expect("prev")).expect("hex").try_into().expect("32"),
        };
        let fields = json!({"day": 20_001});
        rehashed[1] = make_line(&head, 0, "day-key-created", fields.as_object().expect("obj")).0;
        assert_eq!(broken_at(rehashed), 3);
        // Deletion of a middle line.
        let mut deleted = good.clone();
        deleted.remove(1);
        assert_eq!(broken_at(deleted), 2);
        // Deletion of the first line.
        assert_eq!(broken_at(good[1..].to_vec()), 1);
        // Insertion of a line from another chain.
        let other = tempfile::tempdir().expect("tmp");
        let foreign_log = AuditLog::open(&other.path().join("audit.log")).expect("open");
        foreign_log.append("start", &[("config_sha256", json!("ef"))]);
        foreign_log.append("day-key-created", &[("day", json!(20_000))]);
        let foreign = lines(&other.path().join("audit.log"));
        let mut inserted = good.clone();
        inserted.insert(1, foreign[1].clone());
        assert_eq!(broken_at(inserted), 2);
        // Insertion of a copy of a line: the chain after it no longer follows.
        let mut duplicated = good.clone();
        duplicated.insert(1, good[1].clone());
        assert_eq!(broken_at(duplicated), 3);
        // Reordering.
        let mut swapped = good.clone();
        swapped.swap(1, 2);
        assert_eq!(broken_at(swapped), 2);
        // Garbage.
        let mut garbage = good.clone();
        garbage[0] = "{}".into();
        assert_eq!(broken_at(garbage), 1);
        // And a tampered file is not extended.
        let mut edited = good;
        edited[0] = edited[0].replace("\"ab\"", "\"cd\"");
        put(&path, &edited);
        assert!(AuditLog::open(&path).is_err());
    }

    #[test]
    fn disabled_log_writes_nothing() {
        let log = open_in(Path::new("/nonexistent"), Path::new("")).expect("disabled");
        log.append("start", &[]);
        assert!(log.path().is_none() && log.head().is_none());
        let log = open_in(Path::new("/nonexistent-robert-dir"), Path::new("audit.log")).expect("disabled");
        log.append("start", &[]);
        assert!(log.path().is_none());
        assert!(!Path::new("/nonexistent-robert-dir").exists());
    }
}
