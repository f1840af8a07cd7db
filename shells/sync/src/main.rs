//! `studio-worker` (sync shell): see the library docs of `studio_worker_sync`. The whole
//! `main` (CLI, logging, admin subcommands, `run`, `demo`, exit codes) is shared with the
//! async binary: `studio_shell::app::main`.

fn main() -> std::process::ExitCode {
    studio_shell::app::main::<studio_worker_sync::Daemon>()
}
