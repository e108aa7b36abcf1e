//! The epidemic: an SEIR-like course per person, transmission along true contacts, testing and
//! diagnosis, and what people do when diagnosed or notified.
//!
//! - **Infection** along a contact of `m` minutes at `d` metres with an infectious person:
//!   probability `1 − exp(−β · m · w(d))`, `w(d) = min(1, 1/d²)`.
//! - **Course**: latent `latent_days − 1 ..= latent_days + 1` days, then infectious for
//!   `infectious_days`; symptoms (a fraction) two days into infectiousness.
//! - **Testing**: symptomatic people get tested (a fraction) 0–2 days after onset; notified
//!   people (a fraction) the day after the notification. A test is positive if the person was
//!   infected at least a day before and at most `infectious_days + 7` days after infectiousness
//!   began. The result — the diagnosis — comes `test_result_days` later.
//! - **Behaviour**: the diagnosed isolate for good (household contacts go on); notified people
//!   isolate (a fraction) for `isolation_days` from the next day; diagnosed App users declare (a
//!   fraction).
//!
//! Every draw about a person's course is taken from that person's own stream, so the run
//! without tracing gives the same course to the same infected person.

use crate::config::SimConfig;
use crate::population::{Contact, DAY};
use crate::rng::{Stream, Tag, hash, unit};
use rayon::prelude::*;
use serde::Serialize;

/// Seconds since the start of the simulation (negative: before it).
pub type SimTime = i64;

/// One person's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Health {
    /// When the person was infected.
    pub infected_at: Option<SimTime>,
    /// Start of infectiousness.
    pub infectious_from: SimTime,
    /// End of infectiousness (exclusive).
    pub infectious_until: SimTime,
    /// When the diagnosis (positive result) arrives, if it does.
    pub diagnosed_at: Option<SimTime>,
    /// Declares when diagnosed (App users only).
    pub declares: bool,
    /// When the App said "at risk".
    pub notified_at: Option<SimTime>,
    /// Isolating (after a notification) from then…
    pub isolating_from: SimTime,
    /// …until then.
    pub isolating_until: SimTime,
}

/// Counts at the end of one day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DayCounts {
    /// Day index.
    pub day: u32,
    /// Never infected.
    pub susceptible: u32,
    /// Infected, not yet infectious.
    pub exposed: u32,
    /// Infectious.
    pub infectious: u32,
    /// Past infectiousness.
    pub recovered: u32,
    /// Infections that day.
    pub new_infections: u32,
    /// Diagnoses that day.
    pub new_diagnoses: u32,
    /// Notifications ("at risk" answers) that day.
    pub new_notifications: u32,
    /// People isolating that day (diagnosed or notified).
    pub isolating: u32,
}

/// The epidemic over a population.
#[derive(Debug, Clone)]
pub struct Epidemic {
    /// Everyone's state.
    pub health: Vec<Health>,
}

impl Epidemic {
    /// The initial state: `initial_infected` of the people infected 0–5 days before day 0.
    pub fn new(cfg: &SimConfig, n: usize, has_phone: impl Fn(usize) -> bool) -> Self {
        let mut e = Self { health: vec![Health::default(); n] };
        for p in 0..n {
            let h = hash(cfg.seed, Tag::Seeding, p as u64, 0, 0, 0);
            if unit(h) < cfg.initial_infected {
                let back =
                    (unit(hash(cfg.seed, Tag::Seeding, p as u64, 1, 0, 0)) * 5.0 * f64::from(DAY)) as i64;
                e.infect(cfg, p, -back, has_phone(p));
            }
        }
        e
    }

    /// Infects person `p` at `t` (no effect if already infected) and draws their course.
    pub fn infect(&mut self, cfg: &SimConfig, p: usize, t: SimTime, has_phone: bool) {
        let h = &mut self.health[p];
        if h.infected_at.is_some() {
            return;
        }
        let mut s = Stream::new(cfg.seed, Tag::Disease, p as u64, 0, 0);
        let day = i64::from(DAY);
        let latent = i64::from(cfg.latent_days) - 1 + s.range(0, 3) as i64;
        h.infected_at = Some(t);
        h.infectious_from = t + latent.max(1) * day;
        h.infectious_until = h.infectious_from + i64::from(cfg.infectious_days) * day;
        let symptomatic = s.chance(cfg.symptomatic_fraction);
        let tested = s.chance(cfg.symptomatic_test_rate);
        let delay = s.range(0, 2 * u64::from(DAY) + 1) as i64;
        h.declares = has_phone && s.chance(cfg.declare_rate);
        if symptomatic && tested {
            let onset = h.infectious_from + 2 * day;
            let diag = onset + delay + i64::from(cfg.test_result_days) * day;
            h.diagnosed_at = Some(h.diagnosed_at.map_or(diag, |d| d.min(diag)));
        }
    }

    /// Is `p` infectious at `t`?
    pub fn infectious_at(&self, p: usize, t: SimTime) -> bool {
        let h = &self.health[p];
        h.infected_at.is_some() && h.infectious_from <= t && t < h.infectious_until
    }

    /// Who is present (not isolating) on `day`.
    pub fn present(&self, day: u32) -> Vec<bool> {
        let t = i64::from(day) * i64::from(DAY);
        self.health
            .iter()
            .map(|h| {
                !(h.diagnosed_at.is_some_and(|d| d <= t) || (h.isolating_from <= t && t < h.isolating_until))
            })
            .collect()
    }

