//! What a front end hands the core (a decoded request) and what it gets back (an answer), in no
//! protocol's terms.

use crate::ensemble::MemberReport;
use chorus_common::Tensor;
use std::time::Duration;

/// Which front door a request came through (the `protocol` label of the request metrics; also
/// what `chorus bench --protocol` drives).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// OIP v2 REST over HTTP/1.1.
    Http,
    /// OIP v2 gRPC over HTTP/2.
    Grpc,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        }
    }
}

/// One decoded inference request.
#[derive(Debug, Clone, PartialEq)]
pub struct InferRequest {
    /// The client's request id, if it sent one; the core generates one otherwise.
    pub id: Option<String>,
    pub inputs: Vec<Tensor>,
    /// Outputs to return, in the order the client wants them; empty means every output.
    pub outputs: Vec<RequestedOutput>,
    /// The client's time limit (the OIP `timeout` parameter, a gRPC deadline), which may only
    /// shorten the server's deadline.
    pub timeout: Option<Duration>,
    /// The OIP `priority` parameter: 1 is the most urgent, 0 (or absent) the default level
    /// (`admission::DEFAULT_PRIORITY`). It orders requests waiting for admission.
    pub priority: u32,
}

/// An output the client asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestedOutput {
    pub name: String,
    /// Triton's classification extension: the top `k` classes of this score output, as
    /// `"<score>:<index>[:<label>]"` strings, instead of the scores.
    pub classification: Option<usize>,
}

impl RequestedOutput {
    pub fn named(name: impl Into<String>) -> Self {
        RequestedOutput {
            name: name.into(),
            classification: None,
        }
    }
}

/// A response parameter's value (OIP v2 allows booleans, integers and strings).
#[derive(Debug, Clone, PartialEq)]
pub enum ParameterValue {
    Bool(bool),
    Text(String),
}

/// The core's answer to one request.
#[derive(Debug)]
pub struct InferAnswer {
    pub model_name: String,
    pub model_version: String,
    /// The client's id, or the one the core generated (unique across coordinators).
    pub id: String,
    /// Response parameters, sorted by name.
    pub parameters: Vec<(&'static str, ParameterValue)>,
    /// The outputs, in the order asked for (or the model's order when none were named).
    pub outputs: Vec<Tensor>,
    /// For ensembles: which members answered, failed or were late.
    pub members: Option<MemberReport>,
}

impl InferAnswer {
    /// The response `parameters` that say which members an ensemble answer came from, sorted by
    /// name as both front ends print them.
    pub fn member_parameters(report: &MemberReport) -> Vec<(&'static str, ParameterValue)> {
        let list = |names: &[String]| ParameterValue::Text(names.join(","));
        vec![
            ("degraded", ParameterValue::Bool(report.degraded())),
            ("members_failed", list(&report.failed)),
            ("members_hedged", list(&report.hedged)),
            ("members_late", list(&report.late)),
            ("members_retried", list(&report.retried)),
            ("members_used", list(&report.used)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_parameters_are_sorted_and_say_who_answered() {
        let report = MemberReport {
            used: vec!["a".into(), "b".into()],
            failed: vec!["c".into()],
            ..MemberReport::default()
        };
        let parameters = InferAnswer::member_parameters(&report);
        let names: Vec<_> = parameters.iter().map(|(n, _)| *n).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
        assert_eq!(parameters[0].1, ParameterValue::Bool(true));
        assert_eq!(
            parameters[5],
            ("members_used", ParameterValue::Text("a,b".into()))
        );
    }
}
