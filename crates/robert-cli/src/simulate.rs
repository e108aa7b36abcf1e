//! `robert simulate` and `robert demo`: the population simulator (`robert-sim`) with every knob
//! as a flag, its outputs (`results.json`, PNG and SVG plots, a summary table) and a progress
//! bar; the demo is a fixed, small run that tells its story in plain words.

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use robert_sim::remote::LiveOptions;
use robert_sim::{SimConfig, SimResults, Store};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Storage backend of the simulated server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreArg {
    /// In memory (the reference backend; fastest).
    Memory,
    /// Embedded SQLite in a temporary directory (WAL, group commit, no fsync).
    Sqlite,
}

/// `robert simulate` arguments. Defaults are those of `robert_sim::SimConfig`.
#[derive(Debug, Args)]
#[command(after_long_help = "\
Every phone is a real robert-app App and the server a real robert-server Service in-process, on \
a simulated clock. Outputs go to --out: results.json (every figure; the `measured` section is \
machine-dependent, the rest is reproducible for a given --seed), epidemic.{png,svg}, \
notifications.{png,svg}, recall_by_loss.{png,svg}. A summary table is printed on stdout, progress \
on stderr.

LIVE MODE (--server URL --authority-key FILE): the Apps talk to a running `robert serve` over \
HTTP instead, with its proof-of-work difficulty, scoring rule, Annex A probability and mixer \
(--pow-difficulty, --store and --notification-probability then do not apply to the server). The \
server runs on real time, so each simulated 15-minute epoch is mapped onto one server epoch: the \
server needs short epochs ([protocol] epoch_duration_sec dividing 900, e.g. 1 s: a simulated day \
takes 96 s), blocks of 96 epochs (ebid_list_epochs = 96, the default), a mixer that runs within \
seconds (mixer_max_delay_sec = 1) and the same [risk] keys as the simulation (seconds_per_hello = \
--hello-period, min_exposure_minutes = --min-exposure-minutes; each exposed epoch counts at most \
its E seconds). One server second stands for 900/E simulated seconds, so --hello-period must be \
at least 900/E. Runs that cannot fit are refused with the arithmetic: epochs that do not divide \
900, HELLOs closer than a server second, a run longer than --live-max-sec, the attack scenarios \
(they need a server the simulator controls: add --no-attacks), --countries (one server per \
country, in-process). The loss sweep reruns against the \
same server with fresh phones; the run without tracing needs no server. Declarations use tokens \
signed with --authority-key: a key from `robert authority keygen` listed in the server's \
[authorities] public_keys (a development server, `robert serve` without --config, trusts \
<data-dir>/dev-authority.pem but runs 15-minute epochs: real time). See \
docs/simulator.md, section \"Live mode\".

SEVERAL COUNTRIES (--countries): one real server per country (own keys, store, health authority and \
country code; the federation key K_G shared), federated as in §8: each server's API listens on a \
loopback port, and after every mixer pass the servers forward the pairs whose ECC names a peer's \
country in signed batches over HTTP (their own federation code). People live in one country and \
travel: --travel-rate of them are abroad on a day, on trips of --trip-days, meeting locals in \
transport and random encounters. Each phone registers, declares and asks only at home. The table \
and results.json (`countries`) give the accuracy per country and the cross-border figures: pairs \
forwarded and received per peer, and how many exposed across borders were notified.

EXAMPLES:
  robert simulate --population 5000 --days 21 --seed 3
  robert simulate --population 166667 --adoption 0.6 --days 14 --no-compare --loss-sweep '' --no-attacks
  robert serve --config live.toml &    # epoch_duration_sec = 1 etc.: docs/simulator.md
  robert simulate --server http://127.0.0.1:8080 --authority-key authority.pem \
      --population 500 --days 2 --hello-period 900 --min-exposure-minutes 0.01 --no-attacks --loss-sweep ''
  robert simulate --countries FR,DE --travel-rate 0.05 --population 5000 --days 21
  robert simulate --countries FR,DE,PT=35 --country-shares 6,8,1 --population 10000")]
