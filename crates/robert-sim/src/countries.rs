//! Several countries, each with its own real server, federated as §8 describes, and people who
//! travel between them (`robert simulate --countries FR,DE`).
//!
//! ## The servers
//!
//! One real [`Service`] per country, each with its own keys, store, health authority and country
//! code CC (`protocol.country_code`), all sharing the federation key K_G (§4: every server must
//! decrypt every ECC), each listing the others as `[[federation.peers]]` with their Ed25519
//! batch-verification keys. Each server's HTTP API listens on a loopback port 0 (axum, the real
//! router), and forwarding between servers is the real thing: after each mixer pass (§6.2 step 3
//! puts the pairs whose ECC decrypts to a peer's CC in that peer's outbox), the simulator calls
//! [`federation::deliver_once`] for every peer until the outbox is empty — signed batches POSTed
//! over HTTP, verified, stored and acknowledged by the peer — then mixes again so that received
//! pairs are processed like local ones (§6.2 step 4 on). Only the *timing* of delivery is the
//! simulator's (it replaces the servers' background delivery loops, so runs are reproducible);
//! routing, the batch format, signatures and idempotence are the servers' own code.
//!
//! Phones (App instances, as in the single-server run) talk in-process to their home server
//! only: registration (§3.3), declarations (§6.1) and ESRs (§7). A phone never learns or uses a
//! foreign server.
//!
//! ## The population
//!
//! Each country's people are built like a single-server population ([`Population::build_part`],
//! split by `country_shares`), households and workplaces within the country. On any day a person
//! may be abroad: time is cut into trips of `trip_days` (at a phase of the person's own), and a
//! person is abroad for a trip with probability `travel_rate` (so about that share of people is
//! abroad on any day), in another country drawn uniformly. Isolating people stay home.
//!
//! - At home: household contacts (with the members at home), work contacts (with colleagues at
//!   work that day, not abroad), public transport (commuters on working days), random encounters
//!   with anyone *in the country that day* — locals and visitors.
//! - Abroad: no household or work contacts; public transport with probability ½ each day (with
//!   the riders of the host country), and random encounters with anyone in the host country.
//!
//! Contacts, transmission, the radio and the ground truth are the single-server model's, over
//! the whole population: a HELLO heard across a border is like any other, except that its ECC
//! names the sender's home country, so that the receiver's home server forwards it.
//!
//! ## What is measured
//!
//! The accuracy report per country (phones by home country) and overall, and cross-border
//! figures: person-days abroad, contacts and stored HELLOs between phones of different
//! countries, cross-border pairs uploaded (counted by the simulator, which knows who sent what;
//! independently of the ECC), pairs forwarded and received per peer, batches, and the recall of
//! exposures that came (only) from a foreign declarer.

use crate::SimError;
use crate::config::{Country, SimConfig};
use crate::engine::{
    self, Accuracy, EPOCH_SEC, Op, OpResult, Phones, ProtocolStats, RunResult, SLOTS, esr_schedule, phone,
    run_ops,
};
use crate::epidemic::{Epidemic, SimTime};
use crate::population::{Contact, DAY, Population, Whereabouts};
use crate::rng::{Tag, crypto_rng, hash, unit};
use crate::server::{SERVICE_START_NTP, TimeMap, app_config, ntp, server_config};
use crate::truth::Truth;
use rayon::prelude::*;
use robert_app::{App, AppConfig, ExposureStatus, InProcessTransport};
use robert_proto::NtpTime;
use robert_server::config::PeerSection;
use robert_server::federation::{self, Delivery};
use robert_server::keystore::{self, ServerSecrets};
use robert_server::service::{Clock, Service};
use robert_server::storage::Storage;
use robert_server::token::{AuthorityKey, Purpose, TrustedAuthorities};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;
use tokio::sync::Mutex;

/// The population of several countries and where everyone lives.
#[derive(Debug, Clone)]
pub struct World {
    /// Everyone, country after country.
    pub pop: Population,
    /// The countries.
    pub countries: Vec<Country>,
    /// Each person's home country (index into `countries`).
    pub home: Vec<u8>,
    /// Each phone's home country (its server).
    pub phone_home: Vec<u8>,
}

/// Where everyone is on one day, and the contacts there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Day {
    /// The contacts, in a deterministic order.
    pub contacts: Vec<Contact>,
    /// People abroad that day.
    pub abroad: u64,
}

