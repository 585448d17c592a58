//! SmolLM2-135M-Instruct (Q4_1/Q8_0 GGUF from `scripts/fetch-assets.sh`) materialized for
//! real; skipped when `TEMPER_ASSETS` is unset.
#![allow(clippy::unwrap_used)]
