//! How a running daemon is steered from outside its loop, and how it ends: the vocabulary
//! every part of a shell shares (the session, the signal thread, the local control API, the
//! demo, the tests).
//!
//! A [`Control`] posts a [`Request`] into the daemon's mailbox (the same channel its engine
//! and HTTP threads use) and wakes the loop; the loop carries it out between two inputs.
//! Nothing here reads or changes the core from another thread: operator changes enter the
//! core as inputs, and a [`Control::query`] runs its closure on the loop thread against the
//! core itself, so what it reads is the core's own report (its status snapshot), never a
//! copy kept on the side. Requests are answered in the order they were posted, so a query
//! posted after a change sees the change.

use std::fmt;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use studio_core::worker::{ExitCode, Input, Worker};
use studio_core::Mono;

/// How a daemon ended: the core's exit code and reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    pub code: ExitCode,
    pub reason: String,
}

/// An operator's change to a running worker.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Change {
    /// Stop taking offers until resumed (runtime only: `Input::Pause`).
    Pause,
    /// Take offers again (`Input::Resume`).
    Resume,
    /// `auto_enabled`: saved in config.toml, then applied (`Input::Enable` /
    /// `Input::Disable`). Not applied when the save fails.
    Enabled(bool),
    /// `vram_threshold_gb`: validated, saved in config.toml, then applied
    /// (`Input::SetThreshold`, advertised by the next heartbeat).
    Threshold(f32),
    /// Check the update feed now (`Input::CheckUpdateNow`; runtime only).
    CheckUpdate,
}

impl Change {
    /// The core input that carries the change out.
    pub fn input(self) -> Input {
        match self {
            Change::Pause => Input::Pause,
            Change::Resume => Input::Resume,
            Change::Enabled(true) => Input::Enable,
            Change::Enabled(false) => Input::Disable,
            Change::Threshold(gb) => Input::SetThreshold { gb },
            Change::CheckUpdate => Input::CheckUpdateNow,
        }
    }
}

/// A query run on the loop thread with the core and the loop's monotonic time.
pub type Query = Box<dyn FnOnce(&Worker, Mono) + Send>;

/// What the loop is asked to do.
pub enum Request {
    /// A graceful shutdown (`Input::Shutdown`): SIGINT / SIGTERM, `POST /daemon/shutdown`.
    Shutdown,
    /// Apply a change; the outcome goes to `reply` (when given): `Err` with a message for
    /// the operator when it could not be saved or is out of range (nothing changed then).
    Change {
        change: Change,
        reply: Option<mpsc::Sender<Result<(), String>>>,
    },
    /// Read the core (see [`Control::query`]).
    Query(Query),
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Shutdown => f.write_str("Shutdown"),
            Request::Change { change, .. } => f.debug_tuple("Change").field(change).finish(),
            Request::Query(_) => f.write_str("Query"),
        }
    }
}

/// Why a request got no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlError {
    /// The loop has ended (the daemon is gone or going).
    Stopped,
    /// The loop did not answer within the timeout.
    Timeout,
    /// The change was refused (the message says why); nothing changed.
    Refused(String),
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlError::Stopped => f.write_str("the worker is stopping"),
            ControlError::Timeout => f.write_str("the worker did not answer in time"),
            ControlError::Refused(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for ControlError {}

/// A handle to a running daemon from another thread (the signal thread, the local control
/// API, the demo, tests).
#[derive(Clone)]
pub struct Control(Arc<dyn Fn(Request) + Send + Sync>);

impl Control {
    /// A control whose requests go to `post` (which hands them to the daemon's loop and
    /// wakes it; a request posted after the loop ended is dropped, and its reply channel
    /// with it).
    pub fn new(post: impl Fn(Request) + Send + Sync + 'static) -> Control {
        Control(Arc::new(post))
    }

    /// Asks for a graceful shutdown (`Input::Shutdown`): the core finishes or hands back
    /// the running job, closes the session with 1000 and exits cleanly. Harmless to repeat.
    pub fn shutdown(&self) {
        (self.0)(Request::Shutdown);
    }

    /// Applies `change` and waits up to `timeout` for the outcome.
    pub fn change(&self, change: Change, timeout: Duration) -> Result<(), ControlError> {
        let (tx, rx) = mpsc::channel();
        (self.0)(Request::Change {
            change,
            reply: Some(tx),
        });
        match rx.recv_timeout(timeout) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(ControlError::Refused(why)),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(ControlError::Timeout),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(ControlError::Stopped),
        }
    }

    /// Runs `read` on the loop thread with the core and the loop's clock, and returns what
    /// it returns (waiting up to `timeout`). `read` must be quick: the loop does nothing
    /// else meanwhile.
    pub fn query<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Worker, Mono) -> T + Send + 'static,
        timeout: Duration,
    ) -> Result<T, ControlError> {
        let (tx, rx) = mpsc::sync_channel(1);
        (self.0)(Request::Query(Box::new(move |worker, now| {
            let _ = tx.send(read(worker, now));
        })));
        rx.recv_timeout(timeout).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => ControlError::Timeout,
            mpsc::RecvTimeoutError::Disconnected => ControlError::Stopped,
        })
    }
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Control")
    }
}
