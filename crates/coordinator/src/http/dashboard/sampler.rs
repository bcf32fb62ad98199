//! The background task that samples the metrics into the dashboard's [`Window`] once a second.
//! It holds the window weakly, so it ends on its next tick once the routes are dropped.

use super::scrape::Counts;
use super::window::Window;
use crate::metrics::Metrics;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::time::MissedTickBehavior;
use tracing::warn;

/// How often the metrics are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Samples kept: five minutes and one, so the oldest interval spans the full five.
const KEEP: usize = 301;

/// A window with one sample in it now (the baseline later ones are measured from), filled
/// every [`SAMPLE_EVERY`] while it is alive. Outside an async runtime it stays at that one.
pub fn start(metrics: Arc<Metrics>) -> Arc<Mutex<Window>> {
    let window = Arc::new(Mutex::new(Window::new(KEEP)));
    sample(&metrics, &window);
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(run(metrics, Arc::downgrade(&window)));
        }
        Err(_) => warn!("no async runtime: the dashboard's traffic window will stay empty"),
    }
    window
}

async fn run(metrics: Arc<Metrics>, window: Weak<Mutex<Window>>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    // A late tick is taken late, not twice: each sample carries its own time.
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(window) = window.upgrade() else {
            return;
        };
        sample(&metrics, &window);
    }
}

/// Encodes the metrics as a scrape would and keeps what the dashboard needs. The text is
/// parsed outside the lock; the lock is held only to push.
fn sample(metrics: &Metrics, window: &Mutex<Window>) {
    let text = match metrics.encode() {
        Ok(text) => text,
        Err(e) => {
            warn!(error = %e, "dashboard could not sample the metrics");
            return;
        }
    };
    let counts = Counts::parse(&text);
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    window
        .lock()
        .expect("dashboard window lock")
        .push(Instant::now(), unix_ms, counts);
}
