//! The batches a run sees, as a pure function of the seed and the batch's index.
//!
//! Training takes complete passes over the training set, each in a fresh order drawn from
//! `(seed, pass)`, concatenated: batch `i` holds items `i·B … (i+1)·B − 1` of that endless
//! stream, so every example is seen once per pass and a pass boundary may fall inside a batch.
//! Evaluation takes the items in order, the last batch shorter. A batch's own randomness (the
//! masked LM's masks) comes from a batcher seeded by `(seed, i)`.
//!
//! Nothing depends on what came before: a run resumed at step `s` reads exactly the batches the
//! uninterrupted run would have read, however many workers prepare them and in whatever order
//! they finish.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex};

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::data::dataset::{Dataset, DatasetError};
use burn::tensor::Device;

use super::rng::{SplitMix64, mix};

/// Which items batch `i` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Endless complete passes, each shuffled by `(seed, pass)`.
    ShuffledPasses {
        /// Seed of the pass orders.
        seed: u64,
    },
    /// One pass in dataset order; the last batch may be short.
    InOrder,
}

/// Makes the batcher for batch `i` from `mix(seed, i)`.
pub type BatcherFactory<B> = Arc<dyn Fn(u64) -> B + Send + Sync>;

/// The batches of one split: items, batch size, order and a batcher per batch.
pub struct BatchSource<I, B> {
    items: Arc<dyn Dataset<I>>,
    batch_size: usize,
    order: Order,
    batcher_seed: u64,
    batcher: BatcherFactory<B>,
    /// Pass orders in use (the two a batch can straddle), by pass number.
    passes: Mutex<BTreeMap<usize, Arc<Vec<u32>>>>,
}

impl<I, B> BatchSource<I, B>
where
    I: Send + Sync + Clone + 'static,
{
    /// Batches of `batch_size` items of `items` in `order`; batch `i` is made by
    /// `batcher(mix(batcher_seed, i))`.
    ///
    /// # Panics
    ///
    /// If `batch_size` is 0 or the dataset holds more than `u32::MAX` items.
    pub fn new(
        items: Arc<dyn Dataset<I>>,
        batch_size: usize,
        order: Order,
        batcher_seed: u64,
        batcher: BatcherFactory<B>,
    ) -> Self {
        assert!(batch_size > 0, "batch_size must be positive");
        assert!(items.len() <= u32::MAX as usize, "more than 2^32 examples");
        Self {
            items,
            batch_size,
            order,
            batcher_seed,
            batcher,
            passes: Mutex::new(BTreeMap::new()),
        }
    }

    /// Number of items in the split.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Items per batch (evaluation: all batches but the last).
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Whether the split holds no items.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Batches of one pass in order (evaluation): `⌈len / batch_size⌉`.
    pub fn batches_in_order(&self) -> usize {
        self.len().div_ceil(self.batch_size)
    }

    /// Items in batch `index`: `batch_size`, except at the end of an in-order pass.
    pub fn batch_len(&self, index: usize) -> usize {
        match self.order {
            Order::ShuffledPasses { .. } => self.batch_size,
            Order::InOrder => self
                .len()
                .saturating_sub(index * self.batch_size)
                .min(self.batch_size),
        }
    }

    /// Dataset indices of batch `index`.
    pub fn indices(&self, index: usize) -> Vec<usize> {
        let len = self.len();
        let start = index * self.batch_size;
        match self.order {
            Order::InOrder => (start..(start + self.batch_size).min(len)).collect(),
            Order::ShuffledPasses { seed } => (start..start + self.batch_size)
                .map(|position| self.pass_order(seed, position / len)[position % len] as usize)
                .collect(),
        }
    }

    fn pass_order(&self, seed: u64, pass: usize) -> Arc<Vec<u32>> {
        let mut passes = self.passes.lock().expect("never poisoned");
        if let Some(order) = passes.get(&pass) {
            return order.clone();
        }
        // Fisher–Yates with the pass's own stream.
        let mut rng = SplitMix64::new(mix(seed, pass as u64));
        let mut order: Vec<u32> = (0..self.len() as u32).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.range(0, i));
        }
        let order = Arc::new(order);
        passes.insert(pass, order.clone());
        // Workers run a few batches ahead: keep this pass and its neighbours.
        passes.retain(|kept, _| kept + 2 >= pass && *kept <= pass + 2);
        order
    }

    /// The items of batch `index`.
    pub fn items(&self, index: usize) -> Result<Vec<I>, DatasetError> {
        self.indices(index)
            .into_iter()
            .map(|i| self.items.get(i))
            .collect()
    }

    /// Batch `index` on `device`.
    pub fn batch<O>(&self, index: usize, device: &Device) -> Result<O, DatasetError>
    where
        B: Batcher<I, O>,
    {
        let items = self.items(index)?;
        let batcher = (self.batcher)(mix(self.batcher_seed, index as u64));
        Ok(batcher.batch(items, device))
    }
}

