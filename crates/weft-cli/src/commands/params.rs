//! `weft params`: the parameter count of each module of the config's model.

use anyhow::Context;
use weft_config::Config;
use weft_data::TextEncoder;
use weft_train::weights::build_model;

type Cpu = burn::backend::Flex;

/// `weft params`: build the model on the CPU and count. The vocabulary is
/// `model.text.vocab_size`, else the tokenizer's.
pub fn run(config: &Config, json: bool) -> anyhow::Result<()> {
    let vocab = if config.model.text.vocab_size > 0 {
        config.model.text.vocab_size
    } else {
        let path = config
            .data
            .tokenizer
            .as_ref()
            .context("set model.text.vocab_size or data.tokenizer")?;
        TextEncoder::from_file(path, config.model.text.context_length)?.vocab_size()
    };
    let model = build_model::<Cpu>(config, vocab, &Default::default());
    let counts = model.param_counts();
    let total: usize = counts.iter().map(|(_, n)| n).sum();
    if json {
        let mut map = serde_json::Map::new();
        for (name, n) in &counts {
            map.insert((*name).to_string(), (*n).into());
        }
        map.insert("total".into(), total.into());
        println!("{}", serde_json::to_string_pretty(&map)?);
    } else {
        for (name, n) in &counts {
            println!("{name:<8} {n:>12}  {}", weft_train::weights::human(*n));
        }
        println!(
            "{:<8} {total:>12}  {}",
            "total",
            weft_train::weights::human(total)
        );
    }
    Ok(())
}
