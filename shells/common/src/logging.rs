//! `tracing` setup shared by both binaries: human-readable lines on stderr, filtered by
//! `RUST_LOG` (default `info`; invalid directives are ignored rather than fatal).
//!
//! Nothing logged by the shells carries a secret: bearer tokens and registration secrets
//! never appear in events, and configs log through their redacting `Display`/`Debug`.

use tracing_subscriber::filter::{EnvFilter, LevelFilter};

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
    tracing_subscriber::fmt()
        .with_env_filter(env_filter_with_default(default))
        .with_writer(std::io::stderr)
        .with_target(true)
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
