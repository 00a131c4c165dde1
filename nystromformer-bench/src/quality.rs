//! Approximation quality: relative error of Nyström attention against exact attention, and the
//! pseudo-inverse residual, as functions of landmarks, iterations and initialisation.

use std::path::Path;

use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use nystromformer::attention::{explicit_softmax_attention, pinv_residual};
use nystromformer::{NystromHeadsInput, NystromOptions, PinvInit, nystrom_attention};
use serde::Serialize;

/// One point of the quality sweep.
#[derive(Debug, Clone, Serialize)]
pub struct QualityRecord {
    /// Where Q, K, V came from (`random`, or `trained <task> layer <l>`).
    pub inputs: String,
    /// Sequence length.
    pub n: usize,
    /// Head size.
    pub head_dim: usize,
    /// Landmarks.
    pub landmarks: usize,
    /// Pseudo-inverse iterations.
    pub pinv_iterations: usize,
    /// `Original` or `Exact`.
    pub pinv_init: String,
    /// `‖Nyström − exact‖_F / ‖exact‖_F`, mean over heads and batch.
    pub relative_error: f64,
    /// `‖I − A Z‖_F`, mean over matrices.
    pub pinv_residual: f64,
}

/// Q, K and V of one sequence, `[1, heads, n, head_dim]` each, and where they came from.
pub struct Inputs {
    /// Queries.
    pub q: Tensor<4>,
    /// Keys.
    pub k: Tensor<4>,
    /// Values.
    pub v: Tensor<4>,
    /// Description for the records.
    pub label: String,
}

/// Standard-normal Q, K, V with 4 heads.
pub fn random_inputs(device: &Device, n: usize, head_dim: usize) -> Inputs {
    let dims = [1, 4, n, head_dim];
    let random = || Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), device);
    Inputs {
        q: random(),
        k: random(),
        v: random(),
        label: "random".into(),
    }
}

/// The Q, K, V that attention layer `layer` of a `nystromformer-train` run computes on the
/// longest sequence of the run's validation split.
pub fn trained_inputs(
    artifact_dir: &Path,
    layer: usize,
    device: &Device,
) -> Result<Inputs, String> {
    let (config, encoder, sequences) =
        nystromformer_train::inspect::trained_encoder(artifact_dir, device)?;
    let tokens = sequences
        .into_iter()
        .max_by_key(Vec::len)
        .ok_or_else(|| format!("{}: no validation sequences", artifact_dir.display()))?;
    let n = tokens.len().min(config.max_len);
    let ids: Vec<i64> = tokens[..n].iter().map(|&t| t as i64).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, n]), device);
    let Some(target) = encoder.layers.get(layer) else {
        return Err(format!(
            "--layer {layer}: the model has {} layers",
            encoder.layers.len()
        ));
    };
    let mut x = encoder.embeddings.forward(ids, None);
    for earlier in &encoder.layers[..layer] {
        x = earlier.forward(x, None);
    }
    if target.norm_first {
        x = target.attention_norm.forward(x);
    }
    let attention = &target.attention;
    let heads = attention.n_heads;
    let head_dim = attention.d_model / heads;
    let split = |t: Tensor<3>| t.reshape([1, n, heads, head_dim]).swap_dims(1, 2);
    Ok(Inputs {
        q: split(attention.query.forward(x.clone())),
        k: split(attention.key.forward(x.clone())),
        v: split(attention.value.forward(x)),
        label: format!(
            "trained {} layer {layer}",
            serde_json::to_string(&config.task)
                .unwrap_or_default()
                .trim_matches('"')
        ),
    })
}

/// Sweeps landmarks × iterations × initialisations on the given Q, K, V.
pub fn quality_sweep(
    inputs: &Inputs,
    landmarks: &[usize],
    iterations: &[usize],
) -> Vec<QualityRecord> {
    let (q, k, v) = (inputs.q.clone(), inputs.k.clone(), inputs.v.clone());
    let [_, _, n, head_dim] = q.dims();
    let (exact, _) = explicit_softmax_attention(q.clone(), k.clone(), v.clone(), None);
    let exact_norm: f64 = exact.clone().square().sum().sqrt().into_scalar::<f32>() as f64;
    let mut out = Vec::new();
    for &m in landmarks {
        for &iters in iterations {
            for init in [PinvInit::Original, PinvInit::Exact] {
                let options = NystromOptions::new()
                    .with_num_landmarks(m)
                    .with_pinv_iterations(iters)
                    .with_pinv_init(init);
                let input = NystromHeadsInput::self_attention(q.clone(), k.clone(), v.clone())
                    .return_kernels();
                let result = nystrom_attention(input, &options);
                let error = (result.context - exact.clone())
                    .square()
                    .sum()
                    .sqrt()
                    .into_scalar::<f32>() as f64;
                let residual = match result.kernels {
                    Some(kernels) => pinv_residual(kernels.a, kernels.a_pinv)
                        .mean()
                        .into_scalar::<f32>() as f64,
                    None => 0.0,
                };
                out.push(QualityRecord {
                    inputs: inputs.label.clone(),
                    n,
                    head_dim,
                    landmarks: m,
                    pinv_iterations: iters,
                    pinv_init: format!("{init:?}"),
                    relative_error: error / exact_norm,
                    pinv_residual: residual,
                });
            }
        }
    }
    out
}
