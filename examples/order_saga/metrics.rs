//! `--metrics ADDR`: the runtime's metrics as Prometheus text on `http://ADDR/metrics`.
//!
//! The application picks the exporter; here, `metrics-exporter-prometheus`'s recorder,
//! rendered by an axum route. It is installed before the runtime is built: the runtime
//! registers its metrics then.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

type Failure = Box<dyn std::error::Error>;

/// Installs the Prometheus recorder as the process's recorder, with histogram buckets (so
/// that Prometheus can aggregate across replicas) from a millisecond to two minutes.
pub fn install() -> Result<PrometheusHandle, Failure> {
    const SECONDS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0, 120.0];
    const BATCH: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 64.0, 256.0, 1024.0];
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS)?
        .set_buckets_for_metric(Matcher::Full("sagaflow_commit_batch_size".into()), &BATCH)?;
    Ok(builder.install_recorder()?)
}

/// Serves `/metrics` on `addr` until the process ends; returns the address it is bound to.
pub async fn serve(handle: PrometheusHandle, addr: SocketAddr) -> Result<SocketAddr, Failure> {
    // The recorder's periodic housekeeping (it drains histogram samples into their buckets),
    // which `install_recorder` leaves to the application.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            ticks.tick().await;
            upkeep.run_upkeep();
        }
    });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new().route("/metrics", get(move || std::future::ready(handle.render())));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("the metrics endpoint stopped: {e}");
        }
    });
    println!("metrics:        http://{bound}/metrics");
    Ok(bound)
}