pub struct SimulateArgs {
    /// Seed of every random draw (same seed, same results).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// People in the population (App users and not).
    #[arg(long, default_value_t = 2_000)]
    population: u32,
    /// Days to simulate.
    #[arg(long, default_value_t = 21)]
    days: u32,
    /// Fraction of people using the App.
    #[arg(long, default_value_t = 0.6)]
    adoption: f64,
    /// Largest household.
    #[arg(long, default_value_t = 5)]
    household_max: u32,
    /// Fraction of people with a workplace or school.
    #[arg(long, default_value_t = 0.65)]
    work_fraction: f64,
    /// Mean workplace/school size.
    #[arg(long, default_value_t = 20)]
    workplace_size: u32,
    /// Colleagues each worker starts a contact with per working day.
    #[arg(long, default_value_t = 2)]
    work_contacts: u32,
    /// Fraction of workers commuting by public transport.
    #[arg(long, default_value_t = 0.3)]
    commuter_fraction: f64,
    /// Mean random encounters a person starts per day (Poisson).
    #[arg(long, default_value_t = 0.7)]
    random_contacts: f64,
    /// Seconds between two HELLOs of a phone (also the server's seconds_per_hello).
    #[arg(long, default_value_t = 60)]
    hello_period: u32,
    /// Probability that a HELLO is not received (radio loss) in the main run.
    #[arg(long, default_value_t = 0.1)]
    loss: f64,
    /// RSSI at 1 m, dBm.
    #[arg(long, default_value_t = -55.0, allow_negative_numbers = true)]
    rssi_at_1m: f64,
    /// Path-loss exponent n: RSSI = rssi_at_1m − 10·n·log10(distance).
    #[arg(long, default_value_t = 2.0)]
    path_loss_exponent: f64,
    /// Standard deviation of RSSI noise, dB.
    #[arg(long, default_value_t = 3.0)]
    rssi_noise: f64,
    /// Fraction of people infected at the start.
    #[arg(long, default_value_t = 0.01)]
    initial_infected: f64,
    /// Transmission rate per minute of contact at 1 m or closer (decays as 1/d² beyond).
    #[arg(long, default_value_t = 0.015)]
    beta: f64,
    /// Middle latent period, days (drawn from this −1 to +1).
    #[arg(long, default_value_t = 3)]
    latent_days: u32,
    /// Days of infectiousness.
    #[arg(long, default_value_t = 7)]
    infectious_days: u32,
    /// Fraction of infections with symptoms.
    #[arg(long, default_value_t = 0.6)]
    symptomatic_fraction: f64,
    /// Fraction of symptomatic people who get tested.
    #[arg(long, default_value_t = 0.7)]
    symptomatic_test_rate: f64,
    /// Days from test to result (diagnosis).
    #[arg(long, default_value_t = 1)]
    test_result_days: u32,
    /// Fraction of diagnosed App users who declare.
    #[arg(long, default_value_t = 0.8)]
    declare_rate: f64,
    /// Fraction of notified users who get tested the next day.
    #[arg(long, default_value_t = 0.8)]
    notified_test_rate: f64,
    /// Fraction of notified users who isolate.
    #[arg(long, default_value_t = 0.7)]
    isolation_compliance: f64,
    /// Days a notified user isolates.
    #[arg(long, default_value_t = 7)]
    isolation_days: u32,
    /// CT, days contacts and exposures count.
    #[arg(long, default_value_t = 14)]
    ct_days: u32,
    /// How far back a declaration reaches, days (ContStart = diagnosis − this).
    #[arg(long, default_value_t = 7)]
    declare_window_days: u32,
    /// Proof-of-work difficulty for the simulated phones (bits; low for speed).
    #[arg(long, default_value_t = 4)]
    pow_difficulty: u8,
    /// Risk rule: weighted exposure minutes that mean "at risk".
    #[arg(long, default_value_t = 15.0)]
    min_exposure_minutes: f64,
    /// Annex A probability of a random "at risk" answer in the main run.
    #[arg(long, default_value_t = 0.0)]
    notification_probability: f64,
    /// Storage backend of the in-process server.
    #[arg(long, value_enum, default_value_t = StoreArg::Memory)]
    store: StoreArg,
    /// Countries, comma-separated, each with its own federated server (FR, DE, IT, ES, BE, NL,
    /// CH, AT, GB, DK, SE, NO, PL, GR, HU, or NAME=CODE with the 8-bit country code); at least
    /// two. Empty: one server, no federation. Not with --server (each country needs its own
    /// in-process server).
    #[arg(long, default_value = "", value_name = "LIST", conflicts_with = "server")]
    countries: String,
    /// Share of --population living in each country, comma-separated (e.g. 2,1: two thirds in
    /// the first); empty: even.
    #[arg(long, default_value = "", value_name = "LIST")]
    country_shares: String,
    /// Share of people abroad on a given day (in another of the --countries).
    #[arg(long, default_value_t = 0.05)]
    travel_rate: f64,
    /// Length of a trip abroad, days.
    #[arg(long, default_value_t = 3)]
    trip_days: u32,
    /// Skip the run without tracing (no with/without comparison).
    #[arg(long)]
    no_compare: bool,
    /// Radio-loss rates (comma-separated) at which to rerun and measure recall; '' for none.
    #[arg(long, default_value = "0,0.1,0.2,0.4", value_name = "LIST")]
    loss_sweep: String,
    /// Skip the attack scenarios.
    #[arg(long)]
    no_attacks: bool,
    /// Annex A probability in the one-entry attack scenario "with probabilistic notifications".
    #[arg(long, default_value_t = 0.1)]
    attack_annex_a_p: f64,
    /// Proof-of-work difficulty whose cost the Sybil scenario measures (the server's default is 20).
    #[arg(long, default_value_t = 20)]
    sybil_difficulty: u8,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Output directory (created if missing).
    #[arg(long, default_value = "robert-sim-out", value_name = "DIR")]
    out: PathBuf,
    /// Do not write plots (results.json and the table only).
    #[arg(long)]
    no_plots: bool,
    /// Live mode: the base URL of a running `robert serve` (e.g. http://127.0.0.1:8080) that the
    /// Apps talk to over HTTP, instead of an in-process server (see LIVE MODE below).
    #[arg(long, value_name = "URL", requires = "authority_key")]
    server: Option<String>,
    /// Live mode: the health-authority private key (PKCS#8 PEM, as `robert authority keygen` or a
    /// development server's dev-authority.pem) whose tokens the server accepts for declarations.
    #[arg(long, value_name = "FILE", requires = "server")]
    authority_key: Option<PathBuf>,
    /// Live mode: refuse runs that would take longer than this many seconds of real time
    /// (all traced runs together, counted from the server's epoch length).
    #[arg(long, default_value_t = 3_600, value_name = "SECS")]
    live_max_sec: u64,
    /// Live mode: how long to wait for the server's mixer to empty the upload pool after
    /// declarations before giving up, seconds.
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    live_mixer_timeout: u64,
}

