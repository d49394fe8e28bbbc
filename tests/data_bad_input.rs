//! Bad input: every case gets its exact count or its exact error, and nothing crashes.

mod common;

use common::*;
use weft_data::{DataError, Split};

/// 20 rows: 1 undecodable image, 1 null image, 1 empty caption, 1 null caption, 1 blank caption.
fn messy(dir: &std::path::Path) -> std::path::PathBuf {
    let mut rows: Vec<(Option<Vec<u8>>, Option<String>)> = (0..20)
        .map(|i| (Some(png_for(i)), Some(format!("caption {i}"))))
        .collect();
    rows[2].0 = Some(b"\x89PNG but not really".to_vec());
    rows[5].0 = None;
    rows[8].1 = Some(String::new());
    rows[11].1 = None;
    rows[14].1 = Some("   ".into());
    let p = dir.join("messy.parquet");
    write_hf(&p, &rows, 8);
    p
}

#[test]
fn bad_rows_are_skipped_and_counted_by_reason() {
    let dir = tempfile::tempdir().unwrap();
    let p = messy(dir.path());
    let mut config = test_config(5);
    config.data.max_bad_fraction = 0.5;
    config.data.shuffle = false;
    let mut stream = stream_one_rank(&config, &[p], Split::Train);
    let batches: Vec<_> = stream.by_ref().collect::<Result<_, _>>().unwrap();
    assert_eq!(
        batches.len(),
        4,
        "20 rows, batch 5: 4 steps, the last one padded"
    );
    let real = real_captions(&batches);
    let want: Vec<String> = (0..20)
        .filter(|i| ![2, 5, 8, 11, 14].contains(i))
        .map(|i| format!("caption {i}"))
        .collect();
    assert_eq!(real, want);
    assert_eq!(batches[3].is_pad.iter().filter(|p| **p).count(), 5);
    let stats = stream.stats();
    assert_eq!(stats.seen, 20);
    assert_eq!(stats.bad, 5);
    let reasons: Vec<(String, u64)> = stats.by_reason.into_iter().collect();
    assert_eq!(
        reasons,
        vec![
            ("decode_error".to_string(), 1),
            ("empty_caption".to_string(), 3),
            ("null_image".to_string(), 1)
        ]
    );
}

#[test]
fn too_many_bad_rows_stop_the_run_with_the_counts() {
    let dir = tempfile::tempdir().unwrap();
    let p = messy(dir.path());
    let mut config = test_config(5);
    config.data.max_bad_fraction = 0.1;
    config.data.shuffle = false;
    let results: Vec<_> = stream_one_rank(&config, &[p], Split::Train).collect();
    let err = results
        .last()
        .unwrap()
        .as_ref()
        .expect_err("the run must stop");
    assert!(matches!(err, DataError::TooManyBadRows { .. }));
    assert_eq!(
        err.to_string(),
        "rank 0: 5 of 20 rows skipped (25.00%), more than data.max_bad_fraction = 0.1; \
         by reason: decode_error=1, empty_caption=3, null_image=1"
    );
    // Mid-epoch check once enough rows were seen.
    config.data.min_rows_for_bad_fraction = 3;
    let results: Vec<_> =
        stream_one_rank(&config, &[dir.path().join("messy.parquet")], Split::Train).collect();
    let err = results.last().unwrap().as_ref().err().unwrap().to_string();
    assert!(err.starts_with("rank 0: 1 of 3 rows skipped"), "{err}");
}

#[test]
fn missing_column_lists_what_is_there() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("a.parquet");
    write_hf_numbered(&good, 0, 4, 4);
    // Second file: image but no caption column.
    let bad = dir.path().join("b.parquet");
    write_img2dataset(
        &bad,
        &[I2dRow {
            jpg: Some(png_for(1)),
            caption: None,
            key: "k".into(),
            status: "success".into(),
        }],
        "image",
        "alt",
    );
    let config = test_config(2);
    let err = weft_data::open_catalog(&config, &[dir.path().display().to_string()])
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.starts_with(&format!(
            "{}: no column \"text\"; columns present: [image, alt, key, status]",
            bad.display()
        )),
        "{err}"
    );
    // A configured column that does not exist.
    let mut config = test_config(2);
    config.data.text_column = Some("label".into());
    let err = weft_data::open_catalog(&config, &[good.display().to_string()])
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("no column \"label\"; columns present: [image, text]"),
        "{err}"
    );
}

#[test]
fn truncated_parquet_names_the_file_or_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("a.parquet");
    write_hf_numbered(&good, 0, 6, 3);
    let bad = dir.path().join("b.parquet");
    write_hf_numbered(&bad, 6, 6, 3);
    let bytes = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let paths = vec![dir.path().display().to_string()];
    let config = test_config(2);
    let err = weft_data::open_catalog(&config, &paths).err().unwrap();
    assert!(matches!(err, DataError::BadParquet { .. }));
    assert!(
        err.to_string()
            .starts_with(&format!("unreadable Parquet file {}: ", bad.display())),
        "{err}"
    );
    let mut config = test_config(2);
    config.data.skip_bad_files = true;
    let catalog = weft_data::open_catalog(&config, &paths).unwrap();
    assert_eq!(catalog.files.len(), 1);
    assert_eq!(catalog.skipped_files.len(), 1);
    assert_eq!(catalog.skipped_files[0].path, bad);
    assert_eq!(catalog.total_rows(), 6);
}

