//! The storage of a host KV cache (the CPU kernels' `zoo::cpu::cached_attention`): per
//! layer, keys and values `[kv_heads, capacity, d]` as f32 or, for a model served in bf16,
//! as bf16 ([`KvValues`]).

use half::bf16;

use crate::zoo::cpu::cached_attention::{CacheValue, CachedRows};

/// A host cache's layers, in the values the model's cache keeps (`Decoder::kv_values`).
#[derive(Debug, Clone)]
pub(super) enum HostLayers {
    F32(Vec<HostLayer<f32>>),
    Bf16(Vec<HostLayer<bf16>>),
}

#[derive(Debug, Clone)]
pub(super) struct HostLayer<T> {
    keys: Vec<T>,
    values: Vec<T>,
}

impl<T: CacheValue> HostLayer<T> {
    pub(super) fn layers(count: usize, values: usize) -> Vec<Self> {
        (0..count)
            .map(|_| HostLayer {
                keys: T::zeroed(values),
                values: T::zeroed(values),
            })
            .collect()
    }

    pub(super) fn rows(
        &mut self,
        rows: usize,
        offset: usize,
        capacity: usize,
    ) -> CachedRows<'_, T> {
        CachedRows {
            rows,
            offset,
            keys: &mut self.keys,
            values: &mut self.values,
            capacity,
        }
    }
}

impl HostLayers {
    pub(super) fn len(&self) -> usize {
        match self {
            HostLayers::F32(layers) => layers.len(),
            HostLayers::Bf16(layers) => layers.len(),
        }
    }

    pub(super) fn values(&self) -> KvValues {
        match self {
            HostLayers::F32(_) => KvValues::F32,
            HostLayers::Bf16(_) => KvValues::Bf16,
        }
    }

    /// Bytes allocated for the keys and values of every layer.
    pub(super) fn bytes(&self) -> usize {
        let values: usize = match self {
            HostLayers::F32(layers) => layers.iter().map(|l| l.keys.len() + l.values.len()).sum(),
            HostLayers::Bf16(layers) => layers.iter().map(|l| l.keys.len() + l.values.len()).sum(),
        };
        values * self.values().bytes()
    }
}

/// One layer of a host cache, ready for a call of the attention kernel.
pub(super) enum HostRows<'a> {
    F32(CachedRows<'a, f32>),
    Bf16(CachedRows<'a, bf16>),
}

/// What a model's host caches keep their keys and values as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvValues {
    #[default]
    F32,
    /// Serving in bf16: half the bytes a step reads; the attention sums stay f32.
    Bf16,
}

impl KvValues {
    /// Bytes of one stored key or value.
    pub fn bytes(self) -> usize {
        match self {
            KvValues::F32 => 4,
            KvValues::Bf16 => 2,
        }
    }
}
