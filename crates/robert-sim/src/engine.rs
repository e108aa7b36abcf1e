//! One run of the simulation: the population lives `days` days; with tracing, every App user's
//! phone is a real [`App`] talking to a real server, and every notification is checked against
//! the ground truth.
//!
//! A day is processed in the order things happen: contacts and infections are drawn for the
//! whole day (they depend only on who isolates, decided at the start of the day), then the day
//! is walked epoch by epoch (15 minutes): the HELLOs of that epoch (senders build them, receivers
//! store them: §5), the declarations of the people diagnosed in it (§6.1), one mixer pass
//! (§6.2), and the ESRs due in it (§7), whose "at risk" answers change behaviour from the next
//! day. After the last day, a final sweep mixes and asks every phone once more.
//!
//! The server is any [`SimServer`]: in-process on the simulated clock, or a live `robert serve`
//! over HTTP on real time ([`crate::remote`]); every time the Apps and the ground truth see goes
//! through the run's [`TimeMap`].

use crate::SimError;
use crate::config::SimConfig;
use crate::epidemic::{DayCounts, Epidemic, SimTime};
use crate::population::{Contact, DAY, Population};
use crate::radio::{self, RadioStats, Reception};
use crate::rng::{Tag, crypto_rng, hash};
use crate::server::{SIM_EPOCH_SEC, SimServer, TimeMap};
use crate::truth::Truth;
use rayon::prelude::*;
use robert_app::{App, AppConfig, AppError, ExposureStatus, ReceiveError, Transport};
use robert_proto::{EpochSchedule, HELLO_LEN, NtpTime};
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Mutex;

/// Epoch length of simulated servers (the default; blocks of 96 epochs are days).
pub const EPOCH_SEC: u32 = SIM_EPOCH_SEC;
/// Epochs in a day.
pub(crate) const SLOTS: u32 = DAY / EPOCH_SEC;

/// What the notifications were worth, against the ground truth.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Accuracy {
    /// Phones the server answered "at risk".
    pub notified: u64,
    /// Phones the scoring rule, on the true contacts, puts at risk at one of their ESR times.
    pub truly_exposed: u64,
    /// Notified and truly exposed.
    pub true_positives: u64,
    /// Notified without being truly exposed (radio noise, or Annex A).
    pub false_positives: u64,
    /// Notified although no true contact of theirs ever declared (must be 0 unless Annex A).
    pub notified_without_true_contact: u64,
    /// true_positives / truly_exposed (1 when nobody was exposed).
    pub recall: f64,
    /// true_positives / notified (1 when nobody was notified).
    pub precision: f64,
    /// Hours from the first exposing HELLO to the notification: median.
    pub time_to_notification_median_h: f64,
    /// … 90th percentile.
    pub time_to_notification_p90_h: f64,
    /// Hours from the declaration that tipped the score to the notification (the protocol's own
    /// latency: the daily ESR): median.
    pub declaration_to_notification_median_h: f64,
}

/// Protocol traffic and outcomes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProtocolStats {
    /// Registrations that succeeded.
    pub registered: u64,
    /// HELLO receptions the contacts allowed, and those lost.
    pub radio: RadioStats,
    /// HELLOs stored in a LocalProximityList.
    pub hellos_stored: u64,
    /// Refused by the App as duplicates (or replays).
    pub hellos_duplicate: u64,
    /// HELLOs not sent: the sender's EBID list had ended (an acknowledged App, see robert-app).
    pub hellos_not_sent: u64,
    /// Declarations uploaded, and their pairs.
    pub declarations: u64,
    /// Pairs uploaded.
    pub pairs_uploaded: u64,
    /// ESRs answered.
    pub esr_answered: u64,
    /// ESRs that failed (transport or App error).
    pub esr_failed: u64,
    /// Server counters at the end (no identifiers): pairs accepted, processed, rejected.
    pub server_pairs_accepted: u64,
    /// Pairs that added an exposure.
    pub server_pairs_processed: u64,
    /// Pairs that failed a §6.2 check.
    pub server_pairs_rejected: u64,
    /// IDs in the server's table at the end.
    pub server_users: u64,
    /// Pairs left in the upload pool at the end (0: every pair was erased, §6.2 step 10).
    pub server_pool_left: u64,
}

