//! Risk scoring (§2.3): public, configurable, computed only from LEE_A. See
//! `docs/risk-scoring.md` for the model and the reasons for its defaults.
//!
//! Two rules, chosen by `[risk] rule`:
//! - **epochs**: the number of distinct exposed epochs within the last CT days is at least
//!   `min_exposed_epochs` (the spec's own example: "flagged as exposed" a number of times);
//! - **duration**: a weighted exposure time within the last CT days — each uploaded HELLO stands
//!   for `seconds_per_hello` of contact, weighted by proximity from the epoch's mean RSSI (near 1,
//!   medium `medium_weight`, far or unmeasured `far_weight`), and one epoch never counts for more
//!   than its own duration — is at least `min_exposure_minutes`.

use crate::config::{RiskRule, RiskSection};
use crate::storage::Exposure;
use robert_proto::{Epoch, EpochSchedule};

/// The score of a LEE_A at epoch `now`, and whether it means "at risk".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// Distinct exposed epochs within CT days.
    pub exposed_epochs: u32,
    /// Weighted exposure minutes within CT days.
    pub weighted_minutes: f64,
    /// The rule's verdict.
    pub at_risk: bool,
}

/// Proximity weight of one exposed epoch.
fn weight(e: &Exposure, risk: &RiskSection) -> f64 {
    if e.rssi_count == 0 {
        return risk.far_weight;
    }
    // Mean RSSI of the HELLOs that carried one (integer dB is plenty).
    let mean = e.rssi_sum / i64::from(e.rssi_count);
    if mean >= i64::from(risk.near_rssi_dbm) {
        1.0
    } else if mean >= i64::from(risk.medium_rssi_dbm) {
        risk.medium_weight
    } else {
        risk.far_weight
    }
}

/// Scores `exposures` at epoch `now` (exposures older than CT days are ignored even if expiry has
/// not removed them yet, footnote 17).
pub fn score(
    exposures: &[Exposure],
    now: Epoch,
    schedule: &EpochSchedule,
    ct_days: u32,
    risk: &RiskSection,
) -> Score {
    let epoch_seconds = f64::from(schedule.epoch_duration_sec());
    let mut exposed_epochs = 0u32;
    let mut weighted_seconds = 0.0f64;
    for e in exposures.iter().filter(|e| !schedule.is_expired(now, e.epoch, ct_days) && e.hellos > 0) {
        exposed_epochs += 1;
        let seconds = (f64::from(e.hellos) * f64::from(risk.seconds_per_hello)).min(epoch_seconds);
        weighted_seconds += seconds * weight(e, risk);
    }
    let weighted_minutes = weighted_seconds / 60.0;
    let at_risk = match risk.rule {
        RiskRule::Epochs => exposed_epochs >= risk.min_exposed_epochs.max(1),
        // A strictly positive score is required: zero minutes never notify, whatever the threshold.
        RiskRule::Duration => weighted_seconds > 0.0 && weighted_minutes >= risk.min_exposure_minutes,
    };
    Score { exposed_epochs, weighted_minutes, at_risk }
}

#[cfg(test)]
mod tests {
    use super::*;
    use robert_proto::NtpTime;

    fn sched() -> EpochSchedule {
        EpochSchedule::new(NtpTime::new(3_900_000_000), 900).expect("nonzero")
    }

    fn exp(epoch: u32, hellos: u32, rssi: Option<i64>) -> Exposure {
        Exposure {
            epoch: Epoch::new(epoch).expect("range"),
            hellos,
            rssi_sum: rssi.map_or(0, |r| r * i64::from(hellos)),
            rssi_count: if rssi.is_some() { hellos } else { 0 },
        }
    }

    fn now() -> Epoch {
        Epoch::new(2000).expect("range")
    }

    #[test]
    fn duration_rule() {
        let risk = RiskSection::default(); // 60 s per HELLO, 15 min, near >= -60
        // 14 near HELLOs = 14 minutes: not enough; 15 = 15 minutes: at risk.
        assert!(!score(&[exp(1990, 14, Some(-50))], now(), &sched(), 14, &risk).at_risk);
        assert!(score(&[exp(1990, 15, Some(-50))], now(), &sched(), 14, &risk).at_risk);
        // Medium distance counts half: 30 HELLOs over two epochs = 15 weighted minutes.
        let s = score(&[exp(1990, 15, Some(-70)), exp(1991, 15, Some(-70))], now(), &sched(), 14, &risk);
        assert!((s.weighted_minutes - 15.0).abs() < 1e-9 && s.at_risk);
        // Far, or no RSSI: weight 0 by default.
        assert!(!score(&[exp(1990, 100, Some(-90))], now(), &sched(), 14, &risk).at_risk);
        assert!(!score(&[exp(1990, 100, None)], now(), &sched(), 14, &risk).at_risk);
        // One epoch counts at most its duration (15 min): 1000 HELLOs in one epoch = 15 minutes.
        let s = score(&[exp(1990, 1000, Some(-40))], now(), &sched(), 14, &risk);
        assert!((s.weighted_minutes - 15.0).abs() < 1e-9);
    }

    #[test]
    fn epochs_rule_and_expiry() {
        let risk = RiskSection { rule: RiskRule::Epochs, min_exposed_epochs: 2, ..RiskSection::default() };
        assert!(!score(&[exp(1990, 1, None)], now(), &sched(), 14, &risk).at_risk);
        assert!(score(&[exp(1990, 1, None), exp(1995, 1, None)], now(), &sched(), 14, &risk).at_risk);
        // 14 days = 1344 epochs: epoch 2000-1345 has expired.
        assert!(!score(&[exp(2000 - 1345, 1, None), exp(1995, 1, None)], now(), &sched(), 14, &risk).at_risk);
        assert!(score(&[exp(2000 - 1344, 1, None), exp(1995, 1, None)], now(), &sched(), 14, &risk).at_risk);
    }

    #[test]
    fn nothing_is_never_at_risk() {
        let risk = RiskSection { min_exposure_minutes: 0.0, ..RiskSection::default() };
        assert!(!score(&[], now(), &sched(), 14, &risk).at_risk);
        let risk = RiskSection { rule: RiskRule::Epochs, min_exposed_epochs: 0, ..RiskSection::default() };
        assert!(!score(&[], now(), &sched(), 14, &risk).at_risk);
    }
}
