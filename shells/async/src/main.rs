//! `studio-worker-async` (async shell): see the library docs of `studio_worker_async`. The
//! whole `main` (CLI, logging, admin subcommands, `run`, `demo`, exit codes) is shared with
//! the sync binary: `studio_shell::app::main`.

fn main() -> std::process::ExitCode {
    // The desktop window (`ui`), when built with the `ui` feature.
    #[cfg(feature = "ui")]
    let ui: Option<studio_shell::app::UiMain> = Some(studio_ui::run);
    #[cfg(not(feature = "ui"))]
    let ui = None;
    studio_shell::app::main_with::<studio_worker_async::Daemon>(ui)
}
