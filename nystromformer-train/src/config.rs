//! The experiment configuration: presets, `--config FILE` and `--set key=value` overrides.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use nystromformer::AttentionMode;
use nystromformer::model::{Activation, NystromformerConfig};
use serde::{Deserialize, Serialize};

use crate::data::batcher::Padding;
use crate::data::corpus::MLM_VOCAB_SIZE;
use crate::data::image::{IMAGE_VOCAB_SIZE, NUM_CLASSES as IMAGE_CLASSES};
use crate::data::listops::{GeneratorConfig, NUM_CLASSES as LISTOPS_CLASSES, VOCAB_SIZE};
use crate::data::text::{Columns, TEXT_VOCAB_SIZE};
use crate::files::read_json;
use crate::model::head::{ClassifierHead, SequencePooling};

/// The task a configuration trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// LRA ListOps (generated, or LRA's released TSV files in `data_dir`).
    Listops,
    /// Byte-level text classification (LRA Text) from `data_dir/{train,valid,test}.{tsv,csv,jsonl}`.
    Text,
    /// Document matching (LRA Retrieval) from LRA's `data_dir/new_aan_pairs.{train,eval,test}.tsv`.
    Retrieval,
    /// CIFAR-10 as 1 024 grayscale pixel tokens (LRA Image) from the binary batches in `data_dir`.
    Image,
    /// Masked-LM pretraining on `data_dir/{train,valid,test}.txt`.
    Mlm,
}

/// Where a run keeps its examples while training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// In memory.
    Memory,
    /// In burn-dataset's SQLite storage, `ARTIFACT_DIR/dataset.db`: for data sets larger than
    /// memory, and a resumed run skips reading the raw files again.
    Sqlite,
}

/// A named starting point for the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// Short sequences and a short run: minutes on two CPU cores for ListOps.
    Quick,
    /// The official LRA ListOps configuration (NYSTROMFORMER.md).
    Lra,
}

