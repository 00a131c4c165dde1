//! Loading HF Nystromformer checkpoints (`model.safetensors` or `pytorch_model.bin`) through
//! burn-store, with a key-remapping table and an error that names what does not fit.

use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::store::{
    ApplyError, ApplyResult, FloatCastAdapter, KeyRemapper, ModuleAdapter, ModuleSnapshot,
    PyTorchToBurnAdapter, PytorchStore, SafetensorsStore,
};
use burn::tensor::{DType, Device};

use crate::attention::MaskPolicy;
use crate::model::{
    NystromformerConfig, NystromformerEncoder, NystromformerForMaskedLM,
    NystromformerForSequenceClassification, Pooling,
};

use super::config::HfNystromformerConfig;

/// HF checkpoint key (regex) → library module path. Applied in order, each on the result of
/// the previous one; a key that no rule touches must already be a library path.
pub const KEY_REMAP: &[(&str, &str)] = &[
    (r"embeddings\.LayerNorm\.", "embeddings.layer_norm."),
    (
        r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value|conv)\.",
        "layers.$1.attention.$2.",
    ),
    (
        r"encoder\.layer\.(\d+)\.attention\.output\.dense\.",
        "layers.$1.attention.output.",
    ),
    (
        r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.",
        "layers.$1.attention_norm.",
    ),
    (
        r"encoder\.layer\.(\d+)\.intermediate\.dense\.",
        "layers.$1.intermediate.",
    ),
    (
        r"encoder\.layer\.(\d+)\.output\.dense\.",
        "layers.$1.output.",
    ),
    (
        r"encoder\.layer\.(\d+)\.output\.LayerNorm\.",
        "layers.$1.output_norm.",
    ),
    (r"^cls\.predictions\.transform\.dense\.", "cls.dense."),
    (
        r"^cls\.predictions\.transform\.LayerNorm\.",
        "cls.layer_norm.",
    ),
    (r"^cls\.predictions\.decoder\.", "cls.decoder."),
    (r"^cls\.predictions\.bias$", "cls.decoder.bias"),
];

/// Why a checkpoint could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `config.json` is not valid JSON for this model.
    #[error("{path}:{line}:{column}: {source}", line = source.line(), column = source.column())]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error, with line and column.
        source: serde_json::Error,
    },
    /// The configuration is valid JSON but describes something the library cannot build.
    #[error("{path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The directory holds neither `model.safetensors` nor `pytorch_model.bin`.
    #[error("{dir}: no model.safetensors or pytorch_model.bin")]
    NoWeights {
        /// The checkpoint directory.
        dir: PathBuf,
    },
    /// The weight file could not be opened or parsed.
    #[error("{path}: {message}")]
    Store {
        /// The weight file.
        path: PathBuf,
        /// The store's error.
        message: String,
    },
    /// The weights do not match the model: missing or unexpected keys, or wrong shapes.
    #[error(
        "{path}: weights do not match the model\n  missing: {missing:?}\n  unexpected: {unexpected:?}\n  mismatched: {mismatched:?}"
    )]
    Mismatch {
        /// The weight file.
        path: PathBuf,
        /// Library parameters the file does not provide.
        missing: Vec<String>,
        /// File keys (after remapping) that no parameter takes.
        unexpected: Vec<String>,
        /// Shape or type mismatches, one line each.
        mismatched: Vec<String>,
    },
}

/// A checkpoint directory: its configuration and weight file.
#[derive(Debug, Clone)]
pub struct HfCheckpoint {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// The parsed `config.json`.
    pub config: HfNystromformerConfig,
    /// `model.safetensors` or, failing that, `pytorch_model.bin`.
    pub weights: PathBuf,
}

