//! A fused forward recorded on Burn's autodiff graph with a hand-written backward: the
//! `Autodiff` implementations of the extension traits (`flex/autodiff.rs`, `cube/autodiff.rs`)
//! run their backend's fused forward, keep what its backward needs, and give each input its
//! gradient from that.

use std::marker::PhantomData;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, NodeGuard, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend};

/// What a fused forward on `B` keeps for its backward, which gives the gradients of its `N`
/// inputs (an untracked input's is computed and dropped).
pub trait SavedForward<B: Backend, const N: usize>:
    Clone + Send + std::fmt::Debug + 'static
{
    /// The gradients of the inputs for the gradient `grad` of the output.
    fn backward(self, grad: FloatTensor<B>) -> [FloatTensor<B>; N];
}

/// The backward step of a fused forward whose state is `S`.
struct FusedBackward<B, S>(PhantomData<fn() -> (B, S)>);

impl<B, S> std::fmt::Debug for FusedBackward<B, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(std::any::type_name::<S>())
    }
}

impl<B: Backend, const N: usize, S: SavedForward<B, N>> Backward<B, N> for FusedBackward<B, S> {
    type State = S;

    fn backward(
        self,
        ops: Ops<Self::State, N>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad = grads.consume::<B>(&ops.node);
        let input_grads = ops.state.backward(grad);
        for (parent, grad) in ops.parents.into_iter().zip(input_grads) {
            if let Some(parent) = parent {
                grads.register::<B>(parent.id, grad);
            }
        }
    }
}

/// Runs `forward` (which returns its output and what its backward needs) and, when any of
/// `nodes` is tracked, records its backward.
pub fn record<B: Backend, C: CheckpointStrategy, const N: usize, S: SavedForward<B, N>>(
    nodes: [NodeGuard; N],
    forward: impl FnOnce() -> (FloatTensor<B>, S),
) -> FloatTensor<Autodiff<B, C>> {
    match FusedBackward::<B, S>(PhantomData)
        .prepare::<C>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (output, saved) = forward();
            prep.finish(saved, output)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward().0),
    }
}
