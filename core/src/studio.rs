//! The reference studio machine (sans-IO). Being written.
