//! Every knob of a simulation, with its default and the reason for it. `robert simulate` maps
//! one flag to each field; [`SimConfig::validate`] refuses nonsense with a message naming the knob.

use serde::Serialize;

/// Which storage backend the in-process server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Store {
    /// The in-memory reference backend (fastest).
    Memory,
    /// The embedded SQLite store (WAL, group commit) in a temporary directory.
    Sqlite,
}

/// One country of a multi-country simulation (federation, §8): a name for the reports and the
/// 8-bit country code CC its server puts in every ECC (§4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Country {
    /// Short name (`FR`, `DE`, …), as given on the command line.
    pub name: String,
    /// The server's country code (`protocol.country_code`).
    pub code: u8,
}

/// Country codes of the names `--countries` knows (the international dialling prefixes that fit
/// in the 8-bit CC: France 33 and Germany 49, as in the federation tests). Any other country is
/// given as `NAME=CODE`.
pub const KNOWN_COUNTRIES: &[(&str, u8)] = &[
    ("AT", 43),
    ("BE", 32),
    ("CH", 41),
    ("DE", 49),
    ("DK", 45),
    ("ES", 34),
    ("FR", 33),
    ("GB", 44),
    ("GR", 30),
    ("HU", 36),
    ("IT", 39),
    ("NL", 31),
    ("NO", 47),
    ("PL", 48),
    ("SE", 46),
];

impl Country {
    /// Parses `NAME` (one of [`KNOWN_COUNTRIES`]) or `NAME=CODE` (CODE in 1..=255).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let text = text.trim();
        let (name, code) = match text.split_once('=') {
            Some((n, c)) => {
                let code = c
                    .trim()
                    .parse::<u8>()
                    .ok()
                    .filter(|&c| c != 0)
                    .ok_or_else(|| bad("countries", format!("{text:?}: CODE must be in 1..=255")))?;
                (n.trim(), code)
            }
            None => {
                let upper = text.to_ascii_uppercase();
                let code =
                    KNOWN_COUNTRIES.iter().find(|(n, _)| *n == upper).map(|(_, c)| *c).ok_or_else(|| {
                        bad(
                            "countries",
                            format!("{text:?} is not a known country: give its code as NAME=CODE"),
                        )
                    })?;
                (text, code)
            }
        };
        if name.is_empty() || name.len() > 16 || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(bad("countries", format!("{name:?}: a name is 1 to 16 letters or digits")));
        }
        Ok(Self { name: name.to_ascii_uppercase(), code })
    }

    /// Parses a comma-separated list (empty: no countries, the single-server simulation).
    pub fn parse_list(text: &str) -> Result<Vec<Self>, ConfigError> {
        text.split(',').map(str::trim).filter(|x| !x.is_empty()).map(Self::parse).collect()
    }
}

