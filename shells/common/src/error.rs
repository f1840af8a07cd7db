//! The shell's error types: [`ShellError`] (config, CLI, entropy) and [`RunError`] (a
//! daemon that could not start), and [`PROGRAM`], the prefix of the line either is shown
//! on when a binary ends with it.
//!
//! Every message is written for the operator and never carries a secret: config parse
//! errors name the file, line and column but not the offending text, and no error embeds a
//! token or registration secret.

use std::fmt;
use std::io;
use std::path::PathBuf;

use studio_core::worker::ExitCode;

/// The prefix of the lines a binary prints on stderr when it ends with an error (both
/// binaries say the same: a studio operator cannot tell them apart).
pub const PROGRAM: &str = "studio-worker";

/// An error of the shared shell code (config, CLI, entropy).
#[derive(Debug)]
pub enum ShellError {
    /// No config directory could be determined (no home directory): pass `--config PATH`.
    NoConfigDir,
    /// Reading, writing or creating the config file failed.
    ConfigIo {
        /// The file (or directory) involved.
        path: PathBuf,
        /// What was being done (`read`, `write`, `create directory for`, ...).
        action: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The config file is not valid TOML or does not match the schema. The message is the
    /// parser's, with every quoted fragment of the file removed.
    ConfigParse {
        /// The config file.
        path: PathBuf,
        /// 1-based line of the error, when the parser located it.
        line: Option<usize>,
        /// 1-based column (in characters) of the error, when located.
        column: Option<usize>,
        /// The sanitised parser message.
        message: String,
    },
    /// The config parsed but a value is out of range.
    ConfigInvalid {
        /// The config file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A command-line value was rejected.
    InvalidArgument(String),
    /// The OS random source failed.
    Entropy(String),
    /// Writing a command's output (stdout) failed.
    Output(io::Error),
    /// A command that needs a running worker found none answering for this config.
    NotRunning { config: PathBuf },
    /// The running worker answered a command with an error.
    Worker(String),
    /// `check-update` could not read or understand the release feed.
    UpdateCheck(String),
    /// `install-service` / `uninstall-service` failed (what and why).
    Service(String),
}

impl ShellError {
    /// The process exit code for this error: `2` for a rejected argument (the usual
    /// command-line convention), `3` (the worker's "fatal / bad config" code) otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            ShellError::InvalidArgument(_) => 2,
            _ => ExitCode::Fatal.code(),
        }
    }
}

impl fmt::Display for ShellError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShellError::NoConfigDir => write!(
                f,
                "cannot find the configuration directory (no home directory?); \
                 pass --config PATH"
            ),
            ShellError::ConfigIo {
                path,
                action,
                source,
            } => write!(
                f,
                "cannot {action} config file {}: {source}",
                path.display()
            ),
            ShellError::ConfigParse {
                path,
                line,
                column,
                message,
            } => {
                write!(f, "config file {}", path.display())?;
                match (line, column) {
                    (Some(l), Some(c)) => write!(f, " line {l} column {c}")?,
                    (Some(l), None) => write!(f, " line {l}")?,
                    _ => {}
                }
                write!(f, ": {message}")
            }
            ShellError::ConfigInvalid { path, message } => {
                write!(f, "config file {}: {message}", path.display())
            }
            ShellError::InvalidArgument(message) => f.write_str(message),
            ShellError::Entropy(message) => write!(f, "the OS random source failed: {message}"),
            ShellError::Output(e) => write!(f, "cannot write output: {e}"),
            ShellError::NotRunning { config } => {
                write!(f, "no running worker for {}", config.display())
            }
            ShellError::Worker(message) => write!(f, "the running worker refused: {message}"),
            ShellError::UpdateCheck(message) => write!(f, "update check failed: {message}"),
            ShellError::Service(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for ShellError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ShellError::ConfigIo { source, .. } | ShellError::Output(source) => Some(source),
            _ => None,
        }
    }
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
