//! What training and evaluation need from each kind of task: its examples, how they are batched,
//! and the model that learns them. [`train`](crate::training::train) and
//! [`eval_command`](crate::eval::eval_command) are written once against [`TaskSpec`].

use std::fmt::Debug;
use std::path::{Path, PathBuf};

use burn::data::dataloader::batcher::Batcher;
use burn::module::Module;
use burn::tensor::Device;
use burn::train::{ClassificationOutput, InferenceStep, LearnerModel, TrainStep};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::{ExperimentConfig, Task};
use crate::data::SequenceItem;
use crate::data::batcher::{ClassificationBatcher, PairBatcher};
use crate::data::corpus::{TextChunk, find_corpus, read_corpus};
use crate::data::listops::{examples, read_tsv, tokenize};
use crate::data::masking::MaskedLmBatcher;
use crate::data::retrieval::{PairItem, read_pairs};
use crate::data::text::{find_split, label_set, load_split, read_records};
use crate::data::{image, retrieval};
use crate::model::{Classifier, DualEncoderClassifier, MaskedLanguageModel};

/// The three splits of a task.
pub struct Splits<I> {
    /// Training examples.
    pub train: Vec<I>,
    /// Validation examples.
    pub valid: Vec<I>,
    /// Test examples.
    pub test: Vec<I>,
}

/// A kind of task: example type, batcher and model.
pub trait TaskSpec {
    /// One example.
    type Item: Send + Sync + Clone + Debug + Serialize + DeserializeOwned + 'static;
    /// A batch on a device.
    type Batch: Send + Sync + Clone + Debug + 'static;
    /// Builds batches from examples.
    type Batcher: Batcher<Self::Item, Self::Batch> + Clone + 'static;
    /// The model, trained by burn-train's `Learner`.
    type Model: LearnerModel
        + TrainStep<Input = Self::Batch, Output = ClassificationOutput>
        + InferenceStep<Input = Self::Batch, Output = ClassificationOutput>;

    /// A freshly initialised model.
    fn model(config: &ExperimentConfig, device: &Device) -> Self::Model;

    /// The batcher; `seed` drives any randomness in batching (masked-LM masking).
    fn batcher(config: &ExperimentConfig, seed: u64) -> Self::Batcher;

    /// Loads or generates the three splits; may complete `config` from the data (text labels).
    fn splits(config: &mut ExperimentConfig) -> Result<Splits<Self::Item>, String>;

    /// Reads one data file in the task's format, for `eval`.
    fn read_file(config: &ExperimentConfig, path: &Path) -> Result<Vec<Self::Item>, String>;

    /// The accuracy of always predicting the most frequent target.
    fn majority_share(items: &[Self::Item]) -> f64;

    /// The final model a `train` run saved in `artifact_dir` (`model.bpk`).
    fn load_trained(
        config: &ExperimentConfig,
        artifact_dir: &Path,
        device: &Device,
    ) -> Result<Self::Model, String> {
        let path = artifact_dir.join(MODEL_FILE);
        Self::model(config, device)
            .try_load_file(&path)
            .map_err(|err| format!("{}: {err}", path.display()))
    }
}

/// The final model's file name in an artifact directory.
pub const MODEL_FILE: &str = "model.bpk";

fn share_of_most_frequent(targets: impl Iterator<Item = u32>) -> f64 {
    let mut counts = std::collections::HashMap::new();
    let mut total = 0usize;
    for target in targets {
        *counts.entry(target).or_insert(0usize) += 1;
        total += 1;
    }
    *counts.values().max().unwrap_or(&0) as f64 / total.max(1) as f64
}

fn data_dir(config: &ExperimentConfig) -> Result<PathBuf, String> {
    config
        .data_dir
        .clone()
        .ok_or_else(|| format!("the {:?} task needs data_dir", config.task))
}

/// ListOps, text and image: one sequence, one class.
pub struct SequenceClassification;

impl TaskSpec for SequenceClassification {
    type Item = SequenceItem;
    type Batch = crate::data::batcher::ClassificationBatch;
    type Batcher = ClassificationBatcher;
    type Model = Classifier;

    fn model(config: &ExperimentConfig, device: &Device) -> Classifier {
        let head = config.head(config.hidden_size, device);
        Classifier::new(&config.model_config(), head, config.pooling(), device)
    }

    fn batcher(config: &ExperimentConfig, _seed: u64) -> ClassificationBatcher {
        ClassificationBatcher {
            padding: config.padding(),
        }
    }

    fn splits(config: &mut ExperimentConfig) -> Result<Splits<SequenceItem>, String> {
        match config.task {
            Task::Text => text_splits(config),
            Task::Image => {
                let [train, valid, test] =
                    image::read_splits(&data_dir(config)?, config.valid_size)?;
                Ok(Splits { train, valid, test })
            }
            _ => listops_splits(config),
        }
    }

