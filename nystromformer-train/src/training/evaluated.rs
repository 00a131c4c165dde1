//! The training loop: `eval_frequency` optimizer steps, a validation, a checkpoint; again.
//!
//! A burn-train [`SupervisedLearningStrategy`], so the Learner, its event processor (dashboard,
//! metric logs) and its checkpointers run as usual, with what the default strategies cannot
//! give:
//! - the batches come from [`BatchSource`]s by index, so epoch `e` reads the same batches whether
//!   the run started at step 0 or resumed at `e`;
//! - the backend's random stream (dropout) is reseeded from `(seed, e)` when epoch `e` starts,
//!   so a resumed epoch draws what the uninterrupted one drew;
//! - each validation's accuracy and loss go into the [`RunState`] written with the checkpoint,
//!   and the checkpoints kept are the two newest and the best by validation accuracy.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use burn::data::dataloader::{DataLoader, DataLoaderIterator};
use burn::module::Module;
use burn::optim::GradientsAccumulator;
use burn::tensor::Device;
use burn::train::checkpoint::CheckpointerError;
use burn::train::metric::store::EventStoreClient;
use burn::train::train::MultiDevicesTrainStep;
use burn::train::{
    ClassificationOutput, EventProcessorTraining, InferenceStep, Interrupter, Learner,
    LearnerEvent, LearnerModel, LearningCheckpointer, SupervisedLearningStrategy,
    SupervisedTrainingEventProcessor, TrainLoader, TrainingComponents, TrainingError, TrainingItem,
    ValidLoader,
};

use super::checkpoint::{self, Evaluation, RunState};
use super::fault;
use crate::data::rng::mix;
use crate::data::stream::{BatchRange, BatchSource};
use crate::eval::Tally;
use crate::task::TaskSpec;

/// Training by epochs of `steps_per_epoch` optimizer steps, each followed by a validation and a
/// checkpoint.
pub struct EvaluatedTraining<T: TaskSpec> {
    /// Training devices (autodiff), the first holding the optimizer; one batch per device and
    /// step.
    pub devices: Vec<Device>,
    /// The training stream.
    pub train: Arc<BatchSource<T::Item, T::Batcher>>,
    /// The validation split, in order.
    pub valid: Arc<BatchSource<T::Item, T::Batcher>>,
    /// Optimizer steps per epoch.
    pub steps_per_epoch: usize,
    /// Threads preparing batches.
    pub workers: usize,
    /// The run's seed (dropout streams).
    pub seed: u64,
    /// Where the checkpoints go.
    pub artifact_dir: PathBuf,
    /// The run so far: starts from the resumed checkpoint's state.
    pub state: Mutex<RunState>,
    /// Why training stopped before its last epoch, if it did: `failed: …` or `interrupted
    /// (…)`. Kept here because burn-train's dashboard resets the interrupter when training
    /// ends, and with it the stop that [`LearningResult`](burn::train::LearningResult) reports.
    pub stopped: Mutex<Option<String>>,
}

impl<T: TaskSpec> EvaluatedTraining<T> {
    fn train_epoch(
        &self,
        epoch: usize,
        learner: &mut Learner<T::Model>,
        processor: &mut SupervisedTrainingEventProcessor<T::Model>,
        interrupter: &Interrupter,
    ) {
        let replicas = self.devices.len();
        let first = (epoch - 1) * self.steps_per_epoch * replicas;
        let ranges: Vec<BatchRange<T::Item, T::Batcher>> = self
            .devices
            .iter()
            .enumerate()
            .map(|(replica, device)| {
                BatchRange::new(
                    self.train.clone(),
                    first + replica,
                    replicas,
                    self.steps_per_epoch,
                    self.workers,
                    device.clone(),
                )
            })
            .collect();
        if replicas == 1 {
            let first_step = (epoch - 1) * self.steps_per_epoch;
            self.single_device_steps(first_step, &ranges[0], learner, processor, interrupter)
        } else {
            self.multi_device_steps(&ranges, learner, processor, interrupter)
        }
    }

