#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use candle_core::{Device, Tensor, Var};

use super::{lookup, RowGradients, SparseRows};

fn table() -> Var {
    let values: Vec<f32> = (0..7 * 3).map(|i| (i % 11) as f32 * 0.3 - 1.0).collect();
    Var::from_tensor(&Tensor::from_vec(values, (7, 3), &Device::Cpu).unwrap()).unwrap()
}

/// A weighting that differs per row and column, so each row's gradient differs.
fn weights(n: usize) -> Tensor {
    let w: Vec<f32> = (0..n * 3)
        .map(|i| ((i * 37) % 17) as f32 * 0.17 - 1.3)
        .collect();
    Tensor::from_vec(w, (n, 3), &Device::Cpu).unwrap()
}

#[test]
fn lookup_gives_index_select_values_and_its_gradient_as_rows() {
    let table = table();
    // Repeated ids (2 three times, 5 twice), as repeated tokens in a batch.
    let ids = Tensor::new(&[2u32, 5, 2, 0, 2, 5], &Device::Cpu).unwrap();
    let sink = Arc::new(RowGradients::default());
    let ours = lookup(table.as_tensor(), &ids, &sink).unwrap();
    let theirs = table.as_tensor().index_select(&ids, 0).unwrap();
    assert_eq!(
        ours.to_vec2::<f32>().unwrap(),
        theirs.to_vec2::<f32>().unwrap()
    );

    let w = weights(6);
    let store = (&ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(store.get(table.as_tensor()).is_none(), "no dense gradient");
    let rows = sink.drain().unwrap().unwrap();
    assert_eq!(rows.ids, vec![2, 5, 0]);
    let dense_store = (&theirs * &w)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let dense = dense_store.get(table.as_tensor()).unwrap();
    // Bit for bit: each id's rows are added in the order index_add adds them.
    assert_eq!(
        rows.to_dense(&Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap(),
        dense.to_vec2::<f32>().unwrap()
    );
    let expected_sq: f64 = dense
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum();
    assert!((rows.sum_of_squares() - expected_sq).abs() < 1e-9 * expected_sq.max(1.0));
    assert!(sink.drain().unwrap().is_none(), "a drain empties the sink");
}

#[test]
fn two_passes_before_a_drain_sum_like_accumulated_gradients() {
    let table = table();
    let sink = Arc::new(RowGradients::default());
    let first = Tensor::new(&[1u32, 3], &Device::Cpu).unwrap();
    let second = Tensor::new(&[3u32, 6, 3], &Device::Cpu).unwrap();
    let mut dense_sum: Option<Tensor> = None;
    for ids in [&first, &second] {
        let w = weights(ids.dim(0).unwrap());
        let out = lookup(table.as_tensor(), ids, &sink).unwrap();
        (&out * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let dense = table.as_tensor().index_select(ids, 0).unwrap();
        let store = (&dense * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g = store.get(table.as_tensor()).unwrap().clone();
        dense_sum = Some(match dense_sum {
            Some(prev) => (prev + g).unwrap(),
            None => g,
        });
    }
    let rows = sink.drain().unwrap().unwrap();
    assert_eq!(rows.ids, vec![1, 3, 6]);
    assert_eq!(
        rows.to_dense(&Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap(),
        dense_sum.unwrap().to_vec2::<f32>().unwrap()
    );
    let slots = rows.slot_of_rows();
    assert_eq!(slots, vec![u32::MAX, 0, u32::MAX, 1, u32::MAX, u32::MAX, 2]);
}

#[test]
fn an_id_outside_the_table_is_an_error_and_mismatched_merges_are_refused() {
    let table = table();
    let sink = Arc::new(RowGradients::default());
    let ids = Tensor::new(&[7u32], &Device::Cpu).unwrap();
    let err = lookup(table.as_tensor(), &ids, &sink).unwrap_err();
    assert!(
        err.to_string().contains("id 7 in a table of 7 rows"),
        "{err}"
    );
    let mut a = SparseRows {
        ids: vec![0],
        values: vec![1.0, 2.0],
        width: 2,
        rows: 4,
    };
    let b = SparseRows {
        ids: vec![0],
        values: vec![1.0, 2.0, 3.0],
        width: 3,
        rows: 4,
    };
    assert!(a.merge(&b).is_err());
}