/// Batches `first`, `first + stride`, … (`count` of them) of a [`BatchSource`], as burn-train's
/// [`DataLoader`], prepared by `workers` threads ahead of use (0: on the caller's thread).
pub struct BatchRange<I, B> {
    source: Arc<BatchSource<I, B>>,
    first: usize,
    stride: usize,
    count: usize,
    workers: usize,
    device: Device,
}

impl<I, B> Clone for BatchRange<I, B> {
    fn clone(&self) -> Self {
        Self {
            source: self.source.clone(),
            first: self.first,
            stride: self.stride,
            count: self.count,
            workers: self.workers,
            device: self.device.clone(),
        }
    }
}

impl<I, B> BatchRange<I, B> {
    /// Worker `w` prepares the batches at positions `w, w + W, …` of `indices` into its own
    /// channel; reading the channels round-robin restores the order. A dropped iterator closes
    /// the channels, and the workers stop at their next send.
    fn spawn_workers<O>(
        &self,
        indices: &[usize],
        workers: usize,
    ) -> Vec<Receiver<Result<O, DatasetError>>>
    where
        I: Send + Sync + Clone + 'static,
        B: Batcher<I, O> + Send + 'static,
        O: Send + 'static,
    {
        (0..workers.min(indices.len().max(1)))
            .map(|worker| {
                let (sender, receiver) = sync_channel(2);
                let source = self.source.clone();
                let device = self.device.clone();
                let mine: Vec<usize> = indices
                    .iter()
                    .copied()
                    .skip(worker)
                    .step_by(workers)
                    .collect();
                std::thread::spawn(move || {
                    for index in mine {
                        if sender.send(source.batch(index, &device)).is_err() {
                            return;
                        }
                    }
                });
                receiver
            })
            .collect()
    }

    /// Batches `first + k·stride` for `k < count`.
    pub fn new(
        source: Arc<BatchSource<I, B>>,
        first: usize,
        stride: usize,
        count: usize,
        workers: usize,
        device: Device,
    ) -> Self {
        Self {
            source,
            first,
            stride: stride.max(1),
            count,
            workers,
            device,
        }
    }
}

impl<I, B, O> DataLoader<O> for BatchRange<I, B>
where
    I: Send + Sync + Clone + 'static,
    B: Batcher<I, O> + Send + 'static,
    O: Send + 'static,
{
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<O> + 'a> {
        let indices: Vec<usize> = (0..self.count)
            .map(|k| self.first + k * self.stride)
            .collect();
        let next = match self.workers {
            0 => Next::Inline(self.device.clone()),
            workers => Next::Workers(self.spawn_workers(&indices, workers)),
        };
        Box::new(RangeIter::<I, B, O> {
            source: self.source.clone(),
            next,
            indices,
            done: 0,
            items_done: 0,
            items_total: self.num_items(),
        })
    }

    fn num_items(&self) -> usize {
        (0..self.count)
            .map(|k| self.source.batch_len(self.first + k * self.stride))
            .sum()
    }

    fn to_device(&self, device: &Device) -> Arc<dyn DataLoader<O>> {
        let mut moved = self.clone();
        moved.device = device.clone();
        Arc::new(moved)
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<O>> {
        // Item positions within this range, rounded out to whole batches.
        let size = self.source.batch_size;
        let first = start / size;
        let last = end.div_ceil(size).min(self.count);
        let mut sliced = self.clone();
        sliced.first = self.first + first * self.stride;
        sliced.count = last.saturating_sub(first);
        Arc::new(sliced)
    }
}

