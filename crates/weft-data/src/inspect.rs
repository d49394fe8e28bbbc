//! `weft data inspect`: what a dataset holds and how much of it is usable.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use crate::catalog::{Catalog, RowReader, SkippedFile};
use crate::error::{DataError, Result};
use crate::image::{decode_rgb, header_dimensions};
use crate::layout::{ColumnMapping, Layout};
use crate::loader::precheck;
use crate::plan::{DataCursor, LastBatch, PlanOptions};

/// Range of image sizes seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SizeRange {
    /// Smallest width.
    pub min_width: u32,
    /// Largest width.
    pub max_width: u32,
    /// Smallest height.
    pub min_height: u32,
    /// Largest height.
    pub max_height: u32,
}

/// One file of the report.
#[derive(Debug, Clone, Serialize)]
pub struct FileSummary {
    /// The file.
    pub path: PathBuf,
    /// Rows.
    pub rows: u64,
    /// Row groups.
    pub row_groups: usize,
}

/// What `weft data inspect` prints.
#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    /// Detected layout.
    pub layout: Layout,
    /// Columns read.
    pub columns: ColumnMapping,
    /// Files read.
    pub files: usize,
    /// Row groups (units of sharding).
    pub row_groups: usize,
    /// Rows.
    pub rows: u64,
    /// Rows an epoch is planned over: every row but the failed downloads (img2dataset's
    /// `status` column), which are left out before the plan.
    pub planned_rows: u64,
    /// Optimizer steps of one epoch for `epoch`'s world size, batch size and accumulation, as
    /// `weft train` counts them; 0 when the planned rows do not fill one step (`weft train`
    /// refuses such a dataset).
    pub steps_per_epoch: u64,
    /// The world size, batch size, accumulation and last-batch mode `steps_per_epoch` is for.
    pub epoch: EpochShape,
    /// Rows that pass every check (with `--full`, the image decodes).
    pub usable_rows: u64,
    /// Skipped rows by reason.
    pub bad_rows: BTreeMap<String, u64>,
    /// Whether every image was decoded (`--full`), or only its header read.
    pub full: bool,
    /// Image sizes of the usable rows.
    pub image_size: Option<SizeRange>,
    /// The first few captions.
    pub sample_captions: Vec<String>,
    /// Each file.
    pub file_list: Vec<FileSummary>,
    /// Files left out as unreadable (`data.skip_bad_files = true`).
    pub skipped_files: Vec<SkippedFile>,
}

/// The shape of an epoch that `weft data inspect` counts steps for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EpochShape {
    /// Ranks.
    pub world_size: usize,
    /// Samples per batch on each rank.
    pub batch_size: usize,
    /// Batches accumulated into one optimizer step (`train.grad_accum`).
    pub grad_accum: u64,
    /// What happens to the last, partial global batch.
    pub last_batch: LastBatch,
}

