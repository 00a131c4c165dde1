//! `nystromformer-train`: train, evaluate and run Nyströmformer models.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nystromformer_train::device::{DEVICE_NAMES, choose_device};
use nystromformer_train::encode::encode;

#[derive(Parser)]
#[command(
    version,
    about = "Train, evaluate and run Nyströmformer models on Burn"
)]
struct Cli {
    /// Device to run on: auto (a real GPU through wgpu if present, else flex), flex, ndarray,
    /// wgpu, vulkan, metal, webgpu.
    #[arg(long, global = true, env = "BURN_DEVICE", default_value = "auto")]
    device: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = choose_device(&cli.device)
        .map_err(|err| format!("--device/BURN_DEVICE: {err} (accepted: {DEVICE_NAMES})"))
        .and_then(|device| match cli.command {
            Command::Encode {
                hf_dir,
                input,
                output,
                hf_compatible_mask,
            } => encode(&hf_dir, &input, &output, hf_compatible_mask, &device),
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
