//! Padding-mask properties over random shapes, lengths and masks (proptest), on every backend.

mod common;

use burn::tensor::{Bool, Device, Tensor, TensorData};
use common::{all_finite, proptest_on_devices, randn, values};
use nystromformer::{NystromAttention, NystromAttentionConfig, NystromInput};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Case {
    batch: usize,
    n: usize,
    landmarks: usize,
    heads: usize,
    head_dim: usize,
    conv: Option<usize>,
    /// `[batch][n]`, `true` = padding; rows may be fully padded.
    mask: Vec<Vec<bool>>,
    seed: u64,
}

fn cases() -> impl Strategy<Value = Case> {
    (
        1usize..=3,
        1usize..=24,
        1usize..=8,
        1usize..=2,
        prop_oneof![Just(2usize), Just(4)],
        prop_oneof![Just(None), Just(Some(3usize)), Just(Some(5))],
        any::<u64>(),
    )
        .prop_flat_map(|(batch, n, landmarks, heads, head_dim, conv, seed)| {
            let row = prop_oneof![
                // Mostly random padding; sometimes none, sometimes everything.
                6 => proptest::collection::vec(proptest::bool::weighted(0.35), n),
                1 => Just(vec![false; n]),
                1 => Just(vec![true; n]),
            ];
            proptest::collection::vec(row, batch).prop_map(move |mask| Case {
                batch,
                n,
                landmarks,
                heads,
                head_dim,
                conv,
                mask,
                seed,
            })
        })
}

fn layer(case: &Case, device: &Device) -> NystromAttention {
    NystromAttentionConfig::new(case.heads * case.head_dim, case.heads)
        .with_num_landmarks(case.landmarks)
        .with_conv_kernel_size(case.conv)
        .init(device)
}

fn mask_tensor(case: &Case, device: &Device) -> Tensor<2, Bool> {
    let flat: Vec<bool> = case.mask.iter().flatten().copied().collect();
    Tensor::from_bool(TensorData::new(flat, [case.batch, case.n]), device)
}

fn check(case: &Case, device: &Device) -> Result<(), TestCaseError> {
    let d_model = case.heads * case.head_dim;
    let layer = layer(case, device);
    let mask = mask_tensor(case, device);
    let x = randn([case.batch, case.n, d_model], 1.0, case.seed, device);
    // The same input with different values at every padded position: large ones, NaN, or ±inf
    // (uninitialised buffers, a previous layer's overflow).
    let noise = randn(
        [case.batch, case.n, d_model],
        100.0,
        case.seed ^ 0xABCD,
        device,
    );
    let noise = match case.seed % 3 {
        0 => noise,
        1 => noise.mul_scalar(f32::NAN),
        _ => noise.sign().mul_scalar(f32::INFINITY),
    };
    let pad = mask
        .clone()
        .reshape([case.batch, case.n, 1])
        .expand([case.batch, case.n, d_model]);
    let x_other = x.clone().mask_where(pad, noise);

    let out = layer.forward(
        NystromInput::self_attn(x)
            .mask_pad(mask.clone())
            .return_kernels(),
    );
    let out_other = layer.forward(NystromInput::self_attn(x_other).mask_pad(mask));

    prop_assert!(all_finite(&out.context), "non-finite output");
    prop_assert!(
        all_finite(&out_other.context),
        "non-finite output with noisy padding"
    );

    let (a, b) = (values(&out.context), values(&out_other.context));
    for (row, padded) in case.mask.iter().enumerate() {
        for (pos, &is_pad) in padded.iter().enumerate() {
            if is_pad {
                continue;
            }
            for f in 0..d_model {
                let i = (row * case.n + pos) * d_model + f;
                prop_assert!(
                    (a[i] - b[i]).abs() <= 1e-4,
                    "valid output [{row}, {pos}, {f}] moved from {} to {} when padding changed",
                    a[i],
                    b[i]
                );
            }
        }
    }

    if let Some(kernels) = out.kernels {
        let m = case.landmarks;
        let b_kernel = values(&kernels.b); // [batch, heads, m, n]
        let f_kernel = values(&kernels.f); // [batch, heads, n, m]
        let z = values(&kernels.a_pinv); // [batch, heads, m, m]
        for row in 0..case.batch {
            // Segments are cut over the row's valid tokens: rank r of L goes to ⌊r·m/L⌋.
            let valid = case.mask[row].iter().filter(|p| !**p).count();
            let missing: Vec<bool> = (0..m)
                .map(|s| !(0..valid).any(|r| r * m / valid == s))
                .collect();
            for h in 0..case.heads {
                for s in 0..m {
                    for j in 0..case.n {
                        let weight = b_kernel[((row * case.heads + h) * m + s) * case.n + j];
                        if case.mask[row][j] {
                            prop_assert!(weight == 0.0, "padded key {j} has weight {weight} in B");
                        }
                        let f = f_kernel[((row * case.heads + h) * case.n + j) * m + s];
                        if missing[s] {
                            prop_assert!(f == 0.0, "missing landmark {s} has weight {f} in F");
                        }
                    }
                    for t in 0..m {
                        let zst = z[((row * case.heads + h) * m + s) * m + t];
                        if missing[s] || missing[t] {
                            prop_assert!(
                                zst == 0.0,
                                "A⁺[{s}][{t}] = {zst} touches a missing landmark"
                            );
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

#[test]
fn padding_never_reaches_valid_positions() {
    proptest_on_devices(cases(), 48, 8, |case, device| check(&case, device));
}
