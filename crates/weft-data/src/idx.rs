//! IDX files (the format of MNIST and Fashion-MNIST, gzipped or plain) to Parquet in the
//! Hugging Face layout with a `label` column: a labelled image set for zero-shot
//! classification (`weft data import-idx`). Debian's `dataset-fashion-mnist` package installs
//! Fashion-MNIST in `/usr/share/datasets/fashion-mnist`.

use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::synth::{write_hf_parquet_with_columns, HfRow};

/// Fashion-MNIST's classes, by label (Xiao, Rasul and Vollgraf, 2017).
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// MNIST's classes, by label.
pub const MNIST_CLASSES: [&str; 10] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
];

/// The caption templates of imported rows (row `i` takes template `i mod 4`): the training
/// split's captions, so that a model trained on them can then be asked with other prompts.
pub const CAPTION_TEMPLATES: [&str; 4] = [
    "a photo of a {}.",
    "a picture of the {}.",
    "an image showing a {}.",
    "a {} on a dark background.",
];

/// Greyscale images of an IDX file.
#[derive(Debug, Clone, PartialEq)]
pub struct IdxImages {
    /// Height.
    pub rows: usize,
    /// Width.
    pub cols: usize,
    /// `n · rows · cols` bytes, image after image.
    pub pixels: Vec<u8>,
}

impl IdxImages {
    /// Images.
    pub fn len(&self) -> usize {
        self.pixels.len() / (self.rows * self.cols).max(1)
    }

    /// No image.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn bad(path: &Path, message: String) -> DataError {
    DataError::Write {
        path: path.to_path_buf(),
        message,
    }
}

/// The bytes of `path`, gunzipped when they start with gzip's magic.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(Cursor::new(raw))
            .read_to_end(&mut out)
            .map_err(|e| bad(path, format!("not a valid gzip file: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// The header of an IDX file of unsigned bytes with `dims` dimensions: their sizes, and the
/// data after the header.
fn idx_body<'a>(path: &Path, bytes: &'a [u8], dims: usize) -> Result<(Vec<usize>, &'a [u8])> {
    let magic = 0x0800 | dims as u32;
    let word = |i: usize| -> Option<u32> {
        bytes
            .get(4 * i..4 * i + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    match word(0) {
        Some(m) if m == magic => {}
        Some(m) => {
            return Err(bad(
                path,
                format!("not an IDX file of {dims}-dimensional unsigned bytes: magic {m:#010x}, expected {magic:#010x}"),
            ))
        }
        None => return Err(bad(path, "too short for an IDX header".into())),
    }
    let sizes: Vec<usize> = (1..=dims)
        .map(|i| word(i).map(|w| w as usize))
        .collect::<Option<_>>()
        .ok_or_else(|| bad(path, "too short for an IDX header".into()))?;
    let body = &bytes[4 * (dims + 1)..];
    let want: usize = sizes.iter().product();
    if body.len() != want {
        return Err(bad(
            path,
            format!(
                "the header says {sizes:?} ({want} bytes) but {} follow",
                body.len()
            ),
        ));
    }
    Ok((sizes, body))
}

/// Read an IDX image file (`…-images-idx3-ubyte[.gz]`).
pub fn read_idx_images(path: &Path) -> Result<IdxImages> {
    let bytes = read_maybe_gz(path)?;
    let (sizes, body) = idx_body(path, &bytes, 3)?;
    Ok(IdxImages {
        rows: sizes[1],
        cols: sizes[2],
        pixels: body.to_vec(),
    })
}

/// Read an IDX label file (`…-labels-idx1-ubyte[.gz]`).
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>> {
    let bytes = read_maybe_gz(path)?;
    Ok(idx_body(path, &bytes, 1)?.1.to_vec())
}

/// What to import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The image file.
    pub images: PathBuf,
    /// The label file.
    pub labels: PathBuf,
    /// Class names by label.
    pub classes: Vec<String>,
    /// Import the first `limit` images only.
    pub limit: Option<usize>,
    /// Rows per row group.
    pub row_group_size: usize,
}

/// Write the images as PNGs into `out` (a Parquet file) with captions from
/// [`CAPTION_TEMPLATES`] and the class name in a `label` column; returns the rows written.
pub fn import(opts: &ImportOptions, out: &Path) -> Result<usize> {
    let images = read_idx_images(&opts.images)?;
    let labels = read_idx_labels(&opts.labels)?;
    if images.len() != labels.len() {
        return Err(bad(
            &opts.labels,
            format!(
                "{} labels for {} images in {}",
                labels.len(),
                images.len(),
                opts.images.display()
            ),
        ));
    }
    let n = opts.limit.map_or(images.len(), |l| l.min(images.len()));
    let size = images.rows * images.cols;
    let mut rows: Vec<HfRow> = Vec::with_capacity(n);
    let mut names = Vec::with_capacity(n);
    for i in 0..n {
        let label = labels[i] as usize;
        let class = opts.classes.get(label).ok_or_else(|| {
            bad(
                &opts.labels,
                format!(
                    "label {label} of image {i} has no class name ({} given)",
                    opts.classes.len()
                ),
            )
        })?;
        let pixels = images.pixels[i * size..(i + 1) * size].to_vec();
        let grey = image::GrayImage::from_raw(images.cols as u32, images.rows as u32, pixels)
            .expect("one image's pixels");
        let mut png = Vec::new();
        grey.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(|e| bad(out, format!("encoding image {i}: {e}")))?;
        let caption =
            CAPTION_TEMPLATES[i % CAPTION_TEMPLATES.len()].replace("{}", &class.to_lowercase());
        rows.push((Some(png), None, Some(caption)));
        names.push(Some(class.clone()));
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| DataError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    write_hf_parquet_with_columns(out, &rows, &[("label", names)], opts.row_group_size)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(magic: u32, sizes: &[u32], body: &[u8]) -> Vec<u8> {
        let mut v = magic.to_be_bytes().to_vec();
        for s in sizes {
            v.extend(s.to_be_bytes());
        }
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn idx_files_read_plain_and_gzipped_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        std::fs::write(
            &img,
            idx(0x803, &[2, 2, 3], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]),
        )
        .unwrap();
        let images = read_idx_images(&img).unwrap();
        assert_eq!((images.len(), images.rows, images.cols), (2, 2, 3));
        let lab = dir.path().join("lab.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &idx(0x801, &[2], &[7, 1])).unwrap();
        std::fs::write(&lab, gz.finish().unwrap()).unwrap();
        assert_eq!(read_idx_labels(&lab).unwrap(), [7, 1]);
        let e = read_idx_labels(&img).unwrap_err().to_string();
        assert!(e.contains("magic 0x00000803, expected 0x00000801"), "{e}");
        let short = dir.path().join("short");
        std::fs::write(&short, idx(0x801, &[3], &[1])).unwrap();
        let e = read_idx_labels(&short).unwrap_err().to_string();
        assert!(
            e.contains("the header says [3] (3 bytes) but 1 follow"),
            "{e}"
        );
    }
}
