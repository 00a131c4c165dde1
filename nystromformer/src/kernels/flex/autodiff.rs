//! Training through the fused flex stages: [`LandmarkSoftmaxOps`], [`DepthwiseConvOps`],
//! [`PinvOps`], [`SegmentMeanOps`],
//! [`ElementwiseOps`] and [`LayerNormOps`] for `Autodiff<Flex>`. A tracked call runs the fused
//! forward and keeps what its backward needs: inputs, and for the softmax products their output
//! and each row's softmax statistics, for LayerNorm each row's mean and inverse deviation; for
//! dropout only the mask's seed. The backward recomputes from them ([`super::backward`],
//! [`super::depthwise`], [`super::dropout`], [`super::gelu`], [`super::layer_norm`]). Masks are
//! constants.

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Flex};
use burn_flex::FlexTensor;

use super::dropout::DropoutMask;
use super::{
    SavedConv, SavedLayerNorm, SavedPinv, SavedProduct, SavedSegmentMean, attention_forward,
    conv_backward, conv_forward, dropout_backward, dropout_forward, gelu_backward, gelu_forward,
    layer_norm_backward, layer_norm_forward, pinv_backward, pinv_forward, product_backward,
    segment_mean_backward, segment_mean_forward, values_forward,
};
use crate::kernels::extension::{
    DepthwiseConvOps, ElementwiseOps, LandmarkSoftmaxOps, LayerNormOps, PinvOps, SegmentMeanOps,
};
use crate::kernels::flags::Flags;
use crate::kernels::recorded::{SavedForward, record};
use crate::kernels::segment_rows::SegmentRows;

impl SavedForward<Flex, 3> for SavedProduct {
    fn backward(self, grad: FlexTensor) -> [FlexTensor; 3] {
        product_backward(self, grad)
    }
}

impl SavedForward<Flex, 2> for SavedConv {
    fn backward(self, grad: FlexTensor) -> [FlexTensor; 2] {
        conv_backward(self, grad)
    }
}

impl SavedForward<Flex, 2> for SavedPinv {
    fn backward(self, grad: FlexTensor) -> [FlexTensor; 2] {
        pinv_backward(self, grad)
    }
}

impl SavedForward<Flex, 1> for SavedSegmentMean {
    fn backward(self, grad: FlexTensor) -> [FlexTensor; 1] {
        [segment_mean_backward(self, grad)]
    }
}

impl SavedForward<Flex, 1> for DropoutMask {
    fn backward(self, grad: FlexTensor) -> [FlexTensor; 1] {
        [dropout_backward(self, grad)]
    }
}

impl SavedForward<Flex, 3> for SavedLayerNorm {
    fn backward(self, grad: FlexTensor) -> [FlexTensor; 3] {
        layer_norm_backward(self, grad)
    }
}

/// GELU's input.
#[derive(Debug, Clone)]
struct SavedGelu(FlexTensor);

impl SavedForward<Flex, 1> for SavedGelu {
    fn backward(self, grad: FlexTensor) -> [FlexTensor; 1] {
        [gelu_backward(self.0, grad)]
    }
}

impl<C: CheckpointStrategy> LandmarkSoftmaxOps for Autodiff<Flex, C> {
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
        let forward = || {
            let saved = values_forward(
                landmark_queries.into_primitive(),
                keys.into_primitive(),
                values.into_primitive(),
                padding.map(|flags| flags.into_primitive()),
                missing.map(|flags| flags.into_primitive()),
                masked_score,
                zero_padded,
            );
            (saved.output.clone(), saved)
        };
        record::<Flex, C, 3, _>(nodes, forward)
    }

    fn landmark_attention(
        queries: FloatTensor<Self>,
        landmark_keys: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        missing: Flags<Self>,
        query_padding: Flags<Self>,
    ) -> FloatTensor<Self> {
        let nodes = [queries.node(), landmark_keys.node(), weights.node()];
        let forward = || {
            let saved = attention_forward(
                queries.into_primitive(),
                landmark_keys.into_primitive(),
                weights.into_primitive(),
                missing.map(|flags| flags.into_primitive()),
                query_padding.map(|flags| flags.into_primitive()),
            );
            (saved.output.clone(), saved)
        };
        record::<Flex, C, 3, _>(nodes, forward)
    }
}

impl<C: CheckpointStrategy> DepthwiseConvOps for Autodiff<Flex, C> {
    fn depthwise_conv(
        values: FloatTensor<Self>,
        taps: FloatTensor<Self>,
        padding: Flags<Self>,
    ) -> FloatTensor<Self> {
        let nodes = [values.node(), taps.node()];
        record::<Flex, C, 2, _>(nodes, || {
            conv_forward(
                values.into_primitive(),
                taps.into_primitive(),
                padding.map(|flags| flags.into_primitive()),
            )
        })
    }
}

impl<C: CheckpointStrategy> PinvOps for Autodiff<Flex, C> {
    fn pinv(
        a: FloatTensor<Self>,
        coefficient: FloatTensor<Self>,
        iterations: usize,
    ) -> FloatTensor<Self> {
        let nodes = [a.node(), coefficient.node()];
        record::<Flex, C, 2, _>(nodes, || {
            pinv_forward(
                a.into_primitive(),
                coefficient.into_primitive(),
                iterations,
                true,
            )
        })
    }
}

impl<C: CheckpointStrategy> SegmentMeanOps for Autodiff<Flex, C> {
    fn segment_mean(x: FloatTensor<Self>, rows: SegmentRows<Self>, m: usize) -> FloatTensor<Self> {
        let nodes = [x.node()];
        record::<Flex, C, 1, _>(nodes, || {
            segment_mean_forward(x.into_primitive(), rows.cast(), m)
        })
    }
}

impl<C: CheckpointStrategy> ElementwiseOps for Autodiff<Flex, C> {
    fn dropout(x: FloatTensor<Self>, prob: f64) -> FloatTensor<Self> {
        let nodes = [x.node()];
        record::<Flex, C, 1, _>(nodes, || dropout_forward(x.into_primitive(), prob))
    }

    fn gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let nodes = [x.node()];
        record::<Flex, C, 1, _>(nodes, || {
            let (output, x) = gelu_forward(x.into_primitive());
            (output, SavedGelu(x))
        })
    }
}

impl<C: CheckpointStrategy> LayerNormOps for Autodiff<Flex, C> {
    fn layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let nodes = [x.node(), gamma.node(), beta.node()];
        record::<Flex, C, 3, _>(nodes, || {
            layer_norm_forward(
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                epsilon,
            )
        })
    }
}