#[test]
fn not_parquet_at_all_and_empty_globs() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.parquet");
    std::fs::write(&p, b"hello").unwrap();
    let config = test_config(2);
    let err = weft_data::open_catalog(&config, &[p.display().to_string()])
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.starts_with(&format!("unreadable Parquet file {}", p.display())),
        "{err}"
    );
    let pattern = format!("{}/nothing-*.parquet", dir.path().display());
    let err = weft_data::open_catalog(&config, std::slice::from_ref(&pattern))
        .err()
        .unwrap()
        .to_string();
    assert_eq!(err, format!("no Parquet files found for {pattern}"));
}

#[test]
fn a_rank_with_only_bad_rows_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("all-bad.parquet");
    write_hf(&p, &[(None, Some("a".into())), (None, Some("b".into()))], 2);
    let mut config = test_config(2);
    config.data.max_bad_fraction = 1.0;
    let results: Vec<_> = stream_one_rank(&config, &[p], Split::Train).collect();
    let err = results.last().unwrap().as_ref().err().unwrap().to_string();
    assert_eq!(
        err,
        "rank 0: no usable row in its share of epoch 0 (all rows were skipped)"
    );
}

/// Overwrite the first page header of row group `rg`'s first column with 0xFF bytes.
fn corrupt_row_group(path: &std::path::Path, rg: usize) {
    corrupt_column(path, rg, 0);
}

