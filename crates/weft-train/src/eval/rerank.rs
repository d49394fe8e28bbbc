//! Retrieval over a validation set, sharded across the ranks, with ALBEF's ITM re-ranking:
//! every row embedded ([`evaluate_retrieval_rerank`]), and with a re-ranking `k` each query's
//! top `k` by ITC scored again by the ITM head.

use std::ops::Range;

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor, TensorData};
use weft_collective::{Collective, ReduceOp, SingleRank};
use weft_config::Config;
use weft_data::{Loader, RowId};
use weft_model::VlModel;

use super::retrieval::{ranks, retrieval_from_ranks, similarities, transpose, Retrieval};
use super::shard::{eval_batches, gather_rows};
use super::to_vec;
use crate::batch::objective_batch;
use crate::error::TrainError;

/// Pairs fused at a time when re-ranking.
const RERANK_CHUNK: usize = 256;

/// What a pass over the rows gave: each row's image and text embedding side by side, and for
/// re-ranking every row's tokens and its caption's padding, in the order streamed.
struct Embedded<B: Backend> {
    ids: Vec<RowId>,
    both: Vec<f32>,
    dim: usize,
    image_tokens: Vec<Tensor<B, 3>>,
    text_tokens: Vec<Tensor<B, 3>>,
    paddings: Vec<Tensor<B, 2, Bool>>,
}

/// Every row's tokens, in the gathered order, for the ITM head.
struct Tokens<B: Backend> {
    image: Tensor<B, 3>,
    text: Tensor<B, 3>,
    padding: Tensor<B, 2, Bool>,
}

/// [`super::evaluate_retrieval`], and with `rerank_k` also ALBEF's re-ranking: for each image
/// the `k` captions ranked best by ITC, and for each caption the `k` best images, are ranked
/// again by the ITM head's log-odds of "match" (the others keep their ITC order after them).
/// The second result is the re-ranked retrieval (None without `rerank_k` or an ITM head).
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
    let emb = embed_rows(model, config, loader, device, pass, rerank_k.is_some())?;
    tracing::info!(
        "retrieval: rank {rank} of {world} embedded {} rows",
        emb.ids.len()
    );
    // The order of the gathered rows, for the tokens (kept in the order streamed).
    let ids = &emb.ids;
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| (ids[i].unit, ids[i].row));
    let (ids, both) = gather_rows(pass, ids, &emb.both, 2 * emb.dim)?;
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
    let tokens = gathered_tokens(emb, &order, device);
    // This rank's queries: a contiguous share (all of them on one rank).
    let queries = n * rank / world..n * (rank + 1) / world;
    // Every rank's share of the ranks, to all (each query is one rank's; ranks < 2^24 are
    // exact in f32).
    let mut both: Vec<f32> = rerank(model, &tokens, &i2t, &itc_ri, true, k, queries.clone())
        .into_iter()
        .chain(rerank(model, &tokens, &t2i, &itc_rt, false, k, queries))
        .map(|r| r as f32)
        .collect();
    collective.all_reduce(&mut both, ReduceOp::Sum)?;
    let (ri, rt): (Vec<usize>, Vec<usize>) = (
        both[..n].iter().map(|&r| r as usize).collect(),
        both[n..].iter().map(|&r| r as usize).collect(),
    );
    Ok((itc, Some(retrieval_from_ranks(&ri, &rt))))
}

/// Embed this rank's share of the rows (every row over `pass` = one rank), padding dropped;
/// with `tokens` also keep every row's tokens for re-ranking.
fn embed_rows<B: Backend>(
    model: &VlModel<B>,
    config: &Config,
    loader: &Loader,
    device: &B::Device,
    pass: &mut dyn Collective,
    tokens: bool,
) -> Result<Embedded<B>, TrainError> {
    let mut out = Embedded {
        ids: Vec::new(),
        both: Vec::new(),
        dim: 0,
        image_tokens: Vec::new(),
        text_tokens: Vec::new(),
        paddings: Vec::new(),
    };
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
        let dim = img.dims()[1];
        out.dim = dim;
        let img: Vec<f32> = to_vec(img);
        let txt: Vec<f32> = to_vec(txt);
        for &i in &real {
            out.ids.push(batch.rows[i]);
            out.both.extend_from_slice(&img[i * dim..(i + 1) * dim]);
            out.both.extend_from_slice(&txt[i * dim..(i + 1) * dim]);
        }
        if tokens {
            let keep = weft_kernels::index_tensor::<B>(&real, device);
            out.image_tokens.push(
                model
                    .image_tokens(ob.images.clone())
                    .select(0, keep.clone()),
            );
            let text = model
                .text_tokens(ob.ids_tensor(), padding.clone())
                .ok_or(TrainError::NoEmbeddings)?;
            out.text_tokens.push(text.select(0, keep.clone()));
            let l = ob.len;
            let pad: Vec<bool> = real
                .iter()
                .flat_map(|&i| {
                    ob.attention_mask[i * l..(i + 1) * l]
                        .iter()
                        .map(|&m| m == 0)
                })
                .collect();
            out.paddings.push(Tensor::<B, 2, Bool>::from_data(
                TensorData::new(pad, [real.len(), l]),
                device,
            ));
        }
    }
    Ok(out)
}

/// The streamed rows' tokens, put in the gathered order `order`.
fn gathered_tokens<B: Backend>(emb: Embedded<B>, order: &[usize], device: &B::Device) -> Tokens<B> {
    let mut image = Tensor::cat(emb.image_tokens, 0);
    let mut text = Tensor::cat(emb.text_tokens, 0);
    let mut padding = Tensor::cat(emb.paddings, 0);
    if order.iter().enumerate().any(|(i, &j)| i != j) {
        let order = weft_kernels::index_tensor::<B>(order, device);
        image = image.select(0, order.clone());
        text = text.select(0, order.clone());
        padding = padding.select(0, order);
    }
    Tokens {
        image,
        text,
        padding,
    }
}

/// For each query row of the `[n, n]` similarity matrix `sim` in `queries`: its top `k` by ITC,
/// re-scored by ITM; the rank of the true item (0 for the queries of other ranks).
fn rerank<B: Backend>(
    model: &VlModel<B>,
    tokens: &Tokens<B>,
    sim: &[f32],
    itc_ranks: &[usize],
    query_is_image: bool,
    k: usize,
    queries: Range<usize>,
) -> Vec<usize> {
    let n = itc_ranks.len();
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
                tokens.image.clone(),
                tokens.text.clone(),
                tokens.padding.clone(),
                &texts,
                &images,
            )
            .expect("re-ranking needs ITM");
        scores.extend(to_vec(s));
    }
    for (j, q) in queries.enumerate() {
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
}
