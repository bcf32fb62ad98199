//! Shutdown signals: Ctrl-C (SIGINT) or SIGTERM, whichever comes first.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// SIGINT and SIGTERM handlers, installed when this is made: a signal that arrives before
/// anyone waits is kept for [`Shutdown::wait`] instead of killing the process.
pub struct Shutdown {
    interrupt: Signal,
    terminate: Signal,
}

impl Shutdown {
    pub fn install() -> std::io::Result<Self> {
        Ok(Shutdown {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Completes on the first SIGINT or SIGTERM since [`Shutdown::install`].
    pub async fn wait(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
            _ = self.terminate.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
        }
    }
}

/// Completes on the first SIGINT or SIGTERM from now on.
pub async fn shutdown() {
    match Shutdown::install() {
        Ok(signals) => signals.wait().await,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGINT/SIGTERM; only Ctrl-C stops this process");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
