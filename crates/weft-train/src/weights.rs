//! The model of a config and its weights: building it seeded with stable parameter ids
//! ([`build_model`]), the special tokens its objectives need, weights read into it by name
//! ([`init_from`] for `train.init_from`, [`with_weights`] for evaluation), the safetensors
//! file a run ends with ([`save_model`], [`load_model`]), and the log lines about them.

use std::path::Path;

use burn::tensor::backend::AutodiffBackend;
use burn_store::{ModuleSnapshot, SafetensorsStore};
use weft_checkpoint::{InitReport, Pretrained};
use weft_config::Config;
use weft_data::text::SPECIAL_TOKENS;
use weft_data::Loader;
use weft_model::{SpecialTokens, VlModel, VlModelConfig};

use crate::error::{io, TrainError};
use crate::params::{flat_params, params, set_flat_params, stable_ids};
use crate::snapshot::param_table;

/// File name of the final weights in the run directory.
pub const MODEL_FILE: &str = weft_checkpoint::files::MODEL_FILE;
/// File name of the tokenizer copy in the run directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// The special tokens of a tokenizer that the objectives need.
pub fn special_tokens(loader: &Loader, config: &Config) -> Result<SpecialTokens, TrainError> {
    let text = loader.text().ok_or(TrainError::NoTokenizer)?;
    let path = config.data.tokenizer.clone().unwrap_or_default();
    let need = |token: &'static str, objective: &'static str, on: bool| match text.token_id(token) {
        Some(id) => Ok(id),
        None if !on => Ok(0),
        None => Err(TrainError::MissingToken {
            objective,
            token,
            path: path.clone(),
        }),
    };
    Ok(SpecialTokens {
        mask: need("[MASK]", "loss.mlm", config.loss.mlm > 0.0)?,
        bos: need("[BOS]", "loss.lm", config.loss.lm > 0.0)?,
        all: SPECIAL_TOKENS
            .iter()
            .filter_map(|t| text.token_id(t))
            .collect(),
    })
}

/// Build the model of `config` for a tokenizer of `vocab` tokens, seeded, with stable ids.
pub fn build_model<B: burn::tensor::backend::Backend>(
    config: &Config,
    vocab: usize,
    device: &B::Device,
) -> VlModel<B> {
    // The backend draws initial parameters from one process-wide generator: seeding it and
    // drawing a model must not interleave with another build (tests train in parallel).
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    B::seed(device, config.seed);
    stable_ids(VlModelConfig::from_weft(config, vocab).init::<B>(device))
}

/// `model` with the parameters that the weights at `path` hold (`train.init_from`): a
/// safetensors file, a run directory or a checkpoint directory, matched by name
/// ([`weft_checkpoint::pretrained`]). Parameters the weights lack keep their values.
pub fn init_from<B: AutodiffBackend>(
    model: VlModel<B>,
    path: &Path,
    device: &B::Device,
) -> Result<(VlModel<B>, InitReport), TrainError> {
    let fail = |e| TrainError::InitFrom(Box::new(e));
    let weights = weft_checkpoint::read_pretrained(path).map_err(fail)?;
    set_from(model, &weights, device).map_err(fail)
}

/// `model` with the parameters that `weights` hold, matched by name; the others keep their
/// values.
fn set_from<B: burn::tensor::backend::Backend>(
    model: VlModel<B>,
    weights: &Pretrained,
    device: &B::Device,
) -> Result<(VlModel<B>, InitReport), weft_checkpoint::CheckpointError> {
    let table = param_table(&params(&model));
    let mut values = flat_params(&model);
    let report = weights.apply(&table, &mut values)?;
    Ok((set_flat_params(model, &values, device), report))
}

