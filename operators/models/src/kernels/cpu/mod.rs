//! The CPU backend's kernels, over plain f32 slices: they know nothing of burn's tensors.

pub mod attention;
pub mod conv;
pub mod elementwise;
pub mod gemm;
pub mod simd;