/// Everything a training run depends on. Written to `ARTIFACT_DIR/config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// The task.
    pub task: Task,
    /// ListOps: directory holding LRA's `basic_train.tsv`, `basic_val.tsv` and `basic_test.tsv`
    /// (`null` generates the data from `seed`). Text: directory holding `train`, `valid` (or
    /// `val`) and `test` files, each `.tsv`, `.csv` or `.jsonl`. Retrieval: LRA's
    /// `new_aan_pairs.{train,eval,test}.tsv`. Image: CIFAR-10's `data_batch_{1..5}.bin` and
    /// `test_batch.bin`. Mlm: `train.txt`, `valid.txt` (or `val.txt`) and `test.txt`.
    pub data_dir: Option<PathBuf>,
    /// Text: the column (or JSON field) holding the text.
    pub text_column: String,
    /// Text: the column (or JSON field) holding the label.
    pub label_column: String,
    /// Text: the classes, in label-index order; filled from the training data when `null`.
    pub labels: Option<Vec<String>>,
    /// Generated training examples.
    pub train_size: usize,
    /// Generated validation examples; image: the training images held out for validation.
    pub valid_size: usize,
    /// Generated test examples.
    pub test_size: usize,
    /// Generated sequences are strictly longer than this.
    pub min_len: usize,
    /// Generated sequences are strictly shorter than this; also the model's longest input
    /// (retrieval: per document; mlm: the window length).
    pub max_len: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Feed-forward width.
    pub intermediate_size: usize,
    /// Nyström landmarks.
    pub num_landmarks: usize,
    /// Skip-convolution kernel size (`null`: none).
    pub conv_kernel_size: Option<usize>,
    /// Nyström or the softmax baseline.
    pub attention: AttentionMode,
    /// Dropout everywhere.
    pub dropout: f64,
    /// Examples per batch.
    pub batch_size: usize,
    /// Peak learning rate of AdamW.
    pub learning_rate: f64,
    /// AdamW weight decay.
    pub weight_decay: f32,
    /// Linear warm-up steps.
    pub warmup_steps: usize,
    /// Optimizer steps in all (warm-up, then linear decay to 0).
    pub total_steps: usize,
    /// Optimizer steps between validations (LRA's `eval_frequency`); each validation ends a
    /// burn-train epoch and writes a checkpoint.
    #[serde(alias = "steps_per_checkpoint")]
    pub eval_frequency: usize,
    /// Gradient-norm clipping per parameter tensor, as Burn's `GradientClipping::Norm` does it
    /// (not over all parameters at once, as PyTorch's `clip_grad_norm_`); `null`: none.
    pub grad_clip_norm: Option<f32>,
    /// Seed of data generation, shuffling and initialisation.
    pub seed: u64,
    /// Data-loader worker threads.
    pub num_workers: usize,
    /// Mlm: share of the tokens to predict.
    pub mask_probability: f64,
    /// Where the examples live during training: `"memory"` or `"sqlite"`.
    pub storage: Storage,
    /// Batch lengths are rounded up to a multiple of this (never beyond `max_len`) so that a GPU
    /// sees a few shapes rather than one per batch: CubeCL compiles, fuses and autotunes
    /// kernels per shape. `null`: 64 on GPU (CubeCL) devices and 1 (pad to the longest) on
    /// CPU, decided when a run starts and written into its `config.json`.
    #[serde(default)]
    pub pad_to_multiple: Option<usize>,
    /// The model's layout: `"lra"` (the paper's LRA code: pre-LayerNorm layers and a final
    /// LayerNorm, no LayerNorm on the embeddings, embeddings from N(0, 0.02), padded positions
    /// zeroed after the final norm, head `Linear(width, ffn) → ReLU → Linear(ffn, classes)`) or
    /// `"hf"` (HF transformers' BERT layout: post-LayerNorm, embedding LayerNorm, head
    /// `Linear(width, width) → GELU → Linear(width, classes)` with dropout).
    /// Configurations written before this field existed read as `"hf"`, what they trained.
    #[serde(default = "Architecture::hf")]
    pub architecture: Architecture,
    /// ListOps: how `Source` strings become tokens. `"lra"`: as LRA's input pipeline does (only
    /// alphanumeric runs are tokens, so every bracket is dropped, `]` included); `"bracketed"`:
    /// keeps `]` closing each operator, an easier task than LRA's.
    /// Configurations written before this field existed read as `"bracketed"`, what they
    /// trained on.
    #[serde(default = "ListopsTokens::bracketed")]
    pub listops_tokens: ListopsTokens,
    /// AdamW's β₁ follows the one-cycle schedule as PyTorch's `OneCycleLR` sets it by default
    /// (`cycle_momentum`, which LRA's `run_tasks.py` keeps): 0.95 down to 0.85 over the warm-up,
    /// back to 0.95 at the last step. `false`: β₁ = 0.9 throughout.
    /// Configurations written before this field existed read as `false`, what they trained.
    #[serde(default)]
    pub cycle_momentum: bool,
}

/// The layout of the encoder and its head (`architecture`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// The paper's LRA model (`LRA/code/model.py`, `model_wrapper.py`).
    Lra,
    /// HF transformers' `NystromformerForSequenceClassification` layout.
    Hf,
}

impl Architecture {
    fn hf() -> Self {
        Architecture::Hf
    }
}

/// How ListOps `Source` strings are tokenized (`listops_tokens`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListopsTokens {
    /// LRA's tokenizer: brackets dropped.
    Lra,
    /// Operators and `]` kept.
    Bracketed,
}

impl ListopsTokens {
    fn bracketed() -> Self {
        ListopsTokens::Bracketed
    }
}

impl ExperimentConfig {
    /// This configuration with `pad_to_multiple` decided for `device` where it is `null`.
    pub fn for_device(mut self, device: &Device) -> Self {
        // Only CubeCL backends compile kernels per shape; on the CPU padding is pure cost.
        let compiles_kernels = format!("{device:?}").contains("Cube(");
        self.pad_to_multiple
            .get_or_insert(if compiles_kernels { 64 } else { 1 });
        self
    }

    /// How the batchers pad ([`Padding`]), per sequence (retrieval: per document).
    pub fn padding(&self) -> Padding {
        Padding {
            max_len: self.max_len,
            multiple: self.pad_to_multiple.unwrap_or(1),
        }
    }