impl World {
    /// Builds the countries' populations (deterministic in the seed).
    pub fn build(cfg: &SimConfig) -> Self {
        let sizes = cfg.country_population();
        let parts: Vec<Population> =
            sizes.iter().enumerate().map(|(i, &n)| Population::build_part(cfg, n, i as u64)).collect();
        let mut home = Vec::with_capacity(cfg.population as usize);
        for (i, part) in parts.iter().enumerate() {
            home.extend(std::iter::repeat_n(i as u8, part.people.len()));
        }
        let pop = Population::concat(parts);
        let phone_home = pop.phone_owner.iter().map(|&p| home[p as usize]).collect();
        Self { pop, countries: cfg.countries.clone(), home, phone_home }
    }

    /// The country person `p` is in on `day` if they are abroad (they travel only when not
    /// isolating: the caller checks).
    pub fn abroad(&self, cfg: &SimConfig, p: u32, day: u32) -> Option<u8> {
        let n = self.countries.len() as u64;
        if n < 2 || cfg.travel_rate <= 0.0 {
            return None;
        }
        let len = cfg.trip_days.max(1);
        let phase = (hash(cfg.seed, Tag::Travel, u64::from(p), 0, 0, 0) % u64::from(len)) as u32;
        let trip = u64::from((day + phase) / len);
        if unit(hash(cfg.seed, Tag::Travel, u64::from(p), 1, trip, 0)) >= cfg.travel_rate {
            return None;
        }
        let home = self.home[p as usize];
        let k = (hash(cfg.seed, Tag::Travel, u64::from(p), 2, trip, 0) % (n - 1)) as u8;
        Some(if k >= home { k + 1 } else { k })
    }

    /// The contacts of `day` (see the module docs). `present[p]` is false for a person who
    /// isolates that day: they stay home and only meet their household.
    pub fn contacts(&self, cfg: &SimConfig, day: u32, present: &[bool]) -> Day {
        let people = &self.pop.people;
        let working_day = day % 7 < 5;
        let place: Vec<u8> = (0..people.len() as u32)
            .into_par_iter()
            .map(|p| {
                let home = self.home[p as usize];
                if present[p as usize] { self.abroad(cfg, p, day).unwrap_or(home) } else { home }
            })
            .collect();
        let at_home: Vec<bool> = place.iter().zip(&self.home).map(|(here, home)| here == home).collect();
        // At home: commuters ride on working days; abroad: a traveller rides on half the days.
        let rides = |p: u32| -> bool {
            let i = p as usize;
            if at_home[i] {
                working_day && people[i].commuter
            } else {
                unit(hash(cfg.seed, Tag::Travel, u64::from(p), 3, u64::from(day), 0)) < 0.5
            }
        };
        let n = self.countries.len();
        let mut here: Vec<Vec<u32>> = vec![Vec::new(); n];
        let mut riders: Vec<Vec<u32>> = vec![Vec::new(); n];
        for p in 0..people.len() as u32 {
            let c = usize::from(place[p as usize]);
            here[c].push(p);
            if rides(p) {
                riders[c].push(p);
            }
        }
        let abroad = at_home.iter().filter(|&&home| !home).count() as u64;
        let whereabouts = Whereabouts { at_home, place, here, riders };
        Day { contacts: self.pop.contacts_in(cfg, day, present, &whereabouts), abroad }
    }
}

/// One country's server, in-process, with its API on a loopback port (for federation).
pub struct CountryServer<S> {
    /// The country.
    pub country: Country,
    /// The protocol service.
    pub service: Arc<Service<S>>,
    clock: Arc<AtomicU32>,
    authority: AuthorityKey,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// Keys, database and audit logs live here until the run ends.
    _dir: tempfile::TempDir,
}

