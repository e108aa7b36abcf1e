//! Epoch arithmetic (§2.2, §3.1, §6.2 step 6, footnote 17). Pure functions of the times passed in:
//! no clock is read here.

use crate::{Epoch, NtpTime};

/// Seconds in a day, for CT (days) to epochs conversions.
pub const SECONDS_PER_DAY: u32 = 86_400;

/// The service's epoch schedule: `T_pstart` and `epoch_duration_sec` (§3.1, §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochSchedule {
    service_start: NtpTime,
    epoch_duration_sec: u32,
}

impl EpochSchedule {
    /// `None` if the epoch duration is 0.
    pub const fn new(service_start: NtpTime, epoch_duration_sec: u32) -> Option<Self> {
        if epoch_duration_sec == 0 { None } else { Some(Self { service_start, epoch_duration_sec }) }
    }

    /// `T_pstart`, the time the service started (§3.1).
    pub const fn service_start(&self) -> NtpTime {
        self.service_start
    }

    /// `epoch_duration_sec`.
    pub const fn epoch_duration_sec(&self) -> u32 {
        self.epoch_duration_sec
    }

    /// `i = floor((t - T_pstart) / epoch_duration_sec)`; `None` before the service started or past
    /// the 24-bit epoch counter.
    pub fn epoch_at(&self, t: NtpTime) -> Option<Epoch> {
        let since = t.seconds().checked_sub(self.service_start.seconds())?;
        Epoch::new(since / self.epoch_duration_sec)
    }

    /// The first second of epoch `i`; `None` past NTP era 0.
    pub fn epoch_start(&self, i: Epoch) -> Option<NtpTime> {
        let offset = i.number().checked_mul(self.epoch_duration_sec)?;
        self.service_start.checked_add(offset)
    }

    /// `T_pstart + (i + 1) * epoch_duration_sec`: the start of the epoch after `i` (§3.3).
    pub fn next_epoch_start(&self, i: Epoch) -> Option<NtpTime> {
        self.epoch_start(Epoch::new(i.number() + 1)?)
    }

    /// §6.2 step 6: does a HELLO received at `time` belong to epoch `i`? True when
    /// `|epoch_at(time) - i| <= 1` (a HELLO sent at the very end of an epoch may be received in the
    /// next one). A time before the service started matches nothing.
    ///
    /// This is also what detects a HELLO replayed 2^16 s after it was sent (footnote 9): its δ
    /// check passes, but the epoch of the reception time is then 2^16 / epoch_duration_sec away.
    pub fn time_matches_epoch(&self, time: NtpTime, i: Epoch) -> bool {
        self.epoch_at(time).is_some_and(|e| e.abs_diff(i) <= 1)
    }

    /// The number of epochs in `days` days: `days * 86400 / epoch_duration_sec` (CTK of
    /// footnote 5, and the LEE expiry horizon of footnote 17).
    pub fn epochs_in_days(&self, days: u32) -> u32 {
        let secs = u64::from(days) * u64::from(SECONDS_PER_DAY);
        u32::try_from(secs / u64::from(self.epoch_duration_sec)).unwrap_or(u32::MAX)
    }

    /// Footnote 17: at epoch `now`, an exposed epoch `j` of LEE_A has expired when
    /// `(now - j) > ct_days * 86400 / epoch_duration_sec`.
    pub fn is_expired(&self, now: Epoch, j: Epoch, ct_days: u32) -> bool {
        now.number().saturating_sub(j.number()) > self.epochs_in_days(ct_days)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched() -> EpochSchedule {
        EpochSchedule::new(NtpTime::new(3_800_000_000), 900).expect("nonzero")
    }

    fn ep(n: u32) -> Epoch {
        Epoch::new(n).expect("24 bits")
    }

    #[test]
    fn epoch_numbers() {
        let s = sched();
        assert_eq!(s.epoch_at(NtpTime::new(3_799_999_999)), None);
        assert_eq!(s.epoch_at(NtpTime::new(3_800_000_000)), Some(ep(0)));
        assert_eq!(s.epoch_at(NtpTime::new(3_800_000_899)), Some(ep(0)));
        assert_eq!(s.epoch_at(NtpTime::new(3_800_000_900)), Some(ep(1)));
        assert_eq!(s.epoch_start(ep(2)), Some(NtpTime::new(3_800_001_800)));
        assert_eq!(s.next_epoch_start(ep(2)), Some(NtpTime::new(3_800_002_700)));
        assert!(EpochSchedule::new(NtpTime::new(0), 0).is_none());
    }

    #[test]
    fn epoch_check_allows_one_epoch_of_slack() {
        let s = sched();
        let t = NtpTime::new(3_800_000_000 + 10 * 900 + 5); // epoch 10
        assert!(s.time_matches_epoch(t, ep(10)));
        assert!(s.time_matches_epoch(t, ep(9)));
        assert!(s.time_matches_epoch(t, ep(11)));
        assert!(!s.time_matches_epoch(t, ep(12)));
        assert!(!s.time_matches_epoch(t, ep(8)));
        // Replayed 2^16 s later: 72 epochs of 15 min away.
        let replay = NtpTime::new(t.seconds() + 65_536);
        assert!(!s.time_matches_epoch(replay, ep(10)));
    }

    #[test]
    fn expiry_horizon() {
        let s = sched();
        assert_eq!(s.epochs_in_days(14), 1344);
        assert!(!s.is_expired(ep(2000), ep(2000 - 1344), 14));
        assert!(s.is_expired(ep(2000), ep(2000 - 1345), 14));
        assert!(!s.is_expired(ep(5), ep(7), 14));
    }
}
