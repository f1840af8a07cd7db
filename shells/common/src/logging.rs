//! `tracing` setup shared by both binaries: human-readable lines on stderr, filtered by
//! `RUST_LOG` (default `info`; invalid directives are ignored rather than fatal), and, for
//! `run`, the Sentry layer ([`crate::telemetry::layer`], a no-op unless `SENTRY_DSN` is
//! set).
//!
//! Nothing logged by the shells carries a secret: bearer tokens and registration secrets
//! never appear in events, and configs log through their redacting `Display`/`Debug`.

use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The `RUST_LOG` filter, defaulting to `info`.
pub fn env_filter() -> EnvFilter {
    env_filter_with_default(LevelFilter::INFO)
}

/// `RUST_LOG`, or `default` when it is unset.
pub fn env_filter_with_default(default: LevelFilter) -> EnvFilter {
    EnvFilter::builder()
        .with_default_directive(default.into())
        .from_env_lossy()
}

/// Installs the global subscriber (stderr, `RUST_LOG`). Returns `false` when one was
/// already installed (then nothing changes), so calling it twice is harmless.
pub fn init() -> bool {
    init_with_default(LevelFilter::INFO)
}

/// [`init`] with another level for when `RUST_LOG` is unset (the demo uses `warn` so its
/// table is not buried in session logs).
pub fn init_with_default(default: LevelFilter) -> bool {
    init_with(default, false)
}

/// [`init_with_default`], with the Sentry layer when `sentry` is set (errors become
/// events, warnings breadcrumbs, while Sentry is on).
pub fn init_with(default: LevelFilter, sentry: bool) -> bool {
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(true);
    tracing_subscriber::registry()
        .with(env_filter_with_default(default))
        .with(stderr)
        .with(sentry.then(crate::telemetry::layer))
        .try_init()
        .is_ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_default_filter_is_info() {
        // RUST_LOG may be set by whoever runs the tests; only check it builds and that the
        // default directive is there when the variable is absent.
        let filter = super::env_filter();
        if std::env::var_os("RUST_LOG").is_none() {
            assert_eq!(filter.to_string(), "info");
        }
    }
}
