//! The population and its contacts (the ground truth of who met whom, how long, how close).
//!
//! People live in households (sizes 1..=max, many small ones), most belong to a workplace or
//! school, some commute by public transport, and everyone has a few random encounters. Each day
//! every person *starts* their own contacts from their own random stream (so the draws do not
//! depend on thread scheduling); a contact with someone who is isolating does not happen.
//!
//! In a multi-country run (`crate::countries`) each country's population is built by
//! [`Population::build_part`] and the parts are joined by [`Population::concat`]; who meets whom
//! across borders is decided there.

use crate::config::SimConfig;
use crate::rng::{Stream, Tag};
use rayon::prelude::*;

/// Seconds in a day.
pub const DAY: u32 = 86_400;

/// Where a contact happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Setting {
    /// At home.
    Household,
    /// At work or school.
    Work,
    /// In public transport.
    Transport,
    /// Anywhere else.
    Random,
}

/// One true contact between two people on one day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contact {
    /// The person who started it.
    pub a: u32,
    /// The other person.
    pub b: u32,
    /// Start, seconds since the start of the simulation.
    pub start: u32,
    /// Duration, seconds.
    pub duration: u32,
    /// Distance, decimetres.
    pub distance_dm: u16,
    /// Where.
    pub setting: Setting,
}

impl Contact {
    /// End, seconds since the start of the simulation (exclusive).
    pub fn end(&self) -> u32 {
        self.start + self.duration
    }

    /// Distance in metres.
    pub fn distance_m(&self) -> f64 {
        f64::from(self.distance_dm) / 10.0
    }
}

/// One person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Person {
    /// Index of the household.
    pub household: u32,
    /// Index of the workplace or school, if any.
    pub workplace: Option<u32>,
    /// Commutes by public transport on working days.
    pub commuter: bool,
    /// Index of the person's phone (App instance), if they use the App.
    pub phone: Option<u32>,
}

/// The population.
#[derive(Debug, Clone)]
pub struct Population {
    /// Everyone.
    pub people: Vec<Person>,
    /// Members of each household (contiguous person indices).
    pub households: Vec<(u32, u32)>,
    /// Members of each workplace.
    pub workplaces: Vec<Vec<u32>>,
    /// Commuters.
    pub commuters: Vec<u32>,
    /// The owner of each phone.
    pub phone_owner: Vec<u32>,
}

/// Household size distribution for sizes 1..=5 (share of households), then a thin tail.
const HOUSEHOLD_WEIGHTS: [f64; 5] = [0.35, 0.33, 0.15, 0.12, 0.05];

impl Population {
    /// Builds the population of `cfg` (deterministic in the seed).
    pub fn build(cfg: &SimConfig) -> Self {
        Self::build_part(cfg, cfg.population, 0)
    }

    /// Builds `n` people with the shape knobs of `cfg`, from the population stream `part` (part 0
    /// is [`Population::build`]'s; a multi-country run builds country `i` as part `i`).
    pub fn build_part(cfg: &SimConfig, n: u32, part: u64) -> Self {
        let mut s = Stream::new(cfg.seed, Tag::Population, part, 0, 0);
        let mut people = Vec::with_capacity(n as usize);
        let mut households = Vec::new();
        let mut next = 0u32;
        while next < n {
            let size = household_size(&mut s, cfg.household_max).min(n - next);
            let h = households.len() as u32;
            households.push((next, next + size));
            for _ in 0..size {
                people.push(Person { household: h, workplace: None, commuter: false, phone: None });
            }
            next += size;
        }
        // Workers, shuffled, then cut into workplaces of random size.
        let mut workers: Vec<u32> = (0..n).filter(|_| s.chance(cfg.work_fraction)).collect();
        for i in (1..workers.len()).rev() {
            let j = s.range(0, i as u64 + 1) as usize;
            workers.swap(i, j);
        }
        let mut workplaces = Vec::new();
        let mut rest = workers.as_slice();
        while !rest.is_empty() {
            let mean = u64::from(cfg.workplace_size);
            let size = (s.range(mean / 2, mean + mean / 2 + 1) as usize).clamp(2, rest.len().max(2));
            let (these, others) = rest.split_at(size.min(rest.len()));
            rest = others;
            let w = workplaces.len() as u32;
            for &p in these {
                people[p as usize].workplace = Some(w);
            }
            workplaces.push(these.to_vec());
        }
        let mut commuters = Vec::new();
        for (i, p) in people.iter_mut().enumerate() {
            if p.workplace.is_some() && s.chance(cfg.commuter_fraction) {
                p.commuter = true;
                commuters.push(i as u32);
            }
        }
        let mut phone_owner = Vec::new();
        for (i, p) in people.iter_mut().enumerate() {
            if s.chance(cfg.adoption) {
                p.phone = Some(phone_owner.len() as u32);
                phone_owner.push(i as u32);
            }
        }
        Self { people, households, workplaces, commuters, phone_owner }
    }

