//! The download formats of a checkpoint; each task writes them (`tasks::export_checkpoint`).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// Hugging Face directory with LoRA folded into the weights.
    Merged,
    /// PEFT adapter directory (LoRA checkpoints only).
    Adapter,
}
