//! Captions read as bytes, so that one caption that is not UTF-8 is one bad row.
//!
//! parquet's Arrow reader checks UTF-8 a page at a time for a column annotated as a string:
//! one bad caption fails the whole record batch, and with it the row group. The reader decides
//! by the column's annotation in the file schema, and no Arrow schema hint turns a string
//! column into a binary one. So the row reader reads through a copy of the footer whose
//! caption column has no string annotation (and without the embedded Arrow schema, whose hint
//! would turn it back into a string), and checks each caption itself
//! ([`caption_from_bytes`]).

use std::sync::Arc;

use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::basic::{ConvertedType, Type as PhysicalType};
use parquet::errors::Result;
use parquet::file::metadata::{FileMetaData, ParquetMetaData};
use parquet::schema::types::{SchemaDescriptor, Type, TypePtr};

/// `meta` with the top-level byte-array column `text` unannotated: read through it, the
/// column comes back as binary, unchecked. Every other column is read as before, except that
/// Arrow-only types (dictionaries, large and view types) come back as their plain Parquet
/// equivalents, which the row reader accepts as well.
pub(crate) fn text_as_bytes(meta: &ArrowReaderMetadata, text: &str) -> Result<ArrowReaderMetadata> {
    let md = meta.metadata();
    let fm = md.file_metadata();
    let root = fm.schema();
    let fields = root
        .get_fields()
        .iter()
        .map(|f| match f.as_ref() {
            Type::PrimitiveType { physical_type, .. }
                if f.name() == text && *physical_type == PhysicalType::BYTE_ARRAY =>
            {
                unannotated(f)
            }
            _ => Ok(Arc::clone(f)),
        })
        .collect::<Result<Vec<_>>>()?;
    let root = Type::group_type_builder(root.name())
        .with_fields(fields)
        .build()?;
    let file_meta = FileMetaData::new(
        fm.version(),
        fm.num_rows(),
        fm.created_by().map(str::to_string),
        fm.key_value_metadata().cloned(),
        Arc::new(SchemaDescriptor::new(Arc::new(root))),
        fm.column_orders().cloned(),
    );
    let md = ParquetMetaData::new(file_meta, md.row_groups().to_vec());
    let options = ArrowReaderOptions::new().with_skip_arrow_metadata(true);
    ArrowReaderMetadata::try_new(Arc::new(md), options)
}

fn unannotated(field: &TypePtr) -> Result<TypePtr> {
    let info = field.get_basic_info();
    let mut builder = Type::primitive_type_builder(field.name(), PhysicalType::BYTE_ARRAY)
        .with_repetition(info.repetition())
        .with_converted_type(ConvertedType::NONE)
        .with_logical_type(None);
    if info.has_id() {
        builder = builder.with_id(Some(info.id()));
    }
    Ok(Arc::new(builder.build()?))
}

/// A caption's bytes as text, or why they are not: the byte offset where UTF-8 breaks.
pub(crate) fn caption_from_bytes(bytes: &[u8]) -> std::result::Result<String, String> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(s.to_string()),
        Err(e) => Err(format!(
            "the caption is not UTF-8 (invalid bytes at offset {} of {})",
            e.valid_up_to(),
            bytes.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caption_from_bytes_names_the_offset() {
        assert_eq!(caption_from_bytes("a cat".as_bytes()).unwrap(), "a cat");
        let err = caption_from_bytes(b"ab\xffcd").unwrap_err();
        assert!(err.contains("offset 2 of 5"), "{err}");
    }
}
