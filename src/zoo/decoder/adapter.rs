//! Unmerged LoRA adapters for serving: many fine-tunes of one base share the base's
//! weights, and each sequence of a cached batch adds its own adapter's low-rank update
//! (`forward_cached`: the base matmul once for every row, then per run of rows with one
//! adapter `x · Aᵀ · (s·B)ᵀ`, the CPU form of Punica's segmented LoRA).
//!
//! Adapters come as PEFT names them (`base_model.model.model.layers.{i}.{module}.lora_A.weight`),
//! which is also how temper's own LoRA checkpoints store them.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use super::config::DecoderConfig;
use crate::zoo::ZooError;

/// The projections an adapter may target, in `model::layer_linears` order.
pub const ADAPTER_MODULES: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// How an adapter's update is scaled (PEFT: `lora_alpha / r`, or `/ √r` with rsLoRA).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraScaling {
    pub alpha: f64,
    pub rslora: bool,
}

impl LoraScaling {
    fn scale(self, rank: usize) -> f64 {
        let rank = rank as f64;
        match self.rslora {
            true => self.alpha / rank.sqrt(),
            false => self.alpha / rank,
        }
    }
}

/// One projection's update, transposed for row-major inputs and with the scale folded
/// into the up-projection.
#[derive(Debug, Clone)]
struct LowRank {
    /// `Aᵀ` `[in, r]`.
    down_t: Tensor,
    /// `(scale · B)ᵀ` `[r, out]`.
    up_t: Tensor,
}

/// A LoRA adapter of one decoder, ready to serve beside its base.
#[derive(Debug, Clone)]
pub struct ServedAdapter {
    /// Per layer, per projection of [`ADAPTER_MODULES`].
    layers: Vec<[Option<LowRank>; 7]>,
    bytes: usize,
}

impl ServedAdapter {
    /// Builds an adapter from PEFT-named `tensors`, checked against the base's `cfg`: every
    /// name must be a `lora_A`/`lora_B` of a layer's projection, in pairs of one rank, with
    /// the projection's input and output sizes. Stored in f32 on `device`.
    pub fn from_peft(
        cfg: &DecoderConfig,
        tensors: &HashMap<String, Tensor>,
        scaling: LoraScaling,
        device: &Device,
    ) -> Result<Self, ZooError> {
        let mut pairs: HashMap<(usize, usize), [Option<&Tensor>; 2]> = HashMap::new();
        for (name, tensor) in tensors {
            let (layer, module, part) = parse_name(name, cfg.num_hidden_layers)?;
            pairs.entry((layer, module)).or_default()[part] = Some(tensor);
        }
        if pairs.is_empty() {
            return Err(ZooError::Config("the adapter has no LoRA tensors".into()));
        }
        let mut layers: Vec<[Option<LowRank>; 7]> = (0..cfg.num_hidden_layers)
            .map(|_| Default::default())
            .collect();
        let mut bytes = 0;
        for ((layer, module), [a, b]) in pairs {
            let name = format!("model.layers.{layer}.{}", ADAPTER_MODULES[module]);
            let (Some(a), Some(b)) = (a, b) else {
                return Err(ZooError::Config(format!(
                    "`{name}` needs both lora_A and lora_B"
                )));
            };
            let (input, output) = projection_dims(cfg, module);
            let (rank, a_in) = a.dims2()?;
            let (b_out, b_rank) = b.dims2()?;
            if rank == 0 || a_in != input || b_out != output || b_rank != rank {
                return Err(ZooError::Config(format!(
                    "`{name}`: lora_A is {:?} and lora_B {:?}; this base needs [r, {input}] and [{output}, r]",
                    a.dims(),
                    b.dims()
                )));
            }
            let scale = scaling.scale(rank);
            let down_t = a
                .to_dtype(DType::F32)?
                .to_device(device)?
                .t()?
                .contiguous()?;
            let up_t = (b.to_dtype(DType::F32)?.to_device(device)? * scale)?
                .t()?
                .contiguous()?;
            bytes += 4 * rank * (input + output);
            layers[layer][module] = Some(LowRank { down_t, up_t });
        }
        Ok(Self { layers, bytes })
    }

    /// Bytes of the adapter's tensors.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// `(Aᵀ [in, r], (s·B)ᵀ [r, out])` of projection `module` of `layer`; `None` when the
    /// adapter does not target it.
    pub(crate) fn factors(&self, layer: usize, module: usize) -> Option<(&Tensor, &Tensor)> {
        let low_rank = self.layers.get(layer)?[module].as_ref()?;
        Some((&low_rank.down_t, &low_rank.up_t))
    }

    /// `x · Aᵀ · (s·B)ᵀ` for projection `module` of `layer`; `None` when the adapter does
    /// not target it.
    pub(crate) fn delta(
        &self,
        layer: usize,
        module: usize,
        x: &Tensor,
    ) -> Result<Option<Tensor>, ZooError> {
        let Some(low_rank) = self.layers.get(layer).and_then(|l| l[module].as_ref()) else {
            return Ok(None);
        };
        let x = x.to_dtype(DType::F32)?;
        Ok(Some(x.matmul(&low_rank.down_t)?.matmul(&low_rank.up_t)?))
    }
}

/// `(layer, module index, 0 = lora_A / 1 = lora_B)` of a PEFT tensor name.
fn parse_name(name: &str, layers: usize) -> Result<(usize, usize, usize), ZooError> {
    let refuse = || {
        ZooError::Config(format!(
            "unexpected tensor `{name}`: temper serves LoRA adapters of the decoder layers' \
             projections ({}), named `base_model.model.model.layers.<i>.<module>.lora_A.weight`",
            ADAPTER_MODULES.join(", ")
        ))
    };
    let rest = name
        .strip_prefix("base_model.model.model.layers.")
        .ok_or_else(refuse)?;
    let (layer, rest) = rest.split_once('.').ok_or_else(refuse)?;
    let layer: usize = layer.parse().map_err(|_| refuse())?;
    if layer >= layers {
        return Err(ZooError::Config(format!(
            "`{name}` is for layer {layer}; the base has {layers} layers"
        )));
    }
    let (module, part) = if let Some(module) = rest.strip_suffix(".lora_A.weight") {
        (module, 0)
    } else if let Some(module) = rest.strip_suffix(".lora_B.weight") {
        (module, 1)
    } else {
        return Err(refuse());
    };
    let module = ADAPTER_MODULES
        .iter()
        .position(|m| *m == module)
        .ok_or_else(refuse)?;
    Ok((layer, module, part))
}

/// `(in, out)` of projection `module` of a layer.
fn projection_dims(cfg: &DecoderConfig, module: usize) -> (usize, usize) {
    let hidden = cfg.hidden_size;
    let (q, kv) = (
        cfg.num_attention_heads * cfg.head_dim,
        cfg.num_key_value_heads * cfg.head_dim,
    );
    match module {
        0 => (hidden, q),
        1 | 2 => (hidden, kv),
        3 => (q, hidden),
        4 | 5 => (hidden, cfg.intermediate_size),
        _ => (cfg.intermediate_size, hidden),
    }
}
