//! UNO's training (uno-method §4): the LoRA trainer as a node, and its aspect-ratio buckets.

pub mod buckets;
pub mod train_lora;
