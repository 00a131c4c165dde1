//! The fused elementwise steps of a training step on flex (`kernels::dropout`, `kernels::gelu`,
//! `kernels::layer_norm`) against what they replace: burn-nn's `Dropout` semantics, Burn's exact
//! GELU and burn-nn's `LayerNorm`, forward and gradients, and the whole encoder with and without
//! them.

mod common;

use burn::module::{Module, Param};
use burn::nn::{DropoutConfig, LayerNorm, LayerNormConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, FloatDType, Int, Tensor};
use common::{max_abs_diff, randn, values};
use nystromformer::kernels;
use nystromformer::model::{EncoderInput, NystromformerConfig};

fn tracked_flex() -> Device {
    Device::flex().autodiff()
}

/// The output of `f` and the gradient of `Σ output ∘ probe` with respect to `x`.
fn output_and_gradient<const D: usize>(
    x: &Tensor<D>,
    probe: &Tensor<D>,
    f: impl Fn(Tensor<D>) -> Tensor<D>,
) -> (Vec<f32>, Vec<f32>) {
    let x = x.clone().require_grad();
    let out = f(x.clone());
    let grads = (out.clone() * probe.clone()).sum().backward();
    let grad = x.grad(&grads).expect("x is tracked and used");
    (values(&out.inner()), values(&grad))
}

#[test]
fn gelu_matches_burns_forward_and_gradient() {
    let device = tracked_flex();
    // Wide enough to reach the tails where `erf` saturates.
    let x = randn([3, 37, 129], 3.0, 1, &device);
    let probe = randn([3, 37, 129], 1.0, 2, &device);
    let fused = output_and_gradient(&x, &probe, |x| kernels::gelu(x, true));
    let reference = output_and_gradient(&x, &probe, gelu);
    for (what, a, b) in [
        ("output", &fused.0, &reference.0),
        ("gradient", &fused.1, &reference.1),
    ] {
        let worst = a
            .iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
            .fold(0.0f32, f32::max);
        assert!(worst < 2e-6, "{what} differs by {worst}");
    }
    // Untracked flex takes the fused forward too.
    let plain = x.inner();
    let diff = max_abs_diff(&kernels::gelu(plain.clone(), true), &gelu(plain));
    assert!(diff < 2e-6, "untracked forward differs by {diff}");
}

#[test]
fn layer_norm_matches_burns_forward_and_gradients() {
    // Flex fuses it forward and backward; CubeCL devices run a kernel each way. Widths below,
    // at and above the CubeCL kernel's 64 units per row, and a row count that leaves its last
    // cube of 32 rows part-empty.
    let mut devices = vec![tracked_flex()];
    devices.extend(common::wgpu_device().map(Device::autodiff));
    for device in devices {
        for d in [48, 64, 130] {
            layer_norm_case(&device, d);
        }
    }
    // Rows wider than the CubeCL kernel's registers hold run as tensor ops there.
    if let Some(device) = common::wgpu_device() {
        let width = kernels::MAX_KERNEL_LAYER_NORM_WIDTH;
        let fits = |d: usize| {
            let norm = LayerNormConfig::new(d).init(&device);
            kernels::layer_norm_fuses(&norm, &Tensor::<3>::zeros([1, 2, d], &device))
        };
        assert_eq!(fits(width), cfg!(feature = "cube-kernels"));
        assert!(!fits(width + 1));
    }
}

