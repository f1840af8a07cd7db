//! The `studio-worker` command line (PROTOCOL.md §7.3) and the admin subcommands both
//! binaries share.
//!
//! [`Cli`] is parsed with clap. `run` (the daemon) and `demo` are carried out by the
//! binary; `register` and `config` only touch the config file, `replay` only reads (and
//! with `--bless` rewrites) a trace; `status`, `set-threshold`, `enable` and `disable` touch
//! the config file and, when a worker runs for it, ask that worker through its local
//! control API (found through `local-api.json`, loopback only); `pause` and `resume` only
//! ask the running worker. They are implemented here ([`run_admin_command`]), so both
//! binaries behave identically. None of them talks to the studio.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use studio_core::worker::vram_threshold_warning;

use serde_json::Value;

use crate::api::client::{Client, ClientError};
use crate::config::{
    default_config_path, validate_api_base_url, validate_threshold, Config, RegistrationView,
};
use crate::error::ShellError;

const ABOUT: &str = "A studio worker: takes generation jobs from a minis.gg studio and runs \
                     them on this machine";

const LONG_ABOUT: &str = "\
A studio worker: takes generation jobs (image, LLM chat, speech-to-text, text-to-speech, \
video) from a minis.gg studio and runs them on this machine's engines.

On first `run` the worker asks the studio to register it and waits until an operator \
approves it in the studio dashboard; after that it holds one WebSocket session, accepts \
offers, and returns results. Settings and the registration live in config.toml (see \
`studio-worker status` for its path). Set RUST_LOG (e.g. `RUST_LOG=debug`) for more log \
output on stderr.";

/// The `studio-worker` command line.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "studio-worker",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    propagate_version = true,
    arg_required_else_help = true
)]
pub struct Cli {
    /// Use this config file instead of the default one in the OS config directory.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        help = "Use this config file instead of the default \
                (<OS config dir>/minis-studio-worker/config.toml); created with defaults \
                when missing"
    )]
    pub config: Option<PathBuf>,

    /// Record the session: every input the worker core gets, with its time, and a hash of
    /// the core's answer, as JSON lines (tokens and secrets masked), for `replay`.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        help = "Record the session into PATH (JSON lines, created 0600; tokens and secrets \
                masked) for `studio-worker replay`"
    )]
    pub record: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: CliCommand,
}

/// The subcommands.
#[derive(Clone, Debug, PartialEq, Subcommand)]
pub enum CliCommand {
    /// Run the worker daemon: register if needed, connect to the studio, take jobs
    #[command(long_about = "\
Run the worker daemon until stopped (Ctrl-C / SIGTERM).

Without credentials it first requests registration and polls until an operator approves \
it in the studio dashboard. Then it connects to the studio, advertises this machine's \
engines, accepts job offers and returns the results, reconnecting with backoff when the \
connection drops.

Exit codes: 0 stopped on request, 3 fatal error or bad config, 4 the studio refused the \
credentials (run `studio-worker register --reset`), 5 registration rejected.")]
    Run,

    /// Set the studio URL and/or forget the registration (no network)
    #[command(long_about = "\
Set the studio URL and/or forget this worker's registration. Nothing is sent to the \
studio: the daemon requests approval the next time it runs.

--reset clears worker_id, auth_token, registration_request_id, registration_secret and \
install_id, so the next `run` asks for approval as a new worker. Stop the daemon before \
resetting: a running daemon keeps its credentials in memory.")]
    Register {
        /// The studio's base URL (saved as `api_base_url`).
        #[arg(
            long,
            value_name = "URL",
            value_parser = parse_api_base_url,
            help = "The studio's base URL, e.g. https://studio.minis.gg/ (saved as api_base_url)"
        )]
        api_base_url: Option<String>,
        /// Forget the worker id, auth token, pending request, secret and install id.
        #[arg(long)]
        reset: bool,
    },

    /// Show the config, the registration and, when a worker runs, its live state
    #[command(long_about = "\
Show the config file path, the studio URL, the registration state (approved, pending \
operator approval, or not registered), the VRAM threshold, the models directory, the \
auto-update and auto_enabled settings. When a worker runs for this config (found through \
local-api.json beside it), also its live state: the session, the current job and its \
elapsed time, paused and enabled, the last heartbeat acknowledgement and the recent \
outcomes. Secrets are never shown.

With --json: one object; its \"daemon\" key holds the running worker's /daemon/status, or \
null when none answers.")]
    Status {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },

    /// Pause the running worker: it rejects offers until resumed (not saved)
    #[command(long_about = "\
Pause the worker running for this config: it rejects every offer (code paused) and \
advertises autoEnabled: false until `studio-worker resume`. A job in flight finishes. The \
pause is not saved: a restarted worker is never paused (see `disable` for that).

Exit codes: 0 paused, 3 no running worker for this config.")]
    Pause,

    /// Resume the running worker after `pause`
    #[command(long_about = "\
