//! `studio-worker-async demo` in-process on the async daemon (the scenario is shared with
//! the sync shell: `studio_shell::test_support::demo`).

studio_shell::demo_tests!(studio_worker_async::Daemon);
