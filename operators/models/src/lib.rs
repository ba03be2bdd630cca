//! The neural networks of the UNO method, in burn, generic over the backend.
//!
//! Models mirror their reference implementation's module tree, so checkpoint keys map onto
//! struct fields plainly ([`vb::Vb`]). This crate knows nothing of DAGs, tables or workspaces.

pub mod allocator;
pub mod clip;
pub mod device;
pub mod dino;
pub mod dinov2;
pub mod fixture;
pub mod flux;
pub mod kernels;
pub mod nn;
pub mod t5;
pub mod tiny;
pub mod tokenizer;
pub mod vb;
pub mod weights;

pub use burn::tensor::backend::Backend;
pub use device::{Device, DeviceError, Precision};
pub use kernels::Kernels;
