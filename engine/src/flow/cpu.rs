//! The flow for inference on the `flex` CPU backend, on plain `f32` slices.
//!
//! Through burn tensor ops, one flow pass is a few hundred small ops, and at this model's size
//! their overhead (allocation, dispatch, a scalar layer norm, gathers for the
//! permutations) costs more than the arithmetic. Here each thread takes a few whole images
//! through every coupling: one matrix product per dense layer and per attention product, fused
//! layer norm, softmax and GELU loops, and the coupling's permutation, split and merge folded
//! into two index tables. The math is that of [`Coupling`] and [`CouplingNet`]; a test compares
//! both paths.

use burn::module::Param;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::{Device, Tensor, TensorData};
use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2, ShapeBuilder};
use rayon::prelude::*;

use super::coupling::{Coupling, SCALE_FACTOR};
use super::jet::Jet;
use super::vit::{CouplingNet, LAYER_NORM_EPSILON, VitBlock};
use crate::config::CouplingKind;

/// Returns whether `device` is the plain `flex` backend, where this module replaces burn's ops.
/// Autodiff devices keep burn's ops, which record the graph for gradients.
pub fn runs_on(device: &Device) -> bool {
    !device.is_autodiff() && *device == Device::flex()
}

/// Direction in which the flow runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Tokens to latents, adding log|det|.
    Forward,
    /// Latents to tokens, adding -log|det|.
    Inverse,
}

/// Runs `jet` over `x` on the CPU. Returns the output and the log|det| per example (negated
/// for the inverse), as [`Jet::forward`] and [`Jet::inverse`] do.
///
/// # Shapes
/// - `x`, first output: `[batch, num_tokens, token_dim]`; second output: `[batch]`
pub fn run(jet: &Jet, x: Tensor<3>, direction: Direction) -> (Tensor<3>, Tensor<1>) {
    let dims = x.dims();
    let device = x.device();
    let mut values: Vec<f32> = x
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("tensor data converts to f32");
    // NOTE: the weights are copied to host memory on every call (about 1 MB for the `small`
    // preset), so each streamed preview pays that copy again.
    let log_det = CpuJet::new(jet).run(&mut values, dims[0], direction);
    (
        Tensor::from_data(TensorData::new(values, dims), &device),
        Tensor::from_data(TensorData::new(log_det, [dims[0]]), &device),
    )
}

/// The flow's weights copied to host memory.
struct CpuJet {
    couplings: Vec<CpuCoupling>,
    num_tokens: usize,
    token_dim: usize,
}

impl CpuJet {
    fn new(jet: &Jet) -> Self {
        let first = jet.couplings.first();
        let num_tokens = first.map_or(0, |c| c.net.position.val().dims()[1]);
        let token_dim = first.map_or(0, |c| c.net.input.weight.val().dims()[0] * 2);
        Self {
            couplings: jet
                .couplings
                .iter()
                .map(|c| CpuCoupling::new(c, num_tokens, token_dim))
                .collect(),
            num_tokens,
            token_dim,
        }
    }

    /// Transforms `values` (`[batch, num_tokens, token_dim]`) in place; returns log|det| per
    /// image.
    fn run(&self, values: &mut [f32], batch: usize, direction: Direction) -> Vec<f32> {
        let mut log_det = vec![0.0f32; batch];
        let image_len = self.num_tokens * self.token_dim;
        if batch == 0 || image_len == 0 {
            return log_det;
        }
        // A few images per task: enough rows for efficient matrix products, and enough tasks to
        // keep every thread busy.
        let threads = rayon::current_num_threads().max(1);
        let per_task = batch.div_ceil(threads).clamp(1, 8);
        values
            .par_chunks_mut(per_task * image_len)
            .zip(log_det.par_chunks_mut(per_task))
            .for_each(|(images, log_det)| {
                let mut scratch = Scratch::new(self, log_det.len());
                match direction {
                    Direction::Forward => {
                        for coupling in &self.couplings {
                            coupling.apply(images, log_det, direction, &mut scratch);
                        }
                    }
                    Direction::Inverse => {
                        for coupling in self.couplings.iter().rev() {
                            coupling.apply(images, log_det, direction, &mut scratch);
                        }
                    }
                }
            });
        log_det
    }
}

