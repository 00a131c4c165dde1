//! Training through the custom kernels: gradients of the fused softmax products and the
//! pseudo-inverse (flex's fused backward; on wgpu the kernels forward and backward kernels from
//! what they keep) against the tensor-op stages they replace
//! and against exact softmax attention, and gradients of the whole attention with and without
//! the kernels, over fixed hard cases and random shapes, lengths and masks; exact attention as the
//! fused flex stage against the explicit softmax, and the softmax baseline with and without it.

mod common;

use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor};
use common::{all_finite, devices, mask, on, randn, relative_diff, tensor, values, wgpu_device};
use nystromformer::attention::explicit_softmax_attention;
use nystromformer::attention::mask::{MASKED_SCORE, zero_rows};
use nystromformer::attention::softmax_kernels::{kernel_b, kernel_f};
use nystromformer::kernels::{
    custom_kernels_apply, fused_landmark_attention, fused_landmark_values, fused_softmax_attention,
};
use nystromformer::{MaskPolicy, NystromHeadsInput, NystromOptions, nystrom_attention};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Tracked copies of `inputs` on `device` (an autodiff device).
fn tracked<const N: usize>(inputs: &[Tensor<4>; N], device: &Device) -> [Tensor<4>; N] {
    inputs.each_ref().map(|x| on(x, device).require_grad())
}

/// The output and the gradients of `Σ output ∘ probe` with respect to `inputs`, on `device`
/// (brought back to flex for comparison).
fn output_and_gradients<const N: usize>(
    inputs: &[Tensor<4>; N],
    probe: &Tensor<4>,
    device: &Device,
    f: impl Fn(&[Tensor<4>; N]) -> Tensor<4>,
) -> (Tensor<4>, [Tensor<4>; N]) {
    let inputs = tracked(inputs, device);
    let out = f(&inputs);
    let grads = (out.clone() * on(probe, device)).sum().backward();
    let flex = Device::flex();
    let gradients = inputs.each_ref().map(|x| {
        let grad = x.grad(&grads).expect("every input is tracked and used");
        on(&grad, &flex)
    });
    (on(&out.inner(), &flex), gradients)
}

/// Asserts that two sets of outputs and gradients agree to `tolerance` (relative).
fn assert_agree<const N: usize>(
    what: &str,
    names: [&str; N],
    result: &(Tensor<4>, [Tensor<4>; N]),
    reference: &(Tensor<4>, [Tensor<4>; N]),
    tolerance: f32,
) {
    let diff = relative_diff(&result.0, &reference.0);
    assert!(diff < tolerance, "{what}: output differs by {diff}");
    for ((name, grad), expected) in names.iter().zip(&result.1).zip(&reference.1) {
        let diff = relative_diff(grad, expected);
        assert!(
            diff < tolerance,
            "{what}: gradient of {name} differs by {diff}"
        );
    }
}

/// Inside a property test: the outputs of `q`, `k`, `v` agree to 1e-4 and their gradients to
/// 1e-3 (relative).
fn prop_agree(
    what: &str,
    result: &(Tensor<4>, [Tensor<4>; 3]),
    reference: &(Tensor<4>, [Tensor<4>; 3]),
) -> Result<(), TestCaseError> {
    let diff = relative_diff(&result.0, &reference.0);
    prop_assert!(diff < 1e-4, "{what}: output differs by {diff}");
    for (name, (grad, expected)) in ["q", "k", "v"]
        .iter()
        .zip(result.1.iter().zip(&reference.1))
    {
        let diff = relative_diff(grad, expected);
        prop_assert!(diff < 1e-3, "{what}: gradient of {name} differs by {diff}");
    }
    Ok(())
}

/// Every device with kernels in this build, as autodiff devices.
fn tracked_devices() -> Vec<(&'static str, Device)> {
    devices()
        .into_iter()
        .map(|(name, device)| (name, device.autodiff()))
        .collect()
}

#[test]
fn kernels_apply_under_autodiff() {
    for (name, device) in tracked_devices() {
        let x = randn([1, 1, 4, 2], 1.0, 1, &device);
        assert!(
            custom_kernels_apply(&x),
            "{name}: tracked f32 takes the kernels"
        );
    }
}

#[test]
fn landmark_values_gradients_match_the_tensor_ops() {
    let [batch, heads, d, m, d_v] = [3, 2, 16, 4, 8];
    // One block of keys, and several with a ragged last one (flex's blocks and the CubeCL
    // backward's chunks are 256 keys).
    for n in [37, 600] {
        let flex = Device::flex();
        let inputs = [
            randn([batch, heads, m, d], 0.5, 20, &flex),
            randn([batch, heads, n, d], 1.0, 21, &flex),
            randn([batch, heads, n, d_v], 1.0, 22, &flex),
        ];
        let probe = randn([batch, heads, m, d_v], 1.0, 23, &flex);
        // Sequence 0 unpadded, 1 padded from n/2 (whole blocks padded when n = 600), 2 fully.
        let padding: Vec<bool> = (0..batch * n)
            .map(|i| (i / n == 1 && i % n >= n / 2) || i / n == 2)
            .collect();
        let missing = [
            vec![false; m],
            vec![false, false, true, false],
            vec![true; m],
        ]
        .concat();
        for (name, device) in tracked_devices() {
            let mask_pad = mask(padding.clone(), [batch, n], &device);
            let missing = mask(missing.clone(), [batch, m], &device);
            for (mask_pad, missing) in [(None, None), (Some(&mask_pad), Some(&missing))] {
                let fused = output_and_gradients(&inputs, &probe, &device, |[q, k, v]| {
                    fused_landmark_values(q, k, v, mask_pad, missing, MASKED_SCORE as f32)
                        .expect("the kernels apply")
                });
                let reference = output_and_gradients(&inputs, &probe, &device, |[q, k, v]| {
                    kernel_b(q.clone(), k.clone(), mask_pad, missing, MASKED_SCORE)
                        .matmul(v.clone())
                });
                let what = format!("{name}, n = {n}, masks {}", mask_pad.is_some());
                assert_agree(&what, ["Q̃", "K", "V"], &fused, &reference, 1e-4);
            }
            // Without masks the product is exact softmax attention of the landmark queries.
            let fused = output_and_gradients(&inputs, &probe, &device, |[q, k, v]| {
                fused_landmark_values(q, k, v, None, None, MASKED_SCORE as f32).unwrap()
            });
            let exact = output_and_gradients(&inputs, &probe, &device, |[q, k, v]| {
                softmax(q.clone().matmul(k.clone().transpose()), 3).matmul(v.clone())
            });
            assert_agree(
                &format!("{name}, n = {n}, exact"),
                ["Q̃", "K", "V"],
                &fused,
                &exact,
                1e-4,
            );
        }
    }
}

