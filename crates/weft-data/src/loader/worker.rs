//! A decode worker: decode, crop, resize, normalize and tokenize a row; a bad row becomes a
//! skip reason.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use fast_image_resize::Resizer;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::catalog::{Catalog, RawRow};
use crate::image::{decode_rgb, ImageTransform};
use crate::plan::derive_seed;
use crate::text::TextEncoder;

use super::{Job, Msg, RowId, Sample, Skip};

pub(super) struct WorkerTask {
    pub(super) catalog: Arc<Catalog>,
    pub(super) transform: ImageTransform,
    pub(super) text: Option<Arc<TextEncoder>>,
    pub(super) seed: u64,
    pub(super) epoch: u64,
}

impl WorkerTask {
    pub(super) fn run(self, jobs: Receiver<Job>, done: Sender<Msg>) {
        let mut resizer = Resizer::new();
        for job in jobs {
            let file = self.catalog.unit_path(job.unit).to_path_buf();
            let key = job
                .raw
                .as_ref()
                .map(|r| r.key.clone())
                .unwrap_or_else(|| format!("row {} of unit {}", job.row, job.unit));
            let seq = job.seq;
            let result = match job.failed {
                Some(skip) => Err(skip),
                None => {
                    let raw = job.raw.expect("a job without failure has a row");
                    std::panic::catch_unwind(AssertUnwindSafe(|| {
                        self.process(raw, job.pad, &mut resizer)
                    }))
                    .unwrap_or_else(|_| {
                        Err(skip("decode_error", "the decoder panicked".to_string()))
                    })
                }
            };
            if done
                .send(Msg::Done {
                    seq,
                    key,
                    file,
                    result,
                })
                .is_err()
            {
                return;
            }
        }
    }

    fn process(
        &self,
        raw: RawRow,
        pad: bool,
        resizer: &mut Resizer,
    ) -> std::result::Result<Sample, Skip> {
        let row = classify(&raw)?;
        let (bytes, caption) = row;
        let img = decode_rgb(bytes).map_err(|e| skip("decode_error", e))?;
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(&[
            self.seed,
            self.epoch,
            raw.unit as u64,
            raw.row,
            3,
        ]));
        let mut image = Vec::with_capacity(self.transform.sample_len());
        self.transform
            .apply(&img, &mut rng, resizer, &mut image)
            .map_err(|e| skip("decode_error", e))?;
        let tokens = match &self.text {
            Some(t) => Some(
                t.encode(caption)
                    .map_err(|e| skip("tokenize_error", e.to_string()))?,
            ),
            None => None,
        };
        Ok(Sample {
            image,
            tokens,
            caption: caption.to_string(),
            key: raw.key.clone(),
            row: RowId {
                unit: raw.unit,
                row: raw.row,
            },
            pad,
        })
    }
}

fn skip(reason: &'static str, message: String) -> Skip {
    Skip {
        reason,
        counted: true,
        message,
    }
}

/// The checks that need no decoding: status, null image, a caption that is not UTF-8, an
/// empty caption. Returns the image
/// bytes and the caption of a row that passes.
fn classify(raw: &RawRow) -> std::result::Result<(&[u8], &str), Skip> {
    if !raw.status_ok {
        return Err(Skip {
            reason: "status",
            counted: false,
            message: "img2dataset status is not success".to_string(),
        });
    }
    let bytes = raw.image.as_deref().ok_or_else(|| {
        let message = match &raw.image_path {
            Some(p) => format!(
                "the image bytes are null and its path {p:?} is not read: {}",
                raw.image_unread.as_deref().unwrap_or("unknown")
            ),
            None => "the image is null".to_string(),
        };
        skip("null_image", message)
    })?;
    if bytes.is_empty() {
        return Err(skip("null_image", "the image is empty".to_string()));
    }
    if let Some(why) = &raw.bad_text {
        return Err(skip("bad_caption", why.clone()));
    }
    let caption = raw.text.as_deref().map(str::trim).unwrap_or("");
    if caption.is_empty() {
        return Err(skip(
            "empty_caption",
            "the caption is null or empty".to_string(),
        ));
    }
    Ok((bytes, caption))
}

/// The reason a raw row would be skipped before decoding, if any (`status`, `null_image`,
/// `bad_caption`, `empty_caption`), and whether it counts against `max_bad_fraction`.
pub fn precheck(raw: &RawRow) -> Option<(&'static str, bool)> {
    classify(raw).err().map(|s| (s.reason, s.counted))
}
