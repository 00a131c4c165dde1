//! PyTorch's `OneCycleLR` as LRA's `run_tasks.py` uses it: `anneal_strategy="linear"`,
//! `pct_start = warmup / total`, the defaults `div_factor = 25`, `final_div_factor = 1e4`,
//! two phases. The learning rate climbs linearly from `max_lr / 25` to `max_lr` over the warm-up
//! and falls linearly to `max_lr / 25 / 1e4` at the last step.
//!
//! PyTorch also cycles Adam's β₁ (`cycle_momentum`, on by default): from 0.95 down to 0.85 over
//! the warm-up and back up to 0.95 at the last step, in step with the rate.
//! [`OneCycleLr::momentum_at`] gives it, and [`super::optimizer::CycledAdamW`] applies it.

use burn::lr_scheduler::{LrScheduler, LrSchedulerRecord};
use burn::optim::LearningRate;

use crate::config::ExperimentConfig;

/// `max_lr / DIV_FACTOR` is the first learning rate.
pub const DIV_FACTOR: f64 = 25.0;
/// The last learning rate is the first divided by this.
pub const FINAL_DIV_FACTOR: f64 = 1e4;
/// β₁ at the first and last steps (PyTorch's `max_momentum`).
pub const MAX_MOMENTUM: f64 = 0.95;
/// β₁ at the end of the warm-up (PyTorch's `base_momentum`).
pub const BASE_MOMENTUM: f64 = 0.85;

/// The one-cycle schedule; [`LrScheduler::step`] returns the rate of the next optimizer step.
#[derive(Debug, Clone, PartialEq)]
pub struct OneCycleLr {
    max_lr: f64,
    warmup_steps: usize,
    total_steps: usize,
    /// Optimizer steps already scheduled.
    step: usize,
}

impl OneCycleLr {
    /// A schedule of `total_steps` steps peaking at `max_lr` after `warmup_steps`.
    pub fn new(max_lr: f64, warmup_steps: usize, total_steps: usize) -> Self {
        Self {
            max_lr,
            warmup_steps,
            total_steps,
            step: 0,
        }
    }

    /// The schedule of a run: its peak rate, warm-up and total steps.
    pub fn of_run(config: &ExperimentConfig) -> Self {
        Self::new(
            config.learning_rate,
            config.warmup_steps,
            config.total_steps,
        )
    }

    /// The learning rate of optimizer step `step` (0-based), as PyTorch computes it.
    pub fn lr_at(&self, step: usize) -> f64 {
        let initial = self.max_lr / DIV_FACTOR;
        self.anneal(step, initial, self.max_lr, initial / FINAL_DIV_FACTOR)
    }

    /// Adam's β₁ at optimizer step `step` (0-based), as PyTorch's `cycle_momentum` sets it:
    /// against the rate, from [`MAX_MOMENTUM`] to [`BASE_MOMENTUM`] and back.
    pub fn momentum_at(&self, step: usize) -> f64 {
        self.anneal(step, MAX_MOMENTUM, BASE_MOMENTUM, MAX_MOMENTUM)
    }

    /// PyTorch's two linear phases at `step`: from `first` to `peak` over the warm-up, then to
    /// `last` at the last step.
    fn anneal(&self, step: usize, first: f64, peak: f64, last: f64) -> f64 {
        // PyTorch: phase ends at float(pct_start * total_steps) - 1 and total_steps - 1.
        let total = self.total_steps as f64;
        let warmup_end = (self.warmup_steps as f64 / total) * total - 1.0;
        let end = total - 1.0;
        let s = step as f64;
        let linear = |from: f64, to: f64, pct: f64| (to - from) * pct + from;
        if warmup_end > 0.0 && s <= warmup_end {
            linear(first, peak, s / warmup_end)
        } else if s <= warmup_end {
            // A one-step warm-up: step 0 runs at the first value.
            first
        } else {
            // Without warm-up (`warmup_end < 0`) the second phase starts at step 0, at the peak.
            let start = warmup_end.max(0.0);
            match end > start {
                true => linear(peak, last, ((s - start) / (end - start)).min(1.0)),
                false => peak,
            }
        }
    }
}