    /// The configuration a preset starts from. Every LRA task shares the ListOps model (2
    /// layers, width 64, FFN 128, 2 heads, mean pooling, dropout 0.1, 64 landmarks, conv 35);
    /// the `lra` presets take each task's length, batch and schedule from the paper's LRA code
    /// (`LRA/code/lra_config.py`). Masked-LM has no LRA configuration: its `lra` preset runs the
    /// same model at the paper's pretraining length, 512. The `quick` presets shorten
    /// sequences and runs to what two CPU cores manage.
    pub fn preset(task: Task, preset: Preset) -> Self {
        let mut config = Self::listops_preset(preset);
        config.task = task;
        let lra = preset == Preset::Lra;
        // (max_len, landmarks, batch, warm-up, total steps, steps per checkpoint)
        let shape = match (task, lra) {
            (Task::Listops, _) => return config,
            (Task::Text, true) => (4_000, 64, 32, 8_000, 20_000, 500),
            (Task::Retrieval, true) => (4_000, 64, 32, 800, 30_000, 300),
            (Task::Image, true) => (1_024, 64, 256, 175, 35_000, 175),
            (Task::Mlm, true) => (512, 64, 32, 1_000, 10_000, 500),
            (Task::Text | Task::Retrieval, false) => (1_000, 32, 32, 200, 5_000, 500),
            (Task::Image, false) => (1_024, 32, 32, 200, 5_000, 500),
            (Task::Mlm, false) => (256, 16, 32, 200, 5_000, 500),
        };
        (
            config.max_len,
            config.num_landmarks,
            config.batch_size,
            config.warmup_steps,
            config.total_steps,
            config.eval_frequency,
        ) = shape;
        if task == Task::Image {
            config.valid_size = if lra { 5_000 } else { 1_000 };
        }
        if task == Task::Mlm {
            // Pretraining as the paper did, on HF's BERT layout (and its masked-LM head).
            config.architecture = Architecture::Hf;
        }
        config
    }

    fn listops_preset(preset: Preset) -> Self {
        match preset {
            Preset::Quick => Self {
                task: Task::Listops,
                data_dir: None,
                text_column: "text".into(),
                label_column: "label".into(),
                labels: None,
                train_size: 20_000,
                valid_size: 1_000,
                test_size: 1_000,
                min_len: 20,
                max_len: 100,
                hidden_size: 64,
                num_layers: 2,
                num_heads: 2,
                intermediate_size: 128,
                num_landmarks: 16,
                conv_kernel_size: Some(9),
                attention: AttentionMode::Nystrom,
                dropout: 0.1,
                batch_size: 32,
                learning_rate: 1e-3,
                weight_decay: 0.01,
                warmup_steps: 200,
                total_steps: 5_000,
                eval_frequency: 500,
                grad_clip_norm: Some(1.0),
                seed: 42,
                num_workers: 1,
                mask_probability: 0.15,
                storage: Storage::Memory,
                pad_to_multiple: None,
                architecture: Architecture::Hf,
                listops_tokens: ListopsTokens::Bracketed,
                cycle_momentum: false,
            },
            Preset::Lra => Self {
                task: Task::Listops,
                data_dir: None,
                text_column: "text".into(),
                label_column: "label".into(),
                labels: None,
                train_size: 96_000,
                valid_size: 2_000,
                test_size: 2_000,
                min_len: 500,
                max_len: 2_000,
                hidden_size: 64,
                num_layers: 2,
                num_heads: 2,
                intermediate_size: 128,
                num_landmarks: 64,
                conv_kernel_size: Some(35),
                attention: AttentionMode::Nystrom,
                dropout: 0.1,
                batch_size: 32,
                learning_rate: 1e-4,
                weight_decay: 0.0,
                warmup_steps: 1_000,
                total_steps: 5_000,
                eval_frequency: 50,
                grad_clip_norm: None,
                seed: 42,
                num_workers: 2,
                mask_probability: 0.15,
                storage: Storage::Memory,
                pad_to_multiple: None,
                architecture: Architecture::Lra,
                listops_tokens: ListopsTokens::Lra,
                cycle_momentum: true,
            },
        }
    }

