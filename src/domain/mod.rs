//! Pure types and rules: ids, the job state machine, hyperparameters, dataset formats and
//! their validation, model names. No IO happens here.

pub mod dataset;
pub mod hyperparams;
pub mod ids;
pub mod job;
pub mod model_name;
