//! Prometheus metrics (`GET /metrics`): counts and latencies, never an identifier.
//!
//! Hand-rolled on atomics (a fixed set of endpoints and outcomes) rather than a metrics framework:
//! the hot paths pay one relaxed atomic add per observation and nothing else.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The HTTP endpoints, as metric labels.
pub const ENDPOINTS: [&str; 14] = [
    "clock",
    "server_key",
    "challenge",
    "register",
    "status",
    "status_ack",
    "status_reset",
    "report",
    "unregister",
    "delete_history",
    "metrics",
    "healthz",
    "openapi",
    "federation_batch",
];

const STATUSES: [u16; 12] = [200, 201, 202, 204, 400, 403, 404, 410, 413, 415, 429, 500];
/// Latency histogram bucket upper bounds, seconds.
const BUCKETS: [f64; 12] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0];

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// The server's counters.
#[derive(Default)]
pub struct Metrics {
    requests: [[AtomicU64; STATUSES.len() + 1]; ENDPOINTS.len()],
    latency: [Histogram; ENDPOINTS.len()],
    registrations: AtomicU64,
    registrations_rejected: AtomicU64,
    notifications: AtomicU64,
    pairs_accepted: AtomicU64,
    pairs_processed: AtomicU64,
    pairs_rejected: AtomicU64,
    pairs_forwarded: AtomicU64,
    pairs_dropped_foreign: AtomicU64,
    federation_peers: RwLock<BTreeMap<u8, Arc<PeerCounters>>>,
    federation_refused: AtomicU64,
    /// Refused replays, by [`Replay`] kind.
    replays: [AtomicU64; Replay::ALL.len()],
    /// `429` answers by endpoint (flood limits, `crate::limits`).
    rate_limited: [AtomicU64; ENDPOINTS.len()],
}

/// What kind of single-use value a refused replay reused (issue 8 item 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// An authenticated request (same MAC) inside its time window: the replay cache.
    Request,
    /// A health-authority token whose `jti` was already spent (declaration).
    Token,
    /// A registration challenge already used once.
    Challenge,
}

impl Replay {
    /// Every kind, in label order.
    pub const ALL: [Replay; 3] = [Replay::Request, Replay::Token, Replay::Challenge];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Replay::Request => "request",
            Replay::Token => "token",
            Replay::Challenge => "challenge",
        }
    }
}

/// The outcome of one mixer batch's pairs (§6.2), counted only once the batch's commit is
/// durable ([`Metrics::pairs_mixed`]): a crash before the commit, after which the pairs are
/// processed again, must not count them twice.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PairTally {
    /// Pairs that added an exposure (§6.2 step 9).
    pub processed: u64,
    /// Pairs that failed a §6.2 check.
    pub rejected: u64,
    /// Pairs put in the federation outbox (§6.2 step 3, §8).
    pub forwarded: u64,
    /// Pairs for a foreign country that is not a peer (dropped).
    pub dropped_foreign: u64,
}

/// A monotonic counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    /// The value.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Federation counters of one peer country (§8), as sender and as receiver.
#[derive(Debug, Default)]
pub struct PeerCounters {
    /// Batches sent to the peer for the first time (by this process).
    pub batches_sent: Counter,
    /// Re-sends of a batch not yet acknowledged.
    pub batches_retried: Counter,
    /// Batches the peer acknowledged (then erased here).
    pub batches_acknowledged: Counter,
    /// Answers refusing a batch (4xx other than 410, or no valid acknowledgement).
    pub batches_rejected: Counter,
    /// Batches the peer refused as older than its replay window (dropped).
    pub batches_expired: Counter,
    /// Batches (or parts) split in two because they were too large for the peer (`413`, or
    /// above `federation.max_batch_bytes`).
    pub batches_split: Counter,
    /// Pairs in acknowledged batches.
    pub pairs_acknowledged: Counter,
    /// Batches received from the peer and stored.
    pub batches_received: Counter,
    /// Repeated batches from the peer (answered, not stored again).
    pub batches_duplicate: Counter,
    /// Batches from the peer refused as older than the replay window.
    pub batches_expired_in: Counter,
    /// Pairs received from the peer into the pool.
    pub pairs_received: Counter,
}