    /// Starts from the task's `preset`, then applies `file` (a JSON object of fields) and `overrides`
    /// (`key=value`, the value read as JSON, else as a string). Unknown keys are errors.
    pub fn resolve(
        task: Task,
        preset: Preset,
        file: Option<&Path>,
        overrides: &[String],
    ) -> Result<Self, String> {
        Self::preset(task, preset).patched(file, overrides)
    }

    /// This configuration with `file`'s fields and then `overrides` applied, validated.
    pub fn patched(&self, file: Option<&Path>, overrides: &[String]) -> Result<Self, String> {
        let mut value = serde_json::to_value(self).expect("serializable");
        if let Some(path) = file {
            let patch: serde_json::Value = read_json(path)?;
            let fields = patch.as_object().ok_or_else(|| {
                format!(
                    "{}: expected a JSON object of configuration fields",
                    path.display()
                )
            })?;
            for (key, field) in fields {
                set_field(&mut value, key, field.clone())
                    .map_err(|err| format!("{}: {err}", path.display()))?;
            }
        }
        for assignment in overrides {
            let (key, raw) = assignment
                .split_once('=')
                .ok_or_else(|| format!("--set {assignment}: expected key=value"))?;
            let field =
                serde_json::from_str(raw).unwrap_or_else(|_| serde_json::Value::String(raw.into()));
            set_field(&mut value, key.trim(), field)
                .map_err(|err| format!("--set {assignment}: {err}"))?;
        }
        let config: Self =
            serde_json::from_value(value).map_err(|err| format!("configuration: {err}"))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates a run's `config.json`; errors name the file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let config: Self = read_json(path)?;
        config
            .validate()
            .map_err(|err| format!("{}: {err}", path.display()))?;
        Ok(config)
    }

