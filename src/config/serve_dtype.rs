//! `--serve-dtype`, and the `@<format>` suffix of a base model's name, which spells the same.

/// How a served language model stores its layers' projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServeDtype {
    /// bf16 on a GPU, f32 on the CPU.
    Auto,
    /// bf16 matrices on the CPU too (half f32's bytes; `zoo::cpu::bf16_product` multiplies
    /// them), as `auto` on a GPU.
    Bf16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "q4_1")]
    Q4_1,
    /// A base made from a GGUF file: the blocks the file stores (its own quantization, not
    /// requantized from the dequantized weights); any other model as [`ServeDtype::Auto`].
    Gguf,
}

impl ServeDtype {
    /// The block format the weights are quantized to; `None` serves them as floats (f32 on
    /// the CPU, bf16 on a GPU), or for [`ServeDtype::Gguf`] as the GGUF file has them.
    pub fn quant_kind(self) -> Option<crate::zoo::decoder::QuantKind> {
        use crate::zoo::decoder::QuantKind;
        match self {
            ServeDtype::Auto | ServeDtype::Bf16 | ServeDtype::Gguf => None,
            ServeDtype::Q8_0 => Some(QuantKind::Q8_0),
            ServeDtype::Q4_0 => Some(QuantKind::Q4_0),
            ServeDtype::Q4_1 => Some(QuantKind::Q4_1),
        }
    }

    /// The `--serve-dtype` spelling (`auto`, `bf16`, `q8_0`, `q4_0`, `q4_1`, `gguf`, any case);
    /// `None` otherwise.
    pub fn parse(name: &str) -> Option<Self> {
        <Self as clap::ValueEnum>::from_str(name, true).ok()
    }
}