Resume the worker running for this config after `studio-worker pause`: it takes offers \
again (unless it is disabled).

Exit codes: 0 resumed, 3 no running worker for this config.")]
    Resume,

    /// Disable the worker: reject offers until enabled (saved: auto_enabled = false)
    #[command(long_about = "\
Disable the worker: save auto_enabled = false in config.toml and, when a worker runs for \
this config, apply it at once. A disabled worker stays connected but rejects every offer \
(code paused) and advertises autoEnabled: false, across restarts, until \
`studio-worker enable`.")]
    Disable,

    /// Enable the worker again (saved: auto_enabled = true)
    #[command(long_about = "\
Enable the worker: save auto_enabled = true in config.toml and, when a worker runs for \
this config, apply it at once (unless it is paused, it takes offers again).")]
    Enable,

    /// Set the VRAM threshold in GB advertised to the studio
    #[command(long_about = "\
Set vram_threshold_gb: the studio only offers jobs whose VRAM estimate is at most this \
many GB. Must be a number >= 0. A worker running for this config applies it at once (and \
advertises it with its next heartbeat); otherwise it is saved for the next start.")]
    SetThreshold {
        /// Gigabytes, a number >= 0 (e.g. 8 or 10.5).
        #[arg(
            value_name = "GB",
            value_parser = parse_threshold,
            allow_negative_numbers = true
        )]
        gb: f32,
    },

    /// Print the resolved configuration as TOML (secrets redacted)
    #[command(long_about = "\
Print the resolved configuration (defaults filled in, `~` expanded) as TOML. The auth \
token, the registration secret and other secret-looking values are shown as <redacted>.")]
    Config,

    /// Replay a session recorded with --record and check the core still answers the same
    #[command(long_about = "\
Replay a session recorded with `--record PATH`: feed every recorded input, at its recorded \
time, to a fresh worker core built from the recorded configuration, and compare the hash of \
the core's commands at every step with the recording. Prints `replayed N steps: OK`, or the \
first divergence (the step, its input, both hashes and the commands the replay produced).

Exit codes: 0 every step reproduced (or --bless rewrote the file), 1 the core diverged, 2 \
the trace is unreadable or malformed.")]
    Replay {
        /// The trace file.
        #[arg(value_name = "PATH")]
        path: PathBuf,
        /// Print a readable transcript: time, input and commands of every step.
        #[arg(long)]
        explain: bool,
        /// Rewrite the recorded hashes with the replay's (after an intended change).
        #[arg(long)]
        bless: bool,
    },

    /// Check the release feed for a newer version of this binary (installs nothing)
    #[command(long_about = "\
Check the release feed (auto_update_feed, default: this project's GitHub releases) for a \
newer release of this binary for this platform. Prints `up to date: X` or `update \
available: X -> Y`; installs nothing (a running worker with auto_update_enabled installs \
updates itself, between jobs).

Exit codes: 0 the feed answered, 3 the feed could not be read or understood.")]
    CheckUpdate,

    /// Start this worker at login: a systemd user unit, a LaunchAgent or a scheduled task
    #[command(long_about = "\
Install the worker as a service that starts at login and restarts on failure, running \
`<this executable> --config <this config> run`: on Linux a systemd user unit \
($XDG_CONFIG_HOME/systemd/user/<bin>.service, then `systemctl --user daemon-reload` and \
`systemctl --user enable --now <bin>.service`), on macOS a LaunchAgent \
(~/Library/LaunchAgents/gg.minis.<bin>.plist, loaded with `launchctl bootstrap`), on \
Windows a Task Scheduler task (registered with `schtasks /Create /XML`). When the service \
manager does not answer, the file is written and the commands to run are printed.")]
    InstallService {
        /// Print the file and the commands instead of changing anything.
        #[arg(long)]
        dry_run: bool,
    },

    /// Stop and remove the service `install-service` installed
    #[command(long_about = "\
Stop and disable the service when the service manager answers, remove its file and \
reload the manager. Exits 0 when nothing is installed.")]
    UninstallService,

    /// Run a self-contained demo: a local studio, this worker and a few jobs
    #[command(long_about = "\
Run a self-contained demo: start a local loopback studio, connect this worker to it, \
submit a few jobs to the synthetic engine and write the results to a directory. Needs no \
network and no registration.")]
    Demo {
        /// Where to write the results (default: ./demo-out).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Keep the worker and the local studio running after the demo jobs finish.
        #[arg(long)]
        keep_running: bool,
    },
}

impl Cli {
    /// The config file: `--config PATH` or the OS default.
    pub fn config_path(&self) -> Result<PathBuf, ShellError> {
        match &self.config {
            Some(p) => Ok(p.clone()),
            None => default_config_path(),
        }
    }
}

fn parse_threshold(s: &str) -> Result<f32, String> {
    let gb: f32 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of GB"))?;
    validate_threshold(gb)?;
    Ok(gb)
}

