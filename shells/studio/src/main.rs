//! `studio-local`: run the loopback studio server from the command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use studio_local::{AdminAuth, LocalConfig, LocalStudio, DEFAULT_BIND};
use tracing_subscriber::filter::{EnvFilter, LevelFilter};

const LONG_ABOUT: &str = "\
A loopback studio for studio-worker: the worker-facing studio routes (registration, the \
WebSocket session, result uploads) and a small JSON admin API, on one port, driven by the \
reference studio machine. Uploaded results are written to --out as <jobId>.<ext>.

Point a worker at it with `studio-worker register --api-base-url http://127.0.0.1:9790/`, \
then `studio-worker run`. Approve its registration with \
`curl -X POST -H \"Authorization: Bearer $ADMIN_TOKEN\" \
http://127.0.0.1:9790/local/requests/<requestId>/approve` (or start with --auto-approve), \
or pre-provision it with --worker ID:TOKEN. The admin token is printed at start.

Set RUST_LOG (e.g. `RUST_LOG=debug`) for more log output on stderr.";

const AFTER_HELP: &str = "\
Admin API (JSON). Every request needs `Authorization: Bearer <admin token>` (printed at
start; --no-admin-token turns that off), a Host of this machine, no foreign Origin, and
`Content-Type: application/json` when it has a body (at most 1 MiB):
  GET    /local                           the route list
  POST   /local/jobs                      {\"kind\":\"image|llm|audio_stt|audio_tts|video\",
                                           \"prompt\"?, \"task\"?, \"model\"?, \"modelSource\"?,
                                           \"vramGbEstimate\"?} -> {\"jobId\"}
  GET    /local/jobs                      jobs with state, worker, attempts, result summary
  GET    /local/jobs/:id                  one job with its task and result
  GET    /local/jobs/:id/result           the stored file, or the JSON result
  GET    /local/workers                   workers: connection, capabilities, heartbeat, logs
  POST   /local/workers                   {\"workerId\",\"authToken\"}: pre-provision
  DELETE /local/workers/:id               delete a worker (error worker_deleted, close 4004)
  GET    /local/workers/:id/logs          the worker's shipped logs
  GET    /local/requests                  pending registration requests
  POST   /local/requests/:id/approve      approve one
  POST   /local/requests/:id/reject       {\"reason\"?}: reject one
  GET    /local/stats                     counters
  POST   /local/shutdown                  stop the server

Test hooks (fault injection):
  GET    /local/faults                    armed counters
  POST   /local/faults                    {\"failUploads\":N, \"failUploadsStatus\":500,
                                           \"upgradeFailures\":N, \"upgradeStatus\":503,
                                           \"holdUploads\":N (never answered),
                                           \"dropResults\":N (completeJson/fail lost)}
  POST   /local/workers/:id/drop          close its TCP connection, no close frame
  POST   /local/workers/:id/stall         stop reading/writing its socket (half-open peer)
  POST   /local/workers/:id/close         {\"code\":4001,\"reason\":\"...\"}: send a close frame
  POST   /local/workers/:id/error         {\"code\":\"auth_failed\",\"message\":\"...\"}: error
                                           frame, then close with the paired code
  POST   /local/workers/:id/probe-offer   {\"jobId\":\"probe-1\",\"task\"?|\"claim\"?}: a raw offer
                                           for a job the studio does not know (a raw
                                           claim may be undecodable); the worker's
                                           replies to it are intercepted, not fed
  GET    /local/workers/:id/probe-replies those replies, oldest first
  GET    /local/workers/:id/connections   upgrade attempts, connections, last close code

Example:
  curl -s -XPOST localhost:9790/local/jobs -H \"Authorization: Bearer $ADMIN_TOKEN\" \\
       -H 'Content-Type: application/json' -d '{\"kind\":\"llm\",\"prompt\":\"hi\"}'";

/// The `studio-local` command line.
#[derive(Debug, Parser)]
#[command(
    name = "studio-local",
    version,
    about = "A loopback studio server for testing studio-worker (HTTP + WebSocket on one port)",
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP
)]
struct Cli {
    /// Address to listen on (loopback only unless --allow-remote).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_BIND)]
    bind: SocketAddr,
    /// Directory for uploaded results (created if missing).
    #[arg(long, value_name = "DIR", default_value = "./studio-local-out")]
    out: PathBuf,
    /// Approve every registration request at once.
    #[arg(long)]
    auto_approve: bool,
    /// Pre-provision a worker: ID:TOKEN (repeatable).
    #[arg(long = "worker", value_name = "ID:TOKEN", value_parser = parse_worker)]
    workers: Vec<(String, String)>,
    /// Allow a non-loopback --bind (no TLS: the admin token and workers' tokens cross the
    /// network in clear).
    #[arg(long)]
    allow_remote: bool,
    /// Serve the admin API without a token (for scripts on a single-user machine; the Host,
    /// Origin and content-type checks stay).
    #[arg(long)]
    no_admin_token: bool,
}

fn parse_worker(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((id, token)) if !id.is_empty() && !token.is_empty() => {
            Ok((id.to_string(), token.to_string()))
        }
        _ => Err("expected ID:TOKEN, both non-empty".into()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::builder()
                .with_default_directive(LevelFilter::INFO.into())
                .from_env_lossy(),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let cfg = LocalConfig {
        bind: cli.bind,
        out_dir: cli.out.clone(),
        auto_approve: cli.auto_approve,
        workers: cli.workers,
        allow_remote: cli.allow_remote,
        admin: if cli.no_admin_token {
            AdminAuth::Disabled
        } else {
            AdminAuth::Random
        },
        ..LocalConfig::default()
    };
    let studio = match LocalStudio::bind(cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("studio-local: {e}");
            return ExitCode::from(1);
        }
    };
    if cli.allow_remote && !cli.bind.ip().is_loopback() {
        eprintln!(
            "studio-local: WARNING: listening on {} with no TLS: tokens cross the network in \
             clear",
            cli.bind
        );
    }
    if studio.admin_token().is_none() {
        eprintln!(
            "studio-local: WARNING: --no-admin-token: any local program can drive the admin API"
        );
    }
    println!("studio-local listening on {}", studio.base_url());
    println!("results go to {}", cli.out.display());
    println!(
        "admin API: {}local (auto-approve: {})",
        studio.base_url(),
        if cli.auto_approve { "on" } else { "off" }
    );
    if let Some(token) = studio.admin_token() {
        println!("admin token: {token}");
        println!(
            "  export ADMIN_TOKEN={token}   # curl -H \"Authorization: Bearer $ADMIN_TOKEN\" ..."
        );
    }
    match studio.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("studio-local: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_parses_and_help_lists_the_admin_api() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "studio-local",
            "--worker",
            "w-1:tok:with:colons",
            "--worker",
            "w-2:t",
            "--auto-approve",
        ])
        .unwrap();
        assert_eq!(cli.workers[0], ("w-1".into(), "tok:with:colons".into()));
        assert_eq!(cli.workers.len(), 2);
        assert_eq!(cli.bind, DEFAULT_BIND.parse::<SocketAddr>().unwrap());
        assert!(Cli::try_parse_from(["studio-local", "--worker", "nocolon"]).is_err());
        assert!(!cli.no_admin_token);
        assert!(
            Cli::try_parse_from(["studio-local", "--no-admin-token"])
                .unwrap()
                .no_admin_token
        );
        let help = Cli::command().render_long_help().to_string();
        for needle in [
            "/local/jobs",
            "/local/faults",
            "--allow-remote",
            "--no-admin-token",
            "Authorization: Bearer",
            "/local/workers/:id/stall",
        ] {
            assert!(help.contains(needle), "{needle} missing in help");
        }
    }
}
