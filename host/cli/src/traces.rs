//! `workhost serve`'s trace export: with the `otlp` feature, the library's
//! spans go to the OTLP/HTTP collector that `OTEL_EXPORTER_OTLP_ENDPOINT`
//! names (docs/http-api.md, "Traces"). Without the feature the variables
//! are ignored.

/// With `OTEL_EXPORTER_OTLP_ENDPOINT` set (and `OTEL_SDK_DISABLED` not
/// `true`): installs the exporter, service `OTEL_SERVICE_NAME` or
/// `workhost`, spans chosen by `WORKHOST_TRACE_FILTER` (default `info`).
/// The guard exports what is still batched when dropped.
#[cfg(feature = "otlp")]
pub fn install_from_env() -> anyhow::Result<Option<workhost_otlp::OtlpGuard>> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let Some(endpoint) = var("OTEL_EXPORTER_OTLP_ENDPOINT") else {
        return Ok(None);
    };
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    let service = var("OTEL_SERVICE_NAME").unwrap_or_else(|| "workhost".into());
    let filter = var("WORKHOST_TRACE_FILTER").unwrap_or_else(|| "info".into());
    let guard = workhost_otlp::install(&endpoint, &service, &filter)?;
    eprintln!(
        "workhost: exporting traces to {}/v1/traces",
        endpoint.trim_end_matches('/')
    );
    Ok(Some(guard))
}

/// What `serve` keeps when built without the `otlp` feature: nothing.
#[cfg(not(feature = "otlp"))]
pub struct NoExport;

/// Built without the `otlp` feature: nothing to install.
#[cfg(not(feature = "otlp"))]
#[allow(clippy::unnecessary_wraps)] // the same signature as with the feature
pub fn install_from_env() -> anyhow::Result<NoExport> {
    Ok(NoExport)
}
