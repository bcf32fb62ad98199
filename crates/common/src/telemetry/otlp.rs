//! The OTLP/HTTP (protobuf) span exporter and the `tracing` layer that feeds it.
//!
//! Spans are batched and exported on the SDK's own thread, so a request never waits on the
//! collector; a collector that is down or slow costs dropped spans (the batch queue is bounded),
//! never latency.

use super::Otlp;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::time::Duration;
use tracing::Subscriber;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer};

/// How long one export may take before the batch is given up.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Spans never exported, whatever `RUST_LOG` says: the exporter's own HTTP client and the SDK's
/// diagnostics, which would otherwise feed spans about exporting spans back into the exporter.
const NEVER_TRACED: &str = "opentelemetry=off,opentelemetry_sdk=off,opentelemetry_otlp=off,reqwest=off,hyper=off,hyper_util=off,h2=off";

/// Why `--otlp-endpoint` was refused.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("--otlp-endpoint {endpoint}: {reason}")]
    Endpoint { endpoint: String, reason: String },
}

/// The exporter's provider (kept for the flush at exit) and the layer to install.
pub(super) fn layer<S>(
    otlp: &Otlp,
    log_directives: &str,
) -> Result<(SdkTracerProvider, impl Layer<S> + Send + Sync), OtlpError>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    let endpoint = traces_url(&otlp.endpoint)?;
    let refused = |reason: String| OtlpError::Endpoint {
        endpoint: otlp.endpoint.clone(),
        reason,
    };
    let client = reqwest::blocking::Client::builder()
        .timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| refused(e.to_string()))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .with_http_client(BlockingClient(client))
        .build()
        .map_err(|e| refused(e.to_string()))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(otlp.service_name)
                .build(),
        )
        .build();
    let tracer = provider.tracer("chorus");
    // The log filter, plus the spans made for traces only (see `telemetry::init_with`).
    let filter = EnvFilter::try_new(format!(
        "{log_directives},{}=debug,{}=debug,{NEVER_TRACED}",
        crate::trace::REQUEST_TARGET,
        crate::trace::TARGET
    ))
    .map_err(|e| refused(format!("RUST_LOG: {e}")))?;
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(filter);
    Ok((provider, layer))
}

/// `base` with `/v1/traces` appended when it names no path (the OTLP convention for a base URL
/// such as `OTEL_EXPORTER_OTLP_ENDPOINT`); a URL with a path is used as given.
fn traces_url(base: &str) -> Result<String, OtlpError> {
    let refused = |reason: String| OtlpError::Endpoint {
        endpoint: base.to_string(),
        reason,
    };
    let url = reqwest::Url::parse(base).map_err(|e| refused(e.to_string()))?;
    // The exporter's client has no TLS (the workspace's reqwest is built without it): an
    // https:// collector is refused here rather than failing every export.
    if url.scheme() != "http" || !url.has_host() {
        return Err(refused(
            "expected an http:// URL (no TLS to the collector: send to a local collector or agent)"
                .into(),
        ));
    }
    Ok(match url.path() {
        "" | "/" => format!("{}/v1/traces", base.trim_end_matches('/')),
        _ => base.to_string(),
    })
}

/// The workspace's reqwest 0.12 blocking client as the exporter's HTTP client: the batch
/// processor exports on its own thread, off the async runtime, where blocking is fine.
#[derive(Debug)]
struct BlockingClient(reqwest::blocking::Client);

#[async_trait::async_trait]
impl HttpClient for BlockingClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let response = self
            .0
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body.to_vec())
            .send()?
            .error_for_status()?;
        let status = response.status();
        let headers = response.headers().clone();
        let mut answer = Response::builder().status(status).body(response.bytes()?)?;
        *answer.headers_mut() = headers;
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_url_gets_the_traces_path() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/").unwrap(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c.example/otlp/v1/traces").unwrap(),
            "http://c.example/otlp/v1/traces"
        );
    }

    #[test]
    fn a_bad_url_is_refused() {
        assert!(traces_url("collector:4318").is_err());
        assert!(traces_url("not a url").is_err());
        assert!(traces_url("https://c.example:4318").is_err());
    }
}
