//! Token classification (NER): transformers' `run_ner.py` recipe on our encoder.
//!
//! - [`align`]: words → sub-words through the tokenizer's word ids, the word's tag on its
//!   first sub-word and nothing (transformers' `-100`) on the others, truncation, dynamic
//!   padding.
//! - [`head`]: `TokenClassifier`, the encoder plus `BertForTokenClassification`'s head
//!   (dropout + one linear per token), its masked cross-entropy, checkpoints and exports.
//! - [`evaluate`]: loss and metrics over a split, in eval mode.
//! - [`metrics`]: seqeval's default-mode entity precision/recall/F1, token accuracy and the
//!   per-entity-type report.
//! - [`train`]: the [`crate::train::runner`] task, metric names and the final report.
//! - [`export`]: checkpoints back into a model, merged HF directory or PEFT adapter.
//! - [`pipeline`]: serving, as transformers' token-classification pipeline post-processes
//!   (`aggregation` `none` / `simple`, character offsets into the raw text).
//! - [`serve`]: the serving backend `infer`'s engine drives for
//!   `POST /v1/token_classifications` (checkpoint → batched logits → entities).

pub mod align;
pub mod evaluate;
pub mod export;
pub mod head;
pub mod metrics;
pub mod pipeline;
pub mod serve;
pub mod train;

pub use align::{AlignOptions, AlignedExample, TagAligner};
pub use head::{token_cross_entropy, TokenClassifier, TokenClassifierSpec, TokenLoss};
pub use metrics::{EntityScores, TagMetrics};
pub use pipeline::{Aggregation, TokenEntity};
pub use serve::{TextToTag, TokenTagger};
pub use train::{
    plan_token_classification, run_token_classification, TokenClassificationJob,
    TOKEN_CLASSIFICATION_METRICS,
};

#[cfg(test)]
#[path = "fixture_tests.rs"]
mod fixture_tests;