    fn single_device_steps(
        &self,
        first_step: usize,
        range: &BatchRange<T::Item, T::Batcher>,
        learner: &mut Learner<T::Model>,
        processor: &mut SupervisedTrainingEventProcessor<T::Model>,
        interrupter: &Interrupter,
    ) {
        let mut batches = DataLoader::<T::Batch>::iter(range);
        let mut steps = 0;
        while let Some(batch) = next_batch(batches.as_mut(), interrupter) {
            let output = learner.train_step(batch);
            learner.lr_step();
            learner.optimizer_step(output.grads);
            steps += 1;
            let step = first_step + steps;
            if fault::asked("kill-after-step", &step.to_string()) {
                fault::kill_self(&format!("after step {step}"));
            }
            let item = TrainingItem::new(
                output.item,
                batches.progress(),
                Some(steps),
                Some(learner.lr_current()),
            );
            interrupter.fail_on_error(processor.process_train(LearnerEvent::ProcessedItem(item)));
            if interrupter.should_stop() {
                break;
            }
        }
    }

    fn multi_device_steps(
        &self,
        ranges: &[BatchRange<T::Item, T::Batcher>],
        learner: &mut Learner<T::Model>,
        processor: &mut SupervisedTrainingEventProcessor<T::Model>,
        interrupter: &Interrupter,
    ) {
        let mut iterators: Vec<Box<dyn DataLoaderIterator<T::Batch> + '_>> = ranges
            .iter()
            .map(|range| DataLoader::<T::Batch>::iter(range))
            .collect();
        let parallel = MultiDevicesTrainStep::<T::Model>::new(&self.devices);
        let mut iteration = 0;
        loop {
            let (outputs, progress) = match parallel.step(&mut iterators, &learner.model()) {
                Ok(result) => result,
                Err(err) => {
                    interrupter.fail(err);
                    break;
                }
            };
            if outputs.is_empty() {
                break;
            }
            // Gradients summed on the main device, one optimizer step for all replicas.
            let mut accumulator = GradientsAccumulator::new();
            let mut items = Vec::with_capacity(outputs.len());
            for output in outputs {
                let grads = output
                    .output
                    .grads
                    .to_device(&self.devices[0], &learner.model());
                accumulator.accumulate(&learner.model(), grads);
                items.push(output.output.item);
            }
            learner.lr_step();
            learner.optimizer_step(accumulator.grads());
            for item in items {
                iteration += 1;
                let item = TrainingItem::new(
                    item,
                    progress.clone(),
                    Some(iteration),
                    Some(learner.lr_current()),
                );
                interrupter
                    .fail_on_error(processor.process_train(LearnerEvent::ProcessedItem(item)));
            }
            if interrupter.should_stop() {
                break;
            }
        }
    }

    fn validate(
        &self,
        learner: &Learner<T::Model>,
        processor: &mut SupervisedTrainingEventProcessor<T::Model>,
        interrupter: &Interrupter,
    ) -> Tally {
        let model = learner.model().valid();
        let range = BatchRange::new(
            self.valid.clone(),
            0,
            1,
            self.valid.batches_in_order(),
            self.workers,
            self.devices[0].clone().inner(),
        );
        let mut batches = DataLoader::<T::Batch>::iter(&range);
        let (mut tally, mut iteration) = (Tally::default(), 0);
        while let Some(batch) = next_batch(batches.as_mut(), interrupter) {
            let output: ClassificationOutput = InferenceStep::step(&model, batch);
            tally.add(&output);
            iteration += 1;
            let item = TrainingItem::new(output, batches.progress(), Some(iteration), None);
            interrupter.fail_on_error(processor.process_valid(LearnerEvent::ProcessedItem(item)));
            if interrupter.should_stop() {
                break;
            }
        }
        tally
    }