#[test]
fn landmark_attention_gradients_match_the_tensor_ops() {
    let [batch, heads, d, m, d_v] = [3, 2, 16, 5, 8];
    // One block of query rows, and several with a ragged last one (flex's blocks are 128 rows,
    // the CubeCL backward's chunks 256).
    for n in [37, 300] {
        let flex = Device::flex();
        let inputs = [
            randn([batch, heads, n, d], 1.0, 6, &flex),
            randn([batch, heads, m, d], 0.5, 7, &flex),
            randn([batch, heads, m, d_v], 1.0, 8, &flex),
        ];
        let probe = randn([batch, heads, n, d_v], 1.0, 9, &flex);
        // Sequence 0: every landmark; 1: two missing; 2: none at all (a fully padded sequence).
        let missing = [
            vec![false; m],
            vec![false, true, false, false, true],
            vec![true; m],
        ]
        .concat();
        for (name, device) in tracked_devices() {
            let missing = mask(missing.clone(), [batch, m], &device);
            for missing in [None, Some(&missing)] {
                let fused = output_and_gradients(&inputs, &probe, &device, |[q, k, w]| {
                    fused_landmark_attention(q, k, w, missing).expect("the kernels apply")
                });
                let reference = output_and_gradients(&inputs, &probe, &device, |[q, k, w]| {
                    kernel_f(q.clone(), k.clone(), missing, MASKED_SCORE).matmul(w.clone())
                });
                let what = format!("{name}, n = {n}, mask {}", missing.is_some());
                assert_agree(&what, ["Q", "K̃", "W"], &fused, &reference, 1e-4);
                if missing.is_some() {
                    let no_landmark = values(&fused.1[0])[2 * heads * n * d..].to_vec();
                    assert!(
                        no_landmark.iter().all(|x| *x == 0.0),
                        "{name}: a query without landmarks gets no gradient"
                    );
                }
            }
        }
    }
}

/// `x` (`[batch, heads, n, d]`, on flex) with NaN in the rows that `padding` (`[batch · n]`,
/// `true` = padding) marks.
fn nan_in_padding(x: Tensor<4>, padding: &[bool]) -> Tensor<4> {
    let [batch, heads, n, d] = x.dims();
    let mut data = values(&x);
    for (i, row) in data.chunks_mut(d).enumerate() {
        if padding[i / (heads * n) * n + i % n] {
            row.fill(f32::NAN);
        }
    }
    tensor(data, [batch, heads, n, d], &x.device())
}

/// Inside a property test: the output and every gradient are finite.
fn prop_finite<const N: usize>(
    what: &str,
    result: &(Tensor<4>, [Tensor<4>; N]),
) -> Result<(), TestCaseError> {
    prop_assert!(all_finite(&result.0), "{what}: the output is not finite");
    for (i, grad) in result.1.iter().enumerate() {
        prop_assert!(all_finite(grad), "{what}: gradient {i} is not finite");
    }
    Ok(())
}

/// The whole attention's output and input gradients with and without the kernels, padded keys
/// scored at `min_float`. Under the leak-free policy the padded rows of Q, K and V hold NaN,
/// which neither path may let through (the CubeCL kernels take those rows as zeros without
/// reading them, flex without letting them reach a result; the tensor ops zero them).
fn attention_case(
    [batch, heads, n, d, m]: [usize; 5],
    valid: &[usize],
    policy: MaskPolicy,
    min_float: f64,
    seed: u64,
    device: &Device,
) -> Result<(), TestCaseError> {
    let flex = Device::flex();
    let padding: Vec<bool> = (0..batch * n).map(|i| i % n >= valid[i / n]).collect();
    let inputs = [seed, seed + 1, seed + 2].map(|seed| {
        let x = randn([batch, heads, n, d], 1.0, seed, &flex);
        match policy {
            MaskPolicy::LeakFree => nan_in_padding(x, &padding),
            MaskPolicy::HfCompatible => x,
        }
    });
    let probe = randn([batch, heads, n, d], 1.0, seed + 3, &flex);
    let run = |kernels: bool| {
        output_and_gradients(&inputs, &probe, device, |[q, k, v]| {
            let input = NystromHeadsInput::self_attention(q.clone(), k.clone(), v.clone())
                .mask_pad(mask(padding.clone(), [batch, n], device));
            let options = NystromOptions::new()
                .with_num_landmarks(m)
                .with_mask_policy(policy)
                .with_min_float(min_float)
                .with_custom_kernels(kernels);
            nystrom_attention(input, &options).context
        })
    };
    let (fused, reference) = (run(true), run(false));
    let what =
        format!("{device:?}, n = {n}, m = {m}, valid {valid:?}, {policy:?}, score {min_float}");
    if policy == MaskPolicy::LeakFree {
        prop_finite(&format!("{what}, kernels"), &fused)?;
        prop_finite(&format!("{what}, tensor ops"), &reference)?;
    }
    prop_agree(&what, &fused, &reference)?;
    Ok(())
}

#[test]
fn attention_gradients_with_and_without_kernels_agree() {
    // Unpadded, ragged, short (at most m valid keys: exact for that sequence, through the
    // weights kernel on CubeCL devices; the last case runs it on lavapipe too), fully padded,
    // and n ≤ m (the exact path; on flex its fused stage, whose dQ once met NaN in a padded key).
    let cases = [
        (50, 8, [50, 17]),
        (130, 64, [130, 9]),
        (40, 8, [0, 40]),
        (3, 5, [1, 3]),
        (48, 16, [48, 7]),
    ];
    let policies = [MaskPolicy::LeakFree, MaskPolicy::HfCompatible];
    for (name, device) in tracked_devices() {
        for (i, (n, m, valid)) in cases.into_iter().enumerate() {
            for (j, policy) in policies.into_iter().enumerate() {
                // Lavapipe emulates the GPU slowly: every case
                // once, under one policy or the other.
                if name != "flex" && (i + j) % 2 == 1 {
                    continue;
                }
                attention_case(
                    [2, 2, n, 16, m],
                    &valid,
                    policy,
                    MASKED_SCORE,
                    n as u64,
                    &device,
                )
                .unwrap();
            }
        }
    }
}

