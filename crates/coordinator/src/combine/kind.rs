//! The combiner kinds and everything a kind decides: the member role it reads, which member
//! outputs fit it, the ensemble outputs it produces and its combine function.
//!
//! Every match here is exhaustive, so a new combiner is one variant plus its file in `combine/`,
//! and the compiler lists each place that must say what the new kind does.

use super::{AGREEMENT, CombineError, LABEL, PROBABILITIES, Vote};
use chorus_common::{DataType, Tensor, TensorSpec};
use serde::Deserialize;

/// How an ensemble turns its members' answers into one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CombinerKind {
    /// Weighted majority over member labels (or argmax of probabilities).
    HardVote,
    /// Weighted mean of member probabilities, plus its argmax.
    SoftVote,
    /// Weighted element-wise mean of a regression output.
    Average,
    /// Element-wise median of a regression output.
    Median,
    /// Stacking: members' outputs concatenated in member order feed a meta-model.
    Fusion,
}

impl CombinerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CombinerKind::HardVote => "hard_vote",
            CombinerKind::SoftVote => "soft_vote",
            CombinerKind::Average => "average",
            CombinerKind::Median => "median",
            CombinerKind::Fusion => "fusion",
        }
    }

    /// The member output a combiner reads when the spec does not name one.
    pub fn default_member_output(self) -> Option<&'static str> {
        match self {
            CombinerKind::HardVote => Some(LABEL),
            CombinerKind::SoftVote | CombinerKind::Fusion => Some(PROBABILITIES),
            CombinerKind::Average | CombinerKind::Median => None,
        }
    }

    /// Whether a member output with this datatype and shape is one the combiner can read.
    pub fn fits(self, output: &TensorSpec) -> bool {
        match self {
            CombinerKind::SoftVote => float(output.datatype) && probability_shape(&output.shape),
            CombinerKind::Fusion => {
                output.datatype == DataType::Fp32 && probability_shape(&output.shape)
            }
            CombinerKind::HardVote => {
                (float(output.datatype) && probability_shape(&output.shape))
                    || (matches!(output.datatype, DataType::Int64 | DataType::Int32)
                        && output.shape.len() == 1)
            }
            CombinerKind::Average | CombinerKind::Median => float(output.datatype),
        }
    }

    /// What [`CombinerKind::fits`] accepts, in words, for the message that refuses an output.
    pub fn reads(self) -> &'static str {
        match self {
            CombinerKind::SoftVote => {
                "FP32 or FP64 probabilities [N, C] (or [N] / [N, 1] for a binary classifier's P(class 1))"
            }
            CombinerKind::Fusion => {
                "FP32 probabilities [N, C] (or [N] / [N, 1] for a binary classifier's P(class 1))"
            }
            CombinerKind::HardVote => {
                "INT64 or INT32 labels [N], or float probabilities [N, C] (or [N] / [N, 1])"
            }
            CombinerKind::Average | CombinerKind::Median => "an FP32 or FP64 tensor",
        }
    }

    /// The ensemble's outputs, given the first member's output spec (`member_output`), the class
    /// count the members agree on, and the meta-model's outputs for fusion. `None` only for
    /// fusion without `meta_outputs`; the caller reports why they are missing.
    pub fn output_signature(
        self,
        member_output: &TensorSpec,
        classes: Option<i64>,
        meta_outputs: Option<&[TensorSpec]>,
    ) -> Option<Vec<TensorSpec>> {
        let batch = member_output.shape.first().copied().unwrap_or(-1);
        let spec_of = |name: &str, datatype, shape| TensorSpec {
            name: name.to_string(),
            datatype,
            shape,
        };
        Some(match self {
            CombinerKind::SoftVote => vec![
                spec_of(LABEL, DataType::Int64, vec![batch]),
                spec_of(
                    PROBABILITIES,
                    DataType::Fp32,
                    vec![batch, classes.unwrap_or(-1)],
                ),
            ],
            CombinerKind::HardVote => vec![
                spec_of(LABEL, DataType::Int64, vec![batch]),
                spec_of(AGREEMENT, DataType::Fp32, vec![batch]),
            ],
            CombinerKind::Average | CombinerKind::Median => vec![member_output.clone()],
            CombinerKind::Fusion => meta_outputs?.to_vec(),
        })
    }

    /// Combines the members' votes. `member_output` names the output of the regression
    /// combiners; `threshold` is the binary decision point of the voting ones. Fusion runs a
    /// meta-model, which is not a pure combine: the ensemble calls it itself, and here it is
    /// refused.
    pub fn combine(
        self,
        votes: &[Vote],
        member_output: &str,
        threshold: Option<f64>,
    ) -> Result<Vec<Tensor>, CombineError> {
        match self {
            CombinerKind::SoftVote => super::soft_vote_at(votes, threshold),
            CombinerKind::HardVote => super::hard_vote_at(votes, threshold),
            CombinerKind::Average => super::average(votes, member_output).map(|t| vec![t]),
            CombinerKind::Median => super::median(votes, member_output).map(|t| vec![t]),
            CombinerKind::Fusion => Err(CombineError::NeedsMetaModel),
        }
    }
}

fn float(datatype: DataType) -> bool {
    matches!(datatype, DataType::Fp32 | DataType::Fp64)
}

fn probability_shape(shape: &[i64]) -> bool {
    matches!(shape.len(), 1 | 2)
}