fn parse_list(flag: &str, s: &str) -> Result<Vec<f64>> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| x.parse::<f64>().with_context(|| format!("{flag}: {x:?} is not a number")))
        .collect()
}

impl SimulateArgs {
    /// The simulation configuration these flags describe.
    pub fn config(&self) -> Result<SimConfig> {
        let attack_sizes = robert_sim::attacks::AttackSizes {
            sybil_difficulty: self.sybil_difficulty,
            ..robert_sim::attacks::AttackSizes::default()
        };
        let cfg = SimConfig {
            seed: self.seed,
            population: self.population,
            days: self.days,
            adoption: self.adoption,
            household_max: self.household_max,
            work_fraction: self.work_fraction,
            workplace_size: self.workplace_size,
            work_contacts: self.work_contacts,
            commuter_fraction: self.commuter_fraction,
            random_contacts: self.random_contacts,
            hello_period_sec: self.hello_period,
            loss: self.loss,
            rssi_at_1m: self.rssi_at_1m,
            path_loss_exponent: self.path_loss_exponent,
            rssi_noise_db: self.rssi_noise,
            initial_infected: self.initial_infected,
            beta_per_min: self.beta,
            latent_days: self.latent_days,
            infectious_days: self.infectious_days,
            symptomatic_fraction: self.symptomatic_fraction,
            symptomatic_test_rate: self.symptomatic_test_rate,
            test_result_days: self.test_result_days,
            declare_rate: self.declare_rate,
            notified_test_rate: self.notified_test_rate,
            isolation_compliance: self.isolation_compliance,
            isolation_days: self.isolation_days,
            pow_difficulty: self.pow_difficulty,
            ct_days: self.ct_days,
            declare_window_days: self.declare_window_days,
            min_exposure_minutes: self.min_exposure_minutes,
            notification_probability: self.notification_probability,
            store: match self.store {
                StoreArg::Memory => Store::Memory,
                StoreArg::Sqlite => Store::Sqlite,
            },
            compare_without_tracing: !self.no_compare,
            countries: robert_sim::config::Country::parse_list(&self.countries)?,
            country_shares: parse_list("--country-shares", &self.country_shares)?,
            travel_rate: self.travel_rate,
            trip_days: self.trip_days,
            loss_sweep: parse_list("--loss-sweep", &self.loss_sweep)?,
            attacks: !self.no_attacks,
            attack_annex_a_p: self.attack_annex_a_p,
            attack_sizes,
            threads: self.threads,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The live server these flags name, if any (`--server`, `--authority-key`).
    pub fn live(&self) -> Result<Option<LiveOptions>> {
        let (Some(url), Some(key)) = (&self.server, &self.authority_key) else {
            return Ok(None);
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            anyhow::bail!("--server: {url:?} is not an http:// or https:// URL");
        }
        let pem = zeroize::Zeroizing::new(
            std::fs::read_to_string(key)
                .with_context(|| format!("--authority-key: reading {}", key.display()))?,
        );
        let authority = robert_server::token::AuthorityKey::from_pkcs8_pem(&pem)
            .with_context(|| format!("--authority-key: {} is not a health-authority key", key.display()))?;
        Ok(Some(LiveOptions {
            url: url.clone(),
            authority,
            max_run_sec: self.live_max_sec,
            mixer_timeout_sec: self.live_mixer_timeout,
        }))
    }
}

/// Runs `cfg` with a progress bar on stderr.
pub fn run_with_progress(cfg: &SimConfig) -> Result<SimResults> {
    run_live_with_progress(cfg, None)
}

/// Runs `cfg` with a progress bar on stderr, against `live` if given.
pub fn run_live_with_progress(cfg: &SimConfig, live: Option<&LiveOptions>) -> Result<SimResults> {
    let bar = indicatif::ProgressBar::new(robert_sim::total_units(cfg));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg:>16} [{elapsed_precise}] {wide_bar} {pos}/{len} days (ETA {eta})",
        )
        .context("progress bar template")?,
    );
    let progress = |stage: &str, done, total| {
        bar.set_length(total);
        bar.set_message(stage.to_owned());
        bar.set_position(done);
    };
    let results = match live {
        None => robert_sim::simulate(cfg, &progress),
        Some(l) => robert_sim::simulate_live(cfg, l, &progress),
    };
    bar.finish_and_clear();
    Ok(results?)
}

