//! The optimizer of a run: AdamW as LRA's `run_tasks.py` builds it in PyTorch, β₁ included.
//!
//! `run_tasks.py` pairs `torch.optim.AdamW(betas=(0.9, 0.999), eps=1e-6)` with `OneCycleLR`,
//! whose default `cycle_momentum=True` overwrites β₁ at every step: 0.95 down to 0.85 over the
//! warm-up and back to 0.95 at the end ([`OneCycleLr::momentum_at`]). Burn's `AdamW` takes one
//! β₁ for the whole run, so [`CycledAdamW`] is AdamW with β₁ read from the schedule at each
//! step. It keeps burn's `AdamWState`, so its checkpoints have the same records as `AdamW`'s.

use burn::grad_clipping::GradientClippingConfig;
use burn::optim::{
    AdamWConfig, AdamWState, AdaptiveMomentumState, LearningRate, ModuleOptimizer, Optimizer,
};
use burn::tensor::{Device, Tensor};

use super::schedule::OneCycleLr;
use crate::config::ExperimentConfig;

/// AdamW's β₁ and β₂ as in LRA's `run_tasks.py` (β₁ when it is not cycled).
pub const ADAM_BETAS: (f32, f32) = (0.9, 0.999);
/// AdamW's ε as in LRA's `run_tasks.py`.
pub const ADAM_EPSILON: f32 = 1e-6;

/// The optimizer of a run: AdamW with LRA's β₂ and ε, the configuration's weight decay and
/// gradient clipping, and β₁ cycled with the run's schedule when the configuration's
/// `cycle_momentum` is set (else 0.9).
pub fn optimizer(config: &ExperimentConfig) -> ModuleOptimizer {
    let (beta_1, beta_2) = ADAM_BETAS;
    let optimizer = match config.cycle_momentum {
        true => ModuleOptimizer::from(CycledAdamW {
            schedule: OneCycleLr::of_run(config),
            beta_2,
            epsilon: ADAM_EPSILON,
            weight_decay: config.weight_decay,
        }),
        false => AdamWConfig::new()
            .with_beta_1(beta_1)
            .with_beta_2(beta_2)
            .with_epsilon(ADAM_EPSILON)
            .with_weight_decay(config.weight_decay)
            .init(),
    };
    match config.grad_clip_norm {
        Some(norm) => optimizer.with_grad_clipping(GradientClippingConfig::Norm(norm).init()),
        None => optimizer,
    }
}

/// AdamW (decoupled weight decay) whose β₁ at step `t` is the schedule's
/// [`momentum_at`](OneCycleLr::momentum_at)`(t − 1)`, the bias correction `1 − β₁ᵗ` taken with
/// that β₁, as PyTorch's AdamW does when `OneCycleLR` sets its betas. The step count is the
/// parameter's own (`AdaptiveMomentumState::time`), which is the run's optimizer step because
/// every parameter of these models gets a gradient at every step.
#[derive(Clone, Debug)]
pub struct CycledAdamW {
    /// Where β₁ comes from.
    pub schedule: OneCycleLr,
    /// The second moment's decay.
    pub beta_2: f32,
    /// Added to the root of the second moment.
    pub epsilon: f32,
    /// Decoupled weight decay, scaled by the learning rate.
    pub weight_decay: f32,
}

