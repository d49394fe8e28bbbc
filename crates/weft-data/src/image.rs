//! Image decoding and the crop / resize / flip / normalize transforms.
//!
//! JPEG, PNG and WebP are decoded with the `image` crate; grey, palette and RGBA images become
//! RGB (alpha is dropped, as PIL's `convert("RGB")` does). The crop box is chosen on the decoded
//! image and resized straight to the output size with `fast_image_resize` (SIMD, Catmull-Rom,
//! which is PIL's bicubic), so only the pixels that end up in the sample are resampled:
//! - eval: the centred square of side `min(w, h)`, i.e. "resize the shorter side, center crop";
//! - train: torchvision's `RandomResizedCrop(scale, ratio)` box, then an optional flip.
//!
//! The output is CHW `f32`, `(x / 255 - mean) / std` per channel.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use rand::Rng;

/// Decode JPEG, PNG or WebP bytes into an RGB image.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage, String> {
    let img = image::load_from_memory(bytes).map_err(|e| e.to_string())?;
    Ok(match img {
        image::DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    })
}

/// Width and height from the image header, without decoding the pixels.
pub fn header_dimensions(bytes: &[u8]) -> Result<(u32, u32), String> {
    image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .into_dimensions()
        .map_err(|e| e.to_string())
}

/// Training augmentation parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainAugment {
    /// Area fraction range of the random-resized crop.
    pub scale: [f64; 2],
    /// Aspect ratio range of the random-resized crop.
    pub ratio: [f64; 2],
    /// Flip horizontally with probability 0.5.
    pub hflip: bool,
}

/// How a decoded image becomes a normalized square sample.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageTransform {
    /// Output side in pixels.
    pub size: u32,
    /// Per-channel mean (on the [0, 1] scale).
    pub mean: [f32; 3],
    /// Per-channel standard deviation.
    pub std: [f32; 3],
    /// `Some` for training (random-resized crop), `None` for evaluation (center crop).
    pub train: Option<TrainAugment>,
}

/// A crop box in source pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropBox {
    /// Left edge.
    pub left: f64,
    /// Top edge.
    pub top: f64,
    /// Width.
    pub width: f64,
    /// Height.
    pub height: f64,
}

impl ImageTransform {
    /// Values per output sample (`3 · size · size`).
    pub fn sample_len(&self) -> usize {
        3 * self.size as usize * self.size as usize
    }

    /// The crop box and flip for an image of `w × h`.
    pub fn choose(&self, w: u32, h: u32, rng: &mut impl Rng) -> (CropBox, bool) {
        match &self.train {
            None => (center_square(w, h), false),
            Some(aug) => {
                let crop = random_resized_crop(w, h, aug.scale, aug.ratio, rng);
                let flip = aug.hflip && rng.random_bool(0.5);
                (crop, flip)
            }
        }
    }

    /// Crop, resize, flip and normalize `img` into `out` (appends `sample_len()` values).
    pub fn apply(
        &self,
        img: &RgbImage,
        rng: &mut impl Rng,
        resizer: &mut Resizer,
        out: &mut Vec<f32>,
    ) -> Result<(), String> {
        let (w, h) = img.dimensions();
        let (crop, flip) = self.choose(w, h, rng);
        let src = ImageRef::new(w, h, img.as_raw(), PixelType::U8x3).map_err(|e| e.to_string())?;
        let mut dst = Image::new(self.size, self.size, PixelType::U8x3);
        let options = ResizeOptions::new()
            .resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom))
            .crop(crop.left, crop.top, crop.width, crop.height);
        resizer
            .resize(&src, &mut dst, &options)
            .map_err(|e| e.to_string())?;
        normalize_chw(
            dst.buffer(),
            self.size as usize,
            flip,
            self.mean,
            self.std,
            out,
        );
        Ok(())
    }
}

