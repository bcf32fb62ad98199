//! Running an ensemble: fan out to every member under one deadline, collect each outcome
//! (answered, failed, late), check quorum, combine, and for fusion run the meta-model.

use crate::combine::{self, Vote};
use crate::metrics::MemberFailure;
use crate::pool::CallError;
use crate::router::Router;
use crate::spec::{CombinerKind, EnsembleSpec, Member};
use chorus_common::rpc::{InferCall, InferReply};
use chorus_common::{Tensor, WorkerError};
use tokio::time::Instant;
use tracing::{debug, warn};

/// What happened to one member's call.
#[derive(Debug)]
pub enum MemberOutcome {
    Answered(InferReply),
    Failed(CallError),
    /// No answer before the request's deadline.
    Late,
}

/// Which members an answer came from, for the response's `parameters`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MemberReport {
    pub used: Vec<String>,
    pub failed: Vec<String>,
    pub late: Vec<String>,
    /// Members whose call was retried on another replica.
    pub retried: Vec<String>,
    /// Members whose call was hedged to another replica.
    pub hedged: Vec<String>,
}

impl MemberReport {
    /// True when some member did not contribute.
    pub fn degraded(&self) -> bool {
        !self.failed.is_empty() || !self.late.is_empty()
    }
}

/// An ensemble's combined outputs and where they came from.
#[derive(Debug)]
pub struct EnsembleAnswer {
    pub outputs: Vec<Tensor>,
    pub report: MemberReport,
    /// What each member that answered contributed (its `member_output` tensor), by its index
    /// in the spec: kept for whatever looks at a prediction after it is answered (agreement,
    /// a prediction log, feedback); moved here, never copied.
    pub members: Vec<(usize, Tensor)>,
}

/// Why an ensemble gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum EnsembleError {
    /// A worker judged the request itself invalid.
    #[error("{0}")]
    BadInput(String),
    #[error(
        "ensemble '{ensemble}' needs {needed} members to answer but {answered} did (failed: {failed}; late: {late})"
    )]
    NoQuorum {
        ensemble: String,
        needed: usize,
        answered: usize,
        failed: String,
        late: String,
    },
    #[error(
        "ensemble '{ensemble}' needs {needed} members to answer but only {answered} did before the deadline (late: {late})"
    )]
    QuorumLate {
        ensemble: String,
        needed: usize,
        answered: usize,
        late: String,
    },
    #[error("ensemble '{ensemble}' could not combine its members' answers: {message}")]
    Combine { ensemble: String, message: String },
    #[error("ensemble '{ensemble}': meta-model '{model}' failed: {error}")]
    MetaModel {
        ensemble: String,
        model: String,
        error: CallError,
    },
    #[error("ensemble '{ensemble}': meta-model '{model}' did not answer before the deadline")]
    MetaModelLate { ensemble: String, model: String },
}

