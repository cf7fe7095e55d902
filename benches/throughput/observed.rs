//! The "traced and metered" rows: the process's tracing goes to OpenTelemetry (a batch
//! processor and an exporter that discards, so the cost measured is sagaflow's and the SDK's,
//! not a collector's) and its metrics to a Prometheus recorder that is never scraped.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;

#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        drop(batch);
        Ok(())
    }
}

/// Installs the process's subscriber (errors to stderr, spans to OpenTelemetry) and recorder.
pub fn install() {
    let provider = SdkTracerProvider::builder().with_batch_exporter(Discard).build();
    // As docs/observability.md advises for production: no per-span source location, thread
    // or busy/idle timing attributes, no context activation on every poll, and only warnings
    // and errors as span events.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("sagaflow-bench"))
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_target(false)
        .with_context_activation(false)
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
            if meta.is_span() { *meta.level() <= tracing::Level::INFO } else { *meta.level() <= tracing::Level::WARN }
        }));
    let errors = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "error".into()));
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(otel).with(errors))
        .expect("no subscriber installed yet");
    // Kept for the process's life: dropping the provider would shut the exporter down.
    std::mem::forget(provider);
    let handle =
        metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder().expect("no recorder installed yet");
    // Its housekeeping, as an application that serves it runs it (see the order example).
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(5));
            handle.run_upkeep();
        }
    });
}
