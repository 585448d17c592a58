//! TEMPORARY stand-in for the `data` workstream's `domain::dataset` (not yet committed);
//! removed when `data` is merged.
#[derive(Debug, Clone, PartialEq)]
pub struct LabeledText {
    pub text: String,
    pub label: String,
}
