//! Admission and access metrics: requests turned away before fan-out, by reason; requests
//! waiting for a slot; the coordinator's current concurrency limit; requests per API key.

use super::RequestOutcome;
use crate::infer::ErrorKind;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::fmt::{self, Write};

/// Why admission turned a request away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The API key's `rate_limit`.
    KeyRate,
    /// The ensemble's `rate_limit`.
    ModelRate,
    /// The ensemble's `max_inflight`.
    ModelInflight,
    /// The coordinator's `--max-inflight` (or its adaptive limit).
    Inflight,
    /// `--max-inflight-body-bytes`.
    Bytes,
}

impl EncodeLabelValue for RejectReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        encoder.write_str(match self {
            RejectReason::KeyRate => "key_rate",
            RejectReason::ModelRate => "model_rate",
            RejectReason::ModelInflight => "model_inflight",
            RejectReason::Inflight => "inflight",
            RejectReason::Bytes => "bytes",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: RejectReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KeyLabels {
    key: String,
    outcome: RequestOutcome,
}

/// The admission controller's handles (cheap clones of shared counters).
#[derive(Debug, Clone, Default)]
pub struct AdmissionCounters {
    rejections: Family<ReasonLabels, Counter>,
    pub waiting: Gauge,
    pub limit: Gauge,
    keys: Family<KeyLabels, Counter>,
}

impl AdmissionCounters {
    pub fn rejected(&self, reason: RejectReason) {
        self.rejections
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// One infer request by API key `key` ended with `error` (`None`: answered). Key ids come
    /// from the key file, so the series are bounded.
    pub fn key_request(&self, key: &str, error: Option<ErrorKind>) {
        self.keys
            .get_or_create(&KeyLabels {
                key: key.to_string(),
                outcome: RequestOutcome(error),
            })
            .inc();
    }

    pub fn register(&self, r: &mut Registry) {
        r.register(
            "chorus_admission_rejections",
            "Infer requests turned away before fan-out (429 / RESOURCE_EXHAUSTED), by reason: key_rate, model_rate, model_inflight, inflight, bytes",
            self.rejections.clone(),
        );
        r.register(
            "chorus_admission_waiting",
            "Infer requests waiting for a concurrency slot",
            self.waiting.clone(),
        );
        r.register(
            "chorus_admission_limit",
            "The coordinator's concurrency limit now (--max-inflight, or below it with --adaptive-inflight; 0: no limit)",
            self.limit.clone(),
        );
        r.register(
            "chorus_api_key_requests",
            "Infer requests by API key id and outcome (counted only when the coordinator runs with --api-keys)",
            self.keys.clone(),
        );
    }
}