/// Read every row of the catalog (only the mapped columns) and count what is usable. With
/// `full`, every image is decoded; otherwise only image headers are read. The steps of an epoch
/// are counted with `plan`'s world size, batch size and last-batch mode, `grad_accum` batches a
/// step, as `weft train` counts them.
pub fn inspect(
    catalog: Arc<Catalog>,
    plan: PlanOptions,
    grad_accum: u64,
    full: bool,
    captions: usize,
    skip_bad_files: bool,
) -> Result<InspectReport> {
    let epoch = EpochShape {
        world_size: plan.world_size,
        batch_size: plan.batch_size,
        grad_accum,
        last_batch: plan.last_batch,
    };
    let batches_per_epoch = match DataCursor::new(&*catalog, plan, 0).steps(&*catalog) {
        Err(DataError::TooFewRows { .. }) => 0,
        batches => batches?,
    };
    let steps_per_epoch = batches_per_epoch / grad_accum;
    let mut bad_rows: BTreeMap<String, u64> = BTreeMap::new();
    let mut usable = 0u64;
    let mut size: Option<SizeRange> = None;
    let mut sample_captions = Vec::new();
    let mut reader = RowReader::new(Arc::clone(&catalog), 256);
    for (i, unit) in catalog.units.iter().enumerate() {
        let mut read = 0u64;
        let result = reader.read(i as u32, &[(0, unit.rows)], |raw| {
            read += 1;
            let reason = match precheck(&raw) {
                Some((reason, _)) => Some(reason),
                None => {
                    let bytes = raw.image.as_deref().unwrap_or_default();
                    let dims = if full {
                        decode_rgb(bytes).map(|img| img.dimensions())
                    } else {
                        header_dimensions(bytes)
                    };
                    match dims {
                        Ok((w, h)) => {
                            size = Some(match size {
                                None => SizeRange {
                                    min_width: w,
                                    max_width: w,
                                    min_height: h,
                                    max_height: h,
                                },
                                Some(s) => SizeRange {
                                    min_width: s.min_width.min(w),
                                    max_width: s.max_width.max(w),
                                    min_height: s.min_height.min(h),
                                    max_height: s.max_height.max(h),
                                },
                            });
                            None
                        }
                        Err(_) => Some("decode_error"),
                    }
                }
            };
            match reason {
                Some(r) => *bad_rows.entry(r.to_string()).or_default() += 1,
                None => {
                    usable += 1;
                    if sample_captions.len() < captions {
                        sample_captions.push(raw.text.clone().unwrap_or_default());
                    }
                }
            }
            true
        });
        if let Err(e) = result {
            if !skip_bad_files {
                return Err(e);
            }
            tracing::warn!(error = %e, "skipping the rest of an unreadable row group");
            *bad_rows.entry("bad_file".to_string()).or_default() += unit.rows - read;
        }
    }
    Ok(InspectReport {
        layout: catalog.mapping.layout,
        columns: catalog.mapping.clone(),
        files: catalog.files.len(),
        row_groups: catalog.units.len(),
        rows: catalog.total_rows(),
        planned_rows: catalog.planned_rows(),
        steps_per_epoch,
        epoch,
        usable_rows: usable,
        bad_rows,
        full,
        image_size: size,
        sample_captions,
        file_list: catalog
            .files
            .iter()
            .map(|f| FileSummary {
                path: f.path.clone(),
                rows: f.rows,
                row_groups: f.row_groups,
            })
            .collect(),
        skipped_files: catalog.skipped_files.clone(),
    })
}

impl InspectReport {
    /// The report as text for a terminal.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!("layout      {}\n", self.columns.describe()));
        s.push_str(&format!(
            "files       {} ({} row groups)\n",
            self.files, self.row_groups
        ));
        const SHOWN: usize = 10;
        for f in self.file_list.iter().take(SHOWN) {
            s.push_str(&format!(
                "            {} ({} rows, {} row groups)\n",
                f.path.display(),
                f.rows,
                f.row_groups
            ));
        }
        if self.file_list.len() > SHOWN {
            s.push_str(&format!(
                "            ... and {} more (--json lists them all)\n",
                self.file_list.len() - SHOWN
            ));
        }
        for f in &self.skipped_files {
            s.push_str(&format!("skipped     {}: {}\n", f.path.display(), f.reason));
        }
        s.push_str(&format!("rows        {}\n", self.rows));
        if let Some(col) = &self.columns.status {
            s.push_str(&format!(
                "planned     {} ({} failed downloads by column {col:?} left out)\n",
                self.planned_rows,
                self.rows - self.planned_rows
            ));
        }
        let e = &self.epoch;
        let mut shape = format!(
            "{} x {} rank{}",
            e.batch_size,
            e.world_size,
            if e.world_size == 1 { "" } else { "s" }
        );
        if e.grad_accum > 1 {
            shape.push_str(&format!(" x accum {}", e.grad_accum));
        }
        s.push_str(&if self.steps_per_epoch == 0 {
            format!(
                "epoch       no step: {} planned rows do not fill one batch of {shape}\n",
                self.planned_rows
            )
        } else {
            format!(
                "epoch       {} steps of {shape} ({} the last partial batch)\n",
                self.steps_per_epoch,
                match e.last_batch {
                    LastBatch::Drop => "dropping",
                    LastBatch::Pad => "padding",
                }
            )
        });
        s.push_str(&format!(
            "usable      {} ({})\n",
            self.usable_rows,
            if self.full {
                "every image decoded"
            } else {
                "image headers read; --full decodes every image"
            }
        ));
        if self.bad_rows.is_empty() {
            s.push_str("bad rows    none\n");
        } else {
            let parts: Vec<String> = self
                .bad_rows
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            s.push_str(&format!("bad rows    {}\n", parts.join(", ")));
        }
        if let Some(r) = &self.image_size {
            s.push_str(&format!(
                "image size  {}-{} x {}-{} (width x height)\n",
                r.min_width, r.max_width, r.min_height, r.max_height
            ));
        }
        for c in &self.sample_captions {
            s.push_str(&format!("caption     {c:?}\n"));
        }
        s
    }
}
