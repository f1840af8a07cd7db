//! The host probe: the facts about this machine that the worker advertises in its
//! capabilities (`machineName`, `username`, `agentVersion`, `engine`, `vramTotalGb`,
//! `autoStart`). Probed once at start and handed to the core in its config.

use studio_core::worker::HostFacts;

/// The `engine` the worker advertises: the router over every compiled-in engine.
pub const ENGINE_NAME: &str = "multi";

/// Fallback machine name when the OS does not tell.
pub const UNKNOWN_HOST: &str = "unknown-host";

/// Fallback user name when the environment does not tell.
pub const UNKNOWN_USER: &str = "unknown-user";

/// Probes the host: hostname, user name, this build's version, the engine id and the GPU
/// memory ([`vram_total_gb`]).
pub fn probe() -> HostFacts {
    HostFacts {
        machine_name: hostname().unwrap_or_else(|| UNKNOWN_HOST.to_string()),
        username: username().unwrap_or_else(|| UNKNOWN_USER.to_string()),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        engine: ENGINE_NAME.to_string(),
        vram_total_gb: vram_total_gb(),
        // The worker does not install itself as a login item / service yet.
        auto_start: false,
    }
}

/// Total GPU memory in GB advertised as `vramTotalGb`: the cached probe of
/// [`crate::gpu`] (CUDA driver, NVIDIA sysfs, `nvidia-smi`; 0.0 when unknown).
pub fn vram_total_gb() -> f32 {
    crate::gpu::vram().total_gb
}

fn clean(name: &str) -> Option<String> {
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// The machine's physical memory in bytes, if the OS reports it (the default model memory
/// budget is a share of it).
#[cfg(unix)]
pub fn total_memory_bytes() -> Option<u64> {
    // SAFETY: sysconf only reads system values; it has no pointer arguments.
    let (pages, page_size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (pages > 0 && page_size > 0).then(|| pages as u64 * page_size as u64)
}

/// Not probed on this platform: the engines' fixed default applies.
#[cfg(not(unix))]
pub fn total_memory_bytes() -> Option<u64> {
    None
}

/// The machine's host name, if the OS reports one.
pub fn hostname() -> Option<String> {
    os_hostname().or_else(|| {
        ["HOSTNAME", "COMPUTERNAME"]
            .iter()
            .find_map(|var| std::env::var(var).ok().as_deref().and_then(clean))
    })
}

#[cfg(unix)]
fn os_hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes and gethostname writes at most
    // that many; the result is only read up to the first NUL (or the buffer's end).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    clean(&String::from_utf8_lossy(&buf[..end]))
}

#[cfg(not(unix))]
fn os_hostname() -> Option<String> {
    None
}

/// The user running the worker, from `USER`, `USERNAME` or `LOGNAME`.
pub fn username() -> Option<String> {
    ["USER", "USERNAME", "LOGNAME"]
        .iter()
        .find_map(|var| std::env::var(var).ok().as_deref().and_then(clean))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_fills_every_fact() {
        let host = probe();
        assert!(!host.machine_name.is_empty());
        assert!(!host.username.is_empty());
        assert_eq!(host.agent_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(host.engine, "multi");
        assert_eq!(host.vram_total_gb, crate::gpu::vram().total_gb);
        assert!(host.vram_total_gb >= 0.0);
        assert!(!host.auto_start);
    }

    #[test]
    fn blank_names_are_rejected() {
        assert_eq!(clean("  "), None);
        assert_eq!(clean(" box\n").as_deref(), Some("box"));
    }
}