impl<S: Storage> CountryServer<S> {
    /// Starts one server per country of `cfg` (inside the runtime: the HTTP servers are tasks),
    /// each store made by `open` in the server's own temporary directory.
    pub async fn start_all(
        cfg: &SimConfig,
        notification_probability: f64,
        open: impl Fn(&Path) -> Result<S, SimError>,
    ) -> Result<Vec<Self>, SimError> {
        let err = |what: &str, e: &dyn std::fmt::Display| SimError::Server(format!("{what}: {e}"));
        let mut dirs = Vec::new();
        for i in 0..cfg.countries.len() {
            let dir = tempfile::tempdir().map_err(|e| err("temporary directory", &e))?;
            let keys = dir.path().join("keys");
            keystore::keygen(&keys, &mut crypto_rng(cfg.seed, Tag::Travel, u64::MAX, i as u64))
                .map_err(|e| err("keygen", &e))?;
            if let Some(first) = dirs.first() {
                // §4: K_G is shared by all federated servers.
                let from: &tempfile::TempDir = first;
                std::fs::copy(
                    from.path().join("keys").join(keystore::FEDERATION_KEY_FILE),
                    keys.join(keystore::FEDERATION_KEY_FILE),
                )
                .map_err(|e| err("sharing K_G", &e))?;
            }
            dirs.push(dir);
        }
        let mut listeners = Vec::new();
        let mut urls = Vec::new();
        for _ in &cfg.countries {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| err("bind", &e))?;
            urls.push(format!("http://{}", l.local_addr().map_err(|e| err("bind", &e))?));
            listeners.push(l);
        }
        let mut publics = Vec::new();
        for d in &dirs {
            let path = d.path().join("keys").join(keystore::FEDERATION_SIGNING_PUBLIC_FILE);
            let text = std::fs::read_to_string(&path).map_err(|e| err("federation public key", &e))?;
            publics.push(text.trim().to_owned());
        }
        let mut out = Vec::new();
        for (i, (dir, listener)) in dirs.into_iter().zip(listeners).enumerate() {
            let country = cfg.countries[i].clone();
            let mut config = server_config(cfg, notification_probability);
            config.protocol.country_code = country.code;
            config.server.data_dir = dir.path().to_path_buf();
            config.federation.peers = cfg
                .countries
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(j, c)| PeerSection {
                    country_code: c.code,
                    url: urls[j].clone(),
                    public_key: publics[j].clone(),
                })
                .collect();
            let secrets = ServerSecrets::load(&dir.path().join("keys")).map_err(|e| err("keys", &e))?;
            let authority =
                AuthorityKey::generate(&mut crypto_rng(cfg.seed, Tag::Travel, u64::MAX - 1, i as u64));
            let mut trusted = TrustedAuthorities::new();
            trusted.add_public_key_pem(&authority.public_key_pem()).map_err(|e| err("authority key", &e))?;
            let storage = open(dir.path())?;
            let clock = Arc::new(AtomicU32::new(SERVICE_START_NTP));
            let c = clock.clone();
            let clock_fn: Clock = Arc::new(move || NtpTime::new(c.load(Ordering::SeqCst)));
            let service =
                Service::new(config, NtpTime::new(SERVICE_START_NTP), secrets, storage, trusted, clock_fn)
                    .await
                    .map_err(|e| err(&country.name, &e))?;
            let service = Arc::new(service);
            // The API only (the background jobs are the simulator's to drive, on its clock).
            let app = robert_server::http::router(service.clone());
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let handle = tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await
            });
            out.push(Self {
                country,
                service,
                clock,
                authority,
                shutdown: Some(tx),
                handle: Some(handle),
                _dir: dir,
            });
        }
        Ok(out)
    }

    /// Sets the server's clock to `t` simulation seconds.
    pub fn set_time(&self, t: SimTime) -> NtpTime {
        let ntp = ntp(t);
        self.clock.store(ntp.seconds(), Ordering::SeqCst);
        ntp
    }

    /// `n` declaration tokens of this country's health authority, valid from `t` for a day.
    fn declare_tokens(
        &self,
        n: usize,
        t: SimTime,
        rng: &mut impl rand_core::CryptoRng,
    ) -> Result<Vec<String>, SimError> {
        (0..n)
            .map(|_| {
                self.authority
                    .issue(Purpose::Declare, ntp(t).to_unix(), 86_400, rng)
                    .map_err(|e| SimError::Server(format!("token: {e}")))
            })
            .collect()
    }

    /// Stops the HTTP server (graceful: in-flight requests finish).
    pub async fn stop(mut self) -> Result<(), SimError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await
                .map_err(|e| SimError::Server(format!("HTTP task: {e}")))?
                .map_err(|e| SimError::Server(format!("HTTP: {e}")))?;
        }
        Ok(())
    }
}

/// A server's counters at the end of a run (no identifiers).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServerCounters {
    /// IDs registered.
    pub users: u64,
    /// Pairs that joined the pool (uploaded here, or received from peers).
    pub pairs_accepted: u64,
    /// Pairs that added an exposure here.
    pub pairs_processed: u64,
    /// Pairs that failed a §6.2 check.
    pub pairs_rejected: u64,
    /// Pairs put in a peer's outbox (§6.2 step 3).
    pub pairs_forwarded: u64,
    /// Pairs for a country that is not a peer (dropped).
    pub pairs_dropped_foreign: u64,
    /// "At risk" answers given.
    pub notifications: u64,
    /// Pairs left in the pool.
    pub pool_left: u64,
    /// Pairs left in the outboxes (not acknowledged).
    pub outbox_left: u64,
}

