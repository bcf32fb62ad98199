//! What the request path hands the writer: handles only (an `Arc` spec, refcounted tensor
//! bytes, the member report), so building one copies no tensor data; encoding waits for the
//! writer thread.

use crate::access::Caller;
use crate::ensemble::MemberReport;
use crate::infer::Protocol;
use crate::spec::EnsembleSpec;
use chorus_common::Tensor;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// One answered, sampled ensemble request, not yet encoded.
#[derive(Debug)]
pub struct Entry {
    /// The request id (the client's, or the one the coordinator issued).
    pub id: String,
    /// When the answer was ready.
    pub time: SystemTime,
    /// The spec that answered (its name, members and pinned versions).
    pub spec: Arc<EnsembleSpec>,
    /// The front door, when the request came through one.
    pub protocol: Option<Protocol>,
    /// The caller, whose key id is logged when it presented a key.
    pub caller: Option<Caller>,
    /// The request's inputs: always hashed for the record's `input_hash` (on the writer
    /// thread), written only when `keep_inputs`.
    pub inputs: Option<Vec<Tensor>>,
    /// The spec's `log_inputs`.
    pub keep_inputs: bool,
    /// Each answering member's `member_output` tensor, by its index in the spec.
    pub members: Vec<(usize, Tensor)>,
    /// The combined answer's outputs (all of them, before any classification was applied).
    pub outputs: Vec<Tensor>,
    pub report: MemberReport,
    /// From the start of the fan-out to the combined answer.
    pub latency: Duration,
}

impl Entry {
    /// Tensor bytes this entry keeps alive while it waits in the queue.
    pub fn tensor_bytes(&self) -> usize {
        let inputs = self.inputs.iter().flatten();
        let members = self.members.iter().map(|(_, t)| t);
        inputs
            .chain(members)
            .chain(&self.outputs)
            .map(|t| t.data.len())
            .sum()
    }
}
