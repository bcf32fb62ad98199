//! Chorus coordinator: an Open Inference Protocol v2 gateway that fans each request out to an
//! ensemble's member models on healthy workers and combines their answers.

pub mod catalog;
pub mod combine;
pub mod config;
pub mod ensemble;
pub mod http;
pub mod membership;
pub mod metrics;
pub mod pool;
pub mod router;
pub mod server;
pub mod spec;

pub use config::CoordinatorConfig;
pub use server::run;
