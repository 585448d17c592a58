//! tasks: one folder per training task (see lib.rs for the layout): its data preparation,
//! head, metrics, serving post-processing and exports, on the generic core in `train` and the
//! model bodies in `zoo`. No tokio, sqlx or axum here.

pub mod token_classification;
