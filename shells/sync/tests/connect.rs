//! The connect thread's work, failing before a session exists (scenarios shared with the
//! async shell: `studio_shell::test_support::connect`).

studio_shell::connect_tests!(|url: &str, deadline| {
    studio_worker_sync::connect::connect(url, "t", &studio_shell::tls::client_config(), deadline)
        .map(drop)
});