/// The fused LayerNorm of width `d` on `device` (tracked) against burn-nn's, forward and the
/// gradients of the input, `γ` and `β`; with f16 too on CubeCL devices.
fn layer_norm_case(device: &Device, d: usize) {
    let epsilon = 1e-5;
    let mut norm = LayerNormConfig::new(d).with_epsilon(epsilon).init(device);
    // Parameters away from their initial ones, so that their gradients and roles show.
    norm.gamma = Param::from_tensor(randn([d], 0.3, 6, device) + 1.0);
    norm.beta = Some(Param::from_tensor(randn([d], 0.3, 7, device)));
    let x = randn([5, 131, d], 2.0, 8, device) + 3.0;
    let probe = randn([5, 131, d], 1.0, 9, device);
    let on_cube = device.clone().inner() != Device::flex();
    // The devices here are tracked: fused only with the `autodiff` feature.
    let fuses = cfg!(feature = "autodiff")
        && match on_cube {
            true => cfg!(feature = "cube-kernels"),
            false => cfg!(feature = "flex-kernels"),
        };
    assert_eq!(kernels::layer_norm_fuses(&norm, &x), fuses, "{device:?}");
    let run = |norm: &LayerNorm, x: &Tensor<3>, fused: bool| {
        let x = x.clone().require_grad();
        let out = kernels::layer_norm(norm, x.clone(), epsilon, fused);
        let grads = (out.clone() * probe.clone().cast(out.dtype()))
            .sum()
            .backward();
        let beta = norm.beta.as_ref().expect("a bias").val();
        [out.inner(), x.grad(&grads).expect("tracked")]
            .map(|t| values(&t.cast(FloatDType::F32)))
            .into_iter()
            .chain(
                [norm.gamma.val(), beta]
                    .map(|p| values(&p.grad(&grads).expect("tracked").cast(FloatDType::F32))),
            )
            .collect::<Vec<_>>()
    };
    let reference = run(&norm, &x, false);
    let mut cases = vec![("f32", run(&norm, &x, true), 2e-5)];
    if on_cube && device.supports_dtype(FloatDType::F16) {
        let half = norm.clone().map(&mut HalfPrecision);
        let x_half = x.clone().cast(FloatDType::F16);
        assert_eq!(kernels::layer_norm_fuses(&half, &x_half), fuses);
        cases.push(("f16", run(&half, &x_half, true), 2e-2));
    }
    for (dtype, fused, tolerance) in cases {
        for (what, (a, b)) in ["output", "x", "gamma", "beta"]
            .iter()
            .zip(fused.iter().zip(&reference))
        {
            let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            let worst = a
                .iter()
                .zip(b)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                worst < tolerance * scale,
                "{device:?}, d {d}, {dtype}: {what} differs by {worst} (scale {scale})"
            );
        }
    }
    // A transposed view as input, and the gradient of a plain sum (a broadcast, stride 0).
    let transposed = randn([5, d, 131], 2.0, 10, device).swap_dims(1, 2);
    let sum_gradient = |fused: bool| {
        let x = transposed.clone().require_grad();
        let out = kernels::layer_norm(&norm, x.clone(), epsilon, fused);
        let grads = out.clone().sum().backward();
        [out.inner(), x.grad(&grads).expect("tracked")].map(|t| values(&t))
    };
    let (fused, expected) = (sum_gradient(true), sum_gradient(false));
    for (what, (a, b)) in ["output", "x"].iter().zip(fused.iter().zip(&expected)) {
        let worst = a
            .iter()
            .zip(b)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            worst < 1e-4,
            "{device:?}, d {d}, transposed: {what} differs by {worst}"
        );
    }

    // Untracked, the fused forward alone.
    let plain = x.inner();
    let norm = norm.valid();
    let diff = max_abs_diff(
        &kernels::layer_norm(&norm, plain.clone(), epsilon, true),
        &norm.forward(plain),
    );
    assert!(
        diff < 2e-5 * 4.0,
        "{device:?}, d {d}: untracked forward differs by {diff}"
    );
}

/// Casts a module's float parameters to f16, as new tracked parameters.
struct HalfPrecision;

impl burn::module::ModuleMapper for HalfPrecision {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        // A new leaf, tracked like the original.
        Param::from_tensor(param.val().cast(FloatDType::F16).detach())
    }
}

