//! studio-shell: everything the two runtime shells of `studio-worker` share.
//!
//! The worker is a sans-IO core (`studio-core`) driven by a shell. There are two shells, a
//! sync one (mio + tungstenite) and an async one (smol); both are built from this crate so
//! that no behaviour is written twice. Nothing here depends on a runtime: the WebSocket is
//! the only IO a shell does itself, everything else lives here.
//!
//! The modules, from the leaves up (a module uses only those above it in its group's
//! order, never one that uses it back):
//!
//! | module | what it does |
//! |---|---|
//! | [`error`] | [`ShellError`] (config, CLI, entropy), [`RunError`] (a daemon that could not start), the `studio-worker:` prefix of the last stderr line |
//! | [`control`] | [`Control`] (from any thread: ask a running daemon to shut down, apply an operator's change, read its core) and [`Exit`] (how it ended) |
//! | [`telemetry`] | Sentry, opt-in through `SENTRY_DSN`: release, environment, panics, `tracing` errors and warnings, every secret scrubbed |
//! | [`clock`] | [`Clock`], the only place the shells read time, and [`wait_duration`] (a deadline as a sleep, rounded up) |
//! | [`gpu`] | GPU memory (CUDA driver, NVIDIA sysfs, nvidia-smi) and the VRAM threshold warning |
//! | [`host`] | the host probe (`HostFacts`) |
//! | [`entropy`] | the OS CSPRNG: install ids, registration secrets, the jitter seed |
//! | [`config`] | `config.toml`: load (created on first run), validate, atomic `0600` save, redaction, mapping to the core's `WorkerConfig` |
//! | [`trim`] | the idle trim: [`trim::IdleTrim`] (once per idle period, [`trim::IDLE_TRIM_AFTER`] into it) and dropping the mapped read-only pages of the executable and its libraries |
//! | [`lock`] | one daemon per config: the exclusive `daemon.lock` beside `config.toml` ([`lock::DaemonLock`]) |
//! | [`record`] | `--record PATH` (the session recorder under [`CommandRouter::feed`]) and `studio-worker replay` |
//! | [`http`] | the blocking studio HTTP client (ureq + rustls): register, poll, multipart upload |
//! | [`pool`] | the engine pool and the HTTP runner: engine jobs and HTTP requests on background threads, completions through a callback ([`EventSink`]) |
//! | [`outbox`] | the durable outbox beside `config.toml`: the results the core keeps until the studio acknowledges them, written atomically off the loop, verified when read back at start |
//! | [`update`] | self-update: the release feed, verified download, in-process unpack, `--version` check, atomic replace, re-exec |
//! | [`driver`] | the [`CommandRouter`]: performs every non-socket `Command` of the core |
//! | [`engine`] | the engine roster ([`engine_router`]), with the `STUDIO_WORKER_SYNTHETIC_DELAY_MS` test/demo hook |
//! | [`tls`] | the rustls client configuration for `wss://` (ring, webpki roots) and the process-default provider |
//! | [`ws`] | the WebSocket upgrade as a sans-IO exchange, received messages / errors as core inputs, close frames, limits |
//! | [`connect`] | the runtime-agnostic steps of `Command::Connect`: the upgrade read loop as a state machine ([`connect::Exchange`]), the failure messages |
//! | [`session`] | the runtime-agnostic half of the loop: the core, its router, the connection bookkeeping (connecting / open / closing, the 5 s close linger), driven through a shell's [`SocketIo`] |
//! | [`daemon`] | [`WorkerDaemon`]: what a shell provides (a daemon built from a [`session::Setup`], its [`Control`], `run` to the [`Exit`]) |
//! | [`api`] | the local control API on 127.0.0.1 (status, pause/resume, enable/disable, shutdown, logs, live settings, Prometheus metrics; token, Host/Origin and size checks) and the CLI's client of it |
//! | [`cli`] | the `studio-worker` command line (clap) and the admin subcommands (`register`, `status`, `set-threshold`, `config`, `replay`, and, against a running worker, `pause`, `resume`, `enable`, `disable`) |
//! | [`service`] | `install-service` / `uninstall-service`: one service description rendered as a systemd user unit, a launchd LaunchAgent and a Task Scheduler task |
//! | [`signals`] | SIGINT / SIGTERM -> [`Control::shutdown`] on a signal-hook thread |
//! | [`logging`] | `tracing` subscriber setup (`RUST_LOG`, stderr, the Sentry layer) |
//! | `demo` | (feature `demo`) `studio-worker demo` on any [`WorkerDaemon`], against the loopback studio (`studio-local`) |
//! | [`app`] | the application entry: the shared `main` of both binaries and `studio-worker run` |
//! | `test_support` | (feature `test-support`) the scenarios every shell's tests instantiate: daemon loop, connect, CLI, demo |
//!
//! # How a shell uses it
//!
//! A shell is one type implementing [`WorkerDaemon`]; its `main` is
//! `studio_shell::app::main::<Daemon>()` (CLI, logging, admin subcommands, `run`,
//! `demo`, exit codes). The daemon owns a [`Session`] and the sockets, and runs:
//!
//! ```text
//! let (sink, control) = session::mailbox(/* post: channel send + wake the loop */);
//! let mut session = Session::new(config, path, worker_config, engine, sink);
//! session.start(&mut sockets);                      // sockets: the shell's SocketIo
//! while !session.finished(&mut sockets) {
//!     // sleep until socket IO, a sink event, a shutdown request or session.poll_timeout()
//!     session.on_message / on_error / on_loop_msg(.., &mut sockets);
//!     session.after_wake(&mut sockets);             // close timeouts, Input::Tick
//! }
//! session.into_exit()
//! ```
//!
//! Under the [`Session`], [`CommandRouter::feed`] is the core's whole driving contract in
//! one call (handle, drain to `Wait`, perform every non-socket command).

pub mod api;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod connect;
pub mod control;
pub mod daemon;
#[cfg(feature = "demo")]
pub mod demo;
pub mod driver;
pub mod engine;
pub mod entropy;
pub mod error;
pub mod gpu;
pub mod host;
pub mod http;
pub mod lock;
pub mod logging;
pub mod outbox;
pub mod pool;
pub mod record;
pub mod service;
pub mod session;
pub mod signals;
pub mod telemetry;
#[cfg(feature = "test-support")]
pub mod test_support;
pub mod tls;
pub mod trim;
pub mod update;
pub mod ws;

pub use cli::{run_admin_command, Cli, CliCommand};
pub use clock::{wait_duration, Clock};
pub use config::{default_config_path, Config};
pub use control::{Change, Control, ControlError, Exit};
pub use daemon::WorkerDaemon;
pub use driver::{CommandRouter, Drained, Effect};
pub use engine::{engine_router, engine_settings};
pub use error::{RunError, ShellError};
pub use pool::{EnginePool, EventSink, HttpRunner, PoolEvent};
pub use record::Recorder;
pub use session::{Session, SocketIo};