fn parse_api_base_url(s: &str) -> Result<String, String> {
    validate_api_base_url(s)?;
    Ok(s.trim().to_string())
}

/// Carries out an admin subcommand (`register`, `status`, `pause`, `resume`, `enable`,
/// `disable`, `set-threshold`, `config`, `replay`, `check-update`, `install-service`,
/// `uninstall-service`), writing its report to `out`. Returns `Ok(Some(exit_code))` when the command was handled
/// here, `Ok(None)` for `run` and `demo`, which the binary carries out itself.
pub fn run_admin_command(cli: &Cli, out: &mut dyn Write) -> Result<Option<i32>, ShellError> {
    let text = match &cli.command {
        CliCommand::Run | CliCommand::Demo { .. } => return Ok(None),
        CliCommand::Register {
            api_base_url,
            reset,
        } => register(&cli.config_path()?, api_base_url.as_deref(), *reset)?,
        CliCommand::Status { json } => status(&cli.config_path()?, *json)?,
        CliCommand::Pause => pause(&cli.config_path()?, true)?,
        CliCommand::Resume => pause(&cli.config_path()?, false)?,
        CliCommand::Enable => set_enabled(&cli.config_path()?, true)?,
        CliCommand::Disable => set_enabled(&cli.config_path()?, false)?,
        CliCommand::SetThreshold { gb } => set_threshold(&cli.config_path()?, *gb)?,
        CliCommand::Config => show_config(&cli.config_path()?)?,
        CliCommand::CheckUpdate => check_update(&cli.config_path()?)?,
        CliCommand::InstallService { dry_run } => {
            let path = cli.config_path()?;
            let plan = service_plan(&path)?;
            crate::service::install(&plan, *dry_run, &mut crate::service::System)?
        }
        CliCommand::UninstallService => {
            let plan = service_plan(&cli.config_path()?)?;
            crate::service::uninstall(&plan, &mut crate::service::System)?
        }
        CliCommand::Replay {
            path,
            explain,
            bless,
        } => {
            let code = crate::record::replay_command(path, *explain, *bless, out);
            out.flush().map_err(ShellError::Output)?;
            return Ok(Some(code));
        }
    };
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(ShellError::Output)?;
    Ok(Some(0))
}

/// `check-update`: reads the feed with this config's `auto_update_feed` and
/// `auto_update_prerelease`. Returns the line to print; a feed error is
/// [`ShellError::UpdateCheck`] (exit 3).
pub fn check_update(path: &Path) -> Result<String, ShellError> {
    let config = Config::load(path)?;
    let updater = crate::update::Updater::from_config(&config);
    match updater.check().map_err(ShellError::UpdateCheck)? {
        crate::update::Checked::UpToDate { current } => Ok(format!("up to date: {current}\n")),
        crate::update::Checked::Available { current, release } => Ok(format!(
            "update available: {current} -> {}\n",
            release.version
        )),
    }
}

/// The service plan of this executable and config on this OS.
fn service_plan(config: &Path) -> Result<crate::service::Plan, ShellError> {
    let exe = std::env::current_exe()
        .map_err(|e| ShellError::Service(format!("cannot find the running executable: {e}")))?;
    // The config must exist for the service to run with it.
    Config::load(config)?;
    let service = crate::service::Service::new(&exe, config)?;
    crate::service::plan(
        crate::service::Manager::current(),
        &service,
        &crate::service::Dirs::from_env(config),
    )
}

/// `register [--api-base-url URL] [--reset]`: persists the URL and/or clears the
/// registration. Returns the report.
pub fn register(
    path: &Path,
    api_base_url: Option<&str>,
    reset: bool,
) -> Result<String, ShellError> {
    let mut config = Config::load(path)?;
    let mut report = String::new();
    if reset {
        config.clear_registration();
        report.push_str(
            "registration reset: worker_id, auth_token, registration_request_id, \
             registration_secret and install_id cleared\n",
        );
    }
    if let Some(url) = api_base_url {
        validate_api_base_url(url)
            .map_err(|e| ShellError::InvalidArgument(format!("--api-base-url: {e}")))?;
        config.api_base_url = url.trim().to_string();
        report.push_str(&format!("api_base_url set to {}\n", config.api_base_url));
    }
    if reset || api_base_url.is_some() {
        config.save(path)?;
        report.push_str(&format!("saved {}\n", path.display()));
    } else {
        report.push_str("nothing changed (use --api-base-url URL and/or --reset)\n");
    }
    report.push_str(&format!(
        "registration: {}\n",
        registration_line(&config.registration())
    ));
    if !matches!(config.registration(), RegistrationView::Approved { .. }) {
        report.push_str(
            "next: run `studio-worker run`; it requests registration and waits until an \
             operator approves it in the studio dashboard\n",
        );
    }
    Ok(report)
}

