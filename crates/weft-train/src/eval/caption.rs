//! Captioning: greedy and beam-search captions of every distinct image, scored with BLEU,
//! ROUGE-L and CIDEr-D against the captions of the rows that share its key.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::Serialize;
use weft_collective::Collective;
use weft_config::Config;
use weft_data::Loader;
use weft_model::VlModel;

use super::shard::{eval_batches, gather_strings};
use crate::batch::objective_batch;
use crate::error::TrainError;

/// Captioning on a validation set: greedy and beam-search captions scored against the
/// reference captions (every caption of the rows that share an image's key).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Captioning {
    /// Images captioned.
    pub images: usize,
    /// Greedy decoding's scores.
    pub greedy: weft_eval::caption::CaptionScores,
    /// Beam search's, when `beams > 1`.
    pub beam: Option<weft_eval::caption::CaptionScores>,
    /// Beams of the beam search.
    pub beams: usize,
    /// Token limit of a caption.
    pub max_len: usize,
    /// The first few images' captions.
    pub examples: Vec<CaptionExample>,
}

/// One image's generated and reference captions.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct CaptionExample {
    /// The image's key.
    pub key: String,
    /// Greedy caption.
    pub greedy: String,
    /// Beam-search caption.
    pub beam: Option<String>,
    /// Reference captions.
    pub references: Vec<String>,
}

/// Examples kept in [`Captioning::examples`].
const CAPTION_EXAMPLES: usize = 5;

/// Caption every distinct image (by key) of `loader` greedily and, with `beams > 1`, by beam
/// search, and score both with BLEU-1..4, ROUGE-L and CIDEr-D ([`weft_eval::caption`]).
pub fn evaluate_captioning<B: Backend>(
    model: &VlModel<B>,
    config: &Config,
    loader: &Loader,
    beams: usize,
    max_len: usize,
    device: &B::Device,
    collective: &mut dyn Collective,
) -> Result<Captioning, TrainError> {
    if model.decoder.is_none() {
        return Err(TrainError::NoDecoder);
    }
    let text = loader.text().ok_or(TrainError::NoTokenizer)?;
    let token = |t: &'static str| {
        text.token_id(t).ok_or_else(|| TrainError::MissingToken {
            objective: "captioning",
            token: t,
            path: config.data.tokenizer.clone().unwrap_or_default(),
        })
    };
    let (bos, eos) = (token("[BOS]")?, token("[SEP]")?);
    let decode = |images: Tensor<B, 4>, beams: usize| -> Result<Vec<String>, TrainError> {
        let opts = weft_model::DecodeOptions {
            bos,
            eos,
            max_len,
            beams,
            length_penalty: 1.0,
        };
        let ids = model.generate(images, &opts).ok_or(TrainError::NoDecoder)?;
        ids.iter().map(|t| Ok(text.decode(t)?)).collect()
    };
    // This rank's rows: id, key, caption, and the generated captions of each key's first row
    // here (empty for the others). A key's first row overall is its first row on its rank, so
    // after the gather every key has its captions from the same row as on one rank.
    let mut seen = std::collections::HashSet::new();
    let (mut ids, mut keys, mut captions) = (Vec::new(), Vec::new(), Vec::new());
    let (mut greedy, mut beam) = (Vec::new(), Vec::new());
    for batch in eval_batches(config, loader, collective)? {
        let batch = batch?;
        let mut new = Vec::new();
        for i in (0..batch.len()).filter(|&i| !batch.is_pad[i]) {
            if seen.insert(batch.keys[i].clone()) {
                new.push(i);
            }
        }
        let mut generated = std::collections::HashMap::new();
        if !new.is_empty() {
            let images = objective_batch::<B>(&batch, device)?.images;
            let images = images.select(0, weft_kernels::index_tensor::<B>(&new, device));
            let g = decode(images.clone(), 1)?;
            let b = if beams > 1 {
                decode(images, beams)?
            } else {
                vec![String::new(); new.len()]
            };
            for ((&i, g), b) in new.iter().zip(g).zip(b) {
                generated.insert(i, (g, b));
            }
        }
        for i in (0..batch.len()).filter(|&i| !batch.is_pad[i]) {
            ids.push(batch.rows[i]);
            keys.push(batch.keys[i].clone());
            captions.push(batch.captions[i].clone());
            let (g, b) = generated.remove(&i).unwrap_or_default();
            greedy.push(g);
            beam.push(b);
        }
    }
    let (_, keys) = gather_strings(collective, &ids, &keys)?;
    let (_, captions) = gather_strings(collective, &ids, &captions)?;
    let (_, greedy) = gather_strings(collective, &ids, &greedy)?;
    let beam = if beams > 1 {
        Some(gather_strings(collective, &ids, &beam)?.1)
    } else {
        None
    };
    // Each image (distinct key, in row order): its first row, which was captioned, and the
    // captions of all its rows.
    let mut slot: std::collections::HashMap<&str, usize> = Default::default();
    let mut images: Vec<(usize, Vec<String>)> = Vec::new();
    for (j, key) in keys.iter().enumerate() {
        let at = *slot.entry(key).or_insert_with(|| {
            images.push((j, Vec::new()));
            images.len() - 1
        });
        images[at].1.push(captions[j].clone());
    }
    let references: Vec<Vec<String>> = images.iter().map(|(_, r)| r.clone()).collect();
    let of =
        |all: &[String]| -> Vec<String> { images.iter().map(|&(j, _)| all[j].clone()).collect() };
    let greedy_captions = of(&greedy);
    let beam_captions = beam.as_deref().map(of);
    Ok(Captioning {
        images: images.len(),
        greedy: weft_eval::caption::score_captions(&greedy_captions, &references),
        beam: beam_captions
            .as_ref()
            .map(|c| weft_eval::caption::score_captions(c, &references)),
        beams,
        max_len,
        examples: images
            .iter()
            .enumerate()
            .take(CAPTION_EXAMPLES)
            .map(|(j, &(row, _))| CaptionExample {
                key: keys[row].clone(),
                greedy: greedy_captions[j].clone(),
                beam: beam_captions.as_ref().map(|c| c[j].clone()),
                references: references[j].clone(),
            })
            .collect(),
    })
}
