//! `studio-worker-async` (async shell): see the library docs of `studio_worker_async`. The
//! whole `main` (CLI, logging, admin subcommands, `run`, `demo`, exit codes) is shared with
//! the sync binary: `studio_shell::app::main`.

fn main() -> std::process::ExitCode {
    studio_shell::app::main::<studio_worker_async::Daemon>()
}
