//! The `studio-worker` binary: exit codes and the operator's last message (scenarios shared
//! with the async binary: `studio_shell::test_support::cli`).

studio_shell::cli_tests!(env!("CARGO_BIN_EXE_studio-worker"));
