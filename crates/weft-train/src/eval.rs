//! Retrieval evaluation: Recall@K image-to-text and text-to-image from ITC embeddings.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::Serialize;
use weft_config::Config;
use weft_data::{DataCursor, Loader, Split};
use weft_model::objectives::ObjectiveBatch;
use weft_model::VlModel;

use crate::error::TrainError;

/// The K of Recall@K.
pub const RECALL_KS: [usize; 3] = [1, 5, 10];

/// Retrieval metrics over `n` image-caption pairs (pair i is image i with caption i).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Retrieval {
    /// Pairs.
    pub n: usize,
    /// Image-to-text Recall@1/5/10 in percent.
    pub i2t_r1: f64,
    /// Image-to-text Recall@5.
    pub i2t_r5: f64,
    /// Image-to-text Recall@10.
    pub i2t_r10: f64,
    /// Text-to-image Recall@1.
    pub t2i_r1: f64,
    /// Text-to-image Recall@5.
    pub t2i_r5: f64,
    /// Text-to-image Recall@10.
    pub t2i_r10: f64,
    /// Recall@1 of random ranking (`100 / n`).
    pub chance_r1: f64,
    /// Image-to-text mean rank of the true caption (1-based).
    #[serde(default)]
    pub i2t_mean_rank: f64,
    /// Image-to-text median rank (1-based).
    #[serde(default)]
    pub i2t_median_rank: f64,
    /// Text-to-image mean rank of the true image (1-based).
    #[serde(default)]
    pub t2i_mean_rank: f64,
    /// Text-to-image median rank (1-based).
    #[serde(default)]
    pub t2i_median_rank: f64,
}

pub use weft_eval::retrieval::{mean_rank, median_rank, ranks, recall_at};

/// The `[n, n]` image-to-text similarities of `[n, E]` embeddings (row-major).
pub fn similarities(image: &[f32], text: &[f32], n: usize, dim: usize) -> Vec<f32> {
    let mut i2t = vec![0f32; n * n];
    for i in 0..n {
        let a = &image[i * dim..(i + 1) * dim];
        for j in 0..n {
            let b = &text[j * dim..(j + 1) * dim];
            i2t[i * n + j] = a.iter().zip(b).map(|(x, y)| x * y).sum();
        }
    }
    i2t
}

fn transpose(m: &[f32], n: usize) -> Vec<f32> {
    let mut t = vec![0f32; n * n];
    for i in 0..n {
        for j in 0..n {
            t[j * n + i] = m[i * n + j];
        }
    }
    t
}

/// Recall@K both ways from `[n, E]` image and text embeddings (row-major, L2-normalised).
pub fn retrieval_from_embeddings(image: &[f32], text: &[f32], n: usize, dim: usize) -> Retrieval {
    let i2t = similarities(image, text, n, dim);
    let t2i = transpose(&i2t, n);
    retrieval_from_ranks(&ranks(&i2t, n), &ranks(&t2i, n))
}

/// Retrieval measures from the 0-based ranks of the true caption of each image (`ri`) and of
/// the true image of each caption (`rt`).
pub fn retrieval_from_ranks(ri: &[usize], rt: &[usize]) -> Retrieval {
    let n = ri.len();
    Retrieval {
        n,
        i2t_r1: recall_at(ri, 1),
        i2t_r5: recall_at(ri, 5),
        i2t_r10: recall_at(ri, 10),
        t2i_r1: recall_at(rt, 1),
        t2i_r5: recall_at(rt, 5),
        t2i_r10: recall_at(rt, 10),
        chance_r1: if n == 0 { 0.0 } else { 100.0 / n as f64 },
        i2t_mean_rank: mean_rank(ri),
        i2t_median_rank: median_rank(ri),
        t2i_mean_rank: mean_rank(rt),
        t2i_median_rank: median_rank(rt),
    }
}