/// The one-line registration summary of `status`.
pub fn registration_line(view: &RegistrationView<'_>) -> String {
    match view {
        RegistrationView::Approved { worker_id } => format!("approved as {worker_id}"),
        RegistrationView::Pending { request_id } => {
            format!("pending operator approval (request {request_id})")
        }
        RegistrationView::NotRegistered => {
            "not registered (`studio-worker run` requests approval from the studio)".to_string()
        }
    }
}

/// The running worker of `path`, when one answers `route` (a `GET`).
fn live(path: &Path, route: &str) -> Option<Value> {
    Client::for_config(path)?.get(route).ok()
}

/// What a call to the running worker's API became, for a command that needs a worker.
fn worker_answer(path: &Path, answer: Result<Value, ClientError>) -> Result<Value, ShellError> {
    answer.map_err(|e| match e {
        ClientError::NotRunning => ShellError::NotRunning {
            config: path.to_path_buf(),
        },
        ClientError::Failed { status, message } => {
            ShellError::Worker(format!("{message} (HTTP {status})"))
        }
    })
}

/// `pause` (`paused`) / `resume`: asks the running worker. Returns the report.
pub fn pause(path: &Path, paused: bool) -> Result<String, ShellError> {
    let route = if paused {
        "/daemon/pause"
    } else {
        "/daemon/resume"
    };
    let client = Client::for_config(path).ok_or_else(|| ShellError::NotRunning {
        config: path.to_path_buf(),
    })?;
    let answer = worker_answer(path, client.post(route))?;
    Ok(if answer["paused"] == Value::Bool(true) {
        "paused: the worker rejects offers until `studio-worker resume` (a running job finishes)\n"
            .to_string()
    } else {
        "resumed: the worker takes offers again (unless it is disabled)\n".to_string()
    })
}

/// `enable` / `disable`: saves `auto_enabled` and, when a worker answers, applies it there
/// (the worker saves the file itself then). Returns the report.
pub fn set_enabled(path: &Path, enabled: bool) -> Result<String, ShellError> {
    let route = if enabled {
        "/daemon/enable"
    } else {
        "/daemon/disable"
    };
    let what = if enabled {
        "enabled (auto_enabled = true)"
    } else {
        "disabled (auto_enabled = false): offers are rejected until `studio-worker enable`"
    };
    match Client::for_config(path).map(|c| c.post(route)) {
        Some(Ok(_)) => Ok(format!(
            "{what}; saved in {} and applied to the running worker\n",
            path.display()
        )),
        Some(Err(e @ ClientError::Failed { .. })) => {
            worker_answer(path, Err(e)).map(|_| String::new())
        }
        None | Some(Err(ClientError::NotRunning)) => {
            let mut config = Config::load(path)?;
            config.auto_enabled = enabled;
            config.save(path)?;
            Ok(format!(
                "{what}; saved in {} (no running worker for it: applies when it starts)\n",
                path.display()
            ))
        }
    }
}

/// The live lines of `status` from a running worker's `/daemon/status`.
fn live_lines(d: &Value) -> String {
    let yes_no = |v: &Value| {
        if v.as_bool() == Some(true) {
            "yes"
        } else {
            "no"
        }
    };
    let mut out = format!(
        "worker:          running (pid {}), session {}\n\
         paused:          {}\n\
         enabled:         {}\n",
        d["pid"],
        d["session"].as_str().unwrap_or("?"),
        yes_no(&d["paused"]),
        yes_no(&d["enabled"]),
    );
    if let Some(request) = d["registrationRequestId"].as_str() {
        out.push_str(&format!(
            "awaiting:        operator approval of request {request}\n"
        ));
    }
    let job = &d["currentJob"];
    if job.is_object() {
        out.push_str(&format!(
            "current job:     {} ({}, {}) for {}\n",
            job["jobId"].as_str().unwrap_or("?"),
            job["kind"].as_str().unwrap_or("?"),
            job["model"].as_str().unwrap_or("?"),
            seconds(&job["elapsedMs"]),
        ));
    } else {
        out.push_str("current job:     none\n");
    }
    match d["lastHeartbeatAckMsAgo"].as_u64() {
        Some(_) => out.push_str(&format!(
            "last heartbeat:  acknowledged {} ago\n",
            seconds(&d["lastHeartbeatAckMsAgo"])
        )),
        None => out.push_str("last heartbeat:  not acknowledged yet\n"),
    }
    let recent = d["recentJobs"].as_array().cloned().unwrap_or_default();
    let count = |o: &str| recent.iter().filter(|j| j["outcome"] == o).count();
    let mut line = format!(
        "recent jobs:     {} completed, {} failed",
        count("completed"),
        count("failed")
    );
    if let Some(last) = recent.first() {
        line.push_str(&format!(
            "; last {} {} in {}",
            last["jobId"].as_str().unwrap_or("?"),
            last["outcome"].as_str().unwrap_or("?"),
            seconds(&last["ms"]),
        ));
    }
    out.push_str(&line);
    out.push_str(&format!("\nreconnects:      {}\n", d["reconnects"]));
    let check = &d["lastUpdateCheck"];
    match check["text"].as_str() {
        Some(text) => out.push_str(&format!(
            "update check:    {text} (at {})\n",
            check["at"].as_str().unwrap_or("?")
        )),
        None => out.push_str("update check:    none yet\n"),
    }
    out
}