/// One run's outputs.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RunResult {
    /// Radio loss of this run.
    pub loss: f64,
    /// Whether the Apps were used.
    pub tracing: bool,
    /// Counts at the end of each day.
    pub daily: Vec<DayCounts>,
    /// Accuracy of notifications (tracing runs).
    pub accuracy: Accuracy,
    /// Protocol counters (tracing runs).
    pub protocol: ProtocolStats,
    /// Total infections (including the initial ones).
    pub total_infected: u64,
    /// Wall-clock seconds (measured, not reproducible).
    #[serde(skip)]
    pub wall_seconds: f64,
}

/// Progress of a run: `(days done, days total)`.
pub type Progress<'a> = &'a (dyn Fn(u32) + Sync);

/// Runs the epidemic without the App (same seed, same contacts where behaviour is the same).
pub fn run_untraced(cfg: &SimConfig, pop: &Population, progress: Progress) -> RunResult {
    run_untraced_with(cfg, pop, |day, present| pop.contacts(cfg, day, present), progress)
}

/// [`run_untraced`] with the day's contacts from `contacts(day, present)` (one country's
/// population, or several countries' with travellers).
pub(crate) fn run_untraced_with(
    cfg: &SimConfig,
    pop: &Population,
    contacts: impl Fn(u32, &[bool]) -> Vec<Contact>,
    progress: Progress,
) -> RunResult {
    let started = Instant::now();
    let has_phone = |p: usize| pop.people[p].phone.is_some();
    let mut epi = Epidemic::new(cfg, pop.people.len(), has_phone);
    let mut daily = Vec::new();
    for day in 0..cfg.days {
        let present = epi.present(day);
        let contacts = contacts(day, &present);
        for (p, t) in epi.transmit(cfg, &contacts) {
            epi.infect(cfg, p, t, has_phone(p));
        }
        daily.push(epi.counts(day));
        progress(day + 1);
    }
    let total_infected = epi.health.iter().filter(|h| h.infected_at.is_some()).count() as u64;
    RunResult {
        loss: cfg.loss,
        tracing: false,
        daily,
        total_infected,
        wall_seconds: started.elapsed().as_secs_f64(),
        ..RunResult::default()
    }
}

/// The phones: one App each, locked one at a time (phases never contend).
pub(crate) type Phones = Arc<Vec<Mutex<App>>>;

pub(crate) fn phone<'a>(phones: &'a Phones, i: u32) -> tokio::sync::MutexGuard<'a, App> {
    phones[i as usize].try_lock().expect("phases are sequential: no phone is locked twice")
}

/// A protocol operation on one phone.
pub(crate) enum Op {
    Register,
    Status,
    Declare { tokens: Vec<String>, cont_start: NtpTime },
}

pub(crate) enum OpResult {
    Registered(Result<(), AppError>),
    Status(Result<ExposureStatus, AppError>),
    Declared(Result<(u64, u64), AppError>),
}

async fn apply<T: Transport + Sync>(
    app: &mut App,
    op: Op,
    t: &T,
    now: NtpTime,
    rng: &mut impl rand_core::CryptoRng,
) -> OpResult {
    match op {
        Op::Register => OpResult::Registered(app.register(t, now, rng).await),
        Op::Status => {
            let r = app.check_status(t, now).await;
            if let Ok(ExposureStatus::AtRisk) = r
                && !app.is_acknowledged()
                && let Err(e) = app.acknowledge(t, now).await
            {
                return OpResult::Status(Err(e));
            }
            OpResult::Status(r)
        }
        Op::Declare { tokens, cont_start } => {
            let r = async {
                let plan = app.start_declaration(tokens, cont_start, now, now, rng)?;
                let mut none = |_: &App| Ok::<(), AppError>(());
                let p = app.upload_due(t, now, &mut none).await?;
                if let Some(e) = p.last_error {
                    return Err(AppError::Transport(e));
                }
                // A refused chunk (spent or unknown token) must not pass for a declaration.
                if p.refused > 0 {
                    return Err(AppError::Transport(robert_app::TransportError::Rejected));
                }
                Ok((plan.pairs as u64, p.accepted_pairs))
            }
            .await;
            OpResult::Declared(r)
        }
    }
}