/// A full simulation's parameters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimConfig {
    /// Seed of every random draw of the simulation (see the crate docs for what stays random).
    pub seed: u64,
    /// People in the population (app users and not).
    pub population: u32,
    /// Days simulated.
    pub days: u32,
    /// Fraction of people who run the App (ROBERT only sees contacts between two App users).
    pub adoption: f64,

    // --- contact model -------------------------------------------------------------------
    /// Largest household (sizes 1..=max, weighted like a European census: many small ones).
    pub household_max: u32,
    /// Fraction of people with a workplace or school.
    pub work_fraction: f64,
    /// Mean workplace/school size (sizes uniform in mean/2..3·mean/2).
    pub workplace_size: u32,
    /// Colleagues each worker starts a contact with per working day.
    pub work_contacts: u32,
    /// Fraction of workers who commute by public transport.
    pub commuter_fraction: f64,
    /// Mean number of random encounters a person starts per day (Poisson).
    pub random_contacts: f64,

    // --- radio model ---------------------------------------------------------------------
    /// Seconds between two HELLOs of one phone (also the server's `seconds_per_hello`).
    pub hello_period_sec: u32,
    /// Probability that one HELLO is not received (independent per HELLO and receiver).
    pub loss: f64,
    /// RSSI at 1 m, dBm.
    pub rssi_at_1m: f64,
    /// Path-loss exponent: RSSI = rssi_at_1m − 10·n·log10(d).
    pub path_loss_exponent: f64,
    /// Standard deviation of the RSSI noise, dB (0: RSSI is a function of distance).
    pub rssi_noise_db: f64,

    // --- epidemic ------------------------------------------------------------------------
    /// Fraction of people infected at the start (infected up to 5 days before day 0).
    pub initial_infected: f64,
    /// Transmission rate per minute of contact at 1 m or closer (decays as 1/d² beyond).
    pub beta_per_min: f64,
    /// Days from infection to infectiousness (latent period; uniform 2..=4 days by default: this
    /// is the middle value).
    pub latent_days: u32,
    /// Days of infectiousness.
    pub infectious_days: u32,
    /// Fraction of infections with symptoms (the others are found only by testing contacts).
    pub symptomatic_fraction: f64,
    /// Fraction of symptomatic people who get tested.
    pub symptomatic_test_rate: f64,
    /// Days from the test to the diagnosis (the result).
    pub test_result_days: u32,
    /// Fraction of diagnosed App users who declare (upload) with a health-authority token.
    pub declare_rate: f64,
    /// Fraction of notified users who get tested (the next day).
    pub notified_test_rate: f64,
    /// Fraction of notified users who isolate.
    pub isolation_compliance: f64,
    /// Days a notified user isolates.
    pub isolation_days: u32,

    // --- protocol and server ---------------------------------------------------------------
    /// Proof-of-work difficulty of registration (bits). Low for speed: the Sybil scenario
    /// measures what the production default costs.
    pub pow_difficulty: u8,
    /// CT, days: how long contacts and exposures count (App and server).
    pub ct_days: u32,
    /// How far back a declaration reaches, days: ContStart = diagnosis − this (§6.1).
    pub declare_window_days: u32,
    /// Server risk rule: weighted exposure minutes needed (the `duration` rule).
    pub min_exposure_minutes: f64,
    /// Annex A probability p of a random "at risk" answer in the main run (0: none).
    pub notification_probability: f64,
    /// Storage backend of the in-process server.
    pub store: Store,

    // --- countries (federation, §8) -------------------------------------------------------
    /// The countries, each with its own server, federated with the others (empty: one server,
    /// no federation; see the `countries` module).
    pub countries: Vec<Country>,
    /// Share of the population living in each country (empty: even shares).
    pub country_shares: Vec<f64>,
    /// Share of people abroad on a given day (trips of `trip_days`, to another country).
    pub travel_rate: f64,
    /// Length of a trip abroad, days.
    pub trip_days: u32,

    // --- what else to run ---------------------------------------------------------------------
    /// Also run the same seed without tracing (epidemic curves with and without).
    pub compare_without_tracing: bool,
    /// Radio-loss rates at which to rerun the traced simulation to measure recall.
    pub loss_sweep: Vec<f64>,
    /// Run the attack scenarios.
    pub attacks: bool,
    /// Annex A probability used in the one-entry attack scenario "with probabilistic notifications".
    pub attack_annex_a_p: f64,
    /// Sizes of the attack scenarios.
    pub attack_sizes: crate::attacks::AttackSizes,
    /// Worker threads (0: one per core).
    pub threads: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            population: 2_000,
            days: 21,
            adoption: 0.6,
            household_max: 5,
            work_fraction: 0.65,
            workplace_size: 20,
            work_contacts: 2,
            commuter_fraction: 0.3,
            random_contacts: 0.7,
            hello_period_sec: 60,
            loss: 0.1,
            rssi_at_1m: -55.0,
            path_loss_exponent: 2.0,
            rssi_noise_db: 3.0,
            initial_infected: 0.01,
            beta_per_min: 0.015,
            latent_days: 3,
            infectious_days: 7,
            symptomatic_fraction: 0.6,
            symptomatic_test_rate: 0.7,
            test_result_days: 1,
            declare_rate: 0.8,
            notified_test_rate: 0.8,
            isolation_compliance: 0.7,
            isolation_days: 7,
            pow_difficulty: 4,
            ct_days: 14,
            declare_window_days: 7,
            min_exposure_minutes: 15.0,
            notification_probability: 0.0,
            store: Store::Memory,
            countries: Vec::new(),
            country_shares: Vec::new(),
            travel_rate: 0.05,
            trip_days: 3,
            compare_without_tracing: true,
            loss_sweep: vec![0.0, 0.1, 0.2, 0.4],
            attacks: true,
            attack_annex_a_p: 0.1,
            attack_sizes: crate::attacks::AttackSizes::default(),
            threads: 0,
        }
    }
}

