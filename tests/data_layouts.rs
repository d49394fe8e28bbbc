//! Layout detection (Hugging Face, img2dataset, explicit mapping) and image decoding.

mod common;

use common::*;
use image::ImageFormat;
use weft_data::{Layout, Split};

fn one_epoch(config: &weft_config::Config, paths: &[std::path::PathBuf]) -> Vec<weft_data::Batch> {
    stream_one_rank(config, paths, Split::Val)
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn hugging_face_layout() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("hf.parquet");
    write_hf_numbered(&p, 0, 6, 4);
    let config = test_config(3);
    let l = loader(&config, std::slice::from_ref(&p), Split::Val);
    let m = &l.catalog().mapping;
    assert_eq!(m.layout, Layout::HuggingFace);
    assert!(m.image_is_struct);
    assert_eq!(
        m.describe(),
        "huggingface layout: image=image.bytes text=text key=- status=-"
    );
    assert_eq!(l.catalog().units.len(), 2);
    let batches = one_epoch(&config, &[p]);
    let captions: Vec<_> = batches.iter().flat_map(|b| b.captions.clone()).collect();
    assert_eq!(
        captions,
        (0..6).map(|i| format!("caption {i}")).collect::<Vec<_>>()
    );
    assert_eq!(batches[0].keys[1], "hf.parquet#0:1");
}

#[test]
fn img2dataset_layout_skips_failed_downloads() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("i2d.parquet");
    let rows: Vec<I2dRow> = (0..8)
        .map(|i| {
            let ok = i % 4 != 3;
            I2dRow {
                jpg: ok.then(|| solid(6, 6, [200, 10, 10], ImageFormat::Jpeg)),
                caption: Some(format!("photo {i}")),
                key: format!("{i:09}"),
                status: if ok {
                    "success".into()
                } else {
                    "failed_to_download".into()
                },
            }
        })
        .collect();
    write_img2dataset(&p, &rows, "jpg", "caption");
    let mut config = test_config(3);
    // Failed downloads do not count against the bad-row budget.
    config.data.max_bad_fraction = 0.0;
    let l = loader(&config, std::slice::from_ref(&p), Split::Val);
    assert_eq!(l.catalog().mapping.layout, Layout::Img2dataset);
    assert_eq!(
        l.catalog().mapping.describe(),
        "img2dataset layout: image=jpg text=caption key=key status=status"
    );
    let mut stream = stream_one_rank(&config, std::slice::from_ref(&p), Split::Val);
    let batches: Vec<_> = stream.by_ref().collect::<Result<_, _>>().unwrap();
    let real = real_keys(&batches);
    assert_eq!(
        real,
        [
            "000000000",
            "000000001",
            "000000002",
            "000000004",
            "000000005",
            "000000006"
        ]
    );
    // The plan holds the 6 rows that downloaded: 2 full steps of 3, no padding, and the failed
    // rows are never read (so no skip is counted for them).
    assert_eq!(
        (l.catalog().total_rows(), l.catalog().planned_rows()),
        (8, 6)
    );
    assert_eq!(batches.len(), 2);
    assert!(batches.iter().all(|b| b.is_pad.iter().all(|p| !p)));
    let stats = stream.stats();
    assert_eq!(stats.by_reason.get("status"), None);
    assert_eq!(stats.bad, 0);
    // png / txt column names are recognised too.
    let p2 = dir.path().join("i2d-png.parquet");
    let rows = vec![I2dRow {
        jpg: Some(solid(5, 5, [0, 0, 255], ImageFormat::Png)),
        caption: Some("blue".into()),
        key: "k".into(),
        status: "success".into(),
    }];
    write_img2dataset(&p2, &rows, "png", "txt");
    let l2 = loader(&config, &[p2], Split::Val);
    assert_eq!(l2.catalog().mapping.image, "png");
    assert_eq!(l2.catalog().mapping.text, "txt");
}

