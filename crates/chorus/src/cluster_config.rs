//! The local cluster file `chorus up` reads (`config/cluster.toml`).

use anyhow::Context;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The only cluster-file version this build reads.
const CLUSTER_VERSION: u32 = 1;

/// A validated local cluster description.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub version: u32,
    /// Where the coordinator's HTTP gateway listens.
    pub http_addr: SocketAddr,
    /// Where the coordinator's gRPC service listens.
    #[serde(default = "default_grpc_addr")]
    pub grpc_addr: SocketAddr,
    /// Where the coordinator's admin listener (`/metrics`, `/chorus/workers`) listens.
    #[serde(default = "default_admin_addr")]
    pub admin_addr: SocketAddr,
    /// Triton-style model repository shared by every worker.
    pub model_repository: PathBuf,
    /// Ensemble specs for the coordinator.
    pub ensembles: PathBuf,
    /// Worker processes to start.
    pub workers: usize,
    /// Workers that serve each model.
    #[serde(default = "one")]
    pub replication: usize,
}

fn one() -> usize {
    1
}

/// Triton's gRPC port, on loopback.
fn default_grpc_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8001))
}

/// Triton's metrics port, on loopback.
fn default_admin_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8002))
}

impl ClusterConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read cluster config {}", path.display()))?;
        let config: ClusterConfig = toml::from_str(&text)
            .with_context(|| format!("cluster config {} is not valid", path.display()))?;
        config
            .validate()
            .with_context(|| format!("cluster config {}", path.display()))?;
        Ok(config)
    }

    /// Checks the numbers; called again after flags override them.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.version == CLUSTER_VERSION,
            "`version = {}` is not supported; this build reads `version = {CLUSTER_VERSION}`",
            self.version
        );
        anyhow::ensure!(
            self.workers >= 1,
            "`workers` must be at least 1, got {}",
            self.workers
        );
        anyhow::ensure!(
            (1..=self.workers).contains(&self.replication),
            "`replication` must be between 1 and `workers` ({}), got {}",
            self.workers,
            self.replication
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "version = 1\nhttp_addr = \"127.0.0.1:8000\"\nmodel_repository = \"models\"\nensembles = \"e.toml\"\nworkers = 3\n";

    #[test]
    fn parses_and_defaults_replication() {
        let c: ClusterConfig = toml::from_str(GOOD).unwrap();
        c.validate().unwrap();
        assert_eq!(c.replication, 1);
        assert_eq!(c.grpc_addr.port(), 8001, "Triton's gRPC port by default");
    }

    #[test]
    fn rejects_bad_numbers_and_unknown_keys() {
        let c: ClusterConfig = toml::from_str(&GOOD.replace("workers = 3", "workers = 0")).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("workers"));
        let c: ClusterConfig = toml::from_str(&format!("{GOOD}replication = 4\n")).unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("replication")
        );
        assert!(toml::from_str::<ClusterConfig>(&format!("{GOOD}color = 1\n")).is_err());
    }
}
