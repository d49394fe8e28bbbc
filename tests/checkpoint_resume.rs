//! Checkpoints of real runs (`weft train`, `weft launch`): a run interrupted at step k and
//! resumed ends bit for bit where an uninterrupted run ends, on 1 and on 2 ranks; a checkpoint
//! of 2 ranks resumes on 1 and on 3 with every sample of the epoch seen once; a failing writer
//! and a rank killed during a save leave the previous checkpoint latest and loadable; a resume
//! with another model is refused before it touches the run directory.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::ckpt::{assert_same_end, latest, metrics};
use common::process::{ok, weft_env_within};
use common::train::sample_dir;
use weft_checkpoint::open_verified;
use weft_data::synth::{encode, write_hf_parquet, Scene, SynthFormat};

const LIMIT: Duration = Duration::from_secs(300);

fn repo() -> PathBuf {
    sample_dir().join("../..")
}

/// `rows` synthetic image-caption pairs in one Parquet file under `dir`.
fn dataset(dir: &Path, rows: usize) -> PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let rows: Vec<_> = (0..rows)
        .map(|i| {
            let scene = Scene::generate(5, i as u64, 64);
            let png = encode(&scene.render(64), SynthFormat::Png).unwrap();
            (Some(png), Some(scene.caption()))
        })
        .collect();
    write_hf_parquet(&data.join("part-0.parquet"), &rows, 16).unwrap();
    data
}

fn sets(data: &Path, extra: &[&str]) -> Vec<String> {
    let base = [
        format!("data.train=[\"{}\"]", data.display()),
        "data.val=[]".into(),
        "data.batch_size=8".into(),
        "data.workers=1".into(),
        "train.eval_every=0".into(),
        "train.threads=1".into(),
    ];
    base.into_iter()
        .chain(extra.iter().map(|s| s.to_string()))
        .flat_map(|kv| ["--set".to_string(), kv])
        .collect()
}

/// `weft train` (world 1) or `weft launch --nproc-per-node world -- train` into `run`.
fn train_args(world: usize, run: &Path, sets: &[String], resume: Option<&Path>) -> Vec<String> {
    let mut args: Vec<String> = if world == 1 {
        vec!["train".into()]
    } else {
        [
            "launch",
            "--nproc-per-node",
            &world.to_string(),
            "--",
            "train",
        ]
        .map(String::from)
        .to_vec()
    };
    args.extend(["--run-dir".into(), run.display().to_string()]);
    if let Some(r) = resume {
        args.extend(["--resume".into(), r.display().to_string()]);
    }
    args.extend(sets.iter().cloned());
    args
}

fn run(args: &[String], envs: &[(&str, &str)]) -> std::process::Output {
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    weft_env_within(&repo(), &argv, envs, LIMIT)
}

/// 12 steps on `world` ranks with `extra` settings, uninterrupted and interrupted after step 7
/// then resumed by the same command, end bit for bit alike. Returns the uninterrupted run's
/// log.
fn resumes_bit_for_bit(dir: &Path, world: usize, extra: &[&str], what: &str) -> String {
    let data = dataset(dir, 96);
    let mut settings = vec!["train.max_steps=12", "checkpoint.every_steps=5"];
    settings.extend_from_slice(extra);
    let s = sets(&data, &settings);
    let whole = dir.join(format!("whole-{world}"));
    let first = run(&train_args(world, &whole, &s, None), &[]);
    ok(&first);
    let cut = dir.join(format!("cut-{world}"));
    let out = run(
        &train_args(world, &cut, &s, None),
        &[("WEFT_TEST_STOP_AT_STEP", "7")],
    );
    assert_eq!(
        out.status.code(),
        Some(75),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(latest(&cut).ends_with("step-00000007"));
    assert!(!cut.join("model.safetensors").exists());
    // The same command again resumes from step 7 and finishes.
    let out = run(&train_args(world, &cut, &s, None), &[]);
    ok(&out);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("resuming from") && log.contains("step 7"),
        "{log}"
    );
    assert_same_end(&whole, &cut, 12, what);
    String::from_utf8_lossy(&first.stderr).into_owned()
}

