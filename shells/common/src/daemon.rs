//! What every worker daemon is, whatever its runtime, and the entry points built on that.
//!
//! A shell (sync: mio, async: smol) implements [`WorkerDaemon`]: construct a daemon, hand
//! out a [`Control`], run it to the core's [`Exit`]. Everything around that is written once
//! here, so both binaries behave the same to an operator:
//!
//! * [`main`]: the whole `main` of a binary (CLI, logging, the crypto provider, admin
//!   subcommands, `run`, `demo`, exit codes and the last line on stderr);
//! * [`run`]: `studio-worker run` (load the config, start the daemon, forward SIGINT /
//!   SIGTERM, run until the core exits);
//! * the demo ([`crate::demo`]) runs any [`WorkerDaemon`] against the loopback studio.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Parser;
use rustls::ClientConfig;
use studio_core::worker::ExitCode;
use tracing::level_filters::LevelFilter;

use crate::cli::{run_admin_command, Cli, CliCommand};
use crate::config::Config;
use crate::error::ShellError;
use crate::session::Setup;

/// The prefix of the lines a binary prints on stderr when it ends with an error (both
/// binaries say the same: a studio operator cannot tell them apart).
pub const PROGRAM: &str = "studio-worker";

/// How a daemon ended: the core's exit code and reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    pub code: ExitCode,
    pub reason: String,
}

/// Why a daemon could not start (or its event loop failed).
#[derive(Debug)]
pub enum RunError {
    /// Config, CLI or entropy trouble from the shared shell code.
    Shell(ShellError),
    /// The OS refused an event-loop resource.
    Io {
        what: &'static str,
        source: io::Error,
    },
}

impl RunError {
    /// The process exit code: the shell error's own, or 3 (fatal).
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Shell(e) => e.exit_code(),
            RunError::Io { .. } => ExitCode::Fatal.code(),
        }
    }

    /// A closure turning an `io::Error` into [`RunError::Io`] about `what`.
    pub fn io(what: &'static str) -> impl Fn(io::Error) -> RunError {
        move |source| RunError::Io { what, source }
    }
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Shell(e) => e.fmt(f),
            RunError::Io { what, source } => write!(f, "cannot {what}: {source}"),
        }
    }
}

impl std::error::Error for RunError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RunError::Shell(e) => Some(e),
            RunError::Io { source, .. } => Some(source),
        }
    }
}

impl From<ShellError> for RunError {
    fn from(e: ShellError) -> RunError {
        RunError::Shell(e)
    }
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

/// A worker daemon: one runtime's loop around the shared [`crate::session::Session`].
pub trait WorkerDaemon: Sized + Send + 'static {
    /// How the demo names this shell (`"sync shell"`).
    const SHELL: &'static str;

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

/// `studio-worker run`: loads (or creates) the config, installs the signal handler and
/// runs the daemon until the core exits. Returns the core's exit.
pub fn run<D: WorkerDaemon>(config_path: &Path, record: Option<&Path>) -> Result<Exit, RunError> {
    let config = Config::load(config_path)?;
    tracing::info!(config = %config_path.display(), studio = %config.api_base_url, "starting");
    let mut daemon = D::from_config(config, config_path.to_path_buf())?;
    daemon.set_record(record.map(Path::to_path_buf));
    crate::signals::forward_to(daemon.control())
        .map_err(RunError::io("install the SIGINT/SIGTERM handler"))?;
    Ok(daemon.run())
}

/// The whole `main` of a worker binary: parse the command line, set up logging (`warn` by
/// default for `demo`, so its table stands out; `info` otherwise) and the crypto provider,
/// carry the command out, and return the process exit code.
pub fn main<D: WorkerDaemon>() -> std::process::ExitCode {
    let cli = Cli::parse();
    let quiet = matches!(cli.command, CliCommand::Demo { .. });
    crate::logging::init_with_default(if quiet {
        LevelFilter::WARN
    } else {
        LevelFilter::INFO
    });
    // Before any TLS use (see crate::tls).
    crate::tls::install_crypto_provider();
    std::process::ExitCode::from(u8::try_from(run_cli::<D>(&cli)).unwrap_or(1))
}

/// Carries out the command line; returns the process exit code. An error exit ends with
/// one `studio-worker: <reason>` line on stderr.
pub fn run_cli<D: WorkerDaemon>(cli: &Cli) -> i32 {
    match run_admin_command(cli, &mut std::io::stdout()) {
        Ok(Some(code)) => return code,
        Ok(None) => {}
        Err(e) => {
            eprintln!("{PROGRAM}: {e}");
            return e.exit_code();
        }
    }
    let result = match &cli.command {
        CliCommand::Demo { out, keep_running } => {
            crate::demo::run::<D>(out.as_deref(), *keep_running)
        }
        _ => cli
            .config_path()
            .map_err(Into::into)
            .and_then(|path| run::<D>(&path, cli.record.as_deref()))
            .map(|exit| {
                if exit.code.is_error() {
                    // Also logged by the command router; repeated plainly so it is the last
                    // thing the operator sees, whatever RUST_LOG says.
                    eprintln!("{PROGRAM}: {}", exit.reason);
                }
                exit.code.code()
            }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{PROGRAM}: {e}");
            e.exit_code()
        }
    }
}
