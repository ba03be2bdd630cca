//! UNO's LoRA: low-rank side branches on the attention projections of every block.
//!
//! Placement (uno/flux/util.py `set_lora`, modules/layers.py at d305981): in double blocks
//! `qkv_lora1`/`proj_lora1` on the image stream's `qkv`/`proj` and `qkv_lora2`/`proj_lora2` on the
//! text stream's; in single blocks `qkv_lora` on the q, k, v slice of `linear1` and `proj_lora`
//! on `linear2`. Each branch is `x·down·up·weight` (UNO: no alpha, weight 1), computed as a side
//! branch so no dense weight is formed per step; `Flux::merge_lora` folds them in for inference.
//!
//! Checkpoint keys are UNO's: `double_blocks.N.processor.qkv_lora1.down.weight` (`[rank, in]`),
//! `….up.weight` (`[out, rank]`), so the released `dit_lora.safetensors` loads as is.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::module::linear;
use burn::tensor::{DType, Distribution, Tensor, TensorData};

use super::model::{Flux, FluxConfig};
use crate::kernels::Kernels;
use crate::vb::Vb;
use crate::weights::{Result, WeightsError};

/// One low-rank branch: `x·down·up·weight`.
#[derive(Module, Debug)]
pub struct LoraLinear<B: Backend> {
    /// `[d_in, rank]` (the transpose of the checkpoint's `down.weight`).
    pub down: Param<Tensor<B, 2>>,
    /// `[rank, d_out]` (the transpose of `up.weight`).
    pub up: Param<Tensor<B, 2>>,
    /// The branch's multiplier (UNO's `lora_weight`, 1 for its checkpoints).
    pub weight: f64,
}

impl<B: Backend> LoraLinear<B> {
    /// A fresh branch as UNO initialises it: `down ~ N(0, 1/rank)`, `up = 0`.
    pub fn init(d_in: usize, d_out: usize, rank: usize, device: &B::Device, dtype: DType) -> Self {
        let down = Tensor::<B, 2>::random([d_in, rank], Distribution::Normal(0.0, 1.0 / rank as f64), (device, DType::F32)).cast(dtype);
        let up = Tensor::<B, 2>::zeros([rank, d_out], (device, dtype));
        Self { down: Param::from_tensor(down), up: Param::from_tensor(up), weight: 1.0 }
    }

    fn load(vb: &Vb<B>, d_in: usize, d_out: usize, rank: usize, weight: f64) -> Result<Self> {
        let down = vb.tensor("down.weight", [rank, d_in])?.transpose();
        let up = vb.tensor("up.weight", [d_out, rank])?.transpose();
        Ok(Self { down: Param::from_tensor(down), up: Param::from_tensor(up), weight })
    }

    pub fn rank(&self) -> usize {
        self.down.val().dims()[1]
    }

    /// The branch with both matrices tracked by autodiff.
    pub fn trainable(self) -> Self {
        Self { down: self.down.set_require_grad(true), up: self.up.set_require_grad(true), weight: self.weight }
    }

    /// `x·down·up·weight` in the branch's dtype, returned in `x`'s.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = x.dtype();
        let down = self.down.val();
        let h = linear(x.cast(down.dtype()), down, None);
        (linear(h, self.up.val(), None) * self.weight).cast(dtype)
    }

    /// The dense update `down·up·weight`, `[d_in, d_out]`.
    pub fn delta(&self) -> Tensor<B, 2> {
        self.down.val().matmul(self.up.val()) * self.weight
    }

    /// The tensors in UNO's layout: (`down.weight` `[rank, in]`, `up.weight` `[out, rank]`).
    pub fn to_checkpoint(&self) -> [(&'static str, TensorData); 2] {
        [("down.weight", self.down.val().transpose().into_data()), ("up.weight", self.up.val().transpose().into_data())]
    }
}

/// The four branches of a double-stream block.
#[derive(Module, Debug)]
pub struct DoubleStreamLora<B: Backend> {
    pub qkv_lora1: LoraLinear<B>,
    pub proj_lora1: LoraLinear<B>,
    pub qkv_lora2: LoraLinear<B>,
    pub proj_lora2: LoraLinear<B>,
}

/// The two branches of a single-stream block.
#[derive(Module, Debug)]
pub struct SingleStreamLora<B: Backend> {
    pub qkv_lora: LoraLinear<B>,
    pub proj_lora: LoraLinear<B>,
}