/// Milliseconds as seconds for people (`1.2 s`).
fn seconds(ms: &Value) -> String {
    match ms.as_u64() {
        Some(ms) => format!("{:.1} s", ms as f64 / 1000.0),
        None => "?".to_string(),
    }
}

/// `status [--json]`. Returns the report.
pub fn status(path: &Path, json: bool) -> Result<String, ShellError> {
    let config = Config::load(path)?;
    let daemon = live(path, "/daemon/status");
    let view = config.registration();
    if json {
        let registration = match view {
            RegistrationView::Approved { worker_id } => {
                serde_json::json!({"state": "approved", "worker_id": worker_id})
            }
            RegistrationView::Pending { request_id } => {
                serde_json::json!({"state": "pending", "request_id": request_id})
            }
            RegistrationView::NotRegistered => serde_json::json!({"state": "not_registered"}),
        };
        let value = serde_json::json!({
            "config_path": path.display().to_string(),
            "api_base_url": config.api_base_url,
            "registration": registration,
            "vram_threshold_gb": config.vram_threshold_gb,
            "models_root": config.models_root.display().to_string(),
            "auto_update": {
                "enabled": config.auto_update_enabled,
                "interval_secs": config.auto_update_interval_secs,
            },
            "only_when_idle": config.only_when_idle,
            "auto_enabled": config.auto_enabled,
            "daemon": daemon,
        });
        return Ok(format!("{value}\n"));
    }
    let auto_update = if config.auto_update_enabled {
        format!("enabled (every {} s)", config.auto_update_interval_secs)
    } else {
        "disabled".to_string()
    };
    let mut report = format!(
        "config:          {}\n\
         studio:          {}\n\
         registration:    {}\n\
         vram threshold:  {} GB\n\
         models root:     {}\n\
         auto-update:     {}\n\
         auto_enabled:    {}\n",
        path.display(),
        config.api_base_url,
        registration_line(&view),
        config.vram_threshold_gb,
        config.models_root.display(),
        auto_update,
        config.auto_enabled,
    );
    match &daemon {
        Some(d) => report.push_str(&live_lines(d)),
        None => report.push_str("worker:          not running\n"),
    }
    Ok(report)
}

/// `set-threshold <gb>`: validates and persists `vram_threshold_gb`, and applies it to the
/// running worker when one answers (which saves it itself). Returns the report.
pub fn set_threshold(path: &Path, gb: f32) -> Result<String, ShellError> {
    validate_threshold(gb)
        .map_err(|e| ShellError::InvalidArgument(format!("vram threshold {e}")))?;
    let body = serde_json::json!({ "vramThresholdGb": gb });
    let mut report = match Client::for_config(path).map(|c| c.patch("/daemon/config", &body)) {
        Some(Ok(_)) => format!(
            "vram threshold set to {gb} GB in {} and applied to the running worker\n",
            path.display()
        ),
        Some(Err(e @ ClientError::Failed { .. })) => {
            return worker_answer(path, Err(e)).map(|_| String::new())
        }
        None | Some(Err(ClientError::NotRunning)) => {
            let mut config = Config::load(path)?;
            config.vram_threshold_gb = gb;
            config.save(path)?;
            format!(
                "vram threshold set to {gb} GB in {} (no running worker for it: applies when it \
                 starts)\n",
                path.display()
            )
        }
    };
    if let Some(warning) = vram_threshold_warning(gb, crate::gpu::vram().total_gb) {
        report.push_str(&format!("warning: {warning}\n"));
    }
    Ok(report)
}

