//! Zero-shot classification: each image's class is the one whose prompt embeddings (CLIP's
//! classifier) are most similar to its embedding.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::Serialize;
use weft_collective::Collective;
use weft_config::Config;
use weft_data::Loader;
use weft_model::VlModel;

use super::shard::{eval_batches, gather_rows};
use super::to_vec;
use crate::batch::objective_batch;
use crate::error::TrainError;

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
