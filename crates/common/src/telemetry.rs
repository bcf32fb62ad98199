//! The one tracing initialiser every binary calls, and, with `--otlp-endpoint`, the
//! OpenTelemetry export of the request's spans (see [`crate::trace`] for how a trace crosses
//! processes).

mod otlp;

use std::io::IsTerminal;
use tracing::Subscriber;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use otlp::OtlpError;

/// The filter when `RUST_LOG` is unset: ONNX Runtime logs every graph pass and tarpc every call
/// at info.
const DEFAULT_FILTER: &str = "info,ort=warn,tarpc=warn";

/// `--otlp-endpoint`, flattened into the worker's, the coordinator's and `chorus up`'s flags.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct OtlpArgs {
    /// Export distributed traces (OpenTelemetry, OTLP over HTTP/protobuf) to this collector,
    /// e.g. `http://127.0.0.1:4318` (`/v1/traces` is appended to a URL without a path). Off
    /// when unset. `chorus up` passes it to every child.
    #[arg(long, env = "CHORUS_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
}

impl OtlpArgs {
    /// The export settings for a process named `service_name`, when an endpoint is set.
    pub fn otlp(&self, service_name: &'static str) -> Option<Otlp> {
        self.otlp_endpoint.as_ref().map(|endpoint| Otlp {
            endpoint: endpoint.clone(),
            service_name,
        })
    }

    /// The flag again, for a child process.
    pub fn to_flags(&self) -> Vec<String> {
        self.otlp_endpoint
            .iter()
            .map(|url| format!("--otlp-endpoint={url}"))
            .collect()
    }
}

/// Where and as what to export traces.
#[derive(Debug, Clone)]
pub struct Otlp {
    /// The collector's OTLP/HTTP base URL (`http://localhost:4318`); `/v1/traces` is appended
    /// unless the URL already names a path.
    pub endpoint: String,
    /// `service.name` of every span this process exports (`chorus-coordinator`, `chorus-worker`).
    pub service_name: &'static str,
}

/// Keeps the trace exporter of [`init_with`]; [`Telemetry::shutdown`] flushes it. Without an
/// endpoint it holds nothing.
#[derive(Debug, Default)]
#[must_use = "call shutdown() at exit, or the last spans are lost"]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter (bounded by the exporter's own
    /// timeout). Call it outside the async runtime, after the server has stopped: the export
    /// thread's HTTP client must not be dropped inside the runtime.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "cannot flush the last spans to the OTLP endpoint");
        }
    }
}

/// Installs a global subscriber: human-readable lines by default, JSON lines when `json` is set.
/// The filter comes from `RUST_LOG` (default `info,ort=warn,tarpc=warn`). Calling it twice is
/// harmless.
pub fn init(json: bool) {
    let _ = init_with(json, None);
}

/// [`init`], and with `otlp` an OpenTelemetry layer exporting spans over OTLP/HTTP. Fails only
/// on a bad endpoint URL, before anything is installed.
///
/// The trace layer has its own filter: the log filter plus the spans made for traces only (the
/// request span, [`crate::trace::TARGET`]), so that turning traces on does not change what is
/// logged, and with traces off those spans stay disabled and cost a callsite check.
pub fn init_with(json: bool, otlp: Option<&Otlp>) -> Result<Telemetry, OtlpError> {
    let directives = std::env::var("RUST_LOG").unwrap_or_else(|_| DEFAULT_FILTER.to_string());
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let Some(otlp) = otlp else {
        // One global filter, as before traces existed: nothing changes with them off.
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(fmt_layer(json))
            .try_init();
        return Ok(Telemetry::default());
    };
    let (provider, layer) = otlp::layer(otlp, &directives)?;
    if tracing_subscriber::registry()
        .with(fmt_layer(json).with_filter(filter))
        .with(layer)
        .try_init()
        .is_ok()
    {
        crate::trace::enable();
    }
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// The log lines on stderr, text or JSON.
fn fmt_layer<S>(json: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    // Colour only for a person at a terminal: escape codes in `docker logs`, journald or a file
    // defeat grep and log shippers.
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    }
}
