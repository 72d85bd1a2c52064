//! Export workhost's `tracing` spans to an OpenTelemetry collector over
//! OTLP/HTTP with protobuf bodies (docs/http-api.md, "Traces").
//!
//! The library (`workhost`) opens spans (`enqueue`, `claim`, `run`) for any
//! subscriber; this crate is one such subscriber, kept out of the library so
//! that an embedding program that does not export traces compiles none of
//! the OpenTelemetry crates. [`install`] sets a global subscriber whose only
//! layer turns spans into OpenTelemetry spans, batches them and POSTs them to
//! `<endpoint>/v1/traces`; the returned [`OtlpGuard`] flushes what is still
//! batched when it is dropped.
//!
//! The exports run on a small Tokio runtime of their own (one thread), so
//! [`install`] works from synchronous and asynchronous code alike, and the
//! exports go on however the program's own runtime is built or busy.
//! Plain `http://` endpoints only: there is no TLS client in this crate; a
//! collector on the same machine or network (the usual sidecar) is the
//! expected receiver.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;

/// How long one export request may take before it is abandoned.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long dropping the guard waits for the last export.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Targets never exported whatever the filter says: the exporter's own HTTP
/// client and the OpenTelemetry crates, whose spans would be exported by the
/// very requests they describe.
const QUIET_TARGETS: [&str; 5] = ["hyper", "hyper_util", "h2", "opentelemetry", "opentelemetry_sdk"];

/// Why [`install`] failed. Nothing is installed when it fails.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// The endpoint is not an `http://` URL.
    #[error("OTLP endpoint {0:?}: expected an http:// URL (TLS is not supported; export to a local collector)")]
    Endpoint(String),
    /// The filter is not a list of `level` or `target=level` directives.
    #[error("trace filter {filter:?}: {message}")]
    Filter {
        /// The filter as given.
        filter: String,
        /// What is wrong with it.
        message: String,
    },
    /// The exporter or its runtime could not be built.
    #[error("OTLP exporter: {0}")]
    Exporter(String),
    /// This process already has a global `tracing` subscriber (one can be
    /// set only once per process).
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Keeps the exporter alive. Dropping it exports the spans still batched
/// (waiting for the collector up to 5 s) and stops the exporter's threads;
/// spans that end afterwards are not exported. Drop it at the end of the
/// program's work, once runs have finished.
#[must_use = "dropping the guard stops the export at once"]
pub struct OtlpGuard {
    provider: SdkTracerProvider,
    /// Dropped after `provider` is shut down (fields drop after `drop`).
    _runtime: ExportRuntime,
}

impl std::fmt::Debug for OtlpGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpGuard").finish_non_exhaustive()
    }
}

impl Drop for OtlpGuard {
    fn drop(&mut self) {
        // Flushes the batch through the exporter, whose requests run on the
        // export runtime, which therefore stops only after this returns.
        let _ = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
    }
}

/// Installs a global `tracing` subscriber that exports spans to the OTLP/HTTP
/// collector at `endpoint` (its base URL, e.g. `http://127.0.0.1:4318`; spans
/// go to `<endpoint>/v1/traces` as `application/x-protobuf`), naming the
/// process `service_name` (the `service.name` resource attribute).
///
/// `filter` chooses the spans, as a comma-separated list of a default level
/// and `target=level` directives: `info` exports the library's `enqueue` and
/// `run` spans; `debug` or `info,workhost=debug` adds `claim`. The span's
/// fields become attributes (`task`, `handler`, `attempt`).
///
/// Spans are batched (the SDK's batch processor, on a thread of its own) and
/// exported every few seconds and when the returned guard is dropped. A
/// collector that is down or refuses the spans does not stop the program:
/// those spans are lost. The `OTEL_EXPORTER_OTLP_HEADERS` environment
/// variable adds request headers (e.g. an authorization token), as the
/// OpenTelemetry specification says.
///
/// # Errors
///
/// [`OtlpError`]: a bad endpoint or filter, an exporter that could not be
/// built, or a process that already has a global subscriber.
pub fn install(endpoint: &str, service_name: &str, filter: &str) -> Result<OtlpGuard, OtlpError> {
    let base = endpoint.trim_end_matches('/');
    if !base.starts_with("http://") || base.len() == "http://".len() {
        return Err(OtlpError::Endpoint(endpoint.to_string()));
    }
    let mut targets: Targets =
        filter
            .parse()
            .map_err(|e: tracing_subscriber::filter::ParseError| OtlpError::Filter {
                filter: filter.to_string(),
                message: e.to_string(),
            })?;
    for quiet in QUIET_TARGETS {
        targets = targets.with_target(quiet, tracing::level_filters::LevelFilter::OFF);
    }

    let runtime = ExportRuntime::start()?;
    let client = OnRuntime {
        client: HyperClient::with_default_connector(EXPORT_TIMEOUT, None),
        runtime: runtime.handle.clone(),
    };
    // On an error, `runtime` is dropped, which stops its thread.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{base}/v1/traces"))
        .with_timeout(EXPORT_TIMEOUT)
        .with_http_client(client)
        .build()
        .map_err(|e| OtlpError::Exporter(e.to_string()))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service_name.to_string()).build())
        .build();
    let guard = OtlpGuard {
        provider: provider.clone(),
        _runtime: runtime,
    };
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("workhost"))
        .with_filter(targets);
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
        .map_err(|_| OtlpError::AlreadyInstalled)?;
    Ok(guard)
}

/// The exporter's Tokio runtime, on a thread of its own; dropping it stops
/// the runtime (cancelling any request still under way) and joins the
/// thread.
struct ExportRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ExportRuntime {
    fn start() -> Result<ExportRuntime, OtlpError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| OtlpError::Exporter(format!("cannot start its runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("workhost-otlp".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .map_err(|e| OtlpError::Exporter(format!("cannot start its thread: {e}")))?;
        Ok(ExportRuntime {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for ExportRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The hyper client, run on the exporter's runtime: the SDK's batch
/// processor drives exports with a plain executor on its own thread, where
/// hyper (which needs a Tokio reactor) cannot run by itself.
#[derive(Debug)]
struct OnRuntime {
    client: HyperClient,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        self.runtime
            .spawn(async move { client.send_bytes(request).await })
            .await
            .map_err(|e| Box::new(e) as HttpError)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Only refusals here: a successful `install` would set this test
    // process's global subscriber (tests/all/otlp.rs covers the export).

    #[test]
    fn endpoints_other_than_plain_http_are_refused() {
        for endpoint in ["https://collector:4318", "127.0.0.1:4318", "http://", ""] {
            let e = install(endpoint, "workhost", "info").unwrap_err();
            assert!(matches!(e, OtlpError::Endpoint(_)), "{endpoint:?}: {e}");
        }
    }

    #[test]
    fn a_bad_filter_is_refused_naming_it() {
        let e = install("http://127.0.0.1:4318", "workhost", "info,workhost=loud").unwrap_err();
        assert!(matches!(e, OtlpError::Filter { .. }), "{e}");
        assert!(e.to_string().contains("info,workhost=loud"), "{e}");
    }
}
