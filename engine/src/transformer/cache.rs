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

    /// Number of examples in the cache.
    pub fn batch(&self) -> usize {
        let [batch, _] = self.key_valid.dims();
        batch
    }
}