#[test]
fn an_interrupted_run_resumes_bit_for_bit_on_one_and_two_ranks() {
    let dir = tempfile::tempdir().unwrap();
    for world in [1, 2] {
        resumes_bit_for_bit(dir.path(), world, &[], &format!("world {world}"));
    }
}

#[test]
fn the_update_on_the_device_resumes_bit_for_bit_on_two_ranks() {
    // train.update_on = "device" (the GPU path, here on flex): the master parameters and the
    // moments are device tensors; the 2 ranks average device gradients through the host and
    // the TCP ring; checkpoints copy the state to the host and a resume copies it back.
    let dir = tempfile::tempdir().unwrap();
    let log = resumes_bit_for_bit(
        dir.path(),
        2,
        &["train.update_on=\"device\""],
        "update on the device",
    );
    assert!(log.contains("optimizer update on the device"), "{log}");
}

#[test]
fn a_checkpoint_of_two_ranks_resumes_on_one_and_on_three() {
    // 100 rows, 2 ranks of 8, pad: 7 steps an epoch. Stop after step 3 (48 positions, some of
    // them padding), then finish the epoch on 1 rank and, separately, on 3: every row is
    // trained on once either way.
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), 100);
    let s = sets(
        &data,
        &[
            "train.max_steps=0",
            "train.epochs=1",
            "data.last_batch=\"pad\"",
        ],
    );
    let first = dir.path().join("first");
    let out = run(
        &train_args(2, &first, &s, None),
        &[("WEFT_TEST_STOP_AT_STEP", "3")],
    );
    assert_eq!(
        out.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ckpt = latest(&first);
    let state = open_verified(&ckpt).unwrap().state;
    // Rank 1's 12 padding rows are spread through its order by the shuffle buffer.
    assert_eq!((state.step, state.world_size), (3, 2));
    assert!(
        (36..=48).contains(&state.samples_seen),
        "{}",
        state.samples_seen
    );
    for (world, steps) in [(1, 7), (3, 3)] {
        let again = dir.path().join(format!("on-{world}"));
        ok(&run(&train_args(world, &again, &s, Some(&ckpt)), &[]));
        let m = metrics(&again);
        assert_eq!(m.len(), steps, "world {world}: {m:?}");
        let last = m.last().unwrap();
        assert_eq!(last["step"], 3 + steps as u64, "world {world}");
        assert_eq!(last["samples_seen"], 100, "world {world}: every row once");
        let end = open_verified(&latest(&again)).unwrap().state;
        assert_eq!(end.world_size, world);
        assert_eq!(end.data_cursor.generation, 1, "re-planned once");
    }
}

#[test]
fn a_failing_writer_is_reported_and_the_previous_checkpoint_stays() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), 64);
    let r = dir.path().join("run");
    ok(&run(
        &train_args(1, &r, &sets(&data, &["train.max_steps=4"]), None),
        &[],
    ));
    assert!(latest(&r).ends_with("step-00000004"));
    // A longer run resumes from step 4 and fails writing step 8.
    let longer = sets(&data, &["train.max_steps=8", "checkpoint.every_steps=100"]);
    let out = run(
        &train_args(1, &r, &longer, None),
        &[("WEFT_TEST_CKPT_FAIL_AFTER_BYTES", "300")],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("checkpoint of step 8")
            && err.contains("model-00001-of-00001.safetensors")
            && err.contains("injected write error after 300 bytes"),
        "{err}"
    );
    assert!(latest(&r).ends_with("step-00000004"));
    open_verified(&latest(&r)).unwrap();
    // Damage the newest checkpoint: `auto` says so and falls back to an older one.
    ok(&run(&train_args(1, &r, &longer, None), &[]));
    assert!(latest(&r).ends_with("step-00000008"));
    std::fs::write(latest(&r).join("model-00001-of-00001.safetensors"), b"junk").unwrap();
    let out = run(
        &train_args(1, &r, &sets(&data, &["train.max_steps=9"]), None),
        &[],
    );
    ok(&out);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("step-00000008 is unusable")
            && log.contains("resuming from the older checkpoint"),
        "{log}"
    );
}

