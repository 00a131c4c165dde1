//! Sweeps over shapes for one implementation on one device: time and peak memory per shape.

use std::panic::{AssertUnwindSafe, catch_unwind};

use burn::tensor::{Device, Distribution, Tensor};

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
        let timing = time_ms(&device, settings.warmup, settings.reps, || {
            let out = implementation.run(q.clone(), k.clone(), v.clone(), shape.landmarks, None);
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
            .run(q, k, v, shape.landmarks, None)
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
