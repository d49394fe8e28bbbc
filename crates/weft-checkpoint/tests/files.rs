//! weft-checkpoint on its own: ranks write their shards, the commit makes them a checkpoint
//! that verifies and reads back exactly; every kind of damage is an error naming the file;
//! `auto` falls back past a damaged checkpoint; `keep_last` deletes only after a commit; a
//! failing writer leaves the previous checkpoint as it was.

use std::path::Path;
use std::sync::Arc;

use weft_checkpoint::files::{final_dir, tmp_dir, LATEST};
use weft_checkpoint::{
    commit, open_verified, resolve, write_rank, Family, ParamTable, Resume, RngState,
    SchedulerState, Snapshot, TrainerState, WriteOptions,
};
use weft_data::{DataCursor, LastBatch, PlanOptions, Units};

fn table() -> Arc<ParamTable> {
    Arc::new(ParamTable {
        names: vec![
            "vision.patch.weight".into(),
            "vision.patch.bias".into(),
            "text.embed.weight".into(),
            "itc.logit_scale".into(),
        ],
        shapes: vec![vec![12, 8], vec![8], vec![30, 8], vec![1]],
    })
}

fn snapshot(seed: f32) -> Snapshot {
    let l = table();
    let n: usize = l.numels().iter().sum();
    Snapshot {
        params: l,
        values: (0..n).map(|i| seed + i as f32 * 0.25).collect(),
        exp_avg: (0..n).map(|i| seed - i as f32).collect(),
        exp_avg_sq: (0..n).map(|i| (i as f32).sqrt()).collect(),
        steps: vec![5, 5, 4, 5],
    }
}

fn state(step: u64, world: usize) -> TrainerState {
    let units = Units {
        fingerprint: "abc".into(),
        rows: vec![64, 64],
    };
    let options = PlanOptions {
        seed: 1,
        world_size: world,
        batch_size: 4,
        shuffle: true,
        shuffle_buffer: 8,
        last_batch: LastBatch::Drop,
    };
    TrainerState {
        format: weft_checkpoint::state::FORMAT,
        weft_version: "test".into(),
        step,
        epoch: 0,
        samples_seen: step * 8,
        skipped_steps: 0,
        consecutive_nonfinite: 0,
        scheduler: SchedulerState {
            name: "warmup_cosine".into(),
            peak: 1e-3,
            floor: 0.0,
            warmup: 2,
            total: 100,
            next_step: step,
        },
        rng: RngState {
            seed: 1,
            objective_draws: step,
        },
        data_cursor: DataCursor::new(&units, options, 0),
        world_size: world,
        config: serde_json::json!({"model": {"embed_dim": 8}}),
        last_eval: None,
        files: Default::default(),
    }
}

/// Every rank of `world` writes its shards of `snap`; the commit follows.
fn save(run: &Path, step: u64, world: usize, snap: &Snapshot, keep_last: usize) {
    let reports: Vec<_> = (0..world)
        .map(|r| write_rank(run, step, r, world, snap, WriteOptions::default()).unwrap())
        .collect();
    commit(run, state(step, world), &reports, keep_last).unwrap();
}

#[test]
fn a_committed_checkpoint_verifies_and_reads_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path();
    let snap = snapshot(1.0);
    save(run, 10, 3, &snap, 0);
    let ckpt = open_verified(&final_dir(run, 10)).unwrap();
    assert!(!tmp_dir(run, 10).exists());
    assert_eq!(
        std::fs::read_to_string(run.join("checkpoints").join(LATEST)).unwrap(),
        "step-00000010\n"
    );
    let l = table();
    assert_eq!(
        ckpt.read_flat(Family::Model, &l.wanted()).unwrap(),
        snap.values
    );
    assert_eq!(
        ckpt.read_flat(Family::Optimizer, &l.moment_names("exp_avg_sq"))
            .unwrap(),
        snap.exp_avg_sq
    );
    let names: Vec<String> = l.names.iter().map(|n| format!("{n}.step")).collect();
    let steps: Vec<i64> = ckpt
        .read(
            Family::Optimizer,
            &names.iter().map(String::as_str).collect::<Vec<_>>(),
        )
        .unwrap()
        .into_iter()
        .flat_map(|t| t.i64)
        .collect();
    assert_eq!(steps, [5, 5, 4, 5]);
    // Three shards of each family, every tensor in exactly one, and the HF index says where.
    let map = ckpt.weight_map(Family::Model).unwrap();
    assert_eq!(map.len(), 4);
    for r in 1..=3 {
        assert!(ckpt
            .dir
            .join(format!("model-{r:05}-of-00003.safetensors"))
            .exists());
        assert!(ckpt
            .dir
            .join(format!("optimizer-{r:05}-of-00003.safetensors"))
            .exists());
    }
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(ckpt.dir.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(index["metadata"]["total_size"], 1380);
    assert_eq!(ckpt.state.files.len(), 8);
    // A shape the model does not have is named.
    let mut wrong = l.wanted();
    wrong[1].1 = vec![9];
    let e = ckpt
        .read_flat(Family::Model, &wrong)
        .unwrap_err()
        .to_string();
    assert!(e.contains("vision.patch.bias") && e.contains("[8]"), "{e}");
}

/// Damages a checkpoint directory; returns what the error must say.
type Damage = fn(&Path) -> String;

