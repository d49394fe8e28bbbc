//! Fixtures shared by the integration tests: small Parquet files written with the `parquet`
//! crate, tiny encoded images, and a config for tests.
#![allow(dead_code)]

use std::fs::File;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, BinaryArray, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use image::{ImageFormat, Rgb, RgbImage};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use weft_config::Config;
use weft_data::{Batch, DataCursor, Loader};

/// A solid-colour image encoded as `format`.
pub fn solid(w: u32, h: u32, rgb: [u8; 3], format: ImageFormat) -> Vec<u8> {
    let img = RgbImage::from_pixel(w, h, Rgb(rgb));
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, format).unwrap();
    buf.into_inner()
}

/// A tiny PNG whose colour encodes `i` (so rows can be told apart).
pub fn png_for(i: usize) -> Vec<u8> {
    solid(
        4,
        4,
        [(i % 251) as u8, ((i / 251) % 251) as u8, 7],
        ImageFormat::Png,
    )
}

/// Hugging Face layout rows `(image, caption)` into `path`.
pub fn write_hf(path: &Path, rows: &[(Option<Vec<u8>>, Option<String>)], row_group: usize) {
    weft_data::synth::write_hf_parquet(path, rows, row_group).unwrap();
}

/// A Hugging Face file of `n` good rows numbered from `first`, captions "caption {i}".
pub fn write_hf_numbered(path: &Path, first: usize, n: usize, row_group: usize) {
    let rows: Vec<_> = (first..first + n)
        .map(|i| (Some(png_for(i)), Some(format!("caption {i}"))))
        .collect();
    write_hf(path, &rows, row_group);
}

/// One row of an img2dataset fixture.
pub struct I2dRow {
    pub jpg: Option<Vec<u8>>,
    pub caption: Option<String>,
    pub key: String,
    pub status: String,
}

/// img2dataset layout: `jpg`, `caption`, `key`, `status` (or `png` / `txt` names).
pub fn write_img2dataset(path: &Path, rows: &[I2dRow], image_col: &str, text_col: &str) {
    write_img2dataset_in_groups(path, rows, image_col, text_col, 1000);
}

/// [`write_img2dataset`] with row groups of `row_group` rows.
pub fn write_img2dataset_in_groups(
    path: &Path,
    rows: &[I2dRow],
    image_col: &str,
    text_col: &str,
    row_group: usize,
) {
    let schema = Arc::new(Schema::new(vec![
        Field::new(image_col, DataType::Binary, true),
        Field::new(text_col, DataType::Utf8, true),
        Field::new("key", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(BinaryArray::from_iter(
            rows.iter().map(|r| r.jpg.as_deref()),
        )),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.caption.as_deref()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.key.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.status.as_str()),
        )),
    ];
    write_batch(path, schema, cols, row_group);
}

/// A custom layout: `picture` (binary), `alt_text` (string), `uid` (int64), `extra` (string).
pub fn write_custom(path: &Path, rows: &[(Vec<u8>, &str, i64)]) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("picture", DataType::Binary, false),
        Field::new("alt_text", DataType::Utf8, false),
        Field::new("uid", DataType::Int64, false),
        Field::new("extra", DataType::Utf8, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(BinaryArray::from_iter_values(
            rows.iter().map(|r| r.0.as_slice()),
        )),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|_| "x"))),
    ];
    write_batch(path, schema, cols, 1000);
}

pub fn write_batch(path: &Path, schema: Arc<Schema>, cols: Vec<ArrayRef>, row_group: usize) {
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(row_group))
        .build();
    let mut w = ArrowWriter::try_new(
        File::create(path).unwrap(),
        Arc::clone(&schema),
        Some(props),
    )
    .unwrap();
    w.write(&RecordBatch::try_new(schema, cols).unwrap())
        .unwrap();
    w.close().unwrap();
}

/// A config for tests: tiny images, no tokenizer, 2 workers, no bad rows tolerated.
pub fn test_config(batch_size: usize) -> Config {
    let mut c = Config::default();
    c.data.image_size = 4;
    c.data.batch_size = batch_size;
    c.data.workers = 2;
    c.data.prefetch_batches = 2;
    c.data.tokenizer = None;
    c.data.shuffle_buffer = 16;
    c.data.min_rows_for_bad_fraction = 1_000_000;
    c
}

pub fn loader(config: &Config, paths: &[PathBuf], split: weft_data::Split) -> Loader {
    let paths: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    weft_data::loader_from_config(config, split, &paths).unwrap()
}

/// Every batch of `rank` from `cursor` to the end of the epoch.
pub fn run_rank(loader: &Loader, cursor: &DataCursor, rank: usize) -> Vec<Batch> {
    loader
        .stream(cursor, rank)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

/// Captions of the samples that are not padding, in batch order.
pub fn real_captions(batches: &[Batch]) -> Vec<String> {
    real(batches, |b, i| b.captions[i].clone())
}

/// Keys of the samples that are not padding, in batch order.
pub fn real_keys(batches: &[Batch]) -> Vec<String> {
    real(batches, |b, i| b.keys[i].clone())
}

/// Rows of the samples that are not padding, in batch order.
pub fn real_rows(batches: &[Batch]) -> Vec<weft_data::RowId> {
    real(batches, |b, i| b.rows[i])
}

fn real<T>(batches: &[Batch], f: impl Fn(&Batch, usize) -> T) -> Vec<T> {
    batches
        .iter()
        .flat_map(|b| {
            (0..b.len())
                .filter(|&i| !b.is_pad[i])
                .map(|i| f(b, i))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Epoch 0 of a single rank (world size 1).
pub fn stream_one_rank(
    config: &Config,
    paths: &[PathBuf],
    split: weft_data::Split,
) -> weft_data::BatchStream {
    let l = loader(config, paths, split);
    let cursor = DataCursor::new(l.catalog(), weft_data::plan_options(config, split, 1), 0);
    l.stream(&cursor, 0).unwrap()
}

/// Hugging Face layout with explicit `image.path` values.
pub fn write_hf_with_paths(path: &Path, rows: &[weft_data::synth::HfRow]) {
    weft_data::synth::write_hf_parquet_with_paths(path, rows, 1000).unwrap();
}
pub mod ckpt;
pub mod dist;
pub mod process;
pub mod train;
