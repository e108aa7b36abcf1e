//! # robert-sim: the ROBERT population simulator
//!
//! Real App instances ([`robert_app::App`]) against a real server
//! ([`robert_server::service::Service`], in-process over the memory or SQLite store on a
//! simulated clock, or a live `robert serve` over HTTP on real time: [`remote`], [`simulate_live`]), in a synthetic population whose true contacts are known, so that the
//! accuracy of notifications, what the server learns, and the attacks are *measured*.
//!
//! ## What is modelled
//!
//! - **Population** ([`population`]): households (sizes 1–5, census-like), workplaces and
//!   schools, public-transport commuters, random encounters; App adoption per person.
//! - **Contacts**: duration and distance per contact; household contacts every evening,
//!   work and transport on working days, random encounters any day. Isolating people only meet
//!   their household.
//! - **Radio** ([`radio`]): one HELLO per `hello_period` per phone, at a phase of its own;
//!   independent loss per HELLO and receiver; RSSI from a log-distance path-loss model with
//!   Gaussian noise. HELLOs exist only where there are contacts between two App users.
//! - **Epidemic** ([`epidemic`]): SEIR-like courses, infection probability from duration and
//!   distance, symptomatic testing, diagnosis delay, declaration with a health-authority token
//!   (§6.1), ESR polling once a day (§7), notified users' testing and isolation.
//! - **Protocol**: every step is the real code: registration with proof of work (§3.3),
//!   EBID lists and their refresh (§4), HELLO building and δ checks (§5), uploads, the mixer
//!   and its §6.2 checks, risk scoring, ESRs and acknowledgements (§7), Annex A.
//! - **Ground truth** ([`truth`]): the server's scoring rule applied to the true contacts of
//!   declared users as a perfect radio would have recorded them; recall, precision and time to
//!   notification are measured against it.
//! - **Attacks** ([`attacks`]): HELLO replay after 2^16 s, relay within and beyond δ, the
//!   one-entry attack with and without Annex A, a Sybil registration burst.
//!
//! ## What is not modelled
//!
//! Bluetooth itself (scanning duty cycles, MAC rotation, body shadowing beyond the noise term),
//! people who uninstall or lose their phone, clock skew between phones, the HTTP layer between
//! phones and servers (unless a live server is used), hospitalisation and deaths, age structure.
//!
//! ## Several countries
//!
//! With `countries` ([`countries`]), each country has its own real server and the servers are
//! federated (§8: shared K_G, signed batches over loopback HTTP); people live in one country and
//! travel to the others, and the accuracy report is given per country, with cross-border figures.
//!
//! ## Invariants (checked by the tests)
//!
//! - No notification without a true contact with a declared user, unless Annex A chose it
//!   (`notification_probability > 0`).
//! - With no radio loss and no RSSI noise, every truly exposed user is notified (recall 100 %),
//!   and only they are (precision 100 %).
//! - The replay-after-2^16-s and out-of-δ relay attacks never notify anyone.
//! - The same seed gives the same results.
//! - Several countries: with no loss and no noise, recall and precision are 100 % in every
//!   country, travellers exposed abroad included; the pairs the servers forward are exactly the
//!   cross-border pairs uploaded, each received once; a phone is known to, and notified by, its
//!   home server only.
//!
//! ## Sources of nondeterminism, and why results do not depend on them
//!
//! - **Thread scheduling** (rayon for HELLOs and contacts, tokio tasks for requests): every
//!   random draw is a function of the seed and of what is drawn ([`rng`]), never of the order
//!   of draws; phones are independent within a phase and results are sorted before use.
//! - **The server's own randomness** (ID draws, challenge nonces, the mixer's shuffle, the
//!   upload slots) is a CSPRNG by design and is not seeded: none of it changes an outcome,
//!   except Annex A's random notifications, which are reported as not reproducible
//!   (`server_randomness: true`) — a server whose Annex A draws could be predicted would defeat
//!   their purpose.
//! - **Wall-clock figures** (run time, phone-days per second, proof-of-work cost) are measured
//!   and kept apart from the reproducible results.

