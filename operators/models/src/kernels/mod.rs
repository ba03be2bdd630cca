//! Fused kernels: operations a backend may compute in one pass instead of as a graph of tensor
//! operations, through burn's backend-extension pattern (a trait over `Backend`).
//!
//! Model code calls them through [`Kernels`] and stays one code for every backend; each backend
//! says which of them it fuses. The CPU backend (burn Flex) runs the kernels of [`cpu`] on f32
//! tensors and the graphs ([`graph`]) on other dtypes or shapes its kernels do not take; CUDA
//! runs burn's own attention (flash attention) and the graphs. Under autodiff, attention, the
//! linear layer and GELU-tanh run the inner backend's kernels with their own backward
//! ([`autodiff`]); every other kernel is its graph, differentiated by burn step by step.

mod autodiff;
pub mod cpu;
pub mod graph;

use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::flex::FlexTensor;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Shape, Tensor, TensorData, TensorMetadata, TensorPrimitive};

pub use cpu::attention::Mask;
pub use cpu::elementwise::AfterNorm;

/// The operations a backend may fuse. Each method has the unfused graph as its default.
pub trait Kernels: Backend {
    /// Scaled dot-product attention: `q` `[B, H, Lq, D]`, `k` `[B, H, Lk, D]`, `v`
    /// `[B, H, Lk, Dv]` → `[B, H, Lq, Dv]`, scale `1/√D`.
    fn fused_attention(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>, mask: Mask) -> FloatTensor<Self> {
        attention_graph::<Self>(q, k, v, mask)
    }

    /// [`Kernels::fused_attention`] and each row's log-sum-exp of its scaled scores
    /// (`[B, Lq, H]`), which [`Kernels::fused_attention_backward`] takes; `None` where the
    /// backend has no such pair of kernels (autodiff then differentiates the graph).
    fn fused_attention_with_stats(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: Mask,
    ) -> Option<(FloatTensor<Self>, FloatTensor<Self>)> {
        let _ = (q, k, v, mask);
        None
    }

    /// The gradients of `q`, `k` and `v` from attention's output `out` and log-sum-exp (as
    /// [`Kernels::fused_attention_with_stats`] gave them) and the output's gradient. Only called
    /// on backends whose `fused_attention_with_stats` returns `Some`.
    fn fused_attention_backward(inputs: AttentionBackward<Self>, mask: Mask) -> [FloatTensor<Self>; 3] {
        let _ = (inputs, mask);
        unreachable!("fused_attention_backward without fused_attention_with_stats on {}", std::any::type_name::<Self>())
    }

    /// GELU with the tanh approximation, element-wise, any shape.
    fn gelu_tanh(x: FloatTensor<Self>) -> FloatTensor<Self> {
        elementwise_graph::<Self>(x, graph::gelu_tanh_graph)
    }

    /// A linear layer: `x` `[…, K]` (rank `D`) times `weight` `[K, N]`, plus `bias` `[N]`.
    fn fused_linear<const D: usize>(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: Option<FloatTensor<Self>>) -> FloatTensor<Self> {
        linear_graph::<Self, D>(x, weight, bias)
    }

    /// `nn.Conv2d` with one group and a square kernel: `x` `[B, C, H, W]`, `weight`
    /// `[O, C, k, k]`, `bias` `[O]`; `pad` zero rows and columns before (top, left) and after
    /// (bottom, right).
    fn fused_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        stride: usize,
        pad: [usize; 2],
    ) -> FloatTensor<Self> {
        conv2d_graph::<Self>(x, weight, bias, stride, pad)
    }

    /// `nn.GroupNorm(groups, C, eps)` over `x` `[B, C, H, W]` with `weight` and `bias` `[C]`,
    /// statistics in f32, then `after`.
    fn fused_group_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        groups: usize,
        eps: f64,
        after: AfterNorm,
    ) -> FloatTensor<Self> {
        group_norm_graph::<Self>(x, weight, bias, groups, eps, after)
    }

    /// GELU in its exact (erf) form, element-wise, any shape.
    fn gelu_erf(x: FloatTensor<Self>) -> FloatTensor<Self> {
        elementwise_graph::<Self>(x, burn::tensor::activation::gelu)
    }

    /// LayerNorm over the last dimension of `x` (rank `D`) with `weight` and `bias` `[dim]`,
    /// statistics in f32.
    fn fused_layer_norm<const D: usize>(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        layer_norm_graph::<Self, D>(x, weight, bias, eps)
    }

    /// The gradient through [`Kernels::gelu_tanh`]: `grad · gelu'(x)`, element-wise.
    fn gelu_tanh_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        gelu_tanh_backward_graph::<Self>(x, grad)
    }

    /// FLUX's rotary embedding: `x` `[B, L, H, D]` with pairs interleaved along D, `cos` and
    /// `sin` `[B, L, 1, D/2, 1]`.
    fn rope(x: FloatTensor<Self>, cos: FloatTensor<Self>, sin: FloatTensor<Self>) -> FloatTensor<Self> {
        rope_graph::<Self>(x, cos, sin)
    }

    /// FLUX's modulated LayerNorm: `x` `[B, L, D]` normalised over D (no affine, `eps` added
    /// to the variance), then `(1 + scale)·x + shift` with `shift`, `scale` `[B, 1, D]`.
    fn layer_norm_modulate(x: FloatTensor<Self>, shift: FloatTensor<Self>, scale: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        layer_norm_modulate_graph::<Self>(x, shift, scale, eps)
    }

    /// A gated residual `x + gate·y`: `x`, `y` `[B, L, D]`, `gate` `[B, 1, D]`.
    fn add_gated(x: FloatTensor<Self>, gate: FloatTensor<Self>, y: FloatTensor<Self>) -> FloatTensor<Self> {
        add_gated_graph::<Self>(x, gate, y)
    }
}

