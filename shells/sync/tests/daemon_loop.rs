//! The sync daemon loop against a minimal in-test WebSocket server. The scenarios are
//! shared with the async shell (`studio_shell::test_support::daemon_loop`).

studio_shell::daemon_loop_tests!(studio_worker_sync::Daemon);
