//! train: synchronous fine-tuning on candle, models from `zoo`. No tokio/sqlx/axum here:
//! the `jobs` worker runs this on its own OS thread and listens through [`TrainObserver`].

pub mod metrics;
pub mod optim;
pub mod schedule;
