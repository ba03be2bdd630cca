//! FLUX.1 with UNO: the rectified-flow transformer (double- and single-stream blocks, 3-axis
//! RoPE), reference images as extra tokens with UnoPE position ids, and UNO's LoRA.
//!
//! - Paper: "Less-to-More Generalization: Unlocking More Controllability by In-Context
//!   Generation", arXiv 2504.02160.
//! - Reference code: github.com/bytedance/UNO at d305981 (`uno/flux/`), itself a fork of
//!   github.com/black-forest-labs/flux at 802fb47.
//! - Check against the reference: `unoflow model check flux --weights tiny.safetensors
//!   --fixture ref2_sizes.fixture.safetensors` (fixtures in `operators/models/fixtures/flux/`,
//!   made by `tools/fixtures/make_flux.py`).

pub mod autoencoder;
pub mod checkpoint;
pub mod lora;
pub mod model;
mod recompute;
pub mod sampling;
pub mod train;
pub mod unope;

pub use checkpoint::{FluxCheckpoint, load_lora};
pub use model::{Flux, FluxConfig, FluxError, FluxInput};
pub use unope::{PeMode, PositionIds, TokenGrid, position_ids};
