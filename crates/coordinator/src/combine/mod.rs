//! Pure combiners: turn the outputs of the ensemble members that answered into one answer.
//!
//! Every combiner is a synchronous function of the members' tensors and weights, so the fan-out can
//! be tested apart from the arithmetic and the arithmetic can be tested exhaustively. Callers pass
//! only the members that answered; each combiner divides by the sum of the weights present, which
//! renormalises the weights over them. Bad input is an error, never a panic.

mod agreement;
mod average;
mod check;
mod entropy;
mod error;
mod fusion;
mod hard_vote;
mod kind;
mod median;
mod soft_vote;
#[cfg(test)]
mod testing;

use chorus_common::Tensor;

pub use agreement::{Agreement, agreement};
pub use average::average;
pub use entropy::mean_entropy_bits;
pub use error::CombineError;
pub use fusion::fusion_input;
pub use hard_vote::{hard_vote, hard_vote_at};
pub use kind::CombinerKind;
pub use median::median;
pub use soft_vote::{soft_vote, soft_vote_at};

/// Name of the INT64 `[N]` winning-label output of [`soft_vote`] and [`hard_vote`].
pub const LABEL: &str = "label";
/// Name of the FP32 `[N, C]` mean-probabilities output of [`soft_vote`].
pub const PROBABILITIES: &str = "probabilities";
/// Name of the FP32 `[N]` output of [`hard_vote`]: the winner's share of the weight present.
pub const AGREEMENT: &str = "agreement";

/// One member's contribution: its name (for error messages), its weight (> 0, finite) and the
/// member output tensor the combiner reads.
#[derive(Debug, Clone, Copy)]
pub struct Vote<'a> {
    pub member: &'a str,
    pub weight: f64,
    pub tensor: &'a Tensor,
}
