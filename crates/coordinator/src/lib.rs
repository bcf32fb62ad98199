//! Chorus coordinator: an Open Inference Protocol v2 gateway that fans each request out to an
//! ensemble's member models on healthy workers and combines their answers.
//!
//! Two front doors, [`http`] (REST, axum) and [`grpc`] (tonic), on one transport-neutral
//! [`infer`] core; below it the [`ensemble`] fan-out, the [`router`] (retries, hedging), the
//! worker [`pool`] and the [`catalog`] of what is served, fed by [`membership`].

pub mod access;
pub mod admission;
pub mod catalog;
pub mod combine;
pub mod config;
pub mod ensemble;
pub mod feedback;
pub mod grpc;
pub mod http;
pub mod infer;
pub mod listen;
pub mod membership;
pub mod metrics;
pub mod pool;
pub mod prediction_log;
pub mod router;
pub mod rpc_tls;
pub mod server;
pub mod shadow;
pub mod spec;
pub mod stats;
#[cfg(test)]
mod testing;
pub mod tls;

pub use config::CoordinatorConfig;
pub use server::{Listeners, run};
