//! How a running daemon is steered from outside its loop, and how it ends: the vocabulary
//! every part of a shell shares (the session, the signal thread, the demo, the tests).

use std::fmt;
use std::sync::Arc;

use studio_core::worker::ExitCode;

/// How a daemon ended: the core's exit code and reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    pub code: ExitCode,
    pub reason: String,
}

/// A handle to a running daemon from another thread (the signal thread, the demo, tests).
#[derive(Clone)]
pub struct Control(Arc<dyn Fn() + Send + Sync>);

impl Control {
    /// A control whose [`Control::shutdown`] calls `shutdown` (which hands
    /// `Input::Shutdown` to the daemon's loop and wakes it).
    pub fn new(shutdown: impl Fn() + Send + Sync + 'static) -> Control {
        Control(Arc::new(shutdown))
    }

    /// Asks for a graceful shutdown (`Input::Shutdown`): the core finishes or hands back
    /// the running job, closes the session with 1000 and exits cleanly. Harmless to repeat.
    pub fn shutdown(&self) {
        (self.0)();
    }
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Control")
    }
}
