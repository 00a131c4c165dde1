//! `encode`: run an HF Nystromformer checkpoint on token ids and write the hidden states.

use std::path::{Path, PathBuf};

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use nystromformer::MaskPolicy;
use nystromformer::hf::HfCheckpoint;
use nystromformer::model::EncoderInput;
use serde::Deserialize;

use crate::files::{read_json, write_atomically};

/// `IDS.json`: token ids and an optional attention mask (1 = token, 0 = padding), as HF takes them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncodeRequest {
    /// `[batch][n]` token ids.
    pub input_ids: Vec<Vec<i64>>,
    /// `[batch][n]` of 0/1, HF's convention.
    #[serde(default)]
    pub attention_mask: Option<Vec<Vec<i64>>>,
    /// `[batch][n]` token types.
    #[serde(default)]
    pub token_type_ids: Option<Vec<Vec<i64>>>,
}

/// Runs `encode`; every error is one line naming the file and the problem.
pub fn encode(
    hf_dir: &Path,
    input: &Path,
    output: &Path,
    hf_mask: bool,
    device: &Device,
) -> Result<(), String> {
    let request: EncodeRequest = read_json(input)?;
    let checkpoint = HfCheckpoint::open(hf_dir).map_err(|err| err.to_string())?;
    let (batch, n) = check_request(
        &request,
        input,
        checkpoint.config.vocab_size,
        checkpoint.config.max_position_embeddings,
    )?;
    let policy = if hf_mask {
        MaskPolicy::HfCompatible
    } else {
        MaskPolicy::LeakFree
    };
    let model = checkpoint
        .load_encoder(policy, device)
        .map_err(|err| err.to_string().replace('\n', " "))?;

    let ints = |rows: &[Vec<i64>]| -> Tensor<2, Int> {
        Tensor::from_data(TensorData::new(rows.concat(), [batch, n]), device)
    };
    let mut encoder_input = EncoderInput::new(ints(&request.input_ids));
    if let Some(mask) = &request.attention_mask {
        let pad: Vec<bool> = mask.concat().iter().map(|v| *v == 0).collect();
        encoder_input = encoder_input.mask_pad(Tensor::<2, Bool>::from_bool(
            TensorData::new(pad, [batch, n]),
            device,
        ));
    }
    if let Some(types) = &request.token_type_ids {
        encoder_input = encoder_input.token_type_ids(ints(types));
    }
    let hidden = model.forward(encoder_input);
    let [_, _, width] = hidden.dims();
    let flat = hidden
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|err| format!("reading the output back: {err:?}"))?;
    let nested: Vec<Vec<&[f32]>> = flat
        .chunks(n * width)
        .map(|row| row.chunks(width).collect())
        .collect();
    let json = serde_json::to_string(&serde_json::json!({ "last_hidden_state": nested }))
        .map_err(|err| err.to_string())?;
    write_atomically(&PathBuf::from(output), json.as_bytes())
}

/// Checks shapes and ranges before anything reaches Burn; returns `(batch, n)`.
fn check_request(
    request: &EncodeRequest,
    path: &Path,
    vocab: usize,
    max_len: usize,
) -> Result<(usize, usize), String> {
    let file = path.display();
    let batch = request.input_ids.len();
    let n = request.input_ids.first().map_or(0, Vec::len);
    if batch == 0 || n == 0 {
        return Err(format!("{file}: input_ids is empty"));
    }
    if n > max_len {
        return Err(format!(
            "{file}: sequences of {n} tokens exceed max_position_embeddings = {max_len}"
        ));
    }
    let same_shape = |name: &str, rows: &[Vec<i64>]| -> Result<(), String> {
        if rows.len() != batch {
            return Err(format!(
                "{file}: {name} has {} rows, input_ids has {batch}",
                rows.len()
            ));
        }
        match rows.iter().position(|row| row.len() != n) {
            Some(i) => Err(format!(
                "{file}: {name}[{i}] has {} entries, expected {n} like input_ids[0]",
                rows[i].len()
            )),
            None => Ok(()),
        }
    };
    same_shape("input_ids", &request.input_ids)?;
    for (i, row) in request.input_ids.iter().enumerate() {
        if let Some(j) = row.iter().position(|id| *id < 0 || *id as usize >= vocab) {
            return Err(format!(
                "{file}: input_ids[{i}][{j}] = {} is outside the vocabulary [0, {vocab})",
                row[j]
            ));
        }
    }
    if let Some(mask) = &request.attention_mask {
        same_shape("attention_mask", mask)?;
        if let Some((i, j)) = find(mask, |v| v != 0 && v != 1) {
            return Err(format!(
                "{file}: attention_mask[{i}][{j}] = {} (expected 0 or 1)",
                mask[i][j]
            ));
        }
    }
    if let Some(types) = &request.token_type_ids {
        same_shape("token_type_ids", types)?;
        if let Some((i, j)) = find(types, |v| v < 0) {
            return Err(format!(
                "{file}: token_type_ids[{i}][{j}] = {} is negative",
                types[i][j]
            ));
        }
    }
    Ok((batch, n))
}

fn find(rows: &[Vec<i64>], bad: impl Fn(i64) -> bool) -> Option<(usize, usize)> {
    rows.iter()
        .enumerate()
        .find_map(|(i, row)| row.iter().position(|v| bad(*v)).map(|j| (i, j)))
}