/// Federation traffic with one peer, as one server counted it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PeerTraffic {
    /// The peer.
    pub peer: String,
    /// Batches sent (first attempts).
    pub batches_sent: u64,
    /// Re-sends.
    pub batches_retried: u64,
    /// Batches the peer acknowledged.
    pub batches_acknowledged: u64,
    /// Batches the peer refused.
    pub batches_rejected: u64,
    /// Pairs in acknowledged batches.
    pub pairs_sent: u64,
    /// Batches received from the peer.
    pub batches_received: u64,
    /// Repeated batches received (answered, not stored again).
    pub batches_duplicate: u64,
    /// Pairs received from the peer.
    pub pairs_received: u64,
}

/// One country's results.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CountryReport {
    /// The country's name.
    pub name: String,
    /// Its country code.
    pub code: u8,
    /// People living there.
    pub people: u64,
    /// Their phones.
    pub phones: u64,
    /// Infections of its people (wherever they happened).
    pub total_infected: u64,
    /// Declarations of its phones (to its server).
    pub declarations: u64,
    /// Pairs they uploaded.
    pub pairs_uploaded: u64,
    /// …of which HELLOs of foreign phones (routed to a peer).
    pub pairs_uploaded_cross_border: u64,
    /// Notifications of its phones against the ground truth.
    pub accuracy: Accuracy,
    /// Its server's counters.
    pub server: ServerCounters,
    /// Its server's federation traffic, per peer.
    pub peers: Vec<PeerTraffic>,
}

/// What crossed borders.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CrossBorder {
    /// Person-days spent abroad.
    pub person_days_abroad: u64,
    /// Contacts between App users of different countries.
    pub contacts: u64,
    /// HELLOs of a foreign phone stored by a phone.
    pub hellos_stored: u64,
    /// Such HELLOs uploaded in declarations.
    pub pairs_uploaded: u64,
    /// Pairs the servers put in outboxes (§6.2 step 3).
    pub pairs_forwarded: u64,
    /// Pairs acknowledged by peers.
    pub pairs_acknowledged: u64,
    /// Pairs received from peers.
    pub pairs_received: u64,
    /// Federation batches acknowledged.
    pub batches: u64,
    /// Truly exposed phones with at least one exposure from a foreign declarer.
    pub exposed: u64,
    /// …of them notified.
    pub exposed_notified: u64,
    /// Truly exposed phones whose every exposure came from foreign declarers (federation alone
    /// can notify them).
    pub exposed_only_abroad: u64,
    /// …of them notified.
    pub exposed_only_abroad_notified: u64,
    /// exposed_notified / exposed (1 when none).
    pub recall: f64,
}

/// The per-country and cross-border part of a multi-country run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CountriesReport {
    /// One entry per country, in `--countries` order.
    pub countries: Vec<CountryReport>,
    /// Across borders.
    pub cross_border: CrossBorder,
}

/// Runs the epidemic without the App (same seed, same contacts where behaviour is the same).
pub fn run_untraced(cfg: &SimConfig, world: &World, progress: engine::Progress) -> RunResult {
    engine::run_untraced_with(
        cfg,
        &world.pop,
        |day, present| world.contacts(cfg, day, present).contacts,
        progress,
    )
}

/// Starts the servers with the store `open` makes, runs [`run_traced`], stops the servers.
pub fn traced_with<S: Storage>(
    cfg: &SimConfig,
    world: &World,
    rt: &tokio::runtime::Runtime,
    progress: engine::Progress,
    open: impl Fn(&Path) -> Result<S, SimError>,
) -> Result<(RunResult, CountriesReport), SimError> {
    let servers = rt.block_on(CountryServer::start_all(cfg, cfg.notification_probability, open))?;
    let app_cfg = app_config(cfg, servers[0].service.config());
    let out = run_traced(cfg, world, rt, &servers, &app_cfg, progress);
    for s in servers {
        rt.block_on(s.stop())?;
    }
    out
}

/// What the day loop needs at hand.
struct Ctx<'a, S> {
    cfg: &'a SimConfig,
    world: &'a World,
    rt: &'a tokio::runtime::Runtime,
    servers: &'a [CountryServer<S>],
    transports: Vec<InProcessTransport<S>>,
    phones: Phones,
}

