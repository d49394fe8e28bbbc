//! A label column beside the image and caption columns, for zero-shot classification: read
//! whole (one string per row, any Arrow type cast to text), addressed by [`RowId`].

use std::fs::File;
use std::path::Path;

use arrow_array::{Array, StringArray};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

use crate::catalog::Catalog;
use crate::error::{DataError, Result};
use crate::loader::RowId;

/// The labels of every row of a dataset, by unit and row.
#[derive(Debug, Clone, PartialEq)]
pub struct Labels {
    per_unit: Vec<Vec<Option<String>>>,
}

impl Labels {
    /// Read `column` of every file of `catalog` (numbers and other types as their text).
    pub fn read(catalog: &Catalog, column: &str) -> Result<Self> {
        let mut per_unit = Vec::with_capacity(catalog.units.len());
        for unit in &catalog.units {
            let path = &catalog.files[unit.file as usize].path;
            per_unit.push(read_group(path, unit.row_group as usize, column)?);
        }
        Ok(Self { per_unit })
    }

    /// The label of `row`, None when null.
    pub fn get(&self, row: RowId) -> Option<&str> {
        self.per_unit
            .get(row.unit as usize)?
            .get(row.row as usize)?
            .as_deref()
    }
}

fn read_group(path: &Path, row_group: usize, column: &str) -> Result<Vec<Option<String>>> {
    let bad = |message: String| DataError::BadParquet {
        path: path.to_path_buf(),
        row_group: Some(row_group),
        message,
    };
    let file = File::open(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| bad(e.to_string()))?;
    let fields = builder.schema().fields();
    if !fields.iter().any(|f| f.name() == column) {
        return Err(DataError::MissingLabelColumn {
            path: path.to_path_buf(),
            column: column.to_string(),
            present: fields.iter().map(|f| f.name().clone()).collect(),
        });
    }
    let mask = ProjectionMask::columns(builder.parquet_schema(), [column]);
    let reader = builder
        .with_projection(mask)
        .with_row_groups(vec![row_group])
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| bad(e.to_string()))?;
        let text = arrow_cast::cast(batch.column(0), &DataType::Utf8).map_err(|e| {
            bad(format!(
                "label column {column:?} cannot be read as text: {e}"
            ))
        })?;
        let text = text
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| bad(format!("label column {column:?} did not cast to text")))?;
        out.extend((0..text.len()).map(|i| (!text.is_null(i)).then(|| text.value(i).to_string())));
    }
    Ok(out)
}
