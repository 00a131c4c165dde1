//! Training through the CubeCL stages: [`LandmarkSoftmaxOps`], [`PinvOps`] (the pseudo-inverse
//! alone, and `W` from the landmarks) and [`SegmentMeanOps`] (the landmarks) for
//! `Autodiff<Cube>`. A tracked call runs the kernel forward and keeps its inputs, and for the
//! softmax products their output and each row's softmax statistics (largest score and log of
//! the sum of exponentials), which the forward kernel leaves in f32; the backward is the
//! extension's `*_backward` operations, kernels too (`softmax_backward.rs`, `pinv_backward.rs`,
//! `landmark_weights_backward.rs`), which recompute from them, so no `n × m` matrix is kept from
//! the forward to the backward. A landmark keeps only its input's length and a factor; its
//! backward spreads the gradient over the segment. Masks are constants.

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::{BoolTensor, FloatTensor, IntTensor};
use burn::backend::{Autodiff, AutodiffBackend, Backend, Cube, TensorMetadata};

use crate::kernels::extension::{
    DepthwiseConvOps, LandmarkSoftmaxOps, LayerNormOps, PinvOps, SegmentLayoutOps, SegmentMeanOps,
};
use crate::kernels::flags::Flags;
use crate::kernels::recorded::{SavedForward, record};
use crate::kernels::segment_rows::SegmentRows;

/// What the `F · W` stage keeps: its inputs, the missing-landmark and query-padding flags, its
/// output and each row's softmax statistics (`[batch, heads, n, 2]`, f32).
#[derive(Debug, Clone)]
struct SavedAttention<B: Backend> {
    queries: FloatTensor<B>,
    landmark_keys: FloatTensor<B>,
    weights: FloatTensor<B>,
    missing: Flags<B>,
    query_padding: Flags<B>,
    output: FloatTensor<B>,
    softmax_statistics: FloatTensor<B>,
}

/// What the `B · V` stage keeps: its inputs, both masks' flags, the score of a padded key and
/// whether it counts as zeros, its output and each row's softmax statistics (`[batch, heads, m,
/// 2]`, f32).
#[derive(Debug, Clone)]
struct SavedValues<B: Backend> {
    landmark_queries: FloatTensor<B>,
    keys: FloatTensor<B>,
    values: FloatTensor<B>,
    padding: Flags<B>,
    missing: Flags<B>,
    masked_score: f32,
    zero_padded: bool,
    output: FloatTensor<B>,
    softmax_statistics: FloatTensor<B>,
}

/// What `W = A⁺ (B V)` from the landmarks keeps: its inputs (`A`, `c` and the iteration are
/// rebuilt from them) and the keys' rows, which tell the short sequences.
#[derive(Debug, Clone)]
struct SavedWeights<B: Backend> {
    landmark_queries: FloatTensor<B>,
    landmark_keys: FloatTensor<B>,
    landmark_values: FloatTensor<B>,
    missing_queries: Flags<B>,
    missing_keys: Flags<B>,
    key_rows: SegmentRows<B>,
    iterations: usize,
}

/// [`SavedWeights`] with short sequences possible (ranked key rows): the values, whose means
/// such a sequence takes as its weights, are a fourth input.
#[derive(Debug, Clone)]
struct SavedShortWeights(SavedWeights<Cube>);

/// What the pseudo-inverse keeps: `A`, `c` (`[batch · heads]`) and the number of iterations.
#[derive(Debug, Clone)]
struct SavedPinv<B: Backend> {
    a: FloatTensor<B>,
    coefficient: FloatTensor<B>,
    iterations: usize,
}

/// What a landmark mean `factor · segment_mean(x, m)` keeps: `x`'s length, the factor, and
/// for ranked segments the ranks.
#[derive(Debug, Clone)]
struct SavedSegmentMean {
    n: usize,
    factor: f32,
    rows: SegmentRows<Cube>,
}