#[test]
fn a_rank_whose_writer_fails_fails_the_job_and_the_previous_checkpoint_stays() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), 64);
    let r = dir.path().join("run");
    ok(&run(
        &train_args(2, &r, &sets(&data, &["train.max_steps=2"]), None),
        &[],
    ));
    assert!(latest(&r).ends_with("step-00000002"));
    // Resumed, the job fails writing step 4 on rank 1 alone (rank 0 writes its share).
    let longer = sets(&data, &["train.max_steps=4", "checkpoint.every_steps=100"]);
    let out = run(
        &train_args(2, &r, &longer, None),
        &[
            ("WEFT_TEST_CKPT_FAIL_AFTER_BYTES", "300"),
            ("WEFT_TEST_CKPT_FAIL_RANK", "1"),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // Every rank names rank 1 and its reason (not only its connection dropping), once.
    assert!(
        err.contains("rank 1 failed: could not write its share of checkpoint 4")
            && err.contains("model-00002-of-00002.safetensors")
            && err.contains("injected write error after 300 bytes"),
        "{err}"
    );
    assert!(
        !err.contains("connection dropped"),
        "the reason, not the symptom: {err}"
    );
    for line in err.lines() {
        assert!(line.matches("injected write error").count() <= 1, "{line}");
    }
    assert!(latest(&r).ends_with("step-00000002"));
    open_verified(&latest(&r)).unwrap();
    assert!(!r.join("checkpoints/step-00000004").exists());
    // The same command again resumes from step 2 and commits step 4.
    let out = run(&train_args(2, &r, &longer, None), &[]);
    ok(&out);
    assert!(latest(&r).ends_with("step-00000004"));
    open_verified(&latest(&r)).unwrap();
}

#[test]
fn two_ranks_hash_a_share_each_and_pass_over_a_damaged_checkpoint_together() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), 64);
    let r = dir.path().join("run");
    let every_2 = |steps: &str| sets(&data, &[steps, "checkpoint.every_steps=2"]);
    ok(&run(
        &train_args(2, &r, &every_2("train.max_steps=4"), None),
        &[],
    ));
    // Damage rank 1's model shard of step 4: in name order it is the second recorded file,
    // so rank 1 hashes it and rank 0 does not.
    let shard = latest(&r).join("model-00002-of-00002.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&shard, bytes).unwrap();
    let out = run(&train_args(2, &r, &every_2("train.max_steps=6"), None), &[]);
    ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("model-00002-of-00002.safetensors is corrupt: SHA-256 differs")
            && err.contains("rank 1 found one of its files damaged"),
        "{err}"
    );
    assert!(
        err.contains("resuming from") && err.contains("step 2"),
        "{err}"
    );
    assert!(latest(&r).ends_with("step-00000006"));
}

#[test]
fn a_resume_with_another_model_is_refused_and_leaves_the_run_directory_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), 16);
    let run_dir = dir.path().join("run");
    let s = sets(&data, &["train.max_steps=2"]);
    ok(&run(&train_args(1, &run_dir, &s, None), &[]));
    let config = std::fs::read_to_string(run_dir.join(weft_config::RUN_CONFIG_FILE)).unwrap();
    let newest = latest(&run_dir);

    // The same run directory with another model width: `--resume auto` finds its checkpoint,
    // which does not fit.
    let other = sets(&data, &["train.max_steps=4", "model.embed_dim=32"]);
    let out = run(&train_args(1, &run_dir, &other, None), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("does not fit this run: model.embed_dim is 64 in the checkpoint but 32 now"),
        "{err}"
    );
    // The run's config.toml still describes its checkpoints (weft eval reads it), and they
    // are all still there.
    assert_eq!(
        std::fs::read_to_string(run_dir.join(weft_config::RUN_CONFIG_FILE)).unwrap(),
        config,
        "config.toml was replaced by the refused run's"
    );
    assert_eq!(latest(&run_dir), newest);
    open_verified(&newest).unwrap();
}
