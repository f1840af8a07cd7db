//! `studio-worker demo` in-process on the sync daemon (the scenario is shared with the
//! async shell: `studio_shell::test_support::demo`).

studio_shell::demo_tests!(studio_worker_sync::Daemon);
