//! `weft ckpt inspect | verify | export`: checkpoints from the command line.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use weft_checkpoint::export::{export, ExportDtype};
use weft_checkpoint::{open_verified, Checkpoint, Family};

/// `weft ckpt ...`.
#[derive(Subcommand, Debug)]
pub enum CkptCommand {
    /// Step, epoch, world size, data cursor, files and tensors of a checkpoint (verified
    /// first). DIR is a checkpoint directory or a run directory (its latest checkpoint).
    Inspect {
        /// Checkpoint or run directory.
        dir: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Check the commit marker and the size and SHA-256 of every file; exits non-zero naming
    /// the first bad file.
    Verify {
        /// Checkpoint or run directory.
        dir: PathBuf,
    },
    /// Write the model's tensors as one safetensors file.
    Export {
        /// Checkpoint or run directory.
        dir: PathBuf,
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
        /// Element type of the file.
        #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
        dtype: DtypeArg,
    },
}

/// `--dtype`.
#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum DtypeArg {
    /// As trained.
    F32,
    /// bfloat16.
    Bf16,
}

/// A checkpoint directory, or the latest committed checkpoint of a run directory.
fn checkpoint_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    if dir.join(weft_checkpoint::files::TRAINER_STATE).exists()
        || dir.join(weft_checkpoint::files::COMMITTED).exists()
    {
        return Ok(dir.to_path_buf());
    }
    if let Some(latest) = weft_checkpoint::latest(dir)? {
        return Ok(latest);
    }
    anyhow::bail!(
        "{} is neither a checkpoint nor a run directory with a committed checkpoint",
        dir.display()
    )
}

fn open(dir: &Path) -> anyhow::Result<Checkpoint> {
    let dir = checkpoint_dir(dir)?;
    open_verified(&dir).with_context(|| format!("checkpoint {}", dir.display()))
}

/// Runs a `weft ckpt` command.
pub fn run(cmd: CkptCommand) -> anyhow::Result<()> {
    match cmd {
        CkptCommand::Inspect { dir, json } => inspect(&open(&dir)?, json),
        CkptCommand::Verify { dir } => {
            let c = open(&dir)?;
            let bytes: u64 = c.state.files.values().map(|f| f.size).sum();
            println!(
                "{}: committed step {}, {} files, {} bytes: OK",
                c.dir.display(),
                c.state.step,
                c.state.files.len() + 2,
                bytes
            );
            Ok(())
        }
        CkptCommand::Export { dir, out, dtype } => {
            let c = open(&dir)?;
            let rec = export(
                &c,
                &out,
                match dtype {
                    DtypeArg::F32 => ExportDtype::F32,
                    DtypeArg::Bf16 => ExportDtype::Bf16,
                },
            )?;
            println!(
                "{} ({} bytes, sha256 {}) from {}",
                out.display(),
                rec.size,
                rec.sha256,
                c.dir.display()
            );
            Ok(())
        }
    }
}

fn inspect(c: &Checkpoint, json: bool) -> anyhow::Result<()> {
    let s = &c.state;
    let model = c.weight_map(Family::Model)?;
    let optim = c.weight_map(Family::Optimizer)?;
    if json {
        let v = serde_json::json!({
            "dir": c.dir,
            "state": s,
            "model_tensors": model,
            "optimizer_tensors": optim.len(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let cur = &s.data_cursor;
    println!("checkpoint   {}", c.dir.display());
    println!(
        "step         {} (epoch {}, {} samples seen, {} skipped steps)",
        s.step, s.epoch, s.samples_seen, s.skipped_steps
    );
    println!("world size   {}", s.world_size);
    println!(
        "schedule     {} peak {:.3e} floor {:.3e} warmup {} of {} steps, next step {}",
        s.scheduler.name,
        s.scheduler.peak,
        s.scheduler.floor,
        s.scheduler.warmup,
        s.scheduler.total,
        s.scheduler.next_step
    );
    println!(
        "rng          seed {}, {} objective draws",
        s.rng.seed, s.rng.objective_draws
    );
    println!(
        "data cursor  dataset {}, epoch {} generation {}, step {} of the epoch, consumed per rank {:?}",
        cur.dataset, cur.epoch, cur.generation, cur.step, cur.consumed
    );
    println!("weft         {}", s.weft_version);
    println!(
        "tensors      {} model, {} optimizer",
        model.len(),
        optim.len()
    );
    println!("files");
    for (name, f) in &s.files {
        println!(
            "  {name:<48} {:>12} bytes  sha256 {}",
            f.size,
            &f.sha256[..16]
        );
    }
    Ok(())
}