/// What [`Kernels::fused_attention_backward`] reads.
#[derive(Debug, Clone)]
pub struct AttentionBackward<B: Backend> {
    pub q: FloatTensor<B>,
    pub k: FloatTensor<B>,
    pub v: FloatTensor<B>,
    pub out: FloatTensor<B>,
    pub log_sum_exp: FloatTensor<B>,
    pub grad: FloatTensor<B>,
}

fn attention_graph<B: Backend>(q: FloatTensor<B>, k: FloatTensor<B>, v: FloatTensor<B>, mask: Mask) -> FloatTensor<B> {
    let out = graph::attention_graph(float::<B, 4>(q), float(k), float(v), mask == Mask::Causal);
    out.into_primitive().tensor()
}

fn linear_graph<B: Backend, const D: usize>(x: FloatTensor<B>, weight: FloatTensor<B>, bias: Option<FloatTensor<B>>) -> FloatTensor<B> {
    burn::tensor::module::linear(float::<B, D>(x), float(weight), bias.map(float)).into_primitive().tensor()
}

fn conv2d_graph<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
    stride: usize,
    pad: [usize; 2],
) -> FloatTensor<B> {
    graph::conv2d_graph(float::<B, 4>(x), float(weight), bias.map(float), stride, pad).into_primitive().tensor()
}

fn group_norm_graph<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: FloatTensor<B>,
    groups: usize,
    eps: f64,
    after: AfterNorm,
) -> FloatTensor<B> {
    graph::group_norm_graph(float::<B, 4>(x), float(weight), float(bias), groups, eps, after).into_primitive().tensor()
}

fn layer_norm_graph<B: Backend, const D: usize>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: FloatTensor<B>,
    eps: f64,
) -> FloatTensor<B> {
    graph::layer_norm_graph(float::<B, D>(x), float(weight), float(bias), eps).into_primitive().tensor()
}

fn rope_graph<B: Backend>(x: FloatTensor<B>, cos: FloatTensor<B>, sin: FloatTensor<B>) -> FloatTensor<B> {
    graph::rope_graph(float::<B, 4>(x), float(cos), float(sin)).into_primitive().tensor()
}

fn layer_norm_modulate_graph<B: Backend>(x: FloatTensor<B>, shift: FloatTensor<B>, scale: FloatTensor<B>, eps: f64) -> FloatTensor<B> {
    graph::layer_norm_modulate_graph(float::<B, 3>(x), float(shift), float(scale), eps).into_primitive().tensor()
}

fn add_gated_graph<B: Backend>(x: FloatTensor<B>, gate: FloatTensor<B>, y: FloatTensor<B>) -> FloatTensor<B> {
    graph::add_gated_graph(float::<B, 3>(x), float(gate), float(y)).into_primitive().tensor()
}

fn gelu_tanh_backward_graph<B: Backend>(x: FloatTensor<B>, grad: FloatTensor<B>) -> FloatTensor<B> {
    let shape = x.shape();
    let flat = |t: FloatTensor<B>| float::<B, 1>(B::float_reshape(t, Shape::new([shape.num_elements()])));
    let out = graph::gelu_tanh_backward_graph(flat(x), flat(grad));
    B::float_reshape(out.into_primitive().tensor(), shape)
}

/// An element-wise graph `f` on a tensor of any rank (run on it flattened).
fn elementwise_graph<B: Backend>(x: FloatTensor<B>, f: fn(Tensor<B, 1>) -> Tensor<B, 1>) -> FloatTensor<B> {
    let shape = x.shape();
    let flat = float::<B, 1>(B::float_reshape(x, Shape::new([shape.num_elements()])));
    B::float_reshape(f(flat).into_primitive().tensor(), shape)
}

/// A float primitive as a tensor of rank `D`.
fn float<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// Flex runs the CPU kernels on f32 tensors of the shapes they take; anything else (bf16, an
/// empty dimension, a broadcast operand, mismatched shapes) goes to the graph, which computes it
/// or reports the mismatch as burn does.
impl Kernels for Flex {
    fn fused_attention(q: FlexTensor, k: FlexTensor, v: FlexTensor, mask: Mask) -> FlexTensor {
        match Self::fused_attention_with_stats(q.clone(), k.clone(), v.clone(), mask) {
            Some((out, _)) => out,
            None => attention_graph::<Self>(q, k, v, mask),
        }
    }