/// Buffers of one task, reused by every coupling.
struct Scratch {
    /// Untouched half, `[rows, half_dim]`.
    untouched: Vec<f32>,
    /// Residual stream, `[rows, width]`.
    hidden: Vec<f32>,
    /// Layer norm output, then attention output, `[rows, width]`.
    normed: Vec<f32>,
    mixed: Vec<f32>,
    /// Queries, keys and values side by side, `[rows, 3 * width]`.
    qkv: Vec<f32>,
    /// Attention weights of one head, `[num_tokens, num_tokens]`.
    weights: Vec<f32>,
    /// MLP hidden layer, `[rows, mlp_width]`.
    mlp: Vec<f32>,
    /// Shift and raw scale, `[rows, token_dim]`.
    affine: Vec<f32>,
}

impl Scratch {
    fn new(jet: &CpuJet, images: usize) -> Self {
        let rows = images * jet.num_tokens;
        let net = jet.couplings.first().map(|c| &c.net);
        let width = net.map_or(0, |n| n.input.outputs);
        let mlp_width = net
            .and_then(|n| n.blocks.first())
            .map_or(0, |b| b.mlp_in.outputs);
        Self {
            untouched: vec![0.0; rows * jet.token_dim / 2],
            hidden: vec![0.0; rows * width],
            normed: vec![0.0; rows * width],
            mixed: vec![0.0; rows * width],
            qkv: vec![0.0; rows * 3 * width],
            weights: vec![0.0; jet.num_tokens * jet.num_tokens],
            mlp: vec![0.0; rows * mlp_width],
            affine: vec![0.0; rows * jet.token_dim],
        }
    }
}

/// One coupling: its network and where its two halves sit in an image.
struct CpuCoupling {
    net: CpuNet,
    /// `untouched[k]`: position in the image (`[num_tokens, token_dim]`, flat) of value `k`
    /// of the network's input (`[num_tokens, half_dim]`, flat).
    untouched: Vec<usize>,
    /// `moved[k]`: position in the image of value `k` of the transformed half.
    moved: Vec<usize>,
}

impl CpuCoupling {
    fn new(coupling: &Coupling, num_tokens: usize, token_dim: usize) -> Self {
        let permutation: Vec<usize> = int_values(&coupling.permutation);
        let half = token_dim / 2;
        let count = num_tokens * half;
        let (untouched, moved) = match coupling.kind {
            // Value `j` of token `t` in each half is channel `permutation[j]` (or
            // `permutation[half + j]`) of token `t`.
            CouplingKind::Channels => (0..count)
                .map(|k| {
                    let (token, j) = (k / half, k % half);
                    (
                        token * token_dim + permutation[j],
                        token * token_dim + permutation[half + j],
                    )
                })
                .unzip(),
            // Each half is `num_tokens / 2` whole tokens, read in the permuted order and
            // folded row-major into `num_tokens` rows of `half` values.
            CouplingKind::Spatial => (0..count)
                .map(|k| {
                    let (token, channel) = (k / token_dim, k % token_dim);
                    (
                        permutation[token] * token_dim + channel,
                        permutation[num_tokens / 2 + token] * token_dim + channel,
                    )
                })
                .unzip(),
        };
        Self {
            net: CpuNet::new(&coupling.net),
            untouched,
            moved,
        }
    }