    /// Checks values the model and schedule cannot work with.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("batch_size", self.batch_size),
            ("total_steps", self.total_steps),
            ("eval_frequency", self.eval_frequency),
            ("train_size", self.train_size),
            ("valid_size", self.valid_size),
            ("max_len", self.max_len),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(format!("{name} must be positive"));
        }
        // Far beyond any experiment here, and small enough that nothing overflows or asks the
        // allocator for the impossible before the run starts.
        let at_most = [
            ("batch_size", self.batch_size, 1 << 16),
            ("total_steps", self.total_steps, 1 << 32),
            ("train_size", self.train_size, 1 << 28),
            ("valid_size", self.valid_size, 1 << 28),
            ("test_size", self.test_size, 1 << 28),
            ("max_len", self.max_len, 1 << 22),
            ("hidden_size", self.hidden_size, 1 << 14),
            ("num_layers", self.num_layers, 1 << 10),
            ("num_heads", self.num_heads, 1 << 10),
            ("intermediate_size", self.intermediate_size, 1 << 16),
            ("num_landmarks", self.num_landmarks, 1 << 12),
            ("num_workers", self.num_workers, 256),
        ];
        if let Some((name, value, limit)) = at_most.iter().find(|(_, value, limit)| value > limit) {
            return Err(format!(
                "{name} = {value} is above the largest accepted, {limit}"
            ));
        }
        if let Some(labels) = &self.labels {
            if labels.len() < 2 {
                return Err(format!(
                    "labels must name at least 2 classes, got {labels:?}"
                ));
            }
            let mut unique = labels.clone();
            unique.sort();
            unique.dedup();
            if unique.len() != labels.len() {
                return Err(format!("labels must be distinct, got {labels:?}"));
            }
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(format!(
                "weight_decay must be finite and non-negative, got {}",
                self.weight_decay
            ));
        }
        if let Some(norm) = self.grad_clip_norm
            && !(norm.is_finite() && norm > 0.0)
        {
            return Err(format!(
                "grad_clip_norm must be positive (or null), got {norm}"
            ));
        }
        if self.warmup_steps >= self.total_steps {
            return Err(format!(
                "warmup_steps ({}) must be below total_steps ({})",
                self.warmup_steps, self.total_steps
            ));
        }
        if !self.total_steps.is_multiple_of(self.eval_frequency) {
            return Err(format!(
                "total_steps ({}) must be a multiple of eval_frequency ({})",
                self.total_steps, self.eval_frequency
            ));
        }
        if self.task != Task::Listops && self.data_dir.is_none() {
            return Err(format!(
                "the {} task reads its data from data_dir: --set data_dir=DIR",
                serde_json::to_string(&self.task).expect("serializable")
            ));
        }
        if self.task == Task::Mlm && !(self.mask_probability > 0.0 && self.mask_probability < 1.0) {
            return Err(format!(
                "mask_probability must lie in (0, 1), got {}",
                self.mask_probability
            ));
        }
        if self.task == Task::Image && self.max_len < crate::data::image::PIXELS {
            return Err(format!(
                "the image task needs max_len >= {} (one token per pixel), got {}",
                crate::data::image::PIXELS,
                self.max_len
            ));
        }
        if self.task == Task::Listops && self.data_dir.is_none() && self.min_len + 1 >= self.max_len
        {
            return Err(format!(
                "no length lies strictly between min_len ({}) and max_len ({})",
                self.min_len, self.max_len
            ));
        }
        if self.pad_to_multiple == Some(0) {
            return Err("pad_to_multiple must be at least 1 (or null)".into());
        }
        if !(self.learning_rate > 0.0 && self.learning_rate <= 1.0) {
            return Err(format!(
                "learning_rate must lie in (0, 1], got {}",
                self.learning_rate
            ));
        }
        self.model_config()
            .validate()
            .map_err(|err| err.to_string())
    }

    /// The encoder's configuration.
    pub fn model_config(&self) -> NystromformerConfig {
        let vocab = match self.task {
            Task::Listops => VOCAB_SIZE,
            Task::Text | Task::Retrieval => TEXT_VOCAB_SIZE,
            Task::Image => IMAGE_VOCAB_SIZE,
            Task::Mlm => MLM_VOCAB_SIZE,
        };
        NystromformerConfig::new(
            vocab,
            self.hidden_size,
            self.num_layers,
            self.num_heads,
            self.intermediate_size,
        )
        .with_hidden_act(Activation::Gelu)
        .with_hidden_dropout_prob(self.dropout)
        .with_attention_probs_dropout_prob(match self.architecture {
            // LRA's Nyström attention has no dropout of its own (its softmax baseline drops
            // attention probabilities, which the library does not offer).
            Architecture::Lra => 0.0,
            Architecture::Hf => self.dropout,
        })
        .with_intermediate_dropout_prob(match self.architecture {
            Architecture::Lra => self.dropout,
            Architecture::Hf => 0.0,
        })
        .with_max_position_embeddings(self.max_len)
        .with_type_vocab_size(0)
        .with_attention(self.attention)
        .with_num_landmarks(self.num_landmarks)
        .with_conv_kernel_size(self.conv_kernel_size)
        .with_norm_first(self.architecture == Architecture::Lra)
        .with_embedding_layer_norm(self.architecture == Architecture::Hf)
    }

    /// The classification head on `input` pooled features: LRA's `Linear(input, ffn) → ReLU →
    /// Linear(ffn, classes)`, or HF's GELU head of the model width. HF has no two-document head,
    /// so retrieval keeps LRA's in both layouts.
    pub fn head(&self, input: usize, device: &Device) -> ClassifierHead {
        let classes = self.num_classes();
        match self.architecture {
            Architecture::Hf if self.task != Task::Retrieval => {
                ClassifierHead::hf(input, self.hidden_size, classes, self.dropout, device)
            }
            _ => ClassifierHead::lra(input, self.intermediate_size, classes, device),
        }
    }

    /// How sequences are pooled for the head.
    pub fn pooling(&self) -> SequencePooling {
        match self.architecture {
            Architecture::Lra => SequencePooling::lra(self.max_len),
            Architecture::Hf => SequencePooling::Mean,
        }
    }

    /// Number of classes (mlm: the vocabulary).
    pub fn num_classes(&self) -> usize {
        match self.task {
            Task::Listops => LISTOPS_CLASSES,
            Task::Text => self.labels.as_ref().map_or(2, Vec::len),
            Task::Retrieval => 2,
            Task::Image => IMAGE_CLASSES,
            Task::Mlm => MLM_VOCAB_SIZE,
        }
    }

    /// Text: where text and label are in each record.
    pub fn columns(&self) -> Columns {
        Columns {
            text: self.text_column.clone(),
            label: self.label_column.clone(),
        }
    }

    /// The ListOps generator's parameters.
    pub fn generator(&self) -> GeneratorConfig {
        GeneratorConfig {
            min_len: self.min_len,
            max_len: self.max_len,
            ..GeneratorConfig::default()
        }
    }
}