    /// Records the validation, writes the run state, checkpoints, and drops checkpoints no
    /// longer kept. False (with the interrupter failed) if a file could not be written.
    fn checkpoint(
        &self,
        epoch: usize,
        tally: &Tally,
        learner: &Learner<T::Model>,
        checkpointer: &mut Option<LearningCheckpointer<T::Model>>,
        store: &EventStoreClient,
        interrupter: &Interrupter,
    ) -> bool {
        let mut state = self.state.lock().expect("never poisoned");
        let step = epoch * self.steps_per_epoch;
        state.step = step;
        let result = tally.result();
        state.evaluations.push(Evaluation {
            epoch,
            step,
            accuracy: result.accuracy,
            loss: result.loss,
        });
        let written = checkpoint::write_state(&self.artifact_dir, epoch, &state).and_then(|()| {
            if let Some(checkpointer) = checkpointer {
                checkpointer.checkpoint(learner, epoch, store);
            }
            let best = state.best().map_or(epoch, |best| best.epoch);
            checkpoint::prune(&self.artifact_dir, &[epoch, epoch.saturating_sub(1), best])
        });
        match written {
            Ok(()) => true,
            Err(message) => {
                interrupter.fail(CheckpointerError::IOError(std::io::Error::other(message)));
                false
            }
        }
    }
}

/// Why training stopped: `failed: ERROR`, else `interrupted (REASON)`.
pub fn describe_stop(error: Option<&TrainingError>, reason: Option<String>) -> String {
    match error {
        Some(error) => format!("failed: {error}"),
        None => format!(
            "interrupted ({})",
            reason.unwrap_or_else(|| "stop requested".into())
        ),
    }
}

/// The next batch; `None` at the end, or after failing the run on a batch that could not be
/// read.
fn next_batch<O>(
    batches: &mut (dyn DataLoaderIterator<O> + '_),
    interrupter: &Interrupter,
) -> Option<O> {
    match batches.next()? {
        Ok(batch) => Some(batch),
        Err(err) => {
            interrupter.fail(err);
            None
        }
    }
}

impl<T: TaskSpec> SupervisedLearningStrategy<T::Model> for EvaluatedTraining<T>
where
    T::Model: LearnerModel,
{
    fn fit(
        &self,
        components: TrainingComponents<T::Model>,
        mut learner: Learner<T::Model>,
        _train: TrainLoader<T::Model>,
        _valid: ValidLoader<T::Model>,
        starting_epoch: usize,
    ) -> (T::Model, SupervisedTrainingEventProcessor<T::Model>) {
        let main = self.devices[0].clone();
        learner.fork(&main);
        let TrainingComponents {
            num_epochs,
            mut checkpointer,
            interrupter,
            event_processor: mut processor,
            event_store,
            ..
        } = components;
        let items_per_epoch = self.steps_per_epoch * self.devices.len() * self.train.batch_size();
        for epoch in starting_epoch..=num_epochs {
            main.seed(mix(self.seed, epoch as u64));
            interrupter.fail_on_error(processor.process_train(LearnerEvent::StartSplit {
                epoch_number: epoch,
                total_items: items_per_epoch,
            }));
            self.train_epoch(epoch, &mut learner, &mut processor, &interrupter);
            interrupter.fail_on_error(processor.process_train(LearnerEvent::EndSplit(epoch)));
            if interrupter.should_stop() {
                break;
            }
            interrupter.fail_on_error(processor.process_valid(LearnerEvent::StartSplit {
                epoch_number: epoch,
                total_items: self.valid.len(),
            }));
            let tally = self.validate(&learner, &mut processor, &interrupter);
            interrupter.fail_on_error(processor.process_valid(LearnerEvent::EndSplit(epoch)));
            interrupter.fail_on_error(processor.process_train(LearnerEvent::EndEpoch(epoch)));
            interrupter.fail_on_error(processor.flush());
            if interrupter.should_stop() {
                break;
            }
            if !self.checkpoint(
                epoch,
                &tally,
                &learner,
                &mut checkpointer,
                &event_store,
                &interrupter,
            ) {
                break;
            }
        }
        // Wait for burn-train's threads to write the last checkpoint: a failed write stops
        // the run as one during training does.
        drop(checkpointer);
        if interrupter.should_stop() {
            let why = describe_stop(interrupter.error().as_deref(), interrupter.get_message());
            *self.stopped.lock().expect("never poisoned") = Some(why);
        }
        (learner.model(), processor)
    }
}