    /// Applies the coupling to `images` in place and adds its log|det| (negated for the
    /// inverse) to `log_det`.
    fn apply(
        &self,
        images: &mut [f32],
        log_det: &mut [f32],
        direction: Direction,
        scratch: &mut Scratch,
    ) {
        let per_image = self.untouched.len();
        let image_len = images.len() / log_det.len();
        for (image, untouched) in images
            .chunks(image_len)
            .zip(scratch.untouched.chunks_mut(per_image))
        {
            for (value, &index) in untouched.iter_mut().zip(&self.untouched) {
                *value = image[index];
            }
        }
        self.net.forward(log_det.len(), scratch);

        let half = self.net.output.outputs / 2;
        let ln_factor = (SCALE_FACTOR as f32).ln();
        for ((image, affine), log_det) in images
            .chunks_mut(image_len)
            .zip(scratch.affine.chunks(2 * per_image))
            .zip(log_det.iter_mut())
        {
            let mut sum = 0.0f32;
            for (k, &index) in self.moved.iter().enumerate() {
                let (row, j) = (k / half, k % half);
                let shift = affine[row * 2 * half + j];
                let raw = affine[row * 2 * half + half + j];
                let scale = SCALE_FACTOR as f32 / (1.0 + (-raw).exp());
                sum += log_sigmoid(raw) + ln_factor;
                let value = &mut image[index];
                *value = match direction {
                    Direction::Forward => (*value + shift) * scale,
                    Direction::Inverse => *value / scale - shift,
                };
            }
            match direction {
                Direction::Forward => *log_det += sum,
                Direction::Inverse => *log_det -= sum,
            }
        }
    }
}

/// `log(sigmoid(x)) = -(max(-x, 0) + ln(1 + exp(-|x|)))`, stable for large |x|.
fn log_sigmoid(x: f32) -> f32 {
    -((-x).max(0.0) + (-x.abs()).exp().ln_1p())
}

/// The coupling network's weights.
struct CpuNet {
    input: Dense,
    /// `[num_tokens, width]`.
    position: Vec<f32>,
    blocks: Vec<CpuBlock>,
    final_norm: Norm,
    output: Dense,
}

impl CpuNet {
    fn new(net: &CouplingNet) -> Self {
        Self {
            input: Dense::new(&net.input),
            position: float_values(&net.position),
            blocks: net.blocks.iter().map(CpuBlock::new).collect(),
            final_norm: Norm::new(&net.final_norm),
            output: Dense::new(&net.output),
        }
    }

    /// Reads `scratch.untouched` and writes shift and raw scale to `scratch.affine`.
    fn forward(&self, images: usize, s: &mut Scratch) {
        let rows = s.untouched.len() / self.input.inputs;
        self.input.apply(&s.untouched, rows, &mut s.hidden, false);
        for (row, hidden) in s.hidden.chunks_mut(self.input.outputs).enumerate() {
            let token = row % (rows / images);
            let position = &self.position[token * self.input.outputs..][..self.input.outputs];
            for (h, p) in hidden.iter_mut().zip(position) {
                *h += p;
            }
        }
        for block in &self.blocks {
            block.forward(images, s);
        }
        self.final_norm.apply(&s.hidden, &mut s.normed);
        self.output.apply(&s.normed, rows, &mut s.affine, false);
    }
}

/// One ViT block; the query, key and value layers are stored as one `[width, 3 * width]` layer.
struct CpuBlock {
    attention_norm: Norm,
    qkv: Dense,
    attention_output: Dense,
    num_heads: usize,
    mlp_norm: Norm,
    mlp_in: Dense,
    mlp_out: Dense,
}

impl CpuBlock {
    fn new(block: &VitBlock) -> Self {
        let attention = &block.attention;
        Self {
            attention_norm: Norm::new(&block.attention_norm),
            qkv: Dense::side_by_side(&[&attention.query, &attention.key, &attention.value]),
            attention_output: Dense::new(&attention.output),
            num_heads: attention.num_heads,
            mlp_norm: Norm::new(&block.mlp_norm),
            mlp_in: Dense::new(&block.mlp_in),
            mlp_out: Dense::new(&block.mlp_out),
        }
    }

