//! Why the members' outputs could not be combined; every message names the member at fault.

use chorus_common::{DataType, TensorError};

/// A combiner's refusal. Variants carry the member's name so that the operator can tell which
/// model (or which ensemble spec entry) to fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CombineError {
    #[error("no ensemble member answered, so there is nothing to combine")]
    NoMembers,
    #[error(
        "the fusion combiner runs a meta-model, which is not a pure combine; call it through the ensemble"
    )]
    NeedsMetaModel,
    #[error("member '{member}' has weight {weight}: weights must be finite and greater than zero")]
    BadWeight { member: String, weight: f64 },
    #[error(
        "the weights of the members that answered add up to more than an f64 can hold; \
         use smaller weights"
    )]
    WeightsOverflow,
    #[error("member '{member}' returned '{tensor}' as {got}, but this combiner needs {expected}")]
    WrongDatatype {
        member: String,
        tensor: String,
        expected: String,
        got: DataType,
    },
    #[error(
        "member '{member}' returned '{tensor}' with shape {got:?}, but this combiner needs {expected}"
    )]
    WrongShape {
        member: String,
        tensor: String,
        expected: String,
        got: Vec<i64>,
    },
    #[error(
        "member '{member}' returned {rows} rows but member '{reference}' returned \
         {reference_rows}: every member must answer the same batch"
    )]
    BatchMismatch {
        member: String,
        rows: usize,
        reference: String,
        reference_rows: usize,
    },
    #[error(
        "member '{member}' returned {classes} classes but member '{reference}' returned \
         {reference_classes}: soft voting averages class by class, so every member must score \
         the same classes"
    )]
    ClassMismatch {
        member: String,
        classes: usize,
        reference: String,
        reference_classes: usize,
    },
    #[error(
        "member '{missing}' did not answer and its block would be the mean of the others' blocks, \
         but member '{member}' returned {columns} columns and member '{reference}' returned \
         {reference_columns}; blocks of different widths cannot be averaged"
    )]
    ImputeWidthMismatch {
        missing: String,
        member: String,
        columns: usize,
        reference: String,
        reference_columns: usize,
    },
    #[error(
        "member '{member}' returned {value} at flat index {index} of '{tensor}': \
         combiners accept only finite values"
    )]
    NonFinite {
        member: String,
        tensor: String,
        index: usize,
        value: f64,
    },
    #[error(
        "the ensemble's `threshold = {threshold}` decides between two classes, but member \
         '{member}' scores {classes}; remove `threshold` or use binary members"
    )]
    ThresholdNotBinary {
        member: String,
        classes: usize,
        threshold: f64,
    },
    #[error("member '{member}' returned a malformed tensor: {source}")]
    Malformed { member: String, source: TensorError },
}
