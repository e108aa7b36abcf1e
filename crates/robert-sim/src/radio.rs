//! The radio: which HELLOs a contact produces and how they are heard (§5).
//!
//! A phone broadcasts one HELLO every `hello_period_sec`, at a phase of its own; during a
//! contact from `start` to `end`, each HELLO the other phone could hear is received with
//! probability `1 − loss` (independently per HELLO and receiver), with an RSSI from the
//! log-distance path-loss model `rssi_at_1m − 10·n·log10(d)` plus Gaussian noise. Two contacts
//! of the same pair that overlap give one reception per HELLO (the nearer one's RSSI): a HELLO
//! is one advertisement.

use crate::config::SimConfig;
use crate::population::Contact;
use crate::rng::{Tag, hash, normal, unit};
use rayon::prelude::*;

/// One HELLO heard: `receiver` heard `sender`'s HELLO of second `t` (simulation seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Reception {
    /// Sender's phone.
    pub sender: u32,
    /// When it was broadcast and heard.
    pub t: u32,
    /// Receiver's phone.
    pub receiver: u32,
    /// Distance (decimetres; the nearest when two contacts overlap).
    pub distance_dm: u16,
    /// Measured RSSI, dBm.
    pub rssi: i8,
}

/// A contact between two phones, as remembered for the ground truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhoneContact {
    /// The other phone.
    pub other: u32,
    /// Start (simulation seconds).
    pub start: u32,
    /// End (exclusive).
    pub end: u32,
    /// Distance, decimetres.
    pub distance_dm: u16,
}

/// The HELLO phase of a phone (seconds into each period).
pub fn phase(seed: u64, phone: u32, period: u32) -> u32 {
    (hash(seed, Tag::Schedule, u64::from(phone), 1, 0, 0) % u64::from(period)) as u32
}

/// The HELLO times of a phone with `phase` in `[start, end)`.
pub fn hello_times(start: u32, end: u32, phase: u32, period: u32) -> impl Iterator<Item = u32> {
    let first = if start <= phase { phase } else { start + (period - (start - phase) % period) % period };
    (first..end).step_by(period as usize)
}

/// The noise-free RSSI at `distance_dm`, rounded and clamped to a signed byte.
pub fn expected_rssi(cfg: &SimConfig, distance_dm: u16) -> i8 {
    clamp_rssi(mean_rssi(cfg, distance_dm))
}

fn mean_rssi(cfg: &SimConfig, distance_dm: u16) -> f64 {
    let d = (f64::from(distance_dm) / 10.0).max(0.1);
    cfg.rssi_at_1m - 10.0 * cfg.path_loss_exponent * d.log10()
}

fn clamp_rssi(x: f64) -> i8 {
    x.round().clamp(-128.0, 127.0) as i8
}

/// Radio counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RadioStats {
    /// HELLO receptions the contacts allowed (before loss).
    pub possible: u64,
    /// Receptions lost.
    pub lost: u64,
}