    /// New infections along `contacts` (drawn per contact; the earliest wins when several).
    pub fn transmit(&self, cfg: &SimConfig, contacts: &[Contact]) -> Vec<(usize, SimTime)> {
        let mut hits: Vec<(usize, SimTime)> = contacts
            .par_iter()
            .filter_map(|c| {
                let (a, b) = (c.a as usize, c.b as usize);
                let t = SimTime::from(c.start);
                let (src, dst) = if self.infectious_at(a, t) && self.health[b].infected_at.is_none() {
                    (a, b)
                } else if self.infectious_at(b, t) && self.health[a].infected_at.is_none() {
                    (b, a)
                } else {
                    return None;
                };
                let _ = src;
                let minutes = f64::from(c.duration) / 60.0;
                let d = c.distance_m();
                let w = if d <= 1.0 { 1.0 } else { 1.0 / (d * d) };
                let p = 1.0 - (-cfg.beta_per_min * minutes * w).exp();
                let h =
                    hash(cfg.seed, Tag::Transmission, u64::from(c.a), u64::from(c.b), u64::from(c.start), 0);
                if unit(h) < p {
                    let at = unit(hash(
                        cfg.seed,
                        Tag::Transmission,
                        u64::from(c.a),
                        u64::from(c.b),
                        u64::from(c.start),
                        1,
                    ));
                    Some((dst, t + (at * f64::from(c.duration)) as i64))
                } else {
                    None
                }
            })
            .collect();
        hits.sort_unstable();
        hits.dedup_by_key(|x| x.0);
        hits
    }

    /// A notification at `t`: maybe isolate from the next day, maybe get tested the next day.
    pub fn on_notified(&mut self, cfg: &SimConfig, p: usize, t: SimTime) {
        let day = i64::from(DAY);
        let mut s = Stream::new(cfg.seed, Tag::Behaviour, p as u64, 0, 0);
        let h = &mut self.health[p];
        if h.notified_at.is_some() {
            return;
        }
        h.notified_at = Some(t);
        let next_day = (t.div_euclid(day) + 1) * day;
        if s.chance(cfg.isolation_compliance) {
            h.isolating_from = next_day;
            h.isolating_until = next_day + i64::from(cfg.isolation_days) * day;
        }
        if s.chance(cfg.notified_test_rate) {
            let test = next_day + 9 * 3600;
            let positive =
                h.infected_at.is_some_and(|i| i <= test - day && test < h.infectious_until + 7 * day);
            if positive {
                let diag = test + i64::from(cfg.test_result_days) * day;
                h.diagnosed_at = Some(h.diagnosed_at.map_or(diag, |d| d.min(diag)));
            }
        }
    }

    /// Counts at `t` (the end of `day`), with that day's new infections, diagnoses, notifications.
    pub fn counts(&self, day: u32) -> DayCounts {
        let d0 = i64::from(day) * i64::from(DAY);
        let d1 = d0 + i64::from(DAY);
        let within = |x: Option<SimTime>| x.is_some_and(|x| d0 <= x && x < d1);
        let mut c = DayCounts { day, ..DayCounts::default() };
        for h in &self.health {
            match h.infected_at {
                Some(i) if i < d1 => {
                    if d1 <= h.infectious_from {
                        c.exposed += 1;
                    } else if d1 <= h.infectious_until {
                        c.infectious += 1;
                    } else {
                        c.recovered += 1;
                    }
                }
                _ => c.susceptible += 1,
            }
            c.new_infections += u32::from(within(h.infected_at));
            c.new_diagnoses += u32::from(within(h.diagnosed_at));
            c.new_notifications += u32::from(within(h.notified_at));
            c.isolating += u32::from(
                h.diagnosed_at.is_some_and(|d| d < d1) || (h.isolating_from < d1 && d0 < h.isolating_until),
            );
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::population::Setting;

    #[test]
    fn course_and_testing() {
        let cfg = SimConfig { symptomatic_fraction: 1.0, symptomatic_test_rate: 1.0, ..SimConfig::default() };
        let mut e = Epidemic { health: vec![Health::default(); 2] };
        e.infect(&cfg, 0, 100, true);
        let h = e.health[0];
        assert!(h.infectious_from > 100 && h.infectious_until > h.infectious_from);
        assert!(h.diagnosed_at.is_some_and(|d| d > h.infectious_from));
        assert!(!e.infectious_at(0, 100) && e.infectious_at(0, h.infectious_from));
        // Infecting twice changes nothing.
        e.infect(&cfg, 0, 5_000_000, true);
        assert_eq!(e.health[0], h);
        // A notified, never-infected person tests negative.
        let cfg = SimConfig { notified_test_rate: 1.0, isolation_compliance: 1.0, ..cfg };
        e.on_notified(&cfg, 1, 10);
        assert_eq!(e.health[1].diagnosed_at, None);
        assert_eq!(e.health[1].isolating_until, i64::from(DAY) * (1 + i64::from(cfg.isolation_days)));
        assert!(!e.present(1)[1] && e.present(0)[1]);
    }

    #[test]
    fn transmission_needs_an_infectious_contact() {
        let cfg = SimConfig { beta_per_min: 1.0, ..SimConfig::default() };
        let mut e = Epidemic { health: vec![Health::default(); 3] };
        e.infect(&cfg, 0, -5 * i64::from(DAY), false);
        let c = |a, b| Contact { a, b, start: 1000, duration: 3600, distance_dm: 5, setting: Setting::Work };
        let hits = e.transmit(&cfg, &[c(0, 1), c(1, 2)]);
        // 0 is infectious at t=1000 (infected 5 days earlier, latent 2–4 days, infectious 7).
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), vec![1]);
        assert!(hits[0].1 >= 1000 && hits[0].1 < 4600);
    }
}
