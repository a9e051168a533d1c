//! The Gemma-style decoder (paper section 5): RMSNorm with `(1 + weight)`, rotary position
//! embeddings, multi-query attention, GeGLU MLP, and a key/value cache with `prefill` and
//! `extend` (reference: `big_vision/models/ppp/gemma.py` as used by `jetformer.py`).

pub mod attention;
pub mod block;
pub mod cache;
pub mod decoder;
pub mod norm;
pub mod rope;

pub use cache::KvCache;
pub use decoder::Decoder;