/// Runs `ops` on their phones concurrently (tasks over chunks); results sorted by phone.
pub(crate) fn run_ops<T>(
    rt: &tokio::runtime::Runtime,
    phones: &Phones,
    transport: &T,
    seed: u64,
    now: NtpTime,
    ops: Vec<(u32, Op)>,
) -> Vec<(u32, OpResult)>
where
    T: Transport + Clone + Send + Sync + 'static,
{
    if ops.is_empty() {
        return Vec::new();
    }
    let tasks = 64.min(ops.len());
    let mut buckets: Vec<Vec<(u32, Op)>> = (0..tasks).map(|_| Vec::new()).collect();
    for (k, op) in ops.into_iter().enumerate() {
        buckets[k % tasks].push(op);
    }
    let mut out = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for bucket in buckets {
            let phones = phones.clone();
            let t = transport.clone();
            set.spawn(async move {
                let mut out = Vec::with_capacity(bucket.len());
                for (i, op) in bucket {
                    let mut rng = crypto_rng(seed, Tag::PhoneCrypto, u64::from(i), u64::from(now.seconds()));
                    let mut app = phones[i as usize].lock().await;
                    out.push((i, apply(&mut app, op, &t, now, &mut rng).await));
                }
                out
            });
        }
        let mut all = Vec::new();
        while let Some(r) = set.join_next().await {
            all.extend(r.unwrap_or_default());
        }
        all
    });
    out.sort_unstable_by_key(|x| x.0);
    out
}

/// The epoch within its day at which phone `i` sends its daily ESR: in the second half of the
/// block of M epochs, so every ESR also refreshes the EBID list (§4) and the App never runs out.
pub(crate) fn esr_slot(seed: u64, i: u32) -> u32 {
    SLOTS / 2 + (hash(seed, Tag::Schedule, u64::from(i), 2, 0, 0) % u64::from(SLOTS / 2)) as u32
}

/// The phones that send their ESR in each epoch slot of a day ([`esr_slot`]), in phone order.
pub(crate) fn esr_schedule(seed: u64, n_phones: usize) -> Vec<Vec<u32>> {
    let mut by_slot: Vec<Vec<u32>> = vec![Vec::new(); SLOTS as usize];
    for i in 0..n_phones as u32 {
        by_slot[esr_slot(seed, i) as usize].push(i);
    }
    by_slot
}