/// A batch padded to its longest sequence: whole chunks of padded keys, which the `B · V`
/// kernel counts into its normaliser in one step instead of scoring each, and padded query
/// rows, which `F · W` and its backward score 0 without a product. Under a masking score mild
/// enough for padded keys to keep a visible weight, so that a miscount shows in the output.
#[test]
fn padded_batches_agree_under_a_mild_masking_score() {
    for (name, device) in tracked_devices() {
        for min_float in [-3.0, MASKED_SCORE] {
            // 500 of 600 keys padded in the second sequence: the kernels' chunks of 256 keys
            // from 256 on are all padding.
            attention_case(
                [2, 1, 600, 16, 16],
                &[600, 100],
                MaskPolicy::LeakFree,
                min_float,
                11,
                &device,
            )
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        }
    }
}

/// Cross-attention with padded queries and keys, NaN in every padded row: the kernels take the
/// queries' padding (in `F · W`) apart from the keys' (in `B · V`), and agree with the tensor
/// ops, finite, forward and backward.
#[test]
fn cross_attention_gradients_agree_with_nan_in_both_paddings() {
    let (batch, heads, n_q, n_k, d, m) = (2, 2, 70, 90, 16, 8);
    let flex = Device::flex();
    let padded = |n: usize, valid: [usize; 2]| -> Vec<bool> {
        (0..batch * n).map(|i| i % n >= valid[i / n]).collect()
    };
    let (query_padding, key_padding) = (padded(n_q, [70, 33]), padded(n_k, [50, 90]));
    let inputs = [
        nan_in_padding(randn([batch, heads, n_q, d], 1.0, 1, &flex), &query_padding),
        nan_in_padding(randn([batch, heads, n_k, d], 1.0, 2, &flex), &key_padding),
        nan_in_padding(randn([batch, heads, n_k, d], 1.0, 3, &flex), &key_padding),
    ];
    let probe = randn([batch, heads, n_q, d], 1.0, 4, &flex);
    for (_, device) in tracked_devices() {
        let run = |kernels: bool| {
            output_and_gradients(&inputs, &probe, &device, |[q, k, v]| {
                let input = NystromHeadsInput::new(q.clone(), k.clone(), v.clone())
                    .mask_pad(mask(key_padding.clone(), [batch, n_k], &device))
                    .mask_pad_query(mask(query_padding.clone(), [batch, n_q], &device));
                let options = NystromOptions::new()
                    .with_num_landmarks(m)
                    .with_custom_kernels(kernels);
                nystrom_attention(input, &options).context
            })
        };
        let (fused, reference) = (run(true), run(false));
        let what = format!("{device:?}");
        prop_finite(&format!("{what}, kernels"), &fused).unwrap();
        prop_finite(&format!("{what}, tensor ops"), &reference).unwrap();
        prop_agree(&what, &fused, &reference).unwrap();
    }
}

/// The kernels' range: head sizes 32 to 128 (`MAX_KERNEL_HEAD_DIM`) and 16 to 256 landmarks
/// (`MAX_KERNEL_LANDMARKS`), each once, forward and gradients. Lavapipe autotunes every new
/// matmul shape for a minute or more: it runs the largest head size there (the stages alone
/// run at m = 256 below, and forward in `custom_kernels.rs`).
#[test]
fn attention_gradients_agree_over_the_kernels_head_sizes_and_landmarks() {
    for (name, device) in tracked_devices() {
        for (d, m) in [(32, 256), (64, 16), (128, 64)] {
            if name == "flex" || d == 128 {
                attention_case(
                    [1, 2, 300, d, m],
                    &[300],
                    MaskPolicy::LeakFree,
                    MASKED_SCORE,
                    40,
                    &device,
                )
                .unwrap();
            }
        }
    }
}

#[test]
fn attention_gradients_agree_over_random_shapes_and_masks() {
    let strategy = (
        1usize..=3,
        1usize..=2,
        2usize..=160,
        1usize..=8,
        1usize..=12,
    )
        .prop_flat_map(|(batch, heads, n, d, m)| {
            (
                Just([batch, heads, n, d, m]),
                proptest::collection::vec(0..=n, batch),
                prop_oneof![Just(MaskPolicy::LeakFree), Just(MaskPolicy::HfCompatible)],
                any::<u64>(),
            )
        });
    for (name, device) in tracked_devices() {
        let cases = if name == "flex" { 16 } else { 2 };
        TestRunner::new(Config::with_cases(cases))
            .run(&strategy, |(dims, valid, policy, seed)| {
                attention_case(
                    dims,
                    &valid,
                    policy,
                    MASKED_SCORE,
                    seed % 1_000_000,
                    &device,
                )
            })
            .unwrap_or_else(|err| panic!("{name}: {err}"));
    }
}

#[test]
fn fused_conv_skip_matches_the_convolution_with_gradients() {
    let flex = Device::flex();
    let heads = 3;
    // Flex's fused loops and the CubeCL kernels, each against Burn's `Conv2d` on its device.
    let mut devices = vec![flex.clone()];
    devices.extend(wgpu_device());
    // Filters shorter than, as long as and longer than the sequence.
    for device in devices {
        // The last: more than one chunk of 16 384 entries per head for the CubeCL taps' gradient.
        for (n, k) in [(40, 5), (9, 9), (6, 35), (300, 33), (1100, 33)] {
            conv_skip_case(&device, heads, n, k, None);
        }
        // Padding at the end and inside, NaN in it, a sequence without any valid row.
        let padding = |n: usize| -> Vec<bool> {
            (0..2 * n)
                .map(|i| i >= n || i % n > n - n / 4 || i % 7 == 3)
                .collect()
        };
        for (n, k) in [(40, 5), (300, 33)] {
            conv_skip_case(&device, heads, n, k, Some(&padding(n)));
        }
    }
}

