//! Training a tokenizer on captions, saving, loading and encoding with it.

use weft_config::TokenizerModel;
use weft_data::synth::Scene;
use weft_data::text::{train_tokenizer, SPECIAL_TOKENS};
use weft_data::TextEncoder;

fn captions() -> impl Iterator<Item = String> + Send {
    (0..500u64).map(|i| Scene::generate(1, i, 64).caption())
}

#[test]
fn wordpiece_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tok/tokenizer.json");
    train_tokenizer(captions(), TokenizerModel::Wordpiece, 200, &path).unwrap();
    let enc = TextEncoder::from_file(&path, 16).unwrap();
    for (i, t) in SPECIAL_TOKENS.iter().enumerate() {
        assert_eq!(enc.token_id(t), Some(i as u32), "{t}");
    }
    let text = "a red circle above a blue square";
    let t = enc.encode(text).unwrap();
    assert_eq!(t.ids.len(), 16);
    assert_eq!(t.ids[0], 1, "[CLS] first");
    let real = t.attention_mask.iter().filter(|m| **m == 1).count();
    assert_eq!(real, 9, "CLS + 7 words + SEP: {:?}", t.ids);
    assert_eq!(t.ids[real - 1], 2, "[SEP] last");
    assert!(t.ids[real..].iter().all(|id| *id == 0), "[PAD] after");
    assert_eq!(enc.decode(&t.ids).unwrap(), text);
    // Upper case is normalised away; unknown characters become [UNK].
    assert_eq!(
        enc.encode("A RED Circle").unwrap().ids[..4],
        enc.encode("a red circle").unwrap().ids[..4]
    );
    assert!(enc.encode("a red ☃").unwrap().ids.contains(&6));
    // Truncation keeps [SEP] at the end.
    let long = enc.encode(&"red ".repeat(40)).unwrap();
    assert_eq!(long.ids.len(), 16);
    assert_eq!(long.ids[15], 2);
    assert!(long.attention_mask.iter().all(|m| *m == 1));
}

#[test]
fn bpe_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bpe.json");
    train_tokenizer(captions(), TokenizerModel::Bpe, 150, &path).unwrap();
    let enc = TextEncoder::from_file(&path, 24).unwrap();
    let text = "a green diamond to the left of a white cross";
    let t = enc.encode(text).unwrap();
    assert_eq!(t.ids[0], 1);
    assert_eq!(enc.decode(&t.ids).unwrap(), text);
}

#[test]
fn missing_tokenizer_file_is_named() {
    let err = TextEncoder::from_file("/nonexistent/tokenizer.json", 8)
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        err,
        "tokenizer /nonexistent/tokenizer.json: file not found (train one with `weft data tokenizer --train`)"
    );
}

#[test]
fn training_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    for model in [TokenizerModel::Wordpiece, TokenizerModel::Bpe] {
        let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
        train_tokenizer(captions(), model, 150, &a).unwrap();
        train_tokenizer(captions(), model, 150, &b).unwrap();
        assert_eq!(
            std::fs::read(&a).unwrap(),
            std::fs::read(&b).unwrap(),
            "{model:?}"
        );
        let enc = TextEncoder::from_file(&a, 16).unwrap();
        assert!(enc.vocab_size() <= 150, "{}", enc.vocab_size());
    }
    let err = train_tokenizer(
        captions(),
        TokenizerModel::Wordpiece,
        7,
        &dir.path().join("c.json"),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.ends_with("--vocab-size 7 leaves no room beside the 7 special tokens"),
        "{err}"
    );
}