/// HWC `u8` RGB to CHW `f32`, `(x / 255 - mean) / std`, optionally mirrored.
pub fn normalize_chw(
    hwc: &[u8],
    size: usize,
    flip: bool,
    mean: [f32; 3],
    std: [f32; 3],
    out: &mut Vec<f32>,
) {
    let plane = size * size;
    let start = out.len();
    out.resize(start + 3 * plane, 0.0);
    let dst = &mut out[start..];
    // One lookup table per channel: 256 entries instead of a divide per value.
    let luts: [[f32; 256]; 3] =
        std::array::from_fn(|c| std::array::from_fn(|v| (v as f32 / 255.0 - mean[c]) / std[c]));
    for y in 0..size {
        let row = &hwc[y * size * 3..(y + 1) * size * 3];
        for x in 0..size {
            let sx = if flip { size - 1 - x } else { x };
            let px = &row[sx * 3..sx * 3 + 3];
            let o = y * size + x;
            dst[o] = luts[0][px[0] as usize];
            dst[plane + o] = luts[1][px[1] as usize];
            dst[2 * plane + o] = luts[2][px[2] as usize];
        }
    }
}

fn center_square(w: u32, h: u32) -> CropBox {
    let side = w.min(h) as f64;
    CropBox {
        left: (w as f64 - side) / 2.0,
        top: (h as f64 - side) / 2.0,
        width: side,
        height: side,
    }
}

/// torchvision's `RandomResizedCrop.get_params`: ten tries at a box of random area and aspect,
/// then a centre crop clamped to the ratio range.
fn random_resized_crop(
    w: u32,
    h: u32,
    scale: [f64; 2],
    ratio: [f64; 2],
    rng: &mut impl Rng,
) -> CropBox {
    let (wf, hf) = (w as f64, h as f64);
    let area = wf * hf;
    let (log_r0, log_r1) = (ratio[0].ln(), ratio[1].ln());
    for _ in 0..10 {
        let target = area * uniform(rng, scale[0], scale[1]);
        let aspect = uniform(rng, log_r0, log_r1).exp();
        let cw = (target * aspect).sqrt().round();
        let ch = (target / aspect).sqrt().round();
        if cw > 0.0 && ch > 0.0 && cw <= wf && ch <= hf {
            let top = rng.random_range(0..=(h - ch as u32)) as f64;
            let left = rng.random_range(0..=(w - cw as u32)) as f64;
            return CropBox {
                left,
                top,
                width: cw,
                height: ch,
            };
        }
    }
    let in_ratio = wf / hf;
    let (cw, ch) = if in_ratio < ratio[0] {
        (wf, (wf / ratio[0]).round())
    } else if in_ratio > ratio[1] {
        ((hf * ratio[1]).round(), hf)
    } else {
        (wf, hf)
    };
    CropBox {
        left: ((wf - cw) / 2.0).floor(),
        top: ((hf - ch) / 2.0).floor(),
        width: cw,
        height: ch,
    }
}

fn uniform(rng: &mut impl Rng, a: f64, b: f64) -> f64 {
    if a >= b {
        a
    } else {
        rng.random_range(a..b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn crop_boxes_stay_inside() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for (w, h) in [(10, 10), (640, 480), (3, 900), (1, 1)] {
            for _ in 0..200 {
                let c = random_resized_crop(w, h, [0.08, 1.0], [0.75, 4.0 / 3.0], &mut rng);
                assert!(c.left >= 0.0 && c.top >= 0.0 && c.width >= 1.0 && c.height >= 1.0);
                assert!(c.left + c.width <= w as f64 && c.top + c.height <= h as f64);
            }
        }
        assert_eq!(
            center_square(640, 480),
            CropBox {
                left: 80.0,
                top: 0.0,
                width: 480.0,
                height: 480.0
            }
        );
    }

    #[test]
    fn normalize_and_flip() {
        // 2x2 image: left column red, right column blue.
        let hwc = [255, 0, 0, 0, 0, 255, 255, 0, 0, 0, 0, 255];
        let mut out = Vec::new();
        normalize_chw(&hwc, 2, false, [0.0; 3], [1.0; 3], &mut out);
        assert_eq!(out, vec![1., 0., 1., 0., 0., 0., 0., 0., 0., 1., 0., 1.]);
        out.clear();
        normalize_chw(&hwc, 2, true, [0.5; 3], [0.5; 3], &mut out);
        assert_eq!(
            out,
            vec![-1., 1., -1., 1., -1., -1., -1., -1., 1., -1., 1., -1.]
        );
    }
}
