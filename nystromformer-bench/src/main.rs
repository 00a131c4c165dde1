//! `nystromformer-bench`: speed, memory and approximation quality of Nyström attention against
//! exact attention, on every backend compiled in. See README.md beside this crate.

mod implementations;
#[cfg(any(
    feature = "wgpu",
    feature = "vulkan",
    feature = "metal",
    feature = "webgpu"
))]
mod launches;
mod memory;
mod plot;
mod quality;
mod record;
mod report;
mod sweep;
mod timing;
mod train_steps;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::{Parser, Subcommand};
use implementations::Implementation;
use indicatif::{ProgressBar, ProgressStyle};
use nystromformer::device::choose_device;
use sweep::{Settings, Shape, measure};

#[derive(Parser)]
#[command(version, about = "Benchmarks of Nyström attention on Burn")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Pass {
    /// Forward only.
    Forward,
    /// Forward and backward.
    Backward,
    /// Both, one after the other.
    Both,
}

impl Pass {
    fn name(self) -> &'static str {
        match self {
            Pass::Forward => "forward",
            Pass::Backward => "backward",
            Pass::Both => "both",
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Time and peak memory over sequence lengths, landmarks, heads, head sizes and batches.
    Sweep {
        /// Devices: flex, ndarray, wgpu, vulkan, metal, webgpu (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "flex")]
        devices: Vec<String>,
        /// Implementations (comma-separated).
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "nystrom,burn-attention,naive-softmax"
        )]
        implementations: Vec<Implementation>,
        /// Sequence lengths.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "512,1024,2048,4096,8192,16384"
        )]
        lengths: Vec<usize>,
        /// Landmarks (Nyström only).
        #[arg(long, value_delimiter = ',', default_value = "64")]
        landmarks: Vec<usize>,
        /// Heads.
        #[arg(long, value_delimiter = ',', default_value = "8")]
        heads: Vec<usize>,
        /// Head sizes.
        #[arg(long, value_delimiter = ',', default_value = "64")]
        head_dims: Vec<usize>,
        /// Batch sizes.
        #[arg(long, value_delimiter = ',', default_value = "1")]
        batches: Vec<usize>,
        /// Passes: forward, backward (forward+backward), or both.
        #[arg(long, value_enum, default_value = "forward")]
        pass: Pass,
        /// Untimed runs per shape.
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// Timed runs per shape.
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Largest intermediate tensor allowed, GiB (bigger shapes are recorded as skipped).
        #[arg(long, default_value_t = 4.0)]
        max_intermediate_gib: f64,
        /// The fraction of each sequence that is padding, at its end (0 to 1, exclusive): a
        /// batch padded to its longest sequence. Recorded in each record's `padded`.
        #[arg(long, default_value_t = 0.0)]
        padded: f64,
        /// Output directory (records-<implementation>-<device>.jsonl).
        #[arg(long, default_value = "nystromformer-bench/results/latest")]
        out: PathBuf,
        /// Run every implementation in this process (by default each gets its own, so that
        /// device-pool peaks do not mix).
        #[arg(long)]
        in_process: bool,
    },
    /// Relative error against exact attention vs landmarks, iterations and initialisation.
    Quality {
        /// Device.
        #[arg(long, default_value = "flex")]
        device: String,
        /// Sequence length.
        #[arg(long, default_value_t = 1024)]
        n: usize,
        /// Head size.
        #[arg(long, default_value_t = 64)]
        head_dim: usize,
        /// Landmarks.
        #[arg(long, value_delimiter = ',', default_value = "8,16,32,64,128,256")]
        landmarks: Vec<usize>,
        /// Pseudo-inverse iterations.
        #[arg(long, value_delimiter = ',', default_value = "1,3,6,10")]
        iterations: Vec<usize>,
        /// Take Q, K, V from a `nystromformer-train` artifact directory (attention layer
        /// `--layer`, longest validation sequence) instead of random ones; `--n` and
        /// `--head-dim` then follow the model and its data.
        #[arg(long)]
        model: Option<PathBuf>,
        /// With `--model`: which encoder layer's attention.
        #[arg(long, default_value_t = 0)]
        layer: usize,
        /// Output file, one JSON record per line.
        #[arg(
            long,
            default_value = "nystromformer-bench/results/latest/quality.ndjson"
        )]
        out: PathBuf,
    },
    /// Training steps per second of the `lra` ListOps model (forward, backward, AdamW) on
    /// random batches, full-length or padded; `peers/torch_train_steps.py` is the PyTorch side.
    TrainSteps {
        /// Device: flex, ndarray, wgpu, vulkan, metal, webgpu.
        #[arg(long, default_value = "flex")]
        device: String,
        /// Sequences per step.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Tokens per sequence (LRA ListOps' longest).
        #[arg(long, default_value_t = 2000)]
        length: usize,
        /// Pad the batch as real ListOps batches are: the sequences' valid lengths spread evenly
        /// from this to `--length`, the rest padding (default: no padding).
        #[arg(long)]
        min_length: Option<usize>,
        /// Untimed steps.
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// Timed steps.
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// The tensor-op stages instead of the custom kernels (written as
        /// `train-steps-burn-DEVICE-tensor-ops.json`).
        #[arg(long)]
        tensor_ops: bool,
        /// Count the kernel launches of one more step (CubeCL devices): the total goes into the
        /// record, the kernels by name into `train-steps-launches-burn-DEVICE.md`.
        #[arg(long)]
        launches: bool,
        /// Output directory (`train-steps-burn-DEVICE.json` goes there).
        #[arg(long, default_value = "nystromformer-bench/results/latest")]
        out: PathBuf,
    },
    /// Kernel launches of one forward and one forward + backward per implementation on a
    /// CubeCL device (b 1, h 8, d 64, m 64), counted after a warm-up pass; writes
    /// `launches-DEVICE-nN.md`.
    Launches {
        /// Device: wgpu, vulkan, metal, webgpu.
        #[arg(long, default_value = "wgpu")]
        device: String,
        /// Sequence length.
        #[arg(long, default_value_t = 4096)]
        n: usize,
        /// Pad the last tenth of the sequence (a padding mask; written as
        /// `launches-DEVICE-nN-padded.md`).
        #[arg(long)]
        padded: bool,
        /// Implementations (comma-separated).
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "nystrom,nystrom-tensor-ops,burn-attention"
        )]
        implementations: Vec<Implementation>,
        /// Output directory.
        #[arg(long, default_value = "nystromformer-bench/results/latest")]
        out: PathBuf,
    },
    /// Merge every *.jsonl record file of a directory (ours and the peers') into results.csv,
    /// results.md and log-log charts of time and memory against n (SVG).
    Report {
        /// Directory of record files.
        #[arg(long, default_value = "nystromformer-bench/results/latest")]
        dir: PathBuf,
    },
}

