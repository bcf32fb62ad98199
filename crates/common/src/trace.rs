//! W3C trace context (`traceparent`, `tracestate`) across processes: adopting a client's context
//! as the parent of the request span, and writing the current span's context into a worker call.
//!
//! Everything here is a no-op until [`crate::telemetry::init_with`] has installed the OTLP
//! layer: with traces off, adopting costs one atomic load and a call carries no context, so
//! nothing is parsed, formatted or allocated per request.
//!
//! A client's `tracestate` is checked against the W3C grammar and bounds ([`tracestate`]): one
//! that breaks them is dropped, never an error for the request, and the `traceparent` next to it
//! still counts. A kept one is the trace state of every span of the request, in the coordinator
//! and (carried in [`TraceContext`]) in the workers, and is exported as the spans' `trace_state`.

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use serde::{Deserialize, Serialize};
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
/// W3C Trace Context: "There can be a maximum of 32 list-members in a list."
pub const MAX_TRACESTATE_MEMBERS: usize = 32;
/// The length W3C asks every participant to propagate; a longer `tracestate` is dropped whole
/// rather than truncated (which list members a vendor needs is not ours to guess).
pub const MAX_TRACESTATE_LEN: usize = 512;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Called once the OTLP layer is installed.
pub(crate) fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether spans are exported (`--otlp-endpoint`).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The trace context a coordinator sends with each member call attempt
/// ([`crate::rpc::InferCall::trace_context`]), or keeps for a stream's messages: the
/// `traceparent` of the parent span and the request's `tracestate`, already checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    pub traceparent: String,
    /// `None` when the client sent none, or one that was dropped.
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// The context as a front door would have read it, to adopt.
    pub fn incoming(&self) -> Incoming<'_> {
        Incoming {
            traceparent: Some(&self.traceparent),
            tracestate: self.tracestate.as_deref(),
        }
    }
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
    /// as usual. A malformed `tracestate` is ignored alone.
    pub fn adopt(&self, span: &Span) {
        if !enabled() || self.traceparent.is_none() || span.is_disabled() {
            return;
        }
        if let Some(parent) = self.remote_parent() {
            let _ = span.set_parent(parent);
        }
    }

    /// The client's span as a remote parent, with the checked `tracestate` (the propagator's
    /// own parsing of it knows neither the length nor the member bound, nor OWS).
    fn remote_parent(&self) -> Option<Context> {
        let parent_only = Incoming {
            traceparent: self.traceparent,
            tracestate: None,
        };
        let cx = TraceContextPropagator::new().extract(&parent_only);
        let parent = cx.span().span_context().clone();
        if !parent.is_remote() {
            return None;
        }
        let state = self.tracestate.and_then(tracestate).unwrap_or_default();
        let parent = SpanContext::new(
            parent.trace_id(),
            parent.span_id(),
            parent.trace_flags(),
            true,
            state,
        );
        Some(Context::new().with_remote_span_context(parent))
    }

    /// An owned copy to keep past the request (a stream's metadata, for each of its messages);
    /// `None` without a `traceparent` (nothing to adopt then).
    pub fn to_owned(&self) -> Option<TraceContext> {
        Some(TraceContext {
            traceparent: self.traceparent?.to_string(),
            // Kept only when valid (and so at most 512 characters), in its canonical form: a
            // stream holds it for as long as it lives.
            tracestate: self
                .tracestate
                .and_then(tracestate)
                .map(|state| state.header())
                .filter(|header| !header.is_empty()),
        })
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

/// A `tracestate` value checked against W3C Trace Context (level 1): at most
/// [`MAX_TRACESTATE_LEN`] characters and [`MAX_TRACESTATE_MEMBERS`] list members, each
/// `key=value` with a valid, unique key and a non-empty value of printable ASCII without `,` or
/// `=`; blanks around members and empty members are allowed (and dropped).
/// `None` when any of that fails: the whole value is dropped, as the spec asks of a vendor that
/// cannot parse it.
pub fn tracestate(raw: &str) -> Option<TraceState> {
    if raw.len() > MAX_TRACESTATE_LEN {
        return None;
    }
    let mut members: Vec<(&str, &str)> = Vec::new();
    for member in raw.split(',') {
        let member = member.trim_matches([' ', '\t']);
        if member.is_empty() {
            continue;
        }
        let (key, value) = member.split_once('=')?;
        // Blanks at the end were trimmed as OWS, so a value cannot end in one here.
        let value_ok = !value.is_empty()
            && value
                .bytes()
                .all(|b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=');
        if !value_ok || members.iter().any(|(k, _)| *k == key) {
            return None;
        }
        members.push((key, value));
        if members.len() > MAX_TRACESTATE_MEMBERS {
            return None;
        }
    }
    // The key grammar (simple and `tenant@system` keys) is the SDK's own check.
    TraceState::from_key_value(members).ok()
}

/// Makes `span` a child of a context received over RPC ([`current`] on the other side).
pub fn adopt_remote(span: &Span, context: Option<&TraceContext>) {
    if let Some(context) = context {
        context.incoming().adopt(span);
    }
}

/// The context of the current span (its `traceparent`, and the request's `tracestate`), to
/// carry in a call to another process; `None` with traces off or outside any exported span.
pub fn current() -> Option<TraceContext> {
    if !enabled() {
        return None;
    }
    let span = Span::current();
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if !span_context.is_valid() {
        return None;
    }
    let state = span_context.trace_state().header();
    Some(TraceContext {
        traceparent: format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        ),
        tracestate: (!state.is_empty()).then_some(state),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_extracted_and_a_malformed_one_is_not() {
        let valid = Incoming {
            traceparent: Some(PARENT),
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
    fn a_valid_tracestate_is_kept_in_order_with_blanks_and_empty_members_dropped() {
        let state = tracestate(" congo=t61rcWkgMzE,\t,rojo=00f067aa0ba902b7 , a@b-c=x y").unwrap();
        assert_eq!(
            state.header(),
            "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7,a@b-c=x y"
        );
        assert_eq!(tracestate("").unwrap().header(), "");
        let most: Vec<String> = (0..MAX_TRACESTATE_MEMBERS)
            .map(|i| format!("k{i}=v"))
            .collect();
        assert!(tracestate(&most.join(",")).is_some());
    }

    #[test]
    fn a_tracestate_breaking_the_grammar_or_the_bounds_is_dropped() {
        let too_many: Vec<String> = (0..=MAX_TRACESTATE_MEMBERS)
            .map(|i| format!("k{i}=v"))
            .collect();
        let too_long = format!("k={}", "v".repeat(MAX_TRACESTATE_LEN));
        for bad in [
            "no-equals",
            "Upper=1",
            "k=",
            // The trailing blank is OWS, so the value is empty.
            "k= ",
            "k=a=b",
            "k=1,k=2",
            "k=\u{e9}",
            "k=\x01",
            "1@2@3=x",
            too_many.join(",").as_str(),
            too_long.as_str(),
        ] {
            assert!(tracestate(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn the_parent_carries_the_checked_tracestate_and_a_bad_one_alone_is_dropped() {
        let parent = |state: Option<&str>| {
            let cx = Incoming {
                traceparent: Some(PARENT),
                tracestate: state,
            }
            .remote_parent()
            .expect("a valid traceparent");
            cx.span().span_context().trace_state().header()
        };
        assert_eq!(parent(Some("vendor=1, other=2")), "vendor=1,other=2");
        assert_eq!(parent(Some("Vendor=1")), "");
        assert_eq!(parent(None), "");
        let no_parent = Incoming {
            traceparent: Some("garbage"),
            tracestate: Some("vendor=1"),
        };
        assert!(no_parent.remote_parent().is_none());
    }

    #[test]
    fn an_owned_context_reads_back_as_it_came() {
        let incoming = Incoming {
            traceparent: Some(PARENT),
            tracestate: Some("vendor=1"),
        };
        let owned = incoming.to_owned().unwrap();
        assert_eq!(owned.incoming().traceparent, Some(PARENT));
        assert_eq!(owned.incoming().tracestate, Some("vendor=1"));
        assert!(Incoming::default().to_owned().is_none());
    }

    #[test]
    fn off_means_no_context() {
        // No OTLP layer in unit tests: nothing to carry.
        assert_eq!(current(), None);
    }
}