/// The fused convolution of values with `k` taps on `device` (tracked) against Burn's grouped
/// `Conv2d`, output and gradients. The values are the `[2, heads, n, 8]` head-split view of a
/// `[2, n, heads, 8]` tensor, as the attention passes them, and so is the output's gradient.
/// With `padding` (`[2 · n]`, `true` = padding) the padded rows hold NaN, and the reference
/// zeroes them before the convolution.
fn conv_skip_case(device: &Device, heads: usize, n: usize, k: usize, padding: Option<&[bool]>) {
    use burn::module::Param;
    use burn::nn::PaddingConfig2d;
    use burn::nn::conv::Conv2dConfig;
    use nystromformer::kernels::fused_depthwise_conv;

    let flex = Device::flex();
    let values = randn([2, heads, n, 8], 1.0, n as u64, &flex);
    let values = match padding {
        Some(padding) => nan_in_padding(values, padding),
        None => values,
    };
    let inputs = [
        on(&values.swap_dims(1, 2), device),
        randn([heads, 1, k, 1], 0.3, k as u64, device),
    ];
    let probe = randn([2, n, heads, 8], 1.0, 7, device);
    let device = device.clone().autodiff();
    let mask_pad = padding.map(|padding| mask(padding.to_vec(), [2, n], &device));
    let fused = output_and_gradients(&inputs, &probe, &device, |[v, taps]| {
        fused_depthwise_conv(&v.clone().swap_dims(1, 2), taps, mask_pad.as_ref())
            .expect("the fused convolution applies")
            .swap_dims(1, 2)
    });
    let reference = output_and_gradients(&inputs, &probe, &device, |[v, taps]| {
        let mut conv = Conv2dConfig::new([heads, heads], [k, 1])
            .with_groups(heads)
            .with_padding(PaddingConfig2d::Explicit(k / 2, 0, k / 2, 0))
            .with_bias(false)
            .init(&device);
        conv.weight = Param::from_tensor(taps.clone());
        let v = zero_rows(v.clone().swap_dims(1, 2), mask_pad.as_ref());
        conv.forward(v).swap_dims(1, 2)
    });
    let what = format!("{device:?}, n = {n}, k = {k}, padded {}", padding.is_some());
    prop_finite(&what, &fused).unwrap();
    assert_agree(&what, ["values", "taps"], &fused, &reference, 1e-5);
}

/// Exact attention as the fused flex stage against the explicit `[n_q, n_k]` softmax, output
/// and gradients, for queries and keys of different lengths and `valid` keys per sequence.
fn softmax_attention_case(
    [batch, heads, n_q, n_k, d, d_v]: [usize; 6],
    valid: &[usize],
    seed: u64,
) -> Result<(), TestCaseError> {
    let flex = Device::flex();
    let inputs = [
        randn([batch, heads, n_q, d], 1.0, seed, &flex),
        randn([batch, heads, n_k, d], 1.0, seed + 1, &flex),
        randn([batch, heads, n_k, d_v], 1.0, seed + 2, &flex),
    ];
    let probe = randn([batch, heads, n_q, d_v], 1.0, seed + 3, &flex);
    let padding: Vec<bool> = (0..batch * n_k)
        .map(|i| i % n_k >= valid[i / n_k])
        .collect();
    let device = flex.clone().autodiff();
    let mask_pad = mask(padding.clone(), [batch, n_k], &device);
    let fused = output_and_gradients(&inputs, &probe, &device, |[q, k, v]| {
        fused_softmax_attention(q, k, v, Some(&mask_pad)).expect("flex runs the fused stage")
    });
    // The reference zeroes padded values as the fused stage does, so a sequence without any
    // valid key attends uniformly to zeros: output 0, as documented.
    let reference = output_and_gradients(&inputs, &probe, &device, |[q, k, v]| {
        let v = zero_rows(v.clone(), Some(&mask_pad));
        explicit_softmax_attention(q.clone(), k.clone(), v, Some(&mask_pad)).0
    });
    let what = format!(
        "dims {:?}, valid {valid:?}",
        [batch, heads, n_q, n_k, d, d_v]
    );
    prop_agree(&what, &fused, &reference)?;
    // Untracked, the forward is the same stage on flex itself.
    let [q, k, v] = &inputs;
    let plain =
        fused_softmax_attention(q, k, v, Some(&mask(padding, [batch, n_k], &flex))).unwrap();
    let diff = relative_diff(&plain, &fused.0);
    prop_assert!(diff < 1e-6, "{what}: untracked output differs by {diff}");
    Ok(())
}

#[test]
fn fused_softmax_attention_matches_explicit_softmax_with_gradients() {
    // Several query blocks (256 rows) and key blocks (256 keys), ragged; whole key blocks
    // padded; a sequence without any valid key.
    softmax_attention_case([2, 2, 600, 700, 16, 8], &[700, 300], 1).unwrap();
    softmax_attention_case([2, 1, 257, 513, 8, 12], &[0, 513], 2).unwrap();
    let strategy = (
        1usize..=2,
        1usize..=2,
        1usize..=80,
        1usize..=80,
        1usize..=16,
    )
        .prop_flat_map(|(batch, heads, n_q, n_k, d)| {
            (
                Just([batch, heads, n_q, n_k, d, d + 3]),
                proptest::collection::vec(0..=n_k, batch),
                any::<u64>(),
            )
        });
    TestRunner::new(Config::with_cases(24))
        .run(&strategy, |(dims, valid, seed)| {
            softmax_attention_case(dims, &valid, seed % 1_000_000)
        })
        .unwrap();
}

#[test]
fn the_softmax_baseline_takes_the_fused_stage_with_the_same_gradients() {
    use nystromformer::{AttentionMode, NystromAttentionConfig, NystromInput};

    let device = Device::flex().autodiff();
    let [batch, n, width] = [2, 300, 16];
    let x = randn([batch, n, width], 1.0, 5, &Device::flex());
    let padding: Vec<bool> = (0..batch * n).map(|i| i / n == 1 && i % n >= 100).collect();
    // No dropout: `custom_kernels` switches its mask too.
    let config = NystromAttentionConfig::new(width, 2)
        .with_mode(AttentionMode::Softmax)
        .with_dropout(0.0);
    let attention = config.init(&device);
    let run = |kernels: bool| {
        let mut attention = attention.clone();
        attention.options = attention.options.with_custom_kernels(kernels);
        let x = on(&x, &device).require_grad();
        let input =
            NystromInput::self_attn(x.clone()).mask_pad(mask(padding.clone(), [batch, n], &device));
        let out = attention.forward(input).context;
        let grads = out.clone().sum().backward();
        let weight = attention.query.weight.val().grad(&grads).unwrap();
        (
            values(&out.inner()),
            values(&x.grad(&grads).unwrap()),
            values(&weight),
        )
    };
    let (fused, reference) = (run(true), run(false));
    let close = |a: &[f32], b: &[f32]| {
        let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
        a.iter().zip(b).all(|(a, b)| (a - b).abs() <= 1e-4 * scale)
    };
    assert!(close(&fused.0, &reference.0), "outputs differ");
    assert!(close(&fused.1, &reference.1), "input gradients differ");
    assert!(
        close(&fused.2, &reference.2),
        "query weight gradients differ"
    );
}