/// Embed every row of `loader` (one pass, in order, padding dropped) and compute retrieval.
pub fn evaluate_retrieval<B: Backend>(
    model: &VlModel<B>,
    config: &Config,
    loader: &Loader,
    device: &B::Device,
) -> Result<Retrieval, TrainError> {
    Ok(evaluate_retrieval_rerank(model, config, loader, device, None)?.0)
}

/// Pairs fused at a time when re-ranking.
const RERANK_CHUNK: usize = 256;

/// [`evaluate_retrieval`], and with `rerank_k` also ALBEF's re-ranking: for each image the
/// `k` captions ranked best by ITC, and for each caption the `k` best images, are ranked again
/// by the ITM head's log-odds of "match" (the others keep their ITC order after them). The
/// second result is the re-ranked retrieval (None without `rerank_k` or an ITM head).
pub fn evaluate_retrieval_rerank<B: Backend>(
    model: &VlModel<B>,
    config: &Config,
    loader: &Loader,
    device: &B::Device,
    rerank_k: Option<usize>,
) -> Result<(Retrieval, Option<Retrieval>), TrainError> {
    if !model.has_embeddings() {
        return Err(TrainError::NoEmbeddings);
    }
    let rerank_k = rerank_k.filter(|&k| k > 0 && model.has_itm());
    let options = weft_data::plan_options(config, Split::Val, 1);
    let cursor = DataCursor::new(loader.catalog(), options, 0);
    let mut image = Vec::new();
    let mut text = Vec::new();
    let mut dim = 0;
    // For re-ranking: every image's and caption's tokens, and the captions' padding.
    let (mut image_tokens, mut text_tokens, mut paddings) = (Vec::new(), Vec::new(), Vec::new());
    for batch in loader.stream(&cursor, 0)? {
        let batch = batch?;
        let real: Vec<usize> = (0..batch.len()).filter(|&i| !batch.is_pad[i]).collect();
        if real.is_empty() {
            continue;
        }
        let ob = objective_batch::<B>(&batch, device)?;
        let padding = Some(ob.padding_tensor());
        let img = model
            .image_embedding(ob.images.clone())
            .ok_or(TrainError::NoEmbeddings)?;
        let txt = model
            .text_embedding(ob.ids_tensor(), padding.clone())
            .ok_or(TrainError::NoEmbeddings)?;
        dim = img.dims()[1];
        let img: Vec<f32> = to_vec(img);
        let txt: Vec<f32> = to_vec(txt);
        for &i in &real {
            image.extend_from_slice(&img[i * dim..(i + 1) * dim]);
            text.extend_from_slice(&txt[i * dim..(i + 1) * dim]);
        }
        if rerank_k.is_some() {
            let keep = weft_kernels::reference::index_tensor::<B>(&real, device);
            image_tokens.push(
                model
                    .image_tokens(ob.images.clone())
                    .select(0, keep.clone()),
            );
            let tokens = model
                .text_tokens(ob.ids_tensor(), padding.clone())
                .ok_or(TrainError::NoEmbeddings)?;
            text_tokens.push(tokens.select(0, keep.clone()));
            let l = ob.len;
            let pad: Vec<bool> = real
                .iter()
                .flat_map(|&i| {
                    ob.attention_mask[i * l..(i + 1) * l]
                        .iter()
                        .map(|&m| m == 0)
                })
                .collect();
            paddings.push(Tensor::<B, 2, burn::tensor::Bool>::from_data(
                TensorData::new(pad, [real.len(), l]),
                device,
            ));
        }
    }
    let n = image.len().checked_div(dim).unwrap_or(0);
    let itc = retrieval_from_embeddings(&image, &text, n, dim);
    let Some(k) = rerank_k.filter(|_| n > 0) else {
        return Ok((itc, None));
    };
    let image_tokens = Tensor::cat(image_tokens, 0);
    let text_tokens = Tensor::cat(text_tokens, 0);
    let padding = Tensor::cat(paddings, 0);
    let i2t = similarities(&image, &text, n, dim);
    let t2i = transpose(&i2t, n);
    // For each query row of a similarity matrix: its top k by ITC, re-scored by ITM.
    let rerank = |sim: &[f32], query_is_image: bool| -> Vec<usize> {
        let k = k.min(n);
        let mut out = Vec::with_capacity(n);
        let mut pairs: Vec<(usize, usize)> = Vec::new(); // (query, candidate)
        for q in 0..n {
            for c in weft_eval::retrieval::top_k(&sim[q * n..(q + 1) * n], k) {
                pairs.push((q, c));
            }
        }
        let mut scores = Vec::with_capacity(pairs.len());
        for chunk in pairs.chunks(RERANK_CHUNK) {
            let (texts, images): (Vec<usize>, Vec<usize>) = chunk
                .iter()
                .map(|&(q, c)| if query_is_image { (c, q) } else { (q, c) })
                .unzip();
            let s = model
                .itm_scores(
                    image_tokens.clone(),
                    text_tokens.clone(),
                    padding.clone(),
                    &texts,
                    &images,
                )
                .expect("re-ranking needs ITM");
            scores.extend(to_vec(s));
        }
        let itc_ranks = ranks(sim, n);
        for q in 0..n {
            let cands = &pairs[q * k..(q + 1) * k];
            let s = &scores[q * k..(q + 1) * k];
            // The true item's place among the top k by ITM, else its ITC rank.
            out.push(match cands.iter().position(|&(_, c)| c == q) {
                Some(p) => s
                    .iter()
                    .enumerate()
                    .filter(|&(j, &x)| x > s[p] || (x == s[p] && j < p))
                    .count(),
                None => itc_ranks[q],
            });
        }
        out
    };
    let ri = rerank(&i2t, true);
    let rt = rerank(&t2i, false);
    Ok((itc, Some(retrieval_from_ranks(&ri, &rt))))
}

