//! Logging setup, and span and metric names in one place.

use tracing_subscriber::EnvFilter;

/// Filter used when `RUST_LOG` is unset.
pub const DEFAULT_LOG_FILTER: &str = "temper=info,tower_http=info";

/// Span field carrying the request id (`x-request-id`) on every HTTP span.
pub const REQUEST_ID_FIELD: &str = "request_id";

/// Installs the global `tracing` subscriber, honouring `RUST_LOG`. Safe to call twice (the
/// second call changes nothing), so tests that boot several servers can call it freely.
pub fn init_tracing() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    // An error only means a subscriber is already installed.
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
}
