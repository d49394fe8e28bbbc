//! Captions to token ids: Hugging Face `tokenizer.json` files through the `tokenizers` crate,
//! and training a WordPiece or BPE tokenizer on a dataset's own captions.

use std::path::{Path, PathBuf};

use tokenizers::decoders::bpe::BPEDecoder;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::wordpiece::{WordPiece, WordPieceTrainerBuilder};
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TokenizerImpl,
    TruncationDirection, TruncationParams, TruncationStrategy,
};
pub use weft_config::TokenizerModel;

use crate::error::{DataError, Result};

/// The special tokens every tokenizer weft trains has, with ids 0 to 6 in this order.
pub const SPECIAL_TOKENS: [&str; 7] = [
    "[PAD]", "[CLS]", "[SEP]", "[MASK]", "[BOS]", "[EOS]", "[UNK]",
];

/// Token ids of a caption, truncated and padded to the context length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// Token ids, `context_length` of them.
    pub ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<u32>,
}

/// A tokenizer set up to truncate and pad to a fixed context length.
#[derive(Debug, Clone)]
pub struct TextEncoder {
    tokenizer: Tokenizer,
    context_length: usize,
    path: PathBuf,
}

impl TextEncoder {
    /// Load a Hugging Face `tokenizer.json` and make it truncate and pad to `context_length`.
    pub fn from_file(path: impl AsRef<Path>, context_length: usize) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let err = |message: String| DataError::Tokenizer {
            path: path.clone(),
            message,
        };
        if !path.is_file() {
            return Err(err(
                "file not found (train one with `weft data tokenizer --train`)".to_string(),
            ));
        }
        let mut tokenizer = Tokenizer::from_file(&path).map_err(|e| err(e.to_string()))?;
        let (pad_id, pad_token) = match tokenizer.get_padding() {
            Some(p) => (p.pad_id, p.pad_token.clone()),
            None => ["[PAD]", "<pad>", "<|endoftext|>"]
                .iter()
                .find_map(|t| tokenizer.token_to_id(t).map(|id| (id, t.to_string())))
                .ok_or_else(|| {
                    err("no padding token ([PAD], <pad> or <|endoftext|>) in the vocabulary".into())
                })?,
        };
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: context_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| err(e.to_string()))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(context_length),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token,
        }));
        Ok(Self {
            tokenizer,
            context_length,
            path,
        })
    }

    /// Tokens per caption.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Id of a token, if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Ids and attention mask of one caption, with the special tokens of the post-processor.
    pub fn encode(&self, text: &str) -> Result<Tokens> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| DataError::Tokenizer {
                path: self.path.clone(),
                message: format!("cannot encode {text:?}: {e}"),
            })?;
        Ok(Tokens {
            ids: enc.get_ids().to_vec(),
            attention_mask: enc.get_attention_mask().to_vec(),
        })
    }

    /// Text of token ids, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| DataError::Tokenizer {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }
}

/// Train a tokenizer on `captions` and save it as `out` (Hugging Face `tokenizer.json`).
///
/// Both models lowercase and strip accents (BERT normalizer), split on whitespace and
/// punctuation, have [`SPECIAL_TOKENS`] as ids 0..7, and wrap every caption as
/// `[CLS] ... [SEP]`.
pub fn train_tokenizer<I>(
    captions: I,
    model: TokenizerModel,
    vocab_size: usize,
    out: &Path,
) -> Result<()>
where
    I: Iterator<Item = String> + Send,
{
    let err = |message: String| DataError::Tokenizer {
        path: out.to_path_buf(),
        message,
    };
    let specials: Vec<AddedToken> = SPECIAL_TOKENS
        .iter()
        .map(|t| AddedToken::from(t.to_string(), true))
        .collect();
    let post = TemplateProcessing::builder()
        .try_single("[CLS] $0 [SEP]")
        .map_err(|e| err(e.to_string()))?
        .try_pair("[CLS] $A [SEP] $B:1 [SEP]:1")
        .map_err(|e| err(e.to_string()))?
        .special_tokens(vec![("[CLS]", 1), ("[SEP]", 2)])
        .build()
        .map_err(|e| err(e.to_string()))?;
    let tokenizer: Tokenizer = match model {
        TokenizerModel::Wordpiece => {
            let mut trainer = WordPieceTrainerBuilder::new()
                .vocab_size(vocab_size)
                .min_frequency(1)
                .show_progress(false)
                .special_tokens(specials)
                .build();
            let wp = WordPiece::builder()
                .unk_token("[UNK]".into())
                .build()
                .map_err(|e| err(e.to_string()))?;
            let mut t: TokenizerImpl<
                WordPiece,
                BertNormalizer,
                BertPreTokenizer,
                TemplateProcessing,
                WordPieceDecoder,
            > = TokenizerImpl::new(wp);
            t.with_normalizer(Some(BertNormalizer::default()))
                .with_pre_tokenizer(Some(BertPreTokenizer))
                .with_decoder(Some(WordPieceDecoder::default()));
            t.train(&mut trainer, captions)
                .map_err(|e| err(e.to_string()))?;
            t.with_post_processor(Some(post));
            t.into()
        }
        TokenizerModel::Bpe => {
            let mut trainer = BpeTrainerBuilder::new()
                .vocab_size(vocab_size)
                .min_frequency(1)
                .show_progress(false)
                .special_tokens(specials)
                .end_of_word_suffix("</w>".into())
                .build();
            let bpe = BPE::builder()
                .unk_token("[UNK]".into())
                .end_of_word_suffix("</w>".into())
                .build()
                .map_err(|e| err(e.to_string()))?;
            let mut t: TokenizerImpl<
                BPE,
                BertNormalizer,
                BertPreTokenizer,
                TemplateProcessing,
                BPEDecoder,
            > = TokenizerImpl::new(bpe);
            t.with_normalizer(Some(BertNormalizer::default()))
                .with_pre_tokenizer(Some(BertPreTokenizer))
                .with_decoder(Some(BPEDecoder::new("</w>".into())));
            t.train(&mut trainer, captions)
                .map_err(|e| err(e.to_string()))?;
            t.with_post_processor(Some(post));
            t.into()
        }
    };
    for (i, tok) in SPECIAL_TOKENS.iter().enumerate() {
        if tokenizer.token_to_id(tok) != Some(i as u32) {
            return Err(err(format!("special token {tok} did not get id {i}")));
        }
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    tokenizer.save(out, true).map_err(|e| err(e.to_string()))?;
    Ok(())
}
