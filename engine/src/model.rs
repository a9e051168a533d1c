//! `JetFormer`: the flow, the embeddings, the decoder and both heads, with the sequence layout
//! of both modality orders (paper section 5; reference `jetformer.py`).
//!
//! Layouts before the shift by one:
//! - text first: `[BOS, t_1..t_T, BOI, z_1..z_N]`
//! - image first: `[BOI, z_1..z_N, BOS, t_1..t_T]`
//!
//! Dimension names: `batch`, `text_len` (T), `num_tokens` (N), `soft_token_dim` (k),
//! `token_dim` (d), `width`, `vocab`, `seq_len` = T + N + 1.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig};
use burn::tensor::{Device, Int, Tensor};

use crate::config::JetFormerConfig;
use crate::error::{Error, Result};
use crate::flow::Jet;
use crate::head::Gmm;
use crate::transformer::{Decoder, KvCache};

/// The whole model.
#[derive(Module, Debug)]
pub struct JetFormer {
    pub flow: Jet,
    pub text_embedding: Embedding,
    pub image_embedding: Linear,
    pub decoder: Decoder,
    pub text_head: Linear,
    pub image_head: Linear,
    #[module(skip)]
    pub config: JetFormerConfig,
}

/// Inputs of one teacher-forced pass over a batch whose examples may differ in order.
#[derive(Clone, Debug)]
pub struct SequenceInputs {
    /// `[batch, text_len]` token ids, padded with EOS.
    pub text: Tensor<2, Int>,
    /// `[batch, text_len]`: 1 for tokens that may be attended, 0 for masked padding.
    pub text_mask: Tensor<2>,
    /// `[batch, num_tokens, soft_token_dim]`
    pub soft_tokens: Tensor<3>,
    /// `[batch]`: 1 where the text comes first, 0 where the image does.
    pub text_first: Tensor<1>,
    /// `[batch]`: 1 where the text prefix is replaced by NOLABEL (classifier-free guidance).
    pub drop_prefix: Tensor<1>,
}

/// Head outputs of a teacher-forced pass.
#[derive(Clone, Debug)]
pub struct SequenceOutputs {
    /// `[batch, text_len, vocab]`: the prediction of each text token.
    pub text_logits: Tensor<3>,
    /// `[batch, num_tokens, num_mixtures * (1 + 2 * soft_token_dim)]`: the prediction of each
    /// soft token.
    pub image_head: Tensor<3>,
}