impl<S: Storage> Ctx<'_, S> {
    fn set_time(&self, t: SimTime) -> NtpTime {
        let mut now = ntp(t);
        for s in self.servers {
            now = s.set_time(t);
        }
        now
    }

    /// Runs `ops`, each phone's on its home server; results sorted by phone.
    fn run(&self, now: NtpTime, ops: Vec<(u32, Op)>) -> Vec<(u32, OpResult)> {
        let mut by: Vec<Vec<(u32, Op)>> = (0..self.servers.len()).map(|_| Vec::new()).collect();
        for (i, op) in ops {
            by[usize::from(self.world.phone_home[i as usize])].push((i, op));
        }
        let mut out = Vec::new();
        for (c, ops) in by.into_iter().enumerate() {
            out.extend(run_ops(self.rt, &self.phones, &self.transports[c], self.cfg.seed, now, ops));
        }
        out.sort_unstable_by_key(|x| x.0);
        out
    }

    /// Every server mixes its pool (§6.2), forwards what step 3 routed to its peers until every
    /// outbox is empty (the real federation client and endpoint, over loopback HTTP), then the
    /// receivers mix what they received.
    fn mix_and_forward(&self) -> Result<(), SimError> {
        let e = |x: robert_server::service::ServiceError| SimError::Server(x.to_string());
        self.rt.block_on(async {
            for s in self.servers {
                s.service.mix_once(true).await.map_err(e)?;
            }
            let mut received = false;
            for s in self.servers {
                for peer in s.service.federation().peers() {
                    let mut failures = 0;
                    loop {
                        match federation::deliver_once(&s.service, peer).await.map_err(e)? {
                            Delivery::Idle => break,
                            Delivery::Delivered { .. } => received = true,
                            Delivery::Expired => {
                                return Err(SimError::Server(format!(
                                    "{}: a batch for {} expired",
                                    s.country.name,
                                    peer.value()
                                )));
                            }
                            Delivery::Failed => {
                                // Loopback to a live server: a failure is a fault, not weather.
                                failures += 1;
                                if failures == 3 {
                                    return Err(SimError::Server(format!(
                                        "{}: federation delivery to country {} failed 3 times",
                                        s.country.name,
                                        peer.value()
                                    )));
                                }
                            }
                        }
                    }
                }
            }
            if received {
                for s in self.servers {
                    s.service.mix_once(true).await.map_err(e)?;
                }
            }
            Ok(())
        })
    }
}