    /// Joins populations into one: people, households, workplaces and phones of `parts[k]` come
    /// after those of `parts[..k]`, with their indices shifted.
    pub fn concat(parts: Vec<Population>) -> Self {
        let mut out = Population {
            people: Vec::new(),
            households: Vec::new(),
            workplaces: Vec::new(),
            commuters: Vec::new(),
            phone_owner: Vec::new(),
        };
        for part in parts {
            let p0 = out.people.len() as u32;
            let (h0, w0, ph0) =
                (out.households.len() as u32, out.workplaces.len() as u32, out.phone_owner.len() as u32);
            out.people.extend(part.people.into_iter().map(|p| Person {
                household: p.household + h0,
                workplace: p.workplace.map(|w| w + w0),
                commuter: p.commuter,
                phone: p.phone.map(|x| x + ph0),
            }));
            out.households.extend(part.households.into_iter().map(|(a, b)| (a + p0, b + p0)));
            out.workplaces
                .extend(part.workplaces.into_iter().map(|m| m.into_iter().map(|x| x + p0).collect()));
            out.commuters.extend(part.commuters.into_iter().map(|x| x + p0));
            out.phone_owner.extend(part.phone_owner.into_iter().map(|x| x + p0));
        }
        out
    }

    /// Number of phones (App users).
    pub fn phones(&self) -> usize {
        self.phone_owner.len()
    }

    /// The contacts of `day`, in a deterministic order, everyone in their own country.
    /// `present[p]` is false for a person who isolates that day: they only meet their household.
    pub fn contacts(&self, cfg: &SimConfig, day: u32, present: &[bool]) -> Vec<Contact> {
        let riders = if day % 7 < 5 { self.commuters.clone() } else { Vec::new() };
        let everyone_home = Whereabouts {
            at_home: vec![true; self.people.len()],
            place: vec![0; self.people.len()],
            here: vec![(0..self.people.len() as u32).collect()],
            riders: vec![riders],
        };
        self.contacts_in(cfg, day, present, &everyone_home)
    }

    /// The contacts of `day` with everyone where `w` puts them (one generator for one country
    /// and for several, [`crate::countries`]): households meet when both are at home, colleagues
    /// when both are in their own country, travellers ride and meet at random among the people
    /// of the place they are in. `present[p]` is false for a person who isolates that day: they
    /// only meet their household.
    pub fn contacts_in(&self, cfg: &SimConfig, day: u32, present: &[bool], w: &Whereabouts) -> Vec<Contact> {
        let working_day = day % 7 < 5;
        let day_start = day * DAY;
        let per_person: Vec<Vec<Contact>> = (0..self.people.len() as u32)
            .into_par_iter()
            .map(|a| {
                let mut s = Stream::new(cfg.seed, Tag::Contacts, u64::from(day), u64::from(a), 0);
                let mut out = Vec::new();
                let me = self.people[a as usize];
                let at_home = |p: u32| w.at_home[p as usize];
                // Household: every pair at home meets every evening (started by the lower index).
                let (_, h1) = self.households[me.household as usize];
                for b in a + 1..h1 {
                    let start = s.range(18 * 3600, 22 * 3600) as u32;
                    let duration = s.range(20 * 60, 60 * 60) as u32;
                    let distance_dm = s.range(5, 21) as u16;
                    if at_home(a) && at_home(b) {
                        out.push(Contact {
                            a,
                            b,
                            start: day_start + start,
                            duration,
                            distance_dm,
                            setting: Setting::Household,
                        });
                    }
                }
                if !present[a as usize] {
                    return out;
                }
                let push = |out: &mut Vec<Contact>,
                            b: u32,
                            start: u64,
                            dur: (u64, u64),
                            dist: (u64, u64),
                            setting,
                            s: &mut Stream,
                            ok: bool| {
                    let duration = s.range(dur.0, dur.1) as u32;
                    let distance_dm = s.range(dist.0, dist.1) as u16;
                    if ok && b != a && present[b as usize] {
                        let start = (start as u32).min(DAY - duration);
                        out.push(Contact { a, b, start: day_start + start, duration, distance_dm, setting });
                    }
                };
                if working_day
                    && at_home(a)
                    && let Some(wp) = me.workplace
                {
                    let members = &self.workplaces[wp as usize];
                    for _ in 0..cfg.work_contacts {
                        let b = members[s.range(0, members.len() as u64) as usize];
                        let start = s.range(8 * 3600, 17 * 3600);
                        let ok = at_home(b);
                        push(&mut out, b, start, (5 * 60, 40 * 60), (10, 31), Setting::Work, &mut s, ok);
                    }
                }
                let place = usize::from(w.place[a as usize]);
                let riders = &w.riders[place];
                if !riders.is_empty() && riders.binary_search(&a).is_ok() {
                    let b = riders[s.range(0, riders.len() as u64) as usize];
                    let start = if s.chance(0.5) {
                        s.range(7 * 3600, 9 * 3600)
                    } else {
                        s.range(17 * 3600, 19 * 3600)
                    };
                    push(&mut out, b, start, (5 * 60, 25 * 60), (10, 41), Setting::Transport, &mut s, true);
                }
                let here = &w.here[place];
                for _ in 0..s.poisson(cfg.random_contacts) {
                    let b = here[s.range(0, here.len() as u64) as usize];
                    let start = s.range(9 * 3600, 21 * 3600);
                    push(&mut out, b, start, (60, 15 * 60), (10, 51), Setting::Random, &mut s, true);
                }
                out
            })
            .collect();
        per_person.into_iter().flatten().collect()
    }
}