impl SavedForward<Cube, 1> for SavedSegmentMean {
    fn backward(self, grad: FloatTensor<Cube>) -> [FloatTensor<Cube>; 1] {
        [match self.rows {
            SegmentRows::Equal => {
                <Cube as SegmentMeanOps>::segment_mean_backward(grad, self.n, self.factor)
            }
            SegmentRows::Ranked { rank, lengths, .. } => {
                <Cube as SegmentMeanOps>::ranked_segment_mean_backward(
                    grad,
                    rank,
                    lengths,
                    self.factor,
                )
            }
        }]
    }
}

impl SavedForward<Cube, 3> for SavedAttention<Cube> {
    fn backward(self, grad: FloatTensor<Cube>) -> [FloatTensor<Cube>; 3] {
        let (queries, landmark_keys, weights) =
            <Cube as LandmarkSoftmaxOps>::landmark_attention_backward(
                self.queries,
                self.landmark_keys,
                self.weights,
                self.missing,
                self.query_padding,
                self.output,
                self.softmax_statistics,
                grad,
            );
        [queries, landmark_keys, weights]
    }
}

impl SavedForward<Cube, 3> for SavedValues<Cube> {
    fn backward(self, grad: FloatTensor<Cube>) -> [FloatTensor<Cube>; 3] {
        let (landmark_queries, keys, values) =
            <Cube as LandmarkSoftmaxOps>::landmark_values_backward(
                self.landmark_queries,
                self.keys,
                self.values,
                self.padding,
                self.missing,
                self.masked_score,
                self.zero_padded,
                self.output,
                self.softmax_statistics,
                grad,
            );
        [landmark_queries, keys, values]
    }
}

impl SavedWeights<Cube> {
    /// The gradients of the landmark queries, landmark keys and `B V`, and of the short
    /// sequences' value means.
    fn gradients(self, grad: FloatTensor<Cube>) -> ([FloatTensor<Cube>; 3], FloatTensor<Cube>) {
        let (landmark_queries, landmark_keys, landmark_values, short_means) =
            <Cube as PinvOps>::landmark_weights_backward(
                self.landmark_queries,
                self.landmark_keys,
                self.landmark_values,
                self.missing_queries,
                self.missing_keys,
                self.key_rows,
                self.iterations,
                grad,
            );
        (
            [landmark_queries, landmark_keys, landmark_values],
            short_means,
        )
    }
}

impl SavedForward<Cube, 3> for SavedWeights<Cube> {
    fn backward(self, grad: FloatTensor<Cube>) -> [FloatTensor<Cube>; 3] {
        // Equal rows: no sequence is short, and the means' gradient is zero.
        self.gradients(grad).0
    }
}

impl SavedForward<Cube, 4> for SavedShortWeights {
    fn backward(self, grad: FloatTensor<Cube>) -> [FloatTensor<Cube>; 4] {
        let SegmentRows::Ranked { rank, lengths, .. } = self.0.key_rows.clone() else {
            unreachable!("SavedShortWeights holds ranked rows");
        };
        let ([landmark_queries, landmark_keys, landmark_values], short_means) =
            self.0.gradients(grad);
        let values =
            <Cube as SegmentMeanOps>::ranked_segment_mean_backward(short_means, rank, lengths, 1.0);
        [landmark_queries, landmark_keys, landmark_values, values]
    }
}

impl SavedForward<Cube, 2> for SavedPinv<Cube> {
    fn backward(self, grad: FloatTensor<Cube>) -> [FloatTensor<Cube>; 2] {
        let (a_grad, c_grad) =
            <Cube as PinvOps>::pinv_backward(self.a, self.coefficient, grad, self.iterations);
        [a_grad, c_grad]
    }
}

