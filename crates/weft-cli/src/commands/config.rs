//! `weft config`: the resolved config, printed or written into a run directory.

use std::path::PathBuf;

use weft_config::Config;

/// Print `config` as TOML, or write it as `RUN_DIR/config.toml` and print that path.
pub fn run(config: &Config, run_dir: Option<PathBuf>) -> anyhow::Result<()> {
    match run_dir {
        Some(dir) => {
            let path = config.write_to_run_dir(&dir)?;
            println!("{}", path.display());
        }
        None => print!("{}", config.to_toml()),
    }
    Ok(())
}