    fn fused_attention_with_stats(q: FlexTensor, k: FlexTensor, v: FlexTensor, mask: Mask) -> Option<(FlexTensor, FlexTensor)> {
        if !all_f32(&[&q, &k, &v]) {
            return None;
        }
        let shape = attention_shape(&q, &k, &v)?;
        let (q, k, v) = (rows_contiguous(q), rows_contiguous(k), rows_contiguous(v));
        let result = cpu::attention::attention(operand(&q), operand(&k), operand(&v), shape, mask);
        // Written `[B, L, H, Dv]`, returned as the `[B, H, L, Dv]` view of it.
        let out = [shape.batch, shape.seq_q, shape.heads, shape.val_dim];
        let out = FlexTensor::from_data(TensorData::new(result.out, out)).transpose(1, 2);
        let log_sum_exp = FlexTensor::from_data(TensorData::new(result.log_sum_exp, [shape.batch, shape.seq_q, shape.heads]));
        Some((out, log_sum_exp))
    }

    fn fused_attention_backward(inputs: AttentionBackward<Self>, mask: Mask) -> [FlexTensor; 3] {
        let AttentionBackward { q, k, v, out, log_sum_exp, grad } = inputs;
        let shape = attention_shape(&q, &k, &v).expect("the shapes the forward kernel took");
        let want = [shape.batch, shape.heads, shape.seq_q, shape.val_dim];
        assert_eq!(dims4(&grad), want, "attention backward: the output's gradient must be shaped as the output");
        let (q, k, v, grad) = (rows_contiguous(q), rows_contiguous(k), rows_contiguous(v), rows_contiguous(grad));
        // `out` is the `[B, H, L, Dv]` view the forward returned: its storage is `[B, L, H, Dv]`.
        let (out, log_sum_exp) = (contiguous_f32(out.transpose(1, 2)), contiguous_f32(log_sum_exp));
        let inputs = cpu::attention::BackwardInputs {
            q: operand(&q),
            k: operand(&k),
            v: operand(&v),
            out: slice(&out),
            log_sum_exp: slice(&log_sum_exp),
            dout: operand(&grad),
        };
        let grads = cpu::attention::attention_backward(inputs, shape, mask);
        let tensor = |values: Vec<f32>, tokens: usize, dim: usize| {
            FlexTensor::from_data(TensorData::new(values, [shape.batch, shape.heads, tokens, dim]))
        };
        [
            tensor(grads.dq, shape.seq_q, shape.head_dim),
            tensor(grads.dk, shape.seq_kv, shape.head_dim),
            tensor(grads.dv, shape.seq_kv, shape.val_dim),
        ]
    }

    fn gelu_tanh(x: FlexTensor) -> FlexTensor {
        if !all_f32(&[&x]) {
            return elementwise_graph::<Self>(x, graph::gelu_tanh_graph);
        }
        // In place when `x` is contiguous and not shared (a layer's fresh output): no copy.
        let mut x = contiguous_f32(x);
        cpu::elementwise::gelu_tanh(x.storage_mut::<f32>());
        x
    }

    fn fused_linear<const D: usize>(x: FlexTensor, weight: FlexTensor, bias: Option<FlexTensor>) -> FlexTensor {
        let shape = x.layout().shape().clone();
        let w_shape = weight.layout().shape().clone();
        let (k, n) = (shape[D - 1], if w_shape.num_dims() == 2 { w_shape[1] } else { 0 });
        let bias_fits = bias.as_ref().is_none_or(|b| b.layout().shape().num_elements() == n);
        if !all_f32(&[&x, &weight]) || !bias.iter().all(|b| all_f32(&[b])) || w_shape.num_dims() != 2 || w_shape[0] != k || !bias_fits {
            return linear_graph::<Self, D>(x, weight, bias);
        }
        if k == 0 || n == 0 || shape.num_elements() == 0 {
            return linear_graph::<Self, D>(x, weight, bias);
        }
        let x = contiguous_f32(x);
        let m = shape.num_elements() / k;
        // The loaders keep PyTorch's `[out, in]` weights and hand out `[in, out]` views of them:
        // read either layout in place.
        let (strides, offset) = (weight.layout().strides().to_vec(), weight.layout().start_offset());
        let (weight, b_layout) = match (strides[0], strides[1]) {
            (ld, 1) if offset == 0 && ld >= n as isize => (weight, cpu::gemm::Layout::RowMajor { ld: ld as usize }),
            (1, ld) if offset == 0 && ld >= k as isize => (weight, cpu::gemm::Layout::Transposed { ld: ld as usize }),
            _ => (weight.to_contiguous(), cpu::gemm::Layout::RowMajor { ld: n }),
        };
        let bias = bias.map(contiguous_f32);
        let mut out = vec![0.0f32; m * n];
        let gemm = cpu::gemm::Gemm {
            a: slice(&x),
            lda: k,
            b: weight.storage::<f32>(),
            b_layout,
            bias: bias.as_ref().map(|b| cpu::gemm::Bias::PerColumn(slice(b))),
            dims: [m, n, k],
            ldc: n,
        };
        gemm.run(&mut out);
        let mut out_shape = shape;
        out_shape[D - 1] = n;
        FlexTensor::from_data(TensorData::new(out, out_shape))
    }

