//! studio-shell: everything the two runtime shells of `studio-worker` share.
//!
//! The worker is a sans-IO core (`studio-core`) driven by a shell. There are two shells, a
//! sync one (mio + tungstenite) and an async one (smol); both are built from this crate so
//! that no behaviour is written twice. Nothing here depends on a runtime: the WebSocket is
//! the only IO a shell does itself, everything else lives here.
//!
//! | module | what it does |
//! |---|---|
//! | [`cli`] | the `studio-worker` command line (clap) and the admin subcommands (`register`, `status`, `set-threshold`, `config`) |
//! | [`config`] | `config.toml`: load (created on first run), validate, atomic `0600` save, redaction, mapping to the core's `WorkerConfig` |
//! | [`entropy`] | the OS CSPRNG: install ids, registration secrets, the jitter seed |
//! | [`host`] | the host probe (`HostFacts`) |
//! | [`http`] | the blocking studio HTTP client (ureq + rustls): register, poll, multipart upload |
//! | [`pool`] | engine jobs and HTTP requests on background threads, completions through a callback |
//! | [`driver`] | performs every non-socket `Command` of the core; the clock |
//! | [`logging`] | `tracing` subscriber setup (`RUST_LOG`, stderr) |
//! | [`tls`] | the rustls client configuration for `wss://` (ring, webpki roots) and the process-default provider |
//! | [`ws`] | the WebSocket upgrade as a sans-IO exchange, received messages / errors as core inputs, close frames, limits |
//!
//! # How a shell uses it
//!
//! ```text
//! let cli = Cli::parse();
//! if let Some(code) = run_admin_command(&cli, &mut stdout)? { exit(code) }   // admin subcommands
//! logging::init();
//! let path = cli.config_path()?;  let config = Config::load(&path)?;
//! let engine: Arc<dyn Engine> = Arc::new(Router::new_default());
//! let mut worker = Worker::new(config.to_worker_config(host::probe(), engine.capabilities(), entropy::seed()?));
//! let sink = /* channel send + wake the loop (mio Waker / smol channel) */;
//! let mut router = CommandRouter::new(config, path, engine, http::agent(), sink, Clock::new());
//! let mut next = router.feed(&mut worker, Input::Start, &mut |cmd| /* Connect / Send / Close */);
//! loop {
//!     // sleep for wait_duration(next.until, router.clock().mono()), or until socket IO or a
//!     // sink event; exit once next.exit is set and the socket commands are flushed
//!     let input = /* a socket event, router.admit(sink_event), or Input::Tick */;
//!     next = router.feed(&mut worker, input, &mut |cmd| ...);
//! }
//! ```

pub mod cli;
pub mod config;
pub mod driver;
pub mod entropy;
pub mod error;
pub mod host;
pub mod http;
pub mod logging;
pub mod pool;
pub mod tls;
pub mod ws;

pub use cli::{run_admin_command, Cli, CliCommand};
pub use config::{default_config_path, Config};
pub use driver::{wait_duration, Clock, CommandRouter, Drained, Effect};
pub use error::ShellError;
pub use pool::{EnginePool, EventSink, HttpRunner, PoolEvent};
