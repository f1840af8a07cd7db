//! `logging::init` installs the global subscriber once; a second call is a no-op.
//! (Its own test binary: a global subscriber would otherwise print during every test.)

#[test]
fn init_is_idempotent() {
    assert!(studio_shell::logging::init());
    assert!(!studio_shell::logging::init());
    tracing::info!("logging works");
}
