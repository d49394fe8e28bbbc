//! weft-eval: the measures downstream evaluation reports, on plain numbers and strings (no
//! tensors, no model).
//!
//! - [`caption`]: BLEU-1..4 (Papineni et al., 2002), ROUGE-L (Lin, 2004) and CIDEr-D
//!   (Vedantam et al., 2015) of generated captions against reference captions, computed as
//!   the COCO caption evaluation (`pycocoevalcap`) computes them.
//! - [`retrieval`]: the rank of the true item in a similarity matrix, Recall@K, mean and
//!   median rank.
//! - [`classify`]: top-k accuracy and a per-class table from class scores.

#![warn(missing_docs)]

pub mod caption;
pub mod classify;
pub mod retrieval;
