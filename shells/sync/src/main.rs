//! `studio-worker` (sync shell): see the library docs of `studio_worker_sync`.

use std::process::ExitCode;

use clap::Parser;
use studio_shell::cli::{run_admin_command, Cli, CliCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = matches!(cli.command, CliCommand::Demo { .. });
    studio_shell::logging::init_with_default(if quiet {
        tracing::level_filters::LevelFilter::WARN
    } else {
        tracing::level_filters::LevelFilter::INFO
    });
    // Before any TLS use (see studio_shell::tls).
    studio_shell::tls::install_crypto_provider();
    ExitCode::from(u8::try_from(run(&cli)).unwrap_or(1))
}

/// Carries out the command line; returns the process exit code.
fn run(cli: &Cli) -> i32 {
    match run_admin_command(cli, &mut std::io::stdout()) {
        Ok(Some(code)) => return code,
        Ok(None) => {}
        Err(e) => {
            eprintln!("studio-worker: {e}");
            return e.exit_code();
        }
    }
    let result = match &cli.command {
        CliCommand::Demo { out, keep_running } => {
            studio_worker_sync::demo::run(out.as_deref(), *keep_running)
        }
        _ => cli
            .config_path()
            .map_err(Into::into)
            .and_then(|path| studio_worker_sync::run(&path, cli.record.as_deref()))
            .map(|exit| {
                if exit.code.is_error() {
                    // Also logged by the command router; repeated plainly so it is the last
                    // thing the operator sees, whatever RUST_LOG says.
                    eprintln!("studio-worker: {}", exit.reason);
                }
                exit.code.code()
            }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("studio-worker: {e}");
            e.exit_code()
        }
    }
}
