//! LoRA gradients with per-block recomputation: the activations of one block exist at a time.
//!
//! The forward pass runs untracked (the LoRA branches detached, so no operation keeps anything
//! for a backward pass) and keeps only each block's input. The backward pass then walks the
//! blocks from the last: it runs the block again under autodiff from its kept input and
//! differentiates `Σ output ⊙ g`, where `g` is the gradient arriving at the block's output.
//! That sum's gradient is exactly the vector–Jacobian product the whole graph's backward pass
//! computes at that block, so each block's LoRA gradients and the gradient passed on to the
//! block before are the whole graph's, operation for operation: the same bits (tested below).
//!
//! Memory: the inputs kept are one `[B, L, hidden]` tensor per single block and two (image and
//! text streams) per double block — for FLUX.1-dev at 512² with one reference, 57 × 2,560 ×
//! 3,072 values (0.9 GB in bf16) — instead of every intermediate of 57 blocks. Cost: one more
//! forward pass of the blocks per step.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;

use super::model::{Flux, FluxError, Streams};
use super::train::{FlowBatch, LoraGrads, branch_grads, flow_input, flow_loss, scalar};
use crate::kernels::Kernels;

/// The loss of `batch` and the gradients of the LoRA matrices, as
/// [`lora_gradients`](super::train::lora_gradients) gives them.
pub(super) fn lora_gradients_by_block<B: AutodiffBackend + Kernels>(
    model: &Flux<B>,
    batch: FlowBatch<B>,
) -> Result<(LoraGrads<B::InnerBackend>, f64), FluxError> {
    let untracked = model.clone().no_grad();
    let (input, target) = flow_input(model.dtype(), model.guidance_in.is_some(), batch);
    let Streams { mut img, mut txt, vec, pe, target_len } = untracked.embed(input)?;

    let mut double_inputs = Vec::with_capacity(model.double_blocks.len());
    for block in &untracked.double_blocks {
        double_inputs.push((img.clone(), txt.clone()));
        (img, txt) = block.forward(img, txt, &vec, &pe);
    }
    let txt_len = txt.dims()[1];
    let mut x = Tensor::cat(vec![txt, img], 1);
    let mut single_inputs = Vec::with_capacity(model.single_blocks.len());
    for block in &untracked.single_blocks {
        single_inputs.push(x.clone());
        x = block.forward(x, &vec, &pe);
    }

    // The output layer is frozen: only the gradient at the last block's output is needed.
    let x = leaf(x);
    let loss = flow_loss(untracked.head(x.clone(), vec.clone(), txt_len, target_len), target);
    let value = scalar(loss.clone());
    let mut g = input_grad(&x, &loss.backward());

    // Whether block k (doubles first, then singles) or a block before it has LoRA branches:
    // the walk stops at the first block with none before it.
    let with_lora =
        model.double_blocks.iter().map(|b| b.processor.is_some()).chain(model.single_blocks.iter().map(|b| b.processor.is_some()));
    let mut seen = false;
    let lora_up_to: Vec<bool> = with_lora
        .map(|has| {
            seen |= has;
            seen
        })
        .collect();
    let needs_input_grad = |k: usize| k > 0 && lora_up_to[k - 1];

    let depth = model.double_blocks.len();
    let mut single_grads = Vec::with_capacity(model.single_blocks.len());
    for (j, block) in model.single_blocks.iter().enumerate().rev() {
        let k = depth + j;
        if !lora_up_to[k] {
            break;
        }
        let input = tracked_if(single_inputs.pop().expect("one input per block"), needs_input_grad(k));
        let output = block.forward(input.clone(), &vec, &pe);
        let grads = (output * Tensor::from_inner(g.clone())).sum().backward();
        single_grads.push(block.processor.iter().flat_map(|p| p.branches()).map(|(_, b)| branch_grads(b, &grads)).collect::<Vec<_>>());
        if needs_input_grad(k) {
            g = input_grad(&input, &grads);
        }
    }

    let total = g.dims()[1];
    let (mut g_txt, mut g_img) = (g.clone().narrow(1, 0, txt_len), g.narrow(1, txt_len, total - txt_len));
    let mut double_grads = Vec::with_capacity(depth);
    for (i, block) in model.double_blocks.iter().enumerate().rev() {
        if !lora_up_to[i] {
            break;
        }
        let (img, txt) = double_inputs.pop().expect("one input per block");
        let (img, txt) = (tracked_if(img, needs_input_grad(i)), tracked_if(txt, needs_input_grad(i)));
        let (img_out, txt_out) = block.forward(img.clone(), txt.clone(), &vec, &pe);
        let product = (img_out * Tensor::from_inner(g_img.clone())).sum() + (txt_out * Tensor::from_inner(g_txt.clone())).sum();
        let grads = product.backward();
        double_grads.push(block.processor.iter().flat_map(|p| p.branches()).map(|(_, b)| branch_grads(b, &grads)).collect::<Vec<_>>());
        if needs_input_grad(i) {
            (g_img, g_txt) = (input_grad(&img, &grads), input_grad(&txt, &grads));
        }
    }

    // Blocks were walked last first; branches are named in the model's order.
    let values = double_grads.into_iter().rev().chain(single_grads.into_iter().rev()).flatten();
    let names = model.lora_branches().into_iter().map(|(prefix, _)| prefix);
    Ok((LoraGrads::of_branches(names.zip(values)), value))
}