/// Runs the epidemic with tracing over several federated countries: every phone a real App
/// registered with its home country's server.
pub fn run_traced<S: Storage>(
    cfg: &SimConfig,
    world: &World,
    rt: &tokio::runtime::Runtime,
    servers: &[CountryServer<S>],
    app_config: &AppConfig,
    progress: engine::Progress,
) -> Result<(RunResult, CountriesReport), SimError> {
    let started = Instant::now();
    let pop = &world.pop;
    let n_phones = pop.phones();
    let nc = servers.len();
    let has_phone = |p: usize| pop.people[p].phone.is_some();
    let phone_of: Vec<Option<u32>> = pop.people.iter().map(|p| p.phone).collect();
    let mut epi = Epidemic::new(cfg, pop.people.len(), has_phone);
    let mut truth = Truth::new(n_phones);
    let mut stats = ProtocolStats::default();
    let ctx = Ctx {
        cfg,
        world,
        rt,
        servers,
        transports: servers.iter().map(|s| InProcessTransport::new(s.service.clone())).collect(),
        phones: Arc::new((0..n_phones).map(|_| Mutex::new(App::new(app_config.clone()))).collect()),
    };
    let max_contacts = servers[0].service.config().reports.max_contacts;
    let mut cross = CrossBorder::default();
    let mut declarations = vec![0u64; nc];
    let mut uploaded = vec![0u64; nc];
    let mut uploaded_cross = vec![0u64; nc];
    // Foreign HELLOs stored by each phone: (receiver, HELLO) → the sender's home country.
    let mut foreign: HashMap<(u32, [u8; robert_proto::HELLO_LEN]), u8> = HashMap::new();

    // Registration (§3.3) with the home server, at the start.
    let now = ctx.set_time(60);
    rt.block_on(async {
        for s in servers {
            s.service.prepare_day_keys().await?;
        }
        Ok::<_, robert_server::service::ServiceError>(())
    })
    .map_err(|e| SimError::Server(e.to_string()))?;
    let ops = (0..n_phones as u32).map(|i| (i, Op::Register)).collect();
    for (_, r) in ctx.run(now, ops) {
        match r {
            OpResult::Registered(Ok(())) => stats.registered += 1,
            OpResult::Registered(Err(e)) => return Err(SimError::App(format!("registration: {e}"))),
            _ => {}
        }
    }

    let esr_by_slot = esr_schedule(cfg.seed, n_phones);
    let mut declared = vec![false; pop.people.len()];
    let mut notified_at: Vec<Option<SimTime>> = vec![None; n_phones];
    let mut exposed_at: Vec<Option<SimTime>> = vec![None; n_phones];
    let mut daily = Vec::new();
    let home_of = |ph: u32| world.phone_home[ph as usize];

    for day in 0..cfg.days {
        let day_start = SimTime::from(day) * SimTime::from(DAY);
        ctx.set_time(day_start);
        rt.block_on(async {
            for s in servers {
                s.service.prepare_day_keys().await?;
                s.service.expire().await?;
            }
            Ok::<_, robert_server::service::ServiceError>(())
        })
        .map_err(|e| SimError::Server(e.to_string()))?;
        let present = epi.present(day);
        let d = world.contacts(cfg, day, &present);
        cross.person_days_abroad += d.abroad;
        for (p, t) in epi.transmit(cfg, &d.contacts) {
            epi.infect(cfg, p, t, has_phone(p));
        }
        cross.contacts += d
            .contacts
            .iter()
            .filter(|c| {
                phone_of[c.a as usize].is_some()
                    && phone_of[c.b as usize].is_some()
                    && world.home[c.a as usize] != world.home[c.b as usize]
            })
            .count() as u64;
        let mut by_slot =
            engine::day_receptions(cfg, &phone_of, &d.contacts, day, &mut stats.radio, &mut truth);

        for slot in 0..SLOTS {
            let slot_start = day_start + SimTime::from(slot * EPOCH_SEC);
            // §5: HELLOs of this epoch; those heard across a border are remembered.
            let recs = std::mem::take(&mut by_slot[slot as usize]);
            if !recs.is_empty() {
                let keep = |s: u32, r: u32| home_of(s) != home_of(r);
                for k in engine::exchange_hellos_keeping(
                    &ctx.phones,
                    &TimeMap::IN_PROCESS,
                    recs,
                    &mut stats,
                    &keep,
                ) {
                    cross.hellos_stored += 1;
                    foreign.insert((k.receiver, k.hello), home_of(k.sender));
                }
            }
            // §6.1: declarations of the people diagnosed in this epoch, to their home server.
            let t_decl = slot_start + 300;
            let now_decl = ntp(t_decl);
            let mut ops = Vec::new();
            for (p, h) in epi.health.iter().enumerate() {
                let Some(dx) = h.diagnosed_at else { continue };
                if declared[p] || !h.declares || dx >= slot_start + SimTime::from(EPOCH_SEC) {
                    continue;
                }
                declared[p] = true;
                let Some(ph) = pop.people[p].phone else { continue };
                let home = usize::from(home_of(ph));
                let cont_start = t_decl - SimTime::from(cfg.declare_window_days) * SimTime::from(DAY);
                let pending = {
                    let mut app = phone(&ctx.phones, ph);
                    // What the declaration will select (the App purges the same way first).
                    app.purge_expired(now_decl);
                    let window = app
                        .contacts()
                        .iter()
                        .filter(|c| ntp(cont_start) < c.time && c.time < now_decl)
                        .filter(|c| foreign.contains_key(&(ph, c.hello.to_bytes())))
                        .count() as u64;
                    uploaded_cross[home] += window;
                    app.contacts().len()
                };
                let n_tokens = pending.div_ceil(max_contacts).max(1);
                let mut rng = crypto_rng(cfg.seed, Tag::PhoneCrypto, u64::from(ph), u64::MAX);
                let tokens = servers[home].declare_tokens(n_tokens, t_decl, &mut rng)?;
                truth.declare(cfg, ph, cont_start, t_decl, now_decl, &TimeMap::IN_PROCESS);
                ops.push((ph, Op::Declare { tokens, cont_start: ntp(cont_start) }));
            }
            if !ops.is_empty() {
                let now = ctx.set_time(t_decl);
                for (ph, r) in ctx.run(now, ops) {
                    if let OpResult::Declared(r) = r {
                        let (pairs, _) = r.map_err(|e| SimError::App(format!("declaration: {e}")))?;
                        stats.declarations += 1;
                        stats.pairs_uploaded += pairs;
                        declarations[usize::from(home_of(ph))] += 1;
                        uploaded[usize::from(home_of(ph))] += pairs;
                    }
                }
                // §6.2 and §8: mixing, forwarding, and mixing what was received.
                ctx.mix_and_forward()?;
            }
            // §7: ESRs due in this epoch, to the home servers.
            let due = &esr_by_slot[slot as usize];
            esr_round(
                &ctx,
                due,
                slot_start + 450,
                &truth,
                &mut epi,
                &mut notified_at,
                &mut exposed_at,
                &mut stats,
            )?;
        }
        daily.push(epi.counts(day));
        progress(day + 1);
    }

    // Final sweep: mix and forward what is left, then every phone asks once more.
    let t_end = SimTime::from(cfg.days) * SimTime::from(DAY) + 12 * 3600;
    ctx.set_time(t_end);
    ctx.mix_and_forward()?;
    let all: Vec<u32> = (0..n_phones as u32).collect();
    esr_round(&ctx, &all, t_end, &truth, &mut epi, &mut notified_at, &mut exposed_at, &mut stats)?;

    // Servers' counters.
    let mut reports = Vec::new();
    for (c, s) in servers.iter().enumerate() {
        let m = s.service.metrics();
        let counter = |name| m.counter(name).unwrap_or(0);
        let st = rt.block_on(s.service.storage().stats()).map_err(|e| SimError::Server(e.to_string()))?;
        let server = ServerCounters {
            users: st.users,
            pairs_accepted: counter("pairs_accepted"),
            pairs_processed: counter("pairs_processed"),
            pairs_rejected: counter("pairs_rejected"),
            pairs_forwarded: counter("pairs_forwarded"),
            pairs_dropped_foreign: counter("pairs_dropped_foreign"),
            notifications: counter("notifications"),
            pool_left: st.pool_depth,
            outbox_left: st.outbox_depth,
        };
        stats.server_pairs_accepted += server.pairs_accepted;
        stats.server_pairs_processed += server.pairs_processed;
        stats.server_pairs_rejected += server.pairs_rejected;
        stats.server_users += server.users;
        stats.server_pool_left += server.pool_left;
        cross.pairs_forwarded += server.pairs_forwarded;
        let peers: Vec<PeerTraffic> = servers
            .iter()
            .filter(|o| o.country.code != s.country.code)
            .map(|o| {
                let p = m.federation_peer(o.country.code);
                PeerTraffic {
                    peer: o.country.name.clone(),
                    batches_sent: p.batches_sent.get(),
                    batches_retried: p.batches_retried.get(),
                    batches_acknowledged: p.batches_acknowledged.get(),
                    batches_rejected: p.batches_rejected.get(),
                    pairs_sent: p.pairs_acknowledged.get(),
                    batches_received: p.batches_received.get(),
                    batches_duplicate: p.batches_duplicate.get(),
                    pairs_received: p.pairs_received.get(),
                }
            })
            .collect();
        cross.pairs_acknowledged += peers.iter().map(|p| p.pairs_sent).sum::<u64>();
        cross.pairs_received += peers.iter().map(|p| p.pairs_received).sum::<u64>();
        cross.batches += peers.iter().map(|p| p.batches_acknowledged).sum::<u64>();
        let mine = |i: usize| usize::from(world.phone_home[i]) == c;
        let accuracy =
            engine::accuracy_of(&truth, &notified_at, &exposed_at, (0..n_phones).filter(|&i| mine(i)));
        let people = world.home.iter().filter(|&&h| usize::from(h) == c).count() as u64;
        let total_infected = epi
            .health
            .iter()
            .zip(&world.home)
            .filter(|(h, home)| usize::from(**home) == c && h.infected_at.is_some())
            .count() as u64;
        reports.push(CountryReport {
            name: s.country.name.clone(),
            code: s.country.code,
            people,
            phones: (0..n_phones).filter(|&i| mine(i)).count() as u64,
            total_infected,
            declarations: declarations[c],
            pairs_uploaded: uploaded[c],
            pairs_uploaded_cross_border: uploaded_cross[c],
            accuracy,
            server,
            peers,
        });
    }
    cross.pairs_uploaded = uploaded_cross.iter().sum();
    for i in 0..n_phones {
        let Some(t) = exposed_at[i] else { continue };
        let home = world.phone_home[i];
        let (mut any, mut all) = (false, true);
        for d in truth.declarers(i as u32, t) {
            let foreign = world.phone_home[d as usize] != home;
            any |= foreign;
            all &= foreign;
        }
        let notified = u64::from(notified_at[i].is_some());
        if any {
            cross.exposed += 1;
            cross.exposed_notified += notified;
        }
        if any && all {
            cross.exposed_only_abroad += 1;
            cross.exposed_only_abroad_notified += notified;
        }
    }
    cross.recall =
        if cross.exposed == 0 { 1.0 } else { cross.exposed_notified as f64 / cross.exposed as f64 };

    let accuracy = engine::accuracy_of(&truth, &notified_at, &exposed_at, 0..n_phones);
    let total_infected = epi.health.iter().filter(|h| h.infected_at.is_some()).count() as u64;
    let run = RunResult {
        loss: cfg.loss,
        tracing: true,
        daily,
        accuracy,
        protocol: stats,
        total_infected,
        wall_seconds: started.elapsed().as_secs_f64(),
    };
    Ok((run, CountriesReport { countries: reports, cross_border: cross }))
}

