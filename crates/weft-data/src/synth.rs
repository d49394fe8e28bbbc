//! A deterministic synthetic image-text dataset that a small model can really learn: two
//! coloured shapes per image, one above, below, left or right of the other, and a caption that
//! says so ("a red circle above a blue square"). 8 colours × 5 shapes × 4 relations give 6,240
//! distinct captions, so retrieval on a few hundred validation pairs is far from trivial.
//!
//! Written in the Hugging Face layout (`image: struct<bytes, path>`, `text`), snappy-compressed.

use std::fs::File;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, BinaryArray, RecordBatch, StringArray, StructArray};
use arrow_schema::{DataType, Field, Fields, Schema};
use image::{ImageFormat, Rgb, RgbImage};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::plan::derive_seed;

/// Colour names and their RGB values.
pub const COLOURS: [(&str, [u8; 3]); 8] = [
    ("red", [220, 40, 40]),
    ("green", [40, 180, 60]),
    ("blue", [50, 80, 230]),
    ("yellow", [235, 220, 50]),
    ("purple", [150, 60, 190]),
    ("orange", [245, 140, 30]),
    ("white", [240, 240, 240]),
    ("cyan", [60, 210, 220]),
];

/// Shape names.
pub const SHAPES: [&str; 5] = ["circle", "square", "triangle", "diamond", "cross"];

/// Spatial relations, as written in captions.
pub const RELATIONS: [&str; 4] = ["above", "below", "to the left of", "to the right of"];

/// Encoding of the synthetic images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SynthFormat {
    /// Lossless, small for flat shapes.
    #[default]
    Png,
    /// JPEG at quality 90 (closer to web-scraped data).
    Jpeg,
}

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthOptions {
    /// Rows in all.
    pub rows: usize,
    /// Files.
    pub shards: usize,
    /// Image side in pixels.
    pub image_size: u32,
    /// Seed.
    pub seed: u64,
    /// Rows per row group.
    pub row_group_size: usize,
    /// Image encoding.
    pub format: SynthFormat,
}

/// One object in a synthetic scene.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Object {
    /// Index into [`COLOURS`].
    pub colour: usize,
    /// Index into [`SHAPES`].
    pub shape: usize,
    /// Centre, in pixels.
    pub centre: (f32, f32),
    /// Half size, in pixels.
    pub radius: f32,
}

/// A scene: two objects, a relation of the first to the second, a background grey.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    /// The subject and the reference object.
    pub objects: [Object; 2],
    /// Index into [`RELATIONS`].
    pub relation: usize,
    /// Background grey level.
    pub background: u8,
}