impl<C: CheckpointStrategy> LandmarkSoftmaxOps for Autodiff<Cube, C> {
    fn landmark_values(
        landmark_queries: FloatTensor<Self>,
        keys: FloatTensor<Self>,
        values: FloatTensor<Self>,
        padding: Flags<Self>,
        missing: Flags<Self>,
        masked_score: f32,
        zero_padded: bool,
    ) -> FloatTensor<Self> {
        let nodes = [landmark_queries.node(), keys.node(), values.node()];
        record::<Cube, C, 3, _>(nodes, || {
            let (landmark_queries, keys, values, padding, missing) = (
                landmark_queries.into_primitive(),
                keys.into_primitive(),
                values.into_primitive(),
                padding.map(|flags| flags.into_primitive()),
                missing.map(|flags| flags.into_primitive()),
            );
            let (output, softmax_statistics) =
                <Cube as LandmarkSoftmaxOps>::landmark_values_with_statistics(
                    landmark_queries.clone(),
                    keys.clone(),
                    values.clone(),
                    padding.clone(),
                    missing.clone(),
                    masked_score,
                    zero_padded,
                );
            let saved = SavedValues {
                landmark_queries,
                keys,
                values,
                padding,
                missing,
                masked_score,
                zero_padded,
                output: output.clone(),
                softmax_statistics,
            };
            (output, saved)
        })
    }

    fn landmark_attention(
        queries: FloatTensor<Self>,
        landmark_keys: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        missing: Flags<Self>,
        query_padding: Flags<Self>,
    ) -> FloatTensor<Self> {
        let nodes = [queries.node(), landmark_keys.node(), weights.node()];
        record::<Cube, C, 3, _>(nodes, || {
            let (queries, landmark_keys, weights, missing, query_padding) = (
                queries.into_primitive(),
                landmark_keys.into_primitive(),
                weights.into_primitive(),
                missing.map(|flags| flags.into_primitive()),
                query_padding.map(|flags| flags.into_primitive()),
            );
            let (output, softmax_statistics) =
                <Cube as LandmarkSoftmaxOps>::landmark_attention_with_statistics(
                    queries.clone(),
                    landmark_keys.clone(),
                    weights.clone(),
                    missing.clone(),
                    query_padding.clone(),
                );
            let saved = SavedAttention {
                queries,
                landmark_keys,
                weights,
                missing,
                query_padding,
                output: output.clone(),
                softmax_statistics,
            };
            (output, saved)
        })
    }
}

impl<C: CheckpointStrategy> PinvOps for Autodiff<Cube, C> {
    fn pinv(
        a: FloatTensor<Self>,
        coefficient: FloatTensor<Self>,
        iterations: usize,
    ) -> FloatTensor<Self> {
        let nodes = [a.node(), coefficient.node()];
        record::<Cube, C, 2, _>(nodes, || {
            let (a, coefficient) = (a.into_primitive(), coefficient.into_primitive());
            let output = <Cube as PinvOps>::pinv(a.clone(), coefficient.clone(), iterations);
            let saved = SavedPinv {
                a,
                coefficient,
                iterations,
            };
            (output, saved)
        })
    }