impl<B: Backend> DoubleStreamLora<B> {
    fn load(vb: &Vb<B>, hidden: usize, rank: usize, weight: f64) -> Result<Self> {
        Ok(Self {
            qkv_lora1: LoraLinear::load(&vb.pp("qkv_lora1"), hidden, 3 * hidden, rank, weight)?,
            proj_lora1: LoraLinear::load(&vb.pp("proj_lora1"), hidden, hidden, rank, weight)?,
            qkv_lora2: LoraLinear::load(&vb.pp("qkv_lora2"), hidden, 3 * hidden, rank, weight)?,
            proj_lora2: LoraLinear::load(&vb.pp("proj_lora2"), hidden, hidden, rank, weight)?,
        })
    }

    pub fn init(hidden: usize, rank: usize, device: &B::Device, dtype: DType) -> Self {
        Self {
            qkv_lora1: LoraLinear::init(hidden, 3 * hidden, rank, device, dtype),
            proj_lora1: LoraLinear::init(hidden, hidden, rank, device, dtype),
            qkv_lora2: LoraLinear::init(hidden, 3 * hidden, rank, device, dtype),
            proj_lora2: LoraLinear::init(hidden, hidden, rank, device, dtype),
        }
    }

    pub(super) fn branches(&self) -> [(&'static str, &LoraLinear<B>); 4] {
        [("qkv_lora1", &self.qkv_lora1), ("proj_lora1", &self.proj_lora1), ("qkv_lora2", &self.qkv_lora2), ("proj_lora2", &self.proj_lora2)]
    }
}

impl<B: Backend> SingleStreamLora<B> {
    fn load(vb: &Vb<B>, hidden: usize, mlp_hidden: usize, rank: usize, weight: f64) -> Result<Self> {
        Ok(Self {
            qkv_lora: LoraLinear::load(&vb.pp("qkv_lora"), hidden, 3 * hidden, rank, weight)?,
            proj_lora: LoraLinear::load(&vb.pp("proj_lora"), hidden + mlp_hidden, hidden, rank, weight)?,
        })
    }

    pub fn init(hidden: usize, mlp_hidden: usize, rank: usize, device: &B::Device, dtype: DType) -> Self {
        Self {
            qkv_lora: LoraLinear::init(hidden, 3 * hidden, rank, device, dtype),
            proj_lora: LoraLinear::init(hidden + mlp_hidden, hidden, rank, device, dtype),
        }
    }

    pub(super) fn branches(&self) -> [(&'static str, &LoraLinear<B>); 2] {
        [("qkv_lora", &self.qkv_lora), ("proj_lora", &self.proj_lora)]
    }
}

/// Adds `delta` to a linear weight (burn layout `[d_in, d_out]`) from output column `start`.
fn add_columns<B: Backend>(w: &Param<Tensor<B, 2>>, delta: Tensor<B, 2>, start: usize) -> Param<Tensor<B, 2>> {
    let w = w.val();
    let [d_in, cols] = delta.dims();
    let updated = w.clone().narrow(1, start, cols) + delta.cast(w.dtype());
    Param::from_tensor(w.slice_assign([0..d_in, start..start + cols], updated))
}

impl<B: Kernels> Flux<B> {
    /// Attaches UNO LoRA branches read from `vb` (a LoRA checkpoint), scaled by `weight`. Blocks
    /// without LoRA tensors stay as they are (UNO can restrict LoRA to some blocks). Returns the
    /// rank, read from the file.
    pub fn load_lora(&mut self, vb: &Vb<B>, config: &FluxConfig, weight: f64) -> Result<usize> {
        let h = config.hidden_size;
        let rank = (0..config.depth)
            .map(|i| format!("double_blocks.{i}.processor.qkv_lora1.down.weight"))
            .chain((0..config.depth_single_blocks).map(|i| format!("single_blocks.{i}.processor.qkv_lora.down.weight")))
            .find_map(|k| vb.shape(&k))
            .and_then(|s| s.first().copied())
            .ok_or_else(|| WeightsError::Missing {
                path: vb.path().to_path_buf(),
                key: "double_blocks.0.processor.qkv_lora1.down.weight".into(),
                hint: " (no UNO LoRA tensors in this file: is it a LoRA checkpoint?)".into(),
            })?;
        for (i, block) in self.double_blocks.iter_mut().enumerate() {
            let p = vb.pp("double_blocks").pp(i).pp("processor");
            if p.contains("qkv_lora1.down.weight") {
                block.processor = Some(DoubleStreamLora::load(&p, h, rank, weight)?);
            }
        }
        for (i, block) in self.single_blocks.iter_mut().enumerate() {
            let p = vb.pp("single_blocks").pp(i).pp("processor");
            if p.contains("qkv_lora.down.weight") {
                block.processor = Some(SingleStreamLora::load(&p, h, config.mlp_hidden(), rank, weight)?);
            }
        }
        Ok(rank)
    }

