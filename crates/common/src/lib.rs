//! Chorus common: what workers and coordinators must agree on.
//!
//! Wire types ([`tensor`], [`model`]), the worker RPC contract ([`rpc`]), wire errors
//! ([`error`]), input validation shared by both sides ([`validate`]), the TCP transport with
//! Chorus's framing ([`transport`]), Unix-socket links between processes on one host
//! ([`local_link`]), TLS material ([`tls`]), the RPC links' mutual TLS
//! ([`rpc_tls`]), how both sides connect to etcd ([`etcd_connect`]) and the one tracing
//! initialiser ([`telemetry`]).

pub mod error;
pub mod etcd_connect;
pub mod local_link;
pub mod membership;
pub mod model;
pub mod rpc;
pub mod rpc_tls;
pub mod telemetry;
pub mod tensor;
pub mod trace;
// Also in this crate's own unit tests (its dependencies are dev-dependencies too).
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;
pub mod transport;
pub mod validate;

pub use error::WorkerError;
pub use model::{ExecutionProvider, LocalLink, ModelInfo, TensorSpec, WorkerInfo, WorkerState};
pub use rpc::{
    DrainRecord, DrainReply, InferCall, InferReply, Pong, WorkerService, WorkerServiceClient,
};
pub use tensor::{DataType, Tensor, TensorError};