#[test]
fn fused_segment_means_match_the_tensor_ops_with_gradients() {
    use nystromformer::attention::landmarks::Segments;
    use nystromformer::kernels::fused_segment_mean;

    let flex = Device::flex();
    let device = flex.clone().autodiff();
    for (n, m) in [(64, 64), (96, 8), (300, 3)] {
        let inputs = [randn([2, 3, n, 5], 1.0, n as u64, &flex)];
        let probe = randn([2, 3, m, 5], 1.0, m as u64, &flex);
        let segments = Segments::new(n, m, None, burn::tensor::FloatDType::F32, &device);
        let fused = output_and_gradients(&inputs, &probe, &device, |[x]| {
            fused_segment_mean(x, &segments).expect("flex runs the fused means")
        });
        let reference =
            output_and_gradients(&inputs, &probe, &device, |[x]| segments.mean(x.clone()));
        assert_agree(
            &format!("n = {n}, m = {m}"),
            ["x"],
            &fused,
            &reference,
            1e-6,
        );
    }
    // Unmasked, with m dividing n, the whole attention takes them (on CubeCL devices the
    // landmarks' kernel, `fused_landmark_means`): same output and gradients. Lavapipe runs one
    // policy.
    let cases = tracked_devices().into_iter().flat_map(|(name, device)| {
        [MaskPolicy::LeakFree, MaskPolicy::HfCompatible]
            .into_iter()
            .filter(move |policy| name == "flex" || *policy == MaskPolicy::LeakFree)
            .map(move |policy| (name, device.clone(), policy))
    });
    for (name, device, policy) in cases {
        let run = |kernels: bool| {
            let inputs = [0, 1, 2].map(|i| randn([2, 2, 192, 16], 1.0, 40 + i, &flex));
            let probe = randn([2, 2, 192, 16], 1.0, 43, &flex);
            output_and_gradients(&inputs, &probe, &device, |[q, k, v]| {
                let input = NystromHeadsInput::self_attention(q.clone(), k.clone(), v.clone());
                let options = NystromOptions::new()
                    .with_num_landmarks(16)
                    .with_mask_policy(policy)
                    .with_custom_kernels(kernels);
                nystrom_attention(input, &options).context
            })
        };
        let what = format!("{name}: attention, {policy:?}");
        assert_agree(&what, ["q", "k", "v"], &run(true), &run(false), 1e-4);
    }
}

/// The landmarks of equal segments as one kernel on CubeCL devices, `[Q̃, Q̃ · scale, K̃ · scale]`,
/// with the gradients of both inputs against the tensor-op means; cross-attention lengths, the
/// queries' gradient the sum over two outputs.
#[test]
fn fused_landmark_means_match_the_tensor_ops_with_gradients() {
    use nystromformer::attention::landmarks::Segments;
    use nystromformer::kernels::fused_landmark_means;

    let flex = Device::flex();
    let [batch, heads, d, m] = [2, 3, 16, 8];
    let [n_q, n_k] = [40, 64];
    let scale = 0.25;
    let inputs = [
        randn([batch, heads, n_q, d], 1.0, 60, &flex),
        randn([batch, heads, n_k, d], 1.0, 61, &flex),
    ];
    // The three outputs side by side along the landmarks.
    let probe = randn([batch, heads, 3 * m, d], 1.0, 62, &flex);
    for (name, device) in tracked_devices().into_iter().filter(|(n, _)| *n != "flex") {
        let segments =
            [n_q, n_k].map(|n| Segments::new(n, m, None, burn::tensor::FloatDType::F32, &device));
        let segments = [&segments[0], &segments[1]];
        let fused = output_and_gradients(&inputs, &probe, &device, |[q, k]| {
            let means = fused_landmark_means(q, k, segments, scale).expect("the kernel applies");
            Tensor::cat(means.to_vec(), 2)
        });
        let reference = output_and_gradients(&inputs, &probe, &device, |[q, k]| {
            let means = |x: &Tensor<4>, n| {
                Segments::new(n, m, None, burn::tensor::FloatDType::F32, &device).mean(x.clone())
            };
            let landmark_queries = means(q, n_q);
            let scaled = [
                landmark_queries.clone().mul_scalar(scale),
                means(k, n_k).mul_scalar(scale),
            ];
            Tensor::cat(
                vec![landmark_queries, scaled[0].clone(), scaled[1].clone()],
                2,
            )
        });
        assert_agree(name, ["q", "k"], &fused, &reference, 1e-5);

        // Only the queries tracked: the keys' mean is a constant of the graph.
        let keys = on(&inputs[1], &device);
        let [q] = tracked(&[inputs[0].clone()], &device);
        let means = fused_landmark_means(&q, &keys, segments, scale).expect("the kernel applies");
        let out = Tensor::cat(means.to_vec(), 2);
        let grads = (out * on(&probe, &device)).sum().backward();
        let grad = on(&q.grad(&grads).expect("q is tracked"), &flex);
        let diff = relative_diff(&grad, &reference.1[0]);
        assert!(
            diff < 1e-5,
            "{name}, keys untracked: gradient of q differs by {diff}"
        );
    }
}