/// Where a [`RangeIter`] gets its batches: made here on `Device`, or from the workers.
enum Next<O> {
    Inline(Device),
    Workers(Vec<Receiver<Result<O, DatasetError>>>),
}

struct RangeIter<I, B, O> {
    source: Arc<BatchSource<I, B>>,
    next: Next<O>,
    indices: Vec<usize>,
    done: usize,
    items_done: usize,
    items_total: usize,
}

impl<I, B, O> Iterator for RangeIter<I, B, O>
where
    I: Send + Sync + Clone + 'static,
    B: Batcher<I, O>,
{
    type Item = Result<O, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        let index = *self.indices.get(self.done)?;
        let batch = match &self.next {
            Next::Inline(device) => self.source.batch(index, device),
            Next::Workers(receivers) => receivers[self.done % receivers.len()]
                .recv()
                .unwrap_or_else(|_| {
                    Err(DatasetError::new(std::io::Error::other(
                        "a data worker stopped",
                    )))
                }),
        };
        self.done += 1;
        self.items_done += self.source.batch_len(index);
        Some(batch)
    }
}

impl<I, B, O> DataLoaderIterator<O> for RangeIter<I, B, O>
where
    I: Send + Sync + Clone + 'static,
    B: Batcher<I, O>,
{
    fn progress(&self) -> Progress {
        Progress::new(self.items_done, self.items_total, Some("items".into()))
    }
}

#[cfg(test)]
mod tests {
    use burn::data::dataset::InMemDataset;

    use super::*;

    /// A batcher that returns the items themselves.
    #[derive(Clone)]
    struct Identity;

    impl Batcher<u32, Vec<u32>> for Identity {
        fn batch(&self, items: Vec<u32>, _device: &Device) -> Vec<u32> {
            items
        }
    }

    fn source(len: u32, batch: usize, order: Order) -> Arc<BatchSource<u32, Identity>> {
        Arc::new(BatchSource::new(
            Arc::new(InMemDataset::new((0..len).collect())),
            batch,
            order,
            0,
            Arc::new(|_| Identity),
        ))
    }

    fn collect(range: &BatchRange<u32, Identity>) -> Vec<Vec<u32>> {
        DataLoader::<Vec<u32>>::iter(range)
            .map(|batch| batch.unwrap())
            .collect()
    }

    #[test]
    fn every_pass_sees_every_item_once_in_a_new_order() {
        let source = source(10, 4, Order::ShuffledPasses { seed: 3 });
        // 3 passes = 30 items = 7.5 batches; take 8 and look at the first 30 items.
        let range = BatchRange::new(source, 0, 1, 8, 0, Device::default());
        let stream: Vec<u32> = collect(&range).concat();
        let passes: Vec<&[u32]> = stream[..30].chunks(10).collect();
        for pass in &passes {
            let mut sorted = pass.to_vec();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        }
        assert_ne!(passes[0], passes[1], "each pass is reshuffled");
    }

    #[test]
    fn a_range_reads_the_same_batches_however_it_is_cut_or_prepared() {
        let source = source(37, 5, Order::ShuffledPasses { seed: 9 });
        let whole = collect(&BatchRange::new(
            source.clone(),
            0,
            1,
            20,
            0,
            Device::default(),
        ));
        // Resuming at batch 7, with three workers.
        let tail = collect(&BatchRange::new(
            source.clone(),
            7,
            1,
            13,
            3,
            Device::default(),
        ));
        assert_eq!(whole[7..], tail[..]);
        // Two replicas taking every other batch.
        let odd = collect(&BatchRange::new(source, 1, 2, 10, 2, Device::default()));
        let expected: Vec<Vec<u32>> = whole.iter().skip(1).step_by(2).cloned().collect();
        assert_eq!(odd, expected);
    }

    #[test]
    fn in_order_batches_cover_the_split_once() {
        let source = source(11, 4, Order::InOrder);
        assert_eq!(source.batches_in_order(), 3);
        let range = BatchRange::new(source, 0, 1, 3, 2, Device::default());
        assert_eq!(DataLoader::<Vec<u32>>::num_items(&range), 11);
        assert_eq!(collect(&range).concat(), (0..11).collect::<Vec<_>>());
    }
}
