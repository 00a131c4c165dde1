//! Outputs of HF transformers' Nystromformer (assets/hf, made by tools/make_hf_fixtures.py)
//! reproduced through the loader, on every backend: max abs error ≤ 1e-4.

mod common;

use std::path::Path;

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use common::{assets, devices, json_array, tensor, values};
use nystromformer::MaskPolicy;
use nystromformer::hf::{HfCheckpoint, LoadError};
use nystromformer::model::EncoderInput;

const TOLERANCE: f32 = 1e-4;

struct Fixture {
    model: String,
    input: EncoderInput,
    /// `[batch][n]`: positions HF's output is defined at (all, or the unpadded ones).
    valid: Vec<Vec<bool>>,
    hidden: Tensor<3>,
    logits: Option<(Vec<f32>, Vec<usize>)>,
}

fn fixture(case: &str, device: &Device) -> Fixture {
    let text = std::fs::read_to_string(assets().join("hf").join(case).join("io.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ints = |key: &str| -> Tensor<2, Int> {
        let (flat, shape) = json_array(&json[key]);
        let flat: Vec<i64> = flat.iter().map(|x| *x as i64).collect();
        Tensor::from_data(TensorData::new(flat, [shape[0], shape[1]]), device)
    };
    let ids = ints("input_ids");
    let [batch, n] = ids.dims();
    let mut input = EncoderInput::new(ids).token_type_ids(ints("token_type_ids"));
    let mut valid = vec![vec![true; n]; batch];
    if !json["attention_mask"].is_null() {
        let (mask, _) = json_array(&json["attention_mask"]);
        valid = mask
            .chunks(n)
            .map(|row| row.iter().map(|x| *x == 1.0).collect())
            .collect();
        let pad: Vec<bool> = mask.iter().map(|x| *x == 0.0).collect();
        input = input.mask_pad(Tensor::<2, Bool>::from_bool(
            TensorData::new(pad, [batch, n]),
            device,
        ));
    }
    let (hidden, shape) = json_array(&json["last_hidden_state"]);
    Fixture {
        model: json["model"].as_str().unwrap().to_string(),
        input,
        valid,
        hidden: tensor(hidden, [shape[0], shape[1], shape[2]], device),
        logits: (!json["logits"].is_null()).then(|| json_array(&json["logits"])),
    }
}

/// Largest |a − b| over the valid positions of `[batch, n, features]` tensors.
fn max_err_at_valid(a: &Tensor<3>, b: &Tensor<3>, valid: &[Vec<bool>]) -> f32 {
    let [_, n, features] = a.dims();
    assert_eq!(a.dims(), b.dims());
    let (a, b) = (values(a), values(b));
    let mut err = 0.0f32;
    for (row, positions) in valid.iter().enumerate() {
        for (pos, ok) in positions.iter().enumerate() {
            if *ok {
                for f in 0..features {
                    let i = (row * n + pos) * features + f;
                    err = err.max((a[i] - b[i]).abs());
                }
            }
        }
    }
    err
}

/// Runs a fixture; returns (hidden-state error, logits error).
fn run(case: &str, policy: MaskPolicy, device: &Device) -> (f32, Option<f32>) {
    let checkpoint = HfCheckpoint::open(assets().join("hf").join(case)).unwrap();
    let fx = fixture(case, device);
    let hidden_err = |hidden: Tensor<3>| max_err_at_valid(&hidden, &fx.hidden, &fx.valid);
    let logits_err = |got: Vec<f32>| {
        let (expected, _) = fx.logits.as_ref().unwrap();
        got.iter()
            .zip(expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    };
    match fx.model.as_str() {
        "NystromformerModel" => {
            let model = checkpoint.load_encoder(policy, device).unwrap();
            (hidden_err(model.forward(fx.input.clone())), None)
        }
        "NystromformerForMaskedLM" => {
            let model = checkpoint.load_masked_lm(policy, device).unwrap();
            let hidden = model.nystromformer.forward(fx.input.clone());
            let logits = model.forward(fx.input.clone());
            (hidden_err(hidden), Some(logits_err(values(&logits))))
        }
        "NystromformerForSequenceClassification" => {
            let model = checkpoint
                .load_sequence_classification(policy, device)
                .unwrap();
            let hidden = model.nystromformer.forward(fx.input.clone());
            let logits = model.forward(fx.input.clone());
            (hidden_err(hidden), Some(logits_err(values(&logits))))
        }
        other => panic!("{case}: unknown model class {other}"),
    }
}

fn assert_matches_hf(case: &str, policy: MaskPolicy) {
    for (name, device) in devices() {
        let (hidden, logits) = run(case, policy, &device);
        assert!(
            hidden <= TOLERANCE,
            "{case} on {name}: last_hidden_state off by {hidden}"
        );
        if let Some(logits) = logits {
            assert!(
                logits <= TOLERANCE,
                "{case} on {name}: logits off by {logits}"
            );
        }
    }
}

#[test]
fn nystrom_branch_with_conv_and_masked_lm_head() {
    assert_matches_hf("nystrom_conv_mlm", MaskPolicy::LeakFree);
}

#[test]
fn nystrom_branch_without_conv_from_pytorch_bin_with_classifier() {
    assert_matches_hf("nystrom_noconv_cls", MaskPolicy::LeakFree);
}

#[test]
fn exact_branch_when_landmarks_equal_segment_means_seq_len() {
    assert_matches_hf("exact_branch_short", MaskPolicy::LeakFree);
}

/// HF's skip convolution reads the values at padded positions and its landmarks average padded
/// tokens: matched with `HfCompatible`, and the leak-free default differs — on purpose.
#[test]
fn padding_mask_matches_hf_only_in_compatibility_mode() {
    for case in ["exact_branch_mask", "nystrom_mask_hfcompat"] {
        assert_matches_hf(case, MaskPolicy::HfCompatible);
        let (leak_free, _) = run(case, MaskPolicy::LeakFree, &Device::flex());
        assert!(
            leak_free > 1e-3,
            "{case}: LeakFree should differ from HF's leaky result, got {leak_free}"
        );
    }
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("nystromformer-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn copy_weights(from: &str, to: &Path) {
    let src = assets().join("hf").join(from).join("model.safetensors");
    std::fs::copy(src, to.join("model.safetensors")).unwrap();
}

#[test]
fn loader_names_shape_mismatches_and_missing_keys() {
    let dir = scratch("mismatch");
    copy_weights("nystrom_conv_mlm", &dir);
    let config = std::fs::read_to_string(assets().join("hf/nystrom_conv_mlm/config.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&config).unwrap();
    json["intermediate_size"] = 48.into();
    json["num_hidden_layers"] = 3.into();
    std::fs::write(dir.join("config.json"), json.to_string()).unwrap();

    let err = HfCheckpoint::open(&dir)
        .unwrap()
        .load_masked_lm(MaskPolicy::LeakFree, &Device::flex())
        .unwrap_err();
    std::fs::remove_dir_all(&dir).ok();
    match &err {
        LoadError::Mismatch {
            missing,
            mismatched,
            ..
        } => {
            assert!(
                missing
                    .iter()
                    .any(|k| k.starts_with("nystromformer.layers.2.")),
                "layer 2 is missing: {missing:?}"
            );
            assert!(
                mismatched
                    .iter()
                    .any(|m| m.contains("layers.0.intermediate.weight")),
                "{mismatched:?}"
            );
        }
        other => panic!("expected a mismatch, got {other}"),
    }
    assert!(
        err.to_string().contains("model.safetensors"),
        "the error names the file: {err}"
    );
}

#[test]
fn loader_names_unexpected_keys() {
    let dir = scratch("unexpected");
    copy_weights("nystrom_conv_mlm", &dir);
    let config = std::fs::read_to_string(assets().join("hf/nystrom_conv_mlm/config.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&config).unwrap();
    json["num_hidden_layers"] = 1.into();
    std::fs::write(dir.join("config.json"), json.to_string()).unwrap();
    let err = HfCheckpoint::open(&dir)
        .unwrap()
        .load_masked_lm(MaskPolicy::LeakFree, &Device::flex())
        .unwrap_err();
    std::fs::remove_dir_all(&dir).ok();
    match err {
        LoadError::Mismatch {
            unexpected,
            missing,
            ..
        } => {
            assert!(missing.is_empty(), "{missing:?}");
            assert!(
                unexpected.iter().any(|k| k.contains("layers.1.")),
                "{unexpected:?}"
            );
        }
        other => panic!("expected a mismatch, got {other}"),
    }
}

#[test]
fn bad_config_and_missing_weights_are_named() {
    let dir = scratch("badconfig");
    std::fs::write(
        dir.join("config.json"),
        "{\n  \"hidden_size\": 32,\n  \"num_landmarks\": oops\n}",
    )
    .unwrap();
    let err = HfCheckpoint::open(&dir).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("config.json:3:"),
        "names file and line: {message}"
    );

    std::fs::write(dir.join("config.json"), "{}").unwrap();
    let err = HfCheckpoint::open(&dir).unwrap_err();
    assert!(matches!(err, LoadError::NoWeights { .. }), "{err}");

    std::fs::write(
        dir.join("config.json"),
        "{\"hidden_size\": 30, \"num_attention_heads\": 4}",
    )
    .unwrap();
    std::fs::write(dir.join("model.safetensors"), b"not a safetensors file").unwrap();
    let checkpoint = HfCheckpoint::open(&dir).unwrap();
    let err = checkpoint
        .load_encoder(MaskPolicy::LeakFree, &Device::flex())
        .unwrap_err();
    assert!(
        err.to_string().contains("n_heads"),
        "names the bad value: {err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
