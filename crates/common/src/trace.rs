//! W3C trace context (`traceparent`, `tracestate`) across processes: adopting a client's context
//! as the parent of the request span, and writing the current span's context into a worker call.
//!
//! Everything here is a no-op until [`crate::telemetry::init_with`] has installed the OTLP
//! layer: with traces off, adopting costs one atomic load and a call carries no context, so
//! nothing is parsed, formatted or allocated per request.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Target of the spans made for traces only (member calls and attempts, the worker's call,
/// queue wait and run): debug level, enabled for the trace layer alone, so they are never
/// logged and cost a callsite check with traces off.
pub const TARGET: &str = "chorus_trace";
/// Target of the coordinator's request span (debug; `RUST_LOG=chorus_request=debug` logs it).
pub const REQUEST_TARGET: &str = "chorus_request";
/// The W3C header (and gRPC metadata) names.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Called once the OTLP layer is installed.
pub(crate) fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether spans are exported (`--otlp-endpoint`).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A client's trace context, as its front door found it (header or metadata values).
#[derive(Debug, Clone, Copy, Default)]
pub struct Incoming<'a> {
    pub traceparent: Option<&'a str>,
    pub tracestate: Option<&'a str>,
}

impl Incoming<'_> {
    /// Makes `span` (not yet entered) a child of the client's span. A missing or malformed
    /// `traceparent` is ignored: the span starts a trace of its own, and the request is served
    /// as usual.
    pub fn adopt(&self, span: &Span) {
        if !enabled() || self.traceparent.is_none() || span.is_disabled() {
            return;
        }
        let parent = TraceContextPropagator::new().extract(self);
        if parent.span().span_context().is_remote() {
            let _ = span.set_parent(parent);
        }
    }
}

impl Extractor for Incoming<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => self.traceparent,
            TRACESTATE => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

/// Makes `span` a child of a context received over RPC ([`current`] on the other side).
pub fn adopt_remote(span: &Span, traceparent: Option<&str>) {
    Incoming {
        traceparent,
        tracestate: None,
    }
    .adopt(span);
}

/// The `traceparent` of the current span, to carry in a call to another process; `None` with
/// traces off or outside any exported span.
pub fn current() -> Option<String> {
    if !enabled() {
        return None;
    }
    let span = Span::current();
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_extracted_and_a_malformed_one_is_not() {
        let valid = Incoming {
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            tracestate: Some("vendor=1"),
        };
        let cx = TraceContextPropagator::new().extract(&valid);
        let span = cx.span();
        let sc = span.span_context();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-zz-01",
        ] {
            let incoming = Incoming {
                traceparent: Some(bad),
                tracestate: None,
            };
            let cx = TraceContextPropagator::new().extract(&incoming);
            assert!(!cx.span().span_context().is_valid(), "{bad}");
        }
    }

    #[test]
    fn off_means_no_context() {
        // No OTLP layer in unit tests: nothing to carry.
        assert_eq!(current(), None);
    }
}