impl LrScheduler for OneCycleLr {
    fn step(&mut self) -> LearningRate {
        let lr = self.lr_at(self.step);
        self.step += 1;
        lr
    }

    fn to_record(&self) -> LrSchedulerRecord {
        LrSchedulerRecord::new().with_scalar("step", self.step as u64)
    }

    fn load_record(&mut self, record: LrSchedulerRecord) {
        if let Some(step) = record.scalar::<u64>("step") {
            self.step = step as usize;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn climbs_over_the_warmup_then_falls_to_the_floor() {
        // LRA ListOps: 1e-4, 1 000 of 5 000 steps.
        let schedule = OneCycleLr::new(1e-4, 1_000, 5_000);
        // Relative to the value: 1e-4 - (1e-4 - 4e-10) carries rounding of order 1e-20.
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs();
        assert!(close(schedule.lr_at(0), 4e-6));
        assert!(
            close(schedule.lr_at(999), 1e-4),
            "peak at the last warm-up step"
        );
        assert!(
            close(schedule.lr_at(4_999), 4e-10),
            "max / 25 / 1e4 at the end"
        );
        // Linear on both sides: midpoints are means of their neighbours.
        for step in [1, 500, 998, 1_000, 3_000, 4_998] {
            let mid = schedule.lr_at(step);
            let mean = (schedule.lr_at(step - 1) + schedule.lr_at(step + 1)) / 2.0;
            assert!(close(mid, mean), "step {step}: {mid} vs {mean}");
        }
        let rates: Vec<f64> = (0..5_000).map(|step| schedule.lr_at(step)).collect();
        assert!(rates[..1_000].windows(2).all(|w| w[0] < w[1]));
        assert!(rates[999..].windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn momentum_cycles_against_the_rate() {
        // PyTorch's OneCycleLR(max_lr=1e-4, total_steps=5000, pct_start=0.2,
        // anneal_strategy="linear"): betas[0] is 0.95 at step 0, 0.85 at step 999 (the rate's
        // peak), 0.95 at step 4 999; in between, linear in the same fraction as the rate.
        let schedule = OneCycleLr::new(1e-4, 1_000, 5_000);
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12;
        assert!(close(schedule.momentum_at(0), 0.95));
        assert!(close(schedule.momentum_at(999), 0.85));
        assert!(close(schedule.momentum_at(4_999), 0.95));
        // Inside each phase: step 499 of the warm-up's 999, and halfway down (step 2 999).
        assert!(close(
            schedule.momentum_at(499),
            0.95 - 0.10 * (499.0 / 999.0)
        ));
        assert!(close(schedule.momentum_at(2_999), 0.90));
        // Against the rate: where the rate is a fraction of its way from its phase's low end to
        // the peak, β₁ is the same fraction of its way from 0.95 down to 0.85.
        for step in [0, 250, 999, 1_700, 4_999] {
            let lr = schedule.lr_at(step);
            let momentum = schedule.momentum_at(step);
            let low = if step <= 999 { 4e-6 } else { 4e-10 };
            let fraction = (lr - low) / (1e-4 - low);
            assert!(
                (momentum - (0.95 - 0.10 * fraction)).abs() < 1e-9,
                "step {step}: β₁ {momentum}, rate fraction {fraction}"
            );
        }
    }

    #[test]
    fn the_record_resumes_the_schedule() {
        let mut schedule = OneCycleLr::new(1e-3, 3, 10);
        let first: Vec<f64> = (0..4).map(|_| schedule.step()).collect();
        let mut resumed = OneCycleLr::new(1e-3, 3, 10);
        resumed.load_record(schedule.to_record());
        assert_eq!(resumed.step(), schedule.clone().step());
        assert_eq!(first[0], 1e-3 / 25.0);
        assert!(OneCycleLr::new(1e-3, 0, 10).lr_at(0) == 1e-3, "no warm-up");
        assert!(OneCycleLr::new(1e-3, 1, 10).lr_at(9) > 0.0);
    }
}
