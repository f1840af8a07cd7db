//! studio-core: the sans-IO heart of studio-worker.
pub mod studio;
pub mod time;
pub mod wire;
pub mod worker;

pub use time::{Mono, WallMs};