/// Runs the epidemic with tracing: every phone a real App, the server `server`.
pub fn run_traced<V: SimServer>(
    cfg: &SimConfig,
    pop: &Population,
    rt: &tokio::runtime::Runtime,
    server: &V,
    app_config: &AppConfig,
    progress: Progress,
) -> Result<RunResult, SimError> {
    let started = Instant::now();
    let n_phones = pop.phones();
    let has_phone = |p: usize| pop.people[p].phone.is_some();
    let phone_of: Vec<Option<u32>> = pop.people.iter().map(|p| p.phone).collect();
    let mut epi = Epidemic::new(cfg, pop.people.len(), has_phone);
    let mut truth = Truth::new(n_phones);
    let mut stats = ProtocolStats::default();
    let transport = server.transport();
    let schedule = server.schedule();
    let max_contacts = server.max_contacts();
    let phones: Phones = Arc::new((0..n_phones).map(|_| Mutex::new(App::new(app_config.clone()))).collect());

    // Registration (§3.3), at the start.
    let now = server.registration_time(rt)?;
    let ops = (0..n_phones as u32).map(|i| (i, Op::Register)).collect();
    for (_, r) in run_ops(rt, &phones, &transport, cfg.seed, now, ops) {
        match r {
            OpResult::Registered(Ok(())) => stats.registered += 1,
            OpResult::Registered(Err(e)) => return Err(SimError::App(format!("registration: {e}"))),
            _ => {}
        }
    }
    let ebids_until = phones.first().and_then(|p| p.try_lock().ok().and_then(|a| a.ebids_until()));
    let map = server.time_map(rt, ebids_until)?;

    let esr_by_slot = esr_schedule(cfg.seed, n_phones);
    let mut declared = vec![false; pop.people.len()];
    let mut notified_at: Vec<Option<SimTime>> = vec![None; n_phones];
    let mut exposed_at: Vec<Option<SimTime>> = vec![None; n_phones];
    let mut daily = Vec::new();

    for day in 0..cfg.days {
        let day_start = SimTime::from(day) * SimTime::from(DAY);
        server.start_day(rt, &map, day_start)?;
        let present = epi.present(day);
        let contacts = pop.contacts(cfg, day, &present);
        for (p, t) in epi.transmit(cfg, &contacts) {
            epi.infect(cfg, p, t, has_phone(p));
        }
        let mut by_slot = day_receptions(cfg, &phone_of, &contacts, day, &mut stats.radio, &mut truth);

        for slot in 0..SLOTS {
            let slot_start = day_start + SimTime::from(slot * EPOCH_SEC);
            // §5: HELLOs of this epoch.
            let recs = std::mem::take(&mut by_slot[slot as usize]);
            if !recs.is_empty() {
                exchange_hellos(&phones, &map, recs, &mut stats);
            }
            // §6.1: declarations of the people diagnosed in this epoch.
            let t_decl = slot_start + 300;
            let mut declarers = Vec::new();
            for (p, h) in epi.health.iter().enumerate() {
                let Some(d) = h.diagnosed_at else { continue };
                if declared[p] || !h.declares || d >= slot_start + SimTime::from(EPOCH_SEC) {
                    continue;
                }
                declared[p] = true;
                if let Some(ph) = pop.people[p].phone {
                    declarers.push(ph);
                }
            }
            if !declarers.is_empty() {
                // The time the Apps declare at (live: later than t_decl if the simulator lags).
                let now = server.advance(rt, &map, t_decl)?;
                let mut ops = Vec::new();
                for ph in declarers {
                    let pending = phone(&phones, ph).contacts().len();
                    let n_tokens = pending.div_ceil(max_contacts).max(1);
                    let mut rng = crypto_rng(cfg.seed, Tag::PhoneCrypto, u64::from(ph), u64::MAX);
                    let tokens = server.declare_tokens(n_tokens, now, &mut rng)?;
                    let cont_start = t_decl - SimTime::from(cfg.declare_window_days) * SimTime::from(DAY);
                    truth.declare(cfg, ph, cont_start, t_decl, now, &map);
                    ops.push((ph, Op::Declare { tokens, cont_start: map.ntp(cont_start) }));
                }
                for (_, r) in run_ops(rt, &phones, &transport, cfg.seed, now, ops) {
                    if let OpResult::Declared(r) = r {
                        let (pairs, _) = r.map_err(|e| SimError::App(format!("declaration: {e}")))?;
                        stats.declarations += 1;
                        stats.pairs_uploaded += pairs;
                    }
                }
                // §6.2: the mixer processes the pool before the ESRs that depend on it.
                server.process_uploads(rt)?;
            }
            // §7: ESRs due in this epoch.
            let t_esr = slot_start + 450;
            let due = &esr_by_slot[slot as usize];
            esr_round(
                cfg,
                rt,
                server,
                &map,
                &phones,
                &transport,
                &schedule,
                due,
                t_esr,
                &truth,
                &mut epi,
                pop,
                &mut notified_at,
                &mut exposed_at,
                &mut stats,
            )?;
        }
        daily.push(epi.counts(day));
        progress(day + 1);
    }

    // Final sweep: mix what is left, then every phone asks once more.
    let t_end = SimTime::from(cfg.days) * SimTime::from(DAY) + server.final_sweep_after();
    server.advance(rt, &map, t_end)?;
    server.process_uploads(rt)?;
    let all: Vec<u32> = (0..n_phones as u32).collect();
    esr_round(
        cfg,
        rt,
        server,
        &map,
        &phones,
        &transport,
        &schedule,
        &all,
        t_end,
        &truth,
        &mut epi,
        pop,
        &mut notified_at,
        &mut exposed_at,
        &mut stats,
    )?;

    let c = server.counters(rt)?;
    stats.server_pairs_accepted = c.pairs_accepted;
    stats.server_pairs_processed = c.pairs_processed;
    stats.server_pairs_rejected = c.pairs_rejected;
    stats.server_users = c.users;
    stats.server_pool_left = c.pool_left;

    let accuracy = accuracy(&truth, &notified_at, &exposed_at);
    let total_infected = epi.health.iter().filter(|h| h.infected_at.is_some()).count() as u64;
    Ok(RunResult {
        loss: cfg.loss,
        tracing: true,
        daily,
        accuracy,
        protocol: stats,
        total_infected,
        wall_seconds: started.elapsed().as_secs_f64(),
    })
}

