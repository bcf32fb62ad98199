//! Prediction log metrics: records written, records dropped (by reason) and I/O errors.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DropLabels {
    reason: &'static str,
}

/// The prediction log's handles (cheap clones of shared counters), found once so that the
/// request path's drop count is one atomic add.
#[derive(Debug, Clone)]
pub struct PredictionLogCounters {
    pub written: Counter,
    /// Dropped on the request path: the queue (records or bytes) was full.
    pub queue_full: Counter,
    /// Dropped by the writer: the file could not be opened or written.
    pub write_error: Counter,
    /// Failed opens, writes, flushes, fsyncs and rotations.
    pub io_errors: Counter,
    dropped: Family<DropLabels, Counter>,
}

impl Default for PredictionLogCounters {
    fn default() -> Self {
        let dropped = Family::<DropLabels, Counter>::default();
        PredictionLogCounters {
            written: Counter::default(),
            queue_full: dropped.get_or_create_owned(&DropLabels {
                reason: "queue_full",
            }),
            write_error: dropped.get_or_create_owned(&DropLabels {
                reason: "write_error",
            }),
            io_errors: Counter::default(),
            dropped,
        }
    }
}

impl PredictionLogCounters {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "chorus_prediction_log_written",
            "Prediction log records written (to the OS; fsynced on rotation and shutdown)",
            self.written.clone(),
        );
        r.register(
            "chorus_prediction_log_dropped",
            "Prediction log records dropped, by reason: queue_full (the writer fell behind), write_error (the directory could not be written)",
            self.dropped.clone(),
        );
        r.register(
            "chorus_prediction_log_io_errors",
            "Prediction log file operations that failed (open, write, flush, fsync, rotation)",
            self.io_errors.clone(),
        );
    }
}
