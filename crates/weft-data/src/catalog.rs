//! The catalog of a dataset: its files, their row groups (the units of sharding) and the
//! column mapping; and the reader that streams selected rows of one unit.
//!
//! Opening a catalog reads the Parquet footers and, when the layout has an img2dataset `status`
//! column, that column (a few bytes a row; skipped for a row group whose statistics say every
//! row succeeded), so that epochs are planned over the rows that downloaded ([`crate::usable`]).
//! Rows are read later, one unit (file, row group) at a time, only the needed columns, in small
//! record batches.

use std::borrow::Cow;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, BinaryArray, BinaryViewArray, LargeBinaryArray, LargeStringArray, RecordBatch,
    StringArray, StringViewArray, StructArray,
};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection,
};
use parquet::arrow::ProjectionMask;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{DataError, Result};
use crate::image_files::ImageFiles;
use crate::layout::{ColumnMapping, ColumnOverrides};
use crate::text_bytes::{caption_from_bytes, text_as_bytes};
use crate::usable::UsableRows;

/// One Parquet file of the dataset.
#[derive(Debug, Clone)]
pub struct FileEntry {
    /// Its path.
    pub path: PathBuf,
    /// Rows in the file.
    pub rows: u64,
    /// Row groups in the file.
    pub row_groups: usize,
    meta: ArrowReaderMetadata,
    leaves: Vec<usize>,
    text_leaves: Vec<usize>,
}

/// A unit of sharding: one row group of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Unit {
    /// Index into [`Catalog::files`].
    pub file: u32,
    /// Row group within the file.
    pub row_group: u32,
    /// Rows in the row group.
    pub rows: u64,
    /// Of which usable: all of them, or those whose img2dataset `status` is `success`. Epochs
    /// are planned over these.
    pub usable: u64,
}

/// A file that was skipped because it could not be read (`data.skip_bad_files = true`).
#[derive(Debug, Clone, Serialize)]
pub struct SkippedFile {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

/// The files and units of a dataset, with one column mapping that fits every file.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// Files, sorted by path.
    pub files: Vec<FileEntry>,
    /// Units in (file, row group) order.
    pub units: Vec<Unit>,
    /// Columns to read.
    pub mapping: ColumnMapping,
    /// Files left out because they were unreadable.
    pub skipped_files: Vec<SkippedFile>,
    /// What image paths may be read (rows whose image bytes are null).
    pub image_files: ImageFiles,
    /// For each unit, which rows are usable; `None` when all are.
    usable: Vec<Option<UsableRows>>,
}

/// One row as read from Parquet, before any decoding.
#[derive(Debug, Clone)]
pub struct RawRow {
    /// The unit it belongs to.
    pub unit: u32,
    /// Row index within the unit's row group.
    pub row: u64,
    /// Key for logs: the key column, or `file#row_group:row`.
    pub key: String,
    /// Encoded image, `None` when null.
    pub image: Option<Vec<u8>>,
    /// The image's `path` when its bytes were null and were looked up there.
    pub image_path: Option<String>,
    /// Why that path was not read.
    pub image_unread: Option<String>,
    /// Caption, `None` when null or not UTF-8.
    pub text: Option<String>,
    /// Why the caption's bytes are not text (they are not UTF-8).
    pub bad_text: Option<String>,
    /// False when an img2dataset status column says the row failed.
    pub status_ok: bool,
}

