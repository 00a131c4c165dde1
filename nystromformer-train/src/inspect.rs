//! Looking inside a trained run: its encoder and some of its validation sequences, for tools
//! such as the benchmark's quality sweep on the Q/K/V of a trained model.

use std::path::Path;

use burn::module::Module;
use burn::tensor::Device;
use nystromformer::model::NystromformerEncoder;

use crate::config::{ExperimentConfig, Task};
use crate::files::read_json;
use crate::task::{DocumentMatching, MaskedLm, SequenceClassification, TaskSpec};

/// The encoder of `artifact_dir/model.bpk` and the token sequences of the run's validation split.
pub fn trained_encoder(
    artifact_dir: &Path,
    device: &Device,
) -> Result<(ExperimentConfig, NystromformerEncoder, Vec<Vec<u32>>), String> {
    let mut config: ExperimentConfig = read_json(&artifact_dir.join("config.json"))?;
    let model_path = artifact_dir.join("model.bpk");
    let at = |err: &dyn std::fmt::Display| format!("{}: {err}", model_path.display());
    let (encoder, sequences) = match config.task {
        Task::Listops | Task::Text | Task::Image => {
            let valid = SequenceClassification::splits(&mut config)?.valid;
            let model = SequenceClassification::model(&config, device)
                .try_load_file(&model_path)
                .map_err(|e| at(&e))?;
            let tokens = valid.into_iter().map(|item| item.tokens).collect();
            (model.model.nystromformer, tokens)
        }
        Task::Retrieval => {
            let valid = DocumentMatching::splits(&mut config)?.valid;
            let model = DocumentMatching::model(&config, device)
                .try_load_file(&model_path)
                .map_err(|e| at(&e))?;
            let tokens = valid.into_iter().map(|item| item.first).collect();
            (model.encoder, tokens)
        }
        Task::Mlm => {
            let valid = MaskedLm::splits(&mut config)?.valid;
            let model = MaskedLm::model(&config, device)
                .try_load_file(&model_path)
                .map_err(|e| at(&e))?;
            let tokens = valid.into_iter().map(|item| item.tokens).collect();
            (model.model.nystromformer, tokens)
        }
    };
    Ok((config, encoder, sequences))
}
