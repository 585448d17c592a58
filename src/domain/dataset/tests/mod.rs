//! Dataset tests, one file per format.

mod chat;
mod classification;
mod detection;
mod other;
mod squad;
mod streaming;
mod token_tags;

use super::DatasetError;

/// Asserts a parse failed on `line` with a message containing `fragment`.
#[track_caller]
fn assert_error<T: std::fmt::Debug>(result: Result<T, DatasetError>, line: usize, fragment: &str) {
    let error = result.expect_err("the file should be rejected");
    assert_eq!(error.line, line, "line of {:?}", error.message);
    assert!(
        error.message.contains(fragment),
        "{:?} should contain {fragment:?}",
        error.message
    );
}