/// The landmarks of ranked segments (a padding mask, or `m` not dividing the length) as one
/// pass on flex and one kernel on CubeCL devices, forward and backward, against the tensor-op
/// means (`Segments::mean`, a weight matrix): holes, left and right padding, a sequence shorter
/// than `m` (empty segments, zero means), a fully padded one, unmasked lengths that `m` does not
/// divide (one row of ranks for the batch), and on CubeCL devices queries and keys cut
/// differently, the queries a strided head split.
#[test]
fn ranked_segment_means_match_the_tensor_ops_with_gradients() {
    use burn::tensor::FloatDType;
    use nystromformer::attention::landmarks::Segments;
    use nystromformer::kernels::{fused_landmark_means, fused_segment_mean};

    let flex = Device::flex();
    let [batch, heads, d, m] = [5, 2, 8, 6];
    let n = 23;
    // Valid lengths 23, 17 (a hole), 4 (< m), 0 and 12 (left padded).
    let padded = |b: usize, j: usize| match b {
        0 => false,
        1 => (5..11).contains(&j),
        2 => j >= 4,
        3 => true,
        _ => j < 11,
    };
    let padding = (0..batch * n)
        .map(|i| padded(i / n, i % n))
        .collect::<Vec<_>>();
    let inputs = [
        randn([batch, heads, n, d], 1.0, 70, &flex),
        randn([batch, heads, 31, d], 1.0, 71, &flex),
    ];
    let probe = randn([batch, heads, m, d], 1.0, 72, &flex);
    for (name, device) in tracked_devices() {
        let mask_pad = mask(padding.clone(), [batch, n], &device);
        let cases = [
            (
                "masked",
                Segments::new(n, m, Some(&mask_pad), FloatDType::F32, &device),
            ),
            (
                "m does not divide n",
                Segments::new(n, m, None, FloatDType::F32, &device),
            ),
        ];
        for (case, segments) in &cases {
            assert!(segments.ranks().is_some(), "{case}: ranked segments");
            let fused = output_and_gradients(&[inputs[0].clone()], &probe, &device, |[x]| {
                fused_segment_mean(x, segments).expect("the fused means apply")
            });
            let reference = output_and_gradients(&[inputs[0].clone()], &probe, &device, |[x]| {
                segments.mean(x.clone())
            });
            assert_agree(&format!("{name}, {case}"), ["x"], &fused, &reference, 1e-5);
        }
        if name == "flex" {
            continue;
        }
        // The queries (a strided head split) masked, the keys (31 of them) unmasked.
        let [q_rows, k] = [inputs[0].clone(), inputs[1].clone()];
        // `[batch, n, heads, d]`, whose head view below is strided.
        let split = |x: &Tensor<4>| x.clone().swap_dims(1, 2);
        let key_segments = Segments::new(31, m, None, FloatDType::F32, &device);
        let segments = [&cases[0].1, &key_segments];
        let scale = 0.5;
        let probe = randn([batch, heads, 3 * m, d], 1.0, 73, &flex);
        let run = |fused: bool| {
            output_and_gradients(&[split(&q_rows), k.clone()], &probe, &device, |[q, k]| {
                let q = q.clone().swap_dims(1, 2);
                let means = match fused {
                    true => fused_landmark_means(&q, k, segments, scale)
                        .expect("the kernel applies")
                        .to_vec(),
                    false => {
                        let queries = segments[0].mean(q.clone());
                        vec![
                            queries.clone(),
                            queries.mul_scalar(scale),
                            segments[1].mean(k.clone()).mul_scalar(scale),
                        ]
                    }
                };
                Tensor::cat(means, 2)
            })
        };
        assert_agree(
            &format!("{name}, landmarks"),
            ["q", "k"],
            &run(true),
            &run(false),
            1e-5,
        );
    }
}

/// Segment boundaries at a million tokens, where `r·m/L` in f32 lands on the wrong side of an
/// integer for some ranks (the kernels correct the estimate against the exact segment starts),
/// and past the 65 535 entries where CubeCL's cumulative sum (which Burn's `arange` uses too)
/// stops being right on lavapipe: every row's segment, read off the means of `x = its segment`
/// and off the gradient, is exact. Unmasked with `m = 256` (not dividing `n`; an f32
/// `r·m/L` rounds up past the integer for six ranks), and with every seventh token padded and
/// `m = 63` (it rounds down for two; padded rows hold 10⁶, which no mean may see).
#[test]
fn ranked_segments_of_a_million_tokens_have_exact_boundaries() {
    use burn::tensor::{FloatDType, TensorData};
    use nystromformer::attention::landmarks::Segments;
    use nystromformer::kernels::fused_segment_mean;

    let flex = Device::flex();
    let n = 1_000_003usize;
    for (m, padded) in [(256usize, false), (63, true)] {
        let is_padded = |j: usize| padded && j % 7 == 3;
        let length = (0..n).filter(|j| !is_padded(*j)).count() as u64;
        // Each row's segment (None for padding), from its rank among the valid rows.
        let mut segment_of = Vec::with_capacity(n);
        let mut rank = 0u64;
        for j in 0..n {
            match is_padded(j) {
                true => segment_of.push(None),
                false => {
                    segment_of.push(Some((rank * m as u64 / length) as usize));
                    rank += 1;
                }
            }
        }
        let mut count = vec![0usize; m];
        segment_of.iter().flatten().for_each(|s| count[*s] += 1);
        let x: Vec<f32> = segment_of
            .iter()
            .map(|s| s.map_or(1e6, |s| s as f32))
            .collect();
        let x = Tensor::<4>::from_data(TensorData::new(x, [1, 1, n, 1]), &flex);
        // The gradient of Σ_s (s + 1) · mean_s: each valid row gets (s + 1) / count_s.
        let probe: Vec<f32> = (0..m).map(|s| s as f32 + 1.0).collect();
        let probe = Tensor::<4>::from_data(TensorData::new(probe, [1, 1, m, 1]), &flex);
        let mask_values: Vec<bool> = (0..n).map(is_padded).collect();
        for (name, device) in tracked_devices() {
            let mask_pad = padded.then(|| mask(mask_values.clone(), [1, n], &device));
            let segments = Segments::new(n, m, mask_pad.as_ref(), FloatDType::F32, &device);
            let (means, [grad]) =
                output_and_gradients(std::array::from_ref(&x), &probe, &device, |[x]| {
                    fused_segment_mean(x, &segments).expect("the fused means apply")
                });
            // One row in the wrong segment moves a mean by 1/count (at least 7e-5 here);
            // rounding (flex multiplies by 1/count) by a few units in the last place of s.
            for (s, mean) in values(&means).iter().enumerate() {
                assert!(
                    (mean - s as f32).abs() < 3e-7 * s as f32 + 1e-6,
                    "{name}, m = {m}, padded {padded}: segment {s}'s mean is {mean}"
                );
            }
            for (j, g) in values(&grad).iter().enumerate() {
                let expected = segment_of[j].map_or(0.0, |s| (s as f32 + 1.0) / count[s] as f32);
                assert!(
                    (g - expected).abs() <= 1e-6 * expected,
                    "{name}, m = {m}, padded {padded}: row {j} got {g}, expected {expected}"
                );
            }
        }
    }
}

#[test]
fn fused_pinv_gradients_match_the_tensor_op_iteration() {
    use nystromformer::PinvInit;
    use nystromformer::attention::iterative_pinv;
    use nystromformer::kernels::fused_pinv;

    let flex = Device::flex();
    // (m, seed, the one iteration count that lavapipe, emulating the GPU slowly, runs)
    let cases = [(1, 3, 0), (7, 4, 6), (64, 5, 1)];
    for ((name, device), (m, seed, lavapipe_iterations)) in tracked_devices()
        .into_iter()
        .flat_map(|device| cases.map(|case| (device.clone(), case)))
    {
        // Row-stochastic like a real A (the gradient flows through the softmax into the
        // scores); the matrices of the batch of different sharpness.
        let inputs = [randn([2, 3, m, m], 1.5, seed, &flex)];
        let probe = randn([2, 3, m, m], 1.0, seed + 1, &flex);
        for init in [PinvInit::Original, PinvInit::Exact] {
            for iterations in [0, 1, 6] {
                if name != "flex" && iterations != lavapipe_iterations {
                    continue;
                }
                let a = |[scores]: &[Tensor<4>; 1]| softmax(scores.clone(), 3);
                let fused = output_and_gradients(&inputs, &probe, &device, |s| {
                    fused_pinv(&a(s), iterations, init).expect("the fused iteration applies")
                });
                let reference = output_and_gradients(&inputs, &probe, &device, |s| {
                    iterative_pinv(a(s), iterations, init)
                });
                let what = format!("{name}, m = {m}, {init:?}, {iterations} iterations");
                assert_agree(&what, ["scores"], &fused, &reference, 1e-3);
            }
        }
    }
}

