//! Shadow traffic: a copy of each split request goes to the name's `shadow` version, whose
//! answer is compared with the primary's and counted (`chorus_shadow_agreement_total`), never
//! returned.
//!
//! Rules:
//! 1. The shadow runs on a task of its own, started after the primary's fan-out is built and
//!    before it is awaited; the primary never waits for it and its errors never reach the client.
//! 2. At most `max_inflight` shadow calls run at once (their own cap, outside admission); one
//!    more is not made and counts as `dropped`.
//! 3. The shadow has the shadow spec's deadline, shortened by the client's timeout, like the
//!    primary.
//! 4. Agreement compares the `label` output of both answers (the first output when there is no
//!    `label`): same type, shape and bytes. A shadow that gives no answer counts as `failed`; a
//!    primary that gives none leaves nothing to compare, and nothing is counted.

use crate::ensemble;
use crate::metrics::{ShadowOutcome, VersionMetrics};
use crate::router::Router;
use crate::spec::EnsembleSpec;
use chorus_common::Tensor;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, oneshot};
use tracing::debug;

/// Default cap on shadow calls in flight per coordinator.
pub const DEFAULT_MAX_INFLIGHT: usize = 64;

/// Starts shadow calls, within their cap.
pub struct Shadows {
    router: Arc<Router>,
    slots: Arc<Semaphore>,
}

/// Where the primary's answer goes, for the shadow to compare with; dropping it unanswered
/// (the primary failed, or its caller went away) cancels the comparison, not the shadow call.
pub struct PrimaryAnswer(oneshot::Sender<Tensor>);

impl PrimaryAnswer {
    /// Hands over the primary's outputs (a clone of one tensor's handle, not its data).
    pub fn answered(self, outputs: &[Tensor]) {
        if let Some(compared) = compared(outputs) {
            let _ = self.0.send(compared.clone());
        }
    }
}

impl Shadows {
    pub fn new(router: Arc<Router>, max_inflight: usize) -> Self {
        Shadows {
            router,
            slots: Arc::new(Semaphore::new(max_inflight)),
        }
    }

    fn metrics(&self) -> &VersionMetrics {
        self.router.metrics().versions()
    }

    /// Starts `shadow` on `inputs` (handles: tensor data is shared, not copied) for request
    /// `request_id`; `None` when the cap is reached (counted as dropped).
    pub fn start(
        &self,
        shadow: &Arc<EnsembleSpec>,
        inputs: &[Tensor],
        timeout: Option<Duration>,
        request_id: &str,
    ) -> Option<PrimaryAnswer> {
        let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
            debug!(ensemble = %shadow.name, version = %shadow.version, request_id, "shadow call dropped: shadow calls at their cap");
            self.metrics()
                .shadow(&shadow.name, &shadow.version, ShadowOutcome::Dropped);
            return None;
        };
        let (primary_tx, primary_rx) = oneshot::channel();
        let router = Arc::clone(&self.router);
        let spec = Arc::clone(shadow);
        let inputs = inputs.to_vec();
        let id = request_id.to_string();
        let deadline = crate::infer::deadline(spec.deadline, timeout);
        tokio::spawn(async move {
            let _slot = slot;
            let answer = ensemble::run(&router, &spec, inputs, deadline, &id).await;
            let outcome = match answer {
                Err(error) => {
                    debug!(ensemble = %spec.name, version = %spec.version, request_id = %id, error = %error, "shadow call failed");
                    ShadowOutcome::Failed
                }
                Ok(answer) => {
                    let Ok(primary) = primary_rx.await else {
                        debug!(ensemble = %spec.name, version = %spec.version, request_id = %id, "primary gave no answer; nothing to compare the shadow with");
                        return;
                    };
                    if compared(&answer.outputs).is_some_and(|ours| same(ours, &primary)) {
                        ShadowOutcome::Agree
                    } else {
                        ShadowOutcome::Disagree
                    }
                }
            };
            debug!(ensemble = %spec.name, version = %spec.version, request_id = %id, outcome = outcome.as_str(), "shadow compared");
            router
                .metrics()
                .versions()
                .shadow(&spec.name, &spec.version, outcome);
        });
        Some(PrimaryAnswer(primary_tx))
    }
}

/// The output agreement is judged on: `label`, else the first.
fn compared(outputs: &[Tensor]) -> Option<&Tensor> {
    outputs
        .iter()
        .find(|t| t.name == "label")
        .or_else(|| outputs.first())
}

fn same(a: &Tensor, b: &Tensor) -> bool {
    a.datatype == b.datatype && a.shape == b.shape && a.data == b.data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_is_judged_on_the_label() {
        let label = |v: &[i64]| Tensor::from_values("label", vec![v.len() as i64], v);
        let probs = |v: &[f32]| Tensor::from_values("probabilities", vec![1, v.len() as i64], v);
        let primary = [probs(&[0.6, 0.4]), label(&[0])];
        let shadow = [label(&[0]), probs(&[0.9, 0.1])];
        assert!(same(
            compared(&shadow).unwrap(),
            compared(&primary).unwrap()
        ));
        let other = [label(&[1])];
        assert!(!same(
            compared(&other).unwrap(),
            compared(&primary).unwrap()
        ));
        let regression = [Tensor::from_values("y", vec![1], &[1.5f32])];
        assert_eq!(compared(&regression).unwrap().name, "y");
        assert!(compared(&[]).is_none());
    }
}