/// What zero-shot classification reports: the accuracy, and what it was asked with.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ZeroShot {
    /// Top-1/top-5 accuracy, chance and the per-class table.
    #[serde(flatten)]
    pub accuracy: weft_eval::classify::Accuracy,
    /// The prompt templates (`{}` is the class name); their text embeddings are averaged.
    pub prompts: Vec<String>,
    /// Rows left out because their label was null or not a known class.
    pub unlabelled: usize,
}

/// The L2-normalised mean over `prompts` of the text embeddings of each class (CLIP's
/// zero-shot classifier): `[classes, E]`, row-major.
pub fn class_embeddings<B: Backend>(
    model: &VlModel<B>,
    text: &weft_data::TextEncoder,
    classes: &[String],
    prompts: &[String],
    device: &B::Device,
) -> Result<Vec<f32>, TrainError> {
    let l = text.context_length();
    let mut out = Vec::new();
    for class in classes {
        let mut ids = Vec::new();
        let mut mask = Vec::new();
        for p in prompts {
            let t = text.encode(&p.replace("{}", class))?;
            ids.extend(t.ids.iter().map(|&i| i as i64));
            mask.extend(t.attention_mask.iter().map(|&m| m == 0));
        }
        let n = prompts.len();
        let ids =
            Tensor::<B, 2, burn::tensor::Int>::from_data(TensorData::new(ids, [n, l]), device);
        let pad =
            Tensor::<B, 2, burn::tensor::Bool>::from_data(TensorData::new(mask, [n, l]), device);
        let e = model
            .text_embedding(ids, Some(pad))
            .ok_or(TrainError::NoEmbeddings)?;
        let e = to_vec(e);
        let dim = e.len() / n;
        let mut mean = vec![0f32; dim];
        for row in e.chunks(dim) {
            mean.iter_mut()
                .zip(row)
                .for_each(|(m, x)| *m += x / n as f32);
        }
        let norm = mean.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        out.extend(mean.iter().map(|x| x / norm));
    }
    Ok(out)
}

