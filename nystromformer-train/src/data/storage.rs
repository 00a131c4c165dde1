//! Where a run's examples live while it trains: in memory, or in burn-dataset's SQLite storage.
//!
//! With `storage = "sqlite"` the splits are read (or generated) once, written to
//! `ARTIFACT_DIR/dataset.db` (tables `train`, `valid`, `test`; written to a temporary file and
//! renamed when complete) and dropped from memory; the loaders then read the examples from disk,
//! and a resumed run reuses the file instead of reading the raw data again (a fresh run rewrites
//! it).

use std::path::Path;
use std::sync::Arc;

use burn::data::dataset::{
    Dataset, DatasetError, InMemDataset, SqliteDataset, SqliteDatasetWriter,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::task::Splits;

/// The database file a run's SQLite storage uses.
pub const DATABASE_FILE: &str = "dataset.db";
/// Table names of the three splits.
pub const SPLITS: [&str; 3] = ["train", "valid", "test"];

/// The three splits as burn-dataset `Dataset`s.
pub struct StoredSplits<I> {
    /// Training examples.
    pub train: Arc<dyn Dataset<I>>,
    /// Validation examples.
    pub valid: Arc<dyn Dataset<I>>,
    /// Test examples.
    pub test: Arc<dyn Dataset<I>>,
}

/// Keeps the splits in memory.
pub fn in_memory<I>(splits: Splits<I>) -> StoredSplits<I>
where
    I: Clone + Send + Sync + 'static,
{
    StoredSplits {
        train: Arc::new(InMemDataset::new(splits.train)),
        valid: Arc::new(InMemDataset::new(splits.valid)),
        test: Arc::new(InMemDataset::new(splits.test)),
    }
}

/// Opens `dir/dataset.db`, first writing it from `load()` unless `reuse` is set and the file
/// exists.
pub fn sqlite<I>(
    dir: &Path,
    reuse: bool,
    load: impl FnOnce() -> Result<Splits<I>, String>,
) -> Result<StoredSplits<I>, String>
where
    I: Clone + Send + Sync + Serialize + DeserializeOwned + 'static,
{
    let path = dir.join(DATABASE_FILE);
    let at = |err: &dyn std::fmt::Display| format!("{}: {err}", path.display());
    if !(reuse && path.is_file()) {
        let splits = load()?;
        eprintln!("writing the examples to {} ...", path.display());
        let mut writer = SqliteDatasetWriter::<I>::new(&path, true).map_err(|e| at(&e))?;
        for (name, items) in SPLITS.iter().zip([splits.train, splits.valid, splits.test]) {
            for item in &items {
                writer.write(name, item).map_err(|e| at(&e))?;
            }
        }
        writer.set_completed().map_err(|e| at(&e))?;
    }
    let open = |split: &str| -> Result<Arc<dyn Dataset<I>>, String> {
        let table = SqliteDataset::<I>::from_db_file(&path, split)
            .map_err(|e| format!("{}: table {split}: {e}", path.display()))?;
        Ok(Arc::new(SqliteItems(table)))
    };
    Ok(StoredSplits {
        train: open("train")?,
        valid: open("valid")?,
        test: open("test")?,
    })
}

/// A SQLite table as a `Dataset` with burn-dataset's general error type, which the data loader
/// and the dataset transforms expect.
struct SqliteItems<I>(SqliteDataset<I>);

impl<I> Dataset<I> for SqliteItems<I>
where
    I: Clone + Send + Sync + DeserializeOwned,
{
    fn get(&self, index: usize) -> Result<I, DatasetError> {
        self.0.get(index).map_err(DatasetError::new)
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// Every example of a dataset, in order.
pub fn collect<I>(dataset: &dyn Dataset<I>) -> Result<Vec<I>, String> {
    (0..dataset.len())
        .map(|index| dataset.get(index).map_err(|err| err.to_string()))
        .collect()
}