impl Scene {
    /// The scene of row `index` for `seed`.
    pub fn generate(seed: u64, index: u64, size: u32) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(&[seed, index, 0x5eed]));
        let s = size as f32;
        let c1 = rng.random_range(0..COLOURS.len());
        let mut c2 = rng.random_range(0..COLOURS.len() - 1);
        if c2 >= c1 {
            c2 += 1;
        }
        let (s1, s2) = (
            rng.random_range(0..SHAPES.len()),
            rng.random_range(0..SHAPES.len()),
        );
        let relation = rng.random_range(0..RELATIONS.len());
        let mut radius = || rng.random_range(0.11 * s..0.19 * s);
        let (r1, r2) = (radius(), radius());
        // Along the relation's axis the subject sits in one half and the reference in the other;
        // across it, anywhere.
        let margin = 0.2 * s;
        let near =
            |rng: &mut ChaCha8Rng| rng.random_range(margin..(0.5 * s - 0.02 * s).max(margin + 1.0));
        let far = |rng: &mut ChaCha8Rng| {
            rng.random_range((0.5 * s + 0.02 * s).min(s - margin - 1.0)..s - margin)
        };
        let across = |rng: &mut ChaCha8Rng| rng.random_range(margin..s - margin);
        let (p1, p2) = match relation {
            0 => (
                (across(&mut rng), near(&mut rng)),
                (across(&mut rng), far(&mut rng)),
            ),
            1 => (
                (across(&mut rng), far(&mut rng)),
                (across(&mut rng), near(&mut rng)),
            ),
            2 => (
                (near(&mut rng), across(&mut rng)),
                (far(&mut rng), across(&mut rng)),
            ),
            _ => (
                (far(&mut rng), across(&mut rng)),
                (near(&mut rng), across(&mut rng)),
            ),
        };
        Self {
            objects: [
                Object {
                    colour: c1,
                    shape: s1,
                    centre: p1,
                    radius: r1,
                },
                Object {
                    colour: c2,
                    shape: s2,
                    centre: p2,
                    radius: r2,
                },
            ],
            relation,
            background: rng.random_range(20..80),
        }
    }

    /// "a red circle above an orange square".
    pub fn caption(&self) -> String {
        let [a, b] = &self.objects;
        format!(
            "{} {} {} {} {} {} {}",
            article(COLOURS[a.colour].0),
            COLOURS[a.colour].0,
            SHAPES[a.shape],
            RELATIONS[self.relation],
            article(COLOURS[b.colour].0),
            COLOURS[b.colour].0,
            SHAPES[b.shape]
        )
    }

    /// Draw the scene.
    pub fn render(&self, size: u32) -> RgbImage {
        let bg = self.background;
        let mut img = RgbImage::from_pixel(size, size, Rgb([bg, bg, bg]));
        for o in &self.objects {
            let colour = Rgb(COLOURS[o.colour].1);
            let (cx, cy) = o.centre;
            let r = o.radius;
            let x0 = (cx - r).floor().max(0.0) as u32;
            let x1 = ((cx + r).ceil() as u32).min(size - 1);
            let y0 = (cy - r).floor().max(0.0) as u32;
            let y1 = ((cy + r).ceil() as u32).min(size - 1);
            for y in y0..=y1 {
                for x in x0..=x1 {
                    let dx = (x as f32 + 0.5 - cx) / r;
                    let dy = (y as f32 + 0.5 - cy) / r;
                    if inside(o.shape, dx, dy) {
                        img.put_pixel(x, y, colour);
                    }
                }
            }
        }
        img
    }
}

/// "an" before a vowel, "a" otherwise.
fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// Whether a point, in units of the radius around the centre, is inside a shape.
fn inside(shape: usize, dx: f32, dy: f32) -> bool {
    match SHAPES[shape] {
        "circle" => dx * dx + dy * dy <= 1.0,
        "square" => dx.abs() <= 0.85 && dy.abs() <= 0.85,
        // Apex up, base at dy = 0.8.
        "triangle" => (-1.0..=0.8).contains(&dy) && dx.abs() <= (dy + 1.0) / 1.8 * 0.95,
        "diamond" => dx.abs() + dy.abs() <= 1.0,
        _ => (dx.abs() <= 0.3 && dy.abs() <= 1.0) || (dy.abs() <= 0.3 && dx.abs() <= 1.0),
    }
}

/// Encode an image.
pub fn encode(img: &RgbImage, format: SynthFormat) -> Result<Vec<u8>> {
    let mut buf = Cursor::new(Vec::new());
    let res = match format {
        SynthFormat::Png => img.write_to(&mut buf, ImageFormat::Png),
        SynthFormat::Jpeg => {
            let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 90);
            img.write_with_encoder(enc)
        }
    };
    res.map_err(|e| DataError::Write {
        path: PathBuf::from("(image)"),
        message: e.to_string(),
    })?;
    Ok(buf.into_inner())
}

/// One row of the Hugging Face layout: encoded image, `image.path`, caption (`None`: null).
pub type HfRow = (Option<Vec<u8>>, Option<String>, Option<String>);

/// Write rows in the Hugging Face layout: `image: struct<bytes: binary, path: string>`,
/// `text: string`. `None` images and captions are written as nulls, and so is `image.path`: the
/// images live in the file.
pub fn write_hf_parquet(
    path: &Path,
    rows: &[(Option<Vec<u8>>, Option<String>)],
    row_group_size: usize,
) -> Result<()> {
    let rows: Vec<HfRow> = rows
        .iter()
        .map(|(image, text)| (image.clone(), None, text.clone()))
        .collect();
    write_hf_parquet_with_paths(path, &rows, row_group_size)
}

/// Write rows in the Hugging Face layout with explicit `image.path` values.
pub fn write_hf_parquet_with_paths(
    path: &Path,
    rows: &[HfRow],
    row_group_size: usize,
) -> Result<()> {
    write_hf_parquet_with_columns(path, rows, &[], row_group_size)
}

