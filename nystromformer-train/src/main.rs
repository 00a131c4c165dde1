//! `nystromformer-train`: train, evaluate and run Nyströmformer models.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use nystromformer::AttentionMode;
use nystromformer::device::{DEVICE_NAMES, choose_device};
use nystromformer_train::config::{ConfigRequest, Preset, Task};
use nystromformer_train::data::listops::{GeneratorConfig, generate, to_tsv};
use nystromformer_train::encode::encode;
use nystromformer_train::eval::eval_command;
use nystromformer_train::files::write_atomically;
use nystromformer_train::training::{Outcome, TrainOptions, train};

#[derive(Parser)]
#[command(
    version,
    about = "Train, evaluate and run Nyströmformer models on Burn"
)]
struct Cli {
    /// Device: auto (a real GPU through wgpu if present, else flex), flex, ndarray, wgpu,
    /// vulkan, metal, webgpu.
    #[arg(long, global = true, env = "BURN_DEVICE", default_value = "auto")]
    device: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum AttentionArg {
    /// Nyström attention.
    Nystrom,
    /// Exact softmax attention (the standard Transformer baseline, same code otherwise).
    Softmax,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model; the dashboard runs when stdout is a terminal, plain lines otherwise.
    Train {
        /// The task. listops: generated, or LRA's basic_{train,val,test}.tsv with
        /// `--set data_dir=DIR`. The others read `--set data_dir=DIR`: text: train/valid/test
        /// .tsv, .csv or .jsonl; retrieval: LRA's new_aan_pairs.{train,eval,test}.tsv; image:
        /// CIFAR-10's binary batches (data_batch_1..5.bin, test_batch.bin); mlm:
        /// train/valid/test .txt.
        task: Task,
        /// Starting configuration (default: quick). With `--resume` it may only repeat the run's.
        #[arg(long, value_enum)]
        preset: Option<Preset>,
        /// JSON object of configuration fields applied over the preset (unknown keys rejected).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override one field, e.g. `--set learning_rate=3e-4` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Where config, checkpoints, logs and the final model go (default: artifacts/TASK).
        #[arg(long)]
        artifact_dir: Option<PathBuf>,
        /// Continue the run in the artifact directory from its newest complete checkpoint (from
        /// the beginning if it has none). Its config.json is the configuration: --preset,
        /// --config, --set, --seed and --attention may repeat it, not change it.
        #[arg(long, conflicts_with = "overwrite")]
        resume: bool,
        /// Start afresh in an artifact directory that holds a run, deleting that run's files.
        #[arg(long)]
        overwrite: bool,
        /// Seed of data, shuffling and initialisation (overrides the configuration's).
        #[arg(long)]
        seed: Option<u64>,
        /// Attention (overrides the configuration's).
        #[arg(long, value_enum)]
        attention: Option<AttentionArg>,
        /// Plain progress lines instead of the dashboard.
        #[arg(long)]
        headless: bool,
        /// Stop after this many steps (a multiple of eval_frequency) and exit 0 without a final
        /// model; `--resume` continues the run.
        #[arg(long)]
        stop_at_step: Option<usize>,
        /// Data-parallel training on several devices through burn-train's multi-device
        /// strategy, e.g. `wgpu:0,wgpu:1`: each step takes one batch of `batch_size` per device
        /// and sums the gradients on the first, which also validates. Overrides `--device`.
        #[arg(long, value_delimiter = ',', value_name = "DEVICE,DEVICE,...")]
        devices: Vec<String>,
    },
    /// Evaluate a trained model; prints one JSON line {"accuracy", "loss", "count"} (mlm:
    /// accuracy and loss over the masked positions, count in windows).
    Eval {
        /// A `train` artifact directory (config.json and model.bpk).
        #[arg(long)]
        artifact_dir: PathBuf,
        /// A data file of the run's task (ListOps TSV; text TSV, CSV or JSONL; AAN pairs TSV;
        /// CIFAR-10 .bin; plain text).
        #[arg(long)]
        data: PathBuf,
    },
    /// Write data sets.
    Data {
        #[command(subcommand)]
        task: DataTask,
    },
    /// Encode token ids with a Hugging Face Nystromformer checkpoint and write the last hidden
    /// state as JSON ({"last_hidden_state": [[[...]]]}).
    Encode {
        /// Directory with config.json and model.safetensors or pytorch_model.bin.
        #[arg(long)]
        hf_dir: PathBuf,
        /// JSON file: {"input_ids": [[...]], "attention_mask": [[...]]} (mask optional).
        #[arg(long)]
        input: PathBuf,
        /// Where to write the output JSON (written atomically).
        #[arg(long)]
        output: PathBuf,
        /// Let padded tokens into landmark means and the skip convolution exactly as HF does.
        /// Without it padding never affects valid positions (the library default), and results
        /// for padded batches differ from HF's there.
        #[arg(long)]
        hf_compatible_mask: bool,
    },
}

#[derive(Subcommand)]
enum DataTask {
    /// Generate ListOps with LRA's rules as basic_{train,val,test}.tsv.
    Listops {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Training examples.
        #[arg(long, default_value_t = 96_000)]
        train: usize,
        /// Validation examples.
        #[arg(long, default_value_t = 2_000)]
        valid: usize,
        /// Test examples.
        #[arg(long, default_value_t = 2_000)]
        test: usize,
        /// Seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Lengths are strictly above this.
        #[arg(long, default_value_t = 500)]
        min_len: usize,
        /// Lengths are strictly below this.
        #[arg(long, default_value_t = 2_000)]
        max_len: usize,
    },
}

fn run(cli: Cli) -> Result<(), String> {
    let device = || {
        choose_device(&cli.device)
            .map_err(|err| format!("--device/BURN_DEVICE: {err} (accepted: {DEVICE_NAMES})"))
    };
    match cli.command {
        Command::Train {
            task,
            preset,
            config,
            overrides,
            artifact_dir,
            resume,
            overwrite,
            seed,
            attention,
            headless,
            stop_at_step,
            devices,
        } => {
            let mut overrides = overrides;
            if let Some(seed) = seed {
                overrides.push(format!("seed={seed}"));
            }
            if let Some(attention) = attention {
                let mode = match attention {
                    AttentionArg::Nystrom => AttentionMode::Nystrom,
                    AttentionArg::Softmax => AttentionMode::Softmax,
                };
                overrides.push(format!(
                    "attention={}",
                    serde_json::to_string(&mode).unwrap()
                ));
            }
            let artifact_dir = artifact_dir.unwrap_or_else(|| {
                PathBuf::from("artifacts")
                    .join(serde_json::to_value(task).unwrap().as_str().unwrap())
            });
            let request = ConfigRequest {
                task,
                preset,
                file: config,
                overrides,
            };
            let config = match resume {
                true => request.for_resume(&artifact_dir)?,
                false => request.resolve()?,
            };
            let data_parallel = devices
                .iter()
                .map(|name| {
                    choose_device(name).map_err(|err| {
                        format!("--devices: {err} (accepted: {DEVICE_NAMES}, NAME:INDEX)")
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let device = match data_parallel.first() {
                Some(first) => first.clone(),
                None => device()?,
            };
            let options = TrainOptions {
                artifact_dir,
                resume,
                overwrite,
                headless,
                stop_at_step,
                data_parallel,
            };
            match train(&config, &options, &device)? {
                Outcome::Finished(summary) => {
                    println!("{}", serde_json::to_string(&summary).unwrap())
                }
                Outcome::Paused { step } => println!("{{\"paused_at_step\": {step}}}"),
            }
            Ok(())
        }
        Command::Eval { artifact_dir, data } => {
            let result = eval_command(&artifact_dir, &data, &device()?)?;
            println!("{}", serde_json::to_string(&result).unwrap());
            Ok(())
        }
        Command::Data {
            task:
                DataTask::Listops {
                    out,
                    train,
                    valid,
                    test,
                    seed,
                    min_len,
                    max_len,
                },
        } => {
            if min_len + 1 >= max_len {
                return Err(format!(
                    "no length lies strictly between --min-len {min_len} and --max-len {max_len}"
                ));
            }
            std::fs::create_dir_all(&out).map_err(|err| format!("{}: {err}", out.display()))?;
            let generator = GeneratorConfig {
                min_len,
                max_len,
                ..GeneratorConfig::default()
            };
            for (name, count, offset) in [
                ("basic_train.tsv", train, 0),
                ("basic_val.tsv", valid, 1),
                ("basic_test.tsv", test, 2),
            ] {
                let examples = generate(count, seed.wrapping_add(offset), &generator);
                write_atomically(&out.join(name), to_tsv(&examples).as_bytes())?;
                eprintln!("wrote {} examples to {}", count, out.join(name).display());
            }
            Ok(())
        }
        Command::Encode {
            hf_dir,
            input,
            output,
            hf_compatible_mask,
        } => encode(&hf_dir, &input, &output, hf_compatible_mask, &device()?),
    }
}

fn main() -> ExitCode {
    nystromformer_train::cli::run_main(|| run(Cli::parse()))
}
