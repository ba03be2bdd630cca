//! UNO's training (uno-method §4): the LoRA trainer as a node, its aspect-ratio buckets, and the
//! stage-I regeneration of subject-2 references that makes stage II's triplets (§5.6).

pub mod buckets;
pub mod regenerate_ref;
pub mod train_lora;
