//! The one tracing initialiser every binary calls.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Installs a global subscriber: human-readable lines by default, JSON lines when `json` is set.
/// The filter comes from `RUST_LOG` (default `info,ort=warn,tarpc=warn`: ONNX Runtime logs every graph pass and tarpc every call at info). Calling it twice is harmless.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,ort=warn,tarpc=warn"));
    // Colour only for a person at a terminal: escape codes in `docker logs`, journald or a file
    // defeat grep and log shippers.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