impl PeerCounters {
    fn rows(&self) -> [(&'static str, &'static str, &Counter); 11] {
        [
            ("batches_sent", "Batches sent to the peer for the first time.", &self.batches_sent),
            ("batches_retried", "Re-sends of unacknowledged batches.", &self.batches_retried),
            ("batches_acknowledged", "Batches the peer acknowledged.", &self.batches_acknowledged),
            ("batches_rejected", "Batches the peer refused (will be retried).", &self.batches_rejected),
            ("batches_expired", "Batches the peer refused as expired (dropped).", &self.batches_expired),
            ("batches_split", "Batches split in two as too large for the peer.", &self.batches_split),
            ("pairs_acknowledged", "Pairs in batches the peer acknowledged.", &self.pairs_acknowledged),
            ("batches_received", "Batches received from the peer and stored.", &self.batches_received),
            (
                "batches_duplicate",
                "Repeated batches from the peer (not stored again).",
                &self.batches_duplicate,
            ),
            (
                "batches_received_expired",
                "Batches from the peer refused as expired.",
                &self.batches_expired_in,
            ),
            ("pairs_received", "Pairs received from the peer into the pool.", &self.pairs_received),
        ]
    }
}

/// Gauges read from storage at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    /// Registered IDs.
    pub users: u64,
    /// Pairs in the pool.
    pub pool_depth: u64,
    /// Pairs in the federation outbox.
    pub outbox_depth: u64,
}

