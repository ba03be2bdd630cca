//! Kernels under autodiff that keep the inner backend's kernel in the forward pass and give
//! their own backward pass, instead of differentiating the unfused graph step by step.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, binary, unary};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Shape, TensorMetadata};

use super::{AttentionBackward, Kernels, Mask};

/// The matrix product of a linear layer, `x [.., K] · w [K, N]`: the forward pass is the inner
/// backend's linear kernel; the gradients are `dx = dy · wᵀ` (the same kernel, with the weight's
/// transpose, which for the loaders' weights is their row-major storage) and
/// `dw = xᵀ · dy` over all rows.
#[derive(Debug)]
struct LinearProduct;

impl<B: Kernels> Backward<B, 2> for LinearProduct {
    /// The checkpointed input (when the weight needs a gradient), the checkpointed weight (when
    /// the input needs one), and the input's shape.
    type State = (Option<NodeId>, Option<NodeId>, Shape);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let (x, w, x_shape) = ops.state;
        let x: Option<FloatTensor<B>> = x.map(|id| checkpointer.retrieve_node_output(id));
        let w: Option<FloatTensor<B>> = w.map(|id| checkpointer.retrieve_node_output(id));
        let rows = |t: FloatTensor<B>| {
            let shape = t.shape();
            let last = shape[shape.num_dims() - 1];
            B::float_reshape(t, Shape::new([shape.num_elements() / last.max(1), last]))
        };
        binary::<B, _, _>(
            ops.parents,
            ops.node,
            grads,
            |grad| {
                let w_t = B::float_transpose(w.expect("the weight, checkpointed for the input's gradient"));
                B::float_reshape(B::fused_linear::<2>(rows(grad), w_t, None), x_shape)
            },
            |grad| {
                let x = x.expect("the input, checkpointed for the weight's gradient");
                B::float_matmul(B::float_transpose(rows(x)), rows(grad))
            },
        );
    }
}

/// `x · weight (+ bias)` under autodiff with the inner backend's kernel forward.
pub fn linear<B: Kernels, C: CheckpointStrategy, const D: usize>(
    x: FloatTensor<Autodiff<B, C>>,
    weight: FloatTensor<Autodiff<B, C>>,
    bias: Option<FloatTensor<Autodiff<B, C>>>,
) -> FloatTensor<Autodiff<B, C>> {
    let (x_tracked, w_tracked) = (x.is_tracked(), weight.is_tracked());
    let x_shape = x.primitive.shape();
    let product = match LinearProduct.prepare::<C>([Arc::clone(&x.node), Arc::clone(&weight.node)]).compute_bound().stateful() {
        OpsKind::Tracked(mut prep) => {
            let x_state = w_tracked.then(|| prep.checkpoint(&x));
            let w_state = x_tracked.then(|| prep.checkpoint(&weight));
            prep.finish((x_state, w_state, x_shape), B::fused_linear::<D>(x.primitive, weight.primitive, None))
        }
        OpsKind::UnTracked(prep) => prep.finish(B::fused_linear::<D>(x.primitive, weight.primitive, None)),
    };
    match bias {
        // Burn's broadcasting add, whose backward sums the bias's gradient over the rows.
        Some(bias) => {
            let n = bias.primitive.shape().num_elements();
            let mut dims = [1usize; D];
            dims[D - 1] = n;
            let bias = <Autodiff<B, C> as burn::tensor::ops::FloatTensorOps<Autodiff<B, C>>>::float_reshape(bias, Shape::new(dims));
            <Autodiff<B, C> as burn::tensor::ops::FloatTensorOps<Autodiff<B, C>>>::float_add(product, bias)
        }
        None => product,
    }
}

/// Attention with the inner backend's kernels both ways: the forward keeps only its output and
/// each row's log-sum-exp (not the `L × L` probabilities the graph keeps for its backward), and
/// the backward recomputes the probabilities tile by tile.
#[derive(Debug)]
struct FusedAttention;

impl<B: Kernels> Backward<B, 3> for FusedAttention {
    /// The checkpointed q, k and v, the output, its log-sum-exp, and the mask.
    type State = ([NodeId; 3], FloatTensor<B>, FloatTensor<B>, Mask);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let ([q, k, v], out, log_sum_exp, mask) = ops.state;
        let [q, k, v]: [FloatTensor<B>; 3] = [q, k, v].map(|id| checkpointer.retrieve_node_output(id));
        let grad = grads.consume::<B>(&ops.node);
        let gradients = B::fused_attention_backward(AttentionBackward { q, k, v, out, log_sum_exp, grad }, mask);
        for (parent, gradient) in ops.parents.iter().zip(gradients) {
            if let Some(node) = parent {
                grads.register::<B>(node.id, gradient);
            }
        }
    }
}

/// Attention under autodiff: [`FusedAttention`] where the inner backend has the kernels, else
/// the graph.
pub fn attention<B: Kernels, C: CheckpointStrategy>(
    q: FloatTensor<Autodiff<B, C>>,
    k: FloatTensor<Autodiff<B, C>>,
    v: FloatTensor<Autodiff<B, C>>,
    mask: Mask,
) -> FloatTensor<Autodiff<B, C>> {
    let Some((out, log_sum_exp)) = B::fused_attention_with_stats(q.primitive.clone(), k.primitive.clone(), v.primitive.clone(), mask)
    else {
        return super::attention_graph::<Autodiff<B, C>>(q, k, v, mask);
    };
    match FusedAttention.prepare::<C>([Arc::clone(&q.node), Arc::clone(&k.node), Arc::clone(&v.node)]).compute_bound().stateful() {
        OpsKind::Tracked(mut prep) => {
            let ids = [prep.checkpoint(&q), prep.checkpoint(&k), prep.checkpoint(&v)];
            prep.finish((ids, out.clone(), log_sum_exp, mask), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

/// GELU-tanh with the inner backend's kernels both ways.
#[derive(Debug)]
struct GeluTanh;

impl<B: Kernels> Backward<B, 1> for GeluTanh {
    /// The checkpointed input.
    type State = NodeId;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(ops.state);
        unary::<B, _>(ops.parents, ops.node, grads, |grad| B::gelu_tanh_backward(x, grad));
    }
}

/// GELU-tanh under autodiff: the inner backend's kernel, and its gradient kernel backward.
pub fn gelu_tanh<B: Kernels, C: CheckpointStrategy>(x: FloatTensor<Autodiff<B, C>>) -> FloatTensor<Autodiff<B, C>> {
    match GeluTanh.prepare::<C>([Arc::clone(&x.node)]).compute_bound().stateful() {
        OpsKind::Tracked(mut prep) => {
            let id = prep.checkpoint(&x);
            // The kernel may work in place: give it its own reference, so `x` stays for the
            // backward pass.
            prep.finish(id, B::gelu_tanh(x.primitive.clone()))
        }
        OpsKind::UnTracked(prep) => prep.finish(B::gelu_tanh(x.primitive)),
    }
}