/// The receptions of a day's `contacts` between phones, sorted by `(sender, t, receiver)`; the
/// phone-to-phone contacts for the ground truth; counters.
pub fn receptions(
    cfg: &SimConfig,
    phone_of: &[Option<u32>],
    contacts: &[Contact],
) -> (Vec<Reception>, Vec<(u32, PhoneContact)>, RadioStats) {
    let period = cfg.hello_period_sec;
    type PerContact = (Vec<Reception>, Option<[(u32, PhoneContact); 2]>);
    let per_contact: Vec<PerContact> = contacts
        .par_iter()
        .map(|c| {
            let (Some(pa), Some(pb)) = (phone_of[c.a as usize], phone_of[c.b as usize]) else {
                return (Vec::new(), None);
            };
            let mut out = Vec::new();
            for (s, r) in [(pa, pb), (pb, pa)] {
                for t in hello_times(c.start, c.end(), phase(cfg.seed, s, period), period) {
                    out.push(Reception { sender: s, t, receiver: r, distance_dm: c.distance_dm, rssi: 0 });
                }
            }
            let pc = |other| PhoneContact { other, start: c.start, end: c.end(), distance_dm: c.distance_dm };
            (out, Some([(pa, pc(pb)), (pb, pc(pa))]))
        })
        .collect();
    let mut all: Vec<Reception> = Vec::new();
    let mut pcs = Vec::new();
    for (r, p) in per_contact {
        all.extend(r);
        pcs.extend(p.into_iter().flatten());
    }
    all.par_sort_unstable_by_key(|r| (r.sender, r.t, r.receiver, r.distance_dm));
    all.dedup_by_key(|r| (r.sender, r.t, r.receiver));
    let possible = all.len() as u64;
    let kept: Vec<Reception> = all
        .into_par_iter()
        .filter_map(|mut r| {
            let key = (u64::from(r.sender), u64::from(r.receiver), u64::from(r.t));
            if unit(hash(cfg.seed, Tag::Loss, key.0, key.1, key.2, 0)) < cfg.loss {
                return None;
            }
            let noise = if cfg.rssi_noise_db > 0.0 {
                cfg.rssi_noise_db
                    * normal(
                        hash(cfg.seed, Tag::Rssi, key.0, key.1, key.2, 0),
                        hash(cfg.seed, Tag::Rssi, key.0, key.1, key.2, 1),
                    )
            } else {
                0.0
            };
            r.rssi = clamp_rssi(mean_rssi(cfg, r.distance_dm) + noise);
            Some(r)
        })
        .collect();
    let stats = RadioStats { possible, lost: possible - kept.len() as u64 };
    (kept, pcs, stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::population::Setting;

    #[test]
    fn hello_times_follow_the_phase() {
        assert_eq!(hello_times(0, 200, 10, 60).collect::<Vec<_>>(), vec![10, 70, 130, 190]);
        assert_eq!(hello_times(71, 200, 10, 60).collect::<Vec<_>>(), vec![130, 190]);
        assert_eq!(hello_times(70, 130, 10, 60).collect::<Vec<_>>(), vec![70]);
        assert_eq!(hello_times(5, 6, 10, 60).count(), 0);
    }

    #[test]
    fn rssi_falls_with_distance() {
        let cfg = SimConfig::default();
        assert_eq!(expected_rssi(&cfg, 10), -55);
        assert_eq!(expected_rssi(&cfg, 100), -75);
        assert!(expected_rssi(&cfg, 20) > expected_rssi(&cfg, 30));
    }

    #[test]
    fn loss_and_overlap() {
        let phone_of = vec![Some(0), Some(1), None];
        let c = |a, b, start, dist| Contact {
            a,
            b,
            start,
            duration: 600,
            distance_dm: dist,
            setting: Setting::Random,
        };
        let cfg = SimConfig { loss: 0.0, rssi_noise_db: 0.0, ..SimConfig::default() };
        // Two overlapping contacts of the same pair, and one with a person without the App.
        let (r, pcs, stats) =
            receptions(&cfg, &phone_of, &[c(0, 1, 0, 30), c(1, 0, 300, 10), c(0, 2, 0, 10)]);
        // 10 minutes and 5 more (300..900) at one HELLO a minute, each way, overlap counted once.
        assert_eq!(stats, RadioStats { possible: 30, lost: 0 });
        assert_eq!(r.len(), 30);
        assert_eq!(pcs.len(), 4);
        // During the overlap the nearer contact's RSSI is used.
        assert!(r.iter().filter(|x| x.t >= 300 && x.t < 600).all(|x| x.rssi == -55));
        let cfg = SimConfig { loss: 0.5, ..cfg };
        let (r, _, stats) =
            receptions(&cfg, &phone_of, &[c(0, 1, 0, 10), c(0, 1, 1000, 10), c(0, 1, 2000, 10)]);
        assert_eq!(stats.possible - stats.lost, r.len() as u64);
        assert!(stats.lost > 0 && stats.lost < stats.possible);
    }
}
