//! What every worker daemon is, whatever its runtime: a shell (sync: mio, async: smol)
//! implements [`WorkerDaemon`] (construct a daemon, hand out a [`Control`], run it to the
//! core's [`Exit`]); the application entry ([`crate::app`]) and the demo
//! ([`crate::demo`]) are written once on top of it.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::ClientConfig;

use crate::config::Config;
use crate::control::{Control, Exit};
use crate::error::RunError;
use crate::session::Setup;

/// A worker daemon: one runtime's loop around the shared [`crate::session::Session`].
pub trait WorkerDaemon: Sized + Send + 'static {
    /// How the demo names this shell (`"sync shell"`).
    const SHELL: &'static str;

    /// The cargo package (and binary) this shell is built as (`"studio-worker"`): messages
    /// that tell how to build it name it.
    const PACKAGE: &'static str;

    /// A daemon with an explicit setup (tests: a core configuration and an engine of
    /// their own).
    fn new(setup: Setup) -> Result<Self, RunError>;

    /// The daemon `studio-worker run` starts ([`Setup::from_config`]).
    fn from_config(config: Config, config_path: PathBuf) -> Result<Self, RunError> {
        Self::new(Setup::from_config(config, config_path)?)
    }

    /// A handle that can ask this daemon to shut down from another thread.
    fn control(&self) -> Control;

    /// `--record PATH`: record the session there (see
    /// [`crate::session::Session::set_record`]).
    fn set_record(&mut self, path: Option<PathBuf>);

    /// Replaces the TLS client configuration of `wss://` connections (default:
    /// [`crate::tls::client_config`], the bundled webpki roots): a private CA, tests.
    fn set_tls_config(&mut self, config: Arc<ClientConfig>);

    /// Runs until the core exits (and its last close frames are out, or their 5 s are up).
    fn run(self) -> Exit;
}
