//! weft-model: the vision-language models and pretraining objectives of weft, as burn 0.21
//! modules generic over the backend.
//!
//! - [`vision`]: ViT image encoder (convolutional patches, CLS, learned positions, pre-norm).
//! - [`text`]: bidirectional text encoder and causal captioning decoder.
//! - [`fusion`]: ALBEF-style fusion encoder (self-attention + cross-attention to image tokens).
//! - [`heads`]: ITC projections and temperature, MLM head, MIM head (the ITM head is a
//!   `Linear(width, 2)`).
//! - [`model`]: [`VlModel`], built from a [`VlModelConfig`] with only the modules that the
//!   enabled objectives need.
//! - [`objectives`]: ITC, ITM with hard negatives, MLM, LM and MIM, and their weighted sum.
//! - [`decode`]: captions from the decoder, greedy or by beam search.

#![warn(missing_docs)]

pub mod block;
pub mod decode;
pub mod fusion;
pub mod heads;
pub mod model;
pub mod objectives;
pub mod text;
pub mod vision;

pub use decode::DecodeOptions;
pub use model::{Objectives, VlModel, VlModelConfig};
pub use objectives::{
    Exchange, FeatureGather, LossOutput, ObjectiveBatch, Sampling, SpecialTokens,
};