/// Counts and writes the kernel launches of `implementations` (see `Cmd::Launches`).
#[cfg(any(
    feature = "wgpu",
    feature = "vulkan",
    feature = "metal",
    feature = "webgpu"
))]
fn launch_counts(
    device: &str,
    n: usize,
    padded: bool,
    implementations: &[Implementation],
    out: &Path,
) -> Result<(), String> {
    // Flex takes the custom kernels too, but launches nothing that CubeCL could count.
    if !matches!(device, "wgpu" | "vulkan" | "metal" | "webgpu") {
        return Err(format!("launches: {device} is not a CubeCL device"));
    }
    let dev = choose_device(device)?;
    let shape = Shape {
        batch: 1,
        heads: 8,
        n,
        head_dim: 64,
        landmarks: 64,
    };
    let mut lines = vec![
        format!(
            "# Kernel launches per call, {device}, b 1, h 8, n {n}, d 64, m 64{}",
            if padded { ", last tenth padded" } else { "" }
        ),
        String::new(),
        format!("Commit {}, {}.", commit(), machine()),
        String::new(),
        "| implementation | pass | launches | by kernel |".into(),
        "|---|---|---|---|".into(),
    ];
    for &implementation in implementations {
        for (backward, pass) in [(false, "forward"), (true, "forward + backward")] {
            let counts = launches::count(implementation, shape, backward, padded, &dev);
            let total: usize = counts.values().sum();
            let by_kernel: Vec<String> = counts
                .iter()
                .map(|(kernel, count)| format!("{count} × `{kernel}`"))
                .collect();
            println!("{} {pass}: {total} launches", implementation.name());
            lines.push(format!(
                "| {} | {pass} | {total} | {} |",
                implementation.name(),
                by_kernel.join(", ")
            ));
        }
    }
    std::fs::create_dir_all(out).map_err(|err| format!("{}: {err}", out.display()))?;
    let suffix = if padded { "-padded" } else { "" };
    write_lines(
        &out.join(format!("launches-{device}-n{n}{suffix}.md")),
        &lines,
    )
}