    fn fused_conv2d(x: FlexTensor, weight: FlexTensor, bias: Option<FlexTensor>, stride: usize, pad: [usize; 2]) -> FlexTensor {
        let ([batch, channels, height, width], [out_channels, in_channels, kernel, kernel_w]) = (dims4(&x), dims4(&weight));
        let bias_fits = bias.as_ref().is_none_or(|b| b.layout().shape().num_elements() == out_channels);
        let shape = cpu::conv::Conv2dShape { batch, channels, height, width, out_channels, kernel, stride, pad };
        let takes =
            all_f32(&[&x, &weight]) && bias.iter().all(|b| all_f32(&[b])) && bias_fits && kernel == kernel_w && in_channels == channels;
        if !takes || stride == 0 || kernel == 0 || x.layout().shape().num_elements() == 0 || shape.out_size().contains(&0) {
            return conv2d_graph::<Self>(x, weight, bias, stride, pad);
        }
        let (x, weight, bias) = (contiguous_f32(x), contiguous_f32(weight), bias.map(contiguous_f32));
        let [out_h, out_w] = shape.out_size();
        let out = cpu::conv::conv2d(slice(&x), slice(&weight), bias.as_ref().map(slice), shape);
        FlexTensor::from_data(TensorData::new(out, [batch, out_channels, out_h, out_w]))
    }

    fn fused_group_norm(x: FlexTensor, weight: FlexTensor, bias: FlexTensor, groups: usize, eps: f64, after: AfterNorm) -> FlexTensor {
        let [_, channels, height, width] = dims4(&x);
        let per_channel = |t: &FlexTensor| t.layout().shape().num_elements() == channels;
        let takes =
            all_f32(&[&x, &weight, &bias]) && per_channel(&weight) && per_channel(&bias) && groups > 0 && channels.is_multiple_of(groups);
        if !takes || x.layout().shape().num_elements() == 0 {
            return group_norm_graph::<Self>(x, weight, bias, groups, eps, after);
        }
        let (mut x, weight, bias) = (contiguous_f32(x), contiguous_f32(weight), contiguous_f32(bias));
        cpu::elementwise::group_norm(x.storage_mut::<f32>(), slice(&weight), slice(&bias), groups, height * width, eps as f32, after);
        x
    }

    fn gelu_tanh_backward(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
        if !all_f32(&[&x, &grad]) || x.layout().shape() != grad.layout().shape() {
            return gelu_tanh_backward_graph::<Self>(x, grad);
        }
        let (x, mut grad) = (contiguous_f32(x), contiguous_f32(grad));
        cpu::elementwise::gelu_tanh_backward(slice(&x), grad.storage_mut::<f32>());
        grad
    }

    fn gelu_erf(x: FlexTensor) -> FlexTensor {
        if !all_f32(&[&x]) {
            return elementwise_graph::<Self>(x, burn::tensor::activation::gelu);
        }
        let mut x = contiguous_f32(x);
        cpu::elementwise::gelu_erf(x.storage_mut::<f32>());
        x
    }

    fn fused_layer_norm<const D: usize>(x: FlexTensor, weight: FlexTensor, bias: FlexTensor, eps: f64) -> FlexTensor {
        let dim = x.layout().shape()[D - 1];
        let per_channel = |t: &FlexTensor| t.layout().shape().num_elements() == dim;
        if !all_f32(&[&x, &weight, &bias]) || !per_channel(&weight) || !per_channel(&bias) || x.layout().shape().num_elements() == 0 {
            return layer_norm_graph::<Self, D>(x, weight, bias, eps);
        }
        let (mut x, weight, bias) = (contiguous_f32(x), contiguous_f32(weight), contiguous_f32(bias));
        cpu::elementwise::layer_norm(x.storage_mut::<f32>(), slice(&weight), slice(&bias), eps as f32);
        x
    }

    fn rope(x: FlexTensor, cos: FlexTensor, sin: FlexTensor) -> FlexTensor {
        let [batch, tokens, heads, dim] = dims4(&x);
        let tables = |t: &FlexTensor| t.layout().shape().num_elements() == batch * tokens * (dim / 2);
        if !all_f32(&[&x, &cos, &sin]) || dim % 2 != 0 || !tables(&cos) || !tables(&sin) || x.layout().shape().num_elements() == 0 {
            return rope_graph::<Self>(x, cos, sin);
        }
        let (x, cos, sin) = (contiguous_f32(x), contiguous_f32(cos), contiguous_f32(sin));
        let out = cpu::elementwise::rope(slice(&x), slice(&cos), slice(&sin), heads, dim);
        FlexTensor::from_data(TensorData::new(out, [batch, tokens, heads, dim]))
    }

