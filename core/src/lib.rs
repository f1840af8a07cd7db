//! studio-core: the sans-IO heart of studio-worker.
//!
//! A pure, deterministic crate: inputs in, commands out, time passed in. It reads no
//! clock, socket, file, environment or random source and spawns no thread (enforced by
//! `core/clippy.toml` and `.ci/check-core-purity`).
//!
//! * [`wire`]: every frame, nested type and HTTP body of the protocol, as serde types.
//! * [`worker`]: the worker session machine ([`worker::Worker`]); its module docs hold the
//!   driving contract.
//! * [`studio`]: the reference studio machine, the peer of the loopback studio, the pair
//!   tests and the fleet simulation.
//! * `testing` (feature `testing`, for tests, the fuzzer and the simulation only): the
//!   in-memory test peer: a worker driver, the pair, the link and the HTTP bridge.
//! * [`splitmix`]: SplitMix64, the seeded generator every part of the project shares.
//! * [`time`]: [`Mono`], [`WallMs`] and [`Now`] (the two together, what both machines
//!   take), the only notion of time the core has.
//! * [`trace`]: the record-and-replay trace format (JSON lines): write, parse, replay,
//!   explain, bless.
pub mod secret;
pub mod splitmix;
pub mod studio;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;
pub mod trace;
pub mod wire;
pub mod worker;

pub use secret::Secret;
pub use time::{Mono, Now, WallMs};

/// The README's driving-contract example runs as a doctest of this crate.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
