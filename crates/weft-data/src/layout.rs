//! Recognising the column layout of a Parquet image-text dataset.
//!
//! Three layouts are known:
//! - Hugging Face `datasets`: `image: struct<bytes: binary, path: string>` (or plain binary) and
//!   `text` or `caption`;
//! - img2dataset: a binary `jpg`, `png` or `webp` column, `caption` or `txt`, optional `key`, and
//!   optional `status` (rows whose status is not `success` are skipped);
//! - explicit: whatever `data.image_column` / `data.text_column` / `data.key_column` name.

use std::fmt;
use std::path::Path;

use arrow_schema::{DataType, Schema};
use parquet::schema::types::SchemaDescriptor;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// Which layout a dataset has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Hugging Face `datasets` (`image` struct + `text`).
    HuggingFace,
    /// img2dataset (`jpg` + `caption` + `key` + `status`).
    Img2dataset,
    /// Columns named in the config.
    Explicit,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::HuggingFace => "huggingface",
            Layout::Img2dataset => "img2dataset",
            Layout::Explicit => "explicit",
        })
    }
}

/// Column names to read, as resolved from the schema and the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnMapping {
    /// The layout.
    pub layout: Layout,
    /// Image column (binary, or a struct with a binary `bytes` field).
    pub image: String,
    /// Whether the image column is a struct whose `bytes` field holds the encoded image.
    pub image_is_struct: bool,
    /// Whether that struct also has a `path` field: rows with null bytes are then read from
    /// that file (absolute, or relative to the Parquet file's directory).
    pub image_has_path: bool,
    /// Caption column.
    pub text: String,
    /// Key column, if any.
    pub key: Option<String>,
    /// img2dataset status column, if any.
    pub status: Option<String>,
}

/// Column names the user may set in the config.
#[derive(Debug, Clone, Default)]
pub struct ColumnOverrides {
    /// `data.image_column`.
    pub image: Option<String>,
    /// `data.text_column`.
    pub text: Option<String>,
    /// `data.key_column`.
    pub key: Option<String>,
}

impl ColumnMapping {
    /// Detect the layout of a file from its Arrow schema.
    pub fn detect(schema: &Schema, overrides: &ColumnOverrides, path: &Path) -> Result<Self> {
        let has = |name: &str| schema.field_with_name(name).is_ok();
        let first_present = |names: &[&str]| names.iter().find(|n| has(n)).map(|n| n.to_string());
        let missing = |column: &str| DataError::MissingColumn {
            path: path.to_path_buf(),
            column: column.to_string(),
            present: schema.fields().iter().map(|f| f.name().clone()).collect(),
        };
        let (layout, image) = if let Some(image) = &overrides.image {
            (Layout::Explicit, image.clone())
        } else if has("image") {
            (Layout::HuggingFace, "image".to_string())
        } else if let Some(col) = first_present(&["jpg", "jpeg", "png", "webp"]) {
            (Layout::Img2dataset, col)
        } else {
            return Err(missing("image or jpg/png/webp"));
        };
        let text = match &overrides.text {
            Some(text) => text.clone(),
            None => first_present(&["text", "caption", "txt"])
                .ok_or_else(|| missing("text or caption or txt"))?,
        };
        let layout = if overrides.text.is_some() {
            Layout::Explicit
        } else {
            layout
        };
        let key = match &overrides.key {
            Some(key) => Some(key.clone()),
            None => first_present(&["key", "id"]),
        };
        let status = (layout == Layout::Img2dataset && has("status")).then(|| "status".to_string());
        let (image_is_struct, image_has_path) =
            match schema.field_with_name(&image).map(|f| f.data_type()) {
                Ok(DataType::Struct(fields)) => (
                    true,
                    fields
                        .iter()
                        .any(|f| f.name() == "path" && is_string(f.data_type())),
                ),
                _ => (false, false),
            };
        let mapping = Self {
            layout,
            image,
            image_is_struct,
            image_has_path,
            text,
            key,
            status,
        };
        mapping.check(schema, path)?;
        Ok(mapping)
    }

    /// Check that a file's schema has every mapped column with a readable type.
    pub fn check(&self, schema: &Schema, path: &Path) -> Result<()> {
        let present = || schema.fields().iter().map(|f| f.name().clone()).collect();
        let field = |name: &str| {
            schema
                .field_with_name(name)
                .map_err(|_| DataError::MissingColumn {
                    path: path.to_path_buf(),
                    column: name.to_string(),
                    present: present(),
                })
        };
        let type_error = |column: &str, found: &DataType, expected: &str| DataError::ColumnType {
            path: path.to_path_buf(),
            column: column.to_string(),
            found: found.to_string(),
            expected: expected.to_string(),
        };
        let image = field(&self.image)?;
        match image.data_type() {
            DataType::Struct(fields) => {
                let bytes = fields.iter().find(|f| f.name() == "bytes").ok_or_else(|| {
                    type_error(
                        &self.image,
                        image.data_type(),
                        "a struct with a `bytes` field",
                    )
                })?;
                if !is_binary(bytes.data_type()) {
                    return Err(type_error(
                        &format!("{}.bytes", self.image),
                        bytes.data_type(),
                        "binary",
                    ));
                }
            }
            t if is_binary(t) => {}
            t => {
                return Err(type_error(
                    &self.image,
                    t,
                    "binary or struct<bytes: binary>",
                ))
            }
        }
        let text = field(&self.text)?;
        if !is_string(text.data_type()) {
            return Err(type_error(&self.text, text.data_type(), "string"));
        }
        if let Some(key) = &self.key {
            field(key)?;
        }
        if let Some(status) = &self.status {
            let f = field(status)?;
            if !is_string(f.data_type()) {
                return Err(type_error(status, f.data_type(), "string"));
            }
        }
        Ok(())
    }

    /// Indices of the Parquet leaf columns to read: the image bytes and, when the struct has
    /// one, the image path (the fallback for null bytes); no image column at all without
    /// `with_image`.
    pub fn leaf_indices(&self, schema: &SchemaDescriptor, with_image: bool) -> Vec<usize> {
        let image = if self.image_is_struct {
            vec![self.image.as_str(), "bytes"]
        } else {
            vec![self.image.as_str()]
        };
        let wanted: Vec<Vec<&str>> = [
            with_image.then_some(image),
            (with_image && self.image_has_path).then(|| vec![self.image.as_str(), "path"]),
            Some(vec![self.text.as_str()]),
            self.key.as_deref().map(|k| vec![k]),
            self.status.as_deref().map(|s| vec![s]),
        ]
        .into_iter()
        .flatten()
        .collect();
        schema
            .columns()
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                let parts = c.path().parts();
                wanted.iter().any(|w| {
                    // A leaf belongs to a wanted column when the wanted path is its prefix.
                    parts.len() >= w.len() && parts.iter().zip(w).all(|(a, b)| a == b)
                })
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// One line for logs: `huggingface layout: image=image.bytes text=text key=- status=-`.
    pub fn describe(&self) -> String {
        format!(
            "{} layout: image={}{} text={} key={} status={}",
            self.layout,
            self.image,
            if self.image_is_struct { ".bytes" } else { "" },
            self.text,
            self.key.as_deref().unwrap_or("-"),
            self.status.as_deref().unwrap_or("-"),
        )
    }
}

fn is_binary(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView
    )
}

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}
