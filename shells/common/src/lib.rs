//! Shared shell code. Being written.
