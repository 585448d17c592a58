//! tasks: one folder per task (data preparation, head, `TrainTask`, metric names, report,
//! serving backend, checkpoint variant).
//!
//! - [`dpo`]: preference tuning of chat decoders (Rafailov et al.'s sigmoid loss).

pub mod dpo;