/// Writes `results.json` (atomically: a temporary file renamed) and the plots into `dir`.
pub fn write_outputs(results: &SimResults, dir: &Path, plots: bool) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("results.json");
    let tmp = dir.join(".results.json.tmp");
    {
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        serde_json::to_writer_pretty(&mut f, results).context("encoding results")?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    let mut files = vec![path];
    if plots {
        files.extend(
            robert_sim::plot::write_all(results, dir).map_err(anyhow::Error::msg).context("plotting")?,
        );
    }
    Ok(files)
}

/// `robert simulate`.
pub fn simulate(args: &SimulateArgs, out: &mut impl Write) -> Result<()> {
    let cfg = args.config()?;
    let live = args.live()?;
    let results = run_live_with_progress(&cfg, live.as_ref())?;
    let files = write_outputs(&results, &args.out, !args.no_plots)?;
    let server =
        live.as_ref().map_or_else(|| "in-process server".to_owned(), |l| format!("live server {}", l.url));
    writeln!(
        out,
        "robert simulate: seed {}, {} people, {} days, {server}\n",
        cfg.seed, cfg.population, cfg.days
    )?;
    write!(out, "{}", results.summary_table())?;
    writeln!(out, "\nwritten:")?;
    for f in files {
        writeln!(out, "  {}", f.display())?;
    }
    Ok(())
}

