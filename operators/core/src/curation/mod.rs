//! UNO's data pipeline (uno-method §5) as operators: prompts → in-context diptychs → split →
//! DINOv2 ledger → VLM chain-of-thought scores (and grounding boxes for multi-subject crops);
//! beyond the paper, duplicate groups and benchmark-leak checks.

pub mod contamination;
pub mod dedup;
pub mod dino_filter;
pub mod diptych_prompts;
pub mod incontext_generate;
pub mod split_diptych;
pub mod vlm;
