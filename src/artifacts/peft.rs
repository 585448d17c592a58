//! The files of a PEFT adapter directory, as peft writes it and temper's adapter download
//! does: what `/v1/adapters` stores and the adapter loaders read.

pub const PEFT_CONFIG_FILE: &str = "adapter_config.json";
pub const PEFT_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// A classification adapter's label names, one per classifier row, as its registration gave
/// them (peft keeps none: they live in the base's `config.json`, which adapters share).
pub const LABELS_FILE: &str = "labels.json";