/// `config`: the resolved configuration as redacted TOML, headed by its path as a comment.
pub fn show_config(path: &Path) -> Result<String, ShellError> {
    let config = Config::load(path)?;
    Ok(format!("# {}\n{config}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("studio-worker").chain(args.iter().copied()))
    }

    fn run(args: &[&str]) -> Result<(Option<i32>, String), ShellError> {
        let cli = parse(args).unwrap();
        let mut out = Vec::new();
        let code = run_admin_command(&cli, &mut out)?;
        Ok((code, String::from_utf8(out).unwrap()))
    }

    fn cfg_arg(dir: &tempfile::TempDir) -> (PathBuf, String) {
        let p = dir.path().join("config.toml");
        let s = p.to_str().unwrap().to_string();
        (p, s)
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_every_subcommand_and_global_flags() {
        let cli = parse(&["run", "--config", "/tmp/c.toml", "--record", "/tmp/r.jsonl"]).unwrap();
        assert_eq!(cli.command, CliCommand::Run);
        assert_eq!(cli.config, Some(PathBuf::from("/tmp/c.toml")));
        assert_eq!(cli.record, Some(PathBuf::from("/tmp/r.jsonl")));
        let cli = parse(&["--config", "c.toml", "status", "--json"]).unwrap();
        assert_eq!(cli.command, CliCommand::Status { json: true });
        assert_eq!(
            parse(&[
                "register",
                "--api-base-url",
                "http://localhost:9790",
                "--reset"
            ])
            .unwrap()
            .command,
            CliCommand::Register {
                api_base_url: Some("http://localhost:9790".into()),
                reset: true
            }
        );
        assert_eq!(
            parse(&["set-threshold", "10.5"]).unwrap().command,
            CliCommand::SetThreshold { gb: 10.5 }
        );
        assert_eq!(parse(&["config"]).unwrap().command, CliCommand::Config);
        for (arg, command) in [
            ("pause", CliCommand::Pause),
            ("resume", CliCommand::Resume),
            ("enable", CliCommand::Enable),
            ("disable", CliCommand::Disable),
        ] {
            assert_eq!(parse(&[arg]).unwrap().command, command);
        }
        assert_eq!(
            parse(&["demo", "--out", "/tmp/d", "--keep-running"])
                .unwrap()
                .command,
            CliCommand::Demo {
                out: Some(PathBuf::from("/tmp/d")),
                keep_running: true
            }
        );
    }

    #[test]
    fn bad_values_are_rejected_by_the_parser() {
        for args in [
            &["set-threshold", "-1"][..],
            &["set-threshold", "NaN"],
            &["set-threshold", "inf"],
            &["set-threshold", "lots"],
            &["register", "--api-base-url", "studio.minis.gg"],
            &["register", "--api-base-url", "ftp://x"],
            // Removed reference flags must not parse.
            &["run", "--wait-for-lock"],
            &["register", "--bootstrap-token", "x"],
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.use_stderr(), "{args:?} should be an error");
        }
        let msg = parse(&["set-threshold", "-1"]).unwrap_err().to_string();
        assert!(msg.contains(">= 0"), "{msg}");
    }

    #[test]
    fn help_texts_exist() {
        let mut cmd = Cli::command();
        let long = cmd.render_long_help().to_string();
        assert!(long.contains("--config"), "{long}");
        assert!(long.contains("--record"), "{long}");
        let replay = cmd
            .find_subcommand_mut("replay")
            .expect("replay")
            .render_long_help()
            .to_string();
        for want in ["--explain", "--bless", "diverge"] {
            assert!(replay.contains(want), "{want}: {replay}");
        }
        for sub in [
            "run",
            "register",
            "status",
            "pause",
            "resume",
            "enable",
            "disable",
            "set-threshold",
            "config",
            "demo",
        ] {
            assert!(long.contains(sub), "{sub} missing in {long}");
            let sc = cmd.find_subcommand_mut(sub).unwrap();
            assert!(sc.get_about().is_some(), "{sub} has no about");
            assert!(sc.get_long_about().is_some(), "{sub} has no long_about");
        }
        let help = parse(&["register", "--help"]).unwrap_err().to_string();
        assert!(
            help.contains("--api-base-url") && help.contains("--reset"),
            "{help}"
        );
        assert!(parse(&["--version"])
            .unwrap_err()
            .to_string()
            .contains(env!("CARGO_PKG_VERSION")));
    }

    #[test]
    fn run_and_demo_are_left_to_the_binary() {
        assert_eq!(run(&["run"]).unwrap().0, None);
        assert_eq!(run(&["demo"]).unwrap().0, None);
    }

    #[test]
    fn status_shows_the_running_workers_last_update_check() {
        let mut d = serde_json::json!({"pid": 7, "session": "connected", "lastUpdateCheck": null});
        assert!(live_lines(&d).contains("update check:    none yet\n"));
        d["lastUpdateCheck"] = serde_json::json!({
            "at": "2026-05-25T12:00:00.000Z", "text": "update available: 0.1.0 -> 0.2.0"
        });
        assert!(live_lines(&d).contains(
            "update check:    update available: 0.1.0 -> 0.2.0 (at 2026-05-25T12:00:00.000Z)\n"
        ));
    }

    #[test]
    fn check_update_reads_the_configured_feed_and_a_feed_error_exits_3() {
        let dir = tempfile::tempdir().unwrap();
        let (path, arg) = cfg_arg(&dir);
        // A loopback port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut c = Config::load(&path).unwrap();
        c.auto_update_feed = Some(format!("http://127.0.0.1:{port}/releases"));
        c.save(&path).unwrap();
        let e = run(&["--config", &arg, "check-update"]).unwrap_err();
        assert_eq!(e.exit_code(), 3);
        let message = e.to_string();
        assert!(
            message.starts_with("update check failed: cannot fetch the update feed"),
            "{message}"
        );
    }

    #[test]
    fn install_service_dry_run_shows_the_file_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (_path, arg) = cfg_arg(&dir);
        let (code, text) = run(&["--config", &arg, "install-service", "--dry-run"]).unwrap();
        assert_eq!(code, Some(0));
        assert!(text.starts_with("would write "), "{text}");
        assert!(text.contains(&arg), "the config it runs with: {text}");
        assert!(text.contains("then run:"), "{text}");
    }

    #[test]
    fn status_reports_each_registration_state() {
        let dir = tempfile::tempdir().unwrap();
        let (path, arg) = cfg_arg(&dir);
        let (code, text) = run(&["--config", &arg, "status"]).unwrap();
        assert_eq!(code, Some(0));
        assert!(path.exists(), "status creates the default config");
        assert!(text.contains(&arg), "{text}");
        assert!(text.contains("not registered"), "{text}");
        assert!(text.contains("12 GB"), "{text}");
        assert!(text.contains("models root:"), "{text}");
        assert!(
            text.contains("auto-update:     enabled (every 1800 s)"),
            "{text}"
        );

        let mut c = Config::load(&path).unwrap();
        c.registration_request_id = Some("rr-7".into());
        c.registration_secret = Some("s".repeat(64));
        c.save(&path).unwrap();
        let (_, text) = run(&["--config", &arg, "status"]).unwrap();
        assert!(
            text.contains("pending operator approval (request rr-7)"),
            "{text}"
        );

        c.worker_id = Some("w-42".into());
        c.auth_token = Some("tok-secret".into());
        c.save(&path).unwrap();
        let (_, text) = run(&["--config", &arg, "status"]).unwrap();
        assert!(text.contains("approved as w-42"), "{text}");
        assert!(!text.contains("tok-secret"));

        let (_, json) = run(&["--config", &arg, "status", "--json"]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["registration"]["state"], "approved");
        assert_eq!(v["registration"]["worker_id"], "w-42");
        assert_eq!(v["vram_threshold_gb"], 12.0);
        assert_eq!(v["config_path"], arg.as_str());
        assert!(!json.contains("tok-secret"));
    }

    #[test]
    fn register_reset_clears_everything_and_url_persists() {
        let dir = tempfile::tempdir().unwrap();
        let (path, arg) = cfg_arg(&dir);
        let mut c = Config::load(&path).unwrap();
        c.worker_id = Some("w-1".into());
        c.auth_token = Some("tok".into());
        c.install_id = Some("iid".into());
        c.registration_request_id = Some("rr".into());
        c.registration_secret = Some("sec".into());
        c.vram_threshold_gb = 3.0;
        c.save(&path).unwrap();

        // Bare register: no change.
        let (_, text) = run(&["--config", &arg, "register"]).unwrap();
        assert!(text.contains("nothing changed"), "{text}");
        assert_eq!(Config::load(&path).unwrap(), c);

        let (code, text) = run(&[
            "--config",
            &arg,
            "register",
            "--reset",
            "--api-base-url",
            "http://127.0.0.1:9790",
        ])
        .unwrap();
        assert_eq!(code, Some(0));
        assert!(text.contains("registration reset"), "{text}");
        assert!(text.contains("not registered"), "{text}");
        let after = Config::load(&path).unwrap();
        assert_eq!(after.api_base_url, "http://127.0.0.1:9790");
        assert_eq!(after.worker_id, None);
        assert_eq!(after.auth_token, None);
        assert_eq!(after.install_id, None);
        assert_eq!(after.registration_request_id, None);
        assert_eq!(after.registration_secret, None);
        assert_eq!(after.vram_threshold_gb, 3.0, "other settings untouched");

        // URL only: the registration stays.
        let mut c = after;
        c.worker_id = Some("w-2".into());
        c.auth_token = Some("t".into());
        c.save(&path).unwrap();
        run(&[
            "--config",
            &arg,
            "register",
            "--api-base-url",
            "https://x.example/",
        ])
        .unwrap();
        let after = Config::load(&path).unwrap();
        assert_eq!(after.api_base_url, "https://x.example/");
        assert_eq!(after.worker_id.as_deref(), Some("w-2"));
    }

    #[test]
    fn set_threshold_persists_and_validates() {
        let dir = tempfile::tempdir().unwrap();
        let (path, arg) = cfg_arg(&dir);
        let (code, text) = run(&["--config", &arg, "set-threshold", "7.5"]).unwrap();
        assert_eq!(code, Some(0));
        assert!(text.contains("7.5 GB"), "{text}");
        assert_eq!(Config::load(&path).unwrap().vram_threshold_gb, 7.5);
        run(&["--config", &arg, "set-threshold", "0"]).unwrap();
        assert_eq!(Config::load(&path).unwrap().vram_threshold_gb, 0.0);
        // Programmatic misuse is caught too.
        for bad in [-0.5, f32::NAN, f32::INFINITY] {
            let err = set_threshold(&path, bad).unwrap_err();
            assert!(matches!(err, ShellError::InvalidArgument(_)), "{err}");
            assert_eq!(err.exit_code(), 2);
        }
        assert_eq!(Config::load(&path).unwrap().vram_threshold_gb, 0.0);
    }

    #[test]
    fn config_prints_redacted_toml() {
        let dir = tempfile::tempdir().unwrap();
        let (path, arg) = cfg_arg(&dir);
        let mut c = Config::load(&path).unwrap();
        c.worker_id = Some("w-5".into());
        c.auth_token = Some("tok-very-secret".into());
        c.registration_secret = Some("a".repeat(64));
        c.save(&path).unwrap();
        let (_, text) = run(&["--config", &arg, "config"]).unwrap();
        assert!(text.starts_with(&format!("# {arg}\n")), "{text}");
        assert!(text.contains("worker_id = \"w-5\""), "{text}");
        assert!(text.contains("auth_token = \"<redacted>\""), "{text}");
        assert!(!text.contains("tok-very-secret"));
        assert!(!text.contains(&"a".repeat(64)));
        // The printed TOML parses back (comment and all).
        let _: toml::Table = toml::from_str(&text).unwrap();
    }

    #[test]
    fn without_a_running_worker_pause_fails_and_enable_is_saved() {
        let dir = tempfile::tempdir().unwrap();
        let (path, arg) = cfg_arg(&dir);
        for cmd in ["pause", "resume"] {
            let err = run(&["--config", &arg, cmd]).unwrap_err();
            assert_eq!(err.exit_code(), 3, "{cmd}");
            assert_eq!(err.to_string(), format!("no running worker for {arg}"));
        }
        let (code, text) = run(&["--config", &arg, "disable"]).unwrap();
        assert_eq!(code, Some(0));
        assert!(text.contains("no running worker"), "{text}");
        assert!(!Config::load(&path).unwrap().auto_enabled);
        let (_, text) = run(&["--config", &arg, "status"]).unwrap();
        assert!(text.contains("auto_enabled:    false"), "{text}");
        assert!(text.contains("worker:          not running"), "{text}");
        let (_, json) = run(&["--config", &arg, "status", "--json"]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["daemon"], serde_json::Value::Null);
        assert_eq!(v["auto_enabled"], false);
        run(&["--config", &arg, "enable"]).unwrap();
        assert!(Config::load(&path).unwrap().auto_enabled);
    }

    #[test]
    fn with_a_running_worker_the_commands_reach_it() {
        let dir = tempfile::tempdir().unwrap();
        let (path, arg) = cfg_arg(&dir);
        Config::load(&path).unwrap();
        let token = studio_core::Secret::from("lat-cli-0123456789");
        let mut server = crate::api::ApiServer::start(
            crate::api::bind(0).unwrap(),
            token.clone(),
            crate::api::test_loop::start(),
            &path,
        )
        .unwrap();
        server.publish(&path, &token).unwrap();

        let (_, text) = run(&["--config", &arg, "status"]).unwrap();
        assert!(text.contains("session connected"), "{text}");
        assert!(text.contains("paused:          no"), "{text}");
        assert!(text.contains("current job:     none"), "{text}");
        assert!(
            text.contains("recent jobs:     0 completed, 0 failed"),
            "{text}"
        );
        assert!(!text.contains("lat-cli-0123456789"), "{text}");
        let (_, json) = run(&["--config", &arg, "status", "--json"]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["daemon"]["workerId"], "w-1");
        assert_eq!(v["daemon"]["session"], "connected");

        let (code, text) = run(&["--config", &arg, "pause"]).unwrap();
        assert_eq!(code, Some(0));
        assert!(text.starts_with("paused"), "{text}");
        let (_, text) = run(&["--config", &arg, "status"]).unwrap();
        assert!(text.contains("paused:          yes"), "{text}");
        let (_, text) = run(&["--config", &arg, "resume"]).unwrap();
        assert!(text.starts_with("resumed"), "{text}");

        let (_, text) = run(&["--config", &arg, "disable"]).unwrap();
        assert!(text.contains("applied to the running worker"), "{text}");
        let (_, json) = run(&["--config", &arg, "status", "--json"]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["daemon"]["enabled"], false);

        let (_, text) = run(&["--config", &arg, "set-threshold", "5"]).unwrap();
        assert!(text.contains("applied to the running worker"), "{text}");
        let (_, json) = run(&["--config", &arg, "status", "--json"]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["daemon"]["vramThresholdGb"], 5.0);

        // Gone: back to the file alone.
        server.stop();
        let err = run(&["--config", &arg, "pause"]).unwrap_err();
        assert!(matches!(err, ShellError::NotRunning { .. }), "{err}");
    }

    #[test]
    fn a_broken_config_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let (path, arg) = cfg_arg(&dir);
        std::fs::write(
            &path,
            "api_base_url = \"https://s/\"\nauth_token = oops-secret\n",
        )
        .unwrap();
        let err = run(&["--config", &arg, "status"]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&arg) && msg.contains("line 2"), "{msg}");
        assert!(!msg.contains("oops-secret"), "{msg}");
        assert_eq!(err.exit_code(), 3);
    }
}