    /// Attaches fresh branches of `rank` to every block, for training.
    pub fn init_lora(&mut self, config: &FluxConfig, rank: usize, device: &B::Device) {
        let dtype = self.dtype();
        for block in &mut self.double_blocks {
            block.processor = Some(DoubleStreamLora::init(config.hidden_size, rank, device, dtype));
        }
        for block in &mut self.single_blocks {
            block.processor = Some(SingleStreamLora::init(config.hidden_size, config.mlp_hidden(), rank, device, dtype));
        }
    }

    /// Folds every LoRA branch into the base weights (`W + down·up·weight`) and drops it: the
    /// same function, with no side branch per step.
    pub fn merge_lora(mut self) -> Self {
        let hidden = self.single_blocks.first().map(|b| b.linear2.weight.val().dims()[1]).unwrap_or(0);
        for block in &mut self.double_blocks {
            if let Some(l) = block.processor.take() {
                block.img_attn.qkv.weight = add_columns(&block.img_attn.qkv.weight, l.qkv_lora1.delta(), 0);
                block.img_attn.proj.weight = add_columns(&block.img_attn.proj.weight, l.proj_lora1.delta(), 0);
                block.txt_attn.qkv.weight = add_columns(&block.txt_attn.qkv.weight, l.qkv_lora2.delta(), 0);
                block.txt_attn.proj.weight = add_columns(&block.txt_attn.proj.weight, l.proj_lora2.delta(), 0);
            }
        }
        for block in &mut self.single_blocks {
            if let Some(l) = block.processor.take() {
                // The qkv branch covers the first 3·hidden outputs of `linear1` only.
                debug_assert_eq!(l.qkv_lora.up.val().dims()[1], 3 * hidden);
                block.linear1.weight = add_columns(&block.linear1.weight, l.qkv_lora.delta(), 0);
                block.linear2.weight = add_columns(&block.linear2.weight, l.proj_lora.delta(), 0);
            }
        }
        self
    }

    /// Every LoRA branch with its key prefix in UNO's layout
    /// (`double_blocks.0.processor.qkv_lora1`, …), blocks in order.
    pub fn lora_branches(&self) -> Vec<(String, &LoraLinear<B>)> {
        let double = self.double_blocks.iter().enumerate().flat_map(|(i, block)| {
            block.processor.iter().flat_map(|p| p.branches()).map(move |(name, b)| (format!("double_blocks.{i}.processor.{name}"), b))
        });
        let single = self.single_blocks.iter().enumerate().flat_map(|(i, block)| {
            block.processor.iter().flat_map(|p| p.branches()).map(move |(name, b)| (format!("single_blocks.{i}.processor.{name}"), b))
        });
        double.chain(single).collect()
    }

    /// The model with each LoRA branch replaced by `f(key prefix, branch)`.
    pub fn map_lora_branches(mut self, mut f: impl FnMut(&str, LoraLinear<B>) -> LoraLinear<B>) -> Self {
        for (i, block) in self.double_blocks.iter_mut().enumerate() {
            block.processor = block.processor.take().map(|p| {
                let key = |name: &str| format!("double_blocks.{i}.processor.{name}");
                DoubleStreamLora {
                    qkv_lora1: f(&key("qkv_lora1"), p.qkv_lora1),
                    proj_lora1: f(&key("proj_lora1"), p.proj_lora1),
                    qkv_lora2: f(&key("qkv_lora2"), p.qkv_lora2),
                    proj_lora2: f(&key("proj_lora2"), p.proj_lora2),
                }
            });
        }
        for (i, block) in self.single_blocks.iter_mut().enumerate() {
            block.processor = block.processor.take().map(|p| {
                let key = |name: &str| format!("single_blocks.{i}.processor.{name}");
                SingleStreamLora { qkv_lora: f(&key("qkv_lora"), p.qkv_lora), proj_lora: f(&key("proj_lora"), p.proj_lora) }
            });
        }
        self
    }

    /// The LoRA tensors in UNO's key layout, for saving.
    pub fn lora_tensors(&self) -> Vec<(String, TensorData)> {
        self.lora_branches()
            .into_iter()
            .flat_map(|(prefix, branch)| branch.to_checkpoint().map(|(part, data)| (format!("{prefix}.{part}"), data)))
            .collect()
    }
}
