//! Multi-query (grouped) attention: `num_heads` query heads share `num_kv_heads` key/value
//! heads. Queries are scaled by `head_dim^-0.5`; rotary embeddings go on queries and keys.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor};

use super::rope::Rotary;

/// Keys and values of one layer for every position seen so far.
#[derive(Clone, Debug)]
pub struct LayerCache {
    /// `[batch, num_kv_heads, cached_len, head_dim]`
    pub key: Tensor<4>,
    /// `[batch, num_kv_heads, cached_len, head_dim]`
    pub value: Tensor<4>,
}

/// Attention with shared key/value heads.
#[derive(Module, Debug)]
pub struct Attention {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub output: Linear,
    #[module(skip)]
    pub num_heads: usize,
    #[module(skip)]
    pub num_kv_heads: usize,
    #[module(skip)]
    pub head_dim: usize,
}

impl Attention {
    pub fn new(
        width: usize,
        num_heads: usize,
        num_kv_heads: usize,
        head_dim: usize,
        device: &Device,
    ) -> Self {
        let dense = |d_in, d_out| LinearConfig::new(d_in, d_out).with_bias(false).init(device);
        Self {
            query: dense(width, num_heads * head_dim),
            key: dense(width, num_kv_heads * head_dim),
            value: dense(width, num_kv_heads * head_dim),
            output: dense(num_heads * head_dim, width),
            num_heads,
            num_kv_heads,
            head_dim,
        }
    }

    /// Attends from `x` to the cached positions plus `x` itself, and appends `x`'s keys and
    /// values to `cache` when one is given.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq_len, width]`
    /// - `bias`: `[batch, 1, seq_len, total_len]`, 0 where attending is allowed and a large
    ///   negative number elsewhere; `total_len` = cached length + `seq_len`
    /// - output: `[batch, seq_len, width]`
    pub fn forward(
        &self,
        x: Tensor<3>,
        rotary: &Rotary,
        bias: Tensor<4>,
        cache: Option<&mut Option<LayerCache>>,
    ) -> Tensor<3> {
        let [batch, seq_len, _] = x.dims();
        let heads = |t: Tensor<3>, count: usize| {
            t.reshape([batch, seq_len, count, self.head_dim])
                // [batch, count, seq_len, head_dim]
                .swap_dims(1, 2)
        };
        let query = rotary.apply(heads(self.query.forward(x.clone()), self.num_heads))
            * (self.head_dim as f64).powf(-0.5);
        let mut key = rotary.apply(heads(self.key.forward(x.clone()), self.num_kv_heads));
        let mut value = heads(self.value.forward(x), self.num_kv_heads);

        // Key-value caching.
        if let Some(slot) = cache {
            if let Some(previous) = slot.take() {
                key = Tensor::cat(vec![previous.key, key], 2);
                value = Tensor::cat(vec![previous.value, value], 2);
            }
            *slot = Some(LayerCache {
                key: key.clone(),
                value: value.clone(),
            });
        }
        let [_, _, total_len, _] = key.dims();

        // Group the query heads of each key/value head into one matmul.
        let group = self.num_heads / self.num_kv_heads;
        let query = query.reshape([batch, self.num_kv_heads, group * seq_len, self.head_dim]);
        let scores = query
            .matmul(key.swap_dims(2, 3))
            // [batch, num_heads, seq_len, total_len] to add the bias per query.
            .reshape([batch, self.num_heads, seq_len, total_len])
            + bias;
        let weights =
            softmax(scores, 3).reshape([batch, self.num_kv_heads, group * seq_len, total_len]);
        let mixed = weights
            .matmul(value)
            .reshape([batch, self.num_heads, seq_len, self.head_dim])
            // [batch, seq_len, num_heads, head_dim]
            .swap_dims(1, 2)
            .reshape([batch, seq_len, self.num_heads * self.head_dim]);
        self.output.forward(mixed)
    }
}
