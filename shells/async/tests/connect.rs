//! The connect task's work, failing before a session exists (scenarios shared with the sync
//! shell: `studio_shell::test_support::connect`).

studio_shell::connect_tests!(|url: &str, deadline| {
    let tls = studio_shell::tls::client_config();
    let reactor = studio_worker_async::reactor::Reactor::new().expect("a poller");
    reactor
        .block_on(studio_worker_async::connect::connect(
            url, "t", &tls, deadline, &reactor,
        ))
        .map(drop)
});
