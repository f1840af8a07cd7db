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

    /// Open the desktop window and tray of the worker of this config (`--features ui` builds)
    #[command(long_about = "\
Open the desktop window and tray icon of the worker running for this config (found through \
local-api.json beside it); when none answers, start one (`run`, detached: closing the \
window never stops it). Closing the window hides it in the tray; Quit in the tray (or on \
the About tab) closes both and offers to stop the worker too.

Only in builds with the `ui` feature; other builds exit 2 naming the command that builds \
one.")]
    Ui(UiArgs),

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

/// `studio-worker ui`'s options.
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args)]
pub struct UiArgs {
    /// Write a screenshot of each tab into DIR (`status.png`, `jobs.png`, ...), then exit:
    /// 0 when every one shows a drawn window.
    #[arg(long, value_name = "DIR")]
    pub screenshots: Option<PathBuf>,
    /// Started by the session's autostart entry: honour `start_minimised` (start hidden in
    /// the tray).
    #[arg(long)]
    pub autostart: bool,
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
/// `uninstall-service`), writing its report to `out`. Returns `Ok(Some(exit_code))` when the
/// command was handled here, `Ok(None)` for `run`, `demo` and `ui`, which the binary
/// carries out itself.
pub fn run_admin_command(cli: &Cli, out: &mut dyn Write) -> Result<Option<i32>, ShellError> {
    let text = match &cli.command {
        CliCommand::Run | CliCommand::Demo { .. } | CliCommand::Ui(_) => return Ok(None),
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
        // The plain-text rule depends on the file's `allow_insecure_studio_url`.
        config
            .validate()
            .map_err(|e| ShellError::InvalidArgument(format!("--api-base-url: {e}")))?;
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
mod tests;