#[test]
fn fused_landmark_weights_gradients_match_the_tensor_ops() {
    use nystromformer::PinvInit;
    use nystromformer::attention::iterative_pinv;
    use nystromformer::attention::softmax_kernels::kernel_a;
    use nystromformer::kernels::fused_landmark_weights;

    let flex = Device::flex();
    let [batch, heads, d, d_v] = [3, 2, 16, 8];
    // (m, iterations): each size once, as lavapipe emulates the GPU slowly (m = 256 is
    // `the_weights_backward_kernel_takes_its_largest_landmark_count`, ignored by default).
    for (m, iterations) in [(1, 0), (7, 6), (64, 1)] {
        let inputs = [
            randn([batch, heads, m, d], 0.7, 30, &flex),
            randn([batch, heads, m, d], 0.7, 31, &flex),
            randn([batch, heads, m, d_v], 1.0, 32, &flex),
        ];
        let probe = randn([batch, heads, m, d_v], 1.0, 33, &flex);
        // Sequence 0: every landmark; 1: every third missing; 2: none at all.
        let missing: Vec<bool> = (0..batch * m)
            .map(|i| (i / m == 1 && i % m % 3 == 1) || i / m == 2)
            .collect();
        // The kernel runs on CubeCL devices only (flex runs the pseudo-inverse stage alone).
        for (name, device) in tracked_devices().into_iter().filter(|(n, _)| *n != "flex") {
            let missing = mask(missing.clone(), [batch, m], &device);
            for missing in [None, Some(&missing)] {
                let fused = output_and_gradients(&inputs, &probe, &device, |[q, k, v]| {
                    fused_landmark_weights(q, k, v, missing, missing, iterations, PinvInit::Exact)
                        .expect("the kernels apply")
                });
                let reference = output_and_gradients(&inputs, &probe, &device, |[q, k, v]| {
                    let a = kernel_a(q.clone(), k.clone(), missing, missing, MASKED_SCORE);
                    iterative_pinv(a, iterations, PinvInit::Exact).matmul(v.clone())
                });
                let what = format!(
                    "{name}, m = {m}, {iterations} iterations, mask {}",
                    missing.is_some()
                );
                assert_agree(&what, ["Q̃", "K̃", "B V"], &fused, &reference, 1e-3);
            }
        }
    }
}

/// Training in f16 on a CubeCL device runs the kernels forward and backward, and their
/// gradients are at least as close to the f32 result as the f16 tensor ops' are: the kernels keep
/// the softmax statistics (each row's maximum and log-sum, which the backward recomputes the
/// softmax from), the partial gradients and the pseudo-inverse in f32, and round only what they
/// read and write.
#[test]
fn f16_training_runs_the_kernels_as_accurately_as_the_tensor_ops() {
    use burn::tensor::{DType, FloatDType};

    let flex = Device::flex();
    // n > 256: the backward's chunks of keys and of queries. With padding (weighted segments),
    // and without a mask at a length that m divides, where the landmarks' kernel runs too.
    let [batch, heads, d, m] = [2, 2, 32, 16];
    let cases = [(300, Some(280)), (320, None)];
    for ((name, device), (n, valid)) in tracked_devices()
        .into_iter()
        .filter(|(n, _)| *n != "flex")
        .flat_map(|device| cases.map(|case| (device.clone(), case)))
    {
        let inputs = [50, 51, 52].map(|seed| randn([batch, heads, n, d], 1.0, seed, &flex));
        let probe = randn([batch, heads, n, d], 1.0, 53, &flex);
        let name = format!("{name}, n = {n}, valid {valid:?}");
        if !device.supports_dtype(FloatDType::F16) {
            eprintln!("SKIPPED f16 training: {name} has no f16");
            continue;
        }
        let half = randn([1, 1, 4, 2], 1.0, 1, &device).cast(FloatDType::F16);
        assert!(
            custom_kernels_apply(&half),
            "{name}: tracked f16 takes the kernels"
        );

        // Output and input gradients, computed in `dtype` and brought back as f32 on flex.
        let run = |dtype: FloatDType, kernels: bool| {
            let tracked = inputs
                .each_ref()
                .map(|x| on(x, &device).cast(dtype).require_grad());
            let input = NystromHeadsInput::self_attention(
                tracked[0].clone(),
                tracked[1].clone(),
                tracked[2].clone(),
            );
            // The second sequence padded past `valid`.
            let input = match valid {
                Some(valid) => {
                    let padding = (0..batch * n).map(|i| i >= n && i % n >= valid).collect();
                    input.mask_pad(mask(padding, [batch, n], &device))
                }
                None => input,
            };
            let options = NystromOptions::new()
                .with_num_landmarks(m)
                .with_custom_kernels(kernels);
            let context = nystrom_attention(input, &options).context;
            assert_eq!(context.dtype(), DType::from(dtype));
            let loss = (context.clone() * on(&probe, &device).cast(dtype)).sum();
            let grads = loss.backward();
            let back = |x: Tensor<4>| on(&x.cast(FloatDType::F32), &flex);
            let gradients = tracked.map(|x| {
                let grad = x.grad(&grads).expect("every input is tracked and used");
                assert_eq!(grad.dtype(), DType::from(dtype));
                back(grad)
            });
            (back(context.inner()), gradients)
        };
        let reference = run(FloatDType::F32, false);
        let (kernels, tensor_ops) = (run(FloatDType::F16, true), run(FloatDType::F16, false));
        let names = ["output", "dQ", "dK", "dV"];
        let results = |r: &(Tensor<4>, [Tensor<4>; 3])| {
            let [q, k, v] = r.1.clone();
            [r.0.clone(), q, k, v]
        };
        for ((name_of, (kernel, ops)), expected) in names
            .iter()
            .zip(results(&kernels).iter().zip(&results(&tensor_ops)))
            .zip(&results(&reference))
        {
            let (error, ops_error) = (
                relative_diff(kernel, expected),
                relative_diff(ops, expected),
            );
            eprintln!(
                "{name}: f16 {name_of} against f32: kernels {error:e}, tensor ops {ops_error:e}"
            );
            assert!(
                error < 2e-2,
                "{name}: f16 {name_of} with kernels differs by {error}"
            );
            // Kept in f32, the statistics make the kernels the closer of the two (here 0.4–0.65
            // of the tensor ops' difference; a log-sum-exp rounded to f16 took `dV` to 1.2).
            assert!(
                error <= ops_error,
                "{name}: f16 {name_of} with kernels ({error:e}) is less accurate than with tensor \
                 ops ({ops_error:e})"
            );
            // Both round to f16 but sum differently: equal would mean the kernels did not run.
            assert_ne!(
                values(kernel),
                values(ops),
                "{name}: {name_of} took the tensor ops"
            );
        }
    }
}