/// Runs `spec` on `inputs`, answering by `deadline`.
pub async fn run(
    router: &Router,
    spec: &EnsembleSpec,
    inputs: Vec<Tensor>,
    deadline: Instant,
    request_id: &str,
) -> Result<EnsembleAnswer, EnsembleError> {
    let members_deadline = members_deadline(spec, Instant::now(), deadline);
    let calls = spec
        .members
        .iter()
        .map(|member| InferCall {
            model: member.model.clone(),
            version: member.version.clone(),
            inputs: member_inputs(member, &inputs),
            outputs: vec![member_output(spec, member).to_string()],
            request_id: request_id.to_string(),
            trace_context: None,
        })
        .collect();
    // A frame answers when its slowest call does: only an ensemble that needs every member
    // anyway loses nothing by it. One that may answer without some (min_members below its
    // members) keeps each call apart, so that one late member never makes another late with it.
    let share_frames = spec.min_members >= spec.members.len();
    let outcomes = router
        .call_all(calls, members_deadline, share_frames)
        .await
        .into_iter()
        .map(|routed| match routed {
            Some(routed) => {
                let outcome = match routed.result {
                    Ok(reply) => MemberOutcome::Answered(reply),
                    Err(error) if error.is_late() => MemberOutcome::Late,
                    Err(error) => MemberOutcome::Failed(error),
                };
                (outcome, routed.retried, routed.hedged)
            }
            None => (MemberOutcome::Late, false, false),
        });

    let metrics = router.metrics();
    let mut report = MemberReport::default();
    let mut answered: Vec<(usize, Tensor)> = Vec::new();
    for (index, (outcome, retried, hedged)) in outcomes.enumerate() {
        let name = spec.members[index].model.clone();
        if retried {
            report.retried.push(name.clone());
        }
        if hedged {
            report.hedged.push(name.clone());
        }
        match outcome {
            MemberOutcome::Answered(reply) => {
                let member = &spec.members[index];
                let output = member_output(spec, member);
                match reply.outputs.into_iter().find(|t| t.name == output) {
                    Some(mut tensor) => {
                        // The combiners read the role's name, whatever the member calls it.
                        if output != spec.member_output {
                            tensor.name.clone_from(&spec.member_output);
                        }
                        report.used.push(name);
                        answered.push((index, tensor));
                    }
                    None => {
                        warn!(ensemble = %spec.name, member = %name, request_id = %request_id, output = %output, role = %spec.member_output, "member answered without the combined output");
                        metrics.member_failed(&name, MemberFailure::Failed);
                        report.failed.push(name);
                    }
                }
            }
            MemberOutcome::Failed(CallError::Worker {
                error: WorkerError::InvalidInput(message),
                ..
            }) => return Err(EnsembleError::BadInput(message)),
            MemberOutcome::Failed(error) => {
                warn!(ensemble = %spec.name, member = %name, worker = %error.worker().unwrap_or("none"), request_id = %request_id, error = %error, "member call failed");
                metrics.member_failed(&name, MemberFailure::Failed);
                report.failed.push(name);
            }
            MemberOutcome::Late => {
                debug!(ensemble = %spec.name, member = %name, request_id = %request_id, "member late");
                metrics.member_failed(&name, MemberFailure::Late);
                report.late.push(name);
            }
        }
    }

    if answered.len() < spec.min_members {
        // Only lateness stood between the request and quorum: that is a deadline, not an outage.
        if report.failed.is_empty() {
            return Err(EnsembleError::QuorumLate {
                ensemble: spec.name.clone(),
                needed: spec.min_members,
                answered: answered.len(),
                late: list_or_none(&report.late),
            });
        }
        return Err(EnsembleError::NoQuorum {
            ensemble: spec.name.clone(),
            needed: spec.min_members,
            answered: answered.len(),
            failed: list_or_none(&report.failed),
            late: list_or_none(&report.late),
        });
    }

    let outputs = combine_answers(router, spec, &answered, deadline, request_id).await?;
    if report.degraded() {
        metrics.degraded_response(&spec.name);
    }
    let votes: Vec<(&str, &Tensor)> = answered
        .iter()
        .map(|(index, tensor)| (spec.members[*index].model.as_str(), tensor))
        .collect();
    metrics.answer_health(
        &spec.name,
        combine::agreement(&votes, &outputs, spec.threshold),
        combine::mean_entropy_bits(&outputs),
    );
    Ok(EnsembleAnswer {
        outputs,
        report,
        members: answered,
    })
}

/// The request's inputs as `member` names them: shared unchanged (the tensors' bytes are
/// reference-counted) unless its `input_map` renames some.
fn member_inputs(member: &Member, inputs: &[Tensor]) -> Vec<Tensor> {
    let mut mine = inputs.to_vec();
    if !member.input_map.is_empty() {
        for tensor in &mut mine {
            if let Some(name) = member.input_map.get(&tensor.name) {
                tensor.name.clone_from(name);
            }
        }
    }
    mine
}

/// The output `member` is asked for: the one its `output_map` gives the combiner's role (derive
/// checked there is one), else the role's own name.
fn member_output<'a>(spec: &'a EnsembleSpec, member: &'a Member) -> &'a str {
    member
        .output_for(&spec.member_output)
        .unwrap_or(&spec.member_output)
}

/// Share of a fusion ensemble's time budget that its members may use; the rest is kept for
/// the meta-model, so that one straggling member cannot leave it no time at all.
const FUSION_MEMBER_SHARE: f64 = 0.75;

/// When the members' calls must be answered by.
fn members_deadline(spec: &EnsembleSpec, now: Instant, deadline: Instant) -> Instant {
    match spec.combiner {
        CombinerKind::Fusion => {
            now + deadline
                .saturating_duration_since(now)
                .mul_f64(FUSION_MEMBER_SHARE)
        }
        CombinerKind::SoftVote
        | CombinerKind::HardVote
        | CombinerKind::Average
        | CombinerKind::Median => deadline,
    }
}

