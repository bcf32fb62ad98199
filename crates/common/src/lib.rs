//! Chorus common: what workers and coordinators must agree on.
//!
//! Wire types ([`tensor`], [`model`]), the worker RPC contract ([`rpc`]), wire errors
//! ([`error`]), input validation shared by both sides ([`validate`]), the TCP transport with
//! Chorus's framing ([`transport`]) and the one tracing initialiser ([`telemetry`]).

pub mod error;
pub mod membership;
pub mod model;
pub mod rpc;
pub mod telemetry;
pub mod tensor;
#[cfg(feature = "testing")]
pub mod testing;
pub mod transport;
pub mod validate;

pub use error::WorkerError;
pub use model::{ExecutionProvider, ModelInfo, TensorSpec, WorkerInfo, WorkerState};
pub use rpc::{InferCall, InferReply, Pong, WorkerService, WorkerServiceClient};
pub use tensor::{DataType, Tensor, TensorError};