#[test]
fn explicit_mapping_from_config() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("custom.parquet");
    write_custom(
        &p,
        &[
            (solid(8, 8, [0, 255, 0], ImageFormat::Png), "green", 42),
            (solid(8, 8, [255, 0, 0], ImageFormat::Png), "red", 7),
        ],
    );
    let mut config = test_config(2);
    // Without a mapping the layout is unknown: the error lists the columns and the layouts.
    let err = weft_data::open_catalog(&config, &[p.display().to_string()])
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("columns present: [picture, alt_text, uid, extra]"),
        "{err}"
    );
    assert!(
        err.contains("Hugging Face")
            && err.contains("img2dataset")
            && err.contains("data.image_column"),
        "{err}"
    );
    config.data.image_column = Some("picture".into());
    config.data.text_column = Some("alt_text".into());
    config.data.key_column = Some("uid".into());
    let batches = one_epoch(&config, &[p]);
    assert_eq!(batches[0].captions, ["green", "red"]);
    assert_eq!(batches[0].keys, ["42", "7"]);
}

#[test]
fn formats_and_colour_modes_become_rgb() {
    let dir = tempfile::tempdir().unwrap();
    let rgb = [200u8, 100, 50];
    let mut rows = Vec::new();
    let encode = |img: image::DynamicImage, f: ImageFormat| {
        let mut buf = std::io::Cursor::new(Vec::new());
        img.write_to(&mut buf, f).unwrap();
        buf.into_inner()
    };
    let rgb_img = image::RgbImage::from_pixel(10, 6, image::Rgb(rgb));
    rows.push((
        Some(encode(rgb_img.clone().into(), ImageFormat::Png)),
        Some("png".to_string()),
    ));
    rows.push((
        Some(encode(rgb_img.clone().into(), ImageFormat::WebP)),
        Some("webp".to_string()),
    ));
    rows.push((
        Some(encode(rgb_img.clone().into(), ImageFormat::Jpeg)),
        Some("jpeg".to_string()),
    ));
    let rgba = image::RgbaImage::from_pixel(6, 10, image::Rgba([rgb[0], rgb[1], rgb[2], 77]));
    rows.push((
        Some(encode(rgba.into(), ImageFormat::Png)),
        Some("rgba".to_string()),
    ));
    let grey = image::GrayImage::from_pixel(7, 7, image::Luma([90]));
    rows.push((
        Some(encode(grey.into(), ImageFormat::Png)),
        Some("grey".to_string()),
    ));
    // A palette PNG, written with the png crate's indexed colour type.
    let mut palette = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut palette, 4, 4);
        enc.set_color(png::ColorType::Indexed);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_palette(vec![rgb[0], rgb[1], rgb[2], 0, 0, 0]);
        let mut w = enc.write_header().unwrap();
        w.write_image_data(&[0u8; 16]).unwrap();
    }
    rows.push((Some(palette), Some("palette".to_string())));
    let p = dir.path().join("formats.parquet");
    write_hf(&p, &rows, 100);
    let mut config = test_config(6);
    config.data.mean = [0.0; 3];
    config.data.std = [1.0; 3];
    let batches = one_epoch(&config, &[p]);
    let b = &batches[0];
    assert_eq!(
        b.captions,
        ["png", "webp", "jpeg", "rgba", "grey", "palette"]
    );
    let plane = 16;
    for (i, caption) in b.captions.iter().enumerate() {
        let img = &b.images[i * 3 * plane..(i + 1) * 3 * plane];
        let want: [f32; 3] = if caption == "grey" {
            [90.0 / 255.0; 3]
        } else {
            [
                rgb[0] as f32 / 255.0,
                rgb[1] as f32 / 255.0,
                rgb[2] as f32 / 255.0,
            ]
        };
        let tol = if caption == "jpeg" { 6.0 / 255.0 } else { 1e-6 };
        for c in 0..3 {
            for v in &img[c * plane..(c + 1) * plane] {
                assert!(
                    (v - want[c]).abs() <= tol,
                    "{caption} channel {c}: {v} vs {}",
                    want[c]
                );
            }
        }
    }
}