async fn combine_answers(
    router: &Router,
    spec: &EnsembleSpec,
    answered: &[(usize, Tensor)],
    deadline: Instant,
    request_id: &str,
) -> Result<Vec<Tensor>, EnsembleError> {
    let combine_error = |e: combine::CombineError| EnsembleError::Combine {
        ensemble: spec.name.clone(),
        message: e.to_string(),
    };
    let votes: Vec<Vote> = answered
        .iter()
        .map(|(index, tensor)| Vote {
            member: &spec.members[*index].model,
            weight: spec.members[*index].weight,
            tensor,
        })
        .collect();
    match spec.combiner {
        CombinerKind::SoftVote
        | CombinerKind::HardVote
        | CombinerKind::Average
        | CombinerKind::Median => spec
            .combiner
            .combine(&votes, &spec.member_output, spec.threshold)
            .map_err(combine_error),
        // The one combiner that is not pure: its meta-model runs on a worker.
        CombinerKind::Fusion => {
            let blocks: Vec<(&str, Option<&Tensor>)> = spec
                .members
                .iter()
                .enumerate()
                .map(|(index, member)| {
                    let block = answered.iter().find(|(i, _)| *i == index).map(|(_, t)| t);
                    (member.model.as_str(), block)
                })
                .collect();
            run_meta_model(router, spec, &blocks, deadline, request_id).await
        }
    }
}

async fn run_meta_model(
    router: &Router,
    spec: &EnsembleSpec,
    blocks: &[(&str, Option<&Tensor>)],
    deadline: Instant,
    request_id: &str,
) -> Result<Vec<Tensor>, EnsembleError> {
    let (model, version) = spec
        .meta_model
        .clone()
        .expect("fusion specs are validated to name a meta-model");
    let input_name = meta_input_name(router, &model, version.as_deref());
    let binary_pairs = spec.member_output == combine::PROBABILITIES;
    let input = combine::fusion_input(blocks, &input_name, binary_pairs).map_err(|e| {
        EnsembleError::Combine {
            ensemble: spec.name.clone(),
            message: e.to_string(),
        }
    })?;
    let call = InferCall {
        model: model.clone(),
        version,
        inputs: vec![input],
        outputs: vec![],
        request_id: request_id.to_string(),
        trace_context: None,
    };
    // Boxed: inline, this rarely-taken call would make every ensemble request's future (and each
    // copy of it) kilobytes larger.
    let routed = tokio::time::timeout_at(deadline, Box::pin(router.call(call, deadline))).await;
    match routed.map(|r| r.result) {
        Ok(Ok(reply)) => Ok(reply.outputs),
        Ok(Err(CallError::DeadlineExceeded { .. })) | Err(_) => Err(EnsembleError::MetaModelLate {
            ensemble: spec.name.clone(),
            model,
        }),
        Ok(Err(error)) => Err(EnsembleError::MetaModel {
            ensemble: spec.name.clone(),
            model,
            error,
        }),
    }
}

/// The meta-model's single input name, as its workers describe it ("input" if none has yet).
fn meta_input_name(router: &Router, model: &str, version: Option<&str>) -> String {
    router
        .pool()
        .models()
        .get(model)
        .and_then(|versions| {
            versions
                .iter()
                .rev()
                .find(|m| version.is_none_or(|v| m.version == v))
                .and_then(|m| m.inputs.first())
                .map(|spec| spec.name.clone())
        })
        .unwrap_or_else(|| "input".to_string())
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn spec(combiner: CombinerKind) -> EnsembleSpec {
        EnsembleSpec {
            name: "e".into(),
            description: String::new(),
            combiner,
            deadline: Duration::from_millis(1000),
            min_members: 1,
            member_output: "probabilities".into(),
            meta_model: None,
            members: vec![Member {
                model: "m".into(),
                version: None,
                weight: 1.0,
                input_map: Default::default(),
                output_map: Default::default(),
            }],
            labels: None,
            limits: Default::default(),
            online: None,
            feedback: None,
            log: Default::default(),
            threshold: None,
            version: "1".into(),
            routing: None,
        }
    }

    #[test]
    fn fusion_keeps_a_quarter_of_the_time_for_its_meta_model() {
        let now = Instant::now();
        let deadline = now + Duration::from_millis(1000);
        assert_eq!(
            members_deadline(&spec(CombinerKind::SoftVote), now, deadline),
            deadline
        );
        assert_eq!(
            members_deadline(&spec(CombinerKind::Fusion), now, deadline),
            now + Duration::from_millis(750)
        );
        // A deadline already past stays past.
        let late = members_deadline(&spec(CombinerKind::Fusion), deadline, now);
        assert_eq!(late, deadline);
    }
}