/// One epoch's HELLOs: each sender builds the HELLO of each second it was heard (§5.1), each
/// receiver stores what it heard, in time order (§5.2). Phones are independent: both halves run
/// in parallel, and their results do not depend on the order.
/// The HELLO receptions of `day`'s `contacts` between phones, one list per epoch slot of the day;
/// the radio counters and the ground truth's phone-to-phone contacts updated.
pub(crate) fn day_receptions(
    cfg: &SimConfig,
    phone_of: &[Option<u32>],
    contacts: &[Contact],
    day: u32,
    radio_stats: &mut RadioStats,
    truth: &mut Truth,
) -> Vec<Vec<Reception>> {
    let (receptions, pcs, rs) = radio::receptions(cfg, phone_of, contacts);
    radio_stats.possible += rs.possible;
    radio_stats.lost += rs.lost;
    truth.add_contacts(pcs);
    let mut by_slot: Vec<Vec<Reception>> = vec![Vec::new(); SLOTS as usize];
    for r in receptions {
        let slot = ((r.t - day * DAY) / EPOCH_SEC).min(SLOTS - 1);
        by_slot[slot as usize].push(r);
    }
    by_slot
}

fn exchange_hellos(phones: &Phones, map: &TimeMap, recs: Vec<Reception>, stats: &mut ProtocolStats) {
    exchange_hellos_keeping(phones, map, recs, stats, &|_, _| false);
}

/// A HELLO stored by a receiver, as [`exchange_hellos_keeping`] reports it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Kept {
    pub receiver: u32,
    pub sender: u32,
    pub hello: [u8; HELLO_LEN],
}

/// [`exchange_hellos`], also returning the stored HELLOs of the (sender, receiver) links that
/// `keep` selects (the multi-country run keeps those across borders), sorted by receiver.
pub(crate) fn exchange_hellos_keeping(
    phones: &Phones,
    map: &TimeMap,
    mut recs: Vec<Reception>,
    stats: &mut ProtocolStats,
    keep: &(dyn Fn(u32, u32) -> bool + Sync),
) -> Vec<Kept> {
    // Receptions arrive sorted by (sender, t, receiver): one HELLO per (sender, t).
    let mut sends: Vec<(u32, u32)> = recs.iter().map(|r| (r.sender, r.t)).collect();
    sends.dedup();
    let built: Vec<Option<[u8; HELLO_LEN]>> = sends
        .par_chunk_by(|a, b| a.0 == b.0)
        .flat_map_iter(|group| {
            let mut app = phone(phones, group[0].0);
            group.iter().map(|&(_, t)| app.hello_at(map.ntp(SimTime::from(t))).ok()).collect::<Vec<_>>()
        })
        .collect();
    recs.sort_unstable_by_key(|r| (r.receiver, r.t, r.sender));
    let outcome: Vec<(u64, u64, u64, Vec<Kept>)> = recs
        .par_chunk_by(|a, b| a.receiver == b.receiver)
        .map(|group| {
            let mut app = phone(phones, group[0].receiver);
            let (mut stored, mut dup, mut unsent) = (0, 0, 0);
            let mut kept = Vec::new();
            for r in group {
                let Ok(k) = sends.binary_search(&(r.sender, r.t)) else { continue };
                let Some(hello) = built[k] else {
                    unsent += 1;
                    continue;
                };
                match app.on_hello_received(&hello, map.ntp(SimTime::from(r.t)), Some(r.rssi)) {
                    Ok(()) => {
                        stored += 1;
                        if keep(r.sender, r.receiver) {
                            kept.push(Kept { receiver: r.receiver, sender: r.sender, hello });
                        }
                    }
                    Err(ReceiveError::Duplicate) => dup += 1,
                    Err(_) => {}
                }
            }
            (stored, dup, unsent, kept)
        })
        .collect();
    let mut kept = Vec::new();
    for (s, d, u, k) in outcome {
        stats.hellos_stored += s;
        stats.hellos_duplicate += d;
        stats.hellos_not_sent += u;
        kept.extend(k);
    }
    kept
}