pub mod attacks;
pub mod config;
pub mod countries;
pub mod engine;
pub mod epidemic;
pub mod plot;
pub mod population;
pub mod radio;
pub mod remote;
pub mod rng;
pub mod server;
pub mod truth;

pub use config::{SimConfig, Store};

use engine::RunResult;
use population::Population;
use robert_server::storage::Storage;
use robert_server::storage::memory::MemoryStorage;
use robert_server::storage::sqlite::SqliteStorage;
use serde::Serialize;
use std::fmt::Write as _;

/// Why a simulation failed.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A knob is out of range.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The server could not be set up or failed.
    #[error("server: {0}")]
    Server(String),
    /// An App operation failed where it must not.
    #[error("app: {0}")]
    App(String),
    /// A transport call failed where it must not.
    #[error("transport: {0}")]
    Transport(#[from] robert_app::TransportError),
    /// The runtime could not be built.
    #[error("runtime: {0}")]
    Runtime(String),
}

/// The population's shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PopulationSummary {
    /// People.
    pub people: u64,
    /// App users (phones).
    pub phones: u64,
    /// Households.
    pub households: u64,
    /// Workplaces and schools.
    pub workplaces: u64,
}

/// Recall and precision at one radio-loss rate.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LossPoint {
    /// Radio loss.
    pub loss: f64,
    /// Recall.
    pub recall: f64,
    /// Precision.
    pub precision: f64,
    /// Notified phones.
    pub notified: u64,
    /// Truly exposed phones.
    pub truly_exposed: u64,
}

/// Figures that depend on the machine (not reproducible).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Measured {
    /// Wall seconds of the traced run.
    pub traced_run_seconds: f64,
    /// Phone-days simulated per second in the traced run (phones × days / seconds).
    pub phone_days_per_second: f64,
    /// Wall seconds of everything.
    pub total_seconds: f64,
    /// Worker threads used.
    pub threads: usize,
}

/// Everything a simulation produces (`results.json`).
#[derive(Debug, Clone, Serialize)]
pub struct SimResults {
    /// The parameters.
    pub config: SimConfig,
    /// The population.
    pub population: PopulationSummary,
    /// The run with tracing.
    pub traced: RunResult,
    /// The same seed without tracing.
    pub untraced: Option<RunResult>,
    /// Recall by radio loss.
    pub loss_sweep: Vec<LossPoint>,
    /// Attack scenarios.
    pub attacks: Option<attacks::AttackReport>,
    /// Per-country and cross-border results (runs with `countries`).
    pub countries: Option<countries::CountriesReport>,
    /// Machine-dependent figures.
    pub measured: Measured,
    /// The live server's URL, when the traced runs used one (`--server`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live_server: Option<String>,
}

/// Progress of a simulation: a stage name, units done, units in all.
pub type ProgressFn<'a> = &'a (dyn Fn(&str, u64, u64) + Sync);

/// Work units of a simulation (days of each run, plus one for the attacks), for progress bars.
pub fn total_units(cfg: &SimConfig) -> u64 {
    let days = u64::from(cfg.days);
    let sweep = cfg.loss_sweep.iter().filter(|&&l| l != cfg.loss).count() as u64;
    days + if cfg.compare_without_tracing { days } else { 0 } + sweep * days + u64::from(cfg.attacks)
}

/// Runs a traced simulation of `cfg` on a fresh in-process server.
pub fn traced_run(
    cfg: &SimConfig,
    pop: &Population,
    rt: &tokio::runtime::Runtime,
    progress: engine::Progress,
) -> Result<RunResult, SimError> {
    match cfg.store {
        Store::Memory => traced_with(cfg, pop, rt, progress, |_| Ok(MemoryStorage::new())),
        Store::Sqlite => traced_with(cfg, pop, rt, progress, open_sqlite),
    }
}

fn open_sqlite(dir: &std::path::Path) -> Result<SqliteStorage, SimError> {
    SqliteStorage::open(&dir.join("robert.db"), false).map_err(|e| SimError::Server(format!("SQLite: {e}")))
}