/// A knob out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid simulation parameter {knob}: {reason}")]
pub struct ConfigError {
    /// The knob (flag name without dashes).
    pub knob: &'static str,
    /// What is wrong.
    pub reason: String,
}

fn bad(knob: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError { knob, reason: reason.into() }
}

fn fraction(knob: &'static str, v: f64) -> Result<(), ConfigError> {
    if (0.0..=1.0).contains(&v) { Ok(()) } else { Err(bad(knob, format!("{v} is not in [0, 1]"))) }
}

impl SimConfig {
    /// Checks every knob.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.population < 2 || self.population > 20_000_000 {
            return Err(bad("population", "must be in 2..=20000000"));
        }
        if self.days == 0 || self.days > 120 {
            return Err(bad("days", "must be in 1..=120"));
        }
        for (k, v) in [
            ("adoption", self.adoption),
            ("work-fraction", self.work_fraction),
            ("commuter-fraction", self.commuter_fraction),
            ("loss", self.loss),
            ("initial-infected", self.initial_infected),
            ("symptomatic-fraction", self.symptomatic_fraction),
            ("symptomatic-test-rate", self.symptomatic_test_rate),
            ("declare-rate", self.declare_rate),
            ("notified-test-rate", self.notified_test_rate),
            ("isolation-compliance", self.isolation_compliance),
            ("notification-probability", self.notification_probability),
            ("attack-annex-a-p", self.attack_annex_a_p),
        ] {
            fraction(k, v)?;
        }
        for &l in &self.loss_sweep {
            fraction("loss-sweep", l)?;
        }
        if self.household_max == 0 || self.household_max > 20 {
            return Err(bad("household-max", "must be in 1..=20"));
        }
        if self.workplace_size < 2 {
            return Err(bad("workplace-size", "must be at least 2"));
        }
        if !(0.0..=50.0).contains(&self.random_contacts) {
            return Err(bad("random-contacts", "must be in [0, 50]"));
        }
        if self.work_contacts > 50 {
            return Err(bad("work-contacts", "must be at most 50"));
        }
        if !(10..=900).contains(&self.hello_period_sec) {
            return Err(bad("hello-period", "must be in 10..=900 seconds (at most one epoch)"));
        }
        if !(self.beta_per_min >= 0.0 && self.beta_per_min <= 1.0) {
            return Err(bad("beta", "must be in [0, 1] per minute"));
        }
        if !(self.rssi_noise_db >= 0.0 && self.rssi_noise_db <= 30.0) {
            return Err(bad("rssi-noise", "must be in [0, 30] dB"));
        }
        if !(self.path_loss_exponent > 0.0 && self.path_loss_exponent <= 6.0) {
            return Err(bad("path-loss-exponent", "must be in (0, 6]"));
        }
        if !(-120.0..=0.0).contains(&self.rssi_at_1m) {
            return Err(bad("rssi-at-1m", "must be in [-120, 0] dBm"));
        }
        if self.latent_days == 0 || self.latent_days > 14 {
            return Err(bad("latent-days", "must be in 1..=14"));
        }
        if self.infectious_days == 0 || self.infectious_days > 30 {
            return Err(bad("infectious-days", "must be in 1..=30"));
        }
        if self.test_result_days > 14 {
            return Err(bad("test-result-days", "must be at most 14"));
        }
        if self.isolation_days > 60 {
            return Err(bad("isolation-days", "must be at most 60"));
        }
        if self.ct_days == 0 || self.ct_days > 30 {
            return Err(bad("ct-days", "must be in 1..=30"));
        }
        if self.declare_window_days == 0 || self.declare_window_days > self.ct_days {
            return Err(bad("declare-window-days", "must be in 1..=ct-days"));
        }
        if self.pow_difficulty > 24 {
            return Err(bad("pow-difficulty", "must be at most 24 (each phone solves one puzzle)"));
        }
        if !(self.min_exposure_minutes >= 0.0 && self.min_exposure_minutes <= 10_000.0) {
            return Err(bad("min-exposure-minutes", "must be in [0, 10000]"));
        }
        self.validate_countries()
    }

    fn validate_countries(&self) -> Result<(), ConfigError> {
        fraction("travel-rate", self.travel_rate)?;
        if self.trip_days == 0 || self.trip_days > 60 {
            return Err(bad("trip-days", "must be in 1..=60"));
        }
        if self.countries.len() == 1 {
            return Err(bad("countries", "give at least two countries (none: a single server)"));
        }
        if self.countries.len() > 16 {
            return Err(bad("countries", "at most 16"));
        }
        for (i, c) in self.countries.iter().enumerate() {
            if self.countries[..i].iter().any(|o| o.code == c.code || o.name == c.name) {
                return Err(bad("countries", format!("{} (code {}) is given twice", c.name, c.code)));
            }
        }
        if !self.country_shares.is_empty() {
            if self.country_shares.len() != self.countries.len() {
                return Err(bad(
                    "country-shares",
                    format!("{} shares for {} countries", self.country_shares.len(), self.countries.len()),
                ));
            }
            if self.country_shares.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
                return Err(bad("country-shares", "every share must be positive"));
            }
        }
        if !self.countries.is_empty() {
            let min = self.country_population().into_iter().min().unwrap_or(0);
            if min < 2 {
                return Err(bad("country-shares", "every country needs at least 2 people"));
            }
        }
        Ok(())
    }

    /// People living in each country (the population split by `country_shares`, or evenly; the
    /// rounding remainder goes to the first countries). Empty without countries.
    pub fn country_population(&self) -> Vec<u32> {
        let n = self.countries.len();
        if n == 0 {
            return Vec::new();
        }
        let shares: Vec<f64> =
            if self.country_shares.is_empty() { vec![1.0; n] } else { self.country_shares.clone() };
        let total: f64 = shares.iter().sum();
        let mut out: Vec<u32> =
            shares.iter().map(|s| (f64::from(self.population) * s / total).floor() as u32).collect();
        let mut rest = self.population - out.iter().sum::<u32>().min(self.population);
        for x in out.iter_mut() {
            if rest == 0 {
                break;
            }
            *x += 1;
            rest -= 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_knobs_are_named() {
        assert_eq!(SimConfig::default().validate(), Ok(()));
        let e = SimConfig { loss: 1.5, ..SimConfig::default() }.validate().expect_err("loss > 1");
        assert_eq!(e.knob, "loss");
        let e = SimConfig { days: 0, ..SimConfig::default() }.validate().expect_err("no days");
        assert_eq!(e.knob, "days");
        let e =
            SimConfig { loss_sweep: vec![0.1, -0.2], ..SimConfig::default() }.validate().expect_err("sweep");
        assert_eq!(e.knob, "loss-sweep");
        let e = SimConfig { beta_per_min: f64::NAN, ..SimConfig::default() }.validate().expect_err("nan");
        assert_eq!(e.knob, "beta");
    }

    #[test]
    fn countries_parse_and_split() {
        let c = Country::parse_list("FR, de,PT=35").expect("parses");
        assert_eq!(
            c,
            vec![
                Country { name: "FR".into(), code: 33 },
                Country { name: "DE".into(), code: 49 },
                Country { name: "PT".into(), code: 35 }
            ]
        );
        assert_eq!(Country::parse_list("").expect("empty"), vec![]);
        assert_eq!(Country::parse("XX").expect_err("unknown").knob, "countries");
        assert_eq!(Country::parse("XX=0").expect_err("zero").knob, "countries");
        assert_eq!(Country::parse("XX=256").expect_err("too big").knob, "countries");
        assert_eq!(Country::parse("a b=3").expect_err("name").knob, "countries");
        let cfg = SimConfig { population: 1001, countries: c.clone(), ..SimConfig::default() };
        assert_eq!(cfg.country_population(), vec![334, 334, 333]);
        let cfg = SimConfig { country_shares: vec![3.0, 1.0, 1.0], ..cfg };
        assert_eq!(cfg.country_population(), vec![601, 200, 200]);
        assert_eq!(cfg.validate(), Ok(()));
        let twice = SimConfig { countries: Country::parse_list("FR,FR").expect("parses"), ..cfg.clone() };
        assert_eq!(twice.validate().expect_err("twice").knob, "countries");
        let one = SimConfig { countries: Country::parse_list("FR").expect("parses"), ..cfg.clone() };
        assert_eq!(one.validate().expect_err("one").knob, "countries");
        let shares = SimConfig { country_shares: vec![1.0, 2.0], ..cfg.clone() };
        assert_eq!(shares.validate().expect_err("shares").knob, "country-shares");
        let travel = SimConfig { travel_rate: 1.5, ..cfg };
        assert_eq!(travel.validate().expect_err("travel").knob, "travel-rate");
    }
}
