//! Background jobs, owned and stoppable (STYLE §4): the mixer (§6.1–6.2) and the per-epoch upkeep
//! (day keys ahead of need, expiry of LEE_A, used tokens and old day keys: footnotes 5 and 17; the
//! audit log's token counts), and
//! one federation delivery loop per configured peer (§8).

use crate::service::Service;
use crate::storage::Storage;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Starts the jobs; each stops when `stop` turns true.
pub fn spawn<S: Storage>(service: Arc<Service<S>>, stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    let mut jobs = Vec::new();
    for peer in service.federation().peers() {
        jobs.push(tokio::spawn(crate::federation::delivery_loop(service.clone(), peer, stop.clone())));
    }
    jobs.push(tokio::spawn(mixer(service.clone(), stop.clone())));
    jobs.push(tokio::spawn(upkeep(service, stop)));
    jobs
}

async fn mixer<S: Storage>(service: Arc<Service<S>>, mut stop: watch::Receiver<bool>) {
    loop {
        if let Err(e) = service.mix_once(false).await {
            tracing::error!(error = %e, "mixer pass failed");
        }
        tokio::select! {
            _ = service.mixer_wakeup().notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn upkeep<S: Storage>(service: Arc<Service<S>>, mut stop: watch::Receiver<bool>) {
    let period = Duration::from_secs(u64::from(service.schedule().epoch_duration_sec()).clamp(1, 60));
    loop {
        if let Err(e) = service.prepare_day_keys().await {
            tracing::error!(error = %e, "preparing day keys failed");
        }
        match service.expire().await {
            Ok(s) if s.exposures + s.tokens + s.server_keys > 0 => tracing::info!(
                exposures = s.exposures,
                tokens = s.tokens,
                day_keys = s.server_keys,
                "expired old data"
            ),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "expiry failed"),
        }
        service.audit_token_counts(); // Annex B: counts per epoch, never one line per token

        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.changed() => return,
        }
    }
}
