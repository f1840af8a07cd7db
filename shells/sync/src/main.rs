//! `studio-worker` (sync shell): see the library docs of `studio_worker_sync`. The whole
//! `main` (CLI, logging, admin subcommands, `run`, `demo`, `ui`, exit codes) is shared with the
//! async binary: `studio_shell::app::main`.

fn main() -> std::process::ExitCode {
    // The desktop window (`ui`), when built with the `ui` feature.
    #[cfg(feature = "ui")]
    let ui: Option<studio_shell::app::UiMain> = Some(studio_ui::run);
    #[cfg(not(feature = "ui"))]
    let ui = None;
    studio_shell::app::main_with::<studio_worker_sync::Daemon>(ui)
}
