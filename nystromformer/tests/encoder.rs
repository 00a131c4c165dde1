//! The encoder and its heads: the attention switch, pre/post-norm, pooling and shapes.

mod common;

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use common::{devices, max_abs_diff, randn};
use nystromformer::AttentionMode;
use nystromformer::model::{
    EncoderInput, NystromformerConfig, NystromformerForMaskedLM,
    NystromformerForSequenceClassification, Pooling,
};

fn ids(batch: usize, n: usize, device: &Device) -> Tensor<2, Int> {
    let values: Vec<i64> = (0..batch * n).map(|i| (i * 7 % 29) as i64).collect();
    Tensor::from_data(TensorData::new(values, [batch, n]), device)
}

fn config() -> NystromformerConfig {
    NystromformerConfig::new(30, 16, 2, 2, 32)
        .with_num_landmarks(4)
        .with_conv_kernel_size(Some(3))
}

/// The switch changes only the attention: with `m ≥ n` the Nyström path is exact, so both
/// modes give the same encoder output from the same weights; with `m < n` they differ.
#[test]
fn softmax_switch_shares_everything_but_the_attention() {
    for (name, device) in devices() {
        let nystrom = config().with_num_landmarks(12).init(&device);
        let mut softmax = nystrom.clone();
        for layer in &mut softmax.layers {
            layer.attention.mode = AttentionMode::Softmax;
        }
        let input = EncoderInput::new(ids(2, 12, &device));
        let err = max_abs_diff(
            &nystrom.forward(input.clone()),
            &softmax.forward(input.clone()),
        );
        assert!(
            err < 1e-4,
            "{name}: exact Nyström vs softmax differ by {err}"
        );

        let mut approximate = nystrom.clone();
        for layer in &mut approximate.layers {
            layer.attention.options.num_landmarks = 3;
        }
        let diff = max_abs_diff(&approximate.forward(input.clone()), &softmax.forward(input));
        assert!(
            diff > 1e-4,
            "{name}: 3 landmarks for 12 tokens should approximate, not equal"
        );
    }
}

#[test]
fn pre_norm_adds_a_final_norm_and_changes_the_output() {
    let device = Device::flex();
    let post = config().init(&device);
    let pre = config().with_norm_first(true).init(&device);
    assert!(post.final_norm.is_none() && pre.final_norm.is_some());
    let input = EncoderInput::new(ids(1, 10, &device));
    let (a, b) = (post.forward(input.clone()), pre.forward(input));
    assert_eq!(a.dims(), [1, 10, 16]);
    assert_eq!(b.dims(), [1, 10, 16]);
    assert!(max_abs_diff(&a, &b) > 1e-3);
}

#[test]
fn mean_pooling_ignores_padded_positions() {
    let device = Device::flex();
    let x = randn([2, 5, 3], 1.0, 31, &device);
    let mask = Tensor::<2, Bool>::from_bool(
        TensorData::new(
            vec![
                false, false, true, true, true, false, false, false, false, false,
            ],
            [2, 5],
        ),
        &device,
    );
    let pooled = Pooling::Mean.forward(x.clone(), Some(&mask));
    let first_two = x
        .clone()
        .narrow(0, 0, 1)
        .narrow(1, 0, 2)
        .mean_dim(1)
        .reshape([1, 3]);
    assert!(max_abs_diff(&pooled.clone().narrow(0, 0, 1), &first_two) < 1e-6);
    let whole = x.clone().narrow(0, 1, 1).mean_dim(1).reshape([1, 3]);
    assert!(max_abs_diff(&pooled.narrow(0, 1, 1), &whole) < 1e-6);
    let first = Pooling::First.forward(x.clone(), Some(&mask));
    assert!(max_abs_diff(&first, &x.narrow(1, 0, 1).reshape([2, 3])) == 0.0);
}

#[test]
fn heads_have_their_shapes_and_a_padding_mask_is_accepted() {
    for (name, device) in devices() {
        let classifier =
            NystromformerForSequenceClassification::new(&config(), 5, Pooling::Mean, &device);
        let mlm = NystromformerForMaskedLM::new(&config(), &device);
        let mask = ids(3, 9, &device).greater_elem(20);
        let input = EncoderInput::new(ids(3, 9, &device)).mask_pad(mask);
        assert_eq!(classifier.forward(input.clone()).dims(), [3, 5], "{name}");
        let logits = mlm.forward(input);
        assert_eq!(logits.dims(), [3, 9, 30], "{name}");
        assert!(common::all_finite(&logits), "{name}");
    }
}

#[test]
#[should_panic(expected = "exceeds max_position_embeddings")]
fn too_long_input_is_a_clear_error() {
    let device = Device::flex();
    let encoder = config().with_max_position_embeddings(8).init(&device);
    encoder.forward(EncoderInput::new(ids(1, 9, &device)));
}

#[test]
#[should_panic(expected = "must be odd")]
fn even_conv_kernel_is_rejected_by_the_config() {
    config()
        .with_conv_kernel_size(Some(4))
        .init(&Device::flex());
}