/// Without a CubeCL backend there is nothing to count.
#[cfg(not(any(
    feature = "wgpu",
    feature = "vulkan",
    feature = "metal",
    feature = "webgpu"
)))]
fn launch_counts(
    device: &str,
    _: usize,
    _: bool,
    _: &[Implementation],
    _: &Path,
) -> Result<(), String> {
    Err(format!(
        "launches: {device}: built without a CubeCL backend feature"
    ))
}

/// The kernel launches of one more training step, per kernel name.
#[cfg(any(
    feature = "wgpu",
    feature = "vulkan",
    feature = "metal",
    feature = "webgpu"
))]
fn step_launches(
    step: train_steps::TrainStep,
) -> Result<std::collections::BTreeMap<&'static str, usize>, String> {
    Ok(launches::observe(|| step.run()).1)
}

/// Without a CubeCL backend there is nothing to count.
#[cfg(not(any(
    feature = "wgpu",
    feature = "vulkan",
    feature = "metal",
    feature = "webgpu"
)))]
fn step_launches(
    _: train_steps::TrainStep,
) -> Result<std::collections::BTreeMap<&'static str, usize>, String> {
    Err("train-steps --launches: built without a CubeCL backend feature".into())
}

/// The commit the binary was built from (see `build.rs`): with uncommitted changes, the last
/// commit before them.
fn commit() -> String {
    env!("NYSTROMFORMER_BENCH_COMMIT").to_string()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} cores")
}

