//! Where an operator runs, described without any backend's types: the engine parses devices
//! from the command line and hands them to operators, which map them to their backend.

use std::fmt;
use std::str::FromStr;

/// A device named on the command line or in a DAG: `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum Device {
    #[default]
    Cpu,
    /// The CUDA device with this ordinal.
    Cuda(usize),
}

/// A device name that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown device `{0}`: expected `cpu`, `cuda` or `cuda:N`")]
pub struct UnknownDevice(pub String);

impl FromStr for Device {
    type Err = UnknownDevice;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s.strip_prefix("cuda:").and_then(|n| n.parse().ok()).map(Self::Cuda).ok_or_else(|| UnknownDevice(s.to_string())),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl Device {
    /// Whether this is a GPU.
    pub fn is_gpu(self) -> bool {
        matches!(self, Self::Cuda(_))
    }

    /// The device class and the precision models compute in there, as fingerprints hold them:
    /// `cpu/f32`, or `cuda/bf16` (as the reference implementation; every CUDA device of a run is
    /// the same class). The operators that load models choose their precision by the same rule.
    pub fn compute_class(self) -> &'static str {
        match self {
            Self::Cpu => "cpu/f32",
            Self::Cuda(_) => "cuda/bf16",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        assert_eq!("cpu".parse(), Ok(Device::Cpu));
        assert_eq!("cuda".parse(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(Device::Cuda(3)));
        assert_eq!("gpu".parse::<Device>(), Err(UnknownDevice("gpu".into())));
        assert_eq!(Device::Cuda(1).to_string(), "cuda:1");
        assert_eq!((Device::Cpu.compute_class(), Device::Cuda(3).compute_class()), ("cpu/f32", "cuda/bf16"));
    }
}