fn damage_cases() -> Vec<(&'static str, Damage)> {
    vec![
        ("missing shard", |d: &Path| {
            std::fs::remove_file(d.join("model-00002-of-00002.safetensors")).unwrap();
            "model-00002-of-00002.safetensors is missing".into()
        }),
        ("truncated shard", |d: &Path| {
            let p = d.join("optimizer-00001-of-00002.safetensors");
            let len = std::fs::metadata(&p).unwrap().len();
            let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            f.set_len(len - 10).unwrap();
            "optimizer-00001-of-00002.safetensors is corrupt".into()
        }),
        ("flipped byte", |d: &Path| {
            let p = d.join("model-00001-of-00002.safetensors");
            let mut b = std::fs::read(&p).unwrap();
            let i = b.len() - 3;
            b[i] ^= 0x40;
            std::fs::write(&p, b).unwrap();
            "model-00001-of-00002.safetensors is corrupt: SHA-256".into()
        }),
        ("edited trainer state", |d: &Path| {
            let p = d.join("trainer_state.json");
            let s = std::fs::read_to_string(&p)
                .unwrap()
                .replace("\"step\": 20", "\"step\": 21");
            std::fs::write(&p, s).unwrap();
            "trainer_state.json is corrupt".into()
        }),
        ("damaged index", |d: &Path| {
            std::fs::write(d.join("model.safetensors.index.json"), "{}").unwrap();
            "model.safetensors.index.json is corrupt".into()
        }),
        ("no commit marker", |d: &Path| {
            std::fs::remove_file(d.join("COMMITTED")).unwrap();
            "not a committed checkpoint".into()
        }),
    ]
}

#[test]
fn every_damage_is_named_and_auto_falls_back_to_the_previous_checkpoint() {
    for (what, damage) in damage_cases() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        save(run, 10, 2, &snapshot(1.0), 0);
        save(run, 20, 2, &snapshot(2.0), 0);
        let newest = final_dir(run, 20);
        let expect = damage(&newest);
        let e = open_verified(&newest).unwrap_err().to_string();
        assert!(e.contains(&expect), "{what}: {e}");
        // An explicit path does not fall back.
        assert!(
            resolve(run, &Resume::Path(newest.clone())).is_err(),
            "{what}"
        );
        // auto: the newest is skipped (a directory without marker is not even a candidate).
        let c = resolve(run, &Resume::Auto).unwrap().expect("a checkpoint");
        assert_eq!(c.state.step, 10, "{what}");
        assert_eq!(
            c.read_flat(Family::Model, &table().wanted()).unwrap(),
            snapshot(1.0).values
        );
        // never: refused over committed checkpoints, naming the newest.
        let e = resolve(run, &Resume::Never).unwrap_err().to_string();
        assert!(e.contains("--resume never would start another run"), "{e}");
        assert!(e.contains("(the newest "), "{what}: {e}");
    }
}

#[test]
fn with_every_checkpoint_damaged_auto_says_why_each_failed() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path();
    save(run, 10, 1, &snapshot(1.0), 0);
    std::fs::remove_file(final_dir(run, 10).join("model-00001-of-00001.safetensors")).unwrap();
    let e = resolve(run, &Resume::Auto).unwrap_err().to_string();
    assert!(
        e.contains("no committed checkpoint") && e.contains("is missing"),
        "{e}"
    );
    // A run directory without checkpoints starts afresh.
    assert!(resolve(&run.join("elsewhere"), &Resume::Auto)
        .unwrap()
        .is_none());
}

#[test]
fn keep_last_deletes_older_checkpoints_only_after_a_commit() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path();
    for step in [10, 20, 30] {
        save(run, step, 2, &snapshot(step as f32), 2);
    }
    assert!(!final_dir(run, 10).exists());
    assert!(final_dir(run, 20).exists() && final_dir(run, 30).exists());
    // A save that never committed (its ranks died) keeps nothing from being kept...
    write_rank(run, 40, 0, 2, &snapshot(4.0), WriteOptions::default()).unwrap();
    assert!(final_dir(run, 20).exists());
    assert_eq!(resolve(run, &Resume::Auto).unwrap().unwrap().state.step, 30);
    // ...and is removed by the next commit.
    save(run, 50, 2, &snapshot(5.0), 2);
    assert!(!tmp_dir(run, 40).exists());
    assert!(!final_dir(run, 20).exists());
}

#[test]
fn a_failing_writer_leaves_the_previous_checkpoint_intact() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path();
    save(run, 10, 2, &snapshot(1.0), 1);
    let e = write_rank(
        run,
        20,
        1,
        2,
        &snapshot(2.0),
        WriteOptions {
            fail_after_bytes: Some(300),
            ..WriteOptions::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("model-00002-of-00002.safetensors") && e.contains("after 300 bytes"),
        "{e}"
    );
    let c = resolve(run, &Resume::Auto).unwrap().unwrap();
    assert_eq!(c.state.step, 10);
    open_verified(&final_dir(run, 10)).unwrap();
    // A commit cannot go ahead without every rank's report.
    let r0 = write_rank(run, 20, 0, 2, &snapshot(2.0), WriteOptions::default()).unwrap();
    let e = commit(run, state(20, 2), &[r0], 1).unwrap_err().to_string();
    assert!(e.contains("expected every rank of 2"), "{e}");
    assert_eq!(resolve(run, &Resume::Auto).unwrap().unwrap().state.step, 10);
}
