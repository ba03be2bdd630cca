//! Kernels under autodiff that keep the inner backend's kernel in the forward pass and give
//! their own backward pass, instead of differentiating the unfused graph step by step.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, binary};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Shape, TensorMetadata};

use super::Kernels;

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