/// `t` as a leaf of a new graph.
fn leaf<B: AutodiffBackend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    t.detach().require_grad()
}

/// `t` as a leaf of a new graph when its gradient is wanted, untracked otherwise.
fn tracked_if<B: AutodiffBackend, const D: usize>(t: Tensor<B, D>, wanted: bool) -> Tensor<B, D> {
    if wanted { leaf(t) } else { t }
}

/// The gradient at leaf `t` (zeros if the graph did not reach it).
fn input_grad<B: AutodiffBackend, const D: usize>(t: &Tensor<B, D>, grads: &B::Gradients) -> Tensor<B::InnerBackend, D> {
    t.grad(grads).unwrap_or_else(|| t.clone().inner().zeros_like())
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::backend::Backend;
    use burn::tensor::{DType, Distribution, TensorData};

    use super::*;
    use crate::flux::train::lora_gradients;
    use crate::flux::{FluxConfig, PeMode, TokenGrid, position_ids};

    type A = Autodiff<Flex>;

    fn config() -> FluxConfig {
        FluxConfig { depth: 3, depth_single_blocks: 3, ..crate::flux::train::tests::tiny() }
    }

    /// A model whose LoRA `up` matrices are not zero (a fresh LoRA's are, which would leave
    /// every `down` gradient zero and test little).
    fn model(device: &burn::backend::flex::FlexDevice) -> Flux<A> {
        <A as Backend>::seed(device, 23);
        let config = config();
        let mut model = Flux::<A>::random(&config, device, DType::F32);
        model.init_lora(&config, 4, device);
        model
            .map_lora_branches(|_, mut branch| {
                branch.up = branch.up.map(|up| up.random_like(Distribution::Normal(0.0, 0.1)));
                branch
            })
            .with_trainable_lora()
    }

    fn batch(device: &burn::backend::flex::FlexDevice) -> FlowBatch<A> {
        let grid = TokenGrid { rows: 4, cols: 4 };
        let pos = position_ids(8, grid, &[grid], PeMode::Diagonal);
        let ids = |ids: &[[f32; 3]]| Tensor::from_data(TensorData::new(ids.iter().flatten().copied().collect(), [1, ids.len(), 3]), device);
        let normal = |shape: [usize; 3]| Tensor::<A, 3>::random(shape, Distribution::Normal(0.0, 1.0), device);
        FlowBatch {
            x_1: normal([1, 16, 64]),
            x_0: normal([1, 16, 64]),
            t: Tensor::from_data(TensorData::new(vec![0.3f32], [1]), device),
            img_ids: ids(&pos.target),
            txt: normal([1, 8, 32]),
            txt_ids: ids(&pos.txt),
            y: Tensor::random([1, 16], Distribution::Normal(0.0, 1.0), device),
            refs: vec![(normal([1, 16, 64]), ids(&pos.refs[0]))],
        }
    }

    fn values(grads: &LoraGrads<Flex>) -> Vec<(String, Vec<f32>)> {
        grads.0.iter().map(|(k, g)| (k.clone(), g.clone().into_data().to_vec().expect("f32"))).collect()
    }

    #[test]
    fn recomputing_blocks_gives_the_whole_graphs_gradients_bit_for_bit() {
        let device = Default::default();
        let (model, batch) = (model(&device), batch(&device));
        let (whole, whole_loss) = lora_gradients(&model, batch.clone()).unwrap();
        let (by_block, by_block_loss) = lora_gradients_by_block(&model, batch).unwrap();
        assert_eq!(whole_loss.to_bits(), by_block_loss.to_bits());
        let (whole, by_block) = (values(&whole), values(&by_block));
        assert_eq!(whole.len(), 3 * 4 * 2 + 3 * 2 * 2, "every branch of every block");
        assert!(whole.iter().all(|(_, g)| g.iter().any(|v| *v != 0.0)), "every gradient reached");
        for ((name, a), (name_b, b)) in whole.iter().zip(&by_block) {
            assert_eq!(name, name_b);
            assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "{name} differs");
        }
    }

    #[test]
    fn blocks_without_lora_are_passed_through_and_not_walked_before_the_first_with_one() {
        let device = Default::default();
        let model = model(&device);
        // LoRA on the last double block and the second single block only.
        let mut model = model;
        model.double_blocks[0].processor = None;
        model.double_blocks[1].processor = None;
        model.single_blocks[0].processor = None;
        model.single_blocks[2].processor = None;
        let batch = batch(&device);
        let (whole, _) = lora_gradients(&model, batch.clone()).unwrap();
        let (by_block, _) = lora_gradients_by_block(&model, batch).unwrap();
        let (whole, by_block) = (values(&whole), values(&by_block));
        assert_eq!(whole.len(), 4 * 2 + 2 * 2);
        assert_eq!(whole, by_block);
    }
}