/// Runs a traced simulation of `cfg` over its countries, one fresh in-process server each,
/// federated ([`countries`]).
pub fn traced_run_countries(
    cfg: &SimConfig,
    world: &countries::World,
    rt: &tokio::runtime::Runtime,
    progress: engine::Progress,
) -> Result<(RunResult, countries::CountriesReport), SimError> {
    match cfg.store {
        Store::Memory => countries::traced_with(cfg, world, rt, progress, |_| Ok(MemoryStorage::new())),
        Store::Sqlite => countries::traced_with(cfg, world, rt, progress, open_sqlite),
    }
}

fn traced_with<S: Storage>(
    cfg: &SimConfig,
    pop: &Population,
    rt: &tokio::runtime::Runtime,
    progress: engine::Progress,
    open: impl FnOnce(&std::path::Path) -> Result<S, SimError>,
) -> Result<RunResult, SimError> {
    let server_cfg = server::server_config(cfg, cfg.notification_probability);
    let app_cfg = server::app_config(cfg, &server_cfg);
    let server = rt.block_on(server::InProcess::start(cfg.seed, server_cfg, open))?;
    engine::run_traced(cfg, pop, rt, &server, &app_cfg, progress)
}

/// The population of a run: one country, or several ([`countries::World`]).
enum Model {
    One(Population),
    Many(countries::World),
}

impl Model {
    fn population(&self) -> &Population {
        match self {
            Model::One(p) => p,
            Model::Many(w) => &w.pop,
        }
    }

    /// A traced run: in-process servers, or the `live` one (`runs`: how many traced runs share it).
    fn traced(
        &self,
        cfg: &SimConfig,
        rt: &tokio::runtime::Runtime,
        live: Option<&remote::LiveOptions>,
        runs: u32,
        progress: engine::Progress,
    ) -> Result<(RunResult, Option<countries::CountriesReport>), SimError> {
        match self {
            Model::One(p) => match live {
                None => Ok((traced_run(cfg, p, rt, progress)?, None)),
                Some(l) => Ok((remote::traced_run(cfg, p, rt, l, runs, progress)?, None)),
            },
            Model::Many(w) => traced_run_countries(cfg, w, rt, progress).map(|(r, c)| (r, Some(c))),
        }
    }

    fn untraced(&self, cfg: &SimConfig, progress: engine::Progress) -> RunResult {
        match self {
            Model::One(p) => engine::run_untraced(cfg, p, progress),
            Model::Many(w) => countries::run_untraced(cfg, w, progress),
        }
    }
}

/// Runs everything `cfg` asks for: the traced run, the untraced comparison, the loss sweep and
/// the attacks.
pub fn simulate(cfg: &SimConfig, progress: ProgressFn) -> Result<SimResults, SimError> {
    simulate_on(cfg, None, progress)
}

/// [`simulate`] with the traced runs (main run and loss sweep, each with fresh phones) against a
/// live `robert serve` ([`remote`]). The attack scenarios are refused: they need a server the
/// simulator controls.
pub fn simulate_live(
    cfg: &SimConfig,
    live: &remote::LiveOptions,
    progress: ProgressFn,
) -> Result<SimResults, SimError> {
    simulate_on(cfg, Some(live), progress)
}

