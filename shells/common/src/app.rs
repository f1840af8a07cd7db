//! The application: the whole `main` of both worker binaries, written once on any
//! [`WorkerDaemon`], so both behave the same to an operator.
//!
//! * [`main`]: CLI, logging, the crypto provider, admin subcommands, `run`, `demo`, exit
//!   codes and the last line on stderr;
//! * [`run`]: `studio-worker run` (take the config's `daemon.lock`, load the config and
//!   mint its local API token on the first run, start the daemon, forward SIGINT /
//!   SIGTERM, serve the local control API, run until the core exits, then close the API
//!   and release the lock);
//! * `demo` runs the daemon against the loopback studio (`crate::demo`, feature `demo`);
//!   a build without it answers with a usage error naming the command that builds one
//!   ([`demo_not_built`]);
//! * `ui` opens the desktop window: its code lives in its own crate (`studio-ui`, which
//!   depends on this one), so a binary built with its `ui` feature passes the window's
//!   entry point in ([`main_with`]); without it `ui` is a usage error naming the command
//!   that builds one ([`ui_not_built`]).

use std::path::Path;

use clap::Parser;
use tracing::level_filters::LevelFilter;

use crate::cli::{run_admin_command, Cli, CliCommand, UiArgs};
use crate::config::Config;
use crate::control::Exit;
use crate::daemon::WorkerDaemon;
use crate::error::{RunError, ShellError};
use crate::lock::{DaemonLock, Lock};
use studio_core::worker::ExitCode;

/// `studio-worker run`: takes the config's `daemon.lock` (another worker holding it: a
/// message naming its pid and a clean exit, so a service manager does not restart-loop),
/// loads (or creates) the config, mints the local control API token on the first run,
/// installs the signal handler, serves the local control API and runs the daemon until
/// the core exits. Returns the core's exit. The API and the lock are released on every
/// way out of here (they are dropped).
pub fn run<D: WorkerDaemon>(config_path: &Path, record: Option<&Path>) -> Result<Exit, RunError> {
    let lock = match DaemonLock::acquire(config_path)? {
        Lock::Acquired(lock) => lock,
        Lock::HeldBy { pid, path } => {
            let who = match pid {
                Some(pid) => format!("another worker (pid {pid})"),
                None => "another worker".to_string(),
            };
            let reason = format!(
                "{who} is already running for {} (it holds {}); not starting a second one",
                config_path.display(),
                path.display()
            );
            tracing::warn!("{reason}");
            crate::logging::program_line(&reason);
            return Ok(Exit {
                code: ExitCode::Clean,
                reason,
            });
        }
    };
    let mut config = Config::load(config_path)?;
    if config.local_api_token.is_none() {
        config.local_api_token = Some(crate::entropy::random_hex(32)?);
        config.save(config_path)?;
        tracing::info!("minted the local control API token (local_api_token in the config)");
    }
    for secret in [
        &config.auth_token,
        &config.registration_secret,
        &config.local_api_token,
    ]
    .into_iter()
    .flatten()
    {
        crate::telemetry::remember_secret(secret);
    }
    tracing::info!(config = %config_path.display(), studio = %config.api_base_url, "starting");
    if let Some(warning) = config.insecure_url_warning() {
        tracing::warn!("{warning}");
    }
    let mut daemon = D::from_config(config.clone(), config_path.to_path_buf())?;
    daemon.set_record(record.map(Path::to_path_buf));
    let control = daemon.control();
    crate::signals::forward_to(control.clone())
        .map_err(RunError::io("install the SIGINT/SIGTERM handler"))?;
    let api = crate::api::serve(&config, config_path, control);
    // Resolved now: once an update has replaced the file, the OS names the running image
    // "(deleted)".
    let exe = std::env::current_exe();
    let exit = daemon.run();
    // The API goes first (local-api.json removed, port closed), then the lock.
    release(api, lock);
    if exit.code == ExitCode::Restart {
        return Ok(restart(exit, exe));
    }
    Ok(exit)
}