/// Zero-shot classification of every row of `loader` (one pass, in order): each image's
/// class is the one whose [`class_embeddings`] is most similar to its embedding. `labels`
/// holds the true class names; `classes` (default: the sorted distinct labels) the ones to
/// choose from.
pub fn evaluate_zero_shot<B: Backend>(
    model: &VlModel<B>,
    config: &Config,
    loader: &Loader,
    labels: &weft_data::labels::Labels,
    classes: Option<Vec<String>>,
    prompts: &[String],
    device: &B::Device,
) -> Result<ZeroShot, TrainError> {
    if !model.has_embeddings() {
        return Err(TrainError::NoEmbeddings);
    }
    let text = loader.text().ok_or(TrainError::NoTokenizer)?;
    let options = weft_data::plan_options(config, Split::Val, 1);
    let cursor = DataCursor::new(loader.catalog(), options, 0);
    let mut image = Vec::new();
    let mut truth: Vec<String> = Vec::new();
    let mut unlabelled = 0;
    let mut dim = 0;
    for batch in loader.stream(&cursor, 0)? {
        let batch = batch?;
        let real: Vec<usize> = (0..batch.len()).filter(|&i| !batch.is_pad[i]).collect();
        if real.is_empty() {
            continue;
        }
        let ob = objective_batch::<B>(&batch, device)?;
        let img = model
            .image_embedding(ob.images)
            .ok_or(TrainError::NoEmbeddings)?;
        dim = img.dims()[1];
        let img = to_vec(img);
        for &i in &real {
            match labels.get(batch.rows[i]) {
                Some(label) => {
                    image.extend_from_slice(&img[i * dim..(i + 1) * dim]);
                    truth.push(label.to_string());
                }
                None => unlabelled += 1,
            }
        }
    }
    let classes = classes.unwrap_or_else(|| {
        let mut c: Vec<String> = truth.clone();
        c.sort();
        c.dedup();
        c
    });
    let index: std::collections::HashMap<&str, usize> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let class_emb = class_embeddings(model, text, &classes, prompts, device)?;
    let mut scores = Vec::new();
    let mut targets = Vec::new();
    for (row, label) in image.chunks(dim.max(1)).zip(&truth) {
        let Some(&t) = index.get(label.as_str()) else {
            unlabelled += 1;
            continue;
        };
        targets.push(t);
        for c in class_emb.chunks(dim.max(1)) {
            scores.push(row.iter().zip(c).map(|(a, b)| a * b).sum::<f32>());
        }
    }
    Ok(ZeroShot {
        accuracy: weft_eval::classify::accuracy(&scores, &targets, &classes),
        prompts: prompts.to_vec(),
        unlabelled,
    })
}

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
    let options = weft_data::plan_options(config, Split::Val, 1);
    let cursor = DataCursor::new(loader.catalog(), options, 0);
    let mut order: Vec<String> = Vec::new();
    let mut refs: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut greedy: std::collections::HashMap<String, String> = Default::default();
    let mut beam: std::collections::HashMap<String, String> = Default::default();
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
    for batch in loader.stream(&cursor, 0)? {
        let batch = batch?;
        let mut new = Vec::new();
        for i in (0..batch.len()).filter(|&i| !batch.is_pad[i]) {
            let key = batch.keys[i].clone();
            if !refs.contains_key(&key) {
                new.push(i);
                order.push(key.clone());
            }
            refs.entry(key).or_default().push(batch.captions[i].clone());
        }
        if new.is_empty() {
            continue;
        }
        let images = objective_batch::<B>(&batch, device)?.images;
        let images = images.select(0, weft_kernels::reference::index_tensor::<B>(&new, device));
        for (&i, c) in new.iter().zip(decode(images.clone(), 1)?) {
            greedy.insert(batch.keys[i].clone(), c);
        }
        if beams > 1 {
            for (&i, c) in new.iter().zip(decode(images, beams)?) {
                beam.insert(batch.keys[i].clone(), c);
            }
        }
    }
    let references: Vec<Vec<String>> = order.iter().map(|k| refs[k].clone()).collect();
    let of = |m: &std::collections::HashMap<String, String>| -> Vec<String> {
        order.iter().map(|k| m[k].clone()).collect()
    };
    let greedy_captions = of(&greedy);
    let beam_captions = (beams > 1).then(|| of(&beam));
    Ok(Captioning {
        images: order.len(),
        greedy: weft_eval::caption::score_captions(&greedy_captions, &references),
        beam: beam_captions
            .as_ref()
            .map(|c| weft_eval::caption::score_captions(c, &references)),
        beams,
        max_len,
        examples: order
            .iter()
            .enumerate()
            .take(CAPTION_EXAMPLES)
            .map(|(j, k)| CaptionExample {
                key: k.clone(),
                greedy: greedy_captions[j].clone(),
                beam: beam_captions.as_ref().map(|c| c[j].clone()),
                references: references[j].clone(),
            })
            .collect(),
    })
}

