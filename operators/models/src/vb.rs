//! A builder that hands a model's constructors their tensors by checkpoint key, like candle's
//! `VarBuilder`: `vb.pp("double_blocks").pp(3).linear("qkv", 3072, 9216, true)`. Struct fields
//! are named after the keys, so there is no remapping table.

use std::path::Path;

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Distribution, Tensor, TensorData};

use crate::nn::Linear;
use crate::weights::{Checkpoint, Result};

/// Where tensors come from, by key in the BFL/transformers layout the models are written for.
pub trait TensorSource: Send + Sync {
    /// The tensor `key`, which must have `shape`.
    fn read(&self, key: &str, shape: &[usize]) -> Result<TensorData>;
    /// Whether the source has `key` (for optional parts such as a guidance embedder).
    fn contains(&self, key: &str) -> bool;
    /// The shape of `key`, if present.
    fn shape(&self, key: &str) -> Option<Vec<usize>>;
    /// The file, for messages.
    fn path(&self) -> &Path;
}

impl TensorSource for Checkpoint {
    fn read(&self, key: &str, shape: &[usize]) -> Result<TensorData> {
        Checkpoint::read(self, key, shape)
    }

    fn contains(&self, key: &str) -> bool {
        Checkpoint::contains(self, key)
    }

    fn shape(&self, key: &str) -> Option<Vec<usize>> {
        Checkpoint::shape(self, key).map(<[usize]>::to_vec)
    }

    fn path(&self) -> &Path {
        Checkpoint::path(self)
    }
}

/// Where a [`Vb`] takes its tensors from.
#[derive(Clone, Copy)]
enum Origin<'a> {
    Source(&'a dyn TensorSource),
    /// Random weights made on the device (benchmarks and `--tiny` models; no download):
    /// matrices N(0, 1/fan_in), norm scales 1, other vectors N(0, 0.02²).
    Random,
}

/// A position in a checkpoint's key tree, with the device and dtype to load onto.
pub struct Vb<'a, B: Backend> {
    origin: Origin<'a>,
    prefix: String,
    device: &'a B::Device,
    /// Cast every tensor to this dtype after reading; `None` keeps the file's dtype.
    dtype: Option<DType>,
}

impl<B: Backend> std::fmt::Debug for Vb<'_, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vb").field("prefix", &self.prefix).field("dtype", &self.dtype).finish()
    }
}

impl<'a, B: Backend> Vb<'a, B> {
    pub fn new(source: &'a dyn TensorSource, device: &'a B::Device, dtype: Option<DType>) -> Self {
        Self { origin: Origin::Source(source), prefix: String::new(), device, dtype }
    }

    /// A builder of random weights in `dtype`, made on the device; seed the backend first
    /// (`B::seed`) for repeatable weights.
    pub fn random(device: &'a B::Device, dtype: DType) -> Self {
        Self { origin: Origin::Random, prefix: String::new(), device, dtype: Some(dtype) }
    }

    /// The sub-tree `name` (a field name or a list index).
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let prefix = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        Self { origin: self.origin, prefix, device: self.device, dtype: self.dtype }
    }

    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) }
    }

    /// The checkpoint file, for messages.
    pub fn path(&self) -> &Path {
        match self.origin {
            Origin::Source(s) => s.path(),
            Origin::Random => Path::new("<random weights>"),
        }
    }

    pub fn device(&self) -> &B::Device {
        self.device
    }

    pub fn dtype(&self) -> Option<DType> {
        self.dtype
    }

    /// Whether the checkpoint has `name` (random weights have everything).
    pub fn contains(&self, name: &str) -> bool {
        match self.origin {
            Origin::Source(s) => s.contains(&self.key(name)),
            Origin::Random => true,
        }
    }

    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        match self.origin {
            Origin::Source(s) => s.shape(&self.key(name)),
            Origin::Random => None,
        }
    }

    /// Marks `name` as used without loading it (tensors a model keeps for training only, such as
    /// CLIP's `logit_scale` or DINOv2's `mask_token`), so the unused-key check passes.
    pub fn skip(&self, name: &str) -> Result<()> {
        if let Origin::Source(s) = self.origin {
            let key = self.key(name);
            if let Some(shape) = s.shape(&key) {
                s.read(&key, &shape)?;
            }
        }
        Ok(())
    }

    /// The tensor `name` under this prefix, with the given shape.
    pub fn tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<B, D>> {
        match self.origin {
            Origin::Source(s) => Ok(self.to_tensor(s.read(&self.key(name), &shape)?)),
            Origin::Random => Ok(self.random_tensor(name, shape)),
        }
    }

    fn random_tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Tensor<B, D> {
        let dtype = self.dtype.unwrap_or(DType::F32);
        let options = (self.device, DType::F32);
        let t: Tensor<B, D> = match D {
            1 if name == "scale" || name.ends_with(".scale") => Tensor::ones(shape, options),
            1 => Tensor::random(shape, Distribution::Normal(0.0, 0.02), options),
            _ => Tensor::random(shape, Distribution::Normal(0.0, 1.0 / (shape[D - 1] as f64).sqrt()), options),
        };
        t.cast(dtype)
    }

    /// A tensor from host data, in the file's dtype or the requested one.
    pub fn to_tensor<const D: usize>(&self, data: TensorData) -> Tensor<B, D> {
        let file_dtype = data.dtype;
        let t = Tensor::<B, D>::from_data(data, (self.device, file_dtype));
        match self.dtype {
            Some(dt) if dt != file_dtype => t.cast(dt),
            _ => t,
        }
    }

    /// A PyTorch `nn.Linear(d_in, d_out)` stored as `NAME.weight` `[d_out, d_in]` (and
    /// `NAME.bias`), as burn's `Linear` (`[d_in, d_out]`, a transposed view: no copy).
    pub fn linear(&self, name: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Linear<B>> {
        let vb = self.pp(name);
        let weight = vb.tensor("weight", [d_out, d_in])?.transpose();
        let bias = if bias { Some(Param::from_tensor(vb.tensor("bias", [d_out])?)) } else { None };
        Ok(Linear { weight: Param::from_tensor(weight), bias })
    }
}