impl Optimizer for CycledAdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let time = state.as_ref().map_or(0, |s| s.momentum.time) + 1;
        let beta_1 = self.schedule.momentum_at(time - 1) as f32;
        let beta_2 = self.beta_2;
        let (moment_1, moment_2) = match state {
            Some(AdamWState { momentum }) => (
                momentum.moment_1.mul_scalar(beta_1) + grad.clone().mul_scalar(1.0 - beta_1),
                momentum.moment_2.mul_scalar(beta_2) + grad.square().mul_scalar(1.0 - beta_2),
            ),
            None => (
                grad.clone().mul_scalar(1.0 - beta_1),
                grad.square().mul_scalar(1.0 - beta_2),
            ),
        };
        let corrected_1 = moment_1.clone().div_scalar(1.0 - beta_1.powi(time as i32));
        let corrected_2 = moment_2.clone().div_scalar(1.0 - beta_2.powi(time as i32));
        let delta = corrected_1.div(corrected_2.sqrt().add_scalar(self.epsilon));
        let decayed = match lr * self.weight_decay as f64 {
            0.0 => tensor,
            decay => tensor.mul_scalar(1.0 - decay),
        };
        let momentum = AdaptiveMomentumState::new(time, moment_1, moment_2);
        (
            decayed - delta.mul_scalar(lr),
            Some(AdamWState::new(momentum)),
        )
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &Device) -> Self::State<D> {
        state.momentum = state.momentum.to_device(device);
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    fn values(x: &Tensor<2>) -> Vec<f32> {
        x.to_data().try_to_vec::<f32>().unwrap()
    }

    /// Each step is burn's AdamW step with that step's β₁, from the same state: the cycle changes
    /// β₁ and nothing else.
    #[test]
    fn each_step_is_adamw_with_the_schedules_beta_1() {
        let device = Device::flex();
        // Two warm-up steps of six: β₁ 0.95, 0.85, then up to 0.95 at step 5.
        let schedule = OneCycleLr::new(1e-2, 2, 6);
        let cycled = CycledAdamW {
            schedule: schedule.clone(),
            beta_2: 0.999,
            epsilon: 1e-6,
            weight_decay: 0.1,
        };
        let mut param = Tensor::<2>::from_data(
            TensorData::new(vec![0.5f32, -1.0, 2.0, 0.0], [2, 2]),
            &device,
        );
        let mut state: Option<AdamWState<2>> = None;
        for step in 0..6 {
            // A gradient that changes sign and size from step to step.
            let grad = param.clone().mul_scalar(0.3) + (step as f32 - 2.5) * 0.2;
            let lr = schedule.lr_at(step);
            let adamw = AdamWConfig::new()
                .with_beta_1(schedule.momentum_at(step) as f32)
                .with_beta_2(0.999)
                .with_epsilon(1e-6)
                .with_weight_decay(0.1)
                .build();
            let (expected, _) = adamw.step(lr, param.clone(), grad.clone(), state.clone());
            let (next, next_state) = cycled.step(lr, param, grad, state);
            for (a, b) in values(&next).iter().zip(values(&expected)) {
                assert!(
                    (a - b).abs() <= 1e-7,
                    "step {step}: {a} against AdamW's {b}"
                );
            }
            let next_state = next_state.expect("a state after each step");
            assert_eq!(next_state.momentum.time, step + 1);
            (param, state) = (next, Some(next_state));
        }
    }

    /// The first step by hand (PyTorch's AdamW): the bias-corrected moments are `g` and `g²`, so
    /// each entry moves by `lr · g / (|g| + ε)` after the decay `1 − lr · λ`.
    #[test]
    fn the_first_step_is_pytorchs() {
        let device = Device::flex();
        let schedule = OneCycleLr::new(1e-3, 10, 100);
        let cycled = CycledAdamW {
            schedule,
            beta_2: 0.999,
            epsilon: 1e-6,
            weight_decay: 0.5,
        };
        let param = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, -2.0], [1, 2]), &device);
        let grad = Tensor::<2>::from_data(TensorData::new(vec![0.25f32, 4.0], [1, 2]), &device);
        let lr = 0.01;
        let (next, _) = cycled.step(lr, param, grad, None);
        let expected = [
            1.0 * (1.0 - 0.01 * 0.5) - 0.01 * 0.25 / (0.25 + 1e-6),
            -2.0 * (1.0 - 0.01 * 0.5) - 0.01 * 4.0 / (4.0 + 1e-6),
        ];
        for (a, b) in values(&next).iter().zip(expected) {
            assert!((a - b as f32).abs() <= 1e-6, "{a} against {b}");
        }
    }

    #[test]
    fn the_lra_presets_cycle_beta_1_and_the_quick_ones_do_not() {
        use crate::config::{Preset, Task};
        for task in [Task::Listops, Task::Text, Task::Retrieval, Task::Image] {
            assert!(ExperimentConfig::preset(task, Preset::Lra).cycle_momentum);
            assert!(!ExperimentConfig::preset(task, Preset::Quick).cycle_momentum);
        }
        // A run's `config.json` from before the field resumes as it trained: β₁ = 0.9.
        let mut json =
            serde_json::to_value(ExperimentConfig::preset(Task::Listops, Preset::Lra)).unwrap();
        json.as_object_mut().unwrap().remove("cycle_momentum");
        let config: ExperimentConfig = serde_json::from_value(json).unwrap();
        assert!(!config.cycle_momentum);
    }
}
