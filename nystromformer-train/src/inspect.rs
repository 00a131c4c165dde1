//! Looking inside a trained run: its encoder and some of its validation sequences, for tools
//! such as the benchmark's quality sweep on the Q/K/V of a trained model.

use std::path::Path;

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
    let (encoder, sequences) = match config.task {
        Task::Listops | Task::Text | Task::Image => {
            let valid = SequenceClassification::splits(&mut config)?.valid;
            let model = SequenceClassification::load_trained(&config, artifact_dir, device)?;
            let tokens = valid.into_iter().map(|item| item.tokens).collect();
            (model.encoder, tokens)
        }
        Task::Retrieval => {
            let valid = DocumentMatching::splits(&mut config)?.valid;
            let model = DocumentMatching::load_trained(&config, artifact_dir, device)?;
            let tokens = valid.into_iter().map(|item| item.first).collect();
            (model.encoder, tokens)
        }
        Task::Mlm => {
            let valid = MaskedLm::splits(&mut config)?.valid;
            let model = MaskedLm::load_trained(&config, artifact_dir, device)?;
            let tokens = valid.into_iter().map(|item| item.tokens).collect();
            (model.model.nystromformer, tokens)
        }
    };
    Ok((config, encoder, sequences))
}
