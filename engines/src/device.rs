//! Where the candle engines compute: the first CUDA device when this build has the `cuda`
//! feature and a device answers, else the CPU.
//!
//! The choice is made once per process ([`compute_device`]) and logged. A `cuda` build on a
//! machine without a GPU (or whose driver cannot create a context) falls back to the CPU
//! with a warning instead of failing jobs. CUDA builds need nvcc (candle's kernels), so CI,
//! which has no toolkit, builds the CPU path only.

use std::sync::OnceLock;

use candle_core::Device;

/// The device every candle engine in this process uses.
pub fn compute_device() -> Device {
    static DEVICE: OnceLock<Device> = OnceLock::new();
    DEVICE.get_or_init(select).clone()
}

#[cfg(feature = "cuda")]
fn select() -> Device {
    match Device::new_cuda(0) {
        Ok(device) => {
            tracing::info!("candle engines run on CUDA device 0");
            device
        }
        Err(e) => {
            tracing::warn!("no usable CUDA device ({e}); candle engines run on the CPU");
            Device::Cpu
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn select() -> Device {
    Device::Cpu
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_without_cuda_computes_on_the_cpu_and_the_choice_is_stable() {
        let first = compute_device();
        if cfg!(not(feature = "cuda")) {
            assert!(matches!(first, Device::Cpu));
        }
        assert!(first.same_device(&compute_device()));
    }
}
