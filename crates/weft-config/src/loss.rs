//! `[loss]`: the objectives' weights and options.

use serde::{Deserialize, Serialize};

/// `[loss]`: the weight of each objective in the total (0 disables it and its modules).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossConfig {
    /// Image-text contrastive (symmetric InfoNCE).
    pub itc: f64,
    /// Image-text matching with hard negatives.
    pub itm: f64,
    /// Masked language modelling through the fusion encoder.
    pub mlm: f64,
    /// Captioning language modelling through the decoder.
    pub lm: f64,
    /// Masked image modelling (normalised pixels of masked patches).
    pub mim: f64,
    /// Label smoothing of the ITC cross-entropies.
    pub itc_label_smoothing: f64,
    /// Fraction of caption tokens chosen for MLM (then 80% [MASK], 10% random, 10% kept).
    pub mlm_probability: f64,
    /// Fraction of image patches masked for MIM.
    pub mim_mask_ratio: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            itc: 1.0,
            itm: 0.0,
            mlm: 0.0,
            lm: 0.0,
            mim: 0.0,
            itc_label_smoothing: 0.0,
            mlm_probability: 0.15,
            mim_mask_ratio: 0.75,
        }
    }
}
