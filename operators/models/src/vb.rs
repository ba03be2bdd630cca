//! A builder that hands a model's constructors their tensors by checkpoint key, like candle's
//! `VarBuilder`: `vb.pp("double_blocks").pp(3).linear("qkv", 3072, 9216, true)`. Struct fields
//! are named after the keys, so there is no remapping table.

use std::path::Path;

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

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

/// A position in a checkpoint's key tree, with the device and dtype to load onto.
pub struct Vb<'a, B: Backend> {
    source: &'a dyn TensorSource,
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
        Self { source, prefix: String::new(), device, dtype }
    }

    /// The sub-tree `name` (a field name or a list index).
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let prefix = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        Self { source: self.source, prefix, device: self.device, dtype: self.dtype }
    }

    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) }
    }

    /// The checkpoint file, for messages.
    pub fn path(&self) -> &Path {
        self.source.path()
    }

    pub fn device(&self) -> &B::Device {
        self.device
    }

    pub fn dtype(&self) -> Option<DType> {
        self.dtype
    }

    pub fn contains(&self, name: &str) -> bool {
        self.source.contains(&self.key(name))
    }

    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.source.shape(&self.key(name))
    }

    /// The tensor `name` under this prefix, with the given shape.
    pub fn tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<B, D>> {
        let data = self.source.read(&self.key(name), &shape)?;
        Ok(self.to_tensor(data))
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
