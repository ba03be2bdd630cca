//! Where models run: the CPU (burn's Flex backend) or a CUDA device (the `cuda` feature).

/// The CPU backend: burn's pure-Rust Flex backend (SIMD + rayon).
pub type CpuBackend = burn::backend::Flex;

/// The precision a model computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl Precision {
    pub fn dtype(self) -> burn::tensor::DType {
        match self {
            Self::F32 => burn::tensor::DType::F32,
            Self::Bf16 => burn::tensor::DType::BF16,
        }
    }
}

/// The CUDA backend (feature `cuda`).
#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Cuda;

/// The CUDA device with ordinal `n`.
#[cfg(feature = "cuda")]
pub fn cuda_device(n: usize) -> burn::backend::cuda::CudaDevice {
    burn::backend::cuda::CudaDevice::new(n)
}

pub use unoflow_api::Device;

/// A device that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceError {
    #[error("device `{0}` needs CUDA, but this unoflow was built without it: rebuild with `cargo build --release --features cuda`")]
    CudaNotBuilt(Device),
    #[error("device `{device}` cannot be used: {reason}")]
    CudaUnavailable { device: Device, reason: String },
}

/// Checks that this build can use `device` (for CUDA: starts it and runs one kernel).
pub fn check_available(device: Device) -> Result<Device, DeviceError> {
    match device {
        Device::Cpu => Ok(device),
        #[cfg(feature = "cuda")]
        Device::Cuda(n) => probe_cuda(n).map(|()| device).map_err(|reason| DeviceError::CudaUnavailable { device, reason }),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => Err(DeviceError::CudaNotBuilt(device)),
    }
}

/// Starts the CUDA runtime on device `n` and runs one JIT-compiled kernel, so that a missing
/// driver, NVRTC or CUDA headers is reported up front, naming the piece, instead of as a panic
/// in the middle of a run.
#[cfg(feature = "cuda")]
fn probe_cuda(n: usize) -> Result<(), String> {
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(|| {
        let device = cuda_device(n);
        let one = burn::tensor::Tensor::<CudaBackend, 1>::zeros([1], &device) + 1.0;
        let _ = one.into_data();
    });
    std::panic::set_hook(quiet);
    result.map_err(|panic| {
        let message =
            panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
        explain_cuda_failure(&message)
    })
}

/// What a CUDA start-up failure means and how to fix it.
pub fn explain_cuda_failure(message: &str) -> String {
    let m = message.to_ascii_lowercase();
    let hint = if m.contains("libcuda") || m.contains("driver") {
        "the NVIDIA driver (libcuda.so.1) was not found or is too old: install the driver for this GPU"
    } else if m.contains("nvrtc") {
        "NVRTC (libnvrtc.so, the CUDA runtime compiler) was not found: install the CUDA toolkit's NVRTC package (e.g. cuda-nvrtc-12-x) or add its lib folder to LD_LIBRARY_PATH"
    } else if m.contains(".h") || m.contains("include") || m.contains("header") {
        "the CUDA headers (cuda.h, cuda_bf16.h, …) were not found: install the CUDA toolkit's headers (e.g. cuda-cudart-dev-12-x) or set CUDA_PATH"
    } else if m.contains("ordinal") || m.contains("no device") || m.contains("invalid device") {
        "no such GPU: `nvidia-smi -L` lists the devices, numbered from 0"
    } else {
        "CUDA failed to start"
    };
    let detail = message.lines().next().unwrap_or("").trim();
    if detail.is_empty() { hint.to_string() } else { format!("{hint} ({detail})") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_needs_the_feature() {
        assert_eq!(check_available(Device::Cpu), Ok(Device::Cpu));
        assert_eq!(check_available(Device::Cuda(0)), Err(DeviceError::CudaNotBuilt(Device::Cuda(0))));
    }

    #[test]
    fn cuda_failures_name_the_missing_piece() {
        assert!(explain_cuda_failure("DriverError(CUDA_ERROR_NO_DEVICE): libcuda.so.1 not found").contains("NVIDIA driver"));
        assert!(explain_cuda_failure("Unable to dynamically load the \"nvrtc\" shared library").contains("NVRTC"));
        assert!(explain_cuda_failure("catastrophic error: cannot open source file \"cuda_bf16.h\"").contains("CUDA headers"));
        assert!(explain_cuda_failure("invalid device ordinal").contains("nvidia-smi -L"));
    }
}
