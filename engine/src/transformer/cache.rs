//! The key/value cache of the decoder.

use burn::tensor::{Int, Tensor};

use super::attention::LayerCache;

/// Keys and values of every layer, which cached positions are valid, and the position of the
/// next token of each example.
#[derive(Clone, Debug)]
pub struct KvCache {
    pub(crate) layers: Vec<Option<LayerCache>>,
    /// `[batch, cached_len]`: 1 where a cached position may be attended, 0 for padding.
    pub(crate) key_valid: Tensor<2>,
    /// `[batch, 1]`: the position of the next token, the count of valid tokens so far.
    pub(crate) next_position: Tensor<2, Int>,
}

impl KvCache {
    /// Number of cached positions, padding included.
    pub fn len(&self) -> usize {
        let [_, cached_len] = self.key_valid.dims();
        cached_len
    }

    /// Returns whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns the cache of `copies` copies of each example, in blocks: example 0 `copies`
    /// times, then example 1, and so on.
    pub fn repeat(&self, copies: usize) -> Self {
        let repeat_rows = |batch: usize| -> Vec<i64> {
            (0..batch as i64)
                .flat_map(|row| std::iter::repeat_n(row, copies))
                .collect()
        };
        let batch = self.batch();
        let device = self.key_valid.device();
        let rows = Tensor::<1, Int>::from_data(
            burn::tensor::TensorData::new(repeat_rows(batch), [batch * copies]),
            &device,
        );
        Self {
            layers: self
                .layers
                .iter()
                .map(|layer| {
                    layer.as_ref().map(|layer| LayerCache {
                        key: layer.key.clone().select(0, rows.clone()),
                        value: layer.value.clone().select(0, rows.clone()),
                    })
                })
                .collect(),
            key_valid: self.key_valid.clone().select(0, rows.clone()),
            next_position: self.next_position.clone().select(0, rows),
        }
    }

    /// Number of examples in the cache.
    pub fn batch(&self) -> usize {
        let [batch, _] = self.key_valid.dims();
        batch
    }
}
