//! Evaluation of a model on a validation set: retrieval Recall@K and ranks both ways (with
//! ALBEF's ITM re-ranking), zero-shot classification, captioning.
//!
//! Every evaluation runs sharded across the ranks of a job: each rank embeds (or captions) its
//! share of the rows ([`eval_batches`]), [`gather_rows`] / [`gather_strings`] bring every
//! rank's results together in the order of their [`RowId`]s, and every rank computes the same
//! numbers from them, as one rank alone does (it goes through the same gather). ITM
//! re-ranking, which needs every row's tokens, embeds all rows on every rank and shares out
//! the re-scoring of the queries (as ALBEF does).

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::Serialize;
use weft_collective::{Collective, ReduceOp, SingleRank};
use weft_config::Config;
use weft_data::{BatchStream, DataCursor, Loader, RowId, Split};
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
    Ok(evaluate_retrieval_rerank(model, config, loader, device, None, &mut SingleRank)?.0)
}

/// This rank's share of `loader`'s rows for an evaluation over the ranks of `collective`: the
/// validation plan (no shuffle, the last batch padded) cut for that many ranks.
pub fn eval_batches(
    config: &Config,
    loader: &Loader,
    collective: &dyn Collective,
) -> Result<BatchStream, TrainError> {
    let options = weft_data::plan_options(config, Split::Val, collective.world_size());
    let cursor = DataCursor::new(loader.catalog(), options, 0);
    Ok(loader.stream(&cursor, collective.rank())?)
}

/// Every rank's rows, gathered on every rank in [`RowId`] order. `rows[i]` is the id of this
/// rank's `i`-th row and `values[i * width..]` its `width` values; the result holds the ids and
/// values of all ranks' rows, sorted by id (so one rank alone gets its rows in that order too).
pub fn gather_rows(
    collective: &mut dyn Collective,
    rows: &[RowId],
    values: &[f32],
    width: usize,
) -> Result<(Vec<RowId>, Vec<f32>), TrainError> {
    // Ids travel as f32: the unit and two 24-bit halves of the row, all exact.
    const EXACT: u64 = 1 << 24;
    if let Some(id) = rows
        .iter()
        .find(|id| u64::from(id.unit) >= EXACT || id.row >= EXACT * EXACT)
    {
        return Err(TrainError::EvalShards {
            reason: format!("row {id:?} is past the 2^24 units or 2^48 rows that travel exactly"),
        });
    }
    let mut meta = [rows.len() as f32, width as f32];
    collective.all_reduce(&mut meta, ReduceOp::Max)?;
    let (most, width) = (meta[0] as usize, meta[1] as usize);
    if values.len() != rows.len() * width {
        return Err(TrainError::EvalShards {
            reason: format!(
                "rank {}: {} values for {} rows of width {width}",
                collective.rank(),
                values.len(),
                rows.len()
            ),
        });
    }
    let stride = 4 + width;
    let mut send = vec![0f32; most * stride];
    for (i, id) in rows.iter().enumerate() {
        let s = &mut send[i * stride..(i + 1) * stride];
        s[0] = 1.0;
        s[1] = id.unit as f32;
        s[2] = (id.row % EXACT) as f32;
        s[3] = (id.row / EXACT) as f32;
        s[4..].copy_from_slice(&values[i * width..(i + 1) * width]);
    }
    let mut recv = vec![0f32; collective.world_size() * send.len()];
    collective.all_gather(&send, &mut recv)?;
    let mut all: Vec<(RowId, &[f32])> = recv
        .chunks(stride.max(1))
        .filter(|c| c[0] == 1.0)
        .map(|c| {
            let id = RowId {
                unit: c[1] as u32,
                row: c[2] as u64 + c[3] as u64 * EXACT,
            };
            (id, &c[4..])
        })
        .collect();
    all.sort_by_key(|(id, _)| (id.unit, id.row));
    if let Some(w) = all.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(TrainError::EvalShards {
            reason: format!("row {:?} was evaluated by two ranks", w[0].0),
        });
    }
    let ids = all.iter().map(|(id, _)| *id).collect();
    let values = all.iter().flat_map(|(_, v)| v.iter().copied()).collect();
    Ok((ids, values))
}

