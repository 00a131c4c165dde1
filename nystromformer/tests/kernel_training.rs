//! Training through the custom kernels: a few AdamW steps of a small classifier from the same
//! weights on the same batches, with and without the kernels, on every device that has them
//! (flex's fused stages; on wgpu the CubeCL kernels forward and backward), give
//! the same losses step by step.

mod common;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use common::{devices, mask};
use nystromformer::model::{
    EncoderInput, NystromformerConfig, NystromformerForSequenceClassification, Pooling,
};

const BATCH: usize = 4;
const N: usize = 24;
const CLASSES: usize = 3;
const STEPS: usize = 4;

/// Fewer landmarks than tokens (the approximation, every kernel on its path); no dropout, whose
/// draws differ between the paths.
fn config(custom_kernels: bool) -> NystromformerConfig {
    NystromformerConfig::new(30, 16, 1, 2, 32)
        .with_num_landmarks(4)
        .with_conv_kernel_size(Some(3))
        .with_hidden_dropout_prob(0.0)
        .with_attention_probs_dropout_prob(0.0)
        .with_norm_first(true)
        .with_custom_kernels(custom_kernels)
}

/// The same batch at every step: token ids, the padding (sequence 1 ragged, 3 short) and labels.
fn batch(device: &Device) -> (EncoderInput, Tensor<1, Int>) {
    let valid = [N, 17, N, 5];
    let ids: Vec<i64> = (0..BATCH * N).map(|i| (i * 7 % 29 + 1) as i64).collect();
    let padding = (0..BATCH * N).map(|i| i % N >= valid[i / N]).collect();
    let input = EncoderInput::new(Tensor::from_data(TensorData::new(ids, [BATCH, N]), device))
        .mask_pad(mask(padding, [BATCH, N], device));
    let labels = Tensor::from_data(TensorData::new(vec![0i64, 1, 2, 1], [BATCH]), device);
    (input, labels)
}

/// The loss before each of [`STEPS`] AdamW steps from `model`'s weights, on `device`.
fn losses(model: NystromformerForSequenceClassification, device: &Device) -> Vec<f32> {
    let mut model = model.fork(device);
    let mut optimizer = AdamWConfig::new().init();
    let (input, labels) = batch(device);
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    (0..STEPS)
        .map(|_| {
            let loss = loss_fn.forward(model.forward(input.clone()), labels.clone());
            let value = loss.clone().into_scalar::<f32>();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(1e-3, model.clone(), grads);
            value
        })
        .collect()
}

#[test]
fn training_steps_with_and_without_kernels_give_the_same_losses() {
    for (name, device) in devices() {
        let device = device.autodiff();
        let flex = Device::flex().autodiff();
        let weights = NystromformerForSequenceClassification::new(
            &config(true),
            CLASSES,
            Pooling::Mean,
            &flex,
        );
        let without = NystromformerForSequenceClassification::new(
            &config(false),
            CLASSES,
            Pooling::Mean,
            &flex,
        )
        .load_record(weights.clone().into_record());
        let fused = losses(weights, &device);
        let reference = losses(without, &device);
        for (step, (fused, reference)) in fused.iter().zip(&reference).enumerate() {
            assert!(
                (fused - reference).abs() <= 1e-4 * reference.abs().max(1.0),
                "{name}: step {step}: loss {fused} with the kernels, {reference} without"
            );
        }
        assert!(
            fused[STEPS - 1] < fused[0],
            "{name}: the steps train: {fused:?}"
        );
    }
}
