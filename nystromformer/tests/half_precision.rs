//! f16 and bf16: the attention and a whole encoder in half precision stay finite (fully padded
//! rows included, under both mask policies) and agree with the f32 result within a stated
//! tolerance, on every backend that supports the dtype.

mod common;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Bool, Device, FloatDType, Int, Tensor, TensorData};
use common::{devices, randn, values};
use nystromformer::model::{EncoderInput, NystromformerConfig};
use nystromformer::{
    MaskPolicy, NystromAttentionConfig, NystromHeadsInput, NystromInput, NystromOptions,
    nystrom_attention,
};

/// Half-precision dtypes with the largest difference from the f32 result accepted, relative to
/// the f32 output's largest magnitude. f16 keeps 11 significant bits (≈ 5e-4 per rounding),
/// bf16 8 (≈ 4e-3); the attention chains a few dozen roundings.
const HALF: [(FloatDType, f32); 2] = [(FloatDType::F16, 2e-2), (FloatDType::BF16, 8e-2)];

fn as_f32<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    values(&t.cast(FloatDType::F32))
}

fn relative_diff(half: &[f32], full: &[f32]) -> f32 {
    let scale = full.iter().fold(0.0f32, |a, b| a.max(b.abs())).max(1e-6);
    half.iter()
        .zip(full)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
        / scale
}

/// The second sequence is fully padded, the first has a hole and right padding.
fn padding(n: usize, device: &Device) -> Tensor<2, Bool> {
    let rows: Vec<bool> = (0..n)
        .map(|j| j == 3 || j >= n - 5)
        .chain((0..n).map(|_| true))
        .collect();
    Tensor::from_bool(TensorData::new(rows, [2, n]), device)
}

struct CastParams(FloatDType);

impl ModuleMapper for CastParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let dtype = self.0;
        param.map(|t| t.cast(dtype))
    }
}

#[test]
fn the_functional_core_runs_in_half_precision() {
    for (name, device) in devices() {
        for (dtype, tolerance) in HALF {
            if !device.supports_dtype(dtype) {
                eprintln!("{name}: {dtype:?} unsupported, skipped");
                continue;
            }
            let (batch, heads, n, d) = (2, 2, 40, 8);
            let q = randn([batch, heads, n, d], 1.0, 1, &device);
            let k = randn([batch, heads, n, d], 1.0, 2, &device);
            let v = randn([batch, heads, n, d], 1.0, 3, &device);
            for policy in [MaskPolicy::LeakFree, MaskPolicy::HfCompatible] {
                for m in [8, 64] {
                    let options = NystromOptions::new()
                        .with_num_landmarks(m)
                        .with_mask_policy(policy);
                    let run = |cast: FloatDType| {
                        let input = NystromHeadsInput::self_attention(
                            q.clone().cast(cast),
                            k.clone().cast(cast),
                            v.clone().cast(cast),
                        )
                        .mask_pad(padding(n, &device));
                        nystrom_attention(input, &options).context
                    };
                    let half = run(dtype);
                    assert_eq!(half.dtype(), dtype.into(), "{name}: output dtype");
                    let (half, full) = (as_f32(half), as_f32(run(FloatDType::F32)));
                    assert!(
                        half.iter().all(|x| x.is_finite()),
                        "{name} {dtype:?} {policy:?} m={m}: non-finite output"
                    );
                    // Only the first sequence: the fully padded one has no meaningful values.
                    let first = batch / 2 * heads * n * d;
                    let err = relative_diff(&half[..first], &full[..first]);
                    assert!(
                        err < tolerance,
                        "{name} {dtype:?} {policy:?} m={m}: differs from f32 by {err}"
                    );
                }
            }
        }
    }
}

#[test]
fn a_module_and_an_encoder_cast_to_half_precision_work() {
    for (name, device) in devices() {
        for (dtype, tolerance) in HALF {
            if !device.supports_dtype(dtype) {
                continue;
            }
            let layer = NystromAttentionConfig::new(16, 2)
                .with_num_landmarks(8)
                .with_conv_kernel_size(Some(3))
                .init(&device);
            let half_layer = layer.clone().map(&mut CastParams(dtype));
            let n = 30;
            let x = randn([2, n, 16], 1.0, 9, &device);
            let mask = padding(n, &device);
            let full = layer.forward(NystromInput::self_attn(x.clone()).mask_pad(mask.clone()));
            let half =
                half_layer.forward(NystromInput::self_attn(x.cast(dtype)).mask_pad(mask.clone()));
            let (half, full) = (as_f32(half.context), as_f32(full.context));
            assert!(half.iter().all(|x| x.is_finite()), "{name} {dtype:?}");
            let err = relative_diff(&half[..n * 16], &full[..n * 16]);
            assert!(err < tolerance, "{name} {dtype:?}: layer differs by {err}");

            let config = NystromformerConfig::new(30, 16, 2, 2, 32)
                .with_num_landmarks(4)
                .with_conv_kernel_size(Some(3));
            let encoder = config.init(&device);
            let half_encoder = encoder.clone().map(&mut CastParams(dtype));
            let ids: Vec<i64> = (0..2 * n).map(|i| (i * 7 % 29) as i64).collect();
            let input = EncoderInput::new(Tensor::<2, Int>::from_data(
                TensorData::new(ids, [2, n]),
                &device,
            ))
            .mask_pad(mask);
            let (half, full) = (
                as_f32(half_encoder.forward(input.clone())),
                as_f32(encoder.forward(input)),
            );
            assert!(half.iter().all(|x| x.is_finite()), "{name} {dtype:?}");
            let err = relative_diff(&half[..n * 16], &full[..n * 16]);
            assert!(
                err < tolerance * 2.0,
                "{name} {dtype:?}: encoder differs by {err}"
            );
        }
    }
}