fn write_lines(path: &Path, lines: &[String]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let mut file =
        std::fs::File::create(&tmp).map_err(|err| format!("{}: {err}", tmp.display()))?;
    for line in lines {
        writeln!(file, "{line}").map_err(|err| format!("{}: {err}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).map_err(|err| format!("{}: {err}", path.display()))
}

/// Every combination of the sweep's axes, lengths innermost (increasing).
fn shapes(
    batches: &[usize],
    heads: &[usize],
    head_dims: &[usize],
    landmarks: &[usize],
    lengths: &[usize],
) -> Vec<Shape> {
    let mut shapes = Vec::new();
    for &batch in batches {
        for &h in heads {
            for &d in head_dims {
                for &m in landmarks {
                    for &n in lengths {
                        shapes.push(Shape {
                            batch,
                            heads: h,
                            n,
                            head_dim: d,
                            landmarks: m,
                        });
                    }
                }
            }
        }
    }
    shapes
}

/// Re-runs this command once per device, implementation and pass in a child process, so that
/// device-pool peaks (which only grow within a process) never mix.
fn sweep_in_children(
    devices: &[String],
    implementations: &[Implementation],
    pass: Pass,
) -> Result<(), String> {
    let me = std::env::current_exe().map_err(|err| err.to_string())?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let passes: &[Pass] = if pass == Pass::Both {
        &[Pass::Forward, Pass::Backward]
    } else {
        &[pass]
    };
    let replaced = ["--devices", "--implementations", "--pass"];
    let mut kept: Vec<String> = Vec::new();
    let mut skip_value = false;
    for arg in &args {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        if replaced.contains(&arg.as_str()) {
            skip_value = true;
        } else if !replaced
            .iter()
            .any(|flag| arg.starts_with(&format!("{flag}=")))
        {
            kept.push(arg.clone());
        }
    }
    for name in devices {
        for implementation in implementations {
            for child_pass in passes {
                let status = Command::new(&me)
                    .args(&kept)
                    .args([
                        "--devices",
                        name,
                        "--implementations",
                        implementation.name(),
                        "--pass",
                        child_pass.name(),
                        "--in-process",
                    ])
                    .status()
                    .map_err(|err| err.to_string())?;
                if !status.success() {
                    eprintln!(
                        "warning: {} on {name} ({}) exited with {status}",
                        implementation.name(),
                        child_pass.name()
                    );
                }
            }
        }
    }
    Ok(())
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Cmd::TrainSteps {
            device,
            batch,
            length,
            min_length,
            warmup,
            steps,
            tensor_ops,
            launches,
            out,
        } => {
            if batch == 0 || length == 0 || steps == 0 {
                return Err("train-steps: --batch, --length and --steps must be at least 1".into());
            }
            if let Some(min) = min_length.filter(|&min| min == 0 || min > length) {
                return Err(format!(
                    "train-steps: --min-length {min} must be between 1 and --length {length}"
                ));
            }
            if launches && !matches!(device.as_str(), "wgpu" | "vulkan" | "metal" | "webgpu") {
                return Err(format!(
                    "train-steps --launches: {device} is not a CubeCL device"
                ));
            }
            let dev = choose_device(&device)?;
            let valid = train_steps::valid_lengths(batch, length, min_length);
            let step = train_steps::TrainStep::new(&dev, length, &valid, !tensor_ops);
            let (step, steps_per_second, step_seconds) = train_steps::measure(step, warmup, steps);
            let backend = match tensor_ops {
                true => format!("burn-{device}-tensor-ops"),
                false => format!("burn-{device}"),
            };
            let padding = match min_length {
                Some(min) => format!(", valid lengths {min}..={length}"),
                None => String::new(),
            };
            println!(
                "{steps_per_second:.3} steps/s ({steps} steps of {batch} × {length}{padding} on {backend})"
            );
            let launches_per_step = match launches {
                true => {
                    let counts = step_launches(step)?;
                    let total = counts.values().sum::<usize>();
                    println!("{total} kernel launches per step");
                    let mut lines = vec![
                        format!(
                            "# Kernel launches of one LRA ListOps training step, {backend}, {batch} × {length}{padding}"
                        ),
                        String::new(),
                        format!("Commit {}, {}. {total} launches.", commit(), machine()),
                        String::new(),
                        "| launches | kernel |".into(),
                        "|---|---|".into(),
                    ];
                    let mut by_count: Vec<_> = counts.into_iter().collect();
                    by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
                    lines.extend(
                        by_count
                            .iter()
                            .map(|(kernel, n)| format!("| {n} | `{kernel}` |")),
                    );
                    std::fs::create_dir_all(&out)
                        .map_err(|err| format!("{}: {err}", out.display()))?;
                    write_lines(
                        &out.join(format!("train-steps-launches-{backend}.md")),
                        &lines,
                    )?;
                    Some(total)
                }
                false => None,
            };
            train_steps::write(
                &out,
                &train_steps::TrainStepRecord {
                    implementation: "nystromformer-train listops --preset lra".into(),
                    backend,
                    batch,
                    length,
                    valid_lengths: min_length.map(|_| valid),
                    steps,
                    steps_per_second,
                    step_seconds,
                    launches_per_step,
                    commit: commit(),
                    machine: machine(),
                },
            )
        }
        Cmd::Sweep {
            devices,
            implementations,
            lengths,
            landmarks,
            heads,
            head_dims,
            batches,
            pass,
            warmup,
            reps,
            max_intermediate_gib,
            padded,
            out,
            in_process,
        } => {
            if !(0.0..1.0).contains(&padded) {
                return Err(format!("sweep: --padded {padded} must be in [0, 1)"));
            }
            std::fs::create_dir_all(&out).map_err(|err| format!("{}: {err}", out.display()))?;
            if !in_process && (implementations.len() > 1 || devices.len() > 1 || pass == Pass::Both)
            {
                return sweep_in_children(&devices, &implementations, pass);
            }
            let shapes = shapes(&batches, &heads, &head_dims, &landmarks, &lengths);
            for name in &devices {
                let dev = choose_device(name)?;
                let settings = Settings {
                    warmup,
                    reps,
                    max_intermediate_bytes: (max_intermediate_gib * (1u64 << 30) as f64) as u64,
                    padded,
                    backend: format!("burn-{name}"),
                    commit: commit(),
                    machine: machine(),
                };
                for implementation in &implementations {
                    // Exact attention ignores landmarks: measure it once per shape.
                    let mut todo: Vec<Shape> = shapes.clone();
                    if !implementation.uses_landmarks() {
                        todo.retain(|s| s.landmarks == landmarks[0]);
                    }
                    let passes: &[bool] = match pass {
                        Pass::Forward => &[false],
                        Pass::Backward => &[true],
                        Pass::Both => &[false, true],
                    };
                    let bar = ProgressBar::new((todo.len() * passes.len()) as u64);
                    bar.set_style(
                        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}")
                            .unwrap(),
                    );
                    bar.set_prefix(format!("{} on {name}", implementation.name()));
                    let mut lines = Vec::new();
                    for &backward in passes {
                        for shape in &todo {
                            let label = if backward { "fwd+bwd" } else { "fwd" };
                            bar.set_message(format!("n={} m={} {label}", shape.n, shape.landmarks));
                            let record =
                                measure(*implementation, *shape, backward, &dev, &settings);
                            lines.push(serde_json::to_string(&record).unwrap());
                            bar.inc(1);
                        }
                    }
                    bar.finish();
                    let file = format!(
                        "records-{}-{name}-{}.jsonl",
                        implementation.name(),
                        pass.name()
                    );
                    write_lines(&out.join(&file), &lines)?;
                    eprintln!("wrote {}", out.join(file).display());
                }
            }
            Ok(())
        }
        Cmd::Quality {
            device: name,
            n,
            head_dim,
            landmarks,
            iterations,
            model,
            layer,
            out,
        } => {
            let dev = choose_device(&name)?;
            let inputs = match &model {
                Some(dir) => quality::trained_inputs(dir, layer, &dev)?,
                None => quality::random_inputs(&dev, n, head_dim),
            };
            let records = quality::quality_sweep(&inputs, &landmarks, &iterations);
            if let Some(parent) = out.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|err| format!("{}: {err}", parent.display()))?;
            }
            let lines: Vec<String> = records
                .iter()
                .map(|r| serde_json::to_string(r).unwrap())
                .collect();
            for r in &records {
                println!(
                    "m={:>4} iters={:>2} {:<8} relative error {:.4}  residual {:.3e}",
                    r.landmarks, r.pinv_iterations, r.pinv_init, r.relative_error, r.pinv_residual
                );
            }
            write_lines(&out, &lines)
        }
        Cmd::Launches {
            device,
            n,
            padded,
            implementations,
            out,
        } => launch_counts(&device, n, padded, &implementations, &out),
        Cmd::Report { dir } => {
            let records = report::read_records(&dir)?;
            if records.is_empty() {
                return Err(format!("{}: no *.jsonl records", dir.display()));
            }
            std::fs::write(dir.join("results.csv"), report::to_csv(&records))
                .map_err(|err| err.to_string())?;
            let markdown = report::to_markdown(&records);
            std::fs::write(dir.join("results.md"), &markdown).map_err(|err| err.to_string())?;
            for chart in plot::record_charts(&dir, &records)?
                .into_iter()
                .chain(plot::quality_chart(&dir)?)
            {
                eprintln!("wrote {chart}");
            }
            println!("{markdown}");
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    nystromformer_train::cli::run_main(|| run(Cli::parse()))
}
