//! Training through the fused flex stages: [`LandmarkSoftmaxOps`] and [`DepthwiseConvOps`] for
//! `Autodiff<Flex>`. A tracked
//! call runs the fused forward and keeps its inputs, output and each row's softmax statistics; the backward
//! recomputes the softmax block by block from them ([`super::backward`]). The masks are
//! constants.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, NodeGuard, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Flex};

use super::{
    SavedConv, SavedProduct, attention_forward, conv_backward, conv_forward, product_backward,
    values_forward,
};
use crate::kernels::extension::{DepthwiseConvOps, LandmarkSoftmaxOps};

/// The backward of either product: three inputs, the saved forward as state.
#[derive(Debug)]
struct ProductBackward;

impl Backward<Flex, 3> for ProductBackward {
    type State = SavedProduct;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad = grads.consume::<Flex>(&ops.node);
        let input_grads = product_backward(ops.state, grad);
        for (parent, grad) in ops.parents.into_iter().zip(input_grads) {
            if let Some(parent) = parent {
                grads.register::<Flex>(parent.id, grad);
            }
        }
    }
}

/// Runs `forward` and, when any of `nodes` is tracked, records its backward.
fn record<C: CheckpointStrategy>(
    nodes: [NodeGuard; 3],
    forward: impl FnOnce() -> SavedProduct,
) -> FloatTensor<Autodiff<Flex, C>> {
    match ProductBackward
        .prepare::<C>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let saved = forward();
            let output = saved.output.clone();
            prep.finish(saved, output)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward().output),
    }
}

impl<C: CheckpointStrategy> LandmarkSoftmaxOps for Autodiff<Flex, C> {
    fn landmark_values(
        landmark_queries: FloatTensor<Self>,
        keys: FloatTensor<Self>,
        values: FloatTensor<Self>,
        padding: FloatTensor<Self>,
        missing: FloatTensor<Self>,
        masked_score: f32,
    ) -> FloatTensor<Self> {
        let nodes = [landmark_queries.node(), keys.node(), values.node()];
        let forward = || {
            values_forward(
                landmark_queries.into_primitive(),
                keys.into_primitive(),
                values.into_primitive(),
                padding.into_primitive(),
                missing.into_primitive(),
                masked_score,
            )
        };
        record::<C>(nodes, forward)
    }

    fn landmark_attention(
        queries: FloatTensor<Self>,
        landmark_keys: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        missing: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let nodes = [queries.node(), landmark_keys.node(), weights.node()];
        let forward = || {
            attention_forward(
                queries.into_primitive(),
                landmark_keys.into_primitive(),
                weights.into_primitive(),
                missing.into_primitive(),
            )
        };
        record::<C>(nodes, forward)
    }
}

/// The backward of the depthwise convolution: values and taps, the saved forward as state.
#[derive(Debug)]
struct ConvBackward;

impl Backward<Flex, 2> for ConvBackward {
    type State = SavedConv;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad = grads.consume::<Flex>(&ops.node);
        let input_grads = conv_backward(ops.state, grad);
        for (parent, grad) in ops.parents.into_iter().zip(input_grads) {
            if let Some(parent) = parent {
                grads.register::<Flex>(parent.id, grad);
            }
        }
    }
}

impl<C: CheckpointStrategy> DepthwiseConvOps for Autodiff<Flex, C> {
    fn depthwise_conv(values: FloatTensor<Self>, taps: FloatTensor<Self>) -> FloatTensor<Self> {
        let nodes = [values.node(), taps.node()];
        let forward = || conv_forward(values.into_primitive(), taps.into_primitive());
        match ConvBackward.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let saved = forward();
                let output = saved.output.clone();
                prep.finish(saved, output)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward().output),
        }
    }
}
