//! Writes the tiny exported models behind the transformers parity fixtures
//! (`temper::tasks::parity_models`): merged token-classification and QA directories of a
//! tiny BERT and a tiny DistilBERT, PEFT adapters of LoRA runs over the BERT, and a
//! `manifest.json` listing them for `scripts/make_{token,qa}_fixture.py`:
//!
//!     cargo run --release --example write_parity_models -- <dir>

use std::path::PathBuf;

use temper::tasks::parity_models::write_parity_models;

fn main() -> anyhow::Result<()> {
    let Some(dir) = std::env::args().nth(1).map(PathBuf::from) else {
        anyhow::bail!("usage: write_parity_models <dir>");
    };
    let models = write_parity_models(&dir)?;
    for model in &models {
        println!("{}", model.name);
    }
    println!(
        "wrote {} models and manifest.json under {}",
        models.len(),
        dir.display()
    );
    Ok(())
}
