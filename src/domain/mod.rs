//! Pure types and rules: ids, the job state machine, a job's typed spec (method and
//! hyperparameters), hyperparameters, dataset formats and their validation, model names. No IO happens here.

pub mod dataset;
pub mod hyperparams;
pub mod ids;
pub mod job;
pub mod job_spec;
pub mod metric_steps;
pub mod model_name;
pub mod task;

/// Characters of a client's value an error message repeats; the rest becomes `…`.
pub const ECHO_CHARS: usize = 64;

/// `value` as an error message may repeat it: at most [`ECHO_CHARS`] characters, then `…`,
/// so a bad value of any size makes a short message (and no log line or reply grows with it).
pub fn echo(value: &str) -> String {
    match value.char_indices().nth(ECHO_CHARS) {
        Some((cut, _)) => format!("{}…", &value[..cut]),
        None => value.to_string(),
    }
}