/// Where everyone is on one day, for [`Population::contacts_in`]. Places are indices (one country:
/// one place; several: one per country).
#[derive(Debug, Clone)]
pub struct Whereabouts {
    /// Whether each person is in their own country (meets their household, goes to work).
    pub at_home: Vec<bool>,
    /// The place each person is in.
    pub place: Vec<u8>,
    /// The people in each place, in increasing index order (random contacts are drawn here).
    pub here: Vec<Vec<u32>>,
    /// The people riding public transport in each place, in increasing index order.
    pub riders: Vec<Vec<u32>>,
}

fn household_size(s: &mut Stream, max: u32) -> u32 {
    let u = s.unit();
    let mut acc = 0.0;
    for (i, w) in HOUSEHOLD_WEIGHTS.iter().enumerate() {
        acc += w;
        if u < acc {
            return (i as u32 + 1).min(max);
        }
    }
    max.min(5)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SimConfig {
        SimConfig { population: 3_000, ..SimConfig::default() }
    }

    #[test]
    fn population_is_consistent() {
        let c = cfg();
        let p = Population::build(&c);
        assert_eq!(p.people.len(), 3_000);
        for (i, &(h0, h1)) in p.households.iter().enumerate() {
            assert!(h0 < h1 && h1 - h0 <= c.household_max);
            assert!((h0..h1).all(|m| p.people[m as usize].household == i as u32));
        }
        for (w, members) in p.workplaces.iter().enumerate() {
            assert!(members.iter().all(|&m| p.people[m as usize].workplace == Some(w as u32)));
        }
        for (ph, &owner) in p.phone_owner.iter().enumerate() {
            assert_eq!(p.people[owner as usize].phone, Some(ph as u32));
        }
        // Adoption 0.6 of 3000: within 5 standard deviations.
        assert!((p.phones() as f64 - 1800.0).abs() < 5.0 * (3000.0f64 * 0.24).sqrt());
    }

    #[test]
    fn concat_shifts_every_index() {
        let c = cfg();
        let (a, b) = (Population::build_part(&c, 500, 0), Population::build_part(&c, 700, 1));
        let (na, nh, nw, nph) = (a.people.len(), a.households.len(), a.workplaces.len(), a.phones());
        let all = Population::concat(vec![a.clone(), b.clone()]);
        assert_eq!(all.people.len(), 1200);
        assert_eq!(all.phones(), nph + b.phones());
        assert_eq!(all.households[nh], (b.households[0].0 + na as u32, b.households[0].1 + na as u32));
        for (ph, &owner) in all.phone_owner.iter().enumerate() {
            assert_eq!(all.people[owner as usize].phone, Some(ph as u32));
        }
        for (w, members) in all.workplaces.iter().enumerate() {
            assert!(members.iter().all(|&m| all.people[m as usize].workplace == Some(w as u32)));
            // A workplace stays within its part.
            assert!(members.iter().all(|&m| (m as usize >= na) == (w >= nw)));
        }
        assert_eq!(Population::build_part(&c, 3_000, 0).people, Population::build(&c).people);
    }

    #[test]
    fn contacts_are_deterministic_and_respect_isolation() {
        let c = cfg();
        let p = Population::build(&c);
        let all = vec![true; p.people.len()];
        let a = p.contacts(&c, 2, &all);
        assert_eq!(a, p.contacts(&c, 2, &all));
        assert!(
            a.iter().all(|x| x.a != x.b && x.start >= 2 * DAY && x.end() <= 3 * DAY && x.distance_dm >= 5)
        );
        // Person 0 isolates: only household contacts involve them.
        let mut present = all.clone();
        present[0] = false;
        let b = p.contacts(&c, 2, &present);
        assert!(b.iter().filter(|x| x.a == 0 || x.b == 0).all(|x| x.setting == Setting::Household));
        // Weekends have no work or transport contacts.
        assert!(
            p.contacts(&c, 5, &all).iter().all(|x| matches!(x.setting, Setting::Household | Setting::Random))
        );
    }
}
