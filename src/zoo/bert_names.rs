//! The checkpoint's module names inside one encoder layer, per architecture (BERT/MiniLM
//! and DistilBERT name the same modules differently).

use super::config::EncoderArch;

/// Module names inside one layer, per architecture.
pub(super) struct LayerNames {
    pub layer: &'static str,
    pub q: &'static str,
    pub k: &'static str,
    pub v: &'static str,
    pub attn_out: &'static str,
    pub attn_ln: &'static str,
    pub ffn_in: &'static str,
    pub ffn_out: &'static str,
    pub out_ln: &'static str,
}

const BERT_NAMES: LayerNames = LayerNames {
    layer: "encoder.layer",
    q: "attention.self.query",
    k: "attention.self.key",
    v: "attention.self.value",
    attn_out: "attention.output.dense",
    attn_ln: "attention.output.LayerNorm",
    ffn_in: "intermediate.dense",
    ffn_out: "output.dense",
    out_ln: "output.LayerNorm",
};

const DISTILBERT_NAMES: LayerNames = LayerNames {
    layer: "transformer.layer",
    q: "attention.q_lin",
    k: "attention.k_lin",
    v: "attention.v_lin",
    attn_out: "attention.out_lin",
    attn_ln: "sa_layer_norm",
    ffn_in: "ffn.lin1",
    ffn_out: "ffn.lin2",
    out_ln: "output_layer_norm",
};

pub(super) fn names(arch: EncoderArch) -> &'static LayerNames {
    match arch {
        EncoderArch::Bert => &BERT_NAMES,
        EncoderArch::DistilBert => &DISTILBERT_NAMES,
    }
}
