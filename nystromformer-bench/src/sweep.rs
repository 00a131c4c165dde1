//! Sweeps over shapes for one implementation on one device: time and peak memory per shape.

use std::panic::{AssertUnwindSafe, catch_unwind};

use burn::tensor::{Bool, Device, Distribution, Tensor, TensorData};

use crate::implementations::Implementation;
use crate::memory::{peak_bytes, reset_peak};
use crate::record::Record;
use crate::timing::time_ms;

/// One shape of the sweep.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Batch size.
    pub batch: usize,
    /// Heads.
    pub heads: usize,
    /// Sequence length.
    pub n: usize,
    /// Head size.
    pub head_dim: usize,
    /// Landmarks.
    pub landmarks: usize,
}

/// Settings shared by every measurement.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Untimed runs first.
    pub warmup: usize,
    /// Timed runs.
    pub reps: usize,
    /// Largest intermediate allowed, in bytes; larger shapes are recorded as skipped.
    pub max_intermediate_bytes: u64,
    /// The fraction of each sequence taken as padding, at its end: the keys of a padded batch.
    pub padded: f64,
    /// Backend name for the records.
    pub backend: String,
    /// Commit for the records.
    pub commit: String,
    /// Machine for the records.
    pub machine: String,
}

/// Measures one implementation at one shape, forward or forward+backward.
pub fn measure(
    implementation: Implementation,
    shape: Shape,
    backward: bool,
    device: &Device,
    settings: &Settings,
) -> Record {
    let mut record = Record {
        implementation: implementation.name().into(),
        backend: settings.backend.clone(),
        pass: if backward {
            "forward+backward"
        } else {
            "forward"
        }
        .into(),
        batch: shape.batch,
        heads: shape.heads,
        n: shape.n,
        head_dim: shape.head_dim,
        landmarks: implementation.landmarks(shape.landmarks),
        // The fraction this length really has, after rounding to whole positions.
        padded: match settings.padded {
            0.0 => 0.0,
            fraction => 1.0 - valid_positions(shape.n, fraction) as f64 / shape.n as f64,
        },
        median_ms: None,
        min_ms: None,
        max_ms: None,
        reps: settings.reps,
        peak_bytes: None,
        status: "ok".into(),
        commit: settings.commit.clone(),
        machine: settings.machine.clone(),
    };
    let needed =
        implementation.largest_intermediate(shape.batch, shape.heads, shape.n, shape.landmarks);
    if needed > settings.max_intermediate_bytes {
        record.status = format!(
            "skipped: needs a {:.1} GiB intermediate",
            needed as f64 / (1u64 << 30) as f64
        );
        return record;
    }
    let device = if backward {
        device.clone().autodiff()
    } else {
        device.clone()
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        reset_peak(&device);
        let dims = [shape.batch, shape.heads, shape.n, shape.head_dim];
        let input = || {
            let t = Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), &device);
            if backward { t.require_grad() } else { t }
        };
        let (q, k, v) = (input(), input(), input());
        let mask_pad =
            (settings.padded > 0.0).then(|| padding_mask(shape, settings.padded, &device));
        let mask_pad = mask_pad.as_ref();
        let timing = time_ms(&device, settings.warmup, settings.reps, || {
            let out =
                implementation.run(q.clone(), k.clone(), v.clone(), shape.landmarks, mask_pad);
            if backward {
                let _grads = out.sum().backward();
            } else {
                // Keep the result alive until the sync.
                let _ = out;
            }
        });
        // A backend that cannot run a shape may return garbage instead of failing (wgpu above its
        // largest buffer binding): a result with no signal or a non-finite value is no result.
        let magnitude: f32 = implementation
            .run(q, k, v, shape.landmarks, mask_pad)
            .abs()
            .sum()
            .into_scalar();
        (timing, peak_bytes(&device), magnitude)
    }));
    match outcome {
        Ok((_, _, magnitude)) if !magnitude.is_finite() || magnitude == 0.0 => {
            record.status = format!("failed: invalid output (sum of |output| = {magnitude})");
        }
        Ok(((median, min, max), peak, _)) => {
            record.median_ms = Some(median);
            record.min_ms = Some(min);
            record.max_ms = Some(max);
            record.peak_bytes = peak;
        }
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            record.status = format!("failed: {}", message.lines().next().unwrap_or(""));
        }
    }
    record
}

/// `[batch, n]`, `true` on the last `fraction` of each sequence (rounded; at least one valid
/// position).
fn padding_mask(shape: Shape, fraction: f64, device: &Device) -> Tensor<2, Bool> {
    let valid = valid_positions(shape.n, fraction);
    let flags: Vec<bool> = (0..shape.batch)
        .flat_map(|_| (0..shape.n).map(move |position| position >= valid))
        .collect();
    Tensor::from_data(TensorData::new(flags, [shape.batch, shape.n]), device)
}

/// The valid positions of a sequence of `n` whose last `fraction` is padding.
fn valid_positions(n: usize, fraction: f64) -> usize {
    let padded = (n as f64 * fraction).round() as usize;
    n.saturating_sub(padded).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_takes_the_end_of_each_sequence_and_leaves_one_valid() {
        assert_eq!(valid_positions(1024, 0.5), 512);
        assert_eq!(valid_positions(1000, 0.25), 750);
        assert_eq!(valid_positions(4, 0.99), 1);
        let shape = Shape {
            batch: 2,
            heads: 1,
            n: 4,
            head_dim: 8,
            landmarks: 2,
        };
        let mask: Vec<bool> = padding_mask(shape, 0.5, &Device::flex())
            .into_data()
            .try_to_vec::<bool>()
            .unwrap();
        assert_eq!(mask, [false, false, true, true, false, false, true, true]);
    }
}