    /// `hidden += attention(norm(hidden))`, then `hidden += mlp(norm(hidden))`.
    fn forward(&self, images: usize, s: &mut Scratch) {
        let width = self.attention_output.outputs;
        let rows = s.hidden.len() / width;
        let tokens = rows / images;
        let head_dim = width / self.num_heads;
        let scale = (head_dim as f32).powf(-0.5);

        self.attention_norm.apply(&s.hidden, &mut s.normed);
        self.qkv.apply(&s.normed, rows, &mut s.qkv, false);
        let stride = 3 * width;
        for image in 0..images {
            let qkv = &s.qkv[image * tokens * stride..][..tokens * stride];
            let mixed = &mut s.mixed[image * tokens * width..][..tokens * width];
            for head in 0..self.num_heads {
                let column = head * head_dim;
                let query = view(&qkv[column..], tokens, head_dim, stride, 1);
                // Keys transposed: [head_dim, tokens].
                let keys = view(&qkv[width + column..], head_dim, tokens, 1, stride);
                let values = view(&qkv[2 * width + column..], tokens, head_dim, stride, 1);
                matmul(&mut s.weights, tokens, query, keys, scale, false);
                for row in s.weights.chunks_mut(tokens) {
                    softmax(row);
                }
                let weights = view(&s.weights, tokens, tokens, tokens, 1);
                matmul(&mut mixed[column..], width, weights, values, 1.0, false);
            }
        }
        self.attention_output
            .apply(&s.mixed, rows, &mut s.hidden, true);

        self.mlp_norm.apply(&s.hidden, &mut s.normed);
        self.mlp_in.apply(&s.normed, rows, &mut s.mlp, false);
        for value in &mut s.mlp {
            *value = gelu_tanh(*value);
        }
        self.mlp_out.apply(&s.mlp, rows, &mut s.hidden, true);
    }
}

/// A dense layer `y = x W + b` with `W` row-major `[inputs, outputs]`.
struct Dense {
    weight: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

impl Dense {
    fn new(linear: &Linear) -> Self {
        let [inputs, outputs] = linear.weight.val().dims();
        Self {
            weight: float_values(&linear.weight),
            bias: linear
                .bias
                .as_ref()
                .map_or_else(|| vec![0.0; outputs], float_values),
            inputs,
            outputs,
        }
    }

    /// Layers with the same input, their outputs concatenated.
    fn side_by_side(linears: &[&Linear]) -> Self {
        let parts: Vec<Dense> = linears.iter().map(|l| Dense::new(l)).collect();
        let inputs = parts[0].inputs;
        let outputs = parts.iter().map(|p| p.outputs).sum();
        let mut weight = Vec::with_capacity(inputs * outputs);
        for row in 0..inputs {
            for part in &parts {
                weight.extend_from_slice(&part.weight[row * part.outputs..][..part.outputs]);
            }
        }
        Self {
            weight,
            bias: parts.iter().flat_map(|p| p.bias.iter().copied()).collect(),
            inputs,
            outputs,
        }
    }

    /// `out = x W + b`, or `out += x W + b` with `accumulate`.
    fn apply(&self, x: &[f32], rows: usize, out: &mut [f32], accumulate: bool) {
        let x = view(x, rows, self.inputs, self.inputs, 1);
        let weight = view(&self.weight, self.inputs, self.outputs, self.outputs, 1);
        matmul(out, self.outputs, x, weight, 1.0, accumulate);
        for row in out[..rows * self.outputs].chunks_mut(self.outputs) {
            for (value, bias) in row.iter_mut().zip(&self.bias) {
                *value += bias;
            }
        }
    }
}

/// Layer norm over the last dimension, with scale and offset.
struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

impl Norm {
    fn new(norm: &LayerNorm) -> Self {
        let gamma = float_values(&norm.gamma);
        let beta = norm
            .beta
            .as_ref()
            .map_or_else(|| vec![0.0; gamma.len()], float_values);
        Self { gamma, beta }
    }

    fn apply(&self, x: &[f32], out: &mut [f32]) {
        let width = self.gamma.len();
        for (row, out) in x.chunks(width).zip(out.chunks_mut(width)) {
            let mean = row.iter().sum::<f32>() / width as f32;
            let variance = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / width as f32;
            let inverse = 1.0 / (variance + LAYER_NORM_EPSILON as f32).sqrt();
            for (((o, v), g), b) in out.iter_mut().zip(row).zip(&self.gamma).zip(&self.beta) {
                *o = (v - mean) * inverse * g + b;
            }
        }
    }
}

/// In-place softmax of one row.
fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for value in row.iter_mut() {
        *value = exp(*value - max);
        sum += *value;
    }
    let inverse = 1.0 / sum;
    for value in row.iter_mut() {
        *value *= inverse;
    }
}

