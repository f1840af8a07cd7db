//! Test scenarios every shell must pass, written once and instantiated by each shell's
//! crate (feature `test-support`; a dev-dependency feature, never in a release binary).
//!
//! | macro | scenarios | parameter |
//! |---|---|---|
//! | [`crate::daemon_loop_tests!`] | [`daemon_loop`]: the loop against an in-test WebSocket server (welcome, heartbeat, pongs, closes, 401 / 503 upgrades, wss, oversized frames, an operator's changes through the daemon's control) | the daemon type |
//! | [`crate::connect_tests!`] | [`connect`]: connection attempts that fail before a session exists | the shell's connect, as `fn(url) -> Result<(), ConnectError>` |
//! | [`crate::cli_tests!`] | [`cli`]: the binary's exit codes and last stderr line (and, in a build without the `demo` feature, what `demo` answers) | the binary's path |
//! | `demo_tests!` | `demo` (feature `demo`): `demo` in-process, every job done, results left; expands to nothing in a build without the demo | the daemon type |
//!
//! ```ignore
//! // shells/<shell>/tests/daemon_loop.rs
//! studio_shell::daemon_loop_tests!(my_shell::Daemon);
//! ```

pub mod cli;
pub mod connect;
pub mod daemon_loop;
#[cfg(feature = "demo")]
pub mod demo;

/// `#[test]`s running every [`daemon_loop`] scenario against the daemon type `$daemon`.
#[macro_export]
macro_rules! daemon_loop_tests {
    ($daemon:ty) => {
        $crate::__generic_tests!(
            daemon_loop,
            $daemon,
            [
                hello_welcome_heartbeat_and_pongs,
                close_4001_exits_with_auth_failed_and_never_reconnects,
                a_503_upgrade_is_retried_and_a_401_exits_with_its_body,
                shutdown_closes_with_1000_and_exits_cleanly,
                a_frame_in_the_same_packet_as_the_101_is_not_lost,
                wss_session_with_large_frames_and_pongs,
                wss_with_an_untrusted_certificate_is_a_transport_error_and_retried,
                an_oversized_frame_closes_with_protocol_violation_and_reconnects,
                operator_changes_reach_the_studio_and_are_saved,
            ]
        );
    };
}

/// `#[test]`s running the `demo` scenario on the daemon type `$daemon`, in a build with the
/// demo (feature `demo`; without it, `cli_tests!` checks what `demo` answers instead).
#[cfg(feature = "demo")]
#[macro_export]
macro_rules! demo_tests {
    ($daemon:ty) => {
        $crate::__generic_tests!(
            demo,
            $daemon,
            [the_demo_completes_every_job_and_leaves_the_results,]
        );
    };
}

/// No tests: this build has no demo (see the `demo` feature of `studio-shell`).
#[cfg(not(feature = "demo"))]
#[macro_export]
macro_rules! demo_tests {
    ($daemon:ty) => {};
}

/// `#[test]`s running every [`connect`] scenario with `$connect`, an expression of type
/// `fn(&str) -> Result<(), ConnectError>` that opens the URL with the token `"t"` and the
/// default TLS configuration, then drops the socket.
#[macro_export]
macro_rules! connect_tests {
    ($connect:expr) => {
        $crate::__arg_tests!(
            connect,
            $connect,
            [
                a_refused_connection_is_a_transport_error,
                a_server_that_is_not_tls_fails_the_tls_handshake,
                a_server_closing_mid_upgrade_is_a_transport_error,
                a_bad_url_never_touches_the_network,
            ]
        );
    };
}

/// `#[test]`s running every [`cli`] scenario against the binary at `$binary` (a `&str`,
/// normally `env!("CARGO_BIN_EXE_<name>")`). In a build without the `demo` feature, one
/// more checks what `demo` answers (with it, the demo itself runs in `demo_tests!` and in
/// the end-to-end suite).
#[macro_export]
macro_rules! cli_tests {
    ($binary:expr) => {
        $crate::__arg_tests!(
            cli,
            $binary,
            [
                a_broken_config_exits_3_and_names_the_file,
                a_401_on_upgrade_exits_4_and_says_to_re_register,
            ]
        );
        $crate::__cli_demo_tests!($binary);
    };
}

#[cfg(not(feature = "demo"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __cli_demo_tests {
    ($binary:expr) => {
        $crate::__arg_tests!(
            cli,
            $binary,
            [a_build_without_the_demo_says_how_to_build_one,]
        );
    };
}

#[cfg(feature = "demo")]
#[doc(hidden)]
#[macro_export]
macro_rules! __cli_demo_tests {
    ($binary:expr) => {};
}

#[doc(hidden)]
#[macro_export]
macro_rules! __generic_tests {
    ($module:ident, $daemon:ty, [$($name:ident),* $(,)?]) => {
        $(
            #[test]
            fn $name() {
                $crate::test_support::$module::$name::<$daemon>();
            }
        )*
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __arg_tests {
    ($module:ident, $arg:expr, [$($name:ident),* $(,)?]) => {
        $(
            #[test]
            fn $name() {
                $crate::test_support::$module::$name($arg);
            }
        )*
    };
}