impl HfCheckpoint {
    /// Reads `dir/config.json` and finds the weight file.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, LoadError> {
        let dir = dir.as_ref().to_path_buf();
        let config = HfNystromformerConfig::from_file(&dir.join("config.json"))?;
        let weights = ["model.safetensors", "pytorch_model.bin"]
            .iter()
            .map(|name| dir.join(name))
            .find(|path| path.is_file())
            .ok_or_else(|| LoadError::NoWeights { dir: dir.clone() })?;
        Ok(Self {
            dir,
            config,
            weights,
        })
    }

    /// The library configuration for this checkpoint (see
    /// [`HfNystromformerConfig::to_model_config`]).
    pub fn model_config(&self, mask_policy: MaskPolicy) -> Result<NystromformerConfig, LoadError> {
        self.config
            .to_model_config(mask_policy)
            .map_err(|message| LoadError::Config {
                path: self.dir.join("config.json"),
                message,
            })
    }

    /// Loads the encoder (HF `NystromformerModel`); a task checkpoint's head weights are
    /// ignored.
    pub fn load_encoder(
        &self,
        mask_policy: MaskPolicy,
        device: &Device,
    ) -> Result<NystromformerEncoder, LoadError> {
        let mut model = self.model_config(mask_policy)?.init(device);
        let remap = [(r"^nystromformer\.", "")];
        let result = self.apply(&mut model, &remap)?;
        let head = |key: &String| key.starts_with("cls.") || key.starts_with("classifier.");
        self.check(result, &[], head)?;
        Ok(model)
    }

    /// Loads HF `NystromformerForSequenceClassification` (first-token pooling, as HF).
    pub fn load_sequence_classification(
        &self,
        mask_policy: MaskPolicy,
        device: &Device,
    ) -> Result<NystromformerForSequenceClassification, LoadError> {
        let config = self.model_config(mask_policy)?;
        let mut model = NystromformerForSequenceClassification::new(
            &config,
            self.config.num_labels(),
            Pooling::First,
            device,
        );
        let result = self.apply(&mut model, &[])?;
        self.check(result, &[], |_| false)?;
        Ok(model)
    }

    /// Loads HF `NystromformerForMaskedLM`. The decoder weight, tied to the word embeddings
    /// and so usually absent from the file, is taken from them.
    pub fn load_masked_lm(
        &self,
        mask_policy: MaskPolicy,
        device: &Device,
    ) -> Result<NystromformerForMaskedLM, LoadError> {
        let config = self.model_config(mask_policy)?;
        let mut model = NystromformerForMaskedLM::new(&config, device);
        let result = self.apply(&mut model, &[])?;
        let tied = "cls.decoder.weight";
        let decoder_missing = result.missing.iter().any(|(path, _)| path == tied);
        self.check(result, &[tied], |_| false)?;
        if decoder_missing {
            let embeddings = model.nystromformer.embeddings.word_embeddings.weight.val();
            model.cls.decoder.weight = Param::from_tensor(embeddings.transpose());
        }
        Ok(model)
    }

    /// Applies the file to `model` with [`KEY_REMAP`] after `extra_remap`, reporting rather than
    /// failing on missing, unused or mismatched keys.
    fn apply<M: ModuleSnapshot>(
        &self,
        model: &mut M,
        extra_remap: &[(&str, &str)],
    ) -> Result<ApplyResult, LoadError> {
        let patterns = extra_remap.iter().chain(KEY_REMAP).copied();
        let remapper =
            KeyRemapper::from_pattern_iter(patterns).map_err(|err| LoadError::Store {
                path: self.weights.clone(),
                message: format!("bad remap pattern: {err}"),
            })?;
        let store_error = |err: &dyn std::fmt::Display| LoadError::Store {
            path: self.weights.clone(),
            message: err.to_string(),
        };
        if self
            .weights
            .extension()
            .is_some_and(|ext| ext == "safetensors")
        {
            let mut store = SafetensorsStore::from_file(&self.weights)
                .with_from_adapter(PyTorchToBurnAdapter.chain(FloatCastAdapter::to(DType::F32)))
                .remap(remapper)
                .allow_partial(true)
                .validate(false);
            model.load_from(&mut store).map_err(|err| store_error(&err))
        } else {
            let mut store = PytorchStore::from_file(&self.weights)
                .remap(remapper)
                .allow_partial(true)
                .validate(false);
            model.load_from(&mut store).map_err(|err| store_error(&err))
        }
    }

    /// Turns an [`ApplyResult`] into an error unless every parameter was loaded (`may_miss`
    /// excepted) and every file key was used (`may_ignore` excepted).
    fn check(
        &self,
        result: ApplyResult,
        may_miss: &[&str],
        may_ignore: impl Fn(&String) -> bool,
    ) -> Result<(), LoadError> {
        let missing: Vec<String> = result
            .missing
            .into_iter()
            .map(|(path, _)| path)
            .filter(|path| !may_miss.contains(&path.as_str()))
            .collect();
        let unexpected: Vec<String> = result
            .unused
            .into_iter()
            .filter(|key| !may_ignore(key))
            .collect();
        let mismatched: Vec<String> = result.errors.iter().map(describe).collect();
        if missing.is_empty() && unexpected.is_empty() && mismatched.is_empty() {
            Ok(())
        } else {
            Err(LoadError::Mismatch {
                path: self.weights.clone(),
                missing,
                unexpected,
                mismatched,
            })
        }
    }
}

fn describe(error: &ApplyError) -> String {
    match error {
        ApplyError::ShapeMismatch {
            path,
            expected,
            found,
        } => format!("{path}: expected shape {expected:?}, file has {found:?}"),
        other => other.to_string(),
    }
}