    fn read_file(config: &ExperimentConfig, path: &Path) -> Result<Vec<SequenceItem>, String> {
        match config.task {
            Task::Text => {
                let labels = config
                    .labels
                    .clone()
                    .ok_or("the configuration records no text labels")?;
                load_split(path, &config.columns(), &labels, config.max_len)
            }
            Task::Image => image::read_batch(path),
            _ => read_tsv(path, config.listops_tokens),
        }
    }

    fn majority_share(items: &[SequenceItem]) -> f64 {
        share_of_most_frequent(items.iter().map(|item| item.label))
    }
}

fn text_splits(config: &mut ExperimentConfig) -> Result<Splits<SequenceItem>, String> {
    let dir = data_dir(config)?;
    let train_path = find_split(&dir, &["train"])?;
    if config.labels.is_none() {
        config.labels = Some(label_set(&read_records(&train_path, &config.columns())?));
    }
    let labels = config.labels.clone().unwrap_or_default();
    let load = |path: PathBuf| load_split(&path, &config.columns(), &labels, config.max_len);
    Ok(Splits {
        train: load(train_path.clone())?,
        valid: load(find_split(&dir, &["valid", "val"])?)?,
        test: load(find_split(&dir, &["test"])?)?,
    })
}

fn listops_splits(config: &ExperimentConfig) -> Result<Splits<SequenceItem>, String> {
    if let Some(dir) = &config.data_dir {
        let read = |name: &str| read_tsv(&dir.join(name), config.listops_tokens);
        return Ok(Splits {
            train: read("basic_train.tsv")?,
            valid: read("basic_val.tsv")?,
            test: read("basic_test.tsv")?,
        });
    }
    let generator = config.generator();
    let make = |count: usize, seed: u64| -> Vec<SequenceItem> {
        examples(seed, &generator)
            .take(count)
            .map(|(tree, text)| SequenceItem {
                tokens: tokenize(&text, config.listops_tokens).expect("generated tokens are known"),
                label: tree.value() as u32,
            })
            .collect()
    };
    Ok(Splits {
        train: make(config.train_size, config.seed),
        valid: make(config.valid_size, config.seed.wrapping_add(1)),
        test: make(config.test_size, config.seed.wrapping_add(2)),
    })
}

/// Retrieval: two documents, match or not.
pub struct DocumentMatching;

impl TaskSpec for DocumentMatching {
    type Item = PairItem;
    type Batch = crate::data::batcher::PairBatch;
    type Batcher = PairBatcher;
    type Model = DualEncoderClassifier;

    fn model(config: &ExperimentConfig, device: &Device) -> DualEncoderClassifier {
        let head = config.head(4 * config.hidden_size, device);
        DualEncoderClassifier::new(&config.model_config(), head, config.pooling(), device)
    }

    fn batcher(config: &ExperimentConfig, _seed: u64) -> PairBatcher {
        PairBatcher {
            padding: config.padding(),
        }
    }

    fn splits(config: &mut ExperimentConfig) -> Result<Splits<PairItem>, String> {
        let [train, valid, test] = retrieval::read_splits(&data_dir(config)?, config.max_len)?;
        Ok(Splits { train, valid, test })
    }

    fn read_file(config: &ExperimentConfig, path: &Path) -> Result<Vec<PairItem>, String> {
        read_pairs(path, config.max_len)
    }

    fn majority_share(items: &[PairItem]) -> f64 {
        share_of_most_frequent(items.iter().map(|item| item.label))
    }
}

/// Masked-LM pretraining on a plain-text corpus.
pub struct MaskedLm;

impl TaskSpec for MaskedLm {
    type Item = TextChunk;
    type Batch = crate::data::masking::MaskedLmBatch;
    type Batcher = MaskedLmBatcher;
    type Model = MaskedLanguageModel;

    fn model(config: &ExperimentConfig, device: &Device) -> MaskedLanguageModel {
        MaskedLanguageModel::new(&config.model_config(), device)
    }

    fn batcher(config: &ExperimentConfig, seed: u64) -> MaskedLmBatcher {
        MaskedLmBatcher::new(config.padding(), config.mask_probability, seed)
    }

    fn splits(config: &mut ExperimentConfig) -> Result<Splits<TextChunk>, String> {
        let dir = data_dir(config)?;
        let read = |names: &[&str]| read_corpus(&find_corpus(&dir, names)?, config.max_len);
        Ok(Splits {
            train: read(&["train"])?,
            valid: read(&["valid", "val"])?,
            test: read(&["test"])?,
        })
    }

    fn read_file(config: &ExperimentConfig, path: &Path) -> Result<Vec<TextChunk>, String> {
        read_corpus(path, config.max_len)
    }

    /// Masked positions are drawn uniformly, so this is the share of the most frequent byte.
    fn majority_share(items: &[TextChunk]) -> f64 {
        share_of_most_frequent(items.iter().flat_map(|item| item.tokens.iter().copied()))
    }
}