/// `model` with every parameter taken from `weights` (evaluation of saved weights: a
/// `model.safetensors`, an export or a checkpoint); a parameter the weights lack, or one of
/// another shape, is an error naming it.
pub fn with_weights<B: burn::tensor::backend::Backend>(
    model: VlModel<B>,
    weights: &Pretrained,
    device: &B::Device,
) -> Result<VlModel<B>, TrainError> {
    let (model, report) = set_from(model, weights, device).map_err(|e| TrainError::Weights {
        path: weights.source.clone(),
        message: e.to_string(),
    })?;
    if !report.missing.is_empty() {
        let first: Vec<&str> = report.missing.iter().take(5).map(String::as_str).collect();
        return Err(TrainError::Weights {
            path: weights.source.clone(),
            message: format!(
                "does not match the model: {} of its {} parameters are missing ({}{}); is the \
                 config the one these weights were trained with?",
                report.missing.len(),
                report.loaded.len() + report.missing.len(),
                first.join(", "),
                if report.missing.len() > first.len() {
                    ", ..."
                } else {
                    ""
                }
            ),
        });
    }
    Ok(model)
}

/// Log what [`init_from`] set.
pub(crate) fn log_init(report: &InitReport) {
    let some = |names: &[String]| {
        let mut list: Vec<&str> = names.iter().take(3).map(String::as_str).collect();
        if names.len() > 3 {
            list.push("...");
        }
        list.join(", ")
    };
    let total = report.loaded.len() + report.missing.len();
    tracing::info!(
        "train.init_from: {} of {total} parameters from {}",
        report.loaded.len(),
        report.source.display()
    );
    if !report.missing.is_empty() {
        tracing::info!(
            "train.init_from: {} parameters not in the weights keep their initial values ({})",
            report.missing.len(),
            some(&report.missing)
        );
    }
    if !report.unused.is_empty() {
        tracing::info!(
            "train.init_from: {} tensors of the weights are not parameters of this model ({})",
            report.unused.len(),
            some(&report.unused)
        );
    }
}

/// Log the parameter count of each module.
pub fn log_param_counts(counts: &[(&'static str, usize)]) {
    let total: usize = counts.iter().map(|(_, n)| n).sum();
    let list: Vec<String> = counts
        .iter()
        .map(|(name, n)| format!("{name} {}", human(*n)))
        .collect();
    tracing::info!("model: {} parameters ({})", human(total), list.join(", "));
}

/// `1.23M`-style count.
pub fn human(n: usize) -> String {
    if n >= 1_000_000 {
        format!("{:.2}M", n as f64 / 1e6)
    } else if n >= 1_000 {
        format!("{:.1}k", n as f64 / 1e3)
    } else {
        n.to_string()
    }
}

/// Save the weights as one safetensors file (names are module paths).
pub fn save_model<B: burn::tensor::backend::Backend>(
    model: &VlModel<B>,
    path: &Path,
) -> Result<(), TrainError> {
    let tmp = path.with_extension("safetensors.tmp");
    let mut store = SafetensorsStore::from_file(&tmp).overwrite(true);
    model
        .save_into(&mut store)
        .map_err(|e| TrainError::Weights {
            path: tmp.clone(),
            message: e.to_string(),
        })?;
    // Durable before it takes the name, and the name durable after: a crash leaves the old
    // file or the new one, whole.
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// Load weights saved by [`save_model`] into a model of the same config; every parameter must
/// be found.
pub fn load_model<B: burn::tensor::backend::Backend>(
    model: &mut VlModel<B>,
    path: &Path,
) -> Result<(), TrainError> {
    let mut store = SafetensorsStore::from_file(path);
    let result = model
        .load_from(&mut store)
        .map_err(|e| TrainError::Weights {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if !result.missing.is_empty() || !result.errors.is_empty() {
        let missing: Vec<&str> = result.missing.iter().map(|(p, _)| p.as_str()).collect();
        return Err(TrainError::Weights {
            path: path.to_path_buf(),
            message: format!(
                "does not match the model: missing {:?}, errors {:?}",
                missing, result.errors
            ),
        });
    }
    Ok(())
}