/// GELU with the tanh approximation, written as `x / (1 + exp(-2 sqrt(2/pi) (x + 0.044715 x^3)))`
/// like [`crate::activation::gelu_tanh`].
fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    x / (1.0 + exp(-2.0 * SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)))
}

/// `e^x` to within about 2e-7 relative error, in plain arithmetic that the compiler turns into
/// SIMD code inside loops (the library `exp` is a call per value). `x = n ln 2 + r` with
/// `|r| <= ln(2) / 2`; `e^r` by its degree-6 Taylor polynomial; `2^n` built from the exponent
/// bits. Inputs are clamped to the range where the result is a normal `f32`.
fn exp(x: f32) -> f32 {
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    // ln 2 in two parts, so that `n * LN_2_HIGH` is exact.
    const LN_2_HIGH: f32 = 0.693_145_75;
    const LN_2_LOW: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = x - n * LN_2_HIGH - n * LN_2_LOW;
    let p = 1.0
        + r * (1.0
            + r * (1.0 / 2.0
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let power = f32::from_bits(((n as i32 + 127) << 23) as u32);
    p * power
}

/// Views `data` as a strided matrix, with element `(i, j)` at
/// `data[i * row_stride + j * column_stride]`. Panics if it reaches past `data`.
fn view(
    data: &[f32],
    rows: usize,
    columns: usize,
    row_stride: usize,
    column_stride: usize,
) -> ArrayView2<'_, f32> {
    ArrayView2::from_shape((rows, columns).strides((row_stride, column_stride)), data)
        .expect("matrix view fits in its data")
}

/// `out = scale * a b` (or `out += scale * a b` with `accumulate`), `out` row-major with
/// `out_row_stride`, on the calling thread.
fn matmul(
    out: &mut [f32],
    out_row_stride: usize,
    a: ArrayView2<f32>,
    b: ArrayView2<f32>,
    scale: f32,
    accumulate: bool,
) {
    let shape = (a.nrows(), b.ncols()).strides((out_row_stride, 1));
    let mut out = ArrayViewMut2::from_shape(shape, out).expect("matrix product fits in its output");
    let keep = if accumulate { 1.0 } else { 0.0 };
    general_mat_mul(scale, &a, &b, keep, &mut out);
}

fn float_values<const D: usize>(param: &Param<Tensor<D>>) -> Vec<f32> {
    param
        .val()
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("tensor data converts to f32")
}

fn int_values(param: &Param<Tensor<1, burn::tensor::Int>>) -> Vec<usize> {
    param
        .val()
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .expect("tensor data converts to i64")
        .into_iter()
        .map(|v| v as usize)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_the_library() {
        let mut worst = 0.0f32;
        for i in -8000..8000 {
            let x = i as f32 * 0.01;
            let relative = ((exp(x) - x.exp()) / x.exp()).abs();
            worst = worst.max(relative);
        }
        assert!(worst < 5e-7, "relative error {worst}");
        let floor = (-87.0f32).exp();
        assert!(((exp(-1000.0) - floor) / floor).abs() < 5e-7);
    }

    #[test]
    fn strided_matmul_matches_loops() {
        // a: 2x3 row-major; b: 3x2 read as the transpose of a 2x3 row-major matrix.
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = [1.0, 0.0, -1.0, 2.0, 1.0, 0.5];
        let mut out = [10.0; 4];
        matmul(
            &mut out,
            2,
            view(&a, 2, 3, 3, 1),
            view(&b, 3, 2, 1, 3),
            2.0,
            true,
        );
        // a bᵀ = [[1*1+2*0+3*-1, 1*2+2*1+3*0.5], [4-6, 8+5+3]] = [[-2, 5.5], [-2, 16]].
        assert_eq!(out, [10.0 - 4.0, 10.0 + 11.0, 10.0 - 4.0, 10.0 + 32.0]);
    }
}