impl Metrics {
    /// Records one HTTP request (`endpoint` must be one of [`ENDPOINTS`]).
    pub fn observe(&self, endpoint: usize, status: u16, elapsed: Duration) {
        if status == 429
            && let Some(c) = self.rate_limited.get(endpoint)
        {
            c.fetch_add(1, Relaxed);
        }
        let Some(row) = self.requests.get(endpoint) else { return };
        let col = STATUSES.iter().position(|s| *s == status).unwrap_or(STATUSES.len());
        row[col].fetch_add(1, Relaxed);
        let h = &self.latency[endpoint];
        let secs = elapsed.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                h.buckets[i].fetch_add(1, Relaxed);
            }
        }
        h.count.fetch_add(1, Relaxed);
        h.sum_micros.fetch_add(elapsed.as_micros() as u64, Relaxed);
    }

    /// A registration succeeded.
    pub fn registered(&self) {
        self.registrations.fetch_add(1, Relaxed);
    }
    /// A registration failed a check (proof of work, challenge).
    pub fn registration_rejected(&self) {
        self.registrations_rejected.fetch_add(1, Relaxed);
    }
    /// A user was newly answered "at risk".
    pub fn notified(&self) {
        self.notifications.fetch_add(1, Relaxed);
    }
    /// Pairs durably accepted into the pool.
    pub fn pairs_accepted(&self, n: u64) {
        self.pairs_accepted.fetch_add(n, Relaxed);
    }
    /// A pair added an exposure.
    pub fn pair_processed(&self) {
        self.pairs_processed.fetch_add(1, Relaxed);
    }
    /// A pair failed a §6.2 check.
    pub fn pair_rejected(&self) {
        self.pairs_rejected.fetch_add(1, Relaxed);
    }
    /// A pair went to the federation outbox.
    pub fn pair_forwarded(&self) {
        self.pairs_forwarded.fetch_add(1, Relaxed);
    }
    /// A pair named a foreign country that is not a peer.
    pub fn pair_dropped_foreign(&self) {
        self.pairs_dropped_foreign.fetch_add(1, Relaxed);
    }

    /// A mixer batch's pairs, once its commit is durable.
    pub fn pairs_mixed(&self, t: &PairTally) {
        self.pairs_processed.fetch_add(t.processed, Relaxed);
        self.pairs_rejected.fetch_add(t.rejected, Relaxed);
        self.pairs_forwarded.fetch_add(t.forwarded, Relaxed);
        self.pairs_dropped_foreign.fetch_add(t.dropped_foreign, Relaxed);
    }

    /// A request was refused as a replay of a single-use value.
    pub fn replay_refused(&self, kind: Replay) {
        let i = Replay::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.replays[i].fetch_add(1, Relaxed);
    }

    /// Refused replays of `kind` so far.
    pub fn replays_refused(&self, kind: Replay) -> u64 {
        Replay::ALL.iter().position(|k| *k == kind).map_or(0, |i| self.replays[i].load(Relaxed))
    }

    /// `429` answers of endpoint `endpoint` (one of [`ENDPOINTS`]) so far.
    pub fn rate_limited(&self, endpoint: &str) -> u64 {
        ENDPOINTS.iter().position(|e| *e == endpoint).map_or(0, |i| self.rate_limited[i].load(Relaxed))
    }

    /// The federation counters of peer country `cc` (created on first use).
    pub fn federation_peer(&self, cc: u8) -> Arc<PeerCounters> {
        if let Some(c) = self.federation_peers.read().ok().and_then(|m| m.get(&cc).cloned()) {
            return c;
        }
        match self.federation_peers.write() {
            Ok(mut m) => m.entry(cc).or_default().clone(),
            Err(_) => Arc::new(PeerCounters::default()),
        }
    }

    /// A federation batch was refused before its sender was authenticated (unknown sender, bad
    /// signature, wrong destination, clock far ahead).
    pub fn federation_refused(&self) {
        self.federation_refused.fetch_add(1, Relaxed);
    }

    /// The federation metrics (Prometheus text): per-peer counters for `peers` (and any peer seen),
    /// and `depths`, the pairs not yet acknowledged per peer country.
    pub fn render_federation(&self, peers: &[u8], depths: &[(u8, u64)]) -> String {
        let mut out = String::with_capacity(2048);
        for cc in peers {
            let _ = self.federation_peer(*cc);
        }
        let map = self.federation_peers.read().map(|m| m.clone()).unwrap_or_default();
        let name = "robert_federation_batches_refused_total";
        let _ = writeln!(out, "# HELP {name} Federation batches refused before authentication.");
        let _ = writeln!(out, "# TYPE {name} counter\n{name} {}", self.federation_refused.load(Relaxed));
        let template = PeerCounters::default();
        for (i, (metric, help, _)) in template.rows().iter().enumerate() {
            let name = format!("robert_federation_{metric}_total");
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (cc, c) in &map {
                let _ = writeln!(out, "{name}{{peer=\"{cc}\"}} {}", c.rows()[i].2.get());
            }
        }
        let name = "robert_federation_outbox_depth";
        let _ =
            writeln!(out, "# HELP {name} Pairs not yet acknowledged, per peer country.\n# TYPE {name} gauge");
        let mut all: BTreeMap<u8, u64> = map.keys().map(|cc| (*cc, 0)).collect();
        all.extend(depths.iter().copied());
        for (cc, d) in all {
            let _ = writeln!(out, "{name}{{peer=\"{cc}\"}} {d}");
        }
        out
    }

    /// Counter values by name (for tests and benchmarks).
    pub fn counter(&self, name: &str) -> Option<u64> {
        let c = match name {
            "registrations" => &self.registrations,
            "registrations_rejected" => &self.registrations_rejected,
            "notifications" => &self.notifications,
            "pairs_accepted" => &self.pairs_accepted,
            "pairs_processed" => &self.pairs_processed,
            "pairs_rejected" => &self.pairs_rejected,
            "pairs_forwarded" => &self.pairs_forwarded,
            "pairs_dropped_foreign" => &self.pairs_dropped_foreign,
            "federation_batches_refused" => &self.federation_refused,
            _ => return None,
        };
        Some(c.load(Relaxed))
    }

    /// The Prometheus text exposition.
    pub fn render(&self, gauges: Gauges) -> String {
        let mut out = String::with_capacity(8192);
        let counters: [(&str, &str, &AtomicU64); 8] = [
            ("robert_registrations_total", "Registrations accepted.", &self.registrations),
            (
                "robert_registrations_rejected_total",
                "Registrations refused (proof of work, challenge).",
                &self.registrations_rejected,
            ),
            ("robert_notifications_total", "Users newly answered at risk.", &self.notifications),
            (
                "robert_pairs_accepted_total",
                "Uploaded pairs durably stored in the pool.",
                &self.pairs_accepted,
            ),
            (
                "robert_pairs_processed_total",
                "Pairs that added an exposure (spec 6.2 step 9).",
                &self.pairs_processed,
            ),
            ("robert_pairs_rejected_total", "Pairs that failed a spec 6.2 check.", &self.pairs_rejected),
            ("robert_pairs_forwarded_total", "Pairs put in the federation outbox.", &self.pairs_forwarded),
            (
                "robert_pairs_dropped_foreign_total",
                "Pairs for a country that is not a peer.",
                &self.pairs_dropped_foreign,
            ),
        ];
        for (name, help, c) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", c.load(Relaxed));
        }
        let gauge_rows = [
            ("robert_registered_ids", "Registered IDs.", gauges.users),
            ("robert_pool_depth", "Uploaded pairs waiting for the mixer.", gauges.pool_depth),
            ("robert_outbox_depth", "Pairs waiting in the federation outbox.", gauges.outbox_depth),
        ];
        for (name, help, v) in gauge_rows {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let name = "robert_replays_refused_total";
        let _ = writeln!(
            out,
            "# HELP {name} Requests refused as replays: an authenticated request inside its time window \
             (request), a spent token (token), a used registration challenge (challenge).\n# TYPE {name} counter"
        );
        for (kind, c) in Replay::ALL.iter().zip(&self.replays) {
            let _ = writeln!(out, "{name}{{kind=\"{}\"}} {}", kind.label(), c.load(Relaxed));
        }
        let name = "robert_rate_limited_total";
        let _ = writeln!(
            out,
            "# HELP {name} Requests answered 429 (flood limits), by endpoint.\n# TYPE {name} counter"
        );
        for (e, c) in self.rate_limited.iter().enumerate() {
            let v = c.load(Relaxed);
            // The rate-limited endpoints always appear (0 until a flood), others once they have 429s.
            if v > 0 || matches!(ENDPOINTS[e], "register" | "challenge") {
                let _ = writeln!(out, "{name}{{endpoint=\"{}\"}} {v}", ENDPOINTS[e]);
            }
        }
        let _ = writeln!(out, "# HELP robert_http_requests_total HTTP requests by endpoint and status.");
        let _ = writeln!(out, "# TYPE robert_http_requests_total counter");
        for (e, row) in self.requests.iter().enumerate() {
            for (i, c) in row.iter().enumerate() {
                let v = c.load(Relaxed);
                if v > 0 {
                    let status = STATUSES.get(i).map_or("other".to_owned(), u16::to_string);
                    let _ = writeln!(
                        out,
                        "robert_http_requests_total{{endpoint=\"{}\",status=\"{status}\"}} {v}",
                        ENDPOINTS[e]
                    );
                }
            }
        }
        let _ =
            writeln!(out, "# HELP robert_http_request_duration_seconds HTTP request latency by endpoint.");
        let _ = writeln!(out, "# TYPE robert_http_request_duration_seconds histogram");
        for (e, h) in self.latency.iter().enumerate() {
            let count = h.count.load(Relaxed);
            if count == 0 {
                continue;
            }
            let ep = ENDPOINTS[e];
            for (i, le) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "robert_http_request_duration_seconds_bucket{{endpoint=\"{ep}\",le=\"{le}\"}} {}",
                    h.buckets[i].load(Relaxed)
                );
            }
            let _ = writeln!(
                out,
                "robert_http_request_duration_seconds_bucket{{endpoint=\"{ep}\",le=\"+Inf\"}} {count}"
            );
            let sum = h.sum_micros.load(Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "robert_http_request_duration_seconds_sum{{endpoint=\"{ep}\"}} {sum}");
            let _ = writeln!(out, "robert_http_request_duration_seconds_count{{endpoint=\"{ep}\"}} {count}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_histograms() {
        let m = Metrics::default();
        m.observe(4, 200, Duration::from_micros(300));
        m.observe(4, 403, Duration::from_millis(2));
        m.notified();
        let text = m.render(Gauges { users: 5, pool_depth: 1, outbox_depth: 0 });
        assert!(text.contains("robert_http_requests_total{endpoint=\"status\",status=\"200\"} 1"));
        assert!(text.contains("robert_http_requests_total{endpoint=\"status\",status=\"403\"} 1"));
        assert!(
            text.contains("robert_http_request_duration_seconds_bucket{endpoint=\"status\",le=\"0.0005\"} 1")
        );
        assert!(text.contains("robert_http_request_duration_seconds_count{endpoint=\"status\"} 2"));
        assert!(text.contains("robert_notifications_total 1"));
        assert!(text.contains("robert_registered_ids 5"));
        assert_eq!(m.counter("notifications"), Some(1));
    }

    #[test]
    fn replays_and_rate_limits_are_counted_by_kind_and_endpoint() {
        let m = Metrics::default();
        let zero = m.render(Gauges { users: 0, pool_depth: 0, outbox_depth: 0 });
        assert!(zero.contains("robert_replays_refused_total{kind=\"request\"} 0"), "{zero}");
        assert!(zero.contains("robert_rate_limited_total{endpoint=\"register\"} 0"), "{zero}");
        assert!(!zero.contains("robert_rate_limited_total{endpoint=\"status\"}"), "{zero}");
        m.replay_refused(Replay::Request);
        m.replay_refused(Replay::Token);
        m.replay_refused(Replay::Token);
        m.observe(3, 429, Duration::from_micros(10));
        m.observe(4, 429, Duration::from_micros(10));
        m.observe(3, 201, Duration::from_micros(10));
        let text = m.render(Gauges { users: 0, pool_depth: 0, outbox_depth: 0 });
        assert!(text.contains("robert_replays_refused_total{kind=\"request\"} 1"), "{text}");
        assert!(text.contains("robert_replays_refused_total{kind=\"token\"} 2"), "{text}");
        assert!(text.contains("robert_replays_refused_total{kind=\"challenge\"} 0"), "{text}");
        assert!(text.contains("robert_rate_limited_total{endpoint=\"register\"} 1"), "{text}");
        assert!(text.contains("robert_rate_limited_total{endpoint=\"status\"} 1"), "{text}");
        assert_eq!(m.rate_limited("register"), 1);
        assert_eq!(m.replays_refused(Replay::Token), 2);
    }

    #[test]
    fn mixed_pairs_are_counted_once_per_tally() {
        let m = Metrics::default();
        m.pairs_mixed(&PairTally { processed: 3, rejected: 2, forwarded: 1, dropped_foreign: 4 });
        assert_eq!(m.counter("pairs_processed"), Some(3));
        assert_eq!(m.counter("pairs_rejected"), Some(2));
        assert_eq!(m.counter("pairs_forwarded"), Some(1));
        assert_eq!(m.counter("pairs_dropped_foreign"), Some(4));
    }

    #[test]
    fn renders_federation_per_peer() {
        let m = Metrics::default();
        m.federation_peer(49).batches_sent.inc();
        m.federation_peer(49).batches_retried.add(2);
        m.federation_refused();
        let text = m.render_federation(&[39, 49], &[(49, 7)]);
        assert!(text.contains("robert_federation_batches_sent_total{peer=\"49\"} 1"), "{text}");
        assert!(text.contains("robert_federation_batches_retried_total{peer=\"49\"} 2"), "{text}");
        assert!(text.contains("robert_federation_batches_sent_total{peer=\"39\"} 0"), "{text}");
        assert!(text.contains("robert_federation_outbox_depth{peer=\"49\"} 7"), "{text}");
        assert!(text.contains("robert_federation_outbox_depth{peer=\"39\"} 0"), "{text}");
        assert!(text.contains("robert_federation_batches_refused_total 1"), "{text}");
    }
}