    /// The values are an input only with ranked key rows, where a sequence may be short: with
    /// equal rows their gradient would be zero, and recording it would add an `[n, d_v]` zero
    /// tensor to theirs.
    fn landmark_weights(
        landmark_queries: FloatTensor<Self>,
        landmark_keys: FloatTensor<Self>,
        landmark_values: FloatTensor<Self>,
        missing_queries: Flags<Self>,
        missing_keys: Flags<Self>,
        values: FloatTensor<Self>,
        key_rows: SegmentRows<Self>,
        iterations: usize,
    ) -> FloatTensor<Self> {
        let nodes = [
            landmark_queries.node(),
            landmark_keys.node(),
            landmark_values.node(),
        ];
        let ranked = matches!(key_rows, SegmentRows::Ranked { .. });
        let values_node = values.node();
        let saved = SavedWeights::<Cube> {
            landmark_queries: landmark_queries.into_primitive(),
            landmark_keys: landmark_keys.into_primitive(),
            landmark_values: landmark_values.into_primitive(),
            missing_queries: missing_queries.map(|flags| flags.into_primitive()),
            missing_keys: missing_keys.map(|flags| flags.into_primitive()),
            key_rows: key_rows.cast::<Cube>(),
            iterations,
        };
        let values = values.into_primitive();
        let forward = |saved: &SavedWeights<Cube>| {
            <Cube as PinvOps>::landmark_weights(
                saved.landmark_queries.clone(),
                saved.landmark_keys.clone(),
                saved.landmark_values.clone(),
                saved.missing_queries.clone(),
                saved.missing_keys.clone(),
                values,
                saved.key_rows.clone(),
                iterations,
            )
        };
        match ranked {
            false => record::<Cube, C, 3, _>(nodes, || (forward(&saved), saved)),
            true => {
                let [queries_node, keys_node, products_node] = nodes;
                let nodes = [queries_node, keys_node, products_node, values_node];
                record::<Cube, C, 4, _>(nodes, || (forward(&saved), SavedShortWeights(saved)))
            }
        }
    }
}

/// A scaling by a constant: `Q̃ · scale` as the landmark means record it.
#[derive(Debug, Clone)]
struct SavedScale(f32);

impl SavedForward<Cube, 1> for SavedScale {
    fn backward(self, grad: FloatTensor<Cube>) -> [FloatTensor<Cube>; 1] {
        [Cube::float_mul_scalar(grad, self.0.into())]
    }
}

/// The landmarks: the forward kernel once for all three, each recorded as its own operation
/// (the autodiff graph has one output per operation). `Q̃` and `K̃ · scale` are means whose
/// backward spreads the gradient over the segment's rows; `Q̃ · scale` is recorded as a scaling
/// of `Q̃`, so that its gradient joins `Q̃`'s on the `[m, d]` landmark side and one spread, not
/// two and a sum of `[n, d]` gradients, carries both to the queries.
impl<C: CheckpointStrategy> SegmentMeanOps for Autodiff<Cube, C> {
    fn segment_mean(x: FloatTensor<Self>, rows: SegmentRows<Self>, m: usize) -> FloatTensor<Self> {
        let n = x.shape()[2];
        let rows = rows.cast::<Cube>();
        let nodes = [x.node()];
        record::<Cube, C, 1, _>(nodes, || {
            let output =
                <Cube as SegmentMeanOps>::segment_mean(x.into_primitive(), rows.clone(), m);
            (
                output,
                SavedSegmentMean {
                    n,
                    factor: 1.0,
                    rows,
                },
            )
        })
    }

    fn landmark_means(
        queries: FloatTensor<Self>,
        keys: FloatTensor<Self>,
        query_rows: SegmentRows<Self>,
        key_rows: SegmentRows<Self>,
        m: usize,
        scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (n_q, n_k) = (queries.shape()[2], keys.shape()[2]);
        let (query_rows, key_rows) = (query_rows.cast::<Cube>(), key_rows.cast::<Cube>());
        let nodes = [queries.node(), keys.node()];
        let (landmark_queries, scaled_queries, scaled_keys) =
            <Cube as SegmentMeanOps>::landmark_means(
                queries.into_primitive(),
                keys.into_primitive(),
                query_rows.clone(),
                key_rows.clone(),
                m,
                scale,
            );
        let [query_node, key_node] = nodes;
        let mean = |node, output, n, factor, rows| {
            record::<Cube, C, 1, _>([node], || (output, SavedSegmentMean { n, factor, rows }))
        };
        let landmark_queries = mean(query_node, landmark_queries, n_q, 1.0, query_rows);
        let scaled_queries = record::<Cube, C, 1, _>([landmark_queries.node()], || {
            (scaled_queries, SavedScale(scale))
        });
        (
            landmark_queries,
            scaled_queries,
            mean(key_node, scaled_keys, n_k, scale, key_rows),
        )
    }
}