/// `robert demo` arguments.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to write results.json and the plots.
    #[arg(long, default_value = "robert-demo-out", value_name = "DIR")]
    out: PathBuf,
    /// Seed (the demo is reproducible; change it to see another outbreak).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// People in the demo town.
    #[arg(long, default_value_t = 3_000)]
    population: u32,
    /// Days simulated.
    #[arg(long, default_value_t = 21)]
    days: u32,
}

/// The demo's configuration: the embedded SQLite store, the default model.
pub fn demo_config(args: &DemoArgs) -> SimConfig {
    SimConfig {
        seed: args.seed,
        population: args.population,
        days: args.days,
        store: Store::Sqlite,
        ..SimConfig::default()
    }
}

fn pct(x: f64) -> String {
    format!("{:.0} %", x * 100.0)
}

/// `robert demo`: a town, three weeks, the story.
pub fn demo(args: &DemoArgs, out: &mut impl Write) -> Result<()> {
    let cfg = demo_config(args);
    cfg.validate()?;
    writeln!(
        out,
        "robert demo: a town of {} people, {:.0} % of them with the App, for {} days (seed {}).\n\
         Every phone is a real ROBERT App; the server is a real ROBERT back-end on the embedded\n\
         SQLite store, run in-process on a simulated clock. This takes about a minute.\n",
        cfg.population,
        cfg.adoption * 100.0,
        cfg.days,
        cfg.seed
    )?;
    out.flush()?;
    let r = run_with_progress(&cfg)?;
    let files = write_outputs(&r, &args.out, true)?;
    let t = &r.traced;
    let a = &t.accuracy;
    let p = &t.protocol;
    writeln!(out, "WHAT HAPPENED")?;
    writeln!(
        out,
        "  {} phones registered (each solved a proof of work and got its EBIDs). Over {} days they\n  \
         exchanged {} HELLOs ({} more were lost on the air).",
        p.registered, cfg.days, p.hellos_stored, p.radio.lost
    )?;
    writeln!(
        out,
        "  {} people were infected. {} App users were diagnosed and declared, uploading {} HELLOs\n  \
         with a single-use health-authority token each.",
        t.total_infected, p.declarations, p.pairs_uploaded
    )?;
    writeln!(
        out,
        "  {} App users were told they were at risk; the notified isolated and got tested.",
        a.notified
    )?;
    if let Some(u) = &r.untraced {
        let (w, wo) = (t.total_infected as i64, u.total_infected as i64);
        let avoided = if wo > 0 { (wo - w) as f64 / wo as f64 * 100.0 } else { 0.0 };
        writeln!(
            out,
            "  The same town without the App (same seed, same contacts where behaviour is the same):\n  \
             {wo} infected. With tracing, {} fewer ({avoided:.0} %).",
            wo - w
        )?;
    }
    writeln!(out, "\nWHAT THE SERVER LEARNED, AND WHAT IT DID NOT")?;
    writeln!(
        out,
        "  It holds {} pseudonymous IDs with their keys, and for each exposed ID the epochs of exposure.\n  \
         It processed {} uploaded HELLOs ({} failed its checks) and erased every one of them: {} left in\n  \
         the upload pool. Uploads carry no declarer identity, token or address, and were mixed before\n  \
         processing, so the server never learned who declared, nor who met whom — only that some\n  \
         IDs were exposed. Phones learned one bit each: at risk or not.",
        p.server_users, p.server_pairs_processed, p.server_pairs_rejected, p.server_pool_left
    )?;
    writeln!(out, "\nHOW ACCURATE THE ALERTS WERE")?;
    writeln!(
        out,
        "  Ground truth: the server's own scoring rule applied to the true contacts. {} users were\n  \
         truly exposed; {} of them were notified (recall {}, with {:.0} % of HELLOs lost on the air).\n  \
         {} notifications went to users who were not truly exposed (precision {}): RSSI noise made\n  \
         some contacts look closer. Nobody was notified without a true contact: {}.",
        a.truly_exposed,
        a.true_positives,
        pct(a.recall),
        cfg.loss * 100.0,
        a.false_positives,
        pct(a.precision),
        if a.notified_without_true_contact == 0 {
            "true".to_owned()
        } else {
            format!("false ({})", a.notified_without_true_contact)
        }
    )?;
    writeln!(
        out,
        "  Half the notified learned within {:.0} h of the declaration that put them at risk (they ask\n  \
         once a day); counted from the first risky contact, {:.0} h (median).",
        a.declaration_to_notification_median_h, a.time_to_notification_median_h
    )?;
    for l in &r.loss_sweep {
        writeln!(
            out,
            "  With {:>2.0} % radio loss: recall {}, precision {}.",
            l.loss * 100.0,
            pct(l.recall),
            pct(l.precision)
        )?;
    }
    if let Some(at) = &r.attacks {
        writeln!(out, "\nATTACKS")?;
        let line = |name: &str, o: &robert_sim::attacks::AttackOutcome, verdict: &str| {
            format!("  {name:<34} {:>3} of {:<3} victims notified  {verdict}", o.successes, o.attempts)
        };
        writeln!(
            out,
            "{}",
            line(
                "HELLO replay after 2^16 s",
                &at.replay_after_2_16,
                if at.replay_after_2_16.successes == 0 { "FAILED (server epoch check)" } else { "SUCCEEDED" }
            )
        )?;
        writeln!(
            out,
            "{}",
            line(
                "relay beyond δ (2 min)",
                &at.relay_beyond_delta,
                if at.relay_beyond_delta.successes == 0 {
                    "FAILED (δ check, App and server)"
                } else {
                    "SUCCEEDED"
                }
            )
        )?;
        writeln!(
            out,
            "{}",
            line(
                "relay within δ (30 s)",
                &at.relay_within_delta,
                "works: ROBERT bounds relays to δ, it cannot stop them"
            )
        )?;
        writeln!(
            out,
            "  one-entry attack (Annex A)         certainty {} with p = 0, {} with p = {} (random notifications)",
            pct(at.one_entry_deterministic.inference_precision),
            pct(at.one_entry_probabilistic.inference_precision),
            at.one_entry_probabilistic.p
        )?;
        writeln!(
            out,
            "  Sybil burst                        {} of {} accepted without work, {} of {} with a reused solution;\n  \
             {:>34} each identity costs ~{:.0} hashes ({:.2} s here) at difficulty {}",
            at.sybil.without_work.successes,
            at.sybil.without_work.attempts,
            at.sybil.reused_solution.successes,
            at.sybil.reused_solution.attempts,
            "",
            at.sybil.mean_hashes,
            at.sybil.seconds_per_identity,
            at.sybil.difficulty
        )?;
    }
    writeln!(out, "\nWHERE THE RESULTS ARE")?;
    for f in files {
        writeln!(out, "  {}", f.display())?;
    }
    writeln!(out, "\nFor every knob: robert simulate --help")?;
    Ok(())
}