/// What the command line asks of a run's configuration.
#[derive(Debug, Clone)]
pub struct ConfigRequest {
    /// The task.
    pub task: Task,
    /// `--preset`, if given.
    pub preset: Option<Preset>,
    /// `--config FILE`, if given.
    pub file: Option<PathBuf>,
    /// `--set key=value`s, `--seed` and `--attention` included.
    pub overrides: Vec<String>,
}

impl ConfigRequest {
    /// The configuration of a new run (the `quick` preset unless another is asked for).
    pub fn resolve(&self) -> Result<ExperimentConfig, String> {
        ExperimentConfig::resolve(
            self.task,
            self.preset.unwrap_or(Preset::Quick),
            self.file.as_deref(),
            &self.overrides,
        )
    }

    /// The configuration of the run in `artifact_dir` that `--resume` continues: its
    /// `config.json`, validated, which the request may repeat but not change. Without a
    /// `config.json` (a run killed before writing it) the run starts afresh from the request.
    pub fn for_resume(&self, artifact_dir: &Path) -> Result<ExperimentConfig, String> {
        let path = artifact_dir.join("config.json");
        if !path.exists() {
            eprintln!(
                "--resume: {} has no config.json, so no run to continue: starting one",
                artifact_dir.display()
            );
            return self.resolve();
        }
        let saved = ExperimentConfig::load(&path)?;
        let name = |task: Task| serde_json::to_string(&task).expect("serializable");
        if saved.task != self.task {
            return Err(format!(
                "--resume: {} is a {} run, not {}",
                path.display(),
                name(saved.task),
                name(self.task)
            ));
        }
        // Preset or file: compare the whole configuration they give; else only the `--set`s.
        let asked = match self.preset.is_some() || self.file.is_some() {
            true => self.resolve()?,
            false => saved.patched(None, &self.overrides)?,
        };
        let differences = differences(&saved, &asked);
        if !differences.is_empty() {
            return Err(format!(
                "--resume: the options change the run's configuration ({}): {}. A resumed run \
                 keeps its configuration; to change it, start a new run (--overwrite, or \
                 another --artifact-dir)",
                path.display(),
                differences.join("; ")
            ));
        }
        Ok(saved)
    }
}

/// `key: run X, asked Y` for each field that `asked` sets differently from `saved`. Fields that
/// a run fills in when it starts (`null` in `asked`) are not differences.
fn differences(saved: &ExperimentConfig, asked: &ExperimentConfig) -> Vec<String> {
    let saved = serde_json::to_value(saved).expect("serializable");
    let asked = serde_json::to_value(asked).expect("serializable");
    let (saved, asked) = (saved.as_object().unwrap(), asked.as_object().unwrap());
    asked
        .iter()
        .filter(|(key, value)| !value.is_null() && saved.get(*key) != Some(value))
        .map(|(key, value)| {
            let run = saved.get(key).cloned().unwrap_or_default();
            format!("{key}: run {run}, asked {value}")
        })
        .collect()
}

fn set_field(
    config: &mut serde_json::Value,
    key: &str,
    field: serde_json::Value,
) -> Result<(), String> {
    let object = config
        .as_object_mut()
        .expect("the configuration is an object");
    let Some(current) = object.get(key) else {
        let known: Vec<&String> = object.keys().collect();
        return Err(format!(
            "unknown configuration key \"{key}\" (known: {known:?})"
        ));
    };
    let kind = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    };
    // Optional fields (null in the preset) take any type here; serde checks them below.
    if !current.is_null() && !field.is_null() && kind(current) != kind(&field) {
        return Err(format!("\"{key}\" expects {}, got {field}", kind(current)));
    }
    object.insert(key.to_string(), field);
    Ok(())
}
