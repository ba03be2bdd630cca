//! Layers shared by the models: affine LayerNorm with PyTorch's parameter names, and attention
//! through the backend's [`Kernels`].

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};

use crate::kernels::{AfterNorm, Kernels, Mask};
use crate::vb::Vb;
use crate::weights::Result;

/// `nn.GroupNorm(groups, channels, eps)` with `weight` and `bias` over `[B, C, H, W]`,
/// statistics in f32.
#[derive(Module, Debug)]
pub struct GroupNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub bias: Param<Tensor<B, 1>>,
    groups: usize,
    eps: f64,
}

impl<B: Kernels> GroupNorm<B> {
    pub fn load(vb: &Vb<B>, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: Param::from_tensor(vb.tensor("weight", [channels])?),
            bias: Param::from_tensor(vb.tensor("bias", [channels])?),
            groups,
            eps,
        })
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.forward_then(x, AfterNorm::Nothing)
    }

    /// `silu(self.forward(x))` in one pass.
    pub fn forward_silu(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.forward_then(x, AfterNorm::Silu)
    }

    fn forward_then(&self, x: Tensor<B, 4>, after: AfterNorm) -> Tensor<B, 4> {
        let (weight, bias) = (self.weight.val().into_primitive().tensor(), self.bias.val().into_primitive().tensor());
        let out = B::fused_group_norm(x.into_primitive().tensor(), weight, bias, self.groups, self.eps, after);
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }
}

/// `nn.Conv2d` with PyTorch's weight layout `[out, in, k, k]`; padding may differ per side.
#[derive(Module, Debug)]
pub struct Conv2d<B: Backend> {
    pub weight: Param<Tensor<B, 4>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    stride: usize,
    /// Padding before (top, left) and after (bottom, right).
    pad: [usize; 2],
}

impl<B: Kernels> Conv2d<B> {
    /// Loads `NAME.weight` (and `NAME.bias`), square kernel `k`, symmetric padding `pad`.
    pub fn load(vb: &Vb<B>, c_in: usize, c_out: usize, k: usize, stride: usize, pad: usize, bias: bool) -> Result<Self> {
        Ok(Self {
            weight: Param::from_tensor(vb.tensor("weight", [c_out, c_in, k, k])?),
            bias: if bias { Some(Param::from_tensor(vb.tensor("bias", [c_out])?)) } else { None },
            stride,
            pad: [pad, pad],
        })
    }

    /// Pads only after (bottom/right), as FLUX's autoencoder downsampling does.
    pub fn with_trailing_pad(mut self, pad: usize) -> Self {
        self.pad = [0, pad];
        self
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let weight = self.weight.val().into_primitive().tensor();
        let bias = self.bias.as_ref().map(|b| b.val().into_primitive().tensor());
        Tensor::from_primitive(TensorPrimitive::Float(B::fused_conv2d(x.into_primitive().tensor(), weight, bias, self.stride, self.pad)))
    }
}

/// `nn.Linear(d_in, d_out)` with the fields of burn's `Linear`: `weight` `[d_in, d_out]` (the
/// loaders keep PyTorch's `[d_out, d_in]` storage and hold a transposed view of it) and `bias`
/// `[d_out]`; computed by [`Kernels::fused_linear`].
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Kernels> Linear<B> {
    /// `x · weight + bias` over the last dimension of `x`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let weight = self.weight.val().into_primitive().tensor();
        let bias = self.bias.as_ref().map(|b| b.val().into_primitive().tensor());
        Tensor::from_primitive(TensorPrimitive::Float(B::fused_linear::<D>(x.into_primitive().tensor(), weight, bias)))
    }
}

/// `nn.LayerNorm(dim, eps)` with `weight` and `bias`, statistics in f32.
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub bias: Param<Tensor<B, 1>>,
    eps: f64,
}

impl<B: Kernels> LayerNorm<B> {
    pub fn load(vb: &Vb<B>, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self { weight: Param::from_tensor(vb.tensor("weight", [dim])?), bias: Param::from_tensor(vb.tensor("bias", [dim])?), eps })
    }

    /// Normalises over the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let (weight, bias) = (self.weight.val().into_primitive().tensor(), self.bias.val().into_primitive().tensor());
        Tensor::from_primitive(TensorPrimitive::Float(B::fused_layer_norm::<D>(x.into_primitive().tensor(), weight, bias, self.eps)))
    }
}

/// Scaled dot-product attention, `[B, H, L, D]` in and out, scale `1/sqrt(D)`, no mask: one
/// fused kernel where the backend has one ([`Kernels`]).
pub fn scaled_dot_product<B: Kernels>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 4> {
    attend(q, k, v, Mask::None)
}

/// Like [`scaled_dot_product`], with a causal mask (token i sees tokens 0..=i).
pub fn causal_scaled_dot_product<B: Kernels>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 4> {
    attend(q, k, v, Mask::Causal)
}

fn attend<B: Kernels>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>, mask: Mask) -> Tensor<B, 4> {
    let out = B::fused_attention(q.into_primitive().tensor(), k.into_primitive().tensor(), v.into_primitive().tensor(), mask);
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// GELU with the tanh approximation (PyTorch `approximate="tanh"`), element-wise.
pub fn gelu_tanh<B: Kernels, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(B::gelu_tanh(x.into_primitive().tensor())))
}

/// GELU in its exact (erf) form, element-wise.
pub fn gelu<B: Kernels, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(B::gelu_erf(x.into_primitive().tensor())))
}