/// Gives up what the next process (a restarted worker) must be able to take: the control
/// API (local-api.json removed, port closed) first, then `daemon.lock`.
fn release(api: Option<crate::api::ApiServer>, lock: DaemonLock) {
    drop(api);
    lock.release();
}

/// After an installed update: executes the new binary with this process's arguments and
/// environment. Returns only when that failed: then the exit is an error (so a service
/// manager starts the worker again, on the new binary, which is already in place).
fn restart(exit: Exit, exe: std::io::Result<std::path::PathBuf>) -> Exit {
    let exe = match exe {
        Ok(exe) => exe,
        Err(e) => {
            return Exit {
                code: ExitCode::Fatal,
                reason: format!(
                    "{}; cannot find the executable to restart: {e}",
                    exit.reason
                ),
            }
        }
    };
    tracing::info!(exe = %exe.display(), "{}", exit.reason);
    crate::telemetry::flush();
    let e = crate::update::reexec(&exe);
    Exit {
        code: ExitCode::Fatal,
        reason: format!("{}; executing {} failed: {e}", exit.reason, exe.display()),
    }
}

/// The whole `main` of a worker binary: parse the command line, set up Sentry (`run` only,
/// when `SENTRY_DSN` is set), logging (`warn` by default for `demo`, so its table stands
/// out; `info` otherwise) and the crypto provider, carry the command out, flush Sentry,
/// and return the process exit code.
pub fn main<D: WorkerDaemon>() -> std::process::ExitCode {
    main_with::<D>(None)
}

/// The desktop window's entry point: `ui` for the worker of a config; returns the process
/// exit code.
pub type UiMain = fn(&Path, &UiArgs) -> i32;

