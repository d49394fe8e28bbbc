//! weft's data pipeline: Parquet shards of image-caption pairs in, batches out.
//!
//! - [`source`]: paths, directories and globs to a sorted list of Parquet files.
//! - [`layout`]: recognise the Hugging Face, img2dataset or an explicit column layout.
//! - [`catalog`]: the files and their row groups (the units of sharding); streaming reads of
//!   selected rows, only the mapped columns.
//! - [`usable`]: which rows of a row group an img2dataset `status` marks as downloaded; epochs
//!   are planned over those rows only.
//! - [`plan`]: the shard plan of an epoch across ranks, the per-rank shuffle buffer, and the
//!   [`DataCursor`] that makes a resume exact (also on another world size).
//! - [`image`]: decoding and the crop / resize / flip / normalize transforms.
//! - [`text`]: tokenizers, and training one on a dataset's captions.
//! - [`loader`]: the bounded, multi-threaded pipeline that yields [`Batch`]es.
//! - [`inspect`]: what `weft data inspect` reports.
//! - [`synth`]: a synthetic, learnable dataset of coloured shapes.
//! - [`labels`]: a label column beside the image-text columns (zero-shot classification).
//! - [`idx`]: MNIST-style IDX files (Fashion-MNIST) to Parquet with labels.
//!
//! ```no_run
//! use weft_data::{DataCursor, Split};
//! let config = weft_config::Config::default();
//! let loader = weft_data::loader_from_config(&config, Split::Train, &config.data.train)?;
//! let cursor = DataCursor::new(loader.catalog(), weft_data::plan_options(&config, Split::Train, 1), 0);
//! for batch in loader.stream(&cursor, 0)? {
//!     let batch = batch?;
//!     println!("step {} has {} samples", batch.step, batch.len());
//! }
//! # Ok::<(), weft_data::DataError>(())
//! ```

#![warn(missing_docs)]

pub mod catalog;
pub mod error;
pub mod idx;
pub mod image;
pub mod image_files;
pub mod inspect;
pub mod labels;
pub mod layout;
pub mod loader;
pub mod plan;
pub mod source;
pub mod synth;
pub mod text;
mod text_bytes;
pub mod usable;

use std::sync::Arc;

pub use catalog::{Catalog, RawRow, RowReader, Unit};
pub use error::{DataError, Result};
pub use layout::{ColumnMapping, ColumnOverrides, Layout};
pub use loader::{Batch, BatchStream, Loader, LoaderOptions, RowId, SkipStats, TokenBatch};
pub use plan::{
    DataCursor, DatasetUnits, LastBatch, LocalPlanner, PlanOptions, Planner, Progress, RankPlan,
    Segment, Share, Units,
};
pub use text::TextEncoder;

use weft_config::Config;

/// Which split a loader serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Training: shuffled, random-resized crops, last batch as configured.
    Train,
    /// Validation: in order, center crops, last batch padded (padding flagged).
    Val,
}

/// The column overrides of a config.
pub fn column_overrides(config: &Config) -> ColumnOverrides {
    ColumnOverrides {
        image: config.data.image_column.clone(),
        text: config.data.text_column.clone(),
        key: config.data.key_column.clone(),
    }
}

/// Open the catalog of `paths` with the config's column mapping and bad-file policy, and log
/// the detected layout in one line.
pub fn open_catalog<S: AsRef<str>>(config: &Config, paths: &[S]) -> Result<Catalog> {
    let files = source::expand_paths(paths)?;
    let mut catalog = Catalog::open(
        &files,
        &column_overrides(config),
        config.data.skip_bad_files,
    )?;
    catalog.image_files = image_files::ImageFiles::from_config(config);
    let failed = catalog.total_rows() - catalog.planned_rows();
    tracing::info!(
        "data: {} ({} files, {} row groups, {} rows{})",
        catalog.mapping.describe(),
        catalog.files.len(),
        catalog.units.len(),
        catalog.total_rows(),
        match &catalog.mapping.status {
            Some(col) => format!(
                "; {failed} of them failed downloads by column {col:?}, left out of the plan"
            ),
            None => String::new(),
        }
    );
    Ok(catalog)
}

/// Pipeline options of a config for a split.
pub fn loader_options(config: &Config, split: Split) -> LoaderOptions {
    let d = &config.data;
    LoaderOptions {
        transform: image::ImageTransform {
            size: d.image_size as u32,
            mean: d.mean,
            std: d.std,
            train: (split == Split::Train).then_some(image::TrainAugment {
                scale: d.crop_scale,
                ratio: d.crop_ratio,
                hflip: d.hflip,
            }),
        },
        workers: d.workers,
        prefetch_batches: d.prefetch_batches,
        max_bad_fraction: d.max_bad_fraction,
        min_rows_for_bad_fraction: d.min_rows_for_bad_fraction,
        skip_bad_files: d.skip_bad_files,
        read_batch_rows: 64,
    }
}

/// Plan options of a config for a split and world size.
pub fn plan_options(config: &Config, split: Split, world_size: usize) -> PlanOptions {
    let d = &config.data;
    PlanOptions {
        seed: config.seed,
        world_size,
        batch_size: d.batch_size,
        shuffle: split == Split::Train && d.shuffle,
        shuffle_buffer: d.shuffle_buffer,
        last_batch: match split {
            Split::Train => d.last_batch,
            Split::Val => LastBatch::Pad,
        },
    }
}

/// A loader for `paths` set up from a config: catalog, transforms, tokenizer.
pub fn loader_from_config<S: AsRef<str>>(
    config: &Config,
    split: Split,
    paths: &[S],
) -> Result<Loader> {
    let catalog = open_catalog(config, paths)?;
    let text = match &config.data.tokenizer {
        Some(path) => Some(TextEncoder::from_file(
            path,
            config.model.text.context_length,
        )?),
        None => None,
    };
    Ok(Loader::new(
        Arc::new(catalog),
        loader_options(config, split),
        text,
    ))
}