fn simulate_on(
    cfg: &SimConfig,
    live: Option<&remote::LiveOptions>,
    progress: ProgressFn,
) -> Result<SimResults, SimError> {
    cfg.validate()?;
    if live.is_some() && !cfg.countries.is_empty() {
        return Err(SimError::Server(
            "live mode drives one server: --countries needs one server per country, in-process \
             (run it without --server)"
                .into(),
        ));
    }
    let started = std::time::Instant::now();
    let threads = if cfg.threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        cfg.threads
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| SimError::Runtime(e.to_string()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .map_err(|e| SimError::Runtime(e.to_string()))?;
    let runs = 1 + cfg.loss_sweep.iter().filter(|&&l| l != cfg.loss).count() as u32;
    if live.is_some() && !cfg.countries.is_empty() {
        return Err(SimError::Config(config::ConfigError {
            knob: "countries",
            reason: "several countries need in-process servers (one each, federated): not with a live server"
                .into(),
        }));
    }
    pool.install(|| {
        let total = total_units(cfg);
        let days = u64::from(cfg.days);
        let model = if cfg.countries.is_empty() {
            Model::One(Population::build(cfg))
        } else {
            Model::Many(countries::World::build(cfg))
        };
        let pop = model.population();
        let population = PopulationSummary {
            people: pop.people.len() as u64,
            phones: pop.phones() as u64,
            households: pop.households.len() as u64,
            workplaces: pop.workplaces.len() as u64,
        };
        let (traced, countries) =
            model.traced(cfg, &rt, live, runs, &|d| progress("with tracing", u64::from(d), total))?;
        let mut done = days;
        let untraced = if cfg.compare_without_tracing {
            let base = done;
            let r = model.untraced(cfg, &|d| progress("without tracing", base + u64::from(d), total));
            done += days;
            Some(r)
        } else {
            None
        };
        let mut loss_sweep = Vec::new();
        for &loss in &cfg.loss_sweep {
            let r = if loss == cfg.loss {
                traced.clone()
            } else {
                let c = SimConfig { loss, ..cfg.clone() };
                let base = done;
                let (r, _) = model.traced(&c, &rt, live, runs, &|d| {
                    progress(&format!("loss {:.0} %", loss * 100.0), base + u64::from(d), total)
                })?;
                done += days;
                r
            };
            loss_sweep.push(LossPoint {
                loss,
                recall: r.accuracy.recall,
                precision: r.accuracy.precision,
                notified: r.accuracy.notified,
                truly_exposed: r.accuracy.truly_exposed,
            });
        }
        let attacks = if cfg.attacks {
            progress("attacks", done, total);
            let a = attacks::run(cfg, cfg.attack_sizes, &rt)?;
            progress("attacks", done + 1, total);
            Some(a)
        } else {
            None
        };
        let phone_days = population.phones as f64 * f64::from(cfg.days);
        let measured = Measured {
            traced_run_seconds: traced.wall_seconds,
            phone_days_per_second: if traced.wall_seconds > 0.0 {
                phone_days / traced.wall_seconds
            } else {
                0.0
            },
            total_seconds: started.elapsed().as_secs_f64(),
            threads,
        };
        Ok(SimResults {
            config: cfg.clone(),
            population,
            traced,
            untraced,
            loss_sweep,
            attacks,
            countries,
            measured,
            live_server: live.map(|l| l.url.clone()),
        })
    })
}

/// The summary rows of a multi-country run: each country's accuracy and federation traffic, and
/// what crossed borders.
fn country_rows(cfg: &SimConfig, c: &countries::CountriesReport) -> Vec<(String, String)> {
    let mut rows = vec![(
        "countries".to_owned(),
        format!(
            "{}; {} abroad on a day, trips of {} days",
            c.countries.iter().map(|k| format!("{} ({})", k.name, k.code)).collect::<Vec<_>>().join(", "),
            pct(cfg.travel_rate),
            cfg.trip_days
        ),
    )];
    for k in &c.countries {
        let a = &k.accuracy;
        let n = &k.name;
        rows.push((
            format!("{n}: people / phones / infected"),
            format!("{} / {} / {}", k.people, k.phones, k.total_infected),
        ));
        rows.push((
            format!("{n}: declarations (pairs, of them foreign)"),
            format!("{} ({}, {})", k.declarations, k.pairs_uploaded, k.pairs_uploaded_cross_border),
        ));
        rows.push((
            format!("{n}: notified / truly exposed"),
            format!("{} / {}", a.notified, a.truly_exposed),
        ));
        rows.push((format!("{n}: recall / precision"), format!("{} / {}", pct(a.recall), pct(a.precision))));
        rows.push((
            format!("{n}: time to notification (median / p90)"),
            format!("{:.1} h / {:.1} h", a.time_to_notification_median_h, a.time_to_notification_p90_h),
        ));
        for p in &k.peers {
            rows.push((
                format!("{n} → {}: batches / pairs forwarded", p.peer),
                format!(
                    "{} / {} ({} retried, {} refused)",
                    p.batches_acknowledged, p.pairs_sent, p.batches_retried, p.batches_rejected
                ),
            ));
        }
    }
    let x = &c.cross_border;
    rows.push(("person-days abroad".into(), x.person_days_abroad.to_string()));
    rows.push((
        "across borders: contacts / HELLOs stored".into(),
        format!("{} / {}", x.contacts, x.hellos_stored),
    ));
    rows.push((
        "across borders: pairs uploaded / forwarded / received".into(),
        format!("{} / {} / {}", x.pairs_uploaded, x.pairs_forwarded, x.pairs_received),
    ));
    rows.push((
        "exposed across borders: notified".into(),
        format!("{} of {} ({})", x.exposed_notified, x.exposed, pct(x.recall)),
    ));
    rows.push((
        "exposed only abroad: notified".into(),
        format!("{} of {}", x.exposed_only_abroad_notified, x.exposed_only_abroad),
    ));
    rows
}

fn pct(x: f64) -> String {
    format!("{:.1} %", x * 100.0)
}

impl SimResults {
    /// The summary table printed after a run.
    pub fn summary_table(&self) -> String {
        let mut s = String::new();
        let t = &self.traced;
        let a = &t.accuracy;
        let p = &t.protocol;
        let rows: Vec<(String, String)> = vec![
            ("people / phones".into(), format!("{} / {}", self.population.people, self.population.phones)),
            ("days simulated".into(), self.config.days.to_string()),
            ("infected, with tracing".into(), t.total_infected.to_string()),
            (
                "infected, without tracing".into(),
                self.untraced.as_ref().map_or("(not run)".into(), |u| u.total_infected.to_string()),
            ),
            ("declarations (pairs uploaded)".into(), format!("{} ({})", p.declarations, p.pairs_uploaded)),
            ("notified".into(), a.notified.to_string()),
            ("truly exposed (ground truth)".into(), a.truly_exposed.to_string()),
            (format!("recall at {:.0} % loss", self.config.loss * 100.0), pct(a.recall)),
            ("precision".into(), pct(a.precision)),
            ("notified without a true contact".into(), a.notified_without_true_contact.to_string()),
            (
                "time to notification (median / p90)".into(),
                format!("{:.1} h / {:.1} h", a.time_to_notification_median_h, a.time_to_notification_p90_h),
            ),
            ("HELLOs stored / lost on air".into(), format!("{} / {}", p.hellos_stored, p.radio.lost)),
            ("phone-days per second".into(), format!("{:.0}", self.measured.phone_days_per_second)),
        ];
        let mut rows = rows;
        for l in &self.loss_sweep {
            rows.push((
                format!("recall / precision at {:.0} % loss", l.loss * 100.0),
                format!("{} / {}", pct(l.recall), pct(l.precision)),
            ));
        }
        if let Some(at) = &self.attacks {
            rows.push((
                "attack: replay after 2^16 s".into(),
                format!(
                    "{} of {} victims notified",
                    at.replay_after_2_16.successes, at.replay_after_2_16.attempts
                ),
            ));
            rows.push((
                "attack: relay within δ".into(),
                format!(
                    "{} of {} victims notified",
                    at.relay_within_delta.successes, at.relay_within_delta.attempts
                ),
            ));
            rows.push((
                "attack: relay beyond δ".into(),
                format!(
                    "{} of {} victims notified",
                    at.relay_beyond_delta.successes, at.relay_beyond_delta.attempts
                ),
            ));
            rows.push((
                "attack: one-entry, p = 0".into(),
                format!("attacker certainty {}", pct(at.one_entry_deterministic.inference_precision)),
            ));
            rows.push((
                format!("attack: one-entry, p = {}", at.one_entry_probabilistic.p),
                format!("attacker certainty {}", pct(at.one_entry_probabilistic.inference_precision)),
            ));
            rows.push((
                "attack: Sybil burst".into(),
                format!(
                    "{} of {} without work, {} of {} with one reused solution",
                    at.sybil.without_work.successes,
                    at.sybil.without_work.attempts,
                    at.sybil.reused_solution.successes,
                    at.sybil.reused_solution.attempts
                ),
            ));
        }
        if let Some(c) = &self.countries {
            rows.extend(country_rows(&self.config, c));
        }
        let w = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
        for (k, v) in rows {
            let pad = w - k.chars().count();
            let _ = writeln!(s, "  {k}{}  {v}", " ".repeat(pad));
        }
        s
    }
}
