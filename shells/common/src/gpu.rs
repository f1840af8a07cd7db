//! The GPU memory probe behind `vramTotalGb` (PROTOCOL.md §9.4).
//!
//! Sources, first answer wins, probed once per process ([`vram`] caches it: heartbeats once
//! spawned `nvidia-smi` every 5 s):
//!
//! 1. **CUDA driver** (feature `cuda-probe`, on by default in the async GPU-rig binary):
//!    `cuDeviceTotalMem` of every device through cudarc. cudarc loads `libcuda` lazily and
//!    panics when it is absent, so the driver library is first opened with `libloading`;
//!    no library, no call. A driver that fails `cuInit` (no device, driver/runtime
//!    mismatch) falls through.
//! 2. **NVIDIA sysfs**: `/proc/driver/nvidia/gpus/*/information`, the `Video Memory:` lines
//!    summed (older drivers; 5xx drivers dropped the line).
//! 3. **`nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits`**: MiB per GPU,
//!    summed; `[N/A]` lines are dropped with a warning.
//!
//! None answers: `0.0`, which the studio reads as "unknown" (admission is by the operator's
//! `vram_threshold_gb`). "GB" here is GiB, as in the original worker (MiB / 1024).
//!
//! Whether a threshold above the detected memory deserves a warning (§9.4) is the core's
//! decision (`studio_core::worker::vram_threshold_warning`): the worker machine logs it at
//! every connect, `set-threshold` shows it when the threshold is changed.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

/// What the probe found.
#[derive(Clone, Debug, PartialEq)]
pub struct Vram {
    /// Total GPU memory in GiB (0.0 when unknown).
    pub total_gb: f32,
    /// Which source answered (`cuda`, `sysfs`, `nvidia-smi`) or `none`.
    pub source: &'static str,
    /// One line per GPU that was found, for logs (`GPU 0: 79.6 GiB`).
    pub devices: Vec<String>,
}

impl Vram {
    fn none() -> Vram {
        Vram {
            total_gb: 0.0,
            source: "none",
            devices: Vec::new(),
        }
    }
}

/// The probe's answer, computed on first use and cached for the process.
pub fn vram() -> &'static Vram {
    static CACHE: OnceLock<Vram> = OnceLock::new();
    CACHE.get_or_init(|| {
        let found = probe_with(&SystemSources);
        match found.source {
            "none" => tracing::debug!("no GPU memory detected; advertising vramTotalGb=0"),
            src => tracing::info!(
                "detected {:.1} GiB of GPU memory via {src} ({})",
                found.total_gb,
                found.devices.join(", ")
            ),
        }
        found
    })
}

/// Where the probe reads from; [`SystemSources`] is the machine, tests substitute text.
pub trait Sources {
    /// Per-device total bytes from the CUDA driver, if a driver answers.
    fn cuda(&self) -> Option<Vec<u64>>;
    /// The contents of each `/proc/driver/nvidia/gpus/*/information` file.
    fn sysfs(&self) -> Vec<String>;
    /// `nvidia-smi`'s stdout, if it ran and exited 0.
    fn nvidia_smi(&self) -> Option<String>;
}

/// Runs the sources in order and returns the first that found memory.
pub fn probe_with(sources: &dyn Sources) -> Vram {
    if let Some(bytes) = sources.cuda().filter(|b| b.iter().any(|&x| x > 0)) {
        let devices = bytes
            .iter()
            .enumerate()
            .map(|(i, b)| format!("GPU {i}: {:.1} GiB", gib(*b)))
            .collect();
        return Vram {
            total_gb: gib(bytes.iter().sum()) as f32,
            source: "cuda",
            devices,
        };
    }
    let mib: Vec<u64> = sources
        .sysfs()
        .iter()
        .filter_map(|text| parse_sysfs_information(text))
        .collect();
    if mib.iter().any(|&m| m > 0) {
        return from_mib(&mib, "sysfs");
    }
    if let Some(out) = sources.nvidia_smi() {
        let mib = parse_nvidia_smi(&out);
        if mib.iter().any(|&m| m > 0) {
            return from_mib(&mib, "nvidia-smi");
        }
    }
    Vram::none()
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

fn from_mib(mib: &[u64], source: &'static str) -> Vram {
    Vram {
        total_gb: (mib.iter().sum::<u64>() as f64 / 1024.0) as f32,
        source,
        devices: mib
            .iter()
            .enumerate()
            .map(|(i, m)| format!("GPU {i}: {:.1} GiB", *m as f64 / 1024.0))
            .collect(),
    }
}

/// The `Video Memory: 24576 MB` line of an NVIDIA sysfs `information` file, in MiB.
pub fn parse_sysfs_information(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("Video Memory:")?;
        let mut parts = rest.split_whitespace();
        let n: u64 = parts.next()?.parse().ok()?;
        match parts.next().map(str::to_ascii_uppercase).as_deref() {
            Some("MB") | Some("MIB") | None => Some(n),
            Some("GB") | Some("GIB") => Some(n * 1024),
            Some(_) => None,
        }
    })
}

/// MiB per GPU from `nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits`;
/// lines that are not a number (`[N/A]`) are dropped with a warning.
pub fn parse_nvidia_smi(out: &str) -> Vec<u64> {
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter_map(|l| match l.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                tracing::warn!(
                    "nvidia-smi reported `{l}` for a GPU's memory; that GPU is not counted"
                );
                None
            }
        })
        .collect()
}

/// The real machine.
pub struct SystemSources;