impl JetFormer {
    /// Builds a fresh model. The config must be valid (see [`JetFormerConfig::validate`]).
    pub fn new(config: &JetFormerConfig, device: &Device) -> Self {
        let width = config.decoder.width;
        // NOTE: flax's default Dense init (LeCun normal, std 1/sqrt(fan_in)) for the text head;
        // the reference uses std 1, which starts training from logits of std sqrt(width).
        let lecun = Initializer::Normal {
            mean: 0.0,
            std: 1.0 / (width as f64).sqrt(),
        };
        Self {
            flow: Jet::new(config, device),
            text_embedding: EmbeddingConfig::new(config.text.vocab_size, width)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: 1.0,
                })
                .init(device),
            image_embedding: LinearConfig::new(config.image.soft_token_dim, width).init(device),
            decoder: Decoder::new(&config.decoder, device),
            text_head: LinearConfig::new(width, config.text.vocab_size)
                .with_initializer(lecun)
                .init(device),
            image_head: LinearConfig::new(width, config.image_head_dim())
                .with_initializer(Initializer::Zeros)
                .init(device),
            config: config.clone(),
        }
    }

    /// Returns this model grown to `config`, which may add couplings at the end of the flow
    /// (`flow.depth`) and move factored-out values to the decoder (`image.soft_token_dim`),
    /// and must otherwise match the model's own config (the loss settings and name may differ).
    ///
    /// The grown model computes the same densities. New couplings start as the identity,
    /// because their output layers are zero. Each newly modelled value gets zero embedding
    /// weights and zero head weights, so every mixture component gives it mean 0 and scale
    /// `square_plus(0) = 1`: the standard normal it had as a factored-out value.
    pub fn grown(self, config: &JetFormerConfig) -> Result<Self> {
        config.validate()?;
        let old = &self.config;
        let (depth, soft_token_dim) = (old.flow.depth, old.image.soft_token_dim);
        if config.flow.depth < depth {
            return Err(Error::config(
                "flow.depth",
                format!(
                    "is {}, below the {depth} couplings of the model it grows; pass {depth} or more",
                    config.flow.depth
                ),
            ));
        }
        if config.image.soft_token_dim < soft_token_dim {
            return Err(Error::config(
                "image.soft_token_dim",
                format!(
                    "is {}, below the {soft_token_dim} modelled values of the model it grows; \
                     pass {soft_token_dim} or more",
                    config.image.soft_token_dim
                ),
            ));
        }
        let mut same = config.clone();
        same.flow.depth = depth;
        same.image.soft_token_dim = soft_token_dim;
        same.loss = old.loss.clone();
        same.name = old.name.clone();
        if same != *old {
            return Err(Error::Input(
                "invalid growth: only flow.depth and image.soft_token_dim can grow. Every other \
                 size, including the tokenizer's ids, must match the model it grows"
                    .into(),
            ));
        }

        let device = self.text_embedding.weight.val().device();
        let mut grown = Self::new(config, &device);
        let added = config.image.soft_token_dim - soft_token_dim;
        let mut couplings = self.flow.couplings;
        couplings.extend(grown.flow.couplings.drain(depth..));
        grown.flow.couplings = couplings;
        grown.text_embedding = self.text_embedding;
        grown.decoder = self.decoder;
        grown.text_head = self.text_head;

        // Embedding weight [k, width]: zero rows for the new values.
        let mut embedding = self.image_embedding;
        embedding.weight = embedding.weight.map(|weight| {
            let [_, width] = weight.dims();
            let zeros = Tensor::zeros([added, width], &weight.device());
            Tensor::cat(vec![weight, zeros], 0).detach()
        });
        grown.image_embedding = embedding;

        // Head weight [width, m + m * 2k] and bias [m + m * 2k]: per component, k means then
        // k raw scales, each padded with zeros for the new values.
        let mixtures = config.head.num_mixtures;
        let pad = |output: Tensor<2>| {
            let [rows, columns] = output.dims();
            let device = output.device();
            let logits = output.clone().narrow(1, 0, mixtures);
            let components = output.narrow(1, mixtures, columns - mixtures).reshape([
                rows,
                mixtures,
                2 * soft_token_dim,
            ]);
            let zeros = Tensor::<3>::zeros([rows, mixtures, added], &device);
            let padded = Tensor::cat(
                vec![
                    components.clone().narrow(2, 0, soft_token_dim),
                    zeros.clone(),
                    components.narrow(2, soft_token_dim, soft_token_dim),
                    zeros,
                ],
                2,
            )
            .reshape([rows, mixtures * 2 * (soft_token_dim + added)]);
            Tensor::cat(vec![logits, padded], 1).detach()
        };
        let mut head = self.image_head;
        head.weight = head.weight.map(&pad);
        head.bias = head
            .bias
            .map(|bias| bias.map(|bias| pad(bias.unsqueeze_dim::<2>(0)).squeeze_dim::<1>(0)));
        grown.image_head = head;
        Ok(grown)
    }

    /// Looks up the embedding of one special token for every example.
    ///
    /// # Shapes
    /// - output: `[batch, 1, width]`
    pub fn special_token(&self, id: usize, batch: usize) -> Tensor<3> {
        let weight = self.text_embedding.weight.val();
        let [_, width] = weight.dims();
        weight
            .narrow(0, id, 1)
            .reshape([1, 1, width])
            .repeat_dim(0, batch)
    }

    /// Embeds text tokens.
    ///
    /// # Shapes
    /// - `text`: `[batch, text_len]`
    /// - output: `[batch, text_len, width]`
    pub fn embed_text(&self, text: Tensor<2, Int>) -> Tensor<3> {
        self.text_embedding.forward(text)
    }

    /// Embeds soft tokens.
    ///
    /// # Shapes
    /// - `soft_tokens`: `[batch, len, soft_token_dim]`
    /// - output: `[batch, len, width]`
    pub fn embed_image(&self, soft_tokens: Tensor<3>) -> Tensor<3> {
        self.image_embedding.forward(soft_tokens)
    }

    /// Lays out both orders, shifted by one, and picks one per example.
    ///
    /// # Shapes
    /// - outputs: embedded sequence `[batch, seq_len, width]`, input mask `[batch, seq_len]`
    pub fn embed_sequence(&self, inputs: &SequenceInputs) -> (Tensor<3>, Tensor<2>) {
        let [batch, text_len] = inputs.text.dims();
        let [_, num_tokens, _] = inputs.soft_tokens.dims();
        let device = inputs.text_mask.device();
        let text_ids = &self.config.text;
        let seq_len = text_len + num_tokens + 1;

        // Replace a dropped prefix by NOLABEL everywhere, with every position attended.
        let drop = inputs.drop_prefix.clone().reshape([batch, 1, 1]);
        let nolabel = self.special_token(text_ids.nolabel_id, batch);
        let text = self.embed_text(inputs.text.clone()) * (drop.clone().neg() + 1.0)
            + nolabel * drop.clone();
        let drop_mask = drop.reshape([batch, 1]);
        let text_mask = inputs.text_mask.clone() * (drop_mask.clone().neg() + 1.0) + drop_mask;
        let image = self.embed_image(inputs.soft_tokens.clone());

        let bos = self.special_token(text_ids.bos_id, batch);
        let boi = self.special_token(text_ids.boi_id, batch);
        let one: Tensor<2> = Tensor::ones([batch, 1], &device);
        let image_mask: Tensor<2> = Tensor::ones([batch, num_tokens], &device);

        let text_first = Tensor::cat(
            vec![bos.clone(), text.clone(), boi.clone(), image.clone()],
            1,
        )
        .narrow(1, 0, seq_len);
        let text_first_mask = Tensor::cat(
            vec![
                one.clone(),
                text_mask.clone(),
                one.clone(),
                image_mask.clone(),
            ],
            1,
        )
        .narrow(1, 0, seq_len);
        let image_first = Tensor::cat(vec![boi, image, bos, text], 1).narrow(1, 0, seq_len);
        let image_first_mask =
            Tensor::cat(vec![one.clone(), image_mask, one, text_mask], 1).narrow(1, 0, seq_len);

        let order = inputs.text_first.clone();
        (
            blend(order.clone(), text_first, image_first),
            blend(order, text_first_mask, image_first_mask),
        )
    }

    /// Runs the teacher-forced pass and returns text logits and image head outputs.
    pub fn forward_sequence(&self, inputs: &SequenceInputs) -> SequenceOutputs {
        let [_, text_len] = inputs.text.dims();
        let [_, num_tokens, _] = inputs.soft_tokens.dims();
        let (x, input_mask) = self.embed_sequence(inputs);
        let hidden = self.decoder.forward(x, input_mask);

        let order = inputs.text_first.clone();
        let text_hidden = blend(
            order.clone(),
            hidden.clone().narrow(1, 0, text_len),
            hidden.clone().narrow(1, num_tokens + 1, text_len),
        );
        let image_hidden = blend(
            order,
            hidden.clone().narrow(1, text_len + 1, num_tokens),
            hidden.narrow(1, 0, num_tokens),
        );
        SequenceOutputs {
            text_logits: self.text_head.forward(text_hidden),
            image_head: self.image_head.forward(image_hidden),
        }
    }

    /// Mixture parameters from image head outputs.
    pub fn gmm(
        &self,
        image_head: Tensor<3>,
        scale_temperature: f64,
        mixture_temperature: f64,
    ) -> Gmm {
        Gmm::from_head_output(
            image_head,
            self.config.head.num_mixtures,
            self.config.head.scale_floor,
            scale_temperature,
            mixture_temperature,
        )
    }

    /// Runs a prefix into a fresh cache. See [`Decoder::prefill`].
    pub fn prefill(&self, x: Tensor<3>, input_mask: Tensor<2>) -> (Tensor<3>, KvCache) {
        self.decoder.prefill(x, input_mask)
    }

    /// Appends embedded tokens. See [`Decoder::extend`].
    pub fn extend(&self, x: Tensor<3>, cache: &mut KvCache) -> Tensor<3> {
        self.decoder.extend(x, cache)
    }
}

/// Picks `a` where `select` is 1 and `b` where it is 0, per example.
///
/// # Shapes
/// - `select`: `[batch]`
/// - `a`, `b`, output: `[batch, ...]`
pub fn blend<const D: usize>(select: Tensor<1>, a: Tensor<D>, b: Tensor<D>) -> Tensor<D> {
    let [batch] = select.dims();
    let mut shape = [1; D];
    shape[0] = batch;
    let select = select.reshape(shape);
    a * select.clone() + b * (select.neg() + 1.0)
}
