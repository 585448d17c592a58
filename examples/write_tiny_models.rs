//! Writes tiny random models into a models dir, for the SDK flow test
//! (scripts/sdk-test.sh) and for trying temper without real weights:
//!
//!     cargo run --example write_tiny_models -- <models-dir>
//!
//! gives `<models-dir>/test-org/tiny-llama` (a 2-layer Llama with a byte-level BPE
//! tokenizer and a ChatML template), `test-org/tiny-qwen2` (the same with Qwen2's biases
//! and tied embeddings) and `<models-dir>/test-org/tiny-bert`. Seed 7 throughout: the
//! greedy fixture (`scripts/make_greedy_fixture.py`) is computed on these exact weights.

use std::path::PathBuf;

use temper::zoo::decoder::DecoderArch;
use temper::zoo::testing::{write_tiny_bert, write_tiny_decoder};

fn main() -> anyhow::Result<()> {
    let Some(dir) = std::env::args().nth(1).map(PathBuf::from) else {
        anyhow::bail!("usage: write_tiny_models <models-dir>");
    };
    write_tiny_decoder(&dir.join("test-org/tiny-llama"), DecoderArch::Llama, 7)?;
    write_tiny_decoder(&dir.join("test-org/tiny-qwen2"), DecoderArch::Qwen2, 7)?;
    write_tiny_bert(&dir.join("test-org/tiny-bert"), 7)?;
    println!(
        "wrote test-org/tiny-llama, test-org/tiny-qwen2 and test-org/tiny-bert under {}",
        dir.display()
    );
    Ok(())
}