/// [`write_hf_parquet_with_paths`] with more string columns after `text` (e.g. a `label`
/// column for zero-shot classification), each with one value per row.
pub fn write_hf_parquet_with_columns(
    path: &Path,
    rows: &[HfRow],
    extra: &[(&str, Vec<Option<String>>)],
    row_group_size: usize,
) -> Result<()> {
    let err = |message: String| DataError::Write {
        path: path.to_path_buf(),
        message,
    };
    if let Some((name, _)) = extra.iter().find(|(_, v)| v.len() != rows.len()) {
        return Err(err(format!(
            "column {name:?} has another length than the rows"
        )));
    }
    let image_fields = Fields::from(vec![
        Field::new("bytes", DataType::Binary, true),
        Field::new("path", DataType::Utf8, true),
    ]);
    let mut fields = vec![
        Field::new("image", DataType::Struct(image_fields.clone()), true),
        Field::new("text", DataType::Utf8, true),
    ];
    fields.extend(
        extra
            .iter()
            .map(|(name, _)| Field::new(*name, DataType::Utf8, true)),
    );
    let schema = Arc::new(Schema::new(fields));
    let file = File::create(path).map_err(|e| err(e.to_string()))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(row_group_size.max(1)))
        .build();
    let mut writer = ArrowWriter::try_new(file, Arc::clone(&schema), Some(props))
        .map_err(|e| err(e.to_string()))?;
    let group = row_group_size.max(1);
    for (g, chunk) in rows.chunks(group).enumerate() {
        let bytes = BinaryArray::from_iter(chunk.iter().map(|r| r.0.as_deref()));
        let paths = StringArray::from_iter(chunk.iter().map(|r| r.1.as_deref()));
        let image = StructArray::new(
            image_fields.clone(),
            vec![Arc::new(bytes) as ArrayRef, Arc::new(paths) as ArrayRef],
            None,
        );
        let text = StringArray::from_iter(chunk.iter().map(|r| r.2.as_deref()));
        let mut columns = vec![Arc::new(image) as ArrayRef, Arc::new(text) as ArrayRef];
        let range = g * group..g * group + chunk.len();
        for (_, values) in extra {
            let col = StringArray::from_iter(values[range.clone()].iter().map(Option::as_deref));
            columns.push(Arc::new(col) as ArrayRef);
        }
        let batch =
            RecordBatch::try_new(Arc::clone(&schema), columns).map_err(|e| err(e.to_string()))?;
        writer.write(&batch).map_err(|e| err(e.to_string()))?;
        writer.flush().map_err(|e| err(e.to_string()))?;
    }
    writer.close().map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// Generate the dataset into `out` as `part-KKKKK-of-NNNNN.parquet` files; returns their paths.
pub fn generate(out: &Path, opts: &SynthOptions) -> Result<Vec<PathBuf>> {
    if opts.shards == 0 || opts.rows < opts.shards {
        return Err(DataError::Write {
            path: out.to_path_buf(),
            message: format!(
                "need at least one row per shard ({} rows, {} shards)",
                opts.rows, opts.shards
            ),
        });
    }
    if opts.image_size < 8 {
        return Err(DataError::Write {
            path: out.to_path_buf(),
            message: format!("--image-size must be at least 8, got {}", opts.image_size),
        });
    }
    std::fs::create_dir_all(out).map_err(|e| DataError::Write {
        path: out.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut paths = Vec::new();
    for k in 0..opts.shards {
        let (a, b) = (
            k * opts.rows / opts.shards,
            (k + 1) * opts.rows / opts.shards,
        );
        let mut rows = Vec::with_capacity(b - a);
        for i in a..b {
            let scene = Scene::generate(opts.seed, i as u64, opts.image_size);
            let bytes = encode(&scene.render(opts.image_size), opts.format)?;
            rows.push((Some(bytes), Some(scene.caption())));
        }
        let path = out.join(format!("part-{k:05}-of-{:05}.parquet", opts.shards));
        write_hf_parquet(&path, &rows, opts.row_group_size)?;
        paths.push(path);
    }
    Ok(paths)
}