/// ESRs of the phones `due` at `t` (§7), each to its home server; the ground truth evaluated at
/// the same time, and the behaviour of the newly notified.
#[allow(clippy::too_many_arguments)]
fn esr_round<S: Storage>(
    ctx: &Ctx<'_, S>,
    due: &[u32],
    t: SimTime,
    truth: &Truth,
    epi: &mut Epidemic,
    notified_at: &mut [Option<SimTime>],
    exposed_at: &mut [Option<SimTime>],
    stats: &mut ProtocolStats,
) -> Result<(), SimError> {
    let now = ctx.set_time(t);
    let service = &ctx.servers[0].service;
    let schedule = service.schedule();
    let epoch = schedule.epoch_at(now).ok_or_else(|| SimError::Server("time before the service".into()))?;
    let rule = &service.config().risk;
    for &i in due {
        if exposed_at[i as usize].is_none() && truth.at_risk(i, t, epoch, schedule, ctx.cfg.ct_days, rule) {
            exposed_at[i as usize] = Some(t);
        }
    }
    let ops: Vec<(u32, Op)> =
        due.iter().filter(|&&i| notified_at[i as usize].is_none()).map(|&i| (i, Op::Status)).collect();
    for (i, r) in ctx.run(now, ops) {
        match r {
            OpResult::Status(Ok(ExposureStatus::AtRisk)) => {
                stats.esr_answered += 1;
                notified_at[i as usize] = Some(t);
                epi.on_notified(ctx.cfg, ctx.world.pop.phone_owner[i as usize] as usize, t);
            }
            OpResult::Status(Ok(ExposureStatus::NotAtRisk)) => stats.esr_answered += 1,
            OpResult::Status(Ok(ExposureStatus::TooEarly { .. })) => {}
            OpResult::Status(Err(_)) => stats.esr_failed += 1,
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Country;
    use crate::population::Setting;

    fn cfg() -> SimConfig {
        SimConfig {
            population: 2_000,
            countries: Country::parse_list("FR,DE").expect("countries"),
            country_shares: vec![3.0, 1.0],
            travel_rate: 0.2,
            ..SimConfig::default()
        }
    }

    #[test]
    fn world_splits_people_by_country() {
        let c = cfg();
        let w = World::build(&c);
        assert_eq!(w.home.len(), 2_000);
        assert_eq!(w.home.iter().filter(|&&h| h == 0).count(), 1_500);
        for (ph, &owner) in w.pop.phone_owner.iter().enumerate() {
            assert_eq!(w.phone_home[ph], w.home[owner as usize]);
        }
        // Households and workplaces do not cross borders.
        for &(a, b) in &w.pop.households {
            assert!((a..b).all(|p| w.home[p as usize] == w.home[a as usize]));
        }
        for m in &w.pop.workplaces {
            assert!(m.iter().all(|&p| w.home[p as usize] == w.home[m[0] as usize]));
        }
    }

    #[test]
    fn travellers_meet_locals_abroad_and_not_their_household() {
        let c = cfg();
        let w = World::build(&c);
        let all = vec![true; w.pop.people.len()];
        let day = 2;
        let d = w.contacts(&c, day, &all);
        assert_eq!(d, w.contacts(&c, day, &all));
        let abroad: Vec<Option<u8>> = (0..2_000).map(|p| w.abroad(&c, p, day)).collect();
        let n_abroad = abroad.iter().filter(|a| a.is_some()).count();
        assert_eq!(d.abroad, n_abroad as u64);
        // About travel_rate of the people are abroad (within 5 standard deviations).
        assert!((n_abroad as f64 - 400.0).abs() < 5.0 * (2000.0f64 * 0.16).sqrt(), "{n_abroad}");
        let loc = |p: u32| abroad[p as usize].unwrap_or(w.home[p as usize]);
        let mut across = 0;
        for x in &d.contacts {
            // Everyone meets only people in the same country that day.
            assert_eq!(loc(x.a), loc(x.b), "{x:?}");
            if x.setting == Setting::Household || x.setting == Setting::Work {
                assert!(abroad[x.a as usize].is_none() && abroad[x.b as usize].is_none(), "{x:?}");
            }
            across += usize::from(w.home[x.a as usize] != w.home[x.b as usize]);
        }
        assert!(across > 0, "travellers meet locals");
        // An isolating traveller stays home.
        let p = abroad.iter().position(|a| a.is_some()).expect("someone travels") as u32;
        let mut present = all.clone();
        present[p as usize] = false;
        let d2 = w.contacts(&c, day, &present);
        assert_eq!(d2.abroad, d.abroad - 1);
        assert!(d2.contacts.iter().filter(|x| x.a == p || x.b == p).all(|x| x.setting == Setting::Household));
        // No travel at rate 0.
        let still = SimConfig { travel_rate: 0.0, ..c };
        assert_eq!(w.contacts(&still, day, &all).abroad, 0);
    }
}