#[test]
fn dropout_zeroes_a_share_scales_the_rest_and_its_gradient_follows_the_mask() {
    let device = tracked_flex();
    let prob = 0.3;
    let layer = DropoutConfig::new(prob).init();
    let x = randn([4, 100, 250], 1.0, 3, &device).abs() + 0.5;
    let probe = randn([4, 100, 250], 1.0, 4, &device);
    let (out, grad) = output_and_gradient(&x, &probe, |x| kernels::dropout(&layer, x, true));
    let (x, probe) = (values(&x), values(&probe));
    let scale = 1.0 / (1.0 - prob) as f32;
    let mut kept = 0;
    for i in 0..x.len() {
        if out[i] == 0.0 {
            assert_eq!(grad[i], 0.0, "a dropped element passes no gradient");
        } else {
            kept += 1;
            assert!((out[i] - x[i] * scale).abs() <= 1e-6 * out[i].abs());
            assert!((grad[i] - probe[i] * scale).abs() <= 1e-6 * grad[i].abs().max(1.0));
        }
    }
    let n = x.len() as f64;
    let sigma = (n * prob * (1.0 - prob)).sqrt();
    assert!(
        (kept as f64 - n * (1.0 - prob)).abs() < 5.0 * sigma,
        "kept {kept} of {n}"
    );
}

#[test]
fn dropout_repeats_under_a_seed_and_differs_between_calls() {
    let device = tracked_flex();
    let layer = DropoutConfig::new(0.5).init();
    let x = Tensor::<2>::ones([64, 64], &device);
    let draw = || values(&kernels::dropout(&layer, x.clone(), true).inner());
    device.seed(17);
    let (first, second) = (draw(), draw());
    device.seed(17);
    assert_eq!(first, draw(), "the same seed gives the same mask");
    assert_ne!(first, second, "each call draws a new mask");
}

#[test]
fn dropout_is_the_identity_where_burns_is() {
    let layer = DropoutConfig::new(0.5).init();
    let x = randn([8, 32], 1.0, 5, &Device::flex());
    // Not on an autodiff device.
    assert_eq!(
        values(&kernels::dropout(&layer, x.clone(), true)),
        values(&x)
    );
    // Not training.
    let tracked = x.clone().to_device(&tracked_flex());
    let frozen = layer.clone().freeze();
    let frozen = kernels::dropout(&frozen, tracked.clone(), true);
    let reference = layer.freeze().forward(tracked);
    assert_eq!(values(&frozen), values(&reference));
}

#[test]
fn encoder_agrees_with_and_without_the_fused_steps() {
    // Without dropout: the fused GELU and LayerNorms against Burn's, through two layers and
    // gradients, in both layouts (post-norm with the embeddings' norm, pre-norm with the final
    // norm).
    for norm_first in [false, true] {
        encoder_agrees(norm_first);
    }
}

fn encoder_agrees(norm_first: bool) {
    let device = tracked_flex();
    let config = NystromformerConfig::new(50, 32, 2, 2, 64)
        .with_num_landmarks(8)
        .with_conv_kernel_size(Some(5))
        .with_norm_first(norm_first)
        .with_embedding_layer_norm(!norm_first)
        .with_hidden_dropout_prob(0.0)
        .with_intermediate_dropout_prob(0.0)
        .with_attention_probs_dropout_prob(0.0);
    let fused = config.init(&device);
    let plain = config
        .clone()
        .with_custom_kernels(false)
        .init(&device)
        .load_record(fused.clone().into_record());
    let ids = Tensor::<2, Int>::from_data([[3, 7, 1, 9, 4, 4, 2, 8, 11, 5, 6, 0]], &device);
    let run = |encoder: &nystromformer::model::NystromformerEncoder| {
        let out = encoder.forward(EncoderInput::new(ids.clone()));
        let grads = out.clone().powi_scalar(2).sum().backward();
        let weight = &encoder.layers[0].intermediate.weight;
        (out.inner(), weight.grad(&grads).expect("tracked"))
    };
    let (out_a, grad_a) = run(&fused);
    let (out_b, grad_b) = run(&plain);
    let (out_diff, grad_diff) = (max_abs_diff(&out_a, &out_b), max_abs_diff(&grad_a, &grad_b));
    assert!(
        out_diff < 1e-4,
        "norm_first {norm_first}: output differs by {out_diff}"
    );
    assert!(
        grad_diff < 1e-3,
        "norm_first {norm_first}: gradient differs by {grad_diff}"
    );
}