/// The layout of a mask has no gradient: the inner backend's kernel, on the same integer and
/// boolean tensors, its float flags untracked.
impl<C: CheckpointStrategy> SegmentLayoutOps for Autodiff<Cube, C> {
    fn ranked_segments(
        mask: BoolTensor<Self>,
        int_like: IntTensor<Self>,
        float_like: FloatTensor<Self>,
        m: usize,
    ) -> (
        IntTensor<Self>,
        IntTensor<Self>,
        IntTensor<Self>,
        BoolTensor<Self>,
        BoolTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    ) {
        let (order, rank, lengths, missing, short, padding_flags, missing_flags) =
            <Cube as SegmentLayoutOps>::ranked_segments(
                mask,
                int_like,
                float_like.into_primitive(),
                m,
            );
        (
            order,
            rank,
            lengths,
            missing,
            short,
            Self::from_inner(padding_flags),
            Self::from_inner(missing_flags),
        )
    }
}

/// What a LayerNorm keeps: its input, `γ` and each row's `(mean, 1/√(var + ε))` (`[rows, 2]`,
/// f32), from which its backward recomputes the normalised rows.
#[derive(Debug, Clone)]
struct SavedLayerNorm<B: Backend> {
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    statistics: FloatTensor<B>,
}

impl SavedForward<Cube, 3> for SavedLayerNorm<Cube> {
    fn backward(self, grad: FloatTensor<Cube>) -> [FloatTensor<Cube>; 3] {
        let (dx, d_gamma, d_beta) =
            <Cube as LayerNormOps>::layer_norm_backward(self.x, self.gamma, self.statistics, grad);
        [dx, d_gamma, d_beta]
    }
}

impl<C: CheckpointStrategy> LayerNormOps for Autodiff<Cube, C> {
    fn layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let nodes = [x.node(), gamma.node(), beta.node()];
        let (x, gamma) = (x.into_primitive(), gamma.into_primitive());
        record::<Cube, C, 3, _>(nodes, || {
            let (output, statistics) = <Cube as LayerNormOps>::layer_norm_with_statistics(
                x.clone(),
                gamma.clone(),
                beta.into_primitive(),
                epsilon,
            );
            (
                output,
                SavedLayerNorm {
                    x,
                    gamma,
                    statistics,
                },
            )
        })
    }
}

/// What the skip connection's convolution keeps: its values, taps and padding.
#[derive(Debug, Clone)]
struct SavedConv<B: Backend> {
    values: FloatTensor<B>,
    taps: FloatTensor<B>,
    padding: Flags<B>,
}

impl SavedForward<Cube, 2> for SavedConv<Cube> {
    fn backward(self, grad: FloatTensor<Cube>) -> [FloatTensor<Cube>; 2] {
        let (d_values, d_taps) = <Cube as DepthwiseConvOps>::depthwise_conv_backward(
            self.values,
            self.taps,
            self.padding,
            grad,
        );
        [d_values, d_taps]
    }
}

impl<C: CheckpointStrategy> DepthwiseConvOps for Autodiff<Cube, C> {
    fn depthwise_conv(
        values: FloatTensor<Self>,
        taps: FloatTensor<Self>,
        padding: Flags<Self>,
    ) -> FloatTensor<Self> {
        let nodes = [values.node(), taps.node()];
        let (values, taps) = (values.into_primitive(), taps.into_primitive());
        let padding = padding.map(|flags| flags.into_primitive());
        record::<Cube, C, 2, _>(nodes, || {
            let output = <Cube as DepthwiseConvOps>::depthwise_conv(
                values.clone(),
                taps.clone(),
                padding.clone(),
            );
            (
                output,
                SavedConv {
                    values,
                    taps,
                    padding,
                },
            )
        })
    }
}
