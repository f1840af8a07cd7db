//! SIGINT / SIGTERM -> a graceful shutdown, for either shell.
//!
//! A dedicated thread waits for the signals (signal-hook's iterator: the handler itself
//! only writes to a self-pipe) and forwards each as [`Control::shutdown`], which the loop
//! feeds to the core as `Input::Shutdown`. A second signal repeats the request, which is
//! harmless; the core's shutdown grace (30 s) bounds how long the wait for a running job
//! can take.

use std::io;

use crate::control::Control;

/// Starts forwarding SIGINT and SIGTERM to `control` for the rest of the process.
#[cfg(unix)]
pub fn forward_to(control: Control) -> io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    use signal_hook::iterator::Signals;

    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let name = if signal == SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
                tracing::info!("{name} received: finishing the current job, then exiting");
                control.shutdown();
            }
        })?;
    Ok(())
}

/// Starts forwarding Ctrl-C to `control` (not available on this platform: the default
/// handling ends the process; the studio requeues a job it loses that way).
#[cfg(not(unix))]
pub fn forward_to(control: Control) -> io::Result<()> {
    drop(control);
    tracing::debug!("graceful shutdown on Ctrl-C is not available on this platform");
    Ok(())
}
