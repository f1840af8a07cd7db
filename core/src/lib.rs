//! studio-core: the sans-IO heart of studio-worker.
pub mod wire;