impl Catalog {
    /// Read the footers of `files`, detect the layout on the first readable file and check that
    /// every other file has the same columns. Unreadable files are an error, or skipped with a
    /// warning when `skip_bad_files` is set.
    pub fn open(
        files: &[PathBuf],
        overrides: &ColumnOverrides,
        skip_bad_files: bool,
    ) -> Result<Self> {
        let mut entries = Vec::new();
        let mut skipped = Vec::new();
        let mut units = Vec::new();
        let mut usable = Vec::new();
        let mut mapping: Option<ColumnMapping> = None;
        for path in files {
            let skip = skip_bad_files.then_some(&mut skipped);
            let Some(meta) = or_skip(read_metadata(path), path, skip, "unreadable Parquet file")?
            else {
                continue;
            };
            let schema = meta.schema();
            let m = match &mapping {
                Some(m) => {
                    m.check(schema, path)?;
                    m.clone()
                }
                None => {
                    let m = ColumnMapping::detect(schema, overrides, path)?;
                    mapping = Some(m.clone());
                    m
                }
            };
            let skip = skip_bad_files.then_some(&mut skipped);
            let what = "Parquet file whose status column is unreadable";
            let Some(groups) = or_skip(usable_rows(path, &meta, &m), path, skip, what)? else {
                continue;
            };
            let file = entries.len() as u32;
            for (gi, (rows, map)) in groups.into_iter().enumerate() {
                if rows > 0 {
                    units.push(Unit {
                        file,
                        row_group: gi as u32,
                        rows,
                        usable: map.as_ref().map_or(rows, UsableRows::count),
                    });
                    usable.push(map);
                }
            }
            let leaves = m.leaf_indices(meta.parquet_schema(), true);
            let text_leaves = m.leaf_indices(meta.parquet_schema(), false);
            let md = meta.metadata();
            let (rows, row_groups) = (md.file_metadata().num_rows(), md.num_row_groups());
            let meta = text_as_bytes(&meta, &m.text).map_err(|e| DataError::BadParquet {
                path: path.clone(),
                row_group: None,
                message: format!("reading column {:?} as bytes: {e}", m.text),
            })?;
            entries.push(FileEntry {
                path: path.clone(),
                rows: rows.max(0) as u64,
                row_groups,
                meta,
                leaves,
                text_leaves,
            });
        }
        let mapping = mapping.ok_or_else(|| DataError::NoFiles {
            pattern: if files.is_empty() {
                "(no paths given)".to_string()
            } else {
                format!("{} (every file was unreadable)", files[0].display())
            },
        })?;
        Ok(Self {
            files: entries,
            units,
            mapping,
            skipped_files: skipped,
            image_files: ImageFiles::default(),
            usable,
        })
    }

    /// Rows in all units.
    pub fn total_rows(&self) -> u64 {
        self.units.iter().map(|u| u.rows).sum()
    }

    /// Rows an epoch is planned over: the usable rows of all units.
    pub fn planned_rows(&self) -> u64 {
        self.units.iter().map(|u| u.usable).sum()
    }

    /// The rows of `unit`'s row group that the plan's row numbers `ranges` (sorted, disjoint,
    /// numbering the unit's usable rows) stand for.
    pub fn rows_of<'a>(&self, unit: u32, ranges: &'a [(u64, u64)]) -> Cow<'a, [(u64, u64)]> {
        match &self.usable[unit as usize] {
            None => Cow::Borrowed(ranges),
            Some(map) => Cow::Owned(map.rows_of(ranges)),
        }
    }

    /// A digest of the file names and row-group sizes: a data cursor only resumes on the
    /// dataset it was made for.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for u in &self.units {
            let f = &self.files[u.file as usize];
            h.update(file_name(&f.path).as_bytes());
            h.update(u.row_group.to_le_bytes());
            h.update(u.rows.to_le_bytes());
            if self.mapping.status.is_some() {
                // The plan numbers usable rows: a plan of other usable rows is another dataset.
                h.update(u.usable.to_le_bytes());
            }
        }
        let digest = h.finalize();
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The path of a unit's file.
    pub fn unit_path(&self, unit: u32) -> &Path {
        &self.files[self.units[unit as usize].file as usize].path
    }
}

