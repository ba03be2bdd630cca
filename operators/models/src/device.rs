//! Where models run: the CPU (burn's Flex backend) or a CUDA device (the `cuda` feature).

use std::fmt;
use std::str::FromStr;

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

/// A device named on the command line or in a DAG: `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    Cuda(usize),
}

/// A device that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceError {
    #[error("unknown device `{0}`: expected `cpu`, `cuda` or `cuda:N`")]
    Unknown(String),
    #[error("device `{0}` needs CUDA, but this unoflow was built without it: rebuild with `cargo build --release --features cuda`")]
    CudaNotBuilt(DeviceSpec),
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s.strip_prefix("cuda:").and_then(|n| n.parse().ok()).map(Self::Cuda).ok_or_else(|| DeviceError::Unknown(s.to_string())),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Checks that this build can use the device.
    pub fn check_available(self) -> Result<Self, DeviceError> {
        match self {
            Self::Cpu => Ok(self),
            Self::Cuda(_) if cfg!(feature = "cuda") => Ok(self),
            Self::Cuda(_) => Err(DeviceError::CudaNotBuilt(self)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceSpec::Cuda(3)));
        assert_eq!("gpu".parse::<DeviceSpec>(), Err(DeviceError::Unknown("gpu".into())));
        assert_eq!(DeviceSpec::Cuda(1).to_string(), "cuda:1");
    }
}
