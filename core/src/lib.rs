//! studio-core: the sans-IO heart of studio-worker.
pub mod time;
pub mod wire;

pub use time::{Mono, WallMs};