/// [`main`] of a binary that carries the desktop window (`ui`: `Some(entry point)`).
pub fn main_with<D: WorkerDaemon>(ui: Option<UiMain>) -> std::process::ExitCode {
    let cli = Cli::parse();
    let quiet = matches!(cli.command, CliCommand::Demo { .. });
    let (telemetry, warning) = if cli.command == CliCommand::Run {
        let name = crate::host::hostname().unwrap_or_else(|| "unknown-host".into());
        crate::telemetry::init_from_env(&name)
    } else {
        (None, None)
    };
    crate::logging::init_with(
        if quiet {
            LevelFilter::WARN
        } else {
            LevelFilter::INFO
        },
        telemetry.is_some(),
    );
    if let Some(warning) = warning {
        tracing::warn!("{warning}");
    }
    // Every line logged is on stderr before `main` returns (or unwinds).
    let _lines = crate::logging::FlushOnDrop;
    // Before any TLS use (see crate::tls).
    crate::tls::install_crypto_provider();
    let code = run_cli_with::<D>(&cli, ui);
    // Sends what is queued (at most 2 s) before the process exits.
    drop(telemetry);
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Carries out the command line; returns the process exit code. An error exit ends with
/// one `studio-worker: <reason>` line on stderr.
pub fn run_cli<D: WorkerDaemon>(cli: &Cli) -> i32 {
    run_cli_with::<D>(cli, None)
}

/// [`run_cli`] with the desktop window's entry point, when the binary carries it.
pub fn run_cli_with<D: WorkerDaemon>(cli: &Cli, ui: Option<UiMain>) -> i32 {
    match run_admin_command(cli, &mut std::io::stdout()) {
        Ok(Some(code)) => return code,
        Ok(None) => {}
        Err(e) => {
            crate::logging::program_line(&e);
            return e.exit_code();
        }
    }
    let result = match &cli.command {
        CliCommand::Demo { out, keep_running } => demo::<D>(out.as_deref(), *keep_running),
        CliCommand::Ui(args) => match ui {
            Some(window) => cli
                .config_path()
                .map_err(Into::into)
                .map(|path| window(&path, args)),
            None => Err(ui_not_built(D::PACKAGE)),
        },
        _ => cli
            .config_path()
            .map_err(Into::into)
            .and_then(|path| run::<D>(&path, cli.record.as_deref()))
            .map(|exit| {
                if exit.code.is_error() {
                    // Also logged by the command router; repeated plainly so it is the last
                    // thing the operator sees, whatever RUST_LOG says.
                    crate::logging::program_line(&exit.reason);
                }
                exit.code.code()
            }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            crate::logging::program_line(&e);
            e.exit_code()
        }
    }
}

/// `studio-worker demo` (see `crate::demo`).
#[cfg(feature = "demo")]
fn demo<D: WorkerDaemon>(out: Option<&Path>, keep_running: bool) -> Result<i32, RunError> {
    crate::demo::run::<D>(out, keep_running)
}

/// `studio-worker demo` in a build without the loopback studio: [`demo_not_built`].
#[cfg(not(feature = "demo"))]
fn demo<D: WorkerDaemon>(_out: Option<&Path>, _keep_running: bool) -> Result<i32, RunError> {
    Err(demo_not_built(D::PACKAGE))
}

/// What `demo` answers in a build of `package` without the `demo` feature (the loopback
/// studio is left out of worker builds): a usage error (exit 2) giving the exact command
/// that builds and runs a worker with the demo.
pub fn demo_not_built(package: &str) -> RunError {
    RunError::Shell(ShellError::InvalidArgument(format!(
        "this build of {package} has no demo (the loopback studio is only built in on \
         request); build and run it with: cargo run --release -p {package} --features demo \
         -- demo"
    )))
}

/// What `ui` answers in a build of `package` without the `ui` feature (the window and
/// its GL and tray libraries are left out of headless and service builds): a usage error
/// (exit 2) giving the exact command that builds and opens one.
pub fn ui_not_built(package: &str) -> RunError {
    RunError::Shell(ShellError::InvalidArgument(format!(
        "this build of {package} has no desktop window (it is only built in on request); \
         build and open it with: cargo run --release -p {package} --features ui -- ui"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_without_the_window_names_the_command_that_builds_one() {
        let e = ui_not_built("studio-worker");
        assert_eq!(e.exit_code(), 2);
        let message = e.to_string();
        assert!(
            message.contains("cargo run --release -p studio-worker --features ui -- ui"),
            "{message}"
        );
        assert!(!message.contains('\n'), "one line: {message}");
        let cli = Cli::parse_from(["studio-worker", "--config", "/nonexistent/c.toml", "ui"]);
        assert_eq!(run_cli_with::<NoDaemon>(&cli, None), 2);
        let window: UiMain = |path, _| i32::from(path.ends_with("c.toml")) + 40;
        assert_eq!(run_cli_with::<NoDaemon>(&cli, Some(window)), 41);
    }

    /// A daemon type for the CLI paths that never start one.
    struct NoDaemon;

    impl WorkerDaemon for NoDaemon {
        const PACKAGE: &'static str = "studio-worker";
        const SHELL: &'static str = "none";
        fn new(_: crate::session::Setup) -> Result<Self, RunError> {
            Err(RunError::Shell(ShellError::NoConfigDir))
        }
        fn control(&self) -> crate::control::Control {
            crate::control::Control::new(|_| {})
        }
        fn set_record(&mut self, _: Option<std::path::PathBuf>) {}
        fn set_tls_config(&mut self, _: std::sync::Arc<rustls::ClientConfig>) {}
        fn run(self) -> Exit {
            unreachable!("never started")
        }
    }

    #[test]
    fn a_build_without_the_demo_names_the_command_that_builds_one() {
        let e = demo_not_built("studio-worker-async");
        assert_eq!(e.exit_code(), 2);
        let message = e.to_string();
        assert!(
            message.contains("cargo run --release -p studio-worker-async --features demo -- demo"),
            "{message}"
        );
        assert!(!message.contains('\n'), "one line: {message}");
    }
}