/// `result`'s value; or, when it failed and `skipped` is given (`data.skip_bad_files = true`),
/// `None` after a warning and a note of the file in `skipped`.
fn or_skip<T>(
    result: Result<T>,
    path: &Path,
    skipped: Option<&mut Vec<SkippedFile>>,
    what: &str,
) -> Result<Option<T>> {
    match (result, skipped) {
        (Ok(v), _) => Ok(Some(v)),
        (Err(e), Some(skipped)) => {
            tracing::warn!(file = %path.display(), error = %e, "skipping {what} (data.skip_bad_files = true)");
            skipped.push(SkippedFile {
                path: path.to_path_buf(),
                reason: e.to_string(),
            });
            Ok(None)
        }
        (Err(e), None) => Err(e),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// For each row group of a file: its rows and, when a status column says some of them failed,
/// which rows are usable. A row group whose statistics show `success` as its only status value
/// and no nulls is not read.
fn usable_rows(
    path: &Path,
    meta: &ArrowReaderMetadata,
    mapping: &ColumnMapping,
) -> Result<Vec<(u64, Option<UsableRows>)>> {
    let md = meta.metadata();
    let groups = md.row_groups();
    let Some(status) = &mapping.status else {
        return Ok(groups
            .iter()
            .map(|g| (g.num_rows().max(0) as u64, None))
            .collect());
    };
    let leaf = meta
        .parquet_schema()
        .columns()
        .iter()
        .position(|c| c.path().parts() == [status.as_str()])
        .ok_or_else(|| DataError::BadParquet {
            path: path.to_path_buf(),
            row_group: None,
            message: format!("status column {status:?} is not a leaf column"),
        })?;
    let mut out = Vec::with_capacity(groups.len());
    // Opened at the first row group that must be read, once for the file.
    let mut file: Option<File> = None;
    for (gi, g) in groups.iter().enumerate() {
        let rows = g.num_rows().max(0) as u64;
        // Bounds that are equal leave one value possible, exact or not (a truncated minimum is
        // below the true one, a truncated maximum above), in any byte order.
        let all_success = g.column(leaf).statistics().is_some_and(|st| {
            st.null_count_opt() == Some(0)
                && st.min_bytes_opt() == Some(b"success".as_slice())
                && st.max_bytes_opt() == Some(b"success".as_slice())
        });
        if rows == 0 || all_success {
            out.push((rows, None));
            continue;
        }
        let bad = |message: String| DataError::BadParquet {
            path: path.to_path_buf(),
            row_group: Some(gi),
            message: format!("reading status column {status:?}: {message}"),
        };
        let io = |source| DataError::Io {
            path: path.to_path_buf(),
            source,
        };
        let opened = match &file {
            Some(f) => f,
            None => &*file.insert(File::open(path).map_err(io)?),
        };
        let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(
            opened.try_clone().map_err(io)?,
            meta.clone(),
        );
        let mask = ProjectionMask::leaves(builder.parquet_schema(), [leaf]);
        let reader = builder
            .with_projection(mask)
            .with_row_groups(vec![gi])
            .with_batch_size(8192)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        let mut flags = Vec::with_capacity(rows as usize);
        for batch in reader {
            let batch = batch.map_err(|e| bad(e.to_string()))?;
            let col = arrow_cast::cast(batch.column(0), &arrow_schema::DataType::Utf8)
                .map_err(|e| bad(e.to_string()))?;
            let col = col
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| bad("not a string column".to_string()))?;
            flags.extend((0..col.len()).map(|i| col.is_valid(i) && col.value(i) == "success"));
        }
        if flags.len() as u64 != rows {
            return Err(bad(format!("{} values for {rows} rows", flags.len())));
        }
        let map = UsableRows::from_flags(flags);
        out.push((rows, (map.count() < rows).then_some(map)));
    }
    Ok(out)
}

fn read_metadata(path: &Path) -> Result<ArrowReaderMetadata> {
    let file = File::open(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    ArrowReaderMetadata::load(&file, ArrowReaderOptions::new()).map_err(|e| DataError::BadParquet {
        path: path.to_path_buf(),
        row_group: None,
        message: e.to_string(),
    })
}

/// Reads selected rows of units, keeping the last file open.
pub struct RowReader {
    catalog: Arc<Catalog>,
    open: Option<(u32, File)>,
    batch_rows: usize,
    with_images: bool,
}

impl RowReader {
    /// A reader over `catalog` that decodes `batch_rows` rows at a time.
    pub fn new(catalog: Arc<Catalog>, batch_rows: usize) -> Self {
        Self {
            catalog,
            open: None,
            batch_rows: batch_rows.max(1),
            with_images: true,
        }
    }

    /// A reader that leaves the image column out: rows come with `image: None`. For work on
    /// captions only (training a tokenizer), which then reads a fraction of the bytes.
    pub fn captions_only(mut self) -> Self {
        self.with_images = false;
        self
    }

    /// Read the rows `ranges` (sorted, disjoint `[start, end)` row ranges of the row group) of
    /// `unit` and hand each to `emit` in order. `emit` returns false to stop early.
    pub fn read(
        &mut self,
        unit: u32,
        ranges: &[(u64, u64)],
        mut emit: impl FnMut(RawRow) -> bool,
    ) -> Result<()> {
        let catalog = Arc::clone(&self.catalog);
        let u = catalog.units[unit as usize];
        let entry = &catalog.files[u.file as usize];
        let path = &entry.path;
        let bad = |message: String| DataError::BadParquet {
            path: path.clone(),
            row_group: Some(u.row_group as usize),
            message,
        };
        let file = match &self.open {
            Some((fi, f)) if *fi == u.file => f,
            _ => {
                let f = File::open(path).map_err(|source| DataError::Io {
                    path: path.clone(),
                    source,
                })?;
                &self.open.insert((u.file, f)).1
            }
        };
        let file = file.try_clone().map_err(|source| DataError::Io {
            path: path.clone(),
            source,
        })?;
        let selection = RowSelection::from_consecutive_ranges(
            ranges.iter().map(|&(a, b)| a as usize..b as usize),
            u.rows as usize,
        );
        let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(file, entry.meta.clone());
        let leaves = if self.with_images {
            &entry.leaves
        } else {
            &entry.text_leaves
        };
        let mask = ProjectionMask::leaves(builder.parquet_schema(), leaves.iter().copied());
        let reader = builder
            .with_projection(mask)
            .with_row_groups(vec![u.row_group as usize])
            .with_row_selection(selection)
            .with_batch_size(self.batch_rows)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        let mut rows = ranges.iter().flat_map(|&(a, b)| a..b);
        let name = file_name(path);
        let mapping = &catalog.mapping;
        for batch in reader {
            let batch = batch.map_err(|e| bad(e.to_string()))?;
            let cols = Columns::new(&batch, mapping, self.with_images).map_err(bad)?;
            for i in 0..batch.num_rows() {
                let row = rows
                    .next()
                    .ok_or_else(|| bad("more rows than selected".to_string()))?;
                let mut image = cols.image_at(i).map(<[u8]>::to_vec);
                let (mut image_path, mut image_unread) = (None, None);
                if image.as_ref().is_none_or(|b| b.is_empty()) {
                    if let Some(p) = cols.path_at(i) {
                        match catalog.image_files.read(path, p) {
                            Ok(bytes) => image = Some(bytes),
                            Err(why) => image_unread = Some(why),
                        }
                        image_path = Some(p.to_string());
                    }
                }
                let (text, bad_text) = match cols.text_at(i).map(caption_from_bytes) {
                    None => (None, None),
                    Some(Ok(text)) => (Some(text), None),
                    Some(Err(why)) => (None, Some(why)),
                };
                let raw = RawRow {
                    unit,
                    row,
                    key: cols
                        .key_at(i)
                        .unwrap_or_else(|| format!("{name}#{}:{row}", u.row_group)),
                    image,
                    image_path,
                    image_unread,
                    text,
                    bad_text,
                    status_ok: cols.status_ok(i),
                };
                if !emit(raw) {
                    return Ok(());
                }
            }
        }
        if rows.next().is_some() {
            return Err(bad("row group ended before the selected rows".to_string()));
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Bin<'a> {
    Small(&'a BinaryArray),
    Large(&'a LargeBinaryArray),
    View(&'a BinaryViewArray),
}

#[derive(Clone, Copy)]
enum Str<'a> {
    Small(&'a StringArray),
    Large(&'a LargeStringArray),
    View(&'a StringViewArray),
}

struct Columns<'a> {
    image: Option<Bin<'a>>,
    image_parent: Option<&'a StructArray>,
    image_path: Option<Str<'a>>,
    text: Bin<'a>,
    key: Option<&'a ArrayRef>,
    status: Option<Str<'a>>,
}

impl<'a> Columns<'a> {
    fn new(
        batch: &'a RecordBatch,
        m: &ColumnMapping,
        with_images: bool,
    ) -> std::result::Result<Self, String> {
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| format!("column {name:?} missing from the record batch"))
        };
        let (image, image_parent) = if !with_images {
            (None, None)
        } else {
            let image_col = col(&m.image)?;
            let (arr, parent) = if m.image_is_struct {
                let s = image_col
                    .as_any()
                    .downcast_ref::<StructArray>()
                    .ok_or_else(|| format!("column {:?} is not a struct", m.image))?;
                let bytes = s
                    .column_by_name("bytes")
                    .ok_or_else(|| format!("column {:?} has no `bytes` field", m.image))?;
                (bytes, Some(s))
            } else {
                (image_col, None)
            };
            let bin = as_bin(arr).ok_or_else(|| format!("column {:?} is not binary", m.image))?;
            (Some(bin), parent)
        };
        Ok(Self {
            image,
            image_parent,
            image_path: match image_parent {
                Some(s) if m.image_has_path => s.column_by_name("path").and_then(as_str),
                _ => None,
            },
            text: as_bin(col(&m.text)?)
                .ok_or_else(|| format!("column {:?} is not read as bytes", m.text))?,
            key: match &m.key {
                Some(k) => Some(col(k)?),
                None => None,
            },
            status: match &m.status {
                Some(s) => {
                    Some(as_str(col(s)?).ok_or_else(|| format!("column {s:?} is not a string"))?)
                }
                None => None,
            },
        })
    }

    fn image_at(&self, i: usize) -> Option<&'a [u8]> {
        if self.image_parent.is_some_and(|p| p.is_null(i)) {
            return None;
        }
        bin_at(self.image?, i)
    }

    fn path_at(&self, i: usize) -> Option<&'a str> {
        if self.image_parent.is_some_and(|p| p.is_null(i)) {
            return None;
        }
        str_at(self.image_path.as_ref()?, i).filter(|p| !p.is_empty())
    }

    fn text_at(&self, i: usize) -> Option<&'a [u8]> {
        bin_at(self.text, i)
    }

    fn key_at(&self, i: usize) -> Option<String> {
        let key = self.key?;
        if key.is_null(i) {
            return None;
        }
        arrow_cast::display::array_value_to_string(key, i).ok()
    }

    fn status_ok(&self, i: usize) -> bool {
        match &self.status {
            None => true,
            Some(s) => str_at(s, i) == Some("success"),
        }
    }
}

fn bin_at<'a>(b: Bin<'a>, i: usize) -> Option<&'a [u8]> {
    match b {
        Bin::Small(a) => (!a.is_null(i)).then(|| a.value(i)),
        Bin::Large(a) => (!a.is_null(i)).then(|| a.value(i)),
        Bin::View(a) => (!a.is_null(i)).then(|| a.value(i)),
    }
}

fn str_at<'a>(s: &Str<'a>, i: usize) -> Option<&'a str> {
    match *s {
        Str::Small(a) => (!a.is_null(i)).then(|| a.value(i)),
        Str::Large(a) => (!a.is_null(i)).then(|| a.value(i)),
        Str::View(a) => (!a.is_null(i)).then(|| a.value(i)),
    }
}

fn as_bin(a: &ArrayRef) -> Option<Bin<'_>> {
    let any = a.as_any();
    any.downcast_ref::<BinaryArray>()
        .map(Bin::Small)
        .or_else(|| any.downcast_ref::<LargeBinaryArray>().map(Bin::Large))
        .or_else(|| any.downcast_ref::<BinaryViewArray>().map(Bin::View))
}

fn as_str(a: &ArrayRef) -> Option<Str<'_>> {
    let any = a.as_any();
    any.downcast_ref::<StringArray>()
        .map(Str::Small)
        .or_else(|| any.downcast_ref::<LargeStringArray>().map(Str::Large))
        .or_else(|| any.downcast_ref::<StringViewArray>().map(Str::View))
}