/// ESRs of the phones `due` at `t` (§7), the ground truth evaluated at the same time, and the
/// behaviour of the newly notified.
#[allow(clippy::too_many_arguments)]
fn esr_round<V: SimServer>(
    cfg: &SimConfig,
    rt: &tokio::runtime::Runtime,
    server: &V,
    map: &TimeMap,
    phones: &Phones,
    transport: &V::Transport,
    schedule: &EpochSchedule,
    due: &[u32],
    t: SimTime,
    truth: &Truth,
    epi: &mut Epidemic,
    pop: &Population,
    notified_at: &mut [Option<SimTime>],
    exposed_at: &mut [Option<SimTime>],
    stats: &mut ProtocolStats,
) -> Result<(), SimError> {
    let now = server.advance(rt, map, t)?;
    let epoch = schedule.epoch_at(now).ok_or_else(|| SimError::Server("time before the service".into()))?;
    let rule = server.risk();
    for &i in due {
        if exposed_at[i as usize].is_none() && truth.at_risk(i, t, epoch, schedule, cfg.ct_days, &rule) {
            exposed_at[i as usize] = Some(t);
        }
    }
    let ops: Vec<(u32, Op)> =
        due.iter().filter(|&&i| notified_at[i as usize].is_none()).map(|&i| (i, Op::Status)).collect();
    for (i, r) in run_ops(rt, phones, transport, cfg.seed, now, ops) {
        match r {
            OpResult::Status(Ok(ExposureStatus::AtRisk)) => {
                stats.esr_answered += 1;
                notified_at[i as usize] = Some(t);
                epi.on_notified(cfg, pop.phone_owner[i as usize] as usize, t);
            }
            OpResult::Status(Ok(ExposureStatus::NotAtRisk)) => stats.esr_answered += 1,
            OpResult::Status(Ok(ExposureStatus::TooEarly { .. })) => {}
            OpResult::Status(Err(_)) => stats.esr_failed += 1,
            _ => {}
        }
    }
    Ok(())
}

fn accuracy(truth: &Truth, notified_at: &[Option<SimTime>], exposed_at: &[Option<SimTime>]) -> Accuracy {
    accuracy_of(truth, notified_at, exposed_at, 0..notified_at.len())
}

/// [`Accuracy`] over the phones `which` (a country's, in a multi-country run).
pub(crate) fn accuracy_of(
    truth: &Truth,
    notified_at: &[Option<SimTime>],
    exposed_at: &[Option<SimTime>],
    which: impl IntoIterator<Item = usize>,
) -> Accuracy {
    let mut a = Accuracy::default();
    let mut delays = Vec::new();
    let mut latency = Vec::new();
    for i in which {
        let (n, e) = (notified_at[i], exposed_at[i]);
        a.notified += u64::from(n.is_some());
        a.truly_exposed += u64::from(e.is_some());
        if let Some(nt) = n {
            if e.is_some() {
                a.true_positives += 1;
                if let Some(first) = truth.first_exposure(i as u32, nt) {
                    delays.push((nt - SimTime::from(first)) as f64 / 3600.0);
                }
                if let Some(d) = truth.last_declaration(i as u32, nt) {
                    latency.push((nt - d) as f64 / 3600.0);
                }
            } else {
                a.false_positives += 1;
            }
            if !truth.any_entry(i as u32) {
                a.notified_without_true_contact += 1;
            }
        }
    }
    let ratio = |x: u64, y: u64| if y == 0 { 1.0 } else { x as f64 / y as f64 };
    a.recall = ratio(a.true_positives, a.truly_exposed);
    a.precision = ratio(a.true_positives, a.notified);
    a.time_to_notification_median_h = percentile(&mut delays, 0.5);
    a.time_to_notification_p90_h = percentile(&mut delays, 0.9);
    a.declaration_to_notification_median_h = percentile(&mut latency, 0.5);
    a
}

pub(crate) fn percentile(xs: &mut [f64], q: f64) -> f64 {
    xs.sort_by(f64::total_cmp);
    if xs.is_empty() { 0.0 } else { xs[((xs.len() - 1) as f64 * q).round() as usize] }
}