#[test]
fn center_crop_keeps_the_middle() {
    // 12x4 image: left third red, middle green, right third blue. The center crop (4x4) is
    // all green.
    let mut img = image::RgbImage::new(12, 4);
    for (x, _, px) in img.enumerate_pixels_mut() {
        *px = image::Rgb(match x / 4 {
            0 => [255, 0, 0],
            1 => [0, 255, 0],
            _ => [0, 0, 255],
        });
    }
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, ImageFormat::Png).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.parquet");
    write_hf(&p, &[(Some(buf.into_inner()), Some("g".into()))], 10);
    let mut config = test_config(1);
    config.data.mean = [0.0; 3];
    config.data.std = [1.0; 3];
    let b = &one_epoch(&config, &[p])[0];
    assert!(
        b.images[..16].iter().all(|v| *v == 0.0),
        "red plane: {:?}",
        &b.images[..16]
    );
    assert!(b.images[16..32].iter().all(|v| *v == 1.0), "green plane");
    assert!(b.images[32..].iter().all(|v| *v == 0.0), "blue plane");
}

#[test]
fn captions_only_reader_leaves_images_out() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("hf.parquet");
    write_hf_numbered(&p, 0, 5, 5);
    let config = test_config(1);
    let catalog =
        std::sync::Arc::new(weft_data::open_catalog(&config, &[p.display().to_string()]).unwrap());
    for (captions_only, want_image) in [(false, true), (true, false)] {
        let mut reader = weft_data::RowReader::new(std::sync::Arc::clone(&catalog), 2);
        if captions_only {
            reader = reader.captions_only();
        }
        let mut rows = Vec::new();
        reader
            .read(0, &[(1, 3)], |raw| {
                rows.push((raw.row, raw.image.is_some(), raw.text.clone().unwrap()));
                true
            })
            .unwrap();
        assert_eq!(
            rows,
            vec![
                (1, want_image, "caption 1".to_string()),
                (2, want_image, "caption 2".to_string())
            ]
        );
    }
}

#[test]
fn hugging_face_images_stored_beside_the_dataset_are_read_from_their_path() {
    // Datasets whose images live in files can hold only their paths: bytes are null.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("imgs")).unwrap();
    std::fs::write(
        dir.path().join("imgs/a.png"),
        solid(4, 4, [255, 0, 0], ImageFormat::Png),
    )
    .unwrap();
    let absolute = dir.path().join("b.png");
    std::fs::write(&absolute, solid(4, 4, [0, 0, 255], ImageFormat::Png)).unwrap();
    let p = dir.path().join("paths.parquet");
    write_hf_with_paths(
        &p,
        &[
            (None, Some("imgs/a.png".into()), Some("red".into())),
            (
                None,
                Some(absolute.display().to_string()),
                Some("blue".into()),
            ),
            (None, Some("imgs/missing.png".into()), Some("gone".into())),
            (
                Some(solid(4, 4, [0, 255, 0], ImageFormat::Png)),
                Some("ignored.png".into()),
                Some("green".into()),
            ),
        ],
    );
    let mut config = test_config(3);
    config.data.max_bad_fraction = 0.5;
    config.data.mean = [0.0; 3];
    config.data.std = [1.0; 3];
    let mut stream = stream_one_rank(&config, std::slice::from_ref(&p), Split::Val);
    let batches: Vec<_> = stream.by_ref().collect::<Result<_, _>>().unwrap();
    assert_eq!(batches[0].captions, ["red", "blue", "green"]);
    let b = &batches[0];
    // First pixel of each channel plane of each sample.
    let px = |i: usize| [0, 1, 2].map(|c| b.images[i * 48 + c * 16]);
    assert_eq!(
        [px(0), px(1), px(2)],
        [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    );
    assert_eq!(stream.stats().by_reason.get("null_image"), Some(&1));
}