/// [`gather_rows`] of one string per row: the UTF-8 bytes travel as f32 values, exactly.
pub fn gather_strings<S: AsRef<str>>(
    collective: &mut dyn Collective,
    rows: &[RowId],
    strings: &[S],
) -> Result<(Vec<RowId>, Vec<String>), TrainError> {
    let longest = strings.iter().map(|s| s.as_ref().len()).max().unwrap_or(0);
    let mut longest = [longest as f32];
    collective.all_reduce(&mut longest, ReduceOp::Max)?;
    let width = 1 + longest[0] as usize;
    let mut values = vec![0f32; rows.len() * width];
    for (v, s) in values.chunks_mut(width).zip(strings) {
        let s = s.as_ref();
        v[0] = s.len() as f32;
        v[1..]
            .iter_mut()
            .zip(s.bytes())
            .for_each(|(x, b)| *x = f32::from(b));
    }
    let (ids, all) = gather_rows(collective, rows, &values, width)?;
    let strings = all
        .chunks(width)
        .map(|v| {
            let bytes: Vec<u8> = v[1..1 + v[0] as usize].iter().map(|&b| b as u8).collect();
            String::from_utf8(bytes).map_err(|e| TrainError::EvalShards {
                reason: format!("a gathered string is not UTF-8: {e}"),
            })
        })
        .collect::<Result<_, _>>()?;
    Ok((ids, strings))
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
    collective: &mut dyn Collective,
) -> Result<(Retrieval, Option<Retrieval>), TrainError> {
    if !model.has_embeddings() {
        return Err(TrainError::NoEmbeddings);
    }
    let rerank_k = rerank_k.filter(|&k| k > 0 && model.has_itm());
    let (rank, world) = (collective.rank(), collective.world_size());
    // Re-ranking needs every row's tokens on every rank: then (ALBEF's way) each rank embeds
    // all rows and re-scores its share of the queries, the expensive part.
    let mut single = SingleRank;
    let pass: &mut dyn Collective = if rerank_k.is_some() {
        &mut single
    } else {
        collective
    };
    // Each row's image and text embedding side by side.
    let mut both = Vec::new();
    let mut ids = Vec::new();
    let mut dim = 0;
    // For re-ranking: every image's and caption's tokens, and the captions' padding.
    let (mut image_tokens, mut text_tokens, mut paddings) = (Vec::new(), Vec::new(), Vec::new());
    for batch in eval_batches(config, loader, pass)? {
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
            ids.push(batch.rows[i]);
            both.extend_from_slice(&img[i * dim..(i + 1) * dim]);
            both.extend_from_slice(&txt[i * dim..(i + 1) * dim]);
        }
        if rerank_k.is_some() {
            let keep = weft_kernels::index_tensor::<B>(&real, device);
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
    tracing::info!(
        "retrieval: rank {rank} of {world} embedded {} rows",
        ids.len()
    );
    // The order of the gathered rows, for the tokens (kept in the order streamed).
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| (ids[i].unit, ids[i].row));
    let (ids, both) = gather_rows(pass, &ids, &both, 2 * dim)?;
    let n = ids.len();
    let dim = both.len().checked_div(2 * n).unwrap_or(0);
    let (mut image, mut text) = (Vec::with_capacity(n * dim), Vec::with_capacity(n * dim));
    for row in both.chunks(2 * dim.max(1)) {
        image.extend_from_slice(&row[..dim]);
        text.extend_from_slice(&row[dim..]);
    }
    let i2t = similarities(&image, &text, n, dim);
    let t2i = transpose(&i2t, n);
    let (itc_ri, itc_rt) = (ranks(&i2t, n), ranks(&t2i, n));
    let itc = retrieval_from_ranks(&itc_ri, &itc_rt);
    let Some(k) = rerank_k.filter(|_| n > 0) else {
        return Ok((itc, None));
    };
    if n >= 1 << 24 {
        return Err(TrainError::EvalShards {
            reason: format!("{n} rows: re-ranking gathers ranks as f32, exact below 2^24"),
        });
    }
    let mut image_tokens = Tensor::cat(image_tokens, 0);
    let mut text_tokens = Tensor::cat(text_tokens, 0);
    let mut padding = Tensor::cat(paddings, 0);
    if order.iter().enumerate().any(|(i, &j)| i != j) {
        let order = weft_kernels::index_tensor::<B>(&order, device);
        image_tokens = image_tokens.select(0, order.clone());
        text_tokens = text_tokens.select(0, order.clone());
        padding = padding.select(0, order);
    }
    // This rank's queries: a contiguous share (all of them on one rank).
    let queries = n * rank / world..n * (rank + 1) / world;
    // For each query row of a similarity matrix: its top k by ITC, re-scored by ITM; the
    // rank of the true item (0 for the queries of other ranks).
    let rerank = |sim: &[f32], itc_ranks: &[usize], query_is_image: bool| -> Vec<usize> {
        let k = k.min(n);
        let mut out = vec![0; n];
        let mut pairs: Vec<(usize, usize)> = Vec::new(); // (query, candidate)
        for q in queries.clone() {
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
        for (j, q) in queries.clone().enumerate() {
            let cands = &pairs[j * k..(j + 1) * k];
            let s = &scores[j * k..(j + 1) * k];
            // The true item's place among the top k by ITM, else its ITC rank.
            out[q] = match cands.iter().position(|&(_, c)| c == q) {
                Some(p) => s
                    .iter()
                    .enumerate()
                    .filter(|&(j, &x)| x > s[p] || (x == s[p] && j < p))
                    .count(),
                None => itc_ranks[q],
            };
        }
        out
    };
    // Every rank's share of the ranks, to all (each query is one rank's; ranks < 2^24 are
    // exact in f32).
    let mut both: Vec<f32> = rerank(&i2t, &itc_ri, true)
        .into_iter()
        .chain(rerank(&t2i, &itc_rt, false))
        .map(|r| r as f32)
        .collect();
    collective.all_reduce(&mut both, ReduceOp::Sum)?;
    let (ri, rt): (Vec<usize>, Vec<usize>) = (
        both[..n].iter().map(|&r| r as usize).collect(),
        both[n..].iter().map(|&r| r as usize).collect(),
    );
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

/// What zero-shot classification asks.
#[derive(Debug, Clone)]
pub struct ZeroShotTask<'a> {
    /// The true class name of each row.
    pub labels: &'a weft_data::labels::Labels,
    /// The classes to choose from (None: the sorted distinct labels).
    pub classes: Option<Vec<String>>,
    /// Prompt templates, `{}` standing for the class name.
    pub prompts: &'a [String],
}

/// Zero-shot classification of every row of `loader` (one pass, in order): each image's
/// class is the one of `task.classes` whose [`class_embeddings`] is most similar to its
/// embedding.
pub fn evaluate_zero_shot<B: Backend>(
    model: &VlModel<B>,
    config: &Config,
    loader: &Loader,
    task: ZeroShotTask<'_>,
    device: &B::Device,
    collective: &mut dyn Collective,
) -> Result<ZeroShot, TrainError> {
    let ZeroShotTask {
        labels,
        classes,
        prompts,
    } = task;
    if !model.has_embeddings() {
        return Err(TrainError::NoEmbeddings);
    }
    let text = loader.text().ok_or(TrainError::NoTokenizer)?;
    let mut local = Vec::new();
    let mut ids = Vec::new();
    let mut dim = 0;
    for batch in eval_batches(config, loader, collective)? {
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
            ids.push(batch.rows[i]);
            local.extend_from_slice(&img[i * dim..(i + 1) * dim]);
        }
    }
    let (ids, all) = gather_rows(collective, &ids, &local, dim)?;
    let dim = all.len().checked_div(ids.len()).unwrap_or(0);
    let mut image = Vec::with_capacity(all.len());
    let mut truth: Vec<String> = Vec::new();
    let mut unlabelled = 0;
    for (id, row) in ids.iter().zip(all.chunks(dim.max(1))) {
        match labels.get(*id) {
            Some(label) => {
                image.extend_from_slice(row);
                truth.push(label.to_string());
            }
            None => unlabelled += 1,
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
/// data-parallel job runs its padding rows too, so that every rank's batch has the same size;
/// they are flagged [`ObjectiveBatch::is_pad`] and weigh nothing in the losses); `None` when
/// there are none.
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
        is_pad: keep.iter().map(|&i| batch.is_pad[i]).collect(),
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
