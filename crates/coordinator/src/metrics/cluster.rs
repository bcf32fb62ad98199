//! The scrape-time gauges: what the cluster looks like now (outstanding calls per worker,
//! membership by state, staleness, execution providers), read from the pool on each scrape.

use crate::pool::Pool;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::OnceLock;

/// What the cluster looks like at scrape time, as the pool sees it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ClusterView {
    /// Member calls sent and not yet answered, per worker id.
    pub outstanding: Vec<(String, u32)>,
    /// Workers receiving calls.
    pub routable: u32,
    /// Workers out of rotation: not connected, or ejected after failures.
    pub unhealthy: u32,
    /// Workers finishing their work before leaving (healthy or not).
    pub draining: u32,
    /// Whether the membership view may be behind etcd.
    pub stale: bool,
    /// (model, version, execution provider) as workers describe them, without duplicates.
    pub providers: BTreeSet<(String, String, String)>,
}

impl ClusterView {
    /// Reads every worker's state and self-description from `pool`.
    pub fn of(pool: &Pool, stale: bool) -> Self {
        let mut view = ClusterView {
            stale,
            ..ClusterView::default()
        };
        for worker in pool.workers() {
            let status = worker.status();
            if status.draining {
                view.draining += 1;
            } else if status.routable {
                view.routable += 1;
            } else {
                view.unhealthy += 1;
            }
            view.outstanding
                .push((status.worker_id, status.outstanding));
            if let Some(info) = worker.info() {
                for model in &info.models {
                    view.providers.insert((
                        model.name.clone(),
                        model.version.clone(),
                        model.execution_provider.to_string(),
                    ));
                }
            }
        }
        view
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let mut metric = encoder.encode_descriptor(
            "chorus_member_calls_outstanding",
            "Member calls sent to a worker and not yet answered, by worker.",
            None,
            MetricType::Gauge,
        )?;
        for (worker, outstanding) in &self.outstanding {
            let labels = [("worker", worker.as_str())];
            metric
                .encode_family(&labels)?
                .encode_gauge(&i64::from(*outstanding))?;
        }
        let mut metric = encoder.encode_descriptor(
            "chorus_membership_workers",
            "Workers in this coordinator's membership, by state (routable, unhealthy, draining).",
            None,
            MetricType::Gauge,
        )?;
        for (state, count) in [
            ("routable", self.routable),
            ("unhealthy", self.unhealthy),
            ("draining", self.draining),
        ] {
            let labels = [("state", state)];
            metric
                .encode_family(&labels)?
                .encode_gauge(&i64::from(count))?;
        }
        encoder
            .encode_descriptor(
                "chorus_membership_stale",
                "1 while the membership view may be behind etcd (unreachable, or not listed yet); 0 with a static worker list.",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&i64::from(self.stale))?;
        let mut metric = encoder.encode_descriptor(
            "chorus_model_execution_provider",
            "1 for each execution provider a model version runs on, as its workers report.",
            None,
            MetricType::Gauge,
        )?;
        for (model, version, provider) in &self.providers {
            let labels = [
                ("model", model.as_str()),
                ("version", version.as_str()),
                ("provider", provider.as_str()),
            ];
            metric.encode_family(&labels)?.encode_gauge(&1i64)?;
        }
        Ok(())
    }
}

pub(super) type ClusterSource = Box<dyn Fn() -> ClusterView + Send + Sync>;

/// Encodes the [`ClusterView`] of the moment on each scrape.
#[derive(Default)]
pub(super) struct ClusterCollector {
    source: OnceLock<ClusterSource>,
}

impl ClusterCollector {
    /// The first source set wins.
    pub(super) fn set_source(&self, source: ClusterSource) {
        let _ = self.source.set(source);
    }
}

impl fmt::Debug for ClusterCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCollector").finish_non_exhaustive()
    }
}

impl Collector for ClusterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let view = self.source.get().map(|source| source()).unwrap_or_default();
        view.encode(&mut encoder)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Metrics;
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// The sample lines of `text` (no `#` comments) that start with `prefix`.
    fn samples<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| !l.starts_with('#') && l.starts_with(prefix))
            .collect()
    }

    #[test]
    fn cluster_gauges_are_read_at_scrape_time() {
        let metrics = Metrics::new();
        let text = metrics.encode().unwrap();
        assert!(text.contains("chorus_membership_stale 0\n"), "{text}");
        assert!(text.contains("chorus_membership_workers{state=\"routable\"} 0\n"));

        let stale = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stale);
        metrics.observe_cluster(move || ClusterView {
            outstanding: vec![("w-1".into(), 3), ("w-2".into(), 0)],
            routable: 1,
            unhealthy: 0,
            draining: 1,
            stale: flag.load(Ordering::Relaxed),
            providers: [("mlp".into(), "1".into(), "cuda:0".into())].into(),
        });
        let text = metrics.encode().unwrap();
        for expected in [
            "# TYPE chorus_member_calls_outstanding gauge\n",
            "chorus_member_calls_outstanding{worker=\"w-1\"} 3\n",
            "chorus_member_calls_outstanding{worker=\"w-2\"} 0\n",
            "chorus_membership_workers{state=\"routable\"} 1\n",
            "chorus_membership_workers{state=\"unhealthy\"} 0\n",
            "chorus_membership_workers{state=\"draining\"} 1\n",
            "chorus_membership_stale 0\n",
            "chorus_model_execution_provider{model=\"mlp\",version=\"1\",provider=\"cuda:0\"} 1\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        stale.store(true, Ordering::Relaxed);
        let text = metrics.encode().unwrap();
        assert_eq!(
            samples(&text, "chorus_membership_stale"),
            ["chorus_membership_stale 1"]
        );
    }
}
