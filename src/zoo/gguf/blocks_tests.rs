#![allow(clippy::unwrap_used)]

use candle_core::{Device, Tensor};

use super::*;
use crate::zoo::decoder::{CausalLm, DecoderSpec};
use crate::zoo::gguf::tensors::unpermute_rows;
use crate::zoo::gguf::tests::{materialize, LLAMA};
use crate::zoo::test_tensors::max_abs_diff;

#[test]
fn the_row_order_is_the_tensor_unpermutation_as_indices() {
    for (rows, heads) in [(64, 4), (32, 2), (12, 3)] {
        let index: Vec<f32> = (0..rows).map(|r| r as f32).collect();
        let column = Tensor::from_vec(index, (rows, 1), &Device::Cpu).unwrap();
        let moved: Vec<usize> = unpermute_rows(&column, heads)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(|r| r as usize)
            .collect();
        assert_eq!(unpermuted_order(rows, heads).unwrap(), moved);
    }
    assert!(unpermuted_order(10, 4).is_err());
}

#[test]
fn a_model_served_from_the_files_blocks_holds_exactly_the_dequantized_models_weights() {
    let (tmp, hf_dir, _) = materialize(LLAMA);
    let gguf = tmp.path().join("tiny.gguf");
    let spec = DecoderSpec {
        lora: None,
        quantize: None,
    };
    let float = CausalLm::from_pretrained(&hf_dir, &spec, &Device::Cpu, 0).unwrap();
    let blocks = projection_blocks(&gguf, &Device::Cpu).unwrap();
    // Every projection of both layers is stored in blocks (q4_1, q8_0, q4_0 in the file).
    assert_eq!(blocks.len(), 2 * 7);
    let served = float.with_projection_blocks(blocks).unwrap();
    assert!(served.parameter_bytes() < float.parameter_bytes() / 2);

    // Dequantized, the blocks are the materialized f32 weights to the bit: the q/k rows
    // moved back into transformers' order by whole rows.
    let out = tmp.path().join("from-blocks");
    served.export_merged(&hf_dir, &out).unwrap();
    let read = |dir: &std::path::Path| {
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
    };
    let (theirs, ours) = (read(&hf_dir), read(&out));
    for name in [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.self_attn.k_proj.weight",
        "model.layers.0.mlp.down_proj.weight",
    ] {
        assert_eq!(max_abs_diff(&ours[name], &theirs[name]), 0.0, "{name}");
    }

    // And the served model computes what the float one does, up to the activations'
    // quantization inside the quantized matmul.
    let batch = crate::zoo::collate(&[&[1u32, 5, 9, 2][..]], 0, &Device::Cpu).unwrap();
    let (a, b) = (
        float.forward(&batch, false).unwrap(),
        served.forward(&batch, false).unwrap(),
    );
    let scale = crate::zoo::test_tensors::max_abs(&a);
    let diff = max_abs_diff(&a, &b);
    assert!(diff < 0.05 * scale, "max |Δ logit| {diff} of {scale}");
}

#[test]
fn blocks_in_parts_keep_the_rows_and_their_order() {
    let data: Vec<f32> = (0..256 * 64)
        .map(|i| ((i % 97) as f32 - 48.0) / 50.0)
        .collect();
    let weight = Tensor::from_vec(data, (256, 64), &Device::Cpu).unwrap();
    let q =
        candle_core::quantized::QTensor::quantize(&weight, candle_core::quantized::GgmlDType::Q4_1)
            .unwrap();
    let whole = q.dequantize(&Device::Cpu).unwrap();
    let order: Vec<usize> = (0..256).rev().collect();
    let reversed = QuantizedWeight::from_blocks(&q, Some(&order), &Device::Cpu).unwrap();
    assert_eq!(reversed.format_name(), "Q4_1");
    let index = Tensor::from_vec(
        order.iter().map(|&r| r as u32).collect::<Vec<_>>(),
        256,
        &Device::Cpu,
    )
    .unwrap();
    let expected = whole.index_select(&index, 0).unwrap();
    assert_eq!(
        max_abs_diff(&reversed.dequantize().unwrap(), &expected),
        0.0
    );
    assert!(QuantizedWeight::from_blocks(&q, Some(&order[..10]), &Device::Cpu).is_err());
}
