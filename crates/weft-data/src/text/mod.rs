//! Captions to token ids: Hugging Face `tokenizer.json` files through the `tokenizers` crate,
//! and training a WordPiece or BPE tokenizer on a dataset's own captions.

pub mod train;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tokenizers::decoders::bpe::BPEDecoder;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::BPE;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::models::ModelWrapper;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, NormalizedString, Normalizer, OffsetReferential, OffsetType, PaddingDirection,
    PaddingParams, PaddingStrategy, PreTokenizedString, PreTokenizer, Tokenizer,
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

/// The bytes of a caption that are tokenized for `context_length` tokens: 64 a token, at least
/// 4 KiB. The tokens truncation keeps are the same unless they average more than 64 bytes of
/// text each.
pub fn max_caption_bytes(context_length: usize) -> usize {
    context_length.saturating_mul(64).max(4096)
}

/// `text` cut to at most `max` bytes, at a character boundary.
pub fn cut_at_char(text: &str, max: usize) -> &str {
    &text[..text.floor_char_boundary(max)]
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
        // A caption far longer than its context is cut before tokenizing (a 10 MB caption cost
        // 1.2 GB and seconds, to keep its first tokens); the bound keeps every token that
        // truncation keeps.
        let text = cut_at_char(text, max_caption_bytes(self.context_length));
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
/// `[CLS] ... [SEP]`. Training is deterministic ([`train`]): the same captions give the same
/// file, byte for byte.
pub fn train_tokenizer<I>(
    captions: I,
    model: TokenizerModel,
    vocab_size: usize,
    out: &Path,
) -> Result<()>
where
    I: Iterator<Item = String>,
{
    let err = |message: String| DataError::Tokenizer {
        path: out.to_path_buf(),
        message,
    };
    if vocab_size <= SPECIAL_TOKENS.len() {
        return Err(err(format!(
            "--vocab-size {vocab_size} leaves no room beside the {} special tokens",
            SPECIAL_TOKENS.len()
        )));
    }
    // Words as the tokenizer will see them: normalized, then pre-tokenized.
    let normalizer = BertNormalizer::default();
    let mut word_counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut captions_seen = 0u64;
    for caption in captions {
        captions_seen += 1;
        let mut normalized = NormalizedString::from(caption.as_str());
        normalizer
            .normalize(&mut normalized)
            .map_err(|e| err(e.to_string()))?;
        let mut pre = PreTokenizedString::from(normalized);
        BertPreTokenizer
            .pre_tokenize(&mut pre)
            .map_err(|e| err(e.to_string()))?;
        for (word, _, _) in pre.get_splits(OffsetReferential::Original, OffsetType::None) {
            *word_counts.entry(word.to_string()).or_default() += 1;
        }
    }
    if word_counts.is_empty() {
        return Err(err(format!("no words in {captions_seen} captions")));
    }
    let style = match model {
        TokenizerModel::Wordpiece => train::Style::WordPiece,
        TokenizerModel::Bpe => train::Style::Bpe,
    };
    let learned = train::learn(&word_counts, &SPECIAL_TOKENS, vocab_size, 1, style);
    // The map type the `tokenizers` builders take.
    let vocab: ahash::AHashMap<String, u32> = learned
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let post = TemplateProcessing::builder()
        .try_single("[CLS] $0 [SEP]")
        .map_err(|e| err(e.to_string()))?
        .try_pair("[CLS] $A [SEP] $B:1 [SEP]:1")
        .map_err(|e| err(e.to_string()))?
        .special_tokens(vec![("[CLS]", 1), ("[SEP]", 2)])
        .build()
        .map_err(|e| err(e.to_string()))?;
    let model: ModelWrapper = match model {
        TokenizerModel::Wordpiece => WordPiece::builder()
            .vocab(vocab)
            .unk_token("[UNK]".into())
            .continuing_subword_prefix("##".into())
            .build()
            .map_err(|e| err(e.to_string()))?
            .into(),
        TokenizerModel::Bpe => BPE::builder()
            .vocab_and_merges(vocab, learned.merges)
            .unk_token("[UNK]".into())
            .end_of_word_suffix("</w>".into())
            .build()
            .map_err(|e| err(e.to_string()))?
            .into(),
    };
    let decoder: DecoderWrapper = match style {
        train::Style::WordPiece => WordPieceDecoder::default().into(),
        train::Style::Bpe => BPEDecoder::new("</w>".into()).into(),
    };
    let mut tokenizer = Tokenizer::new(model);
    tokenizer
        .with_normalizer(Some(normalizer))
        .with_pre_tokenizer(Some(BertPreTokenizer))
        .with_post_processor(Some(post))
        .with_decoder(Some(decoder));
    let specials: Vec<AddedToken> = SPECIAL_TOKENS
        .iter()
        .map(|t| AddedToken::from(t.to_string(), true))
        .collect();
    tokenizer.add_special_tokens(&specials);
    for (i, tok) in SPECIAL_TOKENS.iter().enumerate() {
        if tokenizer.token_to_id(tok) != Some(i as u32) {
            return Err(err(format!("special token {tok} did not get id {i}")));
        }
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    let json = tokenizer.to_string(true).map_err(|e| err(e.to_string()))?;
    std::fs::write(out, json).map_err(|e| err(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_caption_is_cut_before_tokenizing_and_keeps_its_tokens() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../datasets/sample/tokenizer.json"
        );
        let enc = TextEncoder::from_file(path, 16).unwrap();
        let short = "a red circle on a blue square";
        let huge = format!("{short} {}", "and a green triangle ".repeat(500_000));
        assert!(huge.len() > 10 << 20);
        assert_eq!(
            enc.encode(&huge).unwrap(),
            enc.encode(&huge[..4096]).unwrap()
        );
        assert_ne!(enc.encode(&huge).unwrap(), enc.encode(short).unwrap());
    }

    #[test]
    fn cuts_fall_on_character_boundaries() {
        assert_eq!(cut_at_char("abc", 10), "abc");
        assert_eq!(cut_at_char("aé", 2), "a");
        assert_eq!(cut_at_char("aé", 3), "aé");
        assert_eq!(max_caption_bytes(32), 4096);
        assert_eq!(max_caption_bytes(77), 77 * 64);
    }
}
