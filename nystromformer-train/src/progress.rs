//! Plain progress lines for runs without a terminal (logs, CI, `--headless`): burn-train's own
//! CLI renderer prints a debug dump per batch; this prints one readable line every few seconds
//! and one per finished split.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use burn::train::logger::{EvaluationProgressLogger, TrainingProgressLogger};
use burn::train::metric::{MetricDefinition, MetricId};
use burn::train::renderer::{
    EvaluationName, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining,
};

/// Prints `split epoch e/E  items i/I  Loss … Accuracy …` lines.
pub struct PlainProgress {
    names: HashMap<MetricId, String>,
    values: BTreeMap<String, f64>,
    split: String,
    epoch: usize,
    epochs: usize,
    items_total: usize,
    items_done: usize,
    last_print: Instant,
    every: Duration,
}

impl PlainProgress {
    /// A renderer printing at most one progress line per `every`.
    pub fn new(every: Duration) -> Self {
        Self {
            names: HashMap::new(),
            values: BTreeMap::new(),
            split: String::new(),
            epoch: 0,
            epochs: 0,
            items_total: 0,
            items_done: 0,
            last_print: Instant::now(),
            every,
        }
    }

    fn record(&mut self, state: MetricState) {
        if let MetricState::Numeric(entry, Some(value)) = state {
            let name = self
                .names
                .get(&entry.metric_id)
                .cloned()
                .unwrap_or_else(|| format!("{:?}", entry.metric_id));
            self.values.insert(name, value.current());
        }
    }

    fn line(&self) -> String {
        let metrics: Vec<String> = self
            .values
            .iter()
            .map(|(name, value)| format!("{name} {value:.4}"))
            .collect();
        format!(
            "{:<5} epoch {}/{}  items {}/{}  {}",
            self.split,
            self.epoch,
            self.epochs,
            self.items_done,
            self.items_total,
            metrics.join("  ")
        )
    }
}

impl MetricsRendererTraining for PlainProgress {
    fn update_train(&mut self, state: MetricState) {
        self.record(state);
    }

    fn update_valid(&mut self, state: MetricState) {
        self.record(state);
    }
}

impl MetricsRendererEvaluation for PlainProgress {
    fn update_test(&mut self, _name: EvaluationName, state: MetricState) {
        self.record(state);
    }
}

impl TrainingProgressLogger for PlainProgress {
    fn start(
        &mut self,
        total_epochs: usize,
        starting_epoch: usize,
        _total_items: Option<usize>,
        _label: Option<&str>,
    ) {
        self.epochs = total_epochs;
        self.epoch = starting_epoch.max(1);
        println!(
            "training for {total_epochs} epochs, starting at epoch {}",
            self.epoch
        );
    }

    fn update_epoch(&mut self, epoch: usize) {
        // Called when `epoch` ends.
        self.epoch = epoch + 1;
    }

    fn start_split(&mut self, split: &str, total_items: usize) {
        self.split = split.to_string();
        self.items_total = total_items;
        self.items_done = 0;
        self.values.clear();
    }

    fn update_split(&mut self, items_processed: usize) {
        self.items_done = items_processed;
        if self.last_print.elapsed() >= self.every {
            self.last_print = Instant::now();
            println!("{}", self.line());
        }
    }

    fn end_split(&mut self) {
        println!("{}  (done)", self.line());
    }

    fn end(&mut self) {
        println!("training ended");
    }

    fn log_event_training(&mut self, _event: String) {
        // burn-train reports every iteration here; experiment.log has them.
    }
}

impl EvaluationProgressLogger for PlainProgress {
    fn start_global_progress(&mut self, _total_tests: usize) {}

    fn start_test(&mut self, name: &str, total_items: usize) {
        self.start_split(name, total_items);
    }

    fn update_test_progress(&mut self, items_processed: usize) {
        self.update_split(items_processed);
    }

    fn end_test(&mut self) {
        self.end_split();
    }

    fn end_global_progress(&mut self) {}

    fn log_event_evaluation(&mut self, _event: String) {}
}

impl MetricsRenderer for PlainProgress {
    fn manual_close(&mut self) {}

    fn register_metric(&mut self, definition: MetricDefinition) {
        self.names
            .insert(definition.metric_id, definition.name.to_string());
    }
}