pub(crate) fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32 tensor data")
}

/// A data batch as the model sees it (images on `device`, token ids on the host), every row
/// included (padding rows too: evaluation drops them by index).
pub fn objective_batch<B: Backend>(
    batch: &weft_data::Batch,
    device: &B::Device,
) -> Result<ObjectiveBatch<B>, TrainError> {
    let keep: Vec<usize> = (0..batch.len()).collect();
    rows_batch(batch, &keep, device)
}

/// Like [`objective_batch`] without the rows flagged `is_pad` (repeats that fill the last
/// batches): training must not see a pair twice in one batch, ITC would count the copy as a
/// negative. None when every row is padding.
pub fn training_batch<B: Backend>(
    batch: &weft_data::Batch,
    device: &B::Device,
) -> Result<Option<ObjectiveBatch<B>>, TrainError> {
    training_rows(batch, false, device)
}

/// The rows of `batch` that train: its real rows, or with `keep_pads` every row (a rank of a
/// data-parallel job trains on its padding rows too, as torch's `DistributedSampler` does, so
/// that every rank's batch has the same size); `None` when there are none.
pub fn training_rows<B: Backend>(
    batch: &weft_data::Batch,
    keep_pads: bool,
    device: &B::Device,
) -> Result<Option<ObjectiveBatch<B>>, TrainError> {
    let keep: Vec<usize> = (0..batch.len())
        .filter(|&i| keep_pads || !batch.is_pad[i])
        .collect();
    if keep.is_empty() {
        return Ok(None);
    }
    rows_batch(batch, &keep, device).map(Some)
}

fn rows_batch<B: Backend>(
    batch: &weft_data::Batch,
    keep: &[usize],
    device: &B::Device,
) -> Result<ObjectiveBatch<B>, TrainError> {
    let tokens = batch.tokens.as_ref().ok_or(TrainError::NoTokenizer)?;
    let s = batch.image_size;
    let l = tokens.context_length;
    let pixels = 3 * s * s;
    let (images, ids, mask) = if keep.len() == batch.len() {
        (
            batch.images.clone(),
            tokens.input_ids.clone(),
            tokens.attention_mask.clone(),
        )
    } else {
        let mut images = Vec::with_capacity(keep.len() * pixels);
        let mut ids = Vec::with_capacity(keep.len() * l);
        let mut mask = Vec::with_capacity(keep.len() * l);
        for &i in keep {
            images.extend_from_slice(&batch.images[i * pixels..(i + 1) * pixels]);
            ids.extend_from_slice(&tokens.input_ids[i * l..(i + 1) * l]);
            mask.extend_from_slice(&tokens.attention_mask[i * l..(i + 1) * l]);
        }
        (images, ids, mask)
    };
    let images = Tensor::<B, 4>::from_data(TensorData::new(images, [keep.len(), 3, s, s]), device);
    Ok(ObjectiveBatch {
        images,
        ids,
        attention_mask: mask,
        len: l,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retrieval_of_identical_embeddings_is_perfect() {
        let e = [1.0, 0.0, 0.0, 1.0, 0.6, 0.8];
        let r = retrieval_from_embeddings(&e, &e, 3, 2);
        assert_eq!(r.i2t_r1, 100.0);
        assert_eq!(r.t2i_r1, 100.0);
        assert_eq!((r.i2t_mean_rank, r.t2i_median_rank), (1.0, 1.0));
    }
}