/// Time `nvidia-smi` may take before the probe gives up on it.
pub const NVIDIA_SMI_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Sources for SystemSources {
    fn cuda(&self) -> Option<Vec<u64>> {
        cuda_device_memory()
    }

    fn sysfs(&self) -> Vec<String> {
        let dir = Path::new("/proc/driver/nvidia/gpus");
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut paths: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path().join("information"))
            .collect();
        paths.sort();
        paths
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .collect()
    }

    fn nvidia_smi(&self) -> Option<String> {
        let mut child = Command::new("nvidia-smi")
            .args(["--query-gpu=memory.total", "--format=csv,noheader,nounits"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let deadline = std::time::Instant::now() + NVIDIA_SMI_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => break,
                Ok(Some(_)) | Err(_) => return None,
                Ok(None) if std::time::Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    tracing::warn!(
                        "nvidia-smi did not answer within {NVIDIA_SMI_TIMEOUT:?}; GPU memory unknown"
                    );
                    return None;
                }
                Ok(None) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
        let mut out = String::new();
        std::io::Read::read_to_string(&mut child.stdout.take()?, &mut out).ok()?;
        Some(out)
    }
}

/// The CUDA driver library names tried before any cudarc call.
pub const CUDA_DRIVER_LIBRARIES: &[&str] = &["libcuda.so.1", "libcuda.so", "nvcuda.dll"];

/// Whether a CUDA driver library can be opened on this machine.
pub fn cuda_driver_present() -> bool {
    CUDA_DRIVER_LIBRARIES.iter().any(|name| {
        // SAFETY: opening the NVIDIA driver library runs its initialisers, which is what
        // every CUDA program does; nothing from it is called here.
        unsafe { libloading::Library::new(*name) }.is_ok()
    })
}

#[cfg(feature = "cuda-probe")]
fn cuda_device_memory() -> Option<Vec<u64>> {
    use cudarc::driver::result;
    if !cuda_driver_present() {
        return None;
    }
    // SAFETY: the driver library is present (checked above), so cudarc's lazy loader finds
    // it; these are the plain driver-API queries, no context is created.
    let run = || -> Result<Vec<u64>, result::DriverError> {
        result::init()?;
        let n = result::device::get_count()?;
        let mut out = Vec::new();
        for i in 0..n {
            let dev = result::device::get(i)?;
            out.push(unsafe { result::device::total_mem(dev) }? as u64);
        }
        Ok(out)
    };
    match std::panic::catch_unwind(run) {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            tracing::debug!("CUDA driver present but not usable: {e}");
            None
        }
        Err(_) => {
            tracing::warn!("the CUDA driver probe panicked; falling back to sysfs / nvidia-smi");
            None
        }
    }
}

#[cfg(not(feature = "cuda-probe"))]
fn cuda_device_memory() -> Option<Vec<u64>> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        cuda: Option<Vec<u64>>,
        sysfs: Vec<String>,
        smi: Option<String>,
    }

    impl Sources for Fake {
        fn cuda(&self) -> Option<Vec<u64>> {
            self.cuda.clone()
        }
        fn sysfs(&self) -> Vec<String> {
            self.sysfs.clone()
        }
        fn nvidia_smi(&self) -> Option<String> {
            self.smi.clone()
        }
    }

    const SYSFS: &str = "Model: \t\t NVIDIA GeForce RTX 3090\nIRQ:   \t\t 140\n\
        Video BIOS: \t 94.02.42.00.a9\nVideo Memory: \t 24576 MB\nBus Type: \t PCIe\n";

    #[test]
    fn sysfs_video_memory_lines_parse() {
        assert_eq!(parse_sysfs_information(SYSFS), Some(24576));
        assert_eq!(parse_sysfs_information("Video Memory: 8 GB"), Some(8192));
        assert_eq!(parse_sysfs_information("Model: x\nBus Type: PCIe"), None);
        assert_eq!(parse_sysfs_information("Video Memory: lots"), None);
    }

    #[test]
    fn nvidia_smi_lines_sum_and_na_is_dropped() {
        assert_eq!(parse_nvidia_smi("81559\n81559\n"), vec![81559, 81559]);
        assert_eq!(parse_nvidia_smi("[N/A]\n 24576 \n\n"), vec![24576]);
        assert!(parse_nvidia_smi("").is_empty());
    }

    #[test]
    fn the_first_source_that_answers_wins() {
        let all = Fake {
            cuda: Some(vec![80 << 30, 80 << 30]),
            sysfs: vec![SYSFS.into()],
            smi: Some("1024\n".into()),
        };
        let v = probe_with(&all);
        assert_eq!((v.total_gb, v.source), (160.0, "cuda"));
        assert_eq!(v.devices.len(), 2);
        let no_cuda = Fake { cuda: None, ..all };
        let v = probe_with(&no_cuda);
        assert_eq!((v.total_gb, v.source), (24.0, "sysfs"));
        // A 5xx driver without the sysfs line: nvidia-smi answers.
        let smi_only = Fake {
            cuda: Some(vec![]),
            sysfs: vec!["Model: x\n".into()],
            smi: Some("[N/A]\n12288\n".into()),
        };
        let v = probe_with(&smi_only);
        assert_eq!((v.total_gb, v.source), (12.0, "nvidia-smi"));
        let nothing = Fake {
            cuda: None,
            sysfs: vec![],
            smi: None,
        };
        assert_eq!(probe_with(&nothing), Vram::none());
    }

    #[test]
    fn the_machine_probe_never_panics_without_a_driver() {
        // On a machine without the NVIDIA driver (CI) this must simply report nothing; on
        // a GPU machine it reports the GPUs. Either way it returns.
        let v = probe_with(&SystemSources);
        if !cuda_driver_present() && !Path::new("/proc/driver/nvidia/gpus").exists() {
            assert!(v.source == "none" || v.source == "nvidia-smi");
        }
        assert!(v.total_gb >= 0.0);
    }
}