    fn layer_norm_modulate(x: FlexTensor, shift: FlexTensor, scale: FlexTensor, eps: f64) -> FlexTensor {
        let layout = per_batch_rows(&x, &[&shift, &scale]);
        let Some(layout) = layout.filter(|_| all_f32(&[&x, &shift, &scale])) else {
            return layer_norm_modulate_graph::<Self>(x, shift, scale, eps);
        };
        let (mut x, shift, scale) = (contiguous_f32(x), contiguous_f32(shift), contiguous_f32(scale));
        cpu::elementwise::layer_norm_modulate(x.storage_mut::<f32>(), slice(&shift), slice(&scale), layout, eps as f32);
        x
    }

    fn add_gated(x: FlexTensor, gate: FlexTensor, y: FlexTensor) -> FlexTensor {
        let layout = per_batch_rows(&x, &[&gate]).filter(|_| x.layout().shape() == y.layout().shape());
        let Some(layout) = layout.filter(|_| all_f32(&[&x, &gate, &y])) else {
            return add_gated_graph::<Self>(x, gate, y);
        };
        let (mut x, gate, y) = (contiguous_f32(x), contiguous_f32(gate), contiguous_f32(y));
        cpu::elementwise::add_gated(x.storage_mut::<f32>(), slice(&gate), slice(&y), layout);
        x
    }
}

fn all_f32(tensors: &[&FlexTensor]) -> bool {
    tensors.iter().all(|t| t.dtype() == DType::F32)
}

/// The rows of `x` `[B, L, D]` (none empty) with a `[B, 1, D]` vector per batch item in each of
/// `vectors`; `None` for any other shapes.
fn per_batch_rows(x: &FlexTensor, vectors: &[&FlexTensor]) -> Option<cpu::elementwise::PerBatchRows> {
    let shape = x.layout().shape();
    if shape.num_dims() != 3 || shape.num_elements() == 0 {
        return None;
    }
    let (batch, rows, dim) = (shape[0], shape[1], shape[2]);
    let fits = |v: &&FlexTensor| {
        let v = v.layout().shape();
        v.num_dims() == 3 && v[0] == batch && v[1] == 1 && v[2] == dim
    };
    vectors.iter().all(fits).then_some(cpu::elementwise::PerBatchRows { rows, dim })
}

/// The f32 tensor `t` with a contiguous layout from offset 0 that covers its whole buffer; `t`
/// itself (no copy, no second reference) when it already is.
fn contiguous_f32(t: FlexTensor) -> FlexTensor {
    let whole_buffer = t.bytes().len() == t.layout().num_elements() * std::mem::size_of::<f32>();
    if t.is_contiguous() && t.layout().start_offset() == 0 && whole_buffer { t } else { t.to_contiguous() }
}

/// The sizes of an attention over `q` `[B, H, Lq, D]`, `k` `[B, H, Lk, D]` and `v`
/// `[B, H, Lk, Dv]`; `None` for any other shapes (broadcasts included) or an empty dimension.
fn attention_shape(q: &FlexTensor, k: &FlexTensor, v: &FlexTensor) -> Option<cpu::attention::AttentionShape> {
    let ([batch, heads, seq_q, head_dim], [kb, kh, seq_kv, kd], [vb, vh, vl, val_dim]) = (dims4(q), dims4(k), dims4(v));
    let fits = [kb, vb] == [batch; 2] && [kh, vh] == [heads; 2] && kd == head_dim && vl == seq_kv;
    let empty = [batch, heads, seq_q, seq_kv, head_dim, val_dim].contains(&0);
    (fits && !empty).then_some(cpu::attention::AttentionShape { batch, heads, seq_q, seq_kv, head_dim, val_dim })
}

/// `t` if the kernels can read it in place: its last dimension contiguous and every other
/// stride positive (a stride of 0 over more than one element is a broadcast); else a
/// contiguous copy.
fn rows_contiguous(t: FlexTensor) -> FlexTensor {
    let layout = t.layout();
    let readable = layout.strides().last() == Some(&1)
        && layout.strides().iter().zip(layout.shape().iter()).all(|(&stride, &size)| stride > 0 || (stride == 0 && size <= 1));
    if readable { t } else { t.to_contiguous() }
}

/// A 4-dimensional f32 tensor as an attention operand.
fn operand(t: &FlexTensor) -> cpu::attention::Operand<'_> {
    let strides = t.layout().strides();
    let stride = |d: usize| usize::try_from(strides[d]).expect("non-negative strides");
    cpu::attention::Operand { data: t.storage::<f32>(), offset: t.layout().start_offset(), strides: [stride(0), stride(1), stride(2)] }
}

fn slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("a contiguous f32 tensor")
}

fn dims4(t: &FlexTensor) -> [usize; 4] {
    let shape = t.layout().shape();
    assert_eq!(shape.num_dims(), 4, "expected a 4-dimensional tensor, got {shape:?}");
    [shape[0], shape[1], shape[2], shape[3]]
}

/// Under autodiff, attention (where the inner backend has a backward kernel), the linear layer
/// and GELU-tanh keep the inner backend's kernels with their own backward ([`autodiff`]); every
/// other kernel is its graph, differentiated by burn.
impl<B: Kernels, C: CheckpointStrategy> Kernels for burn::backend::Autodiff<B, C> {
    fn fused_attention(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>, mask: Mask) -> FloatTensor<Self> {
        autodiff::attention::<B, C>(q, k, v, mask)
    }