/// The backward kernels of `B · V` and `F · W` at the most landmarks they take
/// (`MAX_KERNEL_LANDMARKS`), over two chunks of rows, against the tensor ops on flex (lavapipe
/// autotunes every new matmul shape of the tensor ops for minutes).
#[test]
fn the_softmax_backward_kernels_take_their_largest_landmark_count() {
    use nystromformer::kernels::MAX_KERNEL_LANDMARKS;

    let flex = Device::flex().autodiff();
    let [m, n, d] = [MAX_KERNEL_LANDMARKS, 300, 32];
    let landmarks = randn([1, 1, m, d], 0.5, 70, &flex);
    let rows = randn([1, 1, n, d], 1.0, 71, &flex);
    for (name, device) in tracked_devices().into_iter().filter(|(n, _)| *n != "flex") {
        let inputs = [
            landmarks.clone(),
            rows.clone(),
            randn([1, 1, n, d], 1.0, 72, &flex),
        ];
        let probe = randn([1, 1, m, d], 1.0, 73, &flex);
        let fused = output_and_gradients(&inputs, &probe, &device, |[q, k, v]| {
            fused_landmark_values(q, k, v, None, None, MASKED_SCORE as f32).expect("applies")
        });
        let reference = output_and_gradients(&inputs, &probe, &flex, |[q, k, v]| {
            kernel_b(q.clone(), k.clone(), None, None, MASKED_SCORE).matmul(v.clone())
        });
        let what = format!("{name}, B · V, m = {m}");
        assert_agree(&what, ["Q̃", "K", "V"], &fused, &reference, 1e-4);

        let inputs = [
            rows.clone(),
            landmarks.clone(),
            randn([1, 1, m, d], 1.0, 74, &flex),
        ];
        let probe = randn([1, 1, n, d], 1.0, 75, &flex);
        let fused = output_and_gradients(&inputs, &probe, &device, |[q, k, w]| {
            fused_landmark_attention(q, k, w, None).expect("applies")
        });
        let reference = output_and_gradients(&inputs, &probe, &flex, |[q, k, w]| {
            kernel_f(q.clone(), k.clone(), None, MASKED_SCORE).matmul(w.clone())
        });
        let what = format!("{name}, F · W, m = {m}");
        assert_agree(&what, ["Q", "K̃", "W"], &fused, &reference, 1e-4);
    }
}

/// The backward kernel of `W = A⁺ (B V)` at the most landmarks it takes, through six
/// iterations, against the tensor ops on flex. Ignored by default: at m = 256 each unit's
/// unrolled blocks make the kernel so large that llvmpipe spent about 14 minutes compiling it
/// (on 2026-11-30; a second run, with Mesa's shader cache in `~/.cache` warm, passed in 78 s).
/// Run it with `cargo test --release --workspace --test fused_gradients -- --ignored`.
#[test]
#[ignore = "llvmpipe compiles this kernel for about 14 minutes; run with --ignored"]
fn the_weights_backward_kernel_takes_its_largest_landmark_count() {
    use nystromformer::PinvInit;
    use nystromformer::attention::iterative_pinv;
    use nystromformer::attention::softmax_kernels::kernel_a;
    use nystromformer::kernels::{MAX_KERNEL_LANDMARKS, fused_landmark_weights};

    let flex = Device::flex().autodiff();
    let [m, d] = [MAX_KERNEL_LANDMARKS, 32];
    let inputs = [
        randn([1, 1, m, d], 0.5, 76, &flex),
        randn([1, 1, m, d], 0.5, 77, &flex),
        randn([1, 1, m, d], 1.0, 78, &flex),
    ];
    let probe = randn([1, 1, m, d], 1.0, 79, &flex);
    let reference = output_and_gradients(&inputs, &probe, &flex, |[q, k, v]| {
        let a = kernel_a(q.clone(), k.clone(), None, None, MASKED_SCORE);
        iterative_pinv(a, 6, PinvInit::Exact).matmul(v.clone())
    });
    for (name, device) in tracked_devices().into_iter().filter(|(n, _)| *n != "flex") {
        let fused = output_and_gradients(&inputs, &probe, &device, |[q, k, v]| {
            fused_landmark_weights(q, k, v, None, None, 6, PinvInit::Exact).expect("applies")
        });
        let what = format!("{name}, W, m = {m}");
        assert_agree(&what, ["Q̃", "K̃", "B V"], &fused, &reference, 1e-3);
    }
}

/// HF's layout with a sequence that is all padding: its rows score every key at the masked
/// score, a uniform softmax. The kernels' backward once recomputed it from a log-sum-exp
/// `-1e9 + ln n`, which f32 rounds to `-1e9`, and gave each key weight 1 instead of `1/n`
/// (`dV` n times too large); the random shapes above drew it only now and then.
#[test]
fn a_sequence_of_padding_alone_takes_the_same_gradients_in_hf_layout() {
    for (name, device) in tracked_devices() {
        for valid in [[0, 0, 0], [0, 7, 2]] {
            attention_case(
                [3, 2, 7, 3, 4],
                &valid,
                MaskPolicy::HfCompatible,
                MASKED_SCORE,
                11,
                &device,
            )
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        }
    }
}

/// A masking score far below `-1e9` (`min_float` takes any finite negative value): the kernels'
/// running maximum starts at `-1e30`, below which a masked score once weighed nothing even for a
/// row with no other key, leaving it `0 / 0`.
#[test]
fn a_masking_score_below_the_kernels_start_gives_the_same_results() {
    for (name, device) in tracked_devices() {
        for min_float in [-1e35, f64::from(f32::MIN)] {
            attention_case(
                [3, 2, 7, 3, 4],
                &[0, 7, 2],
                MaskPolicy::HfCompatible,
                min_float,
                5,
                &device,
            )
            .unwrap_or_else(|err| panic!("{name}, min_float {min_float}: {err}"));
        }
    }
}
