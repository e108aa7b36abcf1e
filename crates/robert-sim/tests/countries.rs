//! Two federated countries (France 33, Germany 49), each its own real server with its own keys and
//! store, forwarding over loopback HTTP with the servers' federation code; people travel between
//! them. Checks the multi-country invariants (crate docs, `countries` module). Debug build.

use robert_sim::config::Country;
use robert_sim::{SimConfig, SimResults, simulate};

fn two_countries() -> SimConfig {
    SimConfig {
        seed: 11,
        population: 600,
        days: 9,
        initial_infected: 0.05,
        loss: 0.0,
        rssi_noise_db: 0.0,
        countries: Country::parse_list("FR,DE").expect("countries"),
        travel_rate: 0.25,
        trip_days: 3,
        loss_sweep: vec![],
        compare_without_tracing: false,
        attacks: false,
        ..SimConfig::default()
    }
}

fn run(cfg: &SimConfig) -> SimResults {
    simulate(cfg, &|_, _, _| {}).expect("simulation runs")
}

#[test]
fn perfect_radio_notifies_every_exposed_phone_in_every_country() {
    let r = run(&two_countries());
    eprintln!("{}", r.summary_table());
    let c = r.countries.as_ref().expect("per-country report");
    let x = &c.cross_border;
    // Not vacuous: people travelled, met across borders, and some were exposed that way.
    assert!(x.person_days_abroad > 0 && x.contacts > 0 && x.hellos_stored > 0, "{x:?}");
    assert!(x.pairs_uploaded > 0, "{x:?}");
    assert!(x.exposed > 0, "{x:?}");
    // Recall and precision 100 % in each country, travellers exposed abroad included.
    for k in &c.countries {
        let a = &k.accuracy;
        assert!(a.truly_exposed > 0, "{}: {a:?}", k.name);
        assert_eq!(a.true_positives, a.truly_exposed, "{}: {a:?}", k.name);
        assert_eq!(a.notified, a.truly_exposed, "{}: {a:?}", k.name);
        assert_eq!(a.notified_without_true_contact, 0, "{}", k.name);
    }
    assert_eq!(x.exposed_notified, x.exposed, "{x:?}");
    assert_eq!(x.exposed_only_abroad_notified, x.exposed_only_abroad, "{x:?}");
    assert_eq!(r.traced.accuracy.notified, r.traced.accuracy.truly_exposed);
}

#[test]
fn forwarded_pairs_are_the_cross_border_pairs_and_each_arrives_once() {
    let r = run(&two_countries());
    let c = r.countries.as_ref().expect("per-country report");
    let x = &c.cross_border;
    // §6.2 step 3: exactly the uploaded HELLOs of foreign phones are forwarded (the simulator
    // counts them from who sent what, the servers from the ECCs), every one is acknowledged and
    // received once, nothing is dropped or left behind.
    assert_eq!(x.pairs_forwarded, x.pairs_uploaded, "{x:?}");
    assert_eq!(x.pairs_acknowledged, x.pairs_forwarded, "{x:?}");
    assert_eq!(x.pairs_received, x.pairs_forwarded, "{x:?}");
    assert!(x.batches > 0);
    let (fr, de) = (&c.countries[0], &c.countries[1]);
    assert_eq!((fr.name.as_str(), fr.code, de.name.as_str(), de.code), ("FR", 33, "DE", 49));
    for (k, other) in [(fr, de), (de, fr)] {
        assert_eq!(k.server.pairs_forwarded, k.pairs_uploaded_cross_border, "{}", k.name);
        assert_eq!(k.peers.len(), 1);
        let (out, back) = (&k.peers[0], &other.peers[0]);
        assert_eq!(out.peer, other.name);
        assert_eq!(out.pairs_sent, back.pairs_received, "{} → {}", k.name, other.name);
        assert_eq!(out.batches_acknowledged, back.batches_received);
        assert_eq!((out.batches_retried, out.batches_rejected, back.batches_duplicate), (0, 0, 0));
        assert_eq!(k.server.pairs_dropped_foreign, 0);
        assert_eq!(k.server.pairs_rejected, 0);
        assert_eq!((k.server.pool_left, k.server.outbox_left), (0, 0));
        // Local uploads plus what the peer forwarded, all processed here.
        assert_eq!(k.server.pairs_accepted, k.pairs_uploaded + out.pairs_received, "{}", k.name);
    }
}

#[test]
fn a_phone_is_known_to_and_notified_by_its_home_server_only() {
    let r = run(&two_countries());
    let c = r.countries.as_ref().expect("per-country report");
    assert_eq!(c.countries.iter().map(|k| k.phones).sum::<u64>(), r.population.phones);
    for k in &c.countries {
        // Every server registered exactly its own country's phones (travellers never register
        // abroad), and its "at risk" answers are exactly its own phones' notifications: a
        // traveller exposed abroad was notified at home, with pairs that came by federation.
        assert_eq!(k.server.users, k.phones, "{}", k.name);
        assert_eq!(k.server.notifications, k.accuracy.notified, "{}", k.name);
    }
    assert!(c.cross_border.exposed_only_abroad_notified > 0, "{:?}", c.cross_border);
}

#[test]
fn same_seed_same_results_across_countries() {
    let cfg = SimConfig { loss: 0.2, rssi_noise_db: 3.0, days: 5, ..two_countries() };
    let (mut a, mut b) = (run(&cfg), run(&cfg));
    // Wall-clock time is the one machine-dependent field.
    a.traced.wall_seconds = 0.0;
    b.traced.wall_seconds = 0.0;
    assert_eq!(a.traced, b.traced);
    assert_eq!(a.countries, b.countries);
    assert!(a.countries.as_ref().is_some_and(|c| c.cross_border.pairs_uploaded > 0));
}
