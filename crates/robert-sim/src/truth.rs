//! The ground truth of notifications: the server's own scoring rule (`robert_server::risk`)
//! applied to what a perfect radio would have recorded.
//!
//! When phone B declares at `td` with the window `(ContStart, ContEnd = td)`, every HELLO its
//! true contacts broadcast to it in the window — on the senders' real HELLO schedules, younger
//! than CT days (what the App would upload), at the noise-free RSSI of the contact's distance,
//! with no radio loss — becomes an exposure of the sender, available from `td` on. A phone is
//! *truly exposed* at an ESR time if the scoring rule says "at risk" on those exposures. With no
//! loss and no RSSI noise, the App and the server must reach exactly the same verdicts.

use crate::config::SimConfig;
use crate::epidemic::SimTime;
use crate::radio::{PhoneContact, expected_rssi, hello_times, phase};
use crate::server::TimeMap;
use robert_proto::{Epoch, EpochSchedule, NtpTime};
use robert_server::config::RiskSection;
use robert_server::risk;
use robert_server::storage::Exposure;
use std::collections::BTreeMap;

/// One block of ideal exposures of a phone, from one declaration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    available: SimTime,
    epoch: u32,
    hellos: u32,
    rssi_sum: i64,
    first_hello: u32,
    /// The declaring phone (to tell exposures across borders in multi-country runs).
    declarer: u32,
}

/// The ground truth.
#[derive(Debug, Default)]
pub struct Truth {
    /// Every phone's true contacts with other phones.
    pub contacts: Vec<Vec<PhoneContact>>,
    entries: Vec<Vec<Entry>>,
}

impl Truth {
    /// An empty truth for `phones` phones.
    pub fn new(phones: usize) -> Self {
        Self { contacts: vec![Vec::new(); phones], entries: vec![Vec::new(); phones] }
    }

    /// Records a day's phone-to-phone contacts.
    pub fn add_contacts(&mut self, pcs: Vec<(u32, PhoneContact)>) {
        for (p, c) in pcs {
            self.contacts[p as usize].push(c);
        }
    }

    /// Phone `b` declares at simulation time `td` (server time `td_ntp`, which a live run may
    /// reach late) the window `(cont_start, td)`: the ideal exposures of the phones it met.
    /// Returns how many phones got an exposure.
    ///
    /// The window and CT are applied as the App applies them (§6.1, §5.2 note): on the server
    /// times `map` gives the HELLOs, in server epochs.
    pub fn declare(
        &mut self,
        cfg: &SimConfig,
        b: u32,
        cont_start: SimTime,
        td: SimTime,
        td_ntp: NtpTime,
        map: &TimeMap,
    ) -> usize {
        let ct = cfg.ct_days.saturating_mul(86_400);
        let period = cfg.hello_period_sec;
        let start = map.ntp(cont_start);
        let mut heard: Vec<(u32, u32, u16)> = Vec::new();
        for c in &self.contacts[b as usize] {
            let ph = phase(cfg.seed, c.other, period);
            for t in hello_times(c.start, c.end, ph, period) {
                let ts = map.ntp(SimTime::from(t));
                if start < ts && ts < td_ntp && td_ntp.seconds().saturating_sub(ts.seconds()) < ct {
                    heard.push((c.other, t, c.distance_dm));
                }
            }
        }
        heard.sort_unstable();
        heard.dedup_by_key(|h| (h.0, h.1));
        let mut by: BTreeMap<(u32, u32), Entry> = BTreeMap::new();
        for (a, t, dist) in heard {
            let epoch = map.epoch(t);
            let e = by.entry((a, epoch)).or_insert(Entry {
                available: td,
                epoch,
                hellos: 0,
                rssi_sum: 0,
                first_hello: t,
                declarer: b,
            });
            e.hellos += 1;
            e.rssi_sum += i64::from(expected_rssi(cfg, dist));
            e.first_hello = e.first_hello.min(t);
        }
        let mut phones = 0;
        let mut last = None;
        for ((a, _), e) in by {
            if last != Some(a) {
                phones += 1;
                last = Some(a);
            }
            self.entries[a as usize].push(e);
        }
        phones
    }

    /// Has `a` any ideal exposure available at `t`?
    pub fn has_exposure(&self, a: u32, t: SimTime) -> bool {
        self.entries[a as usize].iter().any(|e| e.available <= t)
    }

    /// Did any of `a`'s true contacts declare (by `t`)? (The invariant's "true contact".)
    pub fn any_entry(&self, a: u32) -> bool {
        !self.entries[a as usize].is_empty()
    }

    /// The earliest HELLO among `a`'s exposures available at `t` (for time to notification).
    pub fn first_exposure(&self, a: u32, t: SimTime) -> Option<u32> {
        self.entries[a as usize].iter().filter(|e| e.available <= t).map(|e| e.first_hello).min()
    }

    /// The phones whose declarations gave `a` an exposure available at `t` (with repetitions).
    pub fn declarers(&self, a: u32, t: SimTime) -> impl Iterator<Item = u32> + '_ {
        self.entries[a as usize].iter().filter(move |e| e.available <= t).map(|e| e.declarer)
    }

    /// The latest declaration that gave `a` an exposure available at `t`.
    pub fn last_declaration(&self, a: u32, t: SimTime) -> Option<SimTime> {
        self.entries[a as usize].iter().filter(|e| e.available <= t).map(|e| e.available).max()
    }

    /// The scoring rule's verdict for `a` at simulation time `t` (epoch `now`).
    pub fn at_risk(
        &self,
        a: u32,
        t: SimTime,
        now: Epoch,
        schedule: &EpochSchedule,
        ct_days: u32,
        rule: &RiskSection,
    ) -> bool {
        let mut merged: BTreeMap<u32, Exposure> = BTreeMap::new();
        for e in self.entries[a as usize].iter().filter(|e| e.available <= t) {
            let Some(epoch) = Epoch::new(e.epoch) else { continue };
            let x =
                merged.entry(e.epoch).or_insert(Exposure { epoch, hellos: 0, rssi_sum: 0, rssi_count: 0 });
            x.hellos += e.hellos;
            x.rssi_sum += e.rssi_sum;
            x.rssi_count += e.hellos;
        }
        if merged.is_empty() {
            return false;
        }
        let exposures: Vec<Exposure> = merged.into_values().collect();
        risk::score(&exposures, now, schedule, ct_days, rule).at_risk
    }
}