/// Overwrites the start of column `column`'s chunk in row group `rg`.
fn corrupt_column(path: &std::path::Path, rg: usize, column: usize) {
    use parquet::file::reader::FileReader;
    let reader =
        parquet::file::reader::SerializedFileReader::new(std::fs::File::open(path).unwrap())
            .unwrap();
    let col = reader.metadata().row_group(rg).column(column).clone();
    let start = col
        .dictionary_page_offset()
        .unwrap_or(col.data_page_offset()) as usize;
    let mut bytes = std::fs::read(path).unwrap();
    for b in &mut bytes[start..start + 24] {
        *b = 0xFF;
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn corrupt_row_group_names_file_and_group_or_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.parquet");
    write_hf_numbered(&p, 0, 8, 4);
    corrupt_row_group(&p, 1);
    let mut config = test_config(2);
    config.data.shuffle = false;
    let results: Vec<_> =
        stream_one_rank(&config, std::slice::from_ref(&p), Split::Train).collect();
    let err = results
        .last()
        .unwrap()
        .as_ref()
        .expect_err("a corrupt row group stops the run");
    assert!(
        err.to_string().starts_with(&format!(
            "unreadable Parquet file {} (row group 1): ",
            p.display()
        )),
        "{err}"
    );
    config.data.skip_bad_files = true;
    let mut stream = stream_one_rank(&config, std::slice::from_ref(&p), Split::Train);
    let batches: Vec<_> = stream.by_ref().collect::<Result<_, _>>().unwrap();
    assert_eq!(batches.len(), 4);
    let real = real_captions(&batches);
    assert_eq!(real, ["caption 0", "caption 1", "caption 2", "caption 3"]);
    assert_eq!(stream.stats().by_reason.get("bad_file"), Some(&4));
    assert_eq!(stream.stats().bad, 0);
}

#[test]
fn an_unreadable_status_column_names_the_file_and_group_or_the_file_is_skipped() {
    // The status column is read when the dataset is opened, to plan over the downloads.
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<I2dRow> = (0..8)
        .map(|i| I2dRow {
            jpg: (i != 2).then(|| png_for(i)),
            caption: Some(format!("photo {i}")),
            key: format!("{i}"),
            status: if i == 2 {
                "failed_to_download"
            } else {
                "success"
            }
            .into(),
        })
        .collect();
    let good = dir.path().join("a.parquet");
    let bad = dir.path().join("b.parquet");
    write_img2dataset_in_groups(&good, &rows, "jpg", "caption", 4);
    write_img2dataset_in_groups(&bad, &rows, "jpg", "caption", 4);
    corrupt_column(&bad, 0, 3);
    let paths = [dir.path().display().to_string()];
    let mut config = test_config(2);
    let err = weft_data::open_catalog(&config, &paths)
        .expect_err("an unreadable status column is an error")
        .to_string();
    assert!(
        err.starts_with(&format!(
            "unreadable Parquet file {} (row group 0): reading status column \"status\": ",
            bad.display()
        )),
        "{err}"
    );
    config.data.skip_bad_files = true;
    let catalog = weft_data::open_catalog(&config, &paths).unwrap();
    assert_eq!(catalog.files.len(), 1);
    assert_eq!(catalog.skipped_files[0].path, bad);
    assert_eq!((catalog.total_rows(), catalog.planned_rows()), (8, 7));
}

#[test]
fn image_paths_read_only_regular_files_under_the_dataset_and_the_cap() {
    // Once: /dev/zero read without end (4.2 GB in 12 s), any readable file opened.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let png = |rgb| common::solid(4, 4, rgb, image::ImageFormat::Png);
    std::fs::write(data.join("ok.png"), png([255, 0, 0])).unwrap();
    std::fs::write(dir.path().join("outside.png"), png([0, 0, 255])).unwrap();
    std::fs::write(data.join("big.png"), vec![7u8; 5000]).unwrap();
    let p = data.join("paths.parquet");
    let row = |path: &str, caption: &str| (None, Some(path.to_string()), Some(caption.into()));
    common::write_hf_with_paths(
        &p,
        &[
            row("ok.png", "ok"),
            row("/dev/zero", "zero"),
            row("../outside.png", "outside"),
            row("big.png", "big"),
        ],
    );
    let mut config = test_config(4);
    config.data.max_bad_fraction = 1.0;
    config.data.max_image_bytes = 4096;
    let mut stream = stream_one_rank(&config, std::slice::from_ref(&p), Split::Val);
    let batches: Vec<_> = stream.by_ref().collect::<Result<_, _>>().unwrap();
    assert_eq!(real_captions(&batches), ["ok"]);
    assert_eq!(stream.stats().by_reason.get("null_image"), Some(&3));
    // data.image_root widens where paths may lead; devices and the cap still hold.
    config.data.image_root = Some("/".into());
    let mut stream = stream_one_rank(&config, std::slice::from_ref(&p), Split::Val);
    let batches: Vec<_> = stream.by_ref().collect::<Result<_, _>>().unwrap();
    assert_eq!(real_captions(&batches), ["ok", "outside"]);
    assert_eq!(stream.stats().by_reason.get("null_image"), Some(&2));
}

#[test]
fn a_caption_that_is_not_utf8_is_one_bad_row() {
    // Once: one such caption failed its whole row group (or, without skip_bad_files, the run).
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("latin1.parquet");
    let captions: Vec<Vec<u8>> = (0..16)
        .map(|i| match i {
            3 => b"caf\xe9 au lait".to_vec(),
            10 => b"\xff\xfe".to_vec(),
            _ => format!("caption {i}").into_bytes(),
        })
        .collect();
    // A string column with bytes that are not UTF-8, as a careless writer leaves them.
    let images: Vec<Vec<u8>> = (0..16).map(png_for).collect();
    write_raw_strings(&p, &images, &captions, 8);
    // The file is what was meant: a plain Arrow read of it fails on UTF-8.
    let plain = parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(
        std::fs::File::open(&p).unwrap(),
        8,
    )
    .unwrap();
    let err = plain.collect::<Result<Vec<_>, _>>().unwrap_err();
    assert!(err.to_string().contains("utf-8"), "{err}");
    let mut config = test_config(4);
    config.data.max_bad_fraction = 0.5;
    config.data.shuffle = false;
    let mut stream = stream_one_rank(&config, &[p], Split::Val);
    let batches: Vec<_> = stream.by_ref().collect::<Result<_, _>>().unwrap();
    let want: Vec<String> = (0..16)
        .filter(|i| ![3, 10].contains(i))
        .map(|i| format!("caption {i}"))
        .collect();
    assert_eq!(real_captions(&batches), want);
    let stats = stream.stats();
    assert_eq!((stats.seen, stats.bad), (16, 2));
    assert_eq!(stats.by_reason.get("bad_caption"), Some(&2));
}

/// A Hugging Face style file (`image` binary, `text` string) written with parquet's column
/// writer, which, unlike Arrow's string arrays, takes the caption bytes as they are.
fn write_raw_strings(path: &std::path::Path, images: &[Vec<u8>], texts: &[Vec<u8>], group: usize) {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::writer::SerializedFileWriter;
    use std::sync::Arc;
    let schema = "message row { required binary image; required binary text (UTF8); }";
    let schema = Arc::new(parquet::schema::parser::parse_message_type(schema).unwrap());
    let file = std::fs::File::create(path).unwrap();
    let mut w = SerializedFileWriter::new(file, schema, Default::default()).unwrap();
    for (imgs, txts) in images.chunks(group).zip(texts.chunks(group)) {
        let mut rg = w.next_row_group().unwrap();
        for values in [imgs, txts] {
            let values: Vec<ByteArray> = values.iter().map(|v| v.clone().into()).collect();
            let mut col = rg.next_column().unwrap().unwrap();
            col.typed::<ByteArrayType>()
                .write_batch(&values, None, None)
                .unwrap();
            col.close().unwrap();
        }
        rg.close().unwrap();
    }
    w.close().unwrap();
}