    fn fused_linear<const D: usize>(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: Option<FloatTensor<Self>>) -> FloatTensor<Self> {
        autodiff::linear::<B, C, D>(x, weight, bias)
    }

    fn gelu_tanh(x: FloatTensor<Self>) -> FloatTensor<Self> {
        autodiff::gelu_tanh::<B, C>(x)
    }
}

#[cfg(feature = "cuda")]
impl Kernels for burn::backend::Cuda {}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;

    use super::*;

    fn attend<B: Kernels>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>, mask: Mask) -> Tensor<B, 4> {
        float(B::fused_attention(q.into_primitive().tensor(), k.into_primitive().tensor(), v.into_primitive().tensor(), mask))
    }

    fn largest_difference(a: Tensor<Flex, 4>, b: Tensor<Flex, 4>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    #[test]
    fn the_cpu_kernel_matches_the_graph_on_strided_inputs_with_and_without_mask() {
        let device = Default::default();
        Flex::seed(&device, 7);
        let normal = |shape: [usize; 4]| Tensor::<Flex, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        // `[B, L, H, D]` made `[B, H, L, D]` by a swap, as the models do: not contiguous.
        let (q, k, v) =
            (normal([2, 130, 3, 32]).swap_dims(1, 2), normal([2, 300, 3, 32]).swap_dims(1, 2), normal([2, 300, 3, 24]).swap_dims(1, 2));
        let fused = attend(q.clone(), k.clone(), v.clone(), Mask::None);
        assert_eq!(fused.dims(), [2, 3, 130, 24]);
        let unfused = graph::attention_graph(q, k, v, false);
        assert!(largest_difference(fused, unfused.clone()) < 1e-5);

        // A key broadcast over the heads (stride 0): copied, not read in place.
        let (q, v) = (normal([2, 3, 20, 8]), normal([2, 3, 30, 8]));
        let k = normal([2, 1, 30, 8]).expand([2, 3, 30, 8]);
        let fused = attend(q.clone(), k.clone(), v.clone(), Mask::None);
        assert!(largest_difference(fused, graph::attention_graph(q, k, v, false)) < 1e-5);

        let x = normal([1, 2, 90, 16]);
        let fused = attend(x.clone(), x.clone(), x.clone(), Mask::Causal);
        let unfused = graph::attention_graph(x.clone(), x.clone(), x, true);
        assert!(largest_difference(fused, unfused) < 1e-5);
    }

    #[test]
    fn gelu_and_rope_match_their_graphs_and_keep_shared_inputs_intact() {
        let device = Default::default();
        Flex::seed(&device, 3);
        let x = Tensor::<Flex, 4>::random([2, 33, 3, 16], Distribution::Normal(0.0, 2.0), &device);
        let kept = x.clone().into_data();
        // `x` is shared here: the in-place kernel must copy, not write through.
        let fused = float::<Flex, 4>(Flex::gelu_tanh(x.clone().into_primitive().tensor()));
        assert!(largest_difference(fused, graph::gelu_tanh_graph(x.clone())) < 1e-5);
        assert_eq!(x.clone().into_data(), kept);

        let fused = float::<Flex, 4>(Flex::gelu_erf(x.clone().into_primitive().tensor()));
        assert!(largest_difference(fused, burn::tensor::activation::gelu(x.clone())) < 1e-6);
        let (weight, bias) = (
            Tensor::<Flex, 1>::random([16], Distribution::Normal(1.0, 0.5), &device),
            Tensor::<Flex, 1>::random([16], Distribution::Normal(0.0, 0.5), &device),
        );
        let (w, b) = (weight.clone().into_primitive().tensor(), bias.clone().into_primitive().tensor());
        let fused = float::<Flex, 4>(Flex::fused_layer_norm::<4>(x.clone().swap_dims(1, 2).into_primitive().tensor(), w, b, 1e-5));
        assert!(largest_difference(fused, graph::layer_norm_graph(x.clone().swap_dims(1, 2), weight, bias, 1e-5)) < 1e-5);

        let angles = Tensor::<Flex, 5>::random([2, 33, 1, 8, 1], Distribution::Uniform(-3.0, 3.0), &device);
        let (cos, sin) = (angles.clone().cos(), angles.sin());
        // `[B, H, L, D]` seen as `[B, L, H, D]`: not contiguous.
        let strided = Tensor::<Flex, 4>::random([2, 3, 33, 16], Distribution::Normal(0.0, 1.0), &device).swap_dims(1, 2);
        let prim = |t: Tensor<Flex, 5>| t.into_primitive().tensor();
        let fused = float::<Flex, 4>(Flex::rope(strided.clone().into_primitive().tensor(), prim(cos.clone()), prim(sin.clone())));
        assert!(largest_difference(fused, graph::rope_graph(strided, cos, sin)) < 1e-5);
    }

    #[test]
    fn modulated_norm_and_gated_residual_match_their_graphs_on_views() {
        let device = Default::default();
        Flex::seed(&device, 5);
        let normal = |shape: [usize; 3]| Tensor::<Flex, 3>::random(shape, Distribution::Normal(0.0, 1.5), &device);
        let x = normal([2, 40, 24]);
        // Shift, scale and gate as the model makes them: slices of one modulation output.
        let mods = normal([2, 1, 72]);
        let part = |i: usize| mods.clone().narrow(2, i * 24, 24);
        let prim = |t: Tensor<Flex, 3>| t.into_primitive().tensor();
        let fused = float::<Flex, 3>(Flex::layer_norm_modulate(prim(x.clone()), prim(part(0)), prim(part(1)), 1e-6));
        let unfused = graph::layer_norm_modulate_graph(x.clone(), part(0), part(1), 1e-6);
        assert!((fused - unfused).abs().max().into_scalar() < 1e-5);

        let y = normal([2, 40, 24]);
        let fused = float::<Flex, 3>(Flex::add_gated(prim(x.clone()), prim(part(2)), prim(y.clone())));
        let unfused = graph::add_gated_graph(x, part(2), y);
        assert!((fused - unfused).abs().max().into_scalar() < 1e-6);
    }

    #[test]
    fn the_linear_kernel_matches_the_graph_for_row_major_and_transposed_weights() {
        let device = Default::default();
        Flex::seed(&device, 11);
        let x = Tensor::<Flex, 3>::random([2, 37, 70], Distribution::Normal(0.0, 1.0), &device);
        let stored = Tensor::<Flex, 2>::random([45, 70], Distribution::Normal(0.0, 1.0), &device); // PyTorch's [out, in]
        let bias = Tensor::<Flex, 1>::random([45], Distribution::Normal(0.0, 1.0), &device);
        let transposed_view = stored.clone().transpose();
        let row_major = Tensor::<Flex, 2>::from_data(transposed_view.to_data(), &device);
        for weight in [transposed_view, row_major] {
            for bias in [None, Some(bias.clone())] {
                let want = burn::tensor::module::linear(x.clone(), weight.clone(), bias.clone());
                let got = float::<Flex, 3>(Flex::fused_linear::<3>(
                    x.clone().into_primitive().tensor(),
                    weight.clone().into_primitive().tensor(),
                    bias.map(|b| b.into_primitive().tensor()),
                ));
                assert!((got - want).abs().max().into_scalar() < 1e-4);
            }
        }
    }

    #[test]
    fn the_convolution_kernel_matches_the_graph() {
        let device = Default::default();
        Flex::seed(&device, 13);
        let x = Tensor::<Flex, 4>::random([2, 6, 13, 10], Distribution::Normal(0.0, 1.0), &device);
        for (kernel, stride, pad) in [(3, 1, [1, 1]), (1, 1, [0, 0]), (3, 2, [0, 1]), (3, 1, [2, 1])] {
            let weight = Tensor::<Flex, 4>::random([5, 6, kernel, kernel], Distribution::Normal(0.0, 0.3), &device);
            for bias in [None, Some(Tensor::<Flex, 1>::random([5], Distribution::Normal(0.0, 1.0), &device))] {
                let want = graph::conv2d_graph(x.clone(), weight.clone(), bias.clone(), stride, pad);
                let bias = bias.map(|b| b.into_primitive().tensor());
                let got = float::<Flex, 4>(Flex::fused_conv2d(
                    x.clone().into_primitive().tensor(),
                    weight.clone().into_primitive().tensor(),
                    bias,
                    stride,
                    pad,
                ));
                assert_eq!(got.dims(), want.dims());
                assert!(largest_difference(got, want) < 1e-4, "kernel {kernel} stride {stride} pad {pad:?}");
            }
        }
    }

    #[test]
    fn the_group_norm_kernel_matches_the_graph_with_and_without_silu() {
        let device = Default::default();
        Flex::seed(&device, 17);
        let x = Tensor::<Flex, 4>::random([2, 8, 5, 7], Distribution::Normal(1.0, 2.0), &device);
        let weight = Tensor::<Flex, 1>::random([8], Distribution::Normal(1.0, 0.5), &device);
        let bias = Tensor::<Flex, 1>::random([8], Distribution::Normal(0.0, 0.5), &device);
        for after in [AfterNorm::Nothing, AfterNorm::Silu] {
            let want = graph::group_norm_graph(x.clone(), weight.clone(), bias.clone(), 4, 1e-6, after);
            let prim = |t: Tensor<Flex, 1>| t.into_primitive().tensor();
            let got = float::<Flex, 4>(Flex::fused_group_norm(
                x.clone().into_primitive().tensor(),
                prim(weight.clone()),
                prim(bias.clone()),
                4,
                1e-6,
                after,
            ));
            assert!(largest_difference(got, want) < 1e-5, "{after:?}");
        }
    }

    #[test]
    fn the_linear_kernel_under_autodiff_gives_the_graphs_gradients() {
        use burn::backend::Autodiff;
        type A = Autodiff<Flex>;
        let device = Default::default();
        Flex::seed(&device, 19);
        let x = Tensor::<Flex, 3>::random([2, 9, 20], Distribution::Normal(0.0, 1.0), &device);
        let stored = Tensor::<Flex, 2>::random([12, 20], Distribution::Normal(0.0, 1.0), &device);
        let bias = Tensor::<Flex, 1>::random([12], Distribution::Normal(0.0, 1.0), &device);
        let target = Tensor::<Flex, 3>::random([2, 9, 12], Distribution::Normal(0.0, 1.0), &device);
        // The loss's gradients with respect to x, the weight (a transposed view, as loaded) and
        // the bias, by `linear` through `Kernels` or through burn's graph.
        let gradients = |fused: bool| {
            let x = Tensor::<A, 3>::from_inner(x.clone()).require_grad();
            let weight = Tensor::<A, 2>::from_inner(stored.clone()).require_grad();
            let bias = Tensor::<A, 1>::from_inner(bias.clone()).require_grad();
            let w = weight.clone().transpose();
            let y = if fused {
                float::<A, 3>(A::fused_linear::<3>(
                    x.clone().into_primitive().tensor(),
                    w.into_primitive().tensor(),
                    Some(bias.clone().into_primitive().tensor()),
                ))
            } else {
                burn::tensor::module::linear(x.clone(), w, Some(bias.clone()))
            };
            let grads = (y - Tensor::from_inner(target.clone())).powi_scalar(2).sum().backward();
            let grad3 = |t: &Tensor<A, 3>| t.grad(&grads).expect("a gradient").into_data();
            (grad3(&x), weight.grad(&grads).expect("a gradient").into_data(), bias.grad(&grads).expect("a gradient").into_data())
        };
        let (fused, graph) = (gradients(true), gradients(false));
        fused.0.assert_approx_eq::<f32>(&graph.0, burn::tensor::Tolerance::relative(1e-4));
        fused.1.assert_approx_eq::<f32>(&graph.1, burn::tensor::Tolerance::relative(1e-4));
        fused.2.assert_approx_eq::<f32>(&graph.2, burn::tensor::Tolerance::relative(1e-4));
    }

    #[test]
    fn attention_under_autodiff_gives_the_graphs_gradients() {
        use burn::backend::Autodiff;
        type A = Autodiff<Flex>;
        let device = Default::default();
        Flex::seed(&device, 23);
        let normal = |shape: [usize; 4]| Tensor::<Flex, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let (q, k, v, target) = (normal([2, 70, 3, 16]), normal([2, 90, 3, 16]), normal([2, 90, 3, 8]), normal([2, 3, 70, 8]));
        for mask in [Mask::None, Mask::Causal] {
            let (k, v) = if mask == Mask::Causal { (q.clone(), normal([2, 70, 3, 8])) } else { (k.clone(), v.clone()) };
            let gradients = |fused: bool| {
                let leaf = |t: &Tensor<Flex, 4>| Tensor::<A, 4>::from_inner(t.clone()).require_grad();
                let (q, k, v) = (leaf(&q), leaf(&k), leaf(&v));
                // `[B, L, H, D]` seen as `[B, H, L, D]`, as the models do.
                let (qs, ks, vs) = (q.clone().swap_dims(1, 2), k.clone().swap_dims(1, 2), v.clone().swap_dims(1, 2));
                let y = if fused {
                    let prim = |t: Tensor<A, 4>| t.into_primitive().tensor();
                    float::<A, 4>(A::fused_attention(prim(qs), prim(ks), prim(vs), mask))
                } else {
                    graph::attention_graph(qs, ks, vs, mask == Mask::Causal)
                };
                let grads = (y - Tensor::from_inner(target.clone())).powi_scalar(2).sum().backward();
                [q, k, v].map(|t| t.grad(&grads).expect("a gradient").into_data())
            };
            let (fused, graph) = (gradients(true), gradients(false));
            for (f, g) in fused.iter().zip(&graph) {
                f.assert_approx_eq::<f32>(g, burn::tensor::Tolerance::absolute(1e-4));
            }
        }
    }

    #[test]
    fn gelu_tanh_under_autodiff_gives_the_graphs_gradient() {
        use burn::backend::Autodiff;
        type A = Autodiff<Flex>;
        let device = Default::default();
        Flex::seed(&device, 29);
        let x = Tensor::<Flex, 3>::random([2, 30, 17], Distribution::Normal(0.0, 2.0), &device);
        let gradient = |fused: bool| {
            let x = Tensor::<A, 3>::from_inner(x.clone()).require_grad();
            let y =
                if fused { float::<A, 3>(A::gelu_tanh(x.clone().into_primitive().tensor())) } else { graph::gelu_tanh_graph(x.clone()) };
            let grads = (y.clone() * y).sum().backward();
            x.grad(&grads).expect("a gradient").into_data()
        };
        gradient(true).assert_approx_eq::<f32>(&gradient(false), burn::tensor::Tolerance::absolute(1e-4));
    }

    #[test]
    fn other_dtypes_take_the_graph() {
        let device = Default::default();
        let x = Tensor::<Flex, 4>::ones([1, 1, 4, 8], &device).cast(DType::BF16);
        let out = attend(x.clone(), x.clone(), x, Mask::None);
        assert_eq!(out.dtype(), DType::BF16);
        assert_eq!(out.cast(DType::F32).sum().into_scalar(), 32.0);
    }
}
